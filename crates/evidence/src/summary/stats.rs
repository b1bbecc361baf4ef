//! Small bounded statistics: the Wilson interval, a log-scale latency
//! histogram, pointer folding and a fast RFC 3339 parser.

use serde::Serialize;

/// The 95% Wilson score interval for `successes` out of `n`, as fractions.
pub fn wilson(successes: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Folds numeric array indexes into `*`: `/items/3/etag` → `/items/*/etag`.
/// Header names and `""` are returned as they are.
pub fn fold_pointer(pointer: &str) -> String {
    if !pointer.starts_with('/') || !pointer.bytes().any(|b| b.is_ascii_digit()) {
        return pointer.to_string();
    }
    let mut out = String::with_capacity(pointer.len());
    for segment in pointer[1..].split('/') {
        out.push('/');
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push('*');
        } else {
            out.push_str(segment);
        }
    }
    out
}

const HIST_MIN: f64 = 0.01;
const HIST_GROWTH: f64 = 1.04;
/// Buckets cover 0.01 ms to about 25 minutes with at most 2% relative error.
pub const HIST_BUCKETS: usize = 480;

/// Latency quantiles from fixed log-scale buckets: constant memory, mergeable.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// Quantiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quantiles {
    pub samples: u64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub mean: Option<f64>,
    pub max: Option<f64>,
}

impl Histogram {
    fn index(v: f64) -> usize {
        if v <= HIST_MIN {
            return 0;
        }
        let i = ((v / HIST_MIN).ln() / HIST_GROWTH.ln()) as usize + 1;
        i.min(HIST_BUCKETS - 1)
    }

    pub fn add(&mut self, v: f64) {
        if !v.is_finite() || v < 0.0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; HIST_BUCKETS];
            self.min = v;
            self.max = v;
        }
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if self.total == 0 {
            *self = other.clone();
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value below which a fraction `q` of the samples lie (within 2%).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return Some(round2(self.max));
        }
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let v = if i == 0 { HIST_MIN } else { HIST_MIN * HIST_GROWTH.powf(i as f64 - 0.5) };
                return Some(round2(v.clamp(self.min, self.max)));
            }
        }
        Some(round2(self.max))
    }

    pub fn quantiles(&self) -> Quantiles {
        Quantiles {
            samples: self.total,
            p50: self.quantile(0.50),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
            mean: (self.total > 0).then(|| round2(self.sum / self.total as f64)),
            max: (self.total > 0).then(|| round2(self.max)),
        }
    }
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Milliseconds since the Unix epoch of an RFC 3339 time
/// (`2026-11-25T20:26:10.123Z`, `...+02:00`, a space for `T`); `None` if malformed.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Some(v)
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_s = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let off = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second - offset_s) * 1000 + millis)
}

/// RFC 3339 UTC text for epoch milliseconds (second precision).
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_known_values() {
        // 95% Wilson for 81/263: (0.2553, 0.3662) (Wikipedia's worked example in spirit).
        let (lo, hi) = wilson(81, 263);
        assert!((lo - 0.2553).abs() < 0.001, "{lo}");
        assert!((hi - 0.3662).abs() < 0.001, "{hi}");
        // All successes: the upper bound is 1, the lower bound below 1.
        let (lo, hi) = wilson(1000, 1000);
        assert!((hi - 1.0).abs() < 1e-9);
        assert!((lo - 0.99617).abs() < 0.0001, "{lo}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(0, 10);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.2775).abs() < 0.001, "{hi}");
    }

    #[test]
    fn pointers_fold_indexes_only() {
        assert_eq!(fold_pointer("/items/3/etag"), "/items/*/etag");
        assert_eq!(fold_pointer("/items/12/tags/0"), "/items/*/tags/*");
        assert_eq!(fold_pointer("/user2/name"), "/user2/name");
        assert_eq!(fold_pointer("/a//b"), "/a//b");
        assert_eq!(fold_pointer("etag"), "etag");
        assert_eq!(fold_pointer(""), "");
        assert_eq!(fold_pointer("/0"), "/*");
    }

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for i in 1..=10_000 {
            h.add(i as f64 / 10.0);
        }
        let q = h.quantiles();
        assert_eq!(q.samples, 10_000);
        for (got, want) in [(q.p50.unwrap(), 500.0), (q.p95.unwrap(), 950.0), (q.p99.unwrap(), 990.0)] {
            assert!((got - want).abs() / want < 0.025, "{got} vs {want}");
        }
        assert_eq!(q.max, Some(1000.0));
        let mut other = Histogram::default();
        other.add(5000.0);
        h.merge(&other);
        assert_eq!(h.count(), 10_001);
        assert_eq!(h.quantile(1.0), Some(5000.0));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn rfc3339_parses_fractions_and_offsets() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_ms("2026-11-25T20:26:10.123456Z"), Some(1_795_638_370_123));
        assert_eq!(parse_rfc3339_ms("2026-11-25T20:26:10"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(format_ms(1_795_638_370_123), "2026-11-25T20:26:10Z");
    }
}
