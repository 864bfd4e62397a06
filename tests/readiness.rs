//! `/readyz` tells the truth about the upstreams (issue 13 §2): 200 `ready` only when an
//! upstream server accepts a TCP connection, probed at most once a second; else 503
//! `not ready: <reason>`, also while draining.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::*;
use http::StatusCode;

/// Asks `/readyz` until its status is `want` (within the 1 s probe cache plus margin).
async fn readyz_becomes(proxy: &Proxy, want: StatusCode, row: &str) -> String {
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            let (status, body) = proxy.admin_get("/readyz").await;
            (status == want).then_some(body)
        },
        || format!("{row}: /readyz never answered {want}"),
    )
    .await
}

fn servers(list: &[SocketAddr]) -> String {
    let urls: Vec<String> = list.iter().map(|a| format!("\"http://{a}\"")).collect();
    format!("[{}]", urls.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_only_while_an_upstream_server_accepts_connections() {
    // (row, listening servers, dead servers, status, text in the body).
    let rows: [(&str, usize, usize, StatusCode, &str); 4] = [
        (
            "no upstream listening",
            0,
            1,
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no upstream server accepts a connection",
        ),
        ("the upstream listening", 1, 0, StatusCode::OK, "ready\n"),
        ("two servers, one down", 1, 1, StatusCode::OK, "ready\n"),
        (
            "two servers, both down",
            0,
            2,
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: ",
        ),
    ];
    for (row, live, dead, want, text) in rows {
        // A bare listener: the kernel completes the connect, as an upstream server's would.
        let listeners: Vec<TcpListener> = (0..live)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut addrs: Vec<SocketAddr> =
            listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let dead_addrs: Vec<SocketAddr> = (0..dead).map(|_| dead_addr()).collect();
        addrs.extend(&dead_addrs);
        let list = servers(&addrs);
        let proxy = Proxy::start_with(
            |c| set(&c, "upstream", "servers", &list),
            "http://127.0.0.1:1",
        )
        .await;
        let body = readyz_becomes(&proxy, want, row).await;
        assert!(body.contains(text), "{row}: {body:?}");
        if want != StatusCode::OK {
            // The reason names each server that failed (config, not personal data).
            for a in &dead_addrs {
                assert!(body.contains(&a.to_string()), "{row}: {body:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_upstream_going_down_and_coming_back() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let list = servers(&[addr]);
    let proxy = Proxy::start_with(
        |c| set(&c, "upstream", "servers", &list),
        "http://127.0.0.1:1",
    )
    .await;
    readyz_becomes(&proxy, StatusCode::OK, "up").await;

    drop(listener);
    let started = std::time::Instant::now();
    let body = readyz_becomes(&proxy, StatusCode::SERVICE_UNAVAILABLE, "gone down").await;
    assert!(body.contains(&addr.to_string()), "{body:?}");
    // Within the probe cache (1 s) and a connect.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Still down after a request failed and its back-off passed (the reported case).
    let resp = proxy.client().get(Proto::H1, "/").await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        proxy.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let _back = TcpListener::bind(addr).unwrap();
    let body = readyz_becomes(&proxy, StatusCode::OK, "come back").await;
    assert_eq!(body, "ready\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_draining_while_sigterm_drains() {
    let up = Upstream::start().await;
    let mut proxy = Proxy::start(&up.url()).await;
    readyz_becomes(&proxy, StatusCode::OK, "before").await;
    let client = proxy.client();
    let slow = tokio::spawn(async move { client.get(Proto::H1, "/slow?ms=2000").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.signal("TERM");
    let body = readyz_becomes(&proxy, StatusCode::SERVICE_UNAVAILABLE, "draining").await;
    assert_eq!(body, "not ready: draining\n");
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_readyz_requests_opens_one_probe_connection_per_second() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let list = servers(&[addr]);
    let proxy = Proxy::start_with(
        |c| set(&c, "upstream", "servers", &list),
        "http://127.0.0.1:1",
    )
    .await;
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let started = std::time::Instant::now();
    let mut asked = 0;
    while started.elapsed() < Duration::from_millis(900) {
        let (a, b) = tokio::join!(proxy.admin_get("/readyz"), proxy.admin_get("/readyz"));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
        asked += 2;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probes = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(asked >= 20, "{asked}");
    assert!(
        (1..=2).contains(&probes),
        "{asked} requests, {probes} probe connections"
    );
}
