//! `upstream.balance` and passive outlier detection against real origins on loopback:
//! least_request sends less to a slow server than round robin does, weighted round robin gives
//! exact shares, a server answering 5xx is ejected for a back-off that grows while it keeps
//! failing (never the last in rotation), servers' names are their metric labels, and a bad
//! balancing value stops the start naming its key.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::origin::{Origin, with_servers};
use common::{Proto, Proxy, base_config, bin, eventually, get, sample, set, unlimited_proxy};

async fn metrics(proxy: &Proxy) -> String {
    proxy.admin_get("/metrics").await.1
}

/// A proxy in front of `servers` (TOML array text) with `upstream.balance = balance` and
/// `extra` TOML appended.
async fn proxy(servers: &str, balance: &str, extra: &str) -> Proxy {
    unlimited_proxy("http://127.0.0.1:1", |cfg| {
        let cfg = set(&cfg, "upstream", "balance", &format!("\"{balance}\""));
        with_servers(&cfg, servers, extra)
    })
    .await
}

/// `conns` connections each sending `each` GETs one after the other; every answer must be
/// `want`.
async fn load(proxy: &Proxy, conns: usize, each: usize, want: u16) {
    let client = proxy.client();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = client.connect(Proto::H1).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                assert_eq!(conn.send(get("/")).await.status, want);
            }
        }));
    }
    for t in tasks {
        t.await.expect("every answer as wanted");
    }
}

fn list(origins: &[&Origin]) -> String {
    let urls: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.url())).collect();
    format!("[{}]", urls.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_a_slow_server_than_round_robin_does() {
    // (balance, the slow server's share of 240 requests)
    let mut shares = Vec::new();
    for balance in ["round_robin", "least_request"] {
        let (fast1, fast2, slow) = (
            Origin::start().await,
            Origin::start().await,
            Origin::start().await,
        );
        slow.delay_ms.store(100, Ordering::SeqCst);
        let proxy = proxy(&list(&[&fast1, &fast2, &slow]), balance, "").await;
        load(&proxy, 8, 30, 200).await;
        let total = fast1.requests() + fast2.requests() + slow.requests();
        assert_eq!(total, 240, "{balance}");
        shares.push((balance, slow.requests()));
    }
    eprintln!("the slow server's share of 240 requests: {shares:?}");
    let (rr, lr) = (shares[0].1, shares[1].1);
    // Round robin gives each server its turn: a third, whatever its speed.
    assert_eq!(rr, 80, "{shares:?}");
    assert!(
        lr * 2 < rr,
        "least_request sent the slow server {lr}: {shares:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_gives_exact_shares_counted_under_the_servers_names() {
    let (heavy, light) = (Origin::start().await, Origin::start().await);
    let servers = format!(
        "[{{ url = \"{}\", name = \"heavy\", weight = 3 }}, {{ url = \"{}\", name = \"light\" }}]",
        heavy.url(),
        light.url()
    );
    let proxy = proxy(&servers, "weighted", "").await;
    load(&proxy, 8, 500, 200).await;
    assert_eq!((heavy.requests(), light.requests()), (3000, 1000));
    let m = metrics(&proxy).await;
    for (server, n) in [("heavy", 3000.0), ("light", 1000.0)] {
        let series = format!(
            "webprom_edge_upstream_requests_total{{server=\"{server}\",status_class=\"2xx\"}}"
        );
        assert_eq!(sample(&m, &series), n, "{server}");
        let healthy = format!("webprom_edge_upstream_healthy{{server=\"{server}\"}}");
        assert_eq!(sample(&m, &healthy), 1.0, "{server}");
    }
    // Only configured names (or indexes) are label values.
    for line in m.lines().filter(|l| l.contains("server=\"")) {
        assert!(
            line.contains("server=\"heavy\"") || line.contains("server=\"light\""),
            "{line}"
        );
    }
}

async fn healthy(proxy: &Proxy, server: &str) -> f64 {
    let series = format!("webprom_edge_upstream_healthy{{server=\"{server}\"}}");
    sample(&metrics(proxy).await, &series)
}

/// How long `upstream_healthy{server}` stays 0 from now (it is 0 now).
async fn ejected_for(proxy: &Proxy, server: &str) -> Duration {
    let since = Instant::now();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || (healthy(proxy, server).await == 1.0).then_some(()),
        || format!("{server} never came back"),
    )
    .await;
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_5xx_is_ejected_for_longer_each_time_and_traffic_moves() {
    let (good, bad) = (Origin::start().await, Origin::start().await);
    bad.status.store(503, Ordering::SeqCst);
    let servers = format!(
        "[{{ url = \"{}\", name = \"good\" }}, {{ url = \"{}\", name = \"bad\" }}]",
        good.url(),
        bad.url()
    );
    let outlier = "[upstream.outlier_detection]\nconsecutive_failures = 3\n\
                   base_ejection_time = \"1s\"\nmax_ejection_time = \"10s\"";
    let proxy = proxy(&servers, "round_robin", outlier).await;
    let client = proxy.client();
    let mut conn = client.connect(Proto::H1).await;
    // Round robin, one request at a time: the bad server's third 503 ejects it.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(conn.send(get("/")).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 503, 200, 503, 200, 503]);
    assert_eq!(healthy(&proxy, "bad").await, 0.0);
    for _ in 0..20 {
        assert_eq!(
            conn.send(get("/")).await.status,
            200,
            "ejected: all to good"
        );
    }
    assert_eq!(bad.requests(), 3);
    let first = ejected_for(&proxy, "bad").await;

    // Still failing when it comes back: three more 503s eject it for twice as long.
    let mut to_bad = 0;
    while to_bad < 3 {
        if conn.send(get("/")).await.status == 503 {
            to_bad += 1;
        }
    }
    assert_eq!(healthy(&proxy, "bad").await, 0.0);
    let second = ejected_for(&proxy, "bad").await;
    assert!(
        first < Duration::from_millis(1900),
        "first ejection {first:?}"
    );
    assert!(
        second >= Duration::from_millis(1900),
        "second ejection {second:?}"
    );

    // Mended: back in rotation, its answers clear the count.
    bad.status.store(200, Ordering::SeqCst);
    let before = bad.requests();
    for _ in 0..10 {
        assert_eq!(conn.send(get("/")).await.status, 200);
    }
    assert_eq!(bad.requests(), before + 5);
    let m = metrics(&proxy).await;
    let series = "webprom_edge_upstream_requests_total{server=\"bad\",status_class=\"5xx\"}";
    assert_eq!(sample(&m, series), 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_server_in_rotation_is_never_ejected() {
    // (row, statuses of the servers)
    let rows: [(&str, &[u16]); 2] = [("one server", &[503]), ("both failing", &[503, 502])];
    for (row, statuses) in rows {
        let mut origins = Vec::new();
        for &s in statuses {
            let o = Origin::start().await;
            o.status.store(s, Ordering::SeqCst);
            origins.push(o);
        }
        let refs: Vec<&Origin> = origins.iter().collect();
        let outlier = "[upstream.outlier_detection]\nconsecutive_failures = 2";
        let proxy = proxy(&list(&refs), "round_robin", outlier).await;
        let client = proxy.client();
        let mut conn = client.connect(Proto::H1).await;
        for _ in 0..12 {
            assert!(conn.send(get("/")).await.status.is_server_error(), "{row}");
        }
        let seen: usize = origins.iter().map(Origin::requests).sum();
        assert_eq!(seen, 12, "{row}");
        let m = metrics(&proxy).await;
        let in_rotation: f64 = (0..statuses.len())
            .map(|i| {
                sample(
                    &m,
                    &format!("webprom_edge_upstream_healthy{{server=\"{i}\"}}"),
                )
            })
            .sum();
        assert_eq!(in_rotation, 1.0, "{row}: one stays\n{m}");
        // The one left is the one still tried.
        let last = origins.iter().map(Origin::requests).max().unwrap_or(0);
        for _ in 0..4 {
            conn.send(get("/")).await;
        }
        let after = origins.iter().map(Origin::requests).max().unwrap_or(0);
        assert_eq!(after, last + 4, "{row}");
    }
}

#[test]
fn a_bad_balancing_value_stops_the_start_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_config(dir.path(), "http://127.0.0.1:8080");
    let two = |second: &str| {
        set(
            &base,
            "upstream",
            "servers",
            &format!("[\"http://127.0.0.1:8080\", {second}]"),
        )
    };
    // (config, the key named)
    let rows = [
        (
            set(&base, "upstream", "balance", "\"fastest\""),
            "upstream.balance",
        ),
        (
            two("{ url = \"http://127.0.0.1:8081\", weight = 0 }"),
            "upstream.servers[1].weight",
        ),
        (
            two("{ url = \"http://127.0.0.1:8081\", name = \"has space\" }"),
            "upstream.servers[1].name",
        ),
        (
            format!("{base}\n[upstream.health_check]\nexpect_status = \"ok\"\n"),
            "upstream.health_check.expect_status",
        ),
        (
            format!("{base}\n[upstream.health_check]\npath = \"status\"\n"),
            "upstream.health_check.path",
        ),
        (
            format!(
                "{base}\n[upstream.outlier_detection]\nbase_ejection_time = \"1m\"\n\
                 max_ejection_time = \"1s\"\n"
            ),
            "upstream.outlier_detection.max_ejection_time",
        ),
    ];
    for (config, key) in rows {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &config).unwrap();
        let out = Command::new(bin())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{key}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_counted_on_the_server_that_got_it_never_on_one_that_refused() {
    let live = Origin::start().await;
    let servers = format!(
        "[{{ url = \"http://{}\", name = \"dead\" }}, {{ url = \"{}\", name = \"live\" }}]",
        common::dead_addr(),
        live.url()
    );
    let proxy = proxy(&servers, "round_robin", "").await;
    let client = proxy.client();
    for _ in 0..4 {
        assert_eq!(client.get(Proto::H1, "/").await.status, 200);
    }
    let m = metrics(&proxy).await;
    let dead: f64 = m
        .lines()
        .filter(|l| l.starts_with("webprom_edge_upstream_requests_total{server=\"dead\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead, 0.0, "{m}");
    let series = "webprom_edge_upstream_requests_total{server=\"live\",status_class=\"2xx\"}";
    assert_eq!(sample(&m, series), 4.0, "{m}");
    assert_eq!(live.requests(), 4);
}
