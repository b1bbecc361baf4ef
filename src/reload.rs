//! Live config reload: a new `routes.yaml` is parsed and validated
//! completely, then swapped in atomically; requests in flight finish on the
//! table they started with. An invalid version is logged with its line and
//! column, counted, and never replaces the one serving.
//!
//! Triggers, all funnelled into one task so reloads never race: any event in
//! the config's directory (debounced; a Kubernetes ConfigMap update is an
//! atomic `..data` symlink swap, editors rename over the file), SIGHUP, and a
//! slow timer that compares the content hash as a safety net.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use tokio::sync::Notify;

use crate::config::{self, ConfigError};
use crate::table::{self, content_hash, Context, Table};
use crate::Shared;

/// What a reload attempt did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file's content hash is the one already serving.
    Unchanged,
    Applied {
        hash: String,
    },
    Rejected(ConfigError),
}

/// Re-reads the config now and swaps it in if it changed and is valid.
pub fn reload(path: &Path, shared: &Shared, trigger: &str) -> ReloadOutcome {
    let text = match config::read(path) {
        Ok(text) => text,
        Err(e) => return reject(shared, e, trigger),
    };
    let current = shared.table.load();
    if content_hash(&text) == current.hash {
        return ReloadOutcome::Unchanged;
    }
    let ctx = Context { metrics: &shared.metrics, previous: Some(&current) };
    let table = match Table::build(&path.display().to_string(), &text, &ctx) {
        Ok(table) => table,
        Err(e) => return reject(shared, e, trigger),
    };
    if table.listen != current.listen || table.admin != current.admin {
        tracing::warn!(
            listen = %table.listen, admin = %table.admin,
            "listen/admin addresses changed: they take effect only after a restart; still serving on the old ones"
        );
    }
    let hash = table.hash.clone();
    let routes = table.router.entries().len();
    if table.raw.shadow != current.raw.shadow {
        tracing::warn!("the top-level shadow settings (log, max_inflight, rotation) take effect only after a restart");
    }
    let table = Arc::new(table);
    shared.table.store(table.clone());
    shared.shadow.serve_routes(table.router.entries().iter().map(|(_, r)| &*r.name));
    for route in table::retire(&current, &table, &shared.metrics) {
        shared.shadow.forget_route(&route);
    }
    crate::health::spawn_for(&table);
    // Targets whose health check was removed: nothing would ever clear an old verdict.
    for upstream in table.upstreams.values().filter(|u| u.settings.health_check.is_none()) {
        for target in upstream.targets.iter() {
            target.state.set_healthy(true);
        }
    }
    if table.wants_shadow_log() {
        shared.shadow.start_background();
    }
    shared.metrics.record_reload(true);
    shared.metrics.set_config_hash(&hash);
    tracing::info!(trigger, hash = %hash, routes, "config reloaded");
    ReloadOutcome::Applied { hash }
}

fn reject(shared: &Shared, error: ConfigError, trigger: &str) -> ReloadOutcome {
    shared.metrics.record_reload(false);
    tracing::error!(trigger, error = %error, "config rejected; the previous version keeps serving");
    ReloadOutcome::Rejected(error)
}

/// Keeps the file watcher alive; dropping it stops watching.
pub struct Watcher {
    _debouncer:
        Option<notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>>,
    pub trigger: Arc<Notify>,
}

/// Starts the reload task: directory events, the poll timer and explicit
/// triggers (SIGHUP) all lead to [`reload`].
pub fn spawn(path: PathBuf, shared: Arc<Shared>, poll_interval: Duration) -> Watcher {
    let trigger = Arc::new(Notify::new());
    let debouncer = watch_directory(&path, trigger.clone());
    let task_trigger = trigger.clone();
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(poll_interval);
        poll.tick().await;
        loop {
            let why = tokio::select! {
                _ = task_trigger.notified() => "event",
                _ = poll.tick() => "poll",
            };
            let (path, shared) = (path.clone(), shared.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&path, &shared, why)).await;
        }
    });
    Watcher { _debouncer: debouncer, trigger }
}

fn watch_directory(
    path: &Path,
    trigger: Arc<Notify>,
) -> Option<notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |result: DebounceEventResult| {
        if result.is_ok() {
            trigger.notify_one();
        }
    };
    let mut debouncer = match new_debouncer(Duration::from_millis(150), None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config; relying on the poll timer and SIGHUP");
            return None;
        }
    };
    if let Err(e) = debouncer.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; relying on the poll timer and SIGHUP");
        return None;
    }
    Some(debouncer)
}
