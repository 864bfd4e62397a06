//! End-to-end tests of the forwarding core (issue 2): protocols, bodies, header hygiene,
//! client address resolution, error mapping, certificate reload and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_over_both_protocols() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let client = proxy.client();
    for proto in BOTH {
        let resp = client.get(proto, "/").await;
        assert_eq!(resp.status, StatusCode::OK, "{proto:?}");
        assert_eq!(resp.text(), GREETING, "{proto:?}");

        let req = Request::post("https://localhost/echo")
            .body(body(format!("posted over {proto:?}")))
            .unwrap();
        let resp = client.request(proto, req).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.text(), format!("posted over {proto:?}"));
    }
    // Both protocols reached the upstream as HTTP/1.1 with the Host the client asked for.
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for h in seen {
        assert_eq!(h["host"], "localhost");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "localhost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabytes_each_way_arrive_byte_identical() {
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(
        |c| set(&c, "server", "max_body_bytes", "8388608"),
        &up.url(),
    )
    .await;
    let client = proxy.client();
    let data = pattern(5 << 20);
    for proto in BOTH {
        let resp = client
            .get(proto, &format!("/big?bytes={}", data.len()))
            .await;
        assert_eq!(resp.status, StatusCode::OK);
        assert!(
            resp.body == data,
            "{proto:?}: download differs ({} bytes)",
            resp.body.len()
        );

        for streamed in [false, true] {
            let b = if streamed {
                chunked_body(data.clone())
            } else {
                body(data.clone())
            };
            let req = Request::post("https://localhost/echo").body(b).unwrap();
            let resp = client.request(proto, req).await;
            assert_eq!(resp.status, StatusCode::OK);
            assert!(
                resp.body == data,
                "{proto:?} streamed={streamed}: upload differs ({} bytes)",
                resp.body.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_never_cross() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let mut conn = proxy.client().connect(Proto::H1).await;
    let req = Request::get("/headers")
        .header("connection", "keep-alive, X-Custom-Hop")
        .header("x-custom-hop", "must-not-pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("upgrade", "h2c")
        .header("x-end-to-end", "passes")
        .body(body(Bytes::new()))
        .unwrap();
    let resp = conn.send(req).await;
    assert_eq!(resp.status, StatusCode::OK);
    let h = up.last_headers();
    for name in [
        "x-custom-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(!h.contains_key(name), "{name} reached the upstream: {h:?}");
    }
    // hyper's client adds its own `connection` only when it needs one; ours never passes.
    assert!(
        h.get("connection")
            .is_none_or(|v| v != "keep-alive, X-Custom-Hop")
    );
    assert_eq!(h["x-end-to-end"], "passes");

    // And in the other direction.
    for proto in BOTH {
        let resp = proxy.client().get(proto, "/hop").await;
        assert_eq!(resp.status, StatusCode::OK);
        assert!(!resp.headers.contains_key("x-resp-hop"), "{proto:?}");
        assert!(!resp.headers.contains_key("keep-alive"), "{proto:?}");
        assert_eq!(resp.headers["x-end-to-end"], "kept");
    }
}

fn spoofed() -> Request<ReqBody> {
    Request::get("/headers")
        .header("x-forwarded-for", "198.51.100.7, 10.1.2.3")
        .body(body(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_peers() {
    let up = Upstream::start().await;
    // Untrusted peer, truncated forwarding: the upstream learns only the peer's network.
    let untrusted = Proxy::start_with(
        |c| set(&c, "upstream", "forward_client_ip", "\"truncated\""),
        &up.url(),
    )
    .await;
    let mut conn = untrusted.client().connect(Proto::H1).await;
    conn.send(spoofed()).await;
    assert_eq!(up.last_headers()["x-forwarded-for"], "127.0.0.0");

    // Trusted peer: the right-most untrusted entry is the client (10.1.2.3 is not trusted).
    let trusted = Proxy::start_with(
        |c| {
            let c = set(&c, "upstream", "forward_client_ip", "\"truncated\"");
            set(&c, "client_ip", "trusted_proxies", "[\"127.0.0.0/8\"]")
        },
        &up.url(),
    )
    .await;
    let mut conn = trusted.client().connect(Proto::H1).await;
    conn.send(spoofed()).await;
    assert_eq!(up.last_headers()["x-forwarded-for"], "10.1.2.0");
    drop(trusted);

    // Trusting 10/8 too, the walk goes one hop further left.
    let deeper = Proxy::start_with(
        |c| {
            let c = set(&c, "upstream", "forward_client_ip", "\"truncated\"");
            set(
                &c,
                "client_ip",
                "trusted_proxies",
                "[\"127.0.0.0/8\", \"10.0.0.0/8\"]",
            )
        },
        &up.url(),
    )
    .await;
    let mut conn = deeper.client().connect(Proto::H2).await;
    conn.send(spoofed()).await;
    assert_eq!(up.last_headers()["x-forwarded-for"], "198.51.100.0");

    // Full forwarding: an untrusted peer's header is replaced, not extended.
    let full = Proxy::start(&up.url()).await;
    let mut conn = full.client().connect(Proto::H1).await;
    conn.send(spoofed()).await;
    assert_eq!(up.last_headers()["x-forwarded-for"], "127.0.0.1");

    // None: nothing about the client reaches the upstream.
    let none = Proxy::start_with(
        |c| set(&c, "upstream", "forward_client_ip", "\"none\""),
        &up.url(),
    )
    .await;
    let mut conn = none.client().connect(Proto::H1).await;
    conn.send(spoofed()).await;
    assert!(!up.last_headers().contains_key("x-forwarded-for"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_and_slow_gives_504() {
    let dead = format!("http://{}", dead_addr());
    let proxy = Proxy::start(&dead).await;
    for proto in BOTH {
        let resp = proxy.client().get(proto, "/").await;
        assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{proto:?}");
        assert!(resp.text().contains("bad gateway"));
    }
    // With its only upstream backing off, the proxy is not ready.
    assert_eq!(
        proxy.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(proxy.admin_get("/healthz").await.0, StatusCode::OK);

    let up = Upstream::start().await;
    let proxy = Proxy::start_with(
        |c| set(&c, "upstream", "request_timeout", "\"300ms\""),
        &up.url(),
    )
    .await;
    // Ready once the listeners are up (the harness may see the admin port a moment before).
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(20),
        async || (proxy.admin_get("/readyz").await.0 == StatusCode::OK).then_some(()),
        || "never ready".to_owned(),
    )
    .await;
    for proto in BOTH {
        let resp = proxy.client().get(proto, "/slow?ms=3000").await;
        assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT, "{proto:?}");
        let resp = proxy.client().get(proto, "/slow?ms=10").await;
        assert_eq!(resp.status, StatusCode::OK, "{proto:?}");
    }
    // The warning names the server that did not answer, never the request.
    let output = proxy.output();
    let warning = format!("no response from {} within 300ms", up.addr);
    assert!(output.contains(&warning), "{warning:?} not in\n{output}");
    assert!(
        !output.contains("/slow") && !output.contains("ms=3000"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_skips_a_dead_server() {
    let up = Upstream::start().await;
    let servers = format!("[\"http://{}\", \"{}\"]", dead_addr(), up.url());
    let proxy = Proxy::start_with(|c| set(&c, "upstream", "servers", &servers), &up.url()).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(proxy.client().get(Proto::H1, "/").await.status);
    }
    let failures = statuses.iter().filter(|s| **s != StatusCode::OK).count();
    // The dead server costs at most one request before its back-off.
    assert!(failures <= 1, "{statuses:?}");
    assert_eq!(proxy.admin_get("/readyz").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_gives_431_and_oversized_body_413() {
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(
        |c| set(&c, "server", "max_body_bytes", "1048576"),
        &up.url(),
    )
    .await;
    let client = proxy.client();

    let big = "a".repeat(20_000);
    for proto in BOTH {
        let req = Request::get("https://localhost/")
            .header("x-big", big.as_str())
            .body(body(Bytes::new()))
            .unwrap();
        let resp = client.request(proto, req).await;
        assert_eq!(
            resp.status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{proto:?}"
        );
    }

    let data = pattern(2 << 20);
    for proto in BOTH {
        // Declared length over the limit: refused before anything goes upstream.
        let req = Request::post("https://localhost/echo")
            .body(body(data.clone()))
            .unwrap();
        let resp = client.request(proto, req).await;
        assert_eq!(
            resp.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{proto:?} declared"
        );
    }
    // Undeclared length: cut off when the stream passes the limit (the upstream reads the
    // whole body before answering, so the 413 comes before any response head).
    for proto in BOTH {
        let req = Request::post("https://localhost/sink")
            .body(chunked_body(data.clone()))
            .unwrap();
        let resp = client.request(proto, req).await;
        assert_eq!(
            resp.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{proto:?} streamed"
        );
    }
    // A body within the limit still passes.
    let req = Request::post("https://localhost/echo")
        .body(body(pattern(1000)))
        .unwrap();
    assert_eq!(client.request(Proto::H1, req).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_style_upgrade_is_tunnelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let client = proxy.client();
    let Conn::H1(mut send) = client.connect(Proto::H1).await else {
        unreachable!()
    };
    let req = Request::get("/ws")
        .header("host", "localhost")
        .header("connection", "Upgrade")
        .header("upgrade", "echo")
        .body(body(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "echo");
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    io.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = vec![0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping through the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_and_keeps_open_connections() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let old_der = pem_cert_der(&proxy.path("cert.pem"));
    assert_eq!(presented_cert(proxy.tls_addr).await, old_der);

    // An open connection, trusting the old certificate.
    let mut open = proxy.client().connect(Proto::H2).await;
    assert_eq!(open.send(get("/")).await.status, StatusCode::OK);

    // A bad certificate on disk first: the reload keeps the old one.
    std::fs::write(proxy.path("cert.pem"), "not a certificate").unwrap();
    proxy.signal("HUP");
    wait_for_output(&proxy, "keeping the old certificates").await;
    assert_eq!(presented_cert(proxy.tls_addr).await, old_der);

    let new = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(proxy.path("key.pem"), new.key_pair.serialize_pem()).unwrap();
    std::fs::write(proxy.path("cert.pem"), new.cert.pem()).unwrap();
    proxy.signal("HUP");
    let new_der = new.cert.der().to_vec();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || (presented_cert(proxy.tls_addr).await == new_der).then_some(()),
        || "new certificate never served".to_owned(),
    )
    .await;
    // A new connection verifies against the new certificate; the old one keeps working.
    assert_eq!(
        proxy.client().get(Proto::H1, "/").await.status,
        StatusCode::OK
    );
    assert_eq!(open.send(get("/")).await.status, StatusCode::OK);
}

async fn wait_for_output(proxy: &Proxy, needle: &str) {
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || proxy.output().contains(needle).then_some(()),
        || format!("no {needle:?} in:\n{}", proxy.output()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_slow_request_finish_then_exits_zero() {
    let up = Upstream::start().await;
    let mut proxy = Proxy::start(&up.url()).await;
    let client = proxy.client();
    let slow = tokio::spawn(async move { client.get(Proto::H2, "/slow?ms=1500").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.signal("TERM");
    let resp = slow.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "slow done\n");
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
    // No new connections once draining.
    assert!(
        tokio::net::TcpStream::connect(proxy.tls_addr)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_listener_speaks_http1_and_h2c() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(
        |c| set(&c, "server", "listen_plain", "\"127.0.0.1:0\""),
        &up.url(),
    )
    .await;
    let addr = proxy.plain_addr.expect("plain listener announced");

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/headers")
        .header("host", "localhost")
        .body(body(Bytes::new()))
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(up.last_headers()["x-forwarded-proto"], "http");

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::GET)
        .uri("http://localhost/")
        .body(body(Bytes::new()))
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(
        |c| {
            let c = set(&c, "server", "header_read_timeout", "\"700ms\"");
            set(&c, "server", "idle_timeout", "\"1s\"")
        },
        &up.url(),
    )
    .await;

    // A TCP connection that never starts the TLS handshake.
    let mut silent = tokio::net::TcpStream::connect(proxy.tls_addr)
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("handshake deadline enforced")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(600));

    // A slow-loris request head: the connection is closed at the header deadline.
    let tcp = tokio::net::TcpStream::connect(proxy.tls_addr)
        .await
        .unwrap();
    let mut tls = tls_connect(&proxy, tcp).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out))
        .await
        .expect("slow head cut off");
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    // An HTTP/2 connection that goes quiet is closed after the idle timeout.
    let mut conn = proxy.client().connect(Proto::H2).await;
    assert_eq!(conn.send(get("/")).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let Conn::H2(send) = &mut conn else {
        unreachable!()
    };
    assert!(send.is_closed(), "idle HTTP/2 connection still open");
}

async fn tls_connect(
    proxy: &Proxy,
    tcp: tokio::net::TcpStream,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(proxy.path("cert.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    use std::sync::atomic::Ordering;
    let up = Upstream::start().await;
    // 120 requests from one address in well under a second would pass the default burst.
    let proxy = Proxy::start_with(|c| unlimited(&c), &up.url()).await;
    for proto in BOTH {
        let mut conn = proxy.client().connect(proto).await;
        for _ in 0..30 {
            assert_eq!(conn.send(get("/")).await.status, StatusCode::OK);
            // Bodies of every size return the connection once read to the end.
            assert_eq!(
                conn.send(get("/big?bytes=200000")).await.body.len(),
                200_000
            );
        }
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one pooled connection serves all"
    );

    // A response the client abandons half way closes its upstream connection instead.
    let Conn::H1(mut send) = proxy.client().connect(Proto::H1).await else {
        unreachable!()
    };
    let req = Request::get("/big?bytes=8388608")
        .header("host", "localhost")
        .body(body(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    drop(resp);
    drop(send);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        proxy.client().get(Proto::H2, "/").await.status,
        StatusCode::OK
    );
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

/// An upstream on loopback that answers every request on a connection with `status_line`,
/// two body bytes and a length, then waits for the next request.
async fn upstream_answering(status_line: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = format!("{status_line}\r\nContent-Length: 2\r\n\r\nok");
                        if tcp.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_line_is_the_proxys_own_whatever_version_and_reason_the_upstream_sends() {
    // (upstream status line, the status line an HTTP/1.1 client gets). The version is the
    // hop's own (RFC 9110 §6.2): an HTTP/1.0 upstream must not make the answer HTTP/1.0, which
    // would also end the client's keep-alive; the reason is the standard one.
    let rows = [
        ("HTTP/1.0 200 OK", "HTTP/1.1 200 OK"),
        ("HTTP/1.0 404 Not Found", "HTTP/1.1 404 Not Found"),
        ("HTTP/1.1 200 Fine Thanks", "HTTP/1.1 200 OK"),
        (
            "HTTP/1.0 431 Too many headers",
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        ("HTTP/1.1 299 Whatever", "HTTP/1.1 299 <none>"),
    ];
    for (upstream_line, client_line) in rows {
        let up = upstream_answering(upstream_line).await;
        let proxy = Proxy::start(&up).await;
        // Two requests on one connection: the second needs the first's keep-alive.
        let two = "GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n\
                   GET /b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let answer = proxy.client().raw_h1(two.as_bytes()).await;
        // Each body is "ok" with no line end, so a status line may follow it on its line.
        let status_lines: Vec<&str> = answer
            .match_indices("HTTP/1.")
            .filter_map(|(at, _)| answer[at..].lines().next())
            .collect();
        assert_eq!(
            status_lines,
            [client_line, client_line],
            "{upstream_line}: {answer}"
        );
        let over_h2 = proxy.client().get(Proto::H2, "/c").await;
        assert_eq!(
            over_h2.status.as_u16().to_string(),
            upstream_line[9..12],
            "{upstream_line}"
        );
    }
}

/// Sends `bytes` on a bare TCP connection to `addr` and reads until the proxy closes (at most
/// 10 s: a proxy that keeps the connection open fails the caller's assertions).
async fn raw_tcp(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not closed");
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_sent_to_the_tls_port_gets_a_400_in_plain_http_and_a_record() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    // One row per kind of plain HTTP a client may send to the HTTPS port.
    let rows: [(&str, &[u8]); 5] = [
        ("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("HEAD", b"HEAD /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "POST with a body",
            b"POST /click HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        ),
        ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n"),
        ("h2c prior knowledge", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ];
    for (what, request) in rows {
        let (answer, _) = raw_tcp(proxy.tls_addr, request).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{what}: {answer:?}");
        assert!(
            answer.contains("connection: close\r\n"),
            "{what}: {answer:?}"
        );
        assert!(
            answer.ends_with("a plain HTTP request was sent to the HTTPS port\n"),
            "{what}: {answer:?}"
        );
    }
    // Each is one record of an HTTP/1.1 400 with nothing the client sent, and none went
    // upstream.
    let records = proxy.wait_records(rows.len()).await;
    assert_eq!(records.len(), rows.len(), "{records:?}");
    for r in &records {
        assert_eq!(field(r, "status"), "400", "{r}");
        assert_eq!(field(r, "proto"), "HTTP/1.1", "{r}");
        assert_eq!(field(r, "path"), "", "{r}");
        assert!(!r.contains("click") && !r.contains("b=c"), "{r}");
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    let (_, metrics) = proxy.admin_get("/metrics").await;
    let refused = metric_sum(
        &metrics,
        "webprom_edge_http_requests_total{method=\"OTHER\",proto=\"HTTP/1.1\",status_class=\"4xx\"}",
    );
    assert_eq!(refused, rows.len() as f64, "{metrics}");
    // A real TLS client on the same port is served as before, over both protocols.
    for proto in BOTH {
        let resp = proxy.client().get(proto, "/").await;
        assert_eq!(resp.status, StatusCode::OK, "{proto:?}");
        assert_eq!(resp.text(), GREETING, "{proto:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_neither_tls_nor_http_on_the_tls_port_just_close() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    // One row per kind: binary, a lower-case "method", an SSLv2 hello, a TLS record of the
    // wrong type.
    let rows: [(&str, &[u8]); 4] = [
        ("binary", &[0x00, 0x01, 0x02, 0xff, 0xfe, 0x0d, 0x0a]),
        ("lower case", b"get / http/1.1\r\nhost: x\r\n\r\n"),
        ("SSLv2 hello", &[0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15]),
        (
            "TLS alert record",
            &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
        ),
    ];
    for (what, bytes) in rows {
        let (answer, _) = raw_tcp(proxy.tls_addr, bytes).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{what}: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric_sum(&metrics, "webprom_edge_tls_handshake_errors_total"),
        rows.len() as f64,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "webprom_edge_http_requests_total"),
        0.0,
        "{metrics}"
    );
}
