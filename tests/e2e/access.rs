//! PROTOCOL §2 "Access" and the endpoints outside `/v1`.

use reqwest::{Method, StatusCode};
use saga_e2e::http::Body;
use saga_e2e::{Behaviour, Worker, assert_problem};
use serde_json::json;

use crate::{SOON, entries, env, env_with, linear_definition, strs, tasks_of};

const TOKENS: &str = "alice:client:tok-alice,olga:operator:tok-olga";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_gate_every_v1_request_and_name_the_actor() {
    let mut env = env_with(&[("SAGA_API_TOKENS", TOKENS)]).await;
    let unknown_saga = uuid::Uuid::now_v7();

    // "A missing or unknown token gets 401 with `WWW-Authenticate: Bearer`, checked before anything
    // else (an unknown saga still gets 401 first)".
    for auth in [None, Some("Bearer nope"), Some("Basic dG9rLWFsaWNl")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        for (method, path) in [
            (Method::GET, "/v1/definitions".to_owned()),
            (Method::GET, format!("/v1/sagas/{unknown_saga}")),
            (Method::GET, "/v1/sagas/not-a-uuid".to_owned()),
            (Method::POST, "/v1/sagas".to_owned()),
        ] {
            let raw = env
                .request(method.clone(), &path, &headers, Body::None)
                .await;
            assert_problem(&raw, StatusCode::UNAUTHORIZED);
            let challenge = raw.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer"),
                "{method} {path} with {auth:?}: WWW-Authenticate {challenge:?}"
            );
        }
    }
    // Outside /v1, open to all.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(env.get(path).await.status, StatusCode::OK, "{path}");
    }

    // A client may register, start, read and cancel.
    env.set_token(Some("tok-alice"));
    let names = ["a", "b"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_problem(
        &env.get(&format!("/v1/sagas/{unknown_saga}")).await,
        StatusCode::NOT_FOUND,
    );
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), |c| match c.task.as_str() {
        "t.b" => Behaviour::error("no", "no", false),
        "t.a_undo" => Behaviour::error("stuck", "cannot undo", false),
        _ => Behaviour::ok(json!(1)),
    })
    .await;
    let id = env.start("flow", json!({})).await;
    env.wait_state(&id, &["suspended"], SOON).await;

    // "a token without the role gets 403".
    for action in ["retry", "skip", "terminate"] {
        let raw = env
            .post_json(
                &format!("/v1/sagas/{id}/{action}"),
                &json!({ "reason": "try" }),
            )
            .await;
        assert_problem(&raw, StatusCode::FORBIDDEN);
    }
    // An operator may; "Every operator action is recorded in the history with the token's name and
    // the reason."
    env.set_token(Some("tok-olga"));
    let raw = env
        .post_json(
            &format!("/v1/sagas/{id}/terminate"),
            &json!({ "reason": "enough" }),
        )
        .await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    env.wait_state(&id, &["terminated"], SOON).await;
    let history = env.history(&id).await;
    assert_eq!(history[0]["kind"], "saga_started");
    assert_eq!(history[0]["actor"], "alice", "{:#}", history[0]);
    let term = entries(&history, "operator_terminate", None);
    assert_eq!(term.len(), 1);
    assert_eq!(term[0]["actor"], "olga", "{:#}", term[0]);
    assert_eq!(term[0]["reason"], "enough", "{:#}", term[0]);
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_openapi() {
    let env = env().await;
    let raw = env.get("/healthz").await;
    assert_eq!(raw.status, StatusCode::OK);
    let raw = env.get("/readyz").await;
    assert_eq!(raw.status, StatusCode::OK);

    // "`GET /metrics` (Prometheus text format)".
    let raw = env.get("/metrics").await;
    assert_eq!(raw.status, StatusCode::OK);
    assert!(
        raw.content_type().starts_with("text/plain"),
        "metrics content-type {:?}",
        raw.content_type()
    );
    let text = raw.text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("# TYPE ") || l.starts_with("# HELP ")),
        "not Prometheus text: {text}"
    );

    // "`GET /openapi.json` (OpenAPI 3.1 of this API)".
    let raw = env.get("/openapi.json").await;
    assert_eq!(raw.status, StatusCode::OK);
    let doc = raw.json();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{:#}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/definitions",
        "/v1/definitions/{name}",
        "/v1/definitions/{name}/versions/{version}",
        "/v1/sagas",
        "/v1/sagas/{id}",
        "/v1/sagas/{id}/history",
        "/v1/sagas/{id}/signals/{event}",
        "/v1/sagas/{id}/cancel",
        "/v1/sagas/{id}/retry",
        "/v1/sagas/{id}/skip",
        "/v1/sagas/{id}/terminate",
    ] {
        assert!(
            paths.contains_key(p),
            "openapi lacks {p}: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }

    // An unknown route under /v1 is still a problem.
    assert_problem(&env.get("/v1/nothing-here").await, StatusCode::NOT_FOUND);
}
