//! `saga.start`: starts a saga like `POST /v1/sagas`. The body is `{ "definition", "version",
//! "input" }` (unknown fields refused; `version` null or absent = the latest; `input` an object,
//! null or absent = `{}`); the `message_id`, when present and not empty, is the idempotency key,
//! shared with the API's `Idempotency-Key`. The request compared on a replay is the body as parsed
//! JSON, as the API compares it.

use lapin::message::Delivery;
use saga_amqp::clip;
use serde_json::{Map, Value};

use super::consumer::{Ctx, Disposition, Unusable};
use super::replies::kind_of;
use super::{escape_pointer, find_nul};
use crate::definition::Violation;
use crate::engine::{EngineError, StartRequest};

/// A start message that has the right shape.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StartMessage {
    pub(super) definition: String,
    pub(super) version: Option<i32>,
    pub(super) input: Value,
    /// The body as parsed JSON.
    pub(super) request: Value,
}

pub(super) async fn handle(ctx: &Ctx, delivery: &Delivery) -> Disposition {
    let key = match idempotency_key(delivery) {
        Ok(key) => key,
        Err(reason) => return Disposition::DeadLetter(Unusable::Malformed, reason),
    };
    let start = match parse(&delivery.data) {
        Ok(start) => start,
        Err(reason) => return Disposition::DeadLetter(Unusable::Malformed, reason),
    };
    let request = StartRequest {
        definition: start.definition,
        version: start.version,
        input: start.input,
        idempotency_key: key.clone(),
        request: start.request,
        actor: "amqp".into(),
    };
    let started = ctx
        .retry("start a saga", || ctx.engine.start(request.clone()))
        .await;
    match started {
        None => Disposition::Leave,
        Some(Ok(started)) => {
            tracing::Span::current().record("saga.id", tracing::field::display(started.status.id));
            if !started.created {
                tracing::info!("a start message replayed an idempotency key: nothing new started");
            }
            Disposition::Ack
        }
        Some(Err(EngineError::InvalidStart(violations))) => Disposition::DeadLetter(
            Unusable::Invalid,
            format!("cannot start a saga: {}", describe(&violations)),
        ),
        Some(Err(EngineError::KeyReused)) => Disposition::DeadLetter(
            Unusable::KeyReused,
            format!(
                "cannot start a saga: the message_id {:?} was already used as the idempotency key of a different request",
                clip(key.as_deref().unwrap_or_default(), 255)
            ),
        ),
        Some(Err(e)) => {
            Disposition::DeadLetter(Unusable::Failed, format!("cannot start a saga: {e}"))
        }
    }
}

/// The `message_id`, as an idempotency key: 1–255 visible ASCII characters, as the API's
/// `Idempotency-Key`; an empty one counts as absent.
fn idempotency_key(delivery: &Delivery) -> Result<Option<String>, String> {
    let Some(id) = delivery.properties.message_id().as_ref() else {
        return Ok(None);
    };
    let id = id.as_str();
    if id.is_empty() {
        return Ok(None);
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "cannot start a saga: the message_id {:?} is not an idempotency key (1–255 visible ASCII characters)",
            clip(id, 64)
        ));
    }
    Ok(Some(id.to_owned()))
}

/// Parses a start body; the reason lists every violation with its pointer.
pub(super) fn parse(data: &[u8]) -> Result<StartMessage, String> {
    let value: Value = serde_json::from_slice(data)
        .map_err(|e| format!("cannot start a saga: the body is not JSON: {e}"))?;
    let Value::Object(obj) = &value else {
        return Err(format!(
            "cannot start a saga: {}",
            describe(&[Violation::new(
                "",
                format!("must be an object, not {}", kind_of(&value))
            )])
        ));
    };
    let mut violations = Vec::new();
    for key in obj.keys() {
        if !matches!(key.as_str(), "definition" | "version" | "input") {
            violations.push(Violation::new(
                format!("/{}", escape_pointer(key)),
                "unknown field",
            ));
        }
    }
    let definition = match obj.get("definition") {
        Some(Value::String(s)) if s.contains('\0') => {
            violations.push(Violation::new(
                "/definition",
                "must not hold a NUL character (\\u0000)",
            ));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => {
            violations.push(Violation::new("/definition", "is required"));
            None
        }
        Some(other) => {
            violations.push(Violation::new(
                "/definition",
                format!("must be a string, not {}", kind_of(other)),
            ));
            None
        }
    };
    let version = match obj.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => match v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n >= 1)
        {
            Some(n) => Some(n),
            None => {
                violations.push(Violation::new("/version", "must be a positive integer"));
                None
            }
        },
    };
    let input = match obj.get("input") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => {
            if let Some(pointer) = find_nul(v, "/input") {
                violations.push(Violation::new(
                    pointer,
                    "must not hold a NUL character (\\u0000)",
                ));
            }
            v.clone()
        }
        Some(other) => {
            violations.push(Violation::new(
                "/input",
                format!("must be an object, not {}", kind_of(other)),
            ));
            Value::Null
        }
    };
    match definition {
        Some(definition) if violations.is_empty() => Ok(StartMessage {
            definition,
            version,
            input,
            request: value.clone(),
        }),
        _ => Err(format!("cannot start a saga: {}", describe(&violations))),
    }
}

/// Violations in words: `"/input/order_id: is required; /version: must be a positive integer"`.
fn describe(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| {
            let pointer = if v.pointer.is_empty() {
                "(the body)"
            } else {
                v.pointer.as_str()
            };
            format!("{pointer}: {}", v.detail)
        })
        .collect();
    if parts.is_empty() {
        "the request is invalid".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_start_body_parses_with_defaults() {
        let body = json!({ "definition": "order" });
        let s = parse(body.to_string().as_bytes()).expect("parses");
        assert_eq!(s.definition, "order");
        assert_eq!(s.version, None);
        assert_eq!(s.input, json!({}));
        assert_eq!(s.request, body);
        let s = parse(br#"{"definition":"order","version":2,"input":{"x":1}}"#).expect("parses");
        assert_eq!((s.version, s.input), (Some(2), json!({ "x": 1 })));
        let s = parse(br#"{"definition":"order","version":null,"input":null}"#).expect("parses");
        assert_eq!((s.version, s.input), (None, json!({})));
    }

    #[test]
    fn bad_start_bodies_list_every_violation() {
        for (body, expected) in [
            (&b"nope"[..], vec!["not JSON"]),
            (b"[]", vec!["(the body): must be an object, not an array"]),
            (b"{}", vec!["/definition: is required"]),
            (
                br#"{"definition":1,"version":0,"input":[],"inptu":{}}"#,
                vec![
                    "/inptu: unknown field",
                    "/definition: must be a string, not a number",
                    "/version: must be a positive integer",
                    "/input: must be an object, not an array",
                ],
            ),
            (
                br#"{"definition":"a","version":1.5}"#,
                vec!["/version: must be a positive integer"],
            ),
            (
                br#"{"definition":"a","version":4294967296}"#,
                vec!["/version: must be a positive integer"],
            ),
            (
                br#"{"definition":"a","input":{"k":["\u0000"]}}"#,
                vec!["/input/k/0: must not hold a NUL"],
            ),
        ] {
            let reason = parse(body).expect_err(&String::from_utf8_lossy(body));
            assert!(reason.starts_with("cannot start a saga: "), "{reason}");
            for e in expected {
                assert!(reason.contains(e), "{reason:?} lacks {e:?}");
            }
        }
    }
}
