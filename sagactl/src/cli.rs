//! The command line, as clap parses it. Everything that can be checked without the server is
//! checked here (URLs, ids, JSON input, durations, header values), so that a mistake in the
//! command line is a usage error (exit 2) before any request is sent.

use std::convert::Infallible;
use std::fmt;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Url;
use serde_json::Value;
use uuid::Uuid;

const LONG_ABOUT: &str = "\
Operate the saga orchestrator over its REST API: find stuck sagas, inspect their steps and
history, retry, skip or terminate them (one by one or in bulk), see the task queues, register
definitions and start sagas.

Every command talks only to the REST API at --url (env SAGA_URL). With tokens configured on the
orchestrator, give one with --token (env SAGA_TOKEN; never printed): a client token may read,
register, start and cancel; retry, skip, terminate and bulk need an operator token.

--output table (the default) prints for people; --output json prints the API's JSON as it came,
for scripts (`sagas list --all` joins the pages into one {\"items\", \"next_cursor\": null};
`sagas show` prints {\"status\", \"history\"}).

Errors are printed to stderr as `error: <title> (<status>): <detail>`, followed by one line per
problem in the request (`  <pointer>: <detail>`).

Exit codes:
  0  done
  1  the API refused the request (a 4xx answer other than 404: invalid input, conflict with the
     saga's state, missing or unknown token, a token without the role)
  2  usage error: the command line is wrong, or a file or --input is not JSON
  3  the server failed (5xx) or could not be reached (connection refused, timeout, an answer
     that is not the API's)
  4  not found (404): no saga with this id, no definition with this name or version
  5  `start --wait`: the saga had not settled when the wait ended (its status is printed)";

/// The operator CLI of the saga orchestrator.
#[derive(Debug, Parser)]
#[command(name = "sagactl", version, about = "Operate the saga orchestrator over its REST API", long_about = LONG_ABOUT)]
pub struct Cli {
    /// The orchestrator's base URL.
    #[arg(
        long,
        env = "SAGA_URL",
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_base_url,
        global = true
    )]
    pub url: Url,

    /// The API token, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "SAGA_TOKEN", hide_env_values = true, value_parser = parse_token, global = true)]
    pub token: Option<Token>,

    /// How to print answers: `table` for people, `json` for scripts (the API's JSON as is).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, show and repair sagas.
    #[command(subcommand)]
    Sagas(SagasCommand),
    /// List, show and register saga definitions.
    #[command(subcommand)]
    Definitions(DefinitionsCommand),
    /// Start a saga of a definition (its latest version unless --version).
    Start(StartArgs),
    /// Operator: retry or terminate every saga that matches a filter (--dry-run shows which).
    #[command(subcommand)]
    Bulk(BulkCommand),
    /// The task queues: ready messages and consumers, as RabbitMQ tells them.
    Queues,
}

#[derive(Debug, Subcommand)]
pub enum BulkCommand {
    /// Retry the failed compensation of every matching suspended saga.
    Retry {
        #[command(flatten)]
        filter: BulkArgs,
        /// Why; recorded in each saga's history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// End every matching saga that is not terminal, without compensating.
    Terminate {
        #[command(flatten)]
        filter: BulkArgs,
        /// Why; recorded in each saga's history.
        #[arg(long)]
        reason: String,
    },
}

/// Which sagas a bulk action takes: the filters of `sagas list`, narrowed by the server to the
/// states the action applies to, newest first.
#[derive(Debug, Args)]
pub struct BulkArgs {
    #[command(flatten)]
    pub sagas: SagaFilter,
    /// Only sagas whose last change is older than this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub updated_before: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many sagas (1–1000; the server's default is 100); run again for the rest.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: Option<u16>,
    /// Only show which sagas would be acted on.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum SagasCommand {
    /// List sagas, newest first.
    List(ListArgs),
    /// A saga's status, its steps and its history.
    Show {
        /// The saga's id.
        id: Uuid,
    },
    /// Operator: re-dispatch the compensation that suspended the saga, with a fresh attempt
    /// budget.
    Retry {
        id: Uuid,
        /// Why; recorded in the saga's history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Operator: count the failed compensation as done and go on compensating.
    Skip {
        id: Uuid,
        /// Why; recorded in the saga's history.
        #[arg(long)]
        reason: String,
    },
    /// Operator: end the saga at once, without compensating.
    Terminate {
        id: Uuid,
        /// Why; recorded in the saga's history.
        #[arg(long)]
        reason: String,
    },
    /// Stop a running saga going forward and compensate what it did.
    Cancel {
        id: Uuid,
        /// Why; recorded in the saga's history.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// The filters `sagas list` and `bulk` share.
#[derive(Debug, Args)]
pub struct SagaFilter {
    /// Only sagas in this state (repeat for several).
    #[arg(long = "state", value_enum)]
    pub states: Vec<SagaState>,
    /// Only sagas of this definition.
    #[arg(long)]
    pub definition: Option<String>,
    /// Only stuck sagas (suspended, or past their wait by more than the stuck threshold).
    #[arg(long)]
    pub stuck: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub sagas: SagaFilter,
    /// Sagas per page (1–500; the server's default is 50).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub limit: Option<u16>,
    /// Follow the pages to the end instead of stopping after the first.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SagaState {
    Running,
    Compensating,
    Suspended,
    Completed,
    Compensated,
    Terminated,
}

impl SagaState {
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
}

#[derive(Debug, Subcommand)]
pub enum DefinitionsCommand {
    /// Every definition with its latest version.
    List,
    /// A definition's steps (the latest version unless --version).
    Show {
        name: String,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        version: Option<u32>,
    },
    /// Register a definition from a JSON file (`-`: standard input). Content equal to the latest
    /// version leaves it unchanged; anything else makes a new version.
    Register {
        /// The definition document.
        file: String,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The definition's name.
    pub definition: String,
    /// The definition's version (default: the latest).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub version: Option<u32>,
    /// The saga's input: a JSON object.
    #[arg(long, value_parser = parse_json)]
    pub input: Value,
    /// Starting again with the same key and input returns the first saga instead of a new one.
    #[arg(long, value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<String>,
    /// Wait up to this long (e.g. `30s`, `5m`) for the saga to complete, compensate, be
    /// terminated or suspended, then print its final status.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
}

/// The API token. Its `Debug` never shows it, and nothing prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// A token goes into a header: one or more visible ASCII characters.
    pub fn check(&self) -> Result<(), String> {
        if self.0.is_empty() || !self.0.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token given (--token or SAGA_TOKEN) is not one or more visible ASCII characters".into());
        }
        Ok(())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Takes any value: clap would echo a refused one in its error, so the check is
/// [`Token::check`], whose error never shows the value.
fn parse_token(s: &str) -> Result<Token, Infallible> {
    Ok(Token(s.to_owned()))
}

fn parse_base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!(
            "`{s}` is not an http(s) URL such as http://127.0.0.1:8080"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{s}`: the base URL takes no query or fragment"));
    }
    Ok(url)
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time such as 2026-01-31T12:00:00Z: {e}"))
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

/// PROTOCOL §2: 1–255 visible ASCII characters.
fn parse_idempotency_key(s: &str) -> Result<String, String> {
    if (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err("an idempotency key is 1 to 255 visible ASCII characters".into())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tokens_are_never_shown() {
        let Ok(t) = parse_token("s3cret");
        assert!(t.check().is_ok());
        assert!(!format!("{t:?}").contains("s3cret"));
        let Ok(t) = parse_token("bad token");
        let e = t.check().expect_err("a space");
        assert!(!e.contains("bad token"));
    }

    #[test]
    fn base_urls() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("https://saga.example/prefix/").is_ok());
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("mailto:a@b").is_err());
        assert!(parse_base_url("localhost:8080").is_err());
        assert!(parse_base_url("http://x/?a=1").is_err());
    }

    #[test]
    fn idempotency_keys() {
        assert!(parse_idempotency_key("order-A-1").is_ok());
        assert!(parse_idempotency_key("").is_err());
        assert!(parse_idempotency_key("has space").is_err());
        assert!(parse_idempotency_key(&"k".repeat(256)).is_err());
    }
}
