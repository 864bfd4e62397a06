//! The request head limits, the same over HTTP/1.1 and HTTP/2 and answered per request:
//! `server.max_header_fields` (field lines) and `server.max_header_bytes` (header list size,
//! RFC 9113 §6.5.2) get 431 and a record, and leave an HTTP/2 connection open for the next
//! request; heads over the protocol layers' hard cap (four times `max_header_bytes`, at least
//! 64 KiB) get what README documents. One table row per input, each sent over both protocols.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{BOTH, Conn, Proto, Proxy, body, field, set};
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An upstream that counts the requests it receives and answers 200. Its parser takes up to
/// 1,000 field lines: the proxy adds up to three (`X-Forwarded-*`) to what a client sends, and
/// hyper's default (100) would refuse those heads itself.
struct Upstream {
    url: String,
    seen: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .max_headers(1000)
                        .max_buf_size(1 << 20)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Upstream { url, seen, task }
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// What the next request on the same connection gets.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Next {
    /// 200: the connection stays usable.
    Works,
    /// The connection was closed.
    Closed,
}

/// What a row expects after sending its head.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// This status and one record with it; the upstream sees the request only for a 200.
    Status(u16),
    /// This status from the protocol layer itself, and no record (HTTP/2 over the hard cap).
    StatusUnrecorded(u16),
    /// No answer: the connection ends (HTTP/2 flood defence).
    ConnectionEnds,
    /// This status and one record with it, but a client still writing a head far over the
    /// hard cap may see the connection reset first: the parser answers and closes with the
    /// rest unread (no lingering close for a head yet).
    StatusOrReset(u16),
}

struct Row {
    name: String,
    proto: Proto,
    /// Header field lines besides `Host` / `:authority`, in order.
    fields: Vec<(String, String)>,
    answer: Answer,
    next: Next,
}

/// The header list size (RFC 9113 §6.5.2) of `GET /p` to localhost with no fields but
/// `Host`/`:authority`, as the proxy counts it: within 6 bytes over both protocols.
const BASE_LIST_SIZE: usize = (7 + 3 + 32) + (5 + 2 + 32) + (7 + 5 + 32) + (10 + 9 + 32);

/// `n` fields named `x-f-<i>` whose list size adds up to `total` (each field costs its name,
/// its value and 32 bytes).
fn filler(n: usize, total: usize) -> Vec<(String, String)> {
    let names: Vec<String> = (0..n).map(|i| format!("x-f-{i}")).collect();
    let overhead: usize = names.iter().map(|k| k.len() + 32).sum();
    let values = total - overhead;
    names
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let len = values / n + usize::from(i < values % n);
            (k, "v".repeat(len))
        })
        .collect()
}

fn numbered(n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("x-f-{i}"), "1".into())).collect()
}

fn rows(max_header_bytes: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let under = max_header_bytes - BASE_LIST_SIZE - 64;
    let over = max_header_bytes - BASE_LIST_SIZE + 64;
    for proto in BOTH {
        // A parser refusal ends an HTTP/1.1 connection; HTTP/2 refuses the stream only.
        let refused_next = match proto {
            Proto::H1 => Next::Closed,
            Proto::H2 => Next::Works,
        };
        let mut row = |name: &str, fields, answer, next| {
            rows.push(Row {
                name: format!("{proto:?}: {name}"),
                proto,
                fields,
                answer,
                next,
            })
        };
        row(
            "100 field lines are forwarded",
            numbered(99),
            Answer::Status(200),
            Next::Works,
        );
        row(
            "101 field lines get 431",
            numbered(100),
            Answer::Status(431),
            refused_next,
        );
        row(
            "1,000 small field lines get 431",
            numbered(999),
            Answer::Status(431),
            refused_next,
        );
        row(
            "one field just under max_header_bytes is forwarded",
            filler(1, under),
            Answer::Status(200),
            Next::Works,
        );
        row(
            "one field just over max_header_bytes gets 431",
            filler(1, over),
            Answer::Status(431),
            Next::Works,
        );
        row(
            "50 fields just under max_header_bytes are forwarded",
            filler(50, under),
            Answer::Status(200),
            Next::Works,
        );
        row(
            "50 fields just over max_header_bytes get 431",
            filler(50, over),
            Answer::Status(431),
            Next::Works,
        );
        row(
            "a 40 KB head between max_header_bytes and the hard cap gets 431",
            filler(10, 40_000),
            Answer::Status(431),
            Next::Works,
        );
    }
    let mut push = |name: &str, proto, fields, answer, next| {
        rows.push(Row {
            name: name.into(),
            proto,
            fields,
            answer,
            next,
        })
    };
    // Cookie crumbs: HTTP/2 clients split one Cookie line into crumbs (RFC 9113 §8.2.3).
    let crumbs: Vec<(String, String)> = (0..150)
        .map(|i| ("cookie".into(), format!("c{i}=1")))
        .collect();
    let one_line = (0..150)
        .map(|i| format!("c{i}=1"))
        .collect::<Vec<_>>()
        .join("; ");
    push(
        "HTTP/2: 150 Cookie crumbs count as one line",
        Proto::H2,
        crumbs.clone(),
        Answer::Status(200),
        Next::Works,
    );
    push(
        "HTTP/1.1: the same cookies on one Cookie line",
        Proto::H1,
        vec![("cookie".into(), one_line)],
        Answer::Status(200),
        Next::Works,
    );
    push(
        "HTTP/1.1: 150 Cookie lines count as 150",
        Proto::H1,
        crumbs,
        Answer::Status(431),
        Next::Closed,
    );
    // Over the hard cap (64 KiB at the default max_header_bytes).
    let field = |len: usize| vec![("x-big".to_owned(), "b".repeat(len))];
    push(
        "HTTP/1.1: an 80 KB head over the hard cap gets 431 from the parser",
        Proto::H1,
        field(80_000),
        Answer::Status(431),
        Next::Closed,
    );
    push(
        "HTTP/1.1: a 300 KB head over the hard cap gets 431 from the parser",
        Proto::H1,
        field(300_000),
        Answer::StatusOrReset(431),
        Next::Closed,
    );
    push(
        "HTTP/2: an 80 KB header list over the hard cap gets 431 from the HTTP/2 layer",
        Proto::H2,
        field(80_000),
        Answer::StatusUnrecorded(431),
        Next::Works,
    );
    push(
        "HTTP/2: a 300 KB header list ends the connection",
        Proto::H2,
        field(300_000),
        Answer::ConnectionEnds,
        Next::Closed,
    );
    rows
}

/// `GET path` with `fields`, in the protocol's form (HTTP/1.1: origin form and `Host`).
fn request(proto: Proto, path: &str, fields: &[(String, String)]) -> Request<common::ReqBody> {
    let mut req = match proto {
        Proto::H1 => Request::get(path).header("host", "localhost"),
        Proto::H2 => Request::get(format!("https://localhost{path}")),
    };
    for (k, v) in fields {
        req = req.header(k.as_str(), v.as_str());
    }
    req.body(body(Bytes::new())).unwrap()
}

/// Waits for the access log to hold `n` records, then a little longer for a straggler.
async fn settle(proxy: &Proxy, n: usize) -> Vec<String> {
    common::wait_lines(n, || proxy.records()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = proxy.records();
    assert_eq!(all.len(), n, "records:\n{}", all.join("\n"));
    all
}

/// Runs `rows` one by one against a fresh proxy; each row checks the answer, what the upstream
/// saw, the row's record and the next request on the same connection.
async fn run(rows: Vec<Row>, edit: impl FnOnce(String) -> String) {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(edit, &upstream.url).await;
    let client = proxy.client();
    let mut logged = 0;
    for (i, row) in rows.iter().enumerate() {
        let what = format!("row {i}: {}", row.name);
        let seen_before = upstream.seen();
        let mut conn = client.connect(row.proto).await;
        let answer = conn
            .try_send(request(row.proto, &format!("/row{i}"), &row.fields))
            .await;
        let seen = upstream.seen() - seen_before;
        match row.answer {
            Answer::Status(status) | Answer::StatusOrReset(status) => {
                let answered = answer.as_ref().map(|s| s.as_u16()).ok();
                if matches!(row.answer, Answer::Status(_)) || answered.is_some() {
                    assert_eq!(answered, Some(status), "{what}");
                }
                assert_eq!(seen, usize::from(status == 200), "{what}: upstream saw");
                logged += 1;
                let all = settle(&proxy, logged).await;
                let record = &all[logged - 1];
                assert_eq!(field(record, "status"), status.to_string(), "{what}");
                let proto = match row.proto {
                    Proto::H1 => "HTTP/1.1",
                    Proto::H2 => "HTTP/2",
                };
                assert_eq!(field(record, "proto"), proto, "{what}");
            }
            Answer::StatusUnrecorded(status) => {
                assert_eq!(
                    answer.as_ref().map(|s| s.as_u16()).ok(),
                    Some(status),
                    "{what}"
                );
                assert_eq!(seen, 0, "{what}: upstream saw");
                settle(&proxy, logged).await;
            }
            Answer::ConnectionEnds => {
                assert!(answer.is_err(), "{what}: answered {answer:?}");
                assert_eq!(seen, 0, "{what}: upstream saw");
                settle(&proxy, logged).await;
            }
        }
        let next = if let Conn::H1(send) = &mut conn
            && row.next == Next::Closed
        {
            // hyper's client finds out the connection is gone when it next waits to send.
            let _ = tokio::time::timeout(Duration::from_secs(2), send.ready()).await;
            match send.is_closed() {
                true => Next::Closed,
                false => Next::Works,
            }
        } else {
            match conn.try_send(request(row.proto, "/next", &[])).await {
                Ok(s) if s.as_u16() == 200 => Next::Works,
                Ok(s) => panic!("{what}: next request got {s}"),
                Err(_) => Next::Closed,
            }
        };
        assert_eq!(
            next, row.next,
            "{what}: next request on the same connection"
        );
        if next == Next::Works {
            logged += 1;
            settle(&proxy, logged).await;
        }
    }
    // The proxy still serves new connections.
    let resp = client.get(Proto::H2, "/last").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_head_limit_row_is_answered_per_request_the_same_over_both_protocols() {
    run(rows(16384), |c| c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_max_header_fields_is_the_limit_over_both_protocols() {
    let mut rows = Vec::new();
    for proto in BOTH {
        for (n, answer, next) in [
            (19, Answer::Status(200), Next::Works),
            (20, Answer::Status(431), Next::Closed),
        ] {
            let next = if proto == Proto::H2 {
                Next::Works
            } else {
                next
            };
            rows.push(Row {
                name: format!(
                    "{proto:?}: {} field lines with max_header_fields = 20",
                    n + 1
                ),
                proto,
                fields: numbered(n),
                answer,
                next,
            });
        }
    }
    run(rows, |c| set(&c, "server", "max_header_fields", "20")).await;
}
