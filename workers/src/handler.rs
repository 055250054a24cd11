//! Handlers, type-erased: parse the typed input, run the user's function, serialise its output,
//! and turn a panic into an error reply instead of a dead worker.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use saga_wire::{ReplyBody, StepError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Context;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, StepError>> + Send>>;

/// A registered handler, with its input and output types erased.
#[derive(Clone)]
pub(crate) struct Handler(Arc<dyn Fn(Context) -> BoxFuture + Send + Sync>);

impl Handler {
    pub(crate) fn new<T, O, F, Fut>(f: F) -> Handler
    where
        T: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(Context, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    {
        let f = Arc::new(f);
        Handler(Arc::new(move |ctx: Context| {
            let f = f.clone();
            // Everything, the parse included, happens inside the future, so that a panic anywhere
            // in the handler is caught by `call`.
            Box::pin(async move {
                let input: T = serde_path_to_error::deserialize(ctx.input()).map_err(|e| {
                    StepError::permanent(
                        "invalid_input",
                        format!("the command's input does not fit the handler: {e}"),
                    )
                })?;
                let output = f(ctx, input).await?;
                serde_json::to_value(output).map_err(|e| {
                    StepError::permanent(
                        "invalid_output",
                        format!("the handler's output does not serialise to JSON: {e}"),
                    )
                })
            })
        }))
    }

    /// Runs the handler to its reply. A panic becomes a retryable `worker_panic` error (the
    /// next attempt may well succeed: a panic is a bug or a broken invariant, not an answer).
    pub(crate) async fn call(&self, ctx: Context) -> ReplyBody {
        let run = (self.0)(ctx);
        match AssertUnwindSafe(run).catch_unwind().await {
            Ok(Ok(output)) => ReplyBody::Ok { output },
            Ok(Err(error)) => ReplyBody::Error { error },
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(panic = %message, "the handler panicked");
                ReplyBody::Error {
                    error: StepError::retryable(
                        "worker_panic",
                        format!("the handler panicked: {message}"),
                    ),
                }
            }
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use saga_wire::{Command, CommandKind};
    use serde::Deserialize;
    use serde_json::json;
    use uuid::Uuid;

    fn ctx(input: Value) -> Context {
        Context::new(Command {
            command_id: Uuid::nil(),
            saga_id: Uuid::nil(),
            step: "s".into(),
            task: "t".into(),
            kind: CommandKind::Do,
            attempt: 1,
            idempotency_key: "k".into(),
            compensates: None,
            deadline: Utc::now(),
            input,
            results: json!({}),
        })
    }

    #[derive(Deserialize)]
    struct Order {
        qty: u32,
    }

    fn doubler() -> Handler {
        Handler::new(|_ctx: Context, order: Order| async move {
            if order.qty == 0 {
                return Err(StepError::permanent("empty", "nothing to do"));
            }
            if order.qty > 100 {
                panic!("too many: {}", order.qty);
            }
            Ok(json!({ "double": order.qty * 2 }))
        })
    }

    #[tokio::test]
    async fn outputs_errors_bad_input_and_panics_become_replies() {
        let h = doubler();
        assert_eq!(
            h.call(ctx(json!({ "qty": 2 }))).await,
            ReplyBody::Ok {
                output: json!({ "double": 4 })
            }
        );
        assert_eq!(
            h.call(ctx(json!({ "qty": 0 }))).await,
            ReplyBody::Error {
                error: StepError::permanent("empty", "nothing to do")
            }
        );
        let ReplyBody::Error { error } = h.call(ctx(json!({ "qty": "two" }))).await else {
            panic!("a bad input is an error");
        };
        assert_eq!(
            (error.code.as_str(), error.retryable),
            ("invalid_input", false)
        );
        assert!(error.message.contains("qty"), "{}", error.message);
        let ReplyBody::Error { error } = h.call(ctx(json!({ "qty": 101 }))).await else {
            panic!("a panic is an error");
        };
        assert_eq!(
            (error.code.as_str(), error.retryable),
            ("worker_panic", true)
        );
        assert!(error.message.contains("too many: 101"), "{}", error.message);
    }

    #[tokio::test]
    async fn unit_output_is_null() {
        let h = Handler::new(|_ctx: Context, _: Value| async { Ok(()) });
        assert_eq!(
            h.call(ctx(json!({}))).await,
            ReplyBody::Ok {
                output: Value::Null
            }
        );
    }
}
