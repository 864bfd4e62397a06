//! The keyed per-client rate limiter, its route policies and the `Retry-After` value.
//!
//! Owns one [`governor`] keyed limiter per policy (the default quota first, then each
//! `[[rate_limit.route]]` in config order) and the process-random key that turns a client
//! address into a bucket key. A client is its IPv4 address, or its IPv6 address truncated to
//! `rate_limit.ipv6_prefix`; the bucket key is a keyed SipHash of that, so the maps hold
//! 64-bit numbers that cannot be turned back into addresses without the key, which never
//! leaves this process's memory.
//!
//! With `[rate_limit.global]`, a request this tier allows then goes to the fleet-wide tier
//! ([`global::GlobalTier`], Redis) under the same policy: [`RateLimiter::check_tiers`].
//!
//! It must never hold a raw client address beyond one [`RateLimiter::check`] call, and never
//! log, print or return one (nor its key): [`Decision`] and [`Verdict`] carry only a policy
//! index, a tier and a number of seconds.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::{Quota, RateLimiter as Governor};
use ipnet::IpNet;

use crate::client_ip::ClientAddr;
use crate::config::RateLimit;
use crate::privacy::net::prefix_mask;

pub mod global;
mod store;

use global::{GlobalDecision, GlobalTier};
use store::ClientTable;

use crate::metrics::{LimitTier, Metrics};
use std::sync::Arc;

/// The outcome of [`RateLimiter::check`].
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Decision {
    /// Under quota (or exempt): forward the request.
    Allow,
    /// Over quota: answer 429 with `Retry-After: retry_after_secs`.
    Limited {
        /// Index into [`RateLimiter::policy_names`] of the policy that refused.
        policy: usize,
        /// Whole seconds until the bucket admits a request again, at least 1.
        retry_after_secs: u64,
    },
}

/// The outcome of [`RateLimiter::check_tiers`]: both tiers.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Verdict {
    /// Under quota on both tiers (or exempt, or Redis failed with `on_error = "allow"`).
    Allow,
    /// Over quota: answer 429 with `Retry-After: retry_after_secs`.
    Limited {
        /// Index into [`RateLimiter::policy_names`] of the policy that refused.
        policy: usize,
        /// The tier that refused.
        tier: LimitTier,
        /// Whole seconds until the tier admits a request again, at least 1.
        retry_after_secs: u64,
    },
    /// The global tier could not ask Redis and `on_error` is `"deny"`: 503 with
    /// `Retry-After: 1`.
    Unavailable {
        /// Index into [`RateLimiter::policy_names`] of the policy asked.
        policy: usize,
    },
}

/// Per-client quotas, shared by all requests (`Send + Sync`).
///
/// # Example
/// ```
/// use webprom_edge::client_ip::ClientAddr;
/// use webprom_edge::config::RateLimit;
/// use webprom_edge::ratelimit::{Decision, RateLimiter};
///
/// let cfg = RateLimit { requests_per_second: 1, burst: 1, ..RateLimit::default() };
/// let limiter = RateLimiter::new(&cfg).expect("enabled");
/// let client = ClientAddr::new("192.0.2.7".parse().unwrap());
/// assert_eq!(limiter.check(client, "/"), Decision::Allow);
/// assert!(matches!(limiter.check(client, "/"), Decision::Limited { policy: 0, .. }));
/// ```
pub struct RateLimiter {
    /// The process-random key of the bucket-key hash.
    key: RandomState,
    ipv6_prefix: u8,
    exempt: Vec<IpNet>,
    /// `policies[0]` is the default; the rest are routes in config order.
    policies: Vec<Policy>,
    /// The fleet-wide tier, asked after this one allows a request.
    global: Option<GlobalTier>,
}

/// A governor keyed limiter over pre-hashed `u64` keys.
type Keyed =
    Governor<u64, ClientTable, DefaultClock, NoOpMiddleware<<DefaultClock as Clock>::Instant>>;

struct Policy {
    /// `None` for the default policy.
    path_prefix: Option<String>,
    requests_per_second: u32,
    burst: u32,
    limiter: Keyed,
}

impl Policy {
    fn new(path_prefix: Option<String>, requests_per_second: u32, burst: u32) -> Policy {
        // The config is validated (both at least 1); fall back to 1 rather than panic.
        let rps = NonZeroU32::new(requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rps).allow_burst(burst_nz);
        Policy {
            path_prefix,
            requests_per_second,
            burst,
            limiter: Governor::new(quota, ClientTable::default(), DefaultClock::default()),
        }
    }
}

impl RateLimiter {
    /// None when cfg.enabled is false.
    pub fn new(cfg: &RateLimit) -> Option<RateLimiter> {
        if !cfg.enabled {
            return None;
        }
        let mut policies = Vec::with_capacity(1 + cfg.route.len());
        policies.push(Policy::new(None, cfg.requests_per_second, cfg.burst));
        for r in &cfg.route {
            policies.push(Policy::new(
                Some(r.path_prefix.clone()),
                r.requests_per_second,
                r.burst,
            ));
        }
        Some(RateLimiter {
            key: RandomState::new(),
            ipv6_prefix: cfg.ipv6_prefix.min(128),
            exempt: cfg.exempt.iter().map(|c| c.0).collect(),
            policies,
            global: None,
        })
    }

    /// This limiter with the fleet-wide tier `global` (built for the same config's quotas).
    pub fn with_global(mut self, global: GlobalTier) -> RateLimiter {
        self.global = Some(global);
        self
    }

    /// The fleet-wide tier, if `[rate_limit.global]` is configured.
    pub fn global(&self) -> Option<&GlobalTier> {
        self.global.as_ref()
    }

    /// The name of policy `policy` (`"default"`, or a route's `path_prefix`), for the
    /// `rate_limited_total` label.
    pub fn policy_name(&self, policy: usize) -> &str {
        self.policies
            .get(policy)
            .and_then(|p| p.path_prefix.as_deref())
            .unwrap_or("default")
    }

    /// The names of every policy, for metric labels; index-aligned with
    /// [`Decision::Limited`]'s `policy`.
    pub fn policy_names(&self) -> Vec<String> {
        self.policies
            .iter()
            .map(|p| {
                p.path_prefix
                    .clone()
                    .unwrap_or_else(|| "default".to_owned())
            })
            .collect()
    }

    /// The hot path: counts one request of `client` for `path`.
    ///
    /// A request whose path starts with a route's `path_prefix` (first match wins) is counted
    /// against that route's bucket only, so `/click` traffic does not use up the client's
    /// default bucket, and the default quota does not cap a route that allows more. An
    /// IPv4-mapped client is its IPv4 address ([`ClientAddr::new`]): one bucket, and the
    /// IPv4 exempt networks apply.
    pub fn check(&self, client: ClientAddr, path: &str) -> Decision {
        match self.check_local(client, path) {
            Ok(_) => Decision::Allow,
            Err(limited) => limited,
        }
    }

    /// Both tiers: this instance's ([`RateLimiter::check`]), then, for a request it allows,
    /// the fleet-wide one under the same policy ([`GlobalTier::check`]: usually no round trip;
    /// at most `rate_limit.global.timeout`). Exempt networks skip both. `metrics` gets the
    /// global tier's round trips and errors.
    pub async fn check_tiers(
        &self,
        client: ClientAddr,
        path: &str,
        metrics: &Arc<Metrics>,
    ) -> Verdict {
        let (policy, key) = match self.check_local(client, path) {
            Ok(Some(allowed)) => allowed,
            Ok(None) => return Verdict::Allow,
            Err(Decision::Limited {
                policy,
                retry_after_secs,
            }) => {
                return Verdict::Limited {
                    policy,
                    tier: LimitTier::Local,
                    retry_after_secs,
                };
            }
            Err(Decision::Allow) => return Verdict::Allow,
        };
        let Some(global) = &self.global else {
            return Verdict::Allow;
        };
        match global.check(policy, key, client.ip(), metrics).await {
            GlobalDecision::Allow => Verdict::Allow,
            GlobalDecision::Limited { retry_after_secs } => Verdict::Limited {
                policy,
                tier: LimitTier::Global,
                retry_after_secs,
            },
            GlobalDecision::Unavailable => Verdict::Unavailable { policy },
        }
    }

    /// The local tier: `Ok(Some((policy, bucket key)))` when allowed, `Ok(None)` when exempt,
    /// `Err` with the refusal.
    fn check_local(
        &self,
        client: ClientAddr,
        path: &str,
    ) -> Result<Option<(usize, u64)>, Decision> {
        let ip = client.ip();
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return Ok(None);
        }
        let index = self.policy_index(path);
        let limiter = &self.policies[index].limiter;
        let key = self.bucket_key(ip);
        match limiter.check_key(&key) {
            Ok(()) => Ok(Some((index, key))),
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(Decision::Limited {
                    policy: index,
                    retry_after_secs: secs.max(1),
                })
            }
        }
    }

    /// Housekeeping: drops every key whose bucket is as good as fresh, then returns the
    /// freed memory (`retain_recent` rebuilds each shard's array for the keys it keeps;
    /// `shrink_to_fit` is then a no-op, called so another store would also shrink). Takes
    /// each shard's write lock in turn, so call it from a blocking task on an interval
    /// (e.g. every 60 s), not per request.
    pub fn housekeep(&self) {
        for p in &self.policies {
            p.limiter.retain_recent();
            p.limiter.shrink_to_fit();
        }
        if let Some(global) = &self.global {
            global.housekeep();
        }
    }

    /// Number of tracked keys over all policies (for tests/bench).
    pub fn tracked(&self) -> usize {
        self.policies.iter().map(|p| p.limiter.len()).sum()
    }

    /// Whether a new config would build a limiter that behaves exactly like this one (then a
    /// SIGHUP reload keeps the existing state).
    ///
    /// Compares everything the limiter holds, not only the quotas: the IPv6 prefix (it
    /// changes the keys), the exempt networks and the route order (first match wins).
    pub fn same_quotas(&self, cfg: &RateLimit) -> bool {
        if !cfg.enabled
            || cfg.ipv6_prefix.min(128) != self.ipv6_prefix
            || cfg.exempt.len() != self.exempt.len()
            || cfg.route.len() + 1 != self.policies.len()
        {
            return false;
        }
        let exempt_same = cfg.exempt.iter().zip(&self.exempt).all(|(c, n)| c.0 == *n);
        let default = &self.policies[0];
        let default_same =
            default.requests_per_second == cfg.requests_per_second && default.burst == cfg.burst;
        let routes_same = cfg.route.iter().zip(&self.policies[1..]).all(|(r, p)| {
            p.path_prefix.as_deref() == Some(r.path_prefix.as_str())
                && p.requests_per_second == r.requests_per_second
                && p.burst == r.burst
        });
        exempt_same && default_same && routes_same
    }

    fn policy_index(&self, path: &str) -> usize {
        self.policies[1..]
            .iter()
            .position(|p| {
                p.path_prefix
                    .as_deref()
                    .is_some_and(|prefix| path.starts_with(prefix))
            })
            .map_or(0, |i| i + 1)
    }

    /// The bucket key: a keyed SipHash of the family and the (truncated) address bytes.
    fn bucket_key(&self, ip: IpAddr) -> u64 {
        let mut h = self.key.build_hasher();
        match ip {
            IpAddr::V4(v4) => {
                h.write_u8(4);
                h.write_u32(u32::from(v4));
            }
            IpAddr::V6(v6) => {
                h.write_u8(6);
                h.write_u128(u128::from(v6) & prefix_mask(self.ipv6_prefix));
            }
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cidr, RoutePolicy};
    use std::time::Duration;

    fn cfg(rps: u32, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
            ..RateLimit::default()
        }
    }

    fn ip(s: &str) -> ClientAddr {
        ClientAddr::new(s.parse().unwrap())
    }

    fn route(prefix: &str, rps: u32, burst: u32) -> RoutePolicy {
        RoutePolicy {
            path_prefix: prefix.to_owned(),
            requests_per_second: rps,
            burst,
        }
    }

    fn limited(d: Decision) -> bool {
        matches!(d, Decision::Limited { .. })
    }

    #[test]
    fn disabled_is_none() {
        let c = RateLimit {
            enabled: false,
            ..RateLimit::default()
        };
        assert!(RateLimiter::new(&c).is_none());
    }

    #[test]
    fn burst_then_limited_with_retry_after() {
        let l = RateLimiter::new(&cfg(1, 3)).unwrap();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(l.check(a, "/"), Decision::Allow);
        }
        match l.check(a, "/") {
            Decision::Limited {
                policy,
                retry_after_secs,
            } => {
                assert_eq!(policy, 0);
                assert!(retry_after_secs >= 1);
            }
            Decision::Allow => panic!("the 4th request should be limited"),
        }
        // A second client is unaffected.
        assert_eq!(l.check(ip("192.0.2.2"), "/"), Decision::Allow);
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_prefix() {
        let l = RateLimiter::new(&cfg(1, 1)).unwrap();
        assert_eq!(l.check(ip("2001:db8:1:2::1"), "/"), Decision::Allow);
        // Same /64 (the default prefix): same bucket, already used up.
        assert!(limited(l.check(ip("2001:db8:1:2:ffff::9"), "/")));
        // Another /64: its own bucket.
        assert_eq!(l.check(ip("2001:db8:1:3::1"), "/"), Decision::Allow);
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn ipv6_prefix_is_configurable() {
        let c = RateLimit {
            ipv6_prefix: 48,
            ..cfg(1, 1)
        };
        let l = RateLimiter::new(&c).unwrap();
        assert_eq!(l.check(ip("2001:db8:1:2::1"), "/"), Decision::Allow);
        assert!(limited(l.check(ip("2001:db8:1:3::1"), "/")));
        assert_eq!(l.check(ip("2001:db8:2::1"), "/"), Decision::Allow);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_ipv4() {
        let l = RateLimiter::new(&cfg(1, 1)).unwrap();
        assert_eq!(l.check(ip("::ffff:198.51.100.4"), "/"), Decision::Allow);
        assert!(limited(l.check(ip("198.51.100.4"), "/")));
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn route_policy_is_stricter_and_separate() {
        let mut c = cfg(100, 100);
        c.route = vec![route("/click", 1, 2), route("/c", 1, 1)];
        let l = RateLimiter::new(&c).unwrap();
        let a = ip("203.0.113.9");
        assert_eq!(l.check(a, "/click/1"), Decision::Allow);
        assert_eq!(l.check(a, "/click/2"), Decision::Allow);
        assert!(matches!(
            l.check(a, "/click/3"),
            Decision::Limited { policy: 1, .. }
        ));
        // The default bucket is untouched by /click traffic.
        for _ in 0..10 {
            assert_eq!(l.check(a, "/"), Decision::Allow);
        }
        // First match wins: "/c" is a later route and only counts what "/click" does not match.
        assert_eq!(l.check(a, "/cart"), Decision::Allow);
        assert!(matches!(
            l.check(a, "/cart"),
            Decision::Limited { policy: 2, .. }
        ));
    }

    #[test]
    fn exempt_networks_are_never_limited() {
        let mut c = cfg(1, 1);
        c.exempt = vec![
            "10.0.0.0/8".parse::<Cidr>().unwrap(),
            "2001:db8:ff::/48".parse::<Cidr>().unwrap(),
        ];
        let l = RateLimiter::new(&c).unwrap();
        for _ in 0..1000 {
            assert_eq!(l.check(ip("10.1.2.3"), "/"), Decision::Allow);
            assert_eq!(l.check(ip("::ffff:10.9.9.9"), "/"), Decision::Allow);
            assert_eq!(l.check(ip("2001:db8:ff:1::1"), "/"), Decision::Allow);
        }
        assert_eq!(l.tracked(), 0);
        assert_eq!(l.check(ip("11.0.0.1"), "/"), Decision::Allow);
        assert!(limited(l.check(ip("11.0.0.1"), "/")));
    }

    #[test]
    fn allowed_again_after_waiting() {
        // 4 per second: one request every 250 ms.
        let l = RateLimiter::new(&cfg(4, 1)).unwrap();
        let a = ip("192.0.2.50");
        assert_eq!(l.check(a, "/"), Decision::Allow);
        assert_eq!(
            l.check(a, "/"),
            Decision::Limited {
                policy: 0,
                retry_after_secs: 1
            }
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(l.check(a, "/"), Decision::Allow);
    }

    #[test]
    fn housekeep_drops_stale_keys_only() {
        let mut c = cfg(1000, 1);
        c.route = vec![route("/slow", 1, 1)];
        let l = RateLimiter::new(&c).unwrap();
        for i in 0..100u8 {
            l.check(ClientAddr::new(IpAddr::from([192, 0, 2, i])), "/");
        }
        l.check(ip("198.51.100.1"), "/slow");
        assert_eq!(l.tracked(), 101);
        // The default buckets refill in 1 ms; the /slow bucket needs a second.
        std::thread::sleep(Duration::from_millis(20));
        l.housekeep();
        assert_eq!(l.tracked(), 1);
        assert!(limited(l.check(ip("198.51.100.1"), "/slow")));
    }

    #[test]
    fn same_quotas() {
        let mut c = cfg(50, 100);
        c.route = vec![route("/click", 5, 10)];
        let l = RateLimiter::new(&c).unwrap();
        assert!(l.same_quotas(&c.clone()));

        let mut other = c.clone();
        other.burst = 101;
        assert!(!l.same_quotas(&other));
        let mut other = c.clone();
        other.route[0].requests_per_second = 6;
        assert!(!l.same_quotas(&other));
        let mut other = c.clone();
        other.route.push(route("/x", 1, 1));
        assert!(!l.same_quotas(&other));
        let mut other = c.clone();
        other.ipv6_prefix = 56;
        assert!(!l.same_quotas(&other));
        let mut other = c.clone();
        other.exempt = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(!l.same_quotas(&other));
        let mut other = c.clone();
        other.enabled = false;
        assert!(!l.same_quotas(&other));
    }

    #[test]
    fn policy_names_in_order() {
        let mut c = cfg(50, 100);
        c.route = vec![route("/click", 5, 10), route("/api", 20, 40)];
        let l = RateLimiter::new(&c).unwrap();
        assert_eq!(l.policy_names(), ["default", "/click", "/api"]);
    }

    #[tokio::test]
    async fn exempt_networks_skip_the_global_tier_too() {
        // A Redis where nothing listens, on_error = deny: every request that asks it is refused.
        let mut c = cfg(100, 100);
        c.exempt = vec!["10.0.0.0/8".parse::<Cidr>().unwrap()];
        // Bound, never listening: a connection is refused.
        let dead = tokio::net::TcpSocket::new_v4().unwrap();
        dead.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let global: crate::config::GlobalLimit = toml::from_str(&format!(
            "redis = \"redis://{}\"\non_error = \"deny\"\ntimeout = \"1s\"\nkey_secret_file = \"/x\"",
            dead.local_addr().unwrap()
        ))
        .unwrap();
        let secret = [7u8; 32];
        let tier = GlobalTier::new(&c, &global, &secret).unwrap();
        let l = RateLimiter::new(&c).unwrap().with_global(tier);
        let metrics = Arc::new(Metrics::new(&l.policy_names()));
        // (client, verdict).
        let rows = [
            ("10.1.2.3", Verdict::Allow),
            ("::ffff:10.9.9.9", Verdict::Allow),
            ("192.0.2.1", Verdict::Unavailable { policy: 0 }),
        ];
        for (client, want) in rows {
            assert_eq!(
                l.check_tiers(ip(client), "/", &metrics).await,
                want,
                "{client}"
            );
        }
        let text = metrics.render();
        let line = "webprom_edge_global_limit_errors_total{kind=\"connection\"} 1";
        assert!(text.contains(line), "{text}");
        // The local tier refuses first, without asking the global one.
        let mut c = cfg(1, 1);
        c.global = Some(global.clone());
        let tier = GlobalTier::new(&c, &global, &secret).unwrap();
        let l = RateLimiter::new(&c).unwrap().with_global(tier);
        let a = ip("192.0.2.2");
        assert_eq!(l.check(a, "/"), Decision::Allow);
        assert!(matches!(
            l.check_tiers(a, "/", &metrics).await,
            Verdict::Limited {
                tier: LimitTier::Local,
                ..
            }
        ));
    }

    #[test]
    fn limiter_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RateLimiter>();
    }
}
