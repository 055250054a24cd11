//! Configuration from the environment (PROTOCOL.md §5), with defaults that work on a machine with
//! local PostgreSQL and RabbitMQ and no setup. Flags mirror the variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("SAGA_API_TOKENS: `{0}` is not `name:role:token` with role client or operator")]
    Token(String),
    #[error("SAGA_MAX_BODY: `{0}` is not a size such as `1MiB`, `512KiB` or `65536`")]
    Size(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Client,
    Operator,
}

/// An API token. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub secret: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "orchestrator",
    about = "Saga orchestrator: durable sagas over PostgreSQL and RabbitMQ"
)]
pub struct Args {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/saga"
    )]
    pub database_url: String,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    #[arg(long, env = "SAGA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Comma-separated `name:role:token`, role `client` or `operator`.
    #[arg(
        long,
        env = "SAGA_API_TOKENS",
        default_value = "",
        hide_env_values = true
    )]
    pub api_tokens: String,
    #[arg(long, env = "SAGA_MAX_BODY", default_value = "1MiB")]
    pub max_body: String,
    #[arg(long, env = "SAGA_STUCK_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub stuck_after: Duration,
    /// Postgres connections in the pool.
    #[arg(long, env = "SAGA_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// Replies applied at once (and the reply consumer's prefetch).
    #[arg(long, env = "SAGA_REPLY_CONCURRENCY", default_value_t = 256)]
    pub reply_concurrency: u16,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub amqp_url: String,
    pub listen: SocketAddr,
    pub api_tokens: Vec<ApiToken>,
    pub max_body: usize,
    pub stuck_after: Duration,
    pub db_pool: u32,
    pub reply_concurrency: u16,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        Ok(Config {
            api_tokens: parse_tokens(&args.api_tokens)?,
            max_body: parse_size(&args.max_body)?,
            database_url: args.database_url,
            amqp_url: args.amqp_url,
            listen: args.listen,
            stuck_after: args.stuck_after,
            db_pool: args.db_pool,
            reply_concurrency: args.reply_concurrency.max(1),
        })
    }

    /// The configuration the environment gives, as `main` reads it.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_args(Args::parse())
    }
}

fn parse_tokens(s: &str) -> Result<Vec<ApiToken>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let mut parts = t.splitn(3, ':');
            let (Some(name), Some(role), Some(secret)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(ConfigError::Token(redact(t)));
            };
            let role = match role {
                "client" => Role::Client,
                "operator" => Role::Operator,
                _ => return Err(ConfigError::Token(redact(t))),
            };
            if name.is_empty() || secret.is_empty() {
                return Err(ConfigError::Token(redact(t)));
            }
            Ok(ApiToken {
                name: name.to_owned(),
                role,
                secret: secret.to_owned(),
            })
        })
        .collect()
}

/// A token entry with its secret hidden, for error messages.
fn redact(entry: &str) -> String {
    let mut parts: Vec<&str> = entry.splitn(3, ':').collect();
    if parts.len() == 3 {
        parts[2] = "***";
    }
    parts.join(":")
}

fn parse_size(s: &str) -> Result<usize, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| ConfigError::Size(s.to_owned()))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(ConfigError::Size(s.to_owned())),
    };
    n.checked_mul(factor)
        .ok_or_else(|| ConfigError::Size(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_never_leak() {
        let t = parse_tokens("ci:client:abc, ops:operator:x:y").expect("valid");
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].secret, "x:y");
        assert_eq!(t[1].role, Role::Operator);
        assert!(!format!("{t:?}").contains("abc"));
        let err = parse_tokens("ci:admin:supersecret").expect_err("bad role");
        assert!(!err.to_string().contains("supersecret"));
        assert!(parse_tokens("").expect("empty").is_empty());
        assert!(parse_tokens("nocolons").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1MiB").ok(), Some(1 << 20));
        assert_eq!(parse_size("512KiB").ok(), Some(512 << 10));
        assert_eq!(parse_size("65536").ok(), Some(65536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1PiB").is_err());
    }
}
