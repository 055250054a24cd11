//! A plain AMQP client on the test's vhost, used as "anyone else" on the broker: passive declares
//! (queues exist, how many messages wait), raw publishes (malformed or duplicate replies), and reads
//! of dead-letter queues.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use crate::env::TestEnv;
use crate::http::status_less_steps;

/// A header every message published through [`AmqpClient::publish_as_anyone`] carries, so that a
/// dead-lettered copy can be checked to keep "the original body and properties".
pub const ORIGIN_HEADER: &str = "x-e2e-origin";
const ORIGIN: &str = "saga-e2e";

/// A message the harness published as a foreign party, to be found again by its `message_id`.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub body: Vec<u8>,
}

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
    pub fn message_id(&self) -> Option<String> {
        self.properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
    }

    pub fn correlation_id(&self) -> Option<String> {
        self.properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
    }

    /// The `type` property.
    pub fn kind(&self) -> Option<String> {
        self.properties
            .kind()
            .as_ref()
            .map(|s| s.as_str().to_owned())
    }

    /// PROTOCOL §3: "Anything the orchestrator dead-letters, it publishes itself to the DLQ with
    /// the original body and properties and the header `x-saga-error` (a reason in words)".
    #[track_caller]
    pub fn assert_dead_letter_of(&self, sent: &Sent) {
        let reason = self.header("x-saga-error").unwrap_or_default();
        assert!(
            !reason.trim().is_empty(),
            "no x-saga-error (a reason in words) on {self:?}"
        );
        assert_eq!(self.body, sent.body, "the original body: {self:?}");
        assert_eq!(
            self.correlation_id(),
            sent.correlation_id,
            "the original correlation_id: {self:?}"
        );
        assert_eq!(
            self.properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .as_deref(),
            Some("application/json"),
            "the original content_type: {self:?}"
        );
        assert_eq!(
            self.header(ORIGIN_HEADER).as_deref(),
            Some(ORIGIN),
            "the original headers: {self:?}"
        );
    }

    /// PROTOCOL §3 Lifecycle: a message on `saga.lifecycle` for a saga whose status (as read over
    /// HTTP, at the same revision) is `status`: routing key `{definition}.{state}`, persistent,
    /// `application/json`, a `message_id`, `correlation_id` = saga id, `type` = `saga.{state}`, and
    /// the body = the status less `steps`.
    #[track_caller]
    pub fn assert_lifecycle_of(&self, status: &Value) {
        let state = status["state"].as_str().expect("a state");
        let id = status["id"].as_str().expect("an id");
        let definition = status["definition"].as_str().expect("a definition");
        let p = &self.properties;
        assert_eq!(self.exchange, "saga.lifecycle", "{self:?}");
        assert_eq!(
            self.routing_key,
            format!("{definition}.{state}"),
            "{self:?}"
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent: {self:?}");
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json"),
            "{self:?}"
        );
        assert!(
            self.message_id().is_some_and(|m| !m.is_empty()),
            "message_id unique per event: {self:?}"
        );
        assert_eq!(self.correlation_id().as_deref(), Some(id), "{self:?}");
        assert_eq!(self.kind(), Some(format!("saga.{state}")), "{self:?}");
        let body = self.body_json().unwrap_or_else(|| {
            panic!(
                "lifecycle body is not JSON: {}",
                String::from_utf8_lossy(&self.body)
            )
        });
        assert_eq!(
            body,
            status_less_steps(status),
            "the body is the saga's status less `steps`"
        );
    }

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

    /// Publishes as a foreign party would: persistent, `application/json`, `message_id` (the given
    /// one or a fresh one), an optional `correlation_id`, and the header [`ORIGIN_HEADER`].
    pub async fn publish_as_anyone(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        correlation_id: Option<&str>,
        message_id: Option<&str>,
    ) -> Sent {
        let message_id = message_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("e2e-{}", uuid::Uuid::new_v4().simple()));
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(ORIGIN_HEADER),
            AMQPValue::LongString(LongString::from(ORIGIN)),
        );
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.as_str().into())
            .with_headers(headers);
        if let Some(c) = correlation_id {
            props = props.with_correlation_id(c.into());
        }
        self.publish(exchange, routing_key, body, props)
            .await
            .unwrap_or_else(|e| panic!("publish to {exchange:?}/{routing_key}: {e}"));
        Sent {
            message_id,
            correlation_id: correlation_id.map(str::to_owned),
            body: body.to_vec(),
        }
    }

    /// An event (PROTOCOL §3): to `saga.events` with routing key = the event's name.
    pub async fn publish_event(
        &self,
        event: &str,
        correlation_id: Option<&str>,
        body: &[u8],
    ) -> Sent {
        self.publish_as_anyone("saga.events", event, body, correlation_id, None)
            .await
    }

    /// A start message (PROTOCOL §3) on `saga.start`, its `message_id` the idempotency key.
    pub async fn publish_start(&self, body: &[u8], message_id: Option<&str>) -> Sent {
        self.publish_as_anyone("", "saga.start", body, None, message_id)
            .await
    }

    /// Reads `queue` (a DLQ) until each of `sent` is there, checks each is its dead letter
    /// ([`DeadLetter::assert_dead_letter_of`]) and returns them in `sent`'s order.
    pub async fn take_dead_letters(
        &self,
        queue: &str,
        sent: &[Sent],
        timeout: Duration,
    ) -> Vec<DeadLetter> {
        let ids: Vec<String> = sent.iter().map(|m| m.message_id.clone()).collect();
        let seen = self
            .take_each(queue, timeout, &ids, DeadLetter::message_id)
            .await;
        for (m, s) in seen.iter().zip(sent) {
            m.assert_dead_letter_of(s);
        }
        seen
    }

    /// Reads `queue` (bound to `saga.lifecycle`) until it holds a message of `type`
    /// `saga.{state}` for each `(saga id, state)` of `wanted`; returns them in that order.
    pub async fn take_lifecycle(
        &self,
        queue: &str,
        wanted: &[(&str, &str)],
        timeout: Duration,
    ) -> Vec<DeadLetter> {
        let keys: Vec<String> = wanted
            .iter()
            .map(|(id, state)| format!("{id} saga.{state}"))
            .collect();
        self.take_each(queue, timeout, &keys, |m| {
            Some(format!(
                "{} {}",
                m.correlation_id().unwrap_or_default(),
                m.kind().unwrap_or_default()
            ))
        })
        .await
    }

    /// Reads `queue` until a message with each key of `wanted` (by `key`) was taken; returns the
    /// first of each, in `wanted`'s order.
    async fn take_each(
        &self,
        queue: &str,
        timeout: Duration,
        wanted: &[String],
        key: impl Fn(&DeadLetter) -> Option<String>,
    ) -> Vec<DeadLetter> {
        let first = |seen: &[DeadLetter], w: &String| {
            seen.iter().find(|m| key(m).as_ref() == Some(w)).cloned()
        };
        let seen = self
            .take_until(queue, timeout, &format!("{wanted:?}"), |seen| {
                wanted.iter().all(|w| first(seen, w).is_some())
            })
            .await;
        wanted.iter().filter_map(|w| first(&seen, w)).collect()
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
        self.take_until(
            queue,
            timeout,
            &format!("{count} matching messages"),
            |seen| seen.iter().filter(|m| pred(m)).count() >= count,
        )
        .await
    }

    /// Reads (takes) `queue` until `done` holds for all that was taken; returns it. Panics with
    /// the bodies it saw when `timeout` passes first.
    async fn take_until(
        &self,
        queue: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[DeadLetter]) -> bool,
    ) -> Vec<DeadLetter> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let got = self
                .drain(queue)
                .await
                .unwrap_or_else(|e| panic!("read {queue}: {e}"));
            seen.extend(got);
            if done(&seen) {
                return seen;
            }
            if Instant::now() >= deadline {
                let got: Vec<(Option<String>, String)> = seen
                    .iter()
                    .map(|m| {
                        (
                            m.message_id(),
                            String::from_utf8_lossy(&m.body).into_owned(),
                        )
                    })
                    .collect();
                panic!("{queue}: never saw {what} within {timeout:?}; saw {got:#?}");
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
