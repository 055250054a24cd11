//! Definitions for people: the list, and one definition's steps from its normalised document
//! (every default filled in by the server). A document of a shape this code does not know still
//! renders: what is missing shows as `-`.

use serde_json::Value;

use super::{NONE, Table, time};
use crate::model::{DefinitionDocument, DefinitionSummary};

/// `definitions list`.
pub fn list(items: &[DefinitionSummary]) -> String {
    if items.is_empty() {
        return "no definition is registered\n".to_owned();
    }
    let mut t = Table::new(&["NAME", "VERSION", "CREATED"]);
    for d in items {
        t.row(vec![
            d.name.clone(),
            d.version.to_string(),
            time(d.created_at),
        ]);
    }
    t.render()
}

/// `definitions register`: whether a version was made.
pub fn registered(d: &DefinitionSummary, created: bool) -> String {
    if created {
        format!("created {} version {}\n", d.name, d.version)
    } else {
        format!(
            "unchanged {} version {} (equal to the latest version)\n",
            d.name, d.version
        )
    }
}

/// `definitions show`: a header and the steps, flat, a group's members under its name.
pub fn show(d: &DefinitionDocument) -> String {
    let doc = &d.document;
    let mut out = format!(
        "{:<12}  {} v{}\n{:<12}  {}\n{:<12}  {}\n{:<12}  {}\n\n",
        "definition",
        d.name,
        d.version,
        "created",
        time(d.created_at),
        "timeout",
        text(doc.get("timeout")).unwrap_or_else(|| "none".to_owned()),
        "input schema",
        match doc.get("input_schema") {
            None | Some(Value::Null) => "none",
            Some(_) => "yes (--output json shows it)",
        },
    );
    let mut t = Table::new(&[
        "STEP",
        "GROUP",
        "KIND",
        "TASK/EVENT",
        "COMPENSATE",
        "TIMEOUT",
        "RETRY",
        "COMP. RETRY",
    ]);
    for stage in doc
        .get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match stage.get("parallel").and_then(Value::as_array) {
            Some(members) => {
                let group = text(stage.get("name"));
                for m in members {
                    t.row(step_row(m, group.as_deref()));
                }
            }
            None => t.row(step_row(stage, None)),
        }
    }
    out.push_str(&t.render());
    out
}

fn step_row(step: &Value, group: Option<&str>) -> Vec<String> {
    let (kind, what) = if let Some(task) = text(step.get("task")) {
        ("task", task)
    } else if let Some(event) = text(step.get("await")) {
        ("await", event)
    } else {
        ("?", NONE.to_owned())
    };
    let dash = || NONE.to_owned();
    vec![
        text(step.get("name")).unwrap_or_else(dash),
        group.map_or_else(dash, str::to_owned),
        kind.to_owned(),
        what,
        text(step.get("compensate")).unwrap_or_else(dash),
        text(step.get("timeout")).unwrap_or_else(dash),
        step.get("retry").map_or_else(dash, retry),
        match step.get("compensate") {
            Some(Value::String(_)) => step.get("compensation_retry").map_or_else(dash, retry),
            _ => dash(),
        },
    ]
}

/// A retry policy in a few characters: `3× 1s ×2 ≤1m`.
fn retry(policy: &Value) -> String {
    let field = |k: &str| match policy.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "?".to_owned(),
        Some(other) => other.to_string(),
    };
    format!(
        "{}× {} ×{} ≤{}",
        field("max_attempts"),
        field("initial_backoff"),
        field("multiplier"),
        field("max_backoff")
    )
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_definition_shows_its_steps_flat() {
        let policy = |n: u32| json!({ "max_attempts": n, "initial_backoff": "1s", "multiplier": 2.0, "max_backoff": "1m" });
        let d: DefinitionDocument = serde_json::from_value(json!({
            "name": "escrow", "version": 3, "created_at": "2026-01-31T12:00:00Z",
            "document": { "name": "escrow", "timeout": "1day", "input_schema": null, "steps": [
                { "name": "open", "task": "escrow.open", "compensate": "escrow.close",
                  "timeout": "30s", "retry": policy(3), "compensation_retry": policy(10) },
                { "name": "signatures", "parallel": [
                    { "name": "buyer", "await": "buyer_signed", "timeout": "2days" },
                    { "name": "seller", "await": "seller_signed", "timeout": "2days" } ] },
                { "name": "notify", "task": "email.send", "compensate": null,
                  "timeout": "30s", "retry": policy(3), "compensation_retry": policy(10) } ] }
        }))
        .expect("a definition");
        let out = show(&d);
        assert!(out.starts_with("definition    escrow v3\n"), "{out}");
        assert!(out.contains("timeout       1day\n"), "{out}");
        assert!(out.contains("input schema  none\n"), "{out}");
        assert!(out.contains("open    -           task   escrow.open    escrow.close  30s      3× 1s ×2.0 ≤1m  10× 1s ×2.0 ≤1m\n"), "{out}");
        assert!(out.contains("buyer   signatures  await  buyer_signed   -             2days    -               -\n"), "{out}");
        assert!(out.contains("notify  -           task   email.send     -             30s      3× 1s ×2.0 ≤1m  -\n"), "{out}");
    }

    #[test]
    fn registration_says_whether_it_made_a_version() {
        let d: DefinitionSummary = serde_json::from_value(
            json!({ "name": "order", "version": 2, "created_at": "2026-01-31T12:00:00Z" }),
        )
        .expect("summary");
        assert_eq!(registered(&d, true), "created order version 2\n");
        assert_eq!(
            registered(&d, false),
            "unchanged order version 2 (equal to the latest version)\n"
        );
    }
}
