//! The command line: parse arguments, call the library, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use webprom_edge::cli;

/// A privacy-aware, TLS-terminating reverse proxy.
#[derive(Parser)]
#[command(name = "webprom-edge", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT (graceful drain); SIGHUP reloads certificates.
    Run {
        /// The TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate the configuration and print the effective configuration.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let result = match args.command {
        Command::Run { config } => cli::run(&config),
        Command::CheckConfig { config } => cli::check_config(&config).map(|text| print!("{text}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webprom-edge: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEBPROM_EDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
