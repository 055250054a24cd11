//! The task queues and the outcome of a bulk action, for people.

use super::{NONE, Table, or_none, truncate};
use crate::model::{BulkResult, TaskQueue};

const REASON: usize = 60;

/// `queues`: one queue a line; a queue with work and nobody to do it is called out.
pub fn queues(items: &[TaskQueue]) -> String {
    if items.is_empty() {
        return "no definition is registered\n".to_owned();
    }
    let mut t = Table::new(&["QUEUE", "READY", "CONSUMERS", "NOTE"]);
    for q in items {
        let count = |n: Option<u32>| n.map_or_else(|| NONE.to_owned(), |n| n.to_string());
        let note = match (q.exists, q.consumers, q.messages) {
            (false, _, _) => "missing",
            (true, Some(0), Some(m)) if m > 0 => "NO CONSUMER",
            (true, Some(0), _) => "no consumer",
            _ => NONE,
        };
        t.row(vec![
            q.queue.clone(),
            count(q.messages),
            count(q.consumers),
            note.to_owned(),
        ]);
    }
    t.render()
}

/// `bulk retry|terminate`: a summary line, then one saga a line.
pub fn bulk(r: &BulkResult) -> String {
    let verb = match r.action.as_str() {
        "retry" => "retried",
        "terminate" => "terminated",
        other => other,
    };
    let applied = r.items.iter().filter(|i| i.outcome == "applied").count();
    let mut out = if r.dry_run {
        format!(
            "dry run: {} sagas match; {} would be {verb} by this call\n",
            r.matched,
            r.items.len()
        )
    } else {
        format!("{verb} {applied} of {} matching sagas\n", r.matched)
    };
    if r.remaining > 0 {
        out.push_str(&format!(
            "{} more match beyond --limit: run again for them\n",
            r.remaining
        ));
    }
    if r.items.is_empty() {
        return out;
    }
    let mut t = Table::new(&["ID", "DEFINITION", "STATE", "OUTCOME", "DETAIL"]);
    for i in &r.items {
        let detail = i.detail.as_deref().or(i.stuck_reason.as_deref());
        t.row(vec![
            i.id.clone(),
            i.definition.clone(),
            i.state.clone(),
            i.outcome.clone(),
            or_none(detail.map(|d| truncate(d, REASON)).as_deref()),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BulkItem;

    #[test]
    fn queues_call_out_work_nobody_takes() {
        let q = |queue: &str, exists, messages, consumers| TaskQueue {
            queue: queue.into(),
            exists,
            messages,
            consumers,
        };
        let text = queues(&[
            q("saga.task.a", true, Some(3), Some(0)),
            q("saga.task.b", true, Some(0), Some(2)),
            q("saga.task.c", false, None, None),
        ]);
        assert_eq!(
            text,
            "QUEUE        READY  CONSUMERS  NOTE\n\
             saga.task.a  3      0          NO CONSUMER\n\
             saga.task.b  0      2          -\n\
             saga.task.c  -      -          missing\n"
        );
    }

    #[test]
    fn a_bulk_summary_says_what_was_done_and_what_is_left() {
        let item = |outcome: &str, detail: Option<&str>| BulkItem {
            id: "s1".into(),
            definition: "order".into(),
            state: "suspended".into(),
            stuck_reason: Some("compensation of a failed".into()),
            outcome: outcome.into(),
            detail: detail.map(str::to_owned),
        };
        let dry = bulk(&BulkResult {
            action: "retry".into(),
            dry_run: true,
            matched: 3,
            remaining: 2,
            items: vec![item("selected", None)],
        });
        assert!(dry.starts_with("dry run: 3 sagas match; 1 would be retried by this call\n2 more match beyond --limit"), "{dry}");
        assert!(
            dry.contains("s1  order       suspended  selected  compensation of a failed"),
            "{dry}"
        );
        let done = bulk(&BulkResult {
            action: "terminate".into(),
            dry_run: false,
            matched: 2,
            remaining: 0,
            items: vec![
                item("applied", None),
                item("refused", Some("the saga is terminal")),
            ],
        });
        assert!(
            done.starts_with("terminated 1 of 2 matching sagas\nID"),
            "{done}"
        );
        assert!(done.contains("refused  the saga is terminal"), "{done}");
    }
}
