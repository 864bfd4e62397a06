//! Field correctness end to end: what real clients send, one table row per input.
//!
//! Each row goes through the real proxy over real TLS (HTTP/1.1 through hyper's client or as
//! raw bytes, HTTP/2 through hyper's client) to a real upstream that records what it receives;
//! the row checks the client's answer, what the upstream saw (or that it saw nothing), and the
//! row's one access-log record. Kinds: list-valued fields over several lines (RFC 9110 §5.3,
//! §5.6.1), the request's authority (RFC 9113 §8.3.1, RFC 9112 §3.2), the HTTP/2 to HTTP/1.1
//! translation and methods a reverse proxy answers itself, heads refused before forwarding,
//! and forwarding headers a client cannot strip.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{BOTH, Proto, Proxy, Upstream, body, day_file, eventually, field, set};
use http::{HeaderMap, Request, StatusCode};

/// What a row sends.
enum Send {
    /// Through hyper's client: method, path, header lines (in order, repeats allowed).
    Http(Proto, &'static str, String, Vec<(&'static str, String)>),
    /// Raw HTTP/1.1 bytes.
    Raw(Vec<u8>),
}

/// A check on the head the upstream received.
type UpstreamCheck = Box<dyn Fn(&HeaderMap)>;

/// What a row expects.
struct Row {
    name: &'static str,
    send: Send,
    status: u16,
    /// Checks on the head the upstream received; `None`: the upstream must receive nothing.
    upstream: Option<UpstreamCheck>,
    /// (field, value) pairs the row's record must have.
    record: Vec<(&'static str, &'static str)>,
}

fn lines(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn all(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn get(proto: Proto, path: &'static str, headers: &[(&'static str, &str)]) -> Send {
    Send::Http(proto, "GET", path.to_owned(), lines(headers))
}

fn proto_name(proto: Proto) -> &'static str {
    match proto {
        Proto::H1 => "HTTP/1.1",
        Proto::H2 => "HTTP/2",
    }
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for proto in BOTH {
        let p = proto_name(proto);
        // Kind 2: list-valued fields over several field lines.
        rows.push(Row {
            name: "two X-Forwarded-For lines are one list, in order",
            send: get(
                proto,
                "/xff-lines",
                &[
                    ("x-forwarded-for", "203.0.113.5"),
                    ("x-forwarded-for", "198.51.100.10"),
                ],
            ),
            status: 200,
            upstream: Some(Box::new(|h| {
                assert_eq!(
                    all(h, "x-forwarded-for"),
                    ["203.0.113.5, 198.51.100.10, 127.0.0.1"]
                )
            })),
            record: vec![("net", "198.51.100.0/24"), ("country", "AL"), ("proto", p)],
        });
        rows.push(Row {
            name: "an empty X-Forwarded-For element is ignored",
            send: get(
                proto,
                "/xff-empty",
                &[("x-forwarded-for", "198.51.100.10,")],
            ),
            status: 200,
            upstream: Some(Box::new(|h| {
                assert_eq!(all(h, "x-forwarded-for"), ["198.51.100.10, 127.0.0.1"])
            })),
            record: vec![("net", "198.51.100.0/24"), ("country", "AL")],
        });
        rows.push(Row {
            name: "empty elements and whitespace around a chain",
            send: get(
                proto,
                "/xff-ows",
                &[
                    ("x-forwarded-for", " , 203.0.113.5 ,"),
                    ("x-forwarded-for", ""),
                    ("x-forwarded-for", "\t198.51.100.10\t, "),
                ],
            ),
            status: 200,
            upstream: Some(Box::new(|h| {
                assert_eq!(
                    all(h, "x-forwarded-for"),
                    ["203.0.113.5, 198.51.100.10, 127.0.0.1"]
                )
            })),
            record: vec![("net", "198.51.100.0/24")],
        });
        rows.push(Row {
            name: "Forwarded over two lines, quoted node with port",
            send: get(
                proto,
                "/fwd",
                &[
                    ("forwarded", "for=203.0.113.5,"),
                    ("forwarded", "for=\"198.51.100.10:4711\";proto=https"),
                ],
            ),
            status: 200,
            upstream: Some(Box::new(|_| {})),
            record: vec![("net", "198.51.100.0/24"), ("country", "AL")],
        });
        rows.push(Row {
            name: "Accept-Language over two lines is one list",
            send: get(
                proto,
                "/lang",
                &[
                    ("accept-language", "en;q=0.1,"),
                    ("accept-language", ", sq"),
                ],
            ),
            status: 200,
            upstream: Some(Box::new(|_| {})),
            record: vec![("lang", "sq")],
        });
        // Kind 3: one authority per request, normalised.
        rows.push(Row {
            name: "the authority is normalised for upstream, X-Forwarded-Host and log",
            send: match proto {
                Proto::H1 => get(proto, "/case", &[("host", "LocalHost.")]),
                Proto::H2 => Send::Http(proto, "GET", "https://LocalHost./case".into(), vec![]),
            },
            status: 200,
            upstream: Some(Box::new(|h| {
                assert_eq!(all(h, "host"), ["localhost"]);
                assert_eq!(all(h, "x-forwarded-host"), ["localhost"]);
            })),
            record: vec![("host", "localhost")],
        });
        rows.push(Row {
            name: "a host not listed is forwarded but not recorded",
            send: match proto {
                Proto::H1 => get(proto, "/other-host", &[("host", "other.example")]),
                Proto::H2 => Send::Http(
                    proto,
                    "GET",
                    "https://other.example/other-host".into(),
                    vec![],
                ),
            },
            status: 200,
            upstream: Some(Box::new(|h| assert_eq!(all(h, "host"), ["other.example"]))),
            record: vec![("host", "null")],
        });
        // Issue 12 §3: the proxy's own forwarding headers survive any Connection option.
        if proto == Proto::H1 {
            rows.push(Row {
                name: "Connection cannot strip the forwarding headers",
                send: get(
                    proto,
                    "/conn-strip",
                    &[(
                        "connection",
                        "keep-alive, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Host",
                    )],
                ),
                status: 200,
                upstream: Some(Box::new(|h| {
                    assert_eq!(all(h, "x-forwarded-for"), ["127.0.0.1"]);
                    assert_eq!(all(h, "x-forwarded-proto"), ["https"]);
                    assert_eq!(all(h, "x-forwarded-host"), ["localhost"]);
                    assert_eq!(all(h, "host"), ["localhost"]);
                })),
                record: vec![("host", "localhost")],
            });
            rows.push(Row {
                name: "Connection options over two lines are all removed",
                send: get(
                    proto,
                    "/conn-lines",
                    &[
                        ("connection", "keep-alive"),
                        ("connection", ", X-Secret-Hop ,"),
                        ("x-secret-hop", "v"),
                        ("x-kept", "k"),
                    ],
                ),
                status: 200,
                upstream: Some(Box::new(|h| {
                    assert!(h.get("x-secret-hop").is_none());
                    assert_eq!(all(h, "x-kept"), ["k"]);
                })),
                record: vec![],
            });
        }
        // Kind 4: translation and methods.
        rows.push(Row {
            name: "several Cookie fields reach the upstream as one line",
            send: get(
                proto,
                "/cookie-lines",
                &[
                    ("cookie", "session_id=abc123"),
                    ("cookie", "preferred_language=en"),
                ],
            ),
            status: 200,
            upstream: Some(Box::new(move |h| {
                let cookies = all(h, "cookie");
                // HTTP/1.1 clients send one line themselves; hyper's sends what it is given,
                // so the HTTP/1.1 row passes the lines on as they came.
                if proto == Proto::H2 {
                    assert_eq!(cookies, ["session_id=abc123; preferred_language=en"]);
                } else {
                    assert_eq!(cookies.concat(), "session_id=abc123preferred_language=en");
                }
            })),
            record: vec![],
        });
        rows.push(Row {
            name: "TRACE is answered 405 here",
            send: Send::Http(proto, "TRACE", "/trace".into(), vec![]),
            status: 405,
            upstream: None,
            record: vec![("method", "TRACE"), ("status", "405"), ("path", "/trace")],
        });
        rows.push(Row {
            name: "OPTIONS with Max-Forwards 0 is answered here",
            send: Send::Http(
                proto,
                "OPTIONS",
                "/opt0".into(),
                lines(&[("max-forwards", "0")]),
            ),
            status: 200,
            upstream: None,
            record: vec![("method", "OPTIONS"), ("status", "200")],
        });
        rows.push(Row {
            name: "OPTIONS with Max-Forwards 3 is forwarded with 2",
            send: Send::Http(
                proto,
                "OPTIONS",
                "/opt3".into(),
                lines(&[("max-forwards", "3")]),
            ),
            status: 200,
            upstream: Some(Box::new(|h| assert_eq!(all(h, "max-forwards"), ["2"]))),
            record: vec![("method", "OPTIONS")],
        });
        // Kind 6: refused heads get a record.
        rows.push(Row {
            name: "a 20 kB path gets 431 and a record",
            send: Send::Http(
                proto,
                "GET",
                format!("/long/{}", "a".repeat(20_000)),
                vec![],
            ),
            status: 431,
            upstream: None,
            record: vec![("status", "431"), ("path", "/long/:id"), ("proto", p)],
        });
        rows.push(Row {
            name: "a 20 kB header gets 431 and a record",
            send: get(proto, "/long-header", &[("x-big", &"b".repeat(20_000))]),
            status: 431,
            upstream: None,
            record: vec![("status", "431"), ("path", "/long-header")],
        });
    }
    // HTTP/2 only: :authority against Host.
    rows.push(Row {
        name: "HTTP/2 Host conflicting with :authority gets 400",
        send: get(Proto::H2, "/conflict", &[("host", "evil.example")]),
        status: 400,
        upstream: None,
        record: vec![("status", "400"), ("host", "null"), ("proto", "HTTP/2")],
    });
    rows.push(Row {
        name: "HTTP/2 Host repeating :authority is fine",
        send: get(Proto::H2, "/same", &[("host", "localhost")]),
        status: 200,
        upstream: Some(Box::new(|h| assert_eq!(all(h, "host"), ["localhost"]))),
        record: vec![("host", "localhost")],
    });
    // HTTP/1.1 heads no client library sends.
    let raw = |s: &str| Send::Raw(s.as_bytes().to_vec());
    rows.push(Row {
        name: "absolute form: the target's authority replaces Host",
        send: raw(
            "GET https://ads.example/abs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ),
        status: 200,
        upstream: Some(Box::new(|h| {
            assert_eq!(all(h, "host"), ["ads.example"]);
            assert_eq!(all(h, "x-forwarded-host"), ["ads.example"]);
        })),
        record: vec![("host", "ads.example"), ("path", "/abs")],
    });
    rows.push(Row {
        name: "HTTP/1.1 without Host gets 400",
        send: raw("GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n"),
        status: 400,
        upstream: None,
        record: vec![("status", "400"), ("path", "/nohost"), ("host", "null")],
    });
    rows.push(Row {
        name: "HTTP/1.0 without Host is served",
        send: raw("GET /h10 HTTP/1.0\r\n\r\n"),
        status: 200,
        upstream: Some(Box::new(|h| {
            assert_eq!(h.get_all("host").iter().count(), 1)
        })),
        record: vec![("status", "200"), ("host", "null")],
    });
    rows.push(Row {
        name: "two Host lines get 400",
        send: raw("GET /twohosts HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
        status: 400,
        upstream: None,
        record: vec![("status", "400"), ("host", "null")],
    });
    rows.push(Row {
        name: "a Host with userinfo gets 400",
        send: raw("GET /userinfo HTTP/1.1\r\nHost: user@localhost\r\nConnection: close\r\n\r\n"),
        status: 400,
        upstream: None,
        record: vec![("status", "400")],
    });
    rows.push(Row {
        name: "CONNECT is answered 405 here",
        send: raw("CONNECT ads.example:443 HTTP/1.1\r\nHost: ads.example:443\r\nConnection: close\r\n\r\n"),
        status: 405,
        upstream: None,
        record: vec![("method", "CONNECT"), ("status", "405")],
    });
    rows.push(Row {
        name: "conflicting Content-Length gets 400 and a record",
        send: raw("POST /cl HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        status: 400,
        upstream: None,
        record: vec![("status", "400"), ("method", "OTHER"), ("path", ""), ("proto", "HTTP/1.1")],
    });
    rows.push(Row {
        name: "a head over the parser's cap gets 431 and a record",
        send: Send::Raw(
            format!(
                "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
                "z".repeat(300_000)
            )
            .into_bytes(),
        ),
        status: 431,
        upstream: None,
        record: vec![("status", "431"), ("path", ""), ("net", "127.0.0.0/24")],
    });
    rows.push(Row {
        name: "a malformed request line gets 400 and a record",
        send: raw("GET /a b c HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        status: 400,
        upstream: None,
        record: vec![("status", "400"), ("method", "OTHER")],
    });
    rows.push(Row {
        name: "a malformed field line gets 400 and a record",
        send: raw("GET /f HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n"),
        status: 400,
        upstream: None,
        record: vec![("status", "400")],
    });
    rows
}

fn read_records(proxy: &Proxy) -> Vec<String> {
    std::fs::read_to_string(day_file(proxy))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn send(client: &common::Client, send: &Send) -> u16 {
    match send {
        Send::Http(proto, method, target, headers) => {
            let uri = if target.starts_with('/') {
                format!("https://localhost{target}")
            } else {
                target.clone()
            };
            let mut req = Request::builder().method(method.as_bytes()).uri(uri);
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            let req = req.body(body(Bytes::new())).unwrap();
            client.request(*proto, req).await.status.as_u16()
        }
        Send::Raw(bytes) => {
            let answer = client.raw_h1(bytes).await;
            let status = answer.split(' ').nth(1).unwrap_or("");
            status.parse().unwrap_or_else(|_| panic!("no status line"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_row_is_answered_forwarded_and_recorded_as_specified() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        |c| {
            let c = set(&c, "client_ip", "trusted_proxies", r#"["127.0.0.0/8"]"#);
            set(&c, "server", "hosts", r#"["localhost", "ads.example"]"#)
        },
        &upstream.url(),
    )
    .await;
    let client = proxy.client();
    let rows = rows();
    let mut four_xx = 0;
    for (i, row) in rows.iter().enumerate() {
        let seen_before = upstream.seen.lock().unwrap().len();
        let status = send(&client, &row.send).await;
        assert_eq!(status, row.status, "row {i}: {}", row.name);
        let seen: Vec<HeaderMap> = upstream.seen.lock().unwrap()[seen_before..].to_vec();
        match &row.upstream {
            None => assert!(seen.is_empty(), "row {i}: {}: forwarded", row.name),
            Some(check) => {
                assert_eq!(seen.len(), 1, "row {i}: {}", row.name);
                check(&seen[0]);
            }
        }
        four_xx += usize::from((400..500).contains(&row.status));
    }
    // Rows ran one after another, so their records are in row order.
    let records = eventually(
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || {
            let r = read_records(&proxy);
            (r.len() >= rows.len()).then_some(r)
        },
        || format!("records:\n{}", read_records(&proxy).join("\n")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(read_records(&proxy).len(), rows.len(), "one record per row");
    for (i, (row, record)) in rows.iter().zip(&records).enumerate() {
        assert_eq!(
            field(record, "status"),
            row.status.to_string(),
            "row {i}: {}",
            row.name
        );
        for (name, want) in &row.record {
            assert_eq!(&field(record, name), want, "row {i}: {}: {name}", row.name);
        }
    }
    // Every refused request is counted too.
    let (status, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("webprom_edge_http_requests_total{") && l.contains("\"4xx\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        counted as usize, four_xx,
        "4xx counted in http_requests_total"
    );

    // HTTP/2 Content-Length values that disagree make the request malformed: the HTTP/2 layer
    // resets the stream (RFC 9113 §8.1.1) and nothing is forwarded.
    let seen_before = upstream.seen.lock().unwrap().len();
    let mut conn = client.connect(Proto::H2).await;
    let req = Request::get("https://localhost/cl-h2")
        .header("content-length", "0")
        .header("content-length", "5")
        .body(body(Bytes::new()))
        .unwrap();
    assert!(conn.try_send(req).await.is_err(), "stream reset");
    assert_eq!(upstream.seen.lock().unwrap().len(), seen_before);
}
