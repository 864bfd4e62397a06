//! Forwarding: the life of one request, as named phases.
//!
//! [`Proxy::handle`] is the driver: it calls each phase by name, in this order, and reading it
//! shows the life of a request.
//!
//! 1. The client: the peer, or the address a trusted proxy forwarded
//!    ([`TrustedProxies::resolve`]); the request's authority ([`authority::decide`]).
//! 2. `capture_begin`: the record opens with the allowed facts ([`Capture::begin`]), held by a
//!    guard that records 499 if the client goes away before the answer exists
//!    ([`logging::Unanswered`]).
//! 3. `request_filter`: a local 4xx for a head no upstream should receive.
//! 4. `rate_limit`: a 429 when the client is over its quota.
//! 5. `body_filter`: what the head announces of the body: 413 for a declared length over
//!    `server.max_body_bytes`, 417 for an expectation the proxy cannot meet.
//! 6. A server is picked ([`Upstreams::pick`]), then `upstream_request` builds the upstream
//!    head (pure: header hygiene, HTTP/2→HTTP/1.1 translation, the forwarding headers of
//!    [`forwarding::set_forwarding_headers`]).
//! 7. `read_body`: a small body read whole before any upstream connection is taken, a larger
//!    one streamed.
//! 8. `send`: the exchange with the upstream, its errors mapped to an answer.
//! 9. `response_filter`: hop-by-hop removal, the cookie lifetime cap, protocol upgrade.
//! 10. `log`: the logging phase is attached to the answer: the response body finishes the
//!     record when it ends ([`logging::CapturedBody`]).
//!
//! Each phase from 3 on either passes the request on or ends it with an answer of its own; every
//! answer goes through `log`. Nothing here logs a request value.
//!
//! What a client does wrong is told apart from what an upstream does wrong: a request body
//! that stalls, is malformed, too large or cut short is answered (408, 400, 413) or recorded
//! (499) as the client's failure and counted in `client_errors_total`, never in
//! `upstream_errors_total`, also when it fails after part of it was forwarded.

pub mod authority;
pub mod balance;
pub mod body;
pub mod cookie;
pub mod expect;
pub mod forwarding;
pub mod headers;
pub mod health;
pub mod logging;
pub mod recv;
pub mod tunnel;
pub mod upstream;
pub mod upstream_tls;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{
    ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, RETRY_AFTER,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::client_ip::{ClientAddr, TrustedProxies};
use crate::config::Config;
use crate::metrics::{ClientError, LimitTier, UpstreamError};
use crate::privacy::capture::{Capture, ClientMemo};
use crate::ratelimit::{Decision, RateLimiter, Verdict};
use authority::{AuthorityError, RequestAuthority};
use body::{BodyWatch, ClientBody, ClientReader, Prefetched, RequestBody, ResponseBody};
use forwarding::{ForwardingPolicy, set_forwarding_headers};
use logging::{CapturedBody, Sinks, Unanswered};
use upstream::{Lease, Pick, SendError, Upstreams};

pub use logging::CLIENT_CLOSED_REQUEST;

/// What the connection knows about every request on it.
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: ClientAddr,
    /// Whether the connection is TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// Whether `X-Forwarded-For` / `Forwarded` may name the client, when `peer` is a trusted
    /// proxy: false on a connection whose PROXY protocol header named no client (`LOCAL`,
    /// `UNKNOWN`, a Unix socket), where `peer` is the balancer but the bytes are not its own.
    pub forwarded: bool,
    /// The facts derived from the client address, kept for the connection's next request.
    pub memo: ClientMemo,
}

impl ConnInfo {
    /// A connection from `peer`; `forwarded` as [`ConnInfo::forwarded`] says.
    pub fn new(peer: ClientAddr, tls: bool, forwarded: bool) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            forwarded,
            memo: ClientMemo::default(),
        }
    }
}

/// The rate limiter the `rate_limit` phase asks: `None` when limiting is off. Shared with the
/// server, which swaps it on SIGHUP when the quotas change and keeps its memory bounded.
pub type LimiterCell = ArcSwapOption<RateLimiter>;

/// The request path's authority, as [`authority::decide`] reads it.
type Authority = Result<Option<RequestAuthority>, AuthorityError>;

/// The driver of the request path, shared by every connection: the config each phase reads
/// and the shared parts it uses, which the server builds and also hands to the tasks that
/// keep them (key rollover, reload, housekeeping).
pub struct Proxy {
    trusted: TrustedProxies,
    capture: Arc<Capture>,
    max_header_bytes: usize,
    max_header_fields: usize,
    limiter: Arc<LimiterCell>,
    max_body_bytes: u64,
    upstreams: Arc<Upstreams>,
    forwarding: ForwardingPolicy,
    body_read_timeout: Duration,
    body_buffer_bytes: u64,
    cookie_max_age: Duration,
    tunnels: tunnel::Tunnels,
    sinks: Arc<Sinks>,
}

/// What the phases leave for the logging phase: the response, and what its record needs.
struct Answer {
    resp: Response<ResponseBody>,
    /// Refused by the rate limiter.
    limited: bool,
    /// The watch on a request body still streaming from the client (see
    /// [`CapturedBody::new`]).
    watch: Option<Arc<BodyWatch>>,
}

impl Answer {
    /// An answer of the proxy's own, after the request body was read or is not wanted.
    fn local(resp: Response<ResponseBody>) -> Answer {
        Answer {
            resp,
            limited: false,
            watch: None,
        }
    }

    /// A refusal before the request body was read: an HTTP/1.x body is read and thrown away
    /// ([`linger_h1`]), so that the client gets the answer rather than a reset.
    fn refused(req: Request<ClientBody>, resp: Response<ResponseBody>, limited: bool) -> Answer {
        linger_h1(req);
        Answer {
            resp,
            limited,
            watch: None,
        }
    }
}

impl Proxy {
    /// The driver for a validated config, with the shared parts the server built: the capture,
    /// the rate limiter, the upstream pool and the sinks of the logging phase.
    pub fn new(
        config: &Config,
        capture: Arc<Capture>,
        limiter: Arc<LimiterCell>,
        upstreams: Arc<Upstreams>,
        sinks: Arc<Sinks>,
    ) -> Proxy {
        Proxy {
            trusted: TrustedProxies::new(&config.client_ip.trusted_proxies),
            capture,
            max_header_bytes: config.server.max_header_bytes,
            max_header_fields: config.server.max_header_fields,
            limiter,
            max_body_bytes: config.server.max_body_bytes,
            upstreams,
            forwarding: ForwardingPolicy::new(config),
            body_read_timeout: config.server.body_read_timeout.0,
            body_buffer_bytes: config.server.body_buffer_bytes(),
            cookie_max_age: config.privacy.cookie_max_age.0,
            tunnels: tunnel::Tunnels::new(
                config.server.idle_timeout.0,
                sinks.metrics.connections_open.clone(),
                sinks.metrics.tunnels_open.clone(),
            ),
            sinks,
        }
    }

    /// Handles one request: every phase in order, ending in a response whose body finishes the
    /// request's record when it ends. Dropped before it returns (the client went away), the
    /// request is recorded as [`CLIENT_CLOSED_REQUEST`].
    pub async fn handle(
        &self,
        mut req: Request<ClientBody>,
        conn: &ConnInfo,
    ) -> Response<CapturedBody> {
        let client = match conn.forwarded {
            true => self.trusted.resolve(conn.peer, req.headers()),
            false => conn.peer,
        };
        let authority = authority::decide(&req);
        let record = self.capture_begin(client, &req, &authority, conn);
        let (head, version) = (req.method() == Method::HEAD, req.version());
        // Each phase passes the request on, or ends it with an answer of its own (`Err`).
        // Awaited where it is written: bound to a name first, the block's state would be kept
        // twice in this future (the binding and the awaited copy), and copied with it.
        let answer = async {
            let length = headers::content_length(req.headers());
            if let Some(refusal) = self.request_filter(&req, &authority, length) {
                return Err(Answer::refused(req, refusal, false));
            }
            if let Some(refusal) = self.rate_limit(client, req.uri().path()).await {
                return Err(Answer::refused(req, refusal, true));
            }
            let length = length.ok().flatten();
            if let Some(refusal) = self.body_filter(&mut req, length) {
                return Err(Answer::refused(req, refusal, false));
            }
            let pick = self.upstreams.pick(req.uri().path_and_query());
            let authority = authority.ok().flatten();
            let (req, client_upgrade) =
                self.upstream_request(req, &pick.uri, conn, client, authority);
            let (req, watch) = self.read_body(req, length, version).await?;
            let exchange = self.send(&pick, req, watch.as_deref(), version).await?;
            Ok(self.response_filter(exchange, client_upgrade, watch))
        }
        .await;
        let mut answer = answer.unwrap_or_else(|answer| answer);
        // An answer to HEAD has no body (RFC 9110 §9.3.2): the proxy's own is emptied.
        if head {
            answer.resp.body_mut().clear_local();
        }
        self.log(record, answer)
    }

    /// The capture phase's start: the allowed facts of the request, held until the answer
    /// exists ([`Unanswered`]: recorded as 499 if the client goes away first).
    fn capture_begin<B>(
        &self,
        client: ClientAddr,
        req: &Request<B>,
        authority: &Authority,
        conn: &ConnInfo,
    ) -> Unanswered<'_> {
        let host = authority
            .as_ref()
            .ok()
            .and_then(|a| a.as_ref())
            .map(|a| a.host());
        let pending = self.capture.begin(client, req, host, &conn.memo);
        Unanswered::new(pending, &self.sinks)
    }

    /// The request-filter phase: a local answer for a head that no upstream should receive.
    ///
    /// - 400: no, several or conflicting hosts, or an invalid one ([`authority::decide`]);
    ///   `Content-Length` values that disagree or do not parse (`length`, RFC 9110 §8.6;
    ///   HTTP/1.1 heads like that are refused earlier, by the HTTP/1.1 parser).
    /// - 431: a head larger than `server.max_header_bytes`, counted the same over both
    ///   protocols: the HTTP/2 header list size (RFC 9113 §6.5.2) of the request; or with more
    ///   field lines than `server.max_header_fields` ([`headers::field_lines`]; over HTTP/1.1
    ///   the parser refuses those first, with the same limit).
    /// - 405: `CONNECT` and `TRACE`, which a reverse proxy does not pass on (the first asks it
    ///   to become a tunnel; the second would reflect credentials added on the way).
    /// - 200 with `Allow`: `OPTIONS` with `Max-Forwards: 0`, which this hop must answer itself
    ///   (RFC 9110 §7.6.2).
    fn request_filter<B>(
        &self,
        req: &Request<B>,
        authority: &Authority,
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

    /// The rate-limit phase: a 429 with `Retry-After` (seconds, at least 1) when `client` is
    /// over its quota for `path` on this instance's tier or, with `[rate_limit.global]`, on
    /// the fleet's (counted in `rate_limited_total` by policy and tier); a 503 with
    /// `Retry-After: 1` when the global tier cannot ask Redis and `on_error` is `"deny"`.
    /// Without a global tier nothing is awaited; with one, at most `rate_limit.global.timeout`
    /// (a client with a lease of the fleet's budget costs no round trip).
    async fn rate_limit(&self, client: ClientAddr, path: &str) -> Option<Response<ResponseBody>> {
        let guard = self.limiter.load();
        let limiter = guard.as_ref()?;
        let verdict = if limiter.global().is_none() {
            match limiter.check(client, path) {
                Decision::Allow => Verdict::Allow,
                Decision::Limited {
                    policy,
                    retry_after_secs,
                } => Verdict::Limited {
                    policy,
                    tier: LimitTier::Local,
                    retry_after_secs,
                },
            }
        } else {
            // No guard held across the await: the limiter may be swapped meanwhile.
            let limiter = Arc::clone(limiter);
            drop(guard);
            let verdict = limiter.check_tiers(client, path, &self.sinks.metrics).await;
            return self.refusal(&limiter, verdict);
        };
        self.refusal(limiter, verdict)
    }

    /// The answer to a [`Verdict`] that refuses, counted.
    fn refusal(&self, limiter: &RateLimiter, verdict: Verdict) -> Option<Response<ResponseBody>> {
        let (resp, retry_after_secs) = match verdict {
            Verdict::Allow => return None,
            Verdict::Limited {
                policy,
                tier,
                retry_after_secs,
            } => {
                self.sinks
                    .metrics
                    .rate_limited(limiter.policy_name(policy), tier);
                let resp = local(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
                (resp, retry_after_secs)
            }
            Verdict::Unavailable { .. } => {
                let resp = local(StatusCode::SERVICE_UNAVAILABLE, "rate limit unavailable\n");
                (resp, 1)
            }
        };
        let mut resp = resp;
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        Some(resp)
    }

    /// The body-filter phase: what the head announces of the body, checked before a server is
    /// picked. A declared `length` over `server.max_body_bytes`: 413, counted as the client's
    /// error. An expectation other than `100-continue`: 417 ([`expect::take`], which also
    /// removes `Expect`: the connection meets `100-continue` itself).
    fn body_filter<B>(
        &self,
        req: &mut Request<B>,
        length: Option<u64>,
    ) -> Option<Response<ResponseBody>> {
        let version = req.version();
        if length.is_some_and(|len| len > self.max_body_bytes) {
            self.sinks.metrics.client_error(ClientError::BodyTooLarge);
            return Some(client_failure(ClientError::BodyTooLarge, version));
        }
        if expect::take(req.headers_mut(), version).is_err() {
            return Some(local(
                StatusCode::EXPECTATION_FAILED,
                "expectation failed\n",
            ));
        }
        None
    }

    /// The upstream-request phase: the head sent upstream, built from the client's. Pure: it
    /// reads only its arguments and the config.
    ///
    /// Hop-by-hop fields removed (`Upgrade` kept for a protocol upgrade, whose client side is
    /// taken from the request and returned), one `Content-Length`, HTTP/2 `Cookie` lines
    /// joined (RFC 9113 §8.2.3), the forwarding headers ([`set_forwarding_headers`], after the
    /// hop-by-hop removal so no `Connection` option can take them away), `Host` the request's
    /// own `authority` (none: removed, and [`Upstreams::send`] sets the server's),
    /// `Max-Forwards` counted down, the target `target` (origin form) and HTTP/1.1.
    fn upstream_request<B>(
        &self,
        mut req: Request<B>,
        target: &Uri,
        conn: &ConnInfo,
        client: ClientAddr,
        authority: Option<RequestAuthority>,
    ) -> (Request<B>, Option<OnUpgrade>) {
        let upgrade =
            req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h, upgrade);
        headers::one_content_length(h);
        if parts.version == Version::HTTP_2 {
            headers::join_cookie_lines(h);
        }
        let host = authority.map(|a| a.header_value().clone());
        set_forwarding_headers(
            h,
            conn.peer,
            &self.trusted,
            client,
            conn.tls,
            self.forwarding,
            host.as_ref(),
        );
        match host {
            Some(host) => h.insert(HOST, host),
            None => h.remove(HOST),
        };
        headers::decrement_max_forwards(&parts.method, h);
        parts.uri = target.clone();
        parts.version = Version::HTTP_11;
        (Request::from_parts(parts, body), client_upgrade)
    }

    /// The read-body phase: a body of at most `server.body_buffer_bytes` (by its declared
    /// `length`, or as it turns out) is read whole before any upstream connection is taken and
    /// sent with its length (what RFC 9112 §7.1.3 does when decoding chunked; trailers need
    /// chunked); a larger one is streamed, with the [`BodyWatch`] that tells its fate. A body
    /// that fails while read whole is answered as the client's failure (`version`: the
    /// client's protocol).
    async fn read_body(
        &self,
        req: Request<ClientBody>,
        length: Option<u64>,
        version: Version,
    ) -> Result<(Request<RequestBody>, Option<Arc<BodyWatch>>), Answer> {
        let (mut parts, body) = req.into_parts();
        let reader = ClientReader::new(body, self.max_body_bytes, self.body_read_timeout);
        if reader.is_end_stream() {
            return Ok((Request::from_parts(parts, RequestBody::empty()), None));
        }
        let (body, watch) = match body::read_small(reader, length, self.body_buffer_bytes).await {
            Ok(Prefetched::Whole(data, trailers)) => {
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
                self.sinks.metrics.client_error(e.kind);
                return Err(Answer::local(client_failure(e.kind, version)));
            }
        };
        Ok((Request::from_parts(parts, body), watch))
    }

    /// The send phase: the exchange with the picked server, and what its failure means. The
    /// client's request body failing (reported to `watch`), or a deadline passing while the
    /// upstream waited for body bytes the client had not sent, is the client's failure (408,
    /// 400, 499); otherwise 502 (connect, protocol), 504 (timeout) or 503 (the server's queue
    /// is full or its wait too long: load shedding, counted by the pool). `version`: the
    /// client's protocol.
    async fn send(
        &self,
        pick: &Pick,
        req: Request<RequestBody>,
        watch: Option<&BodyWatch>,
        version: Version,
    ) -> Result<(Response<Incoming>, Option<Lease>), Answer> {
        let metrics = &self.sinks.metrics;
        let sent = Instant::now();
        // `upstream.request_timeout` is applied by the pool, from the moment the request has
        // a connection: time waiting in the queue is bounded by `upstream.queue_timeout`.
        let result = self.upstreams.send(pick, req).await;
        // The request body failed on the client's side, and the exchange with it: the
        // client's failure, never the upstream's. Asked of the watch the body reported to
        // before failing, not read from hyper's error.
        if result.is_err()
            && let Some(kind) = watch.and_then(BodyWatch::take_failure)
        {
            metrics.client_error(kind);
            return Err(Answer::local(client_failure(kind, version)));
        }
        match result {
            Ok(exchange) => {
                metrics.upstream_duration(sent.elapsed());
                Ok(exchange)
            }
            // The deadline passed while the upstream was waiting for body bytes the client had
            // not sent: the client is too slow, the upstream is not.
            Err(SendError::Timeout(..)) if watch.is_some_and(BodyWatch::waiting_on_client) => {
                let kind = ClientError::BodyTimeout;
                metrics.client_error(kind);
                Err(Answer::local(client_failure(kind, version)))
            }
            Err(e @ SendError::Connect(_)) => {
                metrics.upstream_error(UpstreamError::Connect);
                tracing::warn!(error = %ErrorChain(&e), "upstream connect failed");
                Err(Answer::local(local(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway\n",
                )))
            }
            Err(e @ SendError::Timeout(..)) => {
                metrics.upstream_error(UpstreamError::Timeout);
                tracing::warn!(error = %e, "upstream timed out");
                Err(Answer::local(local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout\n",
                )))
            }
            // Load shedding, counted by the pool; not an upstream error.
            Err(SendError::Queue(_)) => Err(Answer::local(local(
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable\n",
            ))),
            Err(e) => {
                metrics.upstream_error(UpstreamError::Protocol);
                tracing::warn!(error = %ErrorChain(&e), "upstream request failed");
                Err(Answer::local(local(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway\n",
                )))
            }
        }
    }

    /// The response-filter phase: the upstream's answer as the client gets it. The version
    /// and the reason phrase are the hop's own (RFC 9110 §6.2, RFC 9112 §4): an HTTP/1.0
    /// upstream must not turn the client's HTTP/1.1 answer into an HTTP/1.0 one (which also
    /// ends keep-alive), and the upstream's reason text is not passed on. Hop-by-hop fields
    /// removed, `Set-Cookie` lifetimes capped at `privacy.cookie_max_age` ([`cookie`]). A
    /// `101 (Switching Protocols)` to a request that asked for the upgrade (`client_upgrade`)
    /// hands both connections to a tunnel ([`tunnel::Tunnels`]); to one that did not: 502.
    /// `watch` goes with the upstream's answer to the logging phase.
    fn response_filter(
        &self,
        (mut resp, lease): (Response<Incoming>, Option<Lease>),
        client_upgrade: Option<OnUpgrade>,
        watch: Option<Arc<BodyWatch>>,
    ) -> Answer {
        *resp.version_mut() = Version::HTTP_11;
        resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), switching && client_upgrade.is_some());
        cookie::cap_response(resp.headers_mut(), self.cookie_max_age, SystemTime::now());
        if !switching {
            let resp = resp.map(|body| ResponseBody::upstream(body, lease));
            return Answer {
                resp,
                limited: false,
                watch,
            };
        }
        // The connection now belongs to the tunnel: it never goes back to the pool.
        drop(lease);
        let Some(client_side) = client_upgrade else {
            return Answer::local(local(StatusCode::BAD_GATEWAY, "bad gateway\n"));
        };
        self.tunnels
            .spawn(client_side, hyper::upgrade::on(&mut resp));
        Answer {
            resp: resp.map(|body| ResponseBody::upstream(body, None)),
            limited: false,
            watch,
        }
    }

    /// The logging phase, attached to the answer: its body finishes the request's record
    /// when it ends, with the status and the bytes sent ([`Unanswered::answered`]).
    fn log(&self, record: Unanswered<'_>, answer: Answer) -> Response<CapturedBody> {
        record.answered(answer.resp, answer.limited, answer.watch)
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
pub(crate) fn local(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accesslog::AccessLog;
    use crate::config::RoutePolicy;
    use crate::epoch::Epoch;
    use crate::metrics::Metrics;
    use crate::privacy::capture::EpochKey;
    use crate::privacy::keys::Key;
    use http::HeaderMap;

    /// A driver on real parts (a capture, a limiter, an upstream pool that is never asked, an
    /// access log in a temporary directory), for the phases that need no connection.
    struct Driver {
        proxy: Proxy,
        metrics: Arc<Metrics>,
        sinks: Arc<Sinks>,
        dir: tempfile::TempDir,
    }

    fn driver(edit: impl FnOnce(&mut Config)) -> Driver {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.access_log.dir = dir.path().join("logs");
        config.privacy.key_dir = dir.path().join("keys");
        config.geoip.database = "".into();
        config.rate_limit.enabled = false;
        edit(&mut config);
        let key = EpochKey {
            epoch: Epoch::today(),
            key: Key::from_bytes([7; 32]),
        };
        let capture = Arc::new(Capture::new(&config, key, None).unwrap());
        let limiter = RateLimiter::new(&config.rate_limit);
        let policies = limiter.as_ref().map(|l| l.policy_names());
        let metrics = Arc::new(Metrics::new(&policies.unwrap_or_default()));
        let log = AccessLog::start(&config.access_log, metrics.log_counters()).unwrap();
        let sinks = Arc::new(Sinks {
            log,
            metrics: metrics.clone(),
        });
        let upstreams = Arc::new(Upstreams::new(&config.upstream, metrics.upstream_pool()));
        let limiter = Arc::new(LimiterCell::from(limiter.map(Arc::new)));
        let proxy = Proxy::new(&config, capture, limiter, upstreams, sinks.clone());
        Driver {
            proxy,
            metrics,
            sinks,
            dir,
        }
    }

    fn request(
        method: &str,
        target: &str,
        version: Version,
        fields: &[(&str, &str)],
    ) -> Request<()> {
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for (name, value) in fields {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    const H1: Version = Version::HTTP_11;
    const H2: Version = Version::HTTP_2;

    #[test]
    fn the_request_filter_answers_heads_no_upstream_should_receive() {
        let d = driver(|c| {
            c.server.max_header_fields = 8;
            c.server.max_header_bytes = 1024;
        });
        let long = "x".repeat(1024);
        let many: Vec<(&str, &str)> = (0..8).map(|_| ("x-a", "1")).collect();
        let many = [&[("host", "a.example")][..], &many].concat();
        // (what, request, the local answer's status (None: passed on), with `Allow`)
        let rows: Vec<(&str, Request<()>, Option<u16>, bool)> = vec![
            (
                "a GET with a host",
                request("GET", "/", H1, &[("host", "a.example")]),
                None,
                false,
            ),
            (
                "HTTP/1.1 without Host",
                request("GET", "/", H1, &[]),
                Some(400),
                false,
            ),
            (
                "two Host lines",
                request(
                    "GET",
                    "/",
                    H1,
                    &[("host", "a.example"), ("host", "b.example")],
                ),
                Some(400),
                false,
            ),
            (
                "an invalid host",
                request("GET", "/", H1, &[("host", "a b")]),
                Some(400),
                false,
            ),
            (
                "HTTP/2 :authority and Host that differ",
                request("GET", "https://a.example/", H2, &[("host", "b.example")]),
                Some(400),
                false,
            ),
            (
                "HTTP/2 with no authority at all",
                request("GET", "/", H2, &[]),
                None,
                false,
            ),
            (
                "Content-Length values that disagree",
                request(
                    "POST",
                    "/",
                    H1,
                    &[("host", "a.example"), ("content-length", "1, 2")],
                ),
                Some(400),
                false,
            ),
            (
                "a Content-Length that is not a number",
                request(
                    "POST",
                    "/",
                    H1,
                    &[("host", "a.example"), ("content-length", "ten")],
                ),
                Some(400),
                false,
            ),
            (
                "more field lines than server.max_header_fields",
                request("GET", "/", H1, &many),
                Some(431),
                false,
            ),
            (
                "a head over server.max_header_bytes",
                request("GET", "/", H1, &[("host", "a.example"), ("x-long", &long)]),
                Some(431),
                false,
            ),
            (
                "CONNECT",
                request("CONNECT", "a.example:443", H1, &[("host", "a.example:443")]),
                Some(405),
                true,
            ),
            (
                "TRACE",
                request("TRACE", "/", H1, &[("host", "a.example")]),
                Some(405),
                true,
            ),
            (
                "OPTIONS with Max-Forwards: 0 is this hop's to answer",
                request(
                    "OPTIONS",
                    "*",
                    H1,
                    &[("host", "a.example"), ("max-forwards", "0")],
                ),
                Some(200),
                true,
            ),
            (
                "OPTIONS with Max-Forwards: 1 goes on",
                request(
                    "OPTIONS",
                    "*",
                    H1,
                    &[("host", "a.example"), ("max-forwards", "1")],
                ),
                None,
                false,
            ),
        ];
        for (what, req, status, allow) in rows {
            let authority = authority::decide(&req);
            let length = headers::content_length(req.headers());
            let resp = d.proxy.request_filter(&req, &authority, length);
            assert_eq!(resp.as_ref().map(|r| r.status().as_u16()), status, "{what}");
            if let Some(resp) = resp {
                assert_eq!(resp.headers().contains_key(ALLOW), allow, "{what}");
                let got = resp.headers().get(ALLOW).map(|v| v.to_str().unwrap());
                assert!(got.is_none_or(|v| v == ALLOWED), "{what}");
            }
        }
    }

    #[tokio::test]
    async fn the_rate_limit_refuses_a_client_over_its_quota_with_retry_after() {
        let d = driver(|c| {
            c.rate_limit.enabled = true;
            c.rate_limit.requests_per_second = 1;
            c.rate_limit.burst = 2;
            c.rate_limit.route = vec![RoutePolicy {
                path_prefix: "/login".into(),
                requests_per_second: 1,
                burst: 1,
            }];
        });
        let a = ClientAddr::new("198.51.100.7".parse().unwrap());
        let b = ClientAddr::new("203.0.113.9".parse().unwrap());
        // (client, path, refused), in order: each row spends from the client's quota.
        let rows = [
            (a, "/login", false),
            (a, "/login", true),
            (a, "/", false),
            (a, "/", false),
            (a, "/", true),
            (b, "/login", false),
            (b, "/", false),
        ];
        for (i, (client, path, refused)) in rows.into_iter().enumerate() {
            let resp = d.proxy.rate_limit(client, path).await;
            assert_eq!(resp.is_some(), refused, "row {i}: {path}");
            if let Some(resp) = resp {
                assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "row {i}");
                let retry: u64 = resp.headers()[RETRY_AFTER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1, "row {i}: Retry-After {retry}");
            }
        }
        let text = d.metrics.render();
        for policy in ["default", "/login"] {
            let line =
                format!("webprom_edge_rate_limited_total{{policy=\"{policy}\",tier=\"local\"}} 1");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        // Limiting off: nothing is refused.
        let off = driver(|_| {});
        for _ in 0..100 {
            assert!(off.proxy.rate_limit(a, "/").await.is_none());
        }
    }

    #[test]
    fn the_body_filter_refuses_a_declared_body_too_large_and_unmet_expectations() {
        let d = driver(|c| c.server.max_body_bytes = 100);
        // (what, version, declared length, Expect, status (None: passed on))
        type Row = (
            &'static str,
            Version,
            Option<u64>,
            Option<&'static str>,
            Option<u16>,
        );
        let rows: [Row; 9] = [
            ("no body", H1, None, None, None),
            ("a body at the limit", H1, Some(100), None, None),
            ("a body over the limit", H1, Some(101), None, Some(413)),
            (
                "a body over the limit, HTTP/2",
                H2,
                Some(101),
                None,
                Some(413),
            ),
            ("100-continue", H1, Some(10), Some("100-continue"), None),
            (
                "100-continue, any case",
                H1,
                None,
                Some("100-Continue"),
                None,
            ),
            (
                "an unknown expectation",
                H1,
                None,
                Some("x-magic"),
                Some(417),
            ),
            (
                "an unknown expectation with 100-continue",
                H2,
                None,
                Some("100-continue, x-magic"),
                Some(417),
            ),
            (
                "HTTP/1.0 expectations are ignored",
                Version::HTTP_10,
                None,
                Some("x-magic"),
                None,
            ),
        ];
        for (what, version, length, expect, status) in rows {
            let mut fields = vec![("host", "a.example")];
            fields.extend(expect.map(|e| ("expect", e)));
            let mut req = request("POST", "/", version, &fields);
            let resp = d.proxy.body_filter(&mut req, length);
            assert_eq!(resp.as_ref().map(|r| r.status().as_u16()), status, "{what}");
            // `Expect` never goes upstream; a 413 keeps the connection (its body is read
            // and thrown away).
            assert!(!req.headers().contains_key(http::header::EXPECT), "{what}");
            if let Some(resp) = resp {
                assert!(!resp.headers().contains_key(CONNECTION), "{what}");
            }
        }
        let text = d.metrics.render();
        let line = "webprom_edge_client_errors_total{kind=\"body_too_large\"} 2";
        assert!(text.contains(line), "{line} in\n{text}");
    }

    /// The head as a sorted list of lines, for comparing.
    fn lines(h: &HeaderMap) -> Vec<String> {
        let mut out: Vec<String> = h
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_upstream_request_is_the_clients_head_cleaned_for_the_upstream() {
        let d = driver(|_| {});
        let conn = ConnInfo::new(ClientAddr::new("198.51.100.7".parse().unwrap()), true, true);
        let forwarded: &[&str] = &[
            "x-forwarded-for: 198.51.100.7",
            "x-forwarded-host: a.example",
            "x-forwarded-proto: https",
        ];
        // (what, request, the head sent upstream besides the forwarding fields, upgrade taken)
        let rows: Vec<(&str, Request<()>, Vec<&str>, bool)> = vec![
            (
                "a plain GET",
                request(
                    "GET",
                    "/a?b=c",
                    H1,
                    &[("host", "a.example"), ("accept", "*/*")],
                ),
                vec!["accept: */*", "host: a.example"],
                false,
            ),
            (
                "hop-by-hop fields, and those Connection names, removed",
                request(
                    "GET",
                    "/",
                    H1,
                    &[
                        ("host", "a.example"),
                        ("connection", "keep-alive, x-hop"),
                        ("keep-alive", "timeout=5"),
                        ("x-hop", "1"),
                        ("te", "trailers"),
                        ("proxy-authorization", "Basic eDp5"),
                        ("upgrade", "websocket"),
                        ("x-end", "2"),
                    ],
                ),
                vec!["host: a.example", "x-end: 2"],
                false,
            ),
            (
                "a WebSocket upgrade keeps Upgrade and Connection: upgrade",
                request(
                    "GET",
                    "/ws",
                    H1,
                    &[
                        ("host", "a.example"),
                        ("connection", "Upgrade"),
                        ("upgrade", "websocket"),
                    ],
                ),
                vec![
                    "connection: upgrade",
                    "host: a.example",
                    "upgrade: websocket",
                ],
                true,
            ),
            (
                "HTTP/2: cookies joined, :authority becomes Host",
                request(
                    "GET",
                    "https://a.example/",
                    H2,
                    &[("cookie", "a=1"), ("cookie", "b=2")],
                ),
                vec!["cookie: a=1; b=2", "host: a.example"],
                false,
            ),
            (
                "a host normalised to lower case, without its trailing dot",
                request("GET", "/", H1, &[("host", "A.Example.")]),
                vec!["host: a.example"],
                false,
            ),
            (
                "agreeing Content-Length lines become one",
                request(
                    "POST",
                    "/",
                    H1,
                    &[
                        ("host", "a.example"),
                        ("content-length", "3"),
                        ("content-length", "3"),
                    ],
                ),
                vec!["content-length: 3", "host: a.example"],
                false,
            ),
            (
                "OPTIONS counts Max-Forwards down",
                request(
                    "OPTIONS",
                    "/",
                    H1,
                    &[("host", "a.example"), ("max-forwards", "3")],
                ),
                vec!["host: a.example", "max-forwards: 2"],
                false,
            ),
        ];
        for (what, req, want, upgraded) in rows {
            let target = Uri::from_static("/target?q");
            let authority = authority::decide(&req).unwrap();
            let method = req.method().clone();
            let (out, client_upgrade) = d
                .proxy
                .upstream_request(req, &target, &conn, conn.peer, authority);
            assert_eq!(out.version(), Version::HTTP_11, "{what}");
            assert_eq!(out.uri(), &target, "{what}");
            assert_eq!(out.method(), method, "{what}");
            assert_eq!(client_upgrade.is_some(), upgraded, "{what}");
            let mut want: Vec<String> = want.iter().map(|l| l.to_string()).collect();
            want.extend(forwarded.iter().map(|l| l.to_string()));
            want.sort();
            assert_eq!(lines(out.headers()), want, "{what}");
        }
        // A request that names no host goes without one (the pool sets the server's).
        let req = request("GET", "/", Version::HTTP_10, &[("host", "")]);
        let (out, _) =
            d.proxy
                .upstream_request(req, &Uri::from_static("/"), &conn, conn.peer, None);
        assert!(!out.headers().contains_key(HOST));
        assert!(!out.headers().contains_key("x-forwarded-host"));
    }

    /// Every record the access log wrote, once it has stopped.
    fn records(d: &Driver) -> Vec<serde_json::Value> {
        d.sinks.log.shutdown();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(d.dir.path().join("logs")).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            out.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
        }
        out
    }

    #[tokio::test]
    async fn every_request_is_recorded_once_answered_or_not() {
        use http_body_util::BodyExt;
        let d = driver(|_| {});
        let conn = ConnInfo::new(ClientAddr::new("198.51.100.7".parse().unwrap()), true, true);
        let req = request("GET", "/gone", H1, &[("host", "a.example")]);
        let client = conn.peer;

        // The client went away before the answer existed.
        let authority = authority::decide(&req);
        drop(d.proxy.capture_begin(client, &req, &authority, &conn));

        // Answered: recorded when the body has been sent, with the bytes sent.
        let record = d.proxy.capture_begin(client, &req, &authority, &conn);
        let answer = Answer::local(local(StatusCode::OK, "hello\n"));
        let resp = d.proxy.log(record, answer);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello\n");

        // Refused by the limiter: recorded as limited.
        let record = d.proxy.capture_begin(client, &req, &authority, &conn);
        let mut answer = Answer::local(local(StatusCode::TOO_MANY_REQUESTS, "too many\n"));
        answer.limited = true;
        drop(d.proxy.log(record, answer));

        let got: Vec<(u64, u64, bool)> = records(&d)
            .iter()
            .map(|r| {
                (
                    r["status"].as_u64().unwrap(),
                    r["bytes_sent"].as_u64().unwrap(),
                    r["limited"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (u64::from(CLIENT_CLOSED_REQUEST), 0, false),
                (200, 6, false),
                (429, 0, true)
            ]
        );
    }
}
