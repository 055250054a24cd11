//! `saga.events.inbox`: external events, delivered to a saga as signals — accepted and refused
//! exactly as `POST /v1/sagas/{id}/signals/{event}`.
//!
//! The routing key is the event name. With a `correlation_id` (the saga id) the body is the whole
//! payload (an empty body is `null`, as over HTTP), and a body that is an object whose `saga_id`
//! names another saga is refused. Without one, the body is `{ "saga_id", "payload" }` (`payload`
//! absent = `null`, other fields refused).

use lapin::message::Delivery;
use saga_amqp::clip;
use serde_json::Value;
use uuid::Uuid;

use super::consumer::{Ctx, Disposition, Unusable};
use super::find_nul;
use super::replies::kind_of;
use crate::engine::EngineError;
use crate::machine::Input;

/// An event that names a saga and carries a payload.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Event {
    pub(super) saga_id: Uuid,
    pub(super) event: String,
    pub(super) payload: Value,
}

pub(super) async fn handle(ctx: &Ctx, delivery: &Delivery) -> Disposition {
    let correlation = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str());
    let event = match parse(delivery.routing_key.as_str(), correlation, &delivery.data) {
        Ok(event) => event,
        Err(reason) => return Disposition::DeadLetter(Unusable::Malformed, reason),
    };
    let Event {
        saga_id,
        event,
        payload,
    } = event;
    tracing::Span::current().record("saga.id", tracing::field::display(saga_id));
    let applied = ctx
        .retry("deliver a signal", || {
            ctx.engine.apply(
                saga_id,
                Input::Signal {
                    event: event.clone(),
                    payload: payload.clone(),
                    actor: "amqp".into(),
                },
            )
        })
        .await;
    match applied {
        None => Disposition::Leave,
        Some(Ok(_)) => Disposition::Ack,
        Some(Err(EngineError::Refused(reason))) => Disposition::DeadLetter(
            Unusable::Refused,
            format!("event {event:?} refused by saga {saga_id}: {reason}"),
        ),
        Some(Err(EngineError::NotFound)) => Disposition::DeadLetter(
            Unusable::UnknownSaga,
            format!("event {event:?} names an unknown saga {saga_id}"),
        ),
        Some(Err(e)) => Disposition::DeadLetter(
            Unusable::Failed,
            format!("event {event:?} could not be delivered: {e}"),
        ),
    }
}

/// Parses an event; the error is the reason it is refused.
pub(super) fn parse(
    routing_key: &str,
    correlation_id: Option<&str>,
    data: &[u8],
) -> Result<Event, String> {
    if routing_key.is_empty() {
        return Err("the event has no name (its routing key is empty)".into());
    }
    let event = routing_key.to_owned();
    let correlation_id = correlation_id.filter(|c| !c.is_empty());
    let (saga_id, payload) = match correlation_id {
        Some(c) => {
            let saga_id = Uuid::parse_str(c).map_err(|_| {
                format!(
                    "the correlation_id {:?} is not a saga id (a UUID)",
                    clip(c, 64)
                )
            })?;
            let payload: Value = if data.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(data)
                    .map_err(|e| format!("the event's body is not JSON: {e}"))?
            };
            if let Some(named) = payload
                .as_object()
                .and_then(|o| o.get("saga_id"))
                .filter(|v| !v.is_null())
                && named.as_str().and_then(|s| Uuid::parse_str(s).ok()) != Some(saga_id)
            {
                return Err(format!(
                    "the body's saga_id ({}) disagrees with the correlation_id {saga_id}",
                    clip(&named.to_string(), 64)
                ));
            }
            (saga_id, payload)
        }
        None => {
            let body: Value = serde_json::from_slice(data).map_err(|e| {
                format!("the event's body is not JSON (without a correlation_id it must be {{ \"saga_id\", \"payload\" }}): {e}")
            })?;
            let Value::Object(obj) = body else {
                return Err(format!(
                    "without a correlation_id the body must be an object {{ \"saga_id\", \"payload\" }}, not {}",
                    kind_of(&body)
                ));
            };
            if let Some(unknown) = obj
                .keys()
                .find(|k| !matches!(k.as_str(), "saga_id" | "payload"))
            {
                return Err(format!(
                    "unknown field {:?} (without a correlation_id the body is {{ \"saga_id\", \"payload\" }})",
                    clip(unknown, 64)
                ));
            }
            let saga_id = match obj.get("saga_id") {
                Some(Value::String(s)) => Uuid::parse_str(s)
                    .map_err(|_| format!("the saga_id {:?} is not a UUID", clip(s, 64)))?,
                None | Some(Value::Null) => {
                    return Err(
                        "the event names no saga: no correlation_id and no saga_id in the body"
                            .into(),
                    );
                }
                Some(other) => {
                    return Err(format!(
                        "the saga_id is {}, not a string holding a UUID",
                        kind_of(other)
                    ));
                }
            };
            (saga_id, obj.get("payload").cloned().unwrap_or(Value::Null))
        }
    };
    if let Some(pointer) = find_nul(&payload, "") {
        return Err(format!(
            "the payload holds a NUL character (\\u0000) at {pointer:?}, which cannot be stored"
        ));
    }
    Ok(Event {
        saga_id,
        event,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id() -> Uuid {
        Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0042)
    }

    #[test]
    fn events_parse_both_ways() {
        let c = id().to_string();
        let with = parse("approved", Some(&c), br#"{"by":"boss"}"#).expect("parses");
        assert_eq!(
            with,
            Event {
                saga_id: id(),
                event: "approved".into(),
                payload: json!({ "by": "boss" })
            }
        );
        assert_eq!(
            parse("approved", Some(&c), b"").expect("empty").payload,
            Value::Null
        );
        let same = json!({ "saga_id": c, "x": 1 });
        assert_eq!(
            parse("approved", Some(&c), same.to_string().as_bytes())
                .expect("same id")
                .payload,
            same
        );
        let wrapped = json!({ "saga_id": c, "payload": [1, 2] }).to_string();
        let w = parse("approved", None, wrapped.as_bytes()).expect("wrapped");
        assert_eq!((w.saga_id, w.payload), (id(), json!([1, 2])));
        let bare = json!({ "saga_id": c }).to_string();
        assert_eq!(
            parse("approved", Some(""), bare.as_bytes())
                .expect("no payload")
                .payload,
            Value::Null
        );
    }

    #[test]
    fn refused_events_say_why() {
        let c = id().to_string();
        let other = Uuid::from_u128(9).to_string();
        for (key, corr, body, expected) in [
            ("", Some(c.as_str()), b"1".to_vec(), "no name"),
            ("e", Some("abc"), b"1".to_vec(), "not a saga id"),
            ("e", Some(c.as_str()), b"not json".to_vec(), "not JSON"),
            (
                "e",
                Some(c.as_str()),
                json!({ "saga_id": other }).to_string().into_bytes(),
                "disagrees",
            ),
            (
                "e",
                Some(c.as_str()),
                json!({ "saga_id": 5 }).to_string().into_bytes(),
                "disagrees",
            ),
            ("e", None, b"not json".to_vec(), "not JSON"),
            ("e", None, b"[1]".to_vec(), "must be an object"),
            (
                "e",
                None,
                json!({ "payload": 1 }).to_string().into_bytes(),
                "names no saga",
            ),
            (
                "e",
                None,
                json!({ "saga_id": "x" }).to_string().into_bytes(),
                "not a UUID",
            ),
            (
                "e",
                None,
                json!({ "saga_id": c, "paylod": 1 })
                    .to_string()
                    .into_bytes(),
                "unknown field",
            ),
            ("e", Some(c.as_str()), br#"{"a":"\u0000"}"#.to_vec(), "NUL"),
        ] {
            let reason = parse(key, corr, &body).expect_err(&String::from_utf8_lossy(&body));
            assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
        }
    }
}
