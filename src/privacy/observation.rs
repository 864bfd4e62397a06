//! The Observation: the only value that leaves request handling for a sink (access log,
//! metrics).
//!
//! It holds exactly the fields of the record schema (`docs/access-record.schema.json`), each in
//! a type that can only hold an allowed value (a pseudonym, a truncated network, a family from a
//! fixed list, a normalised [`RecordedPath`], a listed [`RecordedHost`]), so no sink can record
//! anything else. It has no field for a raw address, header, query or body, and its fields are
//! private: only the capture ([`super::capture`]) makes and completes one; sinks read it
//! through its accessors.

use std::io::Write as _;

use super::geo::Country;
use super::host::RecordedHost;
use super::keys::Pseudonym;
use super::lang::Lang;
use super::net::Network;
use super::path::RecordedPath;
use super::ua::Device;
use crate::epoch::Epoch;

/// The fields of an access-log record (`docs/access-record.schema.json`), in the order
/// [`Observation::write_json`] writes them; a record with any other field was not written by
/// this version.
pub const FIELDS: [&str; 18] = [
    "ts",
    "epoch",
    "client",
    "net",
    "country",
    "browser",
    "browser_version",
    "os",
    "bot",
    "lang",
    "method",
    "host",
    "path",
    "status",
    "bytes_sent",
    "duration_ms",
    "proto",
    "limited",
];

/// The request method, folded to the standard set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodClass {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
    /// Anything else.
    Other,
}

impl MethodClass {
    /// Every class, for pre-resolved metric labels.
    pub const ALL: [MethodClass; 10] = [
        MethodClass::Get,
        MethodClass::Head,
        MethodClass::Post,
        MethodClass::Put,
        MethodClass::Delete,
        MethodClass::Connect,
        MethodClass::Options,
        MethodClass::Trace,
        MethodClass::Patch,
        MethodClass::Other,
    ];

    /// Classifies a method.
    pub fn of(m: &http::Method) -> MethodClass {
        match *m {
            http::Method::GET => MethodClass::Get,
            http::Method::HEAD => MethodClass::Head,
            http::Method::POST => MethodClass::Post,
            http::Method::PUT => MethodClass::Put,
            http::Method::DELETE => MethodClass::Delete,
            http::Method::CONNECT => MethodClass::Connect,
            http::Method::OPTIONS => MethodClass::Options,
            http::Method::TRACE => MethodClass::Trace,
            http::Method::PATCH => MethodClass::Patch,
            _ => MethodClass::Other,
        }
    }

    /// The recorded name.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Get => "GET",
            MethodClass::Head => "HEAD",
            MethodClass::Post => "POST",
            MethodClass::Put => "PUT",
            MethodClass::Delete => "DELETE",
            MethodClass::Connect => "CONNECT",
            MethodClass::Options => "OPTIONS",
            MethodClass::Trace => "TRACE",
            MethodClass::Patch => "PATCH",
            MethodClass::Other => "OTHER",
        }
    }

    /// Index into [`MethodClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The HTTP version the client spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpProto {
    /// HTTP/1.1 (and 1.0).
    Http1,
    /// HTTP/2.
    Http2,
}

impl HttpProto {
    /// The recorded name.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpProto::Http1 => "HTTP/1.1",
            HttpProto::Http2 => "HTTP/2",
        }
    }
}

/// One request, as the policy allows it to be remembered.
#[derive(Clone, Debug)]
pub struct Observation {
    pub(super) ts: i64,
    pub(super) epoch: Epoch,
    pub(super) client: Pseudonym,
    pub(super) net: Network,
    pub(super) country: Option<Country>,
    pub(super) device: Device,
    pub(super) lang: Option<Lang>,
    pub(super) method: MethodClass,
    pub(super) host: Option<RecordedHost>,
    pub(super) path: RecordedPath,
    pub(super) status: u16,
    pub(super) bytes_sent: u64,
    pub(super) duration_us: u64,
    pub(super) proto: HttpProto,
    pub(super) limited: bool,
}

impl Observation {
    /// Unix seconds, already truncated to `timestamp_precision`.
    pub fn ts(&self) -> i64 {
        self.ts
    }

    /// The same record `days` whole days earlier: for tests of day files and rollover, which
    /// need a record of another day; the time is the one field that holds nothing of the
    /// client. Not for records that are kept: a `timestamp_precision` that does not divide a
    /// day (`"7s"`) is not kept by a shift of whole days.
    #[doc(hidden)]
    pub fn days_earlier(mut self, days: u16) -> Observation {
        self.ts -= i64::from(days) * crate::epoch::SECS_PER_DAY as i64;
        self
    }

    /// The key epoch [`Observation::client`] was made under.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The pseudonym of the client.
    pub fn client(&self) -> Pseudonym {
        self.client
    }

    /// The truncated client network.
    pub fn net(&self) -> Network {
        self.net
    }

    /// The country of the full address, if known.
    pub fn country(&self) -> Option<Country> {
        self.country
    }

    /// Browser, version, OS, bot flag.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The primary language.
    pub fn lang(&self) -> Option<Lang> {
        self.lang
    }

    /// The method class.
    pub fn method(&self) -> MethodClass {
        self.method
    }

    /// The requested host, only when it is one of `server.hosts`.
    pub fn host(&self) -> Option<&RecordedHost> {
        self.host.as_ref()
    }

    /// The normalised path (empty when the request head could not be read).
    pub fn path(&self) -> &RecordedPath {
        &self.path
    }

    /// The status sent to the client.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Response body bytes sent.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// From request head received to response end, in microseconds.
    pub fn duration_us(&self) -> u64 {
        self.duration_us
    }

    /// The protocol the client spoke.
    pub fn proto(&self) -> HttpProto {
        self.proto
    }

    /// Whether rate limiting rejected the request.
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// The UTC day of `ts`, which names the day file.
    pub fn day(&self) -> Epoch {
        Epoch::from_unix_secs(self.ts)
    }

    /// Appends the record as one JSON line (the schema's fields, in order), newline included.
    ///
    /// Hand-written rather than serde: it runs once per request, and every value is either a
    /// number, a fixed name, or already checked to need no escaping (the path is escaped anyway).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        let sod = self.ts.rem_euclid(crate::epoch::SECS_PER_DAY as i64) as u32;
        out.extend_from_slice(b"{\"ts\":\"");
        self.day().write_ymd(out);
        out.extend_from_slice(&[
            b'T',
            b'0' + (sod / 36000) as u8,
            b'0' + (sod / 3600 % 10) as u8,
            b':',
            b'0' + (sod / 600 % 6) as u8,
            b'0' + (sod / 60 % 10) as u8,
            b':',
            b'0' + (sod % 60 / 10) as u8,
            b'0' + (sod % 10) as u8,
            b'Z',
        ]);
        out.extend_from_slice(b"\",\"epoch\":\"");
        self.epoch.write_ymd(out);
        out.extend_from_slice(b"\",\"client\":\"");
        out.extend_from_slice(self.client.as_str().as_bytes());
        out.extend_from_slice(b"\",\"net\":\"");
        write_network(out, &self.net, &mut num);
        out.extend_from_slice(b"\",\"country\":");
        opt_str(out, self.country.as_ref().map(|c| c.as_str()));
        out.extend_from_slice(b",\"browser\":\"");
        out.extend_from_slice(self.device.browser.as_str().as_bytes());
        out.extend_from_slice(b"\",\"browser_version\":");
        match self.device.browser_major {
            Some(v) => {
                out.push(b'"');
                out.extend_from_slice(num.format(v).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"os\":\"");
        out.extend_from_slice(self.device.os.as_str().as_bytes());
        out.extend_from_slice(b"\",\"bot\":");
        out.extend_from_slice(if self.device.bot { b"true" } else { b"false" });
        out.extend_from_slice(b",\"lang\":");
        opt_str(out, self.lang.as_ref().map(|l| l.as_str()));
        out.extend_from_slice(b",\"method\":\"");
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.extend_from_slice(b"\",\"host\":");
        opt_str(out, self.host.as_ref().map(RecordedHost::as_str));
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path.as_str());
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(num.format(self.status).as_bytes());
        out.extend_from_slice(b",\"bytes_sent\":");
        out.extend_from_slice(num.format(self.bytes_sent).as_bytes());
        let tenths = (self.duration_us + 50) / 100;
        out.extend_from_slice(b",\"duration_ms\":");
        out.extend_from_slice(num.format(tenths / 10).as_bytes());
        out.push(b'.');
        out.push(b'0' + (tenths % 10) as u8);
        out.extend_from_slice(b",\"proto\":\"");
        out.extend_from_slice(self.proto.as_str().as_bytes());
        out.extend_from_slice(b"\",\"limited\":");
        out.extend_from_slice(if self.limited { b"true" } else { b"false" });
        out.extend_from_slice(b"}\n");
    }
}

/// `a.b.c.d/len` by hand for IPv4 (the common case); IPv6 through `Display`.
fn write_network(out: &mut Vec<u8>, net: &Network, num: &mut itoa::Buffer) {
    match net.as_ipnet() {
        ipnet::IpNet::V4(v4) => {
            for (i, octet) in v4.network().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(num.format(*octet).as_bytes());
            }
            out.push(b'/');
            out.extend_from_slice(num.format(v4.prefix_len()).as_bytes());
        }
        ipnet::IpNet::V6(_) => {
            let _ = write!(out, "{net}");
        }
    }
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string literal (RFC 8259 escaping).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::ClientAddr;
    use crate::privacy::host::ListedHosts;
    use crate::privacy::keys::{Key, pseudonym};
    use crate::privacy::net::truncate;
    use crate::privacy::ua::{Browser, Os};

    fn sample(ip: &str) -> Observation {
        let ip = ClientAddr::new(ip.parse().unwrap());
        let key = Key::from_bytes(core::array::from_fn(|i| i as u8));
        Observation {
            ts: 1_795_615_387, // 2026-11-25T14:03:07Z
            epoch: "2026-11-25".parse().unwrap(),
            client: pseudonym(&key, ip, 64),
            net: truncate(ip, 24, 48),
            country: Country::new("AL"),
            device: Device {
                browser: Browser::Chrome,
                browser_major: Some(131),
                os: Os::Windows,
                bot: false,
            },
            lang: Lang::new(b"sq"),
            method: MethodClass::Get,
            host: ListedHosts::new(&["localhost".to_owned()]).recorded("localhost"),
            path: RecordedPath::of("/click/12345"),
            status: 200,
            bytes_sent: 1024,
            duration_us: 1234,
            proto: HttpProto::Http2,
            limited: false,
        }
    }

    #[test]
    fn json_lines_are_exact() {
        let mut out = Vec::new();
        sample("203.0.113.7").write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"ts\":\"2026-11-25T14:03:07Z\",\"epoch\":\"2026-11-25\",\"client\":\"KgIJgOGaNuNAG_ak\",\
             \"net\":\"203.0.113.0/24\",\"country\":\"AL\",\"browser\":\"Chrome\",\"browser_version\":\"131\",\
             \"os\":\"Windows\",\"bot\":false,\"lang\":\"sq\",\"method\":\"GET\",\"host\":\"localhost\",\
             \"path\":\"/click/:id\",\"status\":200,\"bytes_sent\":1024,\"duration_ms\":1.2,\
             \"proto\":\"HTTP/2\",\"limited\":false}\n"
        );

        let mut o = sample("2001:db8:1:2::5");
        o.country = None;
        o.lang = None;
        o.host = None;
        o.device.browser_major = None;
        o.path = RecordedPath::unchecked("/we\"ird\\\u{1}");
        o.ts = 0;
        o.duration_us = 49;
        o.limited = true;
        let mut out = Vec::new();
        o.write_json(&mut out);
        let line = String::from_utf8(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00Z");
        assert_eq!(v["net"], "2001:db8:1::/48");
        assert_eq!(v["client"], "e49CLkzjeNXEw23A");
        assert_eq!(v["path"], "/we\"ird\\\u{1}");
        assert_eq!(v["duration_ms"], 0.0);
        assert!(v["country"].is_null() && v["lang"].is_null() && v["host"].is_null());
        assert!(v["browser_version"].is_null());
        assert_eq!(v["limited"], true);
    }
}
