//! Dead-lettering, as PROTOCOL.md §3 has it: the orchestrator publishes the message itself to the
//! DLQ — original body and properties, plus the header `x-saga-error` with the reason in words —
//! under publisher confirms, and only then acks the original.

use lapin::message::Delivery;
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Channel, Confirmation};
use saga_amqp::publish_to_queue;
use saga_wire::ERROR_HEADER;

use super::BusError;

/// The properties of a dead letter: the original ones, with `x-saga-error` set to `reason`.
pub(super) fn properties(original: &BasicProperties, reason: &str) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(
        ERROR_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason.as_bytes())),
    );
    original.clone().with_headers(headers)
}

/// Publishes `delivery` to `dlq` (through the default exchange) with `reason`, and waits for the
/// broker to confirm that the DLQ holds it.
pub(super) async fn publish(
    ch: &Channel,
    dlq: &str,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), BusError> {
    let what = format!("dead-lettering to {dlq}");
    let confirmation = publish_to_queue(
        ch,
        &what,
        dlq.into(),
        &delivery.data,
        properties(&delivery.properties, reason),
    )
    .await?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(BusError::Unconfirmed(format!(
            "{what}: returned unroutable ({} {}): the queue is missing",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(BusError::Unconfirmed(format!(
            "{what}: the broker nacked it"
        ))),
        Confirmation::NotRequested => Err(BusError::Unconfirmed(format!(
            "{what}: publisher confirms are off on the channel"
        ))),
    }
}
