//! The PROXY protocol (issue 15): behind a layer-4 load balancer, the header's client address
//! is the connection's peer for the record (network, country, pseudonym) and the rate limiter;
//! a header from an untrusted peer, a malformed, cut short, slow or missing one closes the
//! connection, counted by reason, with no record, and the proxy keeps serving. Raw TCP clients
//! write the headers (version 2 built with the `ppp` crate's builder), then speak TLS or
//! cleartext HTTP through the proxy; a real HAProxy in `mode tcp` does the same.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The balancer's address (trusted), and two that are not.
const BALANCER: &str = "127.0.0.1";
const STRANGER: &str = "127.0.0.2";
const STRANGER_2: &str = "127.0.0.3";

/// A proxy with `server.proxy_protocol = mode`, a cleartext listener too, loopback and
/// 10.0.0.0/8 trusted, a 1 s header deadline, and the config then changed by `edit`.
async fn proxy_with(up: &Upstream, mode: &str, edit: impl FnOnce(String) -> String) -> Proxy {
    Proxy::start_with(
        |c| {
            let c = set_all(
                &c,
                "server",
                &[
                    ("proxy_protocol", &format!("\"{mode}\"")),
                    ("listen_plain", "\"127.0.0.1:0\""),
                    ("header_read_timeout", "\"1s\""),
                ],
            );
            edit(set(
                &c,
                "client_ip",
                "trusted_proxies",
                &format!("[\"{BALANCER}\", \"10.0.0.0/8\"]"),
            ))
        },
        &up.url(),
    )
    .await
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// A version 1 line naming `client` (TCP4 or TCP6 by its spelling).
fn v1(client: &str) -> Vec<u8> {
    let (family, dst) = if client.contains(':') {
        ("TCP6", "::1")
    } else {
        ("TCP4", "127.0.0.1")
    };
    format!("PROXY {family} {client} {dst} 40000 443\r\n").into_bytes()
}

/// A version 2 `PROXY` header naming `client`, built by the `ppp` crate.
fn v2(client: &str) -> Vec<u8> {
    v2_with_tlvs(client, &[])
}

/// As [`v2`], with TLVs of `(type, value)`.
fn v2_with_tlvs(client: &str, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let ip: IpAddr = client.parse().unwrap();
    let dst: IpAddr = match ip {
        IpAddr::V4(_) => "127.0.0.1".parse().unwrap(),
        IpAddr::V6(_) => "::1".parse().unwrap(),
    };
    let addresses = (SocketAddr::new(ip, 40000), SocketAddr::new(dst, 443));
    let mut builder =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses);
    for (kind, value) in tlvs {
        builder = builder.write_tlv(*kind, value).unwrap();
    }
    builder.build().unwrap()
}

/// A version 2 header with `command` and no address (`LOCAL`, or `PROXY` with `UNSPEC`).
fn v2_unspec(command: ppp::v2::Command) -> Vec<u8> {
    use ppp::v2::{AddressFamily, Builder, Protocol, Version};
    Builder::new(
        Version::Two | command,
        AddressFamily::Unspecified | Protocol::Unspecified,
    )
    .build()
    .unwrap()
}

/// A version 2 `PROXY` header for a Unix socket client (`AF_UNIX`).
fn v2_unix() -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Unix, Version};
    let addresses = Unix::new([b'/'; 108], [b'/'; 108]);
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
        .build()
        .unwrap()
}

/// How a request goes after the header.
#[derive(Clone, Copy, Debug)]
enum Via {
    TlsH1,
    TlsH2,
    PlainH1,
    /// h2c by prior knowledge.
    PlainH2,
}

/// Opens an HTTP connection over `tcp`, already past its header: TLS (trusting the proxy's
/// certificate) or cleartext.
async fn http_over(tcp: TcpStream, via: Via, cert: &Path) -> Conn {
    match via {
        Via::PlainH1 => {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            Conn::H1(send)
        }
        Via::PlainH2 => {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            Conn::H2(send)
        }
        Via::TlsH1 | Via::TlsH2 => {
            let h2 = matches!(via, Via::TlsH2);
            let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
            let tls = tokio_rustls::TlsConnector::from(tls_client_config(cert, Some(alpn)))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            if h2 {
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                Conn::H2(send)
            } else {
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                Conn::H1(send)
            }
        }
    }
}

/// A GET for `path`, with `X-Forwarded-For: xff` if given.
fn get_with(path: &str, xff: Option<&str>) -> Request<ReqBody> {
    let mut req = Request::get(format!("https://localhost{path}"));
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    req.body(body(Bytes::new())).unwrap()
}

/// The listener `via` speaks to.
fn listener(proxy: &Proxy, via: Via) -> SocketAddr {
    match via {
        Via::PlainH1 | Via::PlainH2 => proxy.plain_addr.expect("a cleartext listener"),
        Via::TlsH1 | Via::TlsH2 => proxy.tls_addr,
    }
}

/// One GET of `path` on a new connection from `from` that begins with `header`.
async fn get_after(
    proxy: &Proxy,
    from: &str,
    header: &[u8],
    via: Via,
    path: &str,
    xff: Option<&str>,
) -> StatusCode {
    let mut tcp = connect_from(from, listener(proxy, via)).await;
    tcp.write_all(header).await.unwrap();
    let mut conn = http_over(tcp, via, &proxy.path("cert.pem")).await;
    conn.send(get_with(path, xff)).await.status
}

/// The README's pseudonym: the first 12 bytes of BLAKE3 keyed with the day's key over the
/// address (IPv4: its 4 bytes; IPv6: its 16 with all but the /64 zeroed), base64url.
fn pseudonym(proxy: &Proxy, ip: &str) -> String {
    use base64::Engine;
    let key = read_key(proxy.dir.path(), &today_string());
    let bytes = match ip.parse::<IpAddr>().unwrap().to_canonical() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => (u128::from(a) & !(u128::MAX >> 64)).to_be_bytes().to_vec(),
    };
    let hash = blake3::keyed_hash(&key, &bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash.as_bytes()[..12])
}

/// `proxy_protocol_rejected_total{reason}`.
fn rejected(metrics: &str, reason: &str) -> f64 {
    sample(
        metrics,
        &format!("webprom_edge_proxy_protocol_rejected_total{{reason=\"{reason}\"}}"),
    )
}

/// (who connects, header, listener, `X-Forwarded-For`, the client the record must name:
/// (address for the pseudonym, `net`, `country`)).
type ClientRow<'a> = (
    &'a str,
    Vec<u8>,
    Via,
    Option<&'a str>,
    (&'a str, &'a str, &'a str),
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_address_is_the_client_of_the_record_on_both_listeners() {
    let up = Upstream::start().await;
    let proxy = proxy_with(&up, "any", |c| unlimited(&c)).await;
    let canary = "CANARYTLVAUTHORITY.example";
    let big_tlv = vec![b'Z'; 600];
    #[rustfmt::skip]
    let rows: Vec<ClientRow> = vec![
        (BALANCER, v1("198.51.100.7"), Via::TlsH1, None, ("198.51.100.7", "198.51.100.0/24", "AL")),
        (BALANCER, v1("198.51.100.7"), Via::TlsH2, None, ("198.51.100.7", "198.51.100.0/24", "AL")),
        (BALANCER, v1("203.0.113.9"), Via::PlainH1, None, ("203.0.113.9", "203.0.113.0/24", "XK")),
        (BALANCER, v1("2001:db8:1:2::5"), Via::TlsH1, None, ("2001:db8:1:2::5", "2001:db8:1::/48", "AL")),
        // IPv4-mapped IPv6: the IPv4 client, one pseudonym with its IPv4 spelling.
        (BALANCER, v1("::ffff:203.0.113.9"), Via::TlsH1, None, ("203.0.113.9", "203.0.113.0/24", "XK")),
        (BALANCER, v2("198.51.100.8"), Via::TlsH1, None, ("198.51.100.8", "198.51.100.0/24", "AL")),
        (BALANCER, v2("198.51.100.8"), Via::TlsH2, None, ("198.51.100.8", "198.51.100.0/24", "AL")),
        (BALANCER, v2("203.0.113.9"), Via::PlainH1, None, ("203.0.113.9", "203.0.113.0/24", "XK")),
        (BALANCER, v2("2001:db8:1:3::7"), Via::PlainH1, None, ("2001:db8:1:3::7", "2001:db8:1::/48", "AL")),
        (BALANCER, v2("198.51.100.8"), Via::PlainH2, None, ("198.51.100.8", "198.51.100.0/24", "AL")),
        (BALANCER, v1("203.0.113.9"), Via::PlainH2, None, ("203.0.113.9", "203.0.113.0/24", "XK")),
        (BALANCER, v2("::ffff:198.51.100.8"), Via::TlsH1, None, ("198.51.100.8", "198.51.100.0/24", "AL")),
        // TLVs are skipped, never logged: inline (short) and allocated (over 256 bytes).
        (BALANCER, v2_with_tlvs("198.51.100.9", &[(0x02, canary.as_bytes())]), Via::TlsH1, None, ("198.51.100.9", "198.51.100.0/24", "AL")),
        (BALANCER, v2_with_tlvs("198.51.100.9", &[(0xE0, &big_tlv), (0x02, canary.as_bytes())]), Via::PlainH1, None, ("198.51.100.9", "198.51.100.0/24", "AL")),
        // No client named: the balancer is the peer.
        (BALANCER, v2_unspec(ppp::v2::Command::Local), Via::TlsH1, None, (BALANCER, "127.0.0.0/24", "null")),
        (BALANCER, v2_unspec(ppp::v2::Command::Proxy), Via::PlainH1, None, (BALANCER, "127.0.0.0/24", "null")),
        (BALANCER, v2_unix(), Via::TlsH2, None, (BALANCER, "127.0.0.0/24", "null")),
        (BALANCER, b"PROXY UNKNOWN\r\n".to_vec(), Via::TlsH1, None, (BALANCER, "127.0.0.0/24", "null")),
        // ... and names no one either by X-Forwarded-For: the bytes after such a header are not
        // the balancer's own, so a client cannot choose its pseudonym, network or bucket.
        (BALANCER, v2_unspec(ppp::v2::Command::Local), Via::TlsH2, Some("203.0.113.9"), (BALANCER, "127.0.0.0/24", "null")),
        (BALANCER, v2_unspec(ppp::v2::Command::Proxy), Via::TlsH1, Some("203.0.113.9"), (BALANCER, "127.0.0.0/24", "null")),
        (BALANCER, v2_unix(), Via::PlainH1, Some("203.0.113.9"), (BALANCER, "127.0.0.0/24", "null")),
        (BALANCER, b"PROXY UNKNOWN\r\n".to_vec(), Via::PlainH2, Some("203.0.113.9"), (BALANCER, "127.0.0.0/24", "null")),
        // X-Forwarded-For is believed after the header only from a trusted address.
        (BALANCER, v1("198.51.100.7"), Via::TlsH1, Some("203.0.113.9"), ("198.51.100.7", "198.51.100.0/24", "AL")),
        (BALANCER, v2("10.1.2.3"), Via::TlsH2, Some("203.0.113.9"), ("203.0.113.9", "203.0.113.0/24", "XK")),
        // An untrusted peer without a signature is a direct client, on both listeners.
        (STRANGER, Vec::new(), Via::TlsH1, None, (STRANGER, "127.0.0.0/24", "null")),
        (STRANGER, Vec::new(), Via::PlainH1, None, (STRANGER, "127.0.0.0/24", "null")),
    ];
    for (i, (from, header, via, xff, _)) in rows.iter().enumerate() {
        let status = get_after(&proxy, from, header, *via, &format!("/pp/{i:02}"), *xff).await;
        assert_eq!(status, StatusCode::OK, "row {i} ({via:?})");
    }
    let mut records = proxy.wait_records(rows.len()).await;
    assert_eq!(records.len(), rows.len(), "{records:#?}");
    records.sort_by_key(|r| field(r, "path"));
    for (i, (record, (_, _, via, _, (ip, net, country)))) in records.iter().zip(&rows).enumerate() {
        assert_eq!(field(record, "path"), format!("/pp/{i:02}"));
        assert_eq!(field(record, "net"), *net, "row {i} ({via:?}): {record}");
        assert_eq!(field(record, "country"), *country, "row {i}: {record}");
        assert_eq!(
            field(record, "client"),
            pseudonym(&proxy, ip),
            "row {i}: {record}"
        );
    }
    let output = proxy.output();
    for secret in [canary, "198.51.100.7", "2001:db8:1:2::5", "ZZZZZZZZ"] {
        assert!(!proxy.access_log().contains(secret), "{secret} in the log");
        assert!(
            !output.contains(secret),
            "{secret} in the diagnostics:\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_after_a_header_gets_the_400_recorded_for_its_client() {
    let up = Upstream::start().await;
    let proxy = proxy_with(&up, "v2", |c| unlimited(&c)).await;
    let mut tcp = connect_from(BALANCER, proxy.tls_addr).await;
    tcp.write_all(&v2("198.51.100.7")).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let records = proxy.wait_records(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(field(&records[0], "status"), "400");
    assert_eq!(field(&records[0], "net"), "198.51.100.0/24");
    assert_eq!(
        field(&records[0], "client"),
        pseudonym(&proxy, "198.51.100.7")
    );
}

/// What a rejected connection does after its first bytes.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Closes its sending side.
    Close,
    /// Waits (past the header deadline).
    Wait,
}

/// (`server.proxy_protocol`, who connects, listener, first bytes, then, the reason counted).
type RejectRow<'a> = (&'a str, &'a str, Via, Vec<u8>, Then, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_start_closes_the_connection_counted_by_reason_and_the_proxy_serves_on() {
    let up = Upstream::start().await;
    let proxies = [
        ("v1", proxy_with(&up, "v1", |c| unlimited(&c)).await),
        ("v2", proxy_with(&up, "v2", |c| unlimited(&c)).await),
        ("any", proxy_with(&up, "any", |c| unlimited(&c)).await),
    ];
    let good = v2("198.51.100.7");
    let mut v2_bad_version = good.clone();
    v2_bad_version[12] = 0x11;
    let mut v2_bad_command = good.clone();
    v2_bad_command[12] = 0x2F;
    let mut v2_short_length = good.clone();
    v2_short_length[15] = 4;
    let mut v2_bad_family = good.clone();
    v2_bad_family[13] = 0x41;
    let too_long = format!(
        "PROXY TCP4 198.51.100.7 127.0.0.1 40000 {}\r\n",
        "4".repeat(100)
    );
    let hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec();
    #[rustfmt::skip]
    let rows: Vec<RejectRow> = vec![
        ("any", STRANGER, Via::TlsH1, v1("198.51.100.7"), Then::Close, "untrusted"),
        ("any", STRANGER, Via::PlainH1, v2("198.51.100.7"), Then::Close, "untrusted"),
        ("v1", STRANGER_2, Via::TlsH1, v2("198.51.100.7"), Then::Close, "untrusted"),
        ("v2", STRANGER, Via::PlainH1, v1("198.51.100.7"), Then::Wait, "untrusted"),
        ("any", BALANCER, Via::TlsH1, b"PROXY TCP4 198.51.100.7 127.0".to_vec(), Then::Close, "malformed"),
        ("any", BALANCER, Via::PlainH1, b"PROXY garbage here\r\n".to_vec(), Then::Wait, "malformed"),
        ("v1", BALANCER, Via::TlsH1, b"PROXY TCP4 198.51.100.999 127.0.0.1 1 2\r\n".to_vec(), Then::Wait, "malformed"),
        ("v1", BALANCER, Via::TlsH1, b"PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n".to_vec(), Then::Wait, "malformed"),
        ("v1", BALANCER, Via::TlsH1, b"PROXY TCP4 198.51.100.7 127.0.0.1 040000 2\r\n".to_vec(), Then::Wait, "malformed"),
        ("v1", BALANCER, Via::TlsH1, b"PROXY TCP4 \xff\xfe\xfd 127.0.0.1 1 2\r\n".to_vec(), Then::Wait, "malformed"),
        ("v1", BALANCER, Via::PlainH1, b"PROXY TCP4 198.51.100.7 127.0.0.1 1 2\n".to_vec(), Then::Wait, "malformed"),
        ("any", BALANCER, Via::TlsH1, too_long.into_bytes(), Then::Wait, "malformed"),
        ("any", BALANCER, Via::TlsH1, good[..20].to_vec(), Then::Close, "malformed"),
        ("v2", BALANCER, Via::PlainH1, good[..8].to_vec(), Then::Close, "malformed"),
        ("v2", BALANCER, Via::TlsH1, v2_bad_version, Then::Wait, "malformed"),
        ("any", BALANCER, Via::TlsH1, v2_bad_command, Then::Wait, "malformed"),
        ("v2", BALANCER, Via::PlainH1, v2_short_length, Then::Wait, "malformed"),
        ("v2", BALANCER, Via::TlsH1, v2_bad_family, Then::Wait, "malformed"),
        ("v2", BALANCER, Via::TlsH1, v1("198.51.100.7"), Then::Wait, "version"),
        ("v1", BALANCER, Via::PlainH1, v2("198.51.100.7"), Then::Wait, "version"),
        ("any", BALANCER, Via::TlsH1, b"PROXY TCP4 198.51.100.7 ".to_vec(), Then::Wait, "timeout"),
        ("v1", BALANCER, Via::PlainH1, b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 ".to_vec(), Then::Wait, "timeout"),
        ("any", BALANCER, Via::TlsH1, b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r".to_vec(), Then::Wait, "timeout"),
        ("v2", BALANCER, Via::PlainH1, good[..14].to_vec(), Then::Wait, "timeout"),
        ("any", BALANCER, Via::TlsH1, Vec::new(), Then::Wait, "timeout"),
        ("any", BALANCER, Via::TlsH1, hello, Then::Wait, "missing"),
        ("v1", BALANCER, Via::PlainH1, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), Then::Wait, "missing"),
        ("v2", BALANCER, Via::PlainH1, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Then::Wait, "missing"),
    ];
    for (i, (mode, from, via, start, then, reason)) in rows.iter().enumerate() {
        let proxy = &proxies.iter().find(|(m, _)| m == mode).unwrap().1;
        let before = proxy.admin_get("/metrics").await.1;
        let mut tcp = connect_from(from, listener(proxy, *via)).await;
        tcp.write_all(start).await.unwrap();
        if let Then::Close = then {
            tcp.shutdown().await.unwrap();
        }
        // The proxy closes: end of stream or a reset, within the 1 s header deadline (+ slack),
        // and never an answer.
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "row {i}: the connection stayed open");
        assert!(got.is_empty(), "row {i}: answered {got:?}");
        let after = proxy.admin_get("/metrics").await.1;
        for r in ["untrusted", "missing", "malformed", "version", "timeout"] {
            let want = if r == *reason { 1.0 } else { 0.0 };
            assert_eq!(
                rejected(&after, r) - rejected(&before, r),
                want,
                "row {i} ({mode}, {from}, {via:?}, {then:?}): reason {r}"
            );
        }
        // The proxy serves the next client.
        let next = match *mode {
            "v2" => v2("198.51.100.7"),
            _ => v1("198.51.100.7"),
        };
        let status = get_after(proxy, BALANCER, &next, *via, "/after", None).await;
        assert_eq!(status, StatusCode::OK, "row {i}: next request");
    }
    // A rejected connection has no record: only the good requests do.
    for (mode, proxy) in &proxies {
        let good = rows.iter().filter(|r| r.0 == *mode).count();
        let records = proxy.wait_records(good).await;
        assert_eq!(records.len(), good, "{mode}: {records:#?}");
        assert!(records.iter().all(|r| field(r, "path") == "/after"));
        assert!(
            !proxy.output().contains("198.51.100"),
            "an address from the wire in the diagnostics"
        );
        // Each reason met is warned about once (the rows come within a minute), at the level
        // an operator sees by default, with the listener and the versions allowed.
        let output = proxy.output();
        for reason in ["untrusted", "missing", "malformed", "version", "timeout"] {
            let met = rows
                .iter()
                .filter(|r| r.0 == *mode && r.5 == reason)
                .count();
            let warned = output
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        && l.contains("PROXY protocol header refused")
                        && l.contains(&format!("reason=\"{reason}\""))
                        && l.contains(&format!("allowed=\"{mode}\""))
                })
                .count();
            assert_eq!(warned, met.min(1), "{mode} {reason}:\n{output}");
        }
    }
    // A trusted peer that closes before its first byte (a connect-only health check) is not
    // counted.
    let proxy = &proxies[2].1;
    let before = proxy.admin_get("/metrics").await.1;
    drop(connect_from(BALANCER, proxy.tls_addr).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = proxy.admin_get("/metrics").await.1;
    assert_eq!(
        metric_sum(&after, "webprom_edge_proxy_protocol_rejected_total"),
        metric_sum(&before, "webprom_edge_proxy_protocol_rejected_total"),
    );
    assert!(after.contains("# TYPE webprom_edge_proxy_protocol_rejected_total counter"));
}

/// A proxy taking headers of either version whose rate limiter lets a client 3 requests at
/// once, then 1 a second.
async fn limited_proxy(up: &Upstream) -> Proxy {
    proxy_with(up, "any", |c| {
        set_all(
            &c,
            "rate_limit",
            &[("requests_per_second", "1"), ("burst", "3")],
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limiter_keys_on_the_header_address() {
    let up = Upstream::start().await;
    let proxy = limited_proxy(&up).await;
    // One balancer connection per client and listener, as a layer-4 balancer keeps them, all
    // open before the first request: the quota refills one a second.
    let cert = proxy.path("cert.pem");
    let open = async |header: Vec<u8>, via: Via| {
        let mut tcp = connect_from(BALANCER, listener(&proxy, via)).await;
        tcp.write_all(&header).await.unwrap();
        http_over(tcp, via, &cert).await
    };
    let mut a_tls = open(v2("198.51.100.7"), Via::TlsH2).await;
    let mut a_plain = open(v1("198.51.100.7"), Via::PlainH1).await;
    let mut b_plain = open(v1("203.0.113.9"), Via::PlainH1).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(a_tls.send(get_with("/", None)).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    // The same client on the other listener and version: the same bucket.
    assert_eq!(
        a_plain.send(get_with("/", None)).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "one client, one bucket"
    );
    // Another client behind the same balancer.
    assert_eq!(
        b_plain.send(get_with("/", None)).await.status,
        StatusCode::OK,
        "another client, another bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_its_first_byte_is_no_failed_handshake_nor_a_rejection() {
    let up = Upstream::start().await;
    let proxy = proxy_with(&up, "any", |c| unlimited(&c)).await;
    // (who connects, the header it sends before closing).
    let rows: [(&str, Vec<u8>); 4] = [
        (BALANCER, Vec::new()),
        (BALANCER, v2_unspec(ppp::v2::Command::Local)),
        (BALANCER, v1("198.51.100.7")),
        (STRANGER, Vec::new()),
    ];
    for (i, (from, header)) in rows.iter().enumerate() {
        let mut tcp = connect_from(from, proxy.tls_addr).await;
        tcp.write_all(header).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut got)).await;
        assert!(read.is_ok() && got.is_empty(), "row {i}: {got:?}");
    }
    // A failed handshake on the same port is still one.
    let mut tcp = connect_from(STRANGER, proxy.tls_addr).await;
    tcp.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut got)).await;
    let metrics = eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            let metrics = proxy.admin_get("/metrics").await.1;
            (metric_sum(&metrics, "webprom_edge_tls_handshake_errors_total") > 0.0)
                .then_some(metrics)
        },
        || "the failed handshake was not counted".to_owned(),
    )
    .await;
    assert_eq!(
        metric_sum(&metrics, "webprom_edge_tls_handshake_errors_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "webprom_edge_proxy_protocol_rejected_total"),
        0.0,
        "{metrics}"
    );
}

/// The HAProxy configuration the README's "Behind a load balancer" shows, run by the test below
/// with its addresses replaced by the test's.
/// The HAProxy configuration the README's "Behind a load balancer" section shows: the first
/// code block there that starts with `frontend`, read from README.md so that the two cannot
/// drift apart.
fn readme_haproxy() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split_once("## Behind a load balancer")
        .expect("README has a \"Behind a load balancer\" section")
        .1;
    let block = section
        .split_once("```\nfrontend ")
        .expect("the section shows a HAProxy configuration")
        .1;
    let block = block.split_once("```").expect("the block ends").0;
    format!("frontend {block}")
}

/// A real HAProxy, killed when dropped.
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts HAProxy with the README's configuration in front of `edge`, on `listen`, sending
/// version 1 headers if `!v2`; a client connecting from 127.0.0.2 is told to be 198.51.100.7,
/// one from 127.0.0.3 203.0.113.9 (`tcp-request connection set-src`).
async fn haproxy(listen: SocketAddr, edge: SocketAddr, v2: bool) -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    let mut config = readme_haproxy()
        .replace("bind :443", &format!("bind {listen}"))
        .replace("10.0.0.11:8443", &edge.to_string())
        .replace(
            "    default_backend edge",
            "    tcp-request connection set-src ipv4(198.51.100.7) if { src 127.0.0.2 }\n\
             \x20   tcp-request connection set-src ipv4(203.0.113.9) if { src 127.0.0.3 }\n\
             \x20   default_backend edge",
        );
    if !v2 {
        config = config.replace("send-proxy-v2", "send-proxy");
    }
    // Health checks every 200 ms: several during the test.
    config = config.replace(
        "check check-send-proxy",
        "check check-send-proxy inter 200ms",
    );
    let config = format!(
        "global\n    log stderr format raw local0 warning\n\ndefaults\n    timeout connect 2s\n    \
         timeout client 30s\n    timeout server 30s\n\n{config}"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, &config).unwrap();
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Up when it accepts.
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || TcpStream::connect(listen).await.ok().map(drop),
        || format!("haproxy did not listen on {listen}:\n{config}"),
    )
    .await;
    Haproxy { child, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_record_and_the_limiter_see_the_client_haproxy_was_told() {
    if !external("haproxy", "haproxy") {
        return;
    }
    let up = Upstream::start().await;
    let proxy = limited_proxy(&up).await;
    // send-proxy-v2 in front of the TLS listener, send-proxy (v1) in front of the cleartext one.
    let (tls_front, plain_front) = (common::free_addr(), common::free_addr());
    let _v2 = haproxy(tls_front, proxy.tls_addr, true).await;
    let _v1 = haproxy(plain_front, proxy.plain_addr.unwrap(), false).await;
    let cert = proxy.path("cert.pem");

    // Every connection open before the first request: the quota refills one a second.
    // Client A (198.51.100.7) and client B (203.0.113.9), each through both balancers.
    let mut a_v2 = http_over(connect_from(STRANGER, tls_front).await, Via::TlsH1, &cert).await;
    let mut a_v1 = http_over(
        connect_from(STRANGER, plain_front).await,
        Via::PlainH1,
        &cert,
    )
    .await;
    let mut b_v2 = http_over(connect_from(STRANGER_2, tls_front).await, Via::TlsH2, &cert).await;
    let mut b_v1 = http_over(
        connect_from(STRANGER_2, plain_front).await,
        Via::PlainH1,
        &cert,
    )
    .await;
    // A: three pass, the fourth is limited, and so is the next through the other balancer.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let path = format!("/ha/a{i}");
        statuses.push(a_v2.send(get_with(&path, None)).await.status.as_u16());
    }
    statuses.push(a_v1.send(get_with("/ha/a4", None)).await.status.as_u16());
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // B: its own bucket.
    assert_eq!(
        b_v2.send(get_with("/ha/b0", None)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        b_v1.send(get_with("/ha/b1", None)).await.status,
        StatusCode::OK
    );

    let mut records = proxy.wait_records(7).await;
    records.sort_by_key(|r| field(r, "path"));
    let want = [
        ("/ha/a0", "198.51.100.7", "198.51.100.0/24", "AL"),
        ("/ha/a1", "198.51.100.7", "198.51.100.0/24", "AL"),
        ("/ha/a2", "198.51.100.7", "198.51.100.0/24", "AL"),
        ("/ha/a3", "198.51.100.7", "198.51.100.0/24", "AL"),
        ("/ha/a4", "198.51.100.7", "198.51.100.0/24", "AL"),
        ("/ha/b0", "203.0.113.9", "203.0.113.0/24", "XK"),
        ("/ha/b1", "203.0.113.9", "203.0.113.0/24", "XK"),
    ];
    assert_eq!(records.len(), want.len(), "{records:#?}");
    for (record, (path, ip, net, country)) in records.iter().zip(want) {
        assert_eq!(field(record, "path"), path, "{record}");
        assert_eq!(field(record, "net"), net, "{record}");
        assert_eq!(field(record, "country"), country, "{record}");
        assert_eq!(field(record, "client"), pseudonym(&proxy, ip), "{record}");
    }
    // HAProxy's health checks (version 2 LOCAL, version 1 with its own addresses, each then
    // closed) were accepted, and are no failed TLS handshakes: nothing was rejected.
    let metrics = proxy.admin_get("/metrics").await.1;
    assert_eq!(
        metric_sum(&metrics, "webprom_edge_proxy_protocol_rejected_total"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "webprom_edge_tls_handshake_errors_total"),
        0.0,
        "{metrics}"
    );
}

/// The proxy's resident memory, in bytes (Linux).
fn resident(proxy: &Proxy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_header_costs_memory_for_the_bytes_sent_not_the_length_it_announces() {
    const CONNECTIONS: usize = 500;
    // What a connection that stalls costs at most (a task, its buffers), far under the
    // 64 KiB the largest header may announce.
    const MOST_EACH: u64 = 24 << 10;
    let up = Upstream::start().await;
    // (length announced, bytes of it sent before the connection stalls)
    let rows: [(u16, usize); 4] = [(12, 4), (12, 12), (65535, 12), (20000, 200)];
    for (announced, sent) in rows {
        let proxy = proxy_with(&up, "v2", |c| {
            set(&unlimited(&c), "server", "header_read_timeout", "\"30s\"")
        })
        .await;
        let to = listener(&proxy, Via::PlainH1);
        let mut start = ppp::v2::PROTOCOL_PREFIX.to_vec();
        start.extend_from_slice(&[0x21, 0x11]);
        start.extend_from_slice(&announced.to_be_bytes());
        start.extend_from_slice(&vec![7u8; sent]);
        let before = resident(&proxy);
        let mut stalled = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let mut tcp = connect_from(BALANCER, to).await;
            tcp.write_all(&start).await.unwrap();
            stalled.push(tcp);
        }
        // Every header read as far as it came.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let each = resident(&proxy).saturating_sub(before) / CONNECTIONS as u64;
        assert!(
            each < MOST_EACH,
            "{announced} announced, {sent} sent: {each} bytes resident per connection"
        );
    }
}
