//! What the orchestrator measures, rendered in the Prometheus text format for `GET /metrics`
//! (docs/observability.md lists every family and what to alert on).
//!
//! A small registry of our own rather than a global recorder: each engine has its own (tests run
//! many in one process and count each apart), and label sets are bounded by construction —
//! definition and task names, states, outcomes, routes; never a saga id. Counters and histograms
//! are this process's; gauges are read at scrape time (from the database and the broker), so
//! every process reports the same value of those: aggregate them with `max`, not `sum`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Seconds, for sagas and steps: from milliseconds to an hour.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    3600.0,
];
/// Seconds, for HTTP requests (a long poll may hold one for up to 60 s).
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Type {
    Counter,
    Gauge,
    Histogram(&'static [f64]),
}

/// A family: its name, type, help, and whether it reads 0 before anything was counted (a
/// counter without labels; a family with labels has no series to show until one is counted, and
/// a gauge the scrape could not read is left out rather than shown as 0).
struct Family {
    name: &'static str,
    kind: Type,
    help: &'static str,
    zero_at_first: bool,
}

const fn family(name: &'static str, kind: Type, help: &'static str, zero_at_first: bool) -> Family {
    Family {
        name,
        kind,
        help,
        zero_at_first,
    }
}

/// Every family, in the order they are rendered.
const FAMILIES: &[Family] = &[
    family(
        "saga_started_total",
        Type::Counter,
        "Sagas started, by definition.",
        false,
    ),
    family(
        "saga_ended_total",
        Type::Counter,
        "Sagas that entered completed, compensated, terminated or suspended, by definition and state.",
        false,
    ),
    family(
        "saga_duration_seconds",
        Type::Histogram(DURATION_BUCKETS),
        "From start to completed, compensated or terminated, by definition and state.",
        false,
    ),
    family(
        "saga_step_attempts_total",
        Type::Counter,
        "Attempts that ended, by task, kind (do, compensate) and outcome (ok, error, retryable, timed_out).",
        false,
    ),
    family(
        "saga_step_duration_seconds",
        Type::Histogram(DURATION_BUCKETS),
        "A step's forward part, from its first dispatch to its end (retries included), by task and state (succeeded, failed, timed_out).",
        false,
    ),
    family(
        "saga_commands_dispatched_total",
        Type::Counter,
        "Commands written to the outbox, by task and kind (do, compensate).",
        false,
    ),
    family(
        "saga_replies_total",
        Type::Counter,
        "Worker replies, by outcome (applied, ignored, unknown_command).",
        false,
    ),
    family(
        "saga_timers_fired_total",
        Type::Counter,
        "Timers taken and fed to the state machine.",
        true,
    ),
    family(
        "saga_dead_letters_total",
        Type::Counter,
        "Messages dead-lettered by the orchestrator, by queue consumed (saga.replies, saga.events, saga.start) and reason (malformed, unknown_command, unknown_saga, refused, invalid, key_reused, failed).",
        false,
    ),
    family(
        "saga_broker_reconnects_total",
        Type::Counter,
        "Connections to RabbitMQ opened after the first.",
        true,
    ),
    family(
        "saga_http_requests_total",
        Type::Counter,
        "HTTP requests answered, by method, route and status.",
        false,
    ),
    family(
        "saga_http_request_duration_seconds",
        Type::Histogram(HTTP_BUCKETS),
        "HTTP request latency, by method and route.",
        false,
    ),
    family(
        "saga_sagas",
        Type::Gauge,
        "Sagas in flight now, by state (running, compensating, suspended); database-wide.",
        false,
    ),
    family(
        "saga_outbox_messages",
        Type::Gauge,
        "Messages in the outbox not yet published and confirmed; database-wide.",
        false,
    ),
    family(
        "saga_outbox_oldest_age_seconds",
        Type::Gauge,
        "Age of the oldest message in the outbox (0 when empty); database-wide.",
        false,
    ),
    family(
        "saga_timers_due",
        Type::Gauge,
        "Timers whose time has come and that no process has fired yet; database-wide.",
        false,
    ),
    family(
        "saga_timer_lag_seconds",
        Type::Gauge,
        "How late the most overdue timer is (0 when none is due); database-wide.",
        false,
    ),
    family(
        "saga_task_queue_messages",
        Type::Gauge,
        "Messages ready in each task queue, as the broker tells.",
        false,
    ),
    family(
        "saga_task_queue_consumers",
        Type::Gauge,
        "Consumers of each task queue, as the broker tells.",
        false,
    ),
];

type Labels = Vec<(&'static str, String)>;

fn labels(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// One histogram series: a count per bucket (not cumulative), their sum and count.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A gauge's value, read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    pub family: &'static str,
    pub labels: Labels,
    pub value: f64,
}

impl Gauge {
    pub fn new(family: &'static str, label_set: &[(&'static str, &str)], value: f64) -> Gauge {
        Gauge {
            family,
            labels: labels(label_set),
            value,
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
}

impl Metrics {
    pub fn add(&self, family: &'static str, label_set: &[(&'static str, &str)], by: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.entry((family, labels(label_set))).or_default() += by;
    }

    pub fn inc(&self, family: &'static str, label_set: &[(&'static str, &str)]) {
        self.add(family, label_set, 1);
    }

    /// Records `value` (seconds) in a histogram family.
    pub fn observe(&self, family: &'static str, label_set: &[(&'static str, &str)], value: f64) {
        let Some(bounds) = FAMILIES.iter().find_map(|f| match f.kind {
            Type::Histogram(b) if f.name == family => Some(b),
            _ => None,
        }) else {
            debug_assert!(false, "{family} is not a histogram family");
            return;
        };
        let mut histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let h = histograms
            .entry((family, labels(label_set)))
            .or_insert_with(|| Histogram {
                buckets: vec![0; bounds.len()],
                ..Histogram::default()
            });
        if let Some(i) = bounds.iter().position(|b| value <= *b) {
            h.buckets[i] += 1;
        }
        h.sum += value;
        h.count += 1;
    }

    /// The Prometheus text exposition (version 0.0.4) of every family, with `gauges` read now.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for f in FAMILIES {
            let (name, kind) = (f.name, f.kind);
            let type_name = match kind {
                Type::Counter => "counter",
                Type::Gauge => "gauge",
                Type::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {type_name}", f.help);
            let mut any = false;
            match kind {
                Type::Counter => {
                    for ((_, l), value) in counters.iter().filter(|((n, _), _)| *n == name) {
                        any = true;
                        let _ = writeln!(out, "{name}{} {value}", render_labels(l, None));
                    }
                }
                Type::Gauge => {
                    for g in gauges.iter().filter(|g| g.family == name) {
                        any = true;
                        let _ =
                            writeln!(out, "{name}{} {}", render_labels(&g.labels, None), g.value);
                    }
                }
                Type::Histogram(bounds) => {
                    for ((_, l), h) in histograms.iter().filter(|((n, _), _)| *n == name) {
                        any = true;
                        render_histogram(&mut out, name, l, bounds, h);
                    }
                }
            }
            if !any && f.zero_at_first {
                let _ = writeln!(out, "{name} 0");
            }
        }
        out
    }
}

fn render_histogram(out: &mut String, name: &str, l: &Labels, bounds: &[f64], h: &Histogram) {
    let mut cumulative = 0;
    for (bound, n) in bounds.iter().zip(&h.buckets) {
        cumulative += n;
        let le = bound.to_string();
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            render_labels(l, Some(&le))
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{} {}",
        render_labels(l, Some("+Inf")),
        h.count
    );
    let _ = writeln!(out, "{name}_sum{} {}", render_labels(l, None), h.sum);
    let _ = writeln!(out, "{name}_count{} {}", render_labels(l, None), h.count);
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    if let Some(le) = le {
        inner.push(format!("le=\"{le}\""));
    }
    if inner.is_empty() {
        return String::new();
    }
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_in_prometheus_text() {
        let m = Metrics::default();
        m.inc("saga_started_total", &[("definition", "order")]);
        m.inc("saga_started_total", &[("definition", "order")]);
        m.add("saga_timers_fired_total", &[], 3);
        m.inc("saga_replies_total", &[("outcome", "we\"ird")]);
        let text = m.render(&[]);
        assert!(text.contains("# TYPE saga_started_total counter\n"));
        assert!(text.contains("saga_started_total{definition=\"order\"} 2\n"));
        assert!(text.contains("saga_timers_fired_total 3\n"));
        assert!(text.contains("saga_broker_reconnects_total 0\n"));
        assert!(text.contains("saga_replies_total{outcome=\"we\\\"ird\"} 1\n"));
        assert!(!text.contains("saga_ended_total{"));
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        let l = [("definition", "order"), ("state", "completed")];
        m.observe("saga_duration_seconds", &l, 0.02);
        m.observe("saga_duration_seconds", &l, 0.02);
        m.observe("saga_duration_seconds", &l, 7.0);
        m.observe("saga_duration_seconds", &l, 99_999.0);
        let text = m.render(&[]);
        assert!(text.contains("# TYPE saga_duration_seconds histogram\n"));
        let series = |le: &str| {
            format!(
                "saga_duration_seconds_bucket{{definition=\"order\",state=\"completed\",le=\"{le}\"}}"
            )
        };
        assert!(text.contains(&format!("{} 0\n", series("0.01"))));
        assert!(text.contains(&format!("{} 2\n", series("0.025"))));
        assert!(text.contains(&format!("{} 2\n", series("5"))));
        assert!(text.contains(&format!("{} 3\n", series("10"))));
        assert!(text.contains(&format!("{} 3\n", series("3600"))));
        assert!(text.contains(&format!("{} 4\n", series("+Inf"))));
        assert!(
            text.contains(
                "saga_duration_seconds_count{definition=\"order\",state=\"completed\"} 4\n"
            )
        );
        assert!(text.contains(
            "saga_duration_seconds_sum{definition=\"order\",state=\"completed\"} 100006.04\n"
        ));
    }

    #[test]
    fn gauges_are_rendered_as_given() {
        let m = Metrics::default();
        let text = m.render(&[
            Gauge::new("saga_sagas", &[("state", "running")], 4.0),
            Gauge::new("saga_outbox_oldest_age_seconds", &[], 1.5),
        ]);
        assert!(text.contains("# TYPE saga_sagas gauge\nsaga_sagas{state=\"running\"} 4\n"));
        assert!(text.contains("saga_outbox_oldest_age_seconds 1.5\n"));
        // A gauge the scrape could not read is left out, not shown as 0.
        assert!(!text.contains("\nsaga_timers_due "));
    }

    /// Every `saga_…` name in `text`.
    fn names(text: &str) -> Vec<&str> {
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("saga_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            names.push(&tail[..end]);
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn the_dashboard_and_the_alerts_use_only_families_that_exist() {
        for (file, text) in [
            (
                "grafana-dashboard.json",
                include_str!("../../docs/observability/grafana-dashboard.json"),
            ),
            (
                "alerts.yml",
                include_str!("../../docs/observability/alerts.yml"),
            ),
        ] {
            let used = names(text);
            assert!(used.len() > 5, "{file} uses the metrics");
            for name in used {
                let known = FAMILIES.iter().any(|f| match f.kind {
                    Type::Histogram(_) => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f.name)),
                    _ => name == f.name,
                });
                assert!(known, "{file} uses {name}, which /metrics does not have");
            }
        }
    }
}
