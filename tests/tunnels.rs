//! Upgraded tunnels (HTTP/1.1 `Upgrade` → 101, WebSocket): closed after `server.idle_timeout`
//! with no byte moving either way, kept open by bytes in either direction, counted in
//! `connections_open` and `tunnels_open` while open, ended by either side closing, and by the
//! drain after SIGTERM.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Conn, Proto, body, set};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream whose upgraded connections behave as the path says:
/// `/echo` (bytes echoed), `/sink` (bytes read, never answered), `/source` (a byte every
/// 100 ms, nothing read), `/close` (closed as soon as the upgrade is done).
/// `ended` counts upgraded connections whose client side reached its end.
struct TunnelUpstream {
    url: String,
    ended: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TunnelUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_upgraded(path: String, upgraded: Upgraded, ended: Arc<AtomicUsize>) {
    let mut io = TokioIo::new(upgraded);
    let mut buf = [0u8; 1024];
    match path.as_str() {
        "/echo" => {
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
        "/sink" => while let Ok(1..) = io.read(&mut buf).await {},
        "/source" => {
            let (mut rd, mut wr) = tokio::io::split(io);
            let writing = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if wr.write_all(b".").await.is_err() {
                        break;
                    }
                }
            };
            let reading = async { while let Ok(1..) = rd.read(&mut buf).await {} };
            tokio::select! { _ = writing => {}, _ = reading => {} }
        }
        _ => return,
    }
    ended.fetch_add(1, Ordering::SeqCst);
}

impl TunnelUpstream {
    async fn start() -> TunnelUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ended = Arc::new(AtomicUsize::new(0));
        let counter = ended.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let ended = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |mut req: Request<Incoming>| {
                        let ended = ended.clone();
                        let path = req.uri().path().to_owned();
                        let on_upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(upgraded) = on_upgrade.await {
                                run_upgraded(path, upgraded, ended).await;
                            }
                        });
                        async {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(StatusCode::SWITCHING_PROTOCOLS)
                                    .header("connection", "upgrade")
                                    .header("upgrade", "websocket")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TunnelUpstream { url, ended, task }
    }
}

/// A proxy with `idle_timeout` and `shutdown_grace` as given.
async fn proxy(up: &TunnelUpstream, idle: &str, grace: &str) -> common::Proxy {
    let (idle, grace) = (format!("\"{idle}\""), format!("\"{grace}\""));
    common::Proxy::start_with(
        |c| {
            let c = set(&c, "server", "idle_timeout", &idle);
            set(&c, "server", "shutdown_grace", &grace)
        },
        &up.url,
    )
    .await
}

/// Opens a tunnel through the proxy to the upstream's `path`.
async fn open(proxy: &common::Proxy, path: &str) -> TokioIo<Upgraded> {
    let Conn::H1(mut send) = proxy.client().connect(Proto::H1).await else {
        unreachable!()
    };
    let req = Request::get(path)
        .header("host", "localhost")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(body(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS, "{path}");
    TokioIo::new(hyper::upgrade::on(resp).await.unwrap())
}

/// `(connections_open, tunnels_open)` from `/metrics` (`tunnels_open` is -1 when absent).
async fn gauges(proxy: &common::Proxy) -> (i64, i64) {
    let (_, text) = proxy.admin_get("/metrics").await;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(-1)
    };
    (
        value("webprom_edge_connections_open"),
        value("webprom_edge_tunnels_open"),
    )
}

/// Waits up to `limit` for the gauges to read `want`.
async fn wait_gauges(proxy: &common::Proxy, want: (i64, i64), limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = gauges(proxy).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gauges (connections_open, tunnels_open) are {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until the end of the stream (or an error, a reset); returns when that came.
async fn read_to_end(io: &mut TokioIo<Upgraded>, limit: Duration) -> Option<Instant> {
    let mut buf = [0u8; 256];
    tokio::time::timeout(limit, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn idle_tunnels_are_closed_after_the_idle_timeout() {
    let up = TunnelUpstream::start().await;
    let proxy = proxy(&up, "300ms", "5s").await;
    let idle = Duration::from_millis(300);
    // Rows: what the upstream does with its side (nothing moves either way in each).
    for path in ["/echo", "/sink"] {
        let mut tunnels = Vec::new();
        for _ in 0..3 {
            tunnels.push((Instant::now(), open(&proxy, path).await));
        }
        wait_gauges(&proxy, (3, 3), Duration::from_secs(1)).await;
        for (opened, io) in &mut tunnels {
            let closed = read_to_end(io, idle * 10)
                .await
                .unwrap_or_else(|| panic!("{path}: idle tunnel still open after 10 × 300 ms"));
            let lived = closed - *opened;
            assert!(lived >= idle, "{path}: closed after {lived:?}");
            assert!(lived < idle * 5, "{path}: closed only after {lived:?}");
        }
        wait_gauges(&proxy, (0, 0), Duration::from_secs(2)).await;
    }
    // Both sides were closed: the upstream saw the end of the echo tunnels and the sinks.
    assert_eq!(up.ended.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn a_trickle_of_bytes_either_way_keeps_a_tunnel_open_past_the_idle_timeout() {
    let up = TunnelUpstream::start().await;
    // Bytes every 100 ms, well within the idle timeout even on a loaded machine.
    let proxy = proxy(&up, "600ms", "5s").await;
    let idle = Duration::from_millis(600);
    // Rows: (upstream path, the client writes, the client reads).
    let rows = [
        ("/echo", true, true),
        ("/sink", true, false),
        ("/source", false, true),
    ];
    for (path, writes, reads) in rows {
        let mut io = open(&proxy, path).await;
        let started = Instant::now();
        let mut got = 0;
        while started.elapsed() < idle * 5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writes {
                io.write_all(b"x").await.unwrap();
            }
            if reads {
                let mut b = [0u8; 16];
                let n = tokio::time::timeout(idle, io.read(&mut b))
                    .await
                    .unwrap_or_else(|_| panic!("{path}: no byte came back"))
                    .unwrap();
                assert!(n > 0, "{path}: tunnel closed after {:?}", started.elapsed());
                got += n;
            }
        }
        assert!(!reads || got > 0, "{path}");
        assert_eq!(
            gauges(&proxy).await,
            (1, 1),
            "{path}: still open and counted"
        );
        // Once the client's bytes stop, the idle timeout applies again (the source never stops).
        if writes {
            assert!(read_to_end(&mut io, idle * 10).await.is_some(), "{path}");
        }
        drop(io);
        wait_gauges(&proxy, (0, 0), Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn a_tunnel_counts_as_open_until_either_side_closes_it() {
    let up = TunnelUpstream::start().await;
    // The idle timeout is far off: only a side closing ends these tunnels.
    let proxy = proxy(&up, "60s", "5s").await;
    // Row: the client closes; the upstream sees the end of its side.
    let mut io = open(&proxy, "/echo").await;
    io.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    io.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    wait_gauges(&proxy, (1, 1), Duration::from_secs(1)).await;
    io.shutdown().await.unwrap();
    drop(io);
    common::eventually(
        Duration::from_secs(2),
        Duration::from_millis(20),
        async || (up.ended.load(Ordering::SeqCst) == 1).then_some(()),
        || "the upstream did not see the client's end".into(),
    )
    .await;
    wait_gauges(&proxy, (0, 0), Duration::from_secs(2)).await;

    // Row: the upstream closes; the client sees the end of its side.
    let mut io = open(&proxy, "/close").await;
    assert!(
        read_to_end(&mut io, Duration::from_secs(2)).await.is_some(),
        "the client did not see the upstream's end"
    );
    drop(io);
    wait_gauges(&proxy, (0, 0), Duration::from_secs(2)).await;
}

#[tokio::test]
async fn draining_ends_open_tunnels_within_the_shutdown_grace() {
    let up = TunnelUpstream::start().await;
    let mut proxy = proxy(&up, "60s", "2s").await;
    let mut tunnels = Vec::new();
    for path in ["/echo", "/sink", "/source"] {
        tunnels.push(open(&proxy, path).await);
    }
    wait_gauges(&proxy, (3, 3), Duration::from_secs(1)).await;
    let signalled = Instant::now();
    proxy.signal("TERM");
    for io in &mut tunnels {
        assert!(
            read_to_end(io, Duration::from_secs(4)).await.is_some(),
            "a tunnel outlived the drain"
        );
    }
    let status = proxy.wait_exit(Duration::from_secs(4));
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(3), "drain took {took:?}");
}
