//! The Observation: the only value that leaves request handling for a sink (access log,
//! metrics).
//!
//! It holds exactly the fields of SPEC §4, each in a type that can only hold an allowed value
//! (a pseudonym, a truncated network, a family from a fixed list, a normalised path), so no sink
//! can record anything else. It has no field for a raw address, header, query or body.

use std::io::Write as _;

use super::geo::Country;
use super::keys::{Epoch, Pseudonym};
use super::lang::Lang;
use super::net::Network;
use super::ua::Device;

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
    /// Unix seconds, already truncated to `timestamp_precision`.
    pub ts: i64,
    /// The key epoch `client` was made under.
    pub epoch: Epoch,
    /// The pseudonym of the client.
    pub client: Pseudonym,
    /// The truncated client network.
    pub net: Network,
    /// Country of the full address, if known.
    pub country: Option<Country>,
    /// Browser, version, OS, bot flag.
    pub device: Device,
    /// Primary language.
    pub lang: Option<Lang>,
    /// Method class.
    pub method: MethodClass,
    /// The requested host, only when it is one of `server.hosts`.
    pub host: Option<std::sync::Arc<str>>,
    /// The normalised path.
    pub path: String,
    /// Status sent to the client.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// From request head received to response end, in microseconds.
    pub duration_us: u64,
    /// Protocol.
    pub proto: HttpProto,
    /// Rejected by rate limiting.
    pub limited: bool,
}

impl Observation {
    /// The UTC day of `ts`, which names the day file.
    pub fn day(&self) -> Epoch {
        Epoch::from_unix_secs(self.ts)
    }

    /// Appends the record as one JSON line (SPEC §4 fields, in order), newline included.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let day = self.day();
        let sod = self.ts.rem_euclid(86400);
        let _ = write!(
            out,
            "{{\"ts\":\"{day}T{:02}:{:02}:{:02}Z\",\"epoch\":\"{}\",\"client\":\"{}\",\"net\":\"{}\",\"country\":",
            sod / 3600,
            sod / 60 % 60,
            sod % 60,
            self.epoch,
            self.client.as_str(),
            self.net,
        );
        opt_str(out, self.country.as_ref().map(|c| c.as_str()));
        out.extend_from_slice(b",\"browser\":\"");
        out.extend_from_slice(self.device.browser.as_str().as_bytes());
        out.extend_from_slice(b"\",\"browser_version\":");
        match self.device.browser_major {
            Some(v) => {
                let _ = write!(out, "\"{v}\"");
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
        opt_str(out, self.host.as_deref());
        out.extend_from_slice(b",\"path\":");
        json_str(out, &self.path);
        let tenths = (self.duration_us + 50) / 100;
        let _ = writeln!(
            out,
            ",\"status\":{},\"bytes_sent\":{},\"duration_ms\":{}.{},\"proto\":\"{}\",\"limited\":{}}}",
            self.status,
            self.bytes_sent,
            tenths / 10,
            tenths % 10,
            self.proto.as_str(),
            self.limited,
        );
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
