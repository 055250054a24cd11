//! Access (PROTOCOL.md §2): with tokens configured, every `/v1` request needs
//! `Authorization: Bearer <token>`, checked before anything else; retry, skip and terminate need
//! the `operator` role. The caller's name becomes the `actor` of what it does.
//!
//! Token secrets are compared in constant time and never logged.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::ApiError;
use crate::config::{ApiToken, Role};

/// The actor recorded when no tokens are configured.
pub const ANONYMOUS: &str = "anonymous";

/// Who is asking: the token's name and role (`anonymous`, with every right, when no tokens are
/// configured). Put into the request's extensions by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The configured tokens.
#[derive(Clone)]
pub struct Tokens(Arc<[ApiToken]>);

impl Tokens {
    pub fn new(tokens: &[ApiToken]) -> Tokens {
        Tokens(tokens.into())
    }

    /// The caller an `Authorization` header value names; None: 401.
    pub fn caller(&self, authorization: Option<&[u8]>) -> Option<Caller> {
        if self.0.is_empty() {
            return Some(Caller {
                name: ANONYMOUS.into(),
                role: Role::Operator,
            });
        }
        let presented = bearer(authorization?)?;
        // Look at every token, whatever matched, so that timing says nothing about which did.
        let mut found = None;
        for token in self.0.iter() {
            if constant_time_eq(presented, token.secret.as_bytes()) && found.is_none() {
                found = Some(Caller {
                    name: token.name.clone(),
                    role: token.role,
                });
            }
        }
        found
    }
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares without an early exit, so that the time taken does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Whether `path` is under `/v1` (where tokens are needed).
fn needs_token(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Middleware: 401 for a `/v1` request without a known token, before routing decides anything
/// else; otherwise records the [`Caller`] for the handlers.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if needs_token(req.uri().path()) {
        let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        match state.tokens.caller(header) {
            Some(caller) => {
                tracing::Span::current().record("actor", caller.name.as_str());
                req.extensions_mut().insert(caller);
            }
            None => return ApiError::Unauthorized.into_response(),
        }
    }
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            // Only if the router was built without `authenticate`: refuse rather than guess.
            .ok_or(ApiError::Unauthorized)
    }
}

/// A caller with the `operator` role; 403 for any other.
#[derive(Debug, Clone)]
pub struct Operator(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role < Role::Operator {
            return Err(ApiError::Forbidden(format!(
                "the token `{}` has the client role; retry, skip and terminate need an operator token",
                caller.name
            )));
        }
        Ok(Operator(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(&[
            ApiToken {
                name: "ci".into(),
                role: Role::Client,
                secret: "s3cret".into(),
            },
            ApiToken {
                name: "ops".into(),
                role: Role::Operator,
                secret: "0p3rator".into(),
            },
        ])
    }

    #[test]
    fn bearer_tokens_name_their_caller() {
        let t = tokens();
        assert_eq!(
            t.caller(Some(b"Bearer s3cret")).map(|c| (c.name, c.role)),
            Some(("ci".into(), Role::Client))
        );
        assert_eq!(
            t.caller(Some(b"bearer   0p3rator ")).map(|c| c.role),
            Some(Role::Operator)
        );
        for bad in [
            &b"Bearer wrong"[..],
            b"Bearer ",
            b"Bearer",
            b"Basic s3cret",
            b"Bearers3cret",
            b"s3cret",
            b"Bearer s3cre",
            b"Bearer s3crett",
        ] {
            assert_eq!(
                t.caller(Some(bad)),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(t.caller(None), None);
    }

    #[test]
    fn no_tokens_means_anonymous_with_every_right() {
        let t = Tokens::new(&[]);
        let c = t.caller(None).expect("anonymous");
        assert_eq!(c.name, ANONYMOUS);
        assert_eq!(c.role, Role::Operator);
        assert_eq!(t.caller(Some(b"Bearer whatever")), Some(c));
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn only_v1_needs_a_token() {
        assert!(needs_token("/v1"));
        assert!(needs_token("/v1/sagas"));
        assert!(!needs_token("/v10"));
        assert!(!needs_token("/healthz"));
        assert!(!needs_token("/openapi.json"));
    }
}
