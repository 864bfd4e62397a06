//! `investigate` (policy P9, P12): the records of one client, as stored, from the access-log
//! day files in range, with a summary and a line in the audit trail.
//!
//! Owns the command's flow: settings, pseudonyms per day ([`super::search`]), the reading of
//! each day file ([`crate::accesslog::reader`]) into stdout. Must never print, log or audit an
//! address, and never write to a day file.

use std::io::{self, Write};

use anyhow::Context;

use super::args::ConfigFile;
use super::search::{self, DayRange, Settings, Summary, Target};
use super::{CliError, audit};
use crate::accesslog::reader::{DayReader, Discard, Record, Sink};

/// Which client `investigate` looks for: exactly one of `--ip` and `--client`.
pub enum Who<'a> {
    /// `--ip ADDR`
    Ip(&'a str),
    /// `--client PSEUDONYM`
    Client(&'a str),
}

/// `investigate [--config FILE] (--ip ADDR | --client PSEUDONYM) [--since DAY] [--until DAY]
/// [--logs DIR]...`: the client's records on stdout as stored, from each `--logs` directory in
/// turn (else `access_log.dir`), a summary on stderr with a line per directory, a line in the
/// audit trail naming the directories.
pub fn run(
    file: &ConfigFile,
    who: Who<'_>,
    since: Option<&str>,
    until: Option<&str>,
    logs: &[std::path::PathBuf],
) -> Result<(), CliError> {
    let target = match who {
        Who::Ip(s) => Target::parse_ip(s),
        Who::Client(s) => Target::parse_client(s),
    }
    .map_err(CliError::Config)?;
    let range = DayRange::parse(since, until).map_err(CliError::Config)?;
    let settings = super::load_settings(file)?
        .with_search_dirs(logs)
        .map_err(CliError::Config)?;
    // Nothing is shown unless its audit line can be written.
    audit::check(&settings)?;
    let mut summary = Summary::default();
    let stdout = io::stdout();
    let out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let result = investigate(&settings, &target, range, out, &mut summary);
    eprint!("{}", summary.render("investigate"));
    audit::record(&settings, "investigate", &summary, result.is_ok())?;
    result.map_err(CliError::Runtime)
}

/// Writes the client's records to `out` as stored, oldest day first. The summary so far is in
/// `summary` even when this fails.
pub fn investigate(
    settings: &Settings,
    target: &Target,
    range: DayRange,
    out: impl Write,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let keys = settings.keys()?;
    let mut printer = Printer { out };
    search::each_dir(settings, range, summary, |_, files, summary| {
        for (day, path) in files {
            let Some((needles, file)) =
                search::open_day(settings, keys.as_ref(), target, day, &path, summary)?
            else {
                continue;
            };
            let mut reader = DayReader::new(file, &needles);
            let result = reader
                .read_available(&mut printer)
                .and_then(|()| reader.finish(&mut Discard));
            summary.found.merge(reader.into_tally());
            result.with_context(|| format!("reading {}", path.display()))?;
        }
        Ok(())
    })?;
    printer
        .out
        .flush()
        .context("writing the records to stdout")?;
    Ok(())
}

/// Prints each matching record as stored, one a line.
struct Printer<W: Write> {
    out: W,
}

impl<W: Write> Sink for Printer<W> {
    fn keep(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn matched(&mut self, line: &[u8], _: &Record) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")
    }
    fn invalid(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}
