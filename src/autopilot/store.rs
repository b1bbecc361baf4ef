//! Where the pilot, the admin API, the CLI and the reload task read and
//! change rollout state: a [`StateStore`], the state file for one instance
//! (the default) or the fleet's PostgreSQL (`autopilot.state:
//! postgres://…`), behind one interface — [`StateStore::load`] (every
//! route's progress), [`StateStore::history`] (a route's audit trail) and
//! [`StateStore::update`] (a read-modify-write that nothing interleaves
//! with: the file's exclusive lock, or a transaction under the store's
//! state lock).
//!
//! Each call is bounded ([`STATE_TIMEOUT`]): a store that is down or slow
//! is an error to its caller, never a wait. A process keeps one connection
//! to a PostgreSQL state for these calls (its [`Link`]), made when first
//! needed and again after one fails; the pilot keeps its own, which holds
//! the lead lock (`super::lead`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strangler_store::rollouts::{self, Changes};
use strangler_store::tokio_postgres::Client;
use strangler_store::{Dsn, Session};

use crate::rollout::state::{is_postgres, FileState, State, Stored};
use crate::table::Table;

/// How long one call to the state may take, connecting included.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(3);

/// Default state file for one instance.
pub const DEFAULT_STATE_FILE: &str = "./strangler-rollouts.json";

/// Where a rollout state lives.
#[derive(Clone)]
pub enum StateStore {
    File(FileState),
    Postgres(PgState),
}

/// A PostgreSQL rollout state: where it is, and the process's link to it.
#[derive(Clone)]
pub struct PgState {
    pub target: Arc<PgTarget>,
    link: Arc<Link>,
}

/// The PostgreSQL state's address, as `autopilot:` gives it.
#[derive(Debug)]
pub struct PgTarget {
    /// `autopilot.state` as written: what a connection is kept for.
    pub text: String,
    pub dsn: Dsn,
    pub password_file: Option<PathBuf>,
}

impl PgTarget {
    /// Connects (and migrates) for `session`.
    pub async fn connect(&self, session: &Session) -> Result<Client, String> {
        strangler_store::open(&self.dsn, self.password_file.as_deref(), session).await
    }
}

/// A process's connection to a PostgreSQL state, for status, commands and
/// reload records: made when first needed, dropped when a call on it fails.
#[derive(Default)]
pub struct Link {
    slot: tokio::sync::Mutex<Option<(String, Client)>>,
}

/// The table's rollout state (`link`: the process's, from [`crate::Shared`]).
pub fn state_of(table: &Table, link: &Arc<Link>) -> StateStore {
    let settings = table.raw.autopilot.as_ref();
    let text = settings.and_then(|a| a.state.clone()).unwrap_or_else(|| DEFAULT_STATE_FILE.into());
    if !is_postgres(&text) {
        return StateStore::File(FileState::new(text));
    }
    let password_file = settings.and_then(|a| a.password_file.as_ref()).map(PathBuf::from);
    match Dsn::parse(&text) {
        Ok(dsn) => {
            let target = Arc::new(PgTarget { text, dsn, password_file });
            StateStore::Postgres(PgState { target, link: link.clone() })
        }
        // The config check refuses a bad DSN; were one to get here, it is a
        // file name no one can create, so every call fails and says why.
        Err(e) => StateStore::File(FileState::new(format!("{text} ({e})"))),
    }
}

impl StateStore {
    /// Every route's progress (the audit trail is left out: see [`StateStore::history`]).
    pub async fn load(&self) -> Result<State, String> {
        match self {
            StateStore::File(file) => {
                let file = file.clone();
                blocking(move || file.load()).await
            }
            StateStore::Postgres(pg) => pg.call(async |client: &mut Client| load(client).await).await,
        }
    }

    /// `route`'s audit trail: its transitions, and the config reloads
    /// (the file's all, the store's most recent).
    pub async fn history(&self, route: &str) -> Result<State, String> {
        match self {
            StateStore::File(file) => {
                let file = file.clone();
                blocking(move || file.load()).await
            }
            StateStore::Postgres(pg) => {
                pg.call(async |client: &mut Client| {
                    let (transitions, reloads) = rollouts::load_history(client, route).await?;
                    Ok(State {
                        routes: BTreeMap::new(),
                        history: parse_all(transitions, "transition")?,
                        reloads: parse_all(reloads, "config reload")?,
                    })
                })
                .await
            }
        }
    }

    /// Reads, changes and writes the state with nothing in between. In
    /// `change`, `history` and `reloads` start empty for a PostgreSQL state
    /// (what it appends is appended); `change` returns what the caller wants
    /// back, or an error that leaves the state as it was.
    pub async fn update<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        match self {
            StateStore::File(file) => {
                let file = file.clone();
                blocking(move || file.update(change)).await
            }
            StateStore::Postgres(pg) => pg.call(async move |client: &mut Client| update(client, change).await).await,
        }
    }

    /// Who decides for the fleet: the name of the pilot holding the lead
    /// lock (`None` without one; always `None` for a file).
    pub async fn leader(&self) -> Result<Option<String>, String> {
        match self {
            StateStore::File(_) => Ok(None),
            StateStore::Postgres(pg) => pg.call(async |client: &mut Client| rollouts::leader(client).await).await,
        }
    }

    /// The state's name for people: the file, or the DSN with its password masked.
    pub fn describe(&self) -> String {
        match self {
            StateStore::File(file) => format!("rollout state file {}", file.path().display()),
            StateStore::Postgres(pg) => format!("rollout state {}", pg.target.dsn),
        }
    }
}

impl PgState {
    /// Runs `op` on the link's connection (connected first if need be)
    /// within [`STATE_TIMEOUT`]; a failure drops the connection, so the next
    /// call connects again.
    async fn call<T>(&self, op: impl AsyncFnOnce(&mut Client) -> Result<T, String>) -> Result<T, String> {
        let mut slot = self.link.slot.lock().await;
        let target = &self.target;
        let outcome = tokio::time::timeout(STATE_TIMEOUT, async {
            let stale = slot.as_ref().is_some_and(|(text, client)| *text != target.text || client.is_closed());
            if stale || slot.is_none() {
                *slot = None;
                let session = Session { application_name: Some("strangler".into()), ..Session::default() };
                *slot = Some((target.text.clone(), target.connect(&session).await?));
            }
            let (_, client) = slot.as_mut().expect("connected just now");
            op(client).await
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {STATE_TIMEOUT:?}")));
        if outcome.is_err() {
            *slot = None;
        }
        outcome.map_err(|e| format!("the rollout state {} is unavailable: {e}", target.dsn))
    }
}

/// Every route's progress, from a connection to the state.
pub async fn load(client: &Client) -> Result<State, String> {
    let docs = rollouts::load_progress(client).await?;
    Ok(State { routes: parse_routes(docs)?, history: Vec::new(), reloads: Vec::new() })
}

/// [`StateStore::update`] on a connection to the state.
pub async fn update<T>(client: &mut Client, change: impl FnOnce(&mut State) -> Result<T, String>) -> Result<T, String> {
    rollouts::update(client, |docs| {
        let mut state = State { routes: parse_routes(docs)?, history: Vec::new(), reloads: Vec::new() };
        let before = state.routes.clone();
        let out = change(&mut state)?;
        Ok((out, changes(&before, state)?))
    })
    .await
}

/// What a change wrote into `after`, against the progress it read.
fn changes(before: &BTreeMap<String, Stored>, after: State) -> Result<Changes, String> {
    let mut changes = Changes::default();
    for (route, stored) in &after.routes {
        if before.get(route) != Some(stored) {
            changes.upsert.push((route.clone(), to_json(stored)?));
        }
    }
    changes.delete = before.keys().filter(|r| !after.routes.contains_key(*r)).cloned().collect();
    for t in &after.history {
        changes.transitions.push((t.route.clone(), t.at_ms as i64, to_json(t)?));
    }
    for r in &after.reloads {
        changes.reloads.push((r.at_ms as i64, to_json(r)?));
    }
    Ok(changes)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

fn parse_routes(docs: rollouts::Progress) -> Result<BTreeMap<String, Stored>, String> {
    docs.into_iter()
        .map(|(route, doc)| {
            let stored =
                serde_json::from_value(doc).map_err(|e| format!("route {route:?}: not a rollout progress: {e}"))?;
            Ok((route, stored))
        })
        .collect()
}

fn parse_all<T: serde::de::DeserializeOwned>(docs: Vec<serde_json::Value>, what: &str) -> Result<Vec<T>, String> {
    docs.into_iter().map(|doc| serde_json::from_value(doc).map_err(|e| format!("not a {what}: {e}"))).collect()
}

/// Runs blocking work (the state file) off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(format!("the state file task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::machine::Status;
    use crate::rollout::state::{Reload, StepStatus, Transition};

    fn stored(step: u32, status: Status) -> Stored {
        Stored {
            to: "comments".into(),
            step: serde_json::json!(step),
            since_ms: 1,
            status,
            readings: vec![],
            evaluated_ms: None,
        }
    }

    #[test]
    fn a_change_writes_only_what_it_changed_and_appends_what_it_recorded() {
        let before: BTreeMap<String, Stored> =
            [("a", stored(10, Status::Holding)), ("b", stored(50, Status::Holding)), ("gone", stored(1, Status::Done))]
                .into_iter()
                .map(|(r, s)| (r.to_string(), s))
                .collect();
        let mut after = State { routes: before.clone(), history: vec![], reloads: vec![] };
        after.routes.insert("b".into(), stored(50, Status::Paused));
        after.routes.insert("new".into(), stored(1, Status::Holding));
        after.routes.remove("gone");
        let to = StepStatus { step: serde_json::json!(50), status: Status::Paused };
        let reason = "pause by alice".to_string();
        let actor = Some("alice".to_string());
        after.history.push(Transition { at_ms: 7, route: "b".into(), from: None, to, reason, actor, readings: vec![] });
        let reload = Reload {
            at_ms: 8,
            hash: "h".into(),
            trigger: "event".into(),
            added: vec![],
            removed: vec![],
            changed: vec!["b".into()],
        };
        after.reloads.push(reload);
        let changes = changes(&before, after).unwrap();
        let upserted: Vec<&str> = changes.upsert.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(upserted, ["b", "new"], "`a` is as it was: not written");
        assert_eq!(changes.upsert[0].1["status"], "paused");
        assert_eq!(changes.delete, ["gone"]);
        assert_eq!((changes.transitions[0].0.as_str(), changes.transitions[0].1), ("b", 7));
        assert_eq!(changes.transitions[0].2["actor"], "alice");
        assert_eq!((changes.reloads[0].0, &changes.reloads[0].1["changed"]), (8, &serde_json::json!(["b"])));
        let back: Stored = serde_json::from_value(changes.upsert[1].1.clone()).unwrap();
        assert_eq!(back, stored(1, Status::Holding), "documents read back as they were written");
    }

    #[test]
    fn a_table_names_a_file_or_a_postgres_state() {
        let table = |autopilot: &str| {
            let text = format!(
                "listen: \"127.0.0.1:0\"\n{autopilot}upstreams:\n  a: {{ targets: [\"http://127.0.0.1:1\"] }}\nroutes:\n  - name: r\n    prefix: /\n    upstream: a\n"
            );
            crate::Shared::from_text("routes.yaml", &text).unwrap().table.load_full()
        };
        let link = Arc::new(Link::default());
        assert!(state_of(&table(""), &link).describe().ends_with(DEFAULT_STATE_FILE));
        let pg = state_of(&table("autopilot: { state: \"postgres://u:hunter2@db:5432/x\" }\n"), &link);
        assert!(matches!(pg, StateStore::Postgres(_)));
        assert_eq!(pg.describe(), "rollout state postgres://u:***@db:5432/x");
    }
}
