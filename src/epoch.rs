//! Epochs: UTC calendar days, and the arithmetic on days that the rest of the crate uses.
//!
//! Owns [`Epoch`] (a day, `YYYY-MM-DD`, years 0000..=9999), [`SECS_PER_DAY`] and
//! [`whole_days`]: the only place a day's length is written down. The pseudonym keys are kept
//! per epoch, the access log names its day files by epoch, retention counts in epochs. Must
//! never read the clock except in [`Epoch::today`], and never panic on any date or duration.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use time::Date;

/// Seconds in a UTC day (a Unix-time day: leap seconds are not counted).
pub const SECS_PER_DAY: u64 = 86_400;

/// The whole days in `d`, rounded down (a retention or a lifetime given in the config),
/// saturating at `i64::MAX`.
pub fn whole_days(d: Duration) -> i64 {
    i64::try_from(d.as_secs() / SECS_PER_DAY).unwrap_or(i64::MAX)
}

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;
/// Days from 1970-01-01 to 0000-01-01 and to 9999-12-31: epochs stay four-digit years.
const MIN_DAYS: i32 = -719_528;
const MAX_DAYS: i32 = 2_932_896;

/// A UTC calendar day, shown as `YYYY-MM-DD`: the epoch of a pseudonym key and the day of an
/// access-log day file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(i32);

impl Epoch {
    /// The epoch `days` days after 1970-01-01 (clamped to years 0000..=9999).
    pub fn from_days(days: i32) -> Epoch {
        Epoch(days.clamp(MIN_DAYS, MAX_DAYS))
    }

    /// Days since 1970-01-01.
    pub fn days(self) -> i32 {
        self.0
    }

    /// The UTC day of a Unix time in seconds (clamped to years 0000..=9999).
    pub fn from_unix_secs(secs: i64) -> Epoch {
        let days = secs
            .div_euclid(SECS_PER_DAY as i64)
            .clamp(i64::from(MIN_DAYS), i64::from(MAX_DAYS));
        Epoch(i32::try_from(days).unwrap_or(MAX_DAYS))
    }

    /// The current UTC day.
    pub fn today() -> Epoch {
        Epoch::from_unix_secs(time::OffsetDateTime::now_utc().unix_timestamp())
    }

    /// The day after (saturating at 9999-12-31).
    pub fn next(self) -> Epoch {
        Epoch::from_days(self.0.saturating_add(1))
    }

    /// The day before (saturating at 0000-01-01).
    pub fn prev(self) -> Epoch {
        Epoch::from_days(self.0.saturating_sub(1))
    }

    /// The epoch `n` days later (negative: earlier), clamped.
    pub fn add_days(self, n: i64) -> Epoch {
        let days = i64::from(self.0)
            .saturating_add(n)
            .clamp(i64::from(MIN_DAYS), i64::from(MAX_DAYS));
        Epoch(i32::try_from(days).unwrap_or(MAX_DAYS))
    }

    /// Days from `self` to `other`: positive when `other` is later.
    pub fn days_between(self, other: Epoch) -> i64 {
        i64::from(other.0) - i64::from(self.0)
    }

    /// Days from `self` until `later` (the same as [`Epoch::days_between`]).
    pub fn days_until(self, later: Epoch) -> i64 {
        self.days_between(later)
    }

    fn date(self) -> Option<Date> {
        Date::from_julian_day(self.0.checked_add(UNIX_EPOCH_JULIAN_DAY)?).ok()
    }
}

impl Epoch {
    /// Appends `YYYY-MM-DD` without the formatting machinery (the access log's hot path).
    pub fn write_ymd(self, out: &mut Vec<u8>) {
        let (y, m, d) = match self.date() {
            Some(date) => (date.year() as u32, u8::from(date.month()), date.day()),
            None => (0, 0, 0),
        };
        let digits = [
            b'0' + (y / 1000 % 10) as u8,
            b'0' + (y / 100 % 10) as u8,
            b'0' + (y / 10 % 10) as u8,
            b'0' + (y % 10) as u8,
            b'-',
            b'0' + m / 10,
            b'0' + m % 10,
            b'-',
            b'0' + d / 10,
            b'0' + d % 10,
        ];
        out.extend_from_slice(&digits);
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.date() {
            Some(d) => write!(
                f,
                "{:04}-{:02}-{:02}",
                d.year(),
                u8::from(d.month()),
                d.day()
            ),
            None => f.write_str("0000-00-00"),
        }
    }
}

/// An epoch that is not a valid `YYYY-MM-DD` date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a date of the form YYYY-MM-DD")]
pub struct EpochParseError {
    input: String,
}

impl FromStr for Epoch {
    type Err = EpochParseError;

    fn from_str(s: &str) -> Result<Epoch, EpochParseError> {
        let err = || EpochParseError {
            input: s.chars().take(32).collect(),
        };
        let b = s.as_bytes();
        let shape_ok = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !shape_ok {
            return Err(err());
        }
        let num = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<u16>().ok());
        let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
            return Err(err());
        };
        let month = u8::try_from(m)
            .ok()
            .and_then(|m| time::Month::try_from(m).ok())
            .ok_or_else(err)?;
        let day = u8::try_from(d).map_err(|_| err())?;
        let date = Date::from_calendar_date(i32::from(y), month, day).map_err(|_| err())?;
        Ok(Epoch(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Epoch {
        s.parse().unwrap()
    }

    #[test]
    fn epoch_text_and_arithmetic() {
        // (unix seconds, day)
        let cases: &[(i64, &str)] = &[
            (0, "1970-01-01"),
            (86_399, "1970-01-01"),
            (86_400, "1970-01-02"),
            (-1, "1969-12-31"),
            (1_795_615_387, "2026-11-25"),
            (951_782_400, "2000-02-29"),
            (253_402_300_799, "9999-12-31"),
            (i64::MAX, "9999-12-31"),
            (i64::MIN, "0000-01-01"),
        ];
        for &(secs, day) in cases {
            let e = Epoch::from_unix_secs(secs);
            assert_eq!(e.to_string(), day, "{secs}");
            assert_eq!(ep(day), e, "{day}");
        }
        let d = ep("2026-12-31");
        assert_eq!(d.next(), ep("2027-01-01"));
        assert_eq!(d.next().prev(), d);
        assert_eq!(ep("2024-02-28").next(), ep("2024-02-29"));
        assert!(ep("2026-01-01") < ep("2026-01-02"));
        assert_eq!(ep("2026-01-01").days_between(ep("2026-03-01")), 59);
        assert_eq!(ep("2026-03-01").days_between(ep("2026-01-01")), -59);
        assert_eq!(ep("2026-01-01").days_until(ep("2026-01-31")), 30);
        assert_eq!(ep("9999-12-31").next(), ep("9999-12-31"));
        assert_eq!(ep("1970-01-01").days(), 0);
        let today = Epoch::today();
        assert!(today > ep("2025-01-01"));

        for bad in [
            "",
            "2026-1-01",
            "2026-13-01",
            "2026-02-30",
            "2026/01/01",
            "+026-01-01",
            "2026-01-01x",
            "２０２６-01-01",
            "2026-00-10",
            "2026-01-00",
        ] {
            assert!(bad.parse::<Epoch>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn whole_days_round_down_and_saturate() {
        // (seconds, whole days)
        let cases: &[(u64, i64)] = &[
            (0, 0),
            (86_399, 0),
            (86_400, 1),
            (30 * 86_400 + 1, 30),
            (u64::MAX, (u64::MAX / 86_400) as i64),
        ];
        for &(secs, days) in cases {
            assert_eq!(whole_days(Duration::from_secs(secs)), days, "{secs}");
        }
    }
}
