//! The cookie lifetime cap (policy P11, `docs/policy.md`): it may only ever shorten a lifetime.
//!
//! A property test checks `cap_set_cookie` against an independent model of the lifetime a
//! browser computes from a `Set-Cookie` value (RFC 6265 §5.1.1–5.3, RFC 6265bis, and the
//! attribute choice of Chromium and Firefox), written here from the RFC and not from the code
//! under test. An end-to-end table sends each row's `Set-Cookie` lines from a real upstream
//! through the proxy to the real TLS client over HTTP/1.1 and HTTP/2.
//!
//! The property test runs 2,048 cases of each generator by default; `PROPTEST_CASES=N` runs
//! N (e.g. `PROPTEST_CASES=10000000 cargo test --release --test cookies lifetime`).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use http::{HeaderValue, Request};
use proptest::prelude::*;
use webprom_edge::proxy::cookie::cap_set_cookie;

const DAY: i64 = 86_400;

// ---------------------------------------------------------------------------------------------
// The model: what a browser makes of one Set-Cookie value.

/// The effect of one `Set-Cookie` value on a browser's cookie store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The whole line is ignored (RFC 6265 §5.2: no `=`, or an empty name).
    Ignored,
    /// No lifetime: the cookie lives until the session ends.
    Session,
    /// Expired at once: removes a stored cookie of that name.
    Deletion,
    /// Lives this many seconds from now.
    Lives(i128),
}

/// Whose rules read the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    /// RFC 6265 §5.2–5.3 as written: the last valid `Max-Age`, else the last valid `Expires`.
    Rfc6265,
    /// RFC 6265bis: as RFC 6265, but an attribute value over 1024 octets is ignored and a
    /// cookie without a name is kept.
    Rfc6265bis,
    /// Chromium's choice: the last occurrence of each attribute, valid or not (values over
    /// 1024 octets skipped); `Max-Age` read as a signed integer with an optional `+`
    /// (saturating); an unreadable one falls back to `Expires`.
    Chromium,
    /// Firefox's choice: the last occurrence (values over 1024 octets skipped); a `Max-Age`
    /// starting with `-` is a deletion, one of digits only a lifetime (saturating); anything
    /// else falls back to `Expires`.
    Firefox,
}

const READERS: [Reader; 4] = [
    Reader::Rfc6265,
    Reader::Rfc6265bis,
    Reader::Chromium,
    Reader::Firefox,
];

/// Saturation for huge `Max-Age` values (browsers saturate too, or clip to 400 days).
const FOREVER: i128 = i64::MAX as i128;

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// What `reader` makes of `line` at `now` (seconds since the epoch).
fn outcome(line: &[u8], now: i64, reader: Reader) -> Outcome {
    // §5.2 step 1: the name-value-pair is everything up to the first ';'.
    let (pair, attributes) = match line.iter().position(|&c| c == b';') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    match pair.iter().position(|&c| c == b'=') {
        // §5.2 steps 2 and 5.
        None if reader == Reader::Rfc6265 => return Outcome::Ignored,
        Some(eq) if reader == Reader::Rfc6265 && trim(&pair[..eq]).is_empty() => {
            return Outcome::Ignored;
        }
        _ => {}
    }
    // §5.2 steps 1–6 of the attribute loop: cookie-av up to the next ';', name up to the
    // first '=', both trimmed of WSP.
    let mut list: Vec<(Vec<u8>, &[u8])> = Vec::new();
    for av in attributes.into_iter().flat_map(|a| a.split(|&c| c == b';')) {
        let (name, value) = match av.iter().position(|&c| c == b'=') {
            Some(eq) => (&av[..eq], &av[eq + 1..]),
            None => (av, &av[av.len()..]),
        };
        let (name, value) = (trim(name).to_ascii_lowercase(), trim(value));
        if reader != Reader::Rfc6265 && value.len() > 1024 {
            continue;
        }
        list.push((name, value));
    }
    let last = |name: &[u8]| list.iter().rev().find(|(n, _)| n == name).map(|&(_, v)| v);
    let expiry = match reader {
        Reader::Rfc6265 | Reader::Rfc6265bis => {
            // §5.2.1, §5.2.2: only valid attributes enter the cookie-attribute-list; §5.3
            // step 3: the last Max-Age, else the last Expires.
            let valid_max_age = list
                .iter()
                .rev()
                .filter(|(n, _)| n == b"max-age")
                .find_map(|(_, v)| rfc_max_age(v));
            let valid_expires = list
                .iter()
                .rev()
                .filter(|(n, _)| n == b"expires")
                .find_map(|(_, v)| model_cookie_date(v));
            match (valid_max_age, valid_expires) {
                (Some(delta), _) => Some(max_age_expiry(delta, now)),
                (None, Some(at)) => Some(i128::from(at)),
                (None, None) => None,
            }
        }
        Reader::Chromium => {
            let max_age = last(b"max-age").and_then(chromium_int64);
            match max_age {
                Some(delta) => Some(max_age_expiry(delta, now)),
                None => last(b"expires")
                    .filter(|v| !v.is_empty())
                    .and_then(model_cookie_date)
                    .map(i128::from),
            }
        }
        Reader::Firefox => {
            let max_age = last(b"max-age").and_then(firefox_max_age);
            match max_age {
                Some(delta) => Some(max_age_expiry(delta, now)),
                None => last(b"expires")
                    .filter(|v| !v.is_empty())
                    .and_then(model_cookie_date)
                    .map(i128::from),
            }
        }
    };
    match expiry {
        None => Outcome::Session,
        Some(at) if at <= i128::from(now) => Outcome::Deletion,
        Some(at) => Outcome::Lives(at - i128::from(now)),
    }
}

/// §5.2.2: a DIGIT or '-' first, DIGITs after (6265bis: "-" needs a digit after it).
fn rfc_max_age(v: &[u8]) -> Option<i128> {
    let (negative, digits) = match v {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, v),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = saturating_number(digits);
    Some(if negative { -n } else { n })
}

/// Chromium's `base::StringToInt64`: an optional sign, then digits only; saturating.
fn chromium_int64(v: &[u8]) -> Option<i128> {
    let (negative, digits) = match v {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, v),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = saturating_number(digits);
    Some(if negative { -n } else { n })
}

/// Firefox's `ParseMaxAgeAttribute`: '-' first is a deletion; else digits only, saturating.
fn firefox_max_age(v: &[u8]) -> Option<i128> {
    match v {
        [] => None,
        [b'-', ..] => Some(-FOREVER),
        _ if v.iter().all(u8::is_ascii_digit) => Some(saturating_number(v)),
        _ => None,
    }
}

fn saturating_number(digits: &[u8]) -> i128 {
    digits
        .iter()
        .fold(0i128, |n, d| (n * 10 + i128::from(d - b'0')).min(FOREVER))
}

/// §5.2.2: delta-seconds ≤ 0 is the earliest representable time, else now + delta.
fn max_age_expiry(delta: i128, now: i64) -> i128 {
    if delta <= 0 {
        i128::MIN
    } else {
        i128::from(now) + delta
    }
}

/// RFC 6265 §5.1.1, written from the RFC: seconds since the epoch, or `None`.
fn model_cookie_date(s: &[u8]) -> Option<i64> {
    // Step 1: date-tokens are the runs of non-delimiters.
    let is_delimiter = |c: u8| {
        c == 0x09
            || (0x20..=0x2f).contains(&c)
            || (0x3b..=0x40).contains(&c)
            || (0x5b..=0x60).contains(&c)
            || (0x7b..=0x7e).contains(&c)
    };
    let mut tokens: Vec<&[u8]> = Vec::new();
    let mut start = None;
    for (i, &c) in s.iter().enumerate() {
        match (is_delimiter(c), start) {
            (false, None) => start = Some(i),
            (true, Some(st)) => {
                tokens.push(&s[st..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(st) = start {
        tokens.push(&s[st..]);
    }
    // A run of `min..=max` digits at the start, then the end or a non-digit.
    fn number(t: &[u8], min: usize, max: usize) -> Option<(i64, &[u8])> {
        let n = t
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(t.len());
        if n < min || n > max {
            return None;
        }
        let value = std::str::from_utf8(&t[..n]).ok()?.parse().ok()?;
        Some((value, &t[n..]))
    }
    let (mut hms, mut day, mut month, mut year) = (None, None, None, None);
    // Step 2: each token, in order, fills the first field not yet found that it matches.
    for t in tokens {
        if hms.is_none() {
            let time = number(t, 1, 2).and_then(|(h, r)| {
                let (m, r) = number(r.strip_prefix(b":")?, 1, 2)?;
                let (s, _) = number(r.strip_prefix(b":")?, 1, 2)?;
                Some((h, m, s))
            });
            if time.is_some() {
                hms = time;
                continue;
            }
        }
        if day.is_none()
            && let Some((d, _)) = number(t, 1, 2)
        {
            day = Some(d);
            continue;
        }
        if month.is_none() && t.len() >= 3 {
            let names = [
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ];
            let prefix = String::from_utf8_lossy(&t[..3]).to_lowercase();
            if let Some(i) = names.iter().position(|&n| n == prefix) {
                month = Some(i as i64 + 1);
                continue;
            }
        }
        if year.is_none()
            && let Some((y, _)) = number(t, 2, 4)
        {
            year = Some(y);
        }
    }
    let ((hour, minute, second), day, month, mut year) = (hms?, day?, month?, year?);
    // Steps 3–4.
    if (70..=99).contains(&year) {
        year += 1900;
    }
    if (0..=69).contains(&year) {
        year += 2000;
    }
    // Step 5.
    if !(1..=31).contains(&day) || year < 1601 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Step 6: the date must exist.
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day > month_days[(month - 1) as usize] {
        return None;
    }
    Some(days_from_civil(year, month, day) * DAY + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of `days_from_civil`): (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[test]
fn the_model_reads_the_rows_of_rfc_6265_and_of_browsers() {
    let now = 1_795_615_387; // 2026-11-25T14:03:07Z
    let rows: &[(&str, [Outcome; 4])] = &[
        ("a=1", [Outcome::Session; 4]),
        ("noequals; Max-Age=60", {
            let mut r = [Outcome::Lives(60); 4];
            r[0] = Outcome::Ignored;
            r
        }),
        ("a=1; Max-Age=60", [Outcome::Lives(60); 4]),
        ("a=1; Max-Age=0", [Outcome::Deletion; 4]),
        ("a=1; Max-Age=-1", [Outcome::Deletion; 4]),
        (
            "JSESSIONID=deleted; Expires=Thu, 01-Jan-1970 00:00:10 GMT; Path=/",
            [Outcome::Deletion; 4],
        ),
        (
            "a=1; Expires=Wed, 25 Nov 2026 14:04:07 GMT",
            [Outcome::Lives(60); 4],
        ),
        ("a=1; Expires=never", [Outcome::Session; 4]),
        // Max-Age wins over Expires, in either order.
        (
            "a=1; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            [Outcome::Lives(60); 4],
        ),
        (
            "a=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60",
            [Outcome::Lives(60); 4],
        ),
        // The RFC takes the last valid one, browsers the last one.
        (
            "a=1; Max-Age=60; Max-Age=x",
            [
                Outcome::Lives(60),
                Outcome::Lives(60),
                Outcome::Session,
                Outcome::Session,
            ],
        ),
        (
            "a=1; Max-Age=+60",
            [
                Outcome::Session,
                Outcome::Session,
                Outcome::Lives(60),
                Outcome::Session,
            ],
        ),
        (
            "a=1; Max-Age=-x",
            [
                Outcome::Session,
                Outcome::Session,
                Outcome::Session,
                Outcome::Deletion,
            ],
        ),
    ];
    for (i, (line, want)) in rows.iter().enumerate() {
        for (reader, want) in READERS.into_iter().zip(want) {
            let got = outcome(line.as_bytes(), now, reader);
            assert_eq!(got, *want, "row {i} {reader:?}: {line}");
        }
    }
    let long = format!("a=1; Max-Age=60; Max-Age={}", "9".repeat(1025));
    assert_eq!(
        outcome(long.as_bytes(), now, Reader::Rfc6265),
        Outcome::Lives(FOREVER)
    );
    assert_eq!(
        outcome(long.as_bytes(), now, Reader::Rfc6265bis),
        Outcome::Lives(60)
    );
    // The model's calendar agrees with known instants.
    assert_eq!(
        model_cookie_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(784_111_777)
    );
    assert_eq!(
        model_cookie_date(b"Fri, 31 Dec 9999 23:59:59 GMT"),
        Some(253_402_300_799)
    );
    assert_eq!(
        model_cookie_date(b"01 Jan 1601 00:00:00"),
        Some(-11_644_473_600)
    );
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
}

// ---------------------------------------------------------------------------------------------
// The property: the cap never lengthens, never exceeds the cap, keeps deletions and sessions,
// and changes no byte outside a Max-Age or Expires value.

/// Checks one line: `Err` says what went wrong.
fn check(line: &[u8], cap: i64, now: i64) -> Result<(), String> {
    let Ok(value) = HeaderValue::from_bytes(line) else {
        return Ok(()); // not a header value: never reaches the cap
    };
    let at = UNIX_EPOCH + Duration::from_secs(now as u64);
    let after = cap_set_cookie(&value, Duration::from_secs(cap as u64), at);
    let after_bytes = after.as_ref().map_or(line, |v| v.as_bytes());
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if after.is_some() && after_bytes == line {
        return Err(format!("a change that changes nothing: {}", show(line)));
    }
    for reader in READERS {
        let before = outcome(line, now, reader);
        let got = outcome(after_bytes, now, reader);
        let ok = match (before, got) {
            (Outcome::Lives(b), Outcome::Lives(a)) if b <= i128::from(cap) => a == b,
            (Outcome::Lives(b), Outcome::Lives(a)) => a <= b && a <= i128::from(cap),
            (Outcome::Lives(_), Outcome::Deletion) => true,
            (b, a) => a == b,
        };
        if !ok {
            return Err(format!(
                "{reader:?}: {before:?} became {got:?} (cap {cap}s)\n before: {}\n after:  {}",
                show(line),
                show(after_bytes)
            ));
        }
    }
    preserved(line, after_bytes).map_err(|e| {
        format!(
            "{e}\n before: {}\n after:  {}",
            show(line),
            show(after_bytes)
        )
    })
}

/// Whether `after` differs from `before` only inside `Max-Age` and `Expires` values.
fn preserved(before: &[u8], after: &[u8]) -> Result<(), String> {
    let b: Vec<&[u8]> = before.split(|&c| c == b';').collect();
    let a: Vec<&[u8]> = after.split(|&c| c == b';').collect();
    if a.len() != b.len() || a[0] != b[0] {
        return Err("the name=value pair or the attribute count changed".into());
    }
    for (x, y) in b.iter().zip(&a).skip(1) {
        if x == y {
            continue;
        }
        let (Some(ex), Some(ey)) = (
            x.iter().position(|&c| c == b'='),
            y.iter().position(|&c| c == b'='),
        ) else {
            return Err("an attribute without a value changed".into());
        };
        let name = trim(&x[..ex]).to_ascii_lowercase();
        if x[..=ex] != y[..=ey] || !(name == b"max-age" || name == b"expires") {
            return Err("an attribute other than Max-Age or Expires changed".into());
        }
        let edges = |v: &[u8]| {
            let lead = v.iter().take_while(|c| matches!(c, b' ' | b'\t')).count();
            let trail = v
                .iter()
                .rev()
                .take_while(|c| matches!(c, b' ' | b'\t'))
                .count();
            (lead, trail)
        };
        if edges(&x[ex + 1..]) != edges(&y[ey + 1..]) {
            return Err("the spacing around a value changed".into());
        }
    }
    Ok(())
}

// Generators. Dates are rendered in every format a server may send, with a chance of an
// invalid field, shuffled tokens, junk and odd case; the model decides what each one means.

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// `secs` since the epoch rendered in format `format` (0–9) with field fault `fault` (0: none).
fn render_date(secs: i64, format: u8, fault: u8) -> String {
    let days = secs.div_euclid(DAY);
    let (mut y, mut mo, mut d) = civil_from_days(days);
    let rem = secs.rem_euclid(DAY);
    let (mut h, mut mi, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    match fault {
        1 => h = 24,
        2 => mi = 60,
        3 => (mo, d) = (2, 30), // 30 February exists in no year
        4 => y = 1600,
        5 => d = 32,
        _ => {}
    }
    let wd = WEEKDAYS[days.rem_euclid(7) as usize];
    let wd3 = &wd[..3];
    let m = MONTHS[(mo - 1) as usize];
    let time = if fault == 6 {
        format!("{h:02}:{mi:02}")
    } else {
        format!("{h:02}:{mi:02}:{s:02}")
    };
    match format {
        0 => format!("{wd3}, {d:02} {m} {y:04} {time} GMT"),
        1 => format!("{wd}, {d:02}-{m}-{:02} {time} GMT", y.rem_euclid(100)),
        2 => format!("{wd3} {m} {d:>2} {time} {y}"),
        3 => format!("{wd3}, {d:02}-{m}-{y:04} {time} GMT"),
        4 => format!("{wd3}, {d:02}-{m}-{:02} {time} GMT", y.rem_euclid(100)),
        5 => format!("{y} {} {d} {time}", m.to_lowercase()),
        6 => format!("{time} {d}th {}ember {y}", m.to_uppercase()),
        7 => format!("{d:02} {m} {y} {time} +0100 (CET)"),
        8 => format!("{wd3},{d}/{m}/{y}/{time}"),
        _ => format!("{y:04}-{mo:02}-{d:02}T{time}Z"),
    }
}

fn instant(now: i64, cap: i64) -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(now),
        Just(now + 1),
        Just(now - 1),
        Just(now + cap),
        Just(now + cap + 1),
        Just(now + cap - 1),
        Just(0),
        Just(10),
        Just(-11_644_473_600), // 1601-01-01
        Just(253_402_300_799), // 9999-12-31T23:59:59
        (now - 2 * cap - 10)..(now + 3 * cap + 10),
        (now - 40 * 365 * DAY)..(now + 100 * 365 * DAY),
        -11_644_473_600i64..253_402_300_799,
    ]
}

fn expires_value(now: i64, cap: i64) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (instant(now, cap), 0u8..10, prop_oneof![6 => Just(0u8), 4 => 1u8..7])
            .prop_map(|(at, format, fault)| render_date(at, format, fault)),
        1 => junk(),
        1 => Just(String::new()),
        1 => (instant(now, cap), 0u8..4).prop_map(|(at, f)| {
            format!("{}{}", render_date(at, f, 0), " ".repeat(1100)) + "x"
        }),
    ]
}

fn max_age_value(cap: i64) -> impl Strategy<Value = String> {
    let number = prop_oneof![
        Just(0u128),
        Just(1),
        Just(cap as u128),
        Just(cap as u128 + 1),
        Just((cap as u128).saturating_sub(1)),
        0u128..100_000_000,
        any::<u64>().prop_map(u128::from),
        any::<u128>(),
    ];
    let sign = prop_oneof![4 => Just(""), 1 => Just("-"), 1 => Just("+"), 1 => Just("--")];
    let zeros = prop_oneof![4 => Just(0usize), 1 => 1usize..4, 1 => Just(1030)];
    let tail = prop_oneof![
        6 => Just(""),
        1 => Just("abc"),
        1 => Just(" 1"),
        1 => Just(".5"),
        1 => Just("e9"),
    ];
    prop_oneof![
        10 => (sign, zeros, number, tail)
            .prop_map(|(s, z, n, t)| format!("{s}{}{n}{t}", "0".repeat(z))),
        1 => Just(String::new()),
        1 => Just("-".to_owned()),
        1 => junk(),
    ]
}

/// Bytes of a header value other than ';' (which would end the attribute).
fn junk() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            3 => proptest::char::range('0', '9'),
            3 => proptest::char::range('a', 'z'),
            1 => proptest::char::range('A', 'Z'),
            2 => proptest::sample::select(vec![' ', '\t', ',', '-', ':', '=', '/', '+', '.']),
            1 => proptest::char::range('\u{80}', '\u{ff}'),
        ],
        0..24,
    )
    .prop_map(|c| c.into_iter().collect())
}

fn case_of(name: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars()
            .zip(upper)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

fn wsp() -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => Just(""), 4 => Just(" "), 1 => Just("\t"), 1 => Just("  \t")]
}

fn attribute(now: i64, cap: i64) -> impl Strategy<Value = String> {
    let named = |name: &'static str, value: BoxedStrategy<String>| {
        (wsp(), case_of(name), wsp(), wsp(), value, wsp())
            .prop_map(|(a, n, b, c, v, d)| format!("{a}{n}{b}={c}{v}{d}"))
    };
    prop_oneof![
        4 => named("Max-Age", max_age_value(cap).boxed()),
        4 => named("Expires", expires_value(now, cap).boxed()),
        1 => case_of("Max-Age"),
        1 => case_of("Expires"),
        2 => proptest::sample::select(vec![
            " Path=/", " Domain=example.com", " Secure", " HttpOnly", " SameSite=Lax", "",
            " Partitioned", " Max-Agex=99999999", " X-Expires=Fri, 01 Jan 2100 00:00:00 GMT",
            " Path=Max-Age=99999999",
        ])
        .prop_map(str::to_owned),
        1 => junk(),
    ]
}

fn pair() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => Just("sid=abc".to_owned()),
        1 => Just(String::new()),
        1 => Just("=v".to_owned()),
        1 => Just("novalue".to_owned()),
        1 => Just("Max-Age=99999999".to_owned()),
        1 => Just("expires=Fri, 01 Jan 2100 00:00:00 GMT".to_owned()),
        1 => junk(),
    ]
}

/// A structured Set-Cookie line with a `now` (2000–2090) and a cap (up to 30 days).
fn structured() -> impl Strategy<Value = (String, i64, i64)> {
    let now = 946_684_800i64..3_786_825_600;
    let cap = prop_oneof![
        Just(0i64),
        Just(1),
        Just(60),
        Just(14 * DAY),
        0i64..30 * DAY
    ];
    (now, cap).prop_flat_map(|(now, cap)| {
        (
            pair(),
            proptest::collection::vec(attribute(now, cap), 0..6),
            any::<bool>(),
        )
            .prop_map(move |(pair, attrs, trailing)| {
                let mut line = pair;
                for a in attrs {
                    line.push(';');
                    line.push_str(&a);
                }
                if trailing {
                    line.push(';');
                }
                (line, now, cap)
            })
    })
}

/// Any header value: tab, visible ASCII and obs-text, with `;`, `=` and digits favoured.
fn arbitrary() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            3 => proptest::sample::select(b";=-+ 0123456789".to_vec()),
            3 => 0x20u8..0x7f,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..80,
    )
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lifetime_after_the_cap_is_never_longer_for_structured_lines(
        (line, now, cap) in structured(),
    ) {
        if let Err(e) = check(line.as_bytes(), cap, now) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn lifetime_after_the_cap_is_never_longer_for_arbitrary_bytes(
        line in arbitrary(),
        now in 946_684_800i64..3_786_825_600,
        cap in prop_oneof![Just(14 * DAY), 0i64..30 * DAY],
    ) {
        if let Err(e) = check(&line, cap, now) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Any clock, including before 1970 and after 9999 (no HTTP-date for either).
fn clock() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        4 => (946_684_800u64..3_786_825_600, 0u32..1_000_000_000)
            .prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n)),
        1 => (0u64..1 << 40).prop_map(|s| UNIX_EPOCH - Duration::from_secs(s)),
        1 => (253_402_300_790u64..253_402_300_810).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        1 => Just(UNIX_EPOCH),
        1 => Just(UNIX_EPOCH - Duration::from_nanos(1)),
    ]
}

/// A `Date` value: valid in each HTTP-date format, or not.
fn date_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (-11_644_473_600i64..300_000_000_000, 0u8..10, prop_oneof![3 => Just(0u8), 1 => 1u8..7])
            .prop_map(|(at, format, fault)| render_date(at, format, fault).into_bytes()),
        1 => junk().prop_map(String::into_bytes),
        1 => arbitrary(),
    ]
}

fn the_date(headers: &http::HeaderMap) -> Option<SystemTime> {
    let mut dates = headers.get_all(http::header::DATE).iter();
    match (dates.next(), dates.next()) {
        (Some(d), None) => httpdate::parse_http_date(d.to_str().ok()?).ok(),
        _ => None,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_response_cap_measures_from_one_valid_date_whatever_the_clock_and_cap(
        cookies in proptest::collection::vec(
            prop_oneof![structured().prop_map(|(l, ..)| l.into_bytes()), arbitrary()],
            0..3,
        ),
        dates in proptest::collection::vec(date_line(), 0..3),
        now in clock(),
        cap in prop_oneof![
            Just(Duration::ZERO),
            (0u64..30 * 86_400).prop_map(Duration::from_secs),
            Just(Duration::from_secs(u64::MAX)),
            Just(Duration::MAX),
        ],
    ) {
        use http::header::{DATE, SET_COOKIE};
        let mut headers = http::HeaderMap::new();
        for c in cookies.iter().filter_map(|c| HeaderValue::from_bytes(c).ok()) {
            headers.append(SET_COOKIE, c);
        }
        for d in dates.iter().filter_map(|d| HeaderValue::from_bytes(d).ok()) {
            headers.append(DATE, d);
        }
        let before = headers.clone();
        webprom_edge::proxy::cookie::cap_response(&mut headers, cap, now);
        if !before.contains_key(SET_COOKIE) {
            prop_assert_eq!(headers, before);
            return Ok(());
        }
        // One valid Date stays; otherwise the proxy's clock, or none it cannot write.
        let from = match the_date(&before) {
            Some(date) => {
                prop_assert_eq!(headers.get_all(DATE).iter().count(), 1);
                prop_assert_eq!(headers.get(DATE), before.get(DATE));
                date.min(now)
            }
            None => {
                let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs());
                let want = secs
                    .ok()
                    .filter(|&s| s <= 253_402_300_799)
                    .map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s)));
                let got: Vec<&str> =
                    headers.get_all(DATE).iter().map(|d| d.to_str().unwrap()).collect();
                prop_assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
                now
            }
        };
        // Each Set-Cookie capped on its own, from that instant.
        let was: Vec<&HeaderValue> = before.get_all(SET_COOKIE).iter().collect();
        let is: Vec<&HeaderValue> = headers.get_all(SET_COOKIE).iter().collect();
        prop_assert_eq!(is.len(), was.len());
        for (is, was) in is.into_iter().zip(was) {
            let want = cap_set_cookie(was, cap, from).unwrap_or_else(|| was.clone());
            prop_assert_eq!(is, &want);
        }
    }
}

/// Rows found by the property test or written for it, kept so they run every time.
#[test]
fn lifetime_after_the_cap_is_never_longer_for_known_rows() {
    let now = 1_795_615_387;
    let rows: &[&str] = &[
        "JSESSIONID=deleted; Expires=Thu, 01-Jan-1970 00:00:10 GMT; Path=/",
        "a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Expires=never",
        "a=1; Max-Age=99999999; Max-Age=x",
        "a=1; Max-Age=+99999999",
        "a=1; Max-Age=99999999abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "a=1; Max-Age=0; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
        "a; Max-Age=99999999",
        "=a; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
    ];
    for line in rows {
        for cap in [0, 1, 14 * DAY] {
            check(line.as_bytes(), cap, now).unwrap();
        }
    }
    let long = format!("a=1; Max-Age=60; Max-Age={}", "9".repeat(1100));
    check(long.as_bytes(), 14 * DAY, now).unwrap();
    let long = format!(
        "a=1; Max-Age=0; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Expires=01 Jan 2100 00:00:00{}x",
        " ".repeat(1100)
    );
    check(long.as_bytes(), 14 * DAY, now).unwrap();
}

// ---------------------------------------------------------------------------------------------
// End to end: a real upstream sends each row's Set-Cookie lines through the proxy.

/// What the client must receive for one Set-Cookie line.
enum Want {
    /// The line as the upstream sent it.
    Same,
    /// Exactly this line.
    Is(&'static str),
    /// This line with `{limit}` an IMF-fixdate at the cap from the response's start.
    CappedExpires(&'static str),
}

/// A row: (what it shows, the upstream's Set-Cookie lines, the client's expectation per line).
type Row = (&'static str, &'static [&'static str], &'static [Want]);

const ROWS: &[Row] = &[
    (
        "a logout keeps deleting",
        &["JSESSIONID=deleted; Expires=Thu, 01-Jan-1970 00:00:10 GMT; Path=/"],
        &[Want::Same],
    ),
    (
        "Max-Age=0 deletes",
        &["sid=; Max-Age=0; Path=/"],
        &[Want::Same],
    ),
    ("Max-Age=-1 deletes", &["sid=; Max-Age=-1"], &[Want::Same]),
    (
        "past Expires in every format delete",
        &[
            "a=; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "b=; Expires=Sunday, 06-Nov-94 08:49:37 GMT",
            "c=; Expires=Sun Nov  6 08:49:37 1994",
            "d=; Expires=Thu, 01-Jan-70 00:00:01 GMT",
            "e=; expires=thu, 01 jan 1970 00:00:00 gmt",
            "f=; EXPIRES=THU, 01-JAN-1970 00:00:10 GMT",
            "g=; Expires=1970 jan 1 00:00:01",
        ],
        &[
            Want::Same,
            Want::Same,
            Want::Same,
            Want::Same,
            Want::Same,
            Want::Same,
            Want::Same,
        ],
    ),
    (
        "far-future Expires in every format are capped",
        &[
            "a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Path=/",
            "b=2; Expires=Fri, 01-Jan-2100 00:00:00 GMT",
            "c=3; Expires=Saturday, 01-Jan-50 00:00:00 GMT; Secure",
            "d=4; Expires=Fri Jan  1 00:00:00 2100",
            "e=5; expires=2100 jan 1 00:00:00",
        ],
        &[
            Want::CappedExpires("a=1; Expires={limit}; Path=/"),
            Want::CappedExpires("b=2; Expires={limit}"),
            Want::CappedExpires("c=3; Expires={limit}; Secure"),
            Want::CappedExpires("d=4; Expires={limit}"),
            Want::CappedExpires("e=5; expires={limit}"),
        ],
    ),
    (
        "an Expires no browser can parse gains no lifetime",
        &[
            "a=1; Expires=never",
            "b=2; Expires=Fri, 01 Jan 2100",
            "c=3; Expires=30 Feb 2100 00:00:00",
            "d=4; Expires=01 Jan 2100 24:00:00",
        ],
        &[Want::Same, Want::Same, Want::Same, Want::Same],
    ),
    (
        "Max-Age above the cap is capped, within it kept",
        &[
            "a=1; Max-Age=31536000; Path=/",
            "b=2; Max-Age=60",
            "c=3; Max-Age=+99999999",
        ],
        &[
            Want::Is("a=1; Max-Age=1209600; Path=/"),
            Want::Same,
            Want::Is("c=3; Max-Age=+1209600"),
        ],
    ),
    (
        "both attributes are capped, and a deletion stays one",
        &[
            "a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Max-Age=63072000",
            "b=; Max-Age=0; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
        ],
        &[
            Want::CappedExpires("a=1; Expires={limit}; Max-Age=1209600"),
            Want::CappedExpires("b=; Max-Age=0; Expires={limit}"),
        ],
    ),
    (
        "every Set-Cookie line of one response is handled on its own",
        &[
            "JSESSIONID=deleted; Expires=Thu, 01-Jan-1970 00:00:10 GMT; Path=/",
            "long=1; Max-Age=31536000",
            "session=2; Path=/; HttpOnly",
            "far=3; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
            "junk=4; Expires=never",
        ],
        &[
            Want::Same,
            Want::Is("long=1; Max-Age=1209600"),
            Want::Same,
            Want::CappedExpires("far=3; Expires={limit}"),
            Want::Same,
        ],
    ),
];

const CAP: u64 = 14 * 86_400;

fn set_cookie_request(lines: &[&str], date: Option<&str>) -> Request<ReqBody> {
    let mut req = get("/set-cookie");
    for line in lines {
        req.headers_mut()
            .append("x-test-set-cookie", HeaderValue::from_str(line).unwrap());
    }
    if let Some(date) = date {
        req.headers_mut()
            .insert("x-test-date", HeaderValue::from_str(date).unwrap());
    }
    req
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Checks a capped line: `template` with `{limit}` an IMF-fixdate in `range`.
fn assert_capped(got: &str, template: &str, range: std::ops::RangeInclusive<u64>, ctx: &str) {
    let (head, tail) = template.split_once("{limit}").unwrap();
    let date = got
        .strip_prefix(head)
        .and_then(|rest| rest.strip_suffix(tail))
        .unwrap_or_else(|| panic!("{ctx}: {got:?} is not {template:?}"));
    let at = httpdate::parse_http_date(date)
        .unwrap_or_else(|_| panic!("{ctx}: {date:?} is no IMF-fixdate"))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(range.contains(&at), "{ctx}: {date} ({at}) not in {range:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_lifetimes_reach_the_client_capped_never_lengthened() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let client = proxy.client();
    for proto in BOTH {
        for (name, lines, wants) in ROWS {
            let before = unix_now();
            let resp = client.request(proto, set_cookie_request(lines, None)).await;
            let after = unix_now();
            let got: Vec<&str> = resp
                .headers
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            let ctx = format!("{proto:?} {name}");
            assert_eq!(got.len(), lines.len(), "{ctx}: {got:?}");
            // The upstream's Date may be up to a second behind the proxy's clock.
            let range = before - 1 + CAP..=after + CAP;
            for ((got, sent), want) in got.iter().zip(*lines).zip(*wants) {
                match want {
                    Want::Same => assert_eq!(got, sent, "{ctx}"),
                    Want::Is(line) => assert_eq!(got, line, "{ctx}: {sent}"),
                    Want::CappedExpires(t) => assert_capped(got, t, range.clone(), &ctx),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_is_capped_from_the_upstream_date_when_it_is_behind_and_a_bad_date_is_replaced() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let client = proxy.client();
    let far = ["a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT"];
    for proto in BOTH {
        // A Date a day behind: browsers measure Expires from it, so the cap does too.
        let behind = unix_now() - 86_400;
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(behind));
        let resp = client
            .request(proto, set_cookie_request(&far, Some(&date)))
            .await;
        assert_eq!(resp.headers["date"], date.as_str());
        let got = resp.headers["set-cookie"].to_str().unwrap();
        let ctx = format!("{proto:?} behind");
        assert_capped(
            got,
            "a=1; Expires={limit}",
            behind + CAP..=behind + CAP,
            &ctx,
        );

        // A Date that is no HTTP-date: replaced by the proxy's clock, and the cap from it.
        let before = unix_now();
        let resp = client
            .request(proto, set_cookie_request(&far, Some("24 Nov 2000")))
            .await;
        let after = unix_now();
        let date = resp.headers["date"].to_str().unwrap();
        let date = httpdate::parse_http_date(date).unwrap();
        let date = date.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!((before..=after).contains(&date), "{proto:?}: Date {date}");
        let got = resp.headers["set-cookie"].to_str().unwrap();
        let ctx = format!("{proto:?} bad date");
        assert_capped(
            got,
            "a=1; Expires={limit}",
            before + CAP..=after + CAP,
            &ctx,
        );
    }
}
