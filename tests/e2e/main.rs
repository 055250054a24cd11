//! End-to-end tests of the saga orchestrator, one binary (`cargo test -p saga-e2e --test e2e`).
//!
//! Each test starts the real orchestrator (`orchestrator-under-test`) against the local PostgreSQL
//! and RabbitMQ in its own database and vhost, and drives it only over HTTP and AMQP. The expected
//! behaviour is PROTOCOL.md's; comments quote the sentence a check rests on.

mod access;
mod amqp;
mod crash;
mod dashboard;
mod definitions;
mod engine;
mod escrow;
mod metrics;
mod operations;
mod sagas_api;
mod signals;
mod tracing;

use std::time::Duration;

use saga_e2e::{Options, TestEnv};
use serde_json::{Value, json};

/// Starts an orchestrator with the default environment.
pub async fn env() -> TestEnv {
    TestEnv::launch(options()).await
}

/// Starts an orchestrator with extra environment variables.
pub async fn env_with(extra: &[(&str, &str)]) -> TestEnv {
    let mut opts = options();
    for (k, v) in extra {
        opts = opts.env(k, v);
    }
    TestEnv::launch(opts).await
}

fn options() -> Options {
    Options::new(
        env!("CARGO_BIN_EXE_orchestrator-under-test"),
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("saga-e2e-logs"),
    )
}

/// A generous bound for things that should take well under a second.
pub const SOON: Duration = Duration::from_secs(15);

/// A task step with a compensation and short timings.
pub fn task_step(name: &str, timeout: &str) -> Value {
    json!({
        "name": name,
        "task": format!("t.{name}"),
        "compensate": format!("t.{name}_undo"),
        "timeout": timeout,
        "retry": { "max_attempts": 3, "initial_backoff": "50ms", "max_backoff": "200ms" },
        "compensation_retry": { "max_attempts": 3, "initial_backoff": "50ms", "max_backoff": "200ms" }
    })
}

/// A definition of task steps `names` (each `t.<name>` compensated by `t.<name>_undo`).
pub fn linear_definition(def: &str, names: &[&str], timeout: &str) -> Value {
    json!({
        "name": def,
        "steps": names.iter().map(|n| task_step(n, timeout)).collect::<Vec<_>>()
    })
}

/// Every task and compensation name of a [`linear_definition`].
pub fn tasks_of(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| [format!("t.{n}"), format!("t.{n}_undo")])
        .collect()
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The history entries of `kind` (optionally of one step).
pub fn entries<'a>(history: &'a [Value], kind: &str, step: Option<&str>) -> Vec<&'a Value> {
    history
        .iter()
        .filter(|e| e["kind"] == kind && step.is_none_or(|s| e["step"] == s))
        .collect()
}

/// Index of the first entry of `kind` (and step) in the history; panics when absent.
#[track_caller]
pub fn index_of(history: &[Value], kind: &str, step: Option<&str>) -> usize {
    history
        .iter()
        .position(|e| e["kind"] == kind && step.is_none_or(|s| e["step"] == s))
        .unwrap_or_else(|| {
            panic!(
                "history has no {kind} for {step:?}: {:?}",
                saga_e2e::kinds_of(history)
            )
        })
}

/// Asserts the history's last entry is of `kind` (the saga's last word, e.g. `saga_compensated`).
#[track_caller]
pub fn assert_ends_with(history: &[Value], kind: &str) {
    let kinds = saga_e2e::kinds_of(history);
    assert_eq!(kinds.last().map(String::as_str), Some(kind), "{kinds:?}");
}
