//! Path, header and query parameters, parsed at the edge: a saga id that is not a UUID or a
//! version that is not a positive integer is 400 before any handler runs.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::Uri;
use axum::http::request::Parts;
use uuid::Uuid;

use super::problem::ApiError;

/// The `{id}` of a `/v1/sagas/{id}…` path.
#[derive(Debug, Clone, Copy)]
pub struct SagaId(pub Uuid);

/// The `{name}` (and `{version}`, when the route has it) of a `/v1/definitions/…` path.
#[derive(Debug, Clone)]
pub struct DefinitionPath {
    pub name: String,
    pub version: Option<i64>,
}

/// The `{event}` of `/v1/sagas/{id}/signals/{event}`.
#[derive(Debug, Clone)]
pub struct EventName(pub String);

async fn params(parts: &mut Parts) -> Result<RawPathParams, ApiError> {
    RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::BadRequest(format!("the path is malformed: {e}")))
}

fn param<'a>(params: &'a RawPathParams, name: &str) -> Result<&'a str, ApiError> {
    params
        .iter()
        .find_map(|(k, v)| (k == name).then_some(v))
        .ok_or_else(|| ApiError::Internal(format!("the route has no `{name}` parameter")))
}

impl<S: Send + Sync> FromRequestParts<S> for SagaId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = params(parts).await?;
        parse_saga_id(param(&params, "id")?).map(SagaId)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for DefinitionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = params(parts).await?;
        let name = param(&params, "name")?.to_owned();
        let version = match params.iter().find(|(k, _)| *k == "version") {
            Some((_, v)) => Some(parse_version(v)?),
            None => None,
        };
        Ok(DefinitionPath { name, version })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for EventName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = params(parts).await?;
        Ok(EventName(param(&params, "event")?.to_owned()))
    }
}

pub fn parse_saga_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(text)
        .map_err(|_| ApiError::BadRequest(format!("`{}` is not a saga id (a UUID)", excerpt(text))))
}

/// A version in a path: a positive integer in decimal digits. Beyond `i64` it is not a version
/// this service can hold either, so 400 as well.
pub fn parse_version(text: &str) -> Result<i64, ApiError> {
    let refuse = || {
        ApiError::BadRequest(format!(
            "`{}` is not a version (a positive integer)",
            excerpt(text)
        ))
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    match text.parse::<i64>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(refuse()),
    }
}

/// The `Idempotency-Key` header of a start: 1–255 visible ASCII characters.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        let Some(value) = values.next() else {
            return Ok(IdempotencyKey(None));
        };
        if values.next().is_some() {
            return Err(ApiError::BadRequest(
                "more than one Idempotency-Key header".into(),
            ));
        }
        parse_idempotency_key(value.as_bytes()).map(|k| IdempotencyKey(Some(k)))
    }
}

pub fn parse_idempotency_key(bytes: &[u8]) -> Result<String, ApiError> {
    let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    if bytes.is_empty() || bytes.len() > 255 || !visible {
        return Err(ApiError::BadRequest(
            "an Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces)".into(),
        ));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// The query string's `name=value` pairs, decoded, in order (repeated names kept).
pub fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, ApiError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest(format!("the query string is malformed: {e}")))
}

/// Refuses a parameter given twice where it may be given once.
pub fn once(slot: &mut Option<String>, name: &str, value: String) -> Result<(), ApiError> {
    if slot.replace(value).is_some() {
        return Err(ApiError::BadRequest(format!(
            "the query parameter `{name}` is given more than once"
        )));
    }
    Ok(())
}

pub fn unknown_parameter(name: &str) -> ApiError {
    ApiError::BadRequest(format!("unknown query parameter `{}`", excerpt(name)))
}

/// A user-supplied text quoted in an error, cut short.
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("1").ok(), Some(1));
        assert_eq!(parse_version("0042").ok(), Some(42));
        for bad in [
            "0",
            "-1",
            "abc",
            "1.5",
            "+1",
            "",
            " 1",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(parse_version(bad), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn saga_ids() {
        let id = Uuid::now_v7();
        assert_eq!(parse_saga_id(&id.to_string()).ok(), Some(id));
        assert!(parse_saga_id("not-a-uuid").is_err());
        assert!(parse_saga_id("").is_err());
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(
            parse_idempotency_key(b"key-1").ok().as_deref(),
            Some("key-1")
        );
        assert!(parse_idempotency_key("k".repeat(255).as_bytes()).is_ok());
        assert!(parse_idempotency_key(b"!~").is_ok());
        for bad in [
            &b""[..],
            "k".repeat(256).as_bytes(),
            b"has space",
            b"tab\there",
            "caf\u{e9}".as_bytes(),
            b"\x7f",
        ] {
            assert!(parse_idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn query_pairs_keep_repeats_and_decode() {
        let uri: Uri = "/v1/sagas?state=running&state=completed&definition=a%20b&x=1+2"
            .parse()
            .expect("uri");
        assert_eq!(
            query_pairs(&uri).expect("pairs"),
            [
                ("state".to_owned(), "running".to_owned()),
                ("state".into(), "completed".into()),
                ("definition".into(), "a b".into()),
                ("x".into(), "1 2".into()),
            ]
        );
        assert!(
            query_pairs(&"/v1/sagas".parse().expect("uri"))
                .expect("empty")
                .is_empty()
        );
    }
}
