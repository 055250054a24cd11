//! Every HTTP error as one enum, turned into an RFC 9457 `application/problem+json` response in
//! exactly one place ([`ApiError::into_response`]). Internal errors are logged there, once, and
//! never shown to the client.

use axum::http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use thiserror::Error;

use crate::definition::Violation;
use crate::engine::EngineError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of every problem `type`; the suffix names the kind (`validation`, `conflict`, …).
pub const TYPE_PREFIX: &str = "urn:saga:problem:";

#[derive(Debug, Error)]
pub enum ApiError {
    /// 400: a malformed path, query, header or body (not JSON, nested too deeply).
    #[error("{0}")]
    BadRequest(String),
    /// 401, with `WWW-Authenticate: Bearer`.
    #[error("this request needs `Authorization: Bearer <token>` with a known token")]
    Unauthorized,
    /// 403: the token is known but its role may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
    /// 409: refused by the saga's state, or an idempotency key still in use.
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422 with `errors`, each pointing at the offending value.
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<Violation>,
    },
    /// 503: a dependency (PostgreSQL, RabbitMQ) is down; the client may try again.
    #[error("{0}")]
    Unavailable(String),
    /// 500: the client sees a generic detail; the real error is logged once.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 422 for these breaches, with a detail that sums them up.
    pub fn validation(errors: Vec<Violation>) -> ApiError {
        let detail = match errors.as_slice() {
            [one] => match one.pointer.as_str() {
                "" => one.detail.clone(),
                at => format!("{at}: {}", one.detail),
            },
            many => format!("the request has {} errors; see `errors`", many.len()),
        };
        ApiError::Validation { detail, errors }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The last part of the problem `type` URI and the problem's title.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => ("bad-request", "Bad request"),
            ApiError::Unauthorized => ("unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => ("forbidden", "Forbidden"),
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::MethodNotAllowed { .. } => ("method-not-allowed", "Method not allowed"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::PayloadTooLarge { .. } => ("payload-too-large", "Request body too large"),
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported-media-type", "Unsupported media type")
            }
            ApiError::Validation { .. } => ("validation", "Invalid request"),
            ApiError::Unavailable(_) => ("unavailable", "Service unavailable"),
            ApiError::Internal(_) => ("internal", "Internal server error"),
        }
    }
}

/// The RFC 9457 body.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [Violation]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (slug, title) = self.kind();
        let detail = match &self {
            ApiError::Internal(real) => {
                tracing::error!(error = %real, "request failed");
                "the request failed on the server; the error is in its log".to_owned()
            }
            other => other.to_string(),
        };
        let errors = match &self {
            ApiError::Validation { errors, .. } => Some(errors.as_slice()),
            _ => None,
        };
        let problem = Problem {
            kind: format!("{TYPE_PREFIX}{slug}"),
            title,
            status: status.as_u16(),
            detail,
            errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            ApiError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            // The rest of the body is not read: say the connection closes (RFC 9112 §9.6), so
            // that a keep-alive client does not send its next request on it.
            ApiError::PayloadTooLarge { .. } => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::InvalidDefinition(errors) | EngineError::InvalidStart(errors) => {
                ApiError::validation(errors)
            }
            EngineError::KeyInProgress => ApiError::Conflict(e.to_string()),
            EngineError::KeyReused => ApiError::validation(vec![Violation::new(
                "",
                "this Idempotency-Key was used with a different request body",
            )]),
            EngineError::NotFound => ApiError::NotFound("no saga has this id".into()),
            EngineError::Refused(reason) => ApiError::Conflict(reason),
            EngineError::Topology(error) => {
                tracing::warn!(%error, "cannot declare task queues");
                ApiError::Unavailable(
                    "RabbitMQ is unavailable: the definition's task queues could not be declared"
                        .into(),
                )
            }
            EngineError::Store(error) if error.is_unavailable() => {
                tracing::warn!(%error, "the database is unavailable");
                ApiError::Unavailable("the database is unavailable".into())
            }
            EngineError::Store(_) | EngineError::CorruptDefinition { .. } => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

/// The fallback for paths that name nothing.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("nothing is at {}", uri.path()))
}

/// The fallback for a known path with a method it does not take (axum adds `Allow`).
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_413_says_the_connection_closes() {
        let r = ApiError::PayloadTooLarge { limit: 10 }.into_response();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            r.headers().get(CONNECTION).and_then(|v| v.to_str().ok()),
            Some("close")
        );
        let r = ApiError::BadRequest("x".into()).into_response();
        assert!(r.headers().get(CONNECTION).is_none());
    }

    async fn body_of(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let ct = r
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, ct, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn problems_have_every_member() {
        let (status, ct, body) =
            body_of(ApiError::validation(vec![Violation::new("/a", "bad")])).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(ct.as_deref(), Some(PROBLEM_JSON));
        assert_eq!(body["type"], "urn:saga:problem:validation");
        assert_eq!(body["status"], 422);
        assert_eq!(body["detail"], "/a: bad");
        assert_eq!(body["errors"][0]["pointer"], "/a");
        assert!(body["title"].is_string());

        let (status, _, body) = body_of(ApiError::Conflict("no".into())).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(body.get("errors").is_none());
    }

    #[tokio::test]
    async fn internal_errors_are_not_shown() {
        let (status, _, body) = body_of(ApiError::Internal("password=hunter2".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("hunter2"));
    }

    #[test]
    fn engine_errors_map_once() {
        let cases = [
            (EngineError::KeyInProgress, StatusCode::CONFLICT),
            (EngineError::KeyReused, StatusCode::UNPROCESSABLE_ENTITY),
            (EngineError::NotFound, StatusCode::NOT_FOUND),
            (
                EngineError::Refused("not running".into()),
                StatusCode::CONFLICT,
            ),
            (
                EngineError::Topology("down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                EngineError::Store(crate::store::StoreError::Db(sqlx::Error::PoolTimedOut)),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                EngineError::Store(crate::store::StoreError::Corrupt("x".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                EngineError::InvalidStart(vec![Violation::new("/version", "no")]),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e).status(), status);
        }
        match ApiError::from(EngineError::Refused("the saga is not running".into())) {
            ApiError::Conflict(d) => assert_eq!(d, "the saga is not running"),
            other => panic!("{other:?}"),
        }
    }
}
