//! Sagas for people: the list, a status (header and steps) and the history as a timeline.

use super::{NONE, Table, compact, offset, one_line, or_none, summary, time, time_ms, truncate};
use crate::model::{Failure, HistoryEntry, SagaStatus};

/// How much of a stuck reason the list shows (`sagas show` has all of it).
const LIST_REASON: usize = 60;
const ERROR_MESSAGE: usize = 50;
const DATA_SUMMARY: usize = 60;
const JSON_LINE: usize = 100;

/// `sagas list`: one saga a line.
pub fn list(items: &[SagaStatus]) -> String {
    if items.is_empty() {
        return "no saga matches\n".to_owned();
    }
    let mut t = Table::new(&[
        "ID",
        "DEFINITION",
        "VER",
        "STATE",
        "STUCK",
        "UPDATED",
        "FAILURE",
        "STUCK REASON",
    ]);
    for s in items {
        t.row(vec![
            s.id.clone(),
            s.definition.clone(),
            s.version.to_string(),
            s.state.clone(),
            if s.stuck { "STUCK" } else { NONE }.to_owned(),
            time(s.updated_at),
            s.failure
                .as_ref()
                .map_or_else(|| NONE.to_owned(), failure_short),
            s.stuck_reason
                .as_deref()
                .map_or_else(|| NONE.to_owned(), |r| truncate(r, LIST_REASON)),
        ]);
    }
    t.render()
}

/// `code (step)`, or the code alone when no step was running.
fn failure_short(f: &Failure) -> String {
    match &f.step {
        Some(step) => format!("{} ({step})", f.code),
        None => f.code.clone(),
    }
}

/// The status header and, when the status has them, the steps.
pub fn status(s: &SagaStatus) -> String {
    let mut fields: Vec<(&str, String)> = vec![
        ("saga", s.id.clone()),
        ("definition", format!("{} v{}", s.definition, s.version)),
        ("state", format!("{} (revision {})", s.state, s.revision)),
    ];
    if s.stuck {
        fields.push((
            "stuck",
            format!(
                "yes: {}",
                s.stuck_reason.as_deref().unwrap_or("(no reason given)")
            ),
        ));
    }
    if let Some(f) = &s.failure {
        let mut text = format!("{} at step {}", f.code, or_none(f.step.as_deref()));
        if let Some(m) = f.message.as_deref().filter(|m| !m.is_empty()) {
            text.push_str(&format!(": {m}"));
        }
        if let Some(at) = f.at {
            text.push_str(&format!(" ({})", time_ms(at)));
        }
        fields.push(("failure", text));
    }
    fields.push((
        "deadline",
        s.deadline.map_or_else(|| "none".to_owned(), time_ms),
    ));
    fields.push(("created", time_ms(s.created_at)));
    fields.push(("updated", time_ms(s.updated_at)));
    fields.push(("input", compact(&s.input, JSON_LINE)));
    if let Some(output) = s.output.as_ref().filter(|o| !o.is_null()) {
        fields.push(("output", compact(output, JSON_LINE)));
    }
    let mut out = String::new();
    for (label, value) in fields {
        out.push_str(&format!("{label:<10}  {}\n", one_line(&value)));
    }
    if let Some(steps) = &s.steps {
        let mut t = Table::new(&["STEP", "GROUP", "STATE", "ATTEMPTS", "ERROR"]);
        for step in steps {
            let error = step.error.as_ref().map_or_else(
                || NONE.to_owned(),
                |e| {
                    let retry = if e.retryable { ", retryable" } else { "" };
                    truncate(&format!("{}{retry}: {}", e.code, e.message), ERROR_MESSAGE)
                },
            );
            t.row(vec![
                step.name.clone(),
                or_none(step.group.as_deref()),
                step.state.clone(),
                step.attempts.to_string(),
                error,
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// The history as a timeline, each entry's time as an offset from the first (`saga_started`).
pub fn history(s: &SagaStatus, entries: &[HistoryEntry]) -> String {
    let start = entries.first().map_or(s.created_at, |e| e.at);
    let mut t = Table::new(&[
        "OFFSET", "KIND", "STEP", "ATTEMPT", "REASON", "ACTOR", "DATA",
    ]);
    for e in entries {
        t.row(vec![
            offset(e.at - start),
            e.kind.clone(),
            or_none(e.step.as_deref()),
            e.attempt.map_or_else(|| NONE.to_owned(), |a| a.to_string()),
            or_none(e.reason.as_deref()),
            or_none(e.actor.as_deref()),
            summary(&e.data, DATA_SUMMARY),
        ]);
    }
    format!("history from {}\n{}", time_ms(start), t.render())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn suspended() -> SagaStatus {
        serde_json::from_value(json!({
            "id": "0193a000-0000-7000-8000-000000000001", "definition": "order", "version": 2,
            "revision": 7, "state": "suspended", "input": { "order_id": "A-1" }, "output": null,
            "failure": { "step": "charge", "code": "card_declined", "message": "no funds",
                         "at": "2026-01-31T12:00:01.5Z" },
            "steps": [
                { "name": "reserve", "group": null, "state": "compensation_failed", "attempts": 1,
                  "output": {}, "error": { "code": "db_down", "message": "cannot undo", "retryable": false },
                  "started_at": null, "finished_at": null },
                { "name": "charge", "group": null, "state": "failed", "attempts": 3, "output": null,
                  "error": { "code": "card_declined", "message": "no funds", "retryable": false },
                  "started_at": null, "finished_at": null }
            ],
            "stuck": true, "stuck_reason": "compensation of reserve failed after 1 attempt (db_down: cannot undo); an operator must retry, skip or terminate",
            "created_at": "2026-01-31T12:00:00Z", "updated_at": "2026-01-31T12:00:02Z",
            "deadline": null, "some_future_field": 1
        }))
        .expect("a status")
    }

    #[test]
    fn the_list_marks_stuck_sagas_and_cuts_reasons() {
        let out = list(&[suspended()]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("ID  "), "{out}");
        assert!(
            lines[1].contains(
                "order       2    suspended  STUCK  2026-01-31T12:00:02Z  card_declined (charge)  compensation"
            ),
            "{out}"
        );
        assert!(lines[1].ends_with("…"), "{out}");
        assert_eq!(list(&[]), "no saga matches\n");
    }

    #[test]
    fn a_status_shows_its_header_and_steps() {
        let out = status(&suspended());
        assert!(
            out.contains("state       suspended (revision 7)\n"),
            "{out}"
        );
        assert!(
            out.contains("stuck       yes: compensation of reserve failed"),
            "{out}"
        );
        assert!(
            out.contains(
                "failure     card_declined at step charge: no funds (2026-01-31T12:00:01.500Z)\n"
            ),
            "{out}"
        );
        assert!(out.contains("deadline    none\n"), "{out}");
        assert!(
            out.contains("\nSTEP     GROUP  STATE                ATTEMPTS  ERROR\n"),
            "{out}"
        );
        assert!(
            out.contains("reserve  -      compensation_failed  1         db_down: cannot undo\n"),
            "{out}"
        );
    }

    #[test]
    fn the_history_is_a_timeline() {
        let entries: Vec<HistoryEntry> = serde_json::from_value(json!([
            { "seq": 1, "at": "2026-01-31T12:00:00Z", "kind": "saga_started", "step": null,
              "attempt": null, "command_id": null, "actor": "ops", "reason": null,
              "data": { "definition": "order" } },
            { "seq": 2, "at": "2026-01-31T12:01:02.250Z", "kind": "operator_skip", "step": "reserve",
              "attempt": 2, "command_id": null, "actor": "ops", "reason": "undone by hand", "data": {} }
        ]))
        .expect("entries");
        let out = history(&suspended(), &entries);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "history from 2026-01-31T12:00:00.000Z");
        assert!(lines[2].starts_with("+0.000s     saga_started   -        -        -               ops    definition=order"), "{out}");
        assert!(
            lines[3]
                .starts_with("+1m02.250s  operator_skip  reserve  2        undone by hand  ops"),
            "{out}"
        );
    }
}
