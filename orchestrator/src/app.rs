//! Bootstrap: `build(config)` connects, migrates and binds (port 0 works), `App::run` serves until
//! the shutdown token fires, then stops taking input and finishes what is in flight.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::bus::Bus;
use crate::config::{Config, ConfigError};
use crate::engine::Engine;
use crate::store::{self, StoreError};
use crate::timers;

#[derive(Debug, Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

pub struct App {
    listener: TcpListener,
    engine: Engine,
    bus: Bus,
    config: Config,
}

impl App {
    pub async fn build(config: Config) -> Result<App, AppError> {
        let mut config = config;
        if config.api_tokens.is_empty() && !config.listen.ip().is_loopback() {
            tracing::warn!(
                requested = %config.listen,
                "no API token is configured: listening on loopback only (set SAGA_API_TOKENS to listen elsewhere)"
            );
            config.listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        } else if config.api_tokens.is_empty() {
            tracing::warn!(
                "no API token is configured: anyone who can reach {} may use the API",
                config.listen
            );
        }
        let pool = store::connect(&config.database_url, config.db_pool).await?;
        let bus = Bus::new(config.amqp_url.clone(), config.reply_concurrency);
        let engine = Engine::new(pool, config.stuck_after, Some(Arc::new(bus.clone())));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(App {
            listener,
            engine,
            bus,
            config,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` fires; then stops taking input and waits for in-flight work.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let tasks = TaskTracker::new();
        tasks.spawn(self.bus.clone().run(self.engine.clone(), shutdown.clone()));
        tasks.spawn(timers::run(self.engine.clone(), shutdown.clone()));
        tasks.close();
        let state = AppState::new(self.engine.clone(), self.bus.clone(), &self.config);
        tracing::info!(addr = ?self.local_addr(), "listening");
        let engine = self.engine.clone();
        let stopping = shutdown.clone();
        let served = axum::serve(self.listener, api::router(state))
            .with_graceful_shutdown(async move {
                stopping.cancelled().await;
                engine.close_waits();
            })
            .await
            .map_err(AppError::Serve);
        shutdown.cancel();
        tasks.wait().await;
        self.engine.pool().close().await;
        tracing::info!("stopped");
        served
    }
}

/// The whole program: configuration from the environment, logs to stderr (and traces, when
/// asked for), runs until SIGTERM or SIGINT. `main.rs` is this one call.
pub fn run_main() -> ExitCode {
    let telemetry = crate::telemetry::init();
    let code = serve_main();
    // After the runtime is gone: the exporter's client blocks, and the last spans are the
    // shutdown's own.
    telemetry.shutdown();
    code
}

fn serve_main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        let result = match App::build(config).await {
            Ok(app) => app.run(shutdown).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for signals; stop the process with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
