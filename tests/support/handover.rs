//! The stack for moving comment writes between the monolith and the
//! `comments` service (issue 18), all real: the monolith under gunicorn with
//! its notification worker and its consumer of the service's change feed, an
//! SMTP sink catching the mail it sends, the `users` and `comments` services
//! (internal token required on both feeds), and TWO proxies whose
//! `routes.yaml` differ as replicas' do mid-rollout: `to_legacy` runs the
//! root `routes.yaml` (comment writes to the monolith, `fallback: comments`),
//! `to_service` the same with comment writes on the service (`fallback: legacy`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use extracted_common::sync::SyncConfig;

use super::client::TestResponse;
use super::proxy::TestProxy;
use super::stack::*;

/// `X-Internal-Token` of both feeds and both ownership endpoints.
pub const INTERNAL_TOKEN: &str = "e2e-internal-token-0123456789";

/// The comment write routes of the root `routes.yaml`.
pub const WRITE_ROUTES: [&str; 2] = ["task-comments-write", "comments-write"];

// ------------------------------------------------------------------ SMTP sink

/// `python -m taskapp.smtp_sink`: every message the monolith sends, one file each.
pub struct SmtpSink {
    pub port: u16,
    pub out: PathBuf,
    child: Child,
}

impl SmtpSink {
    pub async fn start(dir: &Path) -> SmtpSink {
        let out = dir.join("mail");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(venv_python())
            .args(["-m", "taskapp.smtp_sink", "--host", "127.0.0.1", "--port", &port.to_string(), "--out"])
            .arg(&out)
            .current_dir(repo_root().join("legacy-monolith"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("smtp.log")).unwrap())
            .process_group(0)
            .spawn()
            .expect("starting the SMTP sink");
        let sink = SmtpSink { port, out, child };
        wait_for(Duration::from_secs(15), "the SMTP sink listening", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        sink
    }

    /// Every message caught so far, its quoted-printable soft line breaks undone.
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.out) else { return Vec::new() };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|m| m.replace("=\r\n", "").replace("=\n", ""))
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ configs

/// `text` with the comment write routes' `upstream` and `fallback` swapped:
/// the config of a replica that already sends comment writes to the service.
pub fn writes_to_service(text: &str) -> String {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let routes = doc["routes"].as_sequence_mut().expect("routes");
    let mut swapped = 0;
    for route in routes.iter_mut() {
        let name = route["name"].as_str().unwrap_or_default().to_string();
        if WRITE_ROUTES.contains(&name.as_str()) {
            let map = route.as_mapping_mut().unwrap();
            let (up, fb) = (map["upstream"].clone(), map["fallback"].clone());
            assert!(up.is_string() && fb.is_string(), "route {name} needs upstream and fallback: {map:?}");
            map.insert("upstream".into(), fb);
            map.insert("fallback".into(), up);
            swapped += 1;
        }
    }
    assert_eq!(swapped, WRITE_ROUTES.len(), "routes.yaml names the comment write routes {WRITE_ROUTES:?}");
    serde_yaml::to_string(&doc).unwrap()
}

// ------------------------------------------------------------------ the stack

/// Which side of the handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Monolith,
    Service,
}

/// One comment row as both databases keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentRow {
    pub task_id: i64,
    pub author_id: i64,
    pub body: String,
    pub created_at: String,
    pub updated_at: String,
}

pub struct HandoverStack {
    // Field order = drop order: proxies, services, the monolith, the sink.
    /// The root `routes.yaml`: comment writes to the monolith, `fallback: comments`.
    pub to_legacy: TestProxy,
    /// Comment writes to the service, `fallback: legacy`.
    pub to_service: TestProxy,
    pub users: Service,
    pub comments: Service,
    pub comments_state: comments::SharedState,
    pub monolith: Monolith,
    pub smtp: SmtpSink,
    pub sync_interval: Duration,
    pub dir: tempfile::TempDir,
}

impl HandoverStack {
    /// `None` when `STRANGLER_SKIP_E2E=1`. The services poll the monolith's
    /// feed every `sync_interval`; the monolith polls the service's every
    /// 200 ms (its default). Waits until the proxies see every upstream healthy.
    pub async fn start(sync_interval: Duration) -> Option<HandoverStack> {
        if !e2e_enabled() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let smtp = SmtpSink::start(dir.path()).await;
        // The service's address is known before it starts: the monolith follows its feed.
        let comments_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let comments_url = format!("http://{}", comments_listener.local_addr().unwrap());
        let smtp_port = smtp.port.to_string();
        let monolith = Monolith::start_with(
            dir.path(),
            &[
                ("TASKAPP_INTERNAL_TOKEN", INTERNAL_TOKEN),
                ("COMMENTS_SERVICE_URL", &comments_url),
                ("TASKAPP_CONSUMER_MAX_BACKOFF", "0.5"),
                ("TASKAPP_NOTIFY_WORKER", "1"),
                ("TASKAPP_NOTIFY_POLL", "0.1"),
                ("TASKAPP_SMTP_HOST", "127.0.0.1"),
                ("TASKAPP_SMTP_PORT", &smtp_port),
            ],
        )
        .await;
        let token = Some(INTERNAL_TOKEN.to_string());

        let mut conn = users::open_db(&dir.path().join("users.db")).expect("users db");
        users::backfill(&mut conn, &monolith.db).expect("users backfill");
        let users_state = users::AppState::new(conn, E2E_SECRET);
        let sync = users::spawn_sync(&users_state, SyncConfig::new(&monolith.url, token.clone(), sync_interval));
        let users_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let users = Service::spawn_on(users_listener, sync, move |l, stopped| {
            users::run(l, users_state, async move {
                let _ = stopped.await;
            })
        });

        let mut conn = comments::open_db(&dir.path().join("comments.db")).expect("comments db");
        comments::backfill(&mut conn, &monolith.db).expect("comments backfill");
        let comments_state =
            comments::AppState::configured(conn, E2E_SECRET, extracted_common::body::DEFAULT_MAX_BODY, token.clone());
        let sync = comments::spawn_sync(&comments_state, SyncConfig::new(&monolith.url, token, sync_interval));
        let state = comments_state.clone();
        let comments = Service::spawn_on(comments_listener, sync, move |l, stopped| {
            comments::run(l, state, async move {
                let _ = stopped.await;
            })
        });

        let text = |log: &str| demo_config(&monolith.url, &users.url, &comments.url, &dir.path().join(log), "200ms");
        let to_legacy = TestProxy::start(&text("diffs-a.jsonl")).await;
        let to_service = TestProxy::start(&writes_to_service(&text("diffs-b.jsonl"))).await;
        let stack = HandoverStack {
            to_legacy,
            to_service,
            users,
            comments,
            comments_state,
            monolith,
            smtp,
            sync_interval,
            dir,
        };
        for admin in [stack.to_legacy.admin, stack.to_service.admin] {
            wait_healthy_upstreams(admin, Duration::from_secs(15)).await;
        }
        Some(stack)
    }

    pub fn addr(&self, side: Side) -> SocketAddr {
        match side {
            Side::Monolith => self.monolith.addr,
            Side::Service => self.comments.addr,
        }
    }

    /// A request to a side's `/internal/*` with the token.
    pub async fn internal(&self, side: Side, method: Method, path: &str, body: Option<&Value>) -> TestResponse {
        let body = body.map(|b| b.to_string());
        let headers = [("X-Internal-Token", INTERNAL_TOKEN), ("Content-Type", "application/json")];
        call(self.addr(side), method, path, &headers, body.as_deref().map(str::as_bytes)).await
    }

    /// `GET /internal/ownership` on one side.
    pub async fn ownership(&self, side: Side) -> Value {
        let r = self.internal(side, Method::GET, "/internal/ownership", None).await;
        assert_eq!(r.status, 200, "GET /internal/ownership on {side:?}: {}", r.text());
        r.json()
    }

    /// Who owns comments, as `side` believes, and at which epoch.
    pub async fn owner_on(&self, side: Side) -> (String, i64) {
        let o = self.ownership(side).await;
        let c = &o["features"]["comments"];
        (c["owner"].as_str().unwrap().to_string(), c["epoch"].as_i64().unwrap())
    }

    /// The one call that moves comment writes: `POST /internal/ownership/comments`
    /// on the current owner (`from`), naming the other side. Returns the answer.
    pub async fn move_writes(&self, from: Side, owner: &str) -> Value {
        let r = self.internal(from, Method::POST, "/internal/ownership/comments", Some(&json!({"owner": owner}))).await;
        assert_eq!(r.status, 200, "handing comments to {owner} on {from:?}: {}", r.text());
        r.json()
    }

    /// Waits until `side` has applied the handover to `owner` at `epoch`; returns how long that took.
    pub async fn wait_owner(&self, side: Side, owner: &str, epoch: i64) -> Duration {
        let what = format!("{side:?} applying the handover to {owner} (epoch {epoch})");
        wait_for(
            Duration::from_secs(15),
            &what,
            || async move { self.owner_on(side).await == (owner.to_string(), epoch) },
        )
        .await
    }

    /// Whether `reader` has applied every event of `writer`'s feed.
    async fn drained(&self, writer: Side, reader: Side) -> bool {
        let cursor = self.ownership(reader).await["applied_event_id"].as_i64().unwrap();
        let r = self.internal(writer, Method::GET, &format!("/internal/events?after={cursor}&limit=1"), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["events"].as_array().unwrap().is_empty()
    }

    /// Waits until each side has applied the other's whole feed.
    pub async fn wait_caught_up(&self) {
        wait_for(Duration::from_secs(20), "both sides applying each other's feed to its end", || async {
            self.drained(Side::Monolith, Side::Service).await && self.drained(Side::Service, Side::Monolith).await
        })
        .await;
    }

    /// Every comment in a side's database, by id.
    pub fn comment_rows(&self, side: Side) -> BTreeMap<i64, CommentRow> {
        let conn = match side {
            Side::Monolith => extracted_common::db::open_monolith_readonly(&self.monolith.db),
            Side::Service => comments::open_db(&self.dir.path().join("comments.db")),
        }
        .expect("opening a database");
        let mut stmt = conn
            .prepare("SELECT id, task_id, author_id, body, created_at, updated_at FROM comments ORDER BY id")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    CommentRow {
                        task_id: r.get(1)?,
                        author_id: r.get(2)?,
                        body: r.get(3)?,
                        created_at: r.get(4)?,
                        updated_at: r.get(5)?,
                    },
                ))
            })
            .unwrap();
        rows.map(|r| r.unwrap()).collect()
    }

    /// Rows of the monolith's mail queue not yet sent or given up on.
    pub fn mail_queued(&self) -> i64 {
        let conn = extracted_common::db::open_monolith_readonly(&self.monolith.db).unwrap();
        conn.query_row("SELECT COUNT(*) FROM notifications WHERE status IN ('pending', 'sending')", [], |r| r.get(0))
            .unwrap()
    }

    /// Stops the comments service's feed loop: it applies nothing more (a
    /// replica lagging behind a handover, on purpose).
    pub async fn pause_comments_sync(&mut self) {
        self.comments.pause_sync().await;
    }

    pub fn resume_comments_sync(&mut self) {
        let cfg = SyncConfig::new(&self.monolith.url, Some(INTERNAL_TOKEN.to_string()), self.sync_interval);
        let sync = comments::spawn_sync(&self.comments_state, cfg);
        self.comments.resume_sync(sync);
    }
}
