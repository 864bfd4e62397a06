//! The upstream pool: round robin over `upstream.servers` with keep-alive connections, and a
//! short back-off for a server that refuses connections.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::RequestBody;
use crate::config;

/// How long a server that refused a connection is skipped.
const BACKOFF: Duration = Duration::from_secs(3);

struct Peer {
    authority: Authority,
    /// Milliseconds since `Upstreams::epoch` until which the peer is skipped; 0 = healthy.
    down_until_ms: AtomicU64,
}

/// The upstream servers and the pooled HTTP/1.1 client that reaches them.
pub struct Upstreams {
    peers: Box<[Peer]>,
    next: AtomicUsize,
    epoch: Instant,
    client: Client<HttpConnector, RequestBody>,
}

/// The server chosen for one request.
pub struct Pick {
    index: usize,
    /// The request URI rewritten to that server.
    pub uri: Uri,
}

impl Upstreams {
    /// A pool for the configured servers.
    pub fn new(cfg: &config::Upstream) -> Upstreams {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout.0));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Upstreams {
            peers: cfg
                .servers
                .iter()
                .map(|s| Peer {
                    authority: s.authority.clone(),
                    down_until_ms: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            client,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn is_down(&self, peer: &Peer, now: &mut Option<u64>) -> bool {
        let until = peer.down_until_ms.load(Ordering::Relaxed);
        until != 0 && until > *now.get_or_insert_with(|| self.now_ms())
    }

    /// The next healthy server in turn (or, if every one is backing off, the next anyway),
    /// with `path_and_query` addressed to it.
    pub fn pick(&self, path_and_query: Option<&PathAndQuery>) -> Pick {
        let n = self.peers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut now = None;
        let index = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !self.is_down(&self.peers[i], &mut now))
            .unwrap_or(start % n);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.peers[index].authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let uri = Uri::from_parts(parts).expect("scheme, authority and path are all set");
        Pick { index, uri }
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

    /// The pooled client.
    pub fn client(&self) -> &Client<HttpConnector, RequestBody> {
        &self.client
    }
}
