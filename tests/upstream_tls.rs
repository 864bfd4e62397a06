//! `https://` upstreams: a real TLS upstream on loopback with a certificate from a test CA made
//! at test time (rcgen; no key is committed), reached through the real proxy process.
//!
//! Reached and verified: against `upstream.ca_roots`, or the system's roots (played by
//! `SSL_CERT_FILE`, which rustls-native-certs reads as the system store); SNI is the host, none
//! for an IP address, or `upstream.tls_server_name`; ALPN `http/1.1`; one connection reused.
//! Refused: every certificate that does not verify, and servers that do not speak TLS, give the
//! client 502 and a warning naming the upstream's authority and rustls's reason, never the
//! request; nothing reaches the upstream. A `ca_roots` that cannot be used stops the start
//! with exit status 2, naming the key and the file.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{BOTH, Proto, Proxy, Upstream, base_config, bin, set, upstream_errors};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// What the test upstream answers: the request target it saw, after this prefix.
const SAW: &str = "tls upstream saw ";

/// A certificate authority made at test time.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// An intermediate CA signed by this one.
    fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Ca { cert, key }
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid in `when`.
    fn issue(&self, names: &[&str], when: Validity) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "upstream");
        match when {
            Validity::Now => {}
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2001, 1, 1);
                params.not_after = rcgen::date_time_ymd(2002, 1, 1);
            }
            Validity::NotYet => {
                params.not_before = rcgen::date_time_ymd(2200, 1, 1);
                params.not_after = rcgen::date_time_ymd(2201, 1, 1);
            }
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

#[derive(Clone, Copy, Debug)]
enum Validity {
    Now,
    Expired,
    NotYet,
}

/// The SNI and the ALPN protocol of one TLS handshake.
type Handshake = (Option<String>, Option<Vec<u8>>);

/// One refused row: what, the upstream's certificate, the server's host, the roots, the
/// `tls_server_name`, rustls's reason in the warning.
type RefusedRow<'a> = (&'a str, Leaf, &'a str, Roots<'a>, Option<&'a str>, &'a str);

/// A server certificate chain and its key.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Leaf {
    /// A self-signed certificate for `names`, no CA behind it.
    fn self_signed(names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

/// A real HTTP/1.1-over-TLS upstream on loopback that records, per connection, the SNI and
/// ALPN of its handshake. Routes: `/echo` (the body echoed, streaming), `/big?bytes=N` (N
/// bytes of [`common::pattern`]), `/ws` (101, then bytes echoed), anything else: its target
/// after [`SAW`].
struct TlsUpstream {
    addr: SocketAddr,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
    /// Handshakes that resumed an earlier session.
    resumed: Arc<AtomicUsize>,
    /// (SNI, ALPN) of each handshake that completed.
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    /// The request targets it answered.
    targets: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start(leaf: Leaf) -> TlsUpstream {
        Self::start_at(leaf, "127.0.0.1:0").await
    }

    async fn start_at(leaf: Leaf, bind: &str) -> TlsUpstream {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let resumed = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let targets = Arc::new(Mutex::new(Vec::new()));
        let (c, r, h, t) = (
            connections.clone(),
            resumed.clone(),
            handshakes.clone(),
            targets.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (acceptor, r, h, t) = (acceptor.clone(), r.clone(), h.clone(), t.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let session = tls.get_ref().1;
                    h.lock().unwrap().push((
                        session.server_name().map(str::to_owned),
                        session.alpn_protocol().map(<[u8]>::to_vec),
                    ));
                    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    let service = service_fn(move |req: Request<Incoming>| {
                        t.lock().unwrap().push(req.uri().to_string());
                        async move { Ok::<_, std::convert::Infallible>(tls_route(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            connections,
            resumed,
            handshakes,
            targets,
            task,
        }
    }

    fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

type TlsBody = common::UpBody;

async fn tls_route(mut req: Request<Incoming>) -> Response<TlsBody> {
    use http_body_util::BodyExt;
    let full = |b: Bytes| Full::new(b).map_err(|never| match never {}).boxed();
    match req.uri().path() {
        "/echo" => Response::new(req.into_body().boxed()),
        "/big" => {
            let n = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1024);
            Response::new(full(Bytes::from(common::pattern(n))))
        }
        "/ws" => common::echo_upgrade(&mut req),
        _ => {
            let target = req.uri().to_string();
            Response::new(full(Bytes::from(format!("{SAW}{target}"))))
        }
    }
}

/// Where the proxy finds its roots.
#[derive(Clone, Copy, Debug)]
struct Roots<'a> {
    /// `upstream.ca_roots` = this PEM, or unset.
    ca_roots: Option<&'a str>,
    /// The system store (`SSL_CERT_FILE`) = this PEM.
    system: &'a str,
}

/// `upstream.ca_roots` = `pem`; nothing in the system store.
fn ca_roots(pem: &str) -> Roots<'_> {
    Roots {
        ca_roots: Some(pem),
        system: "",
    }
}

/// No `upstream.ca_roots`; the system store holds `pem`.
fn system(pem: &str) -> Roots<'_> {
    Roots {
        ca_roots: None,
        system: pem,
    }
}

/// Starts the proxy for the one `server`, with `roots` and `upstream.tls_server_name`.
async fn proxy(server: &str, roots: Roots<'_>, name: Option<&str>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(dir.path(), server);
    config = set(&config, "upstream", "connect_timeout", "\"1s\"");
    let system = dir.path().join("system.pem");
    std::fs::write(&system, roots.system).unwrap();
    if let Some(text) = roots.ca_roots {
        let pem = dir.path().join("roots.pem");
        std::fs::write(&pem, text).unwrap();
        config = set(
            &config,
            "upstream",
            "ca_roots",
            &format!("{:?}", pem.display()),
        );
    }
    if let Some(name) = name {
        config = set(&config, "upstream", "tls_server_name", &format!("{name:?}"));
    }
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    Proxy::spawn_with(dir, |cmd| {
        cmd.env("SSL_CERT_FILE", &system).env_remove("SSL_CERT_DIR");
    })
    .await
}

async fn metrics(proxy: &Proxy) -> String {
    proxy.admin_get("/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_verified_with_its_name_as_sni_over_one_reused_connection() {
    let ca = Ca::new("webprom-edge test CA");
    let other_ca = Ca::new("another CA");
    let middle = ca.intermediate("webprom-edge test intermediate");
    let both = format!("{}{}", other_ca.pem(), ca.pem());
    // (what, the certificate's chain, its names, the server's host, ca_roots or system,
    //  tls_server_name, the SNI the upstream must see)
    struct Row<'a> {
        what: &'a str,
        bind: &'a str,
        via_intermediate: bool,
        names: &'a [&'a str],
        host: &'a str,
        roots: Roots<'a>,
        name: Option<&'a str>,
        sni: Option<&'a str>,
    }
    let ca_pem = ca.pem();
    let rows = [
        Row {
            bind: "127.0.0.1:0",
            what: "a DNS name verified against ca_roots",
            via_intermediate: false,
            names: &["localhost"],
            host: "localhost",
            roots: ca_roots(&ca_pem),
            name: None,
            sni: Some("localhost"),
        },
        Row {
            bind: "127.0.0.1:0",
            what: "the system's roots when ca_roots is unset",
            via_intermediate: false,
            names: &["localhost"],
            host: "localhost",
            roots: system(&ca_pem),
            name: None,
            sni: Some("localhost"),
        },
        Row {
            bind: "127.0.0.1:0",
            what: "a ca_roots bundle whose second certificate is the issuer",
            via_intermediate: false,
            names: &["localhost"],
            host: "localhost",
            roots: ca_roots(&both),
            name: None,
            sni: Some("localhost"),
        },
        Row {
            bind: "127.0.0.1:0",
            what: "a chain through an intermediate sent by the server",
            via_intermediate: true,
            names: &["localhost"],
            host: "localhost",
            roots: ca_roots(&ca_pem),
            name: None,
            sni: Some("localhost"),
        },
        Row {
            bind: "127.0.0.1:0",
            what: "an IPv4 literal verified against the IP address, no SNI",
            via_intermediate: false,
            names: &["127.0.0.1"],
            host: "127.0.0.1",
            roots: ca_roots(&ca_pem),
            name: None,
            sni: None,
        },
        Row {
            bind: "127.0.0.1:0",
            what: "tls_server_name makes a certificate for another name verify",
            via_intermediate: false,
            names: &["origin.test"],
            host: "localhost",
            roots: ca_roots(&ca_pem),
            name: Some("origin.test"),
            sni: Some("origin.test"),
        },
        Row {
            bind: "127.0.0.1:0",
            what: "tls_server_name as an IP address: verified against it, no SNI",
            via_intermediate: false,
            names: &["127.0.0.1"],
            host: "localhost",
            roots: ca_roots(&ca_pem),
            name: Some("127.0.0.1"),
            sni: None,
        },
        Row {
            bind: "[::1]:0",
            what: "an IPv6 literal verified against the IP address, no SNI",
            via_intermediate: false,
            names: &["::1"],
            host: "[::1]",
            roots: ca_roots(&ca_pem),
            name: None,
            sni: None,
        },
    ];
    for row in rows {
        let what = row.what;
        let leaf = if row.via_intermediate {
            let mut leaf = middle.issue(row.names, Validity::Now);
            leaf.chain.push(middle.cert.der().clone());
            leaf
        } else {
            ca.issue(row.names, Validity::Now)
        };
        let up = TlsUpstream::start_at(leaf, row.bind).await;
        let server = format!("https://{}:{}", row.host, up.addr.port());
        let proxy = proxy(&server, row.roots, row.name).await;
        let client = proxy.client();
        for (i, proto) in BOTH.iter().chain(BOTH.iter()).enumerate() {
            let path = format!("/page/{i}?q={i}");
            let resp = client.get(*proto, &path).await;
            assert_eq!(resp.status, StatusCode::OK, "{what}: {}", proxy.output());
            assert_eq!(resp.text(), format!("{SAW}{path}"), "{what}");
        }
        assert_eq!(up.targets().len(), 4, "{what}");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            1,
            "{what}: one connection, reused"
        );
        let expected = (row.sni.map(str::to_owned), Some(b"http/1.1".to_vec()));
        assert_eq!(up.handshakes(), [expected], "{what}");
        assert_eq!(
            upstream_errors(&metrics(&proxy).await, "connect"),
            0.0,
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_gives_502_and_a_warning_naming_the_upstream_never_the_request()
 {
    let ca = Ca::new("webprom-edge test CA");
    let other_ca = Ca::new("another CA");
    let ca_pem = ca.pem();
    let other_pem = other_ca.pem();
    // (what, the upstream's certificate, the server's host, roots, tls_server_name, rustls's
    //  reason in the warning)
    let rows: [RefusedRow; 10] = [
        (
            "an issuer not in ca_roots",
            other_ca.issue(&["localhost"], Validity::Now),
            "localhost",
            ca_roots(&ca_pem),
            None,
            "UnknownIssuer",
        ),
        (
            "an issuer only in the system's roots while ca_roots is set",
            other_ca.issue(&["localhost"], Validity::Now),
            "localhost",
            Roots {
                ca_roots: Some(&ca_pem),
                system: &other_pem,
            },
            None,
            "UnknownIssuer",
        ),
        (
            "an issuer not in the system's roots",
            ca.issue(&["localhost"], Validity::Now),
            "localhost",
            system(&other_pem),
            None,
            "UnknownIssuer",
        ),
        (
            "a self-signed certificate",
            Leaf::self_signed(&["localhost"]),
            "localhost",
            ca_roots(&ca_pem),
            None,
            "UnknownIssuer",
        ),
        (
            "a certificate for another name",
            ca.issue(&["other.test"], Validity::Now),
            "localhost",
            ca_roots(&ca_pem),
            None,
            "not valid for name",
        ),
        (
            "a tls_server_name the certificate is not for",
            ca.issue(&["localhost"], Validity::Now),
            "localhost",
            ca_roots(&ca_pem),
            Some("other.test"),
            "not valid for name",
        ),
        (
            "an IP address the certificate does not name",
            ca.issue(&["localhost"], Validity::Now),
            "127.0.0.1",
            ca_roots(&ca_pem),
            None,
            "not valid for name",
        ),
        (
            "a DNS name where the certificate has only the IP address",
            ca.issue(&["127.0.0.1"], Validity::Now),
            "localhost",
            ca_roots(&ca_pem),
            None,
            "not valid for name",
        ),
        (
            "an expired certificate",
            ca.issue(&["localhost"], Validity::Expired),
            "localhost",
            ca_roots(&ca_pem),
            None,
            "expired",
        ),
        (
            "a certificate not yet valid",
            ca.issue(&["localhost"], Validity::NotYet),
            "localhost",
            ca_roots(&ca_pem),
            None,
            "not valid yet",
        ),
    ];
    for (what, leaf, host, roots, name, reason) in rows {
        let up = TlsUpstream::start(leaf).await;
        let authority = format!("{host}:{}", up.addr.port());
        let proxy = proxy(&format!("https://{authority}"), roots, name).await;
        // The warning also says which key to look at, where there is one.
        let hint = match reason {
            "UnknownIssuer" => "upstream.ca_roots",
            "not valid for name" => "upstream.tls_server_name",
            _ => "TLS handshake failed",
        };
        refused(
            &proxy,
            what,
            &authority,
            &["TLS handshake failed", reason, hint],
        )
        .await;
        assert_eq!(up.targets(), Vec::<String>::new(), "{what}: nothing sent");
        assert_eq!(up.handshakes().len(), 0, "{what}: no handshake completed");
    }
}

/// Asks `proxy` for a private path and query (once per HTTP version): each gets 502, counted as
/// a connect error; the proxy's output names `authority` with each of `says`, and never the
/// path or the query.
async fn refused(proxy: &Proxy, what: &str, authority: &str, says: &[&str]) {
    let client = proxy.client();
    for proto in BOTH {
        let resp = client.get(proto, "/private-path?private-query=1").await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_GATEWAY,
            "{what} {proto:?}: {}",
            proxy.output()
        );
        // The client learns nothing of the upstream or of why.
        assert_eq!(resp.text(), "bad gateway\n", "{what} {proto:?}");
    }
    let metrics = metrics(proxy).await;
    assert_eq!(upstream_errors(&metrics, "connect"), 2.0, "{what}");
    let output = proxy.output();
    let warning = output
        .lines()
        .find(|l| l.contains("WARN") && l.contains("upstream connect failed"))
        .unwrap_or_else(|| panic!("{what}: no warning in\n{output}"));
    let named = format!("{authority}: ");
    assert!(warning.contains(&named), "{what}: {warning}");
    for said in says {
        assert!(warning.contains(said), "{what}: {said:?} not in {warning}");
    }
    for private in ["private-path", "private-query"] {
        assert!(!output.contains(private), "{what}: {private} in\n{output}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_speak_tls_behind_https_gives_502_within_the_connect_timeout() {
    let ca = Ca::new("webprom-edge test CA");
    let ca_pem = ca.pem();
    // A cleartext HTTP/1.1 server (it answers the ClientHello with a 400).
    let cleartext = Upstream::start().await;
    // A server that accepts and never says a word, holding the connection.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let silent_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    // A server that closes each connection at once.
    let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing_addr = closing.local_addr().unwrap();
    let closing_task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = closing.accept().await {
            let _ = tcp.shutdown().await;
        }
    });
    // (what, its address, what the warning says besides the authority)
    let rows: [(&str, SocketAddr, &[&str]); 3] = [
        (
            "a cleartext HTTP server",
            cleartext.addr,
            &["TLS handshake failed", "does the server speak TLS?"],
        ),
        (
            "a server that never answers",
            silent_addr,
            &["no connection within 1s"],
        ),
        (
            "a server that closes at once",
            closing_addr,
            &["TLS handshake failed", "does the server speak TLS?"],
        ),
    ];
    for (what, addr, says) in rows {
        let authority = format!("localhost:{}", addr.port());
        let proxy = proxy(&format!("https://{authority}"), ca_roots(&ca_pem), None).await;
        // Not a hang until request_timeout (30 s, a 504): connect_timeout (1 s) ends it.
        tokio::time::timeout(
            Duration::from_secs(10),
            refused(&proxy, what, &authority, says),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"));
    }
    assert!(
        cleartext.seen.lock().unwrap().is_empty(),
        "the cleartext server saw no request"
    );
    silent_task.abort();
    closing_task.abort();
}

/// `webprom-edge run` with `config`, in `dir`, with `SSL_CERT_FILE` as given: (exit status,
/// stderr).
fn run_exits(dir: &Path, config: &str, cert_file: Option<&Path>) -> (i32, String) {
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--config"])
        .arg(dir.join("config.toml"))
        .current_dir(dir)
        .env_remove("SSL_CERT_DIR");
    match cert_file {
        Some(file) => cmd.env("SSL_CERT_FILE", file),
        None => cmd.env_remove("SSL_CERT_FILE"),
    };
    let (code, _, stderr) = common::output_text(&mut cmd);
    (code, stderr)
}

#[test]
fn roots_that_cannot_be_used_stop_the_start_with_status_2_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    common::write_test_geo(dir.path());
    let base = base_config(dir.path(), "https://origin.test");
    let file = |name: &str, text: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let key_only = KeyPair::generate().unwrap().serialize_pem();
    let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    // (what, ca_roots, what stderr says)
    let rows: [(&str, PathBuf, &str); 5] = [
        ("absent", dir.path().join("absent.pem"), "No such file"),
        ("empty", file("empty.pem", ""), "no PEM CERTIFICATE"),
        (
            "a key only",
            file("key.pem", &key_only),
            "no PEM CERTIFICATE",
        ),
        ("not a certificate", file("junk.pem", not_der), "not usable"),
        ("a directory", dir.path().to_owned(), "not a regular file"),
    ];
    for (what, path, says) in rows {
        let config = set(
            &base,
            "upstream",
            "ca_roots",
            &format!("{:?}", path.display()),
        );
        let (code, stderr) = run_exits(dir.path(), &config, None);
        assert_eq!(code, 2, "{what}: {stderr}");
        assert!(stderr.contains("upstream.ca_roots"), "{what}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{what}: {stderr}"
        );
        assert!(stderr.contains(says), "{what}: {stderr}");
    }
    // No ca_roots, and no system root to be found.
    let (code, stderr) = run_exits(
        dir.path(),
        &base,
        Some(&dir.path().join("no-system-roots.pem")),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("upstream.ca_roots"), "{stderr}");
    // A bad ca_roots is found even with no https:// server.
    let cleartext = base_config(dir.path(), "http://127.0.0.1:8080");
    let config = set(&cleartext, "upstream", "ca_roots", "\"empty.pem\"");
    let (code, stderr) = run_exits(dir.path(), &config, None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("upstream.ca_roots"), "{stderr}");
    // Nothing was started.
    assert!(!dir.path().join("logs").exists());
    // Good roots and a name with no https:// server: accepted, and said to be unused.
    let ca = Ca::new("webprom-edge test CA");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let config = set(&cleartext, "upstream", "ca_roots", "\"ca.pem\"");
    let config = set(&config, "upstream", "tls_server_name", "\"origin.test\"");
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let (code, stdout, stderr) =
        common::output_text(&mut common::tool_command(dir.path(), "check-config", &[]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ca_roots = \"ca.pem\""), "{stdout}");
    assert!(
        stderr.contains("no server in upstream.servers is https://"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_be_reached_over_tls_passes_the_request_to_the_next_and_readiness_is_a_tcp_connect()
 {
    let ca = Ca::new("webprom-edge test CA");
    let other_ca = Ca::new("another CA");
    let good = TlsUpstream::start(ca.issue(&["localhost"], Validity::Now)).await;
    let untrusted = TlsUpstream::start(other_ca.issue(&["localhost"], Validity::Now)).await;
    let cleartext = Upstream::start().await;
    // (what the first server is, its port, what the warning says)
    let rows = [
        (
            "a server that refuses connections",
            common::dead_addr().port(),
            "refused",
        ),
        (
            "a certificate with an unknown issuer",
            untrusted.addr.port(),
            "UnknownIssuer",
        ),
        (
            "a cleartext server",
            cleartext.addr.port(),
            "TLS handshake failed",
        ),
    ];
    for (what, port, says) in rows {
        let dir = tempfile::tempdir().unwrap();
        let config = two_https_servers(dir.path(), port, good.addr.port(), &ca);
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let proxy = Proxy::spawn(dir).await;
        let before = good.targets().len();
        // Round robin starts at the first server; it fails, so the second gets the request.
        let resp = proxy.client().get(Proto::H1, "/first?n=1").await;
        assert_eq!(resp.status, StatusCode::OK, "{what}: {}", proxy.output());
        assert_eq!(good.targets().len(), before + 1, "{what}");
        let metrics = metrics(&proxy).await;
        let retries = "webprom_edge_upstream_retries_total{reason=\"connect\"}";
        assert_eq!(common::sample(&metrics, retries), 1.0, "{what}");
        assert_eq!(upstream_errors(&metrics, "connect"), 0.0, "{what}");
        let output = proxy.output();
        let warning = output
            .lines()
            .find(|l| l.contains("trying the next server"))
            .unwrap_or_else(|| panic!("{what}: no warning in\n{output}"));
        assert!(
            warning.contains(&format!("localhost:{port}: ")),
            "{what}: {warning}"
        );
        assert!(warning.contains(says), "{what}: {warning}");
        assert!(
            !output.contains("/first") && !output.contains("n=1"),
            "{what}"
        );
        // The readiness probe is a TCP connect: a server that accepts one is enough.
        let (status, body) = proxy.admin_get("/readyz").await;
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
    }
    assert!(untrusted.targets().is_empty());
    assert!(cleartext.seen.lock().unwrap().is_empty());
}

/// A configuration in `dir` for the servers `https://localhost:{first}` and
/// `https://localhost:{second}`, verified against `ca` (its PEM written to `dir`).
fn two_https_servers(dir: &Path, first: u16, second: u16, ca: &Ca) -> String {
    let servers = format!("[\"https://localhost:{first}\", \"https://localhost:{second}\"]");
    let config = set(&base_config(dir, "x"), "upstream", "servers", &servers);
    let pem = dir.join("ca.pem");
    std::fs::write(&pem, ca.pem()).unwrap();
    set(
        &config,
        "upstream",
        "ca_roots",
        &format!("{:?}", pem.display()),
    )
}

/// A hand-written HTTP/1.1-over-TLS upstream that answers the first request of each connection
/// (keep-alive) and, on reading the second, ends the connection the TLS way (close_notify,
/// then FIN) without answering: a reused connection the upstream closed while a request was on
/// its way. Counts the request heads it read.
async fn closing_tls_upstream(
    leaf: Leaf,
) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let counted = heads.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                for answered in [true, false] {
                    // The head, then its body by Content-Length.
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + len {
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + len);
                    counted.fetch_add(1, Ordering::SeqCst);
                    if answered {
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if tls.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
                // close_notify, then FIN: bytes arrive, but none of a response.
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, heads, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_on_a_reused_tls_connection_is_sent_again_only_when_it_may_be_sent_twice() {
    let ca = Ca::new("webprom-edge test CA");
    let ca_pem = ca.pem();
    // (method, body, answer, request heads the upstream read)
    let rows = [
        ("GET", "", StatusCode::OK, 3),
        ("DELETE", "", StatusCode::OK, 3),
        ("POST", "", StatusCode::BAD_GATEWAY, 2),
        ("PUT", "payload", StatusCode::BAD_GATEWAY, 2),
    ];
    for (method, content, status, read) in rows {
        let (addr, heads, task) =
            closing_tls_upstream(ca.issue(&["localhost"], Validity::Now)).await;
        let server = format!("https://localhost:{}", addr.port());
        let proxy = proxy(&server, ca_roots(&ca_pem), None).await;
        let client = proxy.client();
        // The first exchange leaves the connection idle in the pool.
        assert_eq!(client.get(Proto::H1, "/first").await.status, StatusCode::OK);
        let req = Request::builder()
            .method(method)
            .uri("https://localhost/second")
            .body(common::body(content))
            .unwrap();
        let resp = client.request(Proto::H1, req).await;
        assert_eq!(resp.status, status, "{method}: {}", proxy.output());
        assert_eq!(heads.load(Ordering::SeqCst), read, "{method}");
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_and_an_upgrade_tunnels_through_an_https_upstream() {
    use tokio::io::AsyncReadExt;
    let ca = Ca::new("webprom-edge test CA");
    let ca_pem = ca.pem();
    let up = TlsUpstream::start(ca.issue(&["localhost"], Validity::Now)).await;
    let server = format!("https://localhost:{}", up.addr.port());
    let proxy = proxy(&server, ca_roots(&ca_pem), None).await;
    let client = proxy.client();
    let upload = common::pattern(3 << 20);
    for proto in BOTH {
        // An upload with no declared length, echoed back.
        let req = Request::post("https://localhost/echo")
            .body(common::chunked_body(upload.clone()))
            .unwrap();
        let resp = client.request(proto, req).await;
        assert_eq!(resp.status, StatusCode::OK, "{proto:?}");
        assert!(
            resp.body == upload,
            "{proto:?}: echo of {} bytes",
            resp.body.len()
        );
        // A download larger than any buffer on the way.
        let resp = client.get(proto, "/big?bytes=5242880").await;
        assert_eq!(resp.status, StatusCode::OK, "{proto:?}");
        assert!(resp.body == common::pattern(5 << 20), "{proto:?}: download");
    }
    // An HTTP/1.1 upgrade: bytes both ways over the upstream's TLS connection.
    let common::Conn::H1(mut send) = client.connect(Proto::H1).await else {
        unreachable!()
    };
    let req = Request::get("/ws")
        .header("host", "localhost")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(common::body(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    for msg in [&b"ping"[..], b"through TLS", &[0u8, 255, 7]] {
        io.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut got))
            .await
            .expect("echoed in time")
            .unwrap();
        assert_eq!(got, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_to_an_https_upstream_resumes_the_tls_session_of_an_earlier_one() {
    let ca = Ca::new("webprom-edge test CA");
    let ca_pem = ca.pem();
    let up = TlsUpstream::start(ca.issue(&["localhost"], Validity::Now)).await;
    let dir = tempfile::tempdir().unwrap();
    let server = format!("https://localhost:{}", up.addr.port());
    let mut config = base_config(dir.path(), &server);
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, &ca_pem).unwrap();
    config = set(
        &config,
        "upstream",
        "ca_roots",
        &format!("{:?}", pem.display()),
    );
    config = set(&config, "upstream", "idle_timeout", "\"200ms\"");
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let proxy = Proxy::spawn(dir).await;
    let client = proxy.client();
    for i in 0..3 {
        let resp = client.get(Proto::H1, &format!("/r{i}")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", proxy.output());
        // Past idle_timeout: the pooled connection is closed, the next one is new.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
    assert_eq!(
        up.resumed.load(Ordering::SeqCst),
        2,
        "the second and third connections resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_roots_a_restart_would_refuse_says_so_and_keeps_the_roots_in_use() {
    let ca = Ca::new("webprom-edge test CA");
    let ca_pem = ca.pem();
    let up = TlsUpstream::start(ca.issue(&["localhost"], Validity::Now)).await;
    let server = format!("https://localhost:{}", up.addr.port());
    let proxy = proxy(&server, ca_roots(&ca_pem), None).await;
    let started = std::fs::read_to_string(proxy.path("config.toml")).unwrap();
    let empty = proxy.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let roots = proxy.path("roots.pem");
    // (ca_roots after SIGHUP, what its file then holds (`None`: removed; unchanged if the key
    // names another file), what the error says). The last rows change no key: the file the
    // proxy started with is emptied, replaced or removed under it.
    let rows: [(PathBuf, Option<&str>, &str); 5] = [
        (proxy.path("absent.pem"), Some(&ca_pem), "No such file"),
        (empty, Some(&ca_pem), "no PEM CERTIFICATE"),
        (roots.clone(), Some(""), "no PEM CERTIFICATE"),
        (
            roots.clone(),
            Some("not a certificate\n"),
            "no PEM CERTIFICATE",
        ),
        (roots.clone(), None, "No such file"),
    ];
    for (path, file, says) in rows {
        match file {
            Some(text) => std::fs::write(&roots, text).unwrap(),
            None => std::fs::remove_file(&roots).unwrap(),
        }
        let config = set(
            &started,
            "upstream",
            "ca_roots",
            &format!("{:?}", path.display()),
        );
        std::fs::write(proxy.path("config.toml"), config).unwrap();
        let before = proxy.output().len();
        proxy.signal("HUP");
        let line = common::eventually(
            Duration::from_secs(10),
            Duration::from_millis(20),
            async || {
                proxy.output()[before..]
                    .lines()
                    .find(|l| l.contains("a restart with this config would fail"))
                    .map(str::to_owned)
            },
            || format!("not reported:\n{}", proxy.output()),
        )
        .await;
        assert!(line.contains("upstream.ca_roots"), "{line}");
        assert!(line.contains(&path.display().to_string()), "{line}");
        assert!(line.contains(says), "{line}");
        // Still verifying with the roots it started with.
        let resp = proxy.client().get(Proto::H1, "/after-hup").await;
        assert_eq!(resp.status, StatusCode::OK, "{}", proxy.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_reach_an_https_server_over_verified_tls_and_take_an_unverifiable_one_out() {
    let ca = Ca::new("webprom-edge test CA");
    let other_ca = Ca::new("another CA");
    let good = TlsUpstream::start(ca.issue(&["localhost"], Validity::Now)).await;
    let untrusted = TlsUpstream::start(other_ca.issue(&["localhost"], Validity::Now)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = two_https_servers(dir.path(), good.addr.port(), untrusted.addr.port(), &ca);
    config.push_str(
        "\n[upstream.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n\
         healthy_threshold = 1\nunhealthy_threshold = 1\n",
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let proxy = Proxy::spawn(dir).await;
    let mut readyz = String::new();
    for _ in 0..100 {
        readyz = proxy.admin_get("/readyz").await.1;
        // Each server's first check runs at start, in its own task: wait for both.
        let checked = good.targets().iter().any(|t| t == "/healthz");
        if readyz.contains("1 of 2 healthy") && checked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        readyz.contains("1 of 2 healthy"),
        "{readyz}\n{}",
        proxy.output()
    );
    // The good server was checked over TLS, with its name as SNI; the other never got a request.
    assert!(
        good.targets().iter().any(|t| t == "/healthz"),
        "{:?}",
        good.targets()
    );
    assert!(
        good.handshakes()
            .iter()
            .all(|(sni, _)| sni.as_deref() == Some("localhost"))
    );
    assert!(untrusted.targets().is_empty());
    let scraped = metrics(&proxy).await;
    assert_eq!(
        common::sample(&scraped, "webprom_edge_upstream_healthy{server=\"0\"}"),
        1.0
    );
    assert_eq!(
        common::sample(&scraped, "webprom_edge_upstream_healthy{server=\"1\"}"),
        0.0
    );
    // Out of rotation: every request goes to the good server, none is retried.
    for proto in BOTH {
        for _ in 0..4 {
            let resp = proxy.client().get(proto, "/after").await;
            assert_eq!(resp.status, StatusCode::OK, "{}", proxy.output());
        }
    }
    let scraped = metrics(&proxy).await;
    let retries = "webprom_edge_upstream_retries_total{reason=\"connect\"}";
    assert_eq!(common::sample(&scraped, retries), 0.0);
    let warning = proxy.output();
    assert!(
        warning.contains(&format!("localhost:{}", untrusted.addr.port()))
            && warning.contains("UnknownIssuer"),
        "the check's warning names the server and the reason:\n{warning}"
    );
    assert!(untrusted.targets().is_empty());
}
