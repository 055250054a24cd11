//! Logs: human-readable by default, JSON with `LOG_FORMAT=json`, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    // lapin logs returned messages with their bodies at warn; our bus logs what matters itself.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
