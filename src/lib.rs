//! # strangler
//!
//! A reverse proxy that stands in front of a legacy monolith while teams carve
//! it into services, one URL prefix at a time (the strangler-fig pattern).
//!
//! # Layout
//!
//! A request's path through the proxy, module by module:
//!
//! - [`config`]: `routes.yaml` as written (raw serde types, unknown keys refused)
//!   and config errors with file, line and column.
//! - [`table`]: the validated, typed route table built from a config; the hot
//!   path reads it through one `ArcSwap` in [`Shared`].
//! - [`path`]: normalizes the request path once, before matching.
//! - [`router`]: the segment trie that picks a route; cost depends on path
//!   depth, not table size.
//! - [`proxy`] (+ [`headers`], [`client::body`], [`error`]): forwards the request to the
//!   upstream and streams the answer back.
//! - [`split`]: canary splits and sticky assignment.
//! - [`shadow`] (+ [`diff`], [`record`], [`summary`]): mirrors sampled
//!   requests to a candidate upstream, compares its answer with the
//!   primary's, writes one diff record per request and keeps the live
//!   summary behind the admin `/shadow` endpoint. `diff`, `record` and
//!   `summary` live in the socket-free crate `strangler-evidence`
//!   (`crates/evidence`), shared with the offline tools.
//! - [`upstream`]: upstream groups, target choice and health, retry budget,
//!   concurrency caps; [`client`]: connections to targets and their
//!   per-thread keep-alive pools, with [`client::h1`] exchanging bodiless
//!   requests inline (hyper's client takes bodies and upgrades).
//! - [`health`]: active health checks; [`ratelimit`]: per-route token buckets.
//!
//! Beside the request path:
//!
//! - [`tls`]: TLS termination with SNI and live certificate rotation; https upstreams.
//! - [`server`]: listeners, HTTP/1.1 + HTTP/2, graceful drain on shutdown;
//!   [`server::h1`] serves bodiless plain-HTTP/1.1 requests in the
//!   connection's own task (hyper takes the rest), with [`wire`] holding the
//!   HTTP/1.1 pieces both it and [`client::h1`] use; `server::balance`
//!   optionally evens out connections between per-core workers.
//! - [`reload`]: watches the config and swaps in valid new versions.
//! - [`metrics`]: Prometheus metrics, handles resolved per route at load.
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`, `/metrics`, `/config`, `/explain`).
//! - [`explain`]: why a request takes the route it takes.
//!
//! `main.rs` is a thin CLI over [`server::run`], which takes already-bound
//! listeners and a shutdown future so tests can run the real server on
//! `127.0.0.1:0` and stop it when they like. Its offline commands,
//! `strangler report` (cutover reports from shadow-diff logs) and
//! `strangler replay` (re-sends logged mismatches to a new build), live in
//! the crate `strangler-offline` (`crates/offline`), which this library
//! does not compile.

pub mod admin;
pub mod client;
pub mod config;
pub mod error;
pub mod explain;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod router;
pub mod server;
pub mod shadow;
pub mod split;
pub mod table;
pub mod tls;
pub mod upstream;
pub mod wire;

/// Shadow evidence (diff records, answer comparison, the summary and its
/// verdict), kept at these paths from the socket-free `strangler-evidence`.
pub use strangler_evidence::{diff, record, summary};

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::table::{Context, Table};

/// State shared by every connection, the admin API and the reloader.
pub struct Shared {
    /// The route table in force; swapped whole on reload, read without locks.
    pub table: ArcSwap<Table>,
    pub metrics: Arc<Metrics>,
    /// Set on shutdown: readiness turns false.
    pub draining: AtomicBool,
    /// Shadow comparison state: in-flight cap, diff log, learned noise.
    pub shadow: Arc<shadow::ShadowRuntime>,
}

impl Shared {
    /// Loads the config at `path` and builds the shared state around it.
    pub fn load(path: &Path) -> Result<Arc<Shared>, ConfigError> {
        let text = config::read(path)?;
        Shared::from_text(&path.display().to_string(), &text)
    }

    /// Builds the shared state from config text (`file` names it in errors).
    pub fn from_text(file: &str, text: &str) -> Result<Arc<Shared>, ConfigError> {
        let metrics = Metrics::new();
        let table = Table::build(file, text, &Context { metrics: &metrics, previous: None })?;
        metrics.record_reload(true);
        metrics.set_config_hash(&table.hash);
        let shadow = shadow::ShadowRuntime::new(table.raw.shadow.clone(), &metrics);
        Ok(Arc::new(Shared { shadow, table: ArcSwap::from_pointee(table), metrics, draining: AtomicBool::new(false) }))
    }
}
