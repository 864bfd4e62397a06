//! The command line's definitions: every subcommand, option and help text, as clap types.
//!
//! The binary parses the process's arguments with them ([`Args::parse_env`]) and
//! [`super::docs`] renders the man page and the shell completions from the same [`Args`], so a
//! new option is parsed, completed and documented at once. This module owns no behaviour (what
//! each command does is in [`crate::cli`]) and never reads a file or the environment.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgGroup, CommandFactory, FromArgMatches, Parser, Subcommand, ValueHint};

/// The configuration file read when `--config` is absent.
pub const DEFAULT_CONFIG: &str = "/etc/webprom-edge/config.toml";

/// A privacy-aware, TLS-terminating reverse proxy.
///
/// webprom-edge terminates TLS (HTTP/1.1 and HTTP/2), forwards each request to an upstream
/// server, and records only allowed, truncated or pseudonymised facts about it: one JSON line
/// per request in a day file of the access log, never a raw client address, User-Agent, cookie,
/// query or header value. It rate-limits clients and exports Prometheus metrics that carry no
/// personal detail.
///
/// Every command reads the TOML configuration file given with --config, or
/// /etc/webprom-edge/config.toml without it. The configuration names the TLS certificates, the
/// upstream servers, the state directory of the daily pseudonym keys (privacy.key_dir) and the
/// log directory (access_log.dir).
#[derive(Debug, Parser)]
#[command(name = "webprom-edge", version)]
pub struct Args {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// `--config FILE`, taken by every command that reads the configuration.
#[derive(Debug, clap::Args)]
pub struct ConfigFile {
    /// The TOML configuration file.
    #[arg(
        id = "config",
        long = "config",
        value_name = "FILE",
        value_hint = ValueHint::FilePath,
        default_value = DEFAULT_CONFIG
    )]
    pub path: PathBuf,
    /// Whether `--config` was absent, so that `path` is [`DEFAULT_CONFIG`]: set by
    /// [`Args::parse_env`] from where clap took the value.
    #[arg(skip)]
    pub is_default: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve until SIGTERM/SIGINT (graceful drain); SIGHUP reloads the configuration.
    ///
    /// Serve until SIGTERM/SIGINT, then stop accepting and let in-flight requests finish for up
    /// to server.shutdown_grace. SIGHUP reads the configuration file again and applies what can
    /// change without a restart (server.hosts, tls.*, geoip.*, rate_limit.*); a changed key that
    /// needs a restart is named in a warning.
    Run {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Validate the configuration and print the effective configuration.
    ///
    /// Validate the configuration and every file and directory it names, exactly as run does
    /// before it writes anything, and print the effective configuration as TOML on stdout.
    /// Writes nothing.
    CheckConfig {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print the records of one client (JSON Lines on stdout, a summary on stderr).
    ///
    /// Print the access-log records of one client as stored (JSON Lines on stdout) and a summary
    /// on stderr; the search is written to the audit trail (audit.jsonl in access_log.dir).
    #[command(group(ArgGroup::new("who").required(true).args(["ip", "client"])))]
    Investigate {
        #[command(flatten)]
        config: ConfigFile,
        /// The client's address: its pseudonym is computed for each day with that day's key.
        #[arg(long, value_name = "ADDR", value_hint = ValueHint::Other)]
        ip: Option<String>,
        /// A pseudonym, as it appears in the `client` field (base64url: it may begin with `-`).
        #[arg(long, allow_hyphen_values = true, value_name = "PSEUDONYM", value_hint = ValueHint::Other)]
        client: Option<String>,
        /// First UTC day searched (inclusive), YYYY-MM-DD.
        #[arg(long, value_name = "DAY", value_hint = ValueHint::Other)]
        since: Option<String>,
        /// Last UTC day searched (inclusive), YYYY-MM-DD.
        #[arg(long, value_name = "DAY", value_hint = ValueHint::Other)]
        until: Option<String>,
        /// A log directory to search instead of access_log.dir; repeat it for several (e.g.
        /// the per-node folders of a fleet's archive). Each must exist.
        #[arg(long = "logs", value_name = "DIR", value_hint = ValueHint::DirPath)]
        logs: Vec<PathBuf>,
    },
    /// Remove every record of one client from the day files (safe while the proxy runs).
    ///
    /// Remove every record of one client from the day files, safely while the proxy runs; a
    /// summary on stderr, and a line in the audit trail (audit.jsonl in access_log.dir).
    Erase {
        #[command(flatten)]
        config: ConfigFile,
        /// The client's address: its pseudonym is computed for each day with that day's key.
        #[arg(long, value_name = "ADDR", value_hint = ValueHint::Other)]
        ip: String,
        /// First UTC day searched (inclusive), YYYY-MM-DD.
        #[arg(long, value_name = "DAY", value_hint = ValueHint::Other)]
        since: Option<String>,
        /// Last UTC day searched (inclusive), YYYY-MM-DD.
        #[arg(long, value_name = "DAY", value_hint = ValueHint::Other)]
        until: Option<String>,
        /// A log directory to search instead of access_log.dir; repeat it for several (e.g.
        /// the per-node folders of a fleet's archive). Each must exist.
        #[arg(long = "logs", value_name = "DIR", value_hint = ValueHint::DirPath)]
        logs: Vec<PathBuf>,
    },
    /// List the key epochs kept, derivable and destroyed.
    ///
    /// List the pseudonym key epochs: one "YYYY-MM-DD kept|derivable|destroyed" line per UTC day
    /// on stdout, a summary on stderr.
    Keys {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// List the certificates served: name, source, issuer, not-after, next renewal.
    ///
    /// List every certificate the proxy serves, as the configuration and the ACME storage
    /// (acme.storage) hold them on disk: the default certificate, each tls.sni host and each
    /// acme.domains name, with its source (file, self-signed, acme), issuer, not-after time
    /// and, for ACME, the next renewal. Reads only: no network, nothing written. Exit status 1
    /// when a certificate cannot be read (its row says why).
    Certs {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print the completion script for SHELL on stdout.
    ///
    /// Print the completion script for SHELL on stdout, generated from the same definitions as
    /// the command line. Installed where each shell looks by default:
    ///
    /// webprom-edge completions bash > /usr/local/share/bash-completion/completions/webprom-edge
    ///
    /// webprom-edge completions zsh > /usr/local/share/zsh/site-functions/_webprom-edge
    ///
    /// webprom-edge completions fish > /usr/share/fish/vendor_completions.d/webprom-edge.fish
    Completions {
        /// The shell the script is for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    ///
    /// Print the man page webprom-edge(1), in roff, on stdout, generated from the same
    /// definitions as the command line. Installed where man looks by default:
    ///
    /// webprom-edge man > /usr/local/share/man/man1/webprom-edge.1
    Man,
}

impl Command {
    /// The `--config` of a command that reads the configuration; `None` for `completions` and
    /// `man`.
    pub fn config_file_mut(&mut self) -> Option<&mut ConfigFile> {
        match self {
            Command::Run { config }
            | Command::CheckConfig { config }
            | Command::Investigate { config, .. }
            | Command::Erase { config, .. }
            | Command::Keys { config }
            | Command::Certs { config } => Some(config),
            Command::Completions { .. } | Command::Man => None,
        }
    }
}

impl Args {
    /// The process's arguments, parsed. Bad usage prints the error and the usage on stderr and
    /// exits with status 2; `--help` and `--version` print on stdout and exit 0.
    pub fn parse_env() -> Args {
        let matches = Args::command().get_matches();
        let mut args = match Args::from_arg_matches(&matches) {
            Ok(args) => args,
            Err(e) => e.format(&mut Args::command()).exit(),
        };
        if let (Some((_, sub)), Some(config)) =
            (matches.subcommand(), args.command.config_file_mut())
        {
            config.is_default = sub.value_source("config") == Some(ValueSource::DefaultValue);
        }
        args
    }
}
