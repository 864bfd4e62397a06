//! Request bodies the client gets wrong (issue 12 §1, §3): a body that stalls gets 408, a
//! malformed chunked body 400, both recorded with that status and counted in
//! `client_errors_total`, never in `upstream_errors_total`; a small body is read whole before
//! any upstream connection is taken and sent with its length, so slow uploaders hold nothing
//! upstream. Each row checks the answer, the record, the metric deltas and what the upstream
//! received.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the recording upstream received for one request: the head, and the body or `None`
/// when it arrived broken (cut off, bad framing).
struct Seen {
    headers: HeaderMap,
    body: Option<Bytes>,
}

/// An upstream that records every request it receives, body included, and counts its
/// connections (accepted, and open now).
struct Recorder {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let accepted: Arc<AtomicUsize> = Arc::default();
        let (seen2, accepted2) = (seen.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.ok().map(|b| b.to_bytes());
                            seen.lock().unwrap().push(Seen {
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                                Bytes::from_static(b"ok\n"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            seen,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// The proxy under test: short body deadline, `buffer` bytes of body buffering.
async fn proxy(up: &Recorder, buffer: u64) -> Proxy {
    Proxy::start_with(
        |c| {
            let c = set(&c, "server", "body_read_timeout", "\"300ms\"");
            let c = set(&c, "server", "body_buffer_bytes", &buffer.to_string());
            let c = set(&c, "upstream", "request_timeout", "\"5s\"");
            unlimited(&c)
        },
        &up.url(),
    )
    .await
}

/// The counters a row compares before and after.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    client: [f64; 5],
    upstream: f64,
}

const KINDS: [&str; 5] = [
    "body_timeout",
    "body_malformed",
    "body_too_large",
    "body_incomplete",
    "body_reset",
];

async fn counts(proxy: &Proxy) -> Counts {
    let (_, text) = proxy.admin_get("/metrics").await;
    Counts {
        client: KINDS.map(|k| {
            metric_sum(
                &text,
                &format!("webprom_edge_client_errors_total{{kind=\"{k}\"}}"),
            )
        }),
        upstream: metric_sum(&text, "webprom_edge_upstream_errors_total"),
    }
}

/// Waits for record number `n` (1-based) and returns its status.
async fn record_status(proxy: &Proxy, n: usize) -> String {
    let line = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || proxy.access_log().lines().nth(n - 1).map(str::to_owned),
        || format!("no record {n}:\n{}", proxy.access_log()),
    )
    .await;
    field(&line, "status")
}

/// Checks that exactly `kind` went up by one and upstream errors did not move.
fn assert_counted(row: &str, before: Counts, after: Counts, kind: &str) {
    for (i, k) in KINDS.iter().enumerate() {
        let want = before.client[i] + f64::from(u8::from(*k == kind));
        assert_eq!(
            after.client[i], want,
            "{row}: client_errors_total{{kind={k}}}"
        );
    }
    assert_eq!(
        after.upstream, before.upstream,
        "{row}: upstream_errors_total"
    );
}

const CHUNKED_HEAD: &str =
    "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Malformed chunked bodies (RFC 9112 §7.1), one per row.
fn malformed_rows() -> Vec<(&'static str, Vec<u8>)> {
    let body = |s: &str| s.as_bytes().to_vec();
    let mut long_ext = b"5;".to_vec();
    long_ext.extend(std::iter::repeat_n(b'a', 20 * 1024));
    long_ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    let mut many_ext = b"5".to_vec();
    for _ in 0..9000 {
        many_ext.extend_from_slice(b";a");
    }
    many_ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    let mut many_trailers = b"5\r\nhello\r\n0\r\n".to_vec();
    for i in 0..150 {
        many_trailers.extend_from_slice(format!("x-t{i}: v\r\n").as_bytes());
    }
    many_trailers.extend_from_slice(b"\r\n");
    vec![
        (
            "bare LF after the chunk size",
            body("5\nhello\r\n0\r\n\r\n"),
        ),
        (
            "bare LF after the chunk data",
            body("5\r\nhello\n0\r\n\r\n"),
        ),
        (
            "no CRLF after the chunk data",
            body("5\r\nhelloX\r\n0\r\n\r\n"),
        ),
        (
            "CR without LF after the size",
            body("5\rhello\r\n0\r\n\r\n"),
        ),
        ("a 20 KB chunk extension", long_ext),
        ("9000 chunk extensions", many_ext),
        (
            "bare LF in a chunk extension",
            body("5;a\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk size overflowing 64 bits",
            body("ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ),
        ("non-hex chunk size", body("zz\r\nhello\r\n0\r\n\r\n")),
        (
            "chunk size with a leading +",
            body("+5\r\nhello\r\n0\r\n\r\n"),
        ),
        ("chunk size with 0x", body("0x5\r\nhello\r\n0\r\n\r\n")),
        ("empty chunk size", body("\r\nhello\r\n0\r\n\r\n")),
        (
            "whitespace before the size",
            body(" 5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "whitespace inside the size",
            body("5 5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "an invalid trailer field",
            body("5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"),
        ),
        ("150 trailer fields", many_trailers),
        ("no LF at the end", body("5\r\nhello\r\n0\r\n\r\r")),
    ]
}

async fn malformed_chunked_bodies_get_400(buffer: u64) {
    let up = Recorder::start().await;
    let proxy = proxy(&up, buffer).await;
    let client = proxy.client();
    let mut n = 0;
    for (row, bad) in malformed_rows() {
        let before = counts(&proxy).await;
        let upstream_before = up.requests();
        let mut raw = CHUNKED_HEAD.as_bytes().to_vec();
        raw.extend_from_slice(&bad);
        let answer = client.raw_h1(&raw).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{row} (buffer {buffer}): {answer:?}"
        );
        // Closed after the answer: `raw_h1` returned before its 10 s, with one response.
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{row}: {answer:?}");
        n += 1;
        assert_eq!(record_status(&proxy, n).await, "400", "{row}");
        assert_counted(row, before, counts(&proxy).await, "body_malformed");
        // Buffered: nothing reached the upstream. Streamed: what did never arrived whole.
        let seen = up.seen.lock().unwrap();
        for s in &seen[upstream_before..] {
            assert!(
                s.body.is_none(),
                "{row}: the upstream received a whole body"
            );
        }
        if buffer > 0 {
            assert_eq!(seen.len(), upstream_before, "{row}: reached the upstream");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_answered_400_as_a_client_error() {
    malformed_chunked_bodies_get_400(65536).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_streamed_upstream_is_still_400_and_a_client_error() {
    malformed_chunked_bodies_get_400(0).await;
}

/// A body that sends `first` and then nothing, ever.
struct Stalling {
    first: Option<Bytes>,
    length: Option<u64>,
}

impl Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.length
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_as_a_client_error_over_both_protocols() {
    let up = Recorder::start().await;
    // 1 KiB buffered: the 4 KiB rows stream, the others are read first.
    let proxy = proxy(&up, 1024).await;
    let client = proxy.client();
    let mut n = 0;
    // (row, protocol, declared length, bytes sent before stalling, whether it streams upstream)
    let rows: [(&str, Proto, Option<u64>, usize, bool); 6] = [
        (
            "small body with Content-Length",
            Proto::H1,
            Some(100),
            10,
            false,
        ),
        ("small chunked body", Proto::H1, None, 10, false),
        (
            "large body, partly forwarded",
            Proto::H1,
            Some(4096),
            2000,
            true,
        ),
        (
            "small body with content-length",
            Proto::H2,
            Some(100),
            10,
            false,
        ),
        ("small body without length", Proto::H2, None, 10, false),
        (
            "large body, partly forwarded",
            Proto::H2,
            Some(4096),
            2000,
            true,
        ),
    ];
    for (row, proto, length, sent, streams) in rows {
        let row = format!("{row} over {proto:?}");
        let before = counts(&proxy).await;
        let (accepted, requests) = (up.accepted.load(Ordering::SeqCst), up.requests());
        let started = std::time::Instant::now();
        let status = if proto == Proto::H1 {
            let head = match length {
                Some(len) => format!(
                    "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n"
                ),
                None => CHUNKED_HEAD.to_owned(),
            };
            let mut raw = head.into_bytes();
            match length {
                Some(_) => raw.extend(pattern(sent)),
                None => {
                    raw.extend_from_slice(format!("{sent:x}\r\n").as_bytes());
                    raw.extend(pattern(sent));
                    raw.extend_from_slice(b"\r\n");
                }
            }
            let answer = client.raw_h1(&raw).await;
            assert!(answer.contains("connection: close"), "{row}: {answer:?}");
            answer.get(9..12).unwrap_or("").to_owned()
        } else {
            let mut req = Request::post("https://localhost/upload");
            if let Some(len) = length {
                req = req.header("content-length", len);
            }
            let body = Stalling {
                first: Some(Bytes::from(pattern(sent))),
                length,
            };
            let req = req.body(BodyExt::boxed(body)).unwrap();
            let mut conn = client.connect(Proto::H2).await;
            let status = tokio::time::timeout(Duration::from_secs(10), conn.try_send(req))
                .await
                .expect("answered in time")
                .expect("an answer, not a reset");
            status.as_u16().to_string()
        };
        assert_eq!(status, "408", "{row}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{row}: too late"
        );
        n += 1;
        assert_eq!(record_status(&proxy, n).await, "408", "{row}");
        assert_counted(&row, before, counts(&proxy).await, "body_timeout");
        if streams {
            let seen = up.seen.lock().unwrap();
            assert_eq!(seen.len(), requests + 1, "{row}");
            assert!(seen[requests].body.is_none(), "{row}: body arrived whole");
        } else {
            assert_eq!(up.accepted.load(Ordering::SeqCst), accepted, "{row}");
            assert_eq!(up.requests(), requests, "{row}");
        }
    }
}

/// A body sent as the given frames, without a declared length.
fn frames(parts: &[&'static [u8]]) -> ReqBody {
    struct Frames(Vec<Bytes>);
    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready((!self.0.is_empty()).then(|| Ok(Frame::data(self.0.remove(0)))))
        }
    }
    BodyExt::boxed(Frames(
        parts.iter().map(|p| Bytes::from_static(p)).collect(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_without_length_reaches_the_upstream_with_its_content_length() {
    let up = Recorder::start().await;
    let proxy = proxy(&up, 1024).await;
    let client = proxy.client();
    let big: &'static [u8] = Box::leak(pattern(3000).into_boxed_slice());
    // (row, protocol, frames, whether the upstream gets a Content-Length). The rows over the
    // buffer are controls: they stream, chunked, as before.
    let rows: [(&str, Proto, Vec<&'static [u8]>, bool); 4] = [
        (
            "chunked, 2 chunks",
            Proto::H1,
            vec![b"hello ", b"world"],
            true,
        ),
        (
            "no length, 2 DATA frames",
            Proto::H2,
            vec![b"hello ", b"world"],
            true,
        ),
        (
            "chunked, over the buffer",
            Proto::H1,
            vec![&big[..1500], &big[1500..]],
            false,
        ),
        (
            "no length, over the buffer",
            Proto::H2,
            vec![&big[..1500], &big[1500..]],
            false,
        ),
    ];
    for (row, proto, parts, with_length) in rows {
        let before = up.requests();
        let req = Request::post("https://localhost/upload")
            .body(frames(&parts))
            .unwrap();
        let resp = client.request(proto, req).await;
        assert_eq!(resp.status, StatusCode::OK, "{row}");
        let seen = up.seen.lock().unwrap();
        assert_eq!(seen.len(), before + 1, "{row}");
        let got = &seen[before];
        let expected: Vec<u8> = parts.concat();
        assert_eq!(got.body.as_deref(), Some(&expected[..]), "{row}");
        let length = got
            .headers
            .get("content-length")
            .map(|v| v.to_str().unwrap());
        let chunked = got.headers.get("transfer-encoding").is_some();
        if with_length {
            assert_eq!(length, Some(&*expected.len().to_string()), "{row}");
            assert!(!chunked, "{row}: chunked as well");
        } else {
            assert!(chunked && length.is_none(), "{row}: {:?}", got.headers);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_slow_uploaders_hold_no_upstream_connection() {
    let up = Recorder::start().await;
    let proxy = Proxy::start_with(
        |c| {
            let c = set(&c, "server", "body_read_timeout", "\"2s\"");
            unlimited(&c)
        },
        &up.url(),
    )
    .await;
    let client = proxy.client();
    let before = counts(&proxy).await;
    // Each announces 8 KiB and sends 24 bytes every 200 ms, then stops.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect(Proto::H1).await;
            struct Trickle(u32, Option<Pin<Box<tokio::time::Sleep>>>);
            impl Body for Trickle {
                type Data = Bytes;
                type Error = Infallible;
                fn poll_frame(
                    mut self: Pin<&mut Self>,
                    cx: &mut Context<'_>,
                ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                    if self.0 == 0 {
                        return Poll::Pending;
                    }
                    let sleep = self.1.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep(Duration::from_millis(200)))
                    });
                    std::task::ready!(sleep.as_mut().poll(cx));
                    self.1 = None;
                    self.0 -= 1;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[b'x'; 24])))))
                }
                fn size_hint(&self) -> SizeHint {
                    SizeHint::with_exact(8192)
                }
            }
            let req = Request::post("/upload")
                .header("host", "localhost")
                .body(BodyExt::boxed(Trickle(8, None)))
                .unwrap();
            conn.try_send(req).await.map(|s| s.as_u16()).unwrap_or(0)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "upstream connections while trickling"
    );
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.iter().all(|&s| s == 408), "{statuses:?}");
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "upstream connections after"
    );
    let after = counts(&proxy).await;
    assert_eq!(after.client[0], before.client[0] + 50.0);
    assert_eq!(after.upstream, before.upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_gets_413_as_a_client_error() {
    let up = Recorder::start().await;
    let proxy = Proxy::start_with(
        |c| {
            let c = set(&c, "server", "body_buffer_bytes", "1024");
            let c = set(&c, "server", "max_body_bytes", "2048");
            unlimited(&c)
        },
        &up.url(),
    )
    .await;
    let client = proxy.client();
    let big: &'static [u8] = Box::leak(pattern(3000).into_boxed_slice());
    // (row, protocol, declared length)
    let rows: [(&str, Proto, Option<u64>); 4] = [
        ("announced", Proto::H1, Some(3000)),
        ("chunked, found out while streaming", Proto::H1, None),
        ("announced", Proto::H2, Some(3000)),
        ("no length, found out while streaming", Proto::H2, None),
    ];
    for (n, (row, proto, length)) in rows.into_iter().enumerate() {
        let row = format!("{row} over {proto:?}");
        let before = counts(&proxy).await;
        let requests = up.requests();
        let mut req = Request::post("https://localhost/upload");
        let body = match length {
            Some(len) => {
                req = req.header("content-length", len);
                body(Bytes::from_static(big))
            }
            None => frames(&[&big[..1500], &big[1500..]]),
        };
        let resp = client.request(proto, req.body(body).unwrap()).await;
        assert_eq!(resp.status, StatusCode::PAYLOAD_TOO_LARGE, "{row}");
        assert_eq!(record_status(&proxy, n + 1).await, "413", "{row}");
        assert_counted(&row, before, counts(&proxy).await, "body_too_large");
        for s in &up.seen.lock().unwrap()[requests..] {
            assert!(
                s.body.is_none(),
                "{row}: the upstream received a whole body"
            );
        }
    }
}

/// Writes `request` over a TLS connection (ALPN http/1.1), closes the sending side (TLS
/// close_notify, then FIN) and returns all that comes back.
async fn raw_h1_then_close(proxy: &Proxy, request: &[u8]) -> String {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = tls_client_config(&proxy.path("cert.pem"), Some(b"http/1.1"));
    let tcp = tokio::net::TcpStream::connect(proxy.tls_addr)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    tls.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_or_abandoned_is_the_clients_failure() {
    let up = Recorder::start().await;
    let proxy = proxy(&up, 65536).await;
    let client = proxy.client();

    // HTTP/1.1: the connection's sending side ends 90 bytes short of Content-Length.
    let before = counts(&proxy).await;
    let mut raw =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n".to_vec();
    raw.extend(pattern(10));
    let answer = raw_h1_then_close(&proxy, &raw).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(record_status(&proxy, 1).await, "400");
    assert_counted(
        "HTTP/1.1 cut short",
        before,
        counts(&proxy).await,
        "body_incomplete",
    );

    // HTTP/2: the client resets its stream (CANCEL) mid-body: recorded 499, never sent.
    let before = counts(&proxy).await;
    let mut conn = client.connect(Proto::H2).await;
    let req = Request::post("https://localhost/upload")
        .header("content-length", "100")
        .body(BodyExt::boxed(Stalling {
            first: Some(Bytes::from(pattern(10))),
            length: Some(100),
        }))
        .unwrap();
    let sending = tokio::spawn(async move {
        let _ = conn.try_send(req).await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Dropping the response future resets the stream with CANCEL.
    sending.abort();
    assert_eq!(record_status(&proxy, 2).await, "499");
    assert_counted("HTTP/2 reset", before, counts(&proxy).await, "body_reset");

    // HTTP/2: a stream at odds with its own content-length is malformed (RFC 9113 §8.1.1);
    // `h2` resets it, and the record says 400.
    let rows: [(&str, &'static [u8], &str); 2] = [
        ("DATA beyond content-length", b"0123456789", "5"),
        ("END_STREAM short of content-length", b"0123456789", "20"),
    ];
    for (i, (row, data, declared)) in rows.into_iter().enumerate() {
        let before = counts(&proxy).await;
        let req = Request::post("https://localhost/upload")
            .header("content-length", declared)
            .body(frames(&[data]))
            .unwrap();
        let mut conn = client.connect(Proto::H2).await;
        let answer = conn.try_send(req).await;
        assert!(
            answer.is_err() || answer.as_ref().is_ok_and(|s| *s == StatusCode::BAD_REQUEST),
            "{row}: {answer:?}"
        );
        assert_eq!(record_status(&proxy, 3 + i).await, "400", "{row}");
        assert_counted(row, before, counts(&proxy).await, "body_malformed");
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_trickling_at_the_request_timeout_is_the_clients_failure() {
    let up = Recorder::start().await;
    let proxy = Proxy::start_with(
        |c| {
            let c = set(&c, "server", "body_read_timeout", "\"500ms\"");
            let c = set(&c, "server", "body_buffer_bytes", "1024");
            let c = set(&c, "upstream", "request_timeout", "\"1s\"");
            unlimited(&c)
        },
        &up.url(),
    )
    .await;
    // 2000 bytes at once (past the buffer: the body streams upstream), then 10 bytes every
    // 100 ms: never idle for body_read_timeout, unfinished at request_timeout.
    struct Trickle(u32, Option<Pin<Box<tokio::time::Sleep>>>);
    impl Body for Trickle {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.0 == 0 {
                self.0 += 1;
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(pattern(2000))))));
            }
            let sleep = self
                .1
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            std::task::ready!(sleep.as_mut().poll(cx));
            self.1 = None;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"0123456789")))))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(100_000)
        }
    }
    for (n, proto) in BOTH.into_iter().enumerate() {
        let before = counts(&proxy).await;
        let mut conn = proxy.client().connect(proto).await;
        let req = Request::post("/upload")
            .header("host", "localhost")
            .body(BodyExt::boxed(Trickle(0, None)))
            .unwrap();
        let req = match proto {
            Proto::H1 => req,
            Proto::H2 => {
                let (mut parts, body) = req.into_parts();
                parts.uri = "https://localhost/upload".parse().unwrap();
                parts.headers.remove("host");
                Request::from_parts(parts, body)
            }
        };
        let status = tokio::time::timeout(Duration::from_secs(10), conn.try_send(req))
            .await
            .expect("answered in time")
            .expect("an answer");
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{proto:?}");
        assert_eq!(record_status(&proxy, n + 1).await, "408", "{proto:?}");
        let row = format!("{proto:?}");
        assert_counted(&row, before, counts(&proxy).await, "body_timeout");
    }
}

// That the upstream alert never fires from client failures is a promtool unit test,
// tests/data/alerts_client_vs_upstream.yml, run with every other rule test by tests/metrics.rs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_after_the_answer_began_is_recorded_408() {
    // /echo answers at once and streams the body back: the 200 head is out before the body
    // stalls, so the record, not the answer, says whose failure it was.
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(
        |c| {
            let c = set(&c, "server", "body_read_timeout", "\"300ms\"");
            let c = set(&c, "server", "body_buffer_bytes", "1024");
            unlimited(&c)
        },
        &up.url(),
    )
    .await;
    for (n, proto) in BOTH.into_iter().enumerate() {
        let before = counts(&proxy).await;
        let mut conn = proxy.client().connect(proto).await;
        let mut req = Request::post("https://localhost/echo")
            .header("content-length", "4096")
            .body(BodyExt::boxed(Stalling {
                first: Some(Bytes::from(pattern(2000))),
                length: Some(4096),
            }))
            .unwrap();
        if proto == Proto::H1 {
            *req.uri_mut() = "/echo".parse().unwrap();
            req.headers_mut()
                .insert("host", http::HeaderValue::from_static("localhost"));
        }
        // The response is held, unread, so the client's side stays open.
        let sending = async {
            match &mut conn {
                Conn::H1(s) => s.send_request(req).await,
                Conn::H2(s) => s.send_request(req).await,
            }
        };
        let resp = tokio::time::timeout(Duration::from_secs(10), sending)
            .await
            .expect("answered in time")
            .expect("an answer");
        assert_eq!(resp.status(), StatusCode::OK, "{proto:?}");
        assert_eq!(record_status(&proxy, n + 1).await, "408", "{proto:?}");
        drop(resp);
        assert_counted(
            &format!("{proto:?}"),
            before,
            counts(&proxy).await,
            "body_timeout",
        );
    }
}
