//! `keys` (policy P11): which days' pseudonym keys are kept, derivable or destroyed, as the
//! operator checks the key schedule and what `investigate --ip` can still link.
//!
//! Owns the report only: the key store lists its days ([`crate::privacy::keys::KeyStore`]),
//! the access log its day files. Must never print a key or create the key directory.

use anyhow::Context;

use super::args::ConfigFile;
use super::search::{self, DayRange, Settings};
use super::{CliError, print_stdout};
use crate::epoch::{self, Epoch};
use crate::privacy::keys::KeyState;

/// `keys [--config FILE]`: one `YYYY-MM-DD kept|derivable|destroyed` line per epoch on stdout,
/// a summary on stderr.
pub fn run(file: &ConfigFile) -> Result<(), CliError> {
    let settings = super::load_settings(file)?;
    let (lines, summary) = keys_report(&settings).map_err(CliError::Runtime)?;
    print_stdout(lines.as_bytes())?;
    eprint!("{summary}");
    Ok(())
}

/// `keys`: every kept epoch, every day of the retention window from the oldest kept key on
/// (kept or derivable), and every day with an access-log day file whose key cannot be had
/// (destroyed), oldest first, as `YYYY-MM-DD kept|derivable|destroyed` lines, and a summary
/// line. Days that never had a key and have no records are not listed.
pub fn keys_report(settings: &Settings) -> anyhow::Result<(String, String)> {
    let today = Epoch::today();
    let retention_days = epoch::whole_days(settings.key_retention);
    let mut list: Vec<(Epoch, KeyState)> = match settings.keys()? {
        Some(store) => store
            .list_at(today)
            .with_context(|| "listing privacy.key_dir")?,
        None => Vec::new(),
    };
    // Days whose records remain but whose key cannot be had: every access-log day up to today
    // that the store does not list (so before its oldest kept key, or any with no key at all).
    // Days that never had a key and have no records are not listed: a new install shows today.
    // One row a day, however many nodes' files the directory holds for it.
    let mut listed: std::collections::BTreeSet<Epoch> = list.iter().map(|&(e, _)| e).collect();
    for (day, _) in search::day_files(&settings.log_dir, DayRange::default(), false)? {
        if day <= today && listed.insert(day) {
            list.push((day, KeyState::Destroyed));
        }
    }
    list.sort_by_key(|&(e, _)| e);
    let mut lines = String::new();
    let (mut kept, mut derivable, mut destroyed) = (0, 0, 0);
    for (epoch, state) in &list {
        let word = match state {
            KeyState::Kept => {
                kept += 1;
                "kept"
            }
            KeyState::Derivable => {
                derivable += 1;
                "derivable"
            }
            KeyState::Destroyed => {
                destroyed += 1;
                "destroyed"
            }
        };
        lines.push_str(&format!("{epoch} {word}\n"));
    }
    let missing = if settings.key_dir.is_dir() {
        String::new()
    } else {
        format!(" ({} does not exist)", settings.key_dir.display())
    };
    let summary = format!(
        "keys: {kept} kept, {derivable} derivable, {destroyed} destroyed; window {}..{} (privacy.key_retention {}d){missing}\n",
        today.add_days(-retention_days),
        today,
        retention_days,
    );
    Ok((lines, summary))
}
