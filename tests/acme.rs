//! Certificates by ACME against a real ACME server: Debian's pebble, with pebble-challtestsrv
//! as its DNS, on loopback (tests/common/pebble.rs). The proxy process obtains its certificate
//! through TLS-ALPN-01 answered on its own TLS listener, serves it to a client that trusts
//! pebble's root, renews it (short-lived certificates) while an open connection keeps working,
//! shares it with a second instance through the storage (one order), waits for a lock held by
//! another process, and keeps the old certificate while pebble refuses or is frozen.
//!
//! Without pebble installed every test here skips with a message naming the package (and
//! fails under `WEBPROM_EDGE_REQUIRE_EXTERNAL=1`).

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pebble::{Pebble, PebbleOptions, free_port};
use common::{Proxy, Upstream, base_config, eventually, sample, set, set_all};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// The name certified (challtestsrv resolves every name to 127.0.0.1).
const NAME: &str = "edge.webprom.test";

/// A proxy config with `[acme]` on against `pebble`, the TLS listener on `tls_port`, the
/// storage at `storage`, then `extra` keys of `[acme]`.
fn acme_config(
    dir: &Path,
    upstream: &str,
    tls_port: u16,
    pebble: &Pebble,
    storage: &Path,
    extra: &[(&str, &str)],
) -> String {
    let c = base_config(dir, upstream);
    let c = set(&c, "server", "listen", &format!("\"127.0.0.1:{tls_port}\""));
    let c = set(
        &c,
        "server",
        "hosts",
        &format!("[\"localhost\", \"{NAME}\"]"),
    );
    let directory = format!("\"{}\"", pebble.directory);
    let storage = format!("\"{}\"", storage.display());
    let roots = format!("\"{}\"", pebble.ca_roots.display());
    let domains = format!("[\"{NAME}\"]");
    let c = set_all(
        &c,
        "acme",
        &[
            ("enabled", "true"),
            ("directory", &directory),
            ("contact", "[\"mailto:ops@webprom.test\"]"),
            ("domains", &domains),
            ("storage", &storage),
            ("ca_roots", &roots),
            ("retry_backoff", "\"1s\""),
            ("timeout", "\"5s\""),
        ],
    );
    set_all(&c, "acme", extra)
}

/// Starts a proxy in its own directory with `config` made from that directory.
async fn start_proxy(config: impl FnOnce(&Path) -> String) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config(dir.path())).unwrap();
    Proxy::spawn(dir).await
}

/// A TLS client config trusting only `root_pem`, offering `alpn`.
fn trusting(root_pem: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` for [`NAME`] that verifies against `root_pem`; `None` when the
/// certificate served does not verify (not issued yet).
async fn verified(
    addr: SocketAddr,
    root_pem: &str,
    alpn: &[u8],
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    tokio_rustls::TlsConnector::from(trusting(root_pem, alpn))
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .ok()
}

/// The serial of the leaf of a TLS connection.
fn serial_of(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    serial(&der)
}

fn serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial_as_string()
}

/// The serial of the certificate pebble issued, as a new verified connection sees it.
async fn issued_serial(addr: SocketAddr, root_pem: &str) -> Option<String> {
    verified(addr, root_pem, b"http/1.1")
        .await
        .map(|tls| serial_of(&tls))
}

/// Waits (up to `limit`) for `proxy` to serve a certificate that verifies against pebble's
/// root; returns its serial.
async fn wait_issued(proxy: &Proxy, pebble: &Pebble, root: &str, limit: Duration) -> String {
    eventually(
        limit,
        Duration::from_millis(100),
        async || issued_serial(proxy.tls_addr, root).await,
        || {
            format!(
                "no issued certificate served\nproxy:\n{}\npebble:\n{}",
                proxy.output(),
                pebble.log()
            )
        },
    )
    .await
}

/// An HTTP/2 connection over `tls`.
async fn h2(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn get_status(send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>) -> u16 {
    let req = http::Request::get(format!("https://{NAME}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

async fn metrics(proxy: &Proxy) -> String {
    proxy.admin_get("/metrics").await.1
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn a_certificate_is_issued_through_tls_alpn_01_and_served_to_a_client_trusting_the_ca() {
    let up = Upstream::start().await;
    let tls_port = free_port();
    let Some(pebble) = Pebble::start(PebbleOptions {
        tls_port,
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    let root = pebble.root_pem().await;
    let storage = tempfile::tempdir().unwrap();
    let acme = storage.path().join("acme");
    let started = Instant::now();
    let proxy = start_proxy(|dir| acme_config(dir, &up.url(), tls_port, &pebble, &acme, &[])).await;
    let serial = wait_issued(&proxy, &pebble, &root, Duration::from_secs(60)).await;
    eprintln!(
        "MEASURED: start to issued certificate served: {:?}",
        started.elapsed()
    );

    // The issued certificate serves HTTP/2 for the name.
    let tls = verified(proxy.tls_addr, &root, b"h2").await.unwrap();
    assert_eq!(serial_of(&tls), serial);
    let mut send = h2(tls).await;
    assert_eq!(get_status(&mut send).await, 200);

    // One order, counted; the storage owner-only, the keys 0600.
    assert_eq!(pebble.orders(), 1, "{}", pebble.log());
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(&m, "webprom_edge_acme_orders_total{result=\"issued\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(mode(&acme), 0o700);
    assert_eq!(
        mode(&acme.join(format!("certificates/{NAME}/key.pem"))),
        0o600
    );
    let accounts: Vec<_> = std::fs::read_dir(acme.join("accounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(mode(&accounts[0]), 0o600);
    // No challenge response is left published.
    for kind in ["http-01", "tls-alpn-01"] {
        let left = std::fs::read_dir(acme.join("challenges").join(kind))
            .unwrap()
            .count();
        assert_eq!(left, 0, "{kind}");
    }

    // The CA's validation connections left no access-log record: only the one request.
    let records = proxy.wait_records(1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    // The log names the domain, never a token or key authorization.
    let out = proxy.output();
    assert!(out.contains("certificate issued and stored"), "{out}");
    assert!(
        !out.contains("keyAuthorization") && !out.contains("token"),
        "{out}"
    );
}
