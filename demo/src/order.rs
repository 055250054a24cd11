//! The order saga and its workers: inventory, payment, shipping and email services.

use saga_worker::{Context, StepError, WorkerBuilder};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Knobs;

/// The `order` definition. Short timeouts, so that the demo shows a timeout in seconds.
pub fn definition() -> Value {
    json!({
        "name": "order",
        "timeout": "1m",
        "input_schema": {
            "type": "object",
            "required": ["order_id", "items", "amount_cents"],
            "properties": {
                "order_id": { "type": "string" },
                "items": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                "amount_cents": { "type": "integer", "minimum": 1 }
            }
        },
        "steps": [
            { "name": "reserve_inventory", "task": "inventory.reserve", "compensate": "inventory.release",
              "timeout": "2s", "retry": { "max_attempts": 3, "initial_backoff": "200ms" } },
            { "name": "charge_payment", "task": "payment.charge", "compensate": "payment.refund",
              "timeout": "2s", "retry": { "max_attempts": 3, "initial_backoff": "200ms" } },
            { "name": "create_shipment", "task": "shipping.create", "compensate": "shipping.cancel",
              "timeout": "1s", "retry": { "max_attempts": 2, "initial_backoff": "200ms" } },
            { "name": "send_confirmation", "task": "email.order_confirmation", "timeout": "2s" }
        ]
    })
}

#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub items: Vec<String>,
    pub amount_cents: u64,
    #[serde(default)]
    pub knobs: Knobs,
}

/// Registers the order saga's handlers on a worker.
pub fn workers(builder: WorkerBuilder) -> WorkerBuilder {
    builder
        .handle("inventory.reserve", |ctx: Context, o: Order| async move {
            o.knobs.apply(&ctx, "out_of_stock").await?;
            tracing::info!(order = %o.order_id, items = o.items.len(), "reserved the items");
            Ok(json!({ "reservation_id": format!("res-{}", o.order_id) }))
        })
        .handle("inventory.release", |ctx: Context, o: Order| async move {
            o.knobs.apply(&ctx, "release_failed").await?;
            // A timed-out reserve has no output: release whatever the key reserved, if anything.
            tracing::info!(order = %o.order_id, undoes = ?ctx.compensates(), "released the items");
            Ok(Value::Null)
        })
        .handle("payment.charge", |ctx: Context, o: Order| async move {
            o.knobs.apply(&ctx, "card_declined").await?;
            tracing::info!(order = %o.order_id, amount_cents = o.amount_cents, "charged the card");
            Ok(json!({ "payment_id": format!("pay-{}", o.order_id), "amount_cents": o.amount_cents }))
        })
        .handle("payment.refund", |ctx: Context, o: Order| async move {
            o.knobs.apply(&ctx, "refund_failed").await?;
            let payment: Option<Value> = ctx.maybe_result("charge_payment")?;
            tracing::info!(order = %o.order_id, ?payment, "refunded the payment");
            Ok(Value::Null)
        })
        .handle("shipping.create", |ctx: Context, o: Order| async move {
            o.knobs.apply(&ctx, "no_carrier").await?;
            tracing::info!(order = %o.order_id, "booked the shipment");
            Ok(json!({ "tracking": format!("trk-{}", o.order_id) }))
        })
        .handle("shipping.cancel", |ctx: Context, o: Order| async move {
            o.knobs.apply(&ctx, "cancel_failed").await?;
            tracing::info!(order = %o.order_id, "cancelled the shipment");
            Ok(Value::Null)
        })
        .handle("email.order_confirmation", |ctx: Context, o: Order| async move {
            o.knobs.apply(&ctx, "mail_bounced").await?;
            let tracking: Value = ctx.result("create_shipment").map_err(|e| {
                StepError::permanent("missing_shipment", e.message)
            })?;
            tracing::info!(order = %o.order_id, %tracking, "sent the confirmation");
            Ok(json!({ "sent": true }))
        })
}
