//! Prometheus metrics, all named `strangler_*`.
//!
//! Label values come from the config (route and upstream names), never from
//! raw request paths. Per-route handles are created when a config is loaded
//! and resolved lazily on first use, so the hot path never formats a label
//! or looks one up in a map. What every request counts is counted per
//! thread (`metrics/shards.rs`) and added up when the metrics are read.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::core::{Collector, Desc};
use prometheus::local::LocalHistogram;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

mod process;
mod shards;
pub use process::ProcessCollector;
use shards::PerThread;

/// Every metric the proxy exports, registered in its own registry (so that
/// several proxies can run in one test process).
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    pub in_flight: InFlightGauge,
    reloads: IntCounterVec,
    config_info: IntGaugeVec,
    split_decisions: IntCounterVec,
    fallbacks: IntCounterVec,
    retries: IntCounterVec,
    ejections: IntCounterVec,
    breaker_rejections: IntCounterVec,
    rate_limited: IntCounterVec,
    misdirected: IntCounterVec,
    target_healthy: IntGaugeVec,
    /// `strangler_access_log_dropped_total{reason}`: access-log lines lost
    /// (`queue_full`: the writer fell behind; `write_failed`).
    pub access_log_dropped: IntCounterVec,
    /// Every [`RouteStats`] handed out, for [`Metrics::gather`] to add up.
    route_stats: Mutex<Vec<Weak<RouteStats>>>,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap()
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("strangler_requests_total", "Proxied requests by route, upstream, method and status class."),
            &["route", "upstream", "method", "status_class"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "strangler_request_duration_seconds",
                "Time from request received to upstream response headers, by route and upstream.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "upstream"],
        )
        .unwrap();
        let upstream_errors = IntCounterVec::new(
            Opts::new("strangler_upstream_errors_total", "Upstream failures by kind (connect, timeout)."),
            &["upstream", "kind"],
        )
        .unwrap();
        let in_flight = InFlightGauge::new();
        let reloads = IntCounterVec::new(
            Opts::new(
                "strangler_config_reloads_total",
                "Changed config files read after start-up, by result (success, failure); the start-up load and a file whose bytes did not change are not counted.",
            ),
            &["result"],
        )
        .unwrap();
        // Both series exist from the start (at 0), so `increase()` sees the first change.
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let config_info = IntGaugeVec::new(
            Opts::new("strangler_config_info", "The active config; 1 for the content hash in force."),
            &["hash"],
        )
        .unwrap();
        let split_decisions = counter_vec(
            "strangler_split_decisions_total",
            "Split choices by route and upstream.",
            &["route", "upstream"],
        );
        let fallbacks = counter_vec(
            "strangler_fallbacks_total",
            "Requests answered by the fallback upstream, by route.",
            &["route"],
        );
        let retries = counter_vec("strangler_retries_total", "Retried attempts by upstream.", &["upstream"]);
        let ejections =
            counter_vec("strangler_ejections_total", "Targets ejected by passive outlier detection.", &["upstream"]);
        let breaker_rejections = counter_vec(
            "strangler_breaker_rejections_total",
            "Requests refused at once because max_concurrent was reached.",
            &["upstream"],
        );
        let rate_limited =
            counter_vec("strangler_rate_limited_total", "Requests refused with 429 by route.", &["route"]);
        let misdirected = counter_vec(
            "strangler_misdirected_total",
            "Requests an upstream answered 421 Misdirected Request, sent on to the other side, by route.",
            &["route", "from", "to"],
        );
        let target_healthy = IntGaugeVec::new(
            Opts::new("strangler_upstream_target_healthy", "1 when a target passes its active health checks."),
            &["upstream", "target"],
        )
        .unwrap();
        for c in [&split_decisions, &fallbacks, &retries, &ejections, &breaker_rejections, &rate_limited, &misdirected]
        {
            registry.register(Box::new(c.clone())).unwrap();
        }
        registry.register(Box::new(target_healthy.clone())).unwrap();
        let access_log_dropped = counter_vec(
            "strangler_access_log_dropped_total",
            "Access-log lines lost: the writer fell behind (queue_full) or a write failed (write_failed).",
            &["reason"],
        );
        for reason in ["queue_full", "write_failed"] {
            access_log_dropped.with_label_values(&[reason]);
        }
        registry.register(Box::new(access_log_dropped.clone())).unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        registry.register(Box::new(duration.clone())).unwrap();
        registry.register(Box::new(upstream_errors.clone())).unwrap();
        registry.register(Box::new(in_flight.clone())).unwrap();
        registry.register(Box::new(reloads.clone())).unwrap();
        registry.register(Box::new(config_info.clone())).unwrap();
        registry.register(Box::new(ProcessCollector::new())).unwrap();
        registry.register(Box::new(build_info())).unwrap();
        Arc::new(Metrics {
            registry,
            requests,
            duration,
            upstream_errors,
            in_flight,
            reloads,
            config_info,
            split_decisions,
            fallbacks,
            retries,
            ejections,
            breaker_rejections,
            rate_limited,
            misdirected,
            target_healthy,
            access_log_dropped,
            route_stats: Mutex::new(Vec::new()),
        })
    }

    /// Registers an extra collector (used by other modules for their own metrics).
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.registry.register(Box::new(c.clone())).unwrap();
        c
    }

    /// Handles for one (route, upstream) pair, resolved on first use.
    pub fn route_stats(&self, route: &str, upstream: &str) -> Arc<RouteStats> {
        let stats = Arc::new(RouteStats {
            route: route.into(),
            upstream: upstream.into(),
            requests: self.requests.clone(),
            duration_vec: self.duration.clone(),
            counts: Default::default(),
            duration: OnceLock::new(),
            retired: Default::default(),
            pending: PerThread::new(),
        });
        let mut all = self.route_stats.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() == all.capacity() {
            // Before the list grows: those of tables gone leave it.
            all.retain(|stats| stats.strong_count() > 0);
        }
        all.push(Arc::downgrade(&stats));
        stats
    }

    /// Every metric, with what the threads counted since the last read
    /// added to the series first: what a scrape or a gate reads.
    pub fn gather(&self) -> Vec<MetricFamily> {
        let all: Vec<Arc<RouteStats>> = {
            let mut all = self.route_stats.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|stats| stats.strong_count() > 0);
            all.iter().filter_map(Weak::upgrade).collect()
        };
        for stats in &all {
            stats.add_up();
        }
        drop(all);
        self.registry.gather()
    }

    /// Counters for one upstream's failures, resolved at config load.
    pub fn upstream_errors(&self, upstream: &str) -> UpstreamErrors {
        UpstreamErrors {
            connect: self.upstream_errors.with_label_values(&[upstream, "connect"]),
            timeout: self.upstream_errors.with_label_values(&[upstream, "timeout"]),
        }
    }

    /// Retried attempts to one upstream.
    pub fn retries(&self, upstream: &str) -> IntCounter {
        self.retries.with_label_values(&[upstream])
    }

    /// Targets of one upstream ejected by outlier detection.
    pub fn ejections(&self, upstream: &str) -> IntCounter {
        self.ejections.with_label_values(&[upstream])
    }

    /// Requests refused at one upstream's concurrency cap.
    pub fn breaker_rejections(&self, upstream: &str) -> IntCounter {
        self.breaker_rejections.with_label_values(&[upstream])
    }

    pub fn target_healthy(&self, upstream: &str, target: &str) -> IntGauge {
        self.target_healthy.with_label_values(&[upstream, target])
    }

    pub fn split_decisions(&self, route: &str, upstream: &str) -> IntCounter {
        self.split_decisions.with_label_values(&[route, upstream])
    }

    pub fn fallbacks(&self, route: &str) -> IntCounter {
        self.fallbacks.with_label_values(&[route])
    }

    /// Requests sent on after a 421, by (route, from, to).
    pub fn misdirected(&self) -> IntCounterVec {
        self.misdirected.clone()
    }

    pub fn rate_limited(&self, route: &str) -> IntCounter {
        self.rate_limited.with_label_values(&[route])
    }

    /// Deletes the series of a (route, upstream) pair that left the config.
    pub fn forget_route_upstream(&self, route: &str, upstream: &str) {
        remove_where(&self.requests, &[("route", route), ("upstream", upstream)]);
        let _ = self.duration.remove_label_values(&[route, upstream]);
        let _ = self.split_decisions.remove_label_values(&[route, upstream]);
    }

    /// Deletes the series of a route that left the config.
    pub fn forget_route(&self, route: &str) {
        let _ = self.fallbacks.remove_label_values(&[route]);
        let _ = self.rate_limited.remove_label_values(&[route]);
        remove_where(&self.misdirected, &[("route", route)]);
    }

    /// Deletes the series of an upstream that left the config.
    pub fn forget_upstream(&self, upstream: &str) {
        for kind in ["connect", "timeout"] {
            let _ = self.upstream_errors.remove_label_values(&[upstream, kind]);
        }
        for vec in [&self.retries, &self.ejections, &self.breaker_rejections] {
            let _ = vec.remove_label_values(&[upstream]);
        }
    }

    /// Deletes the health series of a target that left the config.
    pub fn forget_target(&self, upstream: &str, target: &str) {
        let _ = self.target_healthy.remove_label_values(&[upstream, target]);
    }

    /// Counts one changed config file read after start-up: applied or rejected.
    pub fn record_reload(&self, ok: bool) {
        self.reloads.with_label_values(&[if ok { "success" } else { "failure" }]).inc();
    }

    /// Points the config info gauge at the hash now in force.
    pub fn set_config_hash(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.gather(), &mut out).unwrap();
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The commit this binary was built from, as build.rs found it (`unknown`
/// outside a git checkout, e.g. a Docker build without `.git`, unless the
/// build sets `STRANGLER_COMMIT`).
pub const BUILD_COMMIT: &str = env!("STRANGLER_COMMIT");

/// `strangler_build_info{version,commit} 1`: which build each pod runs, so a
/// dashboard or alert can tell a rollout's old and new pods apart.
fn build_info() -> IntGauge {
    let opts = Opts::new("strangler_build_info", "The running build: 1, labelled with its version and commit.")
        .const_label("version", env!("CARGO_PKG_VERSION"))
        .const_label("commit", BUILD_COMMIT);
    let gauge = IntGauge::with_opts(opts).expect("a valid name");
    gauge.set(1);
    gauge
}

/// Deletes every series of `vec` whose labels include all of `labels`.
/// The prometheus crate removes only by the full label set, so the series
/// are read from a collection first (reload time only, never per request).
pub fn remove_where<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    labels: &[(&str, &str)],
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let series: std::collections::HashMap<&str, &str> =
                metric.get_label().iter().map(|l| (l.name(), l.value())).collect();
            if labels.iter().all(|(name, value)| series.get(name) == Some(value)) {
                let _ = vec.remove(&series);
            }
        }
    }
}

/// Failure counters of one upstream.
#[derive(Clone)]
pub struct UpstreamErrors {
    pub connect: IntCounter,
    pub timeout: IntCounter,
}

const METHOD_SLOTS: usize = 8;
const STATUS_CLASSES: usize = 5;

/// Request counters and latency of one (route, upstream) pair. Requests
/// count in their thread's shard ([`RouteStats::record`]); reads add the
/// shards up into the series ([`Metrics::gather`]), as does the pair's
/// last reference when it goes (a table replaced by a reload).
pub struct RouteStats {
    route: Box<str>,
    upstream: Box<str>,
    requests: IntCounterVec,
    duration_vec: HistogramVec,
    counts: [[OnceLock<IntCounter>; STATUS_CLASSES]; METHOD_SLOTS],
    duration: OnceLock<Histogram>,
    /// The pair left the config: series not yet resolved stay unregistered,
    /// so a request that finishes after a reload cannot bring them back.
    retired: AtomicBool,
    /// What each thread counted since the series were last added to.
    pending: PerThread<Pending>,
}

/// One thread's counts of one (route, upstream) pair, not yet in its series.
struct Pending {
    counts: [[AtomicU64; STATUS_CLASSES]; METHOD_SLOTS],
    /// Locked by its own thread on each request, by a read once per scrape.
    latency: Mutex<LocalHistogram>,
}

impl RouteStats {
    /// Marks the pair as gone from the config (before its series are deleted).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Counts one answered request and its time to response headers, in
    /// this thread's shard.
    pub fn record(&self, method: &Method, status: StatusCode, elapsed: Duration) {
        let slot = method_slot(method);
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        let pending = self
            .pending
            .local(|| Pending { counts: Default::default(), latency: Mutex::new(self.histogram().local()) });
        pending.counts[slot][class].fetch_add(1, Ordering::Relaxed);
        pending.latency.lock().unwrap_or_else(|e| e.into_inner()).observe(elapsed.as_secs_f64());
    }

    /// Adds what the threads counted to the series.
    fn add_up(&self) {
        for pending in self.pending.iter() {
            for (slot, classes) in pending.counts.iter().enumerate() {
                for (class, count) in classes.iter().enumerate() {
                    let n = count.swap(0, Ordering::Relaxed);
                    if n > 0 {
                        self.counter(slot, class).inc_by(n);
                    }
                }
            }
            pending.latency.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
    }

    fn counter(&self, slot: usize, class: usize) -> &IntCounter {
        self.counts[slot][class].get_or_init(|| match self.is_retired() {
            true => IntCounter::new("retired", "unregistered").expect("a valid name"),
            false => self.requests.with_label_values(&[
                &self.route,
                &self.upstream,
                METHOD_LABELS[slot],
                STATUS_CLASS_LABELS[class],
            ]),
        })
    }

    fn histogram(&self) -> &Histogram {
        self.duration.get_or_init(|| match self.is_retired() {
            true => Histogram::with_opts(HistogramOpts::new("retired", "unregistered")).expect("a valid name"),
            false => self.duration_vec.with_label_values(&[&self.route, &self.upstream]),
        })
    }
}

impl Drop for RouteStats {
    /// Counts not yet read go into the series, which outlive this handle
    /// when the pair stays in the next table.
    fn drop(&mut self) {
        self.add_up();
    }
}

/// `strangler_requests_in_flight`, moved per thread and added up when read.
#[derive(Clone)]
pub struct InFlightGauge(Arc<InFlightShards>);

struct InFlightShards {
    shards: PerThread<AtomicI64>,
    gauge: IntGauge,
}

impl InFlightGauge {
    fn new() -> Self {
        let gauge = IntGauge::new("strangler_requests_in_flight", "Requests being proxied now.").unwrap();
        InFlightGauge(Arc::new(InFlightShards { shards: PerThread::new(), gauge }))
    }

    pub fn inc(&self) {
        self.0.shards.local(AtomicI64::default).fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.shards.local(AtomicI64::default).fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests in flight now (a request may end on another thread than
    /// it started: only the sum means anything).
    pub fn get(&self) -> i64 {
        self.0.shards.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

impl Collector for InFlightGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.0.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.gauge.set(self.get());
        self.0.gauge.collect()
    }
}

const STATUS_CLASS_LABELS: [&str; STATUS_CLASSES] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

const METHOD_LABELS: [&str; METHOD_SLOTS] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER"];

fn method_slot(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_where_deletes_only_the_series_with_that_label_value() {
        let vec = counter_vec("t_total", "test", &["route", "result"]);
        for (route, result) in [("gone", "match"), ("gone", "mismatch"), ("kept", "match")] {
            vec.with_label_values(&[route, result]).inc();
        }
        remove_where(&vec, &[("route", "gone")]);
        let left: Vec<String> = prometheus::core::Collector::collect(&vec)
            .iter()
            .flat_map(|f| f.get_metric().to_vec())
            .flat_map(|m| {
                m.get_label().iter().filter(|l| l.name() == "route").map(|l| l.value().to_string()).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(left, ["kept"]);
    }

    /// The line of `render`'s text for `series` (its name and labels), as a number.
    fn value(metrics: &Metrics, series: &str) -> Option<f64> {
        let text = metrics.render();
        text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn requests_counted_on_many_threads_are_all_read_and_survive_their_table() {
        let metrics = Metrics::new();
        let stats = metrics.route_stats("r", "u");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..250 {
                        stats.record(&Method::GET, StatusCode::OK, Duration::from_millis(2));
                    }
                });
            }
        });
        stats.record(&Method::POST, StatusCode::BAD_GATEWAY, Duration::from_millis(20));
        let requests = r#"strangler_requests_total{method="GET",route="r",status_class="2xx",upstream="u"}"#;
        assert_eq!(value(&metrics, requests), Some(1000.0));
        let failed = r#"strangler_requests_total{method="POST",route="r",status_class="5xx",upstream="u"}"#;
        assert_eq!(value(&metrics, failed), Some(1.0));
        let count = r#"strangler_request_duration_seconds_count{route="r",upstream="u"}"#;
        assert_eq!(value(&metrics, count), Some(1001.0));
        let fast = r#"strangler_request_duration_seconds_bucket{route="r",upstream="u",le="0.0025"}"#;
        assert_eq!(value(&metrics, fast), Some(1000.0));
        // A reload's new table gets new handles for the pair; what the old
        // ones counted since the last read is kept when they go.
        stats.record(&Method::GET, StatusCode::OK, Duration::from_millis(2));
        let next = metrics.route_stats("r", "u");
        drop(stats);
        next.record(&Method::GET, StatusCode::OK, Duration::from_millis(2));
        assert_eq!(value(&metrics, requests), Some(1002.0));
        assert_eq!(value(&metrics, count), Some(1003.0));
    }

    #[test]
    fn a_request_in_flight_may_end_on_another_thread() {
        let metrics = Metrics::new();
        metrics.in_flight.inc();
        metrics.in_flight.inc();
        let gauge = metrics.in_flight.clone();
        std::thread::spawn(move || gauge.dec()).join().unwrap();
        assert_eq!(metrics.in_flight.get(), 1);
        assert_eq!(value(&metrics, "strangler_requests_in_flight"), Some(1.0));
    }
}
