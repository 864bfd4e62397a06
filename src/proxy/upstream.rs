//! The upstream pool: round robin over `upstream.servers`, keep-alive HTTP/1.1 connections kept
//! per server, and a short back-off for a server that refuses connections.
//!
//! A connection is lent to one request at a time ([`Lease`]) and comes back to its server's idle
//! list when the response body has been read to the end; a response cut short closes it. The
//! pool is a plain LIFO stack behind a mutex held for a push or a pop, never across an await.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::RequestBody;
use crate::config;

/// How long a server that refused a connection is skipped.
const BACKOFF: Duration = Duration::from_secs(3);
/// Idle connections kept per server.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than reused: a middlebox may have
/// forgotten it without telling either end.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Sender = http1::SendRequest<RequestBody>;

struct Peer {
    authority: Authority,
    /// Milliseconds since `Upstreams::epoch` until which the peer is skipped; 0 = healthy.
    down_until_ms: AtomicU64,
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl Peer {
    /// An idle connection that is still open, if any.
    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let mut now = None;
        while let Some((sender, since)) = idle.pop() {
            let fresh = now.get_or_insert_with(Instant::now).duration_since(since) < IDLE_TIMEOUT;
            if fresh && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push((sender, Instant::now()));
        }
    }
}

/// A pooled connection lent to one exchange; see [`Lease::release`].
pub struct Lease {
    sender: Sender,
    peer: Arc<Peer>,
}

impl Lease {
    /// Gives the connection back for the next request. Call only once the response body has
    /// been read to its end; a lease dropped instead closes its connection.
    pub fn release(self) {
        self.peer.checkin(self.sender);
    }
}

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, or `connect_timeout`).
    #[error("connecting to the upstream: {0}")]
    Connect(String),
    /// The exchange broke (or the request body failed, e.g. over its size limit).
    #[error("upstream exchange failed: {0}")]
    Exchange(#[source] hyper::Error),
}

/// The upstream servers and their pooled connections.
pub struct Upstreams {
    peers: Box<[Arc<Peer>]>,
    next: AtomicUsize,
    epoch: Instant,
    connect_timeout: Duration,
}

/// The server chosen for one request.
pub struct Pick {
    index: usize,
    /// The request target (origin form) to send.
    pub uri: Uri,
}

impl Upstreams {
    /// A pool for the configured servers.
    pub fn new(cfg: &config::Upstream) -> Upstreams {
        Upstreams {
            peers: cfg
                .servers
                .iter()
                .map(|s| {
                    Arc::new(Peer {
                        authority: s.authority.clone(),
                        down_until_ms: AtomicU64::new(0),
                        idle: Mutex::new(Vec::new()),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            connect_timeout: cfg.connect_timeout.0,
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

    /// The `host:port` of the picked server (for a request that has no `Host`).
    pub fn authority(&self, pick: &Pick) -> &Authority {
        &self.peers[pick.index].authority
    }

    /// Records that the picked server refused or could not be reached.
    pub fn mark_down(&self, pick: &Pick) {
        let until = self.now_ms() + BACKOFF.as_millis() as u64;
        self.peers[pick.index]
            .down_until_ms
            .store(until, Ordering::Relaxed);
    }

    /// Whether at least one server is not backing off.
    pub fn any_up(&self) -> bool {
        let mut now = None;
        self.peers.iter().any(|p| !self.is_down(p, &mut now))
    }

    /// Sends `req` to the picked server over a pooled connection (or a new one), returning the
    /// response head and the lease on its connection. A pooled connection that turns out to be
    /// closed before the request went out is replaced, and the request sent again.
    pub async fn send(
        &self,
        pick: &Pick,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let peer = &self.peers[pick.index];
        loop {
            let (mut sender, reused) = match peer.checkout() {
                Some(s) => (s, true),
                // Boxed: connecting is rare, and its large state would otherwise sit in (and be
                // copied with) every request's future.
                None => (Box::pin(self.connect(peer)).await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::Connect("connection closed at once".into()));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        sender,
                        peer: peer.clone(),
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // The request never left: a stale keep-alive connection. Try another.
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self, peer: &Peer) -> Result<Sender, SendError> {
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
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
