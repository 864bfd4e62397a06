//! `Expect: 100-continue` end to end (issue 11): over HTTP/2 and HTTP/1.1 a client that waits for
//! `100 (Continue)` gets it as soon as its request is on its way upstream, and never when the
//! proxy answers without the body (413, 417, 429); the upstream never sees `Expect`.
//!
//! The HTTP/2 rows use the `h2` crate as the client, which shows each informational response;
//! the curl rows check what a real client does with its own expect timer.

mod common;

use std::future::poll_fn;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

const MAX_BODY: usize = 4 << 20;

async fn expect_proxy(up: &Upstream) -> Proxy {
    Proxy::start_with(
        |c| {
            let c = set(&c, "server", "max_body_bytes", &MAX_BODY.to_string());
            format!(
                "{c}\n[[rate_limit.route]]\npath_prefix = \"/limited\"\nrequests_per_second = 1\nburst = 1\n"
            )
        },
        &up.url(),
    )
    .await
}

/// An HTTP/2 connection to the proxy over TLS (ALPN h2), spoken with the `h2` crate.
async fn h2_connect(proxy: &Proxy) -> h2::client::SendRequest<Bytes> {
    let config = tls_client_config(&proxy.path("cert.pem"), Some(b"h2"));
    let tcp = TcpStream::connect(proxy.tls_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send
}

/// What an HTTP/2 client that behaves like curl saw.
struct Seen {
    /// Informational statuses, in order, received before the final response.
    informational: Vec<StatusCode>,
    /// Whether the body was sent (after a 100, or at once without an expectation).
    body_sent: bool,
    status: StatusCode,
    body: Bytes,
}

/// Sends `req` and, like curl, holds a body back while expecting 100-continue until a 100
/// arrives (or the final response, which means: never send it). Fails after 10 s.
async fn exchange(
    send: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
    body: Option<Bytes>,
) -> Seen {
    let waits = req
        .headers()
        .get("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let run = async {
        poll_fn(|cx| send.poll_ready(cx)).await.unwrap();
        let (mut fut, mut stream) = send.send_request(req, body.is_none()).unwrap();
        let mut informational = Vec::new();
        let mut body_sent = false;
        let mut pending_body = body;
        if !waits && let Some(b) = pending_body.take() {
            // The proxy may already have answered (413, 417, 429) and reset the stream; the
            // answer is what the row checks.
            body_sent = stream.send_data(b, true).is_ok();
        }
        let resp = loop {
            let next = poll_fn(|cx| {
                if let std::task::Poll::Ready(Some(info)) = fut.poll_informational(cx) {
                    return std::task::Poll::Ready(Err(info.unwrap().status()));
                }
                Pin::new(&mut fut).poll(cx).map(Ok)
            })
            .await;
            match next {
                Err(status) => {
                    informational.push(status);
                    if status == StatusCode::CONTINUE
                        && let Some(b) = pending_body.take()
                    {
                        stream.send_data(b, true).unwrap();
                        body_sent = true;
                    }
                }
                Ok(resp) => break resp.unwrap(),
            }
        };
        let status = resp.status();
        let mut recv = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        Seen {
            informational,
            body_sent,
            status,
            body: Bytes::from(got),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("exchange finished in 10 s")
}

fn read_all_logs(proxy: &Proxy) -> Vec<String> {
    let mut all = Vec::new();
    if let Ok(entries) = std::fs::read_dir(proxy.path("logs")) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            all.extend(text.lines().map(str::to_owned));
        }
    }
    all
}

/// Waits (up to 15 s) for record number `n` (1-based) and returns it.
async fn record(proxy: &Proxy, n: usize) -> String {
    eventually(
        Duration::from_secs(15),
        Duration::from_millis(50),
        async || read_all_logs(proxy).get(n - 1).cloned(),
        || format!("record {n} never came: {:?}", read_all_logs(proxy)),
    )
    .await
}

struct Row {
    name: &'static str,
    method: Method,
    path: &'static str,
    expect: Option<&'static str>,
    /// Body length; `None` for a request that ends with its HEADERS.
    body: Option<usize>,
    /// A `content-length` declared instead of the body's.
    declared: Option<usize>,
    /// Consume the route's quota first.
    limit_first: bool,
    continued: bool,
    status: StatusCode,
    forwarded: bool,
}

const fn row(name: &'static str, path: &'static str, expect: Option<&'static str>) -> Row {
    Row {
        name,
        method: Method::POST,
        path,
        expect,
        body: Some(64 << 10),
        declared: None,
        limit_first: false,
        continued: true,
        status: StatusCode::OK,
        forwarded: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_expecting_100_continue_is_told_to_continue_only_when_the_body_is_wanted() {
    let up = Upstream::start().await;
    let proxy = expect_proxy(&up).await;
    let rows = [
        Row {
            body: Some(2 << 20),
            ..row("2 MB upload, 100-continue", "/echo", Some("100-continue"))
        },
        row("token in mixed case", "/echo", Some("100-Continue")),
        row(
            "token in a list",
            "/echo",
            Some("100-continue, 100-continue"),
        ),
        Row {
            continued: false,
            ..row("no expectation", "/echo", None)
        },
        Row {
            declared: Some(8 << 20),
            continued: false,
            status: StatusCode::PAYLOAD_TOO_LARGE,
            forwarded: false,
            ..row("declared length too large", "/echo", Some("100-continue"))
        },
        Row {
            limit_first: true,
            continued: false,
            status: StatusCode::TOO_MANY_REQUESTS,
            forwarded: false,
            ..row("rate limited", "/limited", Some("100-continue"))
        },
        Row {
            continued: false,
            status: StatusCode::EXPECTATION_FAILED,
            forwarded: false,
            ..row("another expectation", "/echo", Some("something-else"))
        },
        Row {
            continued: false,
            status: StatusCode::EXPECTATION_FAILED,
            forwarded: false,
            ..row(
                "100-continue and another",
                "/echo",
                Some("100-continue, foo"),
            )
        },
        Row {
            method: Method::GET,
            body: None,
            continued: false,
            ..row("GET without a body", "/", Some("100-continue"))
        },
    ];
    let mut send = h2_connect(&proxy).await;
    let mut records = 0;
    for r in rows {
        if r.limit_first {
            let req = Request::get(format!("https://localhost{}", r.path))
                .body(())
                .unwrap();
            assert_eq!(exchange(&mut send, req, None).await.status, StatusCode::OK);
            records += 1;
        }
        let data = r.body.map(|n| Bytes::from(pattern(n)));
        let mut req = Request::builder()
            .method(r.method.clone())
            .uri(format!("https://localhost{}", r.path));
        if let Some(e) = r.expect {
            req = req.header("expect", e);
        }
        if let Some(len) = r.declared.or(r.body) {
            req = req.header("content-length", len);
        }
        let seen_before = up.seen.lock().unwrap().len();
        let started = Instant::now();
        let seen = exchange(&mut send, req.body(()).unwrap(), data.clone()).await;
        let name = r.name;
        assert_eq!(seen.status, r.status, "{name}");
        if r.continued {
            assert_eq!(seen.informational, [StatusCode::CONTINUE], "{name}");
            assert!(seen.body_sent, "{name}");
        } else {
            assert!(
                seen.informational.is_empty(),
                "{name}: {:?}",
                seen.informational
            );
        }
        if r.status == StatusCode::OK && r.path == "/echo" {
            assert!(seen.body == data.unwrap(), "{name}: echoed byte for byte");
        }
        // A correctness bound, not a measurement: a stall waits out the 10 s exchange limit.
        assert!(started.elapsed() < Duration::from_secs(5), "{name}");
        let forwarded = up.seen.lock().unwrap().len() > seen_before;
        assert_eq!(forwarded, r.forwarded, "{name}: forwarded");
        if forwarded {
            let head = up.last_headers();
            assert!(!head.contains_key("expect"), "{name}: Expect forwarded");
        }
        records += 1;
        let rec = record(&proxy, records).await;
        assert_eq!(field(&rec, "status"), r.status.as_str(), "{name}");
        assert_eq!(field(&rec, "proto"), "HTTP/2", "{name}");
    }
    // Exactly one record per request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read_all_logs(&proxy).len(), records);
}

/// What curl saw: the response heads it dumped (informational ones included), the body, and
/// how long it took.
struct Curl {
    heads: String,
    body: Vec<u8>,
    took: Duration,
}

/// Uploads `file` with curl (`--http2` or `--http1.1`) and the given `Expect`; curl's own
/// expect timer is set to 30 s so a proxy that never sends 100 shows as a 30 s upload.
async fn curl(proxy: &Proxy, proto: &str, path: &str, expect: &str, file: &Path) -> Curl {
    let dir = proxy.dir.path().to_owned();
    let port = proxy.tls_addr.port();
    let url = format!("https://localhost:{port}{path}");
    let args = vec![
        "-sS".to_owned(),
        proto.to_owned(),
        "--cacert".to_owned(),
        dir.join("cert.pem").display().to_string(),
        "--resolve".to_owned(),
        format!("localhost:{port}:127.0.0.1"),
        "--expect100-timeout".to_owned(),
        "30".to_owned(),
        "-H".to_owned(),
        format!("Expect: {expect}"),
        "--data-binary".to_owned(),
        format!("@{}", file.display()),
        "-D".to_owned(),
        dir.join("curl-heads").display().to_string(),
        "-o".to_owned(),
        dir.join("curl-body").display().to_string(),
        url,
    ];
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "curl {proto} Expect: {expect} {} failed: {}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr),
        proxy.output()
    );
    Curl {
        heads: std::fs::read_to_string(dir.join("curl-heads")).unwrap(),
        body: std::fs::read(dir.join("curl-body")).unwrap_or_default(),
        took,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uploads_expecting_100_continue_never_wait_for_its_timer_over_either_protocol() {
    if !external("curl", "curl") {
        return;
    }
    let up = Upstream::start().await;
    let proxy = expect_proxy(&up).await;
    let upload = pattern(2 << 20);
    let small = proxy.path("upload-2MB");
    std::fs::write(&small, &upload).unwrap();
    let large = proxy.path("upload-5MB");
    std::fs::write(&large, pattern(5 << 20)).unwrap();

    // (curl protocol, status line prefix, expectation, file, 100 wanted, final status)
    //
    // Refusals over HTTP/2 are left to the `h2` client rows above: curl 7.88 (Debian 12) fails
    // any HTTP/2 upload answered early ("Empty reply from server" while it waits for 100,
    // "Stream error in the HTTP/2 framing layer" while it sends), because it takes the
    // RST_STREAM(NO_ERROR) that follows the complete answer (RFC 9113 §8.1) for an error.
    let rows = [
        ("--http2", "HTTP/2", "100-continue", &small, true, 200),
        ("--http1.1", "HTTP/1.1", "100-continue", &small, true, 200),
        ("--http1.1", "HTTP/1.1", "100-continue", &large, false, 413),
        (
            "--http1.1",
            "HTTP/1.1",
            "something-else",
            &small,
            false,
            417,
        ),
    ];
    for (i, (proto, line, expect, file, continued, status)) in rows.into_iter().enumerate() {
        let name = format!("{proto} Expect: {expect} {}", file.display());
        let seen_before = up.seen.lock().unwrap().len();
        let got = curl(&proxy, proto, "/echo", expect, file).await;
        let statuses: Vec<&str> = got
            .heads
            .lines()
            .filter(|l| l.starts_with(line))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        let want: Vec<String> = continued
            .then(|| "100".to_owned())
            .into_iter()
            .chain([status.to_string()])
            .collect();
        assert_eq!(statuses, want, "{name}:\n{}", got.heads);
        // Far under curl's 30 s expect timer: a correctness bound, not a measurement.
        assert!(
            got.took < Duration::from_secs(10),
            "{name} took {:?}",
            got.took
        );
        if status == 200 {
            assert!(got.body == upload, "{name}: echoed byte for byte");
            let head = up.last_headers();
            assert!(!head.contains_key("expect"), "{name}: Expect forwarded");
        } else {
            assert_eq!(up.seen.lock().unwrap().len(), seen_before, "{name}");
        }
        let rec = record(&proxy, i + 1).await;
        assert_eq!(field(&rec, "status"), status.to_string(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_mid_response_is_recorded_once_and_the_connection_serves_on() {
    let up = Upstream::start().await;
    let proxy = expect_proxy(&up).await;
    let mut send = h2_connect(&proxy).await;
    poll_fn(|cx| send.poll_ready(cx)).await.unwrap();
    let req = Request::get("https://localhost/big?bytes=8388608")
        .body(())
        .unwrap();
    let (fut, request_stream) = send.send_request(req, true).unwrap();
    let resp = fut.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut recv = resp.into_body();
    let first = recv.data().await.unwrap().unwrap();
    assert!(!first.is_empty());
    // Dropping both halves resets the stream (RST_STREAM CANCEL): 8 MiB never fits the window.
    drop(recv);
    drop(request_stream);

    let rec = record(&proxy, 1).await;
    assert_eq!(field(&rec, "status"), "200");
    let sent: u64 = field(&rec, "bytes_sent").parse().unwrap();
    assert!(sent > 0 && sent < 8 << 20, "bytes_sent {sent}");

    // The same connection goes on serving.
    let seen = exchange(
        &mut send,
        Request::get("https://localhost/").body(()).unwrap(),
        None,
    )
    .await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body, GREETING);
    record(&proxy, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read_all_logs(&proxy).len(), 2, "one record per request");
}
