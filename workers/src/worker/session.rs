//! One connection's session: a confirming channel for replies, a consumer per task queue, until
//! shutdown or until the connection is lost. The session's life (lose, watch, finish) is
//! `saga_amqp`'s, shared with the orchestrator's bus.

use std::sync::Arc;

use lapin::{Channel, Connection, Consumer};
use saga_amqp::{End, Session, confirming_channel};
use tokio::task::JoinSet;

use super::{Shared, consume};

pub(super) async fn run(shared: &Arc<Shared>, conn: Connection) -> End {
    let session = Arc::new(Session::new((), conn));
    let _watcher = session.watch("replies");
    let replies = match confirming_channel(session.connection()).await {
        Ok(ch) => ch,
        Err(e) => {
            session.lose(e.to_string());
            return session.finish(&shared.shutdown, &[]).await;
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
    session.finish(&shared.shutdown, &channels).await
}
