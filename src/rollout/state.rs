//! Where rollout progress lives: the state every replica follows and the
//! audit trail of every transition. For one instance (the embedded
//! default) a JSON file, read and written under an exclusive file lock, so
//! the pilot and `strangler rollout pause` from a shell never interleave.
//!
//! A route's progress is stored with its step as the plan writes it
//! (`"shadow"`, `10`), not as an index: an edit of `steps:` then maps the
//! stored step onto the new list without a jump up (see [`reconcile`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::machine::{Progress, Reading, Status};
use super::plan::RolloutPlan;

/// History entries kept in a state file; older ones are dropped first.
pub const MAX_HISTORY: usize = 1000;

/// One route's stored progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The upstream the rollout moves to: a plan with another `to` starts over.
    pub to: String,
    /// The step as written in the plan: `"shadow"` or a percent.
    pub step: serde_json::Value,
    pub since_ms: u64,
    pub status: Status,
    /// The gates at the last evaluation, for `rollout status`.
    #[serde(default)]
    pub readings: Vec<Reading>,
    #[serde(default)]
    pub evaluated_ms: Option<u64>,
}

/// One transition in the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub route: String,
    /// `None` when the rollout began.
    pub from: Option<StepStatus>,
    pub to: StepStatus,
    /// Why: the gate that failed, "hold served and gates passed", a command.
    pub reason: String,
    /// Who asked (a command), or `None` for the pilot.
    pub actor: Option<String>,
    /// The evidence at the time.
    #[serde(default)]
    pub readings: Vec<Reading>,
}

/// A step and status, as the audit trail shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStatus {
    pub step: serde_json::Value,
    pub status: Status,
}

/// A reload of `routes.yaml`, in the audit trail beside the transitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    pub at_ms: u64,
    /// The new version's content hash.
    pub hash: String,
    /// What set it off: `event`, `poll`, `signal`.
    pub trigger: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// Everything in a state store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub routes: BTreeMap<String, Stored>,
    #[serde(default)]
    pub history: Vec<Transition>,
    /// Every reload of the config by an instance using this state.
    #[serde(default)]
    pub reloads: Vec<Reload>,
}

impl Stored {
    /// Stores `progress` of `plan`.
    pub fn of(plan: &RolloutPlan, progress: &Progress) -> Stored {
        Stored {
            to: plan.to.clone(),
            step: plan.steps[progress.step.min(plan.last())].to_json(),
            since_ms: progress.since_ms,
            status: progress.status,
            readings: Vec::new(),
            evaluated_ms: None,
        }
    }
}

/// The stored progress read against the plan in force: the same step if
/// the plan still has it, else the largest step below it (never a jump
/// up); `None` (start over) when the plan now moves to another upstream.
pub fn reconcile(plan: &RolloutPlan, stored: &Stored) -> Option<Progress> {
    if stored.to != plan.to {
        return None;
    }
    let share = step_share(&stored.step)?;
    let step = plan.steps.iter().rposition(|s| s.share() <= share).unwrap_or(0);
    let exact = plan.steps[step].share() == share;
    // Moved down to a step the plan has: its gates are judged afresh.
    let status = if exact || !stored.status.moving() { stored.status } else { Status::Holding };
    Some(Progress { step, since_ms: stored.since_ms, status })
}

/// The share a stored step means, in basis points.
fn step_share(step: &serde_json::Value) -> Option<u32> {
    match step {
        serde_json::Value::String(s) if s == "shadow" => Some(0),
        serde_json::Value::Number(n) => n.as_f64().map(|p| (p * 100.0).round() as u32),
        _ => None,
    }
}

/// A state file, locked for each read-modify-write.
#[derive(Debug, Clone)]
pub struct FileState {
    path: PathBuf,
}

impl FileState {
    pub fn new(path: impl Into<PathBuf>) -> FileState {
        FileState { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state as it is now (empty when the file does not exist yet).
    pub fn load(&self) -> Result<State, String> {
        match File::open(&self.path) {
            Ok(mut file) => {
                file.lock_shared().map_err(|e| self.error("lock", e))?;
                read_state(&mut file).map_err(|e| format!("{}: {e}", self.path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(self.error("open", e)),
        }
    }

    /// Reads, changes and writes the state under an exclusive lock.
    /// `change` returns what the caller wants back, or an error that leaves
    /// the file as it was.
    pub fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T, String>) -> Result<T, String> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| self.error("open", e))?;
        file.lock().map_err(|e| self.error("lock", e))?;
        let mut state = read_state(&mut file).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let out = change(&mut state)?;
        let excess = state.history.len().saturating_sub(MAX_HISTORY);
        state.history.drain(..excess);
        let excess = state.reloads.len().saturating_sub(MAX_HISTORY);
        state.reloads.drain(..excess);
        let mut text = serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?;
        text.push(b'\n');
        // In place under the lock: a reader holding the shared lock never
        // sees half a file.
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(&text))
            .and_then(|_| file.sync_data())
            .map_err(|e| self.error("write", e))?;
        Ok(out)
    }

    fn error(&self, what: &str, e: std::io::Error) -> String {
        format!("cannot {what} the rollout state file {}: {e}", self.path.display())
    }
}

fn read_state(file: &mut File) -> Result<State, String> {
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.trim().is_empty() {
        return Ok(State::default());
    }
    serde_json::from_str(&text).map_err(|e| format!("not a rollout state file: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{OnFail, RawGates};
    use crate::rollout::plan::{Step, ALL};

    fn plan(steps: Vec<Step>) -> RolloutPlan {
        RolloutPlan {
            from: "legacy".into(),
            to: "comments".into(),
            steps,
            hold: Duration::from_secs(1),
            gates: RawGates::default(),
            on_fail: OnFail::Rollback,
            prometheus: None,
        }
    }

    fn stored(step: serde_json::Value, status: Status) -> Stored {
        Stored { to: "comments".into(), step, since_ms: 5, status, readings: vec![], evaluated_ms: None }
    }

    #[test]
    fn a_stored_step_maps_onto_an_edited_plan_without_a_jump_up() {
        let old = stored(serde_json::json!(10), Status::Progressing);
        let same = plan(vec![Step::Shadow, Step::Percent(1000), Step::Percent(ALL)]);
        assert_eq!(reconcile(&same, &old), Some(Progress { step: 1, since_ms: 5, status: Status::Progressing }));
        let finer = plan(vec![Step::Shadow, Step::Percent(500), Step::Percent(2000), Step::Percent(ALL)]);
        assert_eq!(reconcile(&finer, &old), Some(Progress { step: 1, since_ms: 5, status: Status::Holding }));
        let shadow = stored(serde_json::json!("shadow"), Status::Holding);
        assert_eq!(reconcile(&finer, &shadow).unwrap().step, 0);
        let no_shadow = plan(vec![Step::Percent(100), Step::Percent(ALL)]);
        assert_eq!(reconcile(&no_shadow, &shadow).unwrap().step, 0);
    }

    #[test]
    fn a_plan_that_moves_to_another_upstream_starts_over() {
        let mut other = stored(serde_json::json!(50), Status::Holding);
        other.to = "users".into();
        assert_eq!(reconcile(&plan(vec![Step::Percent(ALL)]), &other), None);
    }

    #[test]
    fn the_state_file_round_trips_and_keeps_a_bounded_history() {
        let dir = std::env::temp_dir().join(format!("strangler-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = FileState::new(dir.join("state.json"));
        assert_eq!(file.load().unwrap(), State::default(), "no file yet: empty");
        let to = StepStatus { step: serde_json::json!("shadow"), status: Status::Holding };
        let entry = Transition {
            at_ms: 1,
            route: "r".into(),
            from: None,
            to,
            reason: "start".into(),
            actor: None,
            readings: vec![],
        };
        for n in [MAX_HISTORY - 1, 6] {
            file.update(|s| {
                s.routes.insert("r".into(), stored(serde_json::json!(1), Status::Holding));
                s.history.extend(std::iter::repeat_n(entry.clone(), n));
                Ok(())
            })
            .unwrap();
        }
        let state = file.load().unwrap();
        assert_eq!(state.history.len(), MAX_HISTORY);
        assert_eq!(state.routes["r"].step, serde_json::json!(1));
        let refused: Result<(), String> = file.update(|s| {
            s.routes.clear();
            Err("no".into())
        });
        assert!(refused.is_err());
        assert_eq!(file.load().unwrap().routes.len(), 1, "a refused change leaves the file as it was");
        std::fs::write(file.path(), "{not json").unwrap();
        assert!(file.load().unwrap_err().contains("not a rollout state file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
