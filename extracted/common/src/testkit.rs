//! Test helpers (feature `testkit`): a tiny HTTP client, token minting, and a
//! harness that runs the REAL legacy monolith under gunicorn.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("").to_string())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send one request. `headers` are (name, value) pairs.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body.unwrap_or(b"")))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("timeout: {method} {url}"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp { status, headers, body }
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Mint an HS256 token with arbitrary claims.
pub fn token_with(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token like the monolith issues for `user_id`, valid for `ttl` seconds (negative = expired).
pub fn token(secret: &str, user_id: i64, ttl: i64) -> String {
    let now = unix_now();
    let iat = if ttl < 0 { now + ttl - 10 } else { now };
    token_with(
        secret,
        &serde_json::json!({"sub": user_id.to_string(), "username": format!("user{user_id:04}"), "iat": iat, "exp": now + ttl}),
    )
}

pub fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR of common = <root>/extracted/common
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real monolith under gunicorn, seeded with `--small`. Killed on drop.
pub struct Monolith {
    pub url: String,
    pub db: PathBuf,
    pub secret: String,
    child: Child,
    _dir: PathBuf,
}

impl Monolith {
    /// `None` (after a loud message) when `<root>/.venv/bin/gunicorn` is missing.
    pub async fn start(dir: &Path, secret: &str, internal_token: Option<&str>) -> Option<Monolith> {
        let root = repo_root();
        let venv = root.join(".venv/bin");
        if !venv.join("gunicorn").exists() {
            eprintln!(
                "\n\n!!!!!!!! SKIPPING CONTRACT TEST: {} not found.\n!!!!!!!! Create it with: python3 -m venv {} && {}/pip install -r {}\n\n",
                venv.join("gunicorn").display(),
                root.join(".venv").display(),
                venv.display(),
                root.join("legacy-monolith/requirements.txt").display()
            );
            return None;
        }
        let python = venv.join("python");
        let db = dir.join("monolith.db");
        let st = Command::new(&python)
            .args(["-m", "taskapp.seed", "--db"])
            .arg(&db)
            .arg("--small")
            .current_dir(root.join("legacy-monolith"))
            .stdout(Stdio::null())
            .status()
            .expect("running taskapp.seed");
        assert!(st.success(), "seeding the monolith failed");
        let port = free_port();
        let mut cmd = Command::new("bash");
        cmd.arg(root.join("legacy-monolith/run.sh"))
            .arg(port.to_string())
            .env("TASKAPP_PYTHON", &python)
            .env("TASKAPP_DB", &db)
            .env("TASKAPP_DATA_DIR", dir.join("data"))
            .env("TASKAPP_JWT_SECRET", secret)
            .env("TASKAPP_NOTIFY_WORKER", "0")
            .env("TASKAPP_WORKERS", "2")
            .env_remove("TASKAPP_INTERNAL_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("monolith.log")).unwrap());
        if let Some(t) = internal_token {
            cmd.env("TASKAPP_INTERNAL_TOKEN", t);
        }
        let child = cmd.spawn().expect("starting legacy-monolith/run.sh");
        let m =
            Monolith { url: format!("http://127.0.0.1:{port}"), db, secret: secret.into(), child, _dir: dir.into() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = tokio::time::timeout(Duration::from_secs(2), async {
                let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
                let req = hyper::Request::get(format!("{}/healthz", m.url)).body(Full::new(Bytes::new())).unwrap();
                matches!(client.request(req).await, Ok(r) if r.status() == 200)
            })
            .await
            .unwrap_or(false);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "monolith did not start; see {}", dir.join("monolith.log").display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(m)
    }

    /// Log in through the monolith and return the token.
    pub async fn login(&self, username: &str) -> String {
        self.login_with(username, "password123").await
    }

    pub async fn login_with(&self, username: &str, password: &str) -> String {
        let body = serde_json::json!({"username": username, "password": password}).to_string();
        let r = send("POST", &format!("{}/api/auth/login", self.url), &[], Some(body.as_bytes())).await;
        assert_eq!(r.status, 200, "login {username}: {}", r.text());
        r.json()["token"].as_str().unwrap().to_string()
    }
}

impl Drop for Monolith {
    fn drop(&mut self) {
        // SIGTERM lets gunicorn stop its workers; then reap.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send the same request to two base URLs; assert identical status, Content-Type
/// and body (byte-identical; for JSON also value-identical). Returns the monolith's answer.
pub async fn assert_same(
    mono: &str,
    svc: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let a = send(method, &format!("{mono}{path}"), headers, body).await;
    let b = send(method, &format!("{svc}{path}"), headers, body).await;
    assert_same_answers(method, path, headers, &a, &b);
    a
}

fn assert_same_answers(method: &str, path: &str, headers: &[(&str, &str)], a: &Resp, b: &Resp) {
    let ctx = format!(
        "{method} {path} headers={headers:?}\n monolith: {} {:?} {}\n service:  {} {:?} {}",
        a.status,
        a.header("content-type"),
        a.text(),
        b.status,
        b.header("content-type"),
        b.text()
    );
    assert_eq!(a.status, b.status, "status differs: {ctx}");
    assert_eq!(a.header("content-type"), b.header("content-type"), "content-type differs: {ctx}");
    assert_eq!(a.header("www-authenticate"), b.header("www-authenticate"), "www-authenticate differs: {ctx}");
    if method != "HEAD" && a.header("content-type").as_deref() == Some("application/json") {
        assert_eq!(a.json(), b.json(), "JSON differs: {ctx}");
    }
    assert_eq!(a.body, b.body, "body bytes differ: {ctx}");
}

/// Whether `r` is the 421 a replica answers for what it has not applied yet
/// (`{"error": "misdirected", "owner": "legacy", ...}`).
pub fn is_misdirected_to_legacy(r: &Resp) -> bool {
    r.status == 421
        && r.header("content-type").as_deref() == Some("application/json")
        && serde_json::from_slice::<Value>(&r.body)
            .is_ok_and(|v| v["error"] == "misdirected" && v["owner"] == "legacy" && v["epoch"].is_i64())
}

/// `assert_same`, except that where the monolith answers 401 or 404 the service
/// may answer 421 naming `legacy` instead: a replica that has not applied an id
/// sends the client to the monolith (the proxy retries there), so the client
/// gets the monolith's answer either way. Returns the monolith's answer and
/// whether the service said 421.
pub async fn assert_same_or_misdirected(
    mono: &str,
    svc: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (Resp, bool) {
    let a = send(method, &format!("{mono}{path}"), headers, body).await;
    let b = send(method, &format!("{svc}{path}"), headers, body).await;
    if b.status != 421 {
        assert_same_answers(method, path, headers, &a, &b);
        return (a, false);
    }
    assert!(
        matches!(a.status, 401 | 404) && (method == "HEAD" || is_misdirected_to_legacy(&b)),
        "{method} {path}: the service answered 421 where the monolith answered {} {}\n service: {}",
        a.status,
        a.text(),
        b.text()
    );
    (a, true)
}
