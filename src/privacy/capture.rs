//! The capture phase: derives the allowed facts of a request (policy P1; the record schema,
//! `docs/access-record.schema.json`) from its head and the
//! client address, and completes them into an [`Observation`] when the response ends.
//!
//! This is the only code that reads the raw address and the request headers for recording; it
//! keeps only derived values (pseudonym, network, country, families, language, normalised path)
//! and drops the rest. It never logs.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::{ACCEPT_LANGUAGE, HeaderName, USER_AGENT};

use super::geo::{Country, GeoDb, GeoError};
use super::host::{ListedHosts, RecordedHost};
use super::keys::{Key, Pseudonym, pseudonym};
use super::lang::primary_language_of;
use super::net::{Network, truncate};
use super::observation::{HttpProto, MethodClass, Observation};
use super::path::RecordedPath;
use super::ua::{Device, UaError, UaParser};
use crate::client_ip::ClientAddr;
use crate::config::Config;
use crate::epoch::Epoch;
use crate::fields::elements;

static SEC_CH_UA: HeaderName = HeaderName::from_static("sec-ch-ua");
static SEC_CH_UA_PLATFORM: HeaderName = HeaderName::from_static("sec-ch-ua-platform");

/// Distinct user agents remembered by the parser's cache.
const UA_CACHE: usize = 16 * 1024;

/// The key in use and the epoch it belongs to.
pub struct EpochKey {
    /// The UTC day of the key.
    pub epoch: Epoch,
    /// The key.
    pub key: Key,
}

/// The capture's shared state: the current key, the country database, the UA parser.
pub struct Capture {
    key: ArcSwap<EpochKey>,
    geo: ArcSwapOption<GeoDb>,
    ua: UaParser,
    /// `server.hosts`; swapped on SIGHUP.
    hosts: ArcSwap<ListedHosts>,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    pseudonym_ipv6_prefix: u8,
    precision_secs: i64,
    /// Bumped whenever the key or the country database changes, so [`ClientMemo`]s made
    /// before it are not used after it.
    generation: AtomicU64,
}

/// What one connection remembers of the facts derived from its client's address, so that a
/// connection carrying many requests of one client computes the pseudonym (a keyed BLAKE3
/// hash), the network and the country once per key and database, not once per request.
///
/// Lives exactly as long as the connection (which holds the peer address anyway), prints
/// nothing, and is only read by [`Capture::begin`].
#[derive(Default)]
pub struct ClientMemo(Mutex<Option<ClientFacts>>);

#[derive(Clone, Copy)]
struct ClientFacts {
    client: ClientAddr,
    generation: u64,
    pseudonym: Pseudonym,
    net: Network,
    country: Option<Country>,
}

/// What is known of a request before its response: allowed fields only.
pub struct Pending {
    started: Instant,
    obs: Observation,
}

/// Why the capture could not be built. A build defect, never caused by the configuration or a
/// request.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The built-in user-agent rules did not load.
    #[error("user-agent parser: {0}")]
    UserAgentRules(#[from] UaError),
}

/// Opens the country database at `path`; an empty path means no database.
pub fn open_geo(path: &Path) -> Result<Option<GeoDb>, GeoError> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    GeoDb::open(path).map(Some)
}

impl Capture {
    /// Builds the capture from the config, today's key and the opened country database.
    ///
    /// # Errors
    /// [`CaptureError::UserAgentRules`] when the built-in user-agent rules do not load.
    pub fn new(
        config: &Config,
        key: EpochKey,
        geo: Option<GeoDb>,
    ) -> Result<Capture, CaptureError> {
        let ua = UaParser::new(UA_CACHE)?;
        Ok(Capture {
            key: ArcSwap::from_pointee(key),
            geo: ArcSwapOption::from(geo.map(Arc::new)),
            ua,
            hosts: ArcSwap::from_pointee(ListedHosts::new(&config.server.hosts)),
            ipv4_prefix: config.privacy.ipv4_prefix,
            ipv6_prefix: config.privacy.ipv6_prefix,
            pseudonym_ipv6_prefix: config.privacy.pseudonym_ipv6_prefix,
            precision_secs: config.privacy.timestamp_precision.0.as_secs().max(1) as i64,
            generation: AtomicU64::new(0),
        })
    }

    /// Installs the key of a new epoch (at the UTC midnight rollover).
    pub fn set_key(&self, key: EpochKey) {
        self.key.store(Arc::new(key));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The epoch of the key in use.
    pub fn epoch(&self) -> Epoch {
        self.key.load().epoch
    }

    /// The country database in use, if any.
    pub fn geo(&self) -> Option<Arc<GeoDb>> {
        self.geo.load_full()
    }

    /// Swaps in another country database (SIGHUP, or its file changed).
    pub fn set_geo(&self, geo: Option<GeoDb>) {
        self.geo.store(geo.map(Arc::new));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Derives the allowed facts of a request of `client`, arriving on the connection that
    /// owns `memo`. `host` is the request's authority as forwarding decided it (normalised,
    /// without the port), recorded only when `server.hosts` lists it.
    pub fn begin<B>(
        &self,
        client: ClientAddr,
        req: &http::Request<B>,
        host: Option<&str>,
        memo: &ClientMemo,
    ) -> Pending {
        let (started, ts, epoch, facts) = self.stamp(client, memo);
        let headers = req.headers();
        let get = |name: &HeaderName| headers.get(name).map(|v| v.as_bytes());
        // Client Hints are structured fields that may arrive in several lines: pass them all.
        let all = |name: &HeaderName| headers.get_all(name).into_iter().map(|v| v.as_bytes());
        let device = self
            .ua
            .parse(get(&USER_AGENT), all(&SEC_CH_UA), all(&SEC_CH_UA_PLATFORM));
        let obs = Observation {
            ts,
            epoch,
            client: facts.pseudonym,
            net: facts.net,
            country: facts.country,
            device,
            lang: primary_language_of(elements(headers.get_all(ACCEPT_LANGUAGE), b',')),
            method: MethodClass::of(req.method()),
            host: host.and_then(|h| self.hosts.load().recorded(h)),
            path: RecordedPath::of(req.uri().path()),
            status: 0,
            bytes_sent: 0,
            duration_us: 0,
            proto: if req.version() == http::Version::HTTP_2 {
                HttpProto::Http2
            } else {
                HttpProto::Http1
            },
            limited: false,
        };
        Pending { started, obs }
    }

    /// The facts of a request whose head could not be read (the HTTP/1.1 parser refused it
    /// before any handler saw it): only the connection's peer and protocol are known. The
    /// record says `method` `OTHER`, `path` `""` (unread), unknown browser, OS and language,
    /// no host.
    pub fn begin_unread(&self, peer: ClientAddr, proto: HttpProto, memo: &ClientMemo) -> Pending {
        let (started, ts, epoch, facts) = self.stamp(peer, memo);
        let obs = Observation {
            ts,
            epoch,
            client: facts.pseudonym,
            net: facts.net,
            country: facts.country,
            device: Device::UNKNOWN,
            lang: None,
            method: MethodClass::Other,
            host: None,
            path: RecordedPath::unread(),
            status: 0,
            bytes_sent: 0,
            duration_us: 0,
            proto,
            limited: false,
        };
        Pending { started, obs }
    }

    /// What every record starts with: the start instant, the timestamp truncated to
    /// `timestamp_precision`, the key's epoch and the client's derived facts.
    fn stamp(&self, client: ClientAddr, memo: &ClientMemo) -> (Instant, i64, Epoch, ClientFacts) {
        let started = Instant::now();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let ts = now - now.rem_euclid(self.precision_secs);
        // Read before the key: a key swapped in between only makes the memo look stale.
        let generation = self.generation.load(Ordering::Acquire);
        let key = self.key.load();
        let facts = self.client_facts(client, generation, &key, memo);
        (started, ts, key.epoch, facts)
    }

    /// The pseudonym, network and country of `client`: from the memo when it holds this
    /// client under the current key and database, computed (and remembered) otherwise. A memo
    /// busy on another thread is passed by, never waited for.
    fn client_facts(
        &self,
        client: ClientAddr,
        generation: u64,
        key: &EpochKey,
        memo: &ClientMemo,
    ) -> ClientFacts {
        let mut slot = memo.0.try_lock().ok();
        if let Some(Some(facts)) = slot.as_deref()
            && facts.client == client
            && facts.generation == generation
        {
            return *facts;
        }
        let facts = ClientFacts {
            client,
            generation,
            pseudonym: pseudonym(&key.key, client, self.pseudonym_ipv6_prefix),
            net: truncate(client, self.ipv4_prefix, self.ipv6_prefix),
            country: self.geo.load().as_ref().and_then(|db| db.lookup(client)),
        };
        if let Some(slot) = slot.as_deref_mut() {
            *slot = Some(facts);
        }
        facts
    }

    /// Replaces the host names recorded (`server.hosts`, on SIGHUP); requests already past
    /// capture keep the name they matched.
    pub fn set_hosts(&self, hosts: &[String]) {
        self.hosts.store(Arc::new(ListedHosts::new(hosts)));
    }

    /// `host` (normalised: lowercase, without port or trailing dot) as `server.hosts` lists
    /// it, when it does: the only host name a redirect of the proxy's own may name.
    pub fn listed_host(&self, host: &str) -> Option<RecordedHost> {
        self.hosts.load().recorded(host)
    }
}

impl Pending {
    /// Completes the record when the response has ended (or the client went away).
    pub fn finish(mut self, status: u16, bytes_sent: u64, limited: bool) -> Observation {
        self.obs.status = status;
        self.obs.bytes_sent = bytes_sent;
        self.obs.duration_us = self.started.elapsed().as_micros() as u64;
        self.obs.limited = limited;
        self.obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> Capture {
        let geo = open_geo(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/geo/country.mmdb"))
            .expect("the default country database");
        let key = EpochKey {
            epoch: Epoch::today(),
            key: Key::from_bytes([7; 32]),
        };
        Capture::new(&Config::default(), key, geo).expect("capture")
    }

    fn observe(capture: &Capture, ip: &str, memo: &ClientMemo) -> Observation {
        let client = ClientAddr::new(ip.parse().unwrap());
        let req = http::Request::get("/").body(()).unwrap();
        capture
            .begin(client, &req, None, memo)
            .finish(200, 0, false)
    }

    #[test]
    fn memo_never_answers_for_another_client_key_or_database() {
        let capture = capture();
        let memo = ClientMemo::default();
        let fresh = |ip| observe(&capture, ip, &ClientMemo::default());
        // Two clients alternating on one connection (a trusted proxy's): each its own facts.
        for _ in 0..3 {
            for ip in ["81.26.200.10", "8.8.8.8"] {
                let (on_memo, alone) = (observe(&capture, ip, &memo), fresh(ip));
                assert!(on_memo.client == alone.client, "{ip}");
                assert_eq!(on_memo.net, alone.net, "{ip}");
                assert_eq!(on_memo.country, alone.country, "{ip}");
            }
        }
        assert!(observe(&capture, "81.26.200.10", &memo).country.is_some());

        // A new key: new pseudonyms at once, on the same connection.
        let before = observe(&capture, "81.26.200.10", &memo).client;
        capture.set_key(EpochKey {
            epoch: Epoch::today(),
            key: Key::from_bytes([8; 32]),
        });
        let after = observe(&capture, "81.26.200.10", &memo).client;
        assert!(after != before);
        assert!(after == fresh("81.26.200.10").client);

        // The database removed: no country, on the same connection.
        capture.set_geo(None);
        assert_eq!(observe(&capture, "81.26.200.10", &memo).country, None);
    }
}
