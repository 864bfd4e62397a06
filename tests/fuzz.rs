//! Property-based fuzzing of every parser that reads client input (issue 12 §6): the user agent
//! and Client Hints, `Accept-Language`, `X-Forwarded-For` and `Forwarded`, the field-list
//! reader, the path normaliser, the host/authority normaliser, the request-head checks and the
//! config loader. (The `Set-Cookie` cap is fuzzed in `tests/cookies.rs`, the investigation
//! reader's line parser inside `src/investigate.rs`, where its private reader is reachable.)
//!
//! Each property feeds two kinds of input: arbitrary bytes (every byte a field value may hold,
//! or any byte at all where the parser takes `&[u8]`), and a "soup" of the fragments the
//! parser's grammar is made of, shuffled, so that near-valid input is common. Each checks that
//! nothing panics and that the parser's contract holds, as its doc comment states it.
//!
//! `cargo test` runs a short pass (a few hundred to a few thousand cases per property, chosen so
//! the file runs in seconds in a debug build). `PROPTEST_CASES=N` runs N cases of every
//! property; the long run is `scripts/fuzz-long.sh` (10 million per property, optimised build
//! with overflow checks on). Failures are not persisted to files: a failing input is printed,
//! and is then added as a row of the parser's table test.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use http::header::{CONTENT_LENGTH, COOKIE, FORWARDED, HOST, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

use webprom_edge::client_ip::{ClientAddr, TrustedProxies, X_FORWARDED_FOR};
use webprom_edge::config::{Cidr, Config, ConfigError};
use webprom_edge::fields::{elements, has_token, line_elements, unquote};
use webprom_edge::privacy::lang::{Lang, primary_language, primary_language_of};
use webprom_edge::privacy::net::truncate;
use webprom_edge::privacy::path::{MAX_SEGMENTS, normalize_path};
use webprom_edge::privacy::ua::{Browser, Device, MAX_UA_BYTES, UaParser};
use webprom_edge::proxy::authority::{AuthorityError, decide};
use webprom_edge::proxy::headers::{
    append_hop, content_length, header_list_size, ip_value, join_cookie_lines, strip_hop_by_hop,
};

// ---------------------------------------------------------------------------------------------
// Running and generating.

/// `cases` per property, or `PROPTEST_CASES` when set; no failure files.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings made of `pieces`, `len` of them.
fn soup(
    pieces: &'static [&'static str],
    len: std::ops::Range<usize>,
) -> impl Strategy<Value = String> {
    vec(select(pieces), len).prop_map(|v| v.concat())
}

/// Every byte a field value may hold (RFC 9110 §5.5: VCHAR, SP, HTAB, obs-text), so that
/// `HeaderValue::from_bytes` accepts the result.
fn field_bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    // Controls (other than HTAB) and DEL moved into the printable range: cheaper to generate
    // than a union of ranges, and every byte value stays reachable.
    vec(any::<u8>(), len).prop_map(|mut v| {
        for b in &mut v {
            if (*b < 0x20 && *b != b'\t') || *b == 0x7f {
                *b ^= 0x40;
            }
        }
        v
    })
}

fn header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("generators only make valid field values")
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

// ---------------------------------------------------------------------------------------------
// The path normaliser (src/privacy/path.rs).

const PATH_PIECES: &[&str] = &[
    "/",
    "/",
    "/",
    "/",
    "a",
    "bc",
    "Users",
    "v2",
    "12",
    "345",
    "0",
    "9",
    "?",
    "#",
    "%",
    "%2F",
    "@",
    ".",
    "..",
    "-",
    "_",
    "~",
    ":",
    ":id",
    ";",
    "=",
    "+",
    "!",
    "$",
    "&",
    "'",
    "(",
    ")",
    "*",
    ",",
    "deadbeef",
    "DEADBEEF",
    "cafe1",
    "550e8400-e29b-41d4-a716-446655440000",
    "eyJhbGciOiJIUzI1NiJ9",
    "aGVsbG8td29ybGQtMQ",
    "a-very-long-title-that-goes-on",
    "\u{e9}",
    "\u{65e5}",
    "\"",
    "\\",
    " ",
    "\t",
    "\u{0}",
    "\u{7f}",
    "\u{2028}",
    "[",
    "]",
    "{",
    "}",
    "<",
    "|",
    "^",
    "`",
];

fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => soup(PATH_PIECES, 0..48),
        1 => vec(any::<char>(), 0..64).prop_map(String::from_iter),
    ]
}

fn normalized(path: &str) -> String {
    let mut out = String::new();
    normalize_path(path, &mut out);
    out
}

fn is_recorded_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:/".contains(&b)
}

fn check_path(input: &str) -> Result<(), TestCaseError> {
    let mut out = String::from("prefix");
    normalize_path(input, &mut out);
    let Some(rec) = out.strip_prefix("prefix") else {
        return Err(TestCaseError::fail("the buffer's content was not kept"));
    };
    prop_assert!(rec.starts_with('/'), "{rec:?}");
    prop_assert!(
        rec.bytes().all(is_recorded_path_byte),
        "a character outside the allowed set: {rec:?}"
    );
    for forbidden in ['?', '#', '@', '%'] {
        prop_assert!(!rec.contains(forbidden), "{forbidden:?} in {rec:?}");
    }
    prop_assert!(
        !rec.as_bytes()
            .split(|b| !b.is_ascii_digit())
            .any(|run| run.len() >= 3),
        "a run of 3 digits in {rec:?}"
    );
    // Segment by segment: each is the input's segment, or `:id`.
    let cut = input.find(['?', '#']).map_or(input, |end| &input[..end]);
    let given: Vec<&str> = cut.strip_prefix('/').unwrap_or(cut).split('/').collect();
    let kept: Vec<&str> = rec[1..].split('/').collect();
    let trailing_slash = given.len() == MAX_SEGMENTS + 1 && given.last() == Some(&"");
    let want_len = match given.len() {
        n if n <= MAX_SEGMENTS => n,
        _ if trailing_slash => MAX_SEGMENTS + 1,
        _ => MAX_SEGMENTS,
    };
    prop_assert_eq!(kept.len(), want_len, "segment count of {:?}", rec);
    let segments = kept.len() - usize::from(kept.len() > 1 && kept.last() == Some(&""));
    prop_assert!(segments <= MAX_SEGMENTS, "{} segments: {:?}", segments, rec);
    for (got, was) in kept.iter().zip(&given) {
        if *got == ":id" {
            continue;
        }
        prop_assert_eq!(got, was, "a segment changed but is not :id");
        let s = got.as_bytes();
        prop_assert!(s.len() <= 32, "a long segment kept: {got:?}");
        let hex = s.len() >= 8 && s.iter().all(u8::is_ascii_hexdigit);
        prop_assert!(
            !(hex && s.iter().any(u8::is_ascii_digit)),
            "a hex token kept: {got:?}"
        );
        let b64 = s.len() >= 16
            && s.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+=_-".contains(b));
        prop_assert!(
            !(b64 && s.iter().any(u8::is_ascii_digit) && s.iter().any(u8::is_ascii_alphabetic)),
            "a base64 token kept: {got:?}"
        );
    }
    // The query and fragment never matter; the result is a fixed point.
    prop_assert_eq!(
        normalized(cut),
        rec,
        "the query or fragment changed the result"
    );
    prop_assert_eq!(normalized(rec), rec, "normalising again changed the result");
    Ok(())
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn the_recorded_path_holds_only_allowed_segments(input in any_path()) {
        check_path(&input)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Accept-Language (src/privacy/lang.rs).

const LANG_PIECES: &[&str] = &[
    "en", "EN", "de", "fr", "sq", "zh", "xx", "e", "fil", "i", "x", "*", "-", "-", "_", "US",
    "Hant", ";", ";", "q=", "Q=", "q", "=", "0", "1", ".", "5", "05", "999", "000", "001", "0.",
    "1.0", "2", "-0", ",", ",", ",", " ", " ", "\t", "level=1", "\u{e9}", "\u{ff}",
];

fn lang_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => soup(LANG_PIECES, 0..24).prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..48),
    ]
}

/// An independent reading of RFC 9110 §12.5.4 for lists without quoted strings: the first
/// range of the highest weight above zero, its primary subtag, if ISO 639-1.
fn model_language(header: &[u8]) -> Option<&'static str> {
    let ows = |s: &[u8]| -> Vec<u8> {
        let s: &[u8] = s;
        let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
        let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
        match (start, end) {
            (Some(a), Some(z)) => s[a..=z].to_vec(),
            _ => Vec::new(),
        }
    };
    let qvalue = |q: &[u8]| -> Option<u32> {
        let text = std::str::from_utf8(q).ok()?;
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let digits_ok = frac.len() <= 3 && frac.bytes().all(|b| b.is_ascii_digit());
        let thousandths = format!("{frac:0<3}").parse::<u32>().ok()?;
        match int {
            "0" if digits_ok => Some(thousandths),
            "1" if digits_ok && thousandths == 0 => Some(1000),
            _ => None,
        }
    };
    let mut best: Option<(u32, Vec<u8>)> = None;
    for range in header.split(|&b| b == b',') {
        let range = ows(range);
        let mut parts = range.split(|&b| b == b';');
        let tag = ows(parts.next().unwrap_or_default());
        if tag.is_empty() || tag == b"*" {
            continue;
        }
        let mut weight = Some(1000);
        for param in parts {
            let param = ows(param);
            if param.len() >= 2 && param[..2].eq_ignore_ascii_case(b"q=") {
                weight = qvalue(&param[2..]);
            }
        }
        match weight {
            Some(w) if w > 0 && best.as_ref().is_none_or(|(b, _)| w > *b) => best = Some((w, tag)),
            _ => {}
        }
    }
    let (_, tag) = best?;
    let primary = tag.split(|&b| b == b'-' || b == b'_').next()?;
    Lang::ALL
        .iter()
        .copied()
        .find(|code| code.as_bytes().eq_ignore_ascii_case(primary))
}

fn check_lang(header: &[u8]) -> Result<(), TestCaseError> {
    let got = primary_language(header);
    if let Some(lang) = got {
        let code = lang.as_str();
        prop_assert!(Lang::ALL.contains(&code), "{code:?} is not ISO 639-1");
        prop_assert_eq!(lang.index().map(|i| Lang::ALL[i]), Some(code));
        let lower = header.to_ascii_lowercase();
        prop_assert!(
            lower.windows(2).any(|w| w == code.as_bytes()),
            "{code} is not in the header"
        );
    }
    if !header.contains(&b'"') {
        prop_assert_eq!(
            got.as_ref().map(Lang::as_str),
            model_language(header),
            "{}",
            show(header)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn the_language_is_the_preferred_range_and_always_iso_639_1(header in lang_header()) {
        check_lang(&header)?;
    }

    #[test]
    fn several_accept_language_lines_are_one_list(
        lines in vec(soup(LANG_PIECES, 0..8), 0..4),
    ) {
        let values: Vec<HeaderValue> = lines.iter().map(|l| header_value(l.as_bytes())).collect();
        let joined = lines.join(",");
        prop_assert_eq!(
            primary_language_of(elements(values.iter(), b',')),
            primary_language(joined.as_bytes()),
            "{:?}",
            lines
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The field-list reader (src/fields.rs).

const FIELD_PIECES: &[&str] = &[
    ",", ",", ";", ";", " ", " ", "\t", "\"", "\"", "\\", "a", "bc", "D", "=", "1.2.3.4", "for=",
    "\u{e9}",
];

fn field_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => soup(FIELD_PIECES, 0..16).prop_map(String::into_bytes),
        1 => field_bytes(0..32),
    ]
}

/// Where `inner` lies in `outer`, if it is a slice of it.
fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (start + inner.len() <= outer.len()).then_some(start)
}

/// Whether `element` holds `delimiter` outside a quoted string. An element ends where its line
/// or a delimiter outside quotes does, so a delimiter inside a quoted string has an odd number
/// of quotes after it, however the line's quotes pair up (checked only without escapes).
fn delimiter_outside_quotes(element: &[u8], delimiter: u8) -> bool {
    if element.contains(&b'\\') {
        return false;
    }
    element.iter().enumerate().any(|(i, &b)| {
        b == delimiter && element[i..].iter().filter(|&&c| c == b'"').count() % 2 == 0
    })
}

fn check_elements(lines: &[Vec<u8>], delimiter: u8) -> Result<(), TestCaseError> {
    let values: Vec<HeaderValue> = lines.iter().map(|l| header_value(l)).collect();
    // Each element's line and span, in order.
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    for element in elements(values.iter(), delimiter) {
        prop_assert!(!element.is_empty(), "an empty element");
        prop_assert!(
            !element[0].is_ascii_whitespace() && !element[element.len() - 1].is_ascii_whitespace(),
            "untrimmed element {}",
            show(element)
        );
        prop_assert!(
            !delimiter_outside_quotes(element, delimiter),
            "a delimiter outside quotes in {}",
            show(element)
        );
        let found = values
            .iter()
            .enumerate()
            .find_map(|(i, v)| offset_in(v.as_bytes(), element).map(|at| (i, at)));
        let Some((line, at)) = found else {
            return Err(TestCaseError::fail(
                "an element that is not a slice of a line",
            ));
        };
        spans.push((line, at, at + element.len()));
    }
    prop_assert!(
        spans
            .windows(2)
            .all(|w| (w[0].0, w[0].2) < (w[1].0, w[1].1 + 1)),
        "elements out of order or overlapping: {:?}",
        spans
    );
    // Nothing but whitespace and delimiters is left out, and a delimiter separates two
    // elements of one line: joining them back loses no non-empty element.
    for (i, line) in lines.iter().enumerate() {
        let mut pos = 0;
        let mut first = true;
        for &(_, start, end) in spans.iter().filter(|s| s.0 == i) {
            let gap = &line[pos..start];
            prop_assert!(
                gap.iter()
                    .all(|&b| b == delimiter || b == b' ' || b == b'\t'),
                "bytes lost between elements of {}",
                show(line)
            );
            prop_assert!(
                first || gap.contains(&delimiter),
                "two elements without a delimiter in {}",
                show(line)
            );
            first = false;
            pos = end;
        }
        prop_assert!(
            line[pos..]
                .iter()
                .all(|&b| b == delimiter || b == b' ' || b == b'\t'),
            "bytes lost at the end of {}",
            show(line)
        );
    }
    // One line at a time gives the same elements, in the same order.
    let per_line: Vec<&[u8]> = lines
        .iter()
        .flat_map(|l| line_elements(l, delimiter))
        .collect();
    let all: Vec<&[u8]> = elements(values.iter(), delimiter).collect();
    prop_assert_eq!(per_line.len(), all.len());
    Ok(())
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn list_elements_are_trimmed_non_empty_and_lose_nothing(
        lines in vec(field_line(), 0..4),
        delimiter in select(&b",;"[..]),
    ) {
        check_elements(&lines, delimiter)?;
    }

    #[test]
    fn elements_appended_after_a_delimiter_are_always_read(
        line in field_line(),
        appended in vec("[a-z0-9.]{1,8}(=\"[a-z0-9.:\\[\\],; ]{0,10}\")?", 1..3),
    ) {
        // What a proxy does to `X-Forwarded-For` and `Forwarded` (nginx, ALB):
        // `<what the client sent>, <what the proxy saw>`, e.g. `for="[2001:db8::1]:80"`.
        let mut text = line.clone();
        for element in &appended {
            text.extend_from_slice(b", ");
            text.extend_from_slice(element.as_bytes());
        }
        let got: Vec<&[u8]> = line_elements(&text, b',').collect();
        let tail = &got[got.len().saturating_sub(appended.len())..];
        let want: Vec<&[u8]> = appended.iter().map(|e| e.as_bytes()).collect();
        prop_assert_eq!(tail, &want[..], "after {}", show(&line));
    }

    #[test]
    fn tokens_and_quotes_are_read_by_their_element(
        lines in vec(field_line(), 0..4),
        token in "[a-zA-Z-]{1,8}",
    ) {
        let values: Vec<HeaderValue> = lines.iter().map(|l| header_value(l)).collect();
        let expected = elements(values.iter(), b',').any(|e| e.eq_ignore_ascii_case(token.as_bytes()));
        prop_assert_eq!(has_token(values.iter(), token.as_bytes()), expected);
        let mut with = values.clone();
        with.push(header_value(format!(" {} ", token.to_uppercase()).as_bytes()));
        prop_assert!(has_token(with.iter(), token.as_bytes()));
        for line in &lines {
            let inner = unquote(line);
            let quoted = line.len() >= 2 && line[0] == b'"' && line[line.len() - 1] == b'"';
            let want: &[u8] = if quoted { &line[1..line.len() - 1] } else { line };
            prop_assert_eq!(inner, want);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// X-Forwarded-For and Forwarded (src/client_ip.rs).

const TRUSTED: &[&str] = &["10.0.0.0/8", "192.168.0.0/16", "::1", "fd00::/8"];

/// Addresses in every form a hop may take; the first six are trusted.
const ADDRESSES: &[&str] = &[
    "10.0.0.1",
    "10.1.2.3",
    "192.168.1.1",
    "::1",
    "fd00::5",
    "::ffff:10.0.0.9",
    "203.0.113.9",
    "198.51.100.1",
    "2001:db8::7",
    "::ffff:198.51.100.4",
    "0.0.0.0",
    "255.255.255.255",
    "::",
    "2001:DB8:0:0:0:0:0:8",
];

fn trusted() -> &'static TrustedProxies {
    static T: OnceLock<TrustedProxies> = OnceLock::new();
    T.get_or_init(|| {
        let cidrs: Vec<Cidr> = TRUSTED.iter().map(|n| n.parse().unwrap()).collect();
        TrustedProxies::new(&cidrs)
    })
}

/// The address a `ClientAddr` holds, read the one way the public API allows: as its network at
/// full length (what the access log records with `ipv4_prefix = 32`, `ipv6_prefix = 128`).
fn address_of(client: ClientAddr) -> IpAddr {
    truncate(client, 32, 128).as_ipnet().addr()
}

fn is_trusted(ip: IpAddr) -> bool {
    trusted().contains(ip.to_canonical())
}

/// One list element of a forwarding header, with the hop it names (`None`: it does not parse).
#[derive(Clone, Debug)]
struct Hop {
    text: String,
    ip: Option<IpAddr>,
}

/// Entries that name no address, in either header.
const JUNK: &[&str] = &[
    "unknown",
    "junk",
    "_hidden",
    "1.2.3",
    "1.2.3.4.5",
    "[::1",
    "1.2.3.4:",
    "1.2.3.4:99999",
    "\"",
    "\"x",
    "x\"",
    "\"1.2.3.4",
    "[2001:db8::7]x",
    "[2001:db8::7]:",
    "[2001:db8::7]:99999",
    "[198.51.100.1]",
    "198.51.100.1:+80",
    "198.51.100.1:_",
    "198.51.100.1:_a b",
    "for=",
    "proto=https",
    "by=10.0.0.1",
    "\u{e9}",
];

fn xff_hop() -> impl Strategy<Value = Hop> {
    let addr = (select(ADDRESSES), 0u8..4, 1u16..).prop_map(|(a, form, port)| {
        let ip: IpAddr = a.parse().unwrap();
        let text = match (form, ip) {
            (1, IpAddr::V4(_)) => format!("{a}:{port}"),
            (1, IpAddr::V6(_)) => format!("[{a}]:{port}"),
            (2, IpAddr::V6(_)) => format!("[{a}]"),
            _ => a.to_owned(),
        };
        Hop { text, ip: Some(ip) }
    });
    let junk = select(JUNK).prop_map(|j| Hop {
        text: j.to_owned(),
        ip: None,
    });
    prop_oneof![3 => addr, 1 => junk]
}

fn forwarded_hop() -> impl Strategy<Value = Hop> {
    let node = (select(ADDRESSES), 0u8..4, 1u16..).prop_map(|(a, form, port)| {
        let ip: IpAddr = a.parse().unwrap();
        let node = match (form, ip) {
            (0, IpAddr::V4(_)) => a.to_owned(),
            (0 | 1, IpAddr::V6(_)) => format!("\"[{a}]\""),
            (1, IpAddr::V4(_)) => format!("\"{a}:{port}\""),
            (2, IpAddr::V4(_)) => format!("\"{a}:_obf.{port}\""),
            (2, IpAddr::V6(_)) => format!("\"[{a}]:_{port}-x\""),
            (_, IpAddr::V6(_)) => format!("\"[{a}]:{port}\""),
            (_, IpAddr::V4(_)) => format!("\"{a}\""),
        };
        (node, ip)
    });
    let params = (
        node,
        select(&["for", "For", "FOR"][..]),
        select(&["", "proto=https;", "by=\"a,b\";", "host=\"x;y\";"][..]),
        select(&["", ";proto=http", "; by=_x", ";host=ads.example"][..]),
    )
        .prop_map(|((node, ip), key, before, after)| Hop {
            text: format!("{before}{key}={node}{after}"),
            ip: Some(ip),
        });
    let junk = prop_oneof![
        select(JUNK).prop_map(str::to_owned),
        select(JUNK).prop_map(|j| format!("for={j}")),
    ]
    .prop_map(|text| Hop { text, ip: None });
    prop_oneof![3 => params, 1 => junk]
}

/// Hops laid out as field lines: separators with optional whitespace, empty elements, and
/// several lines.
fn lay_out(hops: &[Hop], seps: &[u8]) -> Vec<String> {
    let mut lines = vec![String::new()];
    for (i, hop) in hops.iter().enumerate() {
        let sep = seps.get(i).copied().unwrap_or(0);
        let line = lines.last_mut().expect("one line at least");
        if i > 0 {
            match sep % 6 {
                0 => line.push_str(", "),
                1 => line.push(','),
                2 => line.push_str(" , ,\t"),
                _ => {}
            }
        }
        if i > 0 && sep % 6 >= 3 {
            if sep % 6 == 5 {
                lines.push(",".to_owned());
            }
            lines.push(String::new());
        }
        lines
            .last_mut()
            .expect("one line at least")
            .push_str(&hop.text);
    }
    lines
}

/// The walk as the doc of `TrustedProxies::resolve` states it, right to left.
fn model_client(peer: IpAddr, hops: Option<&[Hop]>) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    let Some(hops) = hops else { return peer };
    let mut last_good = None;
    for hop in hops.iter().rev() {
        match hop.ip.map(|ip| ip.to_canonical()) {
            Some(ip) if !is_trusted(ip) => return ip,
            Some(ip) => last_good = Some(ip),
            None => return last_good.unwrap_or(peer),
        }
    }
    last_good.unwrap_or(peer)
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn the_client_is_the_right_most_untrusted_hop(
        peer in select(ADDRESSES),
        xff in proptest::option::of((vec(xff_hop(), 0..6), vec(any::<u8>(), 6))),
        fwd in proptest::option::of((vec(forwarded_hop(), 0..6), vec(any::<u8>(), 6))),
    ) {
        let peer: IpAddr = peer.parse().unwrap();
        let mut headers = HeaderMap::new();
        let mut shown = Vec::new();
        if let Some((hops, seps)) = &xff {
            for line in lay_out(hops, seps) {
                headers.append(&X_FORWARDED_FOR, header_value(line.as_bytes()));
                shown.push(format!("X-Forwarded-For: {line}"));
            }
        }
        if let Some((hops, seps)) = &fwd {
            for line in lay_out(hops, seps) {
                headers.append(FORWARDED, header_value(line.as_bytes()));
                shown.push(format!("Forwarded: {line}"));
            }
        }
        let hops = match (&xff, &fwd) {
            (Some((hops, _)), _) | (None, Some((hops, _))) => Some(&hops[..]),
            (None, None) => None,
        };
        let got = address_of(trusted().resolve(ClientAddr::new(peer), &headers));
        prop_assert_eq!(got, model_client(peer, hops), "peer {} {:?}", peer, shown);
    }

    #[test]
    fn the_client_is_the_peer_or_an_address_of_the_headers(
        peer in select(ADDRESSES),
        xff in vec(field_line(), 0..3),
        fwd in vec(field_line(), 0..3),
    ) {
        let peer: IpAddr = peer.parse().unwrap();
        let mut headers = HeaderMap::new();
        for line in &xff {
            headers.append(&X_FORWARDED_FOR, header_value(line));
        }
        for line in &fwd {
            headers.append(FORWARDED, header_value(line));
        }
        let got = address_of(trusted().resolve(ClientAddr::new(peer), &headers));
        prop_assert_eq!(got, got.to_canonical(), "an IPv4-mapped address is not folded");
        if !is_trusted(peer) {
            prop_assert_eq!(got, peer.to_canonical(), "an untrusted peer is not itself");
        }
        if got != peer.to_canonical() {
            let text: Vec<u8> = xff.iter().chain(&fwd).flatten().copied().collect();
            let text = String::from_utf8_lossy(&text).to_ascii_lowercase();
            prop_assert!(
                got.is_ipv6() || text.contains(&got.to_string()) || text.contains("ffff"),
                "{} is not in the headers",
                got
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The host/authority normaliser (src/proxy/authority.rs).

const HOST_PIECES: &[&str] = &[
    "a",
    "B",
    "ads",
    "Example",
    "COM",
    "xn--bcher-kva",
    ".",
    ".",
    ":",
    ":",
    "80",
    "8443",
    "65535",
    "65536",
    "99999",
    "0",
    "[",
    "]",
    "::1",
    "2001:DB8::1",
    "::ffff:1.2.3.4",
    "1.2.3.4",
    "@",
    "user",
    "%",
    "41",
    "2e",
    "zz",
    "-",
    "_",
    "~",
    "!",
    "*",
    " ",
    "/",
    "\u{e9}",
    "?",
    "#",
];

fn host_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => soup(HOST_PIECES, 0..8).prop_map(String::into_bytes),
        2 => field_bytes(0..16),
        // Names near the 255-octet limit of DNS, with and without the root's dot.
        1 => "[a-zA-Z]{60,63}(\\.[a-z]{60,63}){3}\\.?(:[0-9]{0,5})?".prop_map(String::into_bytes),
    ]
}

fn request(version: Version, target: Option<&[u8]>, hosts: &[Vec<u8>]) -> Request<()> {
    let mut req = Request::new(());
    *req.version_mut() = version;
    if let Some(target) = target {
        let mut uri = b"https://".to_vec();
        uri.extend_from_slice(target);
        uri.extend_from_slice(b"/x");
        if let Ok(uri) = Uri::try_from(uri) {
            *req.uri_mut() = uri;
        }
    }
    for h in hosts {
        req.headers_mut().append(HOST, header_value(h));
    }
    req
}

fn decide_host(host: &[u8]) -> Result<Option<String>, AuthorityError> {
    let req = request(Version::HTTP_11, None, &[host.to_vec()]);
    decide(&req).map(|a| a.map(|a| a.header_value().to_str().unwrap_or("?").to_owned()))
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn the_authority_is_normalised_once_and_for_all(
        version in select(&[Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][..]),
        target in proptest::option::of(host_text()),
        hosts in vec(host_text(), 0..3),
    ) {
        let req = request(version, target.as_deref(), &hosts);
        let got = decide(&req);
        let shown = format!(
            "{version:?} {} {:?}",
            req.uri(),
            hosts.iter().map(|h| show(h)).collect::<Vec<_>>()
        );
        if hosts.len() > 1 {
            prop_assert_eq!(&got, &Err(AuthorityError::SeveralHosts), "{}", shown);
        }
        if version == Version::HTTP_11 && hosts.is_empty() {
            prop_assert!(got.is_err(), "HTTP/1.1 without Host accepted: {}", shown);
        }
        let authority = match got {
            Ok(Some(a)) => a,
            Ok(None) => {
                prop_assert!(
                    version != Version::HTTP_11 && hosts.is_empty() && req.uri().authority().is_none(),
                    "no authority decided for {}",
                    shown
                );
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        let host = authority.host();
        let value = authority.header_value().as_bytes();
        prop_assert!(!host.is_empty(), "an empty host: {}", shown);
        prop_assert!(
            host.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()),
            "host {:?} is not lowercase printable ASCII: {}",
            host,
            shown
        );
        for bad in ["@", "/", "?", "#", ".."] {
            prop_assert!(!host.contains(bad), "{:?} in host {:?}: {}", bad, host, shown);
        }
        prop_assert!(!host.ends_with('.') && !host.starts_with('.'), "host {:?}: {}", host, shown);
        if let Some(literal) = host.strip_prefix('[') {
            let v6 = literal.strip_suffix(']').and_then(|l| l.parse::<std::net::Ipv6Addr>().ok());
            prop_assert!(v6.is_some(), "bad IP literal {:?}: {}", host, shown);
        } else {
            prop_assert!(!host.contains(':'), "a colon in host {:?}: {}", host, shown);
        }
        prop_assert!(value.starts_with(host.as_bytes()), "{}", shown);
        let port = &value[host.len()..];
        if !port.is_empty() {
            let digits = port.strip_prefix(b":").filter(|p| !p.is_empty());
            let ok = digits.and_then(|p| std::str::from_utf8(p).ok()?.parse::<u16>().ok());
            prop_assert!(ok.is_some(), "bad port in {:?}: {}", show(value), shown);
        }
        // The normalised value is a fixed point, and what any of its spellings gives.
        let again = request(Version::HTTP_11, None, &[value.to_vec()]);
        prop_assert_eq!(decide(&again), Ok(Some(authority.clone())), "{}", shown);
        let mut upper = host.to_ascii_uppercase().into_bytes();
        if !host.starts_with('[') {
            upper.push(b'.');
        }
        upper.extend_from_slice(port);
        prop_assert_eq!(
            decide_host(&upper),
            Ok(Some(String::from_utf8_lossy(value).into_owned())),
            "{}",
            shown
        );
        // HTTP/2: a Host that repeats `:authority` names the same authority.
        if version == Version::HTTP_2 && req.uri().authority().is_some() && hosts.len() == 1 {
            prop_assert_eq!(
                decide_host(&hosts[0]),
                Ok(Some(String::from_utf8_lossy(value).into_owned())),
                "{}",
                shown
            );
        }
    }

    #[test]
    fn host_case_and_the_root_dot_never_change_the_decision(host in host_text()) {
        let plain = decide_host(&host);
        prop_assert_eq!(&decide_host(&host.to_ascii_uppercase()), &plain, "{}", show(&host));
        prop_assert_eq!(&decide_host(&host.to_ascii_lowercase()), &plain, "{}", show(&host));
    }
}

// ---------------------------------------------------------------------------------------------
// The request-head checks (src/proxy/headers.rs).

const LENGTH_PIECES: &[&str] = &[
    "0",
    "1",
    "42",
    "007",
    "9",
    " ",
    ",",
    ",",
    "+",
    "-",
    "x",
    "\t",
    "18446744073709551615",
    "99999999999999999999",
    "9999999999999999999",
    "00000000000000000001",
];

/// RFC 9110 §8.6, as `content_length` documents it: one number, however often repeated.
fn model_content_length(lines: &[String]) -> Result<Option<u64>, ()> {
    if lines.is_empty() {
        return Ok(None);
    }
    let mut values = Vec::new();
    for line in lines {
        for element in line.split(',') {
            let element = element.trim_matches([' ', '\t']);
            if element.is_empty() {
                continue;
            }
            if element.len() > 19 || !element.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            values.push(element.parse::<u64>().map_err(|_| ())?);
        }
    }
    match values.first() {
        None => Err(()),
        Some(&n) if values.iter().all(|&v| v == n) => Ok(Some(n)),
        Some(_) => Err(()),
    }
}

const NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "content-length",
    "cookie",
    "accept",
    "x-a",
    "x-b",
    "x-c",
    "x-d",
    "x-e",
    "x-f",
];

const FIXED_HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-authenticate",
    "proxy-authorization",
];

const PROTECTED: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "content-length",
];

/// A `Connection` value listing some of [`NAMES`] in any case, with list noise.
fn connection_value() -> impl Strategy<Value = String> {
    vec(
        (
            select(NAMES),
            any::<bool>(),
            select(&[",", ", ", " ,", ",,", ", , "][..]),
        ),
        0..5,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(name, upper, sep)| {
                let name = if upper {
                    name.to_ascii_uppercase()
                } else {
                    name.to_owned()
                };
                format!("{name}{sep}")
            })
            .collect()
    })
}

fn head() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    vec(
        (select(NAMES), "[a-z0-9 ,]{0,6}", connection_value())
            .prop_map(|(n, v, c)| if n == "connection" { (n, c) } else { (n, v) }),
        0..10,
    )
}

fn header_map(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_static(name),
            header_value(value.as_bytes()),
        );
    }
    map
}

/// Each name's values, in order.
fn by_name(map: &HeaderMap) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, value) in map {
        out.entry(name.as_str().to_owned())
            .or_default()
            .push(value.as_bytes().to_vec());
    }
    out
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn content_length_is_one_number_or_refused(
        lines in vec(soup(LENGTH_PIECES, 0..5), 0..4),
    ) {
        let map = header_map(&lines.iter().map(|l| ("content-length", l.clone())).collect::<Vec<_>>());
        prop_assert_eq!(content_length(&map), model_content_length(&lines), "{:?}", lines);
    }

    #[test]
    fn content_length_never_panics_on_any_bytes(lines in vec(field_bytes(0..24), 0..3)) {
        let mut map = HeaderMap::new();
        for line in &lines {
            map.append(CONTENT_LENGTH, header_value(line));
        }
        if let Ok(Some(n)) = content_length(&map) {
            let text = String::from_utf8_lossy(&lines.concat()).into_owned();
            prop_assert!(text.contains(&n.to_string()) || text.contains('0'), "{} from {:?}", n, text);
        }
    }

    #[test]
    fn the_header_list_size_counts_every_field(
        method in select(&["GET", "POST", "OPTIONS", "PROPFIND", "M-SEARCH"][..]),
        target in soup(PATH_PIECES, 0..12),
        authority in proptest::option::of(select(&["a", "ads.example", "ads.example:8443"][..])),
        pairs in vec((select(NAMES), field_bytes(0..40)), 0..12),
    ) {
        let uri = match &authority {
            Some(a) => format!("https://{a}/{}", target.trim_start_matches('/')),
            None => format!("/{}", target.trim_start_matches('/')),
        };
        let mut req = Request::new(());
        *req.method_mut() = Method::from_bytes(method.as_bytes()).unwrap();
        if let Ok(uri) = Uri::try_from(uri) {
            *req.uri_mut() = uri;
        }
        let bare = header_list_size(&req);
        let minimum = (7 + method.len() + 32) + (5 + 1 + 32) + (7 + 5 + 32);
        prop_assert!(bare >= minimum, "{} < {}", bare, minimum);
        let mut fields = 0;
        for (name, value) in &pairs {
            req.headers_mut().append(
                HeaderName::from_static(name),
                header_value(value),
            );
            fields += name.len() + value.len() + 32;
        }
        prop_assert_eq!(header_list_size(&req), bare + fields);
    }

    #[test]
    fn no_hop_by_hop_field_survives_and_nothing_else_is_lost(
        pairs in head(),
        keep_upgrade in any::<bool>(),
    ) {
        let mut map = header_map(&pairs);
        let before = by_name(&map);
        let listed: Vec<String> = pairs
            .iter()
            .filter(|(n, _)| *n == "connection")
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
            .filter(|t| !t.is_empty())
            .collect();
        strip_hop_by_hop(&mut map, keep_upgrade);
        let mut want = before.clone();
        want.retain(|name, _| {
            let name = name.as_str();
            if name == "upgrade" {
                return keep_upgrade;
            }
            name != "connection"
                && !FIXED_HOP_BY_HOP.contains(&name)
                && (PROTECTED.contains(&name) || !listed.iter().any(|t| t == name))
        });
        if keep_upgrade {
            want.insert("connection".to_owned(), vec![b"upgrade".to_vec()]);
        }
        prop_assert_eq!(by_name(&map), want, "{:?} keep_upgrade {}", pairs, keep_upgrade);
    }

    #[test]
    fn stripping_hop_by_hop_fields_never_panics_and_keeps_protected_ones(
        pairs in vec((select(NAMES), field_bytes(0..24)), 0..10),
        keep_upgrade in any::<bool>(),
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &pairs {
            map.append(HeaderName::from_static(name), header_value(value));
        }
        let before = by_name(&map);
        strip_hop_by_hop(&mut map, keep_upgrade);
        let after = by_name(&map);
        for name in FIXED_HOP_BY_HOP {
            prop_assert!(!after.contains_key(*name), "{} survived", name);
        }
        for name in PROTECTED {
            prop_assert_eq!(after.get(*name), before.get(*name), "{} changed", name);
        }
        let connection = after.get("connection");
        if keep_upgrade {
            prop_assert_eq!(connection, Some(&vec![b"upgrade".to_vec()]));
            prop_assert_eq!(after.get("upgrade"), before.get("upgrade"));
        } else {
            prop_assert!(connection.is_none() && !after.contains_key("upgrade"));
        }
    }

    #[test]
    fn the_upstream_reads_the_same_client_from_the_forwarded_chain(
        chain in prop_oneof![
            (vec(xff_hop(), 0..6), vec(any::<u8>(), 6)).prop_map(|(hops, seps)| {
                lay_out(&hops, &seps).into_iter().map(String::into_bytes).collect()
            }),
            vec(field_line(), 0..4),
        ],
        peer in select(&ADDRESSES[..6]),
    ) {
        // A trusted peer's chain goes on with the peer appended (README: "so the log and the
        // upstream always name the same client"): an upstream that trusts this proxy and the
        // same networks walks it to the same client.
        let peer: IpAddr = peer.parse().unwrap();
        let mut map = HeaderMap::new();
        for line in &chain {
            map.append(&X_FORWARDED_FOR, header_value(line));
        }
        let here = address_of(trusted().resolve(ClientAddr::new(peer), &map));
        let Some(out) = append_hop(map.get_all(&X_FORWARDED_FOR), peer) else {
            return Err(TestCaseError::fail("a chain of field values gave no field value"));
        };
        let peer_value = ip_value(peer);
        prop_assert_eq!(line_elements(out.as_bytes(), b',').last(), Some(peer_value.as_bytes()));
        let mut upstream = HeaderMap::new();
        upstream.insert(&X_FORWARDED_FOR, out.clone());
        let this_proxy = ClientAddr::new("10.9.9.9".parse().unwrap());
        let there = address_of(trusted().resolve(this_proxy, &upstream));
        prop_assert_eq!(
            there,
            here,
            "chain {:?} sent as {}",
            chain.iter().map(|l| show(l)).collect::<Vec<_>>(),
            show(out.as_bytes())
        );
    }

    #[test]
    fn cookie_lines_join_into_one_with_every_crumb(
        lines in vec(field_line(), 0..4),
        other in field_bytes(0..8),
    ) {
        // A server reads the crumbs at every `;` (RFC 6265 §4.2.1, §5.4).
        fn crumbs<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
            lines
                .into_iter()
                .flat_map(|l| l.split(|&b| b == b';'))
                .map(<[u8]>::trim_ascii)
                .filter(|c| !c.is_empty())
                .collect()
        }
        let mut map = HeaderMap::new();
        for line in &lines {
            map.append(COOKIE, header_value(line));
        }
        map.append(UPGRADE, header_value(&other));
        join_cookie_lines(&mut map);
        let after: Vec<&[u8]> = map.get_all(COOKIE).iter().map(HeaderValue::as_bytes).collect();
        if lines.len() < 2 {
            let before: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(after, before);
        } else {
            prop_assert_eq!(after.len(), 1);
            let joined = lines.join(&b"; "[..]);
            prop_assert_eq!(after[0], joined.as_slice());
            prop_assert_eq!(crumbs(after), crumbs(lines.iter().map(Vec::as_slice)));
        }
        prop_assert_eq!(map.get(UPGRADE).map(HeaderValue::as_bytes), Some(&other[..]));
    }
}

// ---------------------------------------------------------------------------------------------
// The user agent and Client Hints (src/privacy/ua.rs).

fn parser() -> &'static UaParser {
    static P: OnceLock<UaParser> = OnceLock::new();
    // A small cache, so that entries are evicted and re-parsed too.
    P.get_or_init(|| UaParser::new(64).expect("built-in rules compile"))
}

fn uncached() -> &'static UaParser {
    static P: OnceLock<UaParser> = OnceLock::new();
    P.get_or_init(|| UaParser::new(0).expect("built-in rules compile"))
}

const UA_PIECES: &[&str] = &[
    "Mozilla/5.0 ",
    "(Windows NT 10.0; Win64; x64) ",
    "(Macintosh; Intel Mac OS X 10_15_7) ",
    "(Linux; Android 14; Pixel 8) ",
    "(iPhone; CPU iPhone OS 17_5 like Mac OS X) ",
    "(X11; Linux x86_64) ",
    "AppleWebKit/537.36 (KHTML, like Gecko) ",
    "Chrome/131.0.0.0 ",
    "Safari/537.36 ",
    "Mobile ",
    "Edg/131.0.0.0 ",
    "OPR/115.0.0.0 ",
    "Firefox/133.0",
    "Gecko/20100101 ",
    "Version/17.5 ",
    "CriOS/118.0 ",
    "FxiOS/132.0 ",
    "SamsungBrowser/26.0 ",
    "Instagram 344.0.0.34.101 ",
    "wv) ",
    "HeadlessChrome/131.0.0.0 ",
    "Googlebot/2.1; ",
    "(compatible; ",
    "curl/8.5.0",
    "bot",
    "spider",
    "/",
    ";",
    "(",
    ")",
    " ",
    "99999999",
    "65536",
    ".",
    "\u{e9}",
    "\u{65e5}\u{672c}",
    "\u{1f600}",
];

const CH_PIECES: &[&str] = &[
    "\"",
    "\"",
    "Chromium",
    "Google Chrome",
    "Microsoft Edge",
    "Microsoft Edge WebView2",
    "Android WebView",
    "HeadlessChrome",
    "Opera",
    "Opera GX",
    "Samsung Internet",
    "YaBrowser",
    "Yandex",
    "Brave",
    "Not_A Brand",
    "Not)A;Brand",
    ";v=",
    ";v=",
    "\"131\"",
    "\"99\"",
    "131",
    "65536",
    ".0",
    ";",
    "v",
    "=",
    "x=1",
    ", ",
    ",",
    " ",
    "\\",
    "\t",
];

const PLATFORM_PIECES: &[&str] = &[
    "\"",
    "\"",
    "Windows",
    "macOS",
    "Android",
    "iOS",
    "Linux",
    "Chrome OS",
    "Chromium OS",
    "Unknown",
    "wINDOWS",
    " ",
    "\\",
    ",",
];

fn user_agent() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::weighted(
        0.9,
        prop_oneof![
            3 => soup(UA_PIECES, 0..24).prop_map(String::into_bytes),
            // Long enough to be cut at MAX_UA_BYTES, sometimes inside a character.
            1 => (soup(UA_PIECES, 8..16), "[a-z\u{e9}\u{65e5}]{100,200}")
                .prop_map(|(a, b)| [b.clone(), a, b].concat().into_bytes()),
            1 => vec(any::<u8>(), 0..600),
        ],
    )
}

fn hint_lines(pieces: &'static [&'static str]) -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(
        prop_oneof![
            4 => soup(pieces, 0..12).prop_map(String::into_bytes),
            1 => field_bytes(0..24),
        ],
        0..3,
    )
}

fn ua_parse(p: &UaParser, ua: Option<&[u8]>, ch: &[Vec<u8>], platform: &[Vec<u8>]) -> Device {
    p.parse(
        ua,
        ch.iter().map(Vec::as_slice),
        platform.iter().map(Vec::as_slice),
    )
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn the_user_agent_result_is_consistent_whatever_the_headers_hold(
        ua in user_agent(),
        ch in hint_lines(CH_PIECES),
        platform in hint_lines(PLATFORM_PIECES),
    ) {
        let ua = ua.as_deref();
        let shown = format!(
            "UA {:?} Sec-CH-UA {:?} platform {:?}",
            ua.map(show),
            ch.iter().map(|l| show(l)).collect::<Vec<_>>(),
            platform.iter().map(|l| show(l)).collect::<Vec<_>>()
        );
        let got = ua_parse(parser(), ua, &ch, &platform);
        prop_assert_eq!(got, ua_parse(uncached(), ua, &ch, &platform), "cache: {}", shown);
        prop_assert!(
            got.browser != Browser::Other || got.browser_major.is_none(),
            "a version for Other: {}",
            shown
        );
        // Hints refine; each hint touches only its own part of the answer.
        let base = ua_parse(parser(), ua, &[], &[]);
        let ch_only = ua_parse(parser(), ua, &ch, &[]);
        let platform_only = ua_parse(parser(), ua, &[], &platform);
        prop_assert_eq!(ch_only.os, base.os, "Sec-CH-UA changed the OS: {}", shown);
        prop_assert_eq!(
            (platform_only.browser, platform_only.browser_major, platform_only.bot),
            (base.browser, base.browser_major, base.bot),
            "the platform hint changed the browser: {}", shown
        );
        prop_assert_eq!(got.os, platform_only.os, "{}", shown);
        prop_assert_eq!(
            (got.browser, got.browser_major, got.bot),
            (ch_only.browser, ch_only.browser_major, ch_only.bot),
            "{}", shown
        );
        prop_assert!(!base.bot || got.bot, "a hint made a bot a person: {}", shown);
        if base.bot || !matches!(base.browser, Browser::Chrome | Browser::Other) {
            prop_assert_eq!(got.browser, base.browser, "a hint replaced a named family: {}", shown);
        }
        // Only the first MAX_UA_BYTES bytes count.
        if let Some(ua) = ua.filter(|ua| ua.len() > MAX_UA_BYTES) {
            prop_assert_eq!(
                ua_parse(uncached(), Some(&ua[..MAX_UA_BYTES]), &ch, &platform),
                got,
                "{}",
                shown
            );
        }
        // Several Sec-CH-UA lines are their comma-joined value (RFC 9110 §5.3).
        if ch.len() > 1 {
            let joined = ch.join(&b", "[..]);
            prop_assert_eq!(
                ua_parse(parser(), ua, &[joined], &platform),
                got,
                "joined lines differ: {}",
                shown
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The config loader (src/config.rs).

const TOML_PIECES: &[&str] = &[
    "[server]\n",
    "[tls]\n",
    "[[tls.sni]]\n",
    "[upstream]\n",
    "[client_ip]\n",
    "[geoip]\n",
    "[privacy]\n",
    "[access_log]\n",
    "[rate_limit]\n",
    "[[rate_limit.route]]\n",
    "[admin]\n",
    "[bogus]\n",
    "listen",
    "workers",
    "listen_plain",
    "hosts",
    "header_read_timeout",
    "idle_timeout",
    "max_header_bytes",
    "servers",
    "trusted_proxies",
    "ipv4_prefix",
    "ipv6_prefix",
    "cookie_max_age",
    "retention",
    "burst",
    "requests_per_second",
    "path_prefix",
    "enabled",
    "host",
    "dir",
    "bogus",
    " = ",
    " = ",
    "=",
    "\n",
    "\n",
    "\"0.0.0.0:8443\"",
    "\"127.0.0.1:0\"",
    "\"10s\"",
    "\"5 parsecs\"",
    "\"0s\"",
    "\"99999999999999999999d\"",
    "\"15d\"",
    "0",
    "1",
    "-1",
    "33",
    "99999999999999999999",
    "1e400",
    "nan",
    "true",
    "[]",
    "[\"10.0.0.0/8\"]",
    "[\"http://127.0.0.1:8080\"]",
    "[\"ftp://x\"]",
    "\"/click\"",
    "{}",
    "\"\"",
    "'x'",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "#",
    "\u{e9}",
    "\u{1f600}",
    "\"",
    "[",
    "]",
    ".",
    ",",
];

/// `(section, key, a value of the right type)` for keys with a simple value.
const KEYS: &[(&str, &str, &str)] = &[
    ("server", "listen", "\"127.0.0.1:0\""),
    ("server", "workers", "2"),
    ("server", "listen_plain", "\"127.0.0.1:0\""),
    ("server", "hosts", "[\"localhost\"]"),
    ("server", "header_read_timeout", "\"10s\""),
    ("server", "idle_timeout", "\"60s\""),
    ("server", "max_header_bytes", "16384"),
    ("server", "max_body_bytes", "1024"),
    ("server", "shutdown_grace", "\"1s\""),
    ("server", "proxy_protocol", "\"off\""),
    ("upstream", "servers", "[\"http://127.0.0.1:8080\"]"),
    ("upstream", "connect_timeout", "\"1s\""),
    ("upstream", "request_timeout", "\"30s\""),
    ("upstream", "forward_client_ip", "\"full\""),
    ("client_ip", "trusted_proxies", "[\"10.0.0.0/8\"]"),
    ("privacy", "ipv4_prefix", "24"),
    ("privacy", "ipv6_prefix", "48"),
    ("privacy", "pseudonym_ipv6_prefix", "64"),
    ("privacy", "key_retention", "\"30d\""),
    ("privacy", "timestamp_precision", "\"1s\""),
    ("privacy", "cookie_max_age", "\"14d\""),
    ("access_log", "retention", "\"30d\""),
    ("access_log", "buffer_records", "1024"),
    ("access_log", "file_mode", "\"0640\""),
    ("access_log", "group", "\"adm\""),
    ("rate_limit", "enabled", "true"),
    ("rate_limit", "requests_per_second", "10"),
    ("rate_limit", "burst", "20"),
    ("rate_limit", "ipv6_prefix", "64"),
    ("admin", "listen", "\"127.0.0.1:0\""),
];

/// Values of every TOML type, most of them wrong for most keys.
const WRONG_VALUES: &[&str] = &[
    "0",
    "-1",
    "256",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "1.5",
    "inf",
    "nan",
    "true",
    "\"\"",
    "\" \"",
    "\"x\"",
    "\"0s\"",
    "\"1ns\"",
    "\"1.5s\"",
    "\"99999999999999999999d\"",
    "\"18446744073709551615s\"",
    "\"-1s\"",
    "\"999.999.999.999:1\"",
    "\"[::1]:99999\"",
    "\"10.0.0.0/33\"",
    "\"http://u@h:1\"",
    "\"http://h:1/p\"",
    "\"\\u00e9\"",
    "[]",
    "[1]",
    "[\"\"]",
    "[\"a b\"]",
    "[[]]",
    "{}",
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
];

fn structured_toml() -> impl Strategy<Value = (String, &'static str, &'static str)> {
    (vec(select(KEYS), 0..4), select(KEYS), select(WRONG_VALUES)).prop_map(
        |(good, (section, key, _), wrong)| {
            let mut tables: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
            for (s, k, v) in good {
                tables.entry(s).or_default().insert(k, v);
            }
            tables.entry(section).or_default().insert(key, wrong);
            let mut text = String::new();
            for (s, keys) in tables {
                text.push_str(&format!("[{s}]\n"));
                for (k, v) in keys {
                    text.push_str(&format!("{k} = {v}\n"));
                }
            }
            (text, section, key)
        },
    )
}

fn check_config(text: &str) -> Result<Option<Config>, TestCaseError> {
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            // What parsed serialises to TOML that parses to the same configuration.
            let out = match toml::to_string(&config) {
                Ok(out) => out,
                Err(e) => return Err(TestCaseError::fail(format!("{e} for {text:?}"))),
            };
            let again = Config::parse(&out, Path::new("again.toml"));
            prop_assert!(again.is_ok(), "{:?} from {:?}", again.err(), out);
            let again = again.unwrap();
            prop_assert_eq!(format!("{again:?}"), format!("{config:?}"));
            Ok(Some(config))
        }
        Err(ConfigError::Schema { key, reason, .. }) => {
            // Empty, or ending in an empty segment, only when the text names an empty key
            // (`"" = 1`, `[server]\n'' = 1`) or one ending in a dot (`"listen." = 1`).
            let empty_key = key.is_empty() || key.ends_with('.');
            let written = text.contains("\"\"") || text.contains("''") || text.contains(&key);
            prop_assert!(
                key != "." && (!empty_key || written),
                "no key in {reason:?}"
            );
            prop_assert!(!reason.is_empty());
            Ok(None)
        }
        Err(ConfigError::Invalid { key, reason }) => {
            prop_assert!(!key.is_empty() && !reason.is_empty());
            Ok(None)
        }
        Err(ConfigError::Syntax { message, .. }) => {
            prop_assert!(!message.is_empty());
            Ok(None)
        }
        Err(ConfigError::Read { .. }) => Err(TestCaseError::fail("a read error from text")),
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn any_config_text_parses_or_is_refused_with_a_reason(
        text in prop_oneof![
            3 => soup(TOML_PIECES, 0..24),
            1 => vec(any::<char>(), 0..64).prop_map(String::from_iter),
        ],
    ) {
        check_config(&text)?;
    }

    #[test]
    fn a_wrong_value_is_refused_naming_its_key(
        (text, section, key) in structured_toml(),
    ) {
        let full = format!("{section}.{key}");
        match Config::parse(&text, Path::new("fuzz.toml")) {
            Ok(config) => {
                check_config(&text)?;
                drop(config);
            }
            Err(ConfigError::Schema { key: named, .. } | ConfigError::Invalid { key: named, .. }) => {
                // The key itself, an element of it (`upstream.servers[0]`), or its table when
                // the value's type cannot be told apart from an unknown key.
                prop_assert!(
                    named.starts_with(&full) || named == section,
                    "{:?} named for a wrong {} in {:?}",
                    named,
                    full,
                    text
                );
            }
            Err(e) => return Err(TestCaseError::fail(format!("{e} for {text:?}"))),
        }
    }
}
