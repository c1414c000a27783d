//! ISO-8601 timestamps. We emit JS `toISOString()` form
//! (`2026-01-02T03:04:05.678Z`); we accept that and Python's `isoformat()`
//! (`...05.678901+00:00`). A timestamp without an offset is rejected: the
//! registry answers 500 for one, so we never produce or trust it.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("timestamp {0:?} is not ISO-8601 (expected like 2026-01-02T03:04:05.678Z)")]
    Malformed(String),
    #[error("timestamp {0:?} has no timezone offset; add 'Z' or '+00:00'")]
    NoOffset(String),
}

/// Format Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.sssZ`.
pub fn format_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parse to Unix milliseconds (fractions beyond milliseconds are truncated).
pub fn parse_millis(s: &str) -> Result<i64, TimeError> {
    let bad = || TimeError::Malformed(truncate(s));
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, TimeError> {
        let t = s.get(r).ok_or_else(bad)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse::<i64>().map_err(|_| bad())
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_min = match &s[i..] {
        "" => return Err(TimeError::NoOffset(truncate(s))),
        "Z" | "z" => 0,
        rest => {
            let rb = rest.as_bytes();
            let sign = match rb[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let digits: String = rest[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            let oh: i64 = digits[..2].parse().map_err(|_| bad())?;
            let om: i64 = digits[2..].parse().map_err(|_| bad())?;
            sign * (oh * 60 + om)
        }
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
    Ok(secs * 1000 + millis)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_both_server_forms() {
        let t = "2026-01-02T03:04:05.678Z";
        let ms = parse_millis(t).unwrap();
        assert_eq!(format_millis(ms as u64), t);
        assert_eq!(
            parse_millis("2026-01-02T03:04:05.678901+00:00").unwrap(),
            ms
        );
        assert_eq!(parse_millis("2026-01-02T04:04:05.678+01:00").unwrap(), ms);
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn naive_and_garbage_rejected() {
        assert!(matches!(
            parse_millis("2026-01-02T03:04:05.678"),
            Err(TimeError::NoOffset(_))
        ));
        assert!(matches!(
            parse_millis("yesterday"),
            Err(TimeError::Malformed(_))
        ));
        assert!(matches!(
            parse_millis("2026-13-02T03:04:05Z"),
            Err(TimeError::Malformed(_))
        ));
        assert!(matches!(
            parse_millis("2026-01-02T03:04:05.Z"),
            Err(TimeError::Malformed(_))
        ));
    }
}
