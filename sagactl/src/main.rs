//! `sagactl`: the operator CLI of the saga orchestrator. It talks only to the REST API
//! (PROTOCOL.md §2); see `sagactl --help` and the crate's README for the commands and exit codes.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod commands;
mod error;
mod model;
mod render;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::error::exit;

fn main() -> ExitCode {
    // Usage errors exit with 2 here, `--help` and `--version` with 0.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
