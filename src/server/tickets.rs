//! Session tickets (RFC 8446 §4.6.1 for TLS 1.3, RFC 5077 for TLS 1.2): the ticket keys of
//! `[tls.tickets]`, their rotation, and the [`Ticketer`] rustls seals and opens tickets with.
//!
//! Time is cut into periods of `tls.tickets.rotation` seconds: period `p = floor(unix / rotation)`.
//! Each period has a 32-byte key `K[p]`; its tickets are sealed with AES-256-GCM under a key
//! derived from `K[p]`, a random 96-bit nonce each, and carry the period's low 32 bits as the
//! key id (authenticated too). A ticket is accepted while its period is the current one or the
//! previous one; the key of the period before is destroyed (zeroized in memory, overwritten on
//! disk).
//!
//! With `secret_file`, every instance derives the same keys: `K[p+1] = BLAKE3
//! derive_key("webprom-edge ticket ratchet v1", K[p])`, a one-way ratchet (forward secrecy:
//! a key never gives an earlier one). The file holds either a bare secret, written once by the
//! operator (its bytes, surrounding whitespace trimmed, give the key of the period that
//! contains [`ANCHOR_UNIX`] through one BLAKE3 derivation, [`SECRET_CONTEXT`]), or,
//! once the proxy has rewritten it, one line [`FILE_TAG`] `rotation=<s> period=<p> key=<hex>`:
//! the key of the previous period, the oldest still accepted. Without `secret_file` the keys
//! are random, per instance.
//!
//! What it must never do: log, or put in an error, a key or the content of the file; do I/O or
//! take a lock on the handshake path (rustls calls [`Ticketer`] with one atomic load).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::config;

/// The BLAKE3 context of the ratchet: `K[p+1] = derive_key(RATCHET_CONTEXT, K[p])`.
pub const RATCHET_CONTEXT: &str = "webprom-edge ticket ratchet v1";
/// The BLAKE3 context that turns a bare secret into the key of the anchor period.
pub const SECRET_CONTEXT: &str = "webprom-edge ticket secret v1";
/// The BLAKE3 context of the AEAD key of a period: `derive_key(AEAD_CONTEXT, K[p])`.
pub const AEAD_CONTEXT: &str = "webprom-edge ticket aead v1";
/// The instant a bare secret is anchored at: 2026-01-01T00:00:00Z. A bare secret is the key of
/// the period that contains it (so an hourly rotation ratchets ~8,800 steps a year to reach
/// today, a one-minute rotation ~526,000).
pub const ANCHOR_UNIX: u64 = 1_767_225_600;
/// The first word of a secret file the proxy has rewritten.
pub const FILE_TAG: &str = "webprom-edge-ticket-key-v1";

/// The bytes of the key id at the start of a ticket.
const KEY_ID_LEN: usize = 4;

/// A ticket key: the ratchet state `K[p]` of one period.
type Key = Zeroizing<[u8; 32]>;

/// One step of the ratchet: `K[p+1]` from `K[p]`.
pub fn ratchet(key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(RATCHET_CONTEXT, key)
}

/// The period of `unix` seconds for a rotation of `rotation` seconds.
pub fn period_of(unix: u64, rotation: u64) -> u64 {
    unix / rotation.max(1)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key of one period, as a secret file gives it or is rewritten to hold.
pub struct Anchor {
    /// The period `key` belongs to.
    pub period: u64,
    /// `K[period]`.
    key: Key,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Anchor {{ period: {} }}", self.period)
    }
}

impl Anchor {
    /// Reads the content of a secret file (already checked by
    /// [`preflight::secret_file`](super::preflight::secret_file)) for a rotation of
    /// `rotation` seconds: a file rewritten by the proxy ([`FILE_TAG`] line) gives its period
    /// and key, which must be of the same rotation; any other content is a bare secret, the key
    /// of the period of [`ANCHOR_UNIX`] after one derivation. The error is the reason alone and
    /// never quotes the file.
    pub fn parse(content: &[u8], rotation: u64) -> Result<Anchor, String> {
        let text = content.trim_ascii();
        let Some(rest) = text
            .strip_prefix(FILE_TAG.as_bytes())
            .filter(|r| r.first().is_some_and(u8::is_ascii_whitespace))
        else {
            return Ok(Anchor {
                period: period_of(ANCHOR_UNIX, rotation),
                key: Zeroizing::new(blake3::derive_key(SECRET_CONTEXT, text)),
            });
        };
        let malformed = || {
            format!(
                "starts with {FILE_TAG} but is not `{FILE_TAG} rotation=<seconds> period=<n> key=<64 hex digits>`: write a fresh secret"
            )
        };
        let rest = std::str::from_utf8(rest).map_err(|_| malformed())?;
        let (mut file_rotation, mut period, mut key) = (None, None, None);
        for field in rest.split_ascii_whitespace() {
            // Each field once: a value given twice is a file edited by hand, not ours.
            let slot = match field.split_once('=') {
                Some(("rotation", v)) => file_rotation.replace(v.parse::<u64>().ok()).is_none(),
                // 2^40 periods of a minute or more: beyond any clock, and never overflowing.
                Some(("period", v)) => period
                    .replace(v.parse::<u64>().ok().filter(|p| *p < 1 << 40))
                    .is_none(),
                Some(("key", v)) => key.replace(decode_hex(v)).is_none(),
                _ => false,
            };
            if !slot {
                return Err(malformed());
            }
        }
        let (file_rotation, period, key) =
            (file_rotation.flatten(), period.flatten(), key.flatten());
        let (Some(file_rotation), Some(period), Some(key)) = (file_rotation, period, key) else {
            return Err(malformed());
        };
        if file_rotation != rotation {
            return Err(format!(
                "was ratcheted for a rotation of {file_rotation}s, and tls.tickets.rotation is {rotation}s: every instance must use the same rotation; to change it, write a fresh secret to every instance's file"
            ));
        }
        // The proxy never writes a period before the anchor of a fresh secret.
        if period < period_of(ANCHOR_UNIX, rotation) {
            return Err(
                "states a period before 2026-01-01, which the proxy never writes: write a fresh secret"
                    .into(),
            );
        }
        Ok(Anchor { period, key })
    }

    /// Whether this key may be taken into use by a clock at Unix time `now`: a period at most
    /// a day (and at least two periods) ahead of the clock's. Further ahead, the keys would
    /// stay frozen until the clock gets there (a clock that jumped forward once, then was set
    /// right, leaves such a file): no rotation, no forward secrecy, and tickets no other
    /// instance accepts. The error is the reason alone.
    pub fn usable_at(&self, rotation: u64, now: u64) -> Result<(), String> {
        let clock = period_of(now, rotation);
        let bound = (86_400 / rotation.max(1)).max(2);
        if self.period > clock.saturating_add(bound) {
            return Err(format!(
                "states a period {} periods of {rotation}s ahead of this machine's clock (at most a day is allowed): check the clock (NTP), or write a fresh secret",
                self.period - clock
            ));
        }
        Ok(())
    }

    /// The key of `period`, ratcheted forward from this one (`None` when `period` is earlier:
    /// an earlier key cannot be derived).
    fn advance(&self, period: u64) -> Option<Key> {
        let steps = period.checked_sub(self.period)?;
        let mut key = self.key.clone();
        for _ in 0..steps {
            *key = ratchet(&key);
        }
        Some(key)
    }

    /// The file's content for this key under a rotation of `rotation` seconds.
    fn file_text(&self, rotation: u64) -> Zeroizing<String> {
        let mut text = Zeroizing::new(format!(
            "{FILE_TAG} rotation={rotation} period={} key=",
            self.period
        ));
        for b in self.key.iter() {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 15)]));
        }
        text.push('\n');
        text
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode_hex(text: &str) -> Option<Key> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut key = Zeroizing::new([0u8; 32]);
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        key[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(key)
}

/// The AEAD key of one period, with its id.
struct PeriodKey {
    period: u64,
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

impl PeriodKey {
    fn new(period: u64, key: &[u8; 32]) -> PeriodKey {
        let aead_key = Zeroizing::new(blake3::derive_key(AEAD_CONTEXT, key));
        // 32 bytes is AES-256's key length: `new` cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, aead_key.as_ref())
            .unwrap_or_else(|_| unreachable!("AES-256-GCM takes a 32-byte key"));
        PeriodKey {
            period,
            id: (period as u32).to_be_bytes(),
            aead: LessSafeKey::new(unbound),
        }
    }
}

/// The keys in use: `issuing` seals, every key of `accepted` (the issuing one, the previous
/// period's, and with a secret file the next period's, so an instance whose clock is a little
/// ahead is understood) opens.
struct KeySet {
    lifetime: u32,
    accepted: Vec<PeriodKey>,
}

impl KeySet {
    fn issuing(&self) -> &PeriodKey {
        &self.accepted[0]
    }
}

/// Where the keys come from.
enum Source {
    /// The fleet's secret file; `key` is `K[period]` of the issuing period.
    File {
        /// The file itself: symbolic links resolved, so that a rewrite replaces the file
        /// holding the secret, not a link to it.
        path: PathBuf,
        period: u64,
        key: Key,
        previous: Option<Key>,
        /// The file could not be rewritten, and that was said once.
        warned: bool,
        /// The file as last read or written by this process: a file changed since (a fresh
        /// secret an operator wrote) is never overwritten by a rotation.
        stamp: Option<crate::files::FileStamp>,
    },
    /// Random keys of this instance: the issuing period's and, once rotated, the previous.
    Random {
        period: u64,
        key: Key,
        previous: Option<Key>,
    },
}

/// What the rotation needs, held only by the rotation task and a reload.
struct Control {
    config: config::Tickets,
    rotation: u64,
    source: Option<Source>,
    started: bool,
}

/// Seals and opens session tickets with the keys of `[tls.tickets]` (a rustls
/// [`ProducesTickets`](rustls::server::ProducesTickets)): no ticket until [`Ticketer::start`],
/// none when `enabled = false`. Shared by every handshake; rotated by [`Ticketer::rotate`].
pub struct Ticketer {
    keys: ArcSwap<Option<KeySet>>,
    control: Mutex<Control>,
    /// Wakes the rotation task when a reload changed the rotation.
    changed: tokio::sync::Notify,
    task: AtomicBool,
    rng: SystemRandom,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticketer")
    }
}

/// A secret file that cannot be used: the reason alone, never quoting the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TicketError {
    /// The file (`tls.tickets.secret_file`).
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

impl Default for Ticketer {
    fn default() -> Self {
        Ticketer::new()
    }
}

impl Ticketer {
    /// A ticketer that issues nothing until [`Ticketer::start`].
    pub fn new() -> Ticketer {
        Ticketer {
            keys: ArcSwap::from_pointee(None),
            control: Mutex::new(Control {
                config: config::Tickets {
                    enabled: false,
                    ..config::Tickets::default()
                },
                rotation: 3600,
                source: None,
                started: false,
            }),
            changed: tokio::sync::Notify::new(),
            task: AtomicBool::new(false),
            rng: SystemRandom::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        // Control is whole after every statement.
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `config` into use from the next handshake on: reads and ratchets the secret file
    /// (and rewrites it), or makes random keys; with `enabled = false` no ticket is issued or
    /// accepted. Called with the config a SIGHUP read too: an unchanged config with random
    /// keys keeps them; a secret file is read again (the same file gives the same keys). On
    /// error nothing changes. Blocking (file I/O): call it off the runtime's workers, or at
    /// start. Inside a tokio runtime, the first call starts the rotation task.
    pub fn start(self: &Arc<Self>, config: &config::Tickets) -> Result<(), TicketError> {
        self.start_at(config, now_unix())?;
        if let Ok(handle) = tokio::runtime::Handle::try_current()
            && !self.task.swap(true, Ordering::SeqCst)
        {
            handle.spawn(rotate_forever(self.clone()));
        }
        self.changed.notify_one();
        Ok(())
    }

    /// Whether [`Ticketer::start`] has succeeded once.
    pub fn started(&self) -> bool {
        self.lock().started
    }

    fn start_at(&self, config: &config::Tickets, now: u64) -> Result<(), TicketError> {
        let rotation = config.rotation.0.as_secs().max(1);
        let mut control = self.lock();
        let source = match (&config.secret_file, config.enabled) {
            (_, false) => None,
            (Some(path), true) => Some(Self::open_file(path, rotation, now)?),
            (None, true) => {
                let keep = matches!(control.source, Some(Source::Random { .. }))
                    && control.config.secret_file.is_none()
                    && control.rotation == rotation;
                match keep {
                    true => control.source.take(),
                    false => Some(self.random(period_of(now, rotation), None)?),
                }
            }
        };
        control.config = config.clone();
        control.started = true;
        control.rotation = rotation;
        control.source = source;
        Self::persist(&mut control);
        self.publish(&control);
        Ok(())
    }

    fn open_file(path: &Path, rotation: u64, now: u64) -> Result<Source, TicketError> {
        let err = |reason: String| TicketError {
            path: path.to_owned(),
            reason,
        };
        let real = std::fs::canonicalize(path).map_err(|e| err(e.to_string()))?;
        let stamp = crate::files::FileStamp::of_path(&real);
        let content = super::preflight::secret_file(&real).map_err(err)?;
        let anchor = Anchor::parse(&content, rotation).map_err(err)?;
        anchor.usable_at(rotation, now).map_err(err)?;
        // The file's key is the previous period's, the oldest still accepted (as the proxy
        // rewrites it; a bare secret's anchor is long past). A clock at or behind the file's
        // period issues with the key of the period after it until the clock catches up: keys
        // never go back, and an instance that wrote the file was there.
        let clock = period_of(now, rotation);
        let period = clock.max(anchor.period + 1);
        if clock <= anchor.period {
            tracing::warn!(path = %path.display(), file_period = anchor.period, clock_period = clock, "the clock is behind the period of tls.tickets.secret_file: issuing tickets of the period after the file's until the clock catches up");
        }
        let previous = anchor.advance(period - 1).ok_or_else(|| {
            err("states a period that cannot be used: write a fresh secret".into())
        })?;
        Ok(Source::File {
            path: real,
            period,
            key: Zeroizing::new(ratchet(&previous)),
            previous: Some(previous),
            warned: false,
            stamp,
        })
    }

    fn random(&self, period: u64, previous: Option<Key>) -> Result<Source, TicketError> {
        let mut key = Zeroizing::new([0u8; 32]);
        self.rng.fill(key.as_mut()).map_err(|_| TicketError {
            path: PathBuf::new(),
            reason: "the system's random number generator failed".into(),
        })?;
        Ok(Source::Random {
            period,
            key,
            previous,
        })
    }

    /// Moves to the period of `now` if it is later than the issuing one: the previous key is
    /// the old issuing key when one period passed (else none), older keys are zeroized, and a
    /// secret file is rewritten to hold the new previous key. Blocking (file I/O).
    pub fn rotate(&self) {
        self.rotate_at(now_unix());
    }

    fn rotate_at(&self, now: u64) {
        let mut control = self.lock();
        let rotation = control.rotation;
        let target = period_of(now, rotation);
        if let Some(Source::File { path, period, .. }) = &control.source
            && target + 1 < *period
        {
            // Said at each rotation while it lasts: the keys do not rotate meanwhile.
            tracing::warn!(path = %path.display(), issuing_period = *period, clock_period = target, "the clock is behind the period of tls.tickets.secret_file: ticket keys do not rotate until it catches up");
        }
        let next = match control.source.take() {
            None => None,
            Some(Source::File {
                path,
                period,
                key,
                // Dropped: zeroized.
                previous: _,
                warned,
                stamp,
            }) if target > period => {
                let mut previous = key;
                for _ in period + 1..target {
                    *previous = ratchet(&previous);
                }
                Some(Source::File {
                    path,
                    period: target,
                    key: Zeroizing::new(ratchet(&previous)),
                    previous: Some(previous),
                    warned,
                    stamp,
                })
            }

            Some(Source::Random { period, key, .. }) if target > period => {
                let previous = (target == period + 1).then_some(key);
                match self.random(target, previous) {
                    Ok(source) => Some(source),
                    Err(e) => {
                        // No fresh key: stop issuing rather than reuse one past its period.
                        tracing::error!(error = %e, "no new session-ticket key: tickets off until the next rotation");
                        None
                    }
                }
            }
            same => same,
        };
        control.source = next;
        Self::persist(&mut control);
        self.publish(&control);
    }

    /// Rewrites the secret file to hold the previous period's key (or the issuing one when
    /// there is none), atomically with mode 0600; a file that cannot be written is warned about
    /// once.
    fn persist(control: &mut Control) {
        let rotation = control.rotation;
        let Some(Source::File {
            path,
            period,
            key,
            previous,
            warned,
            stamp,
        }) = &mut control.source
        else {
            return;
        };
        // A file changed since this process last read or wrote it holds what an operator put
        // there (a fresh secret): it is taken into use by SIGHUP or a restart, never overwritten.
        let now = crate::files::FileStamp::of_path(path);
        if stamp.is_some() && now != *stamp {
            if !*warned {
                *warned = true;
                tracing::warn!(path = %path.display(), "tls.tickets.secret_file changed since it was read: not rewritten; send SIGHUP (or restart) to take it into use");
            }
            return;
        }
        let anchor = match previous {
            Some(prev) => Anchor {
                period: *period - 1,
                key: prev.clone(),
            },
            None => Anchor {
                period: *period,
                key: key.clone(),
            },
        };
        let text = anchor.file_text(rotation);
        // A temporary name of this process alone: instances sharing the file never remove
        // each other's.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let written = crate::files::write_atomically(path, &tmp, 0o600, text.as_bytes());
        match written {
            Ok(()) => {
                *warned = false;
                *stamp = crate::files::FileStamp::of_path(path);
            }
            Err(e) if !*warned => {
                *warned = true;
                tracing::warn!(path = %path.display(), error = %e, "cannot rewrite tls.tickets.secret_file: the key of an older period stays on disk, and with it every later ticket key (no forward secrecy for the tickets on this disk)");
            }
            Err(_) => {}
        }
    }

    /// Swaps in the keys of `control` for the next handshake.
    fn publish(&self, control: &Control) {
        let lifetime = u32::try_from(control.rotation).unwrap_or(u32::MAX);
        let set = control.source.as_ref().map(|source| {
            let (period, key, previous, next) = match source {
                Source::File {
                    period,
                    key,
                    previous,
                    ..
                } => (
                    *period,
                    key,
                    previous.as_ref(),
                    Some(Zeroizing::new(ratchet(key))),
                ),
                Source::Random {
                    period,
                    key,
                    previous,
                } => (*period, key, previous.as_ref(), None),
            };
            let mut accepted = vec![PeriodKey::new(period, key)];
            if let Some(prev) = previous {
                accepted.push(PeriodKey::new(period - 1, prev));
            }
            if let Some(next) = next {
                accepted.push(PeriodKey::new(period + 1, &next));
            }
            KeySet { lifetime, accepted }
        });
        self.keys.store(Arc::new(set));
    }

    /// The periods whose tickets are accepted now, the issuing one first (for tests and
    /// diagnostics; never the keys).
    pub fn accepted_periods(&self) -> Vec<u64> {
        self.keys
            .load()
            .as_ref()
            .as_ref()
            .map(|s| s.accepted.iter().map(|k| k.period).collect())
            .unwrap_or_default()
    }

    /// When the next rotation is due, from now.
    fn until_next(&self) -> Duration {
        let rotation = self.lock().rotation;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let next = (period_of(now.as_secs(), rotation) + 1) * rotation;
        Duration::from_secs(next).saturating_sub(now)
    }
}

/// Rotates the keys of `ticketer` at each period's start (and re-plans when a reload changed
/// the rotation), for as long as the runtime runs. The rotation itself (file I/O) runs off the
/// runtime's workers.
async fn rotate_forever(ticketer: Arc<Ticketer>) {
    loop {
        // A few milliseconds past the boundary, so the clock read by the rotation is in the
        // new period.
        let wait = ticketer.until_next() + Duration::from_millis(5);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ticketer.changed.notified() => continue,
        }
        let rotating = ticketer.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || rotating.rotate()).await {
            tracing::error!(error = %e, "session-ticket key rotation failed");
        }
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        self.keys.load().is_some()
    }

    fn lifetime(&self) -> u32 {
        self.keys.load().as_ref().as_ref().map_or(0, |s| s.lifetime)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let key = keys.as_ref().as_ref()?.issuing();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(KEY_ID_LEN + NONCE_LEN);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&head[..KEY_ID_LEN]),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (id, rest) = cipher.split_first_chunk::<KEY_ID_LEN>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let keys = self.keys.load();
        let key = keys
            .as_ref()
            .as_ref()?
            .accepted
            .iter()
            .find(|k| &k.id == id)?;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(&id[..]),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets as _;
    use std::os::unix::fs::PermissionsExt as _;

    const HOUR: u64 = 3600;
    /// 2026-11-30T12:00:00Z.
    const NOW: u64 = 1_795_003_200;

    fn tickets(path: Option<&Path>, rotation: u64) -> config::Tickets {
        config::Tickets {
            enabled: true,
            secret_file: path.map(Path::to_owned),
            rotation: {
                use serde::Deserialize as _;
                config::Dur::deserialize(toml::Value::String(format!("{rotation}s"))).unwrap()
            },
        }
    }

    fn secret_file(dir: &Path, content: &str) -> PathBuf {
        let path = dir.join("tickets.secret");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn started(config: &config::Tickets, now: u64) -> Ticketer {
        let t = Ticketer::new();
        t.start_at(config, now).unwrap();
        t
    }

    #[test]
    fn a_ticket_opens_in_its_period_and_the_next_and_never_after() {
        // Rows: (keys from a secret file, random keys).
        for file in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = file.then(|| secret_file(dir.path(), SECRET));
            let t = started(&tickets(path.as_deref(), HOUR), NOW);
            let ticket = t.encrypt(b"session state").unwrap();
            assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
            t.rotate_at(NOW + HOUR);
            assert_eq!(
                t.decrypt(&ticket).as_deref(),
                Some(&b"session state"[..]),
                "file {file}: the previous period's ticket is still accepted"
            );
            t.rotate_at(NOW + 2 * HOUR);
            assert_eq!(t.decrypt(&ticket), None, "file {file}: two periods on");
        }
    }

    #[test]
    fn a_period_skipped_leaves_no_previous_key() {
        for file in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = file.then(|| secret_file(dir.path(), SECRET));
            let t = started(&tickets(path.as_deref(), HOUR), NOW);
            let ticket = t.encrypt(b"s").unwrap();
            t.rotate_at(NOW + 2 * HOUR);
            assert_eq!(t.decrypt(&ticket), None, "file {file}");
        }
    }

    #[test]
    fn two_instances_with_copies_of_one_secret_open_each_others_tickets() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ta = started(&tickets(Some(&secret_file(a.path(), SECRET)), HOUR), NOW);
        // B starts an hour later, from its own (never rewritten) copy.
        let tb = started(
            &tickets(Some(&secret_file(b.path(), SECRET)), HOUR),
            NOW + HOUR,
        );
        let ticket = ta.encrypt(b"from A").unwrap();
        assert_eq!(tb.decrypt(&ticket).as_deref(), Some(&b"from A"[..]));
        // A's clock is an hour behind B's: B's tickets are of A's next period, accepted too.
        let ticket = tb.encrypt(b"from B").unwrap();
        assert_eq!(ta.decrypt(&ticket).as_deref(), Some(&b"from B"[..]));
        // Rows that must not open: another secret, random keys, a tampered ticket.
        let c = tempfile::tempdir().unwrap();
        let other = started(
            &tickets(
                Some(&secret_file(c.path(), &SECRET.replace('0', "1"))),
                HOUR,
            ),
            NOW,
        );
        let random = started(&tickets(None, HOUR), NOW);
        let ticket = ta.encrypt(b"from A").unwrap();
        assert_eq!(other.decrypt(&ticket), None, "another secret");
        assert_eq!(random.decrypt(&ticket), None, "random keys");
        for i in [0, 5, ticket.len() / 2, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(ta.decrypt(&bad), None, "byte {i} flipped");
        }
        for len in [0, 3, 4, 16, 31] {
            assert_eq!(ta.decrypt(&ticket[..len]), None, "cut to {len}");
        }
    }

    #[test]
    fn the_file_is_rewritten_to_the_previous_period_and_gives_no_older_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(dir.path(), SECRET);
        let t = started(&tickets(Some(&path), HOUR), NOW);
        let now_period = NOW / HOUR;
        assert_eq!(
            t.accepted_periods(),
            [now_period, now_period - 1, now_period + 1]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(SECRET), "the bare secret is gone");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let anchor = Anchor::parse(text.as_bytes(), HOUR).unwrap();
        assert_eq!(anchor.period, now_period - 1);
        // The key in the file is the ratchet of the bare secret's key to that period…
        let bare = Anchor::parse(SECRET.as_bytes(), HOUR).unwrap();
        assert_eq!(
            *bare.advance(now_period - 1).unwrap(),
            *anchor.key,
            "the file holds K[p-1]"
        );
        // …and nothing older can be had from it.
        assert!(anchor.advance(now_period - 2).is_none());
        let older = bare.advance(now_period - 2).unwrap();
        let mut k = anchor.key.clone();
        for _ in 0..1000 {
            assert_ne!(*k, *older);
            *k = ratchet(&k);
        }
        // A rotation rewrites it again.
        t.rotate_at(NOW + 3 * HOUR);
        let text = std::fs::read_to_string(&path).unwrap();
        let rotated = Anchor::parse(text.as_bytes(), HOUR).unwrap();
        assert_eq!(rotated.period, now_period + 2);
        assert_eq!(*rotated.key, *bare.advance(now_period + 2).unwrap());
        // Restarting from the rewritten file gives the same keys.
        let again = started(&tickets(Some(&path), HOUR), NOW + 3 * HOUR);
        let ticket = t.encrypt(b"s").unwrap();
        assert_eq!(again.decrypt(&ticket).as_deref(), Some(&b"s"[..]));
    }

    #[test]
    fn a_clock_behind_the_files_period_uses_the_files_key() {
        let dir = tempfile::tempdir().unwrap();
        let ahead = Anchor {
            period: NOW / HOUR + 5,
            key: Zeroizing::new([7; 32]),
        };
        let path = secret_file(dir.path(), &ahead.file_text(HOUR));
        let t = started(&tickets(Some(&path), HOUR), NOW);
        let want = [ahead.period + 1, ahead.period, ahead.period + 2];
        assert_eq!(t.accepted_periods(), want);
        // The file keeps that period, and a rotation before the clock reaches it changes nothing.
        t.rotate_at(NOW + HOUR);
        assert_eq!(t.accepted_periods(), want);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            Anchor::parse(text.as_bytes(), HOUR).unwrap().period,
            ahead.period
        );
    }

    #[test]
    fn file_contents_that_cannot_be_used_say_why_without_quoting_the_file() {
        let key = "ab".repeat(32);
        // (content, what the reason mentions)
        let rows = [
            (
                format!("{FILE_TAG} rotation=60 period=5 key={key}"),
                "rotation of 60s",
            ),
            (
                format!("{FILE_TAG} rotation=3600 period=5 key=abc"),
                "64 hex digits",
            ),
            (
                format!("{FILE_TAG} rotation=3600 period=x key={key}"),
                "64 hex digits",
            ),
            (
                format!("{FILE_TAG} rotation=3600 key={key}"),
                "64 hex digits",
            ),
            (
                format!("{FILE_TAG} rotation=3600 period=5 key={key} extra"),
                "64 hex digits",
            ),
            (
                format!("{FILE_TAG} rotation=3600 period=5 key={}", "zz".repeat(32)),
                "64 hex digits",
            ),
        ];
        for (content, want) in rows {
            let err = Anchor::parse(content.as_bytes(), HOUR).unwrap_err();
            assert!(err.contains(want), "{content}: {err}");
            assert!(!err.contains(&key), "{content}: {err}");
        }
        // A tag that is only a prefix of a longer word is a bare secret.
        let bare = format!("{FILE_TAG}x{key}");
        assert_eq!(
            Anchor::parse(bare.as_bytes(), HOUR).unwrap().period,
            ANCHOR_UNIX / HOUR
        );
    }

    #[test]
    fn disabled_tickets_issue_and_accept_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(dir.path(), SECRET);
        let t = started(&tickets(Some(&path), HOUR), NOW);
        let ticket = t.encrypt(b"s").unwrap();
        assert!(t.enabled());
        let off = config::Tickets {
            enabled: false,
            ..tickets(Some(&path), HOUR)
        };
        t.start_at(&off, NOW).unwrap();
        assert!(!t.enabled());
        assert_eq!(t.encrypt(b"s"), None);
        assert_eq!(t.decrypt(&ticket), None);
        assert!(!Ticketer::new().enabled(), "before start");
    }

    #[test]
    fn a_reload_keeps_random_keys_unless_the_config_changed() {
        let t = started(&tickets(None, HOUR), NOW);
        let ticket = t.encrypt(b"s").unwrap();
        t.start_at(&tickets(None, HOUR), NOW).unwrap();
        assert!(t.decrypt(&ticket).is_some(), "unchanged");
        t.start_at(&tickets(None, 2 * HOUR), NOW).unwrap();
        assert_eq!(t.decrypt(&ticket), None, "rotation changed");
        assert_eq!(t.lifetime(), 7200);
    }

    #[test]
    fn the_key_schedule_matches_the_readme_test_vectors() {
        let hex = |k: &[u8; 32]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        // (what, value, the README's)
        let rows = [
            (
                "the next period's key",
                hex(&ratchet(&key)),
                "0e3f79ded2011ccc1f859cc2aacbc335ea9eaf2e1663f1b4059405bd4a96f605",
            ),
            (
                "the AEAD key",
                hex(&blake3::derive_key(AEAD_CONTEXT, &key)),
                "9be3450482500bcd8502c2b8613cc7c22e937010de63daf9c0cb57fd880458b8",
            ),
            (
                "the anchor key of the bare secret written as 64 hex digits",
                hex(&Anchor::parse(hex(&key).as_bytes(), HOUR).unwrap().key),
                "0dd4280690dfc2f3e534ca71d38272af78d98a7e6e4295ecc7e85e63b8f546fa",
            ),
            (
                "the anchor period, hourly",
                Anchor::parse(hex(&key).as_bytes(), HOUR)
                    .unwrap()
                    .period
                    .to_string(),
                "490896",
            ),
        ];
        for (what, got, want) in rows {
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_failed_reload_keeps_the_keys_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let t = started(&tickets(None, HOUR), NOW);
        let ticket = t.encrypt(b"s").unwrap();
        let missing = dir.path().join("missing");
        let err = t.start_at(&tickets(Some(&missing), HOUR), NOW).unwrap_err();
        assert_eq!(err.path, missing);
        assert!(t.decrypt(&ticket).is_some());
    }

    #[test]
    fn a_file_edited_by_hand_or_stating_an_unreachable_period_is_refused() {
        let key = "ab".repeat(32);
        let anchor = ANCHOR_UNIX / HOUR;
        // (content, what the reason mentions)
        let rows = [
            (
                format!("{FILE_TAG} rotation=3600 period={anchor} period=7 key={key}"),
                "64 hex digits",
            ),
            (
                format!("{FILE_TAG} rotation=3600 rotation=3600 period={anchor} key={key}"),
                "64 hex digits",
            ),
            (
                format!("{FILE_TAG} rotation=3600 period={anchor} key={key} key={key}"),
                "64 hex digits",
            ),
            (
                format!("{FILE_TAG} rotation=3600 period=0 key={key}"),
                "before 2026",
            ),
            (
                format!("{FILE_TAG} rotation=3600 period={} key={key}", anchor - 1),
                "before 2026",
            ),
        ];
        for (content, want) in rows {
            let err = Anchor::parse(content.as_bytes(), HOUR).unwrap_err();
            assert!(err.contains(want), "{content}: {err}");
            assert!(!err.contains(&key), "{content}: {err}");
        }
        // Ahead of the clock: at most a day (two periods when a period is longer).
        let clock = NOW / HOUR;
        // (rotation, periods ahead of the clock, usable)
        let ahead = [
            (HOUR, 0, true),
            (HOUR, 24, true),
            (HOUR, 25, false),
            (60, 1440, true),
            (60, 1441, false),
            (86_400, 2, true),
            (86_400, 3, false),
            (HOUR, (1 << 40) - clock - 1, false),
        ];
        for (rotation, n, usable) in ahead {
            let period = NOW / rotation + n;
            let text = format!("{FILE_TAG} rotation={rotation} period={period} key={key}");
            let a = Anchor::parse(text.as_bytes(), rotation).unwrap();
            let got = a.usable_at(rotation, NOW);
            assert_eq!(got.is_ok(), usable, "{rotation}s, {n} ahead: {got:?}");
            if let Err(e) = got {
                assert!(
                    e.contains("ahead of this machine's clock") && !e.contains(&key),
                    "{e}"
                );
            }
        }
        // Started from such a file: refused, nothing rewritten.
        let dir = tempfile::tempdir().unwrap();
        let far = format!("{FILE_TAG} rotation=3600 period={} key={key}", clock + 25);
        let path = secret_file(dir.path(), &far);
        let err = Ticketer::new()
            .start_at(&tickets(Some(&path), HOUR), NOW)
            .unwrap_err();
        assert!(err.to_string().contains("ahead"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), far);
    }

    #[test]
    fn a_secret_file_reached_through_a_link_is_rewritten_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let target = secret_file(dir.path(), SECRET);
        let link = dir.path().join("link.secret");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let t = started(&tickets(Some(&link), HOUR), NOW);
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let text = std::fs::read_to_string(&target).unwrap();
        assert!(
            text.starts_with(FILE_TAG),
            "the target is rewritten: {text}"
        );
        assert!(!text.contains(SECRET));
        t.rotate_at(NOW + HOUR);
        let rotated = std::fs::read_to_string(&target).unwrap();
        assert!(
            rotated.contains(&format!("period={} ", NOW / HOUR)),
            "{rotated}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
    }

    #[test]
    fn a_fresh_secret_written_while_running_is_never_overwritten_by_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(dir.path(), SECRET);
        let t = started(&tickets(Some(&path), HOUR), NOW);
        let fresh = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210\n";
        // Written in place (same inode) and by rename (a new file): both are kept.
        for by_rename in [false, true] {
            if by_rename {
                let tmp = dir.path().join("new");
                std::fs::write(&tmp, fresh.repeat(2)).unwrap();
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            } else {
                std::fs::write(&path, fresh).unwrap();
            }
            let before = std::fs::read_to_string(&path).unwrap();
            t.rotate_at(NOW + HOUR);
            t.rotate_at(NOW + 2 * HOUR);
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                before,
                "rename {by_rename}"
            );
        }
        // Taken into use (SIGHUP): rewritten from then on.
        t.start_at(&tickets(Some(&path), HOUR), NOW + 2 * HOUR)
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(FILE_TAG), "{text}");
        t.rotate_at(NOW + 3 * HOUR);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("period={} ", NOW / HOUR + 2)),
            "{text}"
        );
    }
}
