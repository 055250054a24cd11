//! The REST client: builds URLs under the base URL (path segments percent-encoded), sends the
//! bearer token, and turns every answer that is not a success into a [`CliError`] with the API's
//! problem in it. Bodies are kept as text: `--output json` prints them as they came.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use crate::cli::Token;
use crate::error::{CliError, Problem};

/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What a long poll may take beyond the wait it asks for.
const LONG_POLL_GRACE: Duration = Duration::from_secs(15);
/// The server treats a longer wait as this (PROTOCOL §2).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<Token>,
}

/// A success answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
    /// The URL asked, for error messages.
    pub url: Url,
}

impl Answer {
    /// The body as `T`; a body of another shape means we are not talking to the API we know.
    pub fn parse<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, CliError> {
        serde_json::from_str(&self.body).map_err(|e| CliError::UnexpectedAnswer {
            url: self.url.to_string(),
            detail: e.to_string(),
        })
    }
}

/// A request body: JSON bytes (sent as they are) and the extra headers.
#[derive(Debug, Default)]
pub struct Body {
    pub json: Vec<u8>,
    pub idempotency_key: Option<String>,
}

impl Client {
    pub fn new(base: Url, token: Option<Token>) -> Result<Client, CliError> {
        if let Some(t) = &token {
            t.check().map_err(CliError::Input)?;
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("sagactl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Input(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client { http, base, token })
    }

    /// The URL of `segments` under the base URL (each segment percent-encoded), with `query`.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        // The base URL was checked to be an http(s) URL with a path (`cli::parse_base_url`), so
        // `path_segments_mut` cannot fail; if it did, the request would go to the base URL and
        // get the API's 404.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Answer, CliError> {
        self.send(
            Method::GET,
            self.url(segments, query),
            None,
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn post(&self, segments: &[&str], body: Body) -> Result<Answer, CliError> {
        self.send(
            Method::POST,
            self.url(segments, &[]),
            Some(body),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// `GET /v1/sagas/{id}?wait=`: answers when the saga is terminal or suspended, or after `wait`
    /// (at most [`MAX_WAIT`]).
    pub async fn long_poll(&self, id: &str, wait: Duration) -> Result<Answer, CliError> {
        let wait = wait.min(MAX_WAIT);
        let ms = wait.as_millis().to_string() + "ms";
        let url = self.url(&["v1", "sagas", id], &[("wait", &ms)]);
        self.send(Method::GET, url, None, wait + LONG_POLL_GRACE)
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Body>,
        timeout: Duration,
    ) -> Result<Answer, CliError> {
        let mut request = self.http.request(method, url.clone()).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.secret());
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body.json);
            if let Some(key) = body.idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            return Ok(Answer { status, body, url });
        }
        let mut problem = Problem::from_body(status.as_u16(), status.canonical_reason(), &body);
        if status == StatusCode::UNAUTHORIZED {
            problem.hint = Some(match self.token {
                None => "give a token with --token or the SAGA_TOKEN environment variable".into(),
                Some(_) => "the orchestrator does not know the token given".into(),
            });
        } else if status == StatusCode::FORBIDDEN {
            problem.hint = Some("retry, skip, terminate and bulk need an operator token".into());
        }
        Err(CliError::Api(problem))
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let cause = if e.is_timeout() {
            "no answer in time".to_owned()
        } else {
            causes(e)
        };
        CliError::Unreachable {
            url: self.base.to_string(),
            cause,
        }
    }
}

/// The chain of causes under reqwest's own "error sending request for url (…)", which says less
/// than its sources (`tcp connect error: Connection refused (os error 111)`).
fn causes(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        let url = Url::parse(base).expect("url");
        Client::new(url, None).expect("client")
    }

    #[test]
    fn urls_encode_segments_and_keep_a_prefix() {
        let c = client("http://127.0.0.1:8080");
        assert_eq!(
            c.url(&["v1", "definitions", "a b/c"], &[]).as_str(),
            "http://127.0.0.1:8080/v1/definitions/a%20b%2Fc"
        );
        let c = client("https://ops.example/saga/");
        assert_eq!(
            c.url(
                &["v1", "sagas"],
                &[("state", "running"), ("state", "suspended")]
            )
            .as_str(),
            "https://ops.example/saga/v1/sagas?state=running&state=suspended"
        );
    }
}
