//! Counters of what the engine did, rendered in the Prometheus text format for `GET /metrics`.
//!
//! A small registry of our own: label sets are bounded (definition names, task names, states,
//! outcomes — never a saga id), and every value is a monotonic counter of this process.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// The counter families, with their help text, in the order they are rendered.
const FAMILIES: &[(&str, &str)] = &[
    ("saga_started_total", "Sagas started, by definition."),
    (
        "saga_ended_total",
        "Sagas that entered completed, compensated, terminated or suspended, by definition and state.",
    ),
    (
        "saga_commands_dispatched_total",
        "Commands written to the outbox, by task and kind (do, compensate).",
    ),
    (
        "saga_replies_total",
        "Worker replies, by outcome (applied, ignored, unknown_command).",
    ),
    (
        "saga_timers_fired_total",
        "Timers taken and fed to the state machine.",
    ),
];

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
}

impl Metrics {
    pub fn add(&self, family: &'static str, labels: &[(&'static str, &str)], by: u64) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.entry((family, labels)).or_default() += by;
    }

    pub fn inc(&self, family: &'static str, labels: &[(&'static str, &str)]) {
        self.add(family, labels, 1);
    }

    /// The Prometheus text exposition (version 0.0.4) of every family.
    pub fn render(&self) -> String {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (family, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            let series = counters.iter().filter(|((f, _), _)| f == family);
            let mut any = false;
            for ((_, labels), value) in series {
                any = true;
                let _ = writeln!(out, "{family}{} {value}", render_labels(labels));
            }
            if !any && !FAMILIES_WITH_LABELS.contains(family) {
                let _ = writeln!(out, "{family} 0");
            }
        }
        out
    }
}

/// Families whose every series has labels: nothing is rendered for them until one is counted.
const FAMILIES_WITH_LABELS: &[&str] = &[
    "saga_started_total",
    "saga_ended_total",
    "saga_commands_dispatched_total",
    "saga_replies_total",
];

fn render_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc("saga_started_total", &[("definition", "order")]);
        m.inc("saga_started_total", &[("definition", "order")]);
        m.add("saga_timers_fired_total", &[], 3);
        m.inc("saga_replies_total", &[("outcome", "we\"ird")]);
        let text = m.render();
        assert!(text.contains("# TYPE saga_started_total counter\n"));
        assert!(text.contains("saga_started_total{definition=\"order\"} 2\n"));
        assert!(text.contains("saga_timers_fired_total 3\n"));
        assert!(text.contains("saga_replies_total{outcome=\"we\\\"ird\"} 1\n"));
        assert!(!text.contains("saga_ended_total{"));
    }
}
