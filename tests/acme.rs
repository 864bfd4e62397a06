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
use rustls::pki_types::ServerName;
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

/// What most tests start from: an upstream, pebble, its issuing root (PEM), and where the
/// storage goes (`acme`, not made yet, in `storage`, removed when dropped).
struct Scene {
    up: Upstream,
    pebble: Pebble,
    root: String,
    storage: tempfile::TempDir,
    acme: std::path::PathBuf,
}

impl Scene {
    /// `None`: pebble is not installed (the test skips).
    async fn start(options: PebbleOptions) -> Option<Scene> {
        let up = Upstream::start().await;
        let pebble = Pebble::start(options).await?;
        let root = pebble.root_pem().await;
        let storage = tempfile::tempdir().unwrap();
        let acme = storage.path().join("acme");
        Some(Scene {
            up,
            pebble,
            root,
            storage,
            acme,
        })
    }
}

/// Starts a proxy in its own directory with `config` made from that directory.
async fn start_proxy(config: impl FnOnce(&Path) -> String) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config(dir.path())).unwrap();
    Proxy::spawn(dir).await
}

/// A TLS client config trusting only `root_pem`, offering `alpn`.
fn trusting(root_pem: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    common::tls_client_config_pem(root_pem.as_bytes(), Some(alpn))
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
    let tls_port = free_port();
    let Some(Scene {
        up,
        pebble,
        root,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port,
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
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
    // A token or key authorization is a run of 43 or more base64url characters: none is logged.
    let longest_run = out
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest_run < 43, "{out}");
    if let Some(line) = out
        .lines()
        .find(|l| l.contains("certificate issued and stored"))
    {
        eprintln!("MEASURED: the order itself (proxy log): {line}");
    }

    // `certs` lists the name as served from ACME, offline, with the issuer and the renewal.
    let (code, stdout, stderr) = common::output_text(
        std::process::Command::new(common::bin())
            .args(["certs", "--config"])
            .arg(proxy.path("config.toml")),
    );
    assert_eq!(code, 0, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with(NAME))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(cells[1], "acme", "{row}");
    assert!(cells[2].contains("Pebble Intermediate"), "{row}");
    assert!(cells[3].ends_with('Z') && cells[4].ends_with('Z'), "{row}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("(default)") && l.contains("self-signed")),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_certificate_is_issued_through_http_01_answered_on_the_acme_http_listener() {
    let (tls_port, http_port) = (free_port(), free_port());
    let Some(Scene {
        up,
        pebble,
        root,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port,
        http_port,
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    let http_listen = format!("\"127.0.0.1:{http_port}\"");
    let proxy = start_proxy(|dir| {
        acme_config(
            dir,
            &up.url(),
            tls_port,
            &pebble,
            &acme,
            &[("challenge", "\"http-01\""), ("http_listen", &http_listen)],
        )
    })
    .await;
    assert_eq!(
        proxy.acme_http_addr.map(|a| a.port()),
        Some(http_port),
        "{}",
        proxy.output()
    );
    let serial = wait_issued(&proxy, &pebble, &root, Duration::from_secs(60)).await;
    let tls = verified(proxy.tls_addr, &root, b"h2").await.unwrap();
    assert_eq!(serial_of(&tls), serial);
    let mut send = h2(tls).await;
    assert_eq!(get_status(&mut send).await, 200);
    assert_eq!(pebble.orders(), 1, "{}", pebble.log());
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(&m, "webprom_edge_acme_orders_total{result=\"issued\"}"),
        1.0,
        "{m}"
    );
    // pebble's validation went through the HTTP-01 listener: it has a record (or more: the
    // CA may validate from several vantage points), its path with the token as `:id`, status
    // 200; no TLS-ALPN-01 answer was published.
    let records = proxy.wait_records(2).await;
    let challenge: Vec<&String> = records
        .iter()
        .filter(|r| common::field(r, "path") == "/.well-known/acme-challenge/:id")
        .collect();
    assert!(!challenge.is_empty(), "{records:?}");
    for r in &challenge {
        assert_eq!(common::field(r, "status"), "200", "{r}");
        assert_eq!(common::field(r, "host"), NAME, "{r}");
    }
    let out = proxy.output();
    let longest_run = records
        .iter()
        .map(String::as_str)
        .chain([out.as_str()])
        .flat_map(|t| t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')))
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest_run < 43,
        "a token in the log or a record:\n{out}\n{records:?}"
    );
    for kind in ["http-01", "tls-alpn-01"] {
        let left = std::fs::read_dir(acme.join("challenges").join(kind))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{kind}");
    }
    // Everything else on the listener is sent to https.
    let mut tcp = TcpStream::connect(proxy.acme_http_addr.unwrap())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(format!("GET /a?b=1 HTTP/1.1\r\nHost: {NAME}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("location: https://{NAME}/a?b=1\r\n")),
        "{answer}"
    );
}

/// Stores, as an earlier run would have, a certificate for [`NAME`] valid from ten days ago to
/// tomorrow (so due for renewal: less than a third of its life is left), from a CA of its own.
/// Returns its PEM (a client can trust it as its own root) and its serial.
fn store_old_certificate(storage: &Path, directory: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![NAME.to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(10);
    params.not_after = now + time::Duration::days(1);
    let cert = params.self_signed(&key).unwrap();
    let dir = storage.join("certificates").join(NAME);
    std::fs::create_dir_all(&dir).unwrap();
    for d in [storage, &storage.join("certificates"), &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let meta = serde_json::json!({"directory": directory, "issued_at": 0, "renewal_window": null});
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    (cert.pem(), serial(cert.der()))
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_and_swapped_while_an_open_connection_keeps_working() {
    let tls_port = free_port();
    let Some(Scene {
        up,
        pebble,
        root,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port,
        validity_secs: Some(24),
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    let proxy = start_proxy(|dir| acme_config(dir, &up.url(), tls_port, &pebble, &acme, &[])).await;
    let first = wait_issued(&proxy, &pebble, &root, Duration::from_secs(60)).await;
    let issued_at = Instant::now();
    let open = verified(proxy.tls_addr, &root, b"h2").await.unwrap();
    assert_eq!(serial_of(&open), first);
    let mut open = h2(open).await;
    assert_eq!(get_status(&mut open).await, 200);

    // Renewed with a third of its 24 s left: a new connection sees the new serial.
    let second = eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || {
            issued_serial(proxy.tls_addr, &root)
                .await
                .filter(|s| *s != first)
        },
        || {
            format!(
                "not renewed\nproxy:\n{}\npebble:\n{}",
                proxy.output(),
                pebble.log()
            )
        },
    )
    .await;
    eprintln!(
        "MEASURED: issued to renewed certificate served (24 s lifetime): {:?}",
        issued_at.elapsed()
    );
    assert_ne!(second, first);
    // The connection made with the first certificate still carries requests.
    assert_eq!(get_status(&mut open).await, 200);
    let m = metrics(&proxy).await;
    assert!(
        sample(&m, "webprom_edge_acme_orders_total{result=\"issued\"}") >= 2.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "webprom_edge_acme_orders_total{result=\"error\"}")
            + sample(&m, "webprom_edge_acme_orders_total{result=\"rejected\"}"),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_certificate_due_for_renewal_as_soon_as_issued_is_not_ordered_again_at_once() {
    let tls_port = free_port();
    // A CA issuing for 1 s: each certificate has expired when it is stored.
    let Some(Scene {
        up,
        pebble,
        root: _,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port,
        validity_secs: Some(1),
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    let proxy = start_proxy(|dir| acme_config(dir, &up.url(), tls_port, &pebble, &acme, &[])).await;
    let issued = |m: &str| sample(m, "webprom_edge_acme_orders_total{result=\"issued\"}");
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || (issued(&metrics(&proxy).await) >= 1.0).then_some(()),
        || format!("nothing issued\n{}", proxy.output()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Back-off of 1 s doubling: orders at about 0, 1, 3 and 7 s; an ordering storm makes one
    // every few hundred milliseconds.
    let m = metrics(&proxy).await;
    let orders = issued(&m);
    eprintln!("MEASURED: orders in 8 s after the first, 1 s certificates: {orders}");
    assert!(orders <= 5.0, "{orders} orders in 8 s\n{}", proxy.output());
    assert!(
        proxy
            .output()
            .contains("the certificate issued is due for renewal already"),
        "{}",
        proxy.output()
    );
}

#[tokio::test]
async fn two_instances_sharing_the_storage_order_once_and_both_serve_the_certificate() {
    let (port_a, port_b) = (free_port(), free_port());
    // pebble validates on instance A's port only: when B orders, A answers from the storage.
    let Some(Scene {
        up,
        pebble,
        root,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port: port_a,
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    let (a, b) = tokio::join!(
        start_proxy(|dir| acme_config(dir, &up.url(), port_a, &pebble, &acme, &[])),
        start_proxy(|dir| acme_config(dir, &up.url(), port_b, &pebble, &acme, &[])),
    );
    let serial_a = wait_issued(&a, &pebble, &root, Duration::from_secs(60)).await;
    let serial_b = wait_issued(&b, &pebble, &root, Duration::from_secs(60)).await;
    assert_eq!(serial_a, serial_b);
    // Still one order a while later (the other instance loaded it from the storage).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pebble.orders(), 1, "{}", pebble.log());
    let issued = |m: &str| sample(m, "webprom_edge_acme_orders_total{result=\"issued\"}");
    let (ma, mb) = (metrics(&a).await, metrics(&b).await);
    assert_eq!(issued(&ma) + issued(&mb), 1.0, "{ma}\n{mb}");
}

#[tokio::test]
async fn an_order_placed_by_one_instance_is_validated_through_another_sharing_the_storage() {
    let (port_a, port_b) = (free_port(), free_port());
    let Some(Scene {
        up,
        pebble,
        root,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port: port_a,
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    // A certifies another name; only B certifies NAME, and pebble reaches only A.
    let other = "[\"other.webprom.test\"]";
    let a = start_proxy(|dir| {
        let c = acme_config(
            dir,
            &up.url(),
            port_a,
            &pebble,
            &acme,
            &[("domains", other)],
        );
        set(
            &c,
            "server",
            "hosts",
            &format!("[\"{NAME}\", \"other.webprom.test\"]"),
        )
    })
    .await;
    let b = start_proxy(|dir| acme_config(dir, &up.url(), port_b, &pebble, &acme, &[])).await;
    wait_issued(&b, &pebble, &root, Duration::from_secs(60)).await;
    let answered = |p: &Proxy| {
        p.output().lines().any(|l| {
            l.contains("answered a TLS-ALPN-01 challenge") && l.contains(&format!("domain={NAME}"))
        })
    };
    assert!(
        answered(&a),
        "A did not answer B's challenge:\n{}",
        a.output()
    );
    assert!(!answered(&b), "{}", b.output());
    assert!(
        b.output().contains("certificate issued and stored"),
        "{}",
        b.output()
    );
}

#[tokio::test]
async fn a_lock_held_by_another_process_stops_ordering_until_that_process_dies() {
    if !common::external("flock", "util-linux") {
        return;
    }
    let tls_port = free_port();
    let Some(Scene {
        up,
        pebble,
        root,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port,
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    std::fs::create_dir_all(acme.join("locks")).unwrap();
    let lock = acme.join("locks").join(format!("{NAME}.lock"));
    // Another process (a holder that will crash) has the name's lock.
    let mut holder = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("flock")
            .arg(&lock)
            .args(["-c", "echo held; exec sleep 600"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    let proxy = start_proxy(|dir| acme_config(dir, &up.url(), tls_port, &pebble, &acme, &[])).await;
    // Longer than an instance waits between two looks at the storage.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(pebble.orders(), 0, "{}", pebble.log());
    assert!(issued_serial(proxy.tls_addr, &root).await.is_none());
    // The holder dies: the kernel releases its lock and the proxy takes over.
    let died = Instant::now();
    // SAFETY: kill(2) of the process group this test started.
    unsafe {
        libc::kill(-(holder.id() as i32), libc::SIGKILL);
    }
    let _ = holder.wait();
    wait_issued(&proxy, &pebble, &root, Duration::from_secs(30)).await;
    eprintln!(
        "MEASURED: lock holder died to certificate served: {:?}",
        died.elapsed()
    );
    assert_eq!(pebble.orders(), 1, "{}", pebble.log());
}

/// Waits for the `n`-th failed attempt's warning in `proxy`'s output; returns the output.
async fn wait_attempt(proxy: &Proxy, n: u32, limit: Duration) -> String {
    eventually(
        limit,
        Duration::from_millis(100),
        async || {
            let out = proxy.output();
            out.lines()
                .any(|l| l.contains("ACME order failed") && l.contains(&format!("attempt={n} ")))
                .then_some(out)
        },
        || format!("no failed attempt {n}:\n{}", proxy.output()),
    )
    .await
}

#[tokio::test]
async fn a_refusing_ca_leaves_the_old_certificate_served_and_is_retried_with_back_off() {
    let tls_port = free_port();
    let Some(Scene {
        up,
        pebble,
        root: _,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port,
        blocklist: vec![NAME.to_owned()],
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    let (old_pem, old_serial) = store_old_certificate(&acme, &pebble.directory);
    let proxy = start_proxy(|dir| acme_config(dir, &up.url(), tls_port, &pebble, &acme, &[])).await;
    let out = wait_attempt(&proxy, 3, Duration::from_secs(30)).await;
    // One warning per attempt, naming the domain and the CA's reason; the wait doubles.
    let failures: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("ACME order failed"))
        .collect();
    assert_eq!(failures.len(), 3, "{out}");
    for (line, wait) in failures.iter().zip(["1s", "2s", "4s"]) {
        assert!(line.contains(&format!("domain={NAME}")), "{line}");
        assert!(
            line.contains("problem=\"rejectedIdentifier\"")
                || line.contains("problem=rejectedIdentifier"),
            "{line}"
        );
        assert!(line.contains(&format!("retry_in={wait}")), "{line}");
        assert!(
            line.contains("serving the certificate in use until"),
            "{line}"
        );
    }
    // The stored certificate is still served.
    assert_eq!(
        issued_serial(proxy.tls_addr, &old_pem).await,
        Some(old_serial)
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(&m, "webprom_edge_acme_orders_total{result=\"rejected\"}"),
        3.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_failed_http_01_validation_is_logged_without_the_challenges_token() {
    // pebble validates HTTP-01 on a port nothing listens on: its problem detail quotes the
    // challenge URL, token included.
    let (tls_port, http_port, closed_port) = (free_port(), free_port(), free_port());
    let Some(Scene {
        up,
        pebble,
        root: _,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port,
        http_port: closed_port,
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    let http_listen = format!("\"127.0.0.1:{http_port}\"");
    let proxy = start_proxy(|dir| {
        acme_config(
            dir,
            &up.url(),
            tls_port,
            &pebble,
            &acme,
            &[("challenge", "\"http-01\""), ("http_listen", &http_listen)],
        )
    })
    .await;
    let out = wait_attempt(&proxy, 1, Duration::from_secs(60)).await;
    let line = out
        .lines()
        .find(|l| l.contains("ACME order failed"))
        .unwrap();
    assert!(line.contains("acme-challenge/[redacted]"), "{line}");
    // Nothing the proxy printed holds a token: 43 base64url characters after the prefix.
    for (at, _) in out.match_indices("/.well-known/acme-challenge/") {
        let rest = &out[at + "/.well-known/acme-challenge/".len()..];
        let run = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            .count();
        assert!(run < 20, "a token in the output: {}", &rest[..run]);
    }
}

#[tokio::test]
async fn a_frozen_ca_leaves_the_old_certificate_served_until_it_answers_again() {
    let tls_port = free_port();
    let Some(Scene {
        up,
        pebble,
        root,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port,
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    let (old_pem, old_serial) = store_old_certificate(&acme, &pebble.directory);
    pebble.signal("STOP");
    let proxy = start_proxy(|dir| {
        acme_config(
            dir,
            &up.url(),
            tls_port,
            &pebble,
            &acme,
            &[("timeout", "\"1s\"")],
        )
    })
    .await;
    let out = wait_attempt(&proxy, 2, Duration::from_secs(30)).await;
    assert!(
        out.contains("no answer from the ACME server within 1s"),
        "{out}"
    );
    assert_eq!(
        issued_serial(proxy.tls_addr, &old_pem).await,
        Some(old_serial.clone())
    );
    let m = metrics(&proxy).await;
    assert!(
        sample(&m, "webprom_edge_acme_orders_total{result=\"error\"}") >= 2.0,
        "{m}"
    );
    pebble.signal("CONT");
    let thawed = Instant::now();
    let new = wait_issued(&proxy, &pebble, &root, Duration::from_secs(60)).await;
    eprintln!(
        "MEASURED: CA answering again to certificate served: {:?}",
        thawed.elapsed()
    );
    assert_ne!(new, old_serial);
}

#[tokio::test]
async fn a_stored_certificate_that_cannot_be_used_is_reported_once_and_replaced_by_an_order() {
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
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    // (what is wrong, the change to a good stored certificate, part of the warning)
    type Spoil = fn(&Path, &str);
    let rows: [(&str, Spoil, &str); 5] = [
        (
            "a key of another certificate",
            |dir, other_key| std::fs::write(dir.join("key.pem"), other_key).unwrap(),
            "the key does not fit the certificate",
        ),
        (
            "a chain that is not PEM",
            |dir, _| std::fs::write(dir.join("cert.pem"), "garbage").unwrap(),
            "no certificate in it",
        ),
        (
            "no key",
            |dir, _| std::fs::remove_file(dir.join("key.pem")).unwrap(),
            "key.pem: missing",
        ),
        (
            "facts that are not JSON",
            |dir, _| std::fs::write(dir.join("meta.json"), "{").unwrap(),
            "meta.json",
        ),
        (
            "a chain cut short",
            |dir, _| {
                let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
                std::fs::write(dir.join("cert.pem"), &pem[..pem.len() / 2]).unwrap();
            },
            "not valid PEM",
        ),
    ];
    for (what, spoil, warning) in rows {
        let storage = tempfile::tempdir().unwrap();
        let acme = storage.path().join("acme");
        store_old_certificate(&acme, &pebble.directory);
        spoil(&acme.join("certificates").join(NAME), &other_key);
        let proxy =
            start_proxy(|dir| acme_config(dir, &up.url(), tls_port, &pebble, &acme, &[])).await;
        wait_issued(&proxy, &pebble, &root, Duration::from_secs(60)).await;
        let out = proxy.output();
        let warned: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("stored certificate cannot be used"))
            .collect();
        assert_eq!(warned.len(), 1, "{what}: {out}");
        assert!(warned[0].contains(warning), "{what}: {}", warned[0]);
        assert!(
            warned[0].contains(&format!("domain={NAME}")),
            "{what}: {}",
            warned[0]
        );
    }
}

#[tokio::test]
async fn a_certificate_the_storage_cannot_take_is_served_from_memory_and_not_ordered_again() {
    let tls_port = free_port();
    let Some(Scene {
        up,
        pebble,
        root,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port,
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    // A directory where the chain is to be written: the rename over it fails.
    std::fs::create_dir_all(acme.join("certificates").join(NAME).join("cert.pem")).unwrap();
    let proxy = start_proxy(|dir| acme_config(dir, &up.url(), tls_port, &pebble, &acme, &[])).await;
    wait_issued(&proxy, &pebble, &root, Duration::from_secs(60)).await;
    // Longer than several back-off steps (1 s, 2 s, 4 s): still the one order.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(pebble.orders(), 1, "{}", proxy.output());
    let out = proxy.output();
    let failed: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("ACME order failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{out}");
    assert!(
        failed[0].contains("storing the certificate in acme.storage"),
        "{}",
        failed[0]
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(&m, "webprom_edge_acme_orders_total{result=\"error\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_tls_alpn_01_handshake_gets_the_challenge_certificate_from_the_storage_and_no_record() {
    // No ACME server is needed: the response is published in the storage, as another
    // instance of the fleet would; the CA's directory is a dead address.
    let up = Upstream::start().await;
    let storage = tempfile::tempdir().unwrap();
    let acme = storage.path().join("acme");
    std::fs::create_dir_all(acme.join("challenges/tls-alpn-01")).unwrap();
    let key_authorization = "tok3n.thumbpr1nt";
    std::fs::write(
        acme.join("challenges/tls-alpn-01").join(NAME),
        key_authorization,
    )
    .unwrap();
    let proxy = start_proxy(|dir| {
        let c = base_config(dir, &up.url());
        let c = set(
            &c,
            "server",
            "hosts",
            &format!("[\"localhost\", \"{NAME}\"]"),
        );
        set_all(
            &c,
            "acme",
            &[
                ("enabled", "true"),
                (
                    "directory",
                    &format!("\"https://{}/dir\"", common::dead_addr()),
                ),
                ("contact", "[\"mailto:ops@webprom.test\"]"),
                ("domains", &format!("[\"{NAME}\"]")),
                ("storage", &format!("\"{}\"", acme.display())),
                ("retry_backoff", "\"1h\""),
            ],
        )
    })
    .await;
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    // (server name sent, ALPN offered, what is answered: the challenge certificate, the
    // ordinary certificate with this ALPN, or a closed connection)
    enum Answer {
        Challenge,
        Ordinary(&'static [u8]),
        Closed,
    }
    type Row<'a> = (Option<&'a str>, &'a [&'a [u8]], Answer);
    let rows: [Row; 5] = [
        (Some(NAME), &[b"acme-tls/1"], Answer::Challenge),
        (Some(NAME), &[b"h2", b"acme-tls/1"], Answer::Challenge),
        (Some("other.webprom.test"), &[b"acme-tls/1"], Answer::Closed),
        (None, &[b"acme-tls/1"], Answer::Closed),
        (Some(NAME), &[b"h2"], Answer::Ordinary(b"h2")),
    ];
    for (sni, alpn, answer) in rows {
        let tcp = TcpStream::connect(proxy.tls_addr).await.unwrap();
        let mut config = Arc::unwrap_or_clone(common::unverified_client_config(alpn));
        let name = match sni {
            Some(n) => ServerName::try_from(n).unwrap(),
            None => {
                config.enable_sni = false;
                ServerName::try_from("no-sni.invalid").unwrap()
            }
        };
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await;
        let row = format!("{sni:?} {alpn:?}");
        match answer {
            Answer::Challenge => {
                let tls = tls.unwrap_or_else(|e| panic!("{row}: {e}"));
                let session = tls.get_ref().1;
                assert_eq!(session.alpn_protocol(), Some(&b"acme-tls/1"[..]), "{row}");
                let der = session.peer_certificates().unwrap()[0].to_vec();
                let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                let ext = cert
                    .extensions()
                    .iter()
                    .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
                    .unwrap_or_else(|| panic!("{row}: no acmeIdentifier"));
                assert!(ext.critical, "{row}");
                assert_eq!(&ext.value[2..], digest.as_ref(), "{row}");
                // Then closed, with close_notify: no HTTP is spoken.
                let mut tls = tls;
                let mut rest = Vec::new();
                let read = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut rest),
                )
                .await
                .unwrap();
                assert!(read.is_ok() && rest.is_empty(), "{row}: {read:?}");
            }
            Answer::Ordinary(want) => {
                let tls = tls.unwrap_or_else(|e| panic!("{row}: {e}"));
                let session = tls.get_ref().1;
                assert_eq!(session.alpn_protocol(), Some(want), "{row}");
                let der = session.peer_certificates().unwrap()[0].to_vec();
                assert_eq!(der, common::pem_cert_der(&proxy.path("cert.pem")), "{row}");
            }
            Answer::Closed => assert!(tls.is_err(), "{row}"),
        }
    }
    // The CA's handshakes are no visitors: no record, no handshake error counted.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(proxy.records().is_empty(), "{:?}", proxy.records());
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(&m, "webprom_edge_tls_handshake_errors_total"),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn two_instances_facing_a_refusing_ca_share_one_back_off() {
    let (port_a, port_b) = (free_port(), free_port());
    let Some(Scene {
        up,
        pebble,
        root: _,
        storage: _storage,
        acme,
    }) = Scene::start(PebbleOptions {
        tls_port: port_a,
        blocklist: vec![NAME.to_owned()],
        ..PebbleOptions::default()
    })
    .await
    else {
        return;
    };
    let (a, b) = tokio::join!(
        start_proxy(|dir| acme_config(dir, &up.url(), port_a, &pebble, &acme, &[])),
        start_proxy(|dir| acme_config(dir, &up.url(), port_b, &pebble, &acme, &[])),
    );
    let failures = |p: &Proxy| -> Vec<String> {
        p.output()
            .lines()
            .filter(|l| l.contains("ACME order failed"))
            .map(str::to_owned)
            .collect()
    };
    // Until the fleet's fourth attempt (7 s in: past the 5 s after which an instance that
    // found the lock taken tries it again), from whichever instance.
    eventually(
        Duration::from_secs(40),
        Duration::from_millis(100),
        async || (failures(&a).len() + failures(&b).len() >= 4).then_some(()),
        || format!("A:\n{}\nB:\n{}", a.output(), b.output()),
    )
    .await;
    let mut all: Vec<String> = failures(&a).into_iter().chain(failures(&b)).collect();
    all.sort_by_key(|l| l.split_whitespace().next().map(str::to_owned));
    // One attempt each time the fleet's wait ends, numbered across the fleet: 1 s, 2 s, 4 s,
    // 8 s, not each instance's own 1 s, 2 s, ….
    assert_eq!(all.len(), 4, "{all:#?}");
    for (line, (n, wait)) in all.iter().zip([(1, "1s"), (2, "2s"), (3, "4s"), (4, "8s")]) {
        assert!(line.contains(&format!("attempt={n} ")), "{all:#?}");
        assert!(line.contains(&format!("retry_in={wait}")), "{all:#?}");
    }
    // And no attempt before the wait the one before it announced.
    let at = |line: &str| {
        let stamp = line.split_whitespace().next().unwrap();
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).unwrap()
    };
    for (pair, wait_ms) in all.windows(2).zip([1000, 2000, 4000]) {
        let gap = at(&pair[1]) - at(&pair[0]);
        assert!(
            gap >= time::Duration::milliseconds(wait_ms),
            "{gap} < {wait_ms} ms: {all:#?}"
        );
    }
    assert_eq!(
        pebble.log().matches("POST /order-plz").count(),
        4,
        "{}",
        pebble.log()
    );
}
