//! The commands of SPEC §2, as library functions the binary calls.
//!
//! Each returns a [`CliError`] whose kind decides the exit status: 2 for bad usage or bad
//! configuration, 1 for a failure at run time.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::server;

/// Why a command failed, and so which exit status it gets.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration or usage: exit status 2.
    #[error("{0}")]
    Config(String),
    /// Failure at run time: exit status 1.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
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

/// `run --config FILE`: serves until SIGTERM/SIGINT.
pub fn run(config_path: &Path) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .thread_name("webprom-edge")
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(anyhow::Error::new(e).context("starting the runtime")))?;
    runtime
        .block_on(server::run(config, PathBuf::from(config_path)))
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

/// `check-config --config FILE`: validates, loads the certificates, and returns the effective
/// configuration as TOML.
pub fn check_config(config_path: &Path) -> Result<String, CliError> {
    let config = Config::load(config_path)?;
    let missing = !config.tls.cert.exists() || !config.tls.key.exists();
    let mut notes = String::new();
    if missing && config.tls.self_signed {
        notes.push_str(&format!(
            "# tls.cert {} is missing: `run` will generate a self-signed certificate\n",
            config.tls.cert.display()
        ));
        // Still check the SNI certificates, which are never generated.
        let mut sni_only = config.tls.clone();
        if let Some(first) = sni_only.sni.first().cloned() {
            sni_only.cert = first.cert;
            sni_only.key = first.key;
            server::tls::CertResolver::load(&sni_only)?;
        }
    } else {
        server::tls::CertResolver::load(&config.tls)?;
    }
    let toml = toml::to_string_pretty(&config)
        .map_err(|e| CliError::Runtime(anyhow::Error::new(e).context("printing the config")))?;
    Ok(format!("{notes}{toml}"))
}
