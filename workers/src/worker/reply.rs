//! Publishing a reply (PROTOCOL.md §3): default exchange, routing key = the command's
//! `reply_to`, `correlation_id` = the command id, JSON, persistent, `mandatory`, under publisher
//! confirms; with the command span's trace context in its headers when there is one.
//!
//! The broker *acks* a mandatory message that reached no queue and hands it back with the
//! confirm (CRATES.md): such a reply is not delivered, so the command is not acknowledged. The
//! reply is published again with backoff — the handler is not run again — until it is routed, or
//! until shutdown or the loss of the connection leave the command to the broker.

use chrono::Utc;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use saga_amqp::{BACKOFF_MIN, Session, next_backoff, publish_to_queue};
use saga_wire::Reply;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// The reply was not confirmed, and will not be: the command must not be acknowledged.
#[derive(Debug)]
pub(super) struct Stopped;

/// Publishes `reply` and waits until the broker confirms it routed; see the module doc.
pub(super) async fn publish(
    channel: &Channel,
    reply_to: &ShortString,
    reply: &Reply,
    headers: FieldTable,
    session: &Session,
    shutdown: &CancellationToken,
) -> Result<(), Stopped> {
    let payload = match serde_json::to_vec(reply) {
        Ok(p) => p,
        Err(e) => {
            error!(error = %e, "cannot serialise the reply");
            return Err(Stopped);
        }
    };
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_correlation_id(reply.command_id.to_string().into())
        .with_timestamp(u64::try_from(Utc::now().timestamp()).unwrap_or_default());
    // No header at all without a trace: with tracing off the reply stays as it was.
    let properties = if headers.inner().is_empty() {
        properties
    } else {
        properties.with_headers(headers)
    };
    let mut delay = BACKOFF_MIN;
    let mut unroutable = 0u32;
    loop {
        let confirmation = match publish_to_queue(
            channel,
            &format!("publishing a reply to {reply_to}"),
            reply_to.clone(),
            &payload,
            properties.clone(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                session.lose(e.to_string());
                return Err(Stopped);
            }
        };
        match confirmation {
            Confirmation::Ack(None) => {
                debug!(%reply_to, "replied");
                return Ok(());
            }
            Confirmation::Ack(Some(returned)) => {
                unroutable += 1;
                if unroutable == 1 {
                    error!(
                        %reply_to,
                        reply_code = returned.reply_code,
                        reply_text = %returned.reply_text,
                        "the reply was returned unroutable: its queue does not exist (the orchestrator declares it). Holding the command unacknowledged and publishing the reply again"
                    );
                } else {
                    debug!(%reply_to, retry_in = ?delay, "the reply is still unroutable");
                }
            }
            Confirmation::Nack(_) => {
                warn!(%reply_to, retry_in = ?delay, "RabbitMQ refused (nacked) the reply; publishing it again");
            }
            Confirmation::NotRequested => {
                session.lose("publisher confirms are off on the reply channel");
                return Err(Stopped);
            }
        }
        session.sleep(delay, shutdown).await.map_err(|_| Stopped)?;
        delay = next_backoff(delay);
    }
}
