//! Issue 17, part 2 from the outside: session tickets (`[tls.tickets]`) let a client resume on
//! another instance of the fleet with the same secret file, never with another secret or a key
//! two periods old; `tls_handshakes_total{resumed}` counts it; the secret file is rewritten to
//! the previous period's key; `check-config` names `tls.tickets.*` for every bad value (exit 2).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Proxy, Upstream, base_config, is_root, output_text, sample, set, tool_command};
use rustls::HandshakeKind;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bare secret, as `openssl rand -hex 32` writes it.
const SECRET: &str = "8f2c1d0e9b7a65443322110ffeeddccbbaa99887766554433221100aabbccdd\n";
const OTHER_SECRET: &str = "1111111111111111111111111111111111111111111111111111111111111111\n";
/// What a file the proxy rewrote starts with.
const FILE_TAG: &str = "webprom-edge-ticket-key-v1";
const HOUR: u64 = 3600;

fn write_secret(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The base config with `[tls.tickets]` set to `tickets` (TOML lines).
fn with_tickets(config: String, tickets: &str) -> String {
    format!("{config}\n[tls.tickets]\n{tickets}\n")
}

/// Starts a proxy in a new directory with the secret file `secret` (if any, mode 0600, at
/// `dir/tickets.secret`), `[tls.tickets]` lines `extra`, and the certificate and key of
/// `cert_from` (so that one client trusts every instance).
async fn instance(up: &Upstream, secret: Option<&str>, extra: &str, cert_from: &Path) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in ["cert.pem", "key.pem"] {
        if cert_from.join(f).exists() {
            std::fs::copy(cert_from.join(f), d.join(f)).unwrap();
        }
    }
    let mut lines = extra.to_owned();
    if let Some(secret) = secret {
        write_secret(&d.join("tickets.secret"), secret, 0o600);
        lines.push_str(&format!(
            "\nsecret_file = \"{}\"",
            d.join("tickets.secret").display()
        ));
    }
    let config = with_tickets(base_config(d, &up.url()), &lines);
    std::fs::write(d.join("config.toml"), config).unwrap();
    Proxy::spawn(dir).await
}

/// A client of one TLS version whose session cache is shared by all its connections.
fn client(cert_pem: &Path, tls13: bool) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(cert_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let version = match tls13 {
        true => &rustls::version::TLS13,
        false => &rustls::version::TLS12,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::store(Arc::new(
        rustls::client::ClientSessionMemoryCache::new(32),
    ));
    Arc::new(config)
}

/// One HTTP/1.1 GET over a new TLS connection to `proxy`: the handshake's kind (reading the
/// whole response lets the client take the TLS 1.3 tickets sent after the handshake).
async fn visit(proxy: &Proxy, config: &Arc<rustls::ClientConfig>) -> HandshakeKind {
    let tcp = TcpStream::connect(proxy.tls_addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    kind
}

/// `tls_handshakes_total{alpn="http/1.1",resumed,version}` of `proxy`.
async fn handshakes(proxy: &Proxy, tls13: bool, resumed: bool) -> f64 {
    let (_, text) = proxy.admin_get("/metrics").await;
    let version = if tls13 { "TLSv1.3" } else { "TLSv1.2" };
    sample(
        &text,
        &format!(
            "webprom_edge_tls_handshakes_total{{alpn=\"http/1.1\",resumed=\"{resumed}\",version=\"{version}\"}}"
        ),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The content of a secret file the proxy rewrote: the key `key` of `period` (hourly).
fn stated_file(period: u64, key: &[u8; 32]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{FILE_TAG} rotation={HOUR} period={period} key={hex}\n")
}

/// The ratchet as the README states it: K[p+1] = BLAKE3 derive_key(context, K[p]).
fn ratchet(key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("webprom-edge ticket ratchet v1", key)
}

#[tokio::test]
async fn a_client_resumes_on_another_instance_with_a_copy_of_the_same_secret_file() {
    let up = Upstream::start().await;
    let a = instance(&up, Some(SECRET), "", Path::new("/nonexistent")).await;
    let b = instance(&up, Some(SECRET), "", a.dir.path()).await;
    // Rows: (TLS 1.3?).
    for tls13 in [true, false] {
        let config = client(&a.path("cert.pem"), tls13);
        assert_eq!(
            visit(&a, &config).await,
            HandshakeKind::Full,
            "tls13 {tls13}"
        );
        assert_eq!(
            visit(&b, &config).await,
            HandshakeKind::Resumed,
            "tls13 {tls13}: a ticket of A resumes on B"
        );
        assert_eq!(handshakes(&b, tls13, true).await, 1.0, "tls13 {tls13}");
        assert_eq!(handshakes(&b, tls13, false).await, 0.0, "tls13 {tls13}");
        assert_eq!(handshakes(&a, tls13, false).await, 1.0, "tls13 {tls13}");
    }
    // Each file was rewritten to a key of an earlier period, 0600, without the bare secret.
    for p in [&a, &b] {
        let path = p.path("tickets.secret");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(FILE_TAG), "{text}");
        assert!(!text.contains(SECRET.trim()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let output = p.output();
        assert!(!output.contains(SECRET.trim()), "{output}");
    }
}

#[tokio::test]
async fn a_client_makes_a_full_handshake_where_its_ticket_cannot_be_opened() {
    let up = Upstream::start().await;
    let a = instance(&up, Some(SECRET), "", Path::new("/nonexistent")).await;
    let other = instance(&up, Some(OTHER_SECRET), "", a.dir.path()).await;
    let random = instance(&up, None, "", a.dir.path()).await;
    // Rows: (instance the ticket of A is shown to, what it is), for each TLS version.
    for tls13 in [true, false] {
        for (to, what) in [(&other, "another secret"), (&random, "random keys")] {
            let config = client(&a.path("cert.pem"), tls13);
            assert_eq!(visit(&a, &config).await, HandshakeKind::Full);
            assert_eq!(
                visit(to, &config).await,
                HandshakeKind::Full,
                "tls13 {tls13}: {what}"
            );
            assert_eq!(handshakes(to, tls13, true).await, 0.0, "{what}");
        }
    }
    // Random keys still resume on their own instance.
    let config = client(&a.path("cert.pem"), true);
    assert_eq!(visit(&random, &config).await, HandshakeKind::Full);
    assert_eq!(visit(&random, &config).await, HandshakeKind::Resumed);
}

#[tokio::test]
async fn a_ticket_of_the_previous_period_resumes_and_one_two_periods_old_does_not() {
    // Every instance's clock is behind its file's period (hours from now: no period boundary
    // passes during the test), so each issues with the key of the period after its file's, as
    // the instance that wrote the file did. A's file holds K[q]: A issues tickets of q+1.
    let q = unix_now() / HOUR + 10;
    let k = [42u8; 32];
    let k1 = ratchet(&k);
    let k2 = ratchet(&k1);
    let up = Upstream::start().await;
    let a = instance(
        &up,
        Some(&stated_file(q, &k)),
        "",
        Path::new("/nonexistent"),
    )
    .await;
    // (B's file: its period and key; B then issues tickets of the period after; resumed)
    let rows = [
        (q, k, HandshakeKind::Resumed),
        (q + 1, k1, HandshakeKind::Resumed),
        (q + 2, k2, HandshakeKind::Full),
    ];
    for (period, key, want) in rows {
        let b = instance(&up, Some(&stated_file(period, &key)), "", a.dir.path()).await;
        for tls13 in [true, false] {
            let config = client(&a.path("cert.pem"), tls13);
            assert_eq!(visit(&a, &config).await, HandshakeKind::Full);
            assert_eq!(
                visit(&b, &config).await,
                want,
                "B issuing at period q+{}, tls13 {tls13}",
                period + 1 - q
            );
        }
        assert!(b.output().contains("clock is behind"), "{}", b.output());
        // The file is left at its period: the clock has not reached it.
        assert_eq!(
            std::fs::read_to_string(b.path("tickets.secret")).unwrap(),
            stated_file(period, &key)
        );
    }
}

#[tokio::test]
async fn with_tickets_disabled_nothing_is_resumed() {
    let up = Upstream::start().await;
    let a = instance(
        &up,
        Some(SECRET),
        "enabled = false",
        Path::new("/nonexistent"),
    )
    .await;
    for tls13 in [true, false] {
        let config = client(&a.path("cert.pem"), tls13);
        for _ in 0..2 {
            assert_eq!(
                visit(&a, &config).await,
                HandshakeKind::Full,
                "tls13 {tls13}"
            );
        }
        assert_eq!(handshakes(&a, tls13, false).await, 2.0);
    }
    // Disabled, the file is left as it was.
    assert_eq!(
        std::fs::read_to_string(a.path("tickets.secret")).unwrap(),
        SECRET
    );
}

#[tokio::test]
async fn a_secret_file_that_cannot_be_rewritten_is_warned_about_once_and_still_used() {
    if is_root() {
        eprintln!("skipped: root writes into a read-only directory");
        return;
    }
    let up = Upstream::start().await;
    let a = instance(&up, Some(SECRET), "", Path::new("/nonexistent")).await;
    let ro = tempfile::tempdir().unwrap();
    let path: PathBuf = ro.path().join("tickets.secret");
    write_secret(&path, SECRET, 0o400);
    std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let b = instance(
        &up,
        None,
        &format!("secret_file = \"{}\"", path.display()),
        a.dir.path(),
    )
    .await;
    let config = client(&a.path("cert.pem"), true);
    assert_eq!(visit(&a, &config).await, HandshakeKind::Full);
    assert_eq!(visit(&b, &config).await, HandshakeKind::Resumed);
    let output = b.output();
    assert_eq!(
        output
            .matches("cannot rewrite tls.tickets.secret_file")
            .count(),
        1,
        "{output}"
    );
    assert!(output.contains(&path.display().to_string()), "{output}");
    std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), SECRET);
}

#[test]
fn every_bad_tls_tickets_value_exits_2_and_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_test_geo(d);
    let base = set(
        &base_config(d, "http://127.0.0.1:8080"),
        "tls",
        "self_signed",
        "true",
    );
    let secret = |name: &str, content: &str, mode: u32| {
        let path = d.join(name);
        write_secret(&path, content, mode);
        format!("secret_file = \"{}\"", path.display())
    };
    let key_hex = "ab".repeat(32);
    // (what, [tls.tickets] lines, the key named, what the reason says)
    let rows: Vec<(&str, String, &str, &str)> = vec![
        (
            "a missing secret file",
            format!("secret_file = \"{}/missing\"", d.display()),
            "tls.tickets.secret_file",
            "missing",
        ),
        (
            "a secret file others may read",
            secret("s-0644", SECRET, 0o644),
            "tls.tickets.secret_file",
            "0644",
        ),
        (
            "a secret file its group may read",
            secret("s-0640", SECRET, 0o640),
            "tls.tickets.secret_file",
            "0640",
        ),
        (
            "a secret file too short",
            secret("s-short", "0123456789abcdef", 0o600),
            "tls.tickets.secret_file",
            "at least 32",
        ),
        (
            "an empty secret file",
            secret("s-empty", "", 0o600),
            "tls.tickets.secret_file",
            "at least 32",
        ),
        (
            "a secret file that is a directory",
            format!("secret_file = \"{}\"", d.display()),
            "tls.tickets.secret_file",
            "",
        ),
        (
            "a rewritten file of another rotation",
            secret(
                "s-rotation",
                &format!("{FILE_TAG} rotation=60 period=5 key={key_hex}"),
                0o600,
            ),
            "tls.tickets.secret_file",
            "same rotation",
        ),
        (
            "a rewritten file without its key",
            secret(
                "s-nokey",
                &format!("{FILE_TAG} rotation=3600 period=5 key=00"),
                0o600,
            ),
            "tls.tickets.secret_file",
            "fresh secret",
        ),
        (
            "a rotation under a minute",
            "rotation = \"59s\"".to_owned(),
            "tls.tickets.rotation",
            "1m to 1d",
        ),
        (
            "a rotation over a day",
            "rotation = \"25h\"".to_owned(),
            "tls.tickets.rotation",
            "1m to 1d",
        ),
        (
            "a rotation of nothing",
            "rotation = \"0s\"".to_owned(),
            "tls.tickets.rotation",
            "",
        ),
        ("an unknown key", "rotate = \"1h\"".to_owned(), "rotate", ""),
        (
            "a rewritten file of a period before 2026",
            secret(
                "s-past",
                &format!("{FILE_TAG} rotation=3600 period=5 key={key_hex}"),
                0o600,
            ),
            "tls.tickets.secret_file",
            "before 2026",
        ),
        (
            "a rewritten file of a period far ahead of the clock",
            secret(
                "s-ahead",
                &format!(
                    "{FILE_TAG} rotation=3600 period={} key={key_hex}",
                    1u64 << 39
                ),
                0o600,
            ),
            "tls.tickets.secret_file",
            "ahead of this machine's clock",
        ),
        (
            "the rate limit's secret file",
            format!(
                "{}\n[rate_limit.global]\nredis = \"redis://127.0.0.1:9\"\nkey_secret_file = \"{}\"",
                secret("s-shared", SECRET, 0o600),
                d.join("s-shared").display()
            ),
            "tls.tickets.secret_file",
            "also rate_limit.global.key_secret_file",
        ),
    ];
    for (what, lines, key, reason) in rows {
        std::fs::write(d.join("config.toml"), with_tickets(base.clone(), &lines)).unwrap();
        let (code, _, stderr) = output_text(&mut tool_command(d, "check-config", &[]));
        assert_eq!(code, 2, "{what}: {stderr}");
        assert!(stderr.contains(key), "{what}: {stderr}");
        assert!(stderr.contains(reason), "{what}: {stderr}");
        assert!(!stderr.contains(SECRET.trim()), "{what}: {stderr}");
        assert!(!stderr.contains(&key_hex), "{what}: {stderr}");
    }
    // Good rows: a bare secret, a rewritten file, and with tickets disabled a missing file
    // (not looked at).
    let good = [
        secret("g-bare", SECRET, 0o600),
        secret("g-0400", SECRET, 0o400),
        // The period of 2026-01-01, the anchor of a bare secret.
        secret(
            "g-stated",
            &format!("{FILE_TAG} rotation=3600 period=490896 key={key_hex}"),
            0o600,
        ),
        format!("enabled = false\nsecret_file = \"{}/missing\"", d.display()),
        String::new(),
    ];
    for lines in good {
        std::fs::write(d.join("config.toml"), with_tickets(base.clone(), &lines)).unwrap();
        let (code, _, stderr) = output_text(&mut tool_command(d, "check-config", &[]));
        assert_eq!(code, 0, "{lines}: {stderr}");
    }
    // check-config never rewrites the file.
    assert_eq!(std::fs::read_to_string(d.join("g-bare")).unwrap(), SECRET);
}

#[tokio::test]
async fn run_exits_2_naming_the_secret_file_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_test_geo(d);
    write_secret(&d.join("s"), SECRET, 0o644);
    let lines = format!("secret_file = \"{}\"", d.join("s").display());
    let config = with_tickets(base_config(d, "http://127.0.0.1:8080"), &lines);
    std::fs::write(d.join("config.toml"), config).unwrap();
    let (code, _, stderr) = output_text(&mut tool_command(d, "run", &[]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("tls.tickets.secret_file"), "{stderr}");
    assert!(!stderr.contains(SECRET.trim()), "{stderr}");
}

/// Writes `tickets` as the `[tls.tickets]` lines of `proxy`'s config, sends SIGHUP and waits
/// until the reload is done; returns the output it wrote.
async fn hup(proxy: &Proxy, up: &Upstream, tickets: &str) -> String {
    let config = with_tickets(base_config(proxy.dir.path(), &up.url()), tickets);
    std::fs::write(proxy.path("config.toml"), config).unwrap();
    let done = |out: &str| out.matches("reloaded the country database").count();
    let before = proxy.output();
    let reloads = done(&before);
    proxy.signal("HUP");
    common::eventually(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        async || (done(&proxy.output()) > reloads).then_some(()),
        || format!("no reload in:\n{}", proxy.output()),
    )
    .await;
    proxy.output()[before.len()..].to_owned()
}

#[tokio::test]
async fn sighup_applies_tls_tickets_to_new_handshakes() {
    let up = Upstream::start().await;
    let a = instance(&up, Some(SECRET), "", Path::new("/nonexistent")).await;
    let other = a.path("other.secret");
    write_secret(&other, OTHER_SECRET, 0o600);
    let file = |p: &Path| format!("secret_file = \"{}\"", p.display());
    let config = client(&a.path("cert.pem"), true);
    assert_eq!(visit(&a, &config).await, HandshakeKind::Full);
    // Rows: ([tls.tickets] after SIGHUP, the next handshake of the client holding a ticket of
    // the keys before, what the reload says). Each row's first visit also takes a new ticket.
    let rows = [
        // Unchanged: the same file gives the same keys.
        (
            file(&a.path("tickets.secret")),
            HandshakeKind::Resumed,
            "reloaded tls.tickets",
        ),
        // Another secret: tickets of the old keys are refused.
        (file(&other), HandshakeKind::Full, "reloaded tls.tickets"),
        // Disabled: nothing resumes.
        (
            format!("enabled = false\n{}", file(&other)),
            HandshakeKind::Full,
            "reloaded tls.tickets",
        ),
        // Back on with the same file: the same keys, so the ticket the client kept from before
        // (rustls sends two per full handshake) resumes.
        (file(&other), HandshakeKind::Resumed, "reloaded tls.tickets"),
        // A file that cannot be used keeps the keys in use.
        (
            format!("secret_file = \"{}/missing\"", a.dir.path().display()),
            HandshakeKind::Resumed,
            "session-ticket reload failed",
        ),
    ];
    for (lines, want, says) in rows {
        let out = hup(&a, &up, &lines).await;
        assert!(out.contains(says), "{lines}: {out}");
        assert_eq!(visit(&a, &config).await, want, "{lines}");
    }
    assert!(!a.output().contains(OTHER_SECRET.trim()));
}
