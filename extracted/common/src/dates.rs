//! Timestamps: SQLite TEXT `YYYY-MM-DD HH:MM:SS` (UTC) <-> RFC 822 as
//! `werkzeug.http.http_date` renders them (`Wed, 25 Nov 2026 20:26:10 GMT`).

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parse `YYYY-MM-DD HH:MM:SS` into (y, m, d, H, M, S).
pub fn parse_ts(s: &str) -> Option<(i64, u32, u32, u32, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = &s[r];
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, m, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    Some((y, m, d, hh, mm, ss))
}

/// Stored TEXT timestamp -> RFC 822 string. Unparseable input is returned as is.
pub fn ts_to_http(s: &str) -> String {
    match parse_ts(s) {
        Some((y, m, d, hh, mm, ss)) => {
            let days = days_from_civil(y, m, d);
            let wd = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
            format!("{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT", DAYS[wd], d, MONTHS[m as usize - 1], y, hh, mm, ss)
        }
        None => s.to_string(),
    }
}

/// RFC 822 (`Wed, 25 Nov 2026 20:26:10 GMT`) -> stored TEXT timestamp.
pub fn http_to_ts(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let d: u32 = parts[1].parse().ok()?;
    let m = MONTHS.iter().position(|x| *x == parts[2])? as u32 + 1;
    let y: i64 = parts[3].parse().ok()?;
    let t: Vec<&str> = parts[4].split(':').collect();
    if t.len() != 3 {
        return None;
    }
    let (hh, mm, ss): (u32, u32, u32) = (t[0].parse().ok()?, t[1].parse().ok()?, t[2].parse().ok()?);
    let out = format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}");
    parse_ts(&out).map(|_| out)
}

/// Current UTC time in the stored TEXT format.
pub fn now_ts() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let r = secs.rem_euclid(86400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", r / 3600, (r / 60) % 60, r % 60)
}

/// Optional TEXT timestamp -> JSON value (`null` stays `null`).
pub fn opt_http(s: Option<String>) -> serde_json::Value {
    match s {
        Some(s) => serde_json::Value::String(ts_to_http(&s)),
        None => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn roundtrip() {
        assert_eq!(ts_to_http("2026-11-25 20:26:10"), "Wed, 25 Nov 2026 20:26:10 GMT");
        assert_eq!(ts_to_http("2024-01-01 09:37:00"), "Mon, 01 Jan 2024 09:37:00 GMT");
        assert_eq!(http_to_ts("Wed, 25 Nov 2026 20:26:10 GMT").unwrap(), "2026-11-25 20:26:10");
        let n = now_ts();
        assert_eq!(http_to_ts(&ts_to_http(&n)).unwrap(), n);
    }
}
