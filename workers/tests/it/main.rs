//! The worker SDK against the real RabbitMQ and PostgreSQL; see `env` for the setup.

#[cfg(feature = "postgres")]
mod db;
mod env;
#[cfg(feature = "postgres")]
mod idempotency;
mod worker;
