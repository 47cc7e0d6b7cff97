//! Wall-clock time as the records and webhooks write it. The media and
//! call cores take `now` as an input instead; only edges read this.
//! Dates are UTC and proleptic Gregorian (Howard Hinnant's civil-date
//! algorithms), without a date crate.

/// Milliseconds since the Unix epoch (0 if the clock is before it): the
/// timestamps of calls, transcripts and webhooks.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
    /// 0 = Sunday.
    pub weekday: u32,
}

/// The UTC date and time `ms` after the epoch.
pub fn civil(ms: i64) -> Civil {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem % 3600 / 60) as u32,
        second: (rem % 60) as u32,
        millis: ms.rem_euclid(1000) as u32,
        // 1970-01-01 was a Thursday.
        weekday: (days + 4).rem_euclid(7) as u32,
    }
}

/// Days from the epoch to a date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 UTC with milliseconds: `2026-12-03T14:05:09.120Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let c = civil(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
    )
}

/// A time as a user writes it: Unix milliseconds (`1796307661863`), a date
/// (`2026-12-03`, midnight UTC) or an RFC 3339 UTC time
/// (`2026-12-03T14:05`, `2026-12-03T14:05:09Z`, `...09.120Z`).
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (mut h, mut m, mut sec, mut ms) = (0u32, 0u32, 0u32, 0u32);
    if let Some(t) = time {
        let (hms, frac) = match t.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (t, None),
        };
        let mut p = hms.splitn(3, ':');
        h = p.next()?.parse().ok()?;
        m = p.next()?.parse().ok()?;
        if let Some(x) = p.next() {
            sec = x.parse().ok()?;
        }
        if let Some(f) = frac {
            let digits: String = f.chars().take(3).collect();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            ms = format!("{digits:0<3}").parse().ok()?;
        }
        if h > 23 || m > 59 || sec > 60 {
            return None;
        }
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec);
    Some(secs * 1000 + i64::from(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_round_trip() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(civil(0).weekday, 4);
        // 2026-12-03 is a Thursday.
        let t = parse_time_ms("2026-12-03T14:05:09.12Z");
        assert_eq!(
            t.map(rfc3339_ms).as_deref(),
            Some("2026-12-03T14:05:09.120Z")
        );
        assert_eq!(t.map(|t| civil(t).weekday), Some(4));
        assert_eq!(
            parse_time_ms("2024-02-29").map(rfc3339_ms).as_deref(),
            Some("2024-02-29T00:00:00.000Z")
        );
        assert_eq!(parse_time_ms("1796307661863"), Some(1_796_307_661_863));
        for ms in [-86_400_001_i64, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_time_ms(&rfc3339_ms(ms)), Some(ms));
        }
    }

    #[test]
    fn nonsense_is_refused() {
        for s in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-12-03T25:00",
            "2026-12-03T10:00.x",
            "12:00",
        ] {
            assert_eq!(parse_time_ms(s), None, "{s}");
        }
    }
}
