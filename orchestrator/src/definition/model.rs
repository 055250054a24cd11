use std::time::Duration;

use serde_json::{Value, json};

/// A parsed, valid saga definition with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub name: String,
    /// The saga's deadline, counted from its start.
    pub timeout: Option<Duration>,
    pub input_schema: Option<Value>,
    pub stages: Vec<Stage>,
}

/// One entry of `steps`: a single step, or a parallel group whose members run at once.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Single(Leaf),
    Group { name: String, members: Vec<Leaf> },
}

/// A task or await step (never a group).
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    pub name: String,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Task(TaskSpec),
    Await { event: String, timeout: Duration },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub task: String,
    pub compensate: Option<String>,
    /// Bounds one attempt, forward or compensating, from dispatch to reply.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub compensation_retry: RetryPolicy,
}

impl TaskSpec {
    /// The step timeout when a task leaves it out.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub multiplier: f64,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub const DEFAULT_FORWARD: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_secs(1),
        multiplier: 2.0,
        max_backoff: Duration::from_secs(60),
    };
    pub const DEFAULT_COMPENSATION: RetryPolicy = RetryPolicy {
        max_attempts: 10,
        ..RetryPolicy::DEFAULT_FORWARD
    };

    /// The wait before attempt `next` (2 for the first retry): `initial · multiplierⁿ⁻²`, capped.
    pub fn backoff_before(&self, next: u32) -> Duration {
        let exponent = next.saturating_sub(2).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let max = self.max_backoff.as_secs_f64();
        if secs.is_finite() && secs < max {
            Duration::from_secs_f64(secs)
        } else {
            self.max_backoff
        }
    }
}

/// A step as the machine sees it: flat, in definition order, with the stage it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct LeafRef<'a> {
    pub stage: usize,
    pub group: Option<&'a str>,
    pub leaf: &'a Leaf,
}

impl Definition {
    /// Every task and await step, flat, in definition order.
    pub fn leaves(&self) -> impl Iterator<Item = LeafRef<'_>> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(stage, s)| match s {
                Stage::Single(leaf) => vec![LeafRef {
                    stage,
                    group: None,
                    leaf,
                }],
                Stage::Group { name, members } => members
                    .iter()
                    .map(|leaf| LeafRef {
                        stage,
                        group: Some(name.as_str()),
                        leaf,
                    })
                    .collect(),
            })
    }

    /// Every task and compensation name, each once, in first-use order.
    pub fn task_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for l in self.leaves() {
            if let Action::Task(t) = &l.leaf.action {
                for n in std::iter::once(&t.task).chain(t.compensate.as_ref()) {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
        }
        names
    }
}

impl Definition {
    /// The normalised document: every default filled in, every optional member present (`null`
    /// when it has no value), durations in humantime form. Two documents that parse to the same
    /// definition give equal values here, and `parse_definition(&d.to_document()) == Ok(d)`.
    pub fn to_document(&self) -> Value {
        json!({
            "name": self.name,
            "timeout": self.timeout.map(duration_text),
            "input_schema": self.input_schema,
            "steps": self.stages.iter().map(stage_document).collect::<Vec<_>>(),
        })
    }
}

fn stage_document(stage: &Stage) -> Value {
    match stage {
        Stage::Single(leaf) => leaf_document(leaf),
        Stage::Group { name, members } => json!({
            "name": name,
            "parallel": members.iter().map(leaf_document).collect::<Vec<_>>(),
        }),
    }
}

fn leaf_document(leaf: &Leaf) -> Value {
    match &leaf.action {
        Action::Task(t) => json!({
            "name": leaf.name,
            "task": t.task,
            "compensate": t.compensate,
            "timeout": duration_text(t.timeout),
            "retry": retry_document(&t.retry),
            "compensation_retry": retry_document(&t.compensation_retry),
        }),
        Action::Await { event, timeout } => json!({
            "name": leaf.name,
            "await": event,
            "timeout": duration_text(*timeout),
        }),
    }
}

fn retry_document(p: &RetryPolicy) -> Value {
    json!({
        "max_attempts": p.max_attempts,
        "initial_backoff": duration_text(p.initial_backoff),
        "multiplier": p.multiplier,
        "max_backoff": duration_text(p.max_backoff),
    })
}

fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(200),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(p.backoff_before(2), Duration::from_millis(200));
        assert_eq!(p.backoff_before(3), Duration::from_millis(400));
        assert_eq!(p.backoff_before(4), Duration::from_millis(800));
        assert_eq!(p.backoff_before(5), Duration::from_secs(1));
        assert_eq!(p.backoff_before(u32::MAX), Duration::from_secs(1));
    }
}
