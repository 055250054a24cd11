//! The worker SDK of the saga orchestrator: step workers are written with it.
//!
//! A worker registers a handler per task (and per compensation) name, consumes
//! `saga.task.<name>`, and answers each command with a reply, as PROTOCOL.md §3 has it. A handler
//! is an async function of the command's [`Context`] and its `input` parsed into your own type;
//! it returns an output (anything `Serialize`) or a [`StepError`] saying code, message and whether
//! another attempt may succeed.
//!
//! ```no_run
//! use saga_worker::{Context, StepError, Worker};
//! use serde::Deserialize;
//! use serde_json::{Value, json};
//!
//! #[derive(Deserialize)]
//! struct Order {
//!     order_id: String,
//!     items: Vec<String>,
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     tracing_subscriber::fmt().init();
//!     Worker::from_env() // AMQP_URL, or the orchestrator's default
//!         .concurrency(16)
//!         .handle("inventory.reserve", |ctx: Context, order: Order| async move {
//!             if order.items.is_empty() {
//!                 return Err(StepError::permanent("empty_order", "nothing to reserve"));
//!             }
//!             // Logged inside the command's span: saga.id, saga.step, command.id, attempt.
//!             tracing::info!(order = %order.order_id, "reserving");
//!             Ok(json!({ "reservation": format!("r-{}", ctx.idempotency_key()) }))
//!         })
//!         .handle("inventory.release", |ctx: Context, _order: Order| async move {
//!             let reservation: Option<Value> = ctx.maybe_result(ctx.step())?;
//!             tracing::info!(?reservation, "releasing");
//!             Ok(())
//!         })
//!         .build()?
//!         .run_until_signal() // SIGINT or SIGTERM: finish in-flight commands, then stop
//!         .await;
//!     Ok(())
//! }
//! ```
//!
//! # What the worker does for you
//!
//! - **Consumes** each `saga.task.<name>` with manual acknowledgements, a prefetch per queue
//!   ([`WorkerBuilder::prefetch`]) and at most [`WorkerBuilder::concurrency`] handlers at once
//!   across all its queues. It declares nothing: the orchestrator owns the topology. A queue that
//!   does not exist yet (no definition names the task) is waited for, with a warning, and
//!   consumed as soon as it appears.
//! - **Replies** to the command's `reply_to` (`saga.replies`) through the default exchange:
//!   `correlation_id` = the command id, JSON, persistent, `mandatory`, under publisher confirms.
//!   The command is **acknowledged only after the broker confirmed the reply**: a worker that
//!   dies before that leaves the command to be redelivered — delivery is *at least once*, so
//!   make side effects idempotent with `ctx.idempotency_key()`, or let [`idempotency`] do it.
//!   A reply the broker returns as unroutable (`saga.replies` missing) is published again with
//!   backoff; the command stays unacknowledged meanwhile.
//! - **Answers what a handler cannot**: an input that does not parse as the handler's type gets
//!   the non-retryable error `invalid_input` (the handler is not called); a handler that panics
//!   gets the retryable error `worker_panic`, and the worker goes on. A message that is not a
//!   command at all (not JSON, fields missing) cannot be answered: it is logged as an error and
//!   rejected without requeue.
//! - **Reconnects** when the connection drops, backing off from 100 ms to 5 s, and consumes
//!   again. Handlers running at that moment finish; their commands are redelivered.
//! - **Shuts down gracefully** ([`Worker::run`] with a [`CancellationToken`], or
//!   [`Worker::run_until_signal`]): stops taking commands, lets the handlers in flight finish and
//!   their replies be confirmed and acknowledged (up to [`WorkerBuilder::shutdown_timeout`]),
//!   then closes the connection.
//! - **Traces** each command in an `info` span `command` with `saga.id`, `saga.step`,
//!   `command.id`, `attempt`, `task` and `kind`: every log line of a handler carries its saga.
//!   A task you spawn from a handler leaves the span unless you pass it on
//!   (`tokio::spawn(fut.in_current_span())`).
//!   With OpenTelemetry — a `tracing-opentelemetry` layer in the subscriber *you* install — that
//!   span is a consumer span `handle <task>`, the child of the orchestrator's `dispatch <task>`
//!   span (the command's `traceparent` header), and the reply carries its context back: one
//!   trace per saga across the orchestrator and its workers. The SDK installs no exporter and
//!   no propagator; without such a layer nothing of this happens.
//!   The connection's own events (connects, reconnects, a lost connection) are logged under the
//!   target `saga_amqp`, the RabbitMQ plumbing the SDK shares with the orchestrator: a filter
//!   that names crates wants both (`RUST_LOG=saga_worker=debug,saga_amqp=debug`).
//!
//! # Errors
//!
//! [`StepError::permanent`] ends the step at once (on a compensation it suspends the saga for an
//! operator); [`StepError::retryable`] asks for another attempt under the step's retry policy.
//! [`ResultExt`] turns any error into either with `?`: `call().await.retryable("inventory_down")?`.
//! A retryable error must mean "nothing was done, or doing it again is harmless".
#![forbid(unsafe_code)]

mod builder;
mod context;
mod error;
mod handler;
#[cfg(feature = "postgres")]
pub mod idempotency;
mod trace;
mod worker;

pub use builder::{DEFAULT_AMQP_URL, WorkerBuilder};
pub use context::Context;
pub use error::{BuildError, ResultExt};
pub use saga_wire::{Command, CommandKind, ReplyBody, StepError};
pub use tokio_util::sync::CancellationToken;
pub use worker::Worker;
