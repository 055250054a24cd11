//! Parsing a definition document into a [`Definition`], reporting every breach of PROTOCOL.md §1
//! at once, each with the JSON pointer of the offending member; and checking a saga's input
//! against the definition's `input_schema`.
//!
//! `null` counts as absent everywhere (the normalised document writes `"timeout": null` for "no
//! deadline"), so a required member that is `null` is reported as missing.
//!
//! This module must never accept a document that the machine cannot run or that Postgres cannot
//! store: it rejects NUL characters anywhere and durations beyond a hundred years.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde_json::{Map, Value};

use super::model::{Action, Definition, Leaf, RetryPolicy, Stage, TaskSpec};

/// One breach of the rules: where (a JSON pointer into the request body) and what, in words.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub pointer: String,
    pub detail: String,
}

impl Violation {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// At most this many task and await steps in one definition (groups themselves do not count).
const MAX_LEAVES: usize = 256;
/// The longest duration accepted anywhere. Not in the contract's rules, but deadlines are computed
/// as `now + duration` and stored in Postgres: an absurd duration must be refused here (422), not
/// overflow later (500). A hundred (humantime) years is beyond any real wait.
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

static DEFINITION_NAME: LazyLock<Regex> = LazyLock::new(|| pattern("^[a-z][a-z0-9_-]{0,62}$"));
static STEP_NAME: LazyLock<Regex> = LazyLock::new(|| pattern("^[a-z][a-z0-9_]{0,62}$"));
static COMMAND_NAME: LazyLock<Regex> = LazyLock::new(|| pattern("^[a-z][a-z0-9_.-]{0,127}$"));

fn pattern(re: &str) -> Regex {
    Regex::new(re).expect("the pattern is a valid regular expression")
}

const TOP_FIELDS: &[&str] = &["name", "timeout", "input_schema", "steps"];
/// Every member a step of any kind may have; anything else is an unknown field.
const STEP_FIELDS: &[&str] = &[
    "name",
    "task",
    "await",
    "parallel",
    "compensate",
    "timeout",
    "retry",
    "compensation_retry",
];
const TASK_FIELDS: &[&str] = &[
    "name",
    "task",
    "compensate",
    "timeout",
    "retry",
    "compensation_retry",
];
const AWAIT_FIELDS: &[&str] = &["name", "await", "timeout"];
const GROUP_FIELDS: &[&str] = &["name", "parallel"];
const RETRY_FIELDS: &[&str] = &[
    "max_attempts",
    "initial_backoff",
    "multiplier",
    "max_backoff",
];

/// Parses a definition document (a JSON value as received over HTTP). Reports ALL breaches at once.
pub fn parse_definition(doc: &Value) -> Result<Definition, Vec<Violation>> {
    let mut parser = Parser::default();
    let definition = parser.definition(doc);
    scan_nul(doc, "", &mut parser.violations);
    if !parser.violations.is_empty() {
        return Err(parser.violations);
    }
    // Every `None` above comes with a violation; this is only a guard against a parser bug.
    definition.ok_or_else(|| vec![Violation::new("", "the definition could not be parsed")])
}

impl Definition {
    /// Validates a saga input against the definition's `input_schema` (if any). Pointers are into
    /// the start request, i.e. prefixed with `/input`: a missing required property points at the
    /// missing member (`/input/order_id`), any other breach at the offending value. A string or
    /// member name holding a NUL character is refused too, schema or not (Postgres cannot store
    /// it).
    pub fn check_input(&self, input: &Value) -> Result<(), Vec<Violation>> {
        let mut violations = Vec::new();
        scan_nul(input, "/input", &mut violations);
        if let Some(schema) = &self.input_schema {
            match compile(schema) {
                Ok(validator) => {
                    for error in validator.iter_errors(input) {
                        let at = format!("/input{}", error.instance_path().as_str());
                        let violation = match error.kind() {
                            jsonschema::error::ValidationErrorKind::Required { property } => {
                                let name = property.as_str().map_or_else(
                                    || Cow::Owned(property.to_string()),
                                    Cow::Borrowed,
                                );
                                Violation::new(
                                    member(&at, &name),
                                    format!("required property `{}` is missing", excerpt(&name)),
                                )
                            }
                            _ => {
                                Violation::new(at, shorten(error.masked_with("value").to_string()))
                            }
                        };
                        if !violations.contains(&violation) {
                            violations.push(violation);
                        }
                    }
                }
                // Cannot happen for a definition that came out of `parse_definition`, which
                // compiles the schema with the same options.
                Err(error) => violations.push(Violation::new(
                    "/input",
                    shorten(format!(
                        "the definition's input_schema cannot be used: {error}"
                    )),
                )),
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

/// Compiles an input schema, always as draft 2020-12 and without any network or file access
/// (the crate is built without its resolvers, so an external `$ref` fails here).
fn compile(schema: &Value) -> Result<jsonschema::Validator, jsonschema::ValidationError<'static>> {
    jsonschema::draft202012::options().build(schema)
}

/// Walks the parsed document, collecting violations. Each method returns `None` only after
/// reporting at least one violation.
#[derive(Default)]
struct Parser {
    violations: Vec<Violation>,
    /// Step and group names seen so far, in document order.
    names: HashSet<String>,
    /// Task and await steps seen so far, group members included.
    leaves: usize,
}

/// What a step object turned out to be, from which of `task`, `await`, `parallel` it has.
enum Kind {
    Task,
    Await,
    Group,
    Unclear,
}

impl Parser {
    fn report(&mut self, pointer: impl Into<String>, detail: impl Into<String>) {
        self.violations.push(Violation::new(pointer, detail));
    }

    fn definition(&mut self, doc: &Value) -> Option<Definition> {
        let Some(obj) = doc.as_object() else {
            self.report("", "the definition must be a JSON object");
            return None;
        };
        self.fields(obj, "", TOP_FIELDS, TOP_FIELDS, "a definition");
        let name = match present(obj, "name") {
            Some(v) => self.matching(v, "/name", &DEFINITION_NAME, "definition name"),
            None => self.missing("", "name"),
        };
        let timeout = match present(obj, "timeout") {
            Some(v) => self.duration(v, "/timeout").map(Some),
            None => Some(None),
        };
        let input_schema = match present(obj, "input_schema") {
            Some(v) => self.schema(v, "/input_schema").map(Some),
            None => Some(None),
        };
        let stages = match present(obj, "steps") {
            Some(v) => self.steps(v, "/steps"),
            None => self.missing("", "steps"),
        };
        Some(Definition {
            name: name?,
            timeout: timeout?,
            input_schema: input_schema?,
            stages: stages?,
        })
    }

    fn steps(&mut self, v: &Value, at: &str) -> Option<Vec<Stage>> {
        let Some(items) = v.as_array() else {
            self.report(at, "must be an array of steps");
            return None;
        };
        if items.is_empty() {
            self.report(at, "must contain at least one step");
        }
        let stages: Vec<Option<Stage>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.stage(item, &index(at, i)))
            .collect();
        if self.leaves > MAX_LEAVES {
            self.report(
                at,
                format!(
                    "at most {MAX_LEAVES} task and await steps are allowed in all, found {}",
                    self.leaves
                ),
            );
        }
        if items.is_empty() {
            return None;
        }
        stages.into_iter().collect()
    }

    fn stage(&mut self, v: &Value, at: &str) -> Option<Stage> {
        let Some(obj) = v.as_object() else {
            self.report(at, "a step must be a JSON object");
            return None;
        };
        match kind(obj, true) {
            Kind::Task | Kind::Await => self.leaf(obj, at).map(Stage::Single),
            Kind::Group => self.group(obj, at),
            Kind::Unclear => {
                self.unclear(obj, at, "must be exactly one of task, await or parallel");
                None
            }
        }
    }

    fn group(&mut self, obj: &Map<String, Value>, at: &str) -> Option<Stage> {
        self.fields(obj, at, GROUP_FIELDS, STEP_FIELDS, "a parallel group");
        let name = self.step_name(obj, at);
        let list_at = member(at, "parallel");
        let members = match present(obj, "parallel").and_then(Value::as_array) {
            None => {
                self.report(&list_at, "must be an array of task and await steps");
                None
            }
            Some(items) if items.is_empty() => {
                self.report(&list_at, "a parallel group must have at least one member");
                None
            }
            Some(items) => {
                let members: Vec<Option<Leaf>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.group_member(item, &index(&list_at, i)))
                    .collect();
                members.into_iter().collect()
            }
        };
        Some(Stage::Group {
            name: name?,
            members: members?,
        })
    }

    fn group_member(&mut self, v: &Value, at: &str) -> Option<Leaf> {
        let Some(obj) = v.as_object() else {
            self.report(at, "a step must be a JSON object");
            return None;
        };
        if present(obj, "parallel").is_some() {
            self.report(at, "a parallel group cannot contain another group");
            return None;
        }
        match kind(obj, false) {
            Kind::Task | Kind::Await => self.leaf(obj, at),
            Kind::Group | Kind::Unclear => {
                self.unclear(obj, at, "must be exactly one of task or await");
                None
            }
        }
    }

    /// A step that is none or more than one kind: report that, and what can be checked without
    /// knowing its kind.
    fn unclear(&mut self, obj: &Map<String, Value>, at: &str, detail: &str) {
        self.report(at, detail);
        self.fields(obj, at, STEP_FIELDS, STEP_FIELDS, "a step");
        self.step_name(obj, at);
    }

    /// A task or await step; the caller has made sure it is exactly one of them.
    fn leaf(&mut self, obj: &Map<String, Value>, at: &str) -> Option<Leaf> {
        self.leaves += 1;
        let name = self.step_name(obj, at);
        let action = if let Some(event) = present(obj, "await") {
            self.fields(obj, at, AWAIT_FIELDS, STEP_FIELDS, "an await step");
            let event = self.matching(event, &member(at, "await"), &COMMAND_NAME, "event name");
            let timeout = match present(obj, "timeout") {
                Some(v) => self.duration(v, &member(at, "timeout")),
                None => self.missing(at, "timeout"),
            };
            Action::Await {
                event: event?,
                timeout: timeout?,
            }
        } else {
            self.fields(obj, at, TASK_FIELDS, STEP_FIELDS, "a task step");
            Action::Task(self.task(obj, at)?)
        };
        Some(Leaf {
            name: name?,
            action,
        })
    }

    fn task(&mut self, obj: &Map<String, Value>, at: &str) -> Option<TaskSpec> {
        let task = match present(obj, "task") {
            Some(v) => self.matching(v, &member(at, "task"), &COMMAND_NAME, "task name"),
            None => self.missing(at, "task"),
        };
        let compensate = match present(obj, "compensate") {
            Some(v) => self
                .matching(
                    v,
                    &member(at, "compensate"),
                    &COMMAND_NAME,
                    "compensation name",
                )
                .map(Some),
            None => Some(None),
        };
        let timeout = match present(obj, "timeout") {
            Some(v) => self.duration(v, &member(at, "timeout")),
            None => Some(TaskSpec::DEFAULT_TIMEOUT),
        };
        let retry = match present(obj, "retry") {
            Some(v) => self.retry(v, &member(at, "retry"), &RetryPolicy::DEFAULT_FORWARD),
            None => Some(RetryPolicy::DEFAULT_FORWARD),
        };
        let compensation_retry = match present(obj, "compensation_retry") {
            Some(v) => self.retry(
                v,
                &member(at, "compensation_retry"),
                &RetryPolicy::DEFAULT_COMPENSATION,
            ),
            None => Some(RetryPolicy::DEFAULT_COMPENSATION),
        };
        Some(TaskSpec {
            task: task?,
            compensate: compensate?,
            timeout: timeout?,
            retry: retry?,
            compensation_retry: compensation_retry?,
        })
    }

    /// The `name` of a step or group: required, well-formed, and unique across the definition
    /// (group names and group members included); a duplicate is reported at its second
    /// occurrence.
    fn step_name(&mut self, obj: &Map<String, Value>, at: &str) -> Option<String> {
        let Some(v) = present(obj, "name") else {
            return self.missing(at, "name");
        };
        let name_at = member(at, "name");
        let text = self.text(v, &name_at)?;
        let fresh = self.names.insert(text.to_owned());
        let name = self.matching(v, &name_at, &STEP_NAME, "step name");
        if !fresh {
            self.report(
                &name_at,
                format!("step name `{}` is used twice", excerpt(text)),
            );
            return None;
        }
        name
    }

    fn retry(&mut self, v: &Value, at: &str, default: &RetryPolicy) -> Option<RetryPolicy> {
        let Some(obj) = v.as_object() else {
            self.report(
                at,
                "must be an object with max_attempts, initial_backoff, multiplier and max_backoff",
            );
            return None;
        };
        self.fields(obj, at, RETRY_FIELDS, RETRY_FIELDS, "a retry policy");
        let max_attempts = match present(obj, "max_attempts") {
            Some(v) => self.attempts(v, &member(at, "max_attempts")),
            None => Some(default.max_attempts),
        };
        let initial_backoff = match present(obj, "initial_backoff") {
            Some(v) => self.duration(v, &member(at, "initial_backoff")),
            None => Some(default.initial_backoff),
        };
        let multiplier = match present(obj, "multiplier") {
            Some(v) => self.multiplier(v, &member(at, "multiplier")),
            None => Some(default.multiplier),
        };
        let max_backoff = match present(obj, "max_backoff") {
            Some(v) => self.duration(v, &member(at, "max_backoff")),
            None => Some(default.max_backoff),
        };
        if let (Some(initial), Some(max)) = (initial_backoff, max_backoff)
            && max < initial
        {
            let defaulted = if present(obj, "max_backoff").is_none() {
                ", the default,"
            } else {
                ""
            };
            self.report(
                member(at, "max_backoff"),
                format!(
                    "max_backoff ({}){defaulted} must not be below initial_backoff ({})",
                    humantime::format_duration(max),
                    humantime::format_duration(initial),
                ),
            );
            return None;
        }
        Some(RetryPolicy {
            max_attempts: max_attempts?,
            initial_backoff: initial_backoff?,
            multiplier: multiplier?,
            max_backoff: max_backoff?,
        })
    }

    fn attempts(&mut self, v: &Value, at: &str) -> Option<u32> {
        let Value::Number(n) = v else {
            self.report(at, "must be an integer");
            return None;
        };
        if let Some(n) = n.as_u64() {
            match u32::try_from(n) {
                Ok(0) => self.report(at, "max_attempts must be at least 1"),
                Ok(n) => return Some(n),
                Err(_) => self.report(at, format!("max_attempts must be at most {}", u32::MAX)),
            }
        } else if n.is_i64() {
            self.report(at, "max_attempts must be at least 1");
        } else {
            self.report(at, "must be an integer");
        }
        None
    }

    fn multiplier(&mut self, v: &Value, at: &str) -> Option<f64> {
        let Some(m) = v.as_f64() else {
            self.report(at, "must be a number");
            return None;
        };
        if m >= 1.0 {
            Some(m)
        } else {
            self.report(at, "multiplier must be at least 1.0");
            None
        }
    }

    fn duration(&mut self, v: &Value, at: &str) -> Option<Duration> {
        let Some(text) = v.as_str() else {
            self.report(
                at,
                r#"must be a duration string such as "250ms", "10s" or "5m""#,
            );
            return None;
        };
        if text.contains('\0') {
            return None; // reported by the NUL scan
        }
        match humantime::parse_duration(text) {
            Err(_) => self.report(
                at,
                format!(
                    r#"`{}` is not a duration (use forms such as "250ms", "10s", "5m", "24h")"#,
                    excerpt(text)
                ),
            ),
            Ok(d) if d.is_zero() => self.report(at, "a duration must be greater than zero"),
            Ok(d) if d > MAX_DURATION => self.report(at, "a duration must be at most 100 years"),
            Ok(d) => return Some(d),
        }
        None
    }

    fn schema(&mut self, v: &Value, at: &str) -> Option<Value> {
        if !(v.is_object() || v.is_boolean()) {
            self.report(at, "must be a JSON Schema (an object or a boolean)");
            return None;
        }
        let before = self.violations.len();
        if let Some(declared) = v.get("$schema").and_then(Value::as_str)
            && declared.trim_end_matches('#') != DRAFT_2020_12
        {
            self.report(
                member(at, "$schema"),
                format!("only JSON Schema draft 2020-12 (`{DRAFT_2020_12}`) is supported"),
            );
        }
        let meta = jsonschema::draft202012::meta::validator();
        for error in meta.iter_errors(v) {
            let violation = Violation::new(
                format!("{at}{}", error.instance_path().as_str()),
                shorten(format!("not a valid JSON Schema (draft 2020-12): {error}")),
            );
            // The meta-schema validator can give the same error once per branch it tried.
            if !self.violations[before..].contains(&violation) {
                self.violations.push(violation);
            }
        }
        if self.violations.len() == before
            && let Err(error) = compile(v)
        {
            // What the meta-schema does not catch: a `pattern` that is not a regular
            // expression, a `$ref` that does not resolve (nothing is fetched from outside).
            self.report(
                format!("{at}{}", error.instance_path().as_str()),
                shorten(format!("not a usable JSON Schema: {error}")),
            );
        }
        (self.violations.len() == before).then(|| v.clone())
    }

    /// Reports unknown members, and members that are known but not allowed here (`retry` on an
    /// await). A `null` member counts as absent, so it is never "not allowed".
    fn fields(
        &mut self,
        obj: &Map<String, Value>,
        at: &str,
        allowed: &[&str],
        known: &[&str],
        what: &str,
    ) {
        for (key, value) in obj {
            let key = key.as_str();
            if allowed.contains(&key) {
                continue;
            }
            if !known.contains(&key) {
                self.report(member(at, key), format!("unknown field `{}`", excerpt(key)));
            } else if !value.is_null() {
                self.report(member(at, key), format!("`{key}` is not allowed on {what}"));
            }
        }
    }

    fn missing<T>(&mut self, at: &str, key: &str) -> Option<T> {
        self.report(member(at, key), format!("`{key}` is required"));
        None
    }

    /// A string without NUL characters (those are reported once, by the NUL scan).
    fn text<'v>(&mut self, v: &'v Value, at: &str) -> Option<&'v str> {
        match v.as_str() {
            None => {
                self.report(at, "must be a string");
                None
            }
            Some(s) if s.contains('\0') => None,
            Some(s) => Some(s),
        }
    }

    fn matching(&mut self, v: &Value, at: &str, re: &Regex, what: &str) -> Option<String> {
        let text = self.text(v, at)?;
        if re.is_match(text) {
            Some(text.to_owned())
        } else {
            self.report(
                at,
                format!("must be a valid {what} matching `{}`", re.as_str()),
            );
            None
        }
    }
}

fn kind(obj: &Map<String, Value>, groups_allowed: bool) -> Kind {
    let task = present(obj, "task").is_some();
    let wait = present(obj, "await").is_some();
    let group = groups_allowed && present(obj, "parallel").is_some();
    match (task, wait, group) {
        (true, false, false) => Kind::Task,
        (false, true, false) => Kind::Await,
        (false, false, true) => Kind::Group,
        _ => Kind::Unclear,
    }
}

/// A member's value; `null` counts as absent.
fn present<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// Reports every string and member name holding a NUL character: Postgres cannot store it.
fn scan_nul(v: &Value, at: &str, out: &mut Vec<Violation>) {
    match v {
        Value::String(s) if s.contains('\0') => out.push(Violation::new(
            at,
            "must not contain a NUL character (U+0000)",
        )),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                scan_nul(item, &index(at, i), out);
            }
        }
        Value::Object(obj) => {
            for (key, item) in obj {
                let item_at = member(at, key);
                if key.contains('\0') {
                    out.push(Violation::new(
                        item_at.clone(),
                        "a member name must not contain a NUL character (U+0000)",
                    ));
                }
                scan_nul(item, &item_at, out);
            }
        }
        _ => {}
    }
}

/// `at` extended by one member name, escaped per RFC 6901.
fn member(at: &str, key: &str) -> String {
    if key.contains(['~', '/']) {
        format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"))
    } else {
        format!("{at}/{key}")
    }
}

fn index(at: &str, i: usize) -> String {
    format!("{at}/{i}")
}

/// A user-supplied text quoted in a detail, cut short so that a huge value does not make a huge
/// error.
fn excerpt(text: &str) -> Cow<'_, str> {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// A detail from the schema validator, which may quote large parts of the schema.
fn shorten(detail: String) -> String {
    const MAX: usize = 300;
    match detail.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &detail[..cut]),
        None => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Value {
        json!({
          "name": "order",
          "timeout": "5m",
          "input_schema": { "type": "object", "required": ["order_id"] },
          "steps": [
            { "name": "reserve_inventory", "task": "inventory.reserve", "compensate": "inventory.release",
              "timeout": "10s",
              "retry": { "max_attempts": 3, "initial_backoff": "200ms", "multiplier": 2.0, "max_backoff": "10s" } },
            { "name": "charge_payment", "task": "payment.charge", "compensate": "payment.refund", "timeout": "10s" },
            { "name": "signatures", "parallel": [
                { "name": "buyer_signature",  "await": "buyer_signed",  "timeout": "48h" },
                { "name": "seller_signature", "await": "seller_signed", "timeout": "48h" } ] },
            { "name": "send_confirmation", "task": "email.send" }
          ]
        })
    }

    /// A minimal valid document with the given steps.
    fn with_steps(steps: Value) -> Value {
        json!({ "name": "saga", "steps": steps })
    }

    fn violations(doc: &Value) -> Vec<Violation> {
        parse_definition(doc).expect_err("the document should be refused")
    }

    fn pointers(doc: &Value) -> Vec<String> {
        violations(doc).into_iter().map(|v| v.pointer).collect()
    }

    /// The document breaks exactly one rule, at `pointer`; returns the detail.
    fn single(doc: &Value, pointer: &str) -> String {
        let v = violations(doc);
        assert_eq!(v.len(), 1, "expected one violation, got {v:#?}");
        assert_eq!(v[0].pointer, pointer, "{v:#?}");
        v[0].detail.clone()
    }

    fn task(name: &str) -> Value {
        json!({ "name": name, "task": "work.do" })
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    // ---- the happy path and defaults -------------------------------------------------------

    #[test]
    fn protocol_example_parses() {
        let d = parse_definition(&example()).expect("the example is valid");
        assert_eq!(d.name, "order");
        assert_eq!(d.timeout, Some(secs(300)));
        assert_eq!(
            d.input_schema,
            Some(json!({ "type": "object", "required": ["order_id"] }))
        );
        assert_eq!(d.stages.len(), 4);
        let Stage::Single(Leaf {
            name,
            action: Action::Task(t),
        }) = &d.stages[0]
        else {
            panic!("the first stage is a task: {:?}", d.stages[0]);
        };
        assert_eq!(name, "reserve_inventory");
        assert_eq!(t.task, "inventory.reserve");
        assert_eq!(t.compensate.as_deref(), Some("inventory.release"));
        assert_eq!(t.timeout, secs(10));
        assert_eq!(
            t.retry,
            RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(200),
                multiplier: 2.0,
                max_backoff: secs(10),
            }
        );
        assert_eq!(t.compensation_retry, RetryPolicy::DEFAULT_COMPENSATION);
        let Stage::Group { name, members } = &d.stages[2] else {
            panic!("the third stage is a group: {:?}", d.stages[2]);
        };
        assert_eq!(name, "signatures");
        assert_eq!(
            members[1],
            Leaf {
                name: "seller_signature".into(),
                action: Action::Await {
                    event: "seller_signed".into(),
                    timeout: secs(48 * 3600),
                },
            }
        );
        let leaves: Vec<_> = d
            .leaves()
            .map(|l| (l.leaf.name.as_str(), l.group))
            .collect();
        assert_eq!(
            leaves,
            [
                ("reserve_inventory", None),
                ("charge_payment", None),
                ("buyer_signature", Some("signatures")),
                ("seller_signature", Some("signatures")),
                ("send_confirmation", None),
            ]
        );
    }

    #[test]
    fn defaults_are_filled_in() {
        let d = parse_definition(&with_steps(json!([task("only")]))).expect("valid");
        assert_eq!(d.timeout, None);
        assert_eq!(d.input_schema, None);
        assert_eq!(
            d.stages,
            [Stage::Single(Leaf {
                name: "only".into(),
                action: Action::Task(TaskSpec {
                    task: "work.do".into(),
                    compensate: None,
                    timeout: TaskSpec::DEFAULT_TIMEOUT,
                    retry: RetryPolicy::DEFAULT_FORWARD,
                    compensation_retry: RetryPolicy::DEFAULT_COMPENSATION,
                }),
            })]
        );
        assert_eq!(RetryPolicy::DEFAULT_COMPENSATION.max_attempts, 10);
    }

    #[test]
    fn a_partial_retry_takes_defaults_for_what_it_leaves_out() {
        let doc = with_steps(json!([{ "name": "a", "task": "t",
            "retry": { "max_attempts": 5 },
            "compensation_retry": { "initial_backoff": "2s" } }]));
        let d = parse_definition(&doc).expect("valid");
        let Some(Stage::Single(Leaf {
            action: Action::Task(t),
            ..
        })) = d.stages.first()
        else {
            panic!("a task: {:?}", d.stages);
        };
        assert_eq!(
            t.retry,
            RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::DEFAULT_FORWARD
            }
        );
        assert_eq!(
            t.compensation_retry,
            RetryPolicy {
                initial_backoff: secs(2),
                ..RetryPolicy::DEFAULT_COMPENSATION
            }
        );
    }

    #[test]
    fn null_counts_as_absent() {
        let doc = json!({ "name": "saga", "timeout": null, "input_schema": null, "steps": [
            { "name": "a", "task": "t", "compensate": null, "timeout": null, "retry": null,
              "compensation_retry": { "max_attempts": null }, "await": null, "parallel": null },
            { "name": "b", "await": "e", "timeout": "1s", "compensate": null, "retry": null } ] });
        let d = parse_definition(&doc).expect("valid");
        let minimal = json!({ "name": "saga", "steps": [
            { "name": "a", "task": "t" }, { "name": "b", "await": "e", "timeout": "1s" } ] });
        assert_eq!(Ok(d), parse_definition(&minimal));
    }

    // ---- the body and top-level members -----------------------------------------------------

    #[test]
    fn body_must_be_an_object() {
        for doc in [json!([]), json!("order"), json!(null), json!(1)] {
            single(&doc, "");
        }
    }

    #[test]
    fn unknown_fields_are_reported_where_they_are() {
        let doc = json!({ "name": "saga", "version": 2, "steps": [
            { "name": "a", "task": "t", "tiemout": "1s", "retry": { "max_attempt": 2 } },
            { "name": "g", "parallel": [ { "name": "m", "await": "e", "timeout": "1s", "x": 1 } ] },
            { "name": "b", "task": "t", "a/b~c": true } ] });
        let v = violations(&doc);
        let got: Vec<(&str, &str)> = v
            .iter()
            .map(|v| (v.pointer.as_str(), v.detail.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/version", "unknown field `version`"),
                ("/steps/0/tiemout", "unknown field `tiemout`"),
                ("/steps/0/retry/max_attempt", "unknown field `max_attempt`"),
                ("/steps/1/parallel/0/x", "unknown field `x`"),
                ("/steps/2/a~1b~0c", "unknown field `a/b~c`"),
            ]
        );
    }

    #[test]
    fn definition_name_is_required_and_well_formed() {
        let detail = single(&json!({ "steps": [task("a")] }), "/name");
        assert_eq!(detail, "`name` is required");
        single(&json!({ "name": null, "steps": [task("a")] }), "/name");
        single(&json!({ "name": 7, "steps": [task("a")] }), "/name");
        for bad in ["", "Order", "1order", "order.v2", "a b", &"a".repeat(64)] {
            single(&json!({ "name": bad, "steps": [task("a")] }), "/name");
        }
        for good in ["o", "order-v2", "order_v2", &"a".repeat(63)] {
            parse_definition(&json!({ "name": good, "steps": [task("a")] }))
                .unwrap_or_else(|v| panic!("{good} is a valid name: {v:?}"));
        }
    }

    #[test]
    fn steps_are_required_and_not_empty() {
        assert_eq!(
            single(&json!({ "name": "saga" }), "/steps"),
            "`steps` is required"
        );
        single(&with_steps(json!([])), "/steps");
        single(&with_steps(json!({ "a": task("a") })), "/steps");
        single(&with_steps(json!([task("a"), "b"])), "/steps/1");
    }

    // ---- step names ---------------------------------------------------------------------------

    #[test]
    fn step_names_are_required_and_well_formed() {
        single(&with_steps(json!([{ "task": "t" }])), "/steps/0/name");
        single(
            &with_steps(json!([{ "name": 1, "task": "t" }])),
            "/steps/0/name",
        );
        for bad in ["Charge", "charge-payment", "_a", "a.b", &"a".repeat(64)] {
            single(&with_steps(json!([task("a"), task(bad)])), "/steps/1/name");
        }
        single(
            &with_steps(json!([{ "parallel": [task("a")] }])),
            "/steps/0/name",
        );
        single(
            &with_steps(json!([{ "name": "g", "parallel": [{ "task": "t" }] }])),
            "/steps/0/parallel/0/name",
        );
    }

    #[test]
    fn a_duplicate_step_name_is_reported_at_its_second_occurrence() {
        let doc = with_steps(json!([task("a"), task("b"), task("c"), task("a")]));
        assert_eq!(single(&doc, "/steps/3/name"), "step name `a` is used twice");
    }

    #[test]
    fn names_are_unique_across_groups_and_their_members() {
        // A member that repeats a top-level step.
        let doc =
            with_steps(json!([task("a"), { "name": "g", "parallel": [task("b"), task("a")] }]));
        single(&doc, "/steps/1/parallel/1/name");
        // Two members of one group.
        let doc = with_steps(json!([{ "name": "g", "parallel": [task("b"), task("b")] }]));
        single(&doc, "/steps/0/parallel/1/name");
        // A member named like its own group: the group's name comes first.
        let doc = with_steps(json!([{ "name": "g", "parallel": [task("g")] }]));
        single(&doc, "/steps/0/parallel/0/name");
        // A group named like an earlier step, and a step named like an earlier group.
        let doc = with_steps(json!([task("a"), { "name": "a", "parallel": [task("b")] },
            { "name": "h", "parallel": [task("c")] }, task("h")]));
        assert_eq!(pointers(&doc), ["/steps/1/name", "/steps/3/name"]);
        // Members of two different groups.
        let doc = with_steps(json!([{ "name": "g", "parallel": [task("x")] },
            { "name": "h", "parallel": [task("x")] }]));
        single(&doc, "/steps/1/parallel/0/name");
    }

    // ---- what a step is -----------------------------------------------------------------------

    #[test]
    fn a_step_is_exactly_one_of_task_await_or_parallel() {
        let doc = with_steps(json!([task("a"), task("b"), { "name": "c", "timeout": "1s" }]));
        assert_eq!(
            single(&doc, "/steps/2"),
            "must be exactly one of task, await or parallel"
        );
        let doc = with_steps(json!([{ "name": "a", "task": "t", "await": "e", "timeout": "1s" }]));
        single(&doc, "/steps/0");
        let doc = with_steps(json!([{ "name": "a", "task": "t", "parallel": [task("b")] }]));
        single(&doc, "/steps/0");
        let doc = with_steps(json!([{ "name": "g", "parallel": [{ "name": "m" }] }]));
        assert_eq!(
            single(&doc, "/steps/0/parallel/0"),
            "must be exactly one of task or await"
        );
        let doc = with_steps(json!([{ "name": "g", "parallel": [
            { "name": "m", "task": "t", "await": "e" }] }]));
        single(&doc, "/steps/0/parallel/0");
    }

    #[test]
    fn an_unclear_step_still_has_its_name_and_fields_checked() {
        let doc = with_steps(json!([task("a"), { "name": "a", "tiemout": "1s" }]));
        assert_eq!(
            pointers(&doc),
            ["/steps/1", "/steps/1/tiemout", "/steps/1/name"]
        );
    }

    #[test]
    fn task_compensation_and_event_names_are_well_formed() {
        let long = "a".repeat(129);
        for bad in ["Inventory.reserve", "1task", "a b", "a/b", long.as_str()] {
            let doc = with_steps(json!([{ "name": "s", "task": bad }]));
            single(&doc, "/steps/0/task");
            let doc = with_steps(json!([{ "name": "s", "task": "t", "compensate": bad }]));
            single(&doc, "/steps/0/compensate");
            let doc = with_steps(json!([{ "name": "s", "await": bad, "timeout": "1s" }]));
            single(&doc, "/steps/0/await");
        }
        let good = format!("a{}", "b.-_9".repeat(25));
        let doc = with_steps(
            json!([{ "name": "s", "task": good, "compensate": "x-y.z_1" },
            { "name": "w", "await": "order.paid-v2", "timeout": "1s" }]),
        );
        parse_definition(&doc).expect("valid names");
        let doc = with_steps(json!([{ "name": "s", "task": 1, "compensate": ["c"] }]));
        assert_eq!(pointers(&doc), ["/steps/0/task", "/steps/0/compensate"]);
    }

    #[test]
    fn an_await_requires_a_timeout() {
        let doc = with_steps(json!([{ "name": "w", "await": "e" }]));
        assert_eq!(single(&doc, "/steps/0/timeout"), "`timeout` is required");
        let doc = with_steps(json!([{ "name": "g", "parallel": [{ "name": "w", "await": "e" }] }]));
        single(&doc, "/steps/0/parallel/0/timeout");
    }

    #[test]
    fn an_await_has_no_compensation_or_retry() {
        let doc = with_steps(json!([{ "name": "w", "await": "e", "timeout": "1s",
            "compensate": "c", "retry": {}, "compensation_retry": {} }]));
        let v = violations(&doc);
        let got: Vec<(&str, &str)> = v
            .iter()
            .map(|v| (v.pointer.as_str(), v.detail.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "/steps/0/compensate",
                    "`compensate` is not allowed on an await step"
                ),
                (
                    "/steps/0/compensation_retry",
                    "`compensation_retry` is not allowed on an await step"
                ),
                ("/steps/0/retry", "`retry` is not allowed on an await step"),
            ]
        );
    }

    #[test]
    fn a_group_cannot_contain_a_group() {
        let doc = with_steps(json!([task("a"), task("b"), { "name": "g", "parallel": [
            { "name": "inner", "parallel": [task("c")] }, task("d") ] }]));
        assert_eq!(
            single(&doc, "/steps/2/parallel/0"),
            "a parallel group cannot contain another group"
        );
    }

    #[test]
    fn a_group_has_a_name_a_non_empty_list_and_nothing_else() {
        single(
            &with_steps(json!([{ "name": "g", "parallel": [] }])),
            "/steps/0/parallel",
        );
        single(
            &with_steps(json!([{ "name": "g", "parallel": {} }])),
            "/steps/0/parallel",
        );
        single(
            &with_steps(json!([{ "name": "g", "parallel": [1] }])),
            "/steps/0/parallel/0",
        );
        let doc = with_steps(json!([{ "name": "g", "timeout": "1s", "retry": {},
            "parallel": [task("a")] }]));
        let v = violations(&doc);
        assert_eq!(
            v,
            [
                Violation::new(
                    "/steps/0/retry",
                    "`retry` is not allowed on a parallel group"
                ),
                Violation::new(
                    "/steps/0/timeout",
                    "`timeout` is not allowed on a parallel group"
                ),
            ]
        );
    }

    #[test]
    fn at_most_256_task_and_await_steps() {
        let steps = |n: usize| -> Vec<Value> { (0..n).map(|i| task(&format!("s{i}"))).collect() };
        parse_definition(&with_steps(json!(steps(MAX_LEAVES)))).expect("256 steps are fine");
        let detail = single(&with_steps(json!(steps(MAX_LEAVES + 1))), "/steps");
        assert!(detail.contains("256"), "{detail}");
        // Group members count; groups themselves do not.
        let mut mixed = steps(200);
        mixed.push(json!({ "name": "g", "parallel": (0..56).map(|i| json!({
            "name": format!("m{i}"), "await": "e", "timeout": "1s" })).collect::<Vec<_>>() }));
        parse_definition(&with_steps(json!(mixed.clone()))).expect("256 with a group");
        mixed.push(task("last"));
        single(&with_steps(json!(mixed)), "/steps");
    }

    // ---- durations and retry policies ---------------------------------------------------------

    #[test]
    fn durations_are_humantime_strings_greater_than_zero() {
        for (bad, detail) in [
            (json!("0s"), "a duration must be greater than zero"),
            (json!("0ms"), "a duration must be greater than zero"),
            (
                json!("10"),
                r#"`10` is not a duration (use forms such as "250ms", "10s", "5m", "24h")"#,
            ),
            (
                json!("ten seconds"),
                r#"`ten seconds` is not a duration (use forms such as "250ms", "10s", "5m", "24h")"#,
            ),
            (
                json!(10),
                r#"must be a duration string such as "250ms", "10s" or "5m""#,
            ),
            (json!("101years"), "a duration must be at most 100 years"),
            (json!("99999999999999999999999h"), ""),
        ] {
            let doc = with_steps(json!([{ "name": "a", "task": "t", "timeout": bad }]));
            let got = single(&doc, "/steps/0/timeout");
            if !detail.is_empty() {
                assert_eq!(got, detail);
            }
            let doc = json!({ "name": "saga", "timeout": bad, "steps": [task("a")] });
            single(&doc, "/timeout");
        }
        for (good, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("10s", secs(10)),
            ("5m", secs(300)),
            ("24h", secs(86_400)),
            ("1m 30s", secs(90)),
            ("100years", MAX_DURATION),
        ] {
            let doc = json!({ "name": "saga", "timeout": good, "steps": [task("a")] });
            let d = parse_definition(&doc).expect("a valid duration");
            assert_eq!(d.timeout, Some(expected), "{good}");
        }
    }

    #[test]
    fn retry_values_are_checked() {
        let retry = |r: Value| with_steps(json!([{ "name": "a", "task": "t", "retry": r }]));
        let at = "/steps/0/retry/max_attempts";
        assert_eq!(
            single(&retry(json!({ "max_attempts": 0 })), at),
            "max_attempts must be at least 1"
        );
        single(&retry(json!({ "max_attempts": -3 })), at);
        single(&retry(json!({ "max_attempts": 2.5 })), at);
        single(&retry(json!({ "max_attempts": "3" })), at);
        single(&retry(json!({ "max_attempts": 4_294_967_296_u64 })), at);
        let at = "/steps/0/retry/multiplier";
        assert_eq!(
            single(&retry(json!({ "multiplier": 0.5 })), at),
            "multiplier must be at least 1.0"
        );
        single(&retry(json!({ "multiplier": "2" })), at);
        single(
            &retry(json!({ "initial_backoff": "0s" })),
            "/steps/0/retry/initial_backoff",
        );
        single(&retry(json!([])), "/steps/0/retry");
        let d = parse_definition(&retry(
            json!({ "max_attempts": 1, "multiplier": 1, "initial_backoff": "1s", "max_backoff": "1s" }),
        ))
        .expect("the smallest values are fine");
        assert_eq!(
            d.to_document()["steps"][0]["retry"]["multiplier"],
            json!(1.0)
        );
    }

    #[test]
    fn max_backoff_must_not_be_below_initial_backoff() {
        let doc = with_steps(json!([{ "name": "a", "task": "t",
            "retry": { "initial_backoff": "2s", "max_backoff": "1s" } }]));
        assert_eq!(
            single(&doc, "/steps/0/retry/max_backoff"),
            "max_backoff (1s) must not be below initial_backoff (2s)"
        );
        // The defaults count: 60s is below an explicit 2m.
        let doc = with_steps(json!([{ "name": "a", "task": "t",
            "compensation_retry": { "initial_backoff": "2m" } }]));
        single(&doc, "/steps/0/compensation_retry/max_backoff");
        let doc = with_steps(json!([{ "name": "a", "task": "t",
            "retry": { "max_backoff": "500ms" } }]));
        single(&doc, "/steps/0/retry/max_backoff");
    }

    #[test]
    fn wrong_types_point_at_the_value() {
        let doc = json!({ "name": "saga", "timeout": true, "input_schema": "object", "steps": [
            { "name": "a", "task": "t", "compensate": 3, "timeout": 10, "retry": [],
              "compensation_retry": { "multiplier": "x", "max_attempts": {} } } ] });
        assert_eq!(
            pointers(&doc),
            [
                "/timeout",
                "/input_schema",
                "/steps/0/compensate",
                "/steps/0/timeout",
                "/steps/0/retry",
                "/steps/0/compensation_retry/max_attempts",
                "/steps/0/compensation_retry/multiplier",
            ]
        );
    }

    // ---- input_schema ---------------------------------------------------------------------------

    #[test]
    fn input_schema_must_be_valid_draft_2020_12() {
        let schema = |s: Value| json!({ "name": "saga", "input_schema": s, "steps": [task("a")] });
        single(&schema(json!({ "type": "objet" })), "/input_schema/type");
        assert_eq!(
            pointers(&schema(
                json!({ "properties": { "a": { "type": 3 } }, "required": "a" })
            )),
            ["/input_schema/properties/a/type", "/input_schema/required"]
        );
        single(&schema(json!(3)), "/input_schema");
        single(&schema(json!({ "pattern": "(" })), "/input_schema/pattern");
        single(&schema(json!({ "$ref": "#/nowhere" })), "/input_schema");
        single(
            &schema(json!({ "$ref": "https://example.com/s.json" })),
            "/input_schema",
        );
        single(
            &schema(json!({ "$schema": "http://json-schema.org/draft-07/schema#" })),
            "/input_schema/$schema",
        );
        for good in [
            json!(true),
            json!({}),
            json!({ "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object", "properties": { "n": { "type": "integer" } } }),
            json!({ "$defs": { "id": { "type": "string" } },
                    "properties": { "id": { "$ref": "#/$defs/id" } } }),
        ] {
            parse_definition(&schema(good.clone()))
                .unwrap_or_else(|v| panic!("{good} is a valid schema: {v:?}"));
        }
    }

    // ---- NUL characters -------------------------------------------------------------------------

    #[test]
    fn a_nul_character_is_refused_anywhere() {
        let doc = json!({ "name": "saga", "input_schema": { "properties": { "a\u{0}": {},
            "b": { "const": "x\u{0}" } } }, "steps": [
            { "name": "a", "task": "t\u{0}", "timeout": "1s\u{0}" } ] });
        assert_eq!(
            pointers(&doc),
            [
                "/input_schema/properties/a\u{0}",
                "/input_schema/properties/b/const",
                "/steps/0/task",
                "/steps/0/timeout",
            ]
        );
        let doc = json!({ "name": "sa\u{0}ga", "steps": [task("a")] });
        assert_eq!(
            single(&doc, "/name"),
            "must not contain a NUL character (U+0000)"
        );
    }

    // ---- all at once ----------------------------------------------------------------------------

    #[test]
    fn every_breach_is_reported_at_once() {
        let doc = json!({
            "name": "Order",
            "timeout": "0s",
            "extra": 1,
            "input_schema": { "type": "objet" },
            "steps": [
                { "name": "a", "task": "T", "tiemout": "1s",
                  "retry": { "max_attempts": 0, "multiplier": 0.5,
                             "initial_backoff": "5s", "max_backoff": "1s" } },
                { "name": "w", "await": "e", "retry": {} },
                { "name": "g", "parallel": [ { "name": "g2", "parallel": [] }, task("a") ] },
                { "name": "x" }
            ]
        });
        assert_eq!(
            pointers(&doc),
            [
                "/extra",
                "/name",
                "/timeout",
                "/input_schema/type",
                "/steps/0/tiemout",
                "/steps/0/task",
                "/steps/0/retry/max_attempts",
                "/steps/0/retry/multiplier",
                "/steps/0/retry/max_backoff",
                "/steps/1/retry",
                "/steps/1/timeout",
                "/steps/2/parallel/0",
                "/steps/2/parallel/1/name",
                "/steps/3",
            ]
        );
    }

    // ---- normalisation --------------------------------------------------------------------------

    #[test]
    fn the_document_round_trips() {
        let d = parse_definition(&example()).expect("valid");
        let doc = d.to_document();
        assert_eq!(parse_definition(&doc), Ok(d.clone()));
        assert_eq!(parse_definition(&doc).map(|e| e.to_document()), Ok(doc));
    }

    #[test]
    fn the_document_has_every_default_filled_in() {
        let doc = json!({ "name": "saga", "steps": [
            { "name": "a", "task": "t", "retry": { "initial_backoff": "90s", "max_backoff": "2m" } },
            { "name": "g", "parallel": [ { "name": "w", "await": "e", "timeout": "24h" } ] } ] });
        let normalised = parse_definition(&doc).expect("valid").to_document();
        assert_eq!(
            normalised,
            json!({
                "name": "saga",
                "timeout": null,
                "input_schema": null,
                "steps": [
                    { "name": "a", "task": "t", "compensate": null, "timeout": "30s",
                      "retry": { "max_attempts": 3, "initial_backoff": "1m 30s",
                                 "multiplier": 2.0, "max_backoff": "2m" },
                      "compensation_retry": { "max_attempts": 10, "initial_backoff": "1s",
                                              "multiplier": 2.0, "max_backoff": "1m" } },
                    { "name": "g", "parallel": [
                        { "name": "w", "await": "e", "timeout": "1day" } ] }
                ]
            })
        );
    }

    #[test]
    fn explicit_defaults_key_order_and_spelling_make_no_difference() {
        let explicit: Value = serde_json::from_str(
            r#"{
                "steps": [ { "retry": { "max_backoff": "1m", "multiplier": 2, "max_attempts": 3,
                                        "initial_backoff": "1000ms" },
                             "timeout": "30s", "task": "t", "name": "a", "compensate": null,
                             "compensation_retry": { "max_attempts": 10 } },
                           { "timeout": "1440m", "await": "e", "name": "w" } ],
                "timeout": null,
                "name": "saga"
            }"#,
        )
        .expect("JSON");
        let omitted = json!({ "name": "saga", "steps": [
            { "name": "a", "task": "t" }, { "name": "w", "await": "e", "timeout": "24h" } ] });
        let a = parse_definition(&explicit).expect("valid");
        let b = parse_definition(&omitted).expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.to_document(), b.to_document());
        assert_eq!(
            serde_json::to_string(&a.to_document()).expect("serialises"),
            serde_json::to_string(&b.to_document()).expect("serialises")
        );
    }

    #[test]
    fn different_content_gives_a_different_document() {
        let a = parse_definition(&with_steps(json!([task("a")]))).expect("valid");
        let b = parse_definition(&with_steps(json!([{ "name": "a", "task": "work.do",
            "timeout": "31s" }])))
        .expect("valid");
        assert_ne!(a.to_document(), b.to_document());
    }

    proptest::proptest! {
        #[test]
        fn durations_survive_the_round_trip(nanos in 1u64..=MAX_DURATION.as_nanos() as u64) {
            let d = Duration::from_nanos(nanos);
            let doc = json!({ "name": "saga", "timeout": humantime::format_duration(d).to_string(),
                              "steps": [task("a")] });
            let parsed = parse_definition(&doc).expect("valid");
            proptest::prop_assert_eq!(parsed.timeout, Some(d));
            proptest::prop_assert_eq!(parse_definition(&parsed.to_document()), Ok(parsed));
        }

        #[test]
        fn multipliers_survive_the_round_trip(m in 1.0f64..1e12) {
            let doc = with_steps(json!([{ "name": "a", "task": "t", "retry": { "multiplier": m } }]));
            let parsed = parse_definition(&doc).expect("valid");
            proptest::prop_assert_eq!(parse_definition(&parsed.to_document()), Ok(parsed));
        }
    }

    // ---- check_input ----------------------------------------------------------------------------

    fn with_schema(schema: Value) -> Definition {
        parse_definition(&json!({ "name": "saga", "input_schema": schema, "steps": [task("a")] }))
            .expect("valid")
    }

    #[test]
    fn input_without_a_schema_is_accepted() {
        let d = parse_definition(&with_steps(json!([task("a")]))).expect("valid");
        assert_eq!(d.check_input(&json!({ "anything": [1, 2] })), Ok(()));
    }

    #[test]
    fn a_missing_required_property_points_at_the_member() {
        let d = parse_definition(&example()).expect("valid");
        assert_eq!(d.check_input(&json!({ "order_id": "o-1" })), Ok(()));
        let v = d.check_input(&json!({})).expect_err("order_id is missing");
        assert_eq!(
            v,
            [Violation::new(
                "/input/order_id",
                "required property `order_id` is missing"
            )]
        );
    }

    #[test]
    fn input_breaches_point_at_the_instance() {
        let d = with_schema(json!({
            "type": "object",
            "required": ["customer"],
            "properties": {
                "amount": { "type": "integer", "minimum": 1 },
                "a/b": { "type": "string" },
                "customer": { "type": "object", "required": ["id", "email"],
                              "properties": { "id": { "type": "string" } } },
                "items": { "type": "array", "items": { "type": "string" } }
            }
        }));
        let v = d
            .check_input(&json!({ "amount": 0, "a/b": 1, "customer": { "id": 7 },
                                  "items": ["x", 2] }))
            .expect_err("several breaches");
        let mut got: Vec<&str> = v.iter().map(|v| v.pointer.as_str()).collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "/input/amount",
                "/input/a~1b",
                "/input/customer/email",
                "/input/customer/id",
                "/input/items/1",
            ]
        );
        let v = d
            .check_input(&json!(["not", "an", "object"]))
            .expect_err("wrong type");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].pointer, "/input");
        assert!(
            !v[0].detail.contains(r#"["not""#),
            "the value is masked: {}",
            v[0].detail
        );
    }

    #[test]
    fn input_with_a_nul_character_is_refused() {
        let d = parse_definition(&with_steps(json!([task("a")]))).expect("valid");
        let v = d
            .check_input(&json!({ "note": "a\u{0}b", "list": [{ "k\u{0}": 1 }] }))
            .expect_err("NUL");
        let got: Vec<&str> = v.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(got, ["/input/list/0/k\u{0}", "/input/note"]);
    }

    #[test]
    fn a_false_schema_refuses_every_input() {
        let d = with_schema(json!(false));
        let v = d.check_input(&json!({})).expect_err("false");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].pointer, "/input");
    }
}
