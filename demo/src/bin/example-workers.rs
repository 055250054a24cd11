//! The example workers as a process of their own (as docker-compose runs them):
//! `example-workers [order] [customer_onboarding] [escrow]` (all when none is named). `AMQP_URL` names
//! the broker; SIGINT or SIGTERM finishes the commands in flight, then stops. With
//! `SAGA_API_URL` (and `SAGA_API_TOKEN` when the orchestrator wants one) it first registers the
//! definitions of its sagas, retrying until the orchestrator answers.

use std::process::ExitCode;

use std::time::Duration;

use saga_demo::{escrow, onboarding, order};
use saga_worker::Worker;
use serde_json::Value;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=error".into()),
        )
        .init();
    let names: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| names.is_empty() || names.iter().any(|n| n == name);
    let mut builder = Worker::from_env().connection_name("example-workers");
    let mut definitions = Vec::new();
    if wants("order") {
        builder = order::workers(builder);
        definitions.push(order::definition());
    }
    if wants("customer_onboarding") {
        builder = onboarding::workers(builder);
        definitions.push(onboarding::definition());
    }
    if wants("escrow") {
        builder = escrow::workers(builder);
        definitions.push(escrow::definition());
    }
    if let Ok(api) = std::env::var("SAGA_API_URL") {
        register(&api, &definitions).await;
    }
    match builder.build() {
        Ok(worker) => {
            worker.run_until_signal().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("example-workers: {e} (names: order, customer_onboarding, escrow)");
            ExitCode::from(2)
        }
    }
}

/// Registers `definitions` with the orchestrator at `api`, retrying every second until it answers.
async fn register(api: &str, definitions: &[Value]) {
    let http = reqwest::Client::new();
    let token = std::env::var("SAGA_API_TOKEN").ok();
    for definition in definitions {
        loop {
            let mut request = http.post(format!("{api}/v1/definitions")).json(definition);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(definition = %definition["name"], "registered");
                    break;
                }
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "the orchestrator refused the definition")
                }
                Err(e) => tracing::warn!(error = %e, "the orchestrator is not reachable yet"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
