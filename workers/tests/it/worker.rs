//! Consuming, replying, acknowledging, reconnecting and shutting down, against the real broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use saga_wire::{ReplyBody, StepError, task_queue};
use saga_worker::Context;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tracing::Level;

use crate::env::{Env, Gate, Running, eventually, logs, soon};

#[derive(Debug, Deserialize)]
struct Order {
    qty: i64,
}

/// A handler that doubles `qty`, fails on 0 (permanent) and on negatives (retryable), and
/// panics on 13.
async fn doubler(ctx: Context, order: Order) -> Result<Value, StepError> {
    match order.qty {
        0 => Err(StepError::permanent("empty_order", "nothing to reserve")),
        q if q < 0 => Err(StepError::retryable("stock_unavailable", "try later")),
        13 => panic!("unlucky order"),
        q => Ok(json!({ "double": q * 2, "attempt": ctx.attempt() })),
    }
}

fn ok(output: Value) -> ReplyBody {
    ReplyBody::Ok { output }
}

fn error(reply: ReplyBody) -> StepError {
    match reply {
        ReplyBody::Error { error } => error,
        other => panic!("an error reply, not {other:?}"),
    }
}

#[tokio::test]
async fn a_handler_output_is_replied_with_the_contracts_properties_and_the_command_acked() {
    let mut env = Env::new().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;
    let worker = env
        .worker("w")
        .handle(&task, doubler)
        .build()
        .expect("a worker");
    let running = Running::start(worker);

    let command = env.command(&task, json!({ "qty": 21 }));
    env.send(&command).await;
    let (reply, properties) = env.reply().await;
    assert_eq!(reply.command_id, command.command_id);
    assert_eq!(reply.body, ok(json!({ "double": 42, "attempt": 1 })));
    assert_eq!(
        properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some(command.command_id.to_string().as_str())
    );
    assert_eq!(
        properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    env.wait_settled(&task_queue(&task)).await;
    running.stop().await;
}

#[tokio::test]
async fn errors_are_replied_permanent_or_retryable_and_bad_input_never_reaches_the_handler() {
    let mut env = Env::new().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;
    let running = Running::start(
        env.worker("w")
            .handle(&task, doubler)
            .build()
            .expect("a worker"),
    );

    env.send(&env.command(&task, json!({ "qty": 0 }))).await;
    let permanent = error(env.reply().await.0.body);
    assert_eq!(
        permanent,
        StepError::permanent("empty_order", "nothing to reserve")
    );

    env.send(&env.command(&task, json!({ "qty": -1 }))).await;
    let retryable = error(env.reply().await.0.body);
    assert_eq!(
        retryable,
        StepError::retryable("stock_unavailable", "try later")
    );

    env.send(&env.command(&task, json!({ "quantity": 1 })))
        .await;
    let invalid = error(env.reply().await.0.body);
    assert_eq!(invalid.code, "invalid_input");
    assert!(!invalid.retryable);
    assert!(invalid.message.contains("qty"), "{}", invalid.message);

    env.wait_settled(&task_queue(&task)).await;
    running.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_gets_a_retryable_error_and_the_worker_goes_on() {
    let mut env = Env::new().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;
    let running = Running::start(
        env.worker("w")
            .concurrency(1)
            .handle(&task, doubler)
            .build()
            .expect("a worker"),
    );

    let unlucky = env.command(&task, json!({ "qty": 13 }));
    env.send(&unlucky).await;
    let (reply, _) = env.reply().await;
    assert_eq!(reply.command_id, unlucky.command_id);
    let panicked = error(reply.body);
    assert_eq!(panicked.code, "worker_panic");
    assert!(panicked.retryable);
    assert!(
        panicked.message.contains("unlucky order"),
        "{}",
        panicked.message
    );

    let next = env.command(&task, json!({ "qty": 2 }));
    env.send(&next).await;
    let (reply, _) = env.reply().await;
    assert_eq!(reply.command_id, next.command_id);
    assert_eq!(reply.body, ok(json!({ "double": 4, "attempt": 1 })));
    env.wait_settled(&task_queue(&task)).await;
    running.stop().await;
}

#[tokio::test]
async fn a_message_that_is_not_a_command_is_rejected_and_the_worker_goes_on() {
    let mut env = Env::new().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;
    let running = Running::start(
        env.worker("w")
            .concurrency(1)
            .handle(&task, doubler)
            .build()
            .expect("a worker"),
    );

    env.send_raw(&task, b"this is not json").await;
    env.send_raw(
        &task,
        br#"{"command_id": "0193a000-0000-7000-8000-000000000000"}"#,
    )
    .await;
    let good = env.command(&task, json!({ "qty": 1 }));
    env.send(&good).await;
    let (reply, _) = env.reply().await;
    assert_eq!(reply.command_id, good.command_id, "no reply to the others");
    let queue = task_queue(&task);
    env.wait_settled(&queue).await;
    let rejected = logs(|l| {
        l.level == Level::ERROR
            && l.message
                .starts_with("rejecting a message that is not a command")
            && l.fields.get("queue") == Some(&queue)
    });
    assert_eq!(rejected.len(), 2, "{queue}: {rejected:?}");
    running.stop().await;
}

#[tokio::test]
async fn a_missing_task_queue_is_waited_for_and_never_declared_by_the_worker() {
    let mut env = Env::new().await;
    let task = env.task("inventory.reserve");
    let queue = task_queue(&task);
    let running = Running::start(
        env.worker("w")
            .handle(&task, doubler)
            .build()
            .expect("a worker"),
    );
    eventually("the worker says it waits for the queue", || async {
        let warned = logs(|l| {
            l.level == Level::WARN
                && l.message.starts_with("the task queue does not exist")
                && l.fields.get("queue") == Some(&queue)
        });
        (!warned.is_empty()).then_some(())
    })
    .await;
    assert!(
        !env.queue_exists(&queue).await,
        "the worker declared nothing"
    );

    env.declare_task(&task).await;
    let command = env.command(&task, json!({ "qty": 5 }));
    env.send(&command).await;
    let (reply, _) = env.reply().await;
    assert_eq!(reply.body, ok(json!({ "double": 10, "attempt": 1 })));
    running.stop().await;
}

#[tokio::test]
async fn a_reply_returned_unroutable_leaves_the_command_unacked_until_it_is_delivered() {
    let mut env = Env::bare().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;
    let running = Running::start(
        env.worker("w")
            .handle(&task, doubler)
            .build()
            .expect("a worker"),
    );
    let command = env.command(&task, json!({ "qty": 3 }));
    env.send(&command).await;
    let saga = command.saga_id.to_string();
    eventually("the worker says its reply was returned", || async {
        let said = logs(|l| {
            l.level == Level::ERROR
                && l.message.starts_with("the reply was returned unroutable")
                && l.spans.get("saga.id") == Some(&saga)
        });
        (!said.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        env.counts(&task_queue(&task)).await,
        (0, 1),
        "the command is held, unacknowledged"
    );

    // The orchestrator comes: the reply gets through and the command is acknowledged.
    env.declare_replies().await;
    let (reply, _) = env.reply().await;
    assert_eq!(reply.command_id, command.command_id);
    assert_eq!(reply.body, ok(json!({ "double": 6, "attempt": 1 })));
    env.wait_settled(&task_queue(&task)).await;
    running.stop().await;
}

#[tokio::test]
async fn a_command_a_dead_worker_did_not_acknowledge_is_redelivered_to_another() {
    let mut env = Env::new().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;

    // The first worker takes the command and hangs in its handler.
    let gate = Gate::default();
    let stuck = {
        let gate = gate.clone();
        env.worker("first")
            .handle(&task, move |_ctx: Context, _: Value| {
                let gate = gate.clone();
                async move {
                    gate.pass().await;
                    Ok(json!("never replied"))
                }
            })
            .build()
            .expect("a worker")
    };
    let first = Running::start(stuck);
    let command = env.command(&task, json!({ "qty": 4 }));
    env.send(&command).await;
    gate.arrived(1).await;

    // It dies: its task is dropped, its connection with it.
    first.handle.abort();
    let _ = first.handle.await;

    let redelivered = Arc::new(AtomicU32::new(0));
    let second = {
        let redelivered = redelivered.clone();
        env.worker("second")
            .handle(&task, move |ctx: Context, order: Order| {
                if ctx.redelivered() {
                    redelivered.fetch_add(1, Ordering::SeqCst);
                }
                doubler(ctx, order)
            })
            .build()
            .expect("a worker")
    };
    let second = Running::start(second);
    let (reply, _) = env.reply().await;
    assert_eq!(reply.command_id, command.command_id);
    assert_eq!(reply.body, ok(json!({ "double": 8, "attempt": 1 })));
    assert_eq!(
        redelivered.load(Ordering::SeqCst),
        1,
        "flagged as redelivered"
    );
    env.wait_settled(&task_queue(&task)).await;
    second.stop().await;
}

#[tokio::test]
async fn the_worker_reconnects_after_losing_its_connection() {
    let mut env = Env::new().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;
    let running = Running::start(
        env.worker("reconnecting")
            .handle(&task, doubler)
            .build()
            .expect("a worker"),
    );
    env.send(&env.command(&task, json!({ "qty": 1 }))).await;
    env.reply().await;

    assert_eq!(env.close_connections("reconnecting").await, 1);
    let after = env.command(&task, json!({ "qty": 7 }));
    env.send(&after).await;
    let (reply, _) = env.reply().await;
    assert_eq!(reply.command_id, after.command_id);
    assert_eq!(reply.body, ok(json!({ "double": 14, "attempt": 1 })));
    assert!(
        !logs(|l| l.message.starts_with("lost the RabbitMQ connection")).is_empty(),
        "the loss was logged"
    );
    env.wait_settled(&task_queue(&task)).await;
    running.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_handler_in_flight_and_leaves_the_rest_in_the_queue() {
    let mut env = Env::new().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;
    let gate = Gate::default();
    let handled = Arc::new(AtomicU32::new(0));
    let worker = {
        let (gate, handled) = (gate.clone(), handled.clone());
        env.worker("w")
            .concurrency(1)
            .prefetch(4)
            .handle(&task, move |_ctx: Context, order: Order| {
                let (gate, handled) = (gate.clone(), handled.clone());
                async move {
                    handled.fetch_add(1, Ordering::SeqCst);
                    gate.pass().await;
                    Ok(json!({ "done": order.qty }))
                }
            })
            .build()
            .expect("a worker")
    };
    let running = Running::start(worker);
    let in_flight = env.command(&task, json!({ "qty": 1 }));
    env.send(&in_flight).await;
    gate.arrived(1).await;
    // Prefetched behind the one in flight, never started.
    env.send(&env.command(&task, json!({ "qty": 2 }))).await;
    env.send(&env.command(&task, json!({ "qty": 3 }))).await;

    running.shutdown.cancel();
    assert!(
        !running.handle.is_finished(),
        "the worker waits for its handler"
    );
    gate.open();
    soon("the worker stops", running.handle)
        .await
        .expect("the worker's task ends cleanly");

    let (reply, _) = env.reply().await;
    assert_eq!(reply.command_id, in_flight.command_id);
    assert_eq!(reply.body, ok(json!({ "done": 1 })));
    assert_eq!(handled.load(Ordering::SeqCst), 1, "nothing else started");
    assert_eq!(
        env.counts(&task_queue(&task)).await,
        (2, 0),
        "the one in flight was acknowledged, the others are back in the queue"
    );
}

#[tokio::test]
async fn handlers_run_side_by_side_up_to_the_concurrency() {
    let mut env = Env::new().await;
    let reserve = env.task("inventory.reserve");
    let charge = env.task("payment.charge");
    env.declare_task(&reserve).await;
    env.declare_task(&charge).await;
    // Each handler waits until three are in at once: the worker must run three at a time,
    // across its two queues.
    let barrier = Arc::new(Barrier::new(3));
    let meet = move |_ctx: Context, _: Value| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            Ok(())
        }
    };
    let running = Running::start(
        env.worker("w")
            .concurrency(3)
            .prefetch(2)
            .handle(&reserve, meet.clone())
            .handle(&charge, meet)
            .build()
            .expect("a worker"),
    );
    for task in [&reserve, &reserve, &charge] {
        env.send(&env.command(task, json!({}))).await;
    }
    for _ in 0..3 {
        assert_eq!(env.reply().await.0.body, ok(Value::Null));
    }
    running.stop().await;
}

#[tokio::test]
async fn every_log_line_of_a_handler_carries_its_saga_step_attempt_and_command() {
    let mut env = Env::new().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;
    let running = Running::start(
        env.worker("w")
            .handle(&task, |ctx: Context, _: Value| async move {
                tracing::info!(marker = %ctx.command_id(), "inside the handler");
                Ok(())
            })
            .build()
            .expect("a worker"),
    );
    let mut command = env.command(&task, json!({}));
    command.attempt = 3;
    env.send(&command).await;
    env.reply().await;

    let id = command.command_id.to_string();
    let inside = logs(|l| l.fields.get("marker") == Some(&id));
    assert_eq!(inside.len(), 1, "{inside:?}");
    let done =
        logs(|l| l.message == "the step succeeded" && l.spans.get("command.id") == Some(&id));
    assert_eq!(done.len(), 1, "{done:?}");
    for line in [&inside[0], &done[0]] {
        let span = |k: &str| line.spans.get(k).map(String::as_str);
        assert_eq!(span("saga.id"), Some(command.saga_id.to_string().as_str()));
        assert_eq!(span("saga.step"), Some("the_step"));
        assert_eq!(span("command.id"), Some(id.as_str()));
        assert_eq!(span("attempt"), Some("3"));
        assert_eq!(span("task"), Some(task.as_str()));
        assert_eq!(span("kind"), Some("do"));
    }
    running.stop().await;
}

#[tokio::test]
async fn a_handler_that_outlives_the_shutdown_timeout_is_abandoned_and_its_command_requeued() {
    let env = Env::new().await;
    let task = env.task("inventory.reserve");
    env.declare_task(&task).await;
    let gate = Gate::default();
    let worker = {
        let gate = gate.clone();
        env.worker("w")
            .shutdown_timeout(std::time::Duration::from_millis(200))
            .handle(&task, move |_ctx: Context, _: Value| {
                let gate = gate.clone();
                async move {
                    gate.pass().await;
                    Ok(())
                }
            })
            .build()
            .expect("a worker")
    };
    let running = Running::start(worker);
    env.send(&env.command(&task, json!({}))).await;
    gate.arrived(1).await;
    running.stop().await;
    assert_eq!(
        env.counts(&task_queue(&task)).await,
        (1, 0),
        "back in the queue, for the next worker"
    );
}

#[tokio::test]
async fn a_worker_that_cannot_reach_the_broker_keeps_trying_and_still_stops_on_request() {
    let running = Running::start(
        saga_worker::Worker::builder("amqp://guest:guest@127.0.0.1:1/%2f")
            .handle("inventory.reserve", doubler)
            .build()
            .expect("a worker"),
    );
    eventually("the worker says it cannot connect", || async {
        let said = logs(|l| l.message == "cannot connect to RabbitMQ");
        (!said.is_empty()).then_some(())
    })
    .await;
    assert!(!running.handle.is_finished(), "it keeps trying");
    running.stop().await;
}
