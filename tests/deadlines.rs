//! Issue 12 §2, deadlines that hold as documented. Each kind is a table test over the protocols
//! where it applies, played by raw or `h2`-crate clients against the real proxy binary:
//!
//! 1. a new connection gets `server.header_read_timeout` for everything up to its first request
//!    head: TCP silence, a stalled TLS handshake, the protocol choice (ALPN, the h2c preface) and
//!    the HTTP/2 preface and SETTINGS. Before, a client that finished TLS with ALPN h2 (or sent
//!    the h2c preface) and then nothing was held until `idle_timeout`.
//! 2. `server.send_timeout`: no progress writing to the client for that long resets the HTTP/2
//!    stream (CANCEL) or closes the HTTP/1.1 connection, and the upstream connection is let go.
//!    Before, a zero-window client held its stream and its upstream connection until it left.
//! 3. every graceful close (idle, SIGTERM drain) ends within `server.send_timeout`. Before, a
//!    client that never answered the GOAWAY's PING was held until it left.
//! 4. HTTP/2 rapid reset with a delay: a budget of client-reset streams per connection, then
//!    GOAWAY with ENHANCE_YOUR_CALM; a client cancelling now and then keeps its connection.
//!
//! Timings are asserted as "closed before N times the deadline", never exactly.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `server.header_read_timeout` in the tests of kind 1.
const HEAD_DEADLINE: Duration = Duration::from_millis(300);
/// `server.send_timeout` in the tests of kinds 2 and 3.
const SEND_DEADLINE: Duration = Duration::from_millis(500);
/// A response no socket buffer holds.
const BIG: u64 = 100 << 20;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type Stream = Box<dyn AsyncReadWrite>;
trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// A TLS connection to the proxy offering `alpn`.
async fn tls(proxy: &Proxy, alpn: Option<&[u8]>) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(proxy.tls_addr).await.unwrap();
    tokio_rustls::TlsConnector::from(tls_client_config(&proxy.path("cert.pem"), alpn))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// A TLS connection (ALPN http/1.1) with a small receive buffer: what the client has not read
/// holds back what the proxy can write, so a write waits only while the client reads nothing
/// (with loopback's large buffers, megabytes would sit in between and hide both a cut and a
/// steady reader).
async fn tls_h1_small_buffer(proxy: &Proxy) -> tokio_rustls::client::TlsStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    let tcp = socket.connect(proxy.tls_addr).await.unwrap();
    tokio_rustls::TlsConnector::from(tls_client_config(
        &proxy.path("cert.pem"),
        Some(b"http/1.1"),
    ))
    .connect(ServerName::try_from("localhost").unwrap(), tcp)
    .await
    .unwrap()
}

/// Reads (and throws away) everything until the proxy closes the connection; returns how long
/// that took, or `None` if it was still open after `limit`.
async fn held_for(mut io: Stream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = vec![0u8; 64 * 1024];
    let read_to_end = async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end)
        .await
        .ok()
        .map(|()| since.elapsed())
}

/// The client preface, SETTINGS with `settings` (id, value), and a connection WINDOW_UPDATE of
/// `window_increment` when not 0.
fn h2_opening(settings: &[(u16, u32)], window_increment: u32) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    let mut payload = Vec::new();
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    out.extend(frame(0x4, 0, 0, &payload));
    if window_increment > 0 {
        out.extend(frame(0x8, 0, 0, &window_increment.to_be_bytes()));
    }
    out
}

/// HEADERS (END_STREAM | END_HEADERS) of `GET https://localhost{path}` on `stream`, HPACK
/// without indexing or Huffman.
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    block.push(0x04); // :path, literal without indexing, name index 4
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.push(0x01); // :authority, name index 1
    block.push(9);
    block.extend_from_slice(b"localhost");
    frame(0x1, 0x5, stream, &block)
}

/// The sum of every sample of the metric family `name`.
async fn metric(proxy: &Proxy, name: &str) -> f64 {
    let (_, text) = proxy.admin_get("/metrics").await;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn connections_back_to_zero(proxy: &Proxy, what: &str) {
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || (metric(proxy, "webprom_edge_connections_open").await == 0.0).then_some(()),
        || format!("{what}: connections_open did not return to 0"),
    )
    .await;
}

async fn deadline_proxy(upstream: &str, edit: impl FnOnce(String) -> String) -> Proxy {
    Proxy::start_with(
        |c| {
            let c = set(&c, "server", "listen_plain", "\"127.0.0.1:0\"");
            edit(c)
        },
        upstream,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. Everything before the first request head is under header_read_timeout.

/// How a client opens a connection and then stops.
#[derive(Debug, Clone, Copy)]
enum Opening {
    /// TCP connect to the TLS listener, then nothing.
    TcpSilence,
    /// Half of a ClientHello.
    HalfClientHello,
    /// A complete TLS handshake offering these ALPN protocols, then nothing.
    TlsThenSilence(Option<&'static [u8]>),
    /// TLS with ALPN h2, then the first 10 bytes of the HTTP/2 preface.
    TlsH2PartialPreface,
    /// TLS with ALPN h2, then the preface without the SETTINGS frame that must follow it.
    TlsH2PrefaceNoSettings,
    /// TLS with ALPN h2, the preface and SETTINGS, then no request.
    TlsH2SettingsNoRequest,
    /// TLS with ALPN http/1.1, then half a request head.
    TlsH1PartialHead,
    /// TCP connect to the cleartext listener, then nothing.
    PlainSilence,
    /// The first 10 bytes of the h2c preface on the cleartext listener.
    PlainPartialPreface,
    /// The whole h2c preface, no SETTINGS.
    PlainPrefaceNoSettings,
}

async fn open(proxy: &Proxy, opening: Opening) -> Stream {
    let plain = proxy.plain_addr.expect("plain listener");
    match opening {
        Opening::TcpSilence => Box::new(TcpStream::connect(proxy.tls_addr).await.unwrap()),
        Opening::HalfClientHello => {
            let mut tcp = TcpStream::connect(proxy.tls_addr).await.unwrap();
            let mut client = rustls::ClientConnection::new(
                tls_client_config(&proxy.path("cert.pem"), Some(b"h2")),
                ServerName::try_from("localhost").unwrap(),
            )
            .unwrap();
            let mut hello = Vec::new();
            client.write_tls(&mut hello).unwrap();
            tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
            Box::new(tcp)
        }
        Opening::TlsThenSilence(alpn) => Box::new(tls(proxy, alpn).await),
        Opening::TlsH2PartialPreface => {
            let mut io = tls(proxy, Some(b"h2")).await;
            io.write_all(&PREFACE[..10]).await.unwrap();
            io.flush().await.unwrap();
            Box::new(io)
        }
        Opening::TlsH2PrefaceNoSettings => {
            let mut io = tls(proxy, Some(b"h2")).await;
            io.write_all(PREFACE).await.unwrap();
            io.flush().await.unwrap();
            Box::new(io)
        }
        Opening::TlsH2SettingsNoRequest => {
            let mut io = tls(proxy, Some(b"h2")).await;
            io.write_all(&h2_opening(&[], 0)).await.unwrap();
            io.flush().await.unwrap();
            Box::new(io)
        }
        Opening::TlsH1PartialHead => {
            let mut io = tls(proxy, Some(b"http/1.1")).await;
            io.write_all(b"GET / HTTP/1.1\r\nHost: loc").await.unwrap();
            io.flush().await.unwrap();
            Box::new(io)
        }
        Opening::PlainSilence => Box::new(TcpStream::connect(plain).await.unwrap()),
        Opening::PlainPartialPreface => {
            let mut tcp = TcpStream::connect(plain).await.unwrap();
            tcp.write_all(&PREFACE[..10]).await.unwrap();
            Box::new(tcp)
        }
        Opening::PlainPrefaceNoSettings => {
            let mut tcp = TcpStream::connect(plain).await.unwrap();
            tcp.write_all(PREFACE).await.unwrap();
            Box::new(tcp)
        }
    }
}

#[tokio::test]
async fn a_connection_that_sends_no_request_head_is_closed_at_the_header_read_timeout() {
    let upstream = Upstream::start().await;
    let proxy = deadline_proxy(&upstream.url(), |c| {
        let c = set(&c, "server", "header_read_timeout", "\"300ms\"");
        set(&c, "server", "idle_timeout", "\"30s\"")
    })
    .await;
    let rows = [
        Opening::TcpSilence,
        Opening::HalfClientHello,
        Opening::TlsThenSilence(Some(b"http/1.1")),
        Opening::TlsThenSilence(Some(b"h2")),
        Opening::TlsThenSilence(None),
        Opening::TlsH2PartialPreface,
        Opening::TlsH2PrefaceNoSettings,
        Opening::TlsH2SettingsNoRequest,
        Opening::TlsH1PartialHead,
        Opening::PlainSilence,
        Opening::PlainPartialPreface,
        Opening::PlainPrefaceNoSettings,
    ];
    // Ten times the deadline: room for a loaded machine, far below the idle timeout.
    let limit = HEAD_DEADLINE * 10;
    let mut held = Vec::new();
    for opening in rows {
        let since = Instant::now();
        let io = open(&proxy, opening).await;
        held.push((opening, tokio::spawn(held_for(io, since, limit))));
    }
    let mut failures = Vec::new();
    for (opening, task) in held {
        match task.await.unwrap() {
            Some(t) if t >= HEAD_DEADLINE / 2 => eprintln!("{opening:?}: closed after {t:?}"),
            Some(t) => failures.push(format!("{opening:?}: closed after {t:?}, too soon")),
            None => failures.push(format!("{opening:?}: still open after {limit:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    connections_back_to_zero(&proxy, "after every row").await;
}

// ---------------------------------------------------------------------------------------------
// An upstream that streams large bodies and counts its open connections.

/// Serves `/big?bytes=N` (N bytes in 64 KiB frames, Content-Length set), `/slow?ms=N` (20 bytes
/// after N ms) and anything else as 20 bytes; `open` counts the TCP connections not yet closed.
struct BigUpstream {
    addr: std::net::SocketAddr,
    open: Arc<AtomicUsize>,
    /// Responses of `/big` being sent (their body not yet ended or dropped).
    streaming: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BigUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `left` bytes of one repeated chunk; counted in `streaming` until dropped. With `stall`, one
/// byte more is promised and never comes: the body stalls forever after `left` bytes.
struct Repeat {
    chunk: Bytes,
    left: u64,
    stall: bool,
    streaming: Arc<AtomicUsize>,
}

impl Repeat {
    fn new(chunk: Bytes, left: u64, streaming: Arc<AtomicUsize>) -> Repeat {
        streaming.fetch_add(1, Ordering::SeqCst);
        Repeat {
            chunk,
            left,
            stall: false,
            streaming,
        }
    }
}

impl Drop for Repeat {
    fn drop(&mut self) {
        self.streaming.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return if self.stall {
                Poll::Pending
            } else {
                Poll::Ready(None)
            };
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left + u64::from(self.stall))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && !self.stall
    }
}

impl BigUpstream {
    async fn start() -> BigUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        let streaming = Arc::new(AtomicUsize::new(0));
        let sending = streaming.clone();
        let chunk = Bytes::from(pattern(64 * 1024));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let (open, chunk, sending) = (counted.clone(), chunk.clone(), sending.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (chunk, sending) = (chunk.clone(), sending.clone());
                        async move {
                            let query = |name: &str| -> Option<u64> {
                                req.uri().query()?.strip_prefix(name)?.parse().ok()
                            };
                            if let Some(ms) = query("ms=") {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let left = query("bytes=").unwrap_or(20);
                            let big = left > 1 << 20;
                            let counter = if big { sending } else { Arc::default() };
                            let mut body = Repeat::new(chunk, left, counter);
                            // `/stall`: the body stops mid-way and never ends.
                            body.stall = req.uri().path() == "/stall";
                            Ok::<_, Infallible>(Response::new(body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        BigUpstream {
            addr,
            open,
            streaming,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until no upstream connection is open; returns how long that took from `since`.
    async fn all_closed(&self, since: Instant, limit: Duration) -> Option<Duration> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.open.load(Ordering::SeqCst) == 0 {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

/// An `h2` crate client over TLS with these windows; the connection runs in a task.
async fn h2_client(
    proxy: &Proxy,
    stream_window: u32,
    connection_window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let io = tls(proxy, Some(b"h2")).await;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(stream_window)
        .initial_connection_window_size(connection_window)
        .handshake::<_, Bytes>(io)
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

fn h2_request(path: &str) -> Request<()> {
    Request::get(format!("https://localhost{path}"))
        .body(())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// 2. No progress writing to the client for send_timeout.

/// How a client stops taking a large response.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// HTTP/2, SETTINGS_INITIAL_WINDOW_SIZE = 0 and never a WINDOW_UPDATE.
    H2ZeroStreamWindow,
    /// HTTP/2, a large stream window, but the connection window (65,535) never given back.
    H2ConnectionWindowSpent,
    /// HTTP/2, large windows, then the client stops reading the socket.
    H2StopsReadingSocket,
    /// HTTP/1.1, stops reading the socket.
    H1StopsReadingSocket,
}

/// Starts the stall; returns what must be kept alive, and, for the `h2` crate rows, a task
/// ending with the reason the stream was reset (or `None` when the body ended or the wait timed
/// out).
async fn stall(
    proxy: &Proxy,
    row: Stall,
    path: &str,
) -> (
    Box<dyn std::any::Any + Send>,
    Option<tokio::task::JoinHandle<Option<h2::Reason>>>,
) {
    match row {
        Stall::H2ZeroStreamWindow | Stall::H2ConnectionWindowSpent => {
            let (stream_window, conn_window) = match row {
                Stall::H2ZeroStreamWindow => (0, 65_535),
                _ => (8 << 20, 65_535),
            };
            let (send, conn) = h2_client(proxy, stream_window, conn_window).await;
            let mut send = send.ready().await.unwrap();
            let (resp, _) = send.send_request(h2_request(path), true).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200, "{row:?}");
            let mut body = resp.into_body();
            // Data is taken from the stream but its window never given back.
            let reset = tokio::spawn(async move {
                let read = async {
                    loop {
                        match body.data().await {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return e.reason(),
                            None => return None,
                        }
                    }
                };
                tokio::time::timeout(Duration::from_secs(10), read)
                    .await
                    .ok()
                    .flatten()
            });
            (Box::new((send, conn)), Some(reset))
        }
        Stall::H2StopsReadingSocket => {
            let mut io = tls(proxy, Some(b"h2")).await;
            io.write_all(&h2_opening(&[(0x4, (1 << 31) - 1)], (1 << 31) - 1 - 65_535))
                .await
                .unwrap();
            io.write_all(&h2_get(1, path)).await.unwrap();
            io.flush().await.unwrap();
            (Box::new(io), None)
        }
        Stall::H1StopsReadingSocket => {
            let mut io = tls(proxy, Some(b"http/1.1")).await;
            io.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
                .await
                .unwrap();
            io.flush().await.unwrap();
            (Box::new(io), None)
        }
    }
}

#[tokio::test]
async fn a_client_that_takes_no_bytes_for_the_send_timeout_loses_its_response_and_its_upstream_connection()
 {
    let upstream = BigUpstream::start().await;
    let proxy = deadline_proxy(&upstream.url(), |c| {
        let c = set(&c, "server", "send_timeout", "\"500ms\"");
        set(&c, "server", "idle_timeout", "\"30s\"")
    })
    .await;
    let rows = [
        Stall::H2ZeroStreamWindow,
        Stall::H2ConnectionWindowSpent,
        Stall::H2StopsReadingSocket,
        Stall::H1StopsReadingSocket,
    ];
    let limit = SEND_DEADLINE * 10;
    let mut failures = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        let since = Instant::now();
        let (kept, reset) = stall(&proxy, row, &format!("/big?bytes={BIG}")).await;
        // The upstream has the request and is streaming.
        eventually(
            Duration::from_secs(5),
            Duration::from_millis(10),
            async || (upstream.open.load(Ordering::SeqCst) == 1).then_some(()),
            || format!("{row:?}: upstream never saw the request"),
        )
        .await;
        match upstream.all_closed(since, limit).await {
            Some(t) => eprintln!("{row:?}: upstream connection let go after {t:?}"),
            None => failures.push(format!(
                "{row:?}: upstream connection still open after {limit:?}"
            )),
        }
        if let Some(reset) = reset {
            let reason = reset.await.unwrap();
            if reason != Some(h2::Reason::CANCEL) {
                failures.push(format!("{row:?}: stream ended with {reason:?}, not CANCEL"));
            }
        }
        drop(kept);
        // The response cut short is recorded: the status sent, the bytes that went out.
        let records = proxy.wait_records(i + 1).await;
        let record = &records[i];
        assert_eq!(field(record, "status"), "200", "{row:?}: {record}");
        let sent: u64 = field(record, "bytes_sent").parse().unwrap();
        assert!(sent < BIG, "{row:?}: {record}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // A client that does not read is the client's failure, never the upstream's.
    assert_eq!(
        metric(&proxy, "webprom_edge_upstream_errors_total").await,
        0.0
    );
    connections_back_to_zero(&proxy, "after the h2 clients left").await;
}

/// A client slower than the proxy, but never stopped for a whole send timeout.
#[derive(Debug, Clone, Copy)]
enum SlowReader {
    /// HTTP/2: takes 16 KiB, gives the window back, waits 100 ms, again.
    H2,
    /// HTTP/1.1: reads up to 64 KiB, waits 10 ms, again. Slower than the proxy writes, so
    /// its writes wait; but with loopback's send buffers of megabytes the kernel wakes a
    /// waiting writer only after about a megabyte has drained (as nginx's `send_timeout`, the
    /// deadline is between two writes that succeed), which a slower reader takes longer than
    /// the test's 500 ms to read.
    H1,
}

#[tokio::test]
async fn a_slow_client_that_keeps_taking_bytes_is_never_cut_by_the_send_timeout() {
    let path = format!("/big?bytes={BIG}");
    // Four send timeouts of reading, with the sockets' buffers long full.
    let for_how_long = Duration::from_secs(4);
    for row in [SlowReader::H2, SlowReader::H1] {
        let upstream = BigUpstream::start().await;
        // 1 s: see `SlowReader::H1`.
        let proxy = deadline_proxy(&upstream.url(), |c| {
            set(&c, "server", "send_timeout", "\"1s\"")
        })
        .await;
        let since = Instant::now();
        let mut read = 0usize;
        match row {
            SlowReader::H2 => {
                let (send, _conn) = h2_client(&proxy, 65_535, 65_535).await;
                let mut send = send.ready().await.unwrap();
                let (resp, _) = send.send_request(h2_request(&path), true).unwrap();
                let mut body = resp.await.unwrap().into_body();
                while since.elapsed() < for_how_long {
                    match tokio::time::timeout(Duration::from_secs(2), body.data()).await {
                        Ok(Some(Ok(chunk))) => {
                            read += chunk.len();
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        other => panic!("{row:?}: cut after {:?}: {other:?}", since.elapsed()),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            SlowReader::H1 => {
                let mut io = tls_h1_small_buffer(&proxy).await;
                io.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                while since.elapsed() < for_how_long {
                    match tokio::time::timeout(Duration::from_secs(2), io.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => read += n,
                        other => panic!("{row:?}: cut after {:?}: {other:?}", since.elapsed()),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        eprintln!(
            "{row:?}: read {read} bytes in {:?}, still served",
            since.elapsed()
        );
        assert_eq!(upstream.open.load(Ordering::SeqCst), 1, "{row:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Every graceful close has a deadline.

/// A client that is never done when the proxy wants to close.
#[derive(Debug, Clone, Copy)]
enum Lingerer {
    /// HTTP/2: one request answered, then it reads but never answers anything (GOAWAY's PING).
    H2NeverAcks,
    /// HTTP/1.1: stops reading a large response.
    H1StopsReading,
    /// HTTP/2, as `H2NeverAcks`, on a response whose upstream stalls mid-body: the stream is
    /// not waiting for its answer (the head came), so it holds the close no longer than the
    /// send deadline, as over HTTP/1.1.
    H2UpstreamStallsMidBody,
}

async fn linger(proxy: &Proxy, row: Lingerer) -> Stream {
    match row {
        Lingerer::H2NeverAcks | Lingerer::H2UpstreamStallsMidBody => {
            let path = match row {
                Lingerer::H2NeverAcks => "/",
                _ => "/stall",
            };
            let mut io = tls(proxy, Some(b"h2")).await;
            io.write_all(&h2_opening(&[], 0)).await.unwrap();
            io.write_all(&h2_get(1, path)).await.unwrap();
            io.flush().await.unwrap();
            Box::new(io)
        }
        Lingerer::H1StopsReading => stall(
            proxy,
            Stall::H1StopsReadingSocket,
            &format!("/big?bytes={BIG}"),
        )
        .await
        .0
        .downcast::<tokio_rustls::client::TlsStream<TcpStream>>()
        .map(|b| b as Stream)
        .unwrap_or_else(|_| unreachable!()),
    }
}

#[tokio::test]
async fn a_connection_closing_after_its_idle_timeout_is_closed_by_the_send_timeout() {
    let upstream = BigUpstream::start().await;
    let proxy = deadline_proxy(&upstream.url(), |c| {
        let c = set(&c, "server", "send_timeout", "\"500ms\"");
        set(&c, "server", "idle_timeout", "\"500ms\"")
    })
    .await;
    let rows = [
        Lingerer::H2NeverAcks,
        Lingerer::H1StopsReading,
        Lingerer::H2UpstreamStallsMidBody,
    ];
    // Idle timeout (up to 1.25 times) plus the close deadline, ten times over.
    let limit = Duration::from_secs(8);
    let mut failures = Vec::new();
    for row in rows {
        let since = Instant::now();
        let io = linger(&proxy, row).await;
        match row {
            // Reading everything, acting on nothing.
            Lingerer::H2NeverAcks | Lingerer::H2UpstreamStallsMidBody => {
                match held_for(io, since, limit).await {
                    Some(t) => eprintln!("{row:?}: closed after {t:?}"),
                    None => failures.push(format!("{row:?}: still open after {limit:?}")),
                }
                // The stalled response's upstream connection goes with the client's (an
                // answered one idles in the pool instead).
                if matches!(row, Lingerer::H2UpstreamStallsMidBody) {
                    match upstream.all_closed(since, limit).await {
                        Some(t) => eprintln!("{row:?}: upstream let go after {t:?}"),
                        None => failures.push(format!("{row:?}: upstream held after {limit:?}")),
                    }
                }
            }
            Lingerer::H1StopsReading => {
                eventually(
                    Duration::from_secs(5),
                    Duration::from_millis(10),
                    async || (upstream.open.load(Ordering::SeqCst) == 1).then_some(()),
                    || format!("{row:?}: upstream never saw the request"),
                )
                .await;
                match upstream.all_closed(since, limit).await {
                    Some(t) => eprintln!("{row:?}: upstream let go after {t:?}"),
                    None => failures.push(format!("{row:?}: upstream held after {limit:?}")),
                }
                drop(io);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    connections_back_to_zero(&proxy, "after every row").await;
}

#[tokio::test]
async fn a_draining_proxy_with_clients_that_never_finish_exits_by_the_send_timeout() {
    let upstream = BigUpstream::start().await;
    // A send timeout of 1 s: the slow reader's writes, waiting on loopback's megabyte buffers,
    // may be half a second apart (see `SlowReader::H1`).
    let send_timeout = Duration::from_secs(1);
    let mut proxy = deadline_proxy(&upstream.url(), |c| {
        let c = set(&c, "server", "send_timeout", "\"1s\"");
        let c = set(&c, "server", "idle_timeout", "\"30s\"");
        set(&c, "server", "shutdown_grace", "\"20s\"")
    })
    .await;
    // An HTTP/2 client that never answers the GOAWAY's PING and reads nothing, and an HTTP/1.1
    // client in the middle of a large response it stopped reading...
    let h2 = linger(&proxy, Lingerer::H2NeverAcks).await;
    let h1 = linger(&proxy, Lingerer::H1StopsReading).await;
    // ...and one still reading its large response, slowly: a drain lets it go on.
    let mut reader = tls_h1_small_buffer(&proxy).await;
    reader
        .write_all(format!("GET /big?bytes={BIG} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // ...and one request per protocol whose answer the upstream takes 2.5 s to start: no byte
    // moves meanwhile, but a drain waits for it.
    let client = proxy.client();
    let waiting: Vec<_> = BOTH
        .into_iter()
        .map(|proto| {
            let client = client.clone();
            tokio::spawn(async move {
                let resp = client.get(proto, "/slow?ms=2500").await;
                (proto, resp.status, resp.body.len())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let since = Instant::now();
    proxy.signal("TERM");
    // Reads up to 64 KiB every 10 ms for three send timeouts: the drain must not cut it (see
    // `SlowReader::H1` for why not slower).
    let mut buf = vec![0u8; 64 * 1024];
    let mut slow_read = 0usize;
    while since.elapsed() < send_timeout * 3 {
        match tokio::time::timeout(Duration::from_secs(2), reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => slow_read += n,
            other => panic!(
                "the slow reader was cut after {:?}: {other:?}",
                since.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("slow reader read {slow_read} bytes during the drain");
    // Still served: its upstream response is still streaming (the other client's is long gone).
    assert_eq!(
        upstream.streaming.load(Ordering::SeqCst),
        1,
        "the slow reader was cut"
    );
    drop(reader);
    let exited = tokio::task::spawn_blocking(move || {
        let status = proxy.wait_exit(Duration::from_secs(25));
        (status, proxy)
    });
    let (status, _proxy) = exited.await.unwrap();
    let took = since.elapsed();
    for task in waiting {
        let (proto, status, len) = task.await.unwrap();
        assert_eq!(
            (status.as_u16(), len),
            (200, 20),
            "{proto:?}: the drain cut it"
        );
    }
    eprintln!("drained in {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(8),
        "drain took {took:?}: the clients held it to shutdown_grace"
    );
    drop((h1, h2));
}

// ---------------------------------------------------------------------------------------------
// 4. HTTP/2 rapid reset with a delay.

/// What one HTTP/2 client does.
#[derive(Debug, Clone, Copy)]
enum Resetter {
    /// 100 streams to a slow path at a time, each reset this many milliseconds after it opened.
    Attack { reset_after_ms: u64 },
    /// 1,000 streams, ten at a time; one in ten (to a slow path) cancelled after 20 ms.
    CancelsOneInTen,
    /// As many streams as the proxy allows at once (256) to a slow path, all cancelled after
    /// 100 ms (a page navigated away from), then 100 requests that complete.
    NavigatesAway,
}

/// How the proxy ended a connection: the GOAWAY reason, and whether it was `h2`'s own limit on
/// streams reset before they were accepted (debug data `too_many_resets`) rather than the
/// proxy's reset budget.
type Ending = Option<(h2::Reason, bool)>;

fn ending(e: &h2::Error) -> Ending {
    e.reason()
        .map(|r| (r, e.to_string().contains("too_many_resets")))
}

/// Plays the row; returns how the proxy ended the connection (if it did) and how many streams
/// the client opened.
async fn play(proxy: &Proxy, row: Resetter) -> (Ending, usize) {
    let (send, conn) = h2_client(proxy, 1 << 20, 1 << 20).await;
    let (per_round, reset_after) = match row {
        Resetter::Attack { reset_after_ms } => (100, Duration::from_millis(reset_after_ms)),
        Resetter::CancelsOneInTen => (10, Duration::from_millis(20)),
        Resetter::NavigatesAway => (10, Duration::from_millis(100)),
    };
    let mut opened = 0;
    let mut ended = None;
    'rounds: for round in 0..100 {
        let mut cancelled = Vec::new();
        let mut completed = Vec::new();
        let (per_round, navigating) = match row {
            Resetter::NavigatesAway if round == 0 => (256, true),
            _ => (per_round, false),
        };
        for i in 0..per_round {
            let cancel = match row {
                Resetter::Attack { .. } => true,
                Resetter::CancelsOneInTen => i == 9,
                Resetter::NavigatesAway => navigating,
            };
            let path = if cancel {
                format!("/slow?ms=1000&r={round}")
            } else {
                "/".to_owned()
            };
            let ready = tokio::time::timeout(Duration::from_secs(5), send.clone().ready()).await;
            let mut ready = match ready {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    eprintln!("{row:?}: {e}");
                    ended = ending(&e);
                    break 'rounds;
                }
                Err(_) => panic!("{row:?}: no stream capacity in 5 s"),
            };
            match ready.send_request(h2_request(&path), true) {
                Ok((resp, _)) if cancel => cancelled.push(resp),
                Ok((resp, _)) => completed.push(resp),
                Err(e) => {
                    eprintln!("{row:?}: {e}");
                    ended = ending(&e);
                    break 'rounds;
                }
            }
            opened += 1;
        }
        for resp in completed {
            match resp.await {
                Ok(resp) => {
                    let mut body = resp.into_body();
                    while let Some(chunk) = body.data().await {
                        let Ok(chunk) = chunk else { break };
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                }
                Err(e) => {
                    eprintln!("{row:?}: {e}");
                    ended = ending(&e);
                    break 'rounds;
                }
            }
        }
        tokio::time::sleep(reset_after).await;
        // Dropping a response future resets its stream (CANCEL).
        drop(cancelled);
        match row {
            Resetter::CancelsOneInTen if opened >= 1000 => break,
            Resetter::NavigatesAway if round == 10 => break,
            _ => {}
        }
    }
    if ended.is_none() {
        // The connection must still serve; or the proxy ended it, and says why.
        match send.ready().await {
            Ok(mut send) => match send.send_request(h2_request("/"), true) {
                Ok((resp, _)) => {
                    if let Err(e) = resp.await {
                        ended = ending(&e);
                    }
                }
                Err(e) => ended = ending(&e),
            },
            Err(e) => ended = ending(&e),
        }
    }
    if ended.is_none()
        && conn.is_finished()
        && let Ok(Err(e)) = conn.await
    {
        ended = ending(&e);
    }
    (ended, opened)
}

#[tokio::test]
async fn a_client_resetting_streams_faster_than_its_budget_gets_goaway_and_a_cancelling_browser_does_not()
 {
    use h2::Reason;
    // For the attacks: ENHANCE_YOUR_CALM, from the proxy's budget. At 20 ms `h2`'s own limit on
    // streams reset before the proxy accepted them (20 at once) may come first on a loaded
    // machine; at 100 ms every stream has been accepted, and only the budget can end it.
    // The reason wanted, and whether it may come from `h2`'s own limit.
    type Want = Option<(Reason, &'static [bool])>;
    let rows: [(Resetter, Want); 4] = [
        (
            Resetter::Attack { reset_after_ms: 20 },
            Some((Reason::ENHANCE_YOUR_CALM, &[false, true])),
        ),
        (
            Resetter::Attack {
                reset_after_ms: 100,
            },
            Some((Reason::ENHANCE_YOUR_CALM, &[false])),
        ),
        (Resetter::CancelsOneInTen, None),
        (Resetter::NavigatesAway, None),
    ];
    let mut failures = Vec::new();
    for (row, want) in rows {
        let upstream = Upstream::start().await;
        // No per-client quota: it would answer most of the attack with 429 itself.
        let proxy = Proxy::start_with(|c| unlimited(&c), &upstream.url()).await;
        let (ended, opened) = play(&proxy, row).await;
        let reached = upstream.seen.lock().unwrap().len();
        eprintln!("{row:?}: opened {opened} streams, upstream saw {reached}, ended {ended:?}");
        let as_wanted = match (ended, want) {
            (None, None) => true,
            (Some((reason, h2_limit)), Some((want, limits))) => {
                reason == want && limits.contains(&h2_limit)
            }
            _ => false,
        };
        if !as_wanted {
            failures.push(format!(
                "{row:?}: ended with {ended:?}, want {want:?} ({opened} streams opened)"
            ));
        }
        // The attack gets about its budget of streams (256), and the upstream sees at most
        // that many requests, not one per stream the client can open: the budget, and the
        // rounds already sent when it ran out.
        // At 20 ms `h2`'s own limit may end it, counting streams the proxy had not accepted
        // yet, which never reached the upstream: only the upstream's cost is bounded there.
        let opened_bounded = matches!(
            row,
            Resetter::Attack {
                reset_after_ms: 100
            }
        );
        if matches!(row, Resetter::Attack { .. })
            && ((opened_bounded && opened > 700) || reached > 700)
        {
            failures.push(format!(
                "{row:?}: {opened} streams opened, the upstream saw {reached} requests"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
