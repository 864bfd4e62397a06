//! The upstream pool: the choice of a server among `upstream.servers` ([`super::balance`]),
//! keep-alive HTTP/1.1 connections kept per server under a cap, a bounded queue for the
//! requests over it, a short back-off for a server that refuses connections, the few retries
//! that keep a dead server or a closed keep-alive connection from reaching the client as a 502,
//! and the draining that keeps the connection of an exchange its client abandoned.
//!
//! Rotation: a server is out of it while it fails its active health checks
//! ([`super::health`]), while outlier detection ejects it, and for `BACKOFF` (3 s) after a failed
//! connect; when every server is out, every server is used. Outlier detection (Envoy's): the
//! `upstream.outlier_detection.consecutive_failures`-th connect failure or 5xx answer in a row
//! ejects the server for `base_ejection_time` × its ejections since it last answered well (at
//! most `max_ejection_time`), unless no other server is in rotation. Timeouts and broken
//! exchanges are not counted (the client's side may be at fault). Each exchange sent to a
//! server is counted by its status class in `upstream_requests_total{server,status_class}`
//! (`error`: no response); its requests in flight, from sending to the end of the response
//! body, feed `least_request`.
//!
//! A connection is lent to one request at a time ([`Lease`]) and comes back to its server's idle
//! list when the response body has been read to the end; a response cut short by an error closes
//! it. Each server's state (idle connections, the count of connections, the queue) sits behind
//! a mutex held for a push, a pop or a sweep, never across an await. A connection idle for
//! `upstream.idle_timeout` is never reused, and is closed by [`Upstreams::close_idle`].
//!
//! Cap and queue: a server has at most `upstream.max_connections` connections, busy, idle and
//! being opened. The balancer passes over a server at its cap with no idle connection for one
//! with room; when every server is full, the request waits in the queue of the server its turn
//! gave it (first in, first out; at most `upstream.max_queued_requests`), and takes the first
//! connection that server checks in or the first place that frees. A full queue, or no
//! connection within `upstream.queue_timeout`, ends in [`SendError::Queue`] (a 503 by the proxy,
//! counted in `upstream_queue_rejections_total`, never as an upstream error). A waiter whose
//! client leaves is skipped when its turn comes and swept when the queue is full.
//! `upstream.request_timeout` runs from the moment the request leaves the queue.
//!
//! Abandoned exchanges: when the client leaves (HTTP/2 stream reset, HTTP/1.1 connection
//! closed) while its exchange is upstream, the exchange goes on in a task of its own until the
//! response head arrives (within [`DRAIN_TIMEOUT`] and what is left of
//! `upstream.request_timeout`, so that clients gone cannot hold the cap's places); when the client
//! leaves with the response body unread, that body is read on. Either way the connection goes
//! back to the pool if at most [`DRAIN_BYTES`] of body remain (known by `Content-Length`, or a
//! chunked body ending within it) and they arrive within [`DRAIN_TIMEOUT`]; otherwise it is
//! closed. Counted in `upstream_drained_total`, never as an upstream error.
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
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::balance::{Balancer, View};
use super::body::RequestBody;
use super::upstream_tls::{self, TlsClient, Transport};
use crate::config;
use crate::metrics::{Drained, QueueRejection, RetryReason, ServerMetrics, UpstreamPool};

/// How long a server that refused a connection is skipped.
const BACKOFF: Duration = Duration::from_secs(3);
/// Idle connections kept per server.
const MAX_IDLE: usize = 1024;
/// The most of an abandoned response body read, and thrown away, to keep its connection.
pub const DRAIN_BYTES: u64 = 64 * 1024;
/// How long, at most, an abandoned exchange waits for its response head, and then for the rest
/// of its body, to keep its connection.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

type Sender = http1::SendRequest<RequestBody>;

/// What hyper's exchange ends in: the response head, or the failure (with the request when
/// it went unsent).
type Head = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>;

/// An exchange under way: hyper's future for the response head, boxed so that it can be moved
/// to a task of its own when the client leaves.
type Sending = Pin<Box<dyn Future<Output = Head> + Send>>;

/// The request side of one upstream connection.
pub(super) struct Conn {
    pub(super) sender: Sender,
    /// Bytes the connection's task has read from the upstream so far.
    received: Arc<AtomicU64>,
    /// Its place under the server's `max_connections`.
    slot: Slot,
}

/// One place under a server's `upstream.max_connections`, held by a connection from the moment
/// it is being opened until it is closed. Dropped, it passes to the first request still waiting
/// for that server, or frees.
pub(super) struct Slot {
    /// `None` once defused (handed back unused by a waiter that left), or for a connection
    /// outside the cap (a health check's).
    peer: Option<Arc<Peer>>,
}

impl Slot {
    /// A place outside any cap: for a health check's connection of its own.
    pub(super) fn uncounted() -> Slot {
        Slot { peer: None }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(peer) = self.peer.take() {
            peer.release(&peer);
        }
    }
}

/// What a waiting request is given: a connection checked in, or a place to open one.
enum Grant {
    Conn(Conn),
    Slot(Slot),
}

/// The outcome of asking a server for a connection at once.
enum Acquire {
    /// A connection to use, or a place to open one.
    Now(Grant),
    /// At the cap: wait for a grant (the sender is in the server's queue).
    Wait(oneshot::Receiver<Grant>),
    /// At the cap with the queue full.
    Full,
}

/// A server's connections and the requests waiting for one.
#[derive(Default)]
struct Pool {
    /// Idle connections, oldest first, each with the time it became idle.
    idle: VecDeque<(Conn, Instant)>,
    /// Connections counted against `max_connections`: busy, idle and being opened.
    open: usize,
    /// Requests waiting, oldest first. One whose client left stays until its turn comes (it is
    /// then skipped) or the queue is full (it is then swept).
    waiters: VecDeque<oneshot::Sender<Grant>>,
}

pub(super) struct Peer {
    pub(super) authority: Authority,
    /// The `Host` sent to this server when the client gave none.
    pub(super) host: Option<HeaderValue>,
    /// Its `server` label: the configured name, else its index.
    pub(super) label: String,
    /// Milliseconds since `Upstreams::epoch` until which the peer is skipped after a failed
    /// connect (the short back-off); 0 = none.
    down_until_ms: AtomicU64,
    /// Milliseconds since `Upstreams::epoch` until which outlier detection keeps the peer out
    /// of rotation; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Failures in a row (connect failures, 5xx answers), for outlier detection.
    failures: AtomicU32,
    /// Ejections since the peer last answered well: the next ejection is this many times
    /// longer than the base.
    ejections: AtomicU32,
    /// False while the peer fails its active health checks.
    pub(super) passing: AtomicBool,
    /// Requests in flight: from sending to the end of the response body ([`Active`]).
    in_flight: AtomicUsize,
    /// Its own series.
    pub(super) server: ServerMetrics,
    pool: Mutex<Pool>,
    /// Idle connections plus free places, as of the last change: 0 when a request would wait.
    /// Read by [`Upstreams::pick`] without the lock.
    room: AtomicUsize,
    max_connections: usize,
    max_queued: usize,
    metrics: UpstreamPool,
    /// The port connected to: as written, else the scheme's.
    port: u16,
    /// Cleartext, or TLS with the name verified.
    transport: Transport,
}

impl Peer {
    /// Where to connect: the host (an IPv6 address without its brackets) and the port.
    fn socket_address(&self) -> (&str, u16) {
        let host = self.authority.host();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (host, self.port)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        // Nothing panics while the lock is held; a poisoned pool is still consistent.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_room(&self, pool: &Pool) {
        let room = pool.idle.len() + self.max_connections.saturating_sub(pool.open);
        self.room.store(room, Ordering::Relaxed);
    }

    /// The most recently used idle connection that is still open and younger than
    /// `idle_timeout`, else a place to open one, else a place in the queue.
    fn acquire(self: &Arc<Self>, idle_timeout: Duration) -> Acquire {
        let mut now = None;
        loop {
            let mut pool = self.pool();
            if let Some((conn, since)) = pool.idle.pop_back() {
                self.set_room(&pool);
                drop(pool);
                self.metrics.idle.dec();
                self.metrics.busy.inc();
                let fresh =
                    now.get_or_insert_with(Instant::now).duration_since(since) < idle_timeout;
                if fresh && !conn.sender.is_closed() {
                    return Acquire::Now(Grant::Conn(conn));
                }
                // Dropped without the lock: its place frees (or passes to a waiter).
                drop(conn);
                continue;
            }
            if pool.open < self.max_connections {
                pool.open += 1;
                self.set_room(&pool);
                drop(pool);
                self.metrics.busy.inc();
                return Acquire::Now(Grant::Slot(Slot {
                    peer: Some(self.clone()),
                }));
            }
            if pool.waiters.len() >= self.max_queued {
                pool.waiters.retain(|w| !w.is_closed());
                if pool.waiters.len() >= self.max_queued {
                    return Acquire::Full;
                }
            }
            let (tx, rx) = oneshot::channel();
            pool.waiters.push_back(tx);
            return Acquire::Wait(rx);
        }
    }

    /// Takes back a connection whose exchange is over: to the first waiter, else to the idle
    /// list. Whether it was kept (not closed).
    fn checkin(&self, conn: Conn) -> bool {
        if conn.sender.is_closed() {
            return false;
        }
        let mut pool = self.pool();
        let conn = match hand_over(&mut pool.waiters, Grant::Conn(conn)) {
            None => return true,
            Some(Grant::Conn(conn)) => conn,
            Some(slot) => {
                drop(pool);
                drop(slot);
                return false;
            }
        };
        if pool.idle.len() >= MAX_IDLE {
            drop(pool);
            drop(conn);
            return false;
        }
        // Taken under the lock, so the list stays in idle order for `close_idle`.
        pool.idle.push_back((conn, Instant::now()));
        self.set_room(&pool);
        drop(pool);
        self.metrics.busy.dec();
        self.metrics.idle.inc();
        true
    }

    /// A connection closed (or never opened): its place passes to the first waiter, or frees.
    fn release(&self, this: &Arc<Peer>) {
        let mut pool = self.pool();
        if !pool.waiters.is_empty() {
            let slot = Grant::Slot(Slot {
                peer: Some(this.clone()),
            });
            match hand_over(&mut pool.waiters, slot) {
                None => return,
                Some(mut unused) => {
                    // Nobody took it: defused, so dropping it does not come back here.
                    if let Grant::Slot(s) = &mut unused {
                        s.peer = None;
                    }
                    pool.open = pool.open.saturating_sub(1);
                    self.set_room(&pool);
                    drop(pool);
                    drop(unused);
                }
            }
        } else {
            pool.open = pool.open.saturating_sub(1);
            self.set_room(&pool);
            drop(pool);
        }
        self.metrics.busy.dec();
    }
}

/// Gives `grant` to the oldest waiter still waiting; hands it back when there is none.
fn hand_over(waiters: &mut VecDeque<oneshot::Sender<Grant>>, mut grant: Grant) -> Option<Grant> {
    while let Some(waiter) = waiters.pop_front() {
        match waiter.send(grant) {
            Ok(()) => return None,
            Err(back) => grant = back,
        }
    }
    Some(grant)
}

/// A request's place in a server's queue. Dropped (its client left, or its time is up), it
/// keeps nothing: a grant that reached it meanwhile goes back to the server.
struct Waiting<'a> {
    rx: oneshot::Receiver<Grant>,
    peer: &'a Peer,
}

impl<'a> Waiting<'a> {
    fn new(peer: &'a Peer, rx: oneshot::Receiver<Grant>) -> Waiting<'a> {
        peer.metrics.queued.inc();
        Waiting { rx, peer }
    }

    /// The grant, or why none came by `deadline`.
    async fn until(mut self, deadline: tokio::time::Instant) -> Result<Grant, QueueRejection> {
        match tokio::time::timeout_at(deadline, &mut self.rx).await {
            Ok(Ok(grant)) => Ok(grant),
            // The pool is going away.
            Ok(Err(_)) => Err(QueueRejection::Timeout),
            Err(_) => {
                // One may have come in the last instant.
                self.rx.close();
                self.rx.try_recv().map_err(|_| QueueRejection::Timeout)
            }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.peer.metrics.queued.dec();
        self.rx.close();
        if let Ok(Grant::Conn(conn)) = self.rx.try_recv() {
            self.peer.checkin(conn);
        }
    }
}

/// A pooled connection lent to one exchange; see [`Lease::release`].
pub struct Lease {
    conn: Conn,
    peer: Arc<Peer>,
    /// The exchange counted in flight on its server until the lease ends.
    _active: Option<Active>,
}

/// One request counted in its server's in-flight requests (for `least_request`) while this
/// lives.
struct Active(Arc<Peer>);

impl Active {
    fn new(peer: &Arc<Peer>) -> Active {
        peer.in_flight.fetch_add(1, Ordering::Relaxed);
        Active(peer.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lease {
    /// Gives the connection back for the next request. Call only once the response body has
    /// been read to its end; a lease dropped instead closes its connection.
    pub fn release(self) {
        self.peer.checkin(self.conn);
    }

    /// For a response whose client left before its body was read to the end: reads and throws
    /// away the rest of `body` in a task of its own and gives the connection back, if at most
    /// [`DRAIN_BYTES`] remain and they arrive within [`DRAIN_TIMEOUT`]; otherwise closes the
    /// connection. Counted in `upstream_drained_total`.
    pub fn drain(self, body: Incoming) {
        if body.size_hint().lower() > DRAIN_BYTES {
            self.peer.metrics.drained(Drained::Closed);
            return;
        }
        let peer = self.peer.clone();
        let spawned = spawn_from_drop(async move {
            let peer = self.peer.clone();
            peer.metrics.drained(self.drain_now(body).await);
        });
        if !spawned {
            peer.metrics.drained(Drained::Closed);
        }
    }

    async fn drain_now(self, mut body: Incoming) -> Drained {
        let read_to_end = async {
            let mut read = 0u64;
            loop {
                match body.frame().await {
                    None => return true,
                    Some(Ok(frame)) => {
                        read += frame.data_ref().map_or(0, |d| d.len() as u64);
                        if read > DRAIN_BYTES {
                            return false;
                        }
                    }
                    Some(Err(_)) => return false,
                }
            }
        };
        let ended = matches!(
            tokio::time::timeout(DRAIN_TIMEOUT, read_to_end).await,
            Ok(true)
        );
        if ended && self.peer.checkin(self.conn) {
            Drained::Reused
        } else {
            Drained::Closed
        }
    }
}

/// An exchange on its way: the response head awaited, the connection held. Dropped before the
/// head is in (the client left), it moves to a task of its own that waits for the head until
/// the request's deadline and drains the response ([`Lease::drain`]), so the connection can be
/// reused; past the deadline (the request timed out), it closes the connection.
struct InFlight<'a> {
    sending: Option<Sending>,
    conn: Option<Conn>,
    peer: &'a Arc<Peer>,
    deadline: tokio::time::Instant,
}

impl InFlight<'_> {
    /// The response head or the failure (`Some`), or `None` when the connection ended first
    /// (hyper#4122: see [`until_closed`]).
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Option<Head>> {
        let (Some(sending), Some(conn)) = (self.sending.as_mut(), self.conn.as_mut()) else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(result) = sending.as_mut().poll(cx) {
            self.sending = None;
            return Poll::Ready(Some(result));
        }
        match conn.sender.poll_ready(cx) {
            Poll::Ready(Err(_)) => Poll::Ready(None),
            // Ready(Ok) comes only once the response head is in, which `sending` then has.
            _ => Poll::Pending,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // The clock is read only for an exchange still in flight, not on every drop.
        if let (Some(sending), Some(conn)) = (self.sending.take(), self.conn.take())
            && let now = tokio::time::Instant::now()
            && now < self.deadline
        {
            let peer = self.peer.clone();
            // A client that left may not hold a place under the cap for long: its head is
            // waited for at most DRAIN_TIMEOUT.
            let deadline = self.deadline.min(now + DRAIN_TIMEOUT);
            if !spawn_from_drop(finish_abandoned(sending, conn, peer, deadline)) {
                self.peer.metrics.drained(Drained::Closed);
            }
        }
    }
}

/// Spawns `task` on the current runtime; false (the task dropped) when there is none, as while
/// the runtime itself shuts down.
fn spawn_from_drop<F>(task: F) -> bool
where
    F: Future<Output = ()> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            drop(runtime.spawn(task));
            true
        }
        Err(_) => false,
    }
}

/// The rest of an exchange whose client left before the response head: see [`InFlight`].
async fn finish_abandoned(
    mut sending: Sending,
    mut conn: Conn,
    peer: Arc<Peer>,
    deadline: tokio::time::Instant,
) {
    let head =
        tokio::time::timeout_at(deadline, until_closed(sending.as_mut(), &mut conn.sender)).await;
    match head {
        Ok(Some(Ok(resp))) => {
            peer.server.request(Some(resp.status().as_u16()));
            drop(sending);
            let body = resp.into_body();
            if body.is_end_stream() {
                let kept = peer.checkin(conn);
                peer.metrics.drained(if kept {
                    Drained::Reused
                } else {
                    Drained::Closed
                });
            } else {
                Lease {
                    conn,
                    peer,
                    _active: None,
                }
                .drain(body);
            }
        }
        _ => {
            peer.server.request(None);
            peer.metrics.drained(Drained::Closed);
        }
    }
}

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, or `connect_timeout`), to any
    /// server tried.
    #[error("connecting to the upstream: {0}")]
    Connect(String),
    /// The exchange with the server (`host:port`) broke (or the request body failed, e.g.
    /// over its size limit).
    #[error("upstream exchange with {0} failed")]
    Exchange(Authority, #[source] hyper::Error),
    /// No response head from the server (`host:port`) within `upstream.request_timeout`
    /// (counted from leaving the queue).
    #[error("no response from {0} within {1:?}")]
    Timeout(Authority, Duration),
    /// The server was at `upstream.max_connections` and the request could not wait (queue
    /// full) or waited `upstream.queue_timeout` in vain; nothing was sent. Already counted in
    /// `upstream_queue_rejections_total`.
    #[error("no upstream connection free: {0:?}")]
    Queue(QueueRejection),
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
    pub(super) peers: Box<[Arc<Peer>]>,
    balancer: Balancer,
    /// `[upstream.health_check]`, when on.
    pub(super) health_check: Option<config::HealthCheck>,
    outlier: config::OutlierDetection,
    epoch: Instant,
    connect_timeout: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
    queue_timeout: Duration,
    metrics: UpstreamPool,
}

/// The server chosen for one request.
pub struct Pick {
    index: usize,
    /// The request target (origin form) to send.
    pub uri: Uri,
}

impl Upstreams {
    /// A pool for the configured servers, counting in `metrics`, with the TLS client for the
    /// `https://` servers built from `cfg` (use [`Upstreams::with_tls`] with the one start-up
    /// checked, to build it once). If that fails, connections to `https://` servers fail.
    pub fn new(cfg: &config::Upstream, metrics: UpstreamPool) -> Upstreams {
        let tls = TlsClient::for_upstreams(cfg).unwrap_or_else(|e| {
            tracing::error!(error = %e, "https:// upstreams cannot be reached");
            None
        });
        Upstreams::with_tls(cfg, metrics, tls.as_ref())
    }

    /// A pool for the configured servers, counting in `metrics`; `tls` (from
    /// [`TlsClient::for_upstreams`]) connects to the `https://` ones.
    pub fn with_tls(
        cfg: &config::Upstream,
        metrics: UpstreamPool,
        tls: Option<&TlsClient>,
    ) -> Upstreams {
        let weights: Vec<u32> = cfg.servers.iter().map(|s| s.weight).collect();
        Upstreams {
            peers: cfg
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let label = s.label(i);
                    Arc::new(Peer {
                        authority: s.url.authority.clone(),
                        host: HeaderValue::from_str(s.url.authority.as_str()).ok(),
                        server: metrics.server(&label),
                        label,
                        down_until_ms: AtomicU64::new(0),
                        ejected_until_ms: AtomicU64::new(0),
                        failures: AtomicU32::new(0),
                        ejections: AtomicU32::new(0),
                        passing: AtomicBool::new(true),
                        in_flight: AtomicUsize::new(0),
                        pool: Mutex::new(Pool::default()),
                        room: AtomicUsize::new(cfg.connection_cap()),
                        max_connections: cfg.connection_cap(),
                        max_queued: cfg.max_queued_requests,
                        metrics: metrics.clone(),
                        port: s.url.port(),
                        transport: Transport::for_server(&s.url, tls),
                    })
                })
                .collect(),
            balancer: Balancer::new(cfg.balance, &weights),
            health_check: cfg.health_check.clone(),
            outlier: cfg.outlier_detection.clone(),
            epoch: Instant::now(),
            connect_timeout: cfg.connect_timeout.0,
            request_timeout: cfg.request_timeout.0,
            idle_timeout: cfg.idle_timeout.0,
            queue_timeout: cfg.queue_timeout.0,
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether `peer` is out of rotation: failing its health checks, ejected, or backing off
    /// after a failed connect. `now` is read at most once per pick.
    fn is_down(&self, peer: &Peer, now: &mut Option<u64>) -> bool {
        if !peer.passing.load(Ordering::Relaxed) {
            return true;
        }
        let until = peer
            .down_until_ms
            .load(Ordering::Relaxed)
            .max(peer.ejected_until_ms.load(Ordering::Relaxed));
        until != 0 && until > *now.get_or_insert_with(|| self.now_ms())
    }

    /// Whether `peer` is healthy as `upstream_healthy` and `/readyz` say: passing its health
    /// checks and not ejected by outlier detection (a connect back-off does not count).
    pub(super) fn is_healthy(&self, peer: &Peer) -> bool {
        let until = peer.ejected_until_ms.load(Ordering::Relaxed);
        peer.passing.load(Ordering::Relaxed) && (until == 0 || until <= self.now_ms())
    }

    /// The server for the next request, by `upstream.balance` among the servers in rotation
    /// ([`Balancer::pick`]); every server when none is.
    pub fn pick(&self, path_and_query: Option<&PathAndQuery>) -> Pick {
        let index = self.balancer.pick(&PickView {
            up: self,
            now: std::cell::Cell::new(None),
        });
        let uri = match path_and_query {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
        Pick { index, uri }
    }

    /// The server a request goes to when the one at `index` could not be connected to: the
    /// first after it, in round-robin order, that is in rotation; else (no other is, as
    /// [`Upstreams::pick`] then uses every server) the first that is not backing off after a
    /// failed connect of its own, whatever its health checks or ejection say.
    fn next_up(&self, index: usize) -> Option<usize> {
        let n = self.peers.len();
        let mut now = None;
        let after = || (1..n).map(|i| (index + i) % n);
        after()
            .find(|&i| !self.is_down(&self.peers[i], &mut now))
            .or_else(|| {
                after().find(|&i| {
                    let until = self.peers[i].down_until_ms.load(Ordering::Relaxed);
                    until == 0 || until <= *now.get_or_insert_with(|| self.now_ms())
                })
            })
    }

    /// Records that the server at `index` refused or could not be reached: it is skipped for
    /// the back-off from now, and the failure counts for outlier detection.
    fn mark_down(&self, index: usize) {
        let until = self.now_ms() + BACKOFF.as_millis() as u64;
        self.peers[index]
            .down_until_ms
            .store(until, Ordering::Relaxed);
        self.outcome(index, true);
    }

    /// Outlier detection: counts a failure (connect failure, 5xx) or a success of the server
    /// at `index`. The `consecutive_failures`-th failure in a row ejects it for
    /// `base_ejection_time` × its ejections since it last answered well (at most
    /// `max_ejection_time`), unless it is the last server in rotation. A success clears both
    /// counts.
    fn outcome(&self, index: usize, failed: bool) {
        let peer = &self.peers[index];
        let threshold = self.outlier.consecutive_failures;
        if !failed {
            // Read first: most answers find nothing to clear, and a store would make every
            // request write the peer's cache line.
            if peer.failures.load(Ordering::Relaxed) != 0 {
                peer.failures.store(0, Ordering::Relaxed);
            }
            if peer.ejections.load(Ordering::Relaxed) != 0
                && peer.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
            {
                peer.ejections.store(0, Ordering::Relaxed);
            }
            return;
        }
        if threshold == 0 || peer.failures.fetch_add(1, Ordering::Relaxed) + 1 != threshold {
            return;
        }
        peer.failures.store(0, Ordering::Relaxed);
        // Answers of requests sent before the ejection do not eject it again.
        if peer.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms() {
            return;
        }
        let mut now = None;
        let others_up = self
            .peers
            .iter()
            .enumerate()
            .any(|(i, p)| i != index && !self.is_down(p, &mut now));
        if !others_up {
            tracing::debug!(
                server = %peer.label,
                authority = %peer.authority,
                "upstream server failing, but the last in rotation: not ejected"
            );
            return;
        }
        let times = peer
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let length = ejection_length(&self.outlier, times);
        let until = self.now_ms() + length.as_millis() as u64;
        peer.ejected_until_ms.store(until, Ordering::Relaxed);
        peer.server.healthy.set(0);
        tracing::warn!(
            server = %peer.label,
            authority = %peer.authority,
            failures = threshold,
            ejection = ?length,
            "upstream server ejected: consecutive failures (connect failures or 5xx)"
        );
        // Its gauge comes back with it: at the end counted from now (not from when the task
        // first runs), unless a later ejection has taken its place (whose own task says when).
        let peer = peer.clone();
        let end = tokio::time::Instant::now() + length;
        spawn_from_drop(async move {
            tokio::time::sleep_until(end).await;
            if peer.ejected_until_ms.load(Ordering::Relaxed) != until {
                return;
            }
            tracing::info!(
                server = %peer.label,
                authority = %peer.authority,
                "upstream server's ejection is over: back in rotation"
            );
            if peer.passing.load(Ordering::Relaxed) {
                peer.server.healthy.set(1);
            }
        });
    }

    /// Whether at least one server is not backing off.
    pub fn any_up(&self) -> bool {
        let mut now = None;
        self.peers.iter().any(|p| !self.is_down(p, &mut now))
    }

    /// Opens, and at once closes, one TCP connection to every server together, each within
    /// `upstream.connect_timeout`: `Ok` as soon as one accepts, else each server's failure
    /// (`authority: reason`, joined by `; `). A TCP connect, not an HTTP request, so that a
    /// readiness probe costs the upstream no request and no log line; for an `https://` server
    /// too (no TLS handshake: a certificate problem shows in the requests' errors instead).
    pub async fn probe(&self) -> Result<(), String> {
        let mut tries = tokio::task::JoinSet::new();
        for peer in self.peers.iter() {
            let (peer, limit) = (peer.clone(), self.connect_timeout);
            tries.spawn(async move {
                match tokio::time::timeout(limit, TcpStream::connect(peer.socket_address())).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("{}: {e}", peer.authority)),
                    Err(_) => Err(format!(
                        "{}: no connection within {limit:?}",
                        peer.authority
                    )),
                }
            });
        }
        let mut failures = Vec::new();
        while let Some(done) = tries.join_next().await {
            match done {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(why)) => failures.push(why),
                Err(e) => failures.push(format!("probe task failed: {e}")),
            }
        }
        Err(failures.join("; "))
    }

    /// Counts and returns a queue rejection.
    fn reject(&self, reason: QueueRejection) -> SendError {
        self.metrics.queue_rejected(reason);
        SendError::Queue(reason)
    }

    /// Sends `req` to the picked server over a pooled connection (or a new one), returning the
    /// response head and the lease on its connection (`None` if the connection already ended).
    /// A request without `Host` gets the server's `host:port`. Waits in the server's queue when
    /// it is at its cap; `upstream.request_timeout` then runs from the moment a connection (or
    /// a place for one) is had. Retries as the module doc says; a server that cannot be
    /// connected to is marked down for the back-off.
    pub async fn send(
        &self,
        pick: &Pick,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        let default_host = !req.headers().contains_key(HOST);
        let mut index = pick.index;
        let mut tried = 0;
        let mut queue_deadline = None;
        let mut deadline = None;
        loop {
            let peer = &self.peers[index];
            let active = Active::new(peer);
            if default_host && let Some(host) = &peer.host {
                req.headers_mut().insert(HOST, host.clone());
            }
            let grant = match peer.acquire(self.idle_timeout) {
                Acquire::Now(grant) => grant,
                Acquire::Full => return Err(self.reject(QueueRejection::Full)),
                Acquire::Wait(rx) => {
                    let until = *queue_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + self.queue_timeout);
                    match Waiting::new(peer, rx).until(until).await {
                        Ok(grant) => grant,
                        Err(reason) => return Err(self.reject(reason)),
                    }
                }
            };
            let deadline =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.request_timeout);
            // Awaited where it is made: a binding would keep the attempt's state twice.
            match tokio::time::timeout_at(deadline, self.send_to(peer, grant, req, deadline)).await
            {
                Err(_) => {
                    peer.server.request(None);
                    return Err(SendError::Timeout(
                        peer.authority.clone(),
                        self.request_timeout,
                    ));
                }
                Ok(Ok((resp, lease))) => {
                    let status = resp.status().as_u16();
                    peer.server.request(Some(status));
                    self.outcome(index, status >= 500);
                    let lease = lease.map(|lease| Lease {
                        _active: Some(active),
                        ..lease
                    });
                    return Ok((resp, lease));
                }
                Ok(Err(Failure::Exchange(e))) => {
                    peer.server.request(None);
                    return Err(e);
                }
                Ok(Err(Failure::Connect(e, unsent))) => {
                    self.mark_down(index);
                    tried += 1;
                    let Some(next) = self.next_up(index).filter(|_| tried < self.peers.len())
                    else {
                        return Err(e);
                    };
                    tracing::warn!(
                        server = %peer.label,
                        error = %e,
                        "upstream connect failed; trying the next server"
                    );
                    self.metrics.retries.count(RetryReason::Connect);
                    index = next;
                    req = *unsent;
                }
            }
        }
    }

    /// One server's part of [`Upstreams::send`], on the connection (or place) granted: at most
    /// one retry, on a new connection in the same place. The lease is `None` in the rare case
    /// where the connection ended as the response arrived.
    async fn send_to(
        &self,
        peer: &Arc<Peer>,
        mut grant: Grant,
        mut req: Request<RequestBody>,
        deadline: tokio::time::Instant,
    ) -> Result<(Response<Incoming>, Option<Lease>), Failure> {
        loop {
            let (conn, reused) = match grant {
                Grant::Conn(conn) => (conn, true),
                // Boxed: connecting is rare, and its large state would otherwise sit in (and be
                // copied with) every request's future.
                Grant::Slot(slot) => match Box::pin(self.connect(peer, slot)).await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Err(Failure::Connect(e, Box::new(req))),
                },
            };
            let Conn {
                mut sender,
                received,
                slot,
            } = conn;
            if sender.ready().await.is_err() {
                if reused {
                    // Closed while idle; nothing was sent on it. A new one takes its place.
                    grant = Grant::Slot(slot);
                    continue;
                }
                let e = SendError::Connect("connection closed at once".into());
                return Err(Failure::Connect(e, Box::new(req)));
            }
            // Copied only when a failure after sending could be retried: the head is gone
            // once hyper has written it.
            let copy = (reused && may_send_twice(&req)).then(|| copy_head(&req));
            let received_before = received.load(Ordering::Relaxed);
            let sending: Sending = Box::pin(sender.try_send_request(req));
            let mut flight = InFlight {
                sending: Some(sending),
                conn: Some(Conn {
                    sender,
                    received,
                    slot,
                }),
                peer,
                deadline,
            };
            let head = poll_fn(|cx| flight.poll_head(cx)).await;
            let sending = flight.sending.take();
            let Some(Conn {
                sender,
                received,
                slot,
            }) = flight.conn.take()
            else {
                // Never: only `InFlight`'s drop takes the connection.
                return Err(lost());
            };
            drop(flight);
            let (result, sender) = match (head, sending) {
                (Some(result), _) => (result, Some(sender)),
                (None, Some(sending)) => {
                    // The connection ended with the request still in hyper's queue, where it
                    // stays for as long as the queue has a sender (hyper#4122: a send racing
                    // the connection's shutdown). Dropping the sender frees the queue, which
                    // hands the request back unsent.
                    drop(sender);
                    (sending.await, None)
                }
                // Never: `poll_head` keeps the future until it has an answer.
                (None, None) => return Err(lost()),
            };
            match result {
                Ok(resp) => {
                    let lease = sender.map(|sender| Lease {
                        conn: Conn {
                            sender,
                            received,
                            slot,
                        },
                        peer: peer.clone(),
                        _active: None,
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
                        (None, Some(copy)) if nothing_received && !e.error().is_user() => {
                            // Sent, and lost: an exchange without a response.
                            peer.server.request(None);
                            copy
                        }
                        _ => {
                            let e = SendError::Exchange(peer.authority.clone(), e.into_error());
                            return Err(Failure::Exchange(e));
                        }
                    };
                    tracing::debug!(
                        error = %e.error(),
                        "reused upstream connection was closed; sending again on a new one"
                    );
                    self.metrics.retries.count(RetryReason::Closed);
                    // The failed connection's place goes to the new one.
                    drop(sender);
                    grant = Grant::Slot(slot);
                    // Only a reused connection is retried, and only once.
                    continue;
                }
            }
        }
    }

    /// A new connection to `peer` in `slot` (a place under its cap, or [`Slot::uncounted`] for
    /// a health check's connection of its own), opened by [`Upstreams::open`].
    pub(super) async fn connect(&self, peer: &Peer, slot: Slot) -> Result<Conn, SendError> {
        let (sender, received) = self.open(peer).await?;
        Ok(Conn {
            sender,
            received,
            slot,
        })
    }

    /// Opens a new HTTP/1.1 connection to `peer`, ready for a request: the TCP connect and, for
    /// an `https://` server, the TLS handshake (see [`upstream_tls`]), both within
    /// `upstream.connect_timeout`. Returns the request side and the count of bytes read from
    /// the upstream (above TLS: response bytes only). The error ([`SendError::Connect`]) names
    /// the server's authority and the reason, nothing from a request.
    async fn open(&self, peer: &Peer) -> Result<(Sender, Arc<AtomicU64>), SendError> {
        let failed =
            |why: &dyn std::fmt::Display| SendError::Connect(format!("{}: {why}", peer.authority));
        if let Transport::Unusable(why) = &peer.transport {
            return Err(failed(why));
        }
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let late = || {
            failed(&format_args!(
                "no connection within {:?}",
                self.connect_timeout
            ))
        };
        let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(peer.socket_address()))
            .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(failed(&e)),
            Err(_) => return Err(late()),
        };
        let _ = tcp.set_nodelay(true);
        let received = Arc::new(AtomicU64::new(0));
        let sender = match &peer.transport {
            Transport::Tls { client, name } => {
                let tls = match tokio::time::timeout_at(
                    deadline,
                    upstream_tls::handshake(client, name, tcp),
                )
                .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let hint = upstream_tls::hint(&e);
                        return Err(failed(&format_args!("TLS handshake failed: {e}{hint}")));
                    }
                    Err(_) => return Err(late()),
                };
                start_http1(Counted {
                    io: tls,
                    received: received.clone(),
                })
                .await
            }
            _ => {
                start_http1(Counted {
                    io: tcp,
                    received: received.clone(),
                })
                .await
            }
        };
        let sender = sender.map_err(|e| failed(&e))?;
        Ok((sender, received))
    }

    /// Closes the pooled connections idle for `upstream.idle_timeout` or longer, so that the
    /// upstream keeps no idle connection past it either.
    pub fn close_idle(&self) {
        let now = Instant::now();
        for peer in self.peers.iter() {
            let mut pool = peer.pool();
            let expired = pool
                .idle
                .iter()
                .take_while(|(_, since)| now.duration_since(*since) >= self.idle_timeout)
                .count();
            if expired > 0 {
                let closed: Vec<_> = pool.idle.drain(..expired).collect();
                peer.set_room(&pool);
                drop(pool);
                peer.metrics.idle.sub(expired as i64);
                peer.metrics.busy.add(expired as i64);
                // Dropping a sender ends its idle connection's task, which closes the socket;
                // dropping its slot frees its place. Both without the lock.
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

impl Drop for Upstreams {
    fn drop(&mut self) {
        // Idle connections hold their server through their slot: let them go.
        for peer in self.peers.iter() {
            let idle = std::mem::take(&mut peer.pool().idle);
            drop(idle);
        }
    }
}

/// The servers as [`Upstreams::pick`]'s balancer sees them, reading the clock at most once.
struct PickView<'a> {
    up: &'a Upstreams,
    now: std::cell::Cell<Option<u64>>,
}

impl View for PickView<'_> {
    fn in_rotation(&self, i: usize) -> bool {
        let mut now = self.now.get();
        let down = self.up.is_down(&self.up.peers[i], &mut now);
        self.now.set(now);
        !down
    }

    fn has_room(&self, i: usize) -> bool {
        self.up.peers[i].room.load(Ordering::Relaxed) > 0
    }

    fn in_flight(&self, i: usize) -> usize {
        self.up.peers[i].in_flight.load(Ordering::Relaxed)
    }
}

/// How long the `times`-th ejection in a row lasts: `base_ejection_time` × `times`, at most
/// `max_ejection_time`.
fn ejection_length(cfg: &config::OutlierDetection, times: u32) -> Duration {
    cfg.base_ejection_time
        .0
        .saturating_mul(times)
        .min(cfg.max_ejection_time.0)
}

/// Starts hyper's HTTP/1.1 client on `io`, its connection driven by a task of its own.
async fn start_http1<S>(io: Counted<S>) -> Result<Sender, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A failure for a state the exchange cannot reach.
fn lost() -> Failure {
    Failure::Exchange(SendError::Connect("upstream connection lost".into()))
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
    /// An upstream stream (TCP, or TLS over it) that counts the bytes read from it, so that a
    /// failed exchange can tell whether any of the response had arrived. Over TLS it counts
    /// the plaintext: a session ticket or an alert is not a response byte.
    struct Counted<S> {
        #[pin]
        io: S,
        received: Arc<AtomicU64>,
    }
}

impl<S: AsyncRead> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.received.fetch_add(read as u64, Ordering::Relaxed);
        }
        res
    }
}

impl<S: AsyncWrite> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use http::Method;

    #[test]
    fn an_ejection_lasts_the_base_times_the_ejections_in_a_row_up_to_the_most() {
        // (base s, most s, ejections in a row, length s)
        let rows = [
            (30, 300, 1, 30),
            (30, 300, 2, 60),
            (30, 300, 10, 300),
            (30, 300, 11, 300),
            (30, 300, u32::MAX, 300),
            (1, 1, 5, 1),
            (7, 20, 2, 14),
        ];
        for (base, most, times, want) in rows {
            let cfg = config::OutlierDetection {
                consecutive_failures: 5,
                base_ejection_time: Duration::from_secs(base).into(),
                max_ejection_time: Duration::from_secs(most).into(),
            };
            assert_eq!(
                ejection_length(&cfg, times),
                Duration::from_secs(want),
                "{base}s × {times} up to {most}s"
            );
        }
    }

    /// What happens once a server's first ejection is over, before its end is seen.
    #[derive(Debug)]
    enum AfterEjection {
        /// Nothing: it is back in rotation.
        Nothing,
        /// It fails again and is ejected a second time.
        EjectedAgain,
        /// It fails its health checks.
        FailsChecks,
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_healthy_gauge_says_what_the_rotation_does_when_an_ejection_ends() {
        use AfterEjection::*;
        // (what happens, whether the task that marks the ejection's end runs at once or only
        // after the ejection is over)
        let rows = [
            (Nothing, true),
            (Nothing, false),
            (EjectedAgain, true),
            (FailsChecks, true),
        ];
        for (then, at_once) in rows {
            let cfg = config::Upstream {
                servers: (0..2)
                    .map(|i| format!("http://127.0.0.1:{}", 8080 + i).parse().unwrap())
                    .collect(),
                outlier_detection: config::OutlierDetection {
                    consecutive_failures: 1,
                    base_ejection_time: Duration::from_millis(40).into(),
                    max_ejection_time: Duration::from_secs(1).into(),
                },
                ..Default::default()
            };
            let up = Upstreams::new(&cfg, Metrics::new(&[]).upstream_pool());
            let peer = up.peers[0].clone();
            up.outcome(0, true);
            assert_eq!(peer.server.healthy.get(), 0, "{then:?}: ejected");
            if at_once {
                tokio::task::yield_now().await;
            }
            // The ejection is over; the task that marks its end has not run since (one thread,
            // not yielded to), as when it is woken a little late.
            std::thread::sleep(Duration::from_millis(60));
            match then {
                Nothing => {}
                EjectedAgain => up.outcome(0, true),
                FailsChecks => {
                    peer.passing.store(false, Ordering::Relaxed);
                    peer.server.healthy.set(0);
                }
            }
            // The first ejection's end is seen.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(
                peer.server.healthy.get() == 1,
                up.is_healthy(&peer),
                "{then:?}, task at once: {at_once}: the gauge and the rotation"
            );
        }
    }

    fn upstreams(n: usize) -> Upstreams {
        limited(n, 1024, 1024)
    }

    /// `n` servers with `max_connections` and `max_queued_requests`.
    fn limited(n: usize, max_connections: usize, max_queued_requests: usize) -> Upstreams {
        let cfg = config::Upstream {
            servers: (0..n)
                .map(|i| format!("http://127.0.0.1:{}", 8080 + i).parse().unwrap())
                .collect(),
            max_connections,
            max_queued_requests,
            ..Default::default()
        };
        Upstreams::new(&cfg, Metrics::new(&[]).upstream_pool())
    }

    fn slot(acquired: Acquire) -> Slot {
        match acquired {
            Acquire::Now(Grant::Slot(slot)) => slot,
            Acquire::Now(Grant::Conn(_)) => panic!("a connection, not a place"),
            Acquire::Wait(_) => panic!("waits"),
            Acquire::Full => panic!("full"),
        }
    }

    fn waiter(acquired: Acquire) -> oneshot::Receiver<Grant> {
        match acquired {
            Acquire::Wait(rx) => rx,
            Acquire::Now(_) => panic!("granted at once"),
            Acquire::Full => panic!("full"),
        }
    }

    fn granted_slot(rx: &mut oneshot::Receiver<Grant>) -> Option<Slot> {
        match rx.try_recv() {
            Ok(Grant::Slot(slot)) => Some(slot),
            Ok(Grant::Conn(_)) => panic!("a connection, not a place"),
            Err(_) => None,
        }
    }

    #[test]
    fn places_are_given_up_to_the_cap_then_in_turn_to_the_waiters_and_the_rest_refused() {
        let up = limited(1, 2, 2);
        let peer = &up.peers[0];
        let idle = Duration::from_secs(4);
        let first = slot(peer.acquire(idle));
        let second = slot(peer.acquire(idle));
        assert_eq!(peer.room.load(Ordering::Relaxed), 0);
        let mut w1 = waiter(peer.acquire(idle));
        let mut w2 = waiter(peer.acquire(idle));
        assert!(matches!(peer.acquire(idle), Acquire::Full));
        assert_eq!(up.metrics.busy.get(), 2);
        // A place freed goes to the oldest waiter, not to a newcomer.
        drop(first);
        let third = granted_slot(&mut w1).expect("the first waiter has the place");
        assert!(granted_slot(&mut w2).is_none());
        assert_eq!(peer.room.load(Ordering::Relaxed), 0);
        // A waiter that leaves is swept when the queue is full, so its place serves another.
        drop(w2);
        let mut w3 = waiter(peer.acquire(idle));
        let w4 = waiter(peer.acquire(idle));
        assert!(matches!(peer.acquire(idle), Acquire::Full));
        drop(second);
        let fourth = granted_slot(&mut w3).expect("the oldest live waiter has the place");
        drop(w4);
        // With no waiter left, places free.
        drop(third);
        drop(fourth);
        assert_eq!(peer.pool().open, 0);
        assert_eq!(peer.room.load(Ordering::Relaxed), 2);
        assert_eq!(up.metrics.busy.get(), 0);
    }

    #[test]
    fn no_queue_refuses_at_once_at_the_cap() {
        let up = limited(1, 1, 0);
        let peer = &up.peers[0];
        let held = slot(peer.acquire(Duration::from_secs(4)));
        assert!(matches!(
            peer.acquire(Duration::from_secs(4)),
            Acquire::Full
        ));
        drop(held);
        drop(slot(peer.acquire(Duration::from_secs(4))));
    }

    #[test]
    fn round_robin_skips_a_server_at_its_cap_and_takes_turns_when_all_are() {
        let up = limited(2, 1, 8);
        let idle = Duration::from_secs(4);
        let on_first = slot(up.peers[0].acquire(idle));
        let picked: Vec<usize> = (0..4).map(|_| up.pick(None).index).collect();
        assert_eq!(picked, [1, 1, 1, 1]);
        let on_second = slot(up.peers[1].acquire(idle));
        let picked: Vec<usize> = (0..4).map(|_| up.pick(None).index).collect();
        assert_eq!(picked, [0, 1, 0, 1]);
        drop((on_first, on_second));
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
    fn with_no_other_server_in_rotation_failover_takes_one_out_of_rotation_but_not_one_refusing() {
        let up = upstreams(3);
        // Every server failing its health checks: none in rotation, every one used.
        for peer in up.peers.iter() {
            peer.passing.store(false, Ordering::Relaxed);
        }
        assert_eq!(up.next_up(0), Some(1));
        up.mark_down(1);
        assert_eq!(up.next_up(0), Some(2));
        up.mark_down(2);
        assert_eq!(up.next_up(0), None);
        // One other server in rotation: it is taken before any out of rotation.
        let up = upstreams(3);
        up.peers[1].passing.store(false, Ordering::Relaxed);
        assert_eq!(up.next_up(0), Some(2));
        up.mark_down(2);
        assert_eq!(up.next_up(0), Some(1));
    }

    #[test]
    fn a_single_server_has_no_next() {
        let up = upstreams(1);
        assert_eq!(up.next_up(0), None);
        assert_eq!(up.pick(None).index, 0);
    }
}

/// The pool against a real HTTP/1.1 server on loopback: the cap, the queue's order and
/// timeout, idle connections closed, and which failed exchanges are sent again.
#[cfg(test)]
mod pool_tests {
    use super::*;
    use crate::metrics::Metrics;
    use bytes::Bytes;
    use http::Method;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback HTTP/1.1 server that answers every request with its path, after
    /// `?ms=N` milliseconds when asked, and counts its connections.
    struct Server {
        addr: std::net::SocketAddr,
        /// The request targets, in the order they arrived.
        seen: Arc<Mutex<Vec<String>>>,
        accepted: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
        max_open: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Server {
        async fn start() -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let accepted = Arc::new(AtomicUsize::new(0));
            let open = Arc::new(AtomicUsize::new(0));
            let max_open = Arc::new(AtomicUsize::new(0));
            let (seen2, accepted2, open2, max_open2) = (
                seen.clone(),
                accepted.clone(),
                open.clone(),
                max_open.clone(),
            );
            let task = tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    accepted2.fetch_add(1, Ordering::SeqCst);
                    let now = open2.fetch_add(1, Ordering::SeqCst) + 1;
                    max_open2.fetch_max(now, Ordering::SeqCst);
                    let (seen, open) = (seen2.clone(), open2.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let target = req.uri().to_string();
                                seen.lock().unwrap().push(target.clone());
                                let ms = req
                                    .uri()
                                    .query()
                                    .and_then(|q| q.strip_prefix("ms="))
                                    .and_then(|ms| ms.parse().ok())
                                    .unwrap_or(0);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(target))))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
            Server {
                addr,
                seen,
                accepted,
                open,
                max_open,
                task,
            }
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// A pool of one server at `addr`, its config changed by `edit`, and the metrics it counts in.
    fn pool(
        addr: std::net::SocketAddr,
        edit: impl FnOnce(&mut config::Upstream),
    ) -> (Arc<Upstreams>, Metrics) {
        let mut cfg = config::Upstream {
            servers: vec![format!("http://{addr}").parse().unwrap()],
            ..Default::default()
        };
        edit(&mut cfg);
        let metrics = Metrics::new(&[]);
        (
            Arc::new(Upstreams::new(&cfg, metrics.upstream_pool())),
            metrics,
        )
    }

    fn request(method: Method, target: &str, body: &'static [u8]) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::whole(Bytes::from_static(body), None));
        *req.method_mut() = method;
        *req.uri_mut() = target.parse().unwrap();
        req
    }

    /// Sends `target` as a GET, reads the response to its end and gives the connection back:
    /// the response body.
    async fn exchange(up: &Upstreams, target: &str) -> Result<String, SendError> {
        let req = request(Method::GET, target, b"");
        let pick = up.pick(req.uri().path_and_query());
        let (resp, lease) = up.send(&pick, req).await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if let Some(lease) = lease {
            lease.release();
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// The value of one sample of the Prometheus text, 0 when absent.
    fn sample(metrics: &Metrics, series: &str) -> f64 {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (up to 5 s) until `check` holds.
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_never_has_more_connections_than_its_cap_and_every_request_is_answered() {
        for cap in [1, 2, 3] {
            let server = Server::start().await;
            let (up, _metrics) = pool(server.addr, |c| c.max_connections = cap);
            let tasks: Vec<_> = (0..12)
                .map(|i| {
                    let up = up.clone();
                    tokio::spawn(async move { exchange(&up, &format!("/r{i}?ms=50")).await })
                })
                .collect();
            for (i, t) in tasks.into_iter().enumerate() {
                let body = t.await.unwrap().expect("answered");
                assert_eq!(body, format!("/r{i}?ms=50"), "cap {cap}");
            }
            assert_eq!(server.max_open.load(Ordering::SeqCst), cap, "cap {cap}");
            assert_eq!(
                server.accepted.load(Ordering::SeqCst),
                cap,
                "cap {cap}: reused"
            );
            assert_eq!(server.seen().len(), 12, "cap {cap}");
            assert_eq!(up.metrics.busy.get(), 0, "cap {cap}: all back");
            assert_eq!(up.metrics.idle.get(), cap as i64, "cap {cap}");
            assert_eq!(up.metrics.queued.get(), 0, "cap {cap}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_waiting_for_a_connection_get_it_first_in_first_out() {
        let server = Server::start().await;
        let (up, _metrics) = pool(server.addr, |c| c.max_connections = 1);
        let holder = {
            let up = up.clone();
            tokio::spawn(async move { exchange(&up, "/hold?ms=400").await })
        };
        eventually("the first request reached the server", || {
            server.seen().len() == 1
        })
        .await;
        let mut waiting = Vec::new();
        for name in ["/a", "/b", "/c", "/d"] {
            let up2 = up.clone();
            waiting.push(tokio::spawn(async move { exchange(&up2, name).await }));
            let queued = waiting.len() as i64;
            eventually("queued", || up.metrics.queued.get() == queued).await;
        }
        holder.await.unwrap().expect("answered");
        for w in waiting {
            w.await.unwrap().expect("answered");
        }
        assert_eq!(server.seen(), ["/hold?ms=400", "/a", "/b", "/c", "/d"]);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_gets_a_queue_rejection_when_the_queue_is_full_or_its_wait_is_over() {
        // (queue places, what the request over the cap gets)
        let rows = [(0, QueueRejection::Full), (1, QueueRejection::Timeout)];
        for (places, reason) in rows {
            let server = Server::start().await;
            let (up, metrics) = pool(server.addr, |c| {
                c.max_connections = 1;
                c.max_queued_requests = places;
                c.queue_timeout = Duration::from_millis(200).into();
            });
            let holder = {
                let up = up.clone();
                tokio::spawn(async move { exchange(&up, "/hold?ms=3000").await })
            };
            eventually("the first request reached the server", || {
                server.seen().len() == 1
            })
            .await;
            let got = exchange(&up, "/over").await;
            assert!(
                matches!(got, Err(SendError::Queue(r)) if r == reason),
                "{places} places: {got:?}"
            );
            assert!(
                !holder.is_finished(),
                "{places} places: rejected before the connection freed"
            );
            let label = match reason {
                QueueRejection::Full => "full",
                QueueRejection::Timeout => "timeout",
            };
            let series =
                format!("webprom_edge_upstream_queue_rejections_total{{reason=\"{label}\"}}");
            assert_eq!(sample(&metrics, &series), 1.0, "{places} places");
            assert_eq!(up.metrics.queued.get(), 0, "{places} places");
            holder.await.unwrap().expect("answered");
            assert_eq!(
                server.seen(),
                ["/hold?ms=3000"],
                "{places} places: nothing sent"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_idle_past_the_idle_timeout_is_closed_and_a_younger_one_kept() {
        let server = Server::start().await;
        let (up, _metrics) = pool(server.addr, |c| {
            c.idle_timeout = Duration::from_secs(2).into();
        });
        exchange(&up, "/one").await.expect("answered");
        assert_eq!(up.metrics.idle.get(), 1);
        // Younger than the idle timeout: kept, and reused.
        up.close_idle();
        assert_eq!(up.metrics.idle.get(), 1);
        exchange(&up, "/two").await.expect("answered");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "reused");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        up.close_idle();
        assert_eq!(up.metrics.idle.get(), 0);
        assert_eq!(up.metrics.busy.get(), 0);
        eventually("the server saw the connection closed", || {
            server.open.load(Ordering::SeqCst) == 0
        })
        .await;
        exchange(&up, "/three").await.expect("answered");
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            2,
            "a new connection"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_opened_outside_the_pool_is_ready_and_takes_no_place() {
        let server = Server::start().await;
        let (up, _metrics) = pool(server.addr, |c| c.max_connections = 1);
        // As a health check opens its own (`proxy/health.rs`).
        let Ok(Conn { mut sender, .. }) = up.connect(&up.peers[0], Slot::uncounted()).await else {
            panic!("not connected");
        };
        sender.ready().await.expect("ready");
        let resp = sender
            .send_request(request(Method::GET, "/outside", b""))
            .await
            .expect("answered");
        assert_eq!(resp.status(), 200);
        assert_eq!(server.seen(), ["/outside"]);
        // The pool's one place is still free.
        assert_eq!(up.metrics.busy.get(), 0);
        exchange(&up, "/pooled").await.expect("answered");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_idle_past_the_idle_timeout_is_never_reused() {
        let server = Server::start().await;
        let (up, _metrics) = pool(server.addr, |c| {
            c.idle_timeout = Duration::from_millis(200).into();
        });
        exchange(&up, "/one").await.expect("answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
        exchange(&up, "/two").await.expect("answered");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(up.metrics.idle.get(), 1);
    }

    /// A raw loopback server that answers the first request of each connection (keep-alive,
    /// with `Content-Length`) and closes the connection on reading the second, unanswered:
    /// a keep-alive connection the upstream dropped while a request was on its way.
    /// Counts the request heads it read.
    async fn closing_after_one() -> (
        std::net::SocketAddr,
        Arc<AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(AtomicUsize::new(0));
        let counted = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for answered in [true, false] {
                        // The head, then its body by Content-Length.
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            if !read_more(&mut tcp, &mut buf).await {
                                return;
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + len {
                            if !read_more(&mut tcp, &mut buf).await {
                                return;
                            }
                        }
                        buf.drain(..end + len);
                        counted.fetch_add(1, Ordering::SeqCst);
                        if answered {
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if tcp.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Dropped: closed with the second request unanswered.
                });
            }
        });
        (addr, heads, task)
    }

    /// Reads what `tcp` has next onto `buf`; false at its end or on an error.
    async fn read_more(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 4096];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_lost_on_a_reused_connection_is_sent_again_only_when_it_may_be_sent_twice() {
        // (method, body, sent again on a new connection)
        let rows: [(Method, &'static [u8], bool); 6] = [
            (Method::GET, b"", true),
            (Method::HEAD, b"", true),
            (Method::PUT, b"", true),
            (Method::DELETE, b"", true),
            (Method::POST, b"", false),
            (Method::PUT, b"payload", false),
        ];
        for (method, body, again) in rows {
            let row = format!("{method} with {} body bytes", body.len());
            let (addr, heads, task) = closing_after_one().await;
            let (up, metrics) = pool(addr, |_| {});
            // The first exchange leaves the connection idle in the pool.
            exchange(&up, "/first").await.expect("answered");
            let req = request(method.clone(), "/second", body);
            let pick = up.pick(req.uri().path_and_query());
            let got = up.send(&pick, req).await;
            let retries = sample(
                &metrics,
                "webprom_edge_upstream_retries_total{reason=\"closed\"}",
            );
            // Every exchange sent is counted on the server: the lost one as "error".
            let class = |c: &str| {
                sample(
                    &metrics,
                    &format!(
                        "webprom_edge_upstream_requests_total{{server=\"0\",status_class=\"{c}\"}}"
                    ),
                )
            };
            assert_eq!(class("error"), 1.0, "{row}");
            assert_eq!(class("2xx"), if again { 2.0 } else { 1.0 }, "{row}");
            if again {
                let (resp, _lease) = got.unwrap_or_else(|e| panic!("{row}: {e}"));
                assert_eq!(resp.status(), 200, "{row}");
                assert_eq!(heads.load(Ordering::SeqCst), 3, "{row}: sent twice");
                assert_eq!(retries, 1.0, "{row}");
            } else {
                assert!(
                    matches!(got, Err(SendError::Exchange(..))),
                    "{row}: {:?}",
                    got.err()
                );
                assert_eq!(heads.load(Ordering::SeqCst), 2, "{row}: sent once");
                assert_eq!(retries, 0.0, "{row}");
            }
            task.abort();
        }
    }
}
