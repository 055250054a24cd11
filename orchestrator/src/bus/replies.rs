//! `saga.replies`: workers' replies, applied through the engine.
//!
//! A reply is parsed strictly, from a `serde_json::Value`, so that the reason a malformed one is
//! dead-lettered for says exactly what is wrong. The `correlation_id` property is not consulted:
//! the body's `command_id` is authoritative. Fields the protocol does not name are ignored
//! (workers may add their own).

use lapin::message::Delivery;
use saga_amqp::clip;
use saga_wire::{Reply, ReplyBody, StepError};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::consumer::{Ctx, Disposition, Unusable};
use super::find_nul;
use crate::engine::ReplyApplied;

/// Why a reply cannot be used, and its command when that could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Malformed {
    pub(super) command_id: Option<Uuid>,
    pub(super) reason: String,
}

pub(super) async fn handle(ctx: &Ctx, delivery: &Delivery) -> Disposition {
    let reply = match parse(&delivery.data) {
        Ok(reply) => reply,
        Err(malformed) => return malformed_reply(ctx, malformed).await,
    };
    let command_id = reply.command_id;
    tracing::Span::current().record("command.id", tracing::field::display(command_id));
    let applied = ctx
        .retry("apply a reply", || ctx.engine.reply(reply.clone()))
        .await;
    match applied {
        None => Disposition::Leave,
        Some(Ok(ReplyApplied::Applied | ReplyApplied::Ignored)) => Disposition::Ack,
        Some(Ok(ReplyApplied::UnknownCommand)) => Disposition::DeadLetter(
            Unusable::UnknownCommand,
            format!(
                "unknown command {command_id}: the orchestrator never sent a command with this id"
            ),
        ),
        Some(Err(e)) => Disposition::DeadLetter(
            Unusable::Failed,
            format!("the reply could not be applied: {e}"),
        ),
    }
}

/// Records a malformed reply in its saga's history (when its command is known), then has it
/// dead-lettered.
async fn malformed_reply(ctx: &Ctx, malformed: Malformed) -> Disposition {
    let Malformed { command_id, reason } = malformed;
    let Some(command_id) = command_id else {
        return Disposition::DeadLetter(Unusable::Malformed, reason);
    };
    tracing::Span::current().record("command.id", tracing::field::display(command_id));
    let recorded = ctx
        .retry("record a malformed reply", || {
            ctx.engine.malformed_reply(command_id, reason.clone())
        })
        .await;
    match recorded {
        None => Disposition::Leave,
        Some(Ok(ReplyApplied::UnknownCommand)) => Disposition::DeadLetter(
            Unusable::Malformed,
            format!("{reason} (and no command {command_id} is known)"),
        ),
        Some(Ok(ReplyApplied::Applied | ReplyApplied::Ignored)) => {
            Disposition::DeadLetter(Unusable::Malformed, reason)
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot record a malformed reply in its saga's history");
            Disposition::DeadLetter(Unusable::Malformed, reason)
        }
    }
}

/// Parses a reply body per PROTOCOL.md §3.
pub(super) fn parse(data: &[u8]) -> Result<Reply, Malformed> {
    let no_id = |reason: String| Malformed {
        command_id: None,
        reason,
    };
    let value: Value =
        serde_json::from_slice(data).map_err(|e| no_id(format!("the reply is not JSON: {e}")))?;
    let Value::Object(obj) = &value else {
        return Err(no_id(format!(
            "the reply is not a JSON object but {}",
            kind_of(&value)
        )));
    };
    let command_id = match obj.get("command_id") {
        None | Some(Value::Null) => return Err(no_id("the reply has no command_id".into())),
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map_err(|_| no_id(format!("command_id {:?} is not a UUID", clip(s, 64))))?,
        Some(other) => {
            return Err(no_id(format!(
                "command_id is {}, not a string holding a UUID",
                kind_of(other)
            )));
        }
    };
    let malformed = |reason: String| Malformed {
        command_id: Some(command_id),
        reason,
    };
    let body = match obj.get("status") {
        None | Some(Value::Null) => {
            return Err(malformed(
                "the reply has no status (\"ok\" or \"error\")".into(),
            ));
        }
        Some(Value::String(s)) if s == "ok" => ReplyBody::Ok {
            output: obj.get("output").cloned().unwrap_or(Value::Null),
        },
        Some(Value::String(s)) if s == "error" => ReplyBody::Error {
            error: step_error(obj).map_err(malformed)?,
        },
        Some(Value::String(s)) => {
            return Err(malformed(format!(
                "unknown status {:?} (expected \"ok\" or \"error\")",
                clip(s, 64)
            )));
        }
        Some(other) => {
            return Err(malformed(format!(
                "status is {}, not \"ok\" or \"error\"",
                kind_of(other)
            )));
        }
    };
    if let Some(pointer) = find_nul(&value, "") {
        return Err(malformed(format!(
            "the reply holds a NUL character (\\u0000) at {pointer}, which cannot be stored"
        )));
    }
    Ok(Reply { command_id, body })
}

/// The `error` object of an error reply.
fn step_error(obj: &Map<String, Value>) -> Result<StepError, String> {
    let error = match obj.get("error") {
        Some(Value::Object(e)) => e,
        None | Some(Value::Null) => return Err("an error reply without an error object".into()),
        Some(other) => {
            return Err(format!(
                "an error reply whose error is {}, not an object",
                kind_of(other)
            ));
        }
    };
    let text = |field: &str| match error.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(format!("an error reply whose error has no {field}")),
        Some(other) => Err(format!(
            "an error reply whose error.{field} is {}, not a string",
            kind_of(other)
        )),
    };
    let retryable = match error.get("retryable") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "an error reply whose error.retryable is {}, not a boolean",
                kind_of(other)
            ));
        }
    };
    Ok(StepError {
        code: text("code")?,
        message: text("message")?,
        retryable,
    })
}

/// A JSON value's type, in words.
pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id() -> Uuid {
        Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001)
    }

    #[test]
    fn well_formed_replies_parse() {
        let ok = parse(
            json!({ "command_id": id(), "status": "ok", "output": { "a": 1 } })
                .to_string()
                .as_bytes(),
        );
        assert_eq!(ok, Ok(Reply::ok(id(), json!({ "a": 1 }))));
        let bare = parse(
            json!({ "command_id": id(), "status": "ok", "extra": true })
                .to_string()
                .as_bytes(),
        );
        assert_eq!(bare, Ok(Reply::ok(id(), Value::Null)));
        let err = parse(
            json!({ "command_id": id(), "status": "error",
                    "error": { "code": "declined", "message": "no", "retryable": true } })
            .to_string()
            .as_bytes(),
        );
        assert_eq!(
            err,
            Ok(Reply::error(
                id(),
                StepError {
                    code: "declined".into(),
                    message: "no".into(),
                    retryable: true
                }
            ))
        );
        let null_retryable = parse(
            json!({ "command_id": id(), "status": "error",
                    "error": { "code": "c", "message": "m", "retryable": null } })
            .to_string()
            .as_bytes(),
        );
        assert!(
            matches!(null_retryable, Ok(Reply { body: ReplyBody::Error { error }, .. }) if !error.retryable)
        );
    }

    #[test]
    fn malformed_replies_say_why_and_keep_the_command_when_they_can() {
        let cases: Vec<(Vec<u8>, bool, &str)> = vec![
            (b"not json".to_vec(), false, "not JSON"),
            (b"".to_vec(), false, "not JSON"),
            (b"[1]".to_vec(), false, "not a JSON object"),
            (json!({ "status": "ok" }).to_string().into_bytes(), false, "no command_id"),
            (json!({ "command_id": null, "status": "ok" }).to_string().into_bytes(), false, "no command_id"),
            (json!({ "command_id": 7, "status": "ok" }).to_string().into_bytes(), false, "not a string"),
            (json!({ "command_id": "nope", "status": "ok" }).to_string().into_bytes(), false, "not a UUID"),
            (json!({ "command_id": id() }).to_string().into_bytes(), true, "no status"),
            (json!({ "command_id": id(), "status": "maybe" }).to_string().into_bytes(), true, "unknown status \"maybe\""),
            (json!({ "command_id": id(), "status": 1 }).to_string().into_bytes(), true, "status is a number"),
            (json!({ "command_id": id(), "status": "error" }).to_string().into_bytes(), true, "without an error object"),
            (json!({ "command_id": id(), "status": "error", "error": "boom" }).to_string().into_bytes(), true, "not an object"),
            (
                json!({ "command_id": id(), "status": "error", "error": { "message": "m" } }).to_string().into_bytes(),
                true,
                "has no code",
            ),
            (
                json!({ "command_id": id(), "status": "error", "error": { "code": "c", "message": 5 } })
                    .to_string()
                    .into_bytes(),
                true,
                "error.message is a number",
            ),
            (
                json!({ "command_id": id(), "status": "error", "error": { "code": "c", "message": "m", "retryable": "yes" } })
                    .to_string()
                    .into_bytes(),
                true,
                "error.retryable is a string",
            ),
            (
                json!({ "command_id": id(), "status": "ok", "output": { "k": "a\u{0}b" } }).to_string().into_bytes(),
                true,
                "NUL character (\\u0000) at /output/k",
            ),
        ];
        for (body, has_id, expected) in cases {
            let text = String::from_utf8_lossy(&body).into_owned();
            let err = parse(&body).expect_err(&text);
            assert_eq!(err.command_id.is_some(), has_id, "{text}: {err:?}");
            assert!(
                err.reason.contains(expected),
                "{text}: {:?} lacks {expected:?}",
                err.reason
            );
        }
    }
}
