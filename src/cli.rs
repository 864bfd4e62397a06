//! The commands of the README's "Commands" section, as library functions the binary calls.
//!
//! Each returns a [`CliError`] whose kind decides the exit status: 2 for bad usage or bad
//! configuration, 1 for a failure at run time. [`args`] defines the command line the binary
//! parses; [`docs`] generates the man page and the shell completions from it.

pub mod args;
pub mod docs;

use args::ConfigFile;

use crate::config::{Config, ConfigError};
use crate::investigate::{self as inv, DayRange, Settings, Summary, Target};
use crate::server;

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
        .map_err(|e| {
            // Start-up problems that an operator fixes in the config exit with 2.
            if e.is::<ConfigError>()
                || e.is::<server::tls::TlsError>()
                || e.is::<crate::privacy::geo::GeoError>()
            {
                CliError::Config(e.to_string())
            } else {
                CliError::Runtime(e)
            }
        })
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

/// Which client `investigate` looks for: exactly one of `--ip` and `--client`.
pub enum Who<'a> {
    /// `--ip ADDR`
    Ip(&'a str),
    /// `--client PSEUDONYM`
    Client(&'a str),
}

fn load_settings(file: &ConfigFile) -> Result<Settings, CliError> {
    let config = load(file)?;
    Ok(Settings::from_config(&config))
}

/// Writes the audit line; a command whose audit cannot be written fails.
fn audit(settings: &Settings, command: &str, summary: &Summary, ok: bool) -> Result<(), CliError> {
    let line = inv::audit_line(command, summary, ok);
    inv::append_audit(&settings.log_dir, settings.log_retention_days, &line).map_err(|e| {
        CliError::Runtime(anyhow::Error::new(e).context(format!(
            "writing the audit trail {}",
            settings.log_dir.join(inv::AUDIT_FILE).display()
        )))
    })
}

/// `investigate [--config FILE] (--ip ADDR | --client PSEUDONYM) [--since DAY] [--until DAY]`:
/// the client's records on stdout as stored, a summary on stderr, a line in the audit trail.
pub fn investigate(
    file: &ConfigFile,
    who: Who<'_>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(), CliError> {
    let target = match who {
        Who::Ip(s) => Target::parse_ip(s),
        Who::Client(s) => Target::parse_client(s),
    }
    .map_err(CliError::Config)?;
    let range = DayRange::parse(since, until).map_err(CliError::Config)?;
    let settings = load_settings(file)?;
    let mut summary = Summary::default();
    let stdout = std::io::stdout();
    let out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let result = inv::investigate(&settings, &target, range, out, &mut summary);
    eprint!("{}", summary.render("investigate"));
    audit(&settings, "investigate", &summary, result.is_ok())?;
    result.map_err(CliError::Runtime)
}

/// `erase [--config FILE] --ip ADDR [--since DAY] [--until DAY]`: removes the client's records
/// from the day files, safely while the proxy runs; a summary on stderr, a line in the audit
/// trail.
pub fn erase(
    file: &ConfigFile,
    ip: &str,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(), CliError> {
    let target = Target::parse_ip(ip).map_err(CliError::Config)?;
    let range = DayRange::parse(since, until).map_err(CliError::Config)?;
    let settings = load_settings(file)?;
    let mut summary = Summary::default();
    let result = inv::erase(&settings, &target, range, &mut summary);
    eprint!("{}", summary.render("erase"));
    audit(&settings, "erase", &summary, result.is_ok())?;
    result.map_err(CliError::Runtime)
}

/// `keys [--config FILE]`: one `YYYY-MM-DD kept|derivable|destroyed` line per epoch on stdout,
/// a summary on stderr.
pub fn keys(file: &ConfigFile) -> Result<(), CliError> {
    let settings = load_settings(file)?;
    let (lines, summary) = inv::keys_report(&settings).map_err(CliError::Runtime)?;
    print_stdout(lines.as_bytes())?;
    eprint!("{summary}");
    Ok(())
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
