//! The saga orchestrator as a library: `main.rs` and the end-to-end tests start it the same way.
//!
//! A pure core (`definition`, `machine`, `status`) inside an imperative shell (`store` for
//! PostgreSQL, `bus` for RabbitMQ, `api` for HTTP), joined by `engine`, the one write path.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bus;
pub mod config;
pub mod definition;
pub mod engine;
pub mod machine;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod timers;
pub mod trace;

pub use app::{App, run_main};
pub mod metrics;
