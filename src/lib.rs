//! # strangler
//!
//! A reverse proxy that stands in front of a legacy monolith while teams carve
//! it into services, one URL prefix at a time (the strangler-fig pattern).
//!
//! # Layout
//!
//! A request's path, one stage per file, in the order it meets them
//! (`docs/architecture.md` draws it):
//!
//! 1. [`server`]: accepts the downstream connection — `server/listen.rs`
//!    (sockets), `server/worker.rs` (per-core accept loops, drain),
//!    `server/drain.rs` (the stop signal a connection waits on between
//!    requests), `server/connection.rs` (sniff, TLS, our loop or hyper),
//!    `server/deadline.rs` (one timeout policy), [`server::h1`] (our own
//!    HTTP/1.1 loop for bodiless requests) over `server/downstream.rs` (a
//!    client's connection as the loop reads it: plain TCP or TLS).
//! 2. [`wire`]: the HTTP/1.1 codec, the one place untrusted bytes are parsed
//!    (request heads, answer heads, answer bodies).
//! 3. [`proxy`]: one request, in stages — `proxy/route.rs` ([`path`]
//!    normalizes, [`router`] matches), `proxy/admit.rs` ([`ratelimit`];
//!    [`forwarded`] names the client behind `trusted_proxies`),
//!    `proxy/prepare.rs` ([`headers`], body buffering, the mirror's start),
//!    `proxy/send.rs` (retries, fallback; [`split`] chose the primary;
//!    each attempt's timeout on a reused timer, `proxy/timeout.rs`),
//!    `proxy/finish.rs` (answer edits, [`metrics`], the [`access_log`] line
//!    written at the answer's end); failures
//!    become [`error`]s answered as JSON.
//! 4. [`upstream`]: upstream groups — target choice, outlier ejection,
//!    retry budget, concurrency cap — over [`client`]: connections to
//!    targets (`client/target.rs`), per-thread idle pools
//!    (`client/pool.rs`), the inline exchange ([`client::h1`]) or hyper's,
//!    and the body type both directions use (`client/body.rs`).
//! 5. [`shadow`]: a sampled copy of the request to a candidate, compared
//!    with the primary's answer off the request path; [`diff`], [`record`]
//!    and [`summary`] come from the socket-free crate `strangler-evidence`
//!    (`crates/evidence`), shared with the offline tools. Records go to the
//!    diff log and, with `shadow.store`, to the fleet's PostgreSQL store
//!    (`strangler-store`, `crates/store`), which also shares learned noise
//!    between replicas.
//!
//! A reload's path: [`reload`] (watch, read) → [`config`] (parse: raw serde
//! types, file:line:column errors) → [`table`] (`table/validate.rs`: pure
//! checks into a plan; `table/instantiate.rs`: the only step with side
//! effects, then `retire` of what the old version had) → the [`Shared`]
//! `ArcSwap` the hot path reads; [`health`] starts the new version's checks.
//!
//! A route's autopilot: [`rollout`] (`rollout/plan.rs` checks a route's
//! `rollout:`; `rollout/machine.rs` decides, purely, what its progress does
//! next from the gates' evidence; `rollout/state.rs` holds progress and the
//! audit trail, and the state file) and [`autopilot`], the loop that
//! gathers the evidence (`autopilot/gates.rs`: Prometheus, the fleet store,
//! or this instance's counters), records decisions in the state
//! (`autopilot/store.rs`: the file, or PostgreSQL for a fleet, where
//! `autopilot/lead.rs` lets one replica decide at a time), has the reload
//! task rebuild the table, and shows it all (`autopilot/status.rs`).
//!
//! Beside both: [`access_log`] (JSON lines in per-worker buffers, written by
//! a thread of their own), [`metrics`] (what every request counts is
//! counted per thread, `metrics/shards.rs`, and added up when read),
//! [`clock`] (the coarse clock deadlines are read from), [`tls`] (termination, SNI, live certificate
//! rotation, https upstreams), [`admin`] (`/healthz`, `/readyz`, `/metrics`,
//! `/config`, `/explain`, `/shadow`, `POST /preview`), [`explain`] (why a
//! request takes its route) and [`preview`] (what an edit would move:
//! `preview/sample.rs` keeps a bounded sample of recent traffic, taken once
//! a request's route is known (`proxy/mod.rs`); `preview/compare.rs` routes
//! it through the table in force and a proposed one; `preview/lint.rs` finds
//! routes no request can reach, for `strangler check`). Admin endpoints that
//! act or read traffic back ask for loopback or the admin token
//! (`admin/auth.rs`).
//!
//! `main.rs` is a thin CLI over [`server::run`], which takes already-bound
//! listeners and a shutdown future so tests can run the real server on
//! `127.0.0.1:0` and stop it when they like. Its offline commands,
//! `strangler report` (cutover reports from shadow-diff logs) and
//! `strangler replay` (re-sends logged mismatches to a new build), live in
//! the crate `strangler-offline` (`crates/offline`), which this library
//! does not use. Imports between these modules run one way only
//! (`tests/architecture.rs` checks it).

pub mod access_log;
pub mod admin;
pub mod autopilot;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod explain;
pub mod forwarded;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod path;
pub mod preview;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod rollout;
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
    /// The settings read at start-up that a reload cannot change (listeners,
    /// top-level `shadow:`, `tls:`): what `/config` shows as in force.
    pub restart_settings: reload::RestartSettings,
    /// Where each route's rollout stands, as last read from the rollout
    /// state; every table is built with it (see [`rollout`]).
    pub rollouts: ArcSwap<rollout::Progresses>,
    /// The bounded sample of recent requests a preview routes again.
    pub preview: preview::Sampler,
    /// The process's connection to a PostgreSQL rollout state (status,
    /// commands, reload records; the pilot keeps its own).
    pub rollout_state: Arc<autopilot::store::Link>,
    /// Whether this instance's pilot decides rollouts (holds the lead lock
    /// of a PostgreSQL state, or shares a state file).
    pub rollout_leader: AtomicBool,
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
        let rollouts = rollout::Progresses::new();
        let table = Table::build(file, text, &Context { metrics: &metrics, previous: None, rollouts: &rollouts })?;
        // The start-up load is no reload: `strangler_config_reloads_total` stays at 0.
        metrics.set_config_hash(&table.hash);
        let shadow = shadow::ShadowRuntime::new(table.raw.shadow.clone(), &metrics);
        shadow.precreate_series(table.shadowed_routes());
        let restart_settings = reload::RestartSettings::of(&table);
        Ok(Arc::new(Shared {
            shadow,
            table: ArcSwap::from_pointee(table),
            metrics,
            draining: AtomicBool::new(false),
            restart_settings,
            rollouts: ArcSwap::from_pointee(rollouts),
            preview: preview::Sampler::default(),
            rollout_state: Arc::default(),
            rollout_leader: AtomicBool::new(false),
        }))
    }
}
