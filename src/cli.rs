//! The commands of the README's "Commands" section, as library functions the binary calls.
//!
//! Each returns a [`CliError`] whose kind decides the exit status: 2 for bad usage or bad
//! configuration, 1 for a failure at run time. [`args`] defines the command line the binary
//! parses; [`docs`] generates the man page and the shell completions from it. `run` and
//! `check-config` are here; the commands over the access log (policy P9–P12) have a file each:
//! [`investigate`], [`erase`], [`keys`], sharing [`search`] and leaving a line in the [`audit`]
//! trail; [`certs`] lists the certificates served (policy P6). Must never print, log or audit a client address.

pub mod args;
pub mod audit;
pub mod certs;
pub mod docs;
pub mod erase;
pub mod investigate;
pub mod keys;
pub mod search;

use args::ConfigFile;

use crate::config::{Config, ConfigError};
use crate::server;
use search::Settings;

/// Why a command failed, and so which exit status it gets.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration or usage: exit status 2.
    #[error("{0}")]
    Config(String),
    /// Failure at run time: exit status 1.
    #[error("{}", causes(.0))]
    Runtime(anyhow::Error),
}

/// The error and its causes, `: `-separated, each said once: a cause whose text the message
/// already holds (an error that prints its source, wrapped) is not repeated.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Config(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Config(e.to_string())
    }
}

impl From<server::preflight::RunError> for CliError {
    /// Start-up problems that an operator fixes in the config exit with 2.
    fn from(e: server::preflight::RunError) -> Self {
        use server::preflight::RunError;
        match e {
            RunError::Config(e) => e.into(),
            RunError::Tls(e) => e.into(),
            RunError::Runtime(e) => CliError::Runtime(e),
        }
    }
}

impl From<server::tls::TlsError> for CliError {
    fn from(e: server::tls::TlsError) -> Self {
        CliError::Config(e.to_string())
    }
}

/// The configuration in `file`. A file that cannot be read is named by its path; at the default
/// path, read because `--config` was absent, the message also says to pass `--config FILE`.
fn load(file: &ConfigFile) -> Result<Config, CliError> {
    Config::load(&file.path).map_err(|e| match e {
        ConfigError::Read { .. } if file.is_default => CliError::Config(format!(
            "{e}; this is the default path, read because --config is absent: pass --config FILE"
        )),
        e => e.into(),
    })
}

/// `run [--config FILE]`: serves until SIGTERM/SIGINT.
pub fn run(file: &ConfigFile) -> Result<(), CliError> {
    let config = load(file)?;
    let workers = config.worker_threads();
    // One worker: the single-threaded scheduler does the same work without the cross-thread
    // bookkeeping (blocking work still goes to tokio's blocking pool).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder
        .thread_name("webprom-edge")
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(anyhow::Error::new(e).context("starting the runtime")))?;
    runtime
        .block_on(server::run(config, file.path.clone()))
        .map_err(CliError::from)
}

/// `check-config [--config FILE]`: validates the configuration and every file and directory it
/// names, exactly as `run` does before it writes anything, and returns the effective
/// configuration as TOML. Writes nothing.
pub fn check_config(file: &ConfigFile) -> Result<String, CliError> {
    let config = load(file)?;
    let mut notes = String::new();
    if server::preflight::will_generate_certificate(&config) {
        notes.push_str(&format!(
            "# tls.cert {} is missing: `run` will generate a self-signed certificate\n",
            config.tls.cert.display()
        ));
    }
    server::preflight::check(&config)?;
    let toml = toml::to_string_pretty(&config)
        .map_err(|e| CliError::Runtime(anyhow::Error::new(e).context("printing the config")))?;
    Ok(format!("{notes}{toml}"))
}

/// The settings of the commands over the access log, from the configuration in `file`.
fn load_settings(file: &ConfigFile) -> Result<Settings, CliError> {
    let config = load(file)?;
    Ok(Settings::from_config(&config))
}

/// Writes a command's output to stdout. A reader that stopped reading (`| head`: EPIPE) ends
/// the output quietly, as it does for other Unix tools; any other failure is a run-time error
/// (exit status 1), never a panic.
pub fn print_stdout(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Runtime(
            anyhow::Error::new(e).context("writing to stdout"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use server::preflight::RunError;

    #[test]
    fn a_failure_of_run_gets_the_exit_status_of_its_kind() {
        let tls = server::tls::TlsError::Generate {
            path: "/etc/webprom-edge/cert.pem".into(),
            reason: "read-only file system".to_owned(),
        };
        // (the failure, exit status, a part of the message)
        let rows: Vec<(RunError, i32, &str)> = vec![
            (
                ConfigError::invalid("server.listen", "cannot listen").into(),
                2,
                "server.listen",
            ),
            (tls.into(), 2, "cert.pem"),
            (
                anyhow::anyhow!("disk full")
                    .context("starting the access log")
                    .into(),
                1,
                "starting the access log: disk full",
            ),
        ];
        for (failure, status, part) in rows {
            let e = CliError::from(failure);
            assert_eq!(e.exit_code(), status, "{e}");
            assert!(e.to_string().contains(part), "{e}");
        }
    }
}
