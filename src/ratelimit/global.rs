//! The global (fleet-wide) rate-limit tier, `[rate_limit.global]`: the quotas of `[rate_limit]`
//! kept once for the whole fleet in Redis (or Valkey), after this instance's own tier allowed
//! the request.
//!
//! Owns the Redis connection ([`redis::aio::ConnectionManager`], which reconnects by itself),
//! the GCRA script run atomically on the server ([`GCRA_SCRIPT`]: Redis's clock, one round trip,
//! no read-modify-write from here), the HMAC key that turns a client into its Redis key, the
//! table of leases (a share of a client's budget granted by Redis, spent here without a round
//! trip) and the tier's state (ok or degraded, with a background probe while degraded).
//!
//! What it must never do: send, log or keep an address (Redis keys are an HMAC of the policy and
//! the truncated address, values are numbers; the lease table is keyed by the local tier's
//! keyed hash), log the Redis password, or hold a lock across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ring::hmac;

use crate::config::{GlobalLimit, OnError, RateLimit};
use crate::metrics::{GlobalLimitError, Metrics};
use crate::privacy::net::prefix_mask;

/// The GCRA (RFC-less "generic cell rate algorithm", as in ATM's I.371) on Redis's own clock.
///
/// `KEYS[1]`: the bucket; `ARGV`: the emission interval (µs per request), the burst, and the
/// number of requests wanted. The value is the theoretical arrival time (µs since the epoch);
/// its TTL is the time until the bucket is full again (then it is as good as absent). Grants
/// `n = min(want, available)` at once and returns `{n, retry_after_µs}` (the wait until one
/// request is available when `n` is 0, else 0).
///
/// A value this script did not write is never an error of the tier: a key of another type
/// (`WRONGTYPE`) or a value that is not a number counts as a full bucket (and is overwritten
/// by the next grant); a time further ahead than one whole bucket (a value written by hand, or
/// by an instance with a slower quota during a rollout) counts as an empty bucket and is
/// rewritten as one, so the wait is at most one emission interval and never years, and the
/// bucket refills as any other. (A wait from this script is never over one emission interval,
/// which is at most a second: `requests_per_second` is at least 1.)
pub const GCRA_SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local old = redis.pcall('GET', KEYS[1])
if type(old) ~= 'string' then old = '0' end
local tat = tonumber(old) or 0
if tat ~= tat or tat < now then tat = now end
local tau = interval * burst
if tat > now + tau then
  tat = now + tau
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.max(1, math.ceil(tau / 1000)))
end
local available = math.floor((now + tau - tat) / interval)
local n = math.min(want, available)
if n <= 0 then
  return {0, tat + interval - tau - now}
end
tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
return {n, 0}
";

/// The prefix of every Redis key the tier writes.
pub const KEY_PREFIX: &str = "webprom-edge:rl:";

/// The BLAKE3 context that derives the HMAC key from `key_secret_file` (never used raw).
const KEY_CONTEXT: &str = "webprom-edge 2026-11 rate_limit.global bucket key (HMAC-SHA256)";

/// The most requests one lease holds, whatever the quota. The overshoot is bounded first by an
/// eighth of the burst per instance ([`lease_size`]); this cap only matters for quotas with a
/// burst over 32 768. At 4 096, a client at 40 000 req/s costs an instance about 20 round trips
/// per second, and a refill asked with half the lease left (2 048 requests, 50 ms at that rate)
/// lands before the lease runs out even on a saturated machine: the load benchmark measured
/// round trips of 6.5 ms on average there (the proxy's one core busy, so Redis's answer waits
/// its turn), and a cap of 64 or 1 024 lost that race.
pub const MAX_LEASE: u32 = 4096;

/// The most leases the table keeps (over all shards); a client arriving when it is full is
/// asked of Redis per request (one token at a time) until housekeeping frees room.
const MAX_LEASES: usize = 1 << 17;

const SHARDS: usize = 16;

/// How long the tier skips Redis after an error (requests follow `on_error` at once) before
/// the background probe tries again.
const BACKOFF: Duration = Duration::from_millis(250);

/// How often the tier asks Redis while it is not degraded, traffic or not (one script call on a
/// key of its own): `/readyz` and `global_limit_degraded` learn of an outage within this (and
/// [`PROBE_TIMEOUT`]) on an idle instance too.
const IDLE_PROBE: Duration = Duration::from_secs(5);

/// The degraded warning is logged at most this often (a flapping Redis would fill the log).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The probe's and the connection's own deadline (a probe is off the request path).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the global tier says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalDecision {
    /// Within the fleet's quota (or Redis failed and `on_error` is `allow`).
    Allow,
    /// Over the fleet's quota: 429 with `Retry-After: retry_after_secs` (at least 1).
    Limited {
        /// Whole seconds until Redis grants a request again.
        retry_after_secs: u64,
    },
    /// Redis failed and `on_error` is `deny`: 503 with `Retry-After: 1`.
    Unavailable,
}

/// One quota as the tier sends it to Redis.
struct GlobalPolicy {
    /// `default` or the route's path prefix: part of the HMAC input, so each policy has its own
    /// keys.
    name: String,
    /// Microseconds between two requests at the sustained rate.
    interval_us: u64,
    burst: u32,
    /// The largest lease of this policy: [`lease_size`].
    max_lease: u32,
}

/// The largest lease for a quota: an eighth of the burst (so that a fleet of 8 instances
/// overshoots by at most one burst), at most what the sustained rate refills in half a
/// `sync_interval` (so a lease at the quota's rate is spent well before it lapses), at most
/// [`MAX_LEASE`], at least 1.
pub fn lease_size(requests_per_second: u32, burst: u32, sync_interval: Duration) -> u32 {
    let refill = (f64::from(requests_per_second) * sync_interval.as_secs_f64() / 2.0) as u64;
    let size = u64::from(burst / 8).min(refill).min(u64::from(MAX_LEASE));
    u32::try_from(size).unwrap_or(MAX_LEASE).max(1)
}

/// A share of one client's budget under one policy, granted by Redis.
#[derive(Debug, Clone)]
struct Lease {
    /// Requests still allowed here without asking Redis.
    tokens: u32,
    /// After this, `tokens` lapse (they were taken at most `sync_interval` ago).
    expires: Instant,
    /// The client's previous request here, to tell a steady client from an occasional one.
    last_seen: Instant,
    /// How many tokens the next grant asks for (1 ..= the policy's `max_lease`).
    want: u32,
    /// A background refill is under way.
    refilling: bool,
    /// Redis refused until then: requests are limited here without asking.
    limited_until: Option<Instant>,
}

impl Lease {
    fn new(now: Instant) -> Lease {
        Lease {
            tokens: 0,
            expires: now,
            last_seen: now,
            want: 1,
            refilling: false,
            limited_until: None,
        }
    }

    fn valid_tokens(&self, now: Instant) -> u32 {
        if now < self.expires { self.tokens } else { 0 }
    }

    /// Adds `granted` tokens valid for `sync` from `now`, holding at most `max_lease` (tokens
    /// that lapsed are dropped, and so is what two grants landing together hold beyond
    /// `max_lease`: the fleet's quota paid for them, but the overshoot bound holds).
    fn grant(&mut self, granted: u32, now: Instant, sync: Duration, max_lease: u32) {
        self.tokens = self
            .valid_tokens(now)
            .saturating_add(granted)
            .min(max_lease.max(1));
        self.expires = now + sync;
        self.limited_until = None;
    }

    /// Whether housekeeping may drop it: nothing valid, no refusal to remember, no refill.
    fn stale(&self, now: Instant) -> bool {
        self.valid_tokens(now) == 0
            && !self.refilling
            && self.limited_until.is_none_or(|t| t <= now)
    }
}

type LeaseKey = (u16, u64);

/// The fleet-wide tier; cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct GlobalTier {
    shared: Arc<Shared>,
}

struct Shared {
    /// The connection in use; the probe replaces it after a failed probe (a connection manager
    /// whose first connect failed on the server's answer, e.g. `WRONGPASS`, never retries).
    conn: ArcSwap<ConnectionManager>,
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    script: redis::Script,
    hmac: hmac::Key,
    /// BLAKE3 of the derived HMAC key: tells a changed secret on reload without keeping it twice.
    key_id: [u8; 32],
    config: GlobalLimit,
    ipv6_prefix: u8,
    policies: Vec<GlobalPolicy>,
    leases: [Mutex<HashMap<LeaseKey, Lease>>; SHARDS],
    degraded: AtomicBool,
    /// The last error's kind (`GlobalLimitError as u8`), for the requests that skip Redis.
    last_error: AtomicU8,
    /// When the tier last warned that it is degraded (Unix seconds; 0: never).
    warned_at: AtomicU64,
    /// Times it became degraded since that warning (said at debug level only).
    flaps: AtomicU64,
    /// Wakes the watcher ([`watch`]) when a request finds Redis failing.
    wake: Arc<tokio::sync::Notify>,
}

/// Why the tier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The URL is not one the Redis client accepts (the URL is not repeated: it may hold a
    /// password).
    #[error("is not a usable Redis URL ({0})")]
    Url(String),
}

impl GlobalTier {
    /// The tier for `cfg`'s quotas (index-aligned with the local tier's policies) and
    /// `cfg.global`, keyed by `secret` (the bytes of `key_secret_file`). Connects in the
    /// background: no Redis is needed to start (the tier is degraded until it answers). Must be
    /// called within a Tokio runtime (a blocking task of one will do).
    pub fn new(cfg: &RateLimit, global: &GlobalLimit, secret: &[u8]) -> Result<Self, BuildError> {
        let client = redis::Client::open(global.redis.expose())
            .map_err(|e| BuildError::Url(format!("{:?}", e.kind())))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(PROBE_TIMEOUT))
            .set_response_timeout(Some(PROBE_TIMEOUT.max(global.timeout.0)))
            .set_number_of_retries(0)
            .set_max_delay(BACKOFF);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
            .map_err(|e| BuildError::Url(format!("{:?}", e.kind())))?;
        let derived = zeroize::Zeroizing::new(blake3::derive_key(KEY_CONTEXT, secret));
        let sync = global.sync_interval.0;
        let policy = |name: &str, rps: u32, burst: u32| GlobalPolicy {
            name: name.to_owned(),
            interval_us: (1_000_000 / u64::from(rps.max(1))).max(1),
            burst: burst.max(1),
            max_lease: lease_size(rps, burst, sync),
        };
        let mut policies = vec![policy("default", cfg.requests_per_second, cfg.burst)];
        for r in &cfg.route {
            policies.push(policy(&r.path_prefix, r.requests_per_second, r.burst));
        }
        let tier = GlobalTier {
            shared: Arc::new(Shared {
                conn: ArcSwap::from_pointee(conn),
                client,
                manager_config,
                script: redis::Script::new(GCRA_SCRIPT),
                hmac: hmac::Key::new(hmac::HMAC_SHA256, derived.as_slice()),
                key_id: *blake3::hash(derived.as_slice()).as_bytes(),
                config: global.clone(),
                ipv6_prefix: cfg.ipv6_prefix.min(128),
                policies,
                leases: std::array::from_fn(|_| Mutex::new(HashMap::new())),
                // Until Redis first answers, requests go to it (each within `timeout`).
                degraded: AtomicBool::new(false),
                last_error: AtomicU8::new(GlobalLimitError::Connection as u8),
                warned_at: AtomicU64::new(0),
                flaps: AtomicU64::new(0),
                wake: Arc::new(tokio::sync::Notify::new()),
            }),
        };
        tokio::spawn(watch(
            Arc::downgrade(&tier.shared),
            tier.shared.wake.clone(),
        ));
        Ok(tier)
    }

    /// Whether `global` with `secret` would build a tier that behaves like this one (same URL,
    /// timeouts, `on_error`, key): a SIGHUP reload then keeps this one.
    pub fn same_config(&self, global: &GlobalLimit, secret: &[u8]) -> bool {
        let s = &self.shared;
        let derived = zeroize::Zeroizing::new(blake3::derive_key(KEY_CONTEXT, secret));
        s.config.redis.expose() == global.redis.expose()
            && s.config.timeout == global.timeout
            && s.config.on_error == global.on_error
            && s.config.sync_interval == global.sync_interval
            && s.config.key_secret_file == global.key_secret_file
            && s.key_id == *blake3::hash(derived.as_slice()).as_bytes()
    }

    /// `None` while Redis answers; else the kind of the last error (the tier is degraded:
    /// requests without a lease follow `on_error`).
    pub fn degraded(&self) -> Option<GlobalLimitError> {
        self.shared
            .degraded
            .load(Ordering::Acquire)
            .then(|| self.shared.last_error())
    }

    /// The Redis key of `ip` under policy `policy`: [`KEY_PREFIX`] and the hex of the first 128
    /// bits of HMAC-SHA256(key, len(name) ‖ name ‖ family ‖ truncated address). Holds no address.
    pub fn redis_key(&self, policy: usize, ip: IpAddr) -> String {
        let name = self
            .shared
            .policies
            .get(policy)
            .map_or("default", |p| p.name.as_str());
        let mut ctx = hmac::Context::with_key(&self.shared.hmac);
        ctx.update(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(name.as_bytes());
        match ip {
            IpAddr::V4(v4) => {
                ctx.update(&[4]);
                ctx.update(&v4.octets());
            }
            IpAddr::V6(v6) => {
                ctx.update(&[6, self.shared.ipv6_prefix]);
                let masked = u128::from(v6) & prefix_mask(self.shared.ipv6_prefix);
                ctx.update(&masked.to_be_bytes());
            }
        }
        let tag = ctx.sign();
        let mut key = String::with_capacity(KEY_PREFIX.len() + 32);
        key.push_str(KEY_PREFIX);
        for b in &tag.as_ref()[..16] {
            key.push(char::from(HEX[usize::from(b >> 4)]));
            key.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        key
    }

    /// One request of the client `ip` (whose local bucket key is `local_key`) under policy
    /// `policy` (index-aligned with the local tier's), after the local tier allowed it.
    ///
    /// Spends a token of the client's lease when it has one (no round trip; a steady client's
    /// lease is refilled in the background before it runs out); else asks Redis, waiting at
    /// most `timeout`. A failure (or a degraded tier) follows `on_error` at once, counted in
    /// `global_limit_errors_total`.
    pub async fn check(
        &self,
        policy: usize,
        local_key: u64,
        ip: IpAddr,
        metrics: &Arc<Metrics>,
    ) -> GlobalDecision {
        let s = &self.shared;
        let Some(p) = s.policies.get(policy) else {
            return GlobalDecision::Allow;
        };
        let sync = s.config.sync_interval.0;
        let key: LeaseKey = (u16::try_from(policy).unwrap_or(u16::MAX), local_key);
        let now = Instant::now();
        let degraded = s.degraded.load(Ordering::Acquire);
        // Degraded by a slow answer (not a refusal or a lost connection): leases are still
        // refilled in the background (no request waits for it, one refill per lease at a
        // time, each bounded by a second), so a steady client keeps its lease when only the
        // request timeout is too short for this moment's round trips. Otherwise not: a Redis
        // that is down would get one attempt per request.
        let no_refill = degraded && s.last_error() != GlobalLimitError::Timeout;
        let (want, leads) = {
            let mut map = s.shard(local_key);
            match map.get_mut(&key) {
                Some(lease) => match take(lease, now, sync, p.max_lease, no_refill, degraded) {
                    Take::Allowed(refill) => {
                        drop(map);
                        if let Some(want) = refill {
                            self.spawn_refill(
                                policy,
                                key,
                                self.redis_key(policy, ip),
                                want,
                                metrics,
                            );
                        }
                        return GlobalDecision::Allow;
                    }
                    Take::Limited(secs) => {
                        return GlobalDecision::Limited {
                            retry_after_secs: secs,
                        };
                    }
                    Take::Ask(want, leads) => (want, leads),
                },
                None => (1, false),
            }
        };
        if degraded {
            return self.on_error(s.last_error(), metrics);
        }
        let leading = leads.then_some(Leading { shared: s, key });
        let answer = self
            .call(
                &self.redis_key(policy, ip),
                p,
                want,
                s.config.timeout.0,
                metrics,
            )
            .await;
        drop(leading);
        let now = Instant::now();
        let mut map = s.shard(local_key);
        match answer {
            Ok((granted, retry_us)) => {
                let room = map.len() < MAX_LEASES / SHARDS;
                let lease = match map.get_mut(&key) {
                    Some(lease) => Some(lease),
                    None if room => Some(map.entry(key).or_insert_with(|| Lease::new(now))),
                    None => None,
                };
                if granted == 0 {
                    let wait = Duration::from_micros(retry_us);
                    if let Some(lease) = lease {
                        lease.limited_until = Some(now + wait);
                    }
                    return GlobalDecision::Limited {
                        retry_after_secs: whole_secs(wait),
                    };
                }
                if let Some(lease) = lease {
                    // This request spends one of the tokens granted.
                    lease.grant(granted - 1, now, sync, p.max_lease);
                    lease.last_seen = now;
                }
                GlobalDecision::Allow
            }
            Err(kind) => {
                drop(map);
                self.mark_degraded(kind);
                self.on_error(kind, metrics)
            }
        }
    }

    /// Drops the leases that hold nothing (lapsed, no refusal to remember); returns how many
    /// are left. Call it from a blocking task on an interval, like the local tier's.
    pub fn housekeep(&self) -> usize {
        let now = Instant::now();
        let mut left = 0;
        for shard in &self.shared.leases {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, lease| !lease.stale(now));
            map.shrink_to_fit();
            left += map.len();
        }
        left
    }

    /// Number of leases held (for tests).
    pub fn leases(&self) -> usize {
        self.shared
            .leases
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    fn on_error(&self, kind: GlobalLimitError, metrics: &Metrics) -> GlobalDecision {
        metrics.global_limit_error(kind);
        match self.shared.config.on_error {
            OnError::Allow => GlobalDecision::Allow,
            OnError::Deny => GlobalDecision::Unavailable,
        }
    }

    /// One script call; the round trip is recorded in `global_limit_duration_seconds`.
    async fn call(
        &self,
        key: &str,
        p: &GlobalPolicy,
        want: u32,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Result<(u32, u64), GlobalLimitError> {
        let s = &self.shared;
        let mut conn = ConnectionManager::clone(&s.conn.load());
        let started = Instant::now();
        let mut invocation = s.script.key(key);
        invocation.arg(p.interval_us).arg(p.burst).arg(want.max(1));
        // A connection found dropped (Redis restarted, a failover, CLIENT KILL, an idle timeout
        // on the server) is noticed only by the call that uses it: that call is asked once more
        // on the connection the manager makes anew, within the same `timeout`, before the tier
        // counts it as an error.
        let answer = tokio::time::timeout(timeout, invoke(&invocation, &mut conn)).await;
        metrics.global_limit_duration(started.elapsed());
        match answer {
            Err(_) => Err(GlobalLimitError::Timeout),
            Ok(Err(e)) => Err(error_kind(&e)),
            // Never a wait longer than the whole bucket takes to refill, whatever Redis says.
            Ok(Ok((granted, retry_us))) => Ok((
                u32::try_from(granted.max(0)).unwrap_or(0).min(want.max(1)),
                u64::try_from(retry_us.max(0))
                    .unwrap_or(0)
                    .min(p.interval_us.saturating_mul(u64::from(p.burst))),
            )),
        }
    }

    fn spawn_refill(
        &self,
        policy: usize,
        key: LeaseKey,
        redis_key: String,
        want: u32,
        metrics: &Arc<Metrics>,
    ) {
        let tier = self.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let s = &tier.shared;
            let Some(p) = s.policies.get(policy) else {
                return;
            };
            let answer = tier
                .call(
                    &redis_key,
                    p,
                    want,
                    s.config.timeout.0.max(PROBE_TIMEOUT),
                    &metrics,
                )
                .await;
            if let Err(kind) = answer {
                tier.mark_degraded(kind);
            }
            let now = Instant::now();
            let mut map = s.shard(key.1);
            let Some(lease) = map.get_mut(&key) else {
                return;
            };
            lease.refilling = false;
            match answer {
                Ok((0, retry_us)) => {
                    lease.limited_until = Some(now + Duration::from_micros(retry_us));
                }
                Ok((granted, _)) => {
                    lease.grant(granted, now, s.config.sync_interval.0, p.max_lease)
                }
                Err(_) => {}
            }
        });
    }

    /// Marks the tier degraded after an error of `kind` (said at most once a minute) and wakes
    /// the watcher, which asks Redis every [`BACKOFF`] until it answers.
    fn mark_degraded(&self, kind: GlobalLimitError) {
        let s = &self.shared;
        s.last_error.store(kind as u8, Ordering::Release);
        if s.degraded.swap(true, Ordering::AcqRel) {
            return;
        }
        // A Redis that flaps (slower than `timeout` now and then, the probe then answering) is
        // said once a minute, not at every flap; the flaps between are at debug level.
        let now = unix_secs();
        let last = s.warned_at.load(Ordering::Acquire);
        if now.saturating_sub(last) >= WARN_EVERY.as_secs()
            && s.warned_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let flaps = s.flaps.swap(0, Ordering::AcqRel);
            tracing::warn!(
                redis = %s.config.redis.redacted(),
                kind = kind.as_str(),
                on_error = ?s.config.on_error,
                degraded_since_last_warning = flaps,
                "global rate-limit tier degraded: Redis does not answer; requests without a lease follow rate_limit.global.on_error"
            );
        } else {
            s.flaps.fetch_add(1, Ordering::AcqRel);
            tracing::debug!(
                kind = kind.as_str(),
                "global rate-limit tier degraded again"
            );
        }
        s.wake.notify_one();
    }

    /// Replaces the connection by a new one (connecting lazily). The connection manager
    /// reconnects by itself after a dropped connection, but not after a connect that the server
    /// answered with an error (a wrong password, a server that is not Redis): without this the
    /// tier would stay degraded until a restart.
    fn reconnect(&self) {
        let s = &self.shared;
        match ConnectionManager::new_lazy_with_config(s.client.clone(), s.manager_config.clone()) {
            Ok(conn) => s.conn.store(Arc::new(conn)),
            Err(e) => {
                tracing::debug!(kind = ?e.kind(), "global rate-limit tier: new connection refused")
            }
        }
    }

    /// Runs the script on a key of its own (a write: a Redis refusing writes is not "ok").
    async fn probe(&self) -> Result<(), GlobalLimitError> {
        let s = &self.shared;
        let mut conn = ConnectionManager::clone(&s.conn.load());
        let mut invocation = s.script.key(format!("{KEY_PREFIX}probe"));
        invocation.arg(1).arg(1).arg(1);
        match tokio::time::timeout(PROBE_TIMEOUT, invoke(&invocation, &mut conn)).await {
            Err(_) => Err(GlobalLimitError::Timeout),
            Ok(Err(e)) => Err(error_kind(&e)),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

impl Shared {
    fn shard(&self, local_key: u64) -> std::sync::MutexGuard<'_, HashMap<LeaseKey, Lease>> {
        // The low bits pick the map's bucket; the high bits pick the shard.
        let i = (local_key >> 60) as usize % SHARDS;
        self.leases[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn last_error(&self) -> GlobalLimitError {
        let k = self.last_error.load(Ordering::Acquire);
        GlobalLimitError::ALL
            .into_iter()
            .find(|e| *e as u8 == k)
            .unwrap_or(GlobalLimitError::Connection)
    }
}

/// The tier's one background task: asks Redis at once (so that a Redis down at start is
/// reported, and `/readyz` says degraded, before the first request pays the timeout), then
/// every [`IDLE_PROBE`] while the tier is ok (an outage is known with no traffic too), and
/// every [`BACKOFF`] while it is degraded, each failed probe on a new connection, until Redis
/// answers (said once). `wake` cuts an idle wait short when a request finds Redis failing.
/// Holds the tier weakly: it ends with the tier (a reload that builds another).
async fn watch(weak: std::sync::Weak<Shared>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let tier = GlobalTier { shared };
        let s = &tier.shared;
        let was_degraded = s.degraded.load(Ordering::Acquire);
        match (tier.probe().await, was_degraded) {
            (Ok(()), true) => {
                s.degraded.store(false, Ordering::Release);
                if s.flaps.load(Ordering::Acquire) == 0 {
                    tracing::info!(redis = %s.config.redis.redacted(), "global rate-limit tier recovered: Redis answers again");
                } else {
                    tracing::debug!("global rate-limit tier recovered");
                }
            }
            (Ok(()), false) => {}
            (Err(kind), true) => {
                s.last_error.store(kind as u8, Ordering::Release);
                tier.reconnect();
            }
            (Err(kind), false) => tier.mark_degraded(kind),
        }
        let degraded = s.degraded.load(Ordering::Acquire);
        drop(tier);
        if !degraded {
            tokio::select! {
                () = tokio::time::sleep(IDLE_PROBE) => continue,
                () = wake.notified() => {}
            }
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

/// Clears the `refilling` mark of the lease a request leads the ask of, when that request ends:
/// answered, or dropped mid-ask because its client went away (without this, that lease would
/// never be refilled in the background again, nor dropped by housekeeping).
struct Leading<'a> {
    shared: &'a Shared,
    key: LeaseKey,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.shared.shard(self.key.1).get_mut(&self.key) {
            lease.refilling = false;
        }
    }
}

/// What a lease says about one request.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    /// Spent a token; `Some(want)`: start a background refill asking for `want`.
    Allowed(Option<u32>),
    /// Redis refused this client a moment ago: limited for this many whole seconds.
    Limited(u64),
    /// No token: ask Redis for this many now; `true`: this request leads (asks for the lease;
    /// the others meanwhile ask for their own token only) and clears `refilling` when answered.
    Ask(u32, bool),
}

/// The lease accounting of one request at `now`. A client is steady when its previous request
/// here came within a quarter of `sync`: its lease is refilled in the background once it runs
/// low (half of `want` left), and each grant asks for what the client spends in half of
/// `sync` at the pace of its last two requests (at most twice the previous `want`, at most
/// `max_lease`), so that a lease is spent before it lapses. The refill is asked with half the
/// lease left and tops it up to `want`: half a lease of headroom for the round trip. An occasional client asks Redis for
/// one token at a time (it would otherwise hold tokens that lapse unused, which the fleet's
/// quota pays for), and so does a request while another asks for the lease (many concurrent
/// requests do not each take a lease). Tokens that lapsed unused halve `want`. `no_refill`:
/// no background refill starts; `degraded`: no request leads an ask (the caller follows
/// `on_error` instead of asking).
fn take(
    lease: &mut Lease,
    now: Instant,
    sync: Duration,
    max_lease: u32,
    no_refill: bool,
    degraded: bool,
) -> Take {
    let gap = now.saturating_duration_since(lease.last_seen);
    let steady = gap < sync / 4;
    lease.last_seen = now;
    let valid = lease.valid_tokens(now);
    if valid == 0 && lease.tokens > 0 {
        // Lapsed unused: ask for less.
        lease.want = (lease.want / 2).max(1);
        lease.tokens = 0;
    }
    if valid > 0 {
        lease.tokens = valid - 1;
        let low = lease.tokens <= lease.want / 2;
        if low && steady && !lease.refilling && !no_refill {
            lease.want = paced(lease.want, gap, sync, max_lease);
            lease.refilling = true;
            // A top-up to `want`: the lease never holds more than one lease's worth.
            return Take::Allowed(Some(lease.want.saturating_sub(lease.tokens).max(1)));
        }
        return Take::Allowed(None);
    }
    if let Some(until) = lease.limited_until {
        if now < until {
            return Take::Limited(whole_secs(until - now));
        }
        lease.limited_until = None;
    }
    if steady && !lease.refilling && !degraded {
        lease.want = paced(lease.want, gap, sync, max_lease);
        lease.refilling = true;
        Take::Ask(lease.want, true)
    } else {
        Take::Ask(1, false)
    }
}

/// The requests a client `gap` apart makes in half of `sync`, at most twice `want`, within
/// 1 ..= `max_lease`.
fn paced(want: u32, gap: Duration, sync: Duration, max_lease: u32) -> u32 {
    let pace = match gap.as_secs_f64() {
        g if g > 0.0 => (sync.as_secs_f64() / 2.0 / g).min(f64::from(u32::MAX)) as u32,
        _ => u32::MAX,
    };
    pace.min(want.saturating_mul(2)).clamp(1, max_lease.max(1))
}

/// `d` in whole seconds, rounded up, at least 1 (`Retry-After`, RFC 9110 §10.2.3).
fn whole_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Runs the script once, and once more when the connection was found dropped (the manager has
/// made a new one by then): a dropped connection is noticed only by the call that uses it.
async fn invoke(
    invocation: &redis::ScriptInvocation<'_>,
    conn: &mut ConnectionManager,
) -> redis::RedisResult<(i64, i64)> {
    match invocation.invoke_async(conn).await {
        Err(e) if e.is_connection_dropped() || e.is_io_error() => {
            invocation.invoke_async(conn).await
        }
        answer => answer,
    }
}

/// Seconds since the Unix epoch (0 before it).
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The metric kind of a Redis client error.
fn error_kind(e: &redis::RedisError) -> GlobalLimitError {
    if e.is_timeout() {
        GlobalLimitError::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        GlobalLimitError::Connection
    } else {
        GlobalLimitError::Response
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutePolicy;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

    fn global_with(extra: &str) -> GlobalLimit {
        toml::from_str(&format!(
            "redis = \"redis://127.0.0.1:1\"\nkey_secret_file = \"/nonexistent\"\n{extra}"
        ))
        .unwrap()
    }

    fn global() -> GlobalLimit {
        global_with("")
    }

    fn tier(cfg: &RateLimit, secret: &[u8]) -> GlobalTier {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        GlobalTier::new(cfg, &global(), secret).unwrap()
    }

    fn cfg() -> RateLimit {
        RateLimit {
            route: vec![RoutePolicy {
                path_prefix: "/click".to_owned(),
                requests_per_second: 5,
                burst: 10,
            }],
            ..RateLimit::default()
        }
    }

    #[test]
    fn redis_keys_hold_no_address_and_differ_by_policy_client_and_secret() {
        let t = tier(&cfg(), SECRET);
        let ips: [IpAddr; 3] = [
            "192.0.2.77".parse().unwrap(),
            "198.51.100.200".parse().unwrap(),
            "2001:db8:1:2::1".parse().unwrap(),
        ];
        let mut seen = std::collections::HashSet::new();
        for ip in ips {
            for policy in 0..2 {
                let key = t.redis_key(policy, ip);
                assert!(key.starts_with(KEY_PREFIX), "{key}");
                let hex = &key[KEY_PREFIX.len()..];
                assert_eq!(hex.len(), 32, "{key}");
                assert!(hex.bytes().all(|b| HEX.contains(&b)), "{key}");
                // No textual address, nor the address bytes in hex.
                assert!(!key.contains(&ip.to_string()), "{key}");
                let bytes_hex: String = match ip {
                    IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
                    IpAddr::V6(v6) => v6.octets()[..8]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                };
                assert!(!key.contains(&bytes_hex), "{key}");
                // Same input, same key (every instance of the fleet agrees).
                assert_eq!(key, t.redis_key(policy, ip));
                assert!(seen.insert(key), "a key was repeated");
            }
        }
        // Another secret: other keys; the same secret in another tier: the same keys.
        let other = tier(&cfg(), b"another secret of at least thirty-two bytes!");
        assert_ne!(other.redis_key(0, ips[0]), t.redis_key(0, ips[0]));
        assert_eq!(
            tier(&cfg(), SECRET).redis_key(0, ips[0]),
            t.redis_key(0, ips[0])
        );
    }

    #[test]
    fn ipv6_clients_share_a_key_per_prefix() {
        let t = tier(&cfg(), SECRET);
        let key = |s: &str| t.redis_key(0, s.parse().unwrap());
        // (address, address, same key?) with the default /64.
        let rows = [
            ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true),
            ("2001:db8:1:2::1", "2001:db8:1:3::1", false),
            ("192.0.2.1", "192.0.2.2", false),
            ("2001:db8::", "2001:db8::ffff:ffff:ffff:ffff", true),
        ];
        for (a, b, same) in rows {
            assert_eq!(key(a) == key(b), same, "{a} {b}");
        }
        let c48 = RateLimit {
            ipv6_prefix: 48,
            ..cfg()
        };
        let t48 = tier(&c48, SECRET);
        assert_eq!(
            t48.redis_key(0, "2001:db8:1:2::1".parse().unwrap()),
            t48.redis_key(0, "2001:db8:1:3::1".parse().unwrap())
        );
    }

    #[test]
    fn lease_size_is_an_eighth_of_the_burst_within_the_refill_and_the_cap() {
        let s = Duration::from_secs(1);
        // (requests per second, burst, sync interval, lease).
        let rows = [
            (50, 100, s, 12),
            (1, 100, s, 1),
            (5, 10, s, 1),
            (1, 1, s, 1),
            (10_000_000, 10_000_000, s, MAX_LEASE),
            (1000, 1000, Duration::from_millis(10), 5),
            (100, 800, Duration::from_secs(4), 100.min(MAX_LEASE)),
        ];
        for (rps, burst, sync, want) in rows {
            assert_eq!(lease_size(rps, burst, sync), want, "{rps} {burst} {sync:?}");
        }
    }

    #[test]
    fn a_lease_is_sized_to_half_the_sync_interval_at_the_client_s_pace() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs(1);
        // (previous want, gap between the last two requests, sync interval, max lease, want).
        let rows = [
            (8, ms(1), s, 64, 16),
            (64, Duration::from_micros(1), s, 64, 64),
            (4, ms(125), s, 64, 4),
            (4, ms(250), s, 64, 2),
            (1, Duration::ZERO, s, 12, 2),
            (8, ms(1), s, 1, 1),
            (8, ms(1), s, 0, 1),
            (30, ms(10), Duration::from_secs(60), 64, 60),
        ];
        for (want, gap, sync, max, expect) in rows {
            assert_eq!(
                paced(want, gap, sync, max),
                expect,
                "{want} {gap:?} {sync:?} {max}"
            );
        }
    }

    #[test]
    fn a_steady_client_spends_its_lease_and_refills_it_before_it_runs_out() {
        let sync = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut lease = Lease::new(t0);
        lease.grant(8, t0, sync, 64);
        lease.want = 8;
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Steady (1 ms apart): the 4th request leaves 4 (half of 8): a refill topping the lease
        // up to 16 (twice 8: it is spent fast), so 12.
        let mut refills = Vec::new();
        for i in 1..=8u64 {
            match take(&mut lease, ms(i), sync, 64, false, false) {
                Take::Allowed(r) => refills.push(r),
                other => panic!("request {i}: {other:?}"),
            }
        }
        assert_eq!(refills.iter().flatten().collect::<Vec<_>>(), [&12]);
        assert_eq!(refills.iter().position(Option::is_some), Some(3));
        assert_eq!(lease.tokens, 0);
        // Out of tokens, refill under way: ask Redis now (the refill has not landed yet).
        assert!(matches!(
            take(&mut lease, ms(9), sync, 64, false, false),
            Take::Ask(..)
        ));
        // The refill lands: spent without asking.
        lease.refilling = false;
        lease.grant(16, ms(10), sync, 64);
        assert_eq!(
            take(&mut lease, ms(11), sync, 64, false, false),
            Take::Allowed(None)
        );
    }

    #[test]
    fn lapsed_tokens_are_not_spent_and_an_occasional_client_asks_one_at_a_time() {
        let sync = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut lease = Lease::new(t0);
        lease.grant(10, t0, sync, 64);
        lease.want = 8;
        // 2 s later: the tokens lapsed; not steady: one token at a time, want halved.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            take(&mut lease, later, sync, 64, false, false),
            Take::Ask(1, false)
        );
        assert_eq!(lease.want, 4);
        assert_eq!(lease.tokens, 0);
        // Never above the policy's lease, even when steady.
        let mut lease = Lease::new(t0);
        for i in 1..20 {
            if let Take::Ask(n, _) = take(
                &mut lease,
                t0 + Duration::from_millis(i),
                sync,
                3,
                false,
                false,
            ) {
                assert!(n <= 3, "{n}");
            }
        }
        // Degraded: a lease is spent, never refilled.
        let mut lease = Lease::new(t0);
        lease.grant(2, t0, sync, 64);
        lease.want = 8;
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert_eq!(
            take(&mut lease, ms(1), sync, 64, true, true),
            Take::Allowed(None)
        );
        assert_eq!(
            take(&mut lease, ms(2), sync, 64, true, true),
            Take::Allowed(None)
        );
        assert_eq!(
            take(&mut lease, ms(3), sync, 64, true, true),
            Take::Ask(1, false)
        );
    }

    #[test]
    fn a_lease_never_holds_more_than_the_policy_s_largest() {
        let sync = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut lease = Lease::new(t0);
        // Three grants landing together (concurrent asks): still one lease.
        for _ in 0..3 {
            lease.grant(12, t0, sync, 12);
        }
        assert_eq!(lease.tokens, 12);
        let spent = (1..=20)
            .take_while(|i| {
                matches!(
                    take(
                        &mut lease,
                        t0 + Duration::from_micros(*i),
                        sync,
                        12,
                        true,
                        true
                    ),
                    Take::Allowed(_)
                )
            })
            .count();
        assert_eq!(spent, 12);
    }

    #[test]
    fn one_of_many_concurrent_requests_asks_for_the_lease_the_others_for_one_token() {
        let sync = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut lease = Lease::new(t0);
        lease.want = 8;
        let at = |us: u64| t0 + Duration::from_micros(us);
        assert_eq!(
            take(&mut lease, at(1), sync, 64, false, false),
            Take::Ask(16, true)
        );
        for i in 2..10 {
            assert_eq!(
                take(&mut lease, at(i), sync, 64, false, false),
                Take::Ask(1, false)
            );
        }
        // The leader's answer lands: the next ask leads again.
        lease.refilling = false;
        assert!(matches!(
            take(&mut lease, at(11), sync, 64, false, false),
            Take::Ask(_, true)
        ));
    }

    #[test]
    fn a_refusal_is_remembered_until_its_retry_after() {
        let sync = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut lease = Lease::new(t0);
        lease.limited_until = Some(t0 + Duration::from_millis(1500));
        assert_eq!(
            take(
                &mut lease,
                t0 + Duration::from_millis(100),
                sync,
                8,
                false,
                false
            ),
            Take::Limited(2)
        );
        assert!(!lease.stale(t0 + Duration::from_millis(100)));
        assert!(matches!(
            take(
                &mut lease,
                t0 + Duration::from_millis(1600),
                sync,
                8,
                false,
                false
            ),
            Take::Ask(..)
        ));
        assert!(lease.stale(t0 + Duration::from_millis(1600)));
    }

    #[tokio::test]
    async fn a_request_dropped_while_it_asks_for_the_lease_leaves_it_refillable() {
        // A server that accepts and never answers: the ask waits (up to the 1 s timeout).
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                open.push(tcp);
            }
        });
        let g: GlobalLimit = toml::from_str(&format!(
            "redis = \"redis://{addr}\"\nkey_secret_file = \"/x\"\ntimeout = \"1s\""
        ))
        .unwrap();
        let t = GlobalTier::new(&cfg(), &g, SECRET).unwrap();
        let metrics = Arc::new(Metrics::new(&["default".to_owned()]));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // A steady client out of tokens: its next request leads the ask for a lease.
        let now = Instant::now();
        t.shared.shard(7).insert((0, 7), Lease::new(now));
        let refilling = || t.shared.shard(7).get(&(0, 7)).unwrap().refilling;
        let mut check = Box::pin(t.check(0, 7, ip, &metrics));
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut check).await;
        assert!(waited.is_err(), "Redis answered: {waited:?}");
        assert!(refilling(), "the request did not lead the ask");
        // Its client goes away: the request is dropped mid-ask.
        drop(check);
        assert!(!refilling(), "the lease stays marked as refilling");
        // So housekeeping may drop it (nothing valid, nothing remembered).
        assert_eq!(t.housekeep(), 0);
        held.abort();
    }

    #[test]
    fn the_same_config_and_secret_keep_the_tier() {
        let t = tier(&cfg(), SECRET);
        assert!(t.same_config(&global(), SECRET));
        assert!(!t.same_config(&global(), b"another secret of at least thirty-two bytes!"));
        let mut g = global();
        g.on_error = OnError::Deny;
        assert!(!t.same_config(&g, SECRET));
        let mut g = global();
        g.redis = "redis://127.0.0.1:2".into();
        assert!(!t.same_config(&g, SECRET));
        assert!(!t.same_config(&global_with("timeout = \"9ms\""), SECRET));
        assert!(!t.same_config(&global_with("sync_interval = \"2s\""), SECRET));
        // The same durations in other units: the same config.
        assert!(t.same_config(
            &global_with("timeout = \"5ms\"\nsync_interval = \"1000ms\""),
            SECRET
        ));
    }
}
