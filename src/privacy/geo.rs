//! The client's country, looked up in a MaxMind DB file (`[geoip] database`).
//!
//! Owns opening the database (memory-mapped) and turning an address into an ISO 3166-1
//! alpha-2 code. Must never log, keep or put in an error message the address looked up;
//! a failed lookup is simply "no country".

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use maxminddb::{Mmap, Reader};
use serde::Deserialize;

/// An ISO 3166-1 alpha-2 country code, uppercase (e.g. `AL`, `US`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// The code from two ASCII letters of either case; `None` otherwise.
    pub fn new(code: &str) -> Option<Country> {
        match code.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Always two ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether the code is an officially assigned ISO 3166-1 code (one of [`ALL`]); databases
    /// also use others such as `EU`, `AP` or `XK`.
    pub fn is_assigned(&self) -> bool {
        ALL.binary_search(&self.as_str()).is_ok()
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that is not two ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a country code is two ASCII letters (ISO 3166-1 alpha-2)")]
pub struct CountryParseError;

impl FromStr for Country {
    type Err = CountryParseError;

    fn from_str(s: &str) -> Result<Country, CountryParseError> {
        Country::new(s).ok_or(CountryParseError)
    }
}

/// Every officially assigned ISO 3166-1 alpha-2 code, sorted (249 codes, from Debian's
/// iso-codes 4.15.0). A bounded label set for metrics.
pub const ALL: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Why the GeoIP database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file could not be opened or mapped.
    #[error("cannot open GeoIP database {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a valid MaxMind DB.
    #[error(
        "GeoIP database {} is not a valid MaxMind DB file: {source}; replace it or remove `[geoip] database`",
        .path.display()
    )]
    Corrupt {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
}

/// A country database, memory-mapped.
///
/// Replace the file by renaming a new one over it (a new inode), never by rewriting it in
/// place: the mapping of the old file must stay valid while this value lives.
pub struct GeoDb {
    reader: Reader<Mmap>,
    path: PathBuf,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The fields read from a record: MaxMind/DB-IP `country.iso_code`, or ip-location-db's flat
/// `country_code`. Borrowed from the map, so a lookup allocates nothing.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<CountryRecord<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

impl GeoDb {
    /// Opens and checks the database at `path`. A missing, unreadable or corrupt file is an
    /// error naming the path.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        // Open it ourselves first so a missing file is an io::Error, not a MaxMindDbError.
        std::fs::File::open(path).map_err(|source| GeoError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the file is mapped read-only; the type's documentation requires that it is
        // replaced by rename, never modified in place, while the mapping lives.
        let reader = unsafe { Reader::open_mmap(path) }.map_err(|e| match e {
            maxminddb::MaxMindDbError::Io(source) | maxminddb::MaxMindDbError::Mmap(source) => {
                GeoError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
            source => GeoError::Corrupt {
                path: path.to_path_buf(),
                source,
            },
        })?;
        // `Reader::verify` rejects common real databases for metadata trivia (an empty
        // description map), so probe one lookup instead: the tree and data section must
        // decode. Later lookups stay bounds-checked by the reader.
        let probe = IpAddr::from([8, 8, 8, 8]);
        reader
            .lookup(probe)
            .and_then(|r| r.decode::<Record<'_>>().map(drop))
            .map_err(|source| GeoError::Corrupt {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(GeoDb {
            reader,
            path: path.to_path_buf(),
        })
    }

    /// The file this database was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database's build time (Unix seconds) and type, for diagnostics.
    pub fn describe(&self) -> (u64, &str) {
        let m = self.reader.metadata();
        (m.build_epoch, m.database_type.as_str())
    }

    /// The country of `ip`, looked up on the full address; `None` if the database has no
    /// country for it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Country> {
        // An IPv4-mapped address is an IPv4 client; the database may not alias ::ffff:0:0/96.
        let ip = ip.to_canonical();
        let result = self.reader.lookup(ip).ok()?;
        let record: Record<'_> = result.decode().ok()??;
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.country_code)?;
        Country::new(code)
    }
}

/// The test database writer shared with the integration tests.
#[cfg(test)]
#[path = "../../tests/common/mmdb.rs"]
mod test_mmdb;

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_mmdb::{Schema, write_country_db};

    const ENTRIES: &[(&str, &str)] = &[
        ("8.8.8.0/24", "US"),
        ("203.0.113.0/24", "AL"),
        ("198.51.100.0/25", "de"),
        ("2001:db8:1::/48", "XK"),
        ("2a00:1450::/32", "IE"),
    ];

    #[test]
    fn lookup_both_schemas() {
        // (address, expected country)
        let cases: &[(&str, Option<&str>)] = &[
            ("8.8.8.8", Some("US")),
            ("203.0.113.7", Some("AL")),
            ("::ffff:203.0.113.7", Some("AL")),
            ("198.51.100.1", Some("DE")),
            ("198.51.100.129", None),
            ("2001:db8:1:2::5", Some("XK")),
            ("2001:db8:2::1", None),
            ("2a00:1450:4001::1", Some("IE")),
            ("192.0.2.1", None),
            ("::1", None),
        ];
        let dir = tempfile::tempdir().unwrap();
        for schema in [Schema::MaxMind, Schema::Flat] {
            let path = dir.path().join(format!("{schema:?}.mmdb"));
            write_country_db(&path, ENTRIES, schema);
            let db = GeoDb::open(&path).unwrap();
            for &(ip, want) in cases {
                let got = db.lookup(ip.parse().unwrap());
                assert_eq!(got.as_ref().map(Country::as_str), want, "{schema:?} {ip}");
            }
        }
    }

    #[test]
    fn missing_and_corrupt_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.mmdb");
        let err = GeoDb::open(&missing).unwrap_err();
        assert!(matches!(err, GeoError::Open { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );

        let corrupt = dir.path().join("corrupt.mmdb");
        std::fs::write(&corrupt, b"not a maxmind database at all").unwrap();
        let err = GeoDb::open(&corrupt).unwrap_err();
        assert!(matches!(err, GeoError::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&*corrupt.to_string_lossy()),
            "{err}"
        );

        // A valid database cut short.
        let good = dir.path().join("good.mmdb");
        write_country_db(&good, ENTRIES, Schema::Flat);
        let bytes = std::fs::read(&good).unwrap();
        let truncated = dir.path().join("truncated.mmdb");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = GeoDb::open(&truncated).unwrap_err();
        assert!(
            err.to_string().contains(&*truncated.to_string_lossy()),
            "{err}"
        );
    }

    #[test]
    fn country_codes() {
        // (input, parsed)
        let cases: &[(&str, Option<&str>)] = &[
            ("US", Some("US")),
            ("al", Some("AL")),
            ("xK", Some("XK")),
            ("", None),
            ("U", None),
            ("USA", None),
            ("U1", None),
            ("é", None),
            ("--", None),
        ];
        for &(input, want) in cases {
            let got = Country::new(input);
            assert_eq!(got.as_ref().map(Country::as_str), want, "{input:?}");
            assert_eq!(input.parse::<Country>().ok(), got);
        }
        assert!(Country::new("AL").is_some_and(|c| c.is_assigned()));
        assert!(Country::new("XK").is_some_and(|c| !c.is_assigned()));
        assert!(Country::new("EU").is_some_and(|c| !c.is_assigned()));
    }

    #[test]
    fn all_codes_sorted_unique_valid() {
        assert_eq!(ALL.len(), 249);
        assert!(ALL.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        for code in ALL {
            assert_eq!(
                Country::new(code).map(|c| c.to_string()).as_deref(),
                Some(*code)
            );
        }
    }
}
