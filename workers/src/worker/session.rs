//! One connection's session: a confirming channel for replies, a consumer per task queue, until
//! shutdown or until the connection is lost.

use std::pin::pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, Consumer, Event};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{BrokerError, Shared, consume, timed};

/// One connection and what runs on it. Anything that finds the connection broken calls
/// [`Session::lose`]; every task of the session watches [`Session::lost`] and stops.
pub(super) struct Session {
    pub(super) conn: Connection,
    lost: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Session {
    /// Ends the session; the first reason wins.
    pub(super) fn lose(&self, reason: impl Into<String>) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.into());
        }
        self.lost.cancel();
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
}

/// How a session ended.
pub(super) enum End {
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

pub(super) async fn run(shared: &Arc<Shared>, conn: Connection) -> End {
    let session = Arc::new(Session {
        conn,
        lost: CancellationToken::new(),
        reason: Mutex::new(None),
    });
    let _watcher = AbortOnDrop(tokio::spawn(watch(
        session.conn.events_listener(),
        session.clone(),
    )));
    let replies = match confirming_channel(&session.conn).await {
        Ok(ch) => ch,
        Err(e) => {
            session.lose(e.to_string());
            return finish(shared, &session, &[]).await;
        }
    };
    let mut consumers = JoinSet::new();
    for (task, handler) in &shared.config.handlers {
        consumers.spawn(consume::run(
            shared.clone(),
            session.clone(),
            replies.clone(),
            task.clone(),
            handler.clone(),
        ));
    }
    // The consumers' channels stay open until the handlers in flight have acknowledged their
    // commands: closing a channel gives its unacknowledged deliveries back to the queue.
    let mut opened: Vec<(Channel, Consumer)> = Vec::new();
    while let Some(joined) = consumers.join_next().await {
        match joined {
            Ok(Some(consumer)) => opened.push(consumer),
            Ok(None) => {}
            Err(e) => session.lose(format!("a consumer task failed: {e}")),
        }
    }
    if shared.shutdown.is_cancelled() && !session.lost().is_cancelled() {
        shared.drain().await;
    }
    let mut channels: Vec<Channel> = opened.into_iter().map(|(ch, _consumer)| ch).collect();
    channels.push(replies);
    finish(shared, &session, &channels).await
}

async fn confirming_channel(conn: &Connection) -> Result<Channel, BrokerError> {
    let ch = timed("opening a channel", conn.create_channel()).await?;
    timed(
        "enabling publisher confirms",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok(ch)
}

/// Closes the channels and the connection when they are still open (a session can be lost with
/// its connection up, when the broker cancelled a consumer), and says why the session ended.
async fn finish(shared: &Shared, session: &Session, channels: &[Channel]) -> End {
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
    if shared.shutdown.is_cancelled() {
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
                warn!(%reason, "RabbitMQ blocked the connection: replies wait until it unblocks");
            }
            Event::ConnectionUnblocked => info!("RabbitMQ unblocked the connection"),
            _ => {}
        }
    }
}
