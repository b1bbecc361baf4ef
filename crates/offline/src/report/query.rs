//! Which records a report counts: `--route`, `--since`, `--until`,
//! `--instance`. Every source applies the same [`Query`] (a store may also
//! push it down into its own query; the collector checks again).

use std::time::{Duration, SystemTime};

use strangler_evidence::record::DiffRecord;
use strangler_evidence::summary::stats::parse_rfc3339_ms;

/// The records a report is about. Empty lists select everything.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only these routes.
    pub routes: Vec<String>,
    /// Only records at or after this time (epoch milliseconds).
    pub since_ms: Option<i64>,
    /// Only records before this time (epoch milliseconds), so that
    /// `--since T --until U` and `--since U` never count a record twice.
    pub until_ms: Option<i64>,
    /// Only records written by these replicas (a record without an
    /// `instance`, from before records named it, matches none).
    pub instances: Vec<String>,
}

impl Query {
    /// Whether the query is about `route` at all (noise evidence is gathered
    /// for these routes whatever the time or instance).
    pub fn keeps_route(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| r == route)
    }

    /// Whether a record counts. A record whose time cannot be read is kept
    /// (the report counts it as such) rather than silently dropped.
    pub fn keeps(&self, r: &DiffRecord) -> bool {
        if !self.keeps_route(&r.route) {
            return false;
        }
        if !self.instances.is_empty() {
            match &r.instance {
                Some(i) if self.instances.iter().any(|want| want == i) => {}
                _ => return false,
            }
        }
        if self.since_ms.is_some() || self.until_ms.is_some() {
            if let Some(t) = parse_rfc3339_ms(&r.ts) {
                if self.since_ms.is_some_and(|since| t < since) || self.until_ms.is_some_and(|until| t >= until) {
                    return false;
                }
            }
        }
        true
    }
}

/// `--since` / `--until`: an RFC 3339 time, or a duration (`2h`, `30m`,
/// `1day`) back from now.
pub fn parse_time(text: &str, now: SystemTime) -> Result<i64, String> {
    if let Some(ms) = parse_rfc3339_ms(text.trim()) {
        return Ok(ms);
    }
    match humantime::parse_duration(text.trim()) {
        Ok(d) => {
            let t = now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH);
            let ms = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis();
            Ok(ms as i64)
        }
        Err(e) => Err(format!("{text:?} is neither an RFC 3339 time (2026-11-25T20:00:00Z) nor a duration (2h): {e}")),
    }
}

#[cfg(test)]
mod tests {
    use strangler_evidence::record::Outcome;
    use strangler_evidence::testkit::record;

    use super::*;

    #[test]
    fn times_are_rfc3339_or_durations_back_from_now() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_time("2h", now), Ok((10_000 - 7200) * 1000));
        assert_eq!(parse_time("1970-01-01T00:00:05Z", now), Ok(5000));
        assert!(parse_time("soon", now).is_err());
    }

    #[test]
    fn routes_times_and_instances_narrow_the_records() {
        let at = |i: u64, route: &str, instance: Option<&str>| {
            let mut r = record(i, route, Outcome::Match, vec![]);
            r.instance = instance.map(str::to_string);
            r
        };
        let t0 = parse_rfc3339_ms(&at(0, "a", None).ts).unwrap();
        let q = Query {
            routes: vec!["a".into(), "b".into()],
            since_ms: Some(t0 + 10_000),
            until_ms: Some(t0 + 20_000),
            instances: vec!["pod-1".into()],
        };
        assert!(q.keeps(&at(10, "a", Some("pod-1"))), "since is inclusive");
        assert!(q.keeps(&at(19, "b", Some("pod-1"))));
        assert!(!q.keeps(&at(20, "a", Some("pod-1"))), "until is exclusive");
        assert!(!q.keeps(&at(9, "a", Some("pod-1"))));
        assert!(!q.keeps(&at(15, "c", Some("pod-1"))));
        assert!(!q.keeps(&at(15, "a", Some("pod-2"))));
        assert!(!q.keeps(&at(15, "a", None)), "a record that names no instance is not pod-1's");
        let mut bad_time = at(15, "a", Some("pod-1"));
        bad_time.ts = "yesterday".into();
        assert!(q.keeps(&bad_time));
        assert!(Query::default().keeps(&at(1, "z", None)));
    }
}
