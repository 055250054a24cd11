//! One connection's session: how it is lost, how its tasks stop, how it ends.
//!
//! A session is lost by the first of its tasks that finds the connection broken — a connection
//! error event ([`Session::watch`]), a consumer that fails or that the broker cancels
//! ([`Session::next_delivery`]), a channel operation that fails ([`Session::settle`], or the
//! caller's own [`Session::lose`]). The first reason wins and is the one logged; every task
//! watches [`Session::lost`] and stops; [`Session::finish`] closes what is still open.

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicCancelOptions;
use lapin::{Channel, Connection, Consumer, Event};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::timed;

/// Whoever runs sessions and must hear when one ends — the orchestrator's bus, which is ready
/// only while a session is up. `()` for an owner that need not know.
pub trait SessionOwner: Send + Sync + 'static {
    /// The session on `conn` is lost or finishing; may be called more than once. [`Session::lose`]
    /// calls it after cancelling [`Session::lost`], so an owner that marks itself up and *then*
    /// checks `lost` can never stay up on a lost session; [`Session::finish`] calls it first.
    fn session_down(&self, conn: &Arc<Connection>);
}

impl SessionOwner for () {
    fn session_down(&self, _conn: &Arc<Connection>) {}
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Shutdown,
    /// The connection was lost, for this reason: connect again.
    Lost(String),
}

/// Shutdown, or the session was lost, before a wait was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// One connection and what runs on it; see the module doc.
pub struct Session<O: SessionOwner = ()> {
    owner: O,
    conn: Arc<Connection>,
    lost: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl<O: SessionOwner> Session<O> {
    /// A session on `conn`, up until it is lost or finished.
    pub fn new(owner: O, conn: Connection) -> Session<O> {
        Session {
            owner,
            conn: Arc::new(conn),
            lost: CancellationToken::new(),
            reason: Mutex::new(None),
        }
    }

    pub fn owner(&self) -> &O {
        &self.owner
    }

    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Ends the session; the first reason wins.
    pub fn lose(&self, reason: impl Into<String>) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        // Cancel before telling the owner: see `SessionOwner::session_down`.
        self.lost.cancel();
        self.owner.session_down(&self.conn);
    }

    /// Cancelled once the session is lost.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "the connection ended".into())
    }

    /// Watches the connection's events until the returned handle is dropped: an error loses the
    /// session; the broker blocking or unblocking the connection (a resource alarm) is logged,
    /// `waiting` saying what waits meanwhile ("publishes").
    pub fn watch(self: &Arc<Self>, waiting: &'static str) -> AbortOnDropHandle<()> {
        let events = self.conn.events_listener();
        let session = self.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut events = pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Event::Error(e) => {
                        session.lose(format!("connection error: {e}"));
                        return;
                    }
                    Event::ConnectionBlocked(reason) => {
                        warn!(%reason, "RabbitMQ blocked the connection: {waiting} wait until it unblocks");
                    }
                    Event::ConnectionUnblocked => info!("RabbitMQ unblocked the connection"),
                    _ => {}
                }
            }
        }))
    }

    /// Awaits `op` (a permit, a backoff), unless shutdown or the loss of the session comes first;
    /// when they come together, stopping wins.
    pub async fn until_stopped<T>(
        &self,
        shutdown: &CancellationToken,
        op: impl Future<Output = T>,
    ) -> Result<T, Stopped> {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(Stopped),
            _ = self.lost.cancelled() => Err(Stopped),
            done = op => Ok(done),
        }
    }

    /// Sleeps `delay` (a backoff), unless shutdown or the loss of the session comes first.
    pub async fn sleep(
        &self,
        delay: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopped> {
        self.until_stopped(shutdown, tokio::time::sleep(delay))
            .await
    }

    /// The next delivery of `consumer` (of `queue`); `None` on shutdown or once the session is
    /// lost. A consumer that fails, or that the broker cancels (its queue was deleted, say),
    /// loses the session: the next one consumes again.
    pub async fn next_delivery(
        &self,
        consumer: &mut Consumer,
        queue: &str,
        shutdown: &CancellationToken,
    ) -> Option<Delivery> {
        match self.until_stopped(shutdown, consumer.next()).await.ok()? {
            Some(Ok(delivery)) => Some(delivery),
            Some(Err(e)) => {
                self.lose(format!("the consumer of {queue} failed: {e}"));
                None
            }
            None => {
                self.lose(format!("the broker cancelled the consumer of {queue}"));
                None
            }
        }
    }

    /// On shutdown (the session is not lost), cancels `consumer`: the broker sends no more, and
    /// what it sent that was not taken goes back to the queue when the channel closes.
    pub async fn stop_consuming(&self, channel: &Channel, consumer: &Consumer, queue: &str) {
        if self.lost.is_cancelled() {
            return;
        }
        if let Err(e) = timed(
            format!("cancelling the consumer of {queue}"),
            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
        )
        .await
        {
            debug!(error = %e, "cancelling a consumer");
        }
    }

    /// Acknowledges or rejects a delivery (`op`, named `what`). A channel that closed under it is
    /// no error: the broker redelivers the message. A failure loses the session.
    pub async fn settle(&self, what: &str, op: impl Future<Output = Result<bool, lapin::Error>>) {
        match timed(what, op).await {
            Ok(true) => debug!("{what}: done"),
            Ok(false) => debug!("{what}: no longer possible (its channel closed)"),
            Err(e) => self.lose(e.to_string()),
        }
    }

    /// Ends the session: tells the owner; closes `channels` and the connection where they are
    /// still open (a session can be lost with its connection up, when the broker cancelled a
    /// consumer); says why it ended.
    pub async fn finish(&self, shutdown: &CancellationToken, channels: &[Channel]) -> End {
        self.owner.session_down(&self.conn);
        for ch in channels {
            if ch.status().connected() {
                let _ = timed("closing a channel", ch.close(200, "OK".into())).await;
            }
        }
        if self.conn.status().connected() {
            match timed("closing the connection", self.conn.close(200, "OK".into())).await {
                Ok(()) => debug!("closed the RabbitMQ connection"),
                Err(e) => debug!(error = %e, "closing the RabbitMQ connection"),
            }
        }
        if shutdown.is_cancelled() {
            info!("closed the RabbitMQ connection for shutdown");
            End::Shutdown
        } else {
            End::Lost(self.reason())
        }
    }
}
