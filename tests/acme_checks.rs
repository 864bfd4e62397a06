//! Issue 16 from the outside, without a CA: `check-config` names the key of every bad `[acme]`
//! value and its files (exit 2); `acme.http_listen` is bound with the other listeners and
//! serves from the config; `tls_certificate_expiry_timestamp_seconds` covers every certificate
//! served from files, at start and after SIGHUP.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{Proxy, base_config, eventually, is_root, output_text, set, tool_command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The base config with `[acme]` enabled and valid: `ads.example` certified, a CA where
/// nothing listens, storage in `dir/acme`.
fn acme_config(dir: &Path) -> String {
    let base = set(
        &base_config(dir, "http://127.0.0.1:8080"),
        "server",
        "hosts",
        "[\"localhost\", \"ads.example\"]",
    );
    let d = dir.display();
    format!(
        "{base}\n[acme]\nenabled = true\ndirectory = \"https://127.0.0.1:9/directory\"\n\
         contact = [\"mailto:ops@example.com\"]\ndomains = [\"ads.example\"]\n\
         storage = \"{d}/acme\"\n"
    )
}

fn check_config(dir: &Path, text: &str) -> (i32, String, String) {
    std::fs::write(dir.join("config.toml"), text).unwrap();
    output_text(&mut tool_command(dir, "check-config", &[]))
}

#[test]
fn a_valid_acme_section_passes_check_config_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    common::write_test_geo(dir.path());
    // A test CA's root, as pebble's would be.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = dir.path().join("ca.pem");
    std::fs::write(&root, params.self_signed(&key).unwrap().pem()).unwrap();
    let with_roots = set(
        &acme_config(dir.path()),
        "acme",
        "ca_roots",
        &format!("\"{}\"", root.display()),
    );
    for text in [acme_config(dir.path()), with_roots] {
        let (code, _, stderr) = check_config(dir.path(), &text);
        assert_eq!(code, 0, "{stderr}");
    }
    assert!(
        !dir.path().join("acme").exists(),
        "check-config created the storage"
    );
    // Disabled, its files are not looked at.
    let disabled = set(
        &set(&acme_config(dir.path()), "acme", "enabled", "false"),
        "acme",
        "ca_roots",
        "\"/nonexistent/roots.pem\"",
    );
    let (code, _, stderr) = check_config(dir.path(), &disabled);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn every_bad_acme_value_exits_2_and_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_test_geo(d);
    let good = acme_config(d);
    let acme = |key: &str, value: &str| set(&good, "acme", key, value);
    let file = |name: &str, content: &[u8]| {
        let path = d.join(name);
        std::fs::write(&path, content).unwrap();
        format!("\"{}\"", path.display())
    };
    let not_pem = file("not-pem.txt", b"just some text\n");
    let empty_pem = file("empty.pem", b"");
    let not_x509 = file(
        "not-x509.pem",
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let secret = "s3cr3t!!not+base64url";
    let bad_key = file("eab-bad.key", secret.as_bytes());
    let empty_key = file("eab-empty.key", b" \n");
    let good_key = file(
        "eab.key",
        b"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\n",
    );
    let a_file = file("a-file", b"");
    let taken = "127.0.0.1:18443";
    // (what, config, the key named)
    let mut rows: Vec<(&str, String, &str)> = vec![
        (
            "a domain not in server.hosts",
            acme("domains", "[\"other.example\"]"),
            "acme.domains[0]",
        ),
        ("no domain", acme("domains", "[]"), "acme.domains"),
        (
            "a wildcard domain",
            acme("domains", "[\"*.ads.example\"]"),
            "acme.domains[0]",
        ),
        (
            "an upper-case domain",
            acme("domains", "[\"Ads.Example\"]"),
            "acme.domains[0]",
        ),
        (
            "an unqualified domain",
            acme("domains", "[\"localhost\"]"),
            "acme.domains[0]",
        ),
        (
            "a domain listed twice",
            acme("domains", "[\"ads.example\", \"ads.example\"]"),
            "acme.domains[1]",
        ),
        (
            "an IP address as a domain",
            acme("domains", "[\"192.0.2.1\"]"),
            "acme.domains[0]",
        ),
        (
            "a domain with a character no name has",
            acme("domains", "[\"ads_example.com\"]"),
            "acme.domains[0]",
        ),
        ("a missing contact", acme("contact", "[]"), "acme.contact"),
        (
            "a contact with two @",
            acme("contact", "[\"mailto:a@b@example.com\"]"),
            "acme.contact[0]",
        ),
        (
            "a contact without its local part",
            acme("contact", "[\"mailto:@example.com\"]"),
            "acme.contact[0]",
        ),
        (
            "a directory URL without a host",
            acme("directory", "\"https:///directory\""),
            "acme.directory",
        ),
        (
            "a contact that is not mailto:",
            acme(
                "contact",
                "[\"mailto:ops@example.com\", \"ops@example.com\"]",
            ),
            "acme.contact[1]",
        ),
        (
            "a directory over http",
            acme("directory", "\"http://127.0.0.1:9/directory\""),
            "acme.directory",
        ),
        (
            "a directory that is no URL",
            acme("directory", "\"lets encrypt\""),
            "acme.directory",
        ),
        (
            "an unknown challenge",
            acme("challenge", "\"dns-01\""),
            "acme.challenge",
        ),
        (
            "http-01 without http_listen",
            acme("challenge", "\"http-01\""),
            "acme.http_listen",
        ),
        (
            "an http_listen that is no address",
            acme("http_listen", "\"0.0.0.0:http\""),
            "acme.http_listen",
        ),
        (
            "an http_listen that is the TLS listener's",
            set(
                &set(&good, "server", "listen", &format!("\"{taken}\"")),
                "acme",
                "http_listen",
                &format!("\"{taken}\""),
            ),
            "server.listen",
        ),
        (
            "a ca_roots that does not exist",
            acme("ca_roots", "\"/nonexistent/roots.pem\""),
            "acme.ca_roots",
        ),
        (
            "a ca_roots that is not PEM",
            acme("ca_roots", &not_pem),
            "acme.ca_roots",
        ),
        (
            "a ca_roots whose certificate is not X.509",
            acme("ca_roots", &not_x509),
            "acme.ca_roots",
        ),
        (
            "an empty ca_roots",
            acme("ca_roots", &empty_pem),
            "acme.ca_roots",
        ),
        (
            "a ca_roots that is a directory",
            acme("ca_roots", &format!("\"{}\"", d.display())),
            "acme.ca_roots",
        ),
        (
            "eab_kid without its key file",
            acme("eab_kid", "\"kid-1\""),
            "acme.eab_hmac_key_file",
        ),
        (
            "an eab key file without eab_kid",
            acme("eab_hmac_key_file", &good_key),
            "acme.eab_kid",
        ),
        (
            "an empty eab_kid",
            set(
                &acme("eab_kid", "\"\""),
                "acme",
                "eab_hmac_key_file",
                &good_key,
            ),
            "acme.eab_kid",
        ),
        (
            "an eab key file that does not exist",
            set(
                &acme("eab_kid", "\"kid-1\""),
                "acme",
                "eab_hmac_key_file",
                "\"/nonexistent/eab.key\"",
            ),
            "acme.eab_hmac_key_file",
        ),
        (
            "an empty eab key file",
            set(
                &acme("eab_kid", "\"kid-1\""),
                "acme",
                "eab_hmac_key_file",
                &empty_key,
            ),
            "acme.eab_hmac_key_file",
        ),
        (
            "an eab key file that is not base64url",
            set(
                &acme("eab_kid", "\"kid-1\""),
                "acme",
                "eab_hmac_key_file",
                &bad_key,
            ),
            "acme.eab_hmac_key_file",
        ),
        (
            "a storage that is a file",
            acme("storage", &a_file),
            "acme.storage",
        ),
        (
            "a storage that cannot be created",
            acme(
                "storage",
                &format!("\"{}\"", d.join("a-file").join("acme").display()),
            ),
            "acme.storage",
        ),
        (
            "a retry back-off of nothing",
            acme("retry_backoff", "\"0s\""),
            "acme.retry_backoff",
        ),
        (
            "a timeout over a day",
            acme("timeout", "\"2d\""),
            "acme.timeout",
        ),
        ("an unknown key", acme("contacts", "[]"), "acme.contacts"),
    ];
    // Unreadable by permissions: root reads anything, so only as another user.
    let unreadable = file("unreadable.pem", b"");
    std::fs::set_permissions(
        d.join("unreadable.pem"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let unreadable_key = file("unreadable.key", b"");
    std::fs::set_permissions(
        d.join("unreadable.key"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let read_only = d.join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o500)).unwrap();
    let read_only = format!("\"{}\"", read_only.display());
    if !is_root() {
        rows.push((
            "a storage that cannot be written",
            acme("storage", &read_only),
            "acme.storage",
        ));
        rows.push((
            "a ca_roots that cannot be read",
            acme("ca_roots", &unreadable),
            "acme.ca_roots",
        ));
        rows.push((
            "an eab key file that cannot be read",
            set(
                &acme("eab_kid", "\"kid-1\""),
                "acme",
                "eab_hmac_key_file",
                &unreadable_key,
            ),
            "acme.eab_hmac_key_file",
        ));
    }
    for (what, text, key) in rows {
        let (code, _, stderr) = check_config(d, &text);
        assert_eq!(code, 2, "{what}: {stderr}");
        assert!(
            stderr.contains(key),
            "{what}: {key} not named in {stderr:?}"
        );
        assert!(!stderr.contains(secret), "{what}: the key file quoted");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
    // The good key file with its kid is accepted.
    let bound = set(
        &acme("eab_kid", "\"kid-1\""),
        "acme",
        "eab_hmac_key_file",
        &good_key,
    );
    let (code, _, stderr) = check_config(d, &bound);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn an_http_listen_address_in_use_stops_the_start_with_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let config = set(
        &acme_config(dir.path()),
        "acme",
        "http_listen",
        &format!("\"{addr}\""),
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    common::write_test_geo(dir.path());
    let mut run = tool_command(dir.path(), "run", &[]);
    let (code, _, stderr) = output_text(&mut run);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("acme.http_listen"), "{stderr}");
    // Nothing was written before the listeners were bound.
    assert!(!dir.path().join("cert.pem").exists());
}

/// GET `target` with `host` on a new connection to `addr`: the whole answer, as text.
async fn plain_get(addr: SocketAddr, target: &str, host: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nuser-agent: curl/8.5.0\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn the_http_listen_listener_redirects_listed_hosts_and_records_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = set(
        &acme_config(dir.path()),
        "acme",
        "http_listen",
        "\"127.0.0.1:0\"",
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let proxy = Proxy::spawn(dir).await;
    let addr = proxy.acme_http_addr.expect("acme-http listener announced");
    // (target, host, status line, Location)
    let rows = [
        (
            "/p?q=1",
            "ads.example",
            "HTTP/1.1 308",
            Some("https://ads.example/p?q=1"),
        ),
        (
            "/",
            "localhost:80",
            "HTTP/1.1 308",
            Some("https://localhost/"),
        ),
        ("/", "evil.example", "HTTP/1.1 400", None),
        (
            "/.well-known/acme-challenge/notPendingToken",
            "ads.example",
            "HTTP/1.1 404",
            None,
        ),
    ];
    for (target, host, status, location) in rows {
        let answer = plain_get(addr, target, host).await;
        assert!(answer.starts_with(status), "{target} {host}: {answer}");
        let got = answer
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .map(str::trim);
        assert_eq!(got, location, "{target} {host}");
    }
    let records = proxy.wait_records(rows.len()).await;
    assert_eq!(records.len(), rows.len(), "{records:?}");
    let log = proxy.access_log();
    assert!(
        !log.contains("notPendingToken") && !log.contains("q=1") && !log.contains("evil"),
        "{log}"
    );
    let statuses: Vec<String> = records.iter().map(|r| common::field(r, "status")).collect();
    assert_eq!(statuses, ["308", "308", "400", "404"]);
}

/// Writes a certificate for `name` valid until `year`-`month`-01 as `dir/{file}.pem` and
/// `.key`; returns its not-after time, Unix seconds.
fn write_cert(dir: &Path, file: &str, name: &str, year: i32, month: u8) -> i64 {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(year, month, 1);
    let cert = params.self_signed(&key).unwrap();
    // Replaced by rename, as an operator's tooling does.
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, key.serialize_pem()).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{file}.key"))).unwrap();
    std::fs::write(&tmp, cert.pem()).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{file}.pem"))).unwrap();
    let month = time::Month::try_from(month).unwrap();
    time::Date::from_calendar_date(year, month, 1)
        .unwrap()
        .midnight()
        .assume_utc()
        .unix_timestamp()
}

/// The `name` → value of every `tls_certificate_expiry_timestamp_seconds` series.
fn expiry_series(metrics: &str) -> Vec<(String, i64)> {
    let prefix = "webprom_edge_tls_certificate_expiry_timestamp_seconds{name=\"";
    let mut out: Vec<(String, i64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let (name, value) = rest.split_once("\"} ")?;
            Some((name.to_owned(), value.trim().parse::<f64>().ok()? as i64))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn the_expiry_gauge_covers_every_file_certificate_at_start_and_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let d = d.as_path();
    let default = write_cert(d, "cert", "localhost", 2031, 1);
    let ads = write_cert(d, "ads", "ads.example", 2032, 2);
    let cdn = write_cert(d, "cdn", "*.cdn.example", 2033, 3);
    let sni = |host: &str, file: &str| {
        format!(
            "\n[[tls.sni]]\nhost = \"{host}\"\ncert = \"{0}/{file}.pem\"\nkey = \"{0}/{file}.key\"\n",
            d.display()
        )
    };
    let base = set(
        &set(
            &base_config(d, "http://127.0.0.1:8080"),
            "tls",
            "self_signed",
            "false",
        ),
        "tls",
        "key",
        &format!("\"{}/cert.key\"", d.display()),
    );
    let both = format!(
        "{base}{}{}",
        sni("ads.example", "ads"),
        sni("*.cdn.example", "cdn")
    );
    std::fs::write(d.join("config.toml"), &both).unwrap();
    let proxy = Proxy::spawn(dir).await;
    let s = |n: &str| n.to_owned();

    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(
        expiry_series(&metrics),
        [
            (s("*.cdn.example"), cdn),
            (s("ads.example"), ads),
            (s("default"), default)
        ],
        "{metrics}"
    );

    // The default certificate replaced on disk, the wildcard dropped from the config: SIGHUP.
    let renewed = write_cert(proxy.dir.path(), "cert", "localhost", 2034, 4);
    let one = format!("{base}{}", sni("ads.example", "ads"));
    std::fs::write(proxy.path("config.toml"), &one).unwrap();
    proxy.signal("HUP");
    let want = [(s("ads.example"), ads), (s("default"), renewed)];
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let (_, metrics) = proxy.admin_get("/metrics").await;
            (expiry_series(&metrics) == want).then_some(())
        },
        || format!("gauge never became {want:?}:\n{}", proxy.output()),
    )
    .await;

    // A reload that fails (the certificate file gone) keeps the certificates and the gauge.
    std::fs::remove_file(proxy.path("ads.pem")).unwrap();
    proxy.signal("HUP");
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            proxy
                .output()
                .contains("certificate reload failed")
                .then_some(())
        },
        || proxy.output(),
    )
    .await;
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(expiry_series(&metrics), want, "{metrics}");
}

#[tokio::test]
async fn a_generated_self_signed_certificate_has_its_expiry_too() {
    let proxy = Proxy::start("http://127.0.0.1:8080").await;
    let (_, metrics) = proxy.admin_get("/metrics").await;
    let series = expiry_series(&metrics);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].0, "default");
    assert!(series[0].1 > now, "{series:?}");
    let served = common::pem_cert_der(&proxy.path("cert.pem"));
    let facts = webprom_edge::server::tls::CertFacts::of(&served).unwrap();
    assert_eq!(series[0].1, facts.not_after);
}

#[test]
fn the_example_config_shows_every_acme_key_commented_out_with_its_default() {
    use webprom_edge::config::{Acme, Config};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.lines().any(|l| l.trim() == "[acme]"),
        "[acme] is commented out"
    );
    // The block from `# [acme]` to the first line that is not a comment, uncommented (a
    // `# # ...` line is a comment inside the block).
    let mut block = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line == "# [acme]" {
            inside = true;
        }
        if inside {
            if !line.starts_with('#') {
                break;
            }
            if !line.starts_with("# #") {
                block.push(line.trim_start_matches("# ").to_owned());
            }
        }
    }
    let block = block.join("\n");
    let shown: toml::Table = block.parse().unwrap_or_else(|e| panic!("{e}:\n{block}"));
    let shown = shown["acme"].as_table().expect("an [acme] table").clone();

    // Every key, the optional ones too.
    let every = Acme {
        http_listen: Some("0.0.0.0:80".parse().unwrap()),
        ca_roots: Some("roots.pem".into()),
        eab_kid: Some("kid".into()),
        eab_hmac_key_file: Some("eab.key".into()),
        ..Acme::default()
    };
    let every = toml::Table::try_from(&every).unwrap();
    let mut want: Vec<&String> = every.keys().collect();
    let mut got: Vec<&String> = shown.keys().collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);

    // Shown with its default, where it has one (durations compared as durations).
    let uncommented = format!("{text}\n{block}\n");
    let example = Config::parse(&uncommented, &path).unwrap().acme;
    let default = Acme::default();
    assert!(!example.enabled);
    assert_eq!(example.directory, default.directory);
    assert_eq!(example.challenge, default.challenge);
    assert_eq!(example.storage, default.storage);
    assert_eq!(example.retry_backoff, default.retry_backoff);
    assert_eq!(example.timeout, default.timeout);
    // Every key with a default is one of those (contact and domains have none).
    let defaults = toml::Table::try_from(Acme::default()).unwrap();
    let mut with_default: Vec<&str> = defaults
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "contact" && *k != "domains")
        .collect();
    with_default.sort();
    assert_eq!(
        with_default,
        [
            "challenge",
            "directory",
            "enabled",
            "retry_backoff",
            "storage",
            "timeout"
        ]
    );
}
