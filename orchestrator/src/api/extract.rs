//! Reading request bodies, the same way for every endpoint (PROTOCOL.md §2 "Bad requests"):
//!
//! 1. `Content-Type` must be `application/json` (parameters allowed, a charset only `utf-8`),
//!    else 415 — also when it is missing, except that an *empty* body is allowed without one where
//!    the body is optional.
//! 2. The body must fit the configured limit, else 413.
//! 3. It must parse as JSON within serde_json's nesting limit (128), else 400. A number too large
//!    for any Rust type is JSON all the same: 422 with its pointer.
//! 4. Strings and member names must not hold NUL, integers must fit `i64`: else 422 with the
//!    pointer of each offending value (Postgres cannot store the first; the second would be
//!    silently rounded).
//! 5. The typed request is read from the parsed value: a wrong type, a missing or unknown member
//!    is 422 with the pointer of the member.
//!
//! Steps 1 and 2 are here; 3 to 5, pure, are in [`super::json`].

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::json::{parse, parse_value, scan, typed};
use super::problem::ApiError;
use crate::definition::Violation;

/// The configured body limit; handlers' state provides it (`FromRef`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A required JSON body: the typed request and the value it was read from.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Value,
}

/// A JSON body that may be left out (no bytes at all): `None` then.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

/// A required JSON document checked only for JSON itself (steps 1–3), for endpoints that validate
/// the whole document themselves and must report every breach at once: `violations` holds what
/// step 4 found, for the handler to merge with its own.
#[derive(Debug)]
pub struct JsonDocument {
    pub value: Value,
    pub violations: Vec<Violation>,
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    BodyLimit: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read(req, state, Presence::Required).await?;
        let raw = parse(bytes.as_deref().unwrap_or_default())?;
        let value = typed(&raw)?;
        Ok(JsonBody { value, raw })
    }
}

impl<S, T> FromRequest<S> for OptionalJsonBody<T>
where
    S: Send + Sync,
    BodyLimit: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match read(req, state, Presence::Optional).await? {
            None => Ok(OptionalJsonBody(None)),
            Some(bytes) => Ok(OptionalJsonBody(Some(typed(&parse(&bytes)?)?))),
        }
    }
}

impl<S> FromRequest<S> for JsonDocument
where
    S: Send + Sync,
    BodyLimit: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read(req, state, Presence::Required).await?;
        let bytes = bytes.as_deref().unwrap_or_default();
        let value = parse_value(bytes)?;
        let violations = scan(&value, bytes);
        Ok(JsonDocument { value, violations })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Required,
    Optional,
}

/// Steps 1 and 2. `None`: an optional body that was left out.
async fn read<S>(req: Request, state: &S, presence: Presence) -> Result<Option<Bytes>, ApiError>
where
    S: Send + Sync,
    BodyLimit: FromRef<S>,
{
    let BodyLimit(limit) = BodyLimit::from_ref(state);
    let media = check_content_type(req.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()));
    // A required body is judged by its media type before it is read; an optional one after,
    // when it turns out not to be empty.
    let deferred = match presence {
        Presence::Required => {
            media?;
            None
        }
        Presence::Optional => Some(media),
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("the request body could not be read: {rejection}"))
        }
    })?;
    if bytes.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    if let Some(media) = deferred {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        media?;
    }
    Ok(Some(bytes))
}

/// Step 1: `application/json`, with parameters; a `charset` must be UTF-8.
pub fn check_content_type(header: Option<&[u8]>) -> Result<(), ApiError> {
    let Some(header) = header else {
        return Err(ApiError::UnsupportedMediaType(
            "the request has a body but no Content-Type; send `Content-Type: application/json`"
                .into(),
        ));
    };
    let refuse = || {
        ApiError::UnsupportedMediaType(format!(
            "Content-Type `{}` is not supported; send `application/json`",
            String::from_utf8_lossy(header)
                .chars()
                .take(100)
                .collect::<String>()
        ))
    };
    let text = std::str::from_utf8(header).map_err(|_| refuse())?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(refuse());
    }
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !(value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8"))
        {
            return Err(refuse());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(Some(b"application/json")).is_ok());
        assert!(check_content_type(Some(b"Application/JSON; charset=UTF-8")).is_ok());
        assert!(check_content_type(Some(b"application/json;charset=\"utf-8\"")).is_ok());
        for bad in [
            &b"text/plain"[..],
            b"application/json; charset=latin1",
            b"application/jsonx",
            b"application/problem+json",
            b"\xff",
        ] {
            assert!(matches!(
                check_content_type(Some(bad)),
                Err(ApiError::UnsupportedMediaType(_))
            ));
        }
        assert!(matches!(
            check_content_type(None),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    async fn echo(body: JsonBody<Sample>) -> String {
        body.value.name
    }

    async fn echo_optional(body: OptionalJsonBody<Sample>) -> String {
        body.0.map_or_else(|| "<none>".into(), |s| s.name)
    }

    fn app() -> Router {
        Router::new()
            .route("/required", post(echo))
            .route("/optional", post(echo_optional))
            .layer(DefaultBodyLimit::max(64))
            .with_state(BodyLimit(64))
    }

    async fn call(
        path: &str,
        content_type: Option<&str>,
        body: &'static [u8],
    ) -> (StatusCode, String) {
        let mut req = Request::post(path);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let resp = app()
            .oneshot(req.body(Body::from(body)).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn extractor_decisions() {
        let json = Some("application/json");
        assert_eq!(
            call("/required", json, br#"{"name":"a"}"#).await,
            (StatusCode::OK, "a".into())
        );
        assert_eq!(
            call("/required", None, br#"{"name":"a"}"#).await.0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            call("/required", None, b"").await.0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            call("/required", Some("text/plain"), br#"{"name":"a"}"#)
                .await
                .0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            call("/required", json, b"").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call("/required", json, b"{").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call("/required", json, br#"{"name":7}"#).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let (status, body) = call("/required", json, br#"{"name":"x","pad":"0123456789012345678901234567890123456789012345678901234567890123456789"}"#).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(body.contains("\"status\":413"), "{body}");

        assert_eq!(
            call("/optional", None, b"").await,
            (StatusCode::OK, "<none>".into())
        );
        assert_eq!(
            call("/optional", json, b"").await,
            (StatusCode::OK, "<none>".into())
        );
        assert_eq!(
            call("/optional", None, br#"{"name":"b"}"#).await.0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            call("/optional", json, br#"{"name":"b"}"#).await,
            (StatusCode::OK, "b".into())
        );
        let (status, body) = call("/optional", json, br#"{"name":"b","x":1}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body.contains("\"pointer\":\"/x\""), "{body}");
    }
}
