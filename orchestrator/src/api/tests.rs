//! The router without servers: a lazy pool that never connects and a bus that never runs. Every
//! request here is decided before the engine is called (auth, routing, parameters, bodies), which
//! is exactly what these tests pin down; the end-to-end tests in `tests/` cover the rest.

use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;

use super::*;
use crate::config::{ApiToken, Role};

fn config(tokens: Vec<ApiToken>) -> Config {
    Config {
        database_url: "postgres://nobody@127.0.0.1:1/none".into(),
        amqp_url: "amqp://nobody:nothing@127.0.0.1:1/%2f".into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        api_tokens: tokens,
        max_body: 1024,
        stuck_after: Duration::from_secs(300),
        db_pool: 1,
        reply_concurrency: 1,
    }
}

fn app(tokens: Vec<ApiToken>) -> Router {
    let config = config(tokens);
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy(&config.database_url)
        .expect("lazy pool");
    let engine = Engine::new(pool, config.stuck_after, None);
    let bus = Bus::new(config.amqp_url.clone(), config.reply_concurrency);
    router(AppState::new(engine, bus, &config))
}

fn with_tokens() -> Router {
    app(vec![
        ApiToken {
            name: "ci".into(),
            role: Role::Client,
            secret: "client-secret".into(),
        },
        ApiToken {
            name: "ops".into(),
            role: Role::Operator,
            secret: "operator-secret".into(),
        },
    ])
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    app: Router,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .oneshot(req.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

#[track_caller]
fn assert_problem(a: &Answer, status: StatusCode) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(
        a.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{}",
        a.body
    );
    assert_eq!(a.body["status"], status.as_u16(), "{}", a.body);
    assert!(
        a.body["type"].is_string() && a.body["title"].is_string() && a.body["detail"].is_string()
    );
}

const JSON: (&str, &str) = ("content-type", "application/json");
const CLIENT: (&str, &str) = ("authorization", "Bearer client-secret");
const OPERATOR: (&str, &str) = ("authorization", "Bearer operator-secret");

#[tokio::test]
async fn a_missing_or_unknown_token_is_401_before_anything_else() {
    let cases: &[(Method, &str, &str)] = &[
        (
            Method::GET,
            "/v1/sagas/0193b1c2-7d1e-7f3a-9c4b-1a2b3c4d5e6f",
            "",
        ),
        (Method::GET, "/v1/sagas/not-a-uuid", ""),
        (Method::POST, "/v1/sagas", "not json"),
        (Method::POST, "/v1/definitions", "{}"),
        (Method::GET, "/v1/nowhere", ""),
        (Method::DELETE, "/v1/sagas", ""),
        (Method::POST, "/v1/sagas/not-a-uuid/terminate", ""),
    ];
    for (method, path, body) in cases {
        for auth in [None, Some("Bearer wrong"), Some("Basic client-secret")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let a = call(with_tokens(), method.clone(), path, &headers, body).await;
            assert_problem(&a, StatusCode::UNAUTHORIZED);
            assert_eq!(
                a.headers
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer"),
                "{method} {path}"
            );
        }
    }
}

#[tokio::test]
async fn open_endpoints_need_no_token() {
    let a = call(with_tokens(), Method::GET, "/healthz", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["status"], "ok");
    let a = call(with_tokens(), Method::GET, "/openapi.json", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["openapi"], "3.1.0");
    // Neither server is there: not ready, and says which.
    let a = call(with_tokens(), Method::GET, "/readyz", &[], "").await;
    assert_problem(&a, StatusCode::SERVICE_UNAVAILABLE);
    let detail = a.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("PostgreSQL") && detail.contains("RabbitMQ"),
        "{detail}"
    );
    let a = call(with_tokens(), Method::GET, "/elsewhere", &[], "").await;
    assert_problem(&a, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn operator_actions_need_the_operator_role() {
    let id = "0193b1c2-7d1e-7f3a-9c4b-1a2b3c4d5e6f";
    for action in ["retry", "skip", "terminate"] {
        let path = format!("/v1/sagas/{id}/{action}");
        let a = call(
            with_tokens(),
            Method::POST,
            &path,
            &[CLIENT, JSON],
            r#"{"reason":"x"}"#,
        )
        .await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        // The role is checked before the path: still 403 for a bad id.
        let a = call(
            with_tokens(),
            Method::POST,
            &format!("/v1/sagas/nope/{action}"),
            &[CLIENT],
            "",
        )
        .await;
        assert_problem(&a, StatusCode::FORBIDDEN);
        // An operator gets past it, to the path check.
        let a = call(
            with_tokens(),
            Method::POST,
            &format!("/v1/sagas/nope/{action}"),
            &[OPERATOR],
            "",
        )
        .await;
        assert_problem(&a, StatusCode::BAD_REQUEST);
    }
    // A client may cancel: past auth, to the path check.
    let a = call(
        with_tokens(),
        Method::POST,
        "/v1/sagas/nope/cancel",
        &[CLIENT],
        "",
    )
    .await;
    assert_problem(&a, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let a = call(app(vec![]), Method::GET, "/v1/nowhere", &[], "").await;
    assert_problem(&a, StatusCode::NOT_FOUND);
    let a = call(app(vec![]), Method::DELETE, "/v1/sagas", &[], "").await;
    assert_problem(&a, StatusCode::METHOD_NOT_ALLOWED);
    let allow = a
        .headers
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let a = call(app(vec![]), Method::PUT, "/v1/sagas/x/cancel", &[], "").await;
    assert_problem(&a, StatusCode::METHOD_NOT_ALLOWED);
}

/// Method, path, headers, body, and the status expected.
type Case = (
    Method,
    String,
    Vec<(&'static str, &'static str)>,
    String,
    StatusCode,
);

#[tokio::test]
async fn requests_refused_before_the_engine() {
    let id = "0193b1c2-7d1e-7f3a-9c4b-1a2b3c4d5e6f";
    let ok_start = r#"{"definition":"order","input":{"order_id":"o"}}"#;
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/sagas/not-a-uuid".into(),
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/sagas/not-a-uuid/history".into(),
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            format!("/v1/sagas/{id}?wait=soon"),
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            format!("/v1/sagas/{id}?wait=1s&revision=1.5"),
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/sagas?limit=0".into(),
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/sagas?state=bogus".into(),
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/definitions/order/versions/0".into(),
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/definitions/order/versions/1.5".into(),
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/sagas".into(),
            vec![],
            ok_start.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Method::POST,
            "/v1/sagas".into(),
            vec![("content-type", "text/plain")],
            ok_start.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Method::POST,
            "/v1/sagas".into(),
            vec![JSON],
            "{\"definition\":".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/sagas".into(),
            vec![JSON, ("idempotency-key", "has space")],
            ok_start.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/sagas".into(),
            vec![JSON],
            format!("{{\"definition\":\"{}\"}}", "x".repeat(2000)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::POST,
            "/v1/definitions".into(),
            vec![],
            "{}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Method::POST,
            "/v1/definitions".into(),
            vec![JSON],
            format!("{}{}", "[".repeat(500), "]".repeat(500)),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("/v1/sagas/{id}/signals/ev"),
            vec![("content-type", "text/plain")],
            "1".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Method::POST,
            format!("/v1/sagas/{id}/cancel"),
            vec![JSON],
            "[".into(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, headers, body, status) in cases {
        let a = call(app(vec![]), method.clone(), &path, &headers, &body).await;
        assert_eq!(a.status, status, "{method} {path} {headers:?}: {}", a.body);
        assert_problem(&a, status);
    }
}

#[tokio::test]
async fn validation_problems_point_at_the_value() {
    let id = "0193b1c2-7d1e-7f3a-9c4b-1a2b3c4d5e6f";
    let cases: Vec<(String, &str, &[&str])> = vec![
        (
            "/v1/sagas".into(),
            r#"{"definition":"order","extra":1}"#,
            &["/extra"],
        ),
        (
            "/v1/sagas".into(),
            r#"{"definition":"order","input":[1]}"#,
            &["/input"],
        ),
        (
            "/v1/sagas".into(),
            r#"{"definition":"order","version":"1"}"#,
            &["/version"],
        ),
        (
            "/v1/sagas".into(),
            r#"{"definition":"order","input":{"order_id":"a\u0000b"}}"#,
            &["/input/order_id"],
        ),
        (
            "/v1/sagas".into(),
            r#"{"definition":"order","input":{"n":9223372036854775808}}"#,
            &["/input/n"],
        ),
        (
            "/v1/sagas".into(),
            r#"{"definition":"order","input":{"n":-9223372036854775809}}"#,
            &["/input/n"],
        ),
        (
            format!("/v1/sagas/{id}/cancel"),
            r#"{"reason":"x","why":1}"#,
            &["/why"],
        ),
        (format!("/v1/sagas/{id}/skip"), "", &["/reason"]),
        (format!("/v1/sagas/{id}/skip"), "{}", &["/reason"]),
        (
            format!("/v1/sagas/{id}/terminate"),
            r#"{"reason":""}"#,
            &["/reason"],
        ),
        (
            format!("/v1/sagas/{id}/signals/ev"),
            r#"{"a":"\u0000"}"#,
            &["/a"],
        ),
        ("/v1/definitions".into(), "[]", &[""]),
        (
            "/v1/definitions".into(),
            r#"{"name":"typed","steps":[{"name":"a","task":"t.a","timeout":5}]}"#,
            &["/steps/0/timeout"],
        ),
    ];
    for (path, body, pointers) in cases {
        let headers: &[(&str, &str)] = if body.is_empty() { &[] } else { &[JSON] };
        let a = call(app(vec![]), Method::POST, &path, headers, body).await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY);
        let got: Vec<&str> = a.body["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["pointer"].as_str())
            .collect();
        assert_eq!(got, *pointers, "{path} {body}: {}", a.body);
    }
}
