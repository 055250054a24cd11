//! The REST side of the harness: raw requests for contract tests (status, headers and body as they
//! came) and the helpers the engine tests lean on. Every wait is a long poll (`?wait=`) in a loop
//! under an overall deadline.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::env::TestEnv;

/// Saga states from which nothing moves without an operator (PROTOCOL §2): where `?wait=` returns.
pub const SETTLED: &[&str] = &["completed", "compensated", "terminated", "suspended"];
/// Terminal saga states (PROTOCOL §2): nothing changes them any more.
pub const TERMINAL: &[&str] = &["completed", "compensated", "terminated"];

/// A response as it came: for asserting the contract exactly.
#[derive(Debug, Clone)]
pub struct Raw {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Raw {
    /// The body as JSON, or a panic that shows the body.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn content_type(&self) -> String {
        self.header("content-type").unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a raw request sends as its body.
pub enum Body {
    None,
    /// Bytes with an explicit `Content-Type` (or none at all with `None`).
    Bytes(Vec<u8>, Option<String>),
    /// JSON with `Content-Type: application/json`.
    Json(Value),
}

impl TestEnv {
    /// Any request; the body and headers go out exactly as given.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Raw {
        let mut req = self.client.request(method.clone(), self.url(path));
        let explicit_auth = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let (Some(token), false) = (&self.token, explicit_auth) {
            req = req.bearer_auth(token);
        }
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .unwrap_or_else(|e| panic!("header name {k:?}: {e}"));
            let value = HeaderValue::from_bytes(v.as_bytes())
                .unwrap_or_else(|e| panic!("header value {v:?}: {e}"));
            req = req.header(name, value);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req
                .header(CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&v).expect("serialise a JSON body")),
            Body::Bytes(bytes, Some(ct)) => req.header(CONTENT_TYPE, ct).body(bytes),
            Body::Bytes(bytes, None) => req.body(bytes),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nlog:\n{}", self.log_tail(30)));
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"))
            .to_vec();
        Raw {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Raw {
        self.request(Method::GET, path, &[], Body::None).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Raw {
        self.request(Method::POST, path, &[], Body::Json(body.clone()))
            .await
    }

    /// `POST /v1/definitions`.
    pub async fn register(&self, definition: &Value) -> (StatusCode, Value) {
        let raw = self.post_json("/v1/definitions", definition).await;
        let body = raw.json();
        (raw.status, body)
    }

    /// Registers and insists on 200/201; returns the version.
    pub async fn register_ok(&self, definition: &Value) -> i64 {
        let (status, body) = self.register(definition).await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "register failed: {status} {body:#}"
        );
        version_of(&body)
    }

    /// `POST /v1/definitions` of a definition new to this orchestrator; insists on 201 and returns
    /// its version.
    pub async fn register_new(&self, definition: &Value) -> i64 {
        let (status, body) = self.register(definition).await;
        assert_eq!(status, StatusCode::CREATED, "register: {body:#}");
        version_of(&body)
    }

    /// `POST /v1/sagas` with `{definition, input}`; insists on 201; returns the saga id.
    pub async fn start(&self, definition: &str, input: Value) -> String {
        let raw = self
            .post_json(
                "/v1/sagas",
                &json!({ "definition": definition, "input": input }),
            )
            .await;
        let body = raw.json();
        assert_eq!(raw.status, StatusCode::CREATED, "start failed: {body:#}");
        body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("start: no id in {body:#}"))
            .to_owned()
    }

    /// `GET /v1/sagas/{id}`; insists on 200.
    pub async fn status(&self, id: &str) -> Value {
        let raw = self.get(&format!("/v1/sagas/{id}")).await;
        assert_eq!(raw.status, StatusCode::OK, "status of {id}: {}", raw.text());
        raw.json()
    }

    /// `GET /v1/sagas/{id}/history` items; insists on 200.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        let raw = self.get(&format!("/v1/sagas/{id}/history")).await;
        assert_eq!(
            raw.status,
            StatusCode::OK,
            "history of {id}: {}",
            raw.text()
        );
        let body = raw.json();
        body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("history of {id}: no items array in {body:#}"))
            .clone()
    }

    /// `POST /v1/sagas/{id}/signals/{event}` with `payload` as the JSON body.
    pub async fn signal(&self, id: &str, event: &str, payload: &Value) -> Raw {
        self.post_json(&format!("/v1/sagas/{id}/signals/{event}"), payload)
            .await
    }

    /// [`TestEnv::signal`], insisting on PROTOCOL §2's 202 `{ "saga_id", "event", "accepted_at" }`.
    pub async fn signal_accepted(&self, id: &str, event: &str, payload: &Value) {
        let raw = self.signal(id, event, payload).await;
        assert_eq!(
            raw.status,
            StatusCode::ACCEPTED,
            "signal {event} to {id}: {}",
            raw.text()
        );
        let body = raw.json();
        assert_eq!(body["saga_id"], json!(id), "{body:#}");
        assert_eq!(body["event"], json!(event), "{body:#}");
        assert!(body["accepted_at"].is_string(), "{body:#}");
    }

    /// Polls `GET /v1/sagas?{query}` until it lists at least `count` sagas; returns them (newest
    /// first). Panics with what it saw when `timeout` passes first.
    pub async fn wait_listed(&self, query: &str, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let items = self.list_all(query, 50).await;
            if items.len() >= count {
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "GET /v1/sagas?{query}: fewer than {count} sagas within {timeout:?}: {items:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/sagas/{id}/cancel` with an optional reason.
    pub async fn cancel(&self, id: &str, reason: Option<&str>) -> Raw {
        let body = match reason {
            Some(r) => Body::Json(json!({ "reason": r })),
            None => Body::None,
        };
        self.request(Method::POST, &format!("/v1/sagas/{id}/cancel"), &[], body)
            .await
    }

    /// Long-polls until the saga's state is one of `states`; returns that status. Panics with the
    /// last status and the history when `timeout` passes first.
    pub async fn wait_state(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        self.wait_until(id, timeout, &format!("state in {states:?}"), |s| {
            s["state"].as_str().is_some_and(|st| states.contains(&st))
        })
        .await
    }

    /// Long-polls (`?wait=5s&revision=N`) until `pred` holds for the status; returns it.
    pub async fn wait_until(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut status = self.status(id).await;
        loop {
            if pred(&status) {
                return status;
            }
            let now = Instant::now();
            if now >= deadline {
                let history = self.history(id).await;
                panic!(
                    "saga {id}: not {what} within {timeout:?}\nlast status: {status:#}\nhistory kinds: {:?}\nhistory: {}",
                    kinds_of(&history),
                    Value::Array(history)
                );
            }
            let left = (deadline - now).min(Duration::from_secs(5));
            let wait_ms = left.as_millis().max(1);
            let path = match status["revision"].as_i64() {
                Some(rev) => format!("/v1/sagas/{id}?wait={wait_ms}ms&revision={rev}"),
                None => format!("/v1/sagas/{id}?wait={wait_ms}ms"),
            };
            let raw = self.get(&path).await;
            assert_eq!(raw.status, StatusCode::OK, "GET {path}: {}", raw.text());
            let next = raw.json();
            // A terminal saga answers at once and never changes again: fail now rather than spin.
            let terminal = next["state"]
                .as_str()
                .is_some_and(|s| TERMINAL.contains(&s));
            let same = next["revision"] == status["revision"];
            status = next;
            if terminal && same && !pred(&status) {
                let history = self.history(id).await;
                panic!(
                    "saga {id}: terminal without {what}\nstatus: {status:#}\nhistory kinds: {:?}\nhistory: {}",
                    kinds_of(&history),
                    Value::Array(history)
                );
            }
        }
    }

    /// Long-polls once for `quiet` on the saga's current revision and asserts that nothing changed
    /// meanwhile (an absence — "it waits" — can only be checked over a while). Returns the status.
    pub async fn assert_quiet(&self, id: &str, quiet: Duration) -> Value {
        let before = self.status(id).await;
        let rev = before["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no integer revision in {before:#}"));
        let path = format!("/v1/sagas/{id}?wait={}ms&revision={rev}", quiet.as_millis());
        let raw = self.get(&path).await;
        assert_eq!(raw.status, StatusCode::OK, "GET {path}: {}", raw.text());
        let after = raw.json();
        assert_eq!(
            after, before,
            "saga {id} changed while it should have been waiting"
        );
        after
    }

    /// Polls the history until `pred` holds for it (the history has no long poll of its own).
    pub async fn wait_history(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let history = self.history(id).await;
            if pred(&history) {
                return history;
            }
            if Instant::now() >= deadline {
                panic!(
                    "saga {id}: history never showed {what} within {timeout:?}\nkinds: {:?}\nhistory: {}",
                    kinds_of(&history),
                    Value::Array(history.clone())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// All items of `GET /v1/sagas?{query}` across pages (following `next_cursor`).
    pub async fn list_all(&self, query: &str, limit: usize) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let mut path = format!("/v1/sagas?limit={limit}");
            if !query.is_empty() {
                path.push('&');
                path.push_str(query);
            }
            if let Some(c) = &cursor {
                path.push_str("&cursor=");
                path.push_str(&crate::env::percent_encode(c));
            }
            let raw = self.get(&path).await;
            assert_eq!(raw.status, StatusCode::OK, "GET {path}: {}", raw.text());
            let body = raw.json();
            let page = body["items"]
                .as_array()
                .unwrap_or_else(|| panic!("GET {path}: no items in {body:#}"));
            assert!(
                page.len() <= limit,
                "page larger than limit {limit}: {body:#}"
            );
            items.extend(page.iter().cloned());
            match &body["next_cursor"] {
                Value::Null => return items,
                Value::String(c) => cursor = Some(c.clone()),
                other => panic!("next_cursor is neither null nor a string: {other}"),
            }
        }
        panic!("pagination did not end after 1000 pages");
    }
}

/// The `version` of a registration's answer.
#[track_caller]
fn version_of(body: &Value) -> i64 {
    body["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("register: no integer version in {body:#}"))
}

/// Asserts an RFC 9457 problem: the status, `application/problem+json`, and `type`, `title`,
/// `status` (equal to the HTTP status) and `detail`. Returns the body.
#[track_caller]
pub fn assert_problem(raw: &Raw, status: StatusCode) -> Value {
    assert_eq!(
        raw.status,
        status,
        "unexpected status; body: {}",
        raw.text()
    );
    let ct = raw.content_type();
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type {ct:?} is not application/problem+json; body: {}",
        raw.text()
    );
    let body = raw.json();
    assert!(body["type"].is_string(), "problem without type: {body:#}");
    assert!(body["title"].is_string(), "problem without title: {body:#}");
    assert_eq!(
        body["status"].as_u64(),
        Some(u64::from(status.as_u16())),
        "problem status field: {body:#}"
    );
    assert!(
        body["detail"].is_string(),
        "problem without detail: {body:#}"
    );
    body
}

/// The `errors[].pointer`s of a validation problem, each checked to come with a `detail`.
#[track_caller]
pub fn pointers_of(problem: &Value) -> Vec<String> {
    let errors = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("validation problem without an errors array: {problem:#}"));
    errors
        .iter()
        .map(|e| {
            assert!(e["detail"].is_string(), "error without detail: {e}");
            e["pointer"]
                .as_str()
                .unwrap_or_else(|| panic!("error without a string pointer: {e}"))
                .to_owned()
        })
        .collect()
}

/// The `kind`s of history entries, in order.
pub fn kinds_of(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("<no kind>").to_owned())
        .collect()
}

/// Parses a humantime duration string from a JSON value (panics otherwise).
#[track_caller]
pub fn duration_of(v: &Value) -> Duration {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a duration string: {v}"));
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("not a humantime duration {s:?}: {e}"))
}

/// A status less its `steps`: what a lifecycle message carries (PROTOCOL §3).
pub fn status_less_steps(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(map) = s.as_object_mut() {
        map.remove("steps");
    }
    s
}

/// Parses an RFC 3339 timestamp from a JSON value (panics otherwise).
#[track_caller]
pub fn rfc3339(v: &Value) -> DateTime<Utc> {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp string: {v}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("not RFC 3339 {text:?}: {e}"))
        .with_timezone(&Utc)
}

/// The step named `name` in a status.
#[track_caller]
pub fn step<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name:?} in {status:#}"))
}
