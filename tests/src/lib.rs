//! The end-to-end harness: the real orchestrator binary, started as a child process against the
//! real local PostgreSQL and RabbitMQ, and driven only the way a foreign client and a foreign worker
//! would drive it — over HTTP and AMQP, never through its Rust API and never by reading its tables.
//!
//! Each [`TestEnv`] gets its own database (which the orchestrator must create itself) and its own
//! RabbitMQ vhost (PROTOCOL's queue names are fixed, so a vhost is the only namespace), so tests run
//! in parallel and leave nothing behind: the child is killed, the database dropped and the vhost
//! deleted when the `TestEnv` is dropped.
//!
//! - [`env`]: the process, its isolation and its lifecycle (start, SIGKILL, SIGTERM, restart).
//! - [`http`]: raw requests and the REST helpers (register, start, status, long-poll waits, history).
//! - [`amqp`]: a plain AMQP client for the test's vhost (passive declares, raw publishes, DLQ reads).
//! - [`worker`]: a scripted foreign step worker with a ledger of every command it saw.
//!
//! Nothing here waits with a fixed sleep for something to happen: every wait polls (or long-polls)
//! with a deadline and fails with the evidence it has when the deadline passes.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod browser;
pub mod env;
pub mod faults;
pub mod http;
pub mod postgres;
pub mod proxy;
pub mod rabbitmq;
pub mod worker;

pub use amqp::{AmqpClient, DeadLetter, Sent};
pub use env::{Options, Peer, TestEnv};
pub use http::{Raw, assert_problem, duration_of, kinds_of};
pub use worker::{Behaviour, CommandSeen, Gate, Ledger, Worker};

/// The usual shape of an error in the harness: it is a test harness, so errors are reported as text
/// with enough context to debug from.
pub type HarnessError = String;
