//! The `acme.http_listen` listener: cleartext HTTP/1.1 (port 80 as the CA sees it) that answers
//! ACME HTTP-01 challenges (RFC 8555 §8.3) and sends every other request to https, as Caddy
//! does.
//!
//! - `GET` or `HEAD /.well-known/acme-challenge/{token}`: 200 `text/plain` with the key
//!   authorization when a challenge with that token is pending ([`Challenges::http01`]), else
//!   404; any other method under that prefix 405.
//! - Any other request whose host (RFC 9112 §3.2) is one of `server.hosts`: 308 Permanent
//!   Redirect (RFC 9110 §15.4.9) to `https://{host}{path?query}`, the host as the config spells
//!   it and the default https port. Any other host, or none: 400, so the listener never
//!   redirects to a name the operator did not list.
//!
//! One request per connection (`Connection: close`): the head is due within
//! `server.header_read_timeout` of the accept (a PROXY protocol header, when
//! `server.proxy_protocol` is on, included), the whole answer within `server.send_timeout`
//! after that; heads are limited as on the other listeners (`server.max_header_bytes`,
//! `server.max_header_fields`), and a body is never read. A drain lets the request in
//! progress finish within those deadlines. Each request gets one access-log record and is
//! counted like any other; a challenge's path is recorded as
//! `/.well-known/acme-challenge/:id`, whatever the token.
//!
//! What it must never do: record or log a token or any other request value, redirect to a
//! host the config does not list, or wait on a client without a deadline.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::conn::protocol_head_cap;
use super::proxy_protocol::{Accepted, ProxyProtocol};
use crate::acme::Challenges;
use crate::client_ip::{ClientAddr, TrustedProxies};
use crate::config::Config;
use crate::privacy::capture::Capture;
use crate::privacy::observation::HttpProto;
use crate::proxy::authority;
use crate::proxy::body::ResponseBody;
use crate::proxy::logging::{CapturedBody, Sinks, Unanswered};
use crate::proxy::{ConnInfo, local};

/// Where HTTP-01 challenges are served (RFC 8555 §8.3), with the trailing slash.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The path a challenge request is recorded with, whatever its token.
const RECORDED_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/:id";

/// The longest token looked up; ACME tokens are 43 characters (RFC 8555 §8.1: at least 128
/// bits, base64url).
const MAX_TOKEN_LEN: usize = 128;

/// The listener's state, shared by its connections.
pub struct AcmeHttp {
    challenges: Arc<Challenges>,
    /// The records' facts, and `server.hosts` (followed on SIGHUP) for the redirect.
    capture: Arc<Capture>,
    sinks: Arc<Sinks>,
    trusted: TrustedProxies,
    proxy_protocol: Option<ProxyProtocol>,
    http1: hyper::server::conn::http1::Builder,
    header_read_timeout: Duration,
    send_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    /// Never sent on: the drain waits until every holder (each connection) has dropped it.
    _tracker: mpsc::Sender<()>,
}

impl AcmeHttp {
    /// The listener's state from `config` (`[server]`'s limits and timeouts,
    /// `client_ip.trusted_proxies`, `server.proxy_protocol`); records go through `capture` to
    /// `sinks`; `shutdown` flips to `true` when the process drains, and `tracker` is held
    /// until the last connection ends.
    pub fn new(
        config: &Config,
        challenges: Arc<Challenges>,
        capture: Arc<Capture>,
        sinks: Arc<Sinks>,
        shutdown: watch::Receiver<bool>,
        tracker: mpsc::Sender<()>,
    ) -> AcmeHttp {
        let s = &config.server;
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(s.header_read_timeout.0)
            .max_buf_size(protocol_head_cap(s.max_header_bytes))
            .max_headers(s.max_header_fields)
            .keep_alive(false);
        AcmeHttp {
            challenges,
            capture,
            sinks,
            trusted: TrustedProxies::new(&config.client_ip.trusted_proxies),
            proxy_protocol: ProxyProtocol::new(s.proxy_protocol, &config.client_ip.trusted_proxies),
            http1,
            header_read_timeout: s.header_read_timeout.0,
            send_timeout: s.send_timeout.0,
            shutdown,
            _tracker: tracker,
        }
    }

    /// Accepts connections on `listener` until the process drains.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut shutdown = self.shutdown.clone();
        while let Some((tcp, peer)) =
            super::accept(&listener, &mut shutdown, "acme.http_listen").await
        {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(self.clone().connection(tcp, ClientAddr::new(peer.ip())));
        }
    }

    /// Serves one connection: its PROXY protocol header when that is on, then one request,
    /// all by `server.header_read_timeout` + `server.send_timeout` from now.
    async fn connection(self: Arc<Self>, mut tcp: TcpStream, peer: ClientAddr) {
        let metrics = &self.sinks.metrics;
        let _open = OpenConnection::new(metrics.connections_open.clone());
        let head_by = Instant::now() + self.header_read_timeout;
        let close_by = head_by + self.send_timeout;
        let (peer, forwarded) = match &self.proxy_protocol {
            None => (peer, true),
            Some(rules) => match rules.accept(&mut tcp, peer, head_by).await {
                Accepted::Peer(peer) => (peer, true),
                Accepted::Unnamed(peer) => (peer, false),
                Accepted::Rejected(reason) => {
                    metrics.proxy_protocol_rejected(reason);
                    if rules.should_warn(reason) {
                        tracing::warn!(
                            reason = reason.as_str(),
                            listener = "acme.http_listen",
                            allowed = rules.allowed(),
                            "PROXY protocol header refused: connection closed (logged once a minute at most per reason; every one counted in proxy_protocol_rejected_total)"
                        );
                    }
                    return;
                }
                Accepted::Gone => return,
            },
        };
        let info = Arc::new(ConnInfo::new(peer, false, forwarded));
        let state = self.clone();
        let conn_info = info.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(state.answer(req, &info).await) }
        });
        let conn = self.http1.serve_connection(TokioIo::new(tcp), service);
        tokio::pin!(conn);
        let mut shutdown = self.shutdown.clone();
        let draining = async move {
            if !*shutdown.borrow_and_update() {
                let _ = shutdown.changed().await;
            }
        };
        let ended = tokio::select! {
            res = conn.as_mut() => Some(res),
            () = draining => {
                conn.as_mut().graceful_shutdown();
                tokio::time::timeout_at(close_by, conn.as_mut()).await.ok()
            }
            () = tokio::time::sleep_until(close_by) => None,
        };
        match ended {
            Some(Err(e)) => {
                tracing::debug!(error = %e, "acme.http_listen connection ended with an error");
                if let Some(status) = unread_head_status(&e) {
                    let pending = self.capture.begin_unread(
                        conn_info.peer,
                        HttpProto::Http1,
                        &conn_info.memo,
                    );
                    self.sinks.observe(pending.finish(status, 0, false));
                }
            }
            None => tracing::debug!("acme.http_listen connection deadline passed: closing"),
            Some(Ok(())) => {}
        }
    }

    /// The answer to one request, whose body finishes its record when it ends.
    async fn answer(&self, mut req: Request<Incoming>, conn: &ConnInfo) -> Response<CapturedBody> {
        let client = match conn.forwarded {
            true => self.trusted.resolve(conn.peer, req.headers()),
            false => conn.peer,
        };
        let authority = authority::decide(&req);
        let host = authority.as_ref().ok().and_then(Option::as_ref);
        // The token leaves the request before the capture sees it.
        let token = take_token(&mut req);
        let pending = self
            .capture
            .begin(client, &req, host.map(|a| a.host()), &conn.memo);
        let record = Unanswered::new(pending, &self.sinks);
        let mut resp = match token {
            Some(token) => self.challenge(req.method(), token).await,
            None => self.redirect(&req, host.map(|a| a.host())),
        };
        if req.method() == Method::HEAD {
            resp.body_mut().clear_local();
        }
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        record.answered(resp, false, None)
    }

    /// The answer under [`CHALLENGE_PREFIX`].
    async fn challenge(&self, method: &Method, token: Token) -> Response<ResponseBody> {
        if method != Method::GET && method != Method::HEAD {
            let mut resp = local(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let found = match token.0 {
            Some(token) => self.challenges.http01(&token).await,
            None => None,
        };
        match found {
            Some(key_authorization) => {
                let mut resp = Response::new(ResponseBody::local(key_authorization));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                resp
            }
            None => local(StatusCode::NOT_FOUND, "no such challenge\n"),
        }
    }

    /// 308 to the same path and query over https when `host` is listed in `server.hosts`;
    /// else 400.
    fn redirect<B>(&self, req: &Request<B>, host: Option<&str>) -> Response<ResponseBody> {
        let bad = || {
            local(
                StatusCode::BAD_REQUEST,
                "bad request: not a host served here\n",
            )
        };
        let Some(listed) = host.and_then(|h| self.capture.listed_host(h)) else {
            return bad();
        };
        let Some(location) = https_location(listed.as_str(), req.uri()) else {
            return bad();
        };
        let mut resp = local(StatusCode::PERMANENT_REDIRECT, "");
        resp.headers_mut().insert(LOCATION, location);
        resp
    }
}

/// A challenge request's token: `None` when it cannot be one (empty, too long, or not
/// base64url), so nothing is looked up. Never printed.
struct Token(Option<String>);

/// Takes the token out of a request under [`CHALLENGE_PREFIX`], leaving the target
/// [`RECORDED_CHALLENGE_PATH`] in its place (the record's path, and any later reader, never see
/// it); `None`, and the request unchanged, for any other path.
fn take_token<B>(req: &mut Request<B>) -> Option<Token> {
    let rest = req.uri().path().strip_prefix(CHALLENGE_PREFIX)?;
    let valid = !rest.is_empty()
        && rest.len() <= MAX_TOKEN_LEN
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let token = Token(valid.then(|| rest.to_owned()));
    *req.uri_mut() = Uri::from_static(RECORDED_CHALLENGE_PATH);
    Some(token)
}

/// `https://{host}{path?query}` for a request target in origin or absolute form; `None` for the
/// asterisk and authority forms, which name no path.
fn https_location(host: &str, target: &Uri) -> Option<HeaderValue> {
    let path_and_query = target.path_and_query()?.as_str();
    if !path_and_query.starts_with('/') {
        return None;
    }
    HeaderValue::try_from(format!("https://{host}{path_and_query}")).ok()
}

/// The status hyper's HTTP/1.1 parser answered a head it refused with (431 too large, 414 a
/// target too long, 400 malformed), or `None` when it answered nothing (a timeout, a reset).
fn unread_head_status(e: &hyper::Error) -> Option<u16> {
    if e.is_parse_too_large() {
        // hyper's kinds are private; its message is the only way to tell the two apart.
        Some(if e.to_string().contains("URI too long") {
            414
        } else {
            431
        })
    } else if e.is_parse() && !e.is_parse_status() && !e.is_parse_version_h2() {
        Some(400)
    } else {
        None
    }
}

/// Counts a connection in `connections_open` for as long as it lives.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(gauge: prometheus::IntGauge) -> OpenConnection {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_target_loses_its_token_and_any_other_keeps_its_path() {
        // (request target, token looked up (None: no challenge request), target left)
        let rows: [(&str, Option<Option<&str>>, &str); 9] = [
            (
                "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0",
                Some(Some("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0")),
                RECORDED_CHALLENGE_PATH,
            ),
            // A short token, which the path rules alone would record.
            (
                "/.well-known/acme-challenge/abc",
                Some(Some("abc")),
                RECORDED_CHALLENGE_PATH,
            ),
            (
                "/.well-known/acme-challenge/abc?x=1",
                Some(Some("abc")),
                RECORDED_CHALLENGE_PATH,
            ),
            (
                "/.well-known/acme-challenge/",
                Some(None),
                RECORDED_CHALLENGE_PATH,
            ),
            (
                "/.well-known/acme-challenge/a/b",
                Some(None),
                RECORDED_CHALLENGE_PATH,
            ),
            (
                "/.well-known/acme-challenge/a%2Fb",
                Some(None),
                RECORDED_CHALLENGE_PATH,
            ),
            (
                "/.well-known/acme-challenge",
                None,
                "/.well-known/acme-challenge",
            ),
            ("/click/1?x=1", None, "/click/1?x=1"),
            ("/", None, "/"),
        ];
        for (target, want, left) in rows {
            let mut req = Request::get(target).body(()).unwrap();
            let got = take_token(&mut req).map(|t| t.0);
            assert_eq!(got.as_ref().map(|t| t.as_deref()), want, "{target}");
            assert_eq!(req.uri().to_string(), left, "{target}");
        }
        let long = format!("{CHALLENGE_PREFIX}{}", "a".repeat(MAX_TOKEN_LEN + 1));
        let mut req = Request::get(long.as_str()).body(()).unwrap();
        assert_eq!(take_token(&mut req).map(|t| t.0), Some(None));
    }

    #[test]
    fn the_redirect_keeps_path_and_query_and_refuses_targets_without_a_path() {
        // (request target, Location for host "ads.example")
        let rows: [(&str, Option<&str>); 6] = [
            ("/", Some("https://ads.example/")),
            ("/a/b?c=d&e", Some("https://ads.example/a/b?c=d&e")),
            ("http://ads.example/x?y", Some("https://ads.example/x?y")),
            ("http://ads.example", Some("https://ads.example/")),
            ("*", None),
            ("ads.example:80", None),
        ];
        for (target, want) in rows {
            let uri: Uri = target.parse().unwrap();
            let got = https_location("ads.example", &uri);
            assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), want, "{target}");
        }
    }
}
