//! The state the machine keeps for one saga. It is persisted as is (the `steps` as JSON) and
//! reloaded under a row lock before every input.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use saga_wire::{CommandKind, StepError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::definition::Definition;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    Running,
    Compensating,
    Suspended,
    Completed,
    Compensated,
    Terminated,
}

impl SagaState {
    pub const ALL: [SagaState; 6] = [
        SagaState::Running,
        SagaState::Compensating,
        SagaState::Suspended,
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Terminated,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::Terminated
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Suspended => "suspended",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<SagaState> {
        SagaState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Compensating,
    Compensated,
    CompensationFailed,
    Skipped,
}

/// Why a saga left the forward path. The first cause stays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub step: Option<String>,
    pub code: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// Where one command stands, as far as the machine knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandFate {
    /// Sent; its reply is awaited.
    Out,
    /// Its reply (or a first one) came.
    Replied,
    /// Its attempt ran out of time before a reply came.
    TimedOut,
    /// Another attempt's reply decided the step while this one was out.
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: Uuid,
    pub kind: CommandKind,
    pub attempt: u32,
    pub fate: CommandFate,
}

/// The runtime state of one task or await step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub state: StepState,
    /// `do` commands sent.
    pub attempts: u32,
    /// `compensate` commands sent.
    pub comp_attempts: u32,
    /// `comp_attempts` when an operator last granted a fresh budget.
    pub comp_budget_from: u32,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The command whose reply is awaited now, if any.
    pub out: Option<Uuid>,
    /// When the current wait should end: the attempt's expected deadline, or the await's.
    pub wait_until: Option<DateTime<Utc>>,
    /// When a retry (forward or compensating, by `state`) is due.
    pub retry_at: Option<DateTime<Utc>>,
    /// Whether the last forward attempt ran out of time (its outcome is unknown).
    pub last_timed_out: bool,
    pub commands: Vec<CommandRecord>,
}

impl Step {
    fn new() -> Self {
        Step {
            state: StepState::Pending,
            attempts: 0,
            comp_attempts: 0,
            comp_budget_from: 0,
            output: None,
            error: None,
            started_at: None,
            finished_at: None,
            out: None,
            wait_until: None,
            retry_at: None,
            last_timed_out: false,
            commands: Vec::new(),
        }
    }
}

/// Everything the machine knows of one saga.
#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    pub id: Uuid,
    pub definition: String,
    pub version: i32,
    pub state: SagaState,
    pub revision: i64,
    pub input: Value,
    pub output: Option<Value>,
    pub failure: Option<Failure>,
    /// One per task and await step, flat, in definition order.
    pub steps: Vec<Step>,
    /// Signals that came before their await was reached: event name → payload.
    pub early_signals: BTreeMap<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The saga's deadline, when the definition has one.
    pub deadline: Option<DateTime<Utc>>,
    /// The earliest moment one of its current waits should end (for stuck detection).
    pub wait_until: Option<DateTime<Utc>>,
    /// The `seq` of the last history entry written.
    pub history_seq: i64,
}

impl Saga {
    /// A saga that has not started yet: every step pending. Feed it `Input::Start`.
    pub fn new(
        id: Uuid,
        definition: &Definition,
        version: i32,
        input: Value,
        now: DateTime<Utc>,
    ) -> Self {
        Saga {
            id,
            definition: definition.name.clone(),
            version,
            state: SagaState::Running,
            revision: 0,
            input,
            output: None,
            failure: None,
            steps: definition.leaves().map(|_| Step::new()).collect(),
            early_signals: BTreeMap::new(),
            created_at: now,
            updated_at: now,
            deadline: None,
            wait_until: None,
            history_seq: 0,
        }
    }
}
