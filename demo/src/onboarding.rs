//! MusicCorp's customer onboarding: create the customer, send the welcome email, grant the first
//! loyalty points. Each step logs the saga id and the command id: its correlation ids.

use saga_worker::{Context, WorkerBuilder};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Knobs;

pub fn definition() -> Value {
    json!({
        "name": "customer_onboarding",
        "input_schema": {
            "type": "object",
            "required": ["email", "name"],
            "properties": { "email": { "type": "string" }, "name": { "type": "string" } }
        },
        "steps": [
            { "name": "create_customer", "task": "customers.create", "compensate": "customers.delete",
              "timeout": "2s", "retry": { "initial_backoff": "200ms" } },
            { "name": "welcome_email", "task": "email.welcome", "timeout": "2s",
              "retry": { "initial_backoff": "200ms" } },
            { "name": "loyalty_points", "task": "loyalty.grant", "compensate": "loyalty.revoke",
              "timeout": "2s", "retry": { "initial_backoff": "200ms" } }
        ]
    })
}

#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub email: String,
    pub name: String,
    #[serde(default)]
    pub knobs: Knobs,
}

fn correlate(ctx: &Context, what: &str) {
    tracing::info!(saga_id = %ctx.saga_id(), command_id = %ctx.command_id(), "{what}");
}

pub fn workers(builder: WorkerBuilder) -> WorkerBuilder {
    builder
        .handle("customers.create", |ctx: Context, c: Customer| async move {
            c.knobs.apply(&ctx, "duplicate_customer").await?;
            correlate(&ctx, "created the customer");
            Ok(json!({ "customer_id": format!("cust-{}", c.email) }))
        })
        .handle("customers.delete", |ctx: Context, c: Customer| async move {
            c.knobs.apply(&ctx, "delete_failed").await?;
            correlate(&ctx, "deleted the customer");
            Ok(Value::Null)
        })
        .handle("email.welcome", |ctx: Context, c: Customer| async move {
            c.knobs.apply(&ctx, "mail_bounced").await?;
            correlate(&ctx, &format!("welcomed {}", c.name));
            Ok(json!({ "sent_to": c.email }))
        })
        .handle("loyalty.grant", |ctx: Context, c: Customer| async move {
            c.knobs.apply(&ctx, "loyalty_down").await?;
            correlate(&ctx, "granted 100 points");
            Ok(json!({ "points": 100 }))
        })
        .handle("loyalty.revoke", |ctx: Context, c: Customer| async move {
            c.knobs.apply(&ctx, "revoke_failed").await?;
            correlate(&ctx, "revoked the points");
            Ok(Value::Null)
        })
}
