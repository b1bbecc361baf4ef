//! What `rollout status` and `rollout history` show, from the state: each
//! route's step, time on step, every gate's value against its bound, what
//! happens next and, for a fleet, which replica decides; and the audit
//! trail, transitions and config reloads in one time line. The admin API
//! and the CLI print the same.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::progresses;
use crate::rollout::machine::{self, GateState, Progress, Status};
use crate::rollout::plan::RolloutPlan;
use crate::rollout::state::{State, Stored};
use crate::rollout::Progresses;

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
    /// Why the rollout is paused when nobody paused it (the state store is unavailable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With a PostgreSQL state: the pilot that decides for the fleet (holds
    /// the lead lock), `none` while no replica holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
}

/// A gate's value against its bound.
#[derive(Debug, Clone, Serialize)]
pub struct GateStatus {
    pub name: String,
    pub value: Option<f64>,
    pub bound: f64,
    /// `None` while there is not enough evidence.
    pub ok: Option<bool>,
    /// Where the value comes from: the PromQL or fleet store query behind it,
    /// or why that source cannot answer (absent: this instance's counters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
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
                    source: r.source.clone(),
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
                reason: None,
                decided_by: None,
            }
        })
        .collect()
}

/// The status when the state cannot be read: the progress this instance
/// last read and serves, shown `paused` (nothing moves without the state)
/// with the reason, `store unavailable` (the caller shows the error).
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
            s.reason = Some("store unavailable".into());
            s.next = "paused while the rollout state is unavailable: the weights in force stay, and the rollout goes on by itself once it is back".into();
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
        if let Some(reason) = &s.reason {
            let _ = writeln!(out, "  reason: {reason}");
        }
        if let Some(decider) = &s.decided_by {
            let _ = writeln!(out, "  decided by: {decider}");
        }
        for g in &s.gates {
            let verdict = match g.ok {
                Some(true) => "ok",
                Some(false) => "FAIL",
                None => "waiting",
            };
            let _ = writeln!(out, "  {:<14} {:>10} against {:<8} {verdict}", g.name, show(g.value), g.bound);
            if let Some(source) = &g.source {
                let _ = writeln!(out, "    from {source}");
            }
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

/// A stored step for people: `shadow`, `10%`.
pub(super) fn step_words(step: &serde_json::Value) -> String {
    step.as_str().map_or_else(|| format!("{step}%"), str::to_string)
}

/// A gate's value for people: counts whole, rates and ratios to 3 places.
pub(super) fn show(value: Option<f64>) -> String {
    match value {
        None => "no data".into(),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
    }
}
