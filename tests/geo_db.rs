//! The GeoIP database as the proxy opens it: the shipped default, and generated ones.

#[path = "common/mmdb.rs"]
mod mmdb;

use std::net::IpAddr;
use std::path::Path;

use mmdb::{Schema, write_country_db};
use webprom_edge::client_ip::ClientAddr;
use webprom_edge::privacy::geo::GeoDb;

fn country(db: &GeoDb, ip: &str) -> Option<String> {
    let ip: IpAddr = ip.parse().unwrap();
    db.lookup(ClientAddr::new(ip))
        .map(|c| c.as_str().to_owned())
}

#[test]
fn shipped_database_answers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/geo/country.mmdb");
    if !path.exists() {
        eprintln!(
            "{} absent (see config/geo/README.md); skipped",
            path.display()
        );
        return;
    }
    let db = GeoDb::open(&path).unwrap();
    // (address, country): stable, well-known allocations.
    let cases: &[(&str, Option<&str>)] = &[
        ("8.8.8.8", Some("US")),
        ("::ffff:8.8.8.8", Some("US")),
        ("2001:4860:4860::8888", Some("US")),
        ("127.0.0.1", None),
        ("::1", None),
    ];
    for &(ip, want) in cases {
        assert_eq!(country(&db, ip).as_deref(), want, "{ip}");
    }
}

#[test]
fn generated_databases_answer() {
    let dir = tempfile::tempdir().unwrap();
    for schema in [Schema::MaxMind, Schema::Flat] {
        let path = dir.path().join("country.mmdb");
        write_country_db(
            &path,
            &[("192.0.2.0/24", "AL"), ("2001:db8::/32", "NL")],
            schema,
        );
        let db = GeoDb::open(&path).unwrap();
        assert_eq!(
            country(&db, "192.0.2.9").as_deref(),
            Some("AL"),
            "{schema:?}"
        );
        assert_eq!(
            country(&db, "2001:db8::9").as_deref(),
            Some("NL"),
            "{schema:?}"
        );
        assert_eq!(country(&db, "198.51.100.1"), None, "{schema:?}");
    }
}
