//! The cookie-date algorithm of RFC 6265 §5.1.1: how a browser reads the `Expires` attribute.
//!
//! Owns turning an `Expires` value into an instant, byte for byte as the RFC specifies: any of
//! the historical date formats, its tokens in any order, any case. Pure; must never log or put
//! in an error the value it reads.

use time::{Date, Month, PrimitiveDateTime, Time};

/// The instant a cookie-date denotes, in seconds since the Unix epoch (UTC; negative before
/// 1970), or `None` where RFC 6265 §5.1.1 fails to parse it — a browser then ignores the
/// `Expires` attribute.
///
/// The value is split into tokens at the delimiters (`\t`, space and the ASCII punctuation
/// other than `:`). In order, each token is taken as the first not yet found of: a time
/// (`h:m:s`, one or two digits each), a day of the month (one or two digits), a month (a token
/// starting with the first three letters of its English name, any case) and a year (two to
/// four digits); a field's digits may be followed by a non-digit and anything. Two-digit years
/// 70–99 are 19xx and 0–69 are 20xx. A value lacking any of the four, or with a year before
/// 1601, an hour above 23, a minute or second above 59, or a day that its month lacks (31 Apr,
/// 29 Feb 2100), fails.
///
/// ```
/// use webprom_edge::proxy::cookie::date::parse_cookie_date;
///
/// assert_eq!(parse_cookie_date(b"Thu, 01-Jan-1970 00:00:10 GMT"), Some(10));
/// assert_eq!(parse_cookie_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(784111777));
/// assert_eq!(parse_cookie_date(b"Fri, 01 Jan 2100"), None); // no time
/// ```
pub fn parse_cookie_date(value: &[u8]) -> Option<i64> {
    let mut time = None;
    let mut day = None;
    let mut month = None;
    let mut year = None;
    for token in value.split(|&b| is_delimiter(b)).filter(|t| !t.is_empty()) {
        if time.is_none()
            && let Some(hms) = time_token(token)
        {
            time = Some(hms);
        } else if day.is_none()
            && let Some(d) = leading_number(token, 1, 2)
        {
            day = Some(d);
        } else if month.is_none()
            && let Some(m) = month_token(token)
        {
            month = Some(m);
        } else if year.is_none()
            && let Some(y) = leading_number(token, 2, 4)
        {
            year = Some(y);
        }
    }
    let ((hour, minute, second), day, month, year) = (time?, day?, month?, year?);
    let year = match year {
        0..=69 => year + 2000,
        70..=99 => year + 1900,
        _ => year,
    };
    if !(1..=31).contains(&day) || year < 1601 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let date = Date::from_calendar_date(i32::from(year), month, u8::try_from(day).ok()?).ok()?;
    let time = Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    Some(
        PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// `delimiter = %x09 / %x20-2F / %x3B-40 / %x5B-60 / %x7B-7E`.
fn is_delimiter(b: u8) -> bool {
    matches!(b, 0x09 | 0x20..=0x2F | 0x3B..=0x40 | 0x5B..=0x60 | 0x7B..=0x7E)
}

/// The number of leading digits of `token` (`min` to `max` of them, and then a non-digit or
/// the end): `day-of-month = 1*2DIGIT [ non-digit *OCTET ]`, `year = 2*4DIGIT [ … ]`.
fn leading_number(token: &[u8], min: usize, max: usize) -> Option<u16> {
    let (n, len) = digits(token);
    (min..=max).contains(&len).then_some(n)
}

/// `time = hms-time [ non-digit *OCTET ]`, `hms-time = time-field ":" time-field ":"
/// time-field`, `time-field = 1*2DIGIT`.
fn time_token(token: &[u8]) -> Option<(u16, u16, u16)> {
    let field = |rest: &[u8]| {
        let (n, len) = digits(rest);
        (1..=2).contains(&len).then_some((n, len))
    };
    let (hour, len) = field(token)?;
    let rest = token[len..].strip_prefix(b":")?;
    let (minute, len) = field(rest)?;
    let rest = rest[len..].strip_prefix(b":")?;
    let (second, _) = field(rest)?;
    Some((hour, minute, second))
}

/// `month = ( "jan" / "feb" / … / "dec" ) *OCTET`, case-insensitively.
fn month_token(token: &[u8]) -> Option<Month> {
    const NAMES: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let prefix = token.get(..3)?;
    let i = NAMES.iter().position(|m| prefix.eq_ignore_ascii_case(*m))?;
    Month::try_from(u8::try_from(i + 1).ok()?).ok()
}

/// The value of the leading digits of `s` (saturating; only up to four are ever used) and
/// how many there are.
fn digits(s: &[u8]) -> (u16, usize) {
    let len = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let n = s[..len].iter().fold(0u16, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u16::from(d - b'0'))
    });
    (n, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of a UTC date and time, by the `time` crate.
    fn at(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> Option<i64> {
        let date = Date::from_calendar_date(y, Month::try_from(mo).unwrap(), d).unwrap();
        let time = Time::from_hms(h, mi, s).unwrap();
        Some(
            PrimitiveDateTime::new(date, time)
                .assume_utc()
                .unix_timestamp(),
        )
    }

    #[test]
    fn cookie_dates_parse_as_rfc_6265_section_5_1_1_says() {
        let rows: &[(&[u8], Option<i64>)] = &[
            // The formats servers send.
            (b"Sun, 06 Nov 1994 08:49:37 GMT", at(1994, 11, 6, 8, 49, 37)), // IMF-fixdate
            (
                b"Sunday, 06-Nov-94 08:49:37 GMT",
                at(1994, 11, 6, 8, 49, 37),
            ), // RFC 850
            (b"Sun Nov  6 08:49:37 1994", at(1994, 11, 6, 8, 49, 37)),      // asctime
            (b"Thu, 01-Jan-1970 00:00:10 GMT", Some(10)),                   // Netscape
            (b"Thu, 01-Jan-70 00:00:01 GMT", Some(1)),
            (b"Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            (b"Wed, 09 Jun 2021 10:18:14 GMT", at(2021, 6, 9, 10, 18, 14)),
            (
                b"Fri, 31 Dec 9999 23:59:59 GMT",
                at(9999, 12, 31, 23, 59, 59),
            ),
            (b"Tue, 19 Jan 2038 03:14:08 GMT", Some(2_147_483_648)),
            // Any case, any month spelling that starts right.
            (b"sun, 06 nov 1994 08:49:37 gmt", at(1994, 11, 6, 8, 49, 37)),
            (b"SUN, 06 NOV 1994 08:49:37 GMT", at(1994, 11, 6, 8, 49, 37)),
            (b"6 November 1994 08:49:37", at(1994, 11, 6, 8, 49, 37)),
            (b"01 70 0:0:1 Janbearpig", Some(1)),
            // Tokens in any order; the first token that fits a field takes it.
            (b"1970 1 00:00:01 jan", Some(1)),
            (b"01 0:00:1 JANU 1970", Some(1)),
            (b"00:00:01 1970 jan 1", Some(1)),
            (b"Jan 1 1970 00:00:01", Some(1)),
            (b"1994 Nov 6 08:49:37", at(1994, 11, 6, 8, 49, 37)),
            (b"06 94 Nov 08:49:37", at(1994, 11, 6, 8, 49, 37)),
            // Every delimiter separates; non-delimiters stick to a token.
            (b"Sun,06-Nov-1994/08:49:37", at(1994, 11, 6, 8, 49, 37)),
            (b"\t06\t Nov\t1994\t08:49:37\t", at(1994, 11, 6, 8, 49, 37)),
            (b"!!06@@Nov##1994$$08:49:37%%", at(1994, 11, 6, 8, 49, 37)),
            (b"06 Nov 1994 08:49:37.000", at(1994, 11, 6, 8, 49, 37)),
            // A field's digits may be followed by a non-digit and anything.
            (b"6th Nov 1994 08:49:37", at(1994, 11, 6, 8, 49, 37)),
            (b"06 Nov 1994AD 08:49:37Z", at(1994, 11, 6, 8, 49, 37)),
            (b"06 Nov 1994 08:49:37\xff", at(1994, 11, 6, 8, 49, 37)),
            (b"06 Nov 1994 8:9:7", at(1994, 11, 6, 8, 9, 7)),
            // Extra tokens are ignored, including a second time, day or year.
            (
                b"Sun, 06 Nov 1994 08:49:37 GMT+0100 (CET)",
                at(1994, 11, 6, 8, 49, 37),
            ),
            (b"06 Nov 1994 08:49:37 10:00:00", at(1994, 11, 6, 8, 49, 37)),
            (b"06 Nov 1994 08:49:37 2020 Dec", at(1994, 11, 6, 8, 49, 37)),
            (
                b"xx 06 zz Nov qq 1994 ww 08:49:37 y",
                at(1994, 11, 6, 8, 49, 37),
            ),
            // The first token that starts like a month is the month, even a word.
            (b"junk 06 Nov 1994 08:49:37", at(1994, 6, 6, 8, 49, 37)),
            (
                b"Marvellous 06 Nov 1994 08:49:37",
                at(1994, 3, 6, 8, 49, 37),
            ),
            // Two-digit years: 70–99 → 19xx, 0–69 → 20xx, by value ("0099" too); three-digit
            // years stay before 1601.
            (b"01 Jan 69 00:00:00", at(2069, 1, 1, 0, 0, 0)),
            (b"01 Jan 00 00:00:00", at(2000, 1, 1, 0, 0, 0)),
            (b"01 Jan 99 00:00:00", at(1999, 1, 1, 0, 0, 0)),
            (b"01 Jan 0099 00:00:00", at(1999, 1, 1, 0, 0, 0)),
            (b"01 Jan 1601 00:00:00", at(1601, 1, 1, 0, 0, 0)),
            (b"01 Jan 2100 00:00:00", at(2100, 1, 1, 0, 0, 0)),
            // Leap days.
            (b"29 Feb 2000 00:00:00", at(2000, 2, 29, 0, 0, 0)),
            (b"29 Feb 2024 12:00:00", at(2024, 2, 29, 12, 0, 0)),
            // Fails: a field is missing.
            (b"", None),
            (b"never", None),
            (b"0", None),
            (b"-1", None),
            (b"Fri, 01 Jan 2100", None),
            (b"01 Jan 2100 10:00", None),
            (b"Jan 2100 10:00:00", None),
            (b"01 2100 10:00:00", None),
            (b"01 Jan 10:00:00", None),
            (b"2100-01-01T10:00:00Z", None), // "01T10" is no time and takes no field
            (b"1735689600", None),
            // Fails: a field out of range.
            (b"01 Jan 1600 00:00:00", None),
            (b"01 Jan 100 00:00:00", None),
            (b"31 Dec 1000 23:59:59", None),
            (b"00 Jan 2000 00:00:00", None),
            (b"32 Jan 2000 00:00:00", None),
            (b"01 Jan 2000 24:00:00", None),
            (b"01 Jan 2000 23:60:00", None),
            (b"01 Jan 2000 23:59:60", None), // no leap seconds
            // Fails: no such day.
            (b"30 Feb 2000 00:00:00", None),
            (b"29 Feb 2100 00:00:00", None),
            (b"29 Feb 2023 00:00:00", None),
            (b"31 Apr 2030 00:00:00", None),
            // Too many digits: the token fits no field.
            (b"001 Jan 2000 00:00:00", None),
            (b"01 Jan 12000 00:00:00", None),
            (b"01 Jan 2000 100:00:00", None),
            (b"01 Jan 2000 00:00:000", None),
            (b"01 Jan 2000 0:0", None),
            // A one-digit year token fits no field (a day was already found).
            (b"01 Jan 5 00:00:00", None),
        ];
        for (i, &(input, want)) in rows.iter().enumerate() {
            assert_eq!(
                parse_cookie_date(input),
                want,
                "row {i}: {}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
