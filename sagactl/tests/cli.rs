//! `sagactl` end to end: the real binary against the real orchestrator (in this process, on the
//! local PostgreSQL and RabbitMQ, with API tokens configured), and a raw AMQP worker.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::worker::{Reply, Worker};
use support::{CLIENT_TOKEN, OPERATOR_TOKEN, Orchestrator, Sagactl, closed_port};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SETTLE: Duration = Duration::from_secs(30);
const NOWHERE: &str = "0193a000-0000-7000-8000-00000000dead";

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// The saga ids in a `sagas list --output json` answer.
fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {list}"))
        .iter()
        .map(|s| s["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// The line of a table whose first cell is `first`.
#[track_caller]
fn row<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"))
}

/// The cells of a table row.
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_are_registered_listed_and_shown() {
    let env = Orchestrator::start().await;
    let cli = env.cli().token(CLIENT_TOKEN);

    let empty = cli.run(&["definitions", "list"]).await.ok();
    assert_eq!(empty, "no definition is registered\n");

    let out = cli
        .run(&["definitions", "register", &fixture("quick.json")])
        .await
        .ok();
    assert_eq!(out, "created cli_quick version 1\n");
    let out = cli
        .run(&["definitions", "register", &fixture("quick.json")])
        .await
        .ok();
    assert_eq!(
        out,
        "unchanged cli_quick version 1 (equal to the latest version)\n"
    );
    // From standard input: the same content, spelled differently, is still unchanged.
    let same = json!({ "steps": [{ "task": "cli.work", "timeout": "30s", "name": "work" }], "name": "cli_quick" });
    let out = cli
        .run_with_stdin(
            &["definitions", "register", "-"],
            same.to_string().as_bytes(),
        )
        .await
        .ok();
    assert_eq!(
        out,
        "unchanged cli_quick version 1 (equal to the latest version)\n"
    );
    let changed = json!({ "name": "cli_quick", "steps": [{ "name": "work", "task": "cli.work", "timeout": "20s" }] });
    let answer = cli
        .run_with_stdin(
            &["definitions", "register", "-", "--output", "json"],
            changed.to_string().as_bytes(),
        )
        .await
        .json();
    assert_eq!(answer["name"], "cli_quick");
    assert_eq!(answer["version"], 2);

    // The API's 422, with every breach on a line of its own.
    let run = cli
        .run(&["definitions", "register", &fixture("invalid.json")])
        .await
        .code(1)
        .stderr_has("error: Invalid request (422): ")
        .stderr_has("\n  /steps/0/tiemout: ")
        .stderr_has("\n  /steps/1/name: ");
    assert!(run.stdout.is_empty(), "{run:#?}");
    // Local input that cannot be sent is a usage error.
    cli.run(&["definitions", "register", &fixture("truncated.json")])
        .await
        .code(2)
        .stderr_has("is not JSON");
    cli.run(&["definitions", "register", &fixture("missing.json")])
        .await
        .code(2)
        .stderr_has("cannot read");

    let out = cli
        .run(&["definitions", "register", &fixture("order.json")])
        .await
        .ok();
    assert_eq!(out, "created cli_order version 1\n");
    let table = cli.run(&["definitions", "list"]).await.ok();
    assert_eq!(cells(row(&table, "NAME")), ["NAME", "VERSION", "CREATED"]);
    assert_eq!(cells(row(&table, "cli_quick"))[..2], ["cli_quick", "2"]);
    assert_eq!(cells(row(&table, "cli_order"))[..2], ["cli_order", "1"]);
    let list = cli.run(&["definitions", "list", "-o", "json"]).await.json();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");

    let shown = cli.run(&["definitions", "show", "cli_order"]).await.ok();
    assert!(shown.starts_with("definition    cli_order v1\n"), "{shown}");
    assert_eq!(
        cells(row(&shown, "reserve")),
        [
            "reserve",
            "-",
            "task",
            "cli.reserve",
            "cli.release",
            "10s",
            "3× 1s ×2.0 ≤1m",
            "2× 50ms ×2.0 ≤1m"
        ]
    );
    assert_eq!(
        cells(row(&shown, "confirm"))[..6],
        ["confirm", "-", "await", "confirmed", "-", "1h"]
    );
    let v1 = cli
        .run(&["definitions", "show", "cli_quick", "--version", "1"])
        .await
        .ok();
    assert_eq!(cells(row(&v1, "work"))[5], "30s", "{v1}");
    let v2 = cli
        .run(&["definitions", "show", "cli_quick", "-o", "json"])
        .await
        .json();
    assert_eq!(v2["document"]["steps"][0]["timeout"], "20s");

    cli.run(&["definitions", "show", "no_such_definition"])
        .await
        .code(4)
        .stderr_has("error: Not found (404): ");
    cli.run(&["definitions", "show", "cli_quick", "--version", "9"])
        .await
        .code(4);
    cli.run(&["definitions", "show", "cli_quick", "--version", "0"])
        .await
        .code(2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sagas_are_started_shown_and_listed() {
    let env = Orchestrator::start().await;
    let cli = env.cli().token(CLIENT_TOKEN);
    cli.run(&["definitions", "register", &fixture("quick.json")])
        .await
        .ok();
    let worker = Worker::start(&env.amqp_url, &["cli.work"], |cmd| {
        Reply::Ok(json!({ "done": cmd["input"]["n"] }))
    })
    .await;

    // --output json prints the API's status as it came.
    let started = cli
        .run(&["start", "cli_quick", "--input", r#"{"n":1}"#, "-o", "json"])
        .await
        .json();
    let first = started["id"].as_str().expect("an id").to_owned();
    assert_eq!(started["definition"], "cli_quick");
    assert_eq!(started["input"], json!({ "n": 1 }));
    assert!(started["steps"].is_array(), "{started}");
    env.wait_state(&first, "completed", SETTLE).await;

    // --wait long-polls until the saga settles and prints its final status.
    let out = cli
        .run(&[
            "start",
            "cli_quick",
            "--input",
            r#"{"n":2}"#,
            "--wait",
            "30s",
        ])
        .await
        .ok();
    assert!(out.starts_with("started saga "), "{out}");
    assert!(out.contains("\nstate       completed (revision "), "{out}");
    assert_eq!(
        cells(row(&out, "work"))[..4],
        ["work", "-", "succeeded", "1"]
    );
    let second = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("started saga "))
        .expect("the saga's id")
        .to_owned();

    // The same idempotency key and input: the same saga.
    let keyed = [
        "start",
        "cli_quick",
        "--input",
        r#"{"n":3}"#,
        "--idempotency-key",
        "cli-k1",
    ];
    let a = cli
        .run(&[&keyed[..], &["-o", "json"]].concat())
        .await
        .json();
    let b = cli.run(&keyed).await.ok();
    let third = a["id"].as_str().expect("an id").to_owned();
    assert!(
        b.starts_with(&format!(
            "saga {third} was started before with this idempotency key\n"
        )),
        "{b}"
    );
    env.wait_state(&third, "completed", SETTLE).await;

    // Refusals of the start.
    cli.run(&["start", "no_such_definition", "--input", "{}"])
        .await
        .code(1)
        .stderr_has("error: Invalid request (422): ")
        .stderr_has("\n  /definition: ");
    cli.run(&["start", "cli_quick", "--input", "[1]"])
        .await
        .code(1)
        .stderr_has("\n  /input: ");
    cli.run(&["start", "cli_quick", "--input", "not json"])
        .await
        .code(2);

    // `sagas show`: the header, the steps and the history.
    let shown = cli.run(&["sagas", "show", &first]).await.ok();
    assert!(
        shown.starts_with(&format!("saga        {first}\n")),
        "{shown}"
    );
    assert!(shown.contains("definition  cli_quick v1\n"), "{shown}");
    assert!(
        shown.contains("state       completed (revision "),
        "{shown}"
    );
    assert!(
        shown.contains("output      {\"work\":{\"done\":1}}\n"),
        "{shown}"
    );
    assert_eq!(
        cells(row(&shown, "STEP")),
        ["STEP", "GROUP", "STATE", "ATTEMPTS", "ERROR"]
    );
    assert_eq!(
        cells(row(&shown, "work")),
        ["work", "-", "succeeded", "1", "-"]
    );
    assert_eq!(
        cells(row(&shown, "OFFSET")),
        [
            "OFFSET", "KIND", "STEP", "ATTEMPT", "REASON", "ACTOR", "DATA"
        ]
    );
    let started_row = cells(row(&shown, "+0.000s"));
    assert_eq!(
        started_row[..6],
        ["+0.000s", "saga_started", "-", "-", "-", "ci"]
    );
    let kinds: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.starts_with("OFFSET"))
        .skip(1)
        .map(|l| cells(l)[1])
        .collect();
    assert_eq!(
        kinds,
        [
            "saga_started",
            "command_dispatched",
            "reply_received",
            "step_succeeded",
            "saga_completed"
        ],
        "{shown}"
    );
    let both = cli
        .run(&["sagas", "show", &first, "-o", "json"])
        .await
        .json();
    assert_eq!(both["status"]["id"], first.as_str());
    assert_eq!(both["history"]["items"][0]["kind"], "saga_started");

    // The list, its filters, and --all following the cursor.
    let table = cli.run(&["sagas", "list"]).await.ok();
    assert_eq!(
        cells(row(&table, "ID")),
        [
            "ID",
            "DEFINITION",
            "VER",
            "STATE",
            "STUCK",
            "UPDATED",
            "FAILURE",
            "STUCK REASON"
        ]
    );
    for id in [&first, &second, &third] {
        assert_eq!(
            cells(row(&table, id))[..5],
            [id.as_str(), "cli_quick", "1", "completed", "-"]
        );
    }
    let running = cli
        .run(&[
            "sagas",
            "list",
            "--state",
            "running",
            "--state",
            "compensating",
        ])
        .await
        .ok();
    assert_eq!(running, "no saga matches\n");
    let everything = cli
        .run(&["sagas", "list", "--limit", "1", "--all", "-o", "json"])
        .await
        .json();
    let mut all = ids(&everything);
    assert_eq!(all.len(), 3, "{everything}");
    assert_eq!(everything["next_cursor"], Value::Null);
    all.sort();
    let mut expected = vec![first.clone(), second.clone(), third.clone()];
    expected.sort();
    assert_eq!(all, expected);
    // Without --all, one page, and a note that there is more.
    let page = cli
        .run(&["sagas", "list", "--limit", "1"])
        .await
        .code(0)
        .stderr_has("--all");
    assert_eq!(page.stdout.lines().count(), 2, "{page:#?}");
    let page = cli
        .run(&["sagas", "list", "--limit", "2", "-o", "json"])
        .await
        .json();
    assert_eq!(ids(&page).len(), 2);
    assert!(page["next_cursor"].is_string(), "{page}");
    let none = cli
        .run(&["sagas", "list", "--definition", "cli_order", "-o", "json"])
        .await
        .json();
    assert_eq!(ids(&none), Vec::<String>::new());

    cli.run(&["sagas", "show", NOWHERE])
        .await
        .code(4)
        .stderr_has("error: Not found (404): no saga has this id");
    cli.run(&["sagas", "show", "not-a-uuid"]).await.code(2);
    cli.run(&["sagas", "list", "--limit", "501"]).await.code(2);
    worker.assert_clean();
    worker.stop().await;
}

/// The order saga's worker: `reserve` succeeds; `charge` fails when the input says
/// `"charge": "fail"`; `release` fails when it says `"release": "fail"`, or only on its first
/// attempt with `"release": "fail_once"`.
async fn order_worker(env: &Orchestrator) -> Worker {
    Worker::start(
        &env.amqp_url,
        &["cli.reserve", "cli.release", "cli.charge"],
        |cmd| {
            let input = &cmd["input"];
            let declined = Reply::Error {
                code: "card_declined",
                retryable: false,
            };
            let undo_failed = Reply::Error {
                code: "undo_failed",
                retryable: false,
            };
            match cmd["task"].as_str() {
                Some("cli.charge") if input["charge"] == "fail" => declined,
                Some("cli.release") if input["release"] == "fail" => undo_failed,
                Some("cli.release") if input["release"] == "fail_once" && cmd["attempt"] == 1 => {
                    undo_failed
                }
                _ => Reply::Ok(json!({ "ok": true })),
            }
        },
    )
    .await
}

async fn start(cli: &Sagactl, input: Value) -> String {
    let status = cli
        .run(&[
            "start",
            "cli_order",
            "--input",
            &input.to_string(),
            "-o",
            "json",
        ])
        .await
        .json();
    status["id"].as_str().expect("an id").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_find_and_repair_stuck_sagas() {
    let env = Orchestrator::start().await;
    let client = env.cli().token(CLIENT_TOKEN);
    let operator = env.cli().token(OPERATOR_TOKEN);
    let anonymous = env.cli();
    client
        .run(&["definitions", "register", &fixture("order.json")])
        .await
        .ok();
    let worker = order_worker(&env).await;

    let retried = start(&client, json!({ "charge": "fail", "release": "fail_once" })).await;
    let skipped = start(&client, json!({ "charge": "fail", "release": "fail" })).await;
    let waiting = start(&client, json!({})).await;
    let cancelled = start(&client, json!({})).await;
    for id in [&retried, &skipped] {
        env.wait_state(id, "suspended", SETTLE).await;
    }

    // `start --wait` that ends before the saga settles: its status, then exit 5.
    let run = client
        .run(&["start", "cli_order", "--input", "{}", "--wait", "300ms"])
        .await
        .code(5)
        .stdout_has("\nstate       running (revision ")
        .stderr_has("had not settled after 300ms: it is running");
    assert!(run.stdout.starts_with("started saga "), "{run:#?}");

    // --stuck finds the suspended sagas, and only them.
    let stuck = client
        .run(&["sagas", "list", "--stuck", "-o", "json"])
        .await
        .json();
    let mut found = ids(&stuck);
    found.sort();
    let mut expected = vec![retried.clone(), skipped.clone()];
    expected.sort();
    assert_eq!(found, expected, "{stuck}");
    let table = client.run(&["sagas", "list", "--stuck"]).await.ok();
    let line = cells(row(&table, &skipped));
    assert_eq!(
        line[..5],
        [skipped.as_str(), "cli_order", "1", "suspended", "STUCK"]
    );
    assert_eq!(line[6], "card_declined (charge)");
    assert!(
        line[7].starts_with("compensation of reserve failed"),
        "{table}"
    );
    assert!(line[7].ends_with('…'), "{table}");
    assert!(!table.contains(&waiting), "{table}");

    let shown = client.run(&["sagas", "show", &skipped]).await.ok();
    assert!(
        shown.contains("state       suspended (revision "),
        "{shown}"
    );
    assert!(
        shown.contains("\nstuck       yes: compensation of reserve failed after 1 attempt (undo_failed: the test said undo_failed); an operator must retry, skip or terminate\n"),
        "{shown}"
    );
    assert!(
        shown.contains("\nfailure     card_declined at step charge: the test said card_declined ("),
        "{shown}"
    );
    assert_eq!(
        cells(row(&shown, "reserve"))[..4],
        ["reserve", "-", "compensation_failed", "1"]
    );
    assert_eq!(
        cells(row(&shown, "charge")),
        [
            "charge",
            "-",
            "failed",
            "1",
            "card_declined: the test said card_declined"
        ]
    );
    assert_eq!(
        cells(row(&shown, "confirm")),
        ["confirm", "-", "pending", "0", "-"]
    );

    // Access: no token, an unknown token, a client token where an operator's is needed.
    anonymous
        .run(&["sagas", "retry", &retried])
        .await
        .code(1)
        .stderr_has("error: Unauthorized (401): this request needs `Authorization: Bearer <token>`")
        .stderr_has("hint: give a token with --token or the SAGA_TOKEN environment variable");
    anonymous
        .run(&["sagas", "list", "--token", "not-a-known-token"])
        .await
        .code(1)
        .stderr_has("error: Unauthorized (401): ")
        .stderr_has("hint: the orchestrator does not know the token given");
    client
        .run(&["sagas", "terminate", &skipped, "--reason", "give up"])
        .await
        .code(1)
        .stderr_has("error: Forbidden (403): ");
    client
        .run(&["sagas", "retry", &retried])
        .await
        .code(1)
        .stderr_has("error: Forbidden (403): ");

    // Retry: the compensation runs again, succeeds this time, the saga is compensated.
    let out = operator
        .run(&["sagas", "retry", &retried, "--reason", "database is back"])
        .await
        .ok();
    assert!(
        out.starts_with(&format!(
            "retrying the failed compensation of saga {retried}: it is "
        )),
        "{out}"
    );
    env.wait_state(&retried, "compensated", SETTLE).await;
    assert_eq!(
        worker
            .of_saga(&retried)
            .into_iter()
            .filter(|(task, _, _)| task == "cli.release")
            .map(|(_, _, attempt)| attempt)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let shown = operator.run(&["sagas", "show", &retried]).await.ok();
    let retry_row = cells(
        shown
            .lines()
            .find(|l| l.contains("operator_retry"))
            .unwrap_or_else(|| panic!("no operator_retry in\n{shown}")),
    );
    assert_eq!(retry_row[1], "operator_retry");
    assert!(retry_row.contains(&"database is back"), "{shown}");
    assert!(retry_row.contains(&"ops"), "{shown}");
    assert_eq!(
        cells(row(&shown, "reserve"))[..3],
        ["reserve", "-", "compensated"]
    );
    // Not suspended any more: 409.
    operator
        .run(&["sagas", "retry", &retried])
        .await
        .code(1)
        .stderr_has("error: Conflict (409): ");

    // Skip: a reason is required, by the CLI and by the API.
    operator.run(&["sagas", "skip", &skipped]).await.code(2);
    operator
        .run(&["sagas", "skip", &skipped, "--reason", " "])
        .await
        .code(1)
        .stderr_has("error: Invalid request (422): ")
        .stderr_has("\n  /reason: ");
    let out = operator
        .run(&[
            "sagas",
            "skip",
            &skipped,
            "--reason",
            "released by hand",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(out["id"], skipped.as_str());
    let status = env.wait_state(&skipped, "compensated", SETTLE).await;
    assert_eq!(status["steps"][0]["state"], "skipped", "{status:#}");
    operator
        .run(&["sagas", "skip", &skipped, "--reason", "again"])
        .await
        .code(1)
        .stderr_has("error: Conflict (409): ");

    // Terminate a running saga (the token on the command line this time), then again: 409.
    env.wait_state(&waiting, "running", SETTLE).await;
    let out = anonymous
        .run(&[
            "sagas",
            "terminate",
            &waiting,
            "--reason",
            "customer gone",
            "--token",
            OPERATOR_TOKEN,
        ])
        .await
        .ok();
    assert!(
        out.starts_with(&format!(
            "terminated saga {waiting}: it is terminated (revision "
        )),
        "{out}"
    );
    operator
        .run(&["sagas", "terminate", &waiting, "--reason", "again"])
        .await
        .code(1)
        .stderr_has("error: Conflict (409): ");

    // Cancel (a client may): the saga compensates what it did.
    let out = client
        .run(&["sagas", "cancel", &cancelled, "--reason", "changed my mind"])
        .await
        .ok();
    assert!(
        out.starts_with(&format!("cancelled saga {cancelled}: it is ")),
        "{out}"
    );
    let status = env.wait_state(&cancelled, "compensated", SETTLE).await;
    assert_eq!(status["failure"]["code"], "cancelled", "{status:#}");
    client
        .run(&["sagas", "cancel", &cancelled])
        .await
        .code(1)
        .stderr_has("error: Conflict (409): ");

    // Unknown sagas: 404, exit 4.
    operator.run(&["sagas", "retry", NOWHERE]).await.code(4);
    operator
        .run(&["sagas", "skip", NOWHERE, "--reason", "x"])
        .await
        .code(4);
    operator
        .run(&["sagas", "terminate", NOWHERE, "--reason", "x"])
        .await
        .code(4)
        .stderr_has("error: Not found (404): no saga has this id");

    let stuck = client
        .run(&["sagas", "list", "--stuck", "-o", "json"])
        .await
        .json();
    assert_eq!(ids(&stuck), Vec::<String>::new());
    worker.assert_clean();
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_is_down_or_failing_exits_3() {
    // Nothing listens: connection refused.
    let down = Sagactl::new(&format!("http://127.0.0.1:{}", closed_port()));
    down.run(&["sagas", "list"])
        .await
        .code(3)
        .stderr_has("error: cannot reach the orchestrator at http://127.0.0.1:");
    down.token(OPERATOR_TOKEN)
        .run(&["sagas", "terminate", NOWHERE, "--reason", "x"])
        .await
        .code(3);

    // An orchestrator that stopped.
    let mut env = Orchestrator::start().await;
    let cli = env.cli().token(CLIENT_TOKEN);
    cli.run(&["definitions", "list"]).await.ok();
    env.stop().await;
    cli.run(&["definitions", "list"])
        .await
        .code(3)
        .stderr_has("cannot reach the orchestrator");

    // A server that answers 503 with a problem.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0; 8192];
            let _ = socket.read(&mut buf).await;
            let body = r#"{"type":"urn:saga:problem:unavailable","title":"Service unavailable","status":503,"detail":"the database is unavailable"}"#;
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 5\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    Sagactl::new(&format!("http://{addr}"))
        .run(&["sagas", "show", NOWHERE])
        .await
        .code(3)
        .stderr_has("error: Service unavailable (503): the database is unavailable");
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2_and_help_documents_the_exit_codes() {
    let cli = Sagactl::new(&format!("http://127.0.0.1:{}", closed_port()));
    let help = cli.run(&["--help"]).await.ok();
    for line in [
        "Exit codes:",
        "  0  done",
        "  1  the API refused the request",
        "  2  usage error",
        "  3  the server failed (5xx) or could not be reached",
        "  4  not found (404)",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }
    cli.run(&["sagas"]).await.code(2);
    cli.run(&["sagas", "frobnicate"]).await.code(2);
    cli.run(&["sagas", "list", "--state", "sleeping"])
        .await
        .code(2);
    cli.run(&["sagas", "terminate", NOWHERE]).await.code(2);
    cli.run(&["sagas", "list", "--url", "localhost:8080"])
        .await
        .code(2);
    cli.run(&["start", "cli_quick"]).await.code(2);
    cli.run(&["start", "cli_quick", "--input", "{}", "--wait", "soon"])
        .await
        .code(2);
    cli.run(&[
        "start",
        "x",
        "--input",
        "{}",
        "--idempotency-key",
        "has space",
    ])
    .await
    .code(2);
    // A malformed token is refused without being echoed.
    let run = cli
        .run(&["sagas", "list", "--token", "secret with spaces"])
        .await
        .code(2);
    assert!(!run.stderr.contains("secret with spaces"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_act_in_bulk_and_see_the_task_queues() {
    let env = Orchestrator::start().await;
    let client = env.cli().token(CLIENT_TOKEN);
    let operator = env.cli().token(OPERATOR_TOKEN);
    client
        .run(&["definitions", "register", &fixture("order.json")])
        .await
        .ok();
    let worker = order_worker(&env).await;
    let older = start(&client, json!({ "charge": "fail", "release": "fail_once" })).await;
    let newer = start(&client, json!({ "charge": "fail", "release": "fail_once" })).await;
    for id in [&older, &newer] {
        env.wait_state(id, "suspended", SETTLE).await;
    }

    // The task queues, with the worker attached to each.
    let table = client.run(&["queues"]).await.ok();
    assert_eq!(
        cells(row(&table, "saga.task.cli.release")),
        ["saga.task.cli.release", "0", "1", "-"],
        "{table}"
    );
    let listed = client.run(&["queues", "-o", "json"]).await.json();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );

    // Bulk actions are an operator's.
    client
        .run(&["bulk", "retry", "--stuck", "--dry-run"])
        .await
        .code(1)
        .stderr_has("error: Forbidden (403): ");
    // A dry run lists both and changes nothing.
    let out = operator
        .run(&["bulk", "retry", "--stuck", "--dry-run"])
        .await
        .ok();
    assert!(
        out.starts_with("dry run: 2 sagas match; 2 would be retried by this call\n"),
        "{out}"
    );
    assert_eq!(
        cells(row(&out, &newer))[..4],
        [newer.as_str(), "cli_order", "suspended", "selected"]
    );
    env.wait_state(&older, "suspended", SETTLE).await;
    // One at a time, newest first.
    let first = operator
        .run(&[
            "bulk",
            "retry",
            "--stuck",
            "--limit",
            "1",
            "--reason",
            "the database is back",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(first["matched"], 2, "{first}");
    assert_eq!(first["remaining"], 1, "{first}");
    assert_eq!(first["items"][0]["id"], newer.as_str(), "{first}");
    assert_eq!(first["items"][0]["outcome"], "applied", "{first}");
    env.wait_state(&newer, "compensated", SETTLE).await;
    let out = operator
        .run(&["bulk", "retry", "--state", "suspended", "--reason", "same"])
        .await
        .ok();
    assert!(out.starts_with("retried 1 of 1 matching sagas\n"), "{out}");
    env.wait_state(&older, "compensated", SETTLE).await;
    let shown = operator.run(&["sagas", "show", &older]).await.ok();
    assert!(
        shown
            .lines()
            .any(|l| l.contains("operator_retry") && l.contains("ops") && l.contains("same")),
        "{shown}"
    );

    // Terminate needs a reason (the CLI says so before the API would), then ends what runs.
    operator
        .run(&["bulk", "terminate", "--definition", "cli_order"])
        .await
        .code(2);
    let waiting = start(&client, json!({})).await;
    env.wait_state(&waiting, "running", SETTLE).await;
    let out = operator
        .run(&[
            "bulk",
            "terminate",
            "--definition",
            "cli_order",
            "--reason",
            "closing the shop",
        ])
        .await
        .ok();
    assert!(
        out.starts_with("terminated 1 of 1 matching sagas\n"),
        "{out}"
    );
    env.wait_state(&waiting, "terminated", SETTLE).await;
    operator
        .run(&["bulk", "retry", "--updated-before", "yesterday"])
        .await
        .code(2);
    worker.assert_clean();
    worker.stop().await;
}
