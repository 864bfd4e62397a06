//! The pseudonym key schedule: the key store ratcheted to today's key at start
//! ([`ratchet`]), and at each UTC midnight while serving ([`rotate_keys`], through
//! [`rollover`]), which moves the running capture to the new day's key and starts the
//! distinct-visitor window of the metrics again.
//!
//! It owns no state: the server hands it the key store, the capture and the metrics. What it
//! must never do: print a key, bring back a key the store destroyed, or stop serving when a
//! key file is broken (the capture keeps the key it has, and the rollover is retried).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::epoch::{Epoch, SECS_PER_DAY};
use crate::privacy::capture::{Capture, EpochKey};
use crate::privacy::keys::{Key, KeyError, KeyStore};

/// Ratchets the key store to `today` ([`KeyStore::ratchet_to`]) and returns today's key,
/// saying in the diagnostics what happened: a random key made because none was found, keys
/// destroyed past `privacy.key_retention`.
pub fn ratchet(keys: &KeyStore, today: Epoch) -> Result<Key, KeyError> {
    let outcome = keys.ratchet_to(today)?;
    match (outcome.created_random, outcome.later_keys) {
        (true, true) => tracing::warn!(
            epoch = %today,
            dir = %keys.dir().display(),
            "no pseudonym key for today or before, only for later days: is this clock behind? created a random key (this node's pseudonyms of today do not match the fleet's)"
        ),
        (true, false) => tracing::info!(
            epoch = %today,
            dir = %keys.dir().display(),
            "no pseudonym key found: created a random key (a first start; for a fleet, copy this day's key file to the other instances)"
        ),
        _ => {}
    }
    if !outcome.destroyed.is_empty() {
        tracing::info!(
            destroyed = outcome.destroyed.len(),
            "destroyed pseudonym keys past privacy.key_retention"
        );
    }
    Ok(outcome.key)
}

/// What else must start anew with a new key epoch: the metrics' distinct-visitor window
/// (`Metrics` implements it). A trait here, so that the privacy core does not depend on the
/// metrics (the metrics depend on it).
pub trait EpochListener {
    /// Called once when the capture has moved to a new day's key.
    fn new_epoch(&self);
}

/// Applies the key of `today` if `capture` is still on an older epoch, and tells `listener`
/// ([`EpochListener::new_epoch`]). Returns whether the epoch changed. On error (the error names
/// the key file or directory) the capture keeps its key.
pub fn rollover(
    keys: &KeyStore,
    capture: &Capture,
    listener: &impl EpochListener,
    today: Epoch,
) -> Result<bool, KeyError> {
    if capture.epoch() >= today {
        return Ok(false);
    }
    let key = ratchet(keys, today)?;
    capture.set_key(EpochKey { epoch: today, key });
    listener.new_epoch();
    tracing::info!(epoch = %today, "pseudonym key epoch rolled over");
    Ok(true)
}

/// How long to wait, `now_unix_secs` seconds after the Unix epoch, until one second past the
/// next UTC midnight, when the new day is certainly today.
pub fn until_next_day(now_unix_secs: u64) -> Duration {
    Duration::from_secs(SECS_PER_DAY - now_unix_secs % SECS_PER_DAY + 1)
}

/// At each UTC midnight, rolls the capture over to the new day's key ([`rollover`], off the
/// runtime: it reads and writes key files), retrying every minute until it succeeds. Runs
/// until its task is dropped.
pub async fn rotate_keys<L: EpochListener + Send + Sync + 'static>(
    keys: Arc<KeyStore>,
    capture: Arc<Capture>,
    listener: Arc<L>,
) {
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        tokio::time::sleep(until_next_day(now)).await;
        loop {
            let (k, c, l) = (keys.clone(), capture.clone(), listener.clone());
            let res =
                tokio::task::spawn_blocking(move || rollover(&k, &c, &*l, Epoch::today())).await;
            match res {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "key rollover failed; retrying in a minute")
                }
                Err(e) => {
                    tracing::error!(error = %e, "key rollover task failed; retrying in a minute")
                }
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::privacy::keys::next_key;

    #[test]
    fn the_wait_ends_one_second_past_the_next_utc_midnight() {
        // (seconds since the Unix epoch, seconds to wait)
        let rows: [(u64, u64); 6] = [
            (0, 86401),
            (1, 86400),
            (86399, 2),
            (86400, 86401),
            // 2026-11-30T10:41:39Z
            (1_796_035_299, 86400 - 38499 + 1),
            (u64::MAX, 86400 - u64::MAX % 86400 + 1),
        ];
        for (now, wait) in rows {
            assert_eq!(until_next_day(now), Duration::from_secs(wait), "{now}");
            assert_eq!((now as u128 + wait as u128 - 1) % 86400, 0, "{now}");
        }
    }

    /// The rollover on its own parts: a key store, a capture and the metrics; no proxy, no
    /// listener.
    #[test]
    fn rollover_moves_the_capture_to_the_next_key_once_per_day() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.privacy.key_dir = dir.path().join("keys");
        let keys = KeyStore::open(&config.privacy.key_dir, config.privacy.key_retention.0).unwrap();
        let today = Epoch::today();
        let old = ratchet(&keys, today.prev()).unwrap();
        let capture = Capture::new(
            &config,
            EpochKey {
                epoch: today.prev(),
                key: old.clone(),
            },
            None,
        )
        .unwrap();
        let metrics = Metrics::new(&[]);
        let window = |m: &Metrics| {
            m.render()
                .lines()
                .find(|l| l.starts_with("webprom_edge_unique_clients{window=\"epoch\"}"))
                .map(str::to_owned)
        };

        assert!(rollover(&keys, &capture, &metrics, today).unwrap());
        assert_eq!(capture.epoch(), today);
        assert!(keys.load(today).unwrap().unwrap() == next_key(&old));
        let after = window(&metrics);
        assert!(after.is_some_and(|l| l.ends_with(" 0")));

        // Later the same day, or a day already passed: nothing changes.
        for day in [today, today.prev()] {
            assert!(!rollover(&keys, &capture, &metrics, day).unwrap(), "{day}");
            assert_eq!(capture.epoch(), today, "{day}");
        }
    }
}
