//! The standard `process_*` metrics and the gzip-coded `/metrics` (issue 13 §15): the proxy
//! exports its own CPU, memory, file descriptors and start time under the Prometheus client
//! names, and codes the exposition with gzip exactly when the scraper's `Accept-Encoding`
//! prefers it (RFC 9110 §12.5.3).

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A request on the admin listener with one `Accept-Encoding` line (none for `None`): the
/// response's status, headers and raw (still coded) body.
async fn admin(
    proxy: &Proxy,
    method: Method,
    accept_encoding: Option<&str>,
) -> (StatusCode, HeaderMap, Bytes) {
    let tcp = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri("/metrics")
        .header("host", "admin");
    if let Some(value) = accept_encoding {
        req = req.header("accept-encoding", value);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// The value of the one unlabelled series `name`.
fn value(text: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .collect();
    assert_eq!(values.len(), 1, "{name}:\n{text}");
    values[0]
}

/// The metric names the exposition declares (its `# TYPE` lines).
fn names(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_describe_the_running_proxy() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let (status, text) = proxy.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);

    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_threads", "gauge"),
    ] {
        assert!(
            text.contains(&format!("\n# TYPE {name} {kind}\n")),
            "{name} is not a {kind}:\n{text}"
        );
    }

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value(&text, "process_start_time_seconds");
    assert!(
        start > now - 3600.0 && start <= now + 1.0,
        "start {start}, now {now}"
    );
    let open = value(&text, "process_open_fds");
    // The proxy's own descriptors, counted in /proc as the collector does: the two listeners
    // and the access log at least, and never more than the limit.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", proxy.child.id()))
        .unwrap()
        .count() as f64;
    assert!(open >= 3.0, "open fds {open}");
    assert!(
        (open - fds).abs() <= 8.0,
        "open fds {open}, /proc says {fds}"
    );
    assert!(value(&text, "process_max_fds") >= open);
    let rss = value(&text, "process_resident_memory_bytes");
    assert!(rss > 1_000_000.0, "resident {rss}");
    assert!(value(&text, "process_virtual_memory_bytes") >= rss);
    assert!(value(&text, "process_threads") >= 1.0);
    assert!(value(&text, "process_cpu_seconds_total") >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_gzip_coded_exactly_when_the_scraper_prefers_gzip() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let (status, headers, identity) = admin(&proxy, Method::GET, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["vary"], "Accept-Encoding");
    let identity = String::from_utf8(identity.to_vec()).unwrap();
    let expected = names(&identity);
    assert!(expected.contains("process_open_fds"), "{identity}");

    // Accept-Encoding (None: no field) → gzip-coded?
    let rows: &[(Option<&str>, bool)] = &[
        (None, false),
        (Some(""), false),
        (Some("gzip"), true),
        (Some("GZIP"), true),
        (Some("x-gzip"), true),
        (Some("gzip;q=0"), false),
        (Some("identity"), false),
        (Some("*"), true),
        (Some("*;q=0"), false),
        (Some("br, gzip;q=0.5"), true),
        (Some("gzip;q=0.5, identity"), false),
        (Some("br"), false),
        // What Prometheus sends.
        (Some("gzip"), true),
    ];
    for &(accept, want_gzip) in rows {
        let (status, headers, body) = admin(&proxy, Method::GET, accept).await;
        assert_eq!(status, StatusCode::OK, "{accept:?}");
        assert_eq!(headers["vary"], "Accept-Encoding", "{accept:?}");
        assert_eq!(
            headers["content-type"], "text/plain; version=0.0.4",
            "{accept:?}"
        );
        let text = if want_gzip {
            assert_eq!(
                headers.get("content-encoding").map(|v| v.as_bytes()),
                Some(&b"gzip"[..]),
                "{accept:?}"
            );
            let mut text = String::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .unwrap_or_else(|e| panic!("{accept:?}: not gzip: {e}"));
            assert!(
                body.len() * 3 < text.len(),
                "{accept:?}: {} bytes",
                body.len()
            );
            text
        } else {
            assert_eq!(headers.get("content-encoding"), None, "{accept:?}");
            String::from_utf8(body.to_vec()).unwrap()
        };
        assert_eq!(names(&text), expected, "{accept:?}");
        assert_eq!(
            headers["content-length"],
            body.len().to_string(),
            "{accept:?}"
        );
    }

    // HEAD answers with the headers GET would send, and no body.
    let (status, headers, body) = admin(&proxy, Method::HEAD, Some("gzip")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["vary"], "Accept-Encoding");
    assert!(body.is_empty());
}

/// A real Prometheus (which asks for gzip) scrapes the process metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_asking_for_gzip_scrapes_the_process_metrics() {
    if !external("prometheus", "prometheus") {
        return;
    }
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let prometheus = Prometheus::scraping(proxy.admin_addr, "any-name");

    // Each query names a series the proxy exports; Prometheus must hold a positive value.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for query in [
        "process_open_fds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus never reported {query}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let Some(body) =
                http_get(prometheus.web, &format!("/api/v1/query?query={query}")).await
            else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let Some(value) = v["data"]["result"][0]["value"][1].as_str() else {
                continue;
            };
            assert!(value.parse::<f64>().unwrap() > 0.0, "{query} = {value}");
            break;
        }
    }
}
