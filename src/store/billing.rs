//! The billing rules the store applies when it records a call: how many seconds of a call are billable, and which
//! UTC day they count on. Pure functions, shared by every back end so that they bill alike. `docs/billing.md` is
//! the operator-facing statement of the same rules.

use std::fmt;

use crate::call::record::CallRecord;

use super::InvalidInput;

/// Billable seconds of one call: whole seconds from answer to end, **rounded down**, 0 when the call was never
/// answered. This is the call record's `duration_secs`, which the media core measures on its own clock; it is the
/// same count the live monthly budget (`sched::admission`) is charged with, one whole second at a time, so an
/// invoice never exceeds what admission allowed.
///
/// A record that claims seconds without an answer is refused rather than billed. The wall-clock timestamps are not
/// cross-checked against `duration_secs`: they come from the system clock, which may step, and a record refused
/// here would be a call lost from the bill.
pub fn billable_seconds(record: &CallRecord) -> Result<u64, InvalidInput> {
    if record.answer_at_ms.is_none() && record.duration_secs != 0 {
        return Err(InvalidInput::new("duration_secs", "a call that was never answered has no duration"));
    }
    Ok(record.duration_secs)
}

/// The UTC day a call's usage counts on: the day it was answered, or the day of its INVITE when it never was.
/// A call that crosses midnight counts wholly on the day it started.
pub fn usage_day(record: &CallRecord) -> Result<UtcDay, InvalidInput> {
    let start_ms = record.answer_at_ms.unwrap_or(record.invite_at_ms);
    let ms = i64::try_from(start_ms).map_err(|_| InvalidInput::new("answer_at_ms", "out of range"))?;
    Ok(UtcDay::from_unix_ms(ms))
}

/// A calendar day in UTC, as days since 1970-01-01. Displayed and stored as `YYYY-MM-DD`, which sorts as it
/// compares.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcDay(i32);

impl UtcDay {
    /// Years 0000 to 9999, so that the text form is always `YYYY-MM-DD`.
    const MIN: i32 = -719_528;
    const MAX: i32 = 2_932_896;

    /// The day that contains `ms` milliseconds since the Unix epoch (clamped to years 0000..=9999).
    pub fn from_unix_ms(ms: i64) -> UtcDay {
        let days = ms.div_euclid(86_400_000);
        UtcDay(days.clamp(Self::MIN as i64, Self::MAX as i64) as i32)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Result<UtcDay, InvalidInput> {
        let bad = || InvalidInput::new("day", format!("{text:?} is not a date of the form YYYY-MM-DD"));
        let b = text.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, InvalidInput> {
            let s = &text[r];
            if !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse::<i64>().map_err(|_| bad())
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return Err(bad());
        }
        Ok(UtcDay(days_from_civil(y, m, d) as i32))
    }

    /// Milliseconds since the Unix epoch at 00:00 UTC of this day.
    pub fn start_unix_ms(&self) -> i64 {
        self.0 as i64 * 86_400_000
    }

    /// The following day.
    pub fn next(&self) -> UtcDay {
        UtcDay((self.0 + 1).min(Self::MAX))
    }

    /// The first day of this day's calendar month.
    pub fn month_start(&self) -> UtcDay {
        let (y, m, _) = civil_from_days(self.0 as i64);
        UtcDay(days_from_civil(y, m, 1) as i32)
    }

    /// The first day of the following calendar month (clamped like every day).
    pub fn next_month_start(&self) -> UtcDay {
        let (y, m, _) = civil_from_days(self.0 as i64);
        let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        UtcDay((days_from_civil(y, m, 1)).clamp(Self::MIN as i64, Self::MAX as i64) as i32)
    }

    /// The month as `YYYY-MM`, for grouping usage by month.
    pub fn month(&self) -> String {
        let (y, m, _) = civil_from_days(self.0 as i64);
        format!("{y:04}-{m:02}")
    }
}

impl fmt::Display for UtcDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0 as i64);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl serde::Serialize for UtcDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::record::EndReason;

    fn record(answer_at_ms: Option<u64>, end_at_ms: u64, duration_secs: u64) -> CallRecord {
        CallRecord {
            tenant: "acme".into(),
            call_sid: "CA1".into(),
            sip_call_id: "x".into(),
            from: "+15550001".into(),
            to: "+15550002".into(),
            app: "a".into(),
            invite_at_ms: 1_000,
            answer_at_ms,
            end_at_ms,
            duration_secs,
            end_reason: EndReason::CallerBye,
            codec: "PCMU",
            transport: "sip",
            packets_in: 0,
            packets_out: 0,
            packets_lost: 0,
            dtmf_count: 0,
        }
    }

    #[test]
    fn billable_is_the_rounded_down_duration_and_zero_unanswered() {
        assert_eq!(billable_seconds(&record(Some(2_000), 12_999, 10)), Ok(10));
        assert_eq!(billable_seconds(&record(None, 12_999, 0)), Ok(0));
        assert!(billable_seconds(&record(None, 12_999, 3)).is_err());
    }

    #[test]
    fn days_round_trip_and_known_dates() {
        assert_eq!(UtcDay::from_unix_ms(0).to_string(), "1970-01-01");
        assert_eq!(UtcDay::from_unix_ms(-1).to_string(), "1969-12-31");
        assert_eq!(UtcDay::from_unix_ms(951_782_400_000).to_string(), "2000-02-29");
        assert_eq!(UtcDay::from_unix_ms(1_709_251_199_999).to_string(), "2024-02-29");
        assert_eq!(UtcDay::parse("2024-02-29").unwrap().start_unix_ms(), 1_709_164_800_000);
        assert!(UtcDay::parse("2023-02-29").is_err());
        assert!(UtcDay::parse("2024-13-01").is_err());
        assert!(UtcDay::parse("2024-1-01").is_err());
        assert!(UtcDay::parse("+024-01-01").is_err());
        for days in (-800_000..3_000_000).step_by(997) {
            let day = UtcDay::from_unix_ms(days as i64 * 86_400_000);
            assert_eq!(UtcDay::parse(&day.to_string()).unwrap(), day, "{day}");
        }
        assert_eq!(UtcDay::parse("2024-05-31").unwrap().month(), "2024-05");
        assert_eq!(UtcDay::parse("2024-12-31").unwrap().next().to_string(), "2025-01-01");
    }

    #[test]
    fn month_bounds() {
        let d = |t: &str| UtcDay::parse(t).unwrap();
        assert_eq!(d("2024-02-29").month_start(), d("2024-02-01"));
        assert_eq!(d("2024-02-01").month_start(), d("2024-02-01"));
        assert_eq!(d("2024-02-29").next_month_start(), d("2024-03-01"));
        assert_eq!(d("2024-12-31").next_month_start(), d("2025-01-01"));
        assert_eq!(d("2026-11-23").next_month_start(), d("2026-12-01"));
    }
}
