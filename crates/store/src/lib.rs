//! # strangler-store
//!
//! The fleet store: every replica of the proxy writes its shadow-diff records
//! and the noise it learns to one PostgreSQL database, so that a cutover is
//! judged on the whole fleet's evidence, not one pod's since its start.
//!
//! - [`dsn`]: `shadow.store: postgres://USER@HOST:PORT/DB?sslmode=…`, parsed
//!   without I/O, printed with the password masked.
//! - [`tls`]: `sslmode` over rustls (ring), the TLS stack the proxy already uses.
//! - [`schema`]: numbered migrations under an advisory lock.
//! - [`Store`]: the writer off the client's path — a bounded queue (full:
//!   dropped and counted), batched inserts that ignore ids already stored,
//!   reconnection with capped, jittered backoff; beside it the upkeep:
//!   learned noise shared between replicas and retention.
//! - [`read`]: the records back out for `strangler report --from postgres://…`,
//!   filtered in SQL and streamed with `COPY … TO STDOUT`.
//!
//! ## Why `tokio-postgres`
//!
//! It is the asynchronous client of the rust-postgres project, the most used
//! PostgreSQL client in Rust: pure Rust (no libpq to link, so the static
//! binary and the Docker image stay as they are), on tokio like the rest of
//! the proxy, with pipelining, binary parameters and `COPY` in both
//! directions — what a batched writer and a 1M-row reader need. `sqlx` was
//! the alternative: it brings its own pool, runtime abstraction and
//! compile-time query checks that need a database or prepared metadata at
//! build time, none of which a writer of one table needs. TLS goes through
//! `tokio-postgres-rustls`, the maintained adapter to rustls.

pub mod dsn;
pub mod metrics;
pub mod read;
pub mod schema;
pub mod tls;
mod upkeep;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strangler_evidence::record::DiffRecord;
use tokio::sync::mpsc;
use uuid::Uuid;

pub use dsn::Dsn;
pub use metrics::StoreMetrics;
pub use read::{read, read_noise, Query, ReadStats};
/// The client, for tools and tests that query the store's tables directly.
pub use tokio_postgres;

/// Records held while the store is slow or down, by default; beyond them,
/// records are dropped and counted.
pub const DEFAULT_QUEUE: usize = 10_000;
/// How long rows are kept, by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

/// What the store is started with.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub dsn: Dsn,
    /// A file whose first line is the password (a mounted Secret), read at each connect.
    pub password_file: Option<PathBuf>,
    /// Rows older than this are deleted (by one replica at a time).
    pub retention: Duration,
    /// Records held while the store is slow or down.
    pub queue: usize,
    /// This replica's name, written beside the noise it learns.
    pub instance: String,
}

/// One record as the store keeps it: the columns the report filters on, and
/// the whole record as JSON.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: Uuid,
    pub ts: SystemTime,
    pub route: String,
    pub endpoint: String,
    pub instance: String,
    pub config_hash: String,
    pub result: &'static str,
    /// The record serialized (the diff log's line).
    pub record: String,
}

impl Row {
    /// The row for `record`, whose JSON is `json`. A record without an id
    /// (or with one that is no UUID) gets a new UUIDv7.
    pub fn of(record: &DiffRecord, json: String) -> Row {
        let id = record.id.as_deref().and_then(|id| Uuid::parse_str(id).ok()).unwrap_or_else(Uuid::now_v7);
        let ts = humantime::parse_rfc3339_weak(&record.ts).unwrap_or_else(|_| SystemTime::now());
        Row {
            id,
            ts,
            route: record.route.clone(),
            endpoint: record.endpoint.clone(),
            instance: record.instance.clone().unwrap_or_default(),
            config_hash: record.config_hash.clone().unwrap_or_default(),
            result: record.result.as_str(),
            record: json,
        }
    }
}

/// A field a replica saw differ between two answers of the primary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NoisePointer {
    pub route: String,
    pub endpoint: String,
    pub pointer: String,
}

/// The running store: a thread of its own (its own runtime) that writes
/// what [`Store::send`] queues and keeps the shared noise and retention.
/// Dropping it stops the thread once the queue is written (or the store
/// stays unreachable).
pub struct Store {
    records: mpsc::Sender<Row>,
    noise: mpsc::Sender<NoisePointer>,
    metrics: StoreMetrics,
    /// Records queued and not yet written (or given up on).
    unwritten: Arc<AtomicUsize>,
}

impl Store {
    /// Starts the store's thread. It connects (and migrates) in the
    /// background: a database that is down at start is retried, never waited
    /// for. `on_noise` is called on that thread with noise pointers learned by
    /// any replica (each one once).
    pub fn start(
        settings: StoreSettings,
        metrics: StoreMetrics,
        on_noise: impl FnMut(Vec<NoisePointer>) + Send + 'static,
    ) -> std::io::Result<Store> {
        let (records, records_rx) = mpsc::channel(settings.queue.max(1));
        let (noise, noise_rx) = mpsc::channel(1024);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let settings = Arc::new(settings);
        tracing::info!(store = %settings.dsn, "shadow records go to the store");
        let thread_metrics = metrics.clone();
        let unwritten = Arc::new(AtomicUsize::new(0));
        let written = unwritten.clone();
        std::thread::Builder::new().name("strangler-store".into()).spawn(move || {
            runtime.block_on(async move {
                let writer = writer::run(settings.clone(), records_rx, thread_metrics.clone(), written);
                let upkeep = upkeep::run(settings, noise_rx, on_noise, thread_metrics);
                tokio::join!(writer, upkeep);
            })
        })?;
        Ok(Store { records, noise, metrics, unwritten })
    }

    /// Queues a record without waiting: when the queue is full (the store
    /// is slow or down) the record is dropped and counted.
    pub fn send(&self, row: Row) {
        match self.records.try_send(row) {
            Ok(()) => {
                self.unwritten.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.metrics.dropped.with_label_values(&[metrics::STORE_UNAVAILABLE]).inc(),
        }
    }

    /// Waits until every queued record is written, or `within` passes
    /// (at shutdown: a pod that goes away takes as little as it can with it).
    /// Whether the queue was written out.
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while self.unwritten.load(Ordering::Relaxed) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Shares a noise pointer this replica learned with the others.
    pub fn publish_noise(&self, pointer: NoisePointer) {
        let _ = self.noise.try_send(pointer);
    }
}

/// Capped, jittered exponential backoff between connection attempts.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The next wait: between half and all of the current step ("equal
    /// jitter"), the step doubling up to the cap.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        step / 2 + step.mul_f64(fastrand::f64() / 2.0)
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Connects and migrates: a client ready for the store's tables.
pub(crate) async fn connect(settings: &StoreSettings) -> Result<tokio_postgres::Client, String> {
    let config = settings.dsn.connect_config(settings.password_file.as_deref())?;
    let tls = tls::connector(&settings.dsn)?;
    let (mut client, connection) = config.connect(tls).await.map_err(|e| describe(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "store connection ended");
        }
    });
    schema::migrate(&mut client).await.map_err(|e| describe(&e))?;
    Ok(client)
}

/// A PostgreSQL error with the server's message when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap_and_starts_over() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.next_wait()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= Duration::from_millis(100), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= Backoff::CAP), "{waits:?}");
        assert!(waits[9] >= Backoff::CAP / 2, "{waits:?}");
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn a_row_keeps_the_records_id_and_time() {
        let mut record =
            strangler_evidence::testkit::record(1, "users", strangler_evidence::record::Outcome::Match, vec![]);
        let id = Uuid::now_v7();
        record.id = Some(id.to_string());
        record.ts = "2026-11-25T20:26:10.123Z".into();
        let row = Row::of(&record, "{}".into());
        assert_eq!(row.id, id);
        assert_eq!(humantime::format_rfc3339_millis(row.ts).to_string(), "2026-11-25T20:26:10.123Z");
        assert_eq!((row.route.as_str(), row.result), ("users", "match"));
        record.id = None;
        assert_eq!(Row::of(&record, "{}".into()).id.get_version_num(), 7, "a new UUIDv7");
    }
}
