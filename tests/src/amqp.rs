//! A plain AMQP client on the test's vhost, used as "anyone else" on the broker: passive declares
//! (queues exist, how many messages wait), raw publishes (malformed or duplicate replies), and reads
//! of dead-letter queues.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use crate::env::TestEnv;

/// How long one broker operation may take before the harness gives up on it.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection plus a confirming channel for publishes.
pub struct AmqpClient {
    conn: Connection,
    publisher: Channel,
}

/// A message read from a queue, with what the tests look at.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub routing_key: String,
    pub exchange: String,
}

impl DeadLetter {
    /// A header's value as text (long or short string headers), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        header_text(&self.properties, name)
    }

    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A header's value as text (long or short string headers), if present.
pub fn header_text(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    let (_, value) = headers.inner().iter().find(|(k, _)| k.as_str() == name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out after {OP_TIMEOUT:?}")),
    }
}

impl AmqpClient {
    pub async fn connect(url: &str) -> Result<AmqpClient, String> {
        let conn = timed(
            "amqp connect",
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await?;
        let publisher = timed("create channel", conn.create_channel()).await?;
        timed(
            "confirm_select",
            publisher.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(AmqpClient { conn, publisher })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Passive declare on a fresh channel (a failed passive declare closes its channel): the
    /// queue's ready message count, or the broker's refusal (e.g. 404 NOT_FOUND) as text.
    pub async fn queue_message_count(&self, queue: &str) -> Result<u32, String> {
        let ch = timed("create channel", self.conn.create_channel()).await?;
        let q = timed(
            "passive queue_declare",
            ch.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let _ = ch.close(200, "OK".into()).await;
        Ok(q.message_count())
    }

    /// Whether the exchange exists (passive declare on a fresh channel succeeds).
    pub async fn exchange_exists(&self, exchange: &str) -> bool {
        let Ok(ch) = timed("create channel", self.conn.create_channel()).await else {
            return false;
        };
        let ok = timed(
            "passive exchange_declare",
            ch.exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .is_ok();
        if ok {
            let _ = ch.close(200, "OK".into()).await;
        }
        ok
    }

    /// Whether the queue exists (passive declare succeeds).
    pub async fn queue_exists(&self, queue: &str) -> bool {
        self.queue_message_count(queue).await.is_ok()
    }

    /// Polls the queue's message count until `pred` holds; returns the count.
    pub async fn wait_queue_count(
        &self,
        queue: &str,
        timeout: Duration,
        pred: impl Fn(u32) -> bool,
    ) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.queue_message_count(queue).await;
            if let Ok(n) = last
                && pred(n)
            {
                return n;
            }
            if Instant::now() >= deadline {
                panic!("queue {queue}: the count never matched within {timeout:?}; last {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes with publisher confirms and `mandatory`; fails when nacked or returned unroutable.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), String> {
        let confirm = timed(
            "basic_publish",
            self.publisher.basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            ),
        )
        .await?;
        let confirmation = timed("publisher confirm", confirm).await?;
        if !confirmation.is_ack() {
            return Err(format!("publish to {exchange:?}/{routing_key}: nacked"));
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(format!(
                "publish to {exchange:?}/{routing_key}: returned {} {}",
                returned.reply_code, returned.reply_text
            ));
        }
        Ok(())
    }

    /// Publishes a reply body to `saga.replies` the way a worker does (default exchange,
    /// `correlation_id`, `application/json`); `correlation_id` may be left out for malformed tests.
    pub async fn publish_reply(&self, correlation_id: Option<&str>, body: &[u8]) {
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(c) = correlation_id {
            props = props.with_correlation_id(c.into());
        }
        self.publish("", "saga.replies", body, props)
            .await
            .expect("publish a reply to saga.replies");
    }

    /// Takes (acks) every message now in `queue`.
    pub async fn drain(&self, queue: &str) -> Result<Vec<DeadLetter>, String> {
        let ch = timed("create channel", self.conn.create_channel()).await?;
        let mut out = Vec::new();
        loop {
            let got = timed(
                "basic_get",
                ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
            )
            .await?;
            match got {
                Some(msg) => out.push(DeadLetter {
                    body: msg.delivery.data.clone(),
                    properties: msg.delivery.properties.clone(),
                    routing_key: msg.delivery.routing_key.as_str().to_owned(),
                    exchange: msg.delivery.exchange.as_str().to_owned(),
                }),
                None => break,
            }
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(out)
    }

    /// Reads `queue` until `count` messages matching `pred` were taken; returns all that were taken
    /// (matching or not). Panics with what it saw when `timeout` passes first.
    pub async fn take_matching(
        &self,
        queue: &str,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&DeadLetter) -> bool,
    ) -> Vec<DeadLetter> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let got = self
                .drain(queue)
                .await
                .unwrap_or_else(|e| panic!("read {queue}: {e}"));
            seen.extend(got);
            if seen.iter().filter(|m| pred(m)).count() >= count {
                return seen;
            }
            if Instant::now() >= deadline {
                let bodies: Vec<String> = seen
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                    .collect();
                panic!(
                    "{queue}: fewer than {count} matching messages within {timeout:?}; saw {bodies:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Declares a private, exclusive, auto-delete queue bound to `exchange` with `binding_key`
    /// (e.g. to watch `saga.lifecycle`); returns its name.
    pub async fn bind_private_queue(&self, exchange: &str, binding_key: &str) -> String {
        let ch = timed("create channel", self.conn.create_channel())
            .await
            .expect("channel");
        let name = format!("e2e.watch.{}", uuid::Uuid::new_v4().simple());
        // Not exclusive: the queue is read from other channels of this connection only, but
        // auto-delete needs a consumer; it goes away with the vhost anyway.
        timed(
            "queue_declare",
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare a private queue");
        timed(
            "queue_bind",
            ch.queue_bind(
                name.as_str().into(),
                exchange.into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("bind the private queue");
        let _ = ch.close(200, "OK".into()).await;
        name
    }
}

impl TestEnv {
    /// A fresh AMQP client on this test's vhost.
    pub async fn amqp(&self) -> AmqpClient {
        AmqpClient::connect(&self.amqp_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.amqp_url))
    }
}
