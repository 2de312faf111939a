//! `strftime_now(format)`: the current date as Python's `datetime.now().strftime(format)`
//! prints it, for templates that put today's date in the system prompt (Llama 3.x, Granite,
//! Mistral Small...). Only UTC is known here; the C locale's names are used, as glibc does.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

const WEEKDAY_NAMES: [&str; 7] =
    ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A calendar moment in UTC, broken down the way strftime reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DateTime {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday
    weekday: u32,
    /// 1..=366
    day_of_year: u32,
}

impl DateTime {
    pub(crate) fn from_system_time(time: SystemTime) -> DateTime {
        let seconds = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        };
        DateTime::from_unix_seconds(seconds)
    }

    pub(crate) fn from_unix_seconds(seconds: i64) -> DateTime {
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let day_of_year = (days - days_from_civil(year, 1, 1) + 1) as u32;
        DateTime {
            year,
            month,
            day,
            hour: second_of_day / 3600,
            minute: second_of_day / 60 % 60,
            second: second_of_day % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
            day_of_year,
        }
    }

    /// Formats like glibc's strftime in the C locale, including its `-` (no padding) flag.
    /// A directive it does not know is copied as written, as glibc does.
    pub(crate) fn format(&self, format: &str) -> String {
        let mut out = String::new();
        let mut chars = format.chars().peekable();
        while let Some(ch) = chars.next() {
            if ch != '%' {
                out.push(ch);
                continue;
            }
            let unpadded = chars.next_if_eq(&'-').is_some();
            let Some(directive) = chars.next() else {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                break;
            };
            if !self.write_directive(directive, unpadded, &mut out) {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(directive);
            }
        }
        out
    }

    fn write_directive(&self, directive: char, unpadded: bool, out: &mut String) -> bool {
        let number = |out: &mut String, value: i64, width: usize| {
            let _ = if unpadded { write!(out, "{value}") } else { write!(out, "{value:0width$}") };
        };
        let weekday_name = WEEKDAY_NAMES[self.weekday as usize % 7];
        let month_name = MONTH_NAMES[(self.month as usize + 11) % 12];
        let hour12 = match self.hour % 12 {
            0 => 12,
            hour => hour,
        };
        match directive {
            'a' => out.push_str(&weekday_name[..3]),
            'A' => out.push_str(weekday_name),
            'b' | 'h' => out.push_str(&month_name[..3]),
            'B' => out.push_str(month_name),
            'C' => number(out, self.year.div_euclid(100), 2),
            'd' => number(out, self.day.into(), 2),
            'e' => {
                let _ = if unpadded { write!(out, "{}", self.day) } else { write!(out, "{:2}", self.day) };
            }
            'f' => out.push_str("000000"),
            'H' => number(out, self.hour.into(), 2),
            'I' => number(out, hour12.into(), 2),
            'j' => number(out, self.day_of_year.into(), 3),
            'm' => number(out, self.month.into(), 2),
            'M' => number(out, self.minute.into(), 2),
            'p' => out.push_str(if self.hour < 12 { "AM" } else { "PM" }),
            'S' => number(out, self.second.into(), 2),
            'u' => number(out, (if self.weekday == 0 { 7 } else { self.weekday }).into(), 1),
            'w' => number(out, self.weekday.into(), 1),
            'y' => number(out, self.year.rem_euclid(100), 2),
            'Y' => {
                let _ = write!(out, "{}", self.year);
            }
            // A naive datetime (what datetime.now() returns) has no zone: Python prints nothing.
            'z' | 'Z' => {}
            'n' => out.push('\n'),
            't' => out.push('\t'),
            '%' => out.push('%'),
            'D' | 'x' => out.push_str(&self.format("%m/%d/%y")),
            'F' => out.push_str(&self.format("%Y-%m-%d")),
            'T' | 'X' => out.push_str(&self.format("%H:%M:%S")),
            'R' => out.push_str(&self.format("%H:%M")),
            'r' => out.push_str(&self.format("%I:%M:%S %p")),
            'c' => out.push_str(&self.format("%a %b %e %H:%M:%S %Y")),
            _ => return false,
        }
        true
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01, the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `unix_seconds` in UTC formatted as C's strftime would (for other parts of baimo that print
/// dates: usage records).
pub fn format_utc(unix_seconds: i64, format: &str) -> String {
    DateTime::from_unix_seconds(unix_seconds).format(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python_strftime() {
        // 2025-03-14T09:26:53Z, a Friday.
        let moment = DateTime::from_unix_seconds(1_741_944_413);
        assert_eq!(moment.format("%d %b %Y"), "14 Mar 2025");
        assert_eq!(moment.format("%B %-d, %Y"), "March 14, 2025");
        assert_eq!(moment.format("%A %Y-%m-%d %H:%M:%S %p %j"), "Friday 2025-03-14 09:26:53 AM 073");
        assert_eq!(
            moment.format("%c|%e|%y|%I|%u|%w|%%|%Z|%Q"),
            "Fri Mar 14 09:26:53 2025|14|25|09|5|5|%||%Q"
        );
        assert_eq!(moment.format("trailing %"), "trailing %");
    }

    #[test]
    fn handles_calendar_edges() {
        assert_eq!(DateTime::from_unix_seconds(0).format("%F %T %a %j"), "1970-01-01 00:00:00 Thu 001");
        // 2024-02-29 (leap day) and 2024-12-31 (day 366).
        assert_eq!(DateTime::from_unix_seconds(1_709_164_800).format("%F %j"), "2024-02-29 060");
        assert_eq!(DateTime::from_unix_seconds(1_735_603_200).format("%F %j"), "2024-12-31 366");
        assert_eq!(DateTime::from_unix_seconds(-1).format("%F %T"), "1969-12-31 23:59:59");
        // Far-out values neither panic nor overflow.
        let _ = DateTime::from_unix_seconds(i64::MAX).format("%c");
        let _ = DateTime::from_unix_seconds(i64::MIN).format("%c");
    }
}
