//! Configuring a worker: where the broker is, how much to take at once, which handler serves
//! which task.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lapin::uri::AMQPUri;
use saga_wire::StepError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::handler::Handler;
use crate::{BuildError, Context, Worker};

/// The broker URL used by [`crate::Worker::from_env`] when `AMQP_URL` is not set (the
/// orchestrator's own default, PROTOCOL.md §5).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

const DEFAULT_CONCURRENCY: usize = 16;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a built worker runs with.
pub(crate) struct Config {
    pub(crate) uri: AMQPUri,
    pub(crate) connection_name: String,
    pub(crate) prefetch: u16,
    pub(crate) concurrency: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) handlers: BTreeMap<String, Handler>,
}

/// Builds a [`Worker`]: `Worker::builder(url).handle(task, handler)….build()?`.
#[must_use = "a builder does nothing until `build` is called"]
pub struct WorkerBuilder {
    url: String,
    connection_name: String,
    prefetch: Option<u16>,
    concurrency: usize,
    shutdown_timeout: Duration,
    handlers: Vec<(String, Handler)>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never shown.
        f.debug_struct("WorkerBuilder")
            .field("connection_name", &self.connection_name)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field(
                "tasks",
                &self.handlers.iter().map(|(t, _)| t).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    pub(crate) fn new(url: String) -> WorkerBuilder {
        WorkerBuilder {
            url,
            connection_name: "saga-worker".into(),
            prefetch: None,
            concurrency: DEFAULT_CONCURRENCY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            handlers: Vec::new(),
        }
    }

    /// Registers the handler of task (or compensation) `task`: the worker consumes
    /// `saga.task.<task>`. The handler gets the command's [`Context`] and its `input` parsed as
    /// `T` (an input that does not parse is answered with the non-retryable error
    /// `invalid_input`, without calling the handler); its `Ok` output becomes the reply's
    /// `output`, its [`StepError`] the reply's `error`.
    pub fn handle<T, O, F, Fut>(mut self, task: impl Into<String>, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(Context, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    {
        self.handlers.push((task.into(), Handler::new(handler)));
        self
    }

    /// How many unacknowledged commands the broker sends ahead, per task queue (AMQP
    /// `basic.qos`). Defaults to the concurrency.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch.max(1));
        self
    }

    /// How many handlers run at once, across all the worker's tasks. Defaults to 16.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The name the connection shows in RabbitMQ (`rabbitmqctl list_connections
    /// client_properties`, the management UI). Defaults to `saga-worker`.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// How long a shutdown waits for the handlers in flight to finish (and their replies to be
    /// confirmed and acknowledged) before it abandons them; the broker then redelivers their
    /// commands. Defaults to 30 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Checks the configuration: the URL parses, there is at least one handler, task names are
    /// valid (PROTOCOL.md §1) and registered once each.
    pub fn build(self) -> Result<Worker, BuildError> {
        let uri = AMQPUri::from_str(&self.url).map_err(BuildError::InvalidUrl)?;
        if self.handlers.is_empty() {
            return Err(BuildError::NoHandlers);
        }
        let mut handlers = BTreeMap::new();
        for (task, handler) in self.handlers {
            if !is_task_name(&task) {
                return Err(BuildError::InvalidTaskName(task));
            }
            if handlers.contains_key(&task) {
                return Err(BuildError::DuplicateTask(task));
            }
            handlers.insert(task, handler);
        }
        let prefetch = self
            .prefetch
            .unwrap_or_else(|| u16::try_from(self.concurrency).unwrap_or(u16::MAX));
        Ok(Worker {
            config: Arc::new(Config {
                uri,
                connection_name: self.connection_name,
                prefetch,
                concurrency: self.concurrency,
                shutdown_timeout: self.shutdown_timeout,
                handlers,
            }),
        })
    }
}

/// `^[a-z][a-z0-9_.-]{0,127}$`, the contract's rule for task and compensation names.
fn is_task_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 128
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    async fn noop(_ctx: Context, _input: Value) -> Result<(), StepError> {
        Ok(())
    }

    #[test]
    fn task_names_follow_the_contract() {
        for good in ["a", "inventory.reserve", "pay-ment_2.x", &"a".repeat(128)] {
            assert!(is_task_name(good), "{good}");
        }
        for bad in ["", "Inventory", "1abc", "a b", "a/b", "é", &"a".repeat(129)] {
            assert!(!is_task_name(bad), "{bad}");
        }
    }

    #[test]
    fn build_checks_what_it_can() {
        let url = DEFAULT_AMQP_URL;
        assert_eq!(
            Worker::builder(url).build().err(),
            Some(BuildError::NoHandlers)
        );
        assert_eq!(
            Worker::builder(url)
                .handle("a", noop)
                .handle("a", noop)
                .build()
                .err(),
            Some(BuildError::DuplicateTask("a".into()))
        );
        assert_eq!(
            Worker::builder(url).handle("A", noop).build().err(),
            Some(BuildError::InvalidTaskName("A".into()))
        );
        assert!(matches!(
            Worker::builder("http://nope")
                .handle("a", noop)
                .build()
                .err(),
            Some(BuildError::InvalidUrl(_))
        ));
        let worker = Worker::builder(url)
            .concurrency(40)
            .handle("a", noop)
            .build()
            .expect("a valid worker");
        assert_eq!(worker.config.prefetch, 40);
        assert_eq!(worker.config.concurrency, 40);
    }
}
