//! Live config reload: a new `routes.yaml` is parsed and validated
//! completely, then swapped in atomically; requests in flight finish on the
//! table they started with. An invalid version is logged with its line and
//! column, counted, and never replaces the one serving.
//!
//! Triggers, all funnelled into one task so reloads never race: events for
//! the config file in its directory (debounced; a Kubernetes ConfigMap update
//! is an atomic `..data` symlink swap, editors rename over the file; events
//! for other files there are ignored), SIGHUP, and a slow timer as a safety
//! net. Every trigger reads the file and compares its content hash with the
//! last attempt's, accepted or rejected: bytes that did not change are
//! neither parsed, nor counted, nor logged, so a bad file is rejected once
//! per change; only SIGHUP tries rejected bytes again (a CA file they name
//! may have been fixed). The start-up load is no reload either:
//! `strangler_config_reloads_total` counts changed files only.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use serde::Serialize;
use tokio::sync::Notify;

use crate::config::{self, ConfigError, RawConfig, RawShadowLog, RawTls};
use crate::table::{self, content_hash, Context, Table};
use crate::Shared;

/// What a reload attempt did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file's bytes are those of the last attempt (accepted or
    /// rejected), or of the version serving: nothing was parsed or counted.
    Unchanged,
    Applied {
        hash: String,
    },
    Rejected(ConfigError),
}

/// What the reloader last read at the config path: the bytes' hash, or why
/// they could not be read (the same failure again is no change either).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Hash(String),
    Unreadable(String),
    /// Valid bytes that failed on something else (a CA file): read again.
    Retry,
}

/// Re-reads one config file for the shared state, remembering what it read
/// last so that unchanged bytes are never parsed twice.
pub struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    last: Mutex<Seen>,
    /// The last failure that did not come from the bytes (hash, error), so
    /// that retrying the same version counts and logs it once.
    last_outside_failure: Mutex<Option<(String, String)>>,
}

impl Reloader {
    /// A reloader for `path`, whose last version is the one in force.
    pub fn new(path: PathBuf, shared: Arc<Shared>) -> Reloader {
        let last = Mutex::new(Seen::Hash(shared.table.load().hash.clone()));
        Reloader { path, shared, last, last_outside_failure: Mutex::new(None) }
    }

    /// Re-reads the config now and swaps it in if its bytes changed and it
    /// is valid. `explicit` (SIGHUP) also tries again bytes that were
    /// rejected last time: a CA file they name may have been fixed since.
    /// Blocking (file I/O, CA files): run it off the async workers.
    pub fn reload(&self, trigger: &str, explicit: bool) -> ReloadOutcome {
        let read = config::read(&self.path);
        let seen = match &read {
            Ok(text) => Seen::Hash(content_hash(text)),
            Err(e) => Seen::Unreadable(e.to_string()),
        };
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if *last == seen && !explicit {
                return ReloadOutcome::Unchanged;
            }
            // Remembered before parsing: a version rejected for its bytes is not
            // tried again (one that failed on a file it names is: `reject_for_now`).
            *last = seen;
        }
        let shared = &*self.shared;
        let text = match read {
            Ok(text) => text,
            Err(e) => return reject(shared, e, trigger),
        };
        let current = shared.table.load();
        if content_hash(&text) == current.hash {
            tracing::info!(trigger, hash = %current.hash, "the config is back to the version in force; nothing to reload");
            return ReloadOutcome::Unchanged;
        }
        let plan = match table::validate(&self.path.display().to_string(), &text) {
            Ok(plan) => plan,
            Err(e) => return reject(shared, e, trigger),
        };
        self.swap_in(plan, &current, trigger)
    }

    /// Builds the version in force again with the rollouts' progress as it
    /// now stands (`shared.rollouts`), and swaps it in: a rollout step moves
    /// weights without an edit of the file. Runs on the reload task, so it
    /// never races a reload of the file.
    pub fn reapply(&self, trigger: &str) -> ReloadOutcome {
        let current = self.shared.table.load();
        match table::validate(&current.file, &current.text) {
            Ok(plan) => self.swap_in(plan, &current, trigger),
            // The text was valid when it went in force; kept an error, never a panic.
            Err(e) => reject(&self.shared, e, trigger),
        }
    }

    /// Instantiates `plan` against the version in force and swaps it in.
    fn swap_in(&self, plan: table::Plan, current: &Table, trigger: &str) -> ReloadOutcome {
        let shared = &*self.shared;
        let hash = plan.hash.clone();
        let rollouts = shared.rollouts.load();
        let ctx = Context { metrics: &shared.metrics, previous: Some(current), rollouts: &rollouts };
        let table = match table::instantiate(plan, &ctx) {
            Ok(table) => table,
            Err(e) => return self.reject_for_now(hash, e, trigger),
        };
        *self.last_outside_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let pending = shared.restart_settings.pending_in(&table);
        if !pending.is_empty() {
            let settings: Vec<&str> = pending.keys().copied().collect();
            tracing::warn!(
                settings = ?settings,
                "these settings take effect only after a restart; the rest of the version is applied, and /config lists them under pending_restart"
            );
        }
        let hash = table.hash.clone();
        let routes = table.router.entries().len();
        let table = Arc::new(table);
        shared.table.store(table.clone());
        shared.shadow.serve_routes(table.router.entries().iter().map(|(_, r)| &*r.name));
        shared.shadow.precreate_series(table.shadowed_routes());
        for route in table::retire(current, &table, &shared.metrics) {
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
        if trigger == ROLLOUT_TRIGGER {
            tracing::info!(hash = %hash, routes, "rollout weights applied");
        } else {
            shared.metrics.record_reload(true);
            shared.metrics.set_config_hash(&hash);
            let edit = RouteEdit::between(&current.raw, &table.raw);
            tracing::info!(trigger, hash = %hash, routes, added = ?edit.added, removed = ?edit.removed, changed = ?edit.changed, "config reloaded");
            audit(shared, &table, trigger, edit);
        }
        ReloadOutcome::Applied { hash }
    }
}

/// Which routes an edit added, removed and changed, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteEdit {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl RouteEdit {
    /// Compares the routes of two versions of the file.
    pub fn between(old: &crate::config::RawConfig, new: &crate::config::RawConfig) -> RouteEdit {
        let as_json = |raw: &crate::config::RawConfig| -> BTreeMap<String, serde_json::Value> {
            raw.routes.iter().map(|r| (r.name.clone(), serde_json::to_value(r).unwrap_or_default())).collect()
        };
        let (old, new) = (as_json(old), as_json(new));
        let mut edit = RouteEdit::default();
        for (name, route) in &new {
            match old.get(name) {
                None => edit.added.push(name.clone()),
                Some(before) if before != route => edit.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        edit.removed = old.keys().filter(|name| !new.contains_key(*name)).cloned().collect();
        edit
    }
}

/// Records a reload in the rollout state's audit trail, beside the
/// rollouts' transitions, when the config uses the autopilot. On the
/// runtime, not in the way of the reload: a state that is down loses the
/// record (logged), never delays the version.
fn audit(shared: &Shared, table: &Table, trigger: &str, edit: RouteEdit) {
    let uses_autopilot = table.raw.autopilot.is_some() || table.raw.routes.iter().any(|r| r.rollout.is_some());
    if !uses_autopilot {
        return;
    }
    let entry = crate::rollout::state::Reload {
        at_ms: crate::rollout::now_ms(),
        hash: table.hash.clone(),
        trigger: trigger.to_string(),
        added: edit.added,
        removed: edit.removed,
        changed: edit.changed,
    };
    let store = crate::autopilot::state_of(table, &shared.rollout_state);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let recorded = store.update(|state| {
            state.reloads.push(entry);
            Ok(())
        });
        if let Err(e) = recorded.await {
            tracing::warn!(error = %e, "the reload could not be recorded in the rollout state");
        }
    });
}

impl Reloader {
    /// Valid bytes that failed on what they name (an unreadable CA file,
    /// which Kubernetes may update a moment after the ConfigMap): tried again
    /// at every trigger until it works, counted and logged once per error.
    fn reject_for_now(&self, hash: String, error: ConfigError, trigger: &str) -> ReloadOutcome {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Seen::Retry;
        let failure = Some((hash, error.to_string()));
        let mut last = self.last_outside_failure.lock().unwrap_or_else(|e| e.into_inner());
        if *last == failure {
            return ReloadOutcome::Rejected(error);
        }
        *last = failure;
        reject(&self.shared, error, trigger)
    }
}

fn reject(shared: &Shared, error: ConfigError, trigger: &str) -> ReloadOutcome {
    shared.metrics.record_reload(false);
    tracing::error!(trigger, error = %error, "config rejected; the previous version keeps serving");
    ReloadOutcome::Rejected(error)
}

/// The settings a process reads once, at start-up: the listeners' addresses
/// (`listen`, `admin`), the top-level `shadow:` section (diff log, in-flight
/// cap) and `tls:` (certificate paths, the plain listener). A reload that
/// changes one is applied for everything else; the change waits for a
/// restart, and `/config` shows it as pending.
#[derive(Debug, Clone)]
pub struct RestartSettings {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub shadow: Option<RawShadowLog>,
    pub tls: Option<RawTls>,
}

/// A setting read from the file that waits for a restart.
#[derive(Debug, Serialize)]
pub struct PendingSetting {
    /// What the process serves with until it restarts.
    pub in_force: serde_json::Value,
    /// What the file says now.
    pub read: serde_json::Value,
}

impl RestartSettings {
    /// The restart-only settings of a config version.
    pub fn of(table: &Table) -> RestartSettings {
        RestartSettings {
            listen: table.listen,
            admin: table.admin,
            shadow: table.raw.shadow.clone(),
            tls: table.raw.tls.clone(),
        }
    }

    /// The settings `table` would change, by name: empty when a restart
    /// would change nothing that a reload did not.
    pub fn pending_in(&self, table: &Table) -> BTreeMap<&'static str, PendingSetting> {
        let read = RestartSettings::of(table);
        let mut pending = BTreeMap::new();
        for (name, in_force, read) in self.values().into_iter().zip(read.values()).map(|((n, a), (_, b))| (n, a, b)) {
            if in_force != read {
                pending.insert(name, PendingSetting { in_force, read });
            }
        }
        pending
    }

    /// `raw` with these settings in place of its own: the config in force.
    pub fn apply_to(&self, raw: &mut RawConfig) {
        raw.listen = self.listen.to_string();
        raw.admin = self.admin.to_string();
        raw.shadow = self.shadow.clone();
        raw.tls = self.tls.clone();
    }

    fn values(&self) -> [(&'static str, serde_json::Value); 4] {
        let json = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or(serde_json::Value::Null);
        [
            ("listen", self.listen.to_string().into()),
            ("admin", self.admin.to_string().into()),
            ("shadow", json(serde_json::to_value(&self.shadow))),
            ("tls", json(serde_json::to_value(&self.tls))),
        ]
    }
}

/// The trigger of a rebuild for a rollout's new weights: not a reload of
/// the file, so not counted in `strangler_config_reloads_total`.
pub const ROLLOUT_TRIGGER: &str = "rollout";

/// Keeps the file watcher alive; dropping it stops watching.
pub struct Watcher {
    _debouncer:
        Option<notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>>,
    /// An explicit reload (SIGHUP): retries a rejected version too.
    pub trigger: Arc<Notify>,
    /// A rollout moved (`shared.rollouts` changed): build the version in force again.
    pub rollout: Arc<Notify>,
}

/// Starts the reload task: events for the config file, the poll timer and
/// explicit triggers (SIGHUP) all lead to [`Reloader::reload`].
pub fn spawn(path: PathBuf, shared: Arc<Shared>, poll_interval: Duration) -> Watcher {
    let trigger = Arc::new(Notify::new());
    let events = Arc::new(Notify::new());
    let debouncer = watch_directory(&path, events.clone());
    let explicit = trigger.clone();
    let rollout = Arc::new(Notify::new());
    let moved = rollout.clone();
    let reloader = Arc::new(Reloader::new(path, shared));
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(poll_interval);
        poll.tick().await;
        loop {
            let (why, forced) = tokio::select! {
                _ = explicit.notified() => ("signal", true),
                _ = events.notified() => ("event", false),
                _ = poll.tick() => ("poll", false),
                _ = moved.notified() => (ROLLOUT_TRIGGER, false),
            };
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || match why {
                ROLLOUT_TRIGGER => reloader.reapply(why),
                _ => reloader.reload(why, forced),
            })
            .await;
        }
    });
    Watcher { _debouncer: debouncer, trigger, rollout }
}

fn watch_directory(
    path: &Path,
    trigger: Arc<Notify>,
) -> Option<notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let config = path.to_path_buf();
    let handler = move |result: DebounceEventResult| {
        let relevant = match result {
            Ok(events) => {
                let names = watched_names(&config);
                events
                    .iter()
                    .filter(|e| can_change(&e.kind))
                    .flat_map(|e| e.paths.iter())
                    .any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n)))
            }
            // Events may have been lost: read the file (unchanged bytes cost no parse).
            Err(_) => true,
        };
        if relevant {
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

/// Whether an event of this kind can change what the config path reads.
/// Opening, reading and closing a file unwritten cannot: the reload's own read
/// of the file raises those, and counting them kept the reloader reading the
/// file again every debounce period (150 ms), forever, waking three threads
/// and a worker each time.
fn can_change(kind: &EventKind) -> bool {
    !matches!(kind, EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)))
}

/// The names in the config's directory whose events can change what the
/// config path reads: the file itself (written in place, renamed over) and,
/// when it is a symlink within the directory, the link's first step — the
/// `..data` that Kubernetes swaps atomically (`routes.yaml ->
/// ..data/routes.yaml`). Read at each event: the file may become a link.
fn watched_names(path: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = path.file_name().map(|n| n.to_os_string()).into_iter().collect();
    if let Ok(target) = std::fs::read_link(path) {
        if let (true, Some(Component::Normal(first))) = (target.is_relative(), target.components().next()) {
            names.push(first.to_os_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reading_the_config_raises_no_reload_and_writing_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, "a").unwrap();
        let events = Arc::new(Notify::new());
        let _watching = watch_directory(&path, events.clone()).expect("inotify works here");
        // Read as the reloader reads it: a notification before the wait
        // below is kept for it (`notify_one` stores a permit).
        for _ in 0..3 {
            config::read(&path).unwrap();
        }
        // Longer than the debounce (150 ms) and its ticks: a reload the
        // reads raised would have been asked for by then.
        let quiet = tokio::time::timeout(Duration::from_millis(800), events.notified()).await;
        assert!(quiet.is_err(), "reading the config asked for a reload");
        std::fs::write(&path, "b").unwrap();
        let asked = tokio::time::timeout(Duration::from_secs(10), events.notified()).await;
        assert!(asked.is_ok(), "writing the config asked for no reload");
    }

    #[test]
    fn a_kubernetes_link_makes_its_data_directory_a_watched_name() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.yaml");
        std::fs::write(&plain, "x").unwrap();
        assert_eq!(watched_names(&plain), ["plain.yaml"]);
        let link = dir.path().join("routes.yaml");
        std::os::unix::fs::symlink("..data/routes.yaml", &link).unwrap();
        assert_eq!(watched_names(&link), ["routes.yaml", "..data"]);
    }
}
