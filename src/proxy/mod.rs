//! Forwarding: the life of one request, as named phases.
//!
//! `request_filter` (client address, authority, head checks: a local 4xx for what no upstream
//! should receive) → `rate_limit` → `upstream_request` (pick a server, header hygiene,
//! HTTP/2→HTTP/1.1 translation, forwarding headers) → `read_body` (a small body read whole
//! before any upstream connection is taken) → `send` (timeout, error mapping) →
//! `response_filter` (hop-by-hop removal, the cookie lifetime cap, protocol upgrade). Nothing
//! here logs a request value.
//!
//! What a client does wrong is told apart from what an upstream does wrong: a request body
//! that stalls, is malformed, too large or cut short is answered (408, 400, 413) or recorded
//! (499) as the client's failure and counted in `client_errors_total`, never in
//! `upstream_errors_total`, also when it fails after part of it was forwarded.

pub mod authority;
pub mod body;
pub mod cookie;
pub mod expect;
pub mod headers;
pub mod tunnel;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

use bytes::Bytes;
use http::header::{
    ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, FORWARDED, HOST, HeaderValue, RETRY_AFTER,
};
use http::{Method, Request, Response, StatusCode, Version};

use crate::client_ip::{ClientAddr, TrustedProxies, X_FORWARDED_FOR};
use crate::config::{Config, ForwardClientIp};
use crate::metrics::{ClientError, UpstreamError};
use crate::privacy::capture::{Capture, ClientMemo};
use crate::privacy::net::truncate;
use crate::ratelimit::{Decision, RateLimiter};
use body::{
    BodyWatch, CapturedBody, ClientBody, ClientReader, Prefetched, RequestBody, ResponseBody, Sinks,
};
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
    body_read_timeout: Duration,
    body_buffer_bytes: u64,
    max_header_bytes: usize,
    max_header_fields: usize,
    cookie_max_age: Duration,
    tunnels: tunnel::Tunnels,
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
            upstreams: Upstreams::new(&config.upstream, sinks.metrics.upstream_pool()),
            trusted: TrustedProxies::new(&config.client_ip.trusted_proxies),
            forward_client_ip: config.upstream.forward_client_ip,
            ipv4_prefix: config.privacy.ipv4_prefix,
            ipv6_prefix: config.privacy.ipv6_prefix,
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: config.server.body_read_timeout.0,
            body_buffer_bytes: config.server.body_buffer_bytes(),
            max_header_bytes: config.server.max_header_bytes,
            max_header_fields: config.server.max_header_fields,
            cookie_max_age: config.privacy.cookie_max_age.0,
            tunnels: tunnel::Tunnels::new(
                config.server.idle_timeout.0,
                sinks.metrics.connections_open.clone(),
                sinks.metrics.tunnels_open.clone(),
            ),
            capture,
            limiter: ArcSwapOption::from(limiter.map(Arc::new)),
            sinks,
        }
    }

    /// Whether an upstream server accepts a TCP connection now ([`upstream::Upstreams::probe`]): `Err`
    /// gives each server's failure.
    pub async fn probe_upstreams(&self) -> Result<(), String> {
        self.upstreams.probe().await
    }

    /// Closes pooled upstream connections as they pass `upstream.idle_timeout`, also when no
    /// request comes; runs until its task is dropped.
    pub async fn close_idle_upstreams(&self) {
        let mut tick = tokio::time::interval(self.upstreams.close_idle_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.upstreams.close_idle();
        }
    }

    /// Handles one request: every phase, ending in a body that records it when it ends.
    pub async fn handle(
        &self,
        req: Request<ClientBody>,
        conn: &ConnInfo,
    ) -> Response<CapturedBody> {
        let client = self.trusted.resolve(conn.peer, req.headers());
        let authority = authority::decide(&req);
        let host = authority
            .as_ref()
            .ok()
            .and_then(|a| a.as_ref())
            .map(|a| a.host());
        let pending = self.capture.begin(client, &req, host, &conn.memo);
        // Recorded as 499 if the client goes away (closes, resets its stream) before the
        // answer exists: this future is then dropped at its `await`.
        let mut unanswered = Unanswered {
            pending: Some(pending),
            sinks: &self.sinks,
        };
        let head = req.method() == Method::HEAD;
        let length = headers::content_length(req.headers());
        let (mut resp, limited, watch) = match self.request_filter(&req, &authority, length) {
            Some(rejection) => {
                linger_h1(req);
                (rejection, false, None)
            }
            None => match self.rate_limit(client, req.uri().path()) {
                Some(rejection) => {
                    linger_h1(req);
                    (rejection, true, None)
                }
                None => {
                    let authority = authority.ok().flatten();
                    let (resp, watch) = self.forward(req, conn, client, authority, length).await;
                    (resp, false, watch)
                }
            },
        };
        if head {
            resp.body_mut().clear_local();
        }
        let status = resp.status().as_u16();
        let pending = unanswered.pending.take();
        resp.map(|body| {
            CapturedBody::new(body, pending, status, limited, self.sinks.clone(), watch)
        })
    }

    /// The request-filter phase: a local answer for a head that no upstream should receive.
    ///
    /// - 400: no, several or conflicting hosts, or an invalid one ([`authority::decide`]);
    ///   `Content-Length` values that disagree or do not parse (RFC 9110 §8.6; HTTP/1.1 heads
    ///   like that are refused earlier, by the HTTP/1.1 parser).
    /// - 431: a head larger than `server.max_header_bytes`, counted the same over both
    ///   protocols: the HTTP/2 header list size (RFC 9113 §6.5.2) of the request; or with more
    ///   field lines than `server.max_header_fields` ([`headers::field_lines`]; over HTTP/1.1
    ///   the parser refuses those first, with the same limit).
    /// - 405: `CONNECT` and `TRACE`, which a reverse proxy does not pass on (the first asks it
    ///   to become a tunnel; the second would reflect credentials added on the way).
    /// - 200 with `Allow`: `OPTIONS` with `Max-Forwards: 0`, which this hop must answer itself
    ///   (RFC 9110 §7.6.2).
    fn request_filter(
        &self,
        req: &Request<ClientBody>,
        authority: &Result<Option<authority::RequestAuthority>, authority::AuthorityError>,
        length: Result<Option<u64>, ()>,
    ) -> Option<Response<ResponseBody>> {
        if authority.is_err() || length.is_err() {
            return Some(local(StatusCode::BAD_REQUEST, "bad request\n"));
        }
        if headers::field_lines(req) > self.max_header_fields
            || headers::header_list_size(req) > self.max_header_bytes
        {
            return Some(local(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large\n",
            ));
        }
        match *req.method() {
            Method::CONNECT | Method::TRACE => {
                let mut resp = local(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(ALLOWED));
                Some(resp)
            }
            Method::OPTIONS if headers::max_forwards(req.headers()) == Some(0) => {
                let mut resp = local(StatusCode::OK, "");
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(ALLOWED));
                Some(resp)
            }
            _ => None,
        }
    }

    /// The rate-limit phase: a 429 with `Retry-After` when the client is over its quota.
    fn rate_limit(&self, client: ClientAddr, path: &str) -> Option<Response<ResponseBody>> {
        let guard = self.limiter.load();
        let limiter = guard.as_ref()?;
        match limiter.check(client, path) {
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

    /// Forwards to an upstream and filters the response; with it, the watch on a request body
    /// still streaming from the client (see [`CapturedBody::new`]).
    async fn forward(
        &self,
        mut req: Request<ClientBody>,
        conn: &ConnInfo,
        client: ClientAddr,
        authority: Option<authority::RequestAuthority>,
        length: Result<Option<u64>, ()>,
    ) -> (Response<ResponseBody>, Option<Arc<BodyWatch>>) {
        let version = req.version();
        if matches!(length, Ok(Some(len)) if len > self.max_body_bytes) {
            linger_h1(req);
            self.sinks.metrics.client_error(ClientError::BodyTooLarge);
            return (client_failure(ClientError::BodyTooLarge, version), None);
        }
        if expect::take(req.headers_mut(), version).is_err() {
            linger_h1(req);
            return (
                local(StatusCode::EXPECTATION_FAILED, "expectation failed\n"),
                None,
            );
        }
        let upgrade =
            req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        // upstream_request
        let (mut parts, body) = req.into_parts();
        let pick = self.upstreams.pick(parts.uri.path_and_query());
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::one_content_length(&mut parts.headers);
        if parts.version == Version::HTTP_2 {
            headers::join_cookie_lines(&mut parts.headers);
        }
        // Set after the hop-by-hop removal, so no `Connection` option can take them away.
        let host = authority.map(|a| a.header_value().clone());
        self.set_forwarding_headers(&mut parts.headers, conn, client, host.as_ref());
        // A request that names no host is sent with the chosen server's (by `send`).
        match host {
            Some(host) => parts.headers.insert(HOST, host),
            None => parts.headers.remove(HOST),
        };
        headers::decrement_max_forwards(&parts.method, &mut parts.headers);
        parts.uri = pick.uri.clone();
        parts.version = Version::HTTP_11;

        // read_body
        let metrics = &self.sinks.metrics;
        let reader = ClientReader::new(body, self.max_body_bytes, self.body_read_timeout);
        let (body, watch) = if reader.is_end_stream() {
            (RequestBody::empty(), None)
        } else {
            match body::read_small(reader, length.ok().flatten(), self.body_buffer_bytes).await {
                Ok(Prefetched::Whole(data, trailers)) => {
                    // A chunked (or length-less HTTP/2) body read whole goes with its length:
                    // what RFC 9112 §7.1.3 does when decoding chunked. Trailers need chunked.
                    if trailers.is_none() {
                        parts
                            .headers
                            .insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
                    }
                    (RequestBody::whole(data, trailers), None)
                }
                Ok(Prefetched::Partial(start, rest)) => {
                    let (body, watch) = RequestBody::streamed(start, rest);
                    (body, Some(watch))
                }
                Err(e) => {
                    metrics.client_error(e.kind);
                    return (client_failure(e.kind, version), None);
                }
            }
        };
        let upstream_req = Request::from_parts(parts, body);

        // send
        let sent = Instant::now();
        // `upstream.request_timeout` is applied by the pool, from the moment the request has
        // a connection: time waiting in the queue is bounded by `upstream.queue_timeout`.
        let result = self.upstreams.send(&pick, upstream_req).await;
        // The request body failed on the client's side, and the exchange with it: the
        // client's failure, never the upstream's. Asked of the watch the body reported to
        // before failing, not read from hyper's error.
        if result.is_err()
            && let Some(kind) = watch.as_deref().and_then(BodyWatch::take_failure)
        {
            metrics.client_error(kind);
            return (client_failure(kind, version), None);
        }
        let (mut resp, lease) = match result {
            Ok(exchange) => {
                metrics.upstream_duration(sent.elapsed());
                exchange
            }
            // The deadline passed while the upstream was waiting for body bytes the client had
            // not sent: the client is too slow, the upstream is not.
            Err(SendError::Timeout(_))
                if watch.as_deref().is_some_and(BodyWatch::waiting_on_client) =>
            {
                let kind = ClientError::BodyTimeout;
                metrics.client_error(kind);
                return (client_failure(kind, version), None);
            }
            Err(e @ SendError::Connect(_)) => {
                metrics.upstream_error(UpstreamError::Connect);
                tracing::warn!(error = %ErrorChain(&e), "upstream connect failed");
                return (local(StatusCode::BAD_GATEWAY, "bad gateway\n"), None);
            }
            Err(SendError::Timeout(timeout)) => {
                metrics.upstream_error(UpstreamError::Timeout);
                tracing::warn!(?timeout, "upstream timed out");
                return (
                    local(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n"),
                    None,
                );
            }
            // Load shedding, counted by the pool; not an upstream error.
            Err(SendError::Queue(_)) => {
                return (
                    local(StatusCode::SERVICE_UNAVAILABLE, "service unavailable\n"),
                    None,
                );
            }
            Err(e) => {
                metrics.upstream_error(UpstreamError::Protocol);
                tracing::warn!(error = %ErrorChain(&e), "upstream request failed");
                return (local(StatusCode::BAD_GATEWAY, "bad gateway\n"), None);
            }
        };

        // response_filter
        // The version and the reason phrase are the hop's own (RFC 9110 §6.2, RFC 9112 §4): an
        // HTTP/1.0 upstream must not turn the client's HTTP/1.1 answer into an HTTP/1.0 one
        // (which also ends keep-alive), and the upstream's reason text is not passed on.
        *resp.version_mut() = Version::HTTP_11;
        resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
        cookie::cap_response(resp.headers_mut(), self.cookie_max_age, SystemTime::now());
        if switching {
            // The connection now belongs to the tunnel: it never goes back to the pool.
            drop(lease);
            match client_upgrade {
                Some(client_side) => self
                    .tunnels
                    .spawn(client_side, hyper::upgrade::on(&mut resp)),
                None => return (local(StatusCode::BAD_GATEWAY, "bad gateway\n"), None),
            }
            return (resp.map(|body| ResponseBody::upstream(body, None)), watch);
        }
        (resp.map(|body| ResponseBody::upstream(body, lease)), watch)
    }

    /// `X-Forwarded-Host` (the request's own authority), `X-Forwarded-Proto` and the client
    /// address as `forward_client_ip` says; a trusted peer's own values are kept, and its
    /// `X-Forwarded-For` chain (all its field lines, as one list) gets the peer appended.
    fn set_forwarding_headers(
        &self,
        h: &mut http::HeaderMap,
        conn: &ConnInfo,
        client: ClientAddr,
        authority: Option<&HeaderValue>,
    ) {
        let peer_trusted = !self.trusted.is_empty() && self.trusted.contains(conn.peer.ip());
        if !(peer_trusted && h.contains_key(&X_FORWARDED_HOST)) {
            match authority {
                Some(host) => h.insert(X_FORWARDED_HOST.clone(), host.clone()),
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
                let value = match peer_trusted && h.contains_key(&X_FORWARDED_FOR) {
                    true => headers::append_hop(h.get_all(&X_FORWARDED_FOR), conn.peer.ip()),
                    false => Some(ip_value(client.ip())),
                };
                match value {
                    Some(v) => h.insert(X_FORWARDED_FOR.clone(), v),
                    None => h.insert(X_FORWARDED_FOR.clone(), ip_value(client.ip())),
                };
            }
            ForwardClientIp::Truncated => {
                h.remove(FORWARDED);
                let net = truncate(client, self.ipv4_prefix, self.ipv6_prefix);
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

/// The status recorded for a request whose client went away before it was answered (nginx's
/// "client closed request"; never sent, since no one is there to receive it).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request's record until its answer exists: dropped before that (the client closed the
/// connection or reset the stream while the request was on its way), it writes the record with
/// [`CLIENT_CLOSED_REQUEST`], so that every request still has exactly one.
struct Unanswered<'a> {
    pending: Option<crate::privacy::capture::Pending>,
    sinks: &'a Sinks,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.sinks
                .observe(pending.finish(CLIENT_CLOSED_REQUEST, 0, false));
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

/// The methods a local `Allow` names: those this proxy passes on with their meaning intact.
const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

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

/// The answer to a request whose body failed on the client's side (408, 400, 413, or 499,
/// recorded only). Over HTTP/1.x, a 408 or 400 closes the connection: the body's framing is
/// lost, and RFC 9110 §15.5.9 asks it of a 408.
fn client_failure(kind: ClientError, version: Version) -> Response<ResponseBody> {
    tracing::debug!(kind = kind.as_str(), "client request body failed");
    let (status, text) = match kind {
        ClientError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request timeout\n"),
        ClientError::BodyMalformed | ClientError::BodyIncomplete => {
            (StatusCode::BAD_REQUEST, "bad request\n")
        }
        ClientError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        ClientError::BodyReset => (
            StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST),
            "client closed request\n",
        ),
    };
    let mut resp = local(status, text);
    if version < Version::HTTP_2 && kind != ClientError::BodyTooLarge {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
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
