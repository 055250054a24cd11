//! Turning any error into a [`StepError`] with `?`, and the errors of building a worker.

use std::fmt::Display;

use saga_wire::StepError;
use thiserror::Error;

/// `?` for handlers: maps the error of a `Result` to a [`StepError`] with a code, keeping the
/// error's text as the message.
///
/// ```
/// use saga_worker::{ResultExt, StepError};
///
/// fn parse_amount(s: &str) -> Result<u64, StepError> {
///     let amount = s.parse::<u64>().permanent("invalid_amount")?;
///     Ok(amount)
/// }
/// assert_eq!(parse_amount("x").unwrap_err().code, "invalid_amount");
/// ```
pub trait ResultExt<T> {
    /// An error retrying cannot fix (the step ends; a compensation suspends the saga).
    fn permanent(self, code: &str) -> Result<T, StepError>;
    /// An error worth another attempt (a timeout, a service that is down).
    fn retryable(self, code: &str) -> Result<T, StepError>;
}

impl<T, E: Display> ResultExt<T> for Result<T, E> {
    fn permanent(self, code: &str) -> Result<T, StepError> {
        self.map_err(|e| StepError::permanent(code, e.to_string()))
    }

    fn retryable(self, code: &str) -> Result<T, StepError> {
        self.map_err(|e| StepError::retryable(code, e.to_string()))
    }
}

/// A worker that cannot be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the worker has no handler: register at least one with `handle`")]
    NoHandlers,
    #[error("two handlers for task `{0}`")]
    DuplicateTask(String),
    #[error("`{0}` is not a task name (^[a-z][a-z0-9_.-]{{0,127}}$)")]
    InvalidTaskName(String),
    /// The AMQP URL does not parse (the URL itself is not repeated: it may hold a password).
    #[error("the AMQP URL does not parse: {0}")]
    InvalidUrl(String),
}
