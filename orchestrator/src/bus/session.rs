//! The reconnect loop, and one connection's session: declare, open channels, mark ready, run the
//! relay and the consumers until shutdown or until the connection is lost.

use std::pin::pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, Event};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::consumer::{self, Kind};
use super::{BACKOFF_MAX, BACKOFF_MIN, Bus, BusError, next_backoff, relay, timed, topology};
use crate::engine::Engine;

/// One connection and what runs on it. Anything that finds the connection broken calls
/// [`Session::lose`]; every task of the session watches [`Session::lost`] and stops.
pub(super) struct Session {
    bus: Bus,
    pub(super) conn: Arc<Connection>,
    lost: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Session {
    fn new(bus: Bus, conn: Arc<Connection>) -> Session {
        Session {
            bus,
            conn,
            lost: CancellationToken::new(),
            reason: Mutex::new(None),
        }
    }

    /// Ends the session: the bus is not ready until the next one is up. The first reason wins.
    pub(super) fn lose(&self, reason: impl Into<String>) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        // Cancel before marking down: `mark_up` checks `lost` after publishing the connection, so
        // that a loss racing with the end of setup can never leave the bus marked ready.
        self.lost.cancel();
        self.bus.mark_down(&self.conn);
    }

    pub(super) fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "the connection ended".into())
    }

    fn mark_up(&self) {
        self.bus.mark_up(&self.conn);
        if self.lost.is_cancelled() {
            self.bus.mark_down(&self.conn);
        }
    }
}

/// How a session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// A task that is aborted when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn run_forever(bus: Bus, engine: Engine, shutdown: CancellationToken) {
    // LISTEN/NOTIFY hints from other processes' commits; lives across broker reconnects.
    let hint = Arc::new(Notify::new());
    let _listener = AbortOnDrop(tokio::spawn(relay::listen(
        engine.pool().clone(),
        hint.clone(),
    )));
    let mut delay = BACKOFF_MIN;
    let mut sessions = 0u64;
    while !shutdown.is_cancelled() {
        let properties =
            ConnectionProperties::default().with_connection_name("saga-orchestrator".into());
        let connected = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = timed("connecting", Connection::connect(&bus.inner.url, properties)) => c,
        };
        match connected {
            Err(e) => warn!(error = %e, retry_in = ?delay, "cannot connect to RabbitMQ"),
            Ok(conn) => {
                sessions += 1;
                if sessions == 1 {
                    info!("connected to RabbitMQ");
                } else {
                    info!(session = sessions, "reconnected to RabbitMQ");
                }
                let since = Instant::now();
                match run_session(&bus, conn, &engine, &shutdown, &hint).await {
                    End::Shutdown => break,
                    End::Lost(reason) => {
                        warn!(%reason, "lost the RabbitMQ connection; reconnecting");
                    }
                }
                // A session that stayed up a while starts the backoff afresh; one that fails at
                // once (a refused declare, say) keeps doubling it.
                if since.elapsed() >= BACKOFF_MAX {
                    delay = BACKOFF_MIN;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = next_backoff(delay);
    }
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

async fn run_session(
    bus: &Bus,
    conn: Connection,
    engine: &Engine,
    shutdown: &CancellationToken,
    hint: &Arc<Notify>,
) -> End {
    let conn = Arc::new(conn);
    let session = Arc::new(Session::new(bus.clone(), conn.clone()));
    let watcher = AbortOnDrop(tokio::spawn(watch(conn.events_listener(), session.clone())));
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
            return finish(&session, shutdown, &[]).await;
        }
    };
    session.mark_up();
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
        hint.clone(),
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
    finish(&session, shutdown, &channels).await
}

/// Declares the topology and opens the relay's, the dead letters' and the consumers' channels.
async fn setup(
    session: &Session,
    engine: &Engine,
    shutdown: &CancellationToken,
) -> Result<Opened, SetupError> {
    let conn = &session.conn;
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
        let prefetch = kind.concurrency(session.bus.inner.reply_concurrency);
        timed(
            format!("setting the prefetch of {}", kind.queue()),
            ch.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        let consumer = timed(
            format!("consuming {}", kind.queue()),
            ch.basic_consume(
                kind.queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        consumers.push((kind, ch, consumer));
    }
    Ok(Opened {
        relay,
        dead_letters,
        consumers,
    })
}

async fn confirming_channel(conn: &Connection) -> Result<Channel, BusError> {
    let ch = timed("opening a channel", conn.create_channel()).await?;
    timed(
        "enabling publisher confirms",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok(ch)
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
        tokio::select! {
            _ = shutdown.cancelled() => return Err(SetupError::Stopped),
            _ = session.lost().cancelled() => return Err(SetupError::Stopped),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = next_backoff(delay);
    }
}

/// Whether the broker refused an operation (as opposed to the connection failing).
fn is_refusal(e: &BusError) -> bool {
    matches!(e, BusError::Amqp { source, .. } if source.is_amqp_soft_error())
}

/// Ends a session: closes its channels and its connection (when they are still open: a session
/// can be lost with its connection up, when the broker cancelled a consumer), and says why it
/// ended.
async fn finish(session: &Session, shutdown: &CancellationToken, channels: &[Channel]) -> End {
    session.bus.mark_down(&session.conn);
    for ch in channels {
        if ch.status().connected() {
            let _ = timed("closing a channel", ch.close(200, "OK".into())).await;
        }
    }
    if session.conn.status().connected() {
        match timed(
            "closing the connection",
            session.conn.close(200, "OK".into()),
        )
        .await
        {
            Ok(()) => debug!("closed the RabbitMQ connection"),
            Err(e) => debug!(error = %e, "closing the RabbitMQ connection"),
        }
    }
    if shutdown.is_cancelled() {
        info!("closed the RabbitMQ connection for shutdown");
        End::Shutdown
    } else {
        End::Lost(session.reason())
    }
}

/// Watches the connection's events: an error ends the session.
async fn watch(events: impl Stream<Item = Event>, session: Arc<Session>) {
    let mut events = pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Event::Error(e) => {
                session.lose(format!("connection error: {e}"));
                return;
            }
            Event::ConnectionBlocked(reason) => {
                warn!(%reason, "RabbitMQ blocked the connection: publishes wait until it unblocks");
            }
            Event::ConnectionUnblocked => info!("RabbitMQ unblocked the connection"),
            _ => {}
        }
    }
}
