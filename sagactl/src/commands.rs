//! Each command: the requests it sends and what it prints. `--output json` prints the API's
//! bodies as they came; `--output table` renders them with `render`.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::cli::{
    BulkArgs, BulkCommand, Cli, Command, DefinitionsCommand, ListArgs, Output, SagasCommand,
    StartArgs,
};
use crate::client::{Answer, Body, Client};
use crate::error::CliError;
use crate::model::{
    BulkResult, DefinitionDocument, DefinitionSummary, HistoryEntry, Items, Page, RawPage,
    SagaStatus, TaskQueue,
};
use crate::render;

/// The page size of `sagas list --all` when `--limit` is not given: fewer round trips.
const ALL_PAGE_SIZE: &str = "500";
/// Below this, what is left of `--wait` is not worth another long poll.
const MIN_WAIT: Duration = Duration::from_millis(1);

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let client = Client::new(cli.url, cli.token)?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Sagas(SagasCommand::List(args)) => list_sagas(&client, json, args).await,
        Command::Sagas(SagasCommand::Show { id }) => show_saga(&client, json, id).await,
        Command::Sagas(SagasCommand::Retry { id, reason }) => {
            act(&client, json, id, Action::Retry, reason).await
        }
        Command::Sagas(SagasCommand::Skip { id, reason }) => {
            act(&client, json, id, Action::Skip, Some(reason)).await
        }
        Command::Sagas(SagasCommand::Terminate { id, reason }) => {
            act(&client, json, id, Action::Terminate, Some(reason)).await
        }
        Command::Sagas(SagasCommand::Cancel { id, reason }) => {
            act(&client, json, id, Action::Cancel, reason).await
        }
        Command::Definitions(DefinitionsCommand::List) => list_definitions(&client, json).await,
        Command::Definitions(DefinitionsCommand::Show { name, version }) => {
            show_definition(&client, json, &name, version).await
        }
        Command::Definitions(DefinitionsCommand::Register { file }) => {
            register(&client, json, &file).await
        }
        Command::Start(args) => start(&client, json, args).await,
        Command::Bulk(BulkCommand::Retry { filter, reason }) => {
            bulk(&client, json, "retry", filter, reason).await
        }
        Command::Bulk(BulkCommand::Terminate { filter, reason }) => {
            bulk(&client, json, "terminate", filter, Some(reason)).await
        }
        Command::Queues => queues(&client, json).await,
    }
}

/// Writes to stdout. A closed pipe (`sagactl … | head`) is not an error.
fn emit(text: &str) {
    let mut stdout = io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    if let Err(e) = written
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        note(&format!("cannot write the output: {e}"));
    }
}

/// A JSON body on a line of its own.
fn emit_json(body: &str) {
    emit(&format!("{}\n", body.trim_end()));
}

/// A remark for the person at the terminal, on stderr (stdout stays clean for pipes).
fn note(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}

async fn list_sagas(client: &Client, json: bool, args: ListArgs) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = args
        .sagas
        .states
        .iter()
        .map(|s| ("state", s.as_str().to_owned()))
        .collect();
    if let Some(d) = args.sagas.definition {
        query.push(("definition", d));
    }
    if args.sagas.stuck {
        query.push(("stuck", "true".to_owned()));
    }
    match args.limit {
        Some(l) => query.push(("limit", l.to_string())),
        None if args.all => query.push(("limit", ALL_PAGE_SIZE.to_owned())),
        None => {}
    }
    let mut raw_items: Vec<String> = Vec::new();
    let mut items: Vec<SagaStatus> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen_cursors = HashSet::new();
    loop {
        let mut q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(c) = &cursor {
            q.push(("cursor", c));
        }
        let answer = client.get(&["v1", "sagas"], &q).await?;
        let next = if json {
            if !args.all {
                answer.parse::<RawPage>()?;
                emit_json(&answer.body);
                return Ok(());
            }
            let page: RawPage = answer.parse()?;
            raw_items.extend(page.items.iter().map(|r| r.get().to_owned()));
            page.next_cursor
        } else {
            let page: Page<SagaStatus> = answer.parse()?;
            items.extend(page.items);
            page.next_cursor
        };
        match next {
            Some(next) if args.all => {
                if !seen_cursors.insert(next.clone()) {
                    return Err(CliError::UnexpectedAnswer {
                        url: answer.url.to_string(),
                        detail: "the list gave the same cursor twice".into(),
                    });
                }
                cursor = Some(next);
            }
            Some(_) => {
                emit(&render::sagas::list(&items));
                note(&format!(
                    "(the first {} shown; --all lists every one)",
                    items.len()
                ));
                return Ok(());
            }
            None => break,
        }
    }
    if json {
        emit_json(&format!(
            "{{\"items\":[{}],\"next_cursor\":null}}",
            raw_items.join(",")
        ));
    } else {
        emit(&render::sagas::list(&items));
    }
    Ok(())
}

async fn show_saga(client: &Client, json: bool, id: Uuid) -> Result<(), CliError> {
    let id = id.to_string();
    let (status_path, history_path) = (["v1", "sagas", &id], ["v1", "sagas", &id, "history"]);
    let (status, history) = tokio::join!(
        client.get(&status_path, &[]),
        client.get(&history_path, &[]),
    );
    let (status, history) = (status?, history?);
    if json {
        // Checked to be JSON before they are joined, so that the output is JSON.
        status.parse::<serde::de::IgnoredAny>()?;
        history.parse::<serde::de::IgnoredAny>()?;
        emit_json(&format!(
            "{{\"status\":{},\"history\":{}}}",
            status.body.trim(),
            history.body.trim()
        ));
        return Ok(());
    }
    let s: SagaStatus = status.parse()?;
    let entries: Items<HistoryEntry> = history.parse()?;
    emit(&format!(
        "{}\n{}",
        render::sagas::status(&s),
        render::sagas::history(&s, &entries.items)
    ));
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Retry,
    Skip,
    Terminate,
    Cancel,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Skip => "skip",
            Action::Terminate => "terminate",
            Action::Cancel => "cancel",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Action::Retry => "retrying the failed compensation of",
            Action::Skip => "skipped the failed compensation of",
            Action::Terminate => "terminated",
            Action::Cancel => "cancelled",
        }
    }
}

async fn act(
    client: &Client,
    json: bool,
    id: Uuid,
    action: Action,
    reason: Option<String>,
) -> Result<(), CliError> {
    let id = id.to_string();
    let mut body = Map::new();
    if let Some(reason) = reason {
        body.insert("reason".into(), Value::String(reason));
    }
    let answer = client
        .post(
            &["v1", "sagas", &id, action.path()],
            Body {
                json: to_bytes(&Value::Object(body))?,
                idempotency_key: None,
            },
        )
        .await?;
    if json {
        answer.parse::<serde::de::IgnoredAny>()?;
        emit_json(&answer.body);
        return Ok(());
    }
    let s: SagaStatus = answer.parse()?;
    emit(&format!(
        "{} saga {}: it is {} (revision {})\n",
        action.done(),
        s.id,
        s.state,
        s.revision
    ));
    Ok(())
}

async fn bulk(
    client: &Client,
    json: bool,
    action: &str,
    args: BulkArgs,
    reason: Option<String>,
) -> Result<(), CliError> {
    let mut filter = Map::new();
    let sagas = args.sagas;
    if !sagas.states.is_empty() {
        let states = sagas.states.iter().map(|s| Value::from(s.as_str()));
        filter.insert("state".into(), Value::Array(states.collect()));
    }
    if let Some(d) = sagas.definition {
        filter.insert("definition".into(), Value::String(d));
    }
    if sagas.stuck {
        filter.insert("stuck".into(), Value::Bool(true));
    }
    if let Some(t) = args.updated_before {
        filter.insert("updated_before".into(), Value::String(t.to_rfc3339()));
    }
    let mut body = Map::new();
    body.insert("filter".into(), Value::Object(filter));
    body.insert("dry_run".into(), Value::Bool(args.dry_run));
    if let Some(l) = args.limit {
        body.insert("limit".into(), Value::from(l));
    }
    if let Some(r) = reason {
        body.insert("reason".into(), Value::String(r));
    }
    let answer = client
        .post(
            &["v1", "bulk", action],
            Body {
                json: to_bytes(&Value::Object(body))?,
                idempotency_key: None,
            },
        )
        .await?;
    let result: BulkResult = answer.parse()?;
    if json {
        emit_json(&answer.body);
    } else {
        emit(&render::operations::bulk(&result));
    }
    Ok(())
}

async fn queues(client: &Client, json: bool) -> Result<(), CliError> {
    let answer = client.get(&["v1", "queues"], &[]).await?;
    let list: Items<TaskQueue> = answer.parse()?;
    if json {
        emit_json(&answer.body);
    } else {
        emit(&render::operations::queues(&list.items));
    }
    Ok(())
}

async fn list_definitions(client: &Client, json: bool) -> Result<(), CliError> {
    let answer = client.get(&["v1", "definitions"], &[]).await?;
    let list: Items<DefinitionSummary> = answer.parse()?;
    if json {
        emit_json(&answer.body);
    } else {
        emit(&render::definitions::list(&list.items));
    }
    Ok(())
}

async fn show_definition(
    client: &Client,
    json: bool,
    name: &str,
    version: Option<u32>,
) -> Result<(), CliError> {
    let version = version.map(|v| v.to_string());
    let segments: Vec<&str> = match &version {
        Some(v) => vec!["v1", "definitions", name, "versions", v],
        None => vec!["v1", "definitions", name],
    };
    let answer = client.get(&segments, &[]).await?;
    let d: DefinitionDocument = answer.parse()?;
    if json {
        emit_json(&answer.body);
    } else {
        emit(&render::definitions::show(&d));
    }
    Ok(())
}

async fn register(client: &Client, json: bool, file: &str) -> Result<(), CliError> {
    let bytes = read_input(file)?;
    // A syntax error is the file's, not the request's: say where it is (exit 2).
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .map_err(|e| CliError::Input(format!("{} is not JSON: {e}", describe(file))))?;
    let answer = client
        .post(
            &["v1", "definitions"],
            Body {
                json: bytes,
                idempotency_key: None,
            },
        )
        .await?;
    let d: DefinitionSummary = answer.parse()?;
    if json {
        emit_json(&answer.body);
    } else {
        let created = answer.status == reqwest::StatusCode::CREATED;
        emit(&render::definitions::registered(&d, created));
    }
    Ok(())
}

fn read_input(file: &str) -> Result<Vec<u8>, CliError> {
    let mut bytes = Vec::new();
    let read = if file == "-" {
        io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::read(file).map(|b| bytes = b)
    };
    read.map_err(|e| CliError::Input(format!("cannot read {}: {e}", describe(file))))?;
    Ok(bytes)
}

fn describe(file: &str) -> String {
    if file == "-" {
        "standard input".to_owned()
    } else {
        format!("`{file}`")
    }
}

async fn start(client: &Client, json: bool, args: StartArgs) -> Result<(), CliError> {
    let mut body = Map::new();
    body.insert("definition".into(), Value::String(args.definition));
    if let Some(v) = args.version {
        body.insert("version".into(), Value::from(v));
    }
    body.insert("input".into(), args.input);
    let answer = client
        .post(
            &["v1", "sagas"],
            Body {
                json: to_bytes(&Value::Object(body))?,
                idempotency_key: args.idempotency_key,
            },
        )
        .await?;
    let started: SagaStatus = answer.parse()?;
    if !json {
        let line = if answer.status == reqwest::StatusCode::CREATED {
            format!("started saga {}\n", started.id)
        } else {
            format!(
                "saga {} was started before with this idempotency key\n",
                started.id
            )
        };
        emit(&line);
    }
    let Some(wait) = args.wait else {
        return print_status(json, &answer, &started);
    };
    let deadline = Instant::now() + wait;
    let mut answer = answer;
    let mut status = started;
    while !status.is_settled() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < MIN_WAIT {
            print_status(json, &answer, &status)?;
            return Err(CliError::NotSettled {
                id: status.id,
                waited: humantime::format_duration(wait).to_string(),
                state: status.state,
            });
        }
        answer = client.long_poll(&status.id, left).await?;
        status = answer.parse()?;
    }
    print_status(json, &answer, &status)
}

fn print_status(json: bool, answer: &Answer, status: &SagaStatus) -> Result<(), CliError> {
    if json {
        emit_json(&answer.body);
    } else {
        emit(&render::sagas::status(status));
    }
    Ok(())
}

fn to_bytes(v: &Value) -> Result<Vec<u8>, CliError> {
    serde_json::to_vec(v).map_err(|e| CliError::Input(format!("cannot encode the request: {e}")))
}
