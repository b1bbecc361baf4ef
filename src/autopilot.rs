//! The autopilot's runner, the pilot: every `autopilot.interval` it reads
//! the rollout state, evaluates the gates of each moving rollout, records
//! what the machine decides, and hands the resulting progress to the reload
//! task, which builds the version in force again with the new weights.
//!
//! It decides nothing itself ([`crate::rollout::machine`] does) and holds
//! no progress of its own between ticks: the state store is the truth, so a
//! command from a shell (`strangler rollout pause`) or another replica is
//! picked up at the next tick.
//!
//! - [`store`]: where the state lives — a file for one instance (every
//!   instance sharing it decides, one at a time under the file lock), or
//!   the fleet's PostgreSQL, where [`lead`] lets one replica decide at a
//!   time and the others follow what it records.
//! - [`gates`]: a step's readings from Prometheus, the fleet store or this
//!   instance's counters.
//! - [`status`]: `rollout status` and `rollout history` for people and scripts.
//!
//! When the store cannot be used, the weights in force stay as they are
//! (never a surprise jump), `status` shows the rollout paused with the
//! reason, and it goes on by itself once the store is back. No client
//! request ever waits on any of this.

pub mod gates;
pub mod lead;
pub mod status;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::Notify;

use crate::rollout::machine::{self, Decision, Progress, Reading, Status};
pub use crate::rollout::now_ms;
use crate::rollout::plan::RolloutPlan;
use crate::rollout::state::{reconcile, State, StepStatus, Stored, Transition};
use crate::rollout::Progresses;
use crate::table::Table;
use crate::Shared;
use status::show;
pub use status::{history_text, rfc3339, status, status_text, status_without_state, GateStatus, RouteStatus};
pub use store::{state_of, StateStore, DEFAULT_STATE_FILE, STATE_TIMEOUT};

/// Default time between two evaluations.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The rollouts of a table: (route name, plan).
pub fn plans(table: &Table) -> Vec<(Arc<str>, Arc<RolloutPlan>)> {
    table
        .router
        .entries()
        .iter()
        .filter_map(|(_, r)| r.rollout.as_ref().map(|(plan, _)| (r.name.clone(), plan.clone())))
        .collect()
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

/// Every rollout's status from the store (for `GET /rollout` and `strangler
/// rollout status`), with the deciding pilot for a PostgreSQL state; an
/// error when the state cannot be read.
pub async fn status_from(
    store: &StateStore,
    plans: &[(Arc<str>, Arc<RolloutPlan>)],
    now: u64,
) -> Result<Vec<RouteStatus>, String> {
    let state = store.load().await?;
    let mut statuses = status(plans, &state, now);
    if let StateStore::Postgres(_) = store {
        let decider = store.leader().await?.unwrap_or_else(|| "none (no replica holds the lead lock)".into());
        for s in &mut statuses {
            s.decided_by = Some(decider.clone());
        }
    }
    Ok(statuses)
}

/// The rollout metrics: step, status and transitions per route.
#[derive(Clone)]
struct RolloutMetrics {
    step: IntGaugeVec,
    status: IntGaugeVec,
    transitions: IntCounterVec,
    store_errors: prometheus::IntCounter,
    leader: prometheus::IntGauge,
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
            leader: m.register(
                prometheus::IntGauge::new(
                    "strangler_rollout_leader",
                    "1 while this instance decides rollouts (holds the lead lock, or shares a state file), else 0.",
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

/// The pilot's memory between ticks: the gates' windows and connections,
/// and its session with a PostgreSQL state.
struct Pilot {
    shared: Arc<Shared>,
    moved: Arc<Notify>,
    metrics: RolloutMetrics,
    gates: gates::Gates,
    lead: lead::Lead,
    store_failing: bool,
}

/// A step's readings, with the (step, start) they were taken for: a
/// decision uses them only if the step is still the same under the lock.
type Gathered = HashMap<String, ((usize, u64), Vec<Reading>)>;

/// Starts the pilot on the current runtime. `moved` is the reload task's
/// rollout trigger ([`crate::reload::Watcher::rollout`]).
pub fn spawn(shared: Arc<Shared>, moved: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    let metrics = RolloutMetrics::new(&shared);
    let lead = lead::Lead::new(shared.shadow.instance());
    let mut pilot = Pilot { shared, moved, metrics, gates: gates::Gates::default(), lead, store_failing: false };
    let recorded = pilot.lead.wake();
    tokio::spawn(async move {
        loop {
            let interval = interval_of(&pilot.shared.table.load());
            let next_change = pilot.tick().await;
            // Wake at a step's start, so weights switch on time on every
            // replica, or when a replica records a transition.
            let until_change = next_change.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            let wait = tokio::time::sleep(until_change.map_or(interval, |d| d.min(interval)));
            tokio::select! {
                () = wait => {}
                () = recorded.notified() => {}
            }
        }
    })
}

/// Before the first request: the progress the store has, so a restarted
/// instance serves the weights the fleet serves, not the first step's.
pub async fn restore(shared: &Shared) -> Result<(), String> {
    let table = shared.table.load_full();
    let plans = plans(&table);
    if plans.is_empty() {
        return Ok(());
    }
    let state = state_of(&table, &shared.rollout_state).load().await?;
    shared.rollouts.store(Arc::new(progresses(&plans, &state, now_ms())));
    Ok(())
}

impl Pilot {
    /// One evaluation; returns when a scheduled step next begins.
    async fn tick(&mut self) -> Option<u64> {
        let now = now_ms();
        let table = self.shared.table.load_full();
        let plans = plans(&table);
        if plans.is_empty() {
            return None;
        }
        let store = state_of(&table, &self.shared.rollout_state);
        let times = (now, lead_of(&table));
        let outcome = match &store {
            StateStore::File(_) => self.decide_alone(&table, &plans, &store, times).await,
            StateStore::Postgres(pg) => self.decide_or_follow(&table, &plans, &pg.target, times).await,
        };
        // The evidence may have taken a while: the weights are applied as of now.
        let now = now_ms();
        match outcome {
            Ok(progresses) => {
                if self.store_failing {
                    tracing::info!(state = %store.describe(), "the rollout state is usable again; rollouts move on");
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

    /// A state file: this instance decides, under the file's lock (every
    /// instance sharing the file does, one at a time). The evidence is
    /// gathered first (Prometheus may be slow), then the decisions are made
    /// and recorded under the lock.
    async fn decide_alone(
        &mut self,
        table: &Table,
        plans: &[(Arc<str>, Arc<RolloutPlan>)],
        store: &StateStore,
        (now, lead): (u64, u64),
    ) -> Result<Progresses, String> {
        self.set_leader(true);
        let gathered = match store.load().await {
            Ok(state) => self.gather(table, plans, &progresses(plans, &state, now)).await,
            Err(_) => Gathered::new(),
        };
        let (metrics, all) = (self.metrics.clone(), plans.to_vec());
        // Decided as of now, not as of the tick's start: a step forward
        // begins a full lead after the decision, however long Prometheus took.
        let now = now_ms();
        store.update(move |state| Ok(evaluate(&all, state, (now, lead), &gathered, &metrics))).await
    }

    /// A PostgreSQL state: the holder of the lead lock gathers, decides and
    /// records on its session; every other replica reads what it recorded.
    async fn decide_or_follow(
        &mut self,
        table: &Table,
        plans: &[(Arc<str>, Arc<RolloutPlan>)],
        target: &store::PgTarget,
        (now, lead): (u64, u64),
    ) -> Result<Progresses, String> {
        let was_leader = self.lead.leads();
        let mut held = match self.lead.take(target).await {
            Ok(held) => held,
            Err(e) => return Err(self.lost_lead(was_leader, e)),
        };
        self.set_leader(held.leader);
        let outcome = async {
            let state = bounded(store::load(&held.client)).await?;
            let progresses = progresses(plans, &state, now);
            if !held.leader {
                return Ok(progresses);
            }
            let gathered = self.gather(table, plans, &progresses).await;
            let metrics = self.metrics.clone();
            // As of now, so a step forward begins a full lead after the decision.
            let now = now_ms();
            let change = |state: &mut State| Ok(evaluate(plans, state, (now, lead), &gathered, &metrics));
            bounded(store::update(&mut held.client, change)).await
        }
        .await;
        match outcome {
            Ok(progresses) => {
                self.lead.keep(held);
                Ok(progresses)
            }
            Err(e) => Err(self.lost_lead(held.leader, e)),
        }
    }

    /// After a failed call on the pilot's session (now closed): it decides
    /// no more. Returns the error.
    fn lost_lead(&self, was_leader: bool, error: String) -> String {
        if was_leader {
            tracing::warn!(error = %error, "this instance no longer decides the fleet's rollouts (its session with the state ended)");
        }
        self.set_leader(false);
        error
    }

    fn set_leader(&self, leader: bool) {
        self.shared.rollout_leader.store(leader, Ordering::Relaxed);
        self.metrics.leader.set(i64::from(leader));
    }

    /// The readings of every rollout on a step that has begun.
    async fn gather(
        &mut self,
        table: &Table,
        plans: &[(Arc<str>, Arc<RolloutPlan>)],
        progresses: &Progresses,
    ) -> Gathered {
        let now = now_ms();
        let mut gathered = Gathered::new();
        for (name, plan) in plans {
            let progress = &progresses[&**name];
            if !progress.status.moving() || progress.since_ms > now {
                self.gates.forget(name);
                continue;
            }
            let readings = self.gates.read(&self.shared, table, (name, plan), progress, now).await;
            gathered.insert(name.to_string(), ((progress.step, progress.since_ms), readings));
        }
        gathered
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

/// A call to the state within [`STATE_TIMEOUT`].
async fn bounded<T>(call: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(STATE_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {STATE_TIMEOUT:?}")))
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
pub async fn command(
    store: &StateStore,
    route: &str,
    plan: Arc<RolloutPlan>,
    cmd: machine::Command,
    actor: &str,
    (now, lead): (u64, u64),
) -> Result<Progress, CommandError> {
    let (route, actor) = (route.to_string(), actor.to_string());
    let done = store
        .update(move |state| {
            let progress = state.routes.get(&route).and_then(|s| reconcile(&plan, s)).unwrap_or(Progress::start(now));
            // A refusal changes nothing: it is the answer, not a failure of the state.
            Ok(machine::command(&plan, &progress, cmd, now, lead).inspect(|next| {
                let reason = format!("{} by {actor}", cmd.as_str());
                record(state, &route, &plan, Some(&progress), next, reason, Some(actor), Vec::new(), now);
            }))
        })
        .await;
    match done {
        Ok(Ok(progress)) => Ok(progress),
        Ok(Err(why)) => Err(CommandError::Refused(why)),
        Err(e) => Err(CommandError::State(e)),
    }
}
