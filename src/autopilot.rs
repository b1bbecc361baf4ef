//! The autopilot's runner, the pilot: every `autopilot.interval` it reads
//! the rollout state,
//! evaluates the gates of each moving rollout, records what the machine
//! decides, and hands the resulting progress to the reload task, which
//! builds the version in force again with the new weights.
//!
//! It decides nothing itself ([`super::machine`] does) and holds no
//! progress of its own between ticks: the state store is the truth, so a
//! command from a shell (`strangler rollout pause`) or another replica is
//! picked up at the next tick. When the store cannot be read, the weights
//! in force stay as they are (never a surprise jump) and the rollout does
//! not move until it can.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Serialize;
use tokio::sync::Notify;

use crate::rollout::evidence::{self, Totals};
use crate::rollout::machine::{self, Decision, GateState, Progress, Reading, Status};
pub use crate::rollout::now_ms;
use crate::rollout::plan::RolloutPlan;
use crate::rollout::prometheus as promql;
use crate::rollout::state::{reconcile, FileState, State, StepStatus, Stored, Transition};
use crate::rollout::Progresses;
use crate::table::Table;
use crate::Shared;

/// Default time between two evaluations.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Default state file for one instance.
pub const DEFAULT_STATE_FILE: &str = "./strangler-rollouts.json";

/// The rollouts of a table: (route name, plan).
pub fn plans(table: &Table) -> Vec<(Arc<str>, Arc<RolloutPlan>)> {
    table
        .router
        .entries()
        .iter()
        .filter_map(|(_, r)| r.rollout.as_ref().map(|(plan, _)| (r.name.clone(), plan.clone())))
        .collect()
}

/// Where a table keeps its rollout state.
pub fn state_of(table: &Table) -> FileState {
    let path = table.raw.autopilot.as_ref().and_then(|a| a.state.clone());
    FileState::new(path.unwrap_or_else(|| DEFAULT_STATE_FILE.into()))
}

fn interval_of(table: &Table) -> Duration {
    table.raw.autopilot.as_ref().and_then(|a| a.interval).unwrap_or(DEFAULT_INTERVAL)
}

/// How far ahead a step forward is scheduled: two evaluation intervals, so
/// every replica has read it before it begins (see [`crate::rollout::machine`]).
pub fn lead_of(table: &Table) -> u64 {
    2 * interval_of(table).as_millis() as u64 + 50
}

/// Each rollout's progress as the store has it, read against the plans in
/// force (a route the store does not know yet is on its first step).
pub fn progresses(plans: &[(Arc<str>, Arc<RolloutPlan>)], state: &State, now_ms: u64) -> Progresses {
    plans
        .iter()
        .map(|(name, plan)| {
            let progress =
                state.routes.get(&**name).and_then(|s| reconcile(plan, s)).unwrap_or(Progress::start(now_ms));
            (name.to_string(), progress)
        })
        .collect()
}

/// The rollout metrics: step, status and transitions per route.
#[derive(Clone)]
struct RolloutMetrics {
    step: IntGaugeVec,
    status: IntGaugeVec,
    transitions: IntCounterVec,
    store_errors: prometheus::IntCounter,
}

impl RolloutMetrics {
    fn new(shared: &Shared) -> RolloutMetrics {
        let m = &shared.metrics;
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            m.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric"))
        };
        RolloutMetrics {
            step: gauge("strangler_rollout_step", "Percent of the route's traffic on rollout.to.", &["route"]),
            status: gauge("strangler_rollout_status", "1 for the rollout's current status.", &["route", "status"]),
            transitions: m.register(
                IntCounterVec::new(
                    Opts::new("strangler_rollout_transitions_total", "Rollout transitions by route and new status."),
                    &["route", "status"],
                )
                .expect("a valid metric"),
            ),
            store_errors: m.register(
                prometheus::IntCounter::new(
                    "strangler_rollout_state_errors_total",
                    "Evaluations skipped because the rollout state could not be read or written.",
                )
                .expect("a valid metric"),
            ),
        }
    }

    fn show(&self, plan: &RolloutPlan, route: &str, progress: &Progress, now: u64) {
        let share = machine::effective(plan, progress, now).share;
        self.step.with_label_values(&[route]).set(i64::from(share / 100));
        for status in Status::ALL {
            self.status.with_label_values(&[route, status.as_str()]).set(i64::from(status == progress.status));
        }
    }
}

/// The pilot's memory between ticks: each moving step's counters when this
/// instance first saw it (the start of its evidence window here).
struct Pilot {
    shared: Arc<Shared>,
    moved: Arc<Notify>,
    metrics: RolloutMetrics,
    baselines: HashMap<String, ((usize, u64), Totals)>,
    store_failing: bool,
    prometheus: reqwest::Client,
}

/// A step's readings, with the (step, start) they were taken for: a
/// decision uses them only if the step is still the same under the lock.
type Gathered = HashMap<String, ((usize, u64), Vec<Reading>)>;

/// Starts the pilot on the current runtime. `moved` is the reload task's
/// rollout trigger ([`crate::reload::Watcher::rollout`]).
pub fn spawn(shared: Arc<Shared>, moved: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    let metrics = RolloutMetrics::new(&shared);
    let prometheus = reqwest::Client::builder().build().expect("a client with the default TLS settings");
    let mut pilot = Pilot { shared, moved, metrics, baselines: HashMap::new(), store_failing: false, prometheus };
    tokio::spawn(async move {
        loop {
            let interval = interval_of(&pilot.shared.table.load());
            let next_change = pilot.tick(now_ms()).await;
            // Wake at a step's start, so weights switch on time on every replica.
            let until_change = next_change.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            tokio::time::sleep(until_change.map_or(interval, |d| d.min(interval))).await;
        }
    })
}

/// Before the first request: the progress the store has, so a restarted
/// instance serves the weights the fleet serves, not the first step's.
pub fn restore(shared: &Shared) -> Result<(), String> {
    let table = shared.table.load();
    let plans = plans(&table);
    if plans.is_empty() {
        return Ok(());
    }
    let state = state_of(&table).load()?;
    shared.rollouts.store(Arc::new(progresses(&plans, &state, now_ms())));
    Ok(())
}

impl Pilot {
    /// One evaluation; returns when a scheduled step next begins. The
    /// evidence is gathered first (Prometheus may be slow), then the
    /// decisions are made and recorded under the state's lock.
    async fn tick(&mut self, now: u64) -> Option<u64> {
        let table = self.shared.table.load_full();
        let plans = plans(&table);
        if plans.is_empty() {
            return None;
        }
        let store = state_of(&table);
        let lead = lead_of(&table);
        let read = store.clone();
        let gathered = match blocking(move || read.load()).await {
            Ok(state) => self.gather(&plans, &progresses(&plans, &state, now)).await,
            Err(_) => Gathered::new(),
        };
        let (write, metrics, all) = (store.clone(), self.metrics.clone(), plans.clone());
        let evaluated =
            blocking(move || write.update(|state| Ok(evaluate(&all, state, (now, lead), &gathered, &metrics)))).await;
        match evaluated {
            Ok(progresses) => {
                if self.store_failing {
                    tracing::info!(state = %store.path().display(), "the rollout state is readable again; rollouts move on");
                    self.store_failing = false;
                }
                let next_change = progresses.values().filter_map(|p| machine::next_change(p, now)).min();
                self.apply(&plans, progresses, now);
                next_change
            }
            Err(e) => {
                self.metrics.store_errors.inc();
                if !self.store_failing {
                    tracing::warn!(error = %e, "rollouts paused: the rollout state cannot be used; weights stay as they are");
                    self.store_failing = true;
                }
                // A step already read and scheduled still begins on time.
                let current = self.shared.rollouts.load();
                if self.weights_changed(&plans, &current, now) {
                    self.moved.notify_one();
                }
                current.values().filter_map(|p| machine::next_change(p, now)).min()
            }
        }
    }

    /// The readings of every rollout on a step that has begun.
    async fn gather(&mut self, plans: &[(Arc<str>, Arc<RolloutPlan>)], progresses: &Progresses) -> Gathered {
        let now = now_ms();
        let mut gathered = Gathered::new();
        for (name, plan) in plans {
            let progress = &progresses[&**name];
            if !progress.status.moving() || progress.since_ms > now {
                self.baselines.remove(&**name);
                continue;
            }
            let readings = match &plan.prometheus {
                Some(base) => self.read_prometheus(base, name, plan, progress, now).await,
                None => self.read_local(name, plan, progress),
            };
            gathered.insert(name.to_string(), ((progress.step, progress.since_ms), readings));
        }
        gathered
    }

    /// The gates over the step's window from this instance's counters.
    fn read_local(&mut self, name: &str, plan: &RolloutPlan, progress: &Progress) -> Vec<Reading> {
        let now = evidence::read(&self.shared.metrics, name, &plan.from, &plan.to);
        let key = (progress.step, progress.since_ms);
        let start = match self.baselines.get(name) {
            Some((k, start)) if *k == key => start,
            _ => &self.baselines.entry(name.to_string()).insert_entry((key, now.clone())).into_mut().1,
        };
        let evidence = evidence::between(start, &now);
        machine::judge(plan, plan.steps[progress.step], &evidence)
    }

    /// The gates over the step's window from the fleet's Prometheus, each
    /// with the query behind it; all waiting when Prometheus cannot answer.
    async fn read_prometheus(
        &self,
        base: &str,
        name: &str,
        plan: &RolloutPlan,
        progress: &Progress,
        now: u64,
    ) -> Vec<Reading> {
        let window_s = now.saturating_sub(progress.since_ms) / 1000;
        let q = promql::queries(name, &plan.from, &plan.to, window_s);
        let step = plan.steps[progress.step];
        match promql::evidence(&self.prometheus, base, &q).await {
            Ok(evidence) => machine::judge(plan, step, &evidence)
                .into_iter()
                .map(|r| {
                    let query = match r.name.as_str() {
                        "min_samples" | "min_match" => &q.matched,
                        "max_5xx_ratio" => &q.to_5xx,
                        _ => &q.to_p99,
                    };
                    Reading { source: Some(query.clone()), ..r }
                })
                .collect(),
            Err(e) => machine::judge(plan, step, &machine::Evidence::default())
                .into_iter()
                .map(|r| Reading { state: GateState::Wait, source: Some(format!("unavailable: {e}")), ..r })
                .collect(),
        }
    }

    /// Hands new progress to the reload task when the weights or shadowing
    /// in force differ from what it means now.
    fn apply(&self, plans: &[(Arc<str>, Arc<RolloutPlan>)], progresses: Progresses, now: u64) {
        let moved = self.weights_changed(plans, &progresses, now);
        for (name, plan) in plans {
            self.metrics.show(plan, name, &progresses[&**name], now);
        }
        self.shared.rollouts.store(Arc::new(progresses));
        if moved {
            self.moved.notify_one();
        }
    }

    /// Whether the table in force serves other weights than `progresses`
    /// mean at `now` (a step began, or the progress changed).
    fn weights_changed(&self, plans: &[(Arc<str>, Arc<RolloutPlan>)], progresses: &Progresses, now: u64) -> bool {
        let table = self.shared.table.load();
        let in_force: HashMap<&str, machine::Effective> = table
            .router
            .entries()
            .iter()
            .filter_map(|(_, r)| r.rollout.as_ref().map(|(_, e)| (&*r.name, *e)))
            .collect();
        plans.iter().any(|(name, plan)| {
            let wanted = progresses.get(&**name).map(|p| machine::effective(plan, p, now));
            wanted != in_force.get(&**name).copied()
        })
    }
}

/// Runs blocking work (the state file) off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("state file work does not panic")
}

/// One evaluation of every rollout, recorded in `state`: decisions only on
/// readings taken for the step the state still has.
fn evaluate(
    plans: &[(Arc<str>, Arc<RolloutPlan>)],
    state: &mut State,
    (now, lead): (u64, u64),
    gathered: &Gathered,
    metrics: &RolloutMetrics,
) -> Progresses {
    let mut out = Progresses::new();
    for (name, plan) in plans {
        let known = state.routes.get(&**name).and_then(|s| reconcile(plan, s));
        let mut progress = known.unwrap_or(Progress::start(now));
        if known.is_none() {
            record(state, name, plan, None, &progress, "rollout began".into(), None, Vec::new(), now);
        }
        let taken = gathered.get(&**name).filter(|(key, _)| *key == (progress.step, progress.since_ms));
        let Some((_, readings)) = taken else {
            // Scheduled, not begun, not moving, or moved since the readings.
            out.insert(name.to_string(), progress);
            continue;
        };
        let decision = machine::decide(plan, &progress, readings, now);
        if let Some(next) = machine::apply(plan, &progress, &decision, now, lead) {
            let reason = reason(&decision, readings);
            record(state, name, plan, Some(&progress), &next, reason, None, readings.clone(), now);
            metrics.transitions.with_label_values(&[name, next.status.as_str()]).inc();
            progress = next;
        }
        let stored = state.routes.entry(name.to_string()).or_insert_with(|| Stored::of(plan, &progress));
        stored.readings = readings.clone();
        stored.evaluated_ms = Some(now);
        out.insert(name.to_string(), progress);
    }
    out
}

fn reason(decision: &Decision, readings: &[Reading]) -> String {
    match decision {
        Decision::Fail { gate } => match readings.iter().find(|r| &r.name == gate) {
            Some(r) => format!("gate {gate} failed: {} against {}", show(r.value), r.bound),
            None => format!("gate {gate} failed"),
        },
        Decision::Advance(_) | Decision::Done => "hold served and every gate passed".into(),
        Decision::Status(Status::Progressing) => "hold served; waiting for the gates".into(),
        Decision::Status(s) => s.as_str().into(),
        Decision::Stay => String::new(),
    }
}

/// A stored step for people: `shadow`, `10%`.
fn step_words(step: &serde_json::Value) -> String {
    step.as_str().map_or_else(|| format!("{step}%"), str::to_string)
}

/// A gate's value for people: counts whole, rates and ratios to 3 places.
fn show(value: Option<f64>) -> String {
    match value {
        None => "no data".into(),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// Appends a transition to the audit trail, stores the new progress, and
/// logs it.
#[allow(clippy::too_many_arguments)]
fn record(
    state: &mut State,
    route: &str,
    plan: &RolloutPlan,
    from: Option<&Progress>,
    to: &Progress,
    reason: String,
    actor: Option<String>,
    readings: Vec<Reading>,
    now: u64,
) {
    let step_status = |p: &Progress| StepStatus { step: plan.steps[p.step].to_json(), status: p.status };
    let from = from.map(step_status);
    let to_step = step_status(to);
    tracing::info!(
        route,
        from = ?from.as_ref().map(|f| (f.step.to_string(), f.status.as_str())),
        to = ?(to_step.step.to_string(), to.status.as_str()),
        reason = %reason,
        actor = actor.as_deref(),
        "rollout transition"
    );
    state.history.push(Transition { at_ms: now, route: route.to_string(), from, to: to_step, reason, actor, readings });
    state.routes.insert(route.to_string(), Stored::of(plan, to));
}

/// Why a command did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// It does not apply to the rollout's status (e.g. pausing a rollback).
    Refused(String),
    /// The state store could not be used.
    State(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Refused(why) | CommandError::State(why) => f.write_str(why),
        }
    }
}

/// Applies a command to a route's rollout in the store and records who asked.
pub fn command(
    store: &FileState,
    route: &str,
    plan: &RolloutPlan,
    cmd: machine::Command,
    actor: &str,
    (now, lead): (u64, u64),
) -> Result<Progress, CommandError> {
    let mut refused = None;
    let done = store.update(|state| {
        let progress = state.routes.get(route).and_then(|s| reconcile(plan, s)).unwrap_or(Progress::start(now));
        let next = machine::command(plan, &progress, cmd, now, lead).inspect_err(|why| refused = Some(why.clone()))?;
        let reason = format!("{} by {actor}", cmd.as_str());
        record(state, route, plan, Some(&progress), &next, reason, Some(actor.to_string()), Vec::new(), now);
        Ok(next)
    });
    done.map_err(|e| match refused {
        Some(why) => CommandError::Refused(why),
        None => CommandError::State(e),
    })
}

/// One route's rollout as `rollout status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    pub route: String,
    /// The step as the plan writes it: `"shadow"`, `1`, … `100`.
    pub step: serde_json::Value,
    pub status: Status,
    /// RFC 3339 time the step (or status) began.
    pub since: String,
    pub seconds_on_step: u64,
    /// Percent of traffic on `to` now.
    pub percent: f64,
    pub from: String,
    pub to: String,
    pub gates: Vec<GateStatus>,
    /// What happens next, in words.
    pub next: String,
}

/// A gate's value against its bound.
#[derive(Debug, Clone, Serialize)]
pub struct GateStatus {
    pub name: String,
    pub value: Option<f64>,
    pub bound: f64,
    /// `None` while there is not enough evidence.
    pub ok: Option<bool>,
}

/// The status of every rollout of a table, from the state store.
pub fn status(plans: &[(Arc<str>, Arc<RolloutPlan>)], state: &State, now: u64) -> Vec<RouteStatus> {
    let progresses = progresses(plans, state, now);
    plans
        .iter()
        .map(|(name, plan)| {
            let progress = progresses[&**name];
            let readings = state.routes.get(&**name).map(|s| s.readings.clone()).unwrap_or_default();
            let gates: Vec<GateStatus> = readings
                .iter()
                .map(|r| GateStatus {
                    name: r.name.clone(),
                    value: r.value,
                    bound: r.bound,
                    ok: match r.state {
                        GateState::Pass => Some(true),
                        GateState::Fail => Some(false),
                        GateState::Wait => None,
                    },
                })
                .collect();
            RouteStatus {
                route: name.to_string(),
                step: plan.steps[progress.step].to_json(),
                status: progress.status,
                since: rfc3339(progress.since_ms),
                seconds_on_step: now.saturating_sub(progress.since_ms) / 1000,
                percent: f64::from(machine::effective(plan, &progress, now).share) / 100.0,
                from: plan.from.clone(),
                to: plan.to.clone(),
                next: next_words(plan, &progress, &gates, now),
                gates,
            }
        })
        .collect()
}

/// The status when the state cannot be read: the progress this instance
/// last read and serves, shown `paused` (nothing moves without the state).
pub fn status_without_state(
    plans: &[(Arc<str>, Arc<RolloutPlan>)],
    last_known: &Progresses,
    now: u64,
) -> Vec<RouteStatus> {
    let mut state = State::default();
    for (name, plan) in plans {
        if let Some(progress) = last_known.get(&**name) {
            state.routes.insert(name.to_string(), Stored::of(plan, progress));
        }
    }
    let mut statuses = status(plans, &state, now);
    for s in &mut statuses {
        if s.status.moving() {
            s.status = Status::Paused;
            s.next = "paused: the rollout state cannot be read; the weights in force stay until it can".into();
        }
    }
    statuses
}

fn next_words(plan: &RolloutPlan, progress: &Progress, gates: &[GateStatus], now: u64) -> String {
    let following = match plan.steps.get(progress.step + 1) {
        Some(step) => format!("step {step}"),
        None => "done (100% on the new upstream, shadow off)".into(),
    };
    if progress.since_ms > now && progress.status.moving() {
        let step = plan.steps[progress.step];
        return format!("step {step} begins in {} ms on every replica", progress.since_ms - now);
    }
    match progress.status {
        Status::Holding => {
            let left = (plan.hold.as_millis() as u64).saturating_sub(now.saturating_sub(progress.since_ms)) / 1000;
            format!("holds {left}s more, then {following} if every gate passes")
        }
        Status::Progressing => {
            let waiting: Vec<&str> = gates.iter().filter(|g| g.ok != Some(true)).map(|g| g.name.as_str()).collect();
            format!("{following} once {} pass", waiting.join(", "))
        }
        Status::Paused => format!("paused: `resume` goes on, `promote` moves to {following}"),
        Status::RolledBack => {
            format!("rolled back: all traffic on {}; `resume` starts again from the first step", plan.from)
        }
        Status::Done => "done".into(),
    }
}

/// `rollout status` for people: one block per route.
pub fn status_text(statuses: &[RouteStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if statuses.is_empty() {
        out.push_str("no route has a rollout\n");
    }
    for s in statuses {
        let step = step_words(&s.step);
        let _ = writeln!(
            out,
            "{}: step {step} ({}% on {}), {} for {}s since {}",
            s.route,
            s.percent,
            s.to,
            s.status.as_str(),
            s.seconds_on_step,
            s.since
        );
        for g in &s.gates {
            let verdict = match g.ok {
                Some(true) => "ok",
                Some(false) => "FAIL",
                None => "waiting",
            };
            let _ = writeln!(out, "  {:<14} {:>10} against {:<8} {verdict}", g.name, show(g.value), g.bound);
        }
        let _ = writeln!(out, "  next: {}", s.next);
    }
    out
}

/// `rollout history` for people: one line per transition of `route` and
/// per reload that added, changed or removed it, oldest first.
pub fn history_text(state: &State, route: &str) -> String {
    let transitions = state.history.iter().filter(|t| t.route == route).map(|t| {
        let from = t.from.as_ref().map_or("-".into(), |f| format!("{} {}", step_words(&f.step), f.status.as_str()));
        let by = t.actor.as_deref().unwrap_or("pilot");
        (t.at_ms, format!("{from} -> {} {} ({}; {by})", step_words(&t.to.step), t.to.status.as_str(), t.reason))
    });
    let reloads = state.reloads.iter().filter_map(|r| {
        let how = [("added", &r.added), ("changed", &r.changed), ("removed", &r.removed)]
            .into_iter()
            .find(|(_, names)| names.iter().any(|n| n == route))?
            .0;
        let version = &r.hash[..r.hash.len().min(12)];
        Some((r.at_ms, format!("config reload ({}): route {how}, version {version}", r.trigger)))
    });
    let mut lines: Vec<(u64, String)> = transitions.chain(reloads).collect();
    lines.sort_by_key(|(at, _)| *at);
    lines.into_iter().map(|(at, line)| format!("{} {line}\n", rfc3339(at))).collect()
}

/// `2026-12-05T23:50:01Z` for milliseconds since the epoch.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
