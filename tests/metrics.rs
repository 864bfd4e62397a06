//! Metrics (issue 4): the exposition is valid for promtool and scraped by a real Prometheus,
//! label sets stay bounded under random input, nothing personal appears, and the distinct-visitor
//! estimate is close.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};

fn series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spec_metric_is_exported_and_promtool_accepts_it() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    for proto in BOTH {
        assert_eq!(proxy.client().get(proto, "/").await.status, StatusCode::OK);
    }
    // Two HTTP/1.1 connections of one client: the second resumes with its session ticket.
    let client = proxy.client();
    for _ in 0..2 {
        assert_eq!(client.get(Proto::H1, "/").await.status, StatusCode::OK);
    }
    let (status, text) = proxy.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "http_requests_total",
        "http_request_duration_seconds",
        "http_response_bytes_total",
        "requests_by_country_total",
        "requests_by_browser_total",
        "requests_by_os_total",
        "requests_by_language_total",
        "unique_clients",
        "rate_limited_total",
        "global_limit_errors_total",
        "global_limit_duration_seconds",
        "upstream_request_duration_seconds",
        "upstream_errors_total",
        "client_errors_total",
        "upstream_retries_total",
        "upstream_queue_rejections_total",
        "upstream_drained_total",
        "upstream_connections",
        "upstream_queued_requests",
        "upstream_healthy",
        "upstream_requests_total",
        "tls_handshakes_total",
        "tls_handshake_errors_total",
        "proxy_protocol_rejected_total",
        "connections_open",
        "access_log_records_total",
        "access_log_dropped_total",
        "access_log_write_errors_total",
        "build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE webprom_edge_{name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert_eq!(
        metric_sum(
            &text,
            "webprom_edge_http_requests_total{method=\"GET\",proto=\"HTTP/2\",status_class=\"2xx\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "webprom_edge_tls_handshakes_total{alpn=\"h2\",resumed=\"false\",version=\"TLSv1.3\"}"
        ),
        1.0
    );
    // (resumed, HTTP/1.1 handshakes): one full from each client, one resumed.
    for (resumed, want) in [("false", 2.0), ("true", 1.0)] {
        let series = format!(
            "webprom_edge_tls_handshakes_total{{alpn=\"http/1.1\",resumed=\"{resumed}\",version=\"TLSv1.3\"}}"
        );
        assert_eq!(metric_sum(&text, &series), want, "{series}\n{text}");
    }
    assert!(
        text.contains("webprom_edge_unique_clients{window=\"epoch\"} 1"),
        "{text}"
    );

    if !external("promtool", "prometheus") {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_alert_rules() {
    if !external("promtool", "prometheus") {
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules", "config/prometheus/alerts.yml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS: 14 rules found"), "{text}");
}

/// The promtool unit-test files for config/prometheus/alerts.yml: `tests/data/alerts_*.yml`.
fn alert_test_files() -> Vec<std::path::PathBuf> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("alerts_") && name.ends_with(".yml")
        })
        .collect();
    files.sort();
    files
}

fn yaml(path: &std::path::Path) -> serde_json::Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_alert_rule_passes_its_promtool_unit_tests() {
    // Rows (tests/data/alerts_outages.yml): one instance of two down with the job named
    // `webprom-edge`, `edge` or `node-x`; every instance down; no webprom-edge target at all; no
    // traffic, then down; an upstream outage; upstream 5xx; load shedding; rate limiting;
    // access-log loss. Each checks every alert at each time, so a second page fails it.
    if !external("promtool", "prometheus") {
        return;
    }
    let files = alert_test_files();
    assert!(files.len() >= 2, "{files:?}");
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .args(&files)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_alert_rule_is_described_independent_of_the_job_name_and_tested_both_ways() {
    let rules = yaml(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/prometheus/alerts.yml"
    )));
    let mut alerts = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            // A matcher on `job` ties a rule to how the operator named the scrape job.
            let unspaced: String = expr.split_whitespace().collect();
            for matcher in ["job=", "job!=", "job=~", "job!~"] {
                assert!(!unspaced.contains(matcher), "{matcher} in {expr}");
            }
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            let description = rule["annotations"]["description"].as_str().unwrap_or("");
            assert!(description.len() > 40, "{name} has no description");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
            alerts.push(name.to_owned());
        }
    }
    assert!(alerts.len() >= 12, "{alerts:?}");

    // Each alert is expected firing somewhere and silent somewhere in the promtool tests.
    let mut firing = std::collections::HashSet::new();
    let mut silent = std::collections::HashSet::new();
    for file in alert_test_files() {
        let tests = yaml(&file);
        for test in tests["tests"].as_array().unwrap() {
            let Some(checks) = test["alert_rule_test"].as_array() else {
                continue;
            };
            for check in checks {
                let name = check["alertname"].as_str().unwrap().to_owned();
                match check["exp_alerts"].as_array() {
                    Some(expected) if !expected.is_empty() => firing.insert(name),
                    _ => silent.insert(name),
                };
            }
        }
    }
    for name in &alerts {
        assert!(
            firing.contains(name),
            "no promtool test expects {name} to fire"
        );
        assert!(
            silent.contains(name),
            "no promtool test expects {name} silent"
        );
    }
}

#[test]
fn the_dashboard_is_json_over_our_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/webprom-edge.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            assert!(t["expr"].as_str().unwrap().contains("webprom_edge_"), "{t}");
        }
    }
}

/// The dashboard's panels whose first query reads `metric`.
fn panels_reading<'a>(dash: &'a serde_json::Value, metric: &str) -> Vec<&'a serde_json::Value> {
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["targets"][0]["expr"]
                .as_str()
                .unwrap_or("")
                .contains(metric)
        })
        .collect()
}

fn dashboard() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/webprom-edge.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Collapses runs of whitespace, so a paragraph wrapped in Markdown compares with one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_country_panel_carries_the_cc_by_attribution_of_the_geoip_data() {
    // config/geo/README.md: "Attribution (CC BY 4.0 requires it wherever the data is
    // redistributed or shown):" followed by the paragraph to show.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/geo/README.md"))
            .unwrap();
    let start = readme
        .find("Attribution (")
        .expect("an attribution paragraph");
    let paragraph = &readme[start..];
    let paragraph = &paragraph[paragraph.find(":\n").unwrap() + 2..];
    let attribution = one_line(&paragraph[..paragraph.find("\n\n").unwrap()]);
    assert!(attribution.contains("CC BY 4.0"), "{attribution}");

    let dash = dashboard();
    let panels = panels_reading(&dash, "webprom_edge_requests_by_country_total");
    assert!(!panels.is_empty(), "no country panel");
    for p in panels {
        let description = one_line(p["description"].as_str().unwrap_or(""));
        assert!(
            description.contains(&attribution),
            "panel {:?} lacks the attribution {attribution:?}",
            p["title"]
        );
        assert!(
            p["title"].as_str().unwrap().contains("CC BY 4.0"),
            "{}",
            p["title"]
        );
    }
}

#[test]
fn the_visitors_panel_is_per_instance_and_says_it_is_not_deduplicated() {
    let dash = dashboard();
    let panels = panels_reading(&dash, "webprom_edge_unique_clients");
    assert!(!panels.is_empty(), "no visitors panel");
    for p in panels {
        let target = &p["targets"][0];
        let expr = target["expr"].as_str().unwrap();
        // One value per instance: a sum across instances would count a visitor once per
        // instance that saw them.
        assert!(expr.contains("by (instance)"), "{expr}");
        assert!(
            target["legendFormat"]
                .as_str()
                .unwrap()
                .contains("{{instance}}"),
            "{target}"
        );
        let text = format!("{} {}", p["title"], p["description"]);
        for words in ["per instance", "not deduplicated"] {
            assert!(text.contains(words), "{words:?} missing from {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_request_count() {
    if !external("prometheus", "prometheus") {
        return;
    }
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let sent = 37;
    let mut conn = proxy.client().connect(Proto::H2).await;
    for i in 0..sent {
        assert_eq!(
            conn.send(get(&format!("/p/{i}"))).await.status,
            StatusCode::OK
        );
    }

    let prometheus = Prometheus::scraping(proxy.admin_addr, "webprom-edge");

    let deadline = Instant::now() + Duration::from_secs(60);
    let query = "sum(webprom_edge_http_requests_total)";
    loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never reported {sent} requests"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(body) = http_get(
            prometheus.web,
            &format!("/api/v1/query?query={}", urlencode(query)),
        )
        .await
        else {
            continue;
        };
        let v: serde_json::Value = match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let Some(result) = v["data"]["result"].as_array().and_then(|r| r.first()) else {
            continue;
        };
        let count: f64 = result["value"][1]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0.0);
        if count as usize == sent {
            break;
        }
        assert!(
            (count as usize) < sent,
            "Prometheus saw {count}, more than sent"
        );
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A deterministic pseudo-random generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        (0..len)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_keep_series_bounded_and_leave_no_trace() {
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(|c| unlimited(&c), &up.url()).await;
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let mut conns = [
        proxy.client().connect(Proto::H1).await,
        proxy.client().connect(Proto::H2).await,
    ];
    let mut tokens = Vec::new();
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PURGE", "BREW", "QQQX",
    ];
    for i in 0..1000 {
        let ua = format!(
            "Mozilla/5.0 ({}) {}/{}",
            rng.token(12),
            rng.token(10),
            rng.next() % 1000
        );
        let lang = format!("{}-{}", rng.token(2).to_lowercase(), rng.token(2));
        let host = format!("{}.example", rng.token(12).to_lowercase());
        let path = format!("/{}/{}", rng.token(14), rng.token(9));
        let method = methods[(rng.next() % methods.len() as u64) as usize];
        tokens.extend([ua.clone(), host.clone(), path.clone()]);
        let req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("https://{host}{path}"))
            .header("host", host.as_str())
            .header("user-agent", ua)
            .header("accept-language", lang)
            .body(body(Bytes::new()))
            .unwrap();
        let resp = conns[i % 2].send(req).await;
        assert!(resp.status.as_u16() < 500, "{}", resp.status);
    }
    let text = proxy.admin_get("/metrics").await.1;
    let n = series(&text).len();
    // Languages are at most the 184 ISO 639-1 codes + 2, countries 676 two-letter codes + 1;
    // everything else is a small fixed set. Random input must not grow it past this.
    assert!(n < 1200, "{n} series");
    assert_eq!(
        metric_sum(&text, "webprom_edge_http_requests_total"),
        1000.0
    );
    assert!(text.contains("method=\"OTHER\""));
    for t in &tokens {
        assert!(!text.contains(t.as_str()), "{t} appears in the metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_clients_estimates_a_thousand_visitors() {
    let up = Upstream::start().await;
    let proxy = trusting_unlimited_proxy(&up).await;
    let mut conn = proxy.client().connect(Proto::H2).await;
    let mut addrs = Vec::new();
    for i in 0..1000u32 {
        let ip = format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);
        // Each visitor comes twice: repeats must not count.
        for _ in 0..2 {
            let req = Request::get("https://localhost/")
                .header("x-forwarded-for", ip.as_str())
                .body(body(Bytes::new()))
                .unwrap();
            conn.send(req).await;
        }
        addrs.push(ip);
    }
    let text = proxy.admin_get("/metrics").await.1;
    let estimate = metric_sum(&text, "webprom_edge_unique_clients{window=\"epoch\"}");
    assert!((estimate - 1000.0).abs() <= 50.0, "estimate {estimate}");
    // The access log is flushed within a second; its pseudonyms must not be in the metrics.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut pseudonyms = std::collections::HashSet::new();
    for entry in std::fs::read_dir(proxy.path("logs")).unwrap().flatten() {
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            pseudonyms.insert(v["client"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(pseudonyms.len(), 1000);
    for a in &addrs {
        assert!(
            !text.contains(&format!("\"{a}\"")) && !text.contains(&format!("{a} ")),
            "{a} in metrics"
        );
    }
    for p in pseudonyms {
        assert!(!text.contains(&p));
    }
}

#[test]
fn the_dashboard_shows_the_time_left_of_each_certificate_by_name_and_instance() {
    let dash = dashboard();
    let panels = panels_reading(
        &dash,
        "webprom_edge_tls_certificate_expiry_timestamp_seconds",
    );
    assert_eq!(panels.len(), 1, "one certificate panel");
    let target = &panels[0]["targets"][0];
    let expr = target["expr"].as_str().unwrap();
    assert!(
        expr.contains("by (instance, name)") && expr.contains("time()"),
        "{expr}"
    );
    let legend = target["legendFormat"].as_str().unwrap();
    assert!(
        legend.contains("{{name}}") && legend.contains("{{instance}}"),
        "{legend}"
    );
    // Coloured at the alert's thresholds: under a day, under 14 days.
    let steps: Vec<f64> = panels[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["value"].as_f64())
        .collect();
    assert_eq!(steps, [86400.0, 14.0 * 86400.0]);
}
