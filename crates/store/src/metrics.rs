//! The store's health on `/metrics`: whether it is reachable, what was
//! written and how fast, and what had to be dropped.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// `reason` of a record dropped because the store's queue was full (the
/// store slow or down).
pub const STORE_UNAVAILABLE: &str = "store_unavailable";
/// `reason` of a record the database refused (not retried).
pub const STORE_REJECTED: &str = "store_rejected";

/// Handles to the store's metrics (cheap to clone).
#[derive(Clone)]
pub struct StoreMetrics {
    /// `strangler_store_up`: 1 while the writer holds a working connection.
    pub up: IntGauge,
    /// `strangler_shadow_records_dropped_total{reason}`.
    pub dropped: IntCounterVec,
    /// `strangler_store_records_written_total`.
    pub written: IntCounter,
    /// `strangler_store_write_seconds`: one observation per batch.
    pub write_seconds: Histogram,
    /// `strangler_store_queue_records`: records waiting for the writer.
    pub queued: IntGauge,
    /// `strangler_store_connect_failures_total`.
    pub connect_failures: IntCounter,
    /// `strangler_store_retention_deleted_total`.
    pub retention_deleted: IntCounter,
}

impl StoreMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<StoreMetrics> {
        let metrics = StoreMetrics {
            up: IntGauge::new("strangler_store_up", "1 while the shadow store is reachable and written to.")?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "strangler_shadow_records_dropped_total",
                    "Diff records the store never got: its queue was full (store_unavailable) or it refused them (store_rejected).",
                ),
                &["reason"],
            )?,
            written: IntCounter::new("strangler_store_records_written_total", "Diff records written to the store.")?,
            write_seconds: Histogram::with_opts(
                HistogramOpts::new("strangler_store_write_seconds", "Time to write one batch of records to the store.")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            queued: IntGauge::new("strangler_store_queue_records", "Diff records waiting to be written to the store.")?,
            connect_failures: IntCounter::new(
                "strangler_store_connect_failures_total",
                "Failed attempts to connect to the store.",
            )?,
            retention_deleted: IntCounter::new(
                "strangler_store_retention_deleted_total",
                "Rows deleted from the store by retention, by this replica.",
            )?,
        };
        registry.register(Box::new(metrics.up.clone()))?;
        registry.register(Box::new(metrics.dropped.clone()))?;
        registry.register(Box::new(metrics.written.clone()))?;
        registry.register(Box::new(metrics.write_seconds.clone()))?;
        registry.register(Box::new(metrics.queued.clone()))?;
        registry.register(Box::new(metrics.connect_failures.clone()))?;
        registry.register(Box::new(metrics.retention_deleted.clone()))?;
        // Shown at 0 from the start, so an alert on its rate has a series.
        metrics.dropped.with_label_values(&[STORE_UNAVAILABLE]);
        Ok(metrics)
    }
}
