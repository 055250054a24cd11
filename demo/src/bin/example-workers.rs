//! The example workers as a process of their own (as docker-compose runs them):
//! `example-workers [order] [customer_onboarding]` (both when none is named). `AMQP_URL` names
//! the broker; SIGINT or SIGTERM finishes the commands in flight, then stops.

use std::process::ExitCode;

use saga_demo::{onboarding, order};
use saga_worker::Worker;

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
    if wants("order") {
        builder = order::workers(builder);
    }
    if wants("customer_onboarding") {
        builder = onboarding::workers(builder);
    }
    match builder.build() {
        Ok(worker) => {
            worker.run_until_signal().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("example-workers: {e} (names: order, customer_onboarding)");
            ExitCode::from(2)
        }
    }
}
