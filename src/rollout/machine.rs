//! What a rollout does next: pure functions of its plan, its progress, the
//! gates' evidence and the clock. The pilot that runs them (and stores the
//! result) decides nothing itself, so each rule here is a unit test.
//!
//! A step's life: `holding` until `hold` has passed on it, then
//! `progressing` until every gate that applies to it passes, then the next
//! step (or `done` after the last). A gate that fails, at any time on the
//! step, applies `on_fail`: `rolled_back` (every request back on `from`,
//! shadow on) or `paused`. `paused`, `rolled_back` and `done` move only by a
//! command.
//!
//! A step that moves traffic forward (the pilot's advance, `promote`,
//! `resume` after a rollback) takes effect `lead` after the decision, at a
//! time written in the state: every replica reads it before then and
//! switches at that instant, so a sticky user going from one replica to
//! another is never sent back (replicas' clocks agree to milliseconds;
//! their polls would not). A rollback takes effect at once.

use serde::{Deserialize, Serialize};

use super::plan::{BasisPoints, RolloutPlan, Step, ALL};
use crate::config::OnFail;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// On a step for less than `hold`.
    Holding,
    /// Hold served; waiting for the gates' evidence.
    Progressing,
    /// Stopped on its step by a person or a failed gate (`on_fail: pause`).
    Paused,
    /// A gate failed or a person aborted: all traffic back on `from`.
    RolledBack,
    /// The last step's gates passed: all traffic on `to`.
    Done,
}

impl Status {
    pub const ALL: [Status; 5] =
        [Status::Holding, Status::Progressing, Status::Paused, Status::RolledBack, Status::Done];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Holding => "holding",
            Status::Progressing => "progressing",
            Status::Paused => "paused",
            Status::RolledBack => "rolled_back",
            Status::Done => "done",
        }
    }

    /// Whether the pilot evaluates gates in this status.
    pub fn moving(self) -> bool {
        matches!(self, Status::Holding | Status::Progressing)
    }
}

/// A rollout's progress: the state every replica follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Index into the plan's steps.
    pub step: usize,
    /// When the current step (or status) began, or begins, milliseconds
    /// since the Unix epoch: a step moving traffic forward starts in the future.
    pub since_ms: u64,
    pub status: Status,
}

impl Progress {
    /// A rollout that has just begun: its first step, holding.
    pub fn start(now_ms: u64) -> Progress {
        Progress { step: 0, since_ms: now_ms, status: Status::Holding }
    }
}

/// What a route's traffic does under a progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    /// Share of traffic (of sticky keys) on `to`.
    pub share: BasisPoints,
    /// Whether requests served by `from` are mirrored to `to`.
    pub shadow: bool,
}

/// The weights and shadowing a progress means at `now_ms`: the step's share
/// (the step before's until the step begins), shadow on until 100%; `from`
/// alone after a rollback; `to` alone when done.
pub fn effective(plan: &RolloutPlan, progress: &Progress, now_ms: u64) -> Effective {
    let share_of = |step: usize| plan.steps.get(step).map_or(0, |s| s.share());
    let share = match progress.status {
        Status::Done => ALL,
        Status::RolledBack => 0,
        _ if now_ms < progress.since_ms => progress.step.checked_sub(1).map_or(0, share_of),
        _ => share_of(progress.step),
    };
    Effective { share, shadow: share < ALL }
}

/// When the progress next changes what traffic does by itself (a step
/// beginning), if in the future.
pub fn next_change(progress: &Progress, now_ms: u64) -> Option<u64> {
    (progress.status.moving() && progress.since_ms > now_ms).then_some(progress.since_ms)
}

/// What the evidence sources measured over the current step's window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evidence {
    /// Shadow comparisons, judged as `strangler report` judges.
    pub compared: u64,
    pub matched: u64,
    /// Requests and 5xx answers of `from` and `to` (primary traffic only).
    pub from_requests: u64,
    pub from_5xx: u64,
    pub to_requests: u64,
    pub to_5xx: u64,
    /// p99 latency in seconds, when measured.
    pub from_p99: Option<f64>,
    pub to_p99: Option<f64>,
}

/// A p99 within this much of `from`'s passes whatever the ratio (latency
/// histograms have coarse buckets; a 1 ms service is not 2x worse at 2 ms).
pub const P99_SLACK_SECONDS: f64 = 0.005;

/// Where one gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateState {
    Pass,
    /// Not enough evidence yet.
    Wait,
    Fail,
}

/// One gate's current value against its bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub name: String,
    /// `None` until there is evidence.
    pub value: Option<f64>,
    pub bound: f64,
    pub state: GateState,
    /// Where the value comes from: the PromQL that gave it, or why the
    /// source could not answer (`None`: this instance's counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Reading {
    fn new(name: &str, value: Option<f64>, bound: f64, state: GateState) -> Reading {
        Reading { name: name.to_string(), value, bound, state, source: None }
    }
}

/// Judges the evidence against the plan's gates that apply to `step`:
/// samples and match rate while shadowing (every step below 100%), 5xx and
/// p99 once `to` serves real traffic.
pub fn judge(plan: &RolloutPlan, step: Step, evidence: &Evidence) -> Vec<Reading> {
    let g = &plan.gates;
    let mut readings = Vec::with_capacity(4);
    if step.share() < ALL {
        let enough = evidence.compared >= g.min_samples;
        let samples_state = if enough { GateState::Pass } else { GateState::Wait };
        readings.push(Reading::new("min_samples", Some(evidence.compared as f64), g.min_samples as f64, samples_state));
        let rate = (evidence.compared > 0).then(|| 100.0 * evidence.matched as f64 / evidence.compared as f64);
        let match_state = match rate {
            Some(r) if enough && r < g.min_match => GateState::Fail,
            Some(_) if enough => GateState::Pass,
            _ => GateState::Wait,
        };
        readings.push(Reading::new("min_match", rate, g.min_match, match_state));
    }
    if step.share() > 0 {
        readings.push(judge_5xx(plan, evidence));
        readings.push(judge_p99(plan, evidence));
    }
    readings
}

/// `to`'s 5xx rate (percent) against `from`'s times the ratio, never
/// stricter than the floor; with no `from` traffic (at 100%) the floor.
fn judge_5xx(plan: &RolloutPlan, e: &Evidence) -> Reading {
    let g = &plan.gates;
    let rate = |errors: u64, requests: u64| (requests > 0).then(|| 100.0 * errors as f64 / requests as f64);
    let from_rate = rate(e.from_5xx, e.from_requests).unwrap_or(0.0);
    let bound = (from_rate * g.max_5xx_ratio).max(g.min_5xx_floor);
    let value = rate(e.to_5xx, e.to_requests);
    let state = match value {
        Some(v) if e.to_requests >= g.min_requests && v > bound => GateState::Fail,
        Some(_) if e.to_requests >= g.min_requests => GateState::Pass,
        _ => GateState::Wait,
    };
    Reading::new("max_5xx_ratio", value, bound, state)
}

/// `to`'s p99 over `from`'s; passes without a `from` to compare with.
fn judge_p99(plan: &RolloutPlan, e: &Evidence) -> Reading {
    let bound = plan.gates.max_p99_ratio;
    if e.to_requests < plan.gates.min_requests {
        return Reading::new("max_p99_ratio", None, bound, GateState::Wait);
    }
    match (e.to_p99, e.from_p99) {
        (Some(to), Some(from)) if from > 0.0 => {
            let ratio = to / from;
            let ok = ratio <= bound || to - from <= P99_SLACK_SECONDS;
            Reading::new("max_p99_ratio", Some(ratio), bound, if ok { GateState::Pass } else { GateState::Fail })
        }
        (Some(_), _) => Reading::new("max_p99_ratio", None, bound, GateState::Pass),
        (None, _) => Reading::new("max_p99_ratio", None, bound, GateState::Wait),
    }
}

/// What the pilot does after an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing changes.
    Stay,
    /// Same step, new status (`holding` → `progressing`).
    Status(Status),
    /// On to this step (index), holding.
    Advance(usize),
    /// The last step's gates passed.
    Done,
    /// A gate failed: `on_fail` applies.
    Fail { gate: String },
}

/// Decides from the gates' readings and the time on the step.
pub fn decide(plan: &RolloutPlan, progress: &Progress, readings: &[Reading], now_ms: u64) -> Decision {
    if !progress.status.moving() {
        return Decision::Stay;
    }
    if let Some(failed) = readings.iter().find(|r| r.state == GateState::Fail) {
        return Decision::Fail { gate: failed.name.clone() };
    }
    let on_step = now_ms.saturating_sub(progress.since_ms);
    if (on_step as u128) < plan.hold.as_millis() {
        return status_change(progress, Status::Holding);
    }
    if readings.iter().all(|r| r.state == GateState::Pass) {
        return next_step(plan, progress);
    }
    status_change(progress, Status::Progressing)
}

fn status_change(progress: &Progress, status: Status) -> Decision {
    if progress.status == status {
        Decision::Stay
    } else {
        Decision::Status(status)
    }
}

fn next_step(plan: &RolloutPlan, progress: &Progress) -> Decision {
    if progress.step >= plan.last() {
        Decision::Done
    } else {
        Decision::Advance(progress.step + 1)
    }
}

/// The progress after a decision (`None`: unchanged); a next step begins
/// `lead_ms` from now.
pub fn apply(
    plan: &RolloutPlan,
    progress: &Progress,
    decision: &Decision,
    now_ms: u64,
    lead_ms: u64,
) -> Option<Progress> {
    let at = |step, status| Some(Progress { step, since_ms: now_ms, status });
    match decision {
        Decision::Stay => None,
        Decision::Status(status) => Some(Progress { status: *status, ..*progress }),
        Decision::Advance(step) => Some(Progress { step: *step, since_ms: now_ms + lead_ms, status: Status::Holding }),
        Decision::Done => at(progress.step, Status::Done),
        Decision::Fail { .. } => match plan.on_fail {
            OnFail::Rollback => at(progress.step, Status::RolledBack),
            OnFail::Pause => at(progress.step, Status::Paused),
        },
    }
}

/// What a person (or script) asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Stop on the current step, keeping its weights.
    Pause,
    /// Go on from a pause; after a rollback, start again from the first step.
    Resume,
    /// Skip the rest of the hold or a failed gate: the next step now.
    Promote,
    /// Everything back on `from`, shadow on.
    Abort,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Promote => "promote",
            Command::Abort => "abort",
        }
    }

    pub fn parse(s: &str) -> Option<Command> {
        [Command::Pause, Command::Resume, Command::Promote, Command::Abort].into_iter().find(|c| c.as_str() == s)
    }
}

/// The progress a command leads to, or why it does not apply; traffic
/// moving forward begins `lead_ms` from now.
pub fn command(
    plan: &RolloutPlan,
    progress: &Progress,
    cmd: Command,
    now_ms: u64,
    lead_ms: u64,
) -> Result<Progress, String> {
    let status = progress.status;
    let at = |step, status| Ok(Progress { step, since_ms: now_ms, status });
    match (cmd, status) {
        (Command::Pause, Status::Holding | Status::Progressing) => at(progress.step, Status::Paused),
        (Command::Resume, Status::Paused) => at(progress.step, Status::Holding),
        (Command::Resume, Status::RolledBack) => Ok(Progress::start(now_ms + lead_ms)),
        (Command::Promote, Status::Holding | Status::Progressing | Status::Paused) => match next_step(plan, progress) {
            Decision::Advance(step) => Ok(Progress { step, since_ms: now_ms + lead_ms, status: Status::Holding }),
            _ => at(progress.step, Status::Done),
        },
        (Command::Abort, Status::Holding | Status::Progressing | Status::Paused | Status::Done) => {
            at(progress.step, Status::RolledBack)
        }
        (cmd, status) => Err(format!("cannot {} a rollout that is {}", cmd.as_str(), status.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::RawGates;

    fn plan(on_fail: OnFail) -> RolloutPlan {
        RolloutPlan {
            from: "legacy".into(),
            to: "comments".into(),
            steps: vec![Step::Shadow, Step::Percent(100), Step::Percent(1000), Step::Percent(ALL)],
            hold: Duration::from_secs(10),
            gates: RawGates::default(),
            on_fail,
            prometheus: None,
        }
    }

    fn good() -> Evidence {
        Evidence {
            compared: 2000,
            matched: 2000,
            from_requests: 1000,
            from_5xx: 1,
            to_requests: 500,
            to_5xx: 0,
            from_p99: Some(0.010),
            to_p99: Some(0.011),
        }
    }

    fn at(step: usize, status: Status) -> Progress {
        Progress { step, since_ms: 0, status }
    }

    fn run(plan: &RolloutPlan, progress: Progress, evidence: &Evidence, now_ms: u64) -> Decision {
        let readings = judge(plan, plan.steps[progress.step], evidence);
        decide(plan, &progress, &readings, now_ms)
    }

    #[test]
    fn a_step_holds_for_its_hold_even_with_all_gates_passing() {
        let p = plan(OnFail::Rollback);
        assert_eq!(run(&p, at(0, Status::Holding), &good(), 9_999), Decision::Stay);
        assert_eq!(run(&p, at(0, Status::Holding), &good(), 10_000), Decision::Advance(1));
    }

    #[test]
    fn after_the_hold_a_step_waits_for_enough_samples() {
        let p = plan(OnFail::Rollback);
        let few = Evidence { compared: 999, matched: 999, ..good() };
        assert_eq!(run(&p, at(0, Status::Holding), &few, 20_000), Decision::Status(Status::Progressing));
        assert_eq!(run(&p, at(0, Status::Progressing), &few, 20_000), Decision::Stay);
    }

    #[test]
    fn a_match_rate_below_the_bound_fails_once_there_are_enough_samples() {
        let p = plan(OnFail::Rollback);
        let bad_few = Evidence { compared: 500, matched: 400, ..good() };
        assert_eq!(run(&p, at(0, Status::Holding), &bad_few, 1), Decision::Stay, "not judged below min_samples");
        let bad = Evidence { compared: 1000, matched: 998, ..good() };
        assert_eq!(run(&p, at(0, Status::Holding), &bad, 1), Decision::Fail { gate: "min_match".into() });
    }

    #[test]
    fn a_5xx_breach_fails_during_the_hold_and_rolls_back_to_the_start() {
        let p = plan(OnFail::Rollback);
        let failing = Evidence { to_requests: 200, to_5xx: 200, ..good() };
        let decision = run(&p, at(2, Status::Holding), &failing, 1);
        assert_eq!(decision, Decision::Fail { gate: "max_5xx_ratio".into() });
        let after = apply(&p, &at(2, Status::Holding), &decision, 5, 0).unwrap();
        assert_eq!(after.status, Status::RolledBack);
        assert_eq!(effective(&p, &after, 5), Effective { share: 0, shadow: true });
    }

    #[test]
    fn the_5xx_gate_allows_the_floor_and_the_ratio_of_legacys_rate() {
        let p = plan(OnFail::Rollback);
        // legacy 2% → bound 3%; the service at 2.5% passes, at 3.5% fails.
        let base = Evidence { from_requests: 1000, from_5xx: 20, to_requests: 1000, ..good() };
        let pass = judge_5xx(&p, &Evidence { to_5xx: 25, ..base });
        assert_eq!((pass.state, pass.bound), (GateState::Pass, 3.0));
        assert_eq!(judge_5xx(&p, &Evidence { to_5xx: 35, ..base }).state, GateState::Fail);
        // legacy clean: the floor (0.1%) is the bound.
        let clean = Evidence { from_5xx: 0, to_5xx: 1, ..base };
        assert_eq!(judge_5xx(&p, &clean).state, GateState::Pass);
        assert_eq!(judge_5xx(&p, &Evidence { to_5xx: 2, ..clean }).state, GateState::Fail);
    }

    #[test]
    fn too_few_requests_on_the_new_upstream_are_not_a_verdict() {
        let p = plan(OnFail::Rollback);
        let early = Evidence { to_requests: 3, to_5xx: 1, ..good() };
        assert_eq!(judge_5xx(&p, &early).state, GateState::Wait);
        assert_eq!(judge_p99(&p, &early).state, GateState::Wait);
    }

    #[test]
    fn a_slow_candidate_fails_the_p99_gate_but_a_millisecond_is_slack() {
        let p = plan(OnFail::Rollback);
        assert_eq!(judge_p99(&p, &Evidence { to_p99: Some(0.020), ..good() }).state, GateState::Fail);
        let tiny = Evidence { from_p99: Some(0.001), to_p99: Some(0.004), ..good() };
        assert_eq!(judge_p99(&p, &tiny).state, GateState::Pass);
    }

    #[test]
    fn the_shadow_step_judges_only_the_comparison_and_100_only_the_service() {
        let p = plan(OnFail::Rollback);
        let names = |step| judge(&p, step, &good()).into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(Step::Shadow), ["min_samples", "min_match"]);
        assert_eq!(names(Step::Percent(1000)), ["min_samples", "min_match", "max_5xx_ratio", "max_p99_ratio"]);
        assert_eq!(names(Step::Percent(ALL)), ["max_5xx_ratio", "max_p99_ratio"]);
    }

    #[test]
    fn passing_the_last_step_is_done_with_all_traffic_on_the_new_upstream() {
        let p = plan(OnFail::Rollback);
        let decision = run(&p, at(3, Status::Progressing), &good(), 60_000);
        assert_eq!(decision, Decision::Done);
        let done = apply(&p, &at(3, Status::Progressing), &decision, 60_000, 0).unwrap();
        assert_eq!(effective(&p, &done, 60_000), Effective { share: ALL, shadow: false });
    }

    #[test]
    fn shadowing_stays_on_at_every_step_below_100() {
        let p = plan(OnFail::Rollback);
        let shares: Vec<_> = (0..4).map(|i| effective(&p, &at(i, Status::Holding), 0)).collect();
        assert_eq!(shares.iter().map(|e| e.share).collect::<Vec<_>>(), [0, 100, 1000, ALL]);
        assert_eq!(shares.iter().map(|e| e.shadow).collect::<Vec<_>>(), [true, true, true, false]);
    }

    #[test]
    fn on_fail_pause_keeps_the_step_and_its_weights() {
        let p = plan(OnFail::Pause);
        let decision = Decision::Fail { gate: "max_5xx_ratio".into() };
        let paused = apply(&p, &at(2, Status::Holding), &decision, 7, 0).unwrap();
        assert_eq!((paused.step, paused.status), (2, Status::Paused));
        assert_eq!(effective(&p, &paused, 7).share, 1000);
        assert_eq!(run(&p, paused, &good(), 1_000_000), Decision::Stay, "a paused rollout waits for a person");
    }

    #[test]
    fn a_step_forward_begins_after_the_lead_and_a_rollback_at_once() {
        let p = plan(OnFail::Rollback);
        let next = apply(&p, &at(1, Status::Progressing), &Decision::Advance(2), 1_000, 500).unwrap();
        assert_eq!(next.since_ms, 1_500);
        assert_eq!(effective(&p, &next, 1_499).share, 100, "the step before until it begins");
        assert_eq!(effective(&p, &next, 1_500).share, 1000);
        assert_eq!(next_change(&next, 1_000), Some(1_500));
        assert_eq!(next_change(&next, 1_500), None);
        let fail = Decision::Fail { gate: "min_match".into() };
        let back = apply(&p, &next, &fail, 1_200, 500).unwrap();
        assert_eq!(effective(&p, &back, 1_200).share, 0, "a rollback does not wait");
        let promoted = command(&p, &at(0, Status::Holding), Command::Promote, 2_000, 300).unwrap();
        assert_eq!((promoted.step, promoted.since_ms), (1, 2_300));
        assert_eq!(effective(&p, &promoted, 2_000).share, 0);
    }

    #[test]
    fn commands_move_a_rollout_and_refuse_what_does_not_apply() {
        let p = plan(OnFail::Rollback);
        let paused = command(&p, &at(1, Status::Holding), Command::Pause, 5, 0).unwrap();
        assert_eq!((paused.step, paused.status), (1, Status::Paused));
        let resumed = command(&p, &paused, Command::Resume, 6, 0).unwrap();
        assert_eq!((resumed.step, resumed.status, resumed.since_ms), (1, Status::Holding, 6));
        let promoted = command(&p, &resumed, Command::Promote, 7, 0).unwrap();
        assert_eq!((promoted.step, promoted.status), (2, Status::Holding));
        let last = command(&p, &at(3, Status::Holding), Command::Promote, 8, 0).unwrap();
        assert_eq!(last.status, Status::Done);
        let aborted = command(&p, &promoted, Command::Abort, 9, 0).unwrap();
        assert_eq!(aborted.status, Status::RolledBack);
        assert!(command(&p, &aborted, Command::Pause, 10, 0).unwrap_err().contains("rolled_back"));
        assert!(command(&p, &aborted, Command::Promote, 10, 0).is_err());
        let restarted = command(&p, &aborted, Command::Resume, 11, 0).unwrap();
        assert_eq!(restarted, Progress::start(11));
    }
}
