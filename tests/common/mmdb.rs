//! Writes small country databases for tests, in either schema the proxy reads.
//!
//! Shared by unit tests (`src/privacy/geo.rs`) and integration tests through
//! `#[path = "common/mmdb.rs"] mod mmdb;`. Test-only: panics on failure.

#![allow(dead_code)]

use std::path::Path;

use mmdb_writer::{Value, Writer};

/// The record layout of a country database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// MaxMind GeoIP2/GeoLite2 and DB-IP: `{"country": {"iso_code": "US", ...}}`.
    MaxMind,
    /// ip-location-db: `{"country_code": "US"}`.
    Flat,
}

/// Writes an IPv6 database (IPv4 reachable, also through `::ffff:0:0/96`) to `path` mapping
/// each CIDR to its ISO code in `schema`.
pub fn write_country_db(
    path: &Path,
    entries: &[(&str /* cidr */, &str /* iso */)],
    schema: Schema,
) {
    let db_type = match schema {
        Schema::MaxMind => "GeoLite2-Country",
        Schema::Flat => "ip-location-db-country",
    };
    let mut writer = Writer::builder(db_type)
        .description(&[("en", "webprom-edge test country database")])
        .build();
    for &(cidr, iso) in entries {
        let net: ipnet::IpNet = cidr
            .parse()
            .unwrap_or_else(|e| panic!("test CIDR {cidr:?}: {e}"));
        let value = match schema {
            Schema::MaxMind => Value::map([(
                "country",
                Value::map([
                    ("geoname_id", Value::from(1u32)),
                    ("iso_code", Value::from(iso)),
                    ("names", Value::map([("en", Value::from("Test Country"))])),
                ]),
            )]),
            Schema::Flat => Value::map([("country_code", Value::from(iso))]),
        };
        writer
            .insert_value(net, value)
            .unwrap_or_else(|e| panic!("insert {cidr}: {e}"));
    }
    let bytes = writer
        .to_bytes()
        .unwrap_or_else(|e| panic!("serialise test db: {e}"));
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
