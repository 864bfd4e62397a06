//! The upstream pool: round robin over `upstream.servers`, keep-alive HTTP/1.1 connections kept
//! per server, a short back-off for a server that refuses connections, and the few retries that
//! keep a dead server or a closed keep-alive connection from reaching the client as a 502.
//!
//! A connection is lent to one request at a time ([`Lease`]) and comes back to its server's idle
//! list when the response body has been read to the end; a response cut short closes it. The
//! pool is a plain LIFO stack behind a mutex held for a push, a pop or a sweep, never across an
//! await. A connection idle for `upstream.idle_timeout` is never reused, and is closed by
//! [`Upstreams::close_idle`].
//!
//! A request is sent again (nginx's `proxy_next_upstream error`, narrowed) only when the
//! upstream cannot see it twice, or may by RFC 9110 §9.2.2:
//! - no connection could be opened: nothing was sent, and the next server not backing off gets
//!   the request (each server at most once);
//! - a reused connection was found closed before the request was written (hyper hands it
//!   back): any method, once more on a new connection;
//! - a reused connection failed after the request was written but before any response byte
//!   arrived: only an idempotent method with an empty body, once more on a new connection.
//!
//! Never a request whose body was (even partly) sent, never after a response byte, never after
//! `request_timeout`, never a failure on a new connection. Nothing here logs a request value.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::RequestBody;
use crate::config;
use crate::metrics::{RetryReason, UpstreamRetries};

/// How long a server that refused a connection is skipped.
const BACKOFF: Duration = Duration::from_secs(3);
/// Idle connections kept per server.
const MAX_IDLE: usize = 1024;

type Sender = http1::SendRequest<RequestBody>;

/// The request side of one upstream connection.
struct Conn {
    sender: Sender,
    /// Bytes the connection's task has read from the upstream so far.
    received: Arc<AtomicU64>,
}

struct Peer {
    authority: Authority,
    /// The `Host` sent to this server when the client gave none.
    host: Option<HeaderValue>,
    /// Milliseconds since `Upstreams::epoch` until which the peer is skipped; 0 = healthy.
    down_until_ms: AtomicU64,
    /// Idle connections, oldest first, each with the time it became idle.
    idle: Mutex<VecDeque<(Conn, Instant)>>,
}

impl Peer {
    /// The most recently used idle connection that is still open and younger than
    /// `idle_timeout`, if any.
    fn checkout(&self, idle_timeout: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        let mut now = None;
        while let Some((conn, since)) = idle.pop_back() {
            let fresh = now.get_or_insert_with(Instant::now).duration_since(since) < idle_timeout;
            if fresh && !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            // Taken under the lock, so the list stays in idle order for `close_idle`.
            idle.push_back((conn, Instant::now()));
        }
    }
}

/// A pooled connection lent to one exchange; see [`Lease::release`].
pub struct Lease {
    conn: Conn,
    peer: Arc<Peer>,
}

impl Lease {
    /// Gives the connection back for the next request. Call only once the response body has
    /// been read to its end; a lease dropped instead closes its connection.
    pub fn release(self) {
        self.peer.checkin(self.conn);
    }
}

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, or `connect_timeout`), to any
    /// server tried.
    #[error("connecting to the upstream: {0}")]
    Connect(String),
    /// The exchange broke (or the request body failed, e.g. over its size limit).
    #[error("upstream exchange failed: {0}")]
    Exchange(#[source] hyper::Error),
}

/// How one attempt on one server failed.
enum Failure {
    /// No usable connection: the request comes back unsent (boxed: this is the rare path).
    Connect(SendError, Box<Request<RequestBody>>),
    /// The request went out, or cannot go again.
    Exchange(SendError),
}

/// The upstream servers and their pooled connections.
pub struct Upstreams {
    peers: Box<[Arc<Peer>]>,
    next: AtomicUsize,
    epoch: Instant,
    connect_timeout: Duration,
    idle_timeout: Duration,
    retries: UpstreamRetries,
}

/// The server chosen for one request.
pub struct Pick {
    index: usize,
    /// The request target (origin form) to send.
    pub uri: Uri,
}

impl Upstreams {
    /// A pool for the configured servers, counting its retries in `retries`.
    pub fn new(cfg: &config::Upstream, retries: UpstreamRetries) -> Upstreams {
        Upstreams {
            peers: cfg
                .servers
                .iter()
                .map(|s| {
                    Arc::new(Peer {
                        authority: s.authority.clone(),
                        host: HeaderValue::from_str(s.authority.as_str()).ok(),
                        down_until_ms: AtomicU64::new(0),
                        idle: Mutex::new(VecDeque::new()),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            connect_timeout: cfg.connect_timeout.0,
            idle_timeout: cfg.idle_timeout.0,
            retries,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn is_down(&self, peer: &Peer, now: &mut Option<u64>) -> bool {
        let until = peer.down_until_ms.load(Ordering::Relaxed);
        until != 0 && until > *now.get_or_insert_with(|| self.now_ms())
    }

    /// The next healthy server in turn (or, if every one is backing off, the next anyway).
    pub fn pick(&self, path_and_query: Option<&PathAndQuery>) -> Pick {
        let n = self.peers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut now = None;
        let index = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !self.is_down(&self.peers[i], &mut now))
            .unwrap_or(start % n);
        let uri = match path_and_query {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
        Pick { index, uri }
    }

    /// The first server after `index`, in round-robin order, that is not backing off.
    fn next_up(&self, index: usize) -> Option<usize> {
        let n = self.peers.len();
        let mut now = None;
        (1..n)
            .map(|i| (index + i) % n)
            .find(|&i| !self.is_down(&self.peers[i], &mut now))
    }

    /// Records that the server at `index` refused or could not be reached: it is skipped for
    /// the back-off from now.
    fn mark_down(&self, index: usize) {
        let until = self.now_ms() + BACKOFF.as_millis() as u64;
        self.peers[index]
            .down_until_ms
            .store(until, Ordering::Relaxed);
    }

    /// Whether at least one server is not backing off.
    pub fn any_up(&self) -> bool {
        let mut now = None;
        self.peers.iter().any(|p| !self.is_down(p, &mut now))
    }

    /// Sends `req` to the picked server over a pooled connection (or a new one), returning the
    /// response head and the lease on its connection (`None` if the connection already ended).
    /// A request without `Host` gets the server's `host:port`. Retries as the module doc says;
    /// a server that cannot be connected to is marked down for the back-off.
    pub async fn send(
        &self,
        pick: &Pick,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        let default_host = !req.headers().contains_key(HOST);
        let mut index = pick.index;
        let mut tried = 0;
        loop {
            let peer = &self.peers[index];
            if default_host && let Some(host) = &peer.host {
                req.headers_mut().insert(HOST, host.clone());
            }
            match self.send_to(peer, req).await {
                Ok(exchange) => return Ok(exchange),
                Err(Failure::Exchange(e)) => return Err(e),
                Err(Failure::Connect(e, unsent)) => {
                    self.mark_down(index);
                    tried += 1;
                    let Some(next) = self.next_up(index).filter(|_| tried < self.peers.len())
                    else {
                        return Err(e);
                    };
                    tracing::warn!(
                        server = %peer.authority,
                        error = %e,
                        "upstream connect failed; trying the next server"
                    );
                    self.retries.count(RetryReason::Connect);
                    index = next;
                    req = *unsent;
                }
            }
        }
    }

    /// One server's part of [`Upstreams::send`]: a pooled connection, and at most one retry on
    /// a new one. The lease is `None` in the rare case where the connection ended as the
    /// response arrived.
    async fn send_to(
        &self,
        peer: &Arc<Peer>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), Failure> {
        let mut pooled = true;
        loop {
            let checked_out = if pooled {
                peer.checkout(self.idle_timeout)
            } else {
                None
            };
            let (conn, reused) = match checked_out {
                Some(conn) => (conn, true),
                // Boxed: connecting is rare, and its large state would otherwise sit in (and be
                // copied with) every request's future.
                None => match Box::pin(self.connect(peer)).await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Err(Failure::Connect(e, Box::new(req))),
                },
            };
            let Conn {
                mut sender,
                received,
            } = conn;
            if sender.ready().await.is_err() {
                if reused {
                    // Closed while idle; nothing was sent on it.
                    continue;
                }
                let e = SendError::Connect("connection closed at once".into());
                return Err(Failure::Connect(e, Box::new(req)));
            }
            // Copied only when a failure after sending could be retried: the head is gone
            // once hyper has written it.
            let copy = (reused && may_send_twice(&req)).then(|| copy_head(&req));
            let received_before = received.load(Ordering::Relaxed);
            let mut sending = pin!(sender.try_send_request(req));
            let (result, sender) = match until_closed(sending.as_mut(), &mut sender).await {
                Some(result) => (result, Some(sender)),
                None => {
                    // The connection ended with the request still in hyper's queue, where it
                    // stays for as long as the queue has a sender (hyper#4122: a send racing
                    // the connection's shutdown). Dropping the sender frees the queue, which
                    // hands the request back unsent.
                    drop(sender);
                    (sending.await, None)
                }
            };
            match result {
                Ok(resp) => {
                    let lease = sender.map(|sender| Lease {
                        conn: Conn { sender, received },
                        peer: peer.clone(),
                    });
                    return Ok((resp, lease));
                }
                Err(mut e) => {
                    // `received` is read after the error came through hyper's channel, so it
                    // holds every byte the connection task read before failing.
                    let nothing_received = received.load(Ordering::Relaxed) == received_before;
                    req = match (e.take_message(), copy) {
                        (Some(unsent), _) if reused => unsent,
                        // A new connection that closes before taking a request: as if refused.
                        (Some(unsent), _) => {
                            let e = SendError::Connect(e.error().to_string());
                            return Err(Failure::Connect(e, Box::new(unsent)));
                        }
                        (None, Some(copy)) if nothing_received && !e.error().is_user() => copy,
                        _ => return Err(Failure::Exchange(SendError::Exchange(e.into_error()))),
                    };
                    tracing::debug!(
                        error = %e.error(),
                        "reused upstream connection was closed; sending again on a new one"
                    );
                    self.retries.count(RetryReason::Closed);
                    pooled = false;
                }
            }
        }
    }

    async fn connect(&self, peer: &Peer) -> Result<Conn, SendError> {
        let host = peer
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = peer.authority.port_u16().unwrap_or(80);
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "no connection within {:?}",
                    self.connect_timeout
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        let received = Arc::new(AtomicU64::new(0));
        let io = Counted {
            tcp,
            received: received.clone(),
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Conn { sender, received })
    }

    /// Closes the pooled connections idle for `upstream.idle_timeout` or longer, so that the
    /// upstream keeps no idle connection past it either.
    pub fn close_idle(&self) {
        let now = Instant::now();
        for peer in self.peers.iter() {
            let Ok(mut idle) = peer.idle.lock() else {
                continue;
            };
            let expired = idle
                .iter()
                .take_while(|(_, since)| now.duration_since(*since) >= self.idle_timeout)
                .count();
            if expired > 0 {
                let closed: Vec<_> = idle.drain(..expired).collect();
                drop(idle);
                // Dropping a sender ends its idle connection's task, which closes the socket.
                drop(closed);
            }
        }
    }

    /// How often [`Upstreams::close_idle`] should run: half the idle timeout, so a connection
    /// is closed at most 1.5 × `upstream.idle_timeout` after its last use.
    pub fn close_idle_period(&self) -> Duration {
        (self.idle_timeout / 2).max(Duration::from_millis(10))
    }
}

/// Awaits `sending` unless the connection of `sender` ends first (`None`).
async fn until_closed<F: Future + Unpin>(mut sending: F, sender: &mut Sender) -> Option<F::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(result) = Pin::new(&mut sending).poll(cx) {
            return Poll::Ready(Some(result));
        }
        match sender.poll_ready(cx) {
            Poll::Ready(Err(_)) => Poll::Ready(None),
            // Ready(Ok) comes only once the response head is in, which `sending` then has.
            _ => Poll::Pending,
        }
    })
    .await
}

/// Whether `req` may be written a second time: an idempotent method (RFC 9110 §9.2.2) with no
/// body to send.
fn may_send_twice(req: &Request<RequestBody>) -> bool {
    req.method().is_idempotent() && req.body().is_end_stream()
}

/// The head of a body-less request, for sending it again.
pub fn copy_head(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

pin_project_lite::pin_project! {
    /// An upstream TCP stream that counts the bytes read from it, so that a failed exchange
    /// can tell whether any of the response had arrived.
    struct Counted {
        #[pin]
        tcp: TcpStream,
        received: Arc<AtomicU64>,
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.tcp.poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.received.fetch_add(read as u64, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().tcp.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().tcp.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().tcp.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().tcp.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use http::Method;

    fn upstreams(n: usize) -> Upstreams {
        let cfg = config::Upstream {
            servers: (0..n)
                .map(|i| format!("http://127.0.0.1:{}", 8080 + i).parse().unwrap())
                .collect(),
            ..Default::default()
        };
        Upstreams::new(&cfg, Metrics::new(&[]).upstream_retries())
    }

    #[test]
    fn only_idempotent_body_less_requests_may_be_sent_twice() {
        let rows = [
            (Method::GET, true),
            (Method::HEAD, true),
            (Method::OPTIONS, true),
            (Method::TRACE, true),
            (Method::PUT, true),
            (Method::DELETE, true),
            (Method::POST, false),
            (Method::PATCH, false),
            (Method::CONNECT, false),
            (Method::from_bytes(b"PURGE").unwrap(), false),
        ];
        for (method, expected) in rows {
            let mut req = Request::new(RequestBody::empty());
            *req.method_mut() = method.clone();
            assert_eq!(may_send_twice(&req), expected, "{method}");
        }
    }

    #[test]
    fn the_copy_of_a_head_is_the_same_request() {
        let req = Request::delete("/basket/7?x=1")
            .header("host", "shop.example")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(RequestBody::empty())
            .unwrap();
        let copy = copy_head(&req);
        assert_eq!(copy.method(), req.method());
        assert_eq!(copy.uri(), req.uri());
        assert_eq!(copy.version(), req.version());
        assert_eq!(copy.headers(), req.headers());
        assert!(copy.body().is_end_stream());
    }

    #[test]
    fn a_server_backing_off_is_skipped_in_turn_and_on_failover() {
        let up = upstreams(3);
        up.mark_down(1);
        let picked: Vec<usize> = (0..6).map(|_| up.pick(None).index).collect();
        assert_eq!(picked, [0, 2, 2, 0, 2, 2]);
        assert_eq!(up.next_up(0), Some(2));
        assert_eq!(up.next_up(2), Some(0));
        assert!(up.any_up());
        up.mark_down(0);
        up.mark_down(2);
        // Every server backing off: the turn picks one anyway, failover finds none.
        assert_eq!(up.next_up(0), None);
        assert!(!up.any_up());
        let _ = up.pick(None);
    }

    #[test]
    fn a_single_server_has_no_next() {
        let up = upstreams(1);
        assert_eq!(up.next_up(0), None);
        assert_eq!(up.pick(None).index, 0);
    }
}
