//! The command line: parse arguments, call the library, map errors to exit codes.

use std::process::ExitCode;

use webprom_edge::cli::args::{Args, Command};
use webprom_edge::cli::investigate::Who;
use webprom_edge::cli::{self, CliError, docs};

/// mimalloc: the request path allocates and frees many small objects; glibc's allocator was
/// several percent of the proxy's CPU in the load profile (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ignore_file_size_signal();
    no_transparent_huge_pages();
    let args = Args::parse_env();
    init_tracing();
    let result = match args.command {
        Command::Run { config } => cli::run(&config),
        Command::CheckConfig { config } => {
            cli::check_config(&config).and_then(|text| cli::print_stdout(text.as_bytes()))
        }
        Command::Investigate {
            config,
            ip,
            client,
            since,
            until,
            logs,
        } => {
            let who = match (&ip, &client) {
                (Some(ip), _) => Who::Ip(ip),
                (None, Some(client)) => Who::Client(client),
                // clap requires exactly one of them.
                (None, None) => Who::Client(""),
            };
            cli::investigate::run(&config, who, since.as_deref(), until.as_deref(), &logs)
        }
        Command::Erase {
            config,
            ip,
            since,
            until,
            logs,
        } => cli::erase::run(&config, &ip, since.as_deref(), until.as_deref(), &logs),
        Command::Keys { config } => cli::keys::run(&config),
        Command::Certs { config } => cli::certs::run(&config),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            docs::completions(shell, &mut out)
                .map_err(generating)
                .and_then(|()| cli::print_stdout(&out))
        }
        Command::Man => {
            let mut out = Vec::new();
            docs::man_page(&mut out)
                .map_err(generating)
                .and_then(|()| cli::print_stdout(&out))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webprom-edge: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// A failure to generate a document: a run-time failure (exit status 1).
fn generating(e: std::io::Error) -> CliError {
    CliError::Runtime(anyhow::Error::new(e).context("generating the document"))
}

/// A write past the file size limit (`ulimit -f`, systemd's `LimitFSIZE=`) must fail with
/// EFBIG, which the access log counts and reports like a full disk, instead of killing the
/// process with SIGXFSZ (whose default action is to terminate).
fn ignore_file_size_signal() {
    // SAFETY: called first in main, before any other thread exists; SIG_IGN installs no
    // handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Turns transparent huge pages off for this process (Linux `PR_SET_THP_DISABLE`, applied at each
/// page fault from now on, also in memory mapped already).
///
/// mimalloc asks for huge pages (`MADV_HUGEPAGE`) on the arenas it commits up front, so where the
/// kernel grants them on request (`transparent_hugepage/enabled` = `madvise`, or `always`) a
/// touch of a connection's buffer can make a whole 2 MiB page resident. With 10,000 idle
/// HTTP/2 connections that was 48.4 KB of RSS each, against 31.9 KB without huge pages, and the
/// process started at 78.9 MB instead of 68.0 MB (BENCHMARKS.md). A failure (an old kernel)
/// changes nothing else and is not reported.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: a prctl with integer arguments only; it reads and writes no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The environment variable that sets the diagnostics filter.
const LOG_VAR: &str = "WEBPROM_EDGE_LOG";

/// Diagnostics on stderr at `info`, or at what `WEBPROM_EDGE_LOG` says (tracing's `EnvFilter`
/// syntax). Unset or empty: `info`. A value that is not a filter (or not UTF-8) is not ignored
/// silently: `info` is used and a warning names the variable, the value and what is wrong.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, problem) = match std::env::var(LOG_VAR) {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::builder().parse(&value) {
            Ok(filter) => (filter, None),
            Err(e) => (
                EnvFilter::new("info"),
                Some(format!(
                    "{LOG_VAR}={:?} is not a valid filter: {e}",
                    shortened(&value)
                )),
            ),
        },
        Err(std::env::VarError::NotUnicode(_)) => (
            EnvFilter::new("info"),
            Some(format!("{LOG_VAR} is not valid UTF-8")),
        ),
        _ => (EnvFilter::new("info"), None),
    };
    // A dependency's TRACE events print what it parses (`h2` prints a refused `te` field's
    // value): they never pass, whatever `WEBPROM_EDGE_LOG` asks for. The proxy's own
    // diagnostics never carry a request value at any level.
    let no_dependency_trace = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() != tracing::Level::TRACE || meta.target().starts_with("webprom_edge")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .with(no_dependency_trace)
        .init();
    if let Some(problem) = problem {
        tracing::warn!(
            "{problem}; using \"info\" (a level such as \"debug\", or directives such as \"webprom_edge=debug,info\")"
        );
    }
}

/// At most the first 100 characters of `value`, for a message.
fn shortened(value: &str) -> String {
    match value.char_indices().nth(100) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}
