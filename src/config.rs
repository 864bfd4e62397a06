//! The TOML configuration: schema, defaults, and validation into typed values.
//!
//! Owns every key of the README's configuration reference. Parsing rejects unknown keys; every
//! error names the key at fault
//! (`server.listen`, `upstream.servers[1]`, …) and says what a good value looks like. Relative
//! paths are relative to the working directory the proxy was started in.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::epoch::SECS_PER_DAY;

/// A configuration problem, naming the key (or file) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not fit the schema.
    #[error("config file {path}: key `{key}`: {reason}")]
    Schema {
        /// The config file.
        path: PathBuf,
        /// The key path, e.g. `server.listen`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// toml's description, with the line.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// The key path, e.g. `privacy.ipv4_prefix`.
        key: String,
        /// What is wrong and what would fix it.
        reason: String,
    },
}

impl ConfigError {
    /// An invalid value at `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: Server,
    /// `[tls]`
    pub tls: Tls,
    /// `[upstream]`
    pub upstream: Upstream,
    /// `[client_ip]`
    pub client_ip: ClientIp,
    /// `[geoip]`
    pub geoip: GeoIp,
    /// `[privacy]`
    pub privacy: Privacy,
    /// `[access_log]`
    pub access_log: AccessLog,
    /// `[rate_limit]`
    pub rate_limit: RateLimit,
    /// `[admin]`
    pub admin: Admin,
    /// `[acme]`
    pub acme: Acme,
}

/// `[server]`: listeners, limits and timeouts of the client side.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// The TLS listener.
    pub listen: SocketAddr,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    /// Optional cleartext listener (HTTP/1.1 and h2c).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_plain: Option<SocketAddr>,
    /// Host names served; the access log records the host only when it is listed here.
    pub hosts: Vec<String>,
    /// Time allowed for a client to send a request head (and the TLS handshake).
    pub header_read_timeout: Dur,
    /// A connection with no bytes moving for this long is closed.
    pub idle_timeout: Dur,
    /// Writing to a client that takes no byte for this long gives up: the HTTP/2 stream is
    /// reset (CANCEL), the HTTP/1.1 connection closed. Also the most a graceful close (GOAWAY,
    /// the end of a keep-alive connection) waits for the client before the connection is
    /// closed.
    pub send_timeout: Dur,
    /// Largest request head accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Most field lines a request head may have (RFC 9110 §5.2); more gets 431. Pseudo-header
    /// fields do not count, except that an HTTP/2 `:authority` counts as the `Host` line it
    /// stands for; HTTP/2 `Cookie` crumbs (RFC 9113 §8.2.3) count as the one line they form.
    pub max_header_fields: usize,
    /// Largest request body accepted; larger gets 413.
    pub max_body_bytes: u64,
    /// A request body with no byte arriving for this long gets 408 (a client failure).
    pub body_read_timeout: Dur,
    /// Request bodies up to this many bytes are read whole into memory (never to disk) before
    /// an upstream connection is taken; 0 = off. At most `max_body_bytes`; unset, 65536 or
    /// `max_body_bytes` if smaller (see [`Server::body_buffer_bytes`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_buffer_bytes: Option<u64>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Dur,
    /// Whether connections from `client_ip.trusted_proxies` begin with a PROXY protocol
    /// header (HAProxy's PROXY protocol, versions 1 and 2), on both listeners.
    pub proxy_protocol: ProxyProtocol,
}

/// `server.proxy_protocol`: which PROXY protocol header versions a connection from a trusted
/// proxy must begin with (HAProxy's "The PROXY protocol", versions 1 and 2). See
/// [`crate::server::proxy_protocol`] for the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No header is read: every connection is a direct client.
    #[default]
    Off,
    /// The text header (version 1) only.
    V1,
    /// The binary header (version 2) only.
    V2,
    /// Either version.
    Any,
}

/// The smallest `server.max_header_fields`: room for `Host` and the fields every client sends.
pub const MIN_HEADER_FIELDS: usize = 10;
/// The largest `server.max_header_fields`.
pub const MAX_HEADER_FIELDS: usize = 1000;

/// The shortest duration a timeout key takes: a deadline is split into check periods (a
/// quarter of `idle_timeout`), which must not round to nothing.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// The longest duration any duration key takes (100 years): deadlines are added to the clock,
/// and a longer one would overflow it.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * SECS_PER_DAY);

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            workers: 0,
            listen_plain: None,
            hosts: vec!["localhost".into()],
            header_read_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
            send_timeout: Dur::secs(30),
            max_header_bytes: 16384,
            max_header_fields: 100,
            max_body_bytes: 10 * 1024 * 1024,
            body_read_timeout: Dur::secs(10),
            body_buffer_bytes: None,
            shutdown_grace: Dur::secs(10),
            proxy_protocol: ProxyProtocol::Off,
        }
    }
}

impl Server {
    /// The request body buffer in bytes: `body_buffer_bytes` as set, else 65536 or
    /// `max_body_bytes` if that is smaller.
    pub fn body_buffer_bytes(&self) -> u64 {
        self.body_buffer_bytes
            .unwrap_or(DEFAULT_BODY_BUFFER_BYTES.min(self.max_body_bytes))
    }
}

/// `server.body_buffer_bytes` when unset (and `max_body_bytes` is not smaller).
const DEFAULT_BODY_BUFFER_BYTES: u64 = 64 * 1024;

/// `[tls]`: the certificates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// The default certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Generate a self-signed certificate and key at these paths if missing (development only).
    pub self_signed: bool,
    /// More certificates, chosen by SNI host name.
    pub sni: Vec<SniCert>,
    /// `[tls.tickets]`: stateless session resumption (RFC 8446 §4.6.1; RFC 5077 for TLS 1.2).
    pub tickets: Tickets,
}

/// `[tls.tickets]`: session tickets, so a returning client skips the full handshake, also on
/// another instance of the fleet when every instance has the same `secret_file`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tickets {
    /// Issue and accept session tickets (TLS 1.3 and TLS 1.2).
    pub enabled: bool,
    /// A secret shared by the fleet (mode 0600) from which every instance derives the same
    /// ticket keys, ratcheted forward one-way each `rotation`; unset: random keys in this
    /// process's memory only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// How long one ticket key issues tickets; tickets of the previous key are still accepted
    /// for one more period, then that key is destroyed.
    pub rotation: Dur,
}

impl Default for Tickets {
    fn default() -> Self {
        Tickets {
            enabled: true,
            secret_file: None,
            rotation: Dur::hours(1),
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert: "certs/dev-cert.pem".into(),
            key: "certs/dev-key.pem".into(),
            self_signed: true,
            sni: Vec::new(),
            tickets: Tickets::default(),
        }
    }
}

/// `[[tls.sni]]`: a certificate for one host name.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// Host name, exact (`ads.example.com`) or one-level wildcard (`*.example.com`).
    pub host: String,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// `[upstream]`: where requests go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// Upstream servers: each a URL string, or a table `{ url, name, weight }`
    /// ([`UpstreamServer`]). Servers out of rotation (failing health checks, ejected, backing
    /// off) are skipped.
    pub servers: Vec<UpstreamServer>,
    /// How a request's server is chosen among those in rotation.
    pub balance: Balance,
    /// `[upstream.health_check]`: active health checks; absent = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// `[upstream.outlier_detection]`: passive ejection of a failing server.
    pub outlier_detection: OutlierDetection,
    /// Time allowed to open a connection to an upstream: the TCP connect and, for an
    /// `https://` server, the TLS handshake.
    pub connect_timeout: Dur,
    /// Time allowed from sending the request to receiving the response head.
    pub request_timeout: Dur,
    /// A pooled keep-alive connection idle this long is closed rather than reused. Keep it
    /// below the upstream's own keep-alive timeout (Node.js: 5 s), so that the proxy, not the
    /// upstream, closes idle connections.
    pub idle_timeout: Dur,
    /// What `X-Forwarded-For` carries upstream.
    pub forward_client_ip: ForwardClientIp,
    /// Connections per server, counting busy, idle and being opened (0 to 65535; 0 = no cap).
    /// A request for a server at its cap goes to another server with room, or waits in the
    /// queue. See [`Upstream::connection_cap`].
    pub max_connections: usize,
    /// Requests waiting per server for a connection when every server is at its cap (0 to
    /// 1048576; 0 = none wait: such a request gets 503 at once).
    pub max_queued_requests: usize,
    /// Longest wait in the queue; then the request gets 503.
    pub queue_timeout: Dur,
    /// The CA certificates (PEM) that `https://` servers are verified against, instead of the
    /// system's roots. Read once at start.
    pub ca_roots: Option<PathBuf>,
    /// The name sent as SNI to `https://` servers and verified in their certificates, instead
    /// of each server's host (a DNS name or an IP address).
    pub tls_server_name: Option<String>,
}

impl Upstream {
    /// The number of connections a server may have: `max_connections`, or for 0 (no cap) a
    /// number no server reaches (2^20).
    pub fn connection_cap(&self) -> usize {
        match self.max_connections {
            0 => 1 << 20,
            n => n,
        }
    }
}

impl Upstream {
    /// Checks the servers' names and weights, `[upstream.health_check]` and
    /// `[upstream.outlier_detection]`.
    fn validate_balancing(&self) -> Result<(), ConfigError> {
        for (i, server) in self.servers.iter().enumerate() {
            if !(1..=MAX_WEIGHT).contains(&server.weight) {
                return Err(ConfigError::invalid(
                    format!("upstream.servers[{i}].weight"),
                    format!("{} is out of range (1 to {MAX_WEIGHT})", server.weight),
                ));
            }
            let Some(name) = &server.name else { continue };
            let key = || format!("upstream.servers[{i}].name");
            let good = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
            if name.is_empty() || name.len() > MAX_SERVER_NAME || !name.chars().all(good) {
                return Err(ConfigError::invalid(
                    key(),
                    format!(
                        "{name:?} is not a server name (1 to {MAX_SERVER_NAME} of a-z, A-Z, 0-9, \
                         '_', '.', '-')"
                    ),
                ));
            }
            if name.chars().all(|c| c.is_ascii_digit()) {
                return Err(ConfigError::invalid(
                    key(),
                    format!("{name:?}: digits alone name a server by its index; add a letter"),
                ));
            }
            if let Some(j) = self.servers[..i]
                .iter()
                .position(|s| s.name.as_ref() == Some(name))
            {
                return Err(ConfigError::invalid(
                    key(),
                    format!("{name:?} is also the name of upstream.servers[{j}]"),
                ));
            }
        }
        if let Some(h) = &self.health_check {
            let target = h.path.parse::<http::uri::PathAndQuery>();
            if !h.path.starts_with('/') || target.is_err() {
                return Err(ConfigError::invalid(
                    "upstream.health_check.path",
                    format!(
                        "{:?} is not a request target (write e.g. \"/healthz\")",
                        h.path
                    ),
                ));
            }
            for (key, d) in [
                ("upstream.health_check.interval", h.interval),
                ("upstream.health_check.timeout", h.timeout),
            ] {
                if d.0 < MIN_DURATION || d.0 > MAX_DURATION {
                    return Err(ConfigError::invalid(
                        key,
                        "is out of range (1ms to 100 years)",
                    ));
                }
            }
            for (key, n) in [
                (
                    "upstream.health_check.healthy_threshold",
                    h.healthy_threshold,
                ),
                (
                    "upstream.health_check.unhealthy_threshold",
                    h.unhealthy_threshold,
                ),
            ] {
                if !(1..=1000).contains(&n) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{n} is out of range (1 to 1000)"),
                    ));
                }
            }
        }
        let o = &self.outlier_detection;
        if o.consecutive_failures > 1000 {
            return Err(ConfigError::invalid(
                "upstream.outlier_detection.consecutive_failures",
                format!(
                    "{} is out of range (0 to 1000; 0 = off)",
                    o.consecutive_failures
                ),
            ));
        }
        for (key, d) in [
            (
                "upstream.outlier_detection.base_ejection_time",
                o.base_ejection_time,
            ),
            (
                "upstream.outlier_detection.max_ejection_time",
                o.max_ejection_time,
            ),
        ] {
            if d.0 < MIN_DURATION || d.0 > MAX_DURATION {
                return Err(ConfigError::invalid(
                    key,
                    "is out of range (1ms to 100 years)",
                ));
            }
        }
        if o.max_ejection_time < o.base_ejection_time {
            return Err(ConfigError::invalid(
                "upstream.outlier_detection.max_ejection_time",
                format!(
                    "{} is shorter than upstream.outlier_detection.base_ejection_time ({})",
                    o.max_ejection_time, o.base_ejection_time
                ),
            ));
        }
        Ok(())
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            servers: vec![
                UpstreamServer::from_str("http://127.0.0.1:8080").expect("valid default"),
            ],
            balance: Balance::RoundRobin,
            health_check: None,
            outlier_detection: OutlierDetection::default(),
            connect_timeout: Dur::secs(2),
            request_timeout: Dur::secs(30),
            idle_timeout: Dur::secs(4),
            forward_client_ip: ForwardClientIp::Full,
            // Envoy's circuit-breaker default.
            max_connections: 1024,
            max_queued_requests: 1024,
            queue_timeout: Dur::secs(5),
            ca_roots: None,
            tls_server_name: None,
        }
    }
}

/// `upstream.balance`: how a request's server is chosen among the servers in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each server in turn (a server at its connection cap with no idle connection is passed
    /// over for one with room).
    #[default]
    RoundRobin,
    /// Of two servers drawn at random, the one with fewer requests in flight (Envoy's "power
    /// of two choices"); in flight: from sending the request to the end of the response body.
    LeastRequest,
    /// Smooth weighted round robin (nginx), by each server's `weight`.
    Weighted,
}

/// `[upstream.health_check]`: a `GET path` to every server each `interval`, on a connection of
/// its own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// The request target checked (origin form, starting with `/`).
    pub path: String,
    /// Time between the end of one check and the start of the next.
    pub interval: Dur,
    /// Time allowed for a check: connecting, and the response head.
    pub timeout: Dur,
    /// Consecutive passes that bring a server back into rotation (1 to 1000).
    pub healthy_threshold: u32,
    /// Consecutive failures that take a server out of rotation (1 to 1000).
    pub unhealthy_threshold: u32,
    /// The response statuses that pass.
    pub expect_status: StatusRange,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/".to_owned(),
            interval: Dur::secs(5),
            timeout: Dur::secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expect_status: StatusRange(200, 399),
        }
    }
}

/// A range of HTTP status codes, both ends included: `"200-399"`, or one code `"200"`
/// (RFC 9110 §15: 100 to 599).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange(pub u16, pub u16);

impl StatusRange {
    /// Whether `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.0..=self.1).contains(&status)
    }
}

impl FromStr for StatusRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a status range (write e.g. \"200-399\" or \"200\")");
        let code = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (code(a).ok_or_else(bad)?, code(b).ok_or_else(bad)?),
            None => {
                let c = code(s).ok_or_else(bad)?;
                (c, c)
            }
        };
        if a > b {
            return Err(bad());
        }
        Ok(StatusRange(a, b))
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}-{}", self.0, self.1))
    }
}

/// `[upstream.outlier_detection]`: a server that fails `consecutive_failures` times in a row
/// (connect failures and 5xx answers) leaves the rotation for `base_ejection_time` × the
/// number of times it was ejected, at most `max_ejection_time` (Envoy's outlier detection).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Failures in a row that eject a server (0 = off; at most 1000).
    pub consecutive_failures: u32,
    /// The first ejection's length.
    pub base_ejection_time: Dur,
    /// The longest ejection.
    pub max_ejection_time: Dur,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        // Envoy's defaults.
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection_time: Dur::secs(30),
            max_ejection_time: Dur::secs(300),
        }
    }
}

/// The longest a server `name` may be, in bytes.
pub const MAX_SERVER_NAME: usize = 64;
/// The largest `weight` of a server.
pub const MAX_WEIGHT: u32 = 1000;

/// One of `upstream.servers`: a URL (`"http://10.0.0.1:8080"`), or a table
/// `{ url = "http://10.0.0.1:8080", name = "origin-a", weight = 3 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// Where it is.
    pub url: UpstreamUrl,
    /// Its `server` label in the metrics and its name in diagnostics: `[a-zA-Z0-9_.-]{1,64}`,
    /// not only digits, unique; unset, the server's index (`"0"`, `"1"`, …) is used.
    pub name: Option<String>,
    /// Its share under `upstream.balance = "weighted"` (1 to 1000, default 1).
    pub weight: u32,
}

impl UpstreamServer {
    /// The `server` label: the configured name, else `index` as text.
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| index.to_string())
    }
}

impl FromStr for UpstreamServer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(UpstreamServer {
            url: s.parse()?,
            name: None,
            weight: 1,
        })
    }
}

/// The table form of [`UpstreamServer`].
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    url: UpstreamUrl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for UpstreamServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UpstreamServer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a URL such as \"http://127.0.0.1:8080\", or a table { url = \"...\", \
                     name = \"...\", weight = N }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<UpstreamServer, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<UpstreamServer, A::Error> {
                let t =
                    ServerTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(UpstreamServer {
                    url: t.url,
                    name: t.name,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for UpstreamServer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.name.is_none() && self.weight == 1 {
            return self.url.serialize(s);
        }
        ServerTable {
            url: self.url.clone(),
            name: self.name.clone(),
            weight: self.weight,
        }
        .serialize(s)
    }
}

/// What the upstream learns of the client address through `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardClientIp {
    /// The full address (appended to a trusted proxy's chain).
    Full,
    /// Only the truncated network address (`privacy.ipv4_prefix` / `ipv6_prefix`).
    Truncated,
    /// Nothing: `X-Forwarded-For` is removed.
    None,
}

/// `[client_ip]`: whose forwarding headers are believed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIp {
    /// Networks whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<Cidr>,
}

/// `[geoip]`: the country database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoIp {
    /// A MaxMind DB with `country.iso_code` or `country_code`; an empty string disables lookups.
    pub database: PathBuf,
}

impl Default for GeoIp {
    fn default() -> Self {
        GeoIp {
            database: "config/geo/country.mmdb".into(),
        }
    }
}

/// `[privacy]`: truncation, pseudonym keys, timestamp precision and the cookie cap.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Privacy {
    /// IPv4 addresses are recorded as this network prefix.
    pub ipv4_prefix: u8,
    /// IPv6 addresses are recorded as this network prefix.
    pub ipv6_prefix: u8,
    /// IPv6 clients are pseudonymised by this network prefix.
    pub pseudonym_ipv6_prefix: u8,
    /// Directory of daily pseudonym keys.
    pub key_dir: PathBuf,
    /// Keys older than this are destroyed.
    pub key_retention: Dur,
    /// Timestamps are truncated to this precision.
    pub timestamp_precision: Dur,
    /// `Set-Cookie` lifetimes from the upstream are capped to this.
    pub cookie_max_age: Dur,
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy {
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            pseudonym_ipv6_prefix: 64,
            key_dir: "state/keys".into(),
            key_retention: Dur::days(30),
            timestamp_precision: Dur::secs(1),
            cookie_max_age: Dur::days(14),
        }
    }
}

/// `[access_log]`: the JSON Lines access log.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    /// Directory of day files.
    pub dir: PathBuf,
    /// Day files older than this are deleted.
    pub retention: Dur,
    /// Queue length between the request path and the writer.
    pub buffer_records: usize,
    /// Permission bits of the day files, applied exactly (not through the umask).
    pub file_mode: FileMode,
    /// The group the day files (and a log directory the proxy creates) are given; unset: the
    /// process's group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupSpec>,
    /// This instance's name in its day files' names, `access-<node>-YYYY-MM-DD.jsonl`, so that
    /// the archives of many instances never collide (1 to 64 of ASCII letters, digits, `-`, `_`
    /// and `.`, starting with a letter or digit); unset: `access-YYYY-MM-DD.jsonl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            dir: "logs".into(),
            retention: Dur::days(90),
            buffer_records: 65536,
            file_mode: FileMode::DEFAULT,
            group: None,
            node: None,
        }
    }
}

/// `access_log.file_mode`: the permission bits of the day files, written as a string of octal
/// digits, `"0640"` or `"640"`. The owner must read and write; the group may read, or read and
/// write, or nothing; others get nothing, and no execute, setuid, setgid or sticky bit is
/// allowed: the log holds pseudonymous personal data. So exactly `"0600"`, `"0640"` and
/// `"0660"` (with or without the leading 0). A TOML integer is refused: `640` would be the
/// decimal number, not the octal mode. Shown as written.
#[derive(Clone, PartialEq, Eq)]
pub struct FileMode {
    /// The permission bits, e.g. `0o640`.
    pub bits: u32,
    written: std::borrow::Cow<'static, str>,
}

impl FileMode {
    /// `"0640"`: owner read and write, group read.
    pub const DEFAULT: FileMode = FileMode {
        bits: 0o640,
        written: std::borrow::Cow::Borrowed("0640"),
    };

    /// Whether the group gets any access (and so needs to search the log directory).
    pub fn group_access(&self) -> bool {
        self.bits & 0o070 != 0
    }
}

impl fmt::Debug for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.bits)
    }
}

impl FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<FileMode, String> {
        const GOOD: &str = "write \"0640\" (group reads), \"0660\" (group reads and writes) or \"0600\" (owner only)";
        if !(3..=4).contains(&s.len()) || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!(
                "{s:?} is not a mode of 3 or 4 octal digits; {GOOD}"
            ));
        }
        let bits = u32::from_str_radix(s, 8).map_err(|e| format!("{s:?}: {e}"))?;
        let mut wrong = Vec::new();
        if bits & 0o7000 != 0 {
            wrong.push(format!("{:04o} (setuid, setgid or sticky)", bits & 0o7000));
        }
        if bits & 0o600 != 0o600 {
            wrong.push("the owner must read and write (0600)".to_owned());
        }
        if bits & 0o100 != 0 {
            wrong.push("0100 (owner execute)".to_owned());
        }
        if bits & 0o010 != 0 {
            wrong.push("0010 (group execute)".to_owned());
        }
        if bits & 0o060 == 0o020 {
            wrong.push("0020 (group write without group read)".to_owned());
        }
        if bits & 0o007 != 0 {
            wrong.push(format!(
                "{:04o} (others: the log holds pseudonymous personal data)",
                bits & 0o007
            ));
        }
        if !wrong.is_empty() {
            return Err(format!(
                "{s:?} is not allowed: {}; {GOOD}",
                wrong.join(", ")
            ));
        }
        Ok(FileMode {
            bits,
            written: s.to_owned().into(),
        })
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string of octal digits such as \"0640\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FileMode, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<FileMode, E> {
                Err(E::custom(format!(
                    "{n} is a number, which TOML reads as decimal: write the octal mode as a \
                     string, e.g. \"0640\""
                )))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written)
    }
}

/// `access_log.group`: a group name (`"adm"`), or a numeric group id as a string (`"4"`) or an
/// integer (`4`). Resolved when the proxy starts (see [`crate::accesslog::files::resolve_group`]);
/// shown as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSpec {
    /// A name, looked up in the group database; digits only: a group id (as `chown` reads it).
    Name(String),
    /// A numeric group id, written as a TOML integer.
    Gid(u32),
}

impl fmt::Display for GroupSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupSpec::Name(n) => f.write_str(n),
            GroupSpec::Gid(g) => write!(f, "{g}"),
        }
    }
}

impl<'de> Deserialize<'de> for GroupSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GroupSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a group name such as \"adm\" or a numeric group id")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<GroupSpec, E> {
                if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == ':') {
                    return Err(E::custom(format!(
                        "{s:?} is not a group name (write e.g. \"adm\", or leave the key out \
                         for the process's group)"
                    )));
                }
                if s.bytes().all(|b| b.is_ascii_digit())
                    && s.parse::<u32>().ok().is_none_or(|g| g == u32::MAX)
                {
                    return Err(E::custom(format!("{s:?} is out of range for a group id")));
                }
                Ok(GroupSpec::Name(s.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<GroupSpec, E> {
                u32::try_from(n)
                    .ok()
                    .filter(|&g| g != u32::MAX)
                    .map(GroupSpec::Gid)
                    .ok_or_else(|| E::custom(format!("{n} is out of range for a group id")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for GroupSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GroupSpec::Name(n) => s.serialize_str(n),
            GroupSpec::Gid(g) => s.serialize_u32(*g),
        }
    }
}

/// `[rate_limit]`: per-client quotas.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Whether limiting is on.
    pub enabled: bool,
    /// The default sustained rate.
    pub requests_per_second: u32,
    /// The default burst.
    pub burst: u32,
    /// IPv6 clients share a bucket per network of this prefix.
    pub ipv6_prefix: u8,
    /// Networks never limited.
    pub exempt: Vec<Cidr>,
    /// Stricter quotas by path prefix; first match wins.
    pub route: Vec<RoutePolicy>,
    /// `[rate_limit.global]`: the same quotas applied across the fleet in Redis, as a second
    /// tier after this instance's own; `None` (no table): this instance's limits only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalLimit>,
}

/// `[rate_limit.global]`: the fleet-wide tier. Every quota of `[rate_limit]` (the default and
/// each route) is also kept in one shared Redis (or Valkey) for the whole fleet, with a GCRA
/// script run atomically on the server; an instance takes a small share of a client's budget
/// at a time, so a client well under quota costs no round trip per request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalLimit {
    /// The Redis server: `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS,
    /// verified against the system roots), or `unix:///path/to/redis.sock`. Never logged with
    /// its password.
    pub redis: RedisUrl,
    /// How long a request may wait for Redis before it follows `on_error` (e.g. `"5ms"`).
    #[serde(default = "GlobalLimit::default_timeout")]
    pub timeout: Dur,
    /// What a request the global tier cannot decide gets: `"allow"` (only the local tier
    /// applies) or `"deny"` (503 with `Retry-After`).
    #[serde(default)]
    pub on_error: OnError,
    /// A secret shared by the fleet (at least 32 bytes, mode 0600): the HMAC key that turns a
    /// client into its Redis key. Redis never holds an address.
    pub key_secret_file: PathBuf,
    /// The longest an instance keeps budget taken from Redis before it must ask again: a
    /// client's share not spent in this time is given up.
    #[serde(default = "GlobalLimit::default_sync_interval")]
    pub sync_interval: Dur,
}

impl GlobalLimit {
    fn default_timeout() -> Dur {
        Dur::millis(5)
    }

    fn default_sync_interval() -> Dur {
        Dur::secs(1)
    }
}

/// `rate_limit.global.redis`: a Redis URL, which may carry a password. Shown (`check-config`,
/// `Debug`) with its user information replaced by `***`; [`RedisUrl::expose`] gives the URL to
/// connect with.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as configured, password included: for the Redis client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as parsed (WHATWG URL, as the Redis client parses it), with any user
    /// information (`user:password@`) replaced by `***@`, any query (a Unix socket's `?pass=`)
    /// by `?***`, and any fragment dropped. Only the scheme is shown (`redis://***`) of a URL
    /// that does not parse, or with an `@` outside its user information: a password typed
    /// without percent-encoding its `/`, `?`, `#` or `@` could otherwise show in the host or
    /// the path.
    pub fn redacted(&self) -> String {
        let scheme = self.0.split_once("://").map_or("", |(s, _)| s);
        let hidden = || {
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
            {
                format!("{scheme}://***")
            } else {
                "***".to_owned()
            }
        };
        let Ok(url) = url::Url::parse(&self.0) else {
            return hidden();
        };
        let userinfo = !url.username().is_empty() || url.password().is_some();
        let stray_at = url.path().contains('@')
            || url.query().is_some_and(|q| q.contains('@'))
            || url.fragment().is_some();
        if stray_at || self.0.matches('@').count() > usize::from(userinfo) {
            return hidden();
        }
        let mut shown = format!("{}://", url.scheme());
        if userinfo {
            shown.push_str("***@");
        }
        if let Some(host) = url.host_str() {
            shown.push_str(host);
        }
        if let Some(port) = url.port() {
            shown.push_str(&format!(":{port}"));
        }
        shown.push_str(url.path());
        if url.query().is_some() {
            shown.push_str("?***");
        }
        shown
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> RedisUrl {
        RedisUrl(url.to_owned())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// `rate_limit.global.on_error`: what happens to a request when Redis does not answer in time,
/// refuses, or is down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Serve it, limited by this instance's tier only.
    #[default]
    Allow,
    /// Refuse it: 503 with `Retry-After: 1`.
    Deny,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            enabled: true,
            requests_per_second: 50,
            burst: 100,
            ipv6_prefix: 64,
            exempt: Vec::new(),
            route: Vec::new(),
            global: None,
        }
    }
}

/// `[[rate_limit.route]]`: a quota for a path prefix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    /// Requests whose path starts with this use this quota.
    pub path_prefix: String,
    /// Sustained rate.
    pub requests_per_second: u32,
    /// Burst.
    pub burst: u32,
}

/// Let's Encrypt's production ACME directory (RFC 8555 §7.1.1).
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[acme]`: certificates obtained and renewed by ACME (RFC 8555) from Let's Encrypt or another
/// CA, stored in `storage` and served for `domains`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Acme {
    /// Obtain and renew certificates by ACME.
    pub enabled: bool,
    /// The CA's directory URL (`https://`).
    pub directory: String,
    /// The account's contact addresses, each `mailto:name@example.com` (RFC 8555 §7.3).
    pub contact: Vec<String>,
    /// The names certified, one certificate each; every one must be in `server.hosts`.
    pub domains: Vec<String>,
    /// How the CA validates control of a name.
    pub challenge: AcmeChallenge,
    /// A cleartext listener (e.g. `0.0.0.0:80`) answering HTTP-01 challenges under
    /// `/.well-known/acme-challenge/` and redirecting every other request to https with 308.
    /// Needed by `challenge = "http-01"`, optional otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// The directory holding the account key, the certificates and their keys, the fleet's
    /// locks and pending challenges (mode 0700; keys 0600). Instances that share it share the
    /// certificates: one orders, the others load what it stored.
    pub storage: PathBuf,
    /// CA certificates (PEM) the ACME server is verified against, instead of the system's
    /// roots: for a private or test CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_roots: Option<PathBuf>,
    /// External account binding key identifier (RFC 8555 §7.3.4), for CAs that need one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eab_kid: Option<String>,
    /// The file holding the external account binding's MAC key (base64url, as the CA gives it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eab_hmac_key_file: Option<PathBuf>,
    /// The wait before retrying a failed order; doubled after each failure, up to an hour (or
    /// this, if longer).
    pub retry_backoff: Dur,
    /// Time allowed for each request to the ACME server.
    pub timeout: Dur,
}

impl Default for Acme {
    fn default() -> Self {
        Acme {
            enabled: false,
            directory: LETS_ENCRYPT_DIRECTORY.to_owned(),
            contact: Vec::new(),
            domains: Vec::new(),
            challenge: AcmeChallenge::TlsAlpn01,
            http_listen: None,
            storage: "state/acme".into(),
            ca_roots: None,
            eab_kid: None,
            eab_hmac_key_file: None,
            retry_backoff: Dur::mins(1),
            timeout: Dur::secs(30),
        }
    }
}

/// `acme.challenge`: the ACME challenge type answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AcmeChallenge {
    /// RFC 8737: answered on the TLS listener (ALPN `acme-tls/1`); no port 80 needed.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.3: answered on `acme.http_listen` (port 80 as the CA sees it).
    #[serde(rename = "http-01")]
    Http01,
}

impl Acme {
    /// Checks `[acme]` when enabled: the directory URL, contacts, domains (each in `hosts`, the
    /// lowercase `server.hosts`), the listener the challenge needs, and the binding's two keys.
    fn validate(&self, hosts: &[String]) -> Result<(), ConfigError> {
        for (key, d) in [
            ("acme.retry_backoff", self.retry_backoff),
            ("acme.timeout", self.timeout),
        ] {
            if d.0 < MIN_DURATION || d.0 > Duration::from_secs(SECS_PER_DAY) {
                return Err(ConfigError::invalid(key, "is out of range (1ms to 1d)"));
            }
        }
        if !self.enabled {
            return Ok(());
        }
        match self.directory.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "acme.directory",
                    format!(
                        "{:?} is not an https:// URL (Let's Encrypt: {LETS_ENCRYPT_DIRECTORY:?})",
                        self.directory
                    ),
                ));
            }
        }
        if self.contact.is_empty() {
            return Err(ConfigError::invalid(
                "acme.contact",
                "at least one address is needed, e.g. [\"mailto:ops@example.com\"] (the CA \
                 writes there about expiring certificates and incidents)",
            ));
        }
        for (i, c) in self.contact.iter().enumerate() {
            let ok = c.strip_prefix("mailto:").is_some_and(|addr| {
                let mut parts = addr.split('@');
                matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None) if !l.is_empty() && d.contains('.'))
                    && !addr.contains(|ch: char| ch.is_whitespace() || ch == ',' || ch.is_control())
            });
            if !ok {
                return Err(ConfigError::invalid(
                    format!("acme.contact[{i}]"),
                    format!("{c:?} is not a mailto: address, e.g. \"mailto:ops@example.com\""),
                ));
            }
        }
        if self.domains.is_empty() {
            return Err(ConfigError::invalid(
                "acme.domains",
                "at least one name to certify is needed (each also in server.hosts)",
            ));
        }
        for (i, d) in self.domains.iter().enumerate() {
            let key = format!("acme.domains[{i}]");
            if d.starts_with("*.") {
                return Err(ConfigError::invalid(
                    key,
                    format!("{d:?}: a wildcard needs the DNS-01 challenge, which is not supported"),
                ));
            }
            let dns = matches!(
                rustls_pki_types::ServerName::try_from(d.as_str()),
                Ok(rustls_pki_types::ServerName::DnsName(_))
            );
            if !dns || !d.contains('.') || d != &d.to_ascii_lowercase() {
                return Err(ConfigError::invalid(
                    key,
                    format!("{d:?} is not a lowercase, fully qualified DNS name"),
                ));
            }
            if !hosts.iter().any(|h| h == d) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{d:?} is not in server.hosts: add it there too"),
                ));
            }
            if self.domains[..i].contains(d) {
                return Err(ConfigError::invalid(key, format!("{d:?} is listed twice")));
            }
        }
        if self.challenge == AcmeChallenge::Http01 && self.http_listen.is_none() {
            return Err(ConfigError::invalid(
                "acme.http_listen",
                "challenge = \"http-01\" needs a cleartext listener, e.g. \"0.0.0.0:80\"",
            ));
        }
        match (&self.eab_kid, &self.eab_hmac_key_file) {
            (Some(kid), Some(_)) if kid.is_empty() => {
                return Err(ConfigError::invalid("acme.eab_kid", "is empty"));
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "acme.eab_hmac_key_file",
                    "acme.eab_kid is set: the binding needs its MAC key file too",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "acme.eab_kid",
                    "acme.eab_hmac_key_file is set: the binding needs its key identifier too",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// `[admin]`: the metrics and health listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`, which must be a regular file (a
    /// directory or a named pipe is an error, never waited on).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = || -> std::io::Result<String> {
            use std::io::Read as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            // O_NONBLOCK: a named pipe at the path must not stall `run`, `check-config` or a
            // reload; a regular file reads as usual.
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)?;
            if !file.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            Ok(text)
        };
        let text = read().map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key == "." {
                // A syntax error: the line and column, never toml's snippet of the source line
                // (it may hold a secret, such as the password of rate_limit.global.redis).
                let message = inner.message().trim_end().replace('\n', "; ");
                let message = match inner.span() {
                    Some(span) => {
                        let (line, column) = line_column(text, span.start);
                        format!("{message} (line {line}, column {column})")
                    }
                    None => message,
                };
                return ConfigError::Syntax {
                    path: path.to_owned(),
                    message,
                };
            }
            let reason = inner.message().to_owned();
            let reason = match inner.span() {
                Some(span) => format!("{reason} (line {})", line_column(text, span.start).0),
                None => reason,
            };
            ConfigError::Schema {
                path: path.to_owned(),
                key,
                reason,
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot: ranges, emptiness, cross-key rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.workers > 1024 {
            return Err(ConfigError::invalid(
                "server.workers",
                format!("{} is too many (0 = one per core, at most 1024)", s.workers),
            ));
        }
        // hyper's HTTP/1 reader needs at least 8 KiB of buffer.
        if !(8192..=1 << 20).contains(&s.max_header_bytes) {
            return Err(ConfigError::invalid(
                "server.max_header_bytes",
                format!("{} is out of range (8192 to 1048576)", s.max_header_bytes),
            ));
        }
        // Above 100, hyper's HTTP/1.1 parser takes its field table from the heap for every
        // request; 1000 bounds that table at about 56 KB.
        if !(MIN_HEADER_FIELDS..=MAX_HEADER_FIELDS).contains(&s.max_header_fields) {
            return Err(ConfigError::invalid(
                "server.max_header_fields",
                format!(
                    "{} is out of range ({MIN_HEADER_FIELDS} to {MAX_HEADER_FIELDS})",
                    s.max_header_fields
                ),
            ));
        }
        for (i, host) in s.hosts.iter().enumerate() {
            if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(ConfigError::invalid(
                    format!("server.hosts[{i}]"),
                    format!("{host:?} is not a host name"),
                ));
            }
        }
        for (key, d) in [
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.idle_timeout", s.idle_timeout),
            ("server.body_read_timeout", s.body_read_timeout),
            ("server.send_timeout", s.send_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.request_timeout", self.upstream.request_timeout),
            ("upstream.idle_timeout", self.upstream.idle_timeout),
            ("upstream.queue_timeout", self.upstream.queue_timeout),
            ("privacy.key_retention", self.privacy.key_retention),
            (
                "privacy.timestamp_precision",
                self.privacy.timestamp_precision,
            ),
            ("access_log.retention", self.access_log.retention),
        ] {
            if d.0.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than zero"));
            }
            // Deadlines are added to the clock and divided into check periods: a duration
            // under a millisecond rounds a period to nothing, and one of centuries overflows
            // the clock (both would panic at the first connection, not here).
            if d.0 < MIN_DURATION || d.0 > MAX_DURATION {
                return Err(ConfigError::invalid(
                    key,
                    "is out of range (1ms to 100 years)",
                ));
            }
        }
        if s.shutdown_grace.0 > MAX_DURATION {
            return Err(ConfigError::invalid(
                "server.shutdown_grace",
                "is out of range (0s to 100 years)",
            ));
        }
        if let Some(buffer) = s.body_buffer_bytes
            && buffer > s.max_body_bytes
        {
            return Err(ConfigError::invalid(
                "server.body_buffer_bytes",
                format!(
                    "{buffer} is more than server.max_body_bytes ({}): a body that large is \
                     refused anyway",
                    s.max_body_bytes
                ),
            ));
        }
        // Port 0 (any free port, as tests use) never clashes.
        let clash = |other: SocketAddr| other.port() != 0 && other == s.listen;
        if s.listen_plain.is_some_and(clash)
            || clash(self.admin.listen)
            || (self.acme.enabled && self.acme.http_listen.is_some_and(clash))
        {
            return Err(ConfigError::invalid(
                "server.listen",
                format!("{} is also used by another listener", s.listen),
            ));
        }
        if self.upstream.servers.is_empty() {
            return Err(ConfigError::invalid(
                "upstream.servers",
                "at least one upstream server is needed, e.g. [\"http://127.0.0.1:8080\"]",
            ));
        }
        let u = &self.upstream;
        u.validate_balancing()?;
        if let Some(name) = &u.tls_server_name
            && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return Err(ConfigError::invalid(
                "upstream.tls_server_name",
                format!("{name:?} is not a DNS name or an IP address"),
            ));
        }
        if u.max_connections > 65535 {
            return Err(ConfigError::invalid(
                "upstream.max_connections",
                format!(
                    "{} is out of range (0 to 65535; 0 = no cap)",
                    u.max_connections
                ),
            ));
        }
        if u.max_queued_requests > 1 << 20 {
            return Err(ConfigError::invalid(
                "upstream.max_queued_requests",
                format!(
                    "{} is out of range (0 to 1048576; 0 = no queue)",
                    u.max_queued_requests
                ),
            ));
        }
        for (i, sni) in self.tls.sni.iter().enumerate() {
            if sni.host.is_empty() || sni.host.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(ConfigError::invalid(
                    format!("tls.sni[{i}].host"),
                    format!("{:?} is not a host name", sni.host),
                ));
            }
        }
        let p = &self.privacy;
        check_prefix("privacy.ipv4_prefix", p.ipv4_prefix, 32)?;
        check_prefix("privacy.ipv6_prefix", p.ipv6_prefix, 128)?;
        check_prefix(
            "privacy.pseudonym_ipv6_prefix",
            p.pseudonym_ipv6_prefix,
            128,
        )?;
        check_prefix("rate_limit.ipv6_prefix", self.rate_limit.ipv6_prefix, 128)?;
        let precision = p.timestamp_precision.0;
        if precision < Duration::from_secs(1) || precision.subsec_nanos() != 0 {
            return Err(ConfigError::invalid(
                "privacy.timestamp_precision",
                "must be a whole number of seconds, at least \"1s\"",
            ));
        }
        if self.access_log.retention.0 > Duration::from_secs(90 * SECS_PER_DAY) {
            return Err(ConfigError::invalid(
                "access_log.retention",
                "the privacy policy (P11) allows at most \"90d\"",
            ));
        }
        if p.cookie_max_age.0 > Duration::from_secs(14 * SECS_PER_DAY) {
            return Err(ConfigError::invalid(
                "privacy.cookie_max_age",
                "the privacy policy (P11) allows at most \"14d\"",
            ));
        }
        if self.access_log.buffer_records == 0 {
            return Err(ConfigError::invalid(
                "access_log.buffer_records",
                "must be at least 1",
            ));
        }
        let rl = &self.rate_limit;
        if rl.enabled {
            check_quota("rate_limit", rl.requests_per_second, rl.burst)?;
            for (i, r) in rl.route.iter().enumerate() {
                if !r.path_prefix.starts_with('/') {
                    return Err(ConfigError::invalid(
                        format!("rate_limit.route[{i}].path_prefix"),
                        format!("{:?} must start with '/'", r.path_prefix),
                    ));
                }
                check_quota(
                    &format!("rate_limit.route[{i}]"),
                    r.requests_per_second,
                    r.burst,
                )?;
            }
        }
        if let Some(g) = &rl.global {
            g.validate()?;
            if !rl.enabled {
                return Err(ConfigError::invalid(
                    "rate_limit.global",
                    "applies the quotas of [rate_limit] fleet-wide, and rate_limit.enabled is \
                     false: enable it or remove the table",
                ));
            }
        }
        self.tls.tickets.validate()?;
        if let Some(node) = &self.access_log.node {
            check_node(node)?;
        }
        let hosts: Vec<String> = s.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        self.acme.validate(&hosts)?;
        // Rules across keys last: a value wrong in itself is named first, not a good one that
        // another key makes unusable.
        if s.proxy_protocol != ProxyProtocol::Off && self.client_ip.trusted_proxies.is_empty() {
            return Err(ConfigError::invalid(
                "server.proxy_protocol",
                "a header is accepted only from client_ip.trusted_proxies, which is empty: \
                 list the load balancers' addresses there",
            ));
        }
        Ok(())
    }

    /// The worker thread count to use (resolving 0 to the number of cores).
    pub fn worker_threads(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

fn check_prefix(key: &str, value: u8, max: u8) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::invalid(
            key,
            format!("prefix length {value} is out of range (0 to {max})"),
        ));
    }
    Ok(())
}

/// `access_log.node`: it becomes part of a file name, so only a short, plain name is taken.
fn check_node(node: &str) -> Result<(), ConfigError> {
    if !crate::accesslog::files::is_node_name(node) {
        return Err(ConfigError::invalid(
            "access_log.node",
            format!(
                "{node:?} is not a node name: 1 to 64 of ASCII letters, digits, '-', '_' and \
                 '.', starting with a letter or digit (e.g. \"edge-1\")"
            ),
        ));
    }
    Ok(())
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl GlobalLimit {
    /// Checks the URL's scheme and the two durations. The secret file is read by the preflight
    /// check (`server::preflight`), which names its path.
    fn validate(&self) -> Result<(), ConfigError> {
        let scheme = self.redis.0.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("redis" | "rediss" | "unix" | "redis+unix")) {
            return Err(ConfigError::invalid(
                "rate_limit.global.redis",
                "is not a redis://, rediss:// or unix:// URL, e.g. \"redis://127.0.0.1:6379/0\"",
            ));
        }
        // The client's own parser: what `run` would refuse is refused here too (check-config).
        // Its message is not repeated: it may quote the URL, and the URL may hold a password.
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(self.redis.0.as_str()) {
            return Err(ConfigError::invalid(
                "rate_limit.global.redis",
                format!(
                    "is not a URL the Redis client accepts ({:?}; shown here as {})",
                    e.kind(),
                    self.redis.redacted()
                ),
            ));
        }
        if self.timeout.0 < MIN_DURATION || self.timeout.0 > Duration::from_secs(10) {
            return Err(ConfigError::invalid(
                "rate_limit.global.timeout",
                "is out of range (1ms to 10s)",
            ));
        }
        if self.sync_interval.0 < Duration::from_millis(10)
            || self.sync_interval.0 > Duration::from_secs(60)
        {
            return Err(ConfigError::invalid(
                "rate_limit.global.sync_interval",
                "is out of range (10ms to 60s)",
            ));
        }
        Ok(())
    }
}

impl Tickets {
    /// Checks the rotation period (the secret file is read by the preflight check).
    fn validate(&self) -> Result<(), ConfigError> {
        if self.rotation.0 < Duration::from_secs(60)
            || self.rotation.0 > Duration::from_secs(SECS_PER_DAY)
        {
            return Err(ConfigError::invalid(
                "tls.tickets.rotation",
                "is out of range (1m to 1d)",
            ));
        }
        Ok(())
    }
}

fn check_quota(key: &str, rate: u32, burst: u32) -> Result<(), ConfigError> {
    if rate == 0 {
        return Err(ConfigError::invalid(
            format!("{key}.requests_per_second"),
            "must be at least 1",
        ));
    }
    if burst == 0 {
        return Err(ConfigError::invalid(
            format!("{key}.burst"),
            "must be at least 1",
        ));
    }
    Ok(())
}

/// A duration written as `"500ms"`, `"2s"`, `"30d"` (humantime's syntax). It remembers the
/// unit it was written in, so the effective config (`check-config`) shows `"90d"` as `"90d"`
/// and `"60s"` as `"60s"`; a value written in several parts (`"1h 30m"`), or not a whole number
/// of its unit (`"1.5h"`), is shown in the largest unit that holds it exactly (`"90m"`).
/// Equality and order are the duration's alone.
#[derive(Clone, Copy)]
pub struct Dur(pub Duration, DurUnit);

/// The index in `UNITS` of the unit a [`Dur`] is shown in; `None`: the largest exact one.
#[derive(Clone, Copy, Debug)]
pub struct DurUnit(Option<u8>);

/// The units a duration is shown in: (suffix, length in nanoseconds), each suffix one that
/// humantime reads back as the same length. Months and years are humantime's (30.44 and
/// 365.25 days).
const UNITS: [(&str, u128); 10] = [
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", SECS_PER_DAY as u128 * 1_000_000_000),
    ("w", 604_800_000_000_000),
    ("months", 2_630_016_000_000_000),
    ("y", 31_557_600_000_000_000),
];

/// Index in [`UNITS`] of the days: the largest unit chosen when none was written.
const DAYS: usize = 6;

impl Dur {
    const fn millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms), DurUnit(Some(2)))
    }
    const fn hours(h: u64) -> Dur {
        Dur(Duration::from_secs(h * 3600), DurUnit(Some(5)))
    }
    const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s), DurUnit(Some(3)))
    }
    const fn mins(m: u64) -> Dur {
        Dur(Duration::from_secs(m * 60), DurUnit(Some(4)))
    }
    const fn days(d: u64) -> Dur {
        Dur(
            Duration::from_secs(d * SECS_PER_DAY),
            DurUnit(Some(DAYS as u8)),
        )
    }

    /// The unit of a duration written as one number and one unit (`"90d"`, `"60 s"`,
    /// `"2 weeks"`), as humantime reads that unit.
    fn written_unit(text: &str) -> DurUnit {
        let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let suffix = text[digits..].trim();
        if digits == 0 || suffix.is_empty() || suffix.contains(|c: char| !c.is_alphabetic()) {
            return DurUnit(None);
        }
        let Ok(one) = humantime::parse_duration(&format!("1{suffix}")) else {
            return DurUnit(None);
        };
        let index = UNITS.iter().position(|&(_, nanos)| nanos == one.as_nanos());
        DurUnit(index.and_then(|i| u8::try_from(i).ok()))
    }
}

impl From<Duration> for Dur {
    fn from(d: Duration) -> Dur {
        Dur(d, DurUnit(None))
    }
}

impl PartialEq for Dur {
    fn eq(&self, other: &Dur) -> bool {
        self.0 == other.0
    }
}

impl Eq for Dur {}

impl PartialOrd for Dur {
    fn partial_cmp(&self, other: &Dur) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dur {
    fn cmp(&self, other: &Dur) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl fmt::Display for Dur {
    /// In the unit it was written in when the value is a whole number of it; else in the
    /// largest of d, h, m, s, ms, us, ns that divides it exactly (`"0s"` for zero).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        let written = self.1.0.map(usize::from).filter(|&i| {
            UNITS
                .get(i)
                .is_some_and(|&(_, len)| nanos.is_multiple_of(len))
        });
        let index = written.unwrap_or_else(|| {
            (0..=DAYS)
                .rev()
                .find(|&i| nanos.is_multiple_of(UNITS[i].1))
                .unwrap_or(0)
        });
        let (suffix, len) = UNITS[index];
        write!(f, "{}{suffix}", nanos / len)
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let text = s.trim();
        let unit = Dur::written_unit(text);
        humantime::parse_duration(text)
            .map(|d| Dur(d, unit))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?}: {e} (write e.g. \"500ms\", \"2s\", \"30d\")"
                ))
            })
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare address means one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(Cidr(IpNet::from(ip)));
        }
        Err(format!(
            "invalid CIDR {s:?} (write e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or one address)"
        ))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// An upstream server: `http://host[:port]` or `https://host[:port]` (no path); the port
/// defaults to 80 and 443 (RFC 9110 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `host:port` as written (the port may be absent).
    pub authority: http::uri::Authority,
    /// `https://`: reached over TLS, verified (see `upstream.ca_roots`).
    pub tls: bool,
}

impl UpstreamUrl {
    /// The host, an IPv6 literal without its brackets.
    pub fn host(&self) -> &str {
        let host = self.authority.host();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The port as written, else the scheme's (80 for `http`, 443 for `https`).
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.tls { 443 } else { 80 })
    }
}

impl FromStr for UpstreamUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| {
            format!("invalid URL {s:?}: {e} (write e.g. \"http://127.0.0.1:8080\")")
        })?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!("{s:?}: an upstream is an http:// or https:// URL"));
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{s:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{s:?}: credentials in the URL are not supported"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{s:?}: an upstream is a server, without a path or query"
            ));
        }
        let url = UpstreamUrl { authority, tls };
        if tls && rustls_pki_types::ServerName::try_from(url.host()).is_err() {
            return Err(format!(
                "{s:?}: the host is not a name a TLS certificate can be verified for"
            ));
        }
        Ok(url)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let scheme = if self.tls { "https" } else { "http" };
        s.collect_str(&format_args!("{scheme}://{}", self.authority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_spec_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.server.max_header_bytes, 16384);
        assert_eq!(c.server.max_header_fields, 100);
        assert_eq!(c.server.send_timeout.0, Duration::from_secs(30));
        assert_eq!(c.upstream.request_timeout.0, Duration::from_secs(30));
        assert_eq!(c.upstream.idle_timeout.0, Duration::from_secs(4));
        assert_eq!(
            c.privacy.key_retention.0,
            Duration::from_secs(30 * SECS_PER_DAY)
        );
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.upstream.forward_client_ip, ForwardClientIp::Full);
        assert_eq!(c.server.body_read_timeout.0, Duration::from_secs(10));
        assert_eq!(c.server.body_buffer_bytes(), 65536);
        let small = parse("[server]\nmax_body_bytes = 1000").unwrap();
        assert_eq!(small.server.body_buffer_bytes(), 1000);
        assert_eq!(c.upstream.max_connections, 1024);
        assert_eq!(c.upstream.max_queued_requests, 1024);
        assert_eq!(c.upstream.queue_timeout.0, Duration::from_secs(5));
    }

    #[test]
    fn proxy_protocol_takes_each_mode_with_trusted_proxies() {
        let rows = [
            ("", ProxyProtocol::Off),
            ("proxy_protocol = \"off\"", ProxyProtocol::Off),
            ("proxy_protocol = \"v1\"", ProxyProtocol::V1),
            ("proxy_protocol = \"v2\"", ProxyProtocol::V2),
            ("proxy_protocol = \"any\"", ProxyProtocol::Any),
        ];
        for (line, want) in rows {
            let text = format!("[server]\n{line}\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]");
            assert_eq!(parse(&text).unwrap().server.proxy_protocol, want, "{line}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[server]\nlisten = \"nope\"", "server.listen"),
            ("[server]\nbogus = 1", "server"),
            (
                "[server]\nidle_timeout = \"5 parsecs\"",
                "server.idle_timeout",
            ),
            (
                "[client_ip]\ntrusted_proxies = [\"10.0.0.0/33\"]",
                "client_ip.trusted_proxies[0]",
            ),
            ("[server]\nproxy_protocol = \"v3\"", "server.proxy_protocol"),
            ("[server]\nproxy_protocol = \"V1\"", "server.proxy_protocol"),
            ("[server]\nproxy_protocol = true", "server.proxy_protocol"),
            (
                "[server]\nproxy_protocol = \"any\"",
                "server.proxy_protocol",
            ),
            ("[upstream]\nservers = [\"ftp://x\"]", "upstream.servers[0]"),
            (
                "[upstream]\nservers = [\"http://a\", \"wss://b\"]",
                "upstream.servers[1]",
            ),
            (
                "[upstream]\nservers = [\"https://u:p@origin.test\"]",
                "upstream.servers[0]",
            ),
            (
                "[upstream]\nservers = [\"https://origin.test/app\"]",
                "upstream.servers[0]",
            ),
            (
                "[upstream]\nservers = [\"https://origin.test?x=1\"]",
                "upstream.servers[0]",
            ),
            (
                "[upstream]\nservers = [\"https://\"]",
                "upstream.servers[0]",
            ),
            (
                "[upstream]\nservers = [\"https://-bad-.test\"]",
                "upstream.servers[0]",
            ),
            (
                "[upstream]\ntls_server_name = \"\"",
                "upstream.tls_server_name",
            ),
            (
                "[upstream]\ntls_server_name = \"two words\"",
                "upstream.tls_server_name",
            ),
            (
                "[upstream]\ntls_server_name = \"-bad-.test\"",
                "upstream.tls_server_name",
            ),
            (
                "[upstream]\ntls_server_name = 443",
                "upstream.tls_server_name",
            ),
            ("[upstream]\nca_roots = 1", "upstream.ca_roots"),
            ("[upstream]\nservers = []", "upstream.servers"),
            ("[privacy]\nipv4_prefix = 40", "privacy.ipv4_prefix"),
            ("[access_log]\nretention = \"100d\"", "access_log.retention"),
            (
                "[privacy]\ncookie_max_age = \"30d\"",
                "privacy.cookie_max_age",
            ),
            ("[rate_limit]\nburst = 0", "rate_limit.burst"),
            ("[access_log]\nnode = \"\"", "access_log.node"),
            ("[access_log]\nnode = \"edge/1\"", "access_log.node"),
            ("[access_log]\nnode = \"..\"", "access_log.node"),
            ("[access_log]\nnode = \"-edge\"", "access_log.node"),
            ("[access_log]\nnode = \"edge 1\"", "access_log.node"),
            ("[access_log]\nnode = \"édge\"", "access_log.node"),
            (
                "[access_log]\nnode = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
                "access_log.node",
            ),
            (
                "[rate_limit.global]\nredis = \"http://127.0.0.1:6379\"\nkey_secret_file = \"s\"",
                "rate_limit.global.redis",
            ),
            (
                "[rate_limit.global]\nredis = \"127.0.0.1:6379\"\nkey_secret_file = \"s\"",
                "rate_limit.global.redis",
            ),
            (
                "[rate_limit.global]\nredis = \"redis://r\"\nkey_secret_file = \"s\"\ntimeout = \"0s\"",
                "rate_limit.global.timeout",
            ),
            (
                "[rate_limit.global]\nredis = \"redis://r\"\nkey_secret_file = \"s\"\ntimeout = \"11s\"",
                "rate_limit.global.timeout",
            ),
            (
                "[rate_limit.global]\nredis = \"redis://r\"\nkey_secret_file = \"s\"\nsync_interval = \"1ms\"",
                "rate_limit.global.sync_interval",
            ),
            (
                "[rate_limit.global]\nredis = \"redis://r\"\nkey_secret_file = \"s\"\nsync_interval = \"2m\"",
                "rate_limit.global.sync_interval",
            ),
            (
                "[rate_limit]\nenabled = false\n[rate_limit.global]\nredis = \"redis://r\"\nkey_secret_file = \"s\"",
                "rate_limit.global",
            ),
            // URLs the Redis client refuses are refused here, not first by `run`.
            (
                "[rate_limit.global]\nredis = \"redis://:s3cret@[::1\"\nkey_secret_file = \"s\"",
                "rate_limit.global.redis",
            ),
            (
                "[rate_limit.global]\nredis = \"redis://r:99999\"\nkey_secret_file = \"s\"",
                "rate_limit.global.redis",
            ),
            (
                "[rate_limit.global]\nredis = \"redis://:s3cret@r/db-one\"\nkey_secret_file = \"s\"",
                "rate_limit.global.redis",
            ),
            (
                "[rate_limit.global]\nredis = \"rediss://\"\nkey_secret_file = \"s\"",
                "rate_limit.global.redis",
            ),
            ("[tls.tickets]\nrotation = \"59s\"", "tls.tickets.rotation"),
            ("[tls.tickets]\nrotation = \"2d\"", "tls.tickets.rotation"),
            (
                "[[rate_limit.route]]\npath_prefix = \"click\"\nrequests_per_second = 1\nburst = 1",
                "rate_limit.route[0].path_prefix",
            ),
            (
                "[server]\nmax_header_bytes = 100",
                "server.max_header_bytes",
            ),
            (
                "[server]\nmax_header_fields = 9",
                "server.max_header_fields",
            ),
            (
                "[server]\nmax_header_fields = 1001",
                "server.max_header_fields",
            ),
            (
                "[server]\nmax_header_fields = -1",
                "server.max_header_fields",
            ),
            (
                "[upstream]\nforward_client_ip = \"some\"",
                "upstream.forward_client_ip",
            ),
            ("[upstream]\nidle_timeout = \"0s\"", "upstream.idle_timeout"),
            ("[server]\nsend_timeout = \"0s\"", "server.send_timeout"),
            (
                "[server]\nbody_read_timeout = \"0s\"",
                "server.body_read_timeout",
            ),
            (
                "[server]\nbody_read_timeout = \"a while\"",
                "server.body_read_timeout",
            ),
            (
                "[server]\nbody_buffer_bytes = -1",
                "server.body_buffer_bytes",
            ),
            (
                "[server]\nmax_body_bytes = 1000\nbody_buffer_bytes = 1001",
                "server.body_buffer_bytes",
            ),
            (
                "[upstream]\nidle_timeout = \"soon\"",
                "upstream.idle_timeout",
            ),
            (
                "[upstream]\nmax_connections = 65536",
                "upstream.max_connections",
            ),
            (
                "[upstream]\nmax_connections = -1",
                "upstream.max_connections",
            ),
            (
                "[upstream]\nmax_connections = \"many\"",
                "upstream.max_connections",
            ),
            (
                "[upstream]\nmax_queued_requests = 1048577",
                "upstream.max_queued_requests",
            ),
            (
                "[upstream]\nmax_queued_requests = -1",
                "upstream.max_queued_requests",
            ),
            (
                "[upstream]\nqueue_timeout = \"0s\"",
                "upstream.queue_timeout",
            ),
            (
                "[upstream]\nqueue_timeout = \"later\"",
                "upstream.queue_timeout",
            ),
            ("[access_log]\nfile_mode = 640", "access_log.file_mode"),
            ("[access_log]\nfile_mode = \"0644\"", "access_log.file_mode"),
            (
                "[access_log]\nfile_mode = \"0o640\"",
                "access_log.file_mode",
            ),
            ("[access_log]\nfile_mode = true", "access_log.file_mode"),
            ("[access_log]\ngroup = \"\"", "access_log.group"),
            ("[access_log]\ngroup = -1", "access_log.group"),
            ("[access_log]\ngroup = \"4294967295\"", "access_log.group"),
            ("[access_log]\ngroup = [\"adm\"]", "access_log.group"),
        ];
        for (text, key) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(&format!("`{key}")), "{text:?} gave {err:?}");
            // A password in a value is never repeated.
            assert!(!err.contains("s3cret"), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn bad_balancing_values_name_their_key() {
        // (the [upstream] lines, the key named)
        let srv = "servers = [\"http://a:1\", ";
        let rows = [
            ("balance = \"random\"", "upstream.balance"),
            ("balance = 1", "upstream.balance"),
            (
                &format!("{srv}{{ url = \"http://b:1\", weight = 0 }}]"),
                "upstream.servers[1].weight",
            ),
            (
                &format!("{srv}{{ url = \"http://b:1\", weight = 1001 }}]"),
                "upstream.servers[1].weight",
            ),
            (
                &format!("{srv}{{ url = \"http://b:1\", weight = -1 }}]"),
                "upstream.servers[1].weight",
            ),
            (
                &format!("{srv}{{ url = \"http://b:1\", weight = \"3\" }}]"),
                "upstream.servers[1].weight",
            ),
            (
                &format!("{srv}{{ url = \"ftp://b:1\" }}]"),
                "upstream.servers[1].url",
            ),
            (
                &format!("{srv}{{ url = \"http://b:1/path\" }}]"),
                "upstream.servers[1].url",
            ),
            (&format!("{srv}{{ name = \"b\" }}]"), "upstream.servers[1]"),
            (
                &format!("{srv}{{ url = \"http://b:1\", colour = 1 }}]"),
                "upstream.servers[1].colour",
            ),
            (
                &format!("{srv}{{ url = \"http://b:1\", name = \"\" }}]"),
                "upstream.servers[1].name",
            ),
            (
                &format!("{srv}{{ url = \"http://b:1\", name = \"a b\" }}]"),
                "upstream.servers[1].name",
            ),
            (
                &format!("{srv}{{ url = \"http://b:1\", name = \"é\" }}]"),
                "upstream.servers[1].name",
            ),
            (
                &format!(
                    "{srv}{{ url = \"http://b:1\", name = \"{}\" }}]",
                    "x".repeat(65)
                ),
                "upstream.servers[1].name",
            ),
            (
                &format!("{srv}{{ url = \"http://b:1\", name = \"0\" }}]"),
                "upstream.servers[1].name",
            ),
            (
                &format!("{srv}{{ url = \"http://b:1\", name = 7 }}]"),
                "upstream.servers[1].name",
            ),
            (
                "servers = [{ url = \"http://a:1\", name = \"o\" }, { url = \"http://b:1\", name = \"o\" }]",
                "upstream.servers[1].name",
            ),
            ("servers = [7]", "upstream.servers[0]"),
            (
                "[upstream.health_check]\npath = \"healthz\"",
                "upstream.health_check.path",
            ),
            (
                "[upstream.health_check]\npath = \"/a b\"",
                "upstream.health_check.path",
            ),
            (
                "[upstream.health_check]\npath = \"\"",
                "upstream.health_check.path",
            ),
            (
                "[upstream.health_check]\ninterval = \"0s\"",
                "upstream.health_check.interval",
            ),
            (
                "[upstream.health_check]\ninterval = \"often\"",
                "upstream.health_check.interval",
            ),
            (
                "[upstream.health_check]\ntimeout = \"0s\"",
                "upstream.health_check.timeout",
            ),
            (
                "[upstream.health_check]\nhealthy_threshold = 0",
                "upstream.health_check.healthy_threshold",
            ),
            (
                "[upstream.health_check]\nhealthy_threshold = 1001",
                "upstream.health_check.healthy_threshold",
            ),
            (
                "[upstream.health_check]\nunhealthy_threshold = 0",
                "upstream.health_check.unhealthy_threshold",
            ),
            (
                "[upstream.health_check]\nunhealthy_threshold = -3",
                "upstream.health_check.unhealthy_threshold",
            ),
            (
                "[upstream.health_check]\nexpect_status = \"2xx\"",
                "upstream.health_check.expect_status",
            ),
            (
                "[upstream.health_check]\nexpect_status = \"399-200\"",
                "upstream.health_check.expect_status",
            ),
            (
                "[upstream.health_check]\nexpect_status = \"99\"",
                "upstream.health_check.expect_status",
            ),
            (
                "[upstream.health_check]\nexpect_status = \"200-600\"",
                "upstream.health_check.expect_status",
            ),
            (
                "[upstream.health_check]\nexpect_status = \"200-\"",
                "upstream.health_check.expect_status",
            ),
            (
                "[upstream.health_check]\nexpect_status = 200",
                "upstream.health_check.expect_status",
            ),
            (
                "[upstream.health_check]\nport = 80",
                "upstream.health_check.port",
            ),
            (
                "[upstream.outlier_detection]\nconsecutive_failures = 1001",
                "upstream.outlier_detection.consecutive_failures",
            ),
            (
                "[upstream.outlier_detection]\nconsecutive_failures = -1",
                "upstream.outlier_detection.consecutive_failures",
            ),
            (
                "[upstream.outlier_detection]\nbase_ejection_time = \"0s\"",
                "upstream.outlier_detection.base_ejection_time",
            ),
            (
                "[upstream.outlier_detection]\nmax_ejection_time = \"10s\"",
                "upstream.outlier_detection.max_ejection_time",
            ),
            (
                "[upstream.outlier_detection]\nenabled = true",
                "upstream.outlier_detection.enabled",
            ),
        ];
        for (lines, key) in rows {
            let text = format!("[upstream]\n{lines}");
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains(&format!("`{key}`")), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn upstream_servers_are_urls_or_tables_with_a_name_and_a_weight() {
        // (servers = …, (authority, label of index i, weight) per server)
        type Server<'a> = (&'a str, &'a str, u32);
        let rows: [(&str, &[Server]); 4] = [
            ("[\"http://a:1\"]", &[("a:1", "0", 1)]),
            (
                "[\"http://a:1\", { url = \"http://b:2\" }]",
                &[("a:1", "0", 1), ("b:2", "1", 1)],
            ),
            (
                "[{ url = \"http://a:1\", name = \"origin-a\", weight = 3 }, \"http://b:2\"]",
                &[("a:1", "origin-a", 3), ("b:2", "1", 1)],
            ),
            (
                "[{ url = \"http://[::1]:8\", name = \"v6_x.1\", weight = 1000 }]",
                &[("[::1]:8", "v6_x.1", 1000)],
            ),
        ];
        for (servers, want) in rows {
            let c = parse(&format!("[upstream]\nservers = {servers}")).expect(servers);
            let got: Vec<(String, String, u32)> = c
                .upstream
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| (s.url.authority.to_string(), s.label(i), s.weight))
                .collect();
            let want: Vec<(String, String, u32)> = want
                .iter()
                .map(|&(a, l, w)| (a.to_owned(), l.to_owned(), w))
                .collect();
            assert_eq!(got, want, "{servers}");
            // Shown and read back alike (check-config, the reload's comparison).
            let shown = toml::to_string(&c).expect(servers);
            let again = parse(&shown).expect(&shown);
            assert_eq!(again.upstream.servers, c.upstream.servers, "{shown}");
        }
    }

    #[test]
    fn the_balancing_keys_default_and_read_back() {
        let c = parse("").unwrap();
        assert_eq!(c.upstream.balance, Balance::RoundRobin);
        assert_eq!(c.upstream.health_check, None);
        assert_eq!(c.upstream.outlier_detection.consecutive_failures, 5);
        assert_eq!(
            c.upstream.outlier_detection.base_ejection_time.0,
            Duration::from_secs(30)
        );
        assert_eq!(
            c.upstream.outlier_detection.max_ejection_time.0,
            Duration::from_secs(300)
        );
        let on = parse("[upstream.health_check]").unwrap();
        assert_eq!(on.upstream.health_check, Some(HealthCheck::default()));
        // (lines, balance, expect_status)
        let rows = [
            (
                "balance = \"least_request\"",
                Balance::LeastRequest,
                (200, 399),
            ),
            ("balance = \"weighted\"", Balance::Weighted, (200, 399)),
            (
                "[upstream.health_check]\nexpect_status = \"204\"",
                Balance::RoundRobin,
                (204, 204),
            ),
            (
                "[upstream.health_check]\nexpect_status = \"200-299\"",
                Balance::RoundRobin,
                (200, 299),
            ),
            (
                "[upstream.health_check]\nexpect_status = \"100-599\"",
                Balance::RoundRobin,
                (100, 599),
            ),
        ];
        for (lines, balance, (a, b)) in rows {
            let c = parse(&format!("[upstream]\n{lines}")).expect(lines);
            assert_eq!(c.upstream.balance, balance, "{lines}");
            let range = c
                .upstream
                .health_check
                .clone()
                .unwrap_or_default()
                .expect_status;
            assert_eq!(range, StatusRange(a, b), "{lines}");
            let again = parse(&toml::to_string(&c).expect(lines)).expect(lines);
            assert_eq!(
                again.upstream.health_check, c.upstream.health_check,
                "{lines}"
            );
            assert_eq!(again.upstream.balance, c.upstream.balance, "{lines}");
        }
    }

    #[test]
    fn an_upstream_url_gives_its_scheme_host_and_port_and_is_shown_as_written() {
        // (server, tls, host, port)
        let rows = [
            ("http://origin.test", false, "origin.test", 80),
            ("http://origin.test:8080", false, "origin.test", 8080),
            ("https://origin.test", true, "origin.test", 443),
            ("https://origin.test/", true, "origin.test", 443),
            ("https://origin.test:8443", true, "origin.test", 8443),
            ("https://127.0.0.1", true, "127.0.0.1", 443),
            ("https://[::1]:8443", true, "::1", 8443),
            ("https://[2001:db8::1]", true, "2001:db8::1", 443),
            ("HTTPS://origin.test", true, "origin.test", 443),
            ("https://origin_a.test", true, "origin_a.test", 443),
        ];
        for (server, tls, host, port) in rows {
            let c = parse(&format!("[upstream]\nservers = [\"{server}\"]")).expect(server);
            let url = &c.upstream.servers[0].url;
            assert_eq!(
                (url.tls, url.host(), url.port()),
                (tls, host, port),
                "{server}"
            );
            let shown = toml::to_string(&c).unwrap();
            let again = parse(&shown).expect(server);
            assert_eq!(
                &again.upstream.servers[0].url, url,
                "{server} shown as {shown}"
            );
        }
    }

    #[test]
    fn the_upstream_tls_keys_are_read_as_written() {
        let c = parse("").unwrap();
        assert_eq!(c.upstream.ca_roots, None);
        assert_eq!(c.upstream.tls_server_name, None);
        // (tls_server_name)
        let rows = [
            "origin.test",
            "ORIGIN.test",
            "xn--bcher-kva.test",
            "10.0.0.1",
            "::1",
        ];
        for name in rows {
            let c = parse(&format!(
                "[upstream]\nca_roots = \"ca.pem\"\ntls_server_name = \"{name}\""
            ))
            .expect(name);
            assert_eq!(c.upstream.ca_roots.as_deref(), Some(Path::new("ca.pem")));
            assert_eq!(c.upstream.tls_server_name.as_deref(), Some(name));
        }
    }

    #[test]
    fn the_upstream_limits_accept_their_whole_range() {
        // (key = value, max_connections, max_queued_requests, queue_timeout)
        let rows = [
            ("max_connections = 0", 0, 1024, 5000),
            ("max_connections = 1", 1, 1024, 5000),
            ("max_connections = 65535", 65535, 1024, 5000),
            ("max_queued_requests = 0", 1024, 0, 5000),
            ("max_queued_requests = 1048576", 1024, 1 << 20, 5000),
            ("queue_timeout = \"1ms\"", 1024, 1024, 1),
            ("queue_timeout = \"2m\"", 1024, 1024, 120_000),
        ];
        for (line, conns, queued, timeout_ms) in rows {
            let c = parse(&format!("[upstream]\n{line}")).expect(line);
            assert_eq!(c.upstream.max_connections, conns, "{line}");
            assert_eq!(c.upstream.max_queued_requests, queued, "{line}");
            assert_eq!(
                c.upstream.queue_timeout.0,
                Duration::from_millis(timeout_ms),
                "{line}"
            );
        }
    }

    #[test]
    fn the_log_file_mode_and_group_are_shown_as_written_and_read_back_alike() {
        // (lines in [access_log], mode bits, group, shown by check-config)
        let rows = [
            ("", 0o640, None, "file_mode = \"0640\"\n"),
            (
                "file_mode = \"0600\"",
                0o600,
                None,
                "file_mode = \"0600\"\n",
            ),
            ("file_mode = \"660\"", 0o660, None, "file_mode = \"660\"\n"),
            (
                "group = \"adm\"",
                0o640,
                Some(GroupSpec::Name("adm".into())),
                "group = \"adm\"\n",
            ),
            (
                "group = \"4\"",
                0o640,
                Some(GroupSpec::Name("4".into())),
                "group = \"4\"\n",
            ),
            ("group = 4", 0o640, Some(GroupSpec::Gid(4)), "group = 4\n"),
        ];
        for (lines, bits, group, shown) in rows {
            let c = parse(&format!("[access_log]\n{lines}")).expect(lines);
            assert_eq!(c.access_log.file_mode.bits, bits, "{lines}");
            assert_eq!(c.access_log.group, group, "{lines}");
            let text = toml::to_string_pretty(&c).unwrap();
            assert!(text.contains(shown), "{lines}: {text}");
            let again = parse(&text).expect(&text);
            assert_eq!(
                again.access_log.file_mode, c.access_log.file_mode,
                "{lines}"
            );
            assert_eq!(again.access_log.group, c.access_log.group, "{lines}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[server]\nlisten_tls = \"0.0.0.0:1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_tls"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn cidr_accepts_networks_and_single_addresses() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().0.to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().0.to_string(), "::1/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn a_duration_is_shown_in_the_unit_it_was_written_in() {
        // (written, shown): one row each.
        let rows = [
            ("90d", "90d"),
            ("30d", "30d"),
            ("60s", "60s"),
            ("1m", "1m"),
            ("3600s", "3600s"),
            ("48h", "48h"),
            ("1000ms", "1000ms"),
            ("500ms", "500ms"),
            ("250us", "250us"),
            ("250µs", "250us"),
            ("10ns", "10ns"),
            ("2w", "2w"),
            ("3months", "3months"),
            ("1y", "1y"),
            ("14 days", "14d"),
            ("2 hours", "2h"),
            ("5min", "5m"),
            ("10sec", "10s"),
            (" 2s ", "2s"),
            // Several parts, or not a whole number of its unit: the largest exact unit.
            ("1h 30m", "90m"),
            ("1m 30s", "90s"),
            ("1d 12h", "36h"),
            ("1s 500ms", "1500ms"),
            ("1.5h", "90m"),
            ("0s", "0s"),
        ];
        for (written, shown) in rows {
            let d: Dur = toml::from_str::<toml::Table>(&format!("d = \"{written}\"")).unwrap()["d"]
                .clone()
                .try_into()
                .unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(d.to_string(), shown, "{written}");
            let again = humantime::parse_duration(shown).unwrap();
            assert_eq!(
                again, d.0,
                "{written}: {shown} reads back as another duration"
            );
        }
    }

    #[test]
    fn a_default_duration_is_shown_in_its_natural_unit() {
        let c = parse("").unwrap();
        let rows = [
            (c.server.idle_timeout, "60s"),
            (c.server.header_read_timeout, "10s"),
            (c.privacy.key_retention, "30d"),
            (c.access_log.retention, "90d"),
            (c.privacy.cookie_max_age, "14d"),
            (Dur::from(Duration::from_secs(7200)), "2h"),
            (Dur::from(Duration::from_millis(1500)), "1500ms"),
        ];
        for (d, shown) in rows {
            assert_eq!(d.to_string(), shown);
        }
    }

    #[test]
    fn a_syntax_error_names_line_and_column_and_never_quotes_the_line() {
        // (the text, the line and column named). Each line holds a secret a mistyped quote or
        // escape would otherwise echo.
        let rows = [
            (
                "[rate_limit.global]\nredis = \"redis://:s3cret\\Q@h\"\n",
                "line 2",
            ),
            (
                "[rate_limit.global]\nredis = \"redis://:s3cret@h\n",
                "line 2",
            ),
            (
                "[rate_limit.global]\nredis = \"redis://:s3cret@h\" x\n",
                "line 2",
            ),
            (
                "[rate_limit.global]\nredis = 'redis://:s3'cret@h'\n",
                "line 2",
            ),
            (
                "[rate_limit.global]\nredis = \"redis://:a@h\"\nredis = \"redis://:s3cret@h\"\n",
                "line 3",
            ),
        ];
        for (text, at) in rows {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(at), "{text:?} gave {err:?}");
            assert!(err.contains("column"), "{text:?} gave {err:?}");
            assert!(!err.contains("s3cret"), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn a_redis_url_is_shown_without_its_password() {
        // (configured, shown)
        let rows = [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:s3cret@10.0.0.5:6379", "redis://***@10.0.0.5:6379"),
            ("redis://edge:s3cret@r.example/2", "redis://***@r.example/2"),
            (
                "redis://r.example/0?protocol=resp3",
                "redis://r.example/0?***",
            ),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            (
                "redis+unix:///run/r.sock?db=1&pass=s3cret",
                "redis+unix:///run/r.sock?***",
            ),
            // An '@' outside the user information: only the scheme is shown.
            ("unix:///run/r.sock?pass=a@b", "unix://***"),
            ("rediss://u:p@w@r.example:6380", "rediss://***"),
            ("redis://r.example/0#frag", "redis://***"),
            // A password with an unencoded '/', '?', '#' or '@': none of it is shown.
            ("redis://:pa/ss@h.example", "redis://***"),
            ("redis://:pa?ss@h.example", "redis://***"),
            ("redis://:pa#ss@h.example", "redis://***"),
            ("redis://u:12/34@h.example", "redis://***"),
            (
                "redis://:p%2Fss@h.example:6379/1",
                "redis://***@h.example:6379/1",
            ),
            // Not a URL at all.
            ("redis://:s3cret@[::1", "redis://***"),
            ("s3cret", "***"),
        ];
        for (url, shown) in rows {
            let u = RedisUrl::from(url);
            assert_eq!(u.redacted(), shown, "{url}");
            assert_eq!(format!("{u:?}"), format!("{shown:?}"));
            assert_eq!(u.expose(), url);
        }
    }
}
