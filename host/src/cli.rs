//! The `plughost` command line.

use std::{io::IsTerminal, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Settings, SettingsArgs};

/// plughost: a web host that loads plugins as native libraries.
#[derive(Debug, Parser)]
#[command(name = "plughost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the plugin dir and serve HTTP until SIGINT/SIGTERM.
    Serve(SettingsArgs),
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PLUGHOST_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => Settings::resolve(&args)
            .map_err(anyhow::Error::from)
            .and_then(|settings| {
                actix_web::rt::System::new().block_on(crate::http::serve(settings))
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
