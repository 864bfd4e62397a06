//! End-to-end tests of the privacy capture (issue 3): the record schema, pseudonyms and
//! truncation, canaries that must never leak, no lost records, retention, the cookie cap.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Request, StatusCode};

const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// A GET from `ip` ([`from`]) by Chrome on Windows, in Albanian.
fn chrome_from(ip: &str, path: &str) -> Request<ReqBody> {
    let mut req = from(ip, path);
    let headers = req.headers_mut();
    headers.insert("user-agent", HeaderValue::from_static(CHROME_WIN));
    headers.insert(
        "accept-language",
        HeaderValue::from_static("sq-AL,sq;q=0.9,en;q=0.8"),
    );
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_with_exactly_the_spec_fields_in_order() {
    let up = Upstream::start().await;
    let proxy = trusting_proxy(&up).await;
    let resp = proxy
        .client()
        .request(
            Proto::H2,
            chrome_from("198.51.100.7", "/click/12345?campaign=9"),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    let records = proxy.wait_records(1).await;
    assert_eq!(records.len(), 1);
    let line = &records[0];

    // Exactly these keys, in this order.
    let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
    assert_eq!(obj.len(), RECORD_FIELDS.len(), "{line}");
    let mut last = 0;
    for f in RECORD_FIELDS {
        let at = line
            .find(&format!("\"{f}\":"))
            .unwrap_or_else(|| panic!("{f} missing: {line}"));
        assert!(at >= last, "{f} out of order: {line}");
        last = at;
    }

    let today = today_string();
    let ts = obj["ts"].as_str().unwrap();
    assert!(
        ts.starts_with(&format!("{today}T")) && ts.ends_with('Z') && ts.len() == 20,
        "{ts}"
    );
    assert_eq!(obj["epoch"], today.as_str());
    assert_eq!(obj["client"].as_str().unwrap().len(), 16);
    assert_eq!(obj["net"], "198.51.100.0/24");
    assert_eq!(obj["country"], "AL");
    assert_eq!(obj["browser"], "Chrome");
    assert_eq!(obj["browser_version"], "131");
    assert_eq!(obj["os"], "Windows");
    assert_eq!(obj["bot"], false);
    assert_eq!(obj["lang"], "sq");
    assert_eq!(obj["method"], "GET");
    assert_eq!(obj["host"], "localhost");
    assert_eq!(obj["path"], "/click/:id");
    assert_eq!(obj["status"], 200);
    assert_eq!(obj["bytes_sent"], GREETING.len());
    assert!(obj["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(obj["proto"], "HTTP/2");
    assert_eq!(obj["limited"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudonyms_and_networks() {
    let up = Upstream::start().await;
    let proxy = trusting_proxy(&up).await;
    let client = proxy.client();
    let addrs = [
        "198.51.100.7",
        "198.51.100.7",
        "198.51.100.8",
        "2001:db8:1:2::5",
        "2001:db8:1:2:ffff::9",
        "2001:db8:1:3::5",
        "::ffff:203.0.113.9",
        "203.0.113.9",
    ];
    for (i, ip) in addrs.iter().enumerate() {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
        client
            .request(proto, chrome_from(ip, &format!("/n/{i}")))
            .await;
    }
    let mut records = proxy.wait_records(addrs.len()).await;
    records.sort_by_key(|r| field(r, "path"));
    let client_of = |i: usize| field(&records[i], "client");
    let net_of = |i: usize| field(&records[i], "net");

    assert_eq!(client_of(0), client_of(1), "one address, one pseudonym");
    assert_ne!(client_of(0), client_of(2), "two addresses, two pseudonyms");
    assert_eq!(client_of(3), client_of(4), "one IPv6 /64, one pseudonym");
    assert_ne!(client_of(3), client_of(5), "another /64, another pseudonym");
    assert_eq!(client_of(6), client_of(7), "IPv4-mapped counts as IPv4");
    assert_eq!(net_of(0), "198.51.100.0/24");
    assert_eq!(net_of(3), "2001:db8:1::/48");
    assert_eq!(net_of(5), "2001:db8:1::/48");
    assert_eq!(net_of(6), "203.0.113.0/24");

    // The README's pseudonym formula, computed independently from the key file.
    let key = read_key(proxy.dir.path(), &today_string());
    let expect_v4 = |a: [u8; 4]| expected_pseudonym(&key, &a);
    assert_eq!(client_of(0), expect_v4([198, 51, 100, 7]));
    assert_eq!(client_of(7), expect_v4([203, 0, 113, 9]));
    let v6: std::net::Ipv6Addr = "2001:db8:1:2::".parse().unwrap();
    assert_eq!(client_of(3), expected_pseudonym(&key, &v6.octets()));
}

fn expected_pseudonym(key: &[u8; 32], addr: &[u8]) -> String {
    use base64::Engine;
    let hash = blake3::keyed_hash(key, addr);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash.as_bytes()[..12])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_never_leak_anywhere() {
    let up = Upstream::start().await;
    let mut proxy = trusting_proxy(&up).await;
    let client = proxy.client();
    let secret_ip = "198.51.100.77";
    let mut canaries: Vec<String> = Vec::new();
    let mut canary = |what: &str| {
        let c = format!("CANARY{}{}", what.to_uppercase(), canaries.len());
        canaries.push(c.clone());
        c
    };
    for proto in BOTH {
        let mut req = Request::post(format!(
            "https://localhost/u/{}@example.com/{}/profile?q={}&token={}",
            canary("mail"),
            canary("id") + "12345",
            canary("query"),
            canary("token")
        ))
        .header("x-forwarded-for", secret_ip)
        .header("user-agent", format!("{CHROME_WIN} {}", canary("ua")))
        .header(
            "cookie",
            format!("session={}; other={}", canary("cookie"), canary("cookie")),
        )
        .header("authorization", format!("Bearer {}", canary("auth")))
        .header(
            "referer",
            format!("https://example.com/{}", canary("referer")),
        )
        .header("accept-language", format!("sq, {}", canary("lang")));
        for i in 0..12 {
            req = req.header(format!("x-custom-{i}"), canary("header"));
        }
        req = req
            .header("sec-ch-ua", format!("\"{}\";v=\"1\"", canary("chua")))
            .header("x-real-ip", "203.0.113.199")
            .header(
                "origin",
                format!("https://{}.example", canary("origin").to_lowercase()),
            );
        let req = req.body(body(format!("card={}", canary("body")))).unwrap();
        let resp = client.request(proto, req).await;
        assert_eq!(resp.status, StatusCode::OK, "{proto:?}");
    }
    let records = proxy.wait_records(2).await;
    let metrics = proxy.admin_get("/metrics").await.1;
    proxy.signal("TERM");
    tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10)));
    let printed = proxy.output();
    let logs = proxy.access_log();
    assert!(logs.contains("/u/:id/:id/profile"), "{logs}");

    for (what, text) in [
        ("access log", &logs),
        ("metrics", &metrics),
        ("process output", &printed),
    ] {
        for c in &canaries {
            assert!(
                !text.to_uppercase().contains(&c.to_uppercase()),
                "{c} leaked into the {what}"
            );
        }
        for ip in [secret_ip, "203.0.113.199"] {
            assert!(!text.contains(ip), "{ip} leaked into the {what}");
        }
    }
    assert_eq!(records.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_give_ten_thousand_records() {
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(|c| unlimited(&c), &up.url()).await;
    let client = proxy.client();
    let mut tasks = Vec::new();
    for c in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let proto = if c % 2 == 0 { Proto::H1 } else { Proto::H2 };
            let mut conn = client.connect(proto).await;
            let mut ok = 0;
            for i in 0..200 {
                // Letters, not digits: the path must survive normalisation unchanged.
                let resp = conn
                    .send(get(&format!("/load/{}/{}", letters(c), letters(i))))
                    .await;
                if resp.status == StatusCode::OK {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 10_000);
    let records = proxy.wait_records(10_000).await;
    assert_eq!(records.len(), 10_000);
    let distinct: HashSet<String> = records.iter().map(|r| field(r, "path")).collect();
    assert_eq!(
        distinct.len(),
        10_000,
        "every request recorded exactly once"
    );
    // Counted once the write succeeded, which is a moment after the lines can be read.
    wait_metrics(
        &proxy,
        &[
            "webprom_edge_access_log_records_total 10000",
            "webprom_edge_access_log_dropped_total 0",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_day_files_and_keys_at_start() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&keys).unwrap();
    let today = today_string();
    let recent = day_offset(-10);
    let old = day_offset(-91);
    for day in [&recent, &old] {
        std::fs::write(logs.join(format!("access-{day}.jsonl")), "{}\n").unwrap();
    }
    std::fs::write(logs.join("notes.txt"), "not a day file").unwrap();
    // Keys: one within 30 days (today's is derived from it), one past retention.
    std::fs::write(
        keys.join(format!("{}.key", day_offset(-3))),
        "11".repeat(32),
    )
    .unwrap();
    std::fs::write(
        keys.join(format!("{}.key", day_offset(-45))),
        "22".repeat(32),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        base_config(dir.path(), &up.url()),
    )
    .unwrap();
    let proxy = Proxy::spawn(dir).await;

    assert!(proxy.path(&format!("logs/access-{recent}.jsonl")).exists());
    assert!(!proxy.path(&format!("logs/access-{old}.jsonl")).exists());
    assert!(proxy.path("logs/notes.txt").exists());
    assert!(proxy.path(&format!("keys/{}.key", day_offset(-3))).exists());
    assert!(
        !proxy
            .path(&format!("keys/{}.key", day_offset(-45)))
            .exists()
    );
    // Today's key was ratcheted forward from the kept one, not made up.
    let mut k = [0x11u8; 32];
    for _ in 0..3 {
        k = blake3::derive_key("webprom-edge pseudonym ratchet v1", &k);
    }
    assert_eq!(read_key(proxy.dir.path(), &today), k);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_directory_is_created_private_and_survives_restart() {
    use std::os::unix::fs::PermissionsExt;
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let today = today_string();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&proxy.path("keys")), 0o700);
    assert_eq!(mode(&proxy.path(&format!("keys/{today}.key"))), 0o600);
    assert!(proxy.output().contains("created a random key"));
    let first = read_key(proxy.dir.path(), &today);

    // A restart on the same day keeps the same key.
    let mut proxy = proxy;
    proxy.signal("TERM");
    tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10)));
    let dir = std::mem::replace(&mut proxy.dir, tempfile::tempdir().unwrap());
    let again = Proxy::spawn(dir).await;
    assert_eq!(read_key(again.dir.path(), &today), first);
    assert!(!again.output().contains("created a random key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cookie_lifetimes_are_capped() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    for proto in BOTH {
        let resp = proxy.client().get(proto, "/cookies").await;
        let cookies: Vec<&str> = resp
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies.len(), 3, "{cookies:?}");
        assert_eq!(cookies[0], "long=1; Max-Age=1209600; Path=/");
        assert_eq!(cookies[1], "session=2; Path=/; HttpOnly");
        assert_eq!(cookies[2], "short=3; Max-Age=60");
    }
}

fn letters(mut n: usize) -> String {
    let mut s = String::new();
    loop {
        s.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_response_is_recorded_once() {
    use http_body_util::BodyExt;
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let Conn::H1(mut send) = proxy.client().connect(Proto::H1).await else {
        unreachable!()
    };
    let req = Request::get("/big?bytes=8388608")
        .header("host", "localhost")
        .body(body(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Take one frame of the 8 MiB, then hang up.
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    drop(send);

    let records = proxy.wait_records(1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(field(&records[0], "status"), "200");
    let sent: u64 = field(&records[0], "bytes_sent").parse().unwrap();
    assert!(sent > 0 && sent < 8 << 20, "bytes_sent {sent}");
}

/// Polls `/metrics` (up to 15 s) until it contains every one of `want`; returns the text.
async fn wait_metrics(proxy: &Proxy, want: &[&str]) -> String {
    eventually(
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || {
            let metrics = proxy.admin_get("/metrics").await.1;
            want.iter().all(|w| metrics.contains(w)).then_some(metrics)
        },
        || format!("waiting for {want:?}"),
    )
    .await
}

/// A day file that cannot be written (its path links to `/dev/full`, which fails every write
/// with ENOSPC, as a full disk does): the proxy keeps serving, counts the failed writes and the
/// records they lost, reports the file once by its path, and writes again once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_records_visibly_and_never_stops_serving() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: this system has no /dev/full");
        return;
    }
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        base_config(dir.path(), &up.url()),
    )
    .unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let day_file = logs.join(format!("access-{}.jsonl", today_string()));
    std::os::unix::fs::symlink("/dev/full", &day_file).unwrap();
    let proxy = Proxy::spawn(dir).await;
    let client = proxy.client();

    for i in 0..20 {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
        assert_eq!(client.get(proto, "/full").await.status, StatusCode::OK);
    }
    let metrics = wait_metrics(
        &proxy,
        &[
            "webprom_edge_access_log_dropped_total 20",
            "webprom_edge_access_log_records_total 0",
        ],
    )
    .await;
    assert!(
        !metrics.contains("webprom_edge_access_log_write_errors_total 0"),
        "{metrics}"
    );
    let out = proxy.output();
    assert_eq!(
        out.matches("access log write failed").count(),
        1,
        "reported once:\n{out}"
    );
    assert!(out.contains(&day_file.display().to_string()), "{out}");

    // Room again: the next records are written, and the recovery is reported.
    std::fs::remove_file(&day_file).unwrap();
    for _ in 0..5 {
        assert_eq!(client.get(Proto::H2, "/room").await.status, StatusCode::OK);
    }
    wait_metrics(
        &proxy,
        &[
            "webprom_edge_access_log_records_total 5",
            "webprom_edge_access_log_dropped_total 20",
        ],
    )
    .await;
    assert_eq!(proxy.wait_records(5).await.len(), 5);
    assert!(proxy.output().contains("access log writing again"));
}
