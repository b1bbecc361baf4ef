//! A step's readings: the evidence over the step's window from where the
//! config says it is, judged against the plan's gates.
//!
//! - 5xx and p99 of `to` against `from` (and, without a fleet store, the
//!   shadow comparison counts): from the fleet's Prometheus when
//!   `rollout.prometheus:` names one (each reading shows its PromQL),
//!   otherwise from this instance's own counters.
//! - `min_samples` and `min_match`, with a fleet store (`shadow.store:`):
//!   the fleet's compared and matched records of the route since the step
//!   began, judged again with the fleet's noise exactly as `strangler
//!   report` judges them (`strangler_store::read::match_counts`).
//!
//! A source that cannot answer leaves its gates waiting, with the reason:
//! nothing moves on missing evidence, and nothing fails on it either.

use std::collections::HashMap;
use std::path::PathBuf;

use strangler_store::tokio_postgres::Client;
use strangler_store::{Dsn, Session};

use super::store::STATE_TIMEOUT;
use crate::rollout::evidence::{self, Totals};
use crate::rollout::machine::{self, Evidence, GateState, Progress, Reading};
use crate::rollout::plan::RolloutPlan;
use crate::rollout::prometheus as promql;
use crate::table::Table;
use crate::Shared;

/// Where a gate's value came from.
#[derive(Clone)]
enum Source {
    /// This instance's counters.
    Local,
    /// A query, shown beside the value: the fleet store's, or (empty) the
    /// gate's own PromQL.
    Query(String),
    /// The source could not answer: the gate waits.
    Down(String),
}

/// What the gates remember between evaluations.
pub struct Gates {
    /// Each moving step's counters when this instance first saw it (the
    /// start of its local evidence window).
    baselines: HashMap<String, ((usize, u64), Totals)>,
    prometheus: reqwest::Client,
    /// A connection to the fleet store, by its DSN as written.
    fleet: Option<(String, Client)>,
}

impl Default for Gates {
    fn default() -> Gates {
        let prometheus = reqwest::Client::builder().build().expect("a client with the default TLS settings");
        Gates { baselines: HashMap::new(), prometheus, fleet: None }
    }
}

impl Gates {
    /// Forgets a route's local window (its step stopped moving).
    pub fn forget(&mut self, route: &str) {
        self.baselines.remove(route);
    }

    /// The gates of `plan` on `progress`'s step, over the step so far.
    pub async fn read(
        &mut self,
        shared: &Shared,
        table: &Table,
        (name, plan): (&str, &RolloutPlan),
        progress: &Progress,
        now: u64,
    ) -> Vec<Reading> {
        let (mut evidence, source) = match &plan.prometheus {
            Some(base) => self.prometheus_evidence(base, name, plan, progress, now).await,
            None => (self.local_evidence(shared, name, plan, progress), Source::Local),
        };
        let match_source = match fleet_store(table) {
            Some((text, dsn, password_file)) => {
                match self.fleet_counts(text, &dsn, password_file, name, progress).await {
                    Ok(counts) => {
                        evidence.compared = counts.compared;
                        evidence.matched = counts.matched;
                        let since = super::rfc3339(progress.since_ms);
                        Source::Query(format!(
                            "fleet store {dsn}: records of route {name:?} since {since}, judged with the fleet's noise"
                        ))
                    }
                    Err(e) => Source::Down(e),
                }
            }
            None => source.clone(),
        };
        let queries = promql::queries(name, &plan.from, &plan.to, window_s(progress, now));
        machine::judge(plan, plan.steps[progress.step], &evidence)
            .into_iter()
            .map(|r| match r.name.as_str() {
                "min_samples" | "min_match" => with_source(r, &match_source, &queries.matched),
                "max_5xx_ratio" => with_source(r, &source, &queries.to_5xx),
                _ => with_source(r, &source, &queries.to_p99),
            })
            .collect()
    }

    /// The step's evidence from this instance's counters.
    fn local_evidence(&mut self, shared: &Shared, name: &str, plan: &RolloutPlan, progress: &Progress) -> Evidence {
        let now = evidence::read(&shared.metrics, name, &plan.from, &plan.to);
        let key = (progress.step, progress.since_ms);
        let start = match self.baselines.get(name) {
            Some((k, start)) if *k == key => start,
            _ => &self.baselines.entry(name.to_string()).insert_entry((key, now.clone())).into_mut().1,
        };
        evidence::between(start, &now)
    }

    /// The step's evidence from the fleet's Prometheus.
    async fn prometheus_evidence(
        &self,
        base: &str,
        name: &str,
        plan: &RolloutPlan,
        progress: &Progress,
        now: u64,
    ) -> (Evidence, Source) {
        let q = promql::queries(name, &plan.from, &plan.to, window_s(progress, now));
        match promql::evidence(&self.prometheus, base, &q).await {
            Ok(evidence) => (evidence, Source::Query(String::new())),
            Err(e) => (Evidence::default(), Source::Down(e)),
        }
    }

    /// The route's comparisons since the step began, from the fleet store.
    async fn fleet_counts(
        &mut self,
        text: &str,
        dsn: &Dsn,
        password_file: Option<PathBuf>,
        route: &str,
        progress: &Progress,
    ) -> Result<strangler_store::read::MatchCounts, String> {
        let kept = self.fleet.take().filter(|(t, client)| t == text && !client.is_closed());
        let counted = tokio::time::timeout(STATE_TIMEOUT, async {
            let client = match kept {
                Some((_, client)) => client,
                None => {
                    let session = Session { application_name: Some("strangler-gates".into()), ..Session::default() };
                    strangler_store::open(dsn, password_file.as_deref(), &session).await?
                }
            };
            let counts = strangler_store::read::match_counts(&client, route, progress.since_ms as i64).await?;
            Ok::<_, String>((client, counts))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {STATE_TIMEOUT:?}")));
        match counted {
            Ok((client, counts)) => {
                self.fleet = Some((text.to_string(), client));
                Ok(counts)
            }
            Err(e) => Err(format!("fleet store {dsn}: {e}")),
        }
    }
}

/// The fleet store the table's shadow records go to, if any: (DSN as
/// written, parsed, password file).
fn fleet_store(table: &Table) -> Option<(&str, Dsn, Option<PathBuf>)> {
    let shadow = table.raw.shadow.as_ref()?;
    let text = shadow.store.as_deref()?;
    let dsn = Dsn::parse(text).ok()?;
    Some((text, dsn, shadow.password_file.as_ref().map(PathBuf::from)))
}

fn window_s(progress: &Progress, now: u64) -> u64 {
    now.saturating_sub(progress.since_ms) / 1000
}

/// A reading with where its value came from (`query` for Prometheus's).
fn with_source(r: Reading, source: &Source, query: &str) -> Reading {
    match source {
        Source::Local => r,
        Source::Query(q) if q.is_empty() => Reading { source: Some(query.to_string()), ..r },
        Source::Query(q) => Reading { source: Some(q.clone()), ..r },
        Source::Down(e) => Reading { state: GateState::Wait, source: Some(format!("unavailable: {e}")), ..r },
    }
}
