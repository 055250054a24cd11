//! `GET /v1/queues`: every task queue of the registered definitions, with its depth and consumers
//! as the broker tells them — what an operator checks first when sagas wait on a step.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use super::problem::ApiError;
use super::sagas::Items;
use crate::status::QueueState;
use saga_wire::task_queue;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TaskQueue {
    pub task: String,
    pub queue: String,
    pub exists: bool,
    /// Messages ready in the queue (not those delivered and not yet acknowledged); null when it
    /// does not exist.
    pub messages: Option<u32>,
    pub consumers: Option<u32>,
}

impl TaskQueue {
    fn new(task: String, state: Option<QueueState>) -> TaskQueue {
        let (exists, messages, consumers) = match state {
            Some(QueueState::Present {
                messages,
                consumers,
            }) => (true, Some(messages), Some(consumers)),
            _ => (false, None, None),
        };
        TaskQueue {
            queue: task_queue(&task),
            task,
            exists,
            messages,
            consumers,
        }
    }
}

#[tracing::instrument(name = "task queues", skip_all)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Items<TaskQueue>>, ApiError> {
    let tasks = state.engine.all_task_names().await?;
    let mut known = state
        .bus
        .queue_states(&tasks)
        .await
        .map_err(|e| ApiError::Unavailable(format!("RabbitMQ cannot tell: {e}")))?;
    let items = tasks
        .into_iter()
        .map(|task| {
            let state = known.remove(&task);
            TaskQueue::new(task, state)
        })
        .collect();
    Ok(Json(Items { items }))
}
