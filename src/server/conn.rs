//! Serving one accepted connection: TLS handshake, HTTP/1.1 (hyper) or HTTP/2 ([`super::h2`]),
//! idle timeout, drain.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::h2;
use crate::client_ip::ClientAddr;
use crate::config;
use crate::metrics::Metrics;
use crate::privacy::observation::HttpProto;
use crate::proxy::body::ClientBody;
use crate::proxy::{ConnInfo, Proxy};

/// The per-process state every connection task shares.
pub struct ConnShared {
    /// The forwarding core.
    pub proxy: Arc<Proxy>,
    /// HTTP/1.1.
    h1_only: auto::Builder<TokioExecutor>,
    /// HTTP/2, after ALPN h2 or the h2c preface.
    h2: h2::Settings,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    /// Flips to `true` when the process starts draining.
    pub shutdown: watch::Receiver<bool>,
    /// Never sent on: the drain waits until every holder of this `ConnShared` (each
    /// connection task holds one) has dropped it.
    _tracker: mpsc::Sender<()>,
}

impl ConnShared {
    /// Connection settings from `[server]`.
    pub fn new(
        cfg: &config::Server,
        proxy: Arc<Proxy>,
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
            h1_only,
            h2: h2::settings(u32::try_from(head_cap).unwrap_or(u32::MAX)),
            handshake_timeout: cfg.header_read_timeout.0,
            idle_timeout: cfg.idle_timeout.0,
            shutdown,
            _tracker: tracker,
        }
    }
}

/// How large a head the HTTP/1.1 parser and the HTTP/2 decoder accept before refusing it
/// themselves (the hard cap): four times `server.max_header_bytes`, at least 64 KiB. Heads
/// between the configured limit and this cap reach the request filter, which answers 431 with
/// a full record; heads over it are refused by the protocol layer. HTTP/1.1: 431 and a record
/// with what is known ([`record_unread_head`]), the connection closed. HTTP/2 (`h2` 0.4, the
/// cap is SETTINGS_MAX_HEADER_LIST_SIZE): a decoded list from the cap to four times it gets
/// 431 from `h2` with no record, the connection kept; over four times the cap, or a block in
/// more CONTINUATION frames than the cap needs plus a quarter (at least 5 non-final), ends the
/// connection (GOAWAY ENHANCE_YOUR_CALM: a flood defence).
pub fn protocol_head_cap(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(4).max(64 * 1024)
}

/// Completes the TLS handshake (bounded by `header_read_timeout`) and serves the connection.
pub async fn serve_tls(
    tcp: TcpStream,
    peer: ClientAddr,
    acceptor: TlsAcceptor,
    shared: Arc<ConnShared>,
) {
    let metrics = &shared.proxy.sinks.metrics;
    let _open = OpenConnection::new(metrics);
    let stream = match tokio::time::timeout(shared.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
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
    metrics.tls_handshake(tls13, alpn);
    // Over TLS, HTTP/2 is spoken only after ALPN h2 (RFC 9113 §3.2): anything else is
    // HTTP/1.1, with no need to sniff for a preface.
    if alpn == Some(b"h2") {
        serve_h2(stream, peer, true, &shared).await;
    } else {
        serve_http(stream, peer, true, &shared.h1_only, &shared).await;
    }
}

/// Serves a cleartext connection: h2c when it opens with the HTTP/2 preface (prior knowledge,
/// RFC 9113 §3.3), HTTP/1.1 otherwise.
pub async fn serve_plain(tcp: TcpStream, peer: ClientAddr, shared: Arc<ConnShared>) {
    let _open = OpenConnection::new(&shared.proxy.sinks.metrics);
    let sniffed = tokio::time::timeout(shared.handshake_timeout, h2::sniff_preface(tcp)).await;
    match sniffed {
        Ok(Ok((true, io))) => serve_h2(io, peer, false, &shared).await,
        Ok(Ok((false, io))) => serve_http(io, peer, false, &shared.h1_only, &shared).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "reading the connection preface failed"),
        Err(_) => tracing::debug!("connection preface timed out"),
    }
}

async fn serve_h2<T>(io: T, peer: ClientAddr, tls: bool, shared: &Arc<ConnShared>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(AtomicBool::new(false));
    let io = IdleIo {
        inner: io,
        activity: activity.clone(),
    };
    let info = ConnInfo::new(peer, tls);
    let conn = h2::Connection::new(io, &shared.h2, shared.proxy.clone(), info);
    // HTTP/2 refuses malformed requests per stream (RFC 9113 §8.1.1); a connection error has
    // no request to record.
    let _ = drive(conn, h2::Connection::graceful_shutdown, &activity, shared).await;
}

async fn serve_http<T>(
    io: T,
    peer: ClientAddr,
    tls: bool,
    builder: &auto::Builder<TokioExecutor>,
    shared: &Arc<ConnShared>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(IdleIo {
        inner: io,
        activity: activity.clone(),
    });
    let info = Arc::new(ConnInfo::new(peer, tls));
    let conn_info = info.clone();
    let proxy = shared.proxy.clone();
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let info = info.clone();
        // Boxed once here: hyper moves the service future about, and a pointer moves cheaper
        // than the whole request state.
        Box::pin(
            async move { Ok::<_, Infallible>(proxy.handle(req.map(ClientBody::H1), &info).await) },
        )
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    if let Err(e) = drive(conn, |conn| conn.graceful_shutdown(), &activity, shared).await {
        record_unread_head(&*e, &shared.proxy, &conn_info);
    }
}

/// Runs a connection to its end, closing it gracefully when the process drains or when no byte
/// has moved either way for `idle_timeout`. Returns how the connection ended.
async fn drive<C, E>(
    conn: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: &AtomicBool,
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
    let mut draining = *shutdown.borrow();
    if draining {
        graceful_shutdown(conn.as_mut());
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
            _ = shutdown.changed(), if !draining => {
                draining = true;
                graceful_shutdown(conn.as_mut());
            }
            _ = tick.tick(), if !draining => {
                if activity.swap(false, Ordering::Relaxed) {
                    quiet_ticks = 0;
                } else {
                    quiet_ticks += 1;
                    if quiet_ticks >= 4 {
                        draining = true;
                        graceful_shutdown(conn.as_mut());
                    }
                }
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
fn record_unread_head(e: &(dyn std::error::Error + 'static), proxy: &Proxy, info: &ConnInfo) {
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
    let pending = proxy
        .capture
        .begin_unread(info.peer, HttpProto::Http1, &info.memo);
    proxy.sinks.observe(pending.finish(status, 0, false));
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
    /// A stream that notes whether any byte moved, for the idle timeout.
    struct IdleIo<T> {
        #[pin]
        inner: T,
        activity: Arc<AtomicBool>,
    }
}

impl<T: AsyncRead> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if buf.filled().len() != before {
            this.activity.store(true, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.store(true, Ordering::Relaxed);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.store(true, Ordering::Relaxed);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
