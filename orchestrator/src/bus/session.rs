//! The reconnect loop, and one connection's session: declare, open channels, mark ready, run the
//! relay and the consumers until shutdown or until the connection is lost.
//!
//! The loop and the session's life (lose, watch, finish) are `saga_amqp`'s, shared with the
//! worker SDK; what runs on a session is the bus's.

use std::sync::Arc;

use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use saga_amqp::{BACKOFF_MIN, End, confirming_channel, consume, next_backoff, run_sessions, timed};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::consumer::{self, Kind};
use super::{Bus, BusError, relay, topology};
use crate::engine::Engine;

/// One connection and what runs on it; the bus is ready while one is up. Anything that finds the
/// connection broken calls `lose`; every task of the session watches `lost` and stops.
pub(super) type Session = saga_amqp::Session<Bus>;

pub(super) async fn run_forever(bus: Bus, engine: Engine, shutdown: CancellationToken) {
    let connect = || {
        let properties =
            ConnectionProperties::default().with_connection_name("saga-orchestrator".into());
        Connection::connect(&bus.inner.url, properties)
    };
    let mut connected_before = false;
    run_sessions(&shutdown, connect, |conn| {
        if connected_before {
            engine.metrics().inc("saga_broker_reconnects_total", &[]);
        }
        connected_before = true;
        run_session(&bus, conn, &engine, &shutdown)
    })
    .await;
    info!("the bus stopped");
}

/// What a session opened.
struct Opened {
    relay: Channel,
    dead_letters: Channel,
    consumers: Vec<(Kind, Channel, Consumer)>,
}

enum SetupError {
    /// Shutdown, or the session was lost while setting up (its reason is in the session).
    Stopped,
    Failed(BusError),
}

impl From<BusError> for SetupError {
    fn from(e: BusError) -> Self {
        SetupError::Failed(e)
    }
}

impl From<saga_amqp::AmqpError> for SetupError {
    fn from(e: saga_amqp::AmqpError) -> Self {
        SetupError::Failed(e.into())
    }
}

async fn run_session(
    bus: &Bus,
    conn: Connection,
    engine: &Engine,
    shutdown: &CancellationToken,
) -> End {
    let session = Arc::new(Session::new(bus.clone(), conn));
    let watcher = session.watch("publishes");
    let opened = match setup(&session, engine, shutdown).await {
        Ok(opened) => opened,
        Err(e) => {
            if let SetupError::Failed(e) = e {
                if is_refusal(&e) {
                    // A declare the broker refuses (a queue of another type or with other arguments)
                    // will be refused again: someone must act.
                    error!(error = %e, "cannot set up the RabbitMQ topology");
                }
                session.lose(e.to_string());
            }
            drop(watcher);
            return session.finish(shutdown, &[]).await;
        }
    };
    bus.mark_up(&session);
    info!("the bus is ready");

    let ctx = Arc::new(consumer::Ctx {
        engine: engine.clone(),
        session: session.clone(),
        dead_letters: opened.dead_letters.clone(),
        shutdown: shutdown.clone(),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(relay::run(
        engine.clone(),
        session.clone(),
        opened.relay.clone(),
        shutdown.clone(),
    ));
    let mut channels = vec![opened.relay, opened.dead_letters];
    for (kind, ch, cons) in opened.consumers {
        let concurrency = kind.concurrency(bus.inner.reply_concurrency);
        tasks.spawn(consumer::run(
            kind,
            ctx.clone(),
            ch.clone(),
            cons,
            concurrency,
        ));
        channels.push(ch);
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            session.lose(format!("a bus task failed: {e}"));
        }
    }
    drop(watcher);
    session.finish(shutdown, &channels).await
}

/// Declares the topology and opens the relay's, the dead letters' and the consumers' channels.
async fn setup(
    session: &Session,
    engine: &Engine,
    shutdown: &CancellationToken,
) -> Result<Opened, SetupError> {
    let conn = session.connection();
    let ch = timed("opening a channel", conn.create_channel()).await?;
    topology::declare_base(&ch).await?;
    let names = task_names(session, engine, shutdown).await?;
    topology::declare_task_queues_on(&ch, &names).await?;
    let _ = timed("closing a channel", ch.close(200, "OK".into())).await;
    debug!(task_queues = names.len(), "declared the topology");

    let relay = confirming_channel(conn).await?;
    let dead_letters = confirming_channel(conn).await?;
    let mut consumers = Vec::new();
    for kind in Kind::ALL {
        let ch = timed("opening a channel", conn.create_channel()).await?;
        let prefetch = kind.concurrency(session.owner().inner.reply_concurrency);
        let consumer = consume(&ch, kind.queue(), prefetch).await?;
        consumers.push((kind, ch, consumer));
    }
    Ok(Opened {
        relay,
        dead_letters,
        consumers,
    })
}

/// Every registered task name; retried while Postgres is unreachable (the bus is not ready
/// without its task queues).
async fn task_names(
    session: &Session,
    engine: &Engine,
    shutdown: &CancellationToken,
) -> Result<Vec<String>, SetupError> {
    let mut delay = BACKOFF_MIN;
    loop {
        match engine.all_task_names().await {
            Ok(names) => return Ok(names),
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "cannot read the task names to declare their queues")
            }
        }
        session
            .sleep(delay, shutdown)
            .await
            .map_err(|_| SetupError::Stopped)?;
        delay = next_backoff(delay);
    }
}

/// Whether the broker refused an operation (as opposed to the connection failing).
fn is_refusal(e: &BusError) -> bool {
    matches!(e, BusError::Amqp(e) if e.is_refusal())
}
