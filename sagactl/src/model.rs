//! The API's answers as the tables need them (PROTOCOL §2). Unknown fields are ignored, so that
//! the server may add fields without breaking the CLI; `--output json` never goes through these.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// A saga's status; `steps` is absent in list items.
#[derive(Debug, Clone, Deserialize)]
pub struct SagaStatus {
    pub id: String,
    pub definition: String,
    pub version: i64,
    pub revision: i64,
    pub state: String,
    pub input: Value,
    pub output: Option<Value>,
    pub failure: Option<Failure>,
    #[serde(default)]
    pub steps: Option<Vec<StepStatus>>,
    pub stuck: bool,
    pub stuck_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
}

impl SagaStatus {
    /// Terminal or suspended: what a long poll without `revision` waits for.
    pub fn is_settled(&self) -> bool {
        matches!(
            self.state.as_str(),
            "completed" | "compensated" | "terminated" | "suspended"
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Failure {
    pub step: Option<String>,
    pub code: String,
    pub message: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StepStatus {
    pub name: String,
    pub group: Option<String>,
    pub state: String,
    pub attempts: u32,
    pub error: Option<StepError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StepError {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub retryable: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<i64>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    #[serde(default)]
    pub data: Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A page whose items are kept as the server wrote them, for `--output json`.
#[derive(Debug, Deserialize)]
pub struct RawPage<'a> {
    #[serde(borrow)]
    pub items: Vec<&'a RawValue>,
    pub next_cursor: Option<String>,
}

/// An item of `GET /v1/definitions`, and the answer of `POST /v1/definitions`.
#[derive(Debug, Clone, Deserialize)]
pub struct DefinitionSummary {
    pub name: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/definitions/{name}[/versions/{v}]`: the document has its defaults filled in.
#[derive(Debug, Clone, Deserialize)]
pub struct DefinitionDocument {
    pub name: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub document: Value,
}

/// An item of `GET /v1/queues`.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskQueue {
    pub queue: String,
    pub exists: bool,
    pub messages: Option<u32>,
    pub consumers: Option<u32>,
}

/// The answer of `POST /v1/bulk/{retry,terminate}`.
#[derive(Debug, Clone, Deserialize)]
pub struct BulkResult {
    pub action: String,
    pub dry_run: bool,
    pub matched: i64,
    pub remaining: i64,
    pub items: Vec<BulkItem>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BulkItem {
    pub id: String,
    pub definition: String,
    pub state: String,
    pub stuck_reason: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
}
