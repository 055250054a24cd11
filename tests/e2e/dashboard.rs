//! The operator dashboard (`/ui`) in headless Chromium: it shows a suspended saga among the stuck
//! ones with its reason and the task queues, retries it with a confirmation, and shows it done
//! with the operator's retry in its timeline. With `SAGA_UI_SCREENSHOTS=<dir>` it also writes
//! `dashboard.png` and `dashboard-saga.png` there (docs/ keeps the ones of the last run that was asked to).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::StatusCode;
use saga_e2e::browser::Browser;
use saga_e2e::{Behaviour, Worker};
use serde_json::{Value, json};

use crate::{SOON, entries, env_with, task_step};

const TOKENS: &str = "alice:client:tok-alice,olga:operator:tok-olga";

async fn screenshot(browser: &mut Browser, name: &str) {
    if let Some(dir) = std::env::var_os("SAGA_UI_SCREENSHOTS") {
        let path = std::path::Path::new(&dir).join(name);
        browser
            .screenshot(&path)
            .await
            .unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()));
    }
}

/// A JavaScript string literal of `s`.
fn js(s: &str) -> String {
    Value::from(s).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_suspended_saga_and_retries_it() {
    let mut env = env_with(&[("SAGA_API_TOKENS", TOKENS)]).await;
    env.set_token(Some("tok-olga"));
    let mut b = task_step("b", "10s");
    b.as_object_mut().map(|b| b.remove("compensate"));
    let def = json!({ "name": "order", "steps": [task_step("a", "10s"), b] });
    assert_eq!(env.register(&def).await.0, StatusCode::CREATED);
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    let worker = Worker::start(&env, &["t.a", "t.a_undo", "t.b"], move |c| {
        match c.task.as_str() {
            "t.b" => Behaviour::error("card_declined", "declined", false),
            "t.a_undo" if !f.load(Ordering::SeqCst) => {
                Behaviour::error("warehouse_locked", "the warehouse is locked", false)
            }
            _ => Behaviour::ok(json!({ "reserved": 1 })),
        }
    })
    .await;
    let id = env.start("order", json!({ "order_id": "o-17" })).await;
    env.wait_state(&id, &["suspended"], SOON).await;
    let row = format!("#stuck tr[data-id={}]", js(&id));

    let mut browser = Browser::open(&env.url("/ui"), 1280, 900)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Without a token the API says 401, and the page says what to do.
    browser
        .wait_for(
            "asking for a token",
            "document.getElementById('notice').textContent.includes('needs a token')",
            SOON,
        )
        .await;
    browser
        .eval(
            "document.getElementById('token').value = 'tok-olga';
             document.getElementById('token-form').requestSubmit(); true",
        )
        .await
        .expect("enter the token");

    // Stuck sagas first: the suspended one, with its reason.
    let reason = browser
        .wait_for(
            "listing the suspended saga",
            &format!(
                "(() => {{ const r = document.querySelector({}); return r && r.querySelector('.state').textContent === 'suspended' && r.querySelector('.reason').textContent; }})()",
                js(&row)
            ),
            SOON,
        )
        .await;
    let reason = reason.as_str().unwrap_or_default();
    assert!(
        reason.contains("compensation of a failed after 1 attempt (warehouse_locked"),
        "{reason}"
    );
    // The task queues, with their consumers.
    let consumers = browser
        .wait_for(
            "showing the task queues",
            "document.querySelector('#queues tr[data-queue=\"saga.task.t.a_undo\"] td:nth-child(3)')?.textContent",
            SOON,
        )
        .await;
    assert_eq!(consumers, "1");
    screenshot(&mut browser, "dashboard.png").await;

    // Retry, with a confirmation that takes a reason.
    fixed.store(true, Ordering::SeqCst);
    browser
        .eval(&format!(
            "document.querySelector({}).querySelector('button[data-action=retry]').click(); true",
            js(&row)
        ))
        .await
        .expect("click retry");
    browser
        .wait_for(
            "asking to confirm",
            "document.getElementById('confirm').open && document.getElementById('confirm-title').textContent",
            SOON,
        )
        .await;
    assert_eq!(
        env.status(&id).await["state"],
        "suspended",
        "nothing happens before the operator confirms"
    );
    browser
        .eval(
            "const r = document.getElementById('confirm-reason');
             r.value = 'unlocked the warehouse'; r.dispatchEvent(new Event('input'));
             document.getElementById('confirm-ok').click(); true",
        )
        .await
        .expect("confirm");
    let s = env.wait_state(&id, &["compensated"], SOON).await;
    assert_eq!(s["stuck"], false, "{s:#}");
    let history = env.history(&id).await;
    let retry = entries(&history, "operator_retry", None);
    assert_eq!(retry.len(), 1, "{history:#?}");
    assert_eq!(retry[0]["actor"], "olga");
    assert_eq!(retry[0]["reason"], "unlocked the warehouse");

    // The page no longer lists it as stuck; its own view shows it done, and the retry.
    browser
        .wait_for(
            "dropping the saga from the stuck list",
            &format!(
                "document.getElementById('stuck') && !document.querySelector({})",
                js(&row)
            ),
            SOON,
        )
        .await;
    browser
        .eval(&format!(
            "location.hash = {}; true",
            js(&format!("#/sagas/{id}"))
        ))
        .await
        .expect("open the saga");
    browser
        .wait_for(
            "showing the saga compensated",
            "document.getElementById('saga-state')?.textContent === 'compensated'",
            SOON,
        )
        .await;
    let retried = browser
        .wait_for(
            "showing the retry in the timeline",
            "document.querySelector('#timeline tr[data-kind=operator_retry]')?.textContent",
            SOON,
        )
        .await;
    let retried = retried.as_str().unwrap_or_default();
    assert!(
        retried.contains("olga") && retried.contains("unlocked the warehouse"),
        "{retried}"
    );
    screenshot(&mut browser, "dashboard-saga.png").await;
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_is_open_and_locked_down() {
    let env = env_with(&[("SAGA_API_TOKENS", TOKENS)]).await;
    let raw = env.get("/ui").await;
    assert_eq!(raw.status, StatusCode::OK);
    assert!(
        raw.content_type().starts_with("text/html"),
        "{}",
        raw.content_type()
    );
    let policy = raw.header("content-security-policy").unwrap_or_default();
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(raw.text().contains("/v1/sagas?stuck=true"));
}
