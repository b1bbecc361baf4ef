//! The whole strangler stack on loopback, for end-to-end tests: the REAL
//! legacy monolith under gunicorn (seeded with `--small`), the REAL `users`
//! and `comments` services in-process (backfilled from the monolith's DB and
//! following its `/internal/events` feed), and the REAL proxy with the demo
//! routing of the root `routes.yaml` (ports rewritten to the ephemeral ones).
//!
//! Everything stops when the `Stack` is dropped: the services' servers and
//! sync loops, the proxy, and gunicorn's whole process group.
//!
//! Without `<root>/.venv/bin/gunicorn` the tests FAIL (run `make venv`),
//! unless `STRANGLER_SKIP_E2E=1` is set, which skips them.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use extracted_common::sync::{SyncConfig, SyncHandle};

use super::client::{http1, req, send, TestResponse};
use super::proxy::TestProxy;

/// The JWT secret the monolith signs with (and the services verify with).
pub const E2E_SECRET: &str = "e2e-test-secret-0123456789abcdef";
/// How often the services poll the monolith's change feed.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn venv_python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// `false` when the e2e tests are to be skipped (`STRANGLER_SKIP_E2E=1`);
/// panics with instructions when gunicorn is missing.
pub fn e2e_enabled() -> bool {
    if std::env::var("STRANGLER_SKIP_E2E").map(|v| v == "1").unwrap_or(false) {
        eprintln!("STRANGLER_SKIP_E2E=1: skipping the end-to-end test");
        return false;
    }
    let gunicorn = repo_root().join(".venv/bin/gunicorn");
    if !gunicorn.exists() {
        panic!(
            "\n\nThe end-to-end tests need the legacy monolith's virtualenv, but {} is missing.\n\
             Run `make venv` (or: python3 -m venv {root}/.venv && {root}/.venv/bin/pip install -r \
             {root}/legacy-monolith/requirements.txt).\n\
             Set STRANGLER_SKIP_E2E=1 to skip these tests instead.\n",
            gunicorn.display(),
            root = repo_root().display()
        );
    }
    true
}

// ------------------------------------------------------------------ monolith

/// The monolith under gunicorn, in its own process group (killed on drop).
pub struct Monolith {
    pub url: String,
    pub addr: SocketAddr,
    pub db: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Monolith {
    /// Seeds `<dir>/monolith.db` with `--small` and starts gunicorn on a free port.
    pub async fn start(dir: &Path) -> Monolith {
        Self::start_with(dir, &[]).await
    }

    /// As `start`, with more environment for the monolith (set last, so it
    /// overrides the defaults above: e.g. `TASKAPP_NOTIFY_WORKER=1`).
    pub async fn start_with(dir: &Path, env: &[(&str, &str)]) -> Monolith {
        let root = repo_root();
        let python = venv_python();
        let db = dir.join("monolith.db");
        let out = Command::new(&python)
            .args(["-m", "taskapp.seed", "--db"])
            .arg(&db)
            .arg("--small")
            .current_dir(root.join("legacy-monolith"))
            .output()
            .expect("running taskapp.seed");
        assert!(out.status.success(), "seeding the monolith failed: {}", String::from_utf8_lossy(&out.stderr));
        let log = dir.join("monolith.log");
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let child = Command::new(&python)
                .args(["-m", "gunicorn", "-w", "2", "--graceful-timeout", "2", "-b"])
                .arg(addr.to_string())
                .arg("taskapp:create_app()")
                .current_dir(root.join("legacy-monolith"))
                .env("PYTHONPATH", root.join("legacy-monolith"))
                .env("TASKAPP_DB", &db)
                .env("TASKAPP_DATA_DIR", dir.join("data"))
                .env("TASKAPP_JWT_SECRET", E2E_SECRET)
                .env("TASKAPP_NOTIFY_WORKER", "0")
                .env_remove("TASKAPP_INTERNAL_TOKEN")
                .env_remove("COMMENTS_SERVICE_URL")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .process_group(0)
                .spawn()
                .expect("starting gunicorn");
            let mut m = Monolith { url: format!("http://{addr}"), addr, db: db.clone(), log: log.clone(), child };
            match m.wait_healthy(Duration::from_secs(30)).await {
                Ok(()) => return m,
                Err(e) => last_err = e, // e.g. the port was taken meanwhile: try another
            }
        }
        panic!("the monolith did not start: {last_err}");
    }

    async fn wait_healthy(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let client = http1();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("gunicorn exited ({status}); log:\n{}", self.log_text()));
            }
            let r = send(&client, req(Method::GET, self.addr, "/healthz").body(Full::default()).unwrap()).await;
            if matches!(r, Ok(ref r) if r.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no healthy /healthz within {within:?}; log:\n{}", self.log_text()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Monolith {
    fn drop(&mut self) {
        // SIGTERM to the whole group (master and workers), then SIGKILL whatever is left.
        self.kill_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill_group("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ services

/// An extracted service running in-process.
pub struct Service {
    pub url: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    sync: Option<SyncHandle>,
}

impl Service {
    async fn spawn<F>(sync: SyncHandle, serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F) -> Service
    where
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::spawn_on(listener, sync, serve)
    }

    /// Serves on a listener bound beforehand (so others can be told its
    /// address before it starts).
    pub fn spawn_on<F>(
        listener: TcpListener,
        sync: SyncHandle,
        serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F,
    ) -> Service
    where
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(serve(listener, stopped));
        Service { url: format!("http://{addr}"), addr, stop: Some(stop), server: Some(server), sync: Some(sync) }
    }

    /// Stops serving: graceful shutdown (the listener is closed at once, so
    /// new connections are refused), in-flight requests get a bounded time.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(Duration::from_secs(3), &mut server).await.is_err() {
                // Cancelled, and awaited so that its listener is closed on return.
                server.abort();
                let _ = server.await;
            }
        }
        if let Some(sync) = self.sync.take() {
            sync.stop().await;
        }
    }

    /// Stops following the feed (the service keeps serving what it has applied).
    pub async fn pause_sync(&mut self) {
        if let Some(sync) = self.sync.take() {
            sync.stop().await;
        }
    }

    /// Follows the feed again, with a loop started by the caller.
    pub fn resume_sync(&mut self, sync: SyncHandle) {
        self.sync = Some(sync);
    }

    /// Stops at once: the server task and every connection it holds are dropped.
    pub fn kill(&mut self) {
        self.stop.take();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.sync.take();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn start_users(monolith: &Monolith, dir: &Path) -> Service {
    let mut conn = users::open_db(&dir.join("users.db")).expect("users db");
    let (n, cursor) = users::backfill(&mut conn, &monolith.db).expect("users backfill");
    assert!(n > 0 && cursor > 0, "users backfill copied nothing ({n} users, cursor {cursor})");
    let state = users::AppState::new(conn, E2E_SECRET);
    let sync = users::spawn_sync(&state, SyncConfig::new(&monolith.url, None, SYNC_INTERVAL));
    Service::spawn(sync, move |l, stopped| {
        users::run(l, state, async move {
            let _ = stopped.await;
        })
    })
    .await
}

pub async fn start_comments(monolith: &Monolith, dir: &Path) -> Service {
    let mut conn = comments::open_db(&dir.join("comments.db")).expect("comments db");
    let stats = comments::backfill(&mut conn, &monolith.db).expect("comments backfill");
    assert!(stats.comments > 0 && stats.tasks > 0, "comments backfill copied nothing: {stats:?}");
    let state = comments::AppState::new(conn, E2E_SECRET);
    let sync = comments::spawn_sync(&state, SyncConfig::new(&monolith.url, None, SYNC_INTERVAL));
    Service::spawn(sync, move |l, stopped| {
        comments::run(l, state, async move {
            let _ = stopped.await;
        })
    })
    .await
}

// ------------------------------------------------------------------ proxy config

/// The root `routes.yaml`, with the demo ports (monolith 5000, users 7001,
/// comments 7002) replaced by the given URLs, listen/admin on 127.0.0.1:0,
/// the shadow log in `shadow_log`, and health checks every `health_interval`.
/// Panics when a target names a port that is not one of the demo's.
pub fn demo_config(legacy: &str, users: &str, comments: &str, shadow_log: &Path, health_interval: &str) -> String {
    let path = repo_root().join("routes.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("routes.yaml is YAML");
    let map = doc.as_mapping_mut().expect("routes.yaml is a mapping");
    map.insert("listen".into(), "127.0.0.1:0".into());
    map.insert("admin".into(), "127.0.0.1:0".into());
    if let Some(shadow) = map.get_mut("shadow").and_then(|s| s.as_mapping_mut()) {
        shadow.insert("log".into(), shadow_log.display().to_string().into());
    }
    let mut replaced = 0;
    let upstreams = map.get_mut("upstreams").and_then(|u| u.as_mapping_mut()).expect("routes.yaml has upstreams");
    for (name, up) in upstreams.iter_mut() {
        let up = up.as_mapping_mut().unwrap_or_else(|| panic!("upstream {name:?} is not a mapping"));
        if let Some(targets) = up.get_mut("targets").and_then(|t| t.as_sequence_mut()) {
            for t in targets.iter_mut() {
                let s = t.as_str().unwrap_or_default().trim_end_matches('/').to_string();
                let url = match s.rsplit(':').next() {
                    Some("5000") => legacy,
                    Some("7001") => users,
                    Some("7002") => comments,
                    _ => panic!(
                        "routes.yaml: upstream {name:?} target {s:?} is not one of the demo ports 5000/7001/7002"
                    ),
                };
                *t = url.into();
                replaced += 1;
            }
        }
        if let Some(hc) = up.get_mut("health_check").and_then(|h| h.as_mapping_mut()) {
            hc.insert("interval".into(), health_interval.into());
        }
    }
    assert!(replaced >= 3, "routes.yaml: expected targets on ports 5000, 7001 and 7002");
    serde_yaml::to_string(&doc).unwrap()
}

// ------------------------------------------------------------------ the stack

pub struct Stack {
    // Field order = drop order: proxy first, then services, then the monolith.
    pub proxy: TestProxy,
    pub users: Service,
    pub comments: Service,
    pub monolith: Monolith,
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// `None` when `STRANGLER_SKIP_E2E=1`. Waits until every upstream is healthy
    /// as the proxy sees it.
    pub async fn start() -> Option<Stack> {
        if !e2e_enabled() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let monolith = Monolith::start(dir.path()).await;
        let users = start_users(&monolith, dir.path()).await;
        let comments = start_comments(&monolith, dir.path()).await;
        let text =
            demo_config(&monolith.url, &users.url, &comments.url, &dir.path().join("shadow-diffs.jsonl"), "200ms");
        let proxy = TestProxy::start(&text).await;
        let stack = Stack { proxy, users, comments, monolith, dir };
        for url in [stack.users.url.clone(), stack.comments.url.clone()] {
            let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
            wait_for(Duration::from_secs(10), &format!("{url}/healthz"), || async move {
                matches!(try_get(addr, "/healthz", &[]).await, Some(r) if r.status == 200)
            })
            .await;
        }
        wait_healthy_upstreams(stack.proxy.admin, Duration::from_secs(10)).await;
        Some(stack)
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    pub async fn metrics(&self) -> String {
        try_get(self.proxy.admin, "/metrics", &[]).await.expect("GET /metrics").text()
    }

    /// Logs in through the proxy; returns the token.
    pub async fn login(&self, username: &str) -> String {
        let body = serde_json::json!({"username": username, "password": "password123"}).to_string();
        let r = call(self.proxy.addr, Method::POST, "/api/auth/login", &[], Some(body.as_bytes())).await;
        assert_eq!(r.status, 200, "login {username}: {}", r.text());
        r.json()["token"].as_str().unwrap().to_string()
    }

    /// An `X-User-Id` value that the proxy's sticky split sends to `upstream`
    /// on route `route` (asked of the live routing table; this counts in
    /// `strangler_split_decisions_total`, like a request would).
    pub fn sticky_user_for(&self, route: &str, upstream: &str) -> String {
        let table = self.proxy.shared.table.load();
        let r = table
            .router
            .entries()
            .iter()
            .map(|(_, r)| r)
            .find(|r| &*r.name == route)
            .unwrap_or_else(|| panic!("no route {route:?}"));
        for i in 1..10_000 {
            let id = i.to_string();
            let mut headers = http::HeaderMap::new();
            headers.insert("x-user-id", id.parse().unwrap());
            if &*r.upstreams[r.choose(&headers)].upstream.name == upstream {
                return id;
            }
        }
        panic!("no X-User-Id sticks to {upstream} on {route}");
    }

    /// The shadow-diff records written so far.
    pub fn shadow_records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("shadow-diffs.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

// ------------------------------------------------------------------ helpers

/// One request on a fresh HTTP/1.1 client; panics on transport errors.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> TestResponse {
    try_call(addr, method.clone(), path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

pub async fn try_call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<TestResponse, String> {
    let mut b = req(method, addr, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = Full::new(Bytes::copy_from_slice(body.unwrap_or_default()));
    send(&http1(), b.body(body).unwrap()).await
}

pub async fn try_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<TestResponse> {
    try_call(addr, Method::GET, path, headers, None).await.ok()
}

/// Polls `check` every 50 ms until it is true; panics after `within`.
pub async fn wait_for<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sum of the samples of metric `name` whose labels include every `(key, value)`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let ok = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Waits until the proxy behind `admin` sees a healthy target in each of the
/// stack's upstreams (legacy, users, comments): before that, a request may
/// take a fallback the test did not ask for.
pub async fn wait_healthy_upstreams(admin: SocketAddr, within: Duration) {
    wait_for(within, "the proxy sees every upstream healthy", || async move {
        let Some(r) = try_get(admin, "/metrics", &[]).await else { return false };
        let m = r.text();
        ["legacy", "users", "comments"]
            .iter()
            .all(|u| metric_sum(&m, "strangler_upstream_target_healthy", &[("upstream", u)]) >= 1.0)
    })
    .await;
}
