//! Upstream groups: their targets and each target's health, the choice of a
//! target (round robin or least request), the concurrency cap (circuit
//! breaker), the retry budget, and the pooled client that reaches them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use prometheus::IntCounter;
use serde::Serialize;

use crate::client::target::{Permit, Target, Targets};
use crate::client::Connector;
use crate::clock;
use crate::config::{LoadBalancing, RawHealthCheck, RawOutlier};
use crate::metrics::{Metrics, UpstreamErrors};

/// Envoy's default. Not 1 s: a SYN dropped by a full accept queue (a burst
/// of new connections) is sent again after exactly 1 s, and a 1 s timeout
/// turned that ordinary retransmission into 504s in the benchmark.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters an upstream updates as traffic flows; resolved at config load.
#[derive(Clone)]
pub struct UpstreamCounters {
    pub errors: UpstreamErrors,
    pub retries: IntCounter,
    pub ejections: IntCounter,
    pub breaker_rejections: IntCounter,
}

impl UpstreamCounters {
    /// The handles of upstream `name`'s series.
    pub fn new(metrics: &Metrics, name: &str) -> Self {
        UpstreamCounters {
            errors: metrics.upstream_errors(name),
            retries: metrics.retries(name),
            ejections: metrics.ejections(name),
            breaker_rejections: metrics.breaker_rejections(name),
        }
    }
}

/// A named group of targets, with the connector that reaches them.
pub struct Upstream {
    pub name: Arc<str>,
    /// The name as a header value, for `X-Strangler-Upstream`.
    pub name_header: HeaderValue,
    pub targets: Arc<Targets>,
    pub settings: UpstreamSettings,
    pub connector: Arc<Connector>,
    pub counters: UpstreamCounters,
    pub budget: RetryBudget,
    next: AtomicUsize,
}

/// Why no request could be sent to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Every target is failing its health checks or ejected.
    AllUnhealthy,
    /// `max_concurrent` requests are already in flight.
    Overloaded,
}

/// The settings of an upstream besides its name and targets.
#[derive(Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// Deadline for the whole response head of one attempt.
    pub timeout: Duration,
    /// How long a connection to a target is kept idle for reuse.
    pub idle_timeout: Duration,
    pub retries: u32,
    pub load_balancing: LoadBalancing,
    pub max_concurrent: Option<usize>,
    pub health_check: Option<RawHealthCheck>,
    pub outlier: RawOutlier,
}

impl Upstream {
    pub fn new(
        name: &str,
        targets: Vec<Target>,
        settings: UpstreamSettings,
        connector: Arc<Connector>,
        counters: UpstreamCounters,
    ) -> Self {
        Upstream {
            name: name.into(),
            name_header: HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid-name")),
            targets: Arc::new(Targets::new(targets)),
            settings,
            connector,
            counters,
            budget: RetryBudget::default(),
            next: AtomicUsize::new(fastrand::usize(..)),
        }
    }

    /// Requests in flight to this upstream now.
    pub fn in_flight(&self) -> usize {
        self.targets.in_flight()
    }

    /// True when at least one target takes traffic.
    pub fn any_available(&self) -> bool {
        let now = clock::unix_ms();
        self.targets.iter().any(|t| t.state.available(now))
    }

    /// Takes a concurrency slot and picks an available target.
    pub fn acquire(self: &Arc<Self>) -> Result<Permit, Unavailable> {
        let target = self.pick().ok_or(Unavailable::AllUnhealthy)?;
        let index = self.targets.iter().position(|t| std::ptr::eq(t, target)).unwrap_or(0);
        self.targets.try_acquire(index, self.settings.max_concurrent).ok_or_else(|| {
            self.counters.breaker_rejections.inc();
            Unavailable::Overloaded
        })
    }

    /// An available target, chosen as for a request, without taking a
    /// concurrency slot (for mirrored requests, which must never crowd out
    /// client traffic).
    pub fn pick(&self) -> Option<&Target> {
        let n = self.targets.len();
        let now = clock::unix_ms();
        if n == 1 {
            let only = &self.targets[0];
            return only.state.available(now).then_some(only);
        }
        match self.settings.load_balancing {
            LoadBalancing::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|i| &self.targets[(start + i) % n]).find(|t| t.state.available(now))
            }
            LoadBalancing::LeastRequest => {
                // Two distinct random targets; the less busy one wins.
                let first = fastrand::usize(..n);
                let a = &self.targets[first];
                let b = &self.targets[(first + 1 + fastrand::usize(..n - 1)) % n];
                match (a.state.available(now), b.state.available(now)) {
                    (true, true) => {
                        Some(if b.state.in_flight.load(Ordering::Relaxed) < a.state.in_flight.load(Ordering::Relaxed) {
                            b
                        } else {
                            a
                        })
                    }
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => {
                        let start = fastrand::usize(..n);
                        (0..n).map(|i| &self.targets[(start + i) % n]).find(|t| t.state.available(now))
                    }
                }
            }
        }
    }

    /// Passive outlier detection: a success clears the failure streak.
    pub fn record_success(&self, target: &Target) {
        if target.state.consecutive_failures.load(Ordering::Relaxed) != 0 {
            target.state.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Passive outlier detection: enough failures in a row eject the target
    /// for `base * 2^ejections`, capped at `max_ejection`.
    pub fn record_failure(&self, target: &Target) {
        let failures = target.state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.settings.outlier.consecutive_failures {
            return;
        }
        target.state.consecutive_failures.store(0, Ordering::Relaxed);
        // As Envoy's ejection cap does: passive detection never takes out the
        // last target still taking traffic. With none left, a passing fault
        // (a burst of connect timeouts under load) would become an outage of
        // the whole upstream; active health checks still can.
        let now = clock::unix_ms();
        if !self.targets.iter().any(|t| !std::ptr::eq(t, target) && t.state.available(now)) {
            return;
        }
        let ejections = target.state.ejections.fetch_add(1, Ordering::Relaxed);
        let factor = 1u32 << ejections.min(16);
        let outlier = &self.settings.outlier;
        let duration = (outlier.base_ejection * factor).min(outlier.max_ejection);
        target.state.ejected_until_ms.store(now + duration.as_millis() as u64, Ordering::Relaxed);
        self.counters.ejections.inc();
        tracing::warn!(upstream = %self.name, target = %target.url, ejected_for = ?duration, "target ejected after consecutive failures");
    }
}

/// Retries may be at most this share of requests over the window.
pub const RETRY_BUDGET_RATIO: f64 = 0.2;
const WINDOW_SECS: u64 = 10;

/// A sliding window (10 one-second buckets) of requests and retries per
/// upstream, so that retries never add more than 20% load to an upstream
/// that is already failing. Lock-free: each bucket packs its second and its
/// count into one atomic.
#[derive(Default)]
pub struct RetryBudget {
    requests: [AtomicU64; WINDOW_SECS as usize],
    retries: [AtomicU64; WINDOW_SECS as usize],
}

impl RetryBudget {
    /// Counts a first attempt.
    pub fn record_request(&self) {
        bump(&self.requests, now_secs());
    }

    /// Takes a retry from the budget if there is room.
    pub fn try_retry(&self) -> bool {
        let now = now_secs();
        let requests = window_sum(&self.requests, now);
        let retries = window_sum(&self.retries, now);
        if (retries + 1) as f64 > RETRY_BUDGET_RATIO * requests as f64 {
            return false;
        }
        bump(&self.retries, now);
        true
    }
}

fn now_secs() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(clock::now);
    clock::now().saturating_duration_since(start).as_secs() + 1
}

fn bump(buckets: &[AtomicU64; WINDOW_SECS as usize], now: u64) {
    let bucket = &buckets[(now % WINDOW_SECS) as usize];
    let mut current = bucket.load(Ordering::Relaxed);
    loop {
        let next = if current >> 32 == now { current + 1 } else { (now << 32) | 1 };
        match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

fn window_sum(buckets: &[AtomicU64; WINDOW_SECS as usize], now: u64) -> u64 {
    buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .filter(|v| now.saturating_sub(v >> 32) < WINDOW_SECS)
        .map(|v| v & 0xffff_ffff)
        .sum()
}

/// A jittered exponential backoff: 25 ms, 50 ms, 100 ms ... each ±50%.
pub fn backoff(attempt: u32) -> Duration {
    let base = 25u64 << attempt.min(6);
    Duration::from_millis(base / 2 + fastrand::u64(..=base))
}

/// One target's state as `/upstreams` shows it.
#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub url: String,
    pub healthy: bool,
    pub ejected: bool,
    pub ejected_for_ms: u64,
    pub consecutive_failures: u32,
    pub in_flight: usize,
}

/// One upstream as `/upstreams` and `/explain` show it.
#[derive(Debug, Serialize)]
pub struct UpstreamReport {
    pub name: String,
    pub available: bool,
    pub in_flight: usize,
    pub max_concurrent: Option<usize>,
    pub retries: u32,
    pub load_balancing: LoadBalancing,
    pub targets: Vec<TargetReport>,
}

impl Upstream {
    pub fn report(&self) -> UpstreamReport {
        let now = clock::unix_ms();
        UpstreamReport {
            name: self.name.to_string(),
            available: self.any_available(),
            in_flight: self.in_flight(),
            max_concurrent: self.settings.max_concurrent,
            retries: self.settings.retries,
            load_balancing: self.settings.load_balancing,
            targets: self
                .targets
                .iter()
                .map(|t| {
                    let until = t.state.ejected_until_ms.load(Ordering::Relaxed);
                    TargetReport {
                        url: t.url.to_string(),
                        healthy: t.state.healthy.load(Ordering::Relaxed),
                        ejected: until > now,
                        ejected_for_ms: until.saturating_sub(now),
                        consecutive_failures: t.state.consecutive_failures.load(Ordering::Relaxed),
                        in_flight: t.state.in_flight.load(Ordering::Relaxed),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_caps_retries_at_a_fifth_of_requests() {
        let budget = RetryBudget::default();
        let mut granted = 0;
        for _ in 0..1000 {
            budget.record_request();
            if budget.try_retry() {
                granted += 1;
            }
        }
        assert!((190..=200).contains(&granted), "{granted}");
    }

    #[test]
    fn backoff_grows_with_jitter() {
        for attempt in 0..4 {
            let base = 25u64 << attempt;
            let d = backoff(attempt).as_millis() as u64;
            assert!(d >= base / 2 && d <= base / 2 + base, "{attempt}: {d}");
        }
    }
}
