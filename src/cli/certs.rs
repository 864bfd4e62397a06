//! `certs` (policy P6): every certificate the proxy serves, from the configuration and the ACME
//! storage as they are on disk: its name, where it comes from (`file`, `self-signed`, `acme`),
//! its issuer, its not-after time and, for ACME, when it is renewed next.
//!
//! Owns the report only. Must never reach the network, write or create anything (not even the
//! ACME storage), print a key, or panic on a file that cannot be read: such a row says why.

use std::path::Path;

use super::args::ConfigFile;
use super::{CliError, print_stdout};
use crate::acme::renew::{renewal_time, rfc3339};
use crate::acme::storage::Storage;
use crate::config::Config;
use crate::server::tls::{CertFacts, read_certificates};

/// The largest certificate file read, in bytes.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// One served name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `(default)`, a `tls.sni` host, or an `acme.domains` name.
    pub name: String,
    /// `file`, `self-signed` or `acme`.
    pub source: &'static str,
    /// The issuer (RFC 4514), or why the certificate cannot be read.
    pub issuer: String,
    /// RFC 3339, UTC; `-` when unknown.
    pub not_after: String,
    /// ACME only: RFC 3339, `due now`, or why not known; `-` otherwise.
    pub next_renewal: String,
    /// Whether the row reports a certificate that cannot be read.
    pub failed: bool,
}

/// `certs [--config FILE]`: the table on stdout; exit status 1 when a certificate cannot be
/// read (after the whole table), 2 on a bad configuration.
pub fn run(file: &ConfigFile) -> Result<(), CliError> {
    let config = super::load(file)?;
    let rows = report(&config, unix_now());
    print_stdout(render(&rows).as_bytes())?;
    let failed = rows.iter().filter(|r| r.failed).count();
    if failed > 0 {
        return Err(CliError::Runtime(anyhow::anyhow!(
            "{failed} certificate(s) cannot be read (see the table)"
        )));
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The rows of `config`'s served names at `now` (Unix seconds): the default certificate,
/// each `tls.sni` host, each `acme.domains` name when `[acme]` is on.
pub fn report(config: &Config, now: i64) -> Vec<Row> {
    let mut rows = vec![file_row("(default)", &config.tls.cert)];
    for sni in &config.tls.sni {
        rows.push(file_row(&sni.host, &sni.cert));
    }
    if config.acme.enabled {
        let storage = Storage::existing(&config.acme.storage);
        for name in &config.acme.domains {
            rows.push(acme_row(&storage, name, &config.acme.directory, now));
        }
    }
    rows
}

fn file_row(name: &str, path: &Path) -> Row {
    let facts = read_certificates(path, MAX_PEM_BYTES)
        .and_then(|chain| CertFacts::of(chain[0].as_ref()).map(|f| (f, chain)));
    match facts {
        Ok((facts, chain)) => {
            let self_signed = x509_parser::parse_x509_certificate(chain[0].as_ref())
                .is_ok_and(|(_, c)| c.issuer() == c.subject());
            Row {
                name: name.to_owned(),
                source: if self_signed { "self-signed" } else { "file" },
                issuer: facts.issuer,
                not_after: rfc3339(facts.not_after),
                next_renewal: "-".to_owned(),
                failed: false,
            }
        }
        Err(why) => Row {
            name: name.to_owned(),
            source: "file",
            issuer: format!("cannot be read: {}: {why}", path.display()),
            not_after: "-".to_owned(),
            next_renewal: "-".to_owned(),
            failed: true,
        },
    }
}

fn acme_row(storage: &Storage, name: &str, directory: &str, now: i64) -> Row {
    let row = |issuer: String, not_after: String, next: String, failed: bool| Row {
        name: name.to_owned(),
        source: "acme",
        issuer,
        not_after,
        next_renewal: next,
        failed,
    };
    let stored = match storage.read_certificate(name) {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            return row(
                "-".to_owned(),
                "-".to_owned(),
                retrying(storage, name).map_or_else(
                    || "none stored: ordered at start".to_owned(),
                    |r| format!("none stored; {r}"),
                ),
                false,
            );
        }
        Err(why) => {
            return row(
                format!("cannot be read: {why}"),
                "-".to_owned(),
                "at start".to_owned(),
                true,
            );
        }
    };
    let facts = match CertFacts::of(stored.chain[0].as_ref()) {
        Ok(f) => f,
        Err(why) => {
            return row(
                format!("cannot be read: {why}"),
                "-".to_owned(),
                "at start".to_owned(),
                true,
            );
        }
    };
    let next = if stored.meta.directory != directory {
        "due now (from another acme.directory)".to_owned()
    } else {
        match stored.meta.renewal_window {
            Some(w) if w.start > now => format!(
                "{} .. {} (the CA's window)",
                rfc3339(w.start),
                rfc3339(w.end)
            ),
            window => {
                let at = renewal_time(facts.not_before, facts.not_after, window, now, 0.0);
                if at <= now {
                    retrying(storage, name)
                        .map_or_else(|| "due now".to_owned(), |r| format!("due now; {r}"))
                } else {
                    rfc3339(at)
                }
            }
        }
    };
    row(facts.issuer, rfc3339(facts.not_after), next, false)
}

/// After failed orders (the fleet's `retry.json`): when the next attempt is, and how many
/// failed in a row.
fn retrying(storage: &Storage, name: &str) -> Option<String> {
    let retry = storage.read_retry(name);
    (retry.failures > 0).then(|| {
        format!(
            "retrying at {} after {} failed orders",
            rfc3339(retry.retry_at_ms.div_euclid(1000)),
            retry.failures
        )
    })
}

/// The rows as an aligned table with a header line.
pub fn render(rows: &[Row]) -> String {
    let header = ["NAME", "SOURCE", "ISSUER", "NOT AFTER", "NEXT RENEWAL"];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name.as_str(),
                r.source,
                r.issuer.as_str(),
                r.not_after.as_str(),
                r.next_renewal.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &cells {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&header).chain(&cells) {
        for (i, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < line.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::storage::{Meta, Window};

    fn cert_pem(name: &str, days: (i64, i64), issuer: Option<&str>) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(days.0 * 86_400).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(days.1 * 86_400).unwrap();
        let cert = match issuer {
            None => params.self_signed(&key).unwrap(),
            Some(cn) => {
                let ca_key = rcgen::KeyPair::generate().unwrap();
                let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                ca.distinguished_name.push(rcgen::DnType::CommonName, cn);
                let ca = ca.self_signed(&ca_key).unwrap();
                params.signed_by(&key, &ca, &ca_key).unwrap()
            }
        };
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn each_served_name_is_listed_with_its_source_issuer_expiry_and_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let day = 86_400;
        let now = 100 * day;
        let (own, _) = cert_pem("localhost", (90, 465), None);
        std::fs::write(d.join("cert.pem"), own).unwrap();
        let (ads, _) = cert_pem("ads.example.com", (90, 180), Some("R11"));
        std::fs::write(d.join("ads.pem"), ads).unwrap();
        std::fs::write(d.join("bad.pem"), "not PEM").unwrap();
        let storage = Storage::open(&d.join("acme")).unwrap();
        let directory = "https://ca.test/dir";
        // (name, days valid, CA window, directory it came from)
        type Stored<'a> = (&'a str, (i64, i64), Option<Window>, &'a str);
        let stored: [Stored; 4] = [
            ("a.example.com", (90, 180), None, directory),
            ("b.example.com", (10, 100), None, directory),
            (
                "c.example.com",
                (90, 180),
                Some(Window {
                    start: 150 * day,
                    end: 151 * day,
                }),
                directory,
            ),
            ("d.example.com", (90, 180), None, "https://staging.test/dir"),
        ];
        for (name, days, window, from) in stored {
            let (pem, key) = cert_pem(name, days, Some("Pebble Intermediate"));
            let meta = Meta {
                directory: from.to_owned(),
                issued_at: 0,
                renewal_window: window,
            };
            storage.write_certificate(name, &pem, &key, &meta).unwrap();
        }
        // b is due and f has none: both after failed orders.
        for (name, failures) in [("b.example.com", 2), ("f.example.com", 3)] {
            let retry = crate::acme::storage::Retry {
                failures,
                retry_at_ms: (now + 3600) * 1000,
            };
            storage.write_retry(name, &retry).unwrap();
        }
        let text = format!(
            r#"
[server]
hosts = ["a.example.com", "b.example.com", "c.example.com", "d.example.com", "e.example.com", "f.example.com"]
[tls]
cert = "{d}/cert.pem"
key = "{d}/key.pem"
[[tls.sni]]
host = "ads.example.com"
cert = "{d}/ads.pem"
key = "{d}/ads.key"
[[tls.sni]]
host = "bad.example.com"
cert = "{d}/bad.pem"
key = "{d}/bad.key"
[acme]
enabled = true
directory = "{directory}"
contact = ["mailto:ops@example.com"]
domains = ["a.example.com", "b.example.com", "c.example.com", "d.example.com", "e.example.com", "f.example.com"]
storage = "{d}/acme"
"#,
            d = d.display()
        );
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        let rows = report(&config, now);
        let got: Vec<(&str, &str, &str, &str, bool)> = rows
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.source,
                    r.not_after.as_str(),
                    r.next_renewal.as_str(),
                    r.failed,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "(default)",
                    "self-signed",
                    "1971-04-11T00:00:00Z",
                    "-",
                    false
                ),
                (
                    "ads.example.com",
                    "file",
                    "1970-06-30T00:00:00Z",
                    "-",
                    false
                ),
                ("bad.example.com", "file", "-", "-", true),
                (
                    "a.example.com",
                    "acme",
                    "1970-06-30T00:00:00Z",
                    "1970-05-31T00:00:00Z",
                    false
                ),
                (
                    "b.example.com",
                    "acme",
                    "1970-04-11T00:00:00Z",
                    "due now; retrying at 1970-04-11T01:00:00Z after 2 failed orders",
                    false
                ),
                (
                    "c.example.com",
                    "acme",
                    "1970-06-30T00:00:00Z",
                    "1970-05-31T00:00:00Z .. 1970-06-01T00:00:00Z (the CA's window)",
                    false
                ),
                (
                    "d.example.com",
                    "acme",
                    "1970-06-30T00:00:00Z",
                    "due now (from another acme.directory)",
                    false
                ),
                (
                    "e.example.com",
                    "acme",
                    "-",
                    "none stored: ordered at start",
                    false
                ),
                (
                    "f.example.com",
                    "acme",
                    "-",
                    "none stored; retrying at 1970-04-11T01:00:00Z after 3 failed orders",
                    false
                ),
            ]
        );
        assert_eq!(rows[1].issuer, "CN=R11");
        assert_eq!(rows[3].issuer, "CN=Pebble Intermediate");
        assert!(rows[2].issuer.contains("bad.pem"), "{}", rows[2].issuer);
        let table = render(&rows);
        assert!(table.starts_with("NAME "), "{table}");
        assert_eq!(table.lines().count(), rows.len() + 1, "{table}");
        // Nothing was created for a storage that does not exist.
        let mut without = config.clone();
        without.acme.storage = d.join("absent");
        let rows = report(&without, now);
        assert_eq!(
            rows.last().unwrap().next_renewal,
            "none stored: ordered at start"
        );
        assert!(!d.join("absent").exists());
    }
}
