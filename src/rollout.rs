//! Autopilot rollouts: a route walks itself from shadow to 100% on a new
//! upstream, one step at a time, gated on evidence, and rolls back alone.
//!
//! The plan is config (`rollout:` on a route in `routes.yaml`); the progress
//! is state (which step, since when, its status, the history), kept outside
//! the config so every replica follows the same progress whatever version of
//! the file it holds.
//!
//! - [`plan`]: the pure check of `rollout:` into a [`plan::RolloutPlan`], and
//!   the weights each step means.
//! - [`machine`]: the pure decision of what a rollout does next, from its
//!   progress, the gates' readings and the clock. No I/O, so every rule is a
//!   unit test.
//! - [`state`]: where progress and the audit trail live: a locked JSON file
//!   for one instance.
//! - [`evidence`]: a step's evidence from this instance's own counters;
//!   [`prometheus`]: from the fleet's Prometheus, with the PromQL shown.
//!
//! The loop that runs all this against the live table is
//! [`crate::autopilot`]; this module imports nothing socket- or
//! table-aware, so the table can build routes from a plan.

pub mod evidence;
pub mod machine;
pub mod plan;
pub mod prometheus;
pub mod state;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the rollout state's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Each rolling-out route's progress, by route name: what every replica
/// applies on top of `routes.yaml`. A route missing here is on its first step.
pub type Progresses = BTreeMap<String, machine::Progress>;
