//! Active health checks (`[upstream.health_check]`) against real origins on loopback: a server
//! failing its checks leaves the rotation within `unhealthy_threshold` × `interval`, comes back
//! after `healthy_threshold` passes, and no idempotent client request gets a 502 across the
//! transitions; `/readyz` and `upstream_healthy` say how many are healthy; a check is a GET of
//! the configured path with its own User-Agent and never makes an access-log record.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::origin::{CHECKER, Origin, with_servers};
use common::{Proto, Proxy, eventually, get, sample, unlimited_proxy};

/// The checks of these tests: every 200 ms, out after 2 failures, back after 2 passes.
const INTERVAL_MS: u64 = 200;
const UNHEALTHY: u64 = 2;
const HEALTHY: u64 = 2;

fn checks(extra: &str) -> String {
    format!(
        "[upstream.health_check]\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"300ms\"\n\
         healthy_threshold = {HEALTHY}\nunhealthy_threshold = {UNHEALTHY}\n{extra}"
    )
}

/// `upstream.servers` naming each origin by a letter: `a`, `b`, …
fn named(origins: &[&Origin]) -> String {
    let list: Vec<String> = origins
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let name = char::from(b'a' + i as u8);
            format!("{{ url = \"{}\", name = \"{name}\" }}", o.url())
        })
        .collect();
    format!("[{}]", list.join(", "))
}

async fn metrics(proxy: &Proxy) -> String {
    proxy.admin_get("/metrics").await.1
}

async fn healthy(proxy: &Proxy, server: &str) -> f64 {
    let series = format!("webprom_edge_upstream_healthy{{server=\"{server}\"}}");
    sample(&metrics(proxy).await, &series)
}

/// Waits until `upstream_healthy{server}` is `want`; the time it took.
async fn healthy_becomes(proxy: &Proxy, server: &str, want: f64) -> Duration {
    let since = Instant::now();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || (healthy(proxy, server).await == want).then_some(()),
        || format!("upstream_healthy{{server=\"{server}\"}} never became {want}"),
    )
    .await;
    since.elapsed()
}

/// GET requests sent without pause on `conns` connections (HTTP/1.1 and HTTP/2 in turn)
/// until stopped: the statuses that were not 200, and how many requests were sent.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<u16>, usize)>>,
}

impl Traffic {
    async fn start(proxy: &Proxy, conns: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let client = proxy.client();
        let mut tasks = Vec::new();
        for i in 0..conns {
            let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
            let mut conn = client.connect(proto).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let (mut bad, mut sent) = (Vec::new(), 0);
                while !stop.load(Ordering::SeqCst) {
                    let resp = conn.send(get("/")).await;
                    sent += 1;
                    if resp.status != 200 {
                        bad.push(resp.status.as_u16());
                    }
                }
                (bad, sent)
            }));
        }
        Traffic { stop, tasks }
    }

    async fn finish(self) -> (Vec<u16>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut bad, mut sent) = (Vec::new(), 0);
        for t in self.tasks {
            let (b, s) = t.await.expect("the client task ran");
            bad.extend(b);
            sent += s;
        }
        (bad, sent)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_upstream_leaves_the_rotation_and_returns_after_restart_without_a_502() {
    let (a, b, c) = (
        Origin::start().await,
        Origin::start().await,
        Origin::start().await,
    );
    let servers = named(&[&a, &b, &c]);
    let proxy = unlimited_proxy(&a.url(), |cfg| with_servers(&cfg, &servers, &checks(""))).await;
    let traffic = Traffic::start(&proxy, 4).await;
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || (a.requests() > 5 && b.requests() > 5 && c.requests() > 5).then_some(()),
        || "every origin had requests".to_owned(),
    )
    .await;

    c.stop();
    let took = healthy_becomes(&proxy, "c", 0.0).await;
    let bound = Duration::from_millis(UNHEALTHY * INTERVAL_MS + 1000);
    assert!(
        took <= bound,
        "out of rotation after {took:?} (bound {bound:?})"
    );
    assert_eq!(
        proxy.admin_get("/readyz").await,
        (
            http::StatusCode::OK,
            "ready: upstreams: 2 of 3 healthy\n".to_owned()
        )
    );
    // Out of rotation, no request tries it: no connect failure (and so no retry) for longer
    // than the 3 s back-off a failed connect alone would give.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retries = "webprom_edge_upstream_retries_total{reason=\"connect\"}";
    let before = sample(&metrics(&proxy).await, retries);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(&m, retries),
        before,
        "a request tried the stopped server"
    );
    assert_eq!(healthy(&proxy, "a").await, 1.0);

    let served_before = c.requests();
    c.restart().await;
    let took = healthy_becomes(&proxy, "c", 1.0).await;
    let bound = Duration::from_millis(HEALTHY * INTERVAL_MS + 1000);
    assert!(
        took <= bound,
        "back in rotation after {took:?} (bound {bound:?})"
    );
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(20),
        async || (c.requests() > served_before + 5).then_some(()),
        || "the restarted origin had requests again".to_owned(),
    )
    .await;
    let (bad, sent) = traffic.finish().await;
    assert!(sent > 100, "only {sent} requests sent");
    assert!(bad.is_empty(), "non-200 answers: {bad:?} of {sent}");
    assert_eq!(
        proxy.admin_get("/readyz").await.1,
        "ready: upstreams: 3 of 3 healthy\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_failing_check_takes_a_server_out_and_passing_checks_bring_it_back() {
    // (row, break the origin, mend it)
    type Step = fn(&Origin);
    let rows: [(&str, Step, Step); 4] = [
        ("connection refused", |o| o.stop(), |_| {}),
        (
            "status outside expect_status",
            |o| o.status.store(500, Ordering::SeqCst),
            |o| o.status.store(200, Ordering::SeqCst),
        ),
        (
            "a 3xx outside 200-299",
            |o| o.status.store(302, Ordering::SeqCst),
            |o| o.status.store(204, Ordering::SeqCst),
        ),
        (
            "no response within the timeout",
            |o| o.delay_ms.store(1000, Ordering::SeqCst),
            |o| o.delay_ms.store(0, Ordering::SeqCst),
        ),
    ];
    for (row, break_it, mend) in rows {
        let (a, b) = (Origin::start().await, Origin::start().await);
        let servers = named(&[&a, &b]);
        let extra = checks("expect_status = \"200-299\"");
        let proxy = unlimited_proxy(&a.url(), |cfg| with_servers(&cfg, &servers, &extra)).await;
        let client = proxy.client();
        break_it(&b);
        healthy_becomes(&proxy, "b", 0.0).await;
        let (status, body) = proxy.admin_get("/readyz").await;
        assert_eq!(status, 200, "{row}");
        assert_eq!(body, "ready: upstreams: 1 of 2 healthy\n", "{row}");
        let (to_a, to_b) = (a.requests(), b.requests());
        for _ in 0..10 {
            let resp = client.get(Proto::H1, "/").await;
            assert_eq!(resp.status, 200, "{row}");
        }
        assert_eq!(a.requests(), to_a + 10, "{row}: all to the healthy server");
        assert_eq!(b.requests(), to_b, "{row}: none to the one out of rotation");

        if row == "connection refused" {
            b.restart().await;
        }
        mend(&b);
        healthy_becomes(&proxy, "b", 1.0).await;
        for _ in 0..10 {
            client.get(Proto::H1, "/").await;
        }
        assert!(b.requests() > to_b, "{row}: back in rotation");
        assert_eq!(
            proxy.admin_get("/readyz").await.1,
            "ready: upstreams: 2 of 2 healthy\n",
            "{row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_server_failing_its_checks_readyz_says_so_and_requests_still_go_to_them() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    for o in [&a, &b] {
        o.status.store(503, Ordering::SeqCst);
    }
    let servers = named(&[&a, &b]);
    let extra = checks("expect_status = \"200\"");
    let proxy = unlimited_proxy(&a.url(), |cfg| with_servers(&cfg, &servers, &extra)).await;
    healthy_becomes(&proxy, "a", 0.0).await;
    healthy_becomes(&proxy, "b", 0.0).await;
    assert_eq!(
        proxy.admin_get("/readyz").await,
        (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: upstreams: 0 of 2 healthy\n".to_owned()
        )
    );
    // No server in rotation: every server is used rather than none (their own answer, not a
    // 502 of the proxy's).
    let client = proxy.client();
    for _ in 0..4 {
        assert_eq!(client.get(Proto::H1, "/").await.status, 503);
    }
    assert_eq!((a.requests(), b.requests()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_server_out_of_rotation_a_refused_connection_still_fails_over_to_another() {
    // `a` answers every request but fails its checks (200 where 204 is expected); `b` is
    // stopped and refuses connections. Neither is in rotation, so both are used; a request
    // whose turn gives it `b` goes on to `a` instead of getting a 502.
    let (a, b) = (Origin::start().await, Origin::start().await);
    let servers = named(&[&a, &b]);
    let extra = checks("expect_status = \"204\"");
    let proxy = unlimited_proxy(&a.url(), |cfg| with_servers(&cfg, &servers, &extra)).await;
    b.stop();
    healthy_becomes(&proxy, "a", 0.0).await;
    healthy_becomes(&proxy, "b", 0.0).await;
    let client = proxy.client();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(client.get(Proto::H1, "/").await.status.as_u16());
    }
    assert_eq!(statuses, [200; 6], "{}", proxy.output());
    assert_eq!(a.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_is_a_get_of_its_path_with_its_own_user_agent_and_leaves_no_record() {
    let a = Origin::start().await;
    let servers = format!("[\"{}\"]", a.url());
    let extra = checks("path = \"/status?from=edge\"");
    let proxy = unlimited_proxy(&a.url(), |cfg| with_servers(&cfg, &servers, &extra)).await;
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(20),
        async || (a.checks() >= 3).then_some(()),
        || "three health checks".to_owned(),
    )
    .await;
    let (target, head) = a.seen.last_check.lock().unwrap().clone().expect("a check");
    assert_eq!(target, "/status?from=edge");
    assert_eq!(head["host"], a.addr.to_string().as_str());
    assert_eq!(head["user-agent"], CHECKER);
    assert_eq!(head["connection"], "close");
    assert!(!head.contains_key("x-forwarded-for"), "{head:?}");

    let client = proxy.client();
    for _ in 0..3 {
        assert_eq!(client.get(Proto::H1, "/").await.status, 200);
    }
    // Checks keep coming while the records are written: only the three requests are logged,
    // and only they are counted as upstream requests (the unnamed server's label: its index).
    let records = proxy.wait_records(3).await;
    assert!(a.checks() >= 5, "checks went on: {}", a.checks());
    assert_eq!(records.len(), 3, "{records:?}");
    let m = metrics(&proxy).await;
    let series = "webprom_edge_upstream_requests_total{server=\"0\",status_class=\"2xx\"}";
    assert_eq!(sample(&m, series), 3.0, "{m}");
    assert_eq!(a.requests(), 3);
}
