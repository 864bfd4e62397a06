//! Forwarding: the life of one request, as named phases.
//!
//! `request_filter` (client address, size limit) → `upstream_request` (pick a server, header
//! hygiene, forwarding headers) → `send` (timeout, error mapping) → `response_filter`
//! (hop-by-hop removal, protocol upgrade). Nothing here logs a request value.

pub mod body;
pub mod cookie;
pub mod expect;
pub mod headers;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

use bytes::Bytes;
use http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, Entry, FORWARDED, HOST, HeaderValue, RETRY_AFTER, SET_COOKIE,
};
use http::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use crate::client_ip::{ClientAddr, TrustedProxies, X_FORWARDED_FOR};
use crate::config::{Config, ForwardClientIp};
use crate::metrics::UpstreamError;
use crate::privacy::capture::{Capture, ClientMemo};
use crate::privacy::net::truncate;
use crate::ratelimit::{Decision, RateLimiter};
use body::{BodyTooLarge, CapturedBody, ClientBody, RequestBody, ResponseBody, Sinks};
use headers::{X_FORWARDED_HOST, X_FORWARDED_PROTO, ip_value};
use upstream::{SendError, Upstreams};

/// What the connection knows about every request on it.
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: ClientAddr,
    /// Whether the connection is TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// The facts derived from the client address, kept for the connection's next request.
    pub memo: ClientMemo,
}

impl ConnInfo {
    /// A connection from `peer`.
    pub fn new(peer: ClientAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            memo: ClientMemo::default(),
        }
    }
}

/// The forwarding core, shared by every connection.
pub struct Proxy {
    upstreams: Upstreams,
    trusted: TrustedProxies,
    forward_client_ip: ForwardClientIp,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    max_body_bytes: u64,
    request_timeout: Duration,
    cookie_max_age: Duration,
    /// The capture phase's state (keys, country database, UA parser).
    pub capture: Capture,
    /// The rate limiter; `None` when disabled. Swapped on SIGHUP when the quotas change.
    pub limiter: ArcSwapOption<RateLimiter>,
    /// Where observations go.
    pub sinks: Arc<Sinks>,
}

impl Proxy {
    /// Builds the proxy from a validated config and its started parts.
    pub fn new(
        config: &Config,
        capture: Capture,
        limiter: Option<RateLimiter>,
        sinks: Arc<Sinks>,
    ) -> Proxy {
        Proxy {
            upstreams: Upstreams::new(&config.upstream),
            trusted: TrustedProxies::new(&config.client_ip.trusted_proxies),
            forward_client_ip: config.upstream.forward_client_ip,
            ipv4_prefix: config.privacy.ipv4_prefix,
            ipv6_prefix: config.privacy.ipv6_prefix,
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.upstream.request_timeout.0,
            cookie_max_age: config.privacy.cookie_max_age.0,
            capture,
            limiter: ArcSwapOption::from(limiter.map(Arc::new)),
            sinks,
        }
    }

    /// Whether at least one upstream is not in back-off.
    pub fn ready(&self) -> bool {
        self.upstreams.any_up()
    }

    /// Handles one request: every phase, ending in a body that records it when it ends.
    pub async fn handle(
        &self,
        req: Request<ClientBody>,
        conn: &ConnInfo,
    ) -> Response<CapturedBody> {
        let client = self.trusted.resolve(conn.peer, req.headers());
        let pending = self.capture.begin(client, &req, &conn.memo);
        let (resp, limited) = match self.rate_limit(client, req.uri().path()) {
            Some(rejection) => {
                linger_h1(req);
                (rejection, true)
            }
            None => (self.forward(req, conn, client).await, false),
        };
        let status = resp.status().as_u16();
        resp.map(|body| CapturedBody::new(body, pending, status, limited, self.sinks.clone()))
    }

    /// The rate-limit phase: a 429 with `Retry-After` when the client is over its quota.
    fn rate_limit(&self, client: ClientAddr, path: &str) -> Option<Response<ResponseBody>> {
        let guard = self.limiter.load();
        let limiter = guard.as_ref()?;
        match limiter.check(client.ip(), path) {
            Decision::Allow => None,
            Decision::Limited {
                policy,
                retry_after_secs,
            } => {
                self.sinks.metrics.rate_limited(limiter.policy_name(policy));
                let mut resp = local(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
                Some(resp)
            }
        }
    }

    /// Forwards to an upstream and filters the response.
    async fn forward(
        &self,
        mut req: Request<ClientBody>,
        conn: &ConnInfo,
        client: ClientAddr,
    ) -> Response<ResponseBody> {
        if declared_length(&req).is_some_and(|len| len > self.max_body_bytes) {
            linger_h1(req);
            return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        let version = req.version();
        if expect::take(req.headers_mut(), version).is_err() {
            linger_h1(req);
            return local(StatusCode::EXPECTATION_FAILED, "expectation failed\n");
        }
        let upgrade =
            req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        // upstream_request
        let (mut parts, body) = req.into_parts();
        let pick = self.upstreams.pick(parts.uri.path_and_query());
        self.set_forwarding_headers(&mut parts, conn, client);
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        if !parts.headers.contains_key(HOST)
            && let Ok(v) = HeaderValue::from_str(self.upstreams.authority(&pick).as_str())
        {
            parts.headers.insert(HOST, v);
        }
        parts.uri = pick.uri.clone();
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, RequestBody::new(body, self.max_body_bytes));

        // send
        let metrics = &self.sinks.metrics;
        let sent = Instant::now();
        let result = tokio::time::timeout(
            self.request_timeout,
            self.upstreams.send(&pick, upstream_req),
        )
        .await;
        let (mut resp, lease) = match result {
            Ok(Ok(exchange)) => {
                metrics.upstream_duration(sent.elapsed());
                exchange
            }
            Ok(Err(e)) if caused_by_body_limit(&e) => {
                return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
            }
            Ok(Err(e @ SendError::Connect(_))) => {
                self.upstreams.mark_down(&pick);
                metrics.upstream_error(UpstreamError::Connect);
                tracing::warn!(error = %ErrorChain(&e), "upstream connect failed");
                return local(StatusCode::BAD_GATEWAY, "bad gateway\n");
            }
            Ok(Err(e)) => {
                metrics.upstream_error(UpstreamError::Protocol);
                tracing::warn!(error = %ErrorChain(&e), "upstream request failed");
                return local(StatusCode::BAD_GATEWAY, "bad gateway\n");
            }
            Err(_) => {
                metrics.upstream_error(UpstreamError::Timeout);
                tracing::warn!(timeout = ?self.request_timeout, "upstream timed out");
                return local(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n");
            }
        };

        // response_filter
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
        cap_cookies(resp.headers_mut(), self.cookie_max_age);
        if switching {
            // The connection now belongs to the tunnel: it never goes back to the pool.
            drop(lease);
            match client_upgrade {
                Some(client_side) => tunnel(client_side, hyper::upgrade::on(&mut resp)),
                None => return local(StatusCode::BAD_GATEWAY, "bad gateway\n"),
            }
            return resp.map(|body| ResponseBody::Upstream { body, lease: None });
        }
        resp.map(|body| ResponseBody::Upstream {
            body,
            lease: Some(lease),
        })
    }

    fn set_forwarding_headers(
        &self,
        parts: &mut http::request::Parts,
        conn: &ConnInfo,
        client: ClientAddr,
    ) {
        let h = &mut parts.headers;
        let peer_trusted = !self.trusted.is_empty() && self.trusted.contains(conn.peer.ip());
        // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need it as Host.
        if !h.contains_key(HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            h.insert(HOST, v);
        }
        if !(peer_trusted && h.contains_key(&X_FORWARDED_HOST)) {
            match h.get(HOST).cloned() {
                Some(host) => h.insert(X_FORWARDED_HOST.clone(), host),
                None => h.remove(&X_FORWARDED_HOST),
            };
        }
        if !(peer_trusted && h.contains_key(&X_FORWARDED_PROTO)) {
            let proto = if conn.tls { "https" } else { "http" };
            h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        }
        match self.forward_client_ip {
            ForwardClientIp::Full => {
                if !peer_trusted {
                    h.remove(FORWARDED);
                }
                let chain = peer_trusted
                    .then(|| h.get(&X_FORWARDED_FOR))
                    .flatten()
                    .and_then(|v| v.to_str().ok());
                let value = match chain {
                    Some(chain) => HeaderValue::from_str(&format!("{chain}, {}", conn.peer.ip())),
                    None => Ok(ip_value(client.ip())),
                };
                if let Ok(v) = value {
                    h.insert(X_FORWARDED_FOR.clone(), v);
                }
            }
            ForwardClientIp::Truncated => {
                h.remove(FORWARDED);
                let net = truncate(client.ip(), self.ipv4_prefix, self.ipv6_prefix);
                if let Ok(v) = HeaderValue::from_str(&net.as_ipnet().network().to_string()) {
                    h.insert(X_FORWARDED_FOR.clone(), v);
                }
            }
            ForwardClientIp::None => {
                h.remove(FORWARDED);
                h.remove(&X_FORWARDED_FOR);
            }
        }
    }
}

/// Lets an HTTP/1.x request answered without reading its body read it to the end
/// ([`body::linger`]), so the client receives the answer rather than a reset.
fn linger_h1(req: Request<ClientBody>) {
    if let ClientBody::H1(body) = req.into_body() {
        body::linger(body);
    }
}

/// The response policy of P11: upstream `Set-Cookie` lifetimes capped to `max_age`.
fn cap_cookies(headers: &mut http::HeaderMap, max_age: Duration) {
    let Entry::Occupied(mut cookies) = headers.entry(SET_COOKIE) else {
        return;
    };
    let now = SystemTime::now();
    for value in cookies.iter_mut() {
        if let Some(capped) = cookie::cap_set_cookie(value, max_age, now) {
            *value = capped;
        }
    }
}

/// A short plain-text response written by the proxy itself.
pub fn local(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn caused_by_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTooLarge>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Displays an error with its causes, for diagnostics (upstream errors carry no request values).
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(err) = cur {
            write!(f, ": {err}")?;
            cur = err.source();
        }
        Ok(())
    }
}

/// Splices an upgraded client connection to the upgraded upstream connection.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "protocol upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
