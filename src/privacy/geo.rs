//! The client's country, looked up in a MaxMind DB file (`[geoip] database`).
//!
//! Owns reading the database (into memory, never mapped), following its file on disk, and
//! turning an address into an ISO 3166-1 alpha-2 code. Must never log, keep or put in an error
//! message the address looked up; a failed lookup is simply "no country".

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use maxminddb::Reader;
use serde::Deserialize;

use crate::client_ip::ClientAddr;
use crate::files::{self, FileError, FileStamp};

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

/// The largest database read, in bytes (the largest commercial city databases are a few
/// hundred MB; a country database is under 10 MB).
pub const MAX_DATABASE_BYTES: u64 = 1 << 30;

/// Why the GeoIP database could not be opened. Each names the file, never an address.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file could not be read: missing, unreadable, not a regular file, too large.
    #[error("GeoIP database {}: {source}", .path.display())]
    File {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: FileError,
    },
    /// The file is empty (an operator's copy may be under way).
    #[error("GeoIP database {}: the file is empty", .path.display())]
    Empty {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a valid MaxMind DB.
    #[error("GeoIP database {}: not a valid MaxMind DB file: {source}", .path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The reader's complaint.
        source: maxminddb::MaxMindDbError,
    },
}

impl GeoError {
    /// What is wrong with the file, without its path.
    pub fn reason(&self) -> String {
        match self {
            GeoError::File { source, .. } => source.to_string(),
            GeoError::Empty { .. } => "the file is empty".to_owned(),
            GeoError::Corrupt { source, .. } => format!("not a valid MaxMind DB file: {source}"),
        }
    }

    /// The database file at fault.
    pub fn path(&self) -> &Path {
        match self {
            GeoError::File { path, .. }
            | GeoError::Empty { path }
            | GeoError::Corrupt { path, .. } => path,
        }
    }
}

/// A country database, read whole into memory.
///
/// Never memory-mapped: the file may be rewritten in place (`cp new.mmdb country.mmdb`
/// truncates it first) while it is in use, and a mapping of a truncated file kills the process
/// with SIGBUS. A copy in memory is immune to anything done to the file; [`GeoFollower`]
/// notices the change and loads the new file once it is valid.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    path: PathBuf,
    /// The file as it was when read.
    stamp: FileStamp,
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
    /// Reads and checks the database at `path`. A missing or unreadable file, anything but a
    /// regular file, an empty, oversized or corrupt file is an error naming the path.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let mut bytes = Vec::new();
        let meta = files::read_regular(path, MAX_DATABASE_BYTES, &mut bytes).map_err(|source| {
            GeoError::File {
                path: path.to_path_buf(),
                source,
            }
        })?;
        if bytes.is_empty() {
            return Err(GeoError::Empty {
                path: path.to_path_buf(),
            });
        }
        let corrupt = |source| GeoError::Corrupt {
            path: path.to_path_buf(),
            source,
        };
        let reader = Reader::from_source(bytes).map_err(corrupt)?;
        // `Reader::verify` rejects common real databases for metadata trivia (an empty
        // description map), so probe one lookup instead: the tree and data section must
        // decode. Later lookups stay bounds-checked by the reader.
        let probe = IpAddr::from([8, 8, 8, 8]);
        reader
            .lookup(probe)
            .and_then(|r| r.decode::<Record<'_>>().map(drop))
            .map_err(corrupt)?;
        Ok(GeoDb {
            reader,
            path: path.to_path_buf(),
            stamp: FileStamp::of(&meta),
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

    /// The country of `client`, looked up on the full address; `None` if the database has no
    /// country for it. An IPv4-mapped client is looked up as IPv4 ([`ClientAddr::new`]): a
    /// database need not alias `::ffff:0:0/96`.
    pub fn lookup(&self, client: ClientAddr) -> Option<Country> {
        let result = self.reader.lookup(client.ip()).ok()?;
        let record: Record<'_> = result.decode().ok()??;
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.country_code)?;
        Country::new(code)
    }
}

/// Follows the database file on disk, so that a file replaced (by rename) or rewritten in place
/// is picked up without a signal.
///
/// Call [`GeoFollower::poll`] every few seconds, off the async runtime: it looks at the file
/// (one `stat`) and, when it changed, reads it. A change is acted on once the file has looked the
/// same for two polls in a row, so a copy in progress is not read half-way. A changed file that
/// is not a valid database (missing, empty, half-written, garbage) leaves the database in use in
/// place and is reported once per version of the file; the next good version is loaded.
#[derive(Debug, Default)]
pub struct GeoFollower {
    /// What the path showed at the previous poll, if it differed from the database in use
    /// (`Some(None)`: nothing there).
    seen: Option<Option<FileStamp>>,
    /// The version of the file last tried, so that a bad one is tried and reported once.
    tried: Option<Option<FileStamp>>,
}

/// What one [`GeoFollower::poll`] found.
#[derive(Debug)]
pub enum GeoChange {
    /// The file is the one in use, or it is changing and has not settled yet.
    Unchanged,
    /// The file changed and the new one is a valid database: use it.
    Reloaded(GeoDb),
    /// The file changed and cannot be used: keep the database in use. Returned once for each
    /// version of the file.
    Unusable(GeoError),
}

impl GeoFollower {
    /// Compares the file at `current`'s path with `current`, reading it again when it has
    /// changed and settled.
    pub fn poll(&mut self, current: &GeoDb) -> GeoChange {
        let now = FileStamp::of_path(&current.path);
        if now == Some(current.stamp) {
            *self = GeoFollower::default();
            return GeoChange::Unchanged;
        }
        if self.seen != Some(now) {
            self.seen = Some(now);
            return GeoChange::Unchanged;
        }
        if self.tried == Some(now) {
            return GeoChange::Unchanged;
        }
        self.tried = Some(now);
        match GeoDb::open(&current.path) {
            Ok(db) => {
                *self = GeoFollower::default();
                GeoChange::Reloaded(db)
            }
            Err(e) => GeoChange::Unusable(e),
        }
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
                let got = db.lookup(ClientAddr::new(ip.parse().unwrap()));
                assert_eq!(got.as_ref().map(Country::as_str), want, "{schema:?} {ip}");
            }
        }
    }

    #[test]
    fn every_unusable_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.mmdb");
        write_country_db(&good, ENTRIES, Schema::Flat);
        let bytes = std::fs::read(&good).unwrap();
        let fifo = dir.path().join("fifo.mmdb");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut random = vec![0u8; 4096];
        getrandom::fill(&mut random).unwrap();

        // (file, its content or None to leave as made above, a word of the reason)
        let cases: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
            ("missing.mmdb", None, "No such file"),
            ("empty.mmdb", Some(Vec::new()), "empty"),
            (
                "text.mmdb",
                Some(b"not a maxmind database".to_vec()),
                "not a valid MaxMind DB",
            ),
            ("random.mmdb", Some(random), "not a valid MaxMind DB"),
            (
                "half.mmdb",
                Some(bytes[..bytes.len() / 2].to_vec()),
                "not a valid MaxMind DB",
            ),
            (
                "tail.mmdb",
                Some(bytes[bytes.len() / 2..].to_vec()),
                "not a valid MaxMind DB",
            ),
            ("fifo.mmdb", None, "named pipe"),
            ("dir.mmdb", None, "directory"),
        ];
        std::fs::create_dir(dir.path().join("dir.mmdb")).unwrap();
        for (name, content, reason) in cases {
            let path = dir.path().join(name);
            if let Some(content) = content {
                std::fs::write(&path, content).unwrap();
            }
            let err = GeoDb::open(&path).expect_err(name);
            let text = err.to_string();
            assert_eq!(err.path(), path, "{name}");
            assert!(text.contains(&*path.to_string_lossy()), "{name}: {text}");
            assert!(text.contains(reason), "{name}: {text}");
            assert!(text.matches("os error").count() <= 1, "{name}: {text}");
        }
    }

    #[test]
    fn the_follower_loads_a_good_new_file_and_keeps_the_old_one_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        write_country_db(&path, ENTRIES, Schema::MaxMind);
        let good = std::fs::read(&path).unwrap();
        let other = dir.path().join("other.mmdb");
        write_country_db(&other, &[("8.8.8.0/24", "NL")], Schema::Flat);
        let other = std::fs::read(&other).unwrap();
        let mut db = GeoDb::open(&path).unwrap();
        let mut follower = GeoFollower::default();
        let tick = || std::thread::sleep(std::time::Duration::from_millis(10));
        let us = |db: &GeoDb| {
            db.lookup(ClientAddr::new([8, 8, 8, 8].into()))
                .map(|c| c.to_string())
        };

        // (what the operator does, the country of 8.8.8.8 afterwards, or the reason it stayed)
        type Step<'a> = Box<dyn Fn(&Path) + 'a>;
        let steps: Vec<(&str, Step<'_>, Result<&str, &str>)> = vec![
            (
                "truncate in place",
                Box::new(|p| std::fs::File::create(p).map(drop).unwrap()),
                Err("empty"),
            ),
            (
                "write half of a database",
                Box::new(|p| std::fs::write(p, &other[..other.len() / 2]).unwrap()),
                Err("not a valid MaxMind DB"),
            ),
            (
                "finish writing it",
                Box::new(|p| std::fs::write(p, &other).unwrap()),
                Ok("NL"),
            ),
            (
                "delete",
                Box::new(|p| std::fs::remove_file(p).unwrap()),
                Err("No such file"),
            ),
            (
                "write garbage",
                Box::new(|p| std::fs::write(p, b"garbage").unwrap()),
                Err("not a valid MaxMind DB"),
            ),
            (
                "rename a good file over it",
                Box::new(|p| {
                    let tmp = p.with_extension("new");
                    std::fs::write(&tmp, &good).unwrap();
                    std::fs::rename(&tmp, p).unwrap();
                }),
                Ok("US"),
            ),
        ];
        for (what, step, want) in steps {
            tick();
            step(&path);
            // The first poll sees the change, the second acts on it once it has settled.
            assert!(matches!(follower.poll(&db), GeoChange::Unchanged), "{what}");
            match (follower.poll(&db), want) {
                (GeoChange::Reloaded(new), Ok(country)) => {
                    assert_eq!(us(&new).as_deref(), Some(country), "{what}");
                    db = new;
                }
                (GeoChange::Unusable(e), Err(reason)) => {
                    assert!(e.to_string().contains(reason), "{what}: {e}");
                    assert!(
                        e.to_string().contains(&*path.to_string_lossy()),
                        "{what}: {e}"
                    );
                    // Reported once; the database in use still answers.
                    assert!(matches!(follower.poll(&db), GeoChange::Unchanged), "{what}");
                    assert!(us(&db).is_some(), "{what}");
                }
                (got, _) => panic!("{what}: {got:?}"),
            }
            // Nothing more happens until the file changes again.
            assert!(matches!(follower.poll(&db), GeoChange::Unchanged), "{what}");
        }
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
