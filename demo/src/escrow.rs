//! The seeds' escrow: a house closing waits for the buyer's and the seller's signatures (in
//! parallel), then for the funds, then transfers the title — each wait with a deadline. When a
//! deadline passes, the escrow closes "not finished" and what was done is undone.

use saga_worker::{Context, WorkerBuilder};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Knobs;

pub fn definition() -> Value {
    json!({
        "name": "escrow",
        "timeout": "1m",
        "input_schema": {
            "type": "object",
            "required": ["property", "price_cents"],
            "properties": {
                "property": { "type": "string" },
                "price_cents": { "type": "integer", "minimum": 1 }
            }
        },
        "steps": [
            { "name": "open_escrow", "task": "escrow.open", "compensate": "escrow.close", "timeout": "2s" },
            { "name": "signatures", "parallel": [
                { "name": "buyer_signature", "await": "buyer_signed", "timeout": "3s" },
                { "name": "seller_signature", "await": "seller_signed", "timeout": "3s" }
            ] },
            { "name": "funds", "await": "funds_deposited", "timeout": "3s" },
            { "name": "transfer_title", "task": "title.transfer", "compensate": "title.revert", "timeout": "2s" }
        ]
    })
}

#[derive(Debug, Clone, Deserialize)]
pub struct Closing {
    pub property: String,
    pub price_cents: u64,
    #[serde(default)]
    pub knobs: Knobs,
}

pub fn workers(builder: WorkerBuilder) -> WorkerBuilder {
    builder
        .handle("escrow.open", |ctx: Context, c: Closing| async move {
            c.knobs.apply(&ctx, "escrow_refused").await?;
            tracing::info!(property = %c.property, price_cents = c.price_cents, "opened the escrow account");
            Ok(json!({ "account": format!("esc-{}", ctx.saga_id()) }))
        })
        .handle("escrow.close", |ctx: Context, c: Closing| async move {
            c.knobs.apply(&ctx, "close_failed").await?;
            tracing::info!(property = %c.property, "closed the escrow account, not finished");
            Ok(Value::Null)
        })
        .handle("title.transfer", |ctx: Context, c: Closing| async move {
            c.knobs.apply(&ctx, "title_disputed").await?;
            let funds: Value = ctx.result("funds")?;
            tracing::info!(property = %c.property, %funds, "transferred the title");
            Ok(json!({ "deed": format!("deed-{}", c.property) }))
        })
        .handle("title.revert", |ctx: Context, c: Closing| async move {
            c.knobs.apply(&ctx, "revert_failed").await?;
            tracing::info!(property = %c.property, "reverted the title");
            Ok(Value::Null)
        })
}
