//! What can go wrong, and the exit code each kind of failure gives (documented in `--help` and
//! the README; scripts rely on them).

use std::fmt;

use thiserror::Error;

/// The exit codes of `sagactl`.
pub mod exit {
    pub const OK: u8 = 0;
    /// The API refused the request (4xx other than 404).
    pub const REFUSED: u8 = 1;
    /// The command line is wrong (clap exits with this too), or a local input is not JSON.
    pub const USAGE: u8 = 2;
    /// The server failed (5xx) or could not be reached, or answered something that is not the API.
    pub const UNAVAILABLE: u8 = 3;
    /// 404: no such saga or definition.
    pub const NOT_FOUND: u8 = 4;
    /// `start --wait`: the saga had not settled when the wait ended.
    pub const NOT_SETTLED: u8 = 5;
}

#[derive(Debug, Error)]
pub enum CliError {
    /// The API answered with an error status.
    #[error("{0}")]
    Api(#[from] Problem),
    #[error("cannot reach the orchestrator at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// A success status with a body that is not what the API documents.
    #[error("the answer from {url} is not what the API documents: {detail}")]
    UnexpectedAnswer { url: String, detail: String },
    /// A local input (a file, standard input) that cannot be used.
    #[error("{0}")]
    Input(String),
    #[error("saga {id} had not settled after {waited}: it is {state}")]
    NotSettled {
        id: String,
        waited: String,
        state: String,
    },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api(p) => match p.status {
                404 => exit::NOT_FOUND,
                400..=499 => exit::REFUSED,
                _ => exit::UNAVAILABLE,
            },
            CliError::Unreachable { .. } | CliError::UnexpectedAnswer { .. } => exit::UNAVAILABLE,
            CliError::Input(_) => exit::USAGE,
            CliError::NotSettled { .. } => exit::NOT_SETTLED,
        }
    }
}

/// An error answer: an RFC 9457 problem as the API sends it, or what could be made of another body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub title: String,
    pub detail: String,
    /// `errors[]` of a validation problem: `(pointer, detail)`.
    pub errors: Vec<(String, String)>,
    /// A line of advice for the operator (e.g. how to give a token), never from the server.
    pub hint: Option<String>,
}

impl Problem {
    /// Reads an error answer's body: problem+json when it is one, else the status's reason and
    /// the start of the body.
    pub fn from_body(status: u16, reason: Option<&str>, body: &str) -> Problem {
        let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let text =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        match parsed {
            Some(v) if v.get("title").is_some() || v.get("detail").is_some() => Problem {
                status,
                title: text(&v, "title").unwrap_or_else(|| reason.unwrap_or("Error").to_owned()),
                detail: text(&v, "detail").unwrap_or_default(),
                errors: v
                    .get("errors")
                    .and_then(|e| e.as_array())
                    .map(|items| {
                        items
                            .iter()
                            .map(|e| {
                                (
                                    text(e, "pointer").unwrap_or_default(),
                                    text(e, "detail").unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                hint: None,
            },
            _ => Problem {
                status,
                title: reason.unwrap_or("Error").to_owned(),
                detail: excerpt(body),
                errors: Vec::new(),
                hint: None,
            },
        }
    }
}

impl std::error::Error for Problem {}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", one_line(&self.title), self.status)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", one_line(&self.detail))?;
        }
        for (pointer, detail) in &self.errors {
            let at = if pointer.is_empty() {
                "(the whole body)"
            } else {
                pointer
            };
            write!(f, "\n  {}: {}", one_line(at), one_line(detail))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

/// The first line of a body that is not a problem, shortened: enough to recognise a proxy's
/// error page without flooding the terminal.
fn excerpt(body: &str) -> String {
    let line = body.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        None => "(no body)".to_owned(),
        Some(l) if l.chars().count() > 200 => {
            format!("{}…", l.chars().take(200).collect::<String>())
        }
        Some(l) => l.to_owned(),
    }
}

/// Text from the server on one line: control characters (a newline in a detail) cannot break the
/// `error:` line or forge another.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_problem_prints_its_pointers() {
        let body = r#"{"type":"urn:saga:problem:validation","title":"Invalid request","status":422,
            "detail":"the request has 2 errors; see `errors`",
            "errors":[{"pointer":"/steps/0/timeout","detail":"must be greater than zero"},
                      {"pointer":"","detail":"not an object"}]}"#;
        let p = Problem::from_body(422, Some("Unprocessable Entity"), body);
        assert_eq!(
            p.to_string(),
            "Invalid request (422): the request has 2 errors; see `errors`\n  /steps/0/timeout: must be greater than zero\n  (the whole body): not an object"
        );
        assert_eq!(CliError::Api(p).exit_code(), exit::REFUSED);
    }

    #[test]
    fn other_bodies_are_shortened() {
        let p = Problem::from_body(502, Some("Bad Gateway"), "\n<html>bad gateway</html>\nmore");
        assert_eq!(p.to_string(), "Bad Gateway (502): <html>bad gateway</html>");
        assert_eq!(CliError::Api(p).exit_code(), exit::UNAVAILABLE);
        let p = Problem::from_body(404, None, "");
        assert_eq!(p.to_string(), "Error (404): (no body)");
        assert_eq!(CliError::Api(p).exit_code(), exit::NOT_FOUND);
    }

    #[test]
    fn server_text_cannot_add_lines() {
        let p = Problem::from_body(
            409,
            None,
            r#"{"title":"Conflict","detail":"a\nerror: forged"}"#,
        );
        assert_eq!(p.to_string(), "Conflict (409): a error: forged");
    }
}
