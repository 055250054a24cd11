//! The query strings of `GET /v1/sagas` (filters, page) and `GET /v1/sagas/{id}` (long poll),
//! and the list's opaque cursor. A value that does not parse, an unknown or repeated parameter is
//! 400: a typo must not silently widen a filter.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::params::{excerpt, once, unknown_parameter};
use super::problem::ApiError;
use crate::machine::SagaState;
use crate::store::sagas::ListFilter;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;
/// A long poll waits at most this long, whatever it asks for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Parsed `GET /v1/sagas` parameters. `matches_nothing`: a `definition` no definition can have
/// (it holds a NUL character, which Postgres cannot even compare): the answer is an empty page.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub filter: ListFilter,
    pub matches_nothing: bool,
}

pub fn list_query(pairs: Vec<(String, String)>) -> Result<ListQuery, ApiError> {
    let mut filter = ListFilter {
        limit: DEFAULT_LIMIT,
        ..ListFilter::default()
    };
    let (mut definition, mut stuck, mut updated_before, mut limit, mut cursor) =
        (None, None, None, None, None);
    for (name, value) in pairs {
        match name.as_str() {
            "state" => filter.states.push(SagaState::parse(&value).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "`{}` is not a saga state (running, compensating, suspended, completed, compensated, terminated)",
                    excerpt(&value)
                ))
            })?),
            "definition" => once(&mut definition, &name, value)?,
            "stuck" => once(&mut stuck, &name, value)?,
            "updated_before" => once(&mut updated_before, &name, value)?,
            "limit" => once(&mut limit, &name, value)?,
            "cursor" => once(&mut cursor, &name, value)?,
            _ => return Err(unknown_parameter(&name)),
        }
    }
    filter.states.sort_by_key(|s| s.as_str());
    filter.states.dedup();
    let matches_nothing = definition.as_deref().is_some_and(|d| d.contains('\0'));
    filter.definition = definition;
    filter.stuck = stuck
        .map(|s| match s.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ApiError::BadRequest(format!(
                "stuck must be true or false, not `{}`",
                excerpt(&s)
            ))),
        })
        .transpose()?;
    filter.updated_before = updated_before.map(|t| parse_timestamp(&t)).transpose()?;
    if let Some(l) = limit {
        filter.limit = l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit must be an integer from 1 to {MAX_LIMIT}, not `{}`",
                    excerpt(&l)
                ))
            })?;
    }
    filter.after = cursor.map(|c| decode_cursor(&c)).transpose()?;
    Ok(ListQuery {
        filter,
        matches_nothing,
    })
}

/// An RFC 3339 timestamp. A `+` offset that arrived unencoded in a query string reads as a
/// space: take it back.
fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|e| match text.contains(' ') {
            true => DateTime::parse_from_rfc3339(&text.replace(' ', "+")),
            false => Err(e),
        })
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "updated_before must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z, not `{}`",
                excerpt(text)
            ))
        })
}

/// The cursor of the page after the item `(created_at, id)`: 16 hex digits of the timestamp's
/// microseconds (Postgres's precision), 32 of the id.
pub fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    // Two's complement keeps dates before 1970 round-tripping.
    format!(
        "{:016x}{:032x}",
        created_at.timestamp_micros() as u64,
        id.as_u128()
    )
}

pub fn decode_cursor(text: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let refuse = || ApiError::BadRequest("the cursor is not one this service gave out".into());
    if text.len() != 48 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse());
    }
    let micros = u64::from_str_radix(&text[..16], 16).map_err(|_| refuse())? as i64;
    let id = u128::from_str_radix(&text[16..], 16).map_err(|_| refuse())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(refuse)?;
    Ok((at, Uuid::from_u128(id)))
}

/// Parsed `GET /v1/sagas/{id}` parameters: `wait` (capped at [`MAX_WAIT`]) and `revision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusQuery {
    pub wait: Option<Duration>,
    pub revision: Option<i64>,
}

pub fn status_query(pairs: Vec<(String, String)>) -> Result<StatusQuery, ApiError> {
    let (mut wait, mut revision) = (None, None);
    for (name, value) in pairs {
        match name.as_str() {
            "wait" => once(&mut wait, &name, value)?,
            "revision" => once(&mut revision, &name, value)?,
            _ => return Err(unknown_parameter(&name)),
        }
    }
    let wait = wait
        .map(|w| {
            humantime::parse_duration(w.trim())
                .map(|d| d.min(MAX_WAIT))
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "wait must be a duration such as 250ms, 10s or 1m, not `{}`",
                        excerpt(&w)
                    ))
                })
        })
        .transpose()?;
    let revision = revision
        .map(|r| {
            r.parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "revision must be an integer, not `{}`",
                    excerpt(&r)
                ))
            })
        })
        .transpose()?;
    Ok(StatusQuery { wait, revision })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        let uri: axum::http::Uri = format!("/x?{q}").parse().expect("uri");
        super::super::params::query_pairs(&uri).expect("pairs")
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let at = DateTime::parse_from_rfc3339("2026-11-21T10:00:00.123456Z")
            .expect("ts")
            .with_timezone(&Utc);
        let id = Uuid::now_v7();
        let c = encode_cursor(at, id);
        assert_eq!(decode_cursor(&c).ok(), Some((at, id)));
        let old = DateTime::from_timestamp_micros(-1_000_001).expect("ts");
        assert_eq!(decode_cursor(&encode_cursor(old, id)).ok(), Some((old, id)));
        assert_eq!(decode_cursor(&c.to_uppercase()).ok(), Some((at, id)));
        for bad in [
            "",
            "!!not-a-cursor!!",
            &c[1..],
            &format!("{c}0"),
            &format!("+{}", &c[1..]),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_filters_parse() {
        let q = list_query(pairs("state=running&state=completed&state=running&definition=order&stuck=false&limit=3&updated_before=2026-01-01T00:00:00%2B01:00"))
            .expect("valid");
        assert_eq!(q.filter.states, [SagaState::Completed, SagaState::Running]);
        assert_eq!(q.filter.definition.as_deref(), Some("order"));
        assert_eq!(q.filter.stuck, Some(false));
        assert_eq!(q.filter.limit, 3);
        assert_eq!(
            q.filter.updated_before.map(|t| t.to_rfc3339()).as_deref(),
            Some("2025-12-31T23:00:00+00:00")
        );
        assert!(!q.matches_nothing);

        let d = list_query(vec![]).expect("defaults");
        assert_eq!(d.filter.limit, DEFAULT_LIMIT);
        assert!(d.filter.states.is_empty() && d.filter.after.is_none() && d.filter.stuck.is_none());

        // An unencoded `+` arrives as a space.
        let plus = list_query(pairs("updated_before=2026-01-01T00:00:00+01:00")).expect("plus");
        assert!(plus.filter.updated_before.is_some());
        assert!(
            list_query(pairs("definition=a%00b"))
                .expect("nul")
                .matches_nothing
        );
        assert!(list_query(pairs("limit=500")).is_ok());
        assert!(list_query(pairs("limit=1")).is_ok());
    }

    #[test]
    fn bad_list_filters_are_400() {
        for q in [
            "limit=0",
            "limit=501",
            "limit=-1",
            "limit=abc",
            "limit=",
            "state=bogus",
            "state=",
            "stuck=maybe",
            "stuck=TRUE",
            "updated_before=yesterday",
            "cursor=%21%21not-a-cursor%21%21",
            "definition=a&definition=b",
            "limit=1&limit=2",
            "colour=red",
        ] {
            assert!(
                matches!(list_query(pairs(q)), Err(ApiError::BadRequest(_))),
                "{q}"
            );
        }
    }

    #[test]
    fn long_poll_parameters() {
        assert_eq!(status_query(vec![]).ok(), Some(StatusQuery::default()));
        assert_eq!(
            status_query(pairs("wait=30s&revision=7")).ok(),
            Some(StatusQuery {
                wait: Some(Duration::from_secs(30)),
                revision: Some(7)
            })
        );
        assert_eq!(
            status_query(pairs("wait=5m")).ok().and_then(|q| q.wait),
            Some(MAX_WAIT)
        );
        assert_eq!(
            status_query(pairs("wait=250ms")).ok().and_then(|q| q.wait),
            Some(Duration::from_millis(250))
        );
        for q in [
            "wait=soon",
            "wait=",
            "wait=-1s",
            "wait=1s&revision=x",
            "wait=1s&revision=1.5",
            "revision=",
            "wait=1s&wait=2s",
            "x=1",
        ] {
            assert!(
                matches!(status_query(pairs(q)), Err(ApiError::BadRequest(_))),
                "{q}"
            );
        }
    }
}
