//! The metrics registry (README) and handles resolved once, so recording a request touches only
//! atomics: no label string is built and no map is searched per request.
//!
//! Every label value comes from a fixed, bounded set (methods, status classes, protocols, the
//! browser and OS families, ISO 3166 / ISO 639-1 codes, configured policy names, configured
//! upstream server names or their indexes). No label ever
//! holds an address, pseudonym, path, host or user agent. The `process_*` metrics describe this
//! process only (CPU, memory, file descriptors), never a request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::accesslog::LogCounters;
use crate::privacy::geo::Country;
use crate::privacy::keys::Pseudonym;
use crate::privacy::lang::Lang;
use crate::privacy::observation::{HttpProto, MethodClass, Observation};
use crate::privacy::ua::{Browser, Os};

const NS: &str = "webprom_edge";
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const PROTOS: [&str; 2] = ["HTTP/1.1", "HTTP/2"];
/// 26 × 26 two-letter codes.
const CODES: usize = 676;

/// Why an upstream exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// Could not connect.
    Connect,
    /// No response head in time.
    Timeout,
    /// The exchange broke: no valid response head, or a response body cut short or
    /// malformed after its head went to the client (the record keeps the status sent).
    Protocol,
}

/// What a client did wrong, ending its request (the `kind` label of `client_errors_total`).
/// Counted apart from [`UpstreamError`]: a client can never raise the upstream error rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// No byte of the request body for `server.body_read_timeout`: answered 408.
    BodyTimeout,
    /// Body framing broken (HTTP/1.1 chunked coding, RFC 9112 §7.1; an HTTP/2 stream at odds
    /// with its `Content-Length`, RFC 9113 §8.1.1): answered 400.
    BodyMalformed,
    /// More than `server.max_body_bytes`: answered 413.
    BodyTooLarge,
    /// The HTTP/1.1 connection ended before the body did: answered 400.
    BodyIncomplete,
    /// The client reset its HTTP/2 stream, or its connection failed, mid-body: recorded 499,
    /// never sent.
    BodyReset,
}

impl ClientError {
    /// Every kind, in label order.
    pub const ALL: [ClientError; 5] = [
        ClientError::BodyTimeout,
        ClientError::BodyMalformed,
        ClientError::BodyTooLarge,
        ClientError::BodyIncomplete,
        ClientError::BodyReset,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientError::BodyTimeout => "body_timeout",
            ClientError::BodyMalformed => "body_malformed",
            ClientError::BodyTooLarge => "body_too_large",
            ClientError::BodyIncomplete => "body_incomplete",
            ClientError::BodyReset => "body_reset",
        }
    }

    /// The status answered and recorded: 408 (RFC 9110 §15.5.9), 400, 413, or 499 (recorded
    /// only: nobody is left to receive it).
    pub fn status(self) -> u16 {
        match self {
            ClientError::BodyTimeout => 408,
            ClientError::BodyMalformed | ClientError::BodyIncomplete => 400,
            ClientError::BodyTooLarge => 413,
            ClientError::BodyReset => CLIENT_CLOSED_REQUEST,
        }
    }
}

/// The status recorded for a request whose client went away before it was answered (nginx's
/// "client closed request"; never sent, since no one is there to receive it).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Why a request was sent upstream again (the `reason` label of `upstream_retries_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    /// A server could not be connected to; the request went to the next server.
    Connect,
    /// A reused keep-alive connection turned out closed before any response byte arrived; the
    /// request went again on a new connection.
    Closed,
}

/// The `upstream_retries_total` counters, handed to the upstream pool.
#[derive(Clone)]
pub struct UpstreamRetries([IntCounter; 2]);

impl UpstreamRetries {
    /// Counts one request sent again, for `reason`.
    pub fn count(&self, reason: RetryReason) {
        self.0[reason as usize].inc();
    }
}

/// Why a request waiting for an upstream connection was answered 503 by the proxy itself (the
/// `reason` label of `upstream_queue_rejections_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRejection {
    /// Its server was at `upstream.max_connections` and the queue held
    /// `upstream.max_queued_requests` already.
    Full,
    /// It waited `upstream.queue_timeout` without a connection coming free.
    Timeout,
}

/// Why a connection was closed at its PROXY protocol header (the `reason` label of
/// `proxy_protocol_rejected_total`; see [`crate::server::proxy_protocol`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocolRejection {
    /// A peer outside `client_ip.trusted_proxies` began with a PROXY protocol signature.
    Untrusted,
    /// A trusted peer began with something else.
    Missing,
    /// The header did not parse, was cut short, or was too long.
    Malformed,
    /// A header of a version `server.proxy_protocol` does not allow.
    Version,
    /// The header was not in within `server.header_read_timeout` of accept.
    Timeout,
}

impl ProxyProtocolRejection {
    /// Every reason, in label order.
    pub const ALL: [ProxyProtocolRejection; 5] = [
        ProxyProtocolRejection::Untrusted,
        ProxyProtocolRejection::Missing,
        ProxyProtocolRejection::Malformed,
        ProxyProtocolRejection::Version,
        ProxyProtocolRejection::Timeout,
    ];

    /// The label value: `untrusted`, `missing`, `malformed`, `version` or `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocolRejection::Untrusted => "untrusted",
            ProxyProtocolRejection::Missing => "missing",
            ProxyProtocolRejection::Malformed => "malformed",
            ProxyProtocolRejection::Version => "version",
            ProxyProtocolRejection::Timeout => "timeout",
        }
    }
}

/// Which tier of rate limiting refused a request (the `tier` label of `rate_limited_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitTier {
    /// This instance's own limiter (`[rate_limit]`, governor): the first tier.
    Local,
    /// The fleet's shared quota in Redis (`[rate_limit.global]`): the second tier.
    Global,
}

impl LimitTier {
    /// Every tier, in label order.
    pub const ALL: [LimitTier; 2] = [LimitTier::Local, LimitTier::Global];

    /// The label value: `local` or `global`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitTier::Local => "local",
            LimitTier::Global => "global",
        }
    }
}

/// Why the global rate-limit tier could not get an answer from Redis (the `kind` label of
/// `global_limit_errors_total`). Each one makes the request follow `rate_limit.global.on_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalLimitError {
    /// No answer within `rate_limit.global.timeout`.
    Timeout,
    /// No connection: refused, reset, closed, or not (re)connected yet.
    Connection,
    /// Redis answered with an error (e.g. `OOM`, `READONLY`, `NOAUTH`, a script error) or an
    /// answer of the wrong shape.
    Response,
}

impl GlobalLimitError {
    /// Every kind, in label order.
    pub const ALL: [GlobalLimitError; 3] = [
        GlobalLimitError::Timeout,
        GlobalLimitError::Connection,
        GlobalLimitError::Response,
    ];

    /// The label value: `timeout`, `connection` or `response`.
    pub fn as_str(self) -> &'static str {
        match self {
            GlobalLimitError::Timeout => "timeout",
            GlobalLimitError::Connection => "connection",
            GlobalLimitError::Response => "response",
        }
    }
}

/// How an ACME order ended (the `result` label of `acme_orders_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeOrderResult {
    /// A certificate was issued and stored.
    Issued,
    /// The CA refused: an error document (RFC 8555 §6.7), or an authorization or order that
    /// became `invalid`.
    Rejected,
    /// The CA could not be reached or did not answer in time, or the certificate could not be
    /// stored.
    Error,
}

impl AcmeOrderResult {
    /// Every result, in label order.
    pub const ALL: [AcmeOrderResult; 3] = [
        AcmeOrderResult::Issued,
        AcmeOrderResult::Rejected,
        AcmeOrderResult::Error,
    ];

    /// The label value: `issued`, `rejected` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeOrderResult::Issued => "issued",
            AcmeOrderResult::Rejected => "rejected",
            AcmeOrderResult::Error => "error",
        }
    }
}

/// What became of an upstream exchange whose client left before its response was read to the
/// end (the `result` label of `upstream_drained_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// The response was read and thrown away; the connection went back to the pool.
    Reused,
    /// The response was too big or too slow; the connection was closed.
    Closed,
}

/// The upstream pool's metrics, handed to the pool: retries, load shedding, abandoned
/// exchanges, and the connection and queue gauges. Cloning shares the same series.
#[derive(Clone)]
pub struct UpstreamPool {
    /// `upstream_retries_total`.
    pub retries: UpstreamRetries,
    queue_rejections: [IntCounter; 2],
    drained: [IntCounter; 2],
    /// `upstream_connections{state="idle"}`: pooled connections waiting for a request.
    pub idle: IntGauge,
    /// `upstream_connections{state="busy"}`: connections lent to a request, being opened, or
    /// draining an abandoned response.
    pub busy: IntGauge,
    /// `upstream_queued_requests`: requests waiting for a connection.
    pub queued: IntGauge,
    /// `upstream_healthy{server}`.
    healthy: IntGaugeVec,
    /// `upstream_requests_total{server,status_class}`.
    server_requests: IntCounterVec,
}

/// One upstream server's own series, resolved once when the pool is built: its `server` label
/// is its configured name or its index (bounded, from the config only).
#[derive(Clone)]
pub struct ServerMetrics {
    /// `upstream_healthy{server}`: 1 while the server is in rotation as far as health checks
    /// and outlier detection go, else 0.
    pub healthy: IntGauge,
    /// `upstream_requests_total{server,status_class}`, "1xx" to "5xx" then "error".
    requests: [IntCounter; 6],
}

impl ServerMetrics {
    /// Counts one exchange sent to the server by the class of its response status (a code of
    /// 600 or more counts as "5xx"), or as "error" (`None`: no response).
    pub fn request(&self, status: Option<u16>) {
        let i = match status {
            Some(code) => (usize::from(code / 100)).clamp(1, 5) - 1,
            None => 5,
        };
        self.requests[i].inc();
    }
}

impl UpstreamPool {
    /// Counts one request answered 503 for `reason`.
    pub fn queue_rejected(&self, reason: QueueRejection) {
        self.queue_rejections[reason as usize].inc();
    }

    /// Counts one abandoned exchange by what became of its connection.
    pub fn drained(&self, result: Drained) {
        self.drained[result as usize].inc();
    }

    /// The series of the server labelled `server` (its configured name, or its index), its
    /// `upstream_healthy` set to 1.
    pub fn server(&self, server: &str) -> ServerMetrics {
        let healthy = self.healthy.with_label_values(&[server]);
        healthy.set(1);
        let mut classes = STATUS_CLASSES.iter().chain(["error"].iter());
        let requests = [(); 6].map(|()| {
            let class = classes.next().copied().unwrap_or("error");
            self.server_requests.with_label_values(&[server, class])
        });
        ServerMetrics { healthy, requests }
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Vec<IntCounter>,
    duration: Vec<Histogram>,
    response_bytes: IntCounter,
    by_country: IntCounterVec,
    country_handles: Box<[OnceLock<IntCounter>]>,
    country_unknown: IntCounter,
    by_browser: Vec<IntCounter>,
    by_os: Vec<IntCounter>,
    by_language: IntCounterVec,
    language_handles: Box<[OnceLock<IntCounter>]>,
    language_unknown: IntCounter,
    unique_clients: IntGauge,
    hll: HyperLogLog,
    rate_limited: IntCounterVec,
    global_limit_errors: [IntCounter; 3],
    global_limit_duration: Histogram,
    /// `global_limit_degraded`: 1 while the global rate-limit tier is degraded (Redis does not
    /// answer), else 0; set at each scrape from the tier's state (0 without a global tier).
    pub global_limit_degraded: IntGauge,
    upstream_duration: Histogram,
    upstream_errors: [IntCounter; 3],
    client_errors: [IntCounter; 5],
    upstream_pool: UpstreamPool,
    /// Indexed by `[tls13][alpn][resumed]`.
    tls_handshakes: [[[IntCounter; 2]; 3]; 2],
    tls_handshake_errors: IntCounter,
    proxy_protocol_rejected: [IntCounter; 5],
    acme_orders: [IntCounter; 3],
    /// `tls_certificate_expiry_timestamp_seconds{name}`: the not-after time (Unix seconds) of
    /// each certificate served; `name` is a configured name only (`default` for `[tls]`'s own).
    pub certificate_expiry: IntGaugeVec,
    /// Open client connections, upgraded tunnels included.
    pub connections_open: IntGauge,
    /// Open upgraded tunnels (WebSocket and other `101 Switching Protocols`).
    pub tunnels_open: IntGauge,
    log: LogCounters,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

fn hopts(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NS)
        .buckets(buckets)
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of `global_limit_duration_seconds`: a loopback or same-rack Redis answers in tens
/// to hundreds of microseconds; `rate_limit.global.timeout` is milliseconds.
const GLOBAL_LIMIT_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

impl Metrics {
    /// Registers every metric. `policies` are the rate-limit policy names (`default` and the
    /// configured route prefixes).
    pub fn new(policies: &[String]) -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };

        let requests_vec = IntCounterVec::new(
            opts(
                "http_requests_total",
                "Requests answered, by method, status class and protocol.",
            ),
            &["method", "status_class", "proto"],
        )
        .expect("valid metric");
        let mut requests = Vec::with_capacity(MethodClass::ALL.len() * 10);
        for m in MethodClass::ALL {
            for class in STATUS_CLASSES {
                for proto in PROTOS {
                    requests.push(requests_vec.with_label_values(&[m.as_str(), class, proto]));
                }
            }
        }
        reg(Box::new(requests_vec));

        let duration_vec = HistogramVec::new(
            hopts(
                "http_request_duration_seconds",
                "From request head received to response end.",
                LATENCY_BUCKETS.to_vec(),
            ),
            &["status_class"],
        )
        .expect("valid metric");
        let duration = STATUS_CLASSES
            .iter()
            .map(|c| duration_vec.with_label_values(&[c]))
            .collect();
        reg(Box::new(duration_vec));

        let response_bytes = IntCounter::with_opts(opts(
            "http_response_bytes_total",
            "Response body bytes sent to clients.",
        ))
        .expect("valid metric");
        reg(Box::new(response_bytes.clone()));

        let by_country = IntCounterVec::new(
            opts(
                "requests_by_country_total",
                "Requests by ISO 3166-1 country of the client.",
            ),
            &["country"],
        )
        .expect("valid metric");
        let country_unknown = by_country.with_label_values(&["unknown"]);
        reg(Box::new(by_country.clone()));

        let browser_vec = IntCounterVec::new(
            opts("requests_by_browser_total", "Requests by browser family."),
            &["browser"],
        )
        .expect("valid metric");
        let by_browser = Browser::ALL
            .iter()
            .map(|b| browser_vec.with_label_values(&[b.as_str()]))
            .collect();
        reg(Box::new(browser_vec));

        let os_vec = IntCounterVec::new(
            opts(
                "requests_by_os_total",
                "Requests by operating system family.",
            ),
            &["os"],
        )
        .expect("valid metric");
        let by_os = Os::ALL
            .iter()
            .map(|o| os_vec.with_label_values(&[o.as_str()]))
            .collect();
        reg(Box::new(os_vec));

        let by_language = IntCounterVec::new(
            opts(
                "requests_by_language_total",
                "Requests by primary browser language (ISO 639-1).",
            ),
            &["lang"],
        )
        .expect("valid metric");
        let language_unknown = by_language.with_label_values(&["unknown"]);
        reg(Box::new(by_language.clone()));

        let unique_clients_vec = IntGaugeVec::new(
            opts(
                "unique_clients",
                "Estimated distinct clients in the current key epoch (HyperLogLog over pseudonyms).",
            ),
            &["window"],
        )
        .expect("valid metric");
        let unique_clients = unique_clients_vec.with_label_values(&["epoch"]);
        reg(Box::new(unique_clients_vec));

        let rl_vec = IntCounterVec::new(
            opts(
                "rate_limited_total",
                "Requests rejected by rate limiting, by policy and by the tier that refused \
                 (local: this instance; global: the fleet's quota in Redis).",
            ),
            &["policy", "tier"],
        )
        .expect("valid metric");
        // Every configured policy is exported from the start, at zero, for both tiers.
        for p in policies {
            for t in LimitTier::ALL {
                rl_vec.with_label_values(&[p, t.as_str()]);
            }
        }
        reg(Box::new(rl_vec.clone()));
        let rate_limited = rl_vec;

        let gle_vec = IntCounterVec::new(
            opts(
                "global_limit_errors_total",
                "Requests of the global rate-limit tier that got no answer from Redis, by kind; \
                 each followed rate_limit.global.on_error.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let global_limit_errors =
            GlobalLimitError::ALL.map(|k| gle_vec.with_label_values(&[k.as_str()]));
        reg(Box::new(gle_vec));

        let global_limit_duration = Histogram::with_opts(hopts(
            "global_limit_duration_seconds",
            "Round trips of the global rate-limit tier to Redis (one script call each), \
             answered or not.",
            GLOBAL_LIMIT_BUCKETS.to_vec(),
        ))
        .expect("valid metric");
        reg(Box::new(global_limit_duration.clone()));

        let global_limit_degraded = IntGauge::with_opts(opts(
            "global_limit_degraded",
            "1 while the global rate-limit tier is degraded (Redis does not answer; requests \
             without a lease follow rate_limit.global.on_error), else 0. Also learnt while idle: \
             the tier asks Redis every few seconds.",
        ))
        .expect("valid metric");
        reg(Box::new(global_limit_degraded.clone()));

        let upstream_duration = Histogram::with_opts(hopts(
            "upstream_request_duration_seconds",
            "From sending a request upstream to its response head.",
            LATENCY_BUCKETS.to_vec(),
        ))
        .expect("valid metric");
        reg(Box::new(upstream_duration.clone()));

        let ue_vec = IntCounterVec::new(
            opts(
                "upstream_errors_total",
                "Upstream exchanges failed by the upstream's fault, by kind (a client's failures \
                 are in client_errors_total).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let upstream_errors =
            ["connect", "timeout", "protocol"].map(|k| ue_vec.with_label_values(&[k]));
        reg(Box::new(ue_vec));

        let ce_vec = IntCounterVec::new(
            opts(
                "client_errors_total",
                "Requests ended by their client's fault, by kind: no request body byte for \
                 server.body_read_timeout (body_timeout), malformed body framing \
                 (body_malformed), body over server.max_body_bytes (body_too_large), connection \
                 ended mid-body (body_incomplete), stream reset or connection lost mid-body \
                 (body_reset). Never counted in upstream_errors_total.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let client_errors = ClientError::ALL.map(|k| ce_vec.with_label_values(&[k.as_str()]));
        reg(Box::new(ce_vec));

        // Two reasons because they call for different remedies: `connect`, a server down;
        // `closed`, an upstream closing keep-alive connections sooner than
        // `upstream.idle_timeout` (or after a number of requests).
        let retries_vec = IntCounterVec::new(
            opts(
                "upstream_retries_total",
                "Requests sent upstream again: to the next server after a connect failure \
                 (connect), or on a new connection after a reused one was found closed before \
                 any response byte (closed).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let upstream_retries =
            UpstreamRetries(["connect", "closed"].map(|r| retries_vec.with_label_values(&[r])));
        reg(Box::new(retries_vec));

        // Load shedding by the proxy, kept apart from `upstream_errors_total`: a full queue says
        // the upstream is slow or the cap low, not that an exchange failed.
        let rejections_vec = IntCounterVec::new(
            opts(
                "upstream_queue_rejections_total",
                "Requests answered 503 by the proxy because their upstream server was at \
                 upstream.max_connections: the queue was full (full), or no connection came \
                 free within upstream.queue_timeout (timeout).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let queue_rejections = ["full", "timeout"].map(|r| rejections_vec.with_label_values(&[r]));
        reg(Box::new(rejections_vec));

        let drained_vec = IntCounterVec::new(
            opts(
                "upstream_drained_total",
                "Upstream exchanges whose client left before the response was read to its end: \
                 the rest was read and thrown away and the connection reused (reused), or it \
                 was too big or too slow and the connection was closed (closed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let drained = ["reused", "closed"].map(|r| drained_vec.with_label_values(&[r]));
        reg(Box::new(drained_vec));

        let connections_vec = IntGaugeVec::new(
            opts(
                "upstream_connections",
                "Upstream connections, all servers: idle in the pool (idle), or lent to a \
                 request, being opened, or draining an abandoned response (busy).",
            ),
            &["state"],
        )
        .expect("valid metric");
        let [idle, busy] = ["idle", "busy"].map(|s| connections_vec.with_label_values(&[s]));
        reg(Box::new(connections_vec));

        let queued = IntGauge::with_opts(opts(
            "upstream_queued_requests",
            "Requests waiting for an upstream connection (all servers).",
        ))
        .expect("valid metric");
        reg(Box::new(queued.clone()));
        let healthy = IntGaugeVec::new(
            opts(
                "upstream_healthy",
                "1 while an upstream server is in rotation (passing its health checks, not \
                 ejected by outlier detection), else 0; by server name or index.",
            ),
            &["server"],
        )
        .expect("valid metric");
        reg(Box::new(healthy.clone()));
        let server_requests = IntCounterVec::new(
            opts(
                "upstream_requests_total",
                "Exchanges sent to an upstream server (retries on the server that got them), by \
                 server name or index and response status class; \"error\": no response. \
                 Health checks are not counted.",
            ),
            &["server", "status_class"],
        )
        .expect("valid metric");
        reg(Box::new(server_requests.clone()));
        let upstream_pool = UpstreamPool {
            retries: upstream_retries,
            queue_rejections,
            drained,
            idle,
            busy,
            queued,
            healthy,
            server_requests,
        };

        let hs_vec = IntCounterVec::new(
            opts(
                "tls_handshakes_total",
                "Completed TLS handshakes, by version, ALPN, and whether a session was resumed \
                 (a session ticket accepted: no certificate sent).",
            ),
            &["version", "alpn", "resumed"],
        )
        .expect("valid metric");
        let tls_handshakes = ["TLSv1.2", "TLSv1.3"].map(|v| {
            ["h2", "http/1.1", "none"]
                .map(|a| ["false", "true"].map(|r| hs_vec.with_label_values(&[v, a, r])))
        });
        reg(Box::new(hs_vec));

        let tls_handshake_errors = IntCounter::with_opts(opts(
            "tls_handshake_errors_total",
            "TLS handshakes that failed or timed out.",
        ))
        .expect("valid metric");
        reg(Box::new(tls_handshake_errors.clone()));

        let pp_vec = IntCounterVec::new(
            opts(
                "proxy_protocol_rejected_total",
                "Connections closed at their PROXY protocol header, before TLS or HTTP: a \
                 header from an untrusted peer (untrusted), none from a trusted proxy (missing), \
                 one that does not parse (malformed), of a version not allowed (version), or not \
                 in within server.header_read_timeout (timeout).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let proxy_protocol_rejected =
            ProxyProtocolRejection::ALL.map(|r| pp_vec.with_label_values(&[r.as_str()]));
        reg(Box::new(pp_vec));

        let acme_vec = IntCounterVec::new(
            opts(
                "acme_orders_total",
                "ACME certificate orders by how they ended: a certificate issued and stored \
                 (issued), refused by the CA (rejected), or failed on the way: the CA \
                 unreachable or slow, or the storage not writable (error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let acme_orders = AcmeOrderResult::ALL.map(|r| acme_vec.with_label_values(&[r.as_str()]));
        reg(Box::new(acme_vec));

        let certificate_expiry = IntGaugeVec::new(
            opts(
                "tls_certificate_expiry_timestamp_seconds",
                "When each certificate served expires (its not-after time, Unix seconds), by \
                 configured name (default: the [tls] certificate).",
            ),
            &["name"],
        )
        .expect("valid metric");
        reg(Box::new(certificate_expiry.clone()));

        let connections_open =
            IntGauge::with_opts(opts("connections_open", "Open client connections."))
                .expect("valid metric");
        reg(Box::new(connections_open.clone()));

        let tunnels_open = IntGauge::with_opts(opts(
            "tunnels_open",
            "Open upgraded tunnels (WebSocket and other 101 Switching Protocols); each also counts in connections_open.",
        ))
        .expect("valid metric");
        reg(Box::new(tunnels_open.clone()));

        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(opts(name, help)).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let log = LogCounters {
            records: counter("access_log_records_total", "Access-log records written."),
            dropped: counter(
                "access_log_dropped_total",
                "Access-log records lost: writer queue full, or their write failed.",
            ),
            write_errors: counter(
                "access_log_write_errors_total",
                "Access-log write or flush failures.",
            ),
        };

        let build_info = IntGaugeVec::new(opts("build_info", "Build information."), &["version"])
            .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        reg(Box::new(build_info));

        // The standard `process_*` metrics (Prometheus client conventions), read from /proc at
        // each scrape: CPU seconds (whole seconds), resident and virtual memory, open and
        // maximum file descriptors, start time, threads. Unprefixed, as every exporter names them.
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));

        Metrics {
            registry,
            requests,
            duration,
            response_bytes,
            by_country,
            country_handles: (0..CODES).map(|_| OnceLock::new()).collect(),
            country_unknown,
            by_browser,
            by_os,
            by_language,
            language_handles: (0..CODES).map(|_| OnceLock::new()).collect(),
            language_unknown,
            unique_clients,
            hll: HyperLogLog::new(),
            rate_limited,
            global_limit_errors,
            global_limit_duration,
            global_limit_degraded,
            upstream_duration,
            upstream_errors,
            client_errors,
            upstream_pool,
            tls_handshakes,
            tls_handshake_errors,
            proxy_protocol_rejected,
            acme_orders,
            certificate_expiry,
            connections_open,
            tunnels_open,
            log,
        }
    }

    /// The access-log writer's counters.
    pub fn log_counters(&self) -> LogCounters {
        self.log.clone()
    }

    /// Records one finished request.
    pub fn observe(&self, obs: &Observation) {
        let class = match obs.status() {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let proto = match obs.proto() {
            HttpProto::Http1 => 0,
            HttpProto::Http2 => 1,
        };
        self.requests[(obs.method().index() * 5 + class) * 2 + proto].inc();
        self.duration[class].observe(obs.duration_us() as f64 / 1e6);
        self.response_bytes.inc_by(obs.bytes_sent());
        match obs.country() {
            Some(c) => self.country(c).inc(),
            None => self.country_unknown.inc(),
        }
        self.by_browser[browser_index(obs.device().browser)].inc();
        self.by_os[os_index(obs.device().os)].inc();
        match obs.lang() {
            Some(l) => self.language(l).inc(),
            None => self.language_unknown.inc(),
        }
        self.hll.insert(&obs.client());
    }

    fn country(&self, c: Country) -> &IntCounter {
        let code = c.as_str();
        match code_index(code.as_bytes(), b'A') {
            Some(i) => {
                self.country_handles[i].get_or_init(|| self.by_country.with_label_values(&[code]))
            }
            None => &self.country_unknown,
        }
    }

    fn language(&self, l: Lang) -> &IntCounter {
        let code = l.as_str();
        match code_index(code.as_bytes(), b'a') {
            Some(i) => {
                self.language_handles[i].get_or_init(|| self.by_language.with_label_values(&[code]))
            }
            None => &self.language_unknown,
        }
    }

    /// Counts a request rejected by the rate-limit policy named `policy` (`default` or a
    /// configured path prefix: a bounded set) in `tier`. Off the common path, so a label lookup
    /// is fine.
    pub fn rate_limited(&self, policy: &str, tier: LimitTier) {
        self.rate_limited
            .with_label_values(&[policy, tier.as_str()])
            .inc();
    }

    /// Counts a global-tier call to Redis that got no usable answer.
    pub fn global_limit_error(&self, kind: GlobalLimitError) {
        self.global_limit_errors[kind as usize].inc();
    }

    /// Records one global-tier round trip to Redis (seconds), answered or not.
    pub fn global_limit_duration(&self, d: Duration) {
        self.global_limit_duration.observe(d.as_secs_f64());
    }

    /// Records the time to an upstream response head.
    pub fn upstream_duration(&self, d: Duration) {
        self.upstream_duration.observe(d.as_secs_f64());
    }

    /// Counts a failed upstream exchange.
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].inc();
    }

    /// Counts a request ended by its client's fault.
    pub fn client_error(&self, kind: ClientError) {
        self.client_errors[kind as usize].inc();
    }

    /// The upstream pool's metrics, for the pool.
    pub fn upstream_pool(&self) -> UpstreamPool {
        self.upstream_pool.clone()
    }

    /// Counts a completed handshake; `resumed`: the client resumed a session (a session
    /// ticket was accepted; there is no session-ID cache).
    pub fn tls_handshake(&self, tls13: bool, alpn: Option<&[u8]>, resumed: bool) {
        let a = match alpn {
            Some(b"h2") => 0,
            Some(b"http/1.1") => 1,
            _ => 2,
        };
        self.tls_handshakes[usize::from(tls13)][a][usize::from(resumed)].inc();
    }

    /// Counts a failed handshake.
    pub fn tls_handshake_error(&self) {
        self.tls_handshake_errors.inc();
    }

    /// Counts one ACME order by how it ended.
    pub fn acme_order(&self, result: AcmeOrderResult) {
        self.acme_orders[result as usize].inc();
    }

    /// Counts a connection closed at its PROXY protocol header for `reason`.
    pub fn proxy_protocol_rejected(&self, reason: ProxyProtocolRejection) {
        self.proxy_protocol_rejected[reason as usize].inc();
    }

    /// Starts a new distinct-visitor window (at the key epoch rollover).
    pub fn new_epoch(&self) {
        self.hll.clear();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.unique_clients.set(self.hll.estimate().round() as i64);
        let mut out = String::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }

    /// The content type of [`Metrics::render`].
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}

fn code_index(code: &[u8], base: u8) -> Option<usize> {
    match code {
        [a, b] if a.wrapping_sub(base) < 26 && b.wrapping_sub(base) < 26 => {
            Some((a - base) as usize * 26 + (b - base) as usize)
        }
        _ => None,
    }
}

fn browser_index(b: Browser) -> usize {
    Browser::ALL
        .iter()
        .position(|x| *x == b)
        .unwrap_or(Browser::ALL.len() - 1)
}

fn os_index(o: Os) -> usize {
    Os::ALL
        .iter()
        .position(|x| *x == o)
        .unwrap_or(Os::ALL.len() - 1)
}

/// A lock-free HyperLogLog (p = 14: 16384 one-byte registers, standard error 0.81%).
///
/// Pseudonyms are already keyed-hash output, so their bits are uniform: 64 of them are read
/// straight from the base64url characters, no further hashing needed.
pub struct HyperLogLog {
    registers: Box<[AtomicU8]>,
}

const HLL_P: u32 = 14;
const HLL_M: usize = 1 << HLL_P;

impl Default for HyperLogLog {
    fn default() -> Self {
        Self::new()
    }
}

impl HyperLogLog {
    /// An empty sketch.
    pub fn new() -> HyperLogLog {
        HyperLogLog {
            registers: (0..HLL_M).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Adds a pseudonym.
    pub fn insert(&self, p: &Pseudonym) {
        self.insert_hash(pseudonym_bits(p));
    }

    /// Adds a 64-bit uniform hash.
    pub fn insert_hash(&self, h: u64) {
        let index = (h >> (64 - HLL_P)) as usize;
        let rest = h << HLL_P;
        let rank = (rest.leading_zeros().min(64 - HLL_P) + 1) as u8;
        let reg = &self.registers[index];
        if reg.load(Ordering::Relaxed) < rank {
            reg.fetch_max(rank, Ordering::Relaxed);
        }
    }

    /// The estimated number of distinct items.
    pub fn estimate(&self) -> f64 {
        let m = HLL_M as f64;
        let mut sum = 0.0;
        let mut zeros = 0usize;
        for r in self.registers.iter() {
            let v = r.load(Ordering::Relaxed);
            sum += 1.0 / f64::from(1u32 << v.min(31));
            if v == 0 {
                zeros += 1;
            }
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            // Small range: linear counting is exact enough and unbiased.
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }

    /// Empties the sketch.
    pub fn clear(&self) {
        for r in self.registers.iter() {
            r.store(0, Ordering::Relaxed);
        }
    }
}

/// The first 64 bits of a pseudonym's base64url text.
fn pseudonym_bits(p: &Pseudonym) -> u64 {
    let mut bits = 0u64;
    for &c in p.as_str().as_bytes().iter().take(11) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            _ => 63,
        };
        bits = (bits << 6) | u64::from(v);
    }
    // 11 characters carry 66 bits; the top two fell off the left, which is fine.
    bits
}

/// A new key epoch starts a new distinct-visitor window.
impl crate::privacy::keys::schedule::EpochListener for Metrics {
    fn new_epoch(&self) {
        Metrics::new_epoch(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hll_is_within_two_percent_at_a_million() {
        let hll = HyperLogLog::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..1_000_000u64 {
            // splitmix64: uniform 64-bit values, like keyed-hash output.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            hll.insert_hash(z ^ (z >> 31));
            if i == 999 {
                let e = hll.estimate();
                assert!((e - 1000.0).abs() / 1000.0 < 0.05, "1000 → {e}");
            }
        }
        let e = hll.estimate();
        assert!((e - 1e6).abs() / 1e6 < 0.02, "1e6 → {e}");
        hll.clear();
        assert_eq!(hll.estimate(), 0.0);
    }

    #[test]
    fn code_index_accepts_only_two_letters() {
        assert_eq!(code_index(b"AA", b'A'), Some(0));
        assert_eq!(code_index(b"ZZ", b'A'), Some(675));
        assert_eq!(code_index(b"sq", b'a'), Some(18 * 26 + 16));
        assert_eq!(code_index(b"A", b'A'), None);
        assert_eq!(code_index(b"a1", b'a'), None);
    }
}
