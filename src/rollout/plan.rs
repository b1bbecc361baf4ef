//! `rollout:` checked: the steps a route walks and what each step means in
//! weights. Pure: the config pipeline's validate step calls it.

use std::time::Duration;

use crate::config::{OnFail, RawGates, RawRollout, RawStep};

/// Percent of traffic, in basis points (10,000 = 100%), so `0.5` is exact.
pub type BasisPoints = u32;

/// All the traffic.
pub const ALL: BasisPoints = 10_000;

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every request served by `upstream`, and compared against `to`.
    Shadow,
    /// This share of sticky keys (or requests) served by `to`.
    Percent(BasisPoints),
}

impl Step {
    /// The share of traffic `to` serves on this step.
    pub fn share(self) -> BasisPoints {
        match self {
            Step::Shadow => 0,
            Step::Percent(bp) => bp,
        }
    }

    /// As the plan writes it: `"shadow"`, `1`, `0.5`, `100`.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Step::Shadow => "shadow".into(),
            Step::Percent(bp) if bp % 100 == 0 => (bp / 100).into(),
            Step::Percent(bp) => (bp as f64 / 100.0).into(),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Shadow => f.write_str("shadow"),
            Step::Percent(bp) if bp % 100 == 0 => write!(f, "{}%", bp / 100),
            Step::Percent(bp) => write!(f, "{}%", *bp as f64 / 100.0),
        }
    }
}

/// A checked `rollout:`.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    /// Where traffic starts and where a rollback returns it.
    pub from: String,
    /// Where traffic moves.
    pub to: String,
    pub steps: Vec<Step>,
    pub hold: Duration,
    pub gates: RawGates,
    pub on_fail: OnFail,
    pub prometheus: Option<String>,
}

impl RolloutPlan {
    /// The last step's index: reaching it and passing its gates is `done`.
    pub fn last(&self) -> usize {
        self.steps.len() - 1
    }
}

/// Checks a route's `rollout:` against the route (`upstream`, `split`) it
/// sits on. Errors name the offending value (to locate it) and say why.
pub fn validate(
    raw: &RawRollout,
    route_upstream: Option<&str>,
    has_split: bool,
    known: impl Fn(&str) -> Result<String, (String, String)>,
) -> Result<RolloutPlan, (String, String)> {
    let from = match (route_upstream, has_split) {
        (Some(from), false) => from.to_string(),
        _ => return Err((
            "rollout".into(),
            "a rollout needs the route's `upstream` (where traffic starts) and no `split`: the rollout sets the split"
                .into(),
        )),
    };
    let to = known(&raw.to)?;
    if to == from {
        return Err((raw.to.clone(), format!("rollout.to {to:?} is already the route's upstream")));
    }
    let steps = steps(&raw.steps)?;
    gates(&raw.gates)?;
    if let Some(url) = &raw.prometheus {
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<http::Uri>().is_err() {
            return Err((url.clone(), format!("rollout.prometheus {url:?} must be an http:// or https:// URL")));
        }
    }
    Ok(RolloutPlan {
        from,
        to,
        steps,
        hold: raw.hold,
        gates: raw.gates.clone(),
        on_fail: raw.on_fail,
        prometheus: raw.prometheus.as_ref().map(|u| u.trim_end_matches('/').to_string()),
    })
}

fn steps(raw: &[RawStep]) -> Result<Vec<Step>, (String, String)> {
    if raw.is_empty() {
        return Err(("steps".into(), "rollout.steps must list at least one step, ending at 100".into()));
    }
    let mut steps = Vec::with_capacity(raw.len());
    for (i, step) in raw.iter().enumerate() {
        let step = match step {
            RawStep::Named(name) if name == "shadow" && i == 0 => Step::Shadow,
            RawStep::Named(name) if name == "shadow" => {
                return Err((name.clone(), "`shadow` can only be the first step".into()));
            }
            RawStep::Named(name) => {
                return Err((name.clone(), format!("step {name:?} must be `shadow` or a percent (0 < p <= 100)")))
            }
            RawStep::Percent(p) if *p > 0.0 && *p <= 100.0 && (p * 100.0).fract() == 0.0 => {
                Step::Percent((p * 100.0) as BasisPoints)
            }
            RawStep::Percent(p) => {
                return Err((
                    format_percent(*p),
                    format!("step {p} must be a percent above 0 and at most 100, in hundredths at most"),
                ))
            }
        };
        if let Some(previous) =
            steps.last().copied().filter(|p: &Step| p.share() >= step.share() && step != Step::Shadow)
        {
            return Err((
                format_percent(step.share() as f64 / 100.0),
                format!("steps must grow: {step} comes after {previous}"),
            ));
        }
        steps.push(step);
    }
    if steps.last() != Some(&Step::Percent(ALL)) {
        return Err(("steps".into(), "rollout.steps must end at 100".into()));
    }
    Ok(steps)
}

fn format_percent(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as i64)
    } else {
        format!("{p}")
    }
}

fn gates(g: &RawGates) -> Result<(), (String, String)> {
    if !(0.0..=100.0).contains(&g.min_match) {
        return Err(("min_match".into(), format!("gates.min_match {} must be a percent (0 to 100)", g.min_match)));
    }
    for (key, value) in [("max_5xx_ratio", g.max_5xx_ratio), ("max_p99_ratio", g.max_p99_ratio)] {
        if !(value.is_finite() && value > 0.0) {
            return Err((key.into(), format!("gates.{key} {value} must be more than 0")));
        }
    }
    if !(0.0..=100.0).contains(&g.min_5xx_floor) {
        return Err((
            "min_5xx_floor".into(),
            format!("gates.min_5xx_floor {} must be a percent (0 to 100)", g.min_5xx_floor),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawRollout {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn known(name: &str) -> Result<String, (String, String)> {
        match name {
            "legacy" | "comments" => Ok(name.to_string()),
            _ => Err((name.to_string(), format!("unknown upstream {name:?}"))),
        }
    }

    fn check(yaml: &str) -> Result<RolloutPlan, (String, String)> {
        validate(&raw(yaml), Some("legacy"), false, known)
    }

    #[test]
    fn the_issue_example_is_a_plan_of_five_steps() {
        let plan = check("to: comments\nsteps: [shadow, 1, 10, 50, 100]\nhold: 10m\n").unwrap();
        assert_eq!(
            plan.steps,
            vec![Step::Shadow, Step::Percent(100), Step::Percent(1000), Step::Percent(5000), Step::Percent(ALL)]
        );
        assert_eq!((plan.from.as_str(), plan.to.as_str()), ("legacy", "comments"));
        assert_eq!(plan.hold, Duration::from_secs(600));
        assert_eq!(plan.gates, RawGates::default());
        assert_eq!(plan.on_fail, OnFail::Rollback);
    }

    #[test]
    fn fractional_percents_are_exact_in_basis_points() {
        let plan = check("to: comments\nsteps: [0.5, 100]\n").unwrap();
        assert_eq!(plan.steps[0], Step::Percent(50));
        assert_eq!(plan.steps[0].to_json(), serde_json::json!(0.5));
        assert_eq!(plan.steps[1].to_json(), serde_json::json!(100));
    }

    #[test]
    fn steps_that_do_not_grow_or_end_short_of_100_are_refused() {
        for (steps, value) in [
            ("[10, 5, 100]", "5"),
            ("[10, 10, 100]", "10"),
            ("[1, 50]", "steps"),
            ("[1, shadow, 100]", "shadow"),
            ("[0, 100]", "0"),
            ("[101]", "101"),
            ("[half, 100]", "half"),
            ("[]", "steps"),
        ] {
            let err = check(&format!("to: comments\nsteps: {steps}\n")).unwrap_err();
            assert_eq!(err.0, value, "{steps}: {err:?}");
        }
    }

    #[test]
    fn the_target_must_be_another_known_upstream() {
        assert_eq!(check("to: nowhere\nsteps: [100]\n").unwrap_err().0, "nowhere");
        let err = validate(&raw("to: legacy\nsteps: [100]\n"), Some("legacy"), false, known).unwrap_err();
        assert!(err.1.contains("already the route's upstream"), "{err:?}");
    }

    #[test]
    fn a_route_with_a_split_cannot_also_roll_out() {
        let err = validate(&raw("to: comments\nsteps: [100]\n"), None, true, known).unwrap_err();
        assert!(err.1.contains("no `split`"), "{err:?}");
    }

    #[test]
    fn gate_bounds_out_of_range_are_refused() {
        assert_eq!(check("to: comments\nsteps: [100]\ngates: {min_match: 120}\n").unwrap_err().0, "min_match");
        assert_eq!(check("to: comments\nsteps: [100]\ngates: {max_p99_ratio: 0}\n").unwrap_err().0, "max_p99_ratio");
        assert_eq!(
            check("to: comments\nsteps: [100]\nprometheus: prom:9090\n").unwrap_err().0,
            "prom:9090",
            "a scheme is needed"
        );
    }
}
