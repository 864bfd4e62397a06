//! Serving one accepted connection: TLS handshake, HTTP/1.1 (hyper) or HTTP/2 ([`super::h2`]),
//! and the connection's deadlines:
//!
//! - `server.header_read_timeout`, from the moment the connection is accepted to its first
//!   request head: the TLS handshake, the protocol choice (ALPN, the h2c preface), the HTTP/2
//!   preface and SETTINGS are all inside it. Missed: the connection is closed, nothing sent.
//! - `server.idle_timeout`: no byte moving either way that long starts a graceful close.
//! - `server.send_timeout`: a write to the client that makes no progress that long fails the
//!   connection (`WatchedIo`; HTTP/2 streams waiting for window have their own, in
//!   [`super::h2`]), and a graceful close (idle, drain, GOAWAY) during which no byte moves that
//!   long, with no request waiting for its upstream, is turned into a hard close (`drive`).
//!
//! When `server.proxy_protocol` is on, a connection's PROXY protocol header is read first
//! ([`super::proxy_protocol`]), within the same `header_read_timeout`; its source becomes the
//! connection's peer.
//!
//! Plain HTTP sent to the TLS port is answered with a fixed 400 in plain HTTP and closed
//! (`refuse_plain_http`), as nginx does, rather than with a TLS alert a browser or curl
//! cannot show.
//!
//! When `[acme]` is on with TLS-ALPN-01, a ClientHello offering ALPN `acme-tls/1` (RFC 8737)
//! is answered with the pending challenge's certificate (`answer_tls_alpn01`) and the
//! connection closed: no HTTP, no access-log record, not counted as a handshake error.
//!
//! What it must never do: wait on a client without a deadline, or log anything the client sent.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use super::h2;
use super::proxy_protocol::{Accepted, ProxyProtocol};
use crate::acme::{ACME_TLS_ALPN, Challenges};
use crate::client_ip::ClientAddr;
use crate::config;
use crate::metrics::Metrics;
use crate::privacy::capture::{Capture, ClientMemo};
use crate::privacy::observation::HttpProto;
use crate::proxy::body::ClientBody;
use crate::proxy::logging::Sinks;
use crate::proxy::{ConnInfo, Proxy};

/// The per-process state every connection task shares.
pub struct ConnShared {
    /// The request driver.
    pub proxy: Arc<Proxy>,
    /// For the records of requests the driver never sees (refused by the protocol layer).
    capture: Arc<Capture>,
    /// Where those records go; the connection and TLS metrics.
    sinks: Arc<Sinks>,
    /// HTTP/1.1.
    h1_only: auto::Builder<TokioExecutor>,
    /// HTTP/2, after ALPN h2 or the h2c preface.
    h2: h2::Settings,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    send_timeout: Duration,
    /// The PROXY protocol header's rules; `None` when `server.proxy_protocol` is off.
    proxy_protocol: Option<ProxyProtocol>,
    /// Flips to `true` when the process starts draining.
    pub shutdown: watch::Receiver<bool>,
    /// The ACME challenges answered on the TLS listener (TLS-ALPN-01); `None` when `[acme]`
    /// is off.
    acme: Option<Arc<Challenges>>,
    /// Never sent on: the drain waits until every holder of this `ConnShared` (each
    /// connection task holds one) has dropped it.
    _tracker: mpsc::Sender<()>,
}

impl ConnShared {
    /// Connection settings from `[server]`; `capture` and `sinks` record what the protocol
    /// layer refuses before `proxy` sees it; `proxy_protocol` reads the PROXY protocol header
    /// (`None`: off).
    pub fn new(
        cfg: &config::Server,
        proxy_protocol: Option<ProxyProtocol>,
        proxy: Arc<Proxy>,
        capture: Arc<Capture>,
        sinks: Arc<Sinks>,
        shutdown: watch::Receiver<bool>,
        tracker: mpsc::Sender<()>,
    ) -> ConnShared {
        // The protocol layers refuse only heads far over `max_header_bytes`; the proxy's request
        // filter refuses the rest itself, with a record, the same way over both protocols.
        let head_cap = protocol_head_cap(cfg.max_header_bytes);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout.0)
            .max_buf_size(head_cap)
            .max_headers(cfg.max_header_fields)
            .keep_alive(true);
        let h1_only = auto.http1_only();
        ConnShared {
            proxy,
            capture,
            sinks,
            h1_only,
            h2: h2::settings(u32::try_from(head_cap).unwrap_or(u32::MAX)),
            header_read_timeout: cfg.header_read_timeout.0,
            idle_timeout: cfg.idle_timeout.0,
            send_timeout: cfg.send_timeout.0,
            proxy_protocol,
            shutdown,
            acme: None,
            _tracker: tracker,
        }
    }

    /// Answers TLS-ALPN-01 challenges (ALPN `acme-tls/1`) from `challenges` on the TLS
    /// listener.
    pub fn with_acme(mut self, challenges: Option<Arc<Challenges>>) -> ConnShared {
        self.acme = challenges;
        self
    }
}

/// How large a head the HTTP/1.1 parser and the HTTP/2 decoder accept before refusing it
/// themselves (the hard cap): four times `server.max_header_bytes`, at least 64 KiB. Heads
/// between the configured limit and this cap reach the request filter, which answers 431 with
/// a full record; heads over it are refused by the protocol layer. HTTP/1.1: 431 and a record
/// with what is known (`record_unread_head`), the connection closed. HTTP/2 (`h2` 0.4, the
/// cap is SETTINGS_MAX_HEADER_LIST_SIZE): a decoded list from the cap to four times it gets
/// 431 from `h2` with no record, the connection kept; over four times the cap, or a block in
/// more CONTINUATION frames than the cap needs plus a quarter (at least 5 non-final), ends the
/// connection (GOAWAY ENHANCE_YOUR_CALM: a flood defence).
pub fn protocol_head_cap(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(4).max(64 * 1024)
}

/// Completes the TLS handshake and serves the connection; the handshake and the first request
/// head must both be done within `header_read_timeout` of now.
pub async fn serve_tls(
    mut tcp: TcpStream,
    peer: ClientAddr,
    acceptor: TlsAcceptor,
    shared: Arc<ConnShared>,
) {
    let first_head_by = Instant::now() + shared.header_read_timeout;
    let metrics = &shared.sinks.metrics;
    let _open = OpenConnection::new(metrics);
    let Some((peer, forwarded)) =
        proxy_header(&mut tcp, "server.listen", peer, first_head_by, &shared).await
    else {
        return;
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(first_head_by, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if is_plain_http_start(first[0]) => {
            refuse_plain_http(tcp, peer, first_head_by, &shared).await;
            return;
        }
        Err(_) => {
            metrics.tls_handshake_error();
            tracing::debug!("TLS handshake timed out");
            return;
        }
        // Closed (or reset) before its first byte: no handshake was tried (a balancer's
        // connect-only health check, or its PROXY protocol `LOCAL` check), so none failed.
        Ok(Ok(0) | Err(_)) => {
            tracing::debug!("connection closed before its first byte");
            return;
        }
        // A TLS record, or something else (rustls refuses it).
        _ => {}
    }
    let handshake = tokio::time::timeout_at(
        first_head_by,
        handshake(tcp, &acceptor, shared.acme.as_deref()),
    );
    let stream = match handshake.await {
        Ok(Ok(Some(stream))) => stream,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            metrics.tls_handshake_error();
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.tls_handshake_error();
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let session = stream.get_ref().1;
    let alpn = session.alpn_protocol();
    let tls13 = session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    metrics.tls_handshake(tls13, alpn, resumed);
    // Over TLS, HTTP/2 is spoken only after ALPN h2 (RFC 9113 §3.2): anything else is
    // HTTP/1.1, with no need to sniff for a preface.
    if alpn == Some(b"h2") {
        serve_h2(stream, peer, true, forwarded, first_head_by, &shared).await;
    } else {
        serve_http(stream, peer, true, forwarded, first_head_by, &shared).await;
    }
}

/// The TLS handshake: the connection to serve HTTP on, or `None` when it was a TLS-ALPN-01
/// challenge, answered and closed. With `[acme]` on, the ClientHello is read first, and one
/// offering ALPN `acme-tls/1` gets the challenge's certificate ([`answer_tls_alpn01`]).
async fn handshake(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    acme: Option<&Challenges>,
) -> io::Result<Option<tokio_rustls::server::TlsStream<TcpStream>>> {
    let Some(challenges) = acme else {
        return acceptor.accept(tcp).await.map(Some);
    };
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let hello = start.client_hello();
    if hello
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
    {
        let name = hello.server_name().map(str::to_owned);
        answer_tls_alpn01(start, name, challenges).await;
        return Ok(None);
    }
    start.into_stream(acceptor.config().clone()).await.map(Some)
}

/// Completes a TLS-ALPN-01 handshake with the pending challenge certificate for `name`
/// (RFC 8737 §3), then closes with close_notify. Without a pending challenge the connection is
/// closed at once. Nothing is recorded or counted: it is the CA, not a visitor.
async fn answer_tls_alpn01(
    start: tokio_rustls::StartHandshake<TcpStream>,
    name: Option<String>,
    challenges: &Challenges,
) {
    use tokio::io::AsyncWriteExt;
    let Some(name) = name else {
        tracing::debug!("acme-tls/1 handshake without a server name: closed");
        return;
    };
    let Some(certified) = challenges.tls_alpn01(&name).await else {
        tracing::debug!("acme-tls/1 handshake without a pending challenge: closed");
        return;
    };
    let config = Arc::new(super::tls::challenge_config(certified));
    match start.into_stream(config).await {
        Ok(mut stream) => {
            let _ = stream.shutdown().await;
            // The name is one with a challenge pending: ours, from the config.
            tracing::debug!(domain = %name, "answered a TLS-ALPN-01 challenge");
        }
        Err(e) => tracing::debug!(error = %e, "TLS-ALPN-01 handshake failed"),
    }
}

/// The connection's peer after its PROXY protocol header, when `server.proxy_protocol` is on
/// ([`super::proxy_protocol`]); `None` when the connection is to be closed (a rejection is
/// counted and logged by its reason, nothing from the wire).
/// `listener` is the config key of the listener: `server.listen` or `server.listen_plain`.
async fn proxy_header(
    tcp: &mut TcpStream,
    listener: &'static str,
    peer: ClientAddr,
    by: Instant,
    shared: &ConnShared,
) -> Option<(ClientAddr, bool)> {
    let Some(rules) = &shared.proxy_protocol else {
        return Some((peer, true));
    };
    match rules.accept(tcp, peer, by).await {
        Accepted::Peer(peer) => Some((peer, true)),
        Accepted::Unnamed(peer) => Some((peer, false)),
        Accepted::Rejected(reason) => {
            shared.sinks.metrics.proxy_protocol_rejected(reason);
            if rules.should_warn(reason) {
                tracing::warn!(
                    reason = reason.as_str(),
                    listener,
                    allowed = rules.allowed(),
                    "PROXY protocol header refused: connection closed (logged once a minute \
                     at most per reason; every one counted in proxy_protocol_rejected_total)"
                );
            } else {
                tracing::debug!(
                    reason = reason.as_str(),
                    listener,
                    "PROXY protocol header refused: connection closed"
                );
            }
            None
        }
        Accepted::Gone => {
            tracing::debug!("connection closed before its PROXY protocol header");
            None
        }
    }
}

/// Whether the first byte a client sent on the TLS port starts a plain HTTP request: an
/// upper-case letter, as every registered method begins (RFC 9110 §9; `PRI` of the HTTP/2
/// preface too). A TLS connection starts with a handshake record, content type 22 (0x16,
/// RFC 8446 §5.1), never a letter.
pub fn is_plain_http_start(first: u8) -> bool {
    first.is_ascii_uppercase()
}

/// The whole answer to plain HTTP on the TLS port (nginx's words): 400, then the connection
/// closes. The unit test checks its `content-length`.
const PLAIN_HTTP_ANSWER: &str = concat!(
    "HTTP/1.1 400 Bad Request\r\n",
    "content-type: text/plain; charset=utf-8\r\n",
    "content-length: 65\r\n",
    "connection: close\r\n",
    "\r\n",
    "400 Bad Request: a plain HTTP request was sent to the HTTPS port\n",
);

/// At most this much of what a plain HTTP client sent is read and thrown away after the answer,
/// so that closing does not reset the connection under the answer.
const PLAIN_HTTP_LINGER_BYTES: usize = 64 * 1024;
/// And for at most this long.
const PLAIN_HTTP_LINGER: Duration = Duration::from_secs(1);

/// Answers a client speaking plain HTTP on the TLS port with a fixed 400 in plain HTTP (as
/// nginx does) and closes; the request is recorded and counted as an HTTP/1.1 400 with what is
/// known before any field is read ([`Capture::begin_unread`]: the peer, no method or path).
/// Nothing the client sent is parsed or kept: it is read and thrown away after the answer
/// (a lingering close, bounded in bytes and time, within `first_head_by`), so the client reads
/// the answer rather than a reset.
///
/// [`Capture::begin_unread`]: crate::privacy::capture::Capture::begin_unread
async fn refuse_plain_http(
    mut tcp: TcpStream,
    peer: ClientAddr,
    first_head_by: Instant,
    shared: &ConnShared,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let memo = ClientMemo::default();
    let pending = shared.capture.begin_unread(peer, HttpProto::Http1, &memo);
    let answer = PLAIN_HTTP_ANSWER.as_bytes();
    let sent = tokio::time::timeout_at(first_head_by, async {
        tcp.write_all(answer).await?;
        tcp.shutdown().await
    })
    .await;
    let bytes_sent = match sent {
        Ok(Ok(())) => answer.len() as u64,
        _ => 0,
    };
    shared.sinks.observe(pending.finish(400, bytes_sent, false));
    tracing::debug!("plain HTTP on the TLS port: answered 400");
    if bytes_sent == 0 {
        return;
    }
    let until = first_head_by.min(Instant::now() + PLAIN_HTTP_LINGER);
    let mut scratch = vec![0u8; 4096];
    let _ = tokio::time::timeout_at(until, async {
        let mut read = 0;
        while read < PLAIN_HTTP_LINGER_BYTES {
            match tcp.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// Serves a cleartext connection: h2c when it opens with the HTTP/2 preface (prior knowledge,
/// RFC 9113 §3.3), HTTP/1.1 otherwise. The first request head is due within
/// `header_read_timeout` of now, the preface included.
pub async fn serve_plain(mut tcp: TcpStream, peer: ClientAddr, shared: Arc<ConnShared>) {
    let first_head_by = Instant::now() + shared.header_read_timeout;
    let _open = OpenConnection::new(&shared.sinks.metrics);
    let Some((peer, forwarded)) = proxy_header(
        &mut tcp,
        "server.listen_plain",
        peer,
        first_head_by,
        &shared,
    )
    .await
    else {
        return;
    };
    let sniffed = tokio::time::timeout_at(first_head_by, h2::sniff_preface(tcp)).await;
    match sniffed {
        Ok(Ok((true, io))) => serve_h2(io, peer, false, forwarded, first_head_by, &shared).await,
        Ok(Ok((false, io))) => serve_http(io, peer, false, forwarded, first_head_by, &shared).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "reading the connection preface failed"),
        Err(_) => tracing::debug!("connection preface timed out"),
    }
}

async fn serve_h2<T>(
    io: T,
    peer: ClientAddr,
    tls: bool,
    forwarded: bool,
    first_head_by: Instant,
    shared: &Arc<ConnShared>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = WatchedIo::new(io, activity.clone(), shared.send_timeout);
    let info = ConnInfo::new(peer, tls, forwarded);
    let conn = h2::Connection::new(
        io,
        &shared.h2,
        shared.proxy.clone(),
        info,
        shared.send_timeout,
    );
    let deadlines = Deadlines {
        first_head_by,
        requested: &|conn: &h2::Connection<_>| conn.has_accepted_stream(),
        busy: &|conn: &h2::Connection<_>| conn.has_answering_streams(),
    };
    // HTTP/2 refuses malformed requests per stream (RFC 9113 §8.1.1); a connection error has
    // no request to record.
    let _ = drive(
        conn,
        h2::Connection::graceful_shutdown,
        deadlines,
        &activity,
        shared,
    )
    .await;
}

async fn serve_http<T>(
    io: T,
    peer: ClientAddr,
    tls: bool,
    forwarded: bool,
    first_head_by: Instant,
    shared: &Arc<ConnShared>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(WatchedIo::new(io, activity.clone(), shared.send_timeout));
    let info = Arc::new(ConnInfo::new(peer, tls, forwarded));
    let conn_info = info.clone();
    let proxy = shared.proxy.clone();
    let seen = activity.clone();
    let service = service_fn(move |req| {
        // A head has been read: the first-request deadline is met.
        seen.requested.store(true, Ordering::Relaxed);
        let answering = Answering::new(seen.clone());
        let proxy = proxy.clone();
        let info = info.clone();
        // Boxed once here: hyper moves the service future about, and a pointer moves cheaper
        // than the whole request state.
        Box::pin(async move {
            let _answering = answering;
            Ok::<_, Infallible>(proxy.handle(req.map(ClientBody::H1), &info).await)
        })
    });
    let conn = shared.h1_only.serve_connection_with_upgrades(io, service);
    let deadlines = Deadlines {
        first_head_by,
        requested: &|_: &_| activity.requested.load(Ordering::Relaxed),
        busy: &|_: &_| activity.answering.load(Ordering::Relaxed) > 0,
    };
    let ended = drive(
        conn,
        |conn| conn.graceful_shutdown(),
        deadlines,
        &activity,
        shared,
    )
    .await;
    if let Err(e) = ended {
        record_unread_head(&*e, shared, &conn_info);
    }
}

/// What a connection's I/O and its protocol tell [`drive`].
#[derive(Default)]
struct Activity {
    /// A byte moved either way since the idle check last looked.
    moved: AtomicBool,
    /// A request head has been read (HTTP/1.1; HTTP/2 asks its connection).
    requested: AtomicBool,
    /// Requests waiting for their answer (HTTP/1.1).
    answering: AtomicUsize,
}

/// Counts an HTTP/1.1 request in [`Activity::answering`] until its answer (the response head)
/// is ready: while the upstream takes its time, a graceful close waits for it (up to
/// `shutdown_grace` in a drain) though no byte moves. The response body is then the I/O's.
struct Answering(Arc<Activity>);

impl Answering {
    fn new(activity: Arc<Activity>) -> Answering {
        activity.answering.fetch_add(1, Ordering::Relaxed);
        Answering(activity)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The deadline of a connection's first request head.
struct Deadlines<'a, C> {
    /// When the first request head must have been read (accept + `header_read_timeout`).
    first_head_by: Instant,
    /// Whether a request head has been read.
    requested: &'a (dyn Fn(&C) -> bool + Sync),
    /// Whether a request is waiting for the proxy (its upstream): a graceful close does not
    /// cut it for moving no byte.
    busy: &'a (dyn Fn(&C) -> bool + Sync),
}

/// Where a connection is in its life, for its one deadline timer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request head yet: closed at `first_head_by`.
    FirstHead,
    /// Serving: no deadline here (the idle check and the I/O's send deadline apply).
    Serving,
    /// A graceful close has started: closed hard once no byte has moved for `send_timeout`
    /// (checked every `send_timeout`), or at `first_head_by` if it started before the first
    /// head.
    Closing {
        /// Bytes moving push the deadline back (not before the first head).
        extends: bool,
    },
}

/// Runs a connection to its end, closing it gracefully when the process drains or when no byte
/// has moved either way for `idle_timeout`, and hard when its first request head is not in by
/// `first_head_by` or a graceful close has moved no byte for `send_timeout` with no request
/// waiting for its upstream (so a client that never answers a GOAWAY's PING, or never closes its
/// end, is let go after one to two `send_timeout`s, while a response still making progress, or
/// still being prepared upstream, during a drain may go on until `shutdown_grace`). Returns how
/// the connection ended (a hard close is `Ok`).
async fn drive<C, E>(
    conn: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    deadlines: Deadlines<'_, C>,
    activity: &Activity,
    shared: &ConnShared,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    tokio::pin!(conn);

    let mut shutdown = shared.shutdown.clone();
    // The idle check runs four times per idle period: a connection closes after one to
    // one-and-a-quarter periods without a byte moving either way.
    let mut tick = tokio::time::interval(shared.idle_timeout / 4);
    tick.tick().await;
    let mut quiet_ticks = 0u32;
    // One timer for the connection's deadlines, one at a time: the first request head's, then
    // (after a pause while serving) the graceful close's.
    let deadline = tokio::time::sleep_until(deadlines.first_head_by);
    tokio::pin!(deadline);
    let mut phase = Phase::FirstHead;
    let close_gracefully = |conn: Pin<&mut C>, deadline: Pin<&mut Sleep>, phase: &mut Phase| {
        let before_first_head = *phase == Phase::FirstHead && !(deadlines.requested)(&conn);
        graceful_shutdown(conn);
        // Only what moves from now on shows the close making progress.
        activity.moved.store(false, Ordering::Relaxed);
        let by = Instant::now() + shared.send_timeout;
        // A graceful close before the first head keeps the earlier deadline.
        if !before_first_head || by < deadline.deadline() {
            deadline.reset(by);
        }
        *phase = Phase::Closing {
            extends: !before_first_head,
        };
    };
    let closing = |phase: Phase| matches!(phase, Phase::Closing { .. });
    if *shutdown.borrow() {
        close_gracefully(conn.as_mut(), deadline.as_mut(), &mut phase);
    }
    loop {
        tokio::select! {
            // The connection first: it is what wakes this task nearly every time, and a fixed
            // order spares the random draw `select!` makes otherwise.
            biased;
            res = conn.as_mut() => {
                if let Err(e) = &res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return res;
            }
            _ = shutdown.changed(), if !closing(phase) => {
                close_gracefully(conn.as_mut(), deadline.as_mut(), &mut phase);
            }
            _ = tick.tick(), if !closing(phase) => {
                if activity.moved.swap(false, Ordering::Relaxed) {
                    quiet_ticks = 0;
                } else {
                    quiet_ticks += 1;
                    if quiet_ticks >= 4 {
                        close_gracefully(conn.as_mut(), deadline.as_mut(), &mut phase);
                    }
                }
            }
            () = deadline.as_mut(), if phase != Phase::Serving => {
                if phase == Phase::FirstHead && (deadlines.requested)(&conn) {
                    phase = Phase::Serving;
                    continue;
                }
                if phase == (Phase::Closing { extends: true })
                    && (activity.moved.swap(false, Ordering::Relaxed) || (deadlines.busy)(&conn))
                {
                    deadline.as_mut().reset(Instant::now() + shared.send_timeout);
                    continue;
                }
                // Dropping the connection closes it, and drops every response body it was
                // sending with the upstream connection behind it.
                tracing::debug!(
                    first_head = phase == Phase::FirstHead,
                    "connection deadline passed: closing"
                );
                return Ok(());
            }
        }
    }
}

/// The logging phase for a request the HTTP/1.1 parser refused before any handler saw it
/// (a head over [`protocol_head_cap`] or with more field lines than `server.max_header_fields`,
/// conflicting `Content-Length`, a malformed request line or field): the parser has answered 431 or 400 and closed; this writes the one record and
/// counts the request, with what is known ([`Capture::begin_unread`]: the connection's peer,
/// not a forwarded client address, since no field was read).
///
/// [`Capture::begin_unread`]: crate::privacy::capture::Capture::begin_unread
fn record_unread_head(e: &(dyn std::error::Error + 'static), shared: &ConnShared, info: &ConnInfo) {
    let Some(e) = e.downcast_ref::<hyper::Error>() else {
        return;
    };
    // The statuses hyper answers parse errors with; the rest it answers with nothing.
    let status = if e.is_parse_too_large() {
        // hyper's kinds are private; its message is the only way to tell the two apart.
        if e.to_string().contains("URI too long") {
            414
        } else {
            431
        }
    } else if e.is_parse() && !e.is_parse_status() && !e.is_parse_version_h2() {
        400
    } else {
        return;
    };
    let pending = shared
        .capture
        .begin_unread(info.peer, HttpProto::Http1, &info.memo);
    shared.sinks.observe(pending.finish(status, 0, false));
}

/// Counts an open connection in `connections_open` for as long as it lives.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(metrics: &Metrics) -> OpenConnection {
        metrics.connections_open.inc();
        OpenConnection(metrics.connections_open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pin_project_lite::pin_project! {
    /// The client connection's I/O: notes whether any byte moved (the idle check) and fails a
    /// write that makes no progress for `send_timeout` with [`io::ErrorKind::TimedOut`], which
    /// ends the connection (HTTP/1.1: the response is cut short; HTTP/2: every stream with it).
    ///
    /// One timer per connection, made the first time a write waits (a client that keeps up
    /// never has one) and reset when a write starts waiting after progress, never per byte or
    /// per frame.
    struct WatchedIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        stall: Option<Pin<Box<Sleep>>>,
        // `stall` runs: the last write, flush or shutdown did not complete.
        stalled: bool,
        send_timeout: Duration,
    }
}

impl<T> WatchedIo<T> {
    fn new(inner: T, activity: Arc<Activity>, send_timeout: Duration) -> Self {
        WatchedIo {
            inner,
            activity,
            stall: None,
            stalled: false,
            send_timeout,
        }
    }
}

/// What a write (or flush, or shutdown) result means for the send deadline: progress disarms
/// it, waiting arms it (once per stall), and waiting past it is an error.
fn watch_write<R>(
    res: Poll<io::Result<R>>,
    progressed: impl Fn(&R) -> bool,
    stall: &mut Option<Pin<Box<Sleep>>>,
    stalled: &mut bool,
    send_timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<R>> {
    match res {
        Poll::Pending => {
            let stall = match stall {
                Some(stall) if *stalled => stall,
                Some(stall) => {
                    stall.as_mut().reset(Instant::now() + send_timeout);
                    stall
                }
                None => stall.insert(Box::pin(tokio::time::sleep(send_timeout))),
            };
            *stalled = true;
            match stall.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no progress writing to the client for server.send_timeout",
                ))),
                Poll::Pending => Poll::Pending,
            }
        }
        Poll::Ready(Ok(r)) => {
            if progressed(&r) {
                *stalled = false;
            }
            Poll::Ready(Ok(r))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
    }
}

impl<T: AsyncRead> AsyncRead for WatchedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if buf.filled().len() != before {
            this.activity.moved.store(true, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite> WatchedIo<T> {
    /// One write by `write` on the inner stream: activity when it moved a byte, and timed by
    /// the send deadline ([`watch_write`]) when it did not.
    fn watched_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = write(this.inner, cx);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.moved.store(true, Ordering::Relaxed);
        }
        watch_write(
            res,
            |&n| n > 0,
            this.stall,
            this.stalled,
            *this.send_timeout,
            cx,
        )
    }
}

impl<T: AsyncWrite> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.watched_write(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.watched_write(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let res = this.inner.poll_flush(cx);
        watch_write(
            res,
            |_| true,
            this.stall,
            this.stalled,
            *this.send_timeout,
            cx,
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let res = this.inner.poll_shutdown(cx);
        watch_write(
            res,
            |_| true,
            this.stall,
            this.stalled,
            *this.send_timeout,
            cx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_declares_its_body_length() {
        let (head, body) = PLAIN_HTTP_ANSWER.split_once("\r\n\r\n").unwrap();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), body.len());
        assert!(head.starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn only_a_letter_opens_a_plain_http_request() {
        // One row per first byte: TLS records of each content type, SSLv2's hello, letters.
        let rows: [(u8, bool); 10] = [
            (0x16, false), // handshake: a ClientHello
            (0x15, false), // alert
            (0x17, false), // application data
            (0x80, false), // SSLv2-compatible ClientHello
            (0x00, false),
            (b'G', true),  // GET
            (b'P', true),  // POST, PUT, PATCH, PRI (the HTTP/2 preface)
            (b'O', true),  // OPTIONS
            (b'g', false), // methods are case-sensitive: no client sends "get"
            (b'\r', false),
        ];
        for (byte, plain) in rows {
            assert_eq!(is_plain_http_start(byte), plain, "{byte:#04x}");
        }
    }
}
