//! Headless Chromium driven over the DevTools protocol, for the dashboard's test: open a page,
//! evaluate JavaScript in it (to read the DOM and click), take a screenshot.
//!
//! The browser is Debian's `chromium` (`/usr/bin/chromium`, or `$CHROMIUM`), started with a
//! private profile directory and a DevTools port chosen by itself; it is killed and its profile
//! removed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a DevTools call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Browser {
    child: Child,
    profile: PathBuf,
    page: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// The browser binary: `$CHROMIUM`, else Debian's.
fn binary() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

impl Browser {
    /// Starts the browser on `url` with a window of `width`×`height`, and attaches to the page.
    pub async fn open(url: &str, width: u32, height: u32) -> Result<Browser, String> {
        let bin = binary();
        if !bin.exists() {
            return Err(format!(
                "{} not found: install Debian's chromium (`apt-get install chromium`) or set CHROMIUM",
                bin.display()
            ));
        }
        let profile = std::env::temp_dir().join(format!("saga-ui-{}", uuid::Uuid::new_v4()));
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                // Root in a container has no user namespace for the sandbox; the page is ours.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let devtools = tokio::time::timeout(CALL_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(at) = line.find("ws://") {
                    return Some(line[at..].trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or("chromium did not print its DevTools address")?;
        // Keep reading stderr so that the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = devtools
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let page_ws = page_socket(&host, url).await?;
        let (page, _) = tokio_tungstenite::connect_async(page_ws.as_str())
            .await
            .map_err(|e| format!("connect to {page_ws}: {e}"))?;
        Ok(Browser {
            child,
            profile,
            page,
            next_id: 0,
        })
    }

    /// One DevTools call on the page; its `result`.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.page
            .send(Message::text(request))
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, async {
            while let Some(message) = self.page.next().await {
                let Ok(Message::Text(text)) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                // Events (no id) and other answers are skipped.
                if value["id"] == id {
                    return Some(value);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| format!("{method}: no answer"))?;
        match answer.get("error") {
            Some(error) => Err(format!("{method}: {error}")),
            None => Ok(answer["result"].clone()),
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("`{expression}` threw: {exception}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` until it is truthy; returns that value. Panics (with `what` and
    /// the page's text) when `timeout` passes first.
    pub async fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.eval(expression).await {
                Ok(v) if !(v.is_null() || v == false || v == "" || v == 0) => return v,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                last => {
                    let text = self
                        .eval("document.body.innerText")
                        .await
                        .unwrap_or_default();
                    panic!(
                        "dashboard: not {what} within {timeout:?} (last: {last:?}); page:\n{text}"
                    );
                }
            }
        }
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) -> Result<(), String> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| format!("screenshot: {e}"))?;
        std::fs::write(path, png).map_err(|e| format!("write {}: {e}", path.display()))
    }
}

impl Drop for Browser {
    /// Kills the browser and removes its profile — once it has exited: a browser still writing
    /// its profile would leave part of it behind.
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for _ in 0..100 {
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited && std::fs::remove_dir_all(&self.profile).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The DevTools WebSocket of the page showing `url`, from `http://{host}/json/list`.
async fn page_socket(host: &str, url: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        let targets: Value = match client.get(format!("http://{host}/json/list")).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let page = targets.as_array().and_then(|ts| {
            ts.iter()
                .find(|t| {
                    t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                })
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        });
        if let Some(ws) = page {
            return Ok(ws.to_owned());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no page at {url} among the browser's targets: {targets}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
