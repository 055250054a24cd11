//! Group commit: requests of one kind (replies, starts) wait in a queue; up to [`LANES`] lanes
//! (tasks, each with its own connection) drain it, each taking up to [`BATCH`] requests into one
//! transaction — under load a transaction carries many, at rest each goes alone at once. The
//! caller awaits its own request's result, which is sent only after the commit.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::{Engine, EngineError, Inner};

/// At most this many requests per transaction.
pub(super) const BATCH: usize = 64;
/// At most this many transactions of one kind at once.
pub(super) const LANES: usize = 4;

/// A request and where its result goes.
pub(super) struct Pending<T, R> {
    pub(super) request: T,
    pub(super) done: oneshot::Sender<R>,
}

/// The requests waiting for a lane, and how many lanes run.
pub(super) struct Queue<T, R> {
    pending: Mutex<VecDeque<Pending<T, R>>>,
    lanes: AtomicUsize,
}

impl<T, R> Default for Queue<T, R> {
    fn default() -> Self {
        Queue {
            pending: Mutex::new(VecDeque::new()),
            lanes: AtomicUsize::new(0),
        }
    }
}

impl<T, R> Queue<T, R> {
    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending<T, R>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a lane unless [`LANES`] run already.
    fn take_lane(&self) -> bool {
        let mut running = self.lanes.load(Ordering::SeqCst);
        loop {
            if running >= LANES {
                return false;
            }
            match self.lanes.compare_exchange(
                running,
                running + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => running = now,
            }
        }
    }
}

/// How a kind of request is batched: where its queue is, how a batch is applied (it must send
/// every request's result), and how one request is applied in a transaction of its own.
pub(super) struct Kind<T: 'static, R: 'static> {
    pub(super) queue: fn(&Inner) -> &Queue<T, R>,
    pub(super) apply: fn(Engine, Vec<Pending<T, R>>) -> BoxFuture<'static, ()>,
    pub(super) alone: for<'a> fn(&'a Engine, &'a T) -> BoxFuture<'a, R>,
}

/// Sends each request of a batch its result. When the batch's transaction failed, each request
/// is applied alone instead, so that one bad request never holds up the others (a batch of one
/// has its error).
pub(super) async fn answer<T, R>(
    engine: &Engine,
    kind: &Kind<T, Result<R, EngineError>>,
    batch: Vec<Pending<T, Result<R, EngineError>>>,
    results: Result<Vec<Result<R, EngineError>>, EngineError>,
) {
    match results {
        Ok(results) => {
            for (pending, result) in batch.into_iter().zip(results) {
                // The caller may be gone (it gave up at shutdown): nothing to do.
                let _ = pending.done.send(result);
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(pending) = batch.into_iter().next() {
                let _ = pending.done.send(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, size = batch.len(), "a batch failed; applying its requests one by one");
            for pending in batch {
                let result = (kind.alone)(engine, &pending.request).await;
                let _ = pending.done.send(result);
            }
        }
    }
}

impl Engine {
    /// Queues `request` for a lane of its kind; its result comes once the batch that carried it
    /// committed. None: no lane will take it (the runtime is shutting down).
    pub(super) async fn batched<T: Send + 'static, R: Send + 'static>(
        &self,
        kind: &'static Kind<T, R>,
        request: T,
    ) -> Option<R> {
        let (done, result) = oneshot::channel();
        (kind.queue)(&self.inner)
            .pending()
            .push_back(Pending { request, done });
        self.start_lane(kind);
        result.await.ok()
    }

    fn start_lane<T: Send + 'static, R: Send + 'static>(&self, kind: &'static Kind<T, R>) {
        if !(kind.queue)(&self.inner).take_lane() {
            // The lanes running take this request too.
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move { engine.drain(kind).await });
    }

    /// A lane: takes batches until the queue is empty.
    async fn drain<T: Send + 'static, R: Send + 'static>(self, kind: &'static Kind<T, R>) {
        loop {
            let batch: Vec<Pending<T, R>> = {
                let mut pending = (kind.queue)(&self.inner).pending();
                let n = pending.len().min(BATCH);
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                let queue = (kind.queue)(&self.inner);
                queue.lanes.fetch_sub(1, Ordering::SeqCst);
                // A request queued after the look above may have found every lane busy.
                if !queue.pending().is_empty() {
                    self.start_lane(kind);
                }
                return;
            }
            (kind.apply)(self.clone(), batch).await;
        }
    }
}
