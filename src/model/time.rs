//! Times. Alohub sends `YYYY-MM-DD HH:mm:ss` in the account's local zone with no offset; alohook
//! stores Unix seconds (call times) and Unix microseconds (receipt times) and answers RFC 3339.

use jiff::{Timestamp, civil, tz::TimeZone};

/// Call times are accepted in these years (of the local date in the configured zone). Outside,
/// a value is a placeholder such as `0001-01-01 00:00:00` or `1970-01-01 07:00:00`, not a call;
/// and before 1906 many zones used local mean time, whose offset (`+07:06:30`) RFC 3339 cannot
/// write.
pub const ACCEPTED_YEARS: std::ops::RangeInclusive<i16> = 2000..=2099;

/// Parses a call time: `YYYY-MM-DD HH:mm:ss` (or with `T`) as a local time in `tz`, or an
/// ISO 8601 / RFC 3339 time with an offset. Returns Unix seconds; `None` when unreadable or
/// outside [`ACCEPTED_YEARS`].
pub fn parse_call_time(text: &str, tz: &TimeZone) -> Option<i64> {
    let text = text.trim();
    let instant = match text.parse::<Timestamp>() {
        Ok(ts) => ts,
        Err(_) => {
            let local = civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", text)
                .or_else(|_| text.parse::<civil::DateTime>())
                .ok()?;
            tz.to_ambiguous_zoned(local).compatible().ok()?.timestamp()
        }
    };
    let zoned = instant.to_zoned(tz.clone());
    let whole_minutes = zoned.offset().seconds() % 60 == 0;
    (ACCEPTED_YEARS.contains(&zoned.year()) && whole_minutes).then(|| instant.as_second())
}

/// Unix seconds as RFC 3339 with the offset of `tz` at that instant: `2024-01-13T15:00:30+07:00`.
pub fn format_local(seconds: i64, tz: &TimeZone) -> String {
    match Timestamp::from_second(seconds) {
        Ok(ts) => ts
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
        Err(_) => seconds.to_string(),
    }
}

/// Unix microseconds as RFC 3339 UTC: `2024-01-13T08:00:30.123456Z`.
pub fn format_utc_micros(micros: i64) -> String {
    match Timestamp::from_microsecond(micros) {
        Ok(ts) => ts.to_string(),
        Err(_) => micros.to_string(),
    }
}

/// Now, in Unix microseconds.
pub fn now_micros() -> i64 {
    Timestamp::now().as_microsecond()
}

/// A bound of a time-range filter: RFC 3339, or a day `YYYY-MM-DD` in `tz`.
/// `end_of_day` makes a day mean its last second (an inclusive `to`); an RFC 3339 instant is
/// inclusive as given, truncated to whole seconds like the stored times.
pub fn parse_range_bound(text: &str, tz: &TimeZone, end_of_day: bool) -> Option<i64> {
    let text = text.trim();
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(ts.as_second());
    }
    let date = civil::Date::strptime("%Y-%m-%d", text).ok()?;
    let day = if end_of_day {
        date.tomorrow().ok()?
    } else {
        date
    };
    let start = tz
        .to_ambiguous_zoned(day.to_datetime(civil::Time::midnight()))
        .compatible()
        .ok()?
        .timestamp()
        .as_second();
    Some(if end_of_day { start - 1 } else { start })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm() -> TimeZone {
        TimeZone::get("Asia/Ho_Chi_Minh").unwrap()
    }

    #[test]
    fn local_time_is_in_the_configured_zone() {
        let s = parse_call_time("2024-01-13 15:00:30", &hcm()).unwrap();
        assert_eq!(s, 1705132830);
        assert_eq!(format_local(s, &hcm()), "2024-01-13T15:00:30+07:00");
    }

    #[test]
    fn offsets_are_honoured() {
        let tz = hcm();
        assert_eq!(
            parse_call_time("2024-01-13T08:00:30Z", &tz),
            Some(1705132830)
        );
        assert_eq!(
            parse_call_time("2024-01-13T15:00:30+07:00", &tz),
            Some(1705132830)
        );
        assert_eq!(
            parse_call_time("2024-01-13T15:00:30", &tz),
            Some(1705132830)
        );
    }

    #[test]
    fn garbage_is_none() {
        for bad in [
            "",
            "yesterday",
            "2024-13-45 99:00:00",
            "0000-00-00 00:00:00",
            "0001-01-01 00:00:00",
            "1900-01-01 00:00:00",
            "1970-01-01 07:00:00",
            "1999-12-31T16:59:59Z",
            "-0001-01-01T00:00:00Z",
            "2100-01-01 00:00:00",
        ] {
            assert_eq!(parse_call_time(bad, &hcm()), None, "{bad}");
        }
    }

    #[test]
    fn the_edges_of_the_accepted_years() {
        let tz = hcm();
        let first = parse_call_time("2000-01-01 00:00:00", &tz).unwrap();
        assert_eq!(format_local(first, &tz), "2000-01-01T00:00:00+07:00");
        assert!(parse_call_time("2099-12-31 23:59:59", &tz).is_some());
    }

    #[test]
    fn other_zones_change_the_instant() {
        let utc = TimeZone::UTC;
        assert_eq!(
            parse_call_time("2024-01-13 15:00:30", &utc),
            Some(1705132830 + 7 * 3600)
        );
    }

    #[test]
    fn day_bounds() {
        let tz = hcm();
        let from = parse_range_bound("2024-01-13", &tz, false).unwrap();
        let to = parse_range_bound("2024-01-13", &tz, true).unwrap();
        assert_eq!(format_local(from, &tz), "2024-01-13T00:00:00+07:00");
        assert_eq!(format_local(to, &tz), "2024-01-13T23:59:59+07:00");
        assert_eq!(parse_range_bound("13/01/2024", &tz, false), None);
    }

    #[test]
    fn utc_receipts() {
        assert_eq!(
            format_utc_micros(1_705_132_830_000_000),
            "2024-01-13T08:00:30Z"
        );
    }
}
