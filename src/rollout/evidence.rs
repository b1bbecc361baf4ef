//! A step's evidence from this instance's own counters: the shadow
//! comparisons of the route (`strangler_shadow_requests_total`) and the
//! primary answers and latencies of `from` and `to` on it
//! (`strangler_requests_total`, `strangler_request_duration_seconds`).
//!
//! Counters only grow, so the evidence of a step is the difference between
//! a reading now and the reading taken when the step began — the same
//! `increase()` Prometheus computes, on one instance.

use prometheus::proto::MetricFamily;

use super::machine::Evidence;
use crate::metrics::Metrics;

/// Counter totals for one route at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub matched: u64,
    pub mismatched: u64,
    pub from: Side,
    pub to: Side,
}

/// One upstream's answers on the route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    pub requests: u64,
    pub errors_5xx: u64,
    /// Cumulative latency histogram: (upper bound in seconds, count).
    pub buckets: Vec<(f64, u64)>,
}

/// Reads the route's totals from the registry (a scrape of ourselves).
pub fn read(metrics: &Metrics, route: &str, from: &str, to: &str) -> Totals {
    let families = metrics.gather();
    let mut totals = Totals::default();
    for family in &families {
        match family.name() {
            "strangler_shadow_requests_total" => shadow_results(family, route, &mut totals),
            "strangler_requests_total" => {
                answers(family, route, from, &mut totals.from);
                answers(family, route, to, &mut totals.to);
            }
            "strangler_request_duration_seconds" => {
                latencies(family, route, from, &mut totals.from);
                latencies(family, route, to, &mut totals.to);
            }
            _ => {}
        }
    }
    totals
}

fn label<'m>(metric: &'m prometheus::proto::Metric, name: &str) -> Option<&'m str> {
    metric.get_label().iter().find(|l| l.name() == name).map(|l| l.value())
}

fn shadow_results(family: &MetricFamily, route: &str, totals: &mut Totals) {
    for m in family.get_metric().iter().filter(|m| label(m, "route") == Some(route)) {
        let n = m.get_counter().get_value() as u64;
        match label(m, "result") {
            Some("match") => totals.matched += n,
            Some("mismatch") => totals.mismatched += n,
            _ => {}
        }
    }
}

fn on(m: &prometheus::proto::Metric, route: &str, upstream: &str) -> bool {
    label(m, "route") == Some(route) && label(m, "upstream") == Some(upstream)
}

fn answers(family: &MetricFamily, route: &str, upstream: &str, side: &mut Side) {
    for m in family.get_metric().iter().filter(|m| on(m, route, upstream)) {
        let n = m.get_counter().get_value() as u64;
        side.requests += n;
        if label(m, "status_class") == Some("5xx") {
            side.errors_5xx += n;
        }
    }
}

fn latencies(family: &MetricFamily, route: &str, upstream: &str, side: &mut Side) {
    if let Some(m) = family.get_metric().iter().find(|m| on(m, route, upstream)) {
        let h = m.get_histogram();
        side.buckets = h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
    }
}

/// The evidence between two readings (`start` taken when the step began).
pub fn between(start: &Totals, now: &Totals) -> Evidence {
    let matched = now.matched.saturating_sub(start.matched);
    let mismatched = now.mismatched.saturating_sub(start.mismatched);
    Evidence {
        compared: matched + mismatched,
        matched,
        from_requests: now.from.requests.saturating_sub(start.from.requests),
        from_5xx: now.from.errors_5xx.saturating_sub(start.from.errors_5xx),
        to_requests: now.to.requests.saturating_sub(start.to.requests),
        to_5xx: now.to.errors_5xx.saturating_sub(start.to.errors_5xx),
        from_p99: quantile(0.99, &delta(&start.from.buckets, &now.from.buckets)),
        to_p99: quantile(0.99, &delta(&start.to.buckets, &now.to.buckets)),
    }
}

fn delta(start: &[(f64, u64)], now: &[(f64, u64)]) -> Vec<(f64, u64)> {
    now.iter()
        .map(|&(bound, count)| {
            let before = start.iter().find(|(b, _)| *b == bound).map_or(0, |(_, c)| *c);
            (bound, count.saturating_sub(before))
        })
        .collect()
}

/// The `q` quantile of a cumulative histogram, interpolated inside its
/// bucket as Prometheus's `histogram_quantile` does; `None` without data.
pub fn quantile(q: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    let total = buckets.last().map(|(_, c)| *c)?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            let in_bucket = (count - lower.1) as f64;
            let into = if in_bucket > 0.0 { (rank - lower.1 as f64) / in_bucket } else { 1.0 };
            return Some(lower.0 + (bound - lower.0) * into);
        }
        lower = (bound, count);
    }
    // Beyond the last finite bound (the +Inf bucket is not listed): that bound.
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};

    use super::*;

    #[test]
    fn the_evidence_of_a_step_is_what_the_counters_gained_since_it_began() {
        let metrics = Metrics::new();
        let legacy = metrics.route_stats("r", "legacy");
        let comments = metrics.route_stats("r", "comments");
        for _ in 0..10 {
            legacy.record(&Method::GET, StatusCode::OK, Duration::from_millis(2));
        }
        let start = read(&metrics, "r", "legacy", "comments");
        for _ in 0..90 {
            legacy.record(&Method::GET, StatusCode::OK, Duration::from_millis(2));
        }
        legacy.record(&Method::GET, StatusCode::BAD_GATEWAY, Duration::from_millis(2));
        for i in 0..100 {
            let status = if i < 5 { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
            comments.record(&Method::POST, status, Duration::from_millis(40));
        }
        let e = between(&start, &read(&metrics, "r", "legacy", "comments"));
        assert_eq!((e.from_requests, e.from_5xx, e.to_requests, e.to_5xx), (91, 1, 100, 5));
        let (from, to) = (e.from_p99.unwrap(), e.to_p99.unwrap());
        assert!(from < 0.0051 && to > 0.025 && to <= 0.05, "p99s {from} {to}");
    }

    #[test]
    fn a_quantile_interpolates_inside_its_bucket() {
        let buckets = [(0.1, 50), (0.2, 100)];
        assert_eq!(quantile(0.5, &buckets), Some(0.1));
        assert!((quantile(0.75, &buckets).unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(quantile(0.99, &[(0.1, 0)]), None);
    }
}
