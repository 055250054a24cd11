//! The RabbitMQ plumbing that the orchestrator's bus (`orchestrator::bus`) and the worker SDK
//! (`saga_worker`) share, so that both talk to the broker the same way.
//!
//! - [`timed`]: every broker operation under [`OP_TIMEOUT`], named in its error ([`AmqpError`]);
//!   [`confirmed`]: a publisher confirm under [`CONFIRM_TIMEOUT`]; [`publish_to_queue`]: a
//!   mandatory publish straight to a queue, and its confirm.
//! - [`next_backoff`]: the 100 ms → 5 s doubling backoff between reconnects and retries.
//! - [`Session`]: one connection and what runs on it. Anything that finds the connection broken
//!   calls [`Session::lose`]; every task of the session watches [`Session::lost`] and stops.
//! - [`run_sessions`]: the reconnect loop. lapin's own recovery is not used (CRATES.md): each
//!   connection gets a fresh session, and what was not acknowledged is redelivered by the broker.
//! - [`clip`]: shortens text taken from a message, for reasons and logs.
//! - [`trace`]: W3C trace context in message headers (the `opentelemetry` API, no exporter).
//!
//! What it must never do: know about sagas, commands, replies or queue names (PROTOCOL.md is the
//! callers' business), Postgres or HTTP; declare, publish, acknowledge or decide anything on its
//! own — it runs the operations its callers hand it. It stays as light as the worker SDK must
//! be: lapin, tokio, logging and the OpenTelemetry API with its W3C propagator, nothing more.
//!
//! Its logs carry the target `saga_amqp`: a filter that names a crate (`RUST_LOG=saga_worker=debug`)
//! should name this one too to see connects, reconnects and lost sessions.
#![forbid(unsafe_code)]

mod backoff;
mod error;
mod op;
mod reconnect;
mod session;
mod text;
pub mod trace;

pub use backoff::{BACKOFF_MAX, BACKOFF_MIN, next_backoff};
pub use error::AmqpError;
pub use op::{
    CONFIRM_TIMEOUT, OP_TIMEOUT, confirmed, confirmed_by, confirming_channel, consume,
    publish_to_queue, timed,
};
pub use reconnect::run_sessions;
pub use session::{End, Session, SessionOwner, Stopped};
pub use text::clip;
