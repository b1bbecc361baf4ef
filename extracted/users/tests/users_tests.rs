//! Integration tests of the `users` service: its own DB, auth, backfill, sync,
//! read-your-writes across the feed lag (421 for users not applied yet), and a
//! contract test against the REAL monolith (gunicorn, from the worktree's .venv).

use extracted_common::db;
use extracted_common::sync::{self, Event, SyncConfig};
use extracted_common::testkit::{
    assert_same, assert_same_or_misdirected, is_misdirected_to_legacy, send, token, token_with, unix_now, Monolith,
    Resp,
};
use rusqlite::{params, Connection};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use users::{app, backfill, open_db, run, spawn_sync, AppState, SharedState, UsersApplier};

const SECRET: &str = "test-secret";

struct Svc {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(state: SharedState) -> Svc {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(l, state, async move {
        let _ = rx.await;
    }));
    Svc { url, _stop: tx }
}

fn insert_user(c: &Connection, id: i64, full_name: &str) {
    c.execute(
        "INSERT INTO users (id, username, email, full_name, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![id, format!("user{id:04}"), format!("user{id:04}@example.com"), full_name, "2024-01-01 09:37:00"],
    )
    .unwrap();
}

/// Users 1..=n; applied so far: users up to n + 5 (the last five since deleted).
fn fixture(n: i64) -> (tempfile::TempDir, SharedState) {
    let dir = tempfile::tempdir().unwrap();
    let conn = open_db(&dir.path().join("users.db")).unwrap();
    for i in 1..=n {
        insert_user(&conn, i, if i == 1 { "Zoë" } else { "Ada Lovelace" });
    }
    db::raise_high_water(&conn, "user", n + 5).unwrap();
    (dir, AppState::new(conn, SECRET))
}

fn behind(uid: i64) -> String {
    format!(
        r#"{{"epoch":0,"error":"misdirected","message":"the users service's replica is behind: user {uid} is not applied yet","owner":"legacy"}}"#
    )
}

async fn get(url: &str, tok: Option<&str>) -> Resp {
    let h = tok.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = h.iter().map(|v| ("Authorization", v.as_str())).collect();
    send("GET", url, &headers, None).await
}

fn assert_err(r: &Resp, status: u16, body: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(r.text(), format!("{body}\n"));
    if status == 401 {
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_against_own_db() {
    let (_dir, st) = fixture(25);
    let svc = start(st).await;
    let t = token(SECRET, 1, 3600);
    let u = &svc.url;

    let r = get(&format!("{u}/api/users/1"), Some(&t)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(r.text(), "{\"created_at\":\"Mon, 01 Jan 2024 09:37:00 GMT\",\"email\":\"user0001@example.com\",\"full_name\":\"Zo\\u00eb\",\"id\":1,\"updated_at\":\"Mon, 01 Jan 2024 09:37:00 GMT\",\"username\":\"user0001\"}\n");

    let r = get(&format!("{u}/api/users"), Some(&t)).await.json();
    assert_eq!((r["page"].clone(), r["per_page"].clone(), r["total"].clone()), (json!(1), json!(20), json!(25)));
    assert_eq!(r["items"].as_array().unwrap().len(), 20);
    assert_eq!(r["items"][0]["id"], 1);
    let r = get(&format!("{u}/api/users?page=2"), Some(&t)).await.json();
    assert_eq!(r["items"].as_array().unwrap().len(), 5);
    assert_eq!(r["items"][0]["id"], 21);
    let r = get(&format!("{u}/api/users?page=9&per_page=5"), Some(&t)).await.json();
    assert_eq!(r, json!({"items": [], "page": 9, "per_page": 5, "total": 25}));
    let r = get(&format!("{u}/api/users?per_page=500"), Some(&t)).await.json();
    assert_eq!(r["per_page"], 100);
    assert_eq!(r["items"].as_array().unwrap().len(), 25);

    assert_err(
        &get(&format!("{u}/api/users?page=0"), Some(&t)).await,
        400,
        r#"{"error":"validation_error","field":"page","message":"page must be >= 1"}"#,
    );
    assert_err(
        &get(&format!("{u}/api/users?per_page=abc"), Some(&t)).await,
        400,
        r#"{"error":"validation_error","field":"per_page","message":"per_page must be an integer"}"#,
    );
    assert_err(
        &get(&format!("{u}/api/users?per_page=0"), Some(&t)).await,
        400,
        r#"{"error":"validation_error","field":"per_page","message":"per_page must be >= 1"}"#,
    );
    assert_err(
        &get(&format!("{u}/api/users/30"), Some(&t)).await,
        404,
        r#"{"error":"not_found","message":"user 30 not found"}"#,
    );
    // above the largest user applied: perhaps registered a moment ago; the proxy asks the monolith
    assert_err(&get(&format!("{u}/api/users/31"), Some(&t)).await, 421, &behind(31));
    assert_err(&get(&format!("{u}/api/users/999"), Some(&t)).await, 421, &behind(999));

    for p in ["/api/users/abc", "/api/users/", "/api/userz", "/api/users/1/x", "/api/users/-1"] {
        let r = get(&format!("{u}{p}"), Some(&t)).await;
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.header("content-type").as_deref(), Some("text/html; charset=utf-8"));
        assert_eq!(r.body.len(), 207);
    }
    let r = send("DELETE", &format!("{u}/api/users"), &[], None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.body.len(), 153);
    assert_eq!(r.header("allow").as_deref(), Some("OPTIONS, GET, HEAD"));

    let h = send("GET", &format!("{u}/healthz"), &[], None).await.json();
    assert_eq!(h["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures() {
    let (_dir, st) = fixture(3);
    let svc = start(st).await;
    let url = format!("{}/api/users/1", svc.url);
    let missing = r#"{"error":"unauthorized","message":"missing bearer token"}"#;
    let invalid = r#"{"error":"unauthorized","message":"invalid token"}"#;
    let expired = r#"{"error":"unauthorized","message":"token expired"}"#;
    assert_err(&send("GET", &url, &[], None).await, 401, missing);
    for h in ["Basic abc", "Bearer", "Bearer   ", "Token x"] {
        assert_err(&send("GET", &url, &[("Authorization", h)], None).await, 401, missing);
    }
    let now = unix_now();
    let bad = [
        "garbage".to_string(),
        token("other-secret", 1, 3600),
        token(SECRET, 5, 3600), // unknown (deleted) user
        token_with(SECRET, &json!({"sub": 1, "iat": now, "exp": now + 60})), // sub not a string
        token_with(SECRET, &json!({"sub": "x", "iat": now, "exp": now + 60})),
        token_with(SECRET, &json!({"sub": "1", "exp": now + 60})), // no iat
        token_with(SECRET, &json!({"sub": "1", "iat": now})),      // no exp
        token_with(SECRET, &json!({"iat": now, "exp": now + 60})), // no sub
        token_with(SECRET, &json!({"sub": "1", "iat": now + 3600, "exp": now + 7200})), // iat in future
    ];
    for t in &bad {
        assert_err(&send("GET", &url, &[("Authorization", &format!("Bearer {t}"))], None).await, 401, invalid);
    }
    assert_err(
        &send("GET", &url, &[("Authorization", &format!("Bearer {}", token(SECRET, 1, -5)))], None).await,
        401,
        expired,
    );
    // a valid signature for a subject above the largest user applied: 421, never 401
    let newcomer = format!("Bearer {}", token(SECRET, 9, 3600));
    for u in [url.clone(), format!("{}/api/users", svc.url), format!("{}/api/users/2", svc.url)] {
        assert_err(&send("GET", &u, &[("Authorization", &newcomer)], None).await, 421, &behind(9));
    }
    assert_err(&send("OPTIONS", &url, &[("Authorization", &newcomer)], None).await, 421, &behind(9));
    // the scheme is case-insensitive
    let r = send("GET", &url, &[("Authorization", &format!("bEaReR {}", token(SECRET, 2, 60)))], None).await;
    assert_eq!(r.status, 200);
    // OPTIONS needs a token too
    assert_err(&send("OPTIONS", &url, &[], None).await, 401, missing);
    let r = send("OPTIONS", &url, &[("Authorization", &format!("Bearer {}", token(SECRET, 2, 60)))], None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // routing (404/405) happens before authentication
    assert_eq!(send("GET", &format!("{}/api/users/x", svc.url), &[], None).await.status, 404);
    assert_eq!(send("POST", &format!("{}/api/users", svc.url), &[], None).await.status, 405);
}

fn monolith_like_db(path: &std::path::Path) -> Connection {
    let schema =
        std::fs::read_to_string(extracted_common::testkit::repo_root().join("legacy-monolith/taskapp/schema.sql"))
            .unwrap();
    let c = Connection::open(path).unwrap();
    c.execute_batch(&schema).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_copies_users_and_sets_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let m = monolith_like_db(&dir.path().join("m.db"));
    for i in 1..=3 {
        m.execute("INSERT INTO users (id, username, email, password_hash, full_name, created_at, updated_at) VALUES (?1, ?2, ?3, 'pbkdf2:sha256:600000$x$y', 'N', '2024-01-01 09:00:00', '2024-02-01 10:00:00')",
            params![i, format!("u{i}"), format!("u{i}@x.io")]).unwrap();
        m.execute("INSERT INTO events (entity, entity_id, op, payload, created_at) VALUES ('user', ?1, 'create', '{}', '2024-01-01 09:00:00')", [i]).unwrap();
    }
    let mut conn = open_db(&dir.path().join("users.db")).unwrap();
    insert_user(&conn, 42, "stale row, must disappear");
    let (n, cursor) = backfill(&mut conn, &dir.path().join("m.db")).unwrap();
    assert_eq!((n, cursor), (3, 3));
    assert_eq!(db::cursor(&conn).unwrap(), 3);
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('users')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!cols.iter().any(|c| c.contains("password")));
    let st = AppState::new(conn, SECRET);
    let svc = start(st).await;
    let r = get(&format!("{}/api/users/2", svc.url), Some(&token(SECRET, 1, 60))).await;
    assert_eq!(
        r.json(),
        json!({"created_at": "Mon, 01 Jan 2024 09:00:00 GMT", "email": "u2@x.io", "full_name": "N",
        "id": 2, "updated_at": "Thu, 01 Feb 2024 10:00:00 GMT", "username": "u2"})
    );
    // gone; above the 3 users copied, so the service sends the reader to the monolith
    assert!(is_misdirected_to_legacy(&get(&format!("{}/api/users/42", svc.url), Some(&token(SECRET, 1, 60))).await));
}

// ----------------------------------------------------------------- fake feed
#[derive(Default)]
struct Feed {
    events: Vec<Value>,
    afters: Vec<i64>,
    tokens: Vec<Option<String>>,
}

async fn fake_feed(feed: Arc<Mutex<Feed>>) -> String {
    use axum::extract::{Query, State};
    use axum::routing::get;
    async fn h(
        State(f): State<Arc<Mutex<Feed>>>,
        Query(q): Query<std::collections::HashMap<String, String>>,
        headers: axum::http::HeaderMap,
    ) -> axum::Json<Value> {
        let after: i64 = q.get("after").and_then(|s| s.parse().ok()).unwrap_or(0);
        let limit: usize = q.get("limit").and_then(|s| s.parse().ok()).unwrap_or(100);
        let mut f = f.lock().unwrap();
        f.afters.push(after);
        f.tokens.push(headers.get("x-internal-token").map(|v| v.to_str().unwrap().to_string()));
        let evs: Vec<Value> =
            f.events.iter().filter(|e| e["id"].as_i64().unwrap() > after).take(limit).cloned().collect();
        let next = evs.last().map(|e| e["id"].as_i64().unwrap()).unwrap_or(after);
        axum::Json(json!({"events": evs, "next_after": next}))
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let router = axum::Router::new().route("/internal/events", get(h)).with_state(feed);
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    url
}

fn user_ev(id: i64, op: &str, uid: i64, name: &str) -> Value {
    let payload = if op == "delete" {
        json!({"id": uid})
    } else {
        json!({"created_at": "Mon, 01 Jan 2024 09:37:00 GMT", "email": format!("u{uid}@x.io"), "full_name": name, "id": uid,
               "updated_at": "Tue, 02 Jan 2024 09:37:00 GMT", "username": format!("u{uid}")})
    };
    json!({"created_at": "Mon, 01 Jan 2024 09:37:00 GMT", "entity": "user", "entity_id": uid, "id": id, "op": op, "payload": payload})
}

async fn wait_cursor(st: &SharedState, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = db::cursor(&st.db.lock().unwrap()).unwrap();
        if c == want {
            return;
        }
        assert!(Instant::now() < deadline, "cursor stuck at {c}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(st: &SharedState) -> Vec<(i64, String)> {
    st.db
        .lock()
        .unwrap()
        .prepare("SELECT id, full_name FROM users ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_applies_resumes_and_never_double_applies() {
    let feed = Arc::new(Mutex::new(Feed::default()));
    {
        let mut f = feed.lock().unwrap();
        f.events = vec![
            user_ev(1, "create", 1, "One"),
            user_ev(2, "create", 2, "Two"),
            json!({"created_at": "Mon, 01 Jan 2024 09:37:00 GMT", "entity": "project", "entity_id": 1, "id": 3, "op": "create", "payload": {"id": 1}}),
            user_ev(4, "update", 1, "One v2"),
            user_ev(5, "create", 3, "Three"),
            user_ev(6, "delete", 0, "")
                .as_object()
                .cloned()
                .map(|mut o| {
                    o.insert("entity_id".into(), json!(2));
                    o.insert("payload".into(), json!({"id": 2}));
                    Value::Object(o)
                })
                .unwrap(),
        ];
    }
    let feed_url = fake_feed(feed.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let mut cfg = SyncConfig::new(feed_url.clone(), Some("itok".into()), Duration::from_millis(30));
    cfg.batch = 2; // exercise paging through the feed

    let st = AppState::new(open_db(&path).unwrap(), SECRET);
    let h = spawn_sync(&st, cfg.clone());
    wait_cursor(&st, 6).await;
    h.stop().await;
    assert_eq!(names(&st), vec![(1, "One v2".to_string()), (3, "Three".to_string())]);
    assert!(feed.lock().unwrap().tokens.iter().all(|t| t.as_deref() == Some("itok")));
    let svc = start(st.clone()).await;
    let r = get(&format!("{}/api/users/1", svc.url), Some(&token(SECRET, 1, 60))).await;
    assert_eq!(r.json()["updated_at"], "Tue, 02 Jan 2024 09:37:00 GMT");

    // no double apply: replaying old events through apply_batch is a no-op
    let old: Vec<Event> = serde_json::from_value(json!([user_ev(4, "update", 1, "STALE")])).unwrap();
    let (n, cur) = sync::apply_batch(&st.db, &UsersApplier, &old).unwrap();
    assert_eq!((n, cur), (0, 6));
    assert_eq!(names(&st)[0].1, "One v2");
    drop(svc);
    drop(st);

    // restart on the same file: resumes after 6
    feed.lock().unwrap().events.push(user_ev(7, "update", 3, "Three v2"));
    feed.lock().unwrap().afters.clear();
    let st = AppState::new(open_db(&path).unwrap(), SECRET);
    let h = spawn_sync(&st, cfg);
    wait_cursor(&st, 7).await;
    h.stop().await;
    assert_eq!(feed.lock().unwrap().afters[0], 6, "must resume from the stored cursor");
    assert_eq!(names(&st), vec![(1, "One v2".to_string()), (3, "Three v2".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_survives_monolith_down() {
    let (_dir, st) = fixture(1);
    let port = extracted_common::testkit::free_port(); // nothing listens there
    let h = spawn_sync(&st, SyncConfig::new(format!("http://127.0.0.1:{port}"), None, Duration::from_millis(20)));
    let svc = start(st.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(st.sync_status.consecutive_errors.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(get(&format!("{}/api/users/1", svc.url), Some(&token(SECRET, 1, 60))).await.status, 200);
    h.stop().await;
}

// ------------------------------------------------------------- contract test
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_against_real_monolith() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "contract-secret";
    let Some(mono) = Monolith::start(dir.path(), secret, Some("itok")).await else { return };
    let mut conn = open_db(&dir.path().join("users.db")).unwrap();
    let (n, _) = backfill(&mut conn, &mono.db).unwrap();
    assert_eq!(n, 10);
    let st = AppState::new(conn, secret);
    let _sync = spawn_sync(&st, SyncConfig::new(mono.url.clone(), Some("itok".into()), Duration::from_millis(100)));
    let svc = start(st).await;
    let (m, s) = (mono.url.as_str(), svc.url.as_str());

    let tok = mono.login("user0001").await;
    let auth = format!("Bearer {tok}");
    let a: &[(&str, &str)] = &[("Authorization", &auth)];
    let paths = [
        "/api/users",
        "/api/users?page=1",
        "/api/users?page=2",
        "/api/users?page=2&per_page=3",
        "/api/users?per_page=1",
        "/api/users?per_page=100",
        "/api/users?per_page=101",
        "/api/users?per_page=100000",
        "/api/users?page=50",
        "/api/users?page=4&per_page=3",
        "/api/users?page=",
        "/api/users?page=+2",
        "/api/users?page=%202%20",
        "/api/users?page=0",
        "/api/users?page=-1",
        "/api/users?page=abc",
        "/api/users?page=1.5",
        "/api/users?per_page=0",
        "/api/users?per_page=-5",
        "/api/users?per_page=x&page=y",
        "/api/users?page=1&page=2",
        "/api/users?foo=bar",
        "/api/users/1",
        "/api/users/10",
        "/api/users/0",
        "/api/users/11",
        "/api/users/999999",
        "/api/users/007",
        "/api/users/abc",
        "/api/users/-1",
        "/api/users/1.0",
        "/api/users/",
        "/api/users/1/",
        "/api/users/1/x",
        "/api/userss",
        "/api/nothing",
        "/nothing",
        "/api/users/99999999999999999999999",
    ];
    let mut misdirected = Vec::new();
    for p in paths {
        if assert_same_or_misdirected(m, s, "GET", p, a, None).await.1 {
            misdirected.push(p);
        }
        assert_same(m, s, "GET", p, &[], None).await;
    }
    // ids above the 10 users applied: the client gets the monolith's 404 through the proxy
    assert_eq!(misdirected, ["/api/users/11", "/api/users/999999"]);
    for p in ["/api/users", "/api/users/3", "/api/users/99"] {
        assert_same_or_misdirected(m, s, "HEAD", p, a, None).await;
    }
    // wrong methods -> 405 (before auth)
    for (meth, p) in [
        ("POST", "/api/users"),
        ("DELETE", "/api/users"),
        ("PUT", "/api/users"),
        ("DELETE", "/api/users/1"),
        ("PUT", "/api/users/1"),
    ] {
        let r = assert_same(m, s, meth, p, &[], None).await;
        assert_eq!(r.status, 405);
    }
    // OPTIONS: 401 without a token, 200 with one
    assert_same(m, s, "OPTIONS", "/api/users", &[], None).await;
    assert_same(m, s, "OPTIONS", "/api/users", a, None).await;
    // bad tokens
    let now = unix_now();
    let toks = [
        "Bearer".to_string(),
        "Basic dXNlcjpwdw==".into(),
        "bearer ".into(),
        "Bearer garbage".into(),
        "Bearer a.b.c".into(),
        format!("Bearer {}", token("wrong", 1, 60)),
        format!("Bearer {}", token(secret, 1, -60)),
        format!("Bearer {}", token(secret, 77, 60)),
        format!("bearer {}", token(secret, 2, 60)),
        format!("Bearer {}", token_with(secret, &json!({"sub": 1, "iat": now, "exp": now + 60}))),
        format!("Bearer {}", token_with(secret, &json!({"sub": "1", "exp": now + 60}))),
        format!("Bearer {}", token_with(secret, &json!({"sub": "1", "iat": now}))),
        format!("Bearer {}", token_with(secret, &json!({"sub": "one", "iat": now, "exp": now + 60}))),
        format!("Bearer {}", token_with(secret, &json!({"sub": "1", "iat": now + 1000, "exp": now + 6000}))),
        format!("Bearer {}", token_with(secret, &json!({"sub": " 3 ", "iat": now, "exp": now + 60}))),
        format!("Bearer   {tok}  "),
        format!("BEARER {tok}"),
    ];
    for t in &toks {
        // the token of subject 77 (above the users applied): 421 from the service
        assert_same_or_misdirected(m, s, "GET", "/api/users/1", &[("Authorization", t)], None).await;
        assert_same_or_misdirected(m, s, "GET", "/api/users?page=0", &[("Authorization", t)], None).await;
    }
    let t77 = format!("Bearer {}", token(secret, 77, 60));
    assert!(is_misdirected_to_legacy(
        &send("GET", &format!("{s}/api/users/1"), &[("Authorization", &t77)], None).await
    ));

    // writes through the monolith reach the service through the feed within 5 s
    let body = json!({"full_name": "Zoë Ünïcode \u{1F600} \"q\""}).to_string();
    let r = send("PATCH", &format!("{m}/api/users/1"), a, Some(body.as_bytes())).await;
    assert_eq!(r.status, 200);
    let reg =
        json!({"username": "newbie", "email": "NewBie@Example.com", "password": "longpassword", "full_name": "N. Ew"})
            .to_string();
    let r = send("POST", &format!("{m}/api/auth/register"), &[], Some(reg.as_bytes())).await;
    assert_eq!(r.status, 201);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a1 = send("GET", &format!("{m}/api/users?per_page=100"), a, None).await;
        let b1 = send("GET", &format!("{s}/api/users?per_page=100"), a, None).await;
        if a1.body == b1.body {
            break;
        }
        assert!(Instant::now() < deadline, "service did not catch up within 5 s:\n{}\n{}", a1.text(), b1.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_same(m, s, "GET", "/api/users/1", a, None).await;
    assert_same(m, s, "GET", "/api/users/11", a, None).await;
    // the new user's own token works on the service too
    let t11 = format!("Bearer {}", mono.login_with("newbie", "longpassword").await);
    assert_same(m, s, "GET", "/api/users/11", &[("Authorization", &t11)], None).await;
}

// ------------------------------------------------------- read-your-writes
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_registered_on_the_monolith_reads_through_421_then_200_never_401() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "ryw-secret";
    let Some(mono) = Monolith::start(dir.path(), secret, None).await else { return };
    let mut conn = open_db(&dir.path().join("users.db")).unwrap();
    backfill(&mut conn, &mono.db).unwrap();
    let st = AppState::new(conn, secret);
    let interval = humantime::parse_duration(users::DEFAULT_SYNC_INTERVAL).unwrap();
    let _sync = spawn_sync(&st, SyncConfig::new(mono.url.clone(), None, interval));
    let svc = start(st).await;
    let (m, s) = (mono.url.as_str(), svc.url.as_str());

    let mut windows = Vec::new();
    let mut misdirected = 0;
    for i in 0..10u64 {
        // Each round ends just after a feed round applied the last user: a growing
        // pause spreads the registrations over the whole sync interval.
        tokio::time::sleep(interval * i as u32 / 10).await;
        let reg = json!({"username": format!("fresh{i}"), "email": format!("fresh{i}@example.com"), "password": "longpassword"});
        let r = send("POST", &format!("{m}/api/auth/register"), &[], Some(reg.to_string().as_bytes())).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let registered = Instant::now();
        let id = r.json()["id"].as_i64().unwrap();
        // the token login would issue (minted here so that the read follows the registration at once)
        let auth = format!("Bearer {}", token(secret, id, 3600));
        let h: &[(&str, &str)] = &[("Authorization", &auth)];
        let path = format!("/api/users/{id}");
        // what the proxy's fallback gets: the monolith answers at once
        assert_eq!(send("GET", &format!("{m}{path}"), h, None).await.status, 200);
        loop {
            let r = send("GET", &format!("{s}{path}"), h, None).await;
            if r.status == 200 {
                assert_eq!(r.json()["username"], format!("fresh{i}"));
                windows.push(registered.elapsed());
                break;
            }
            assert!(is_misdirected_to_legacy(&r), "neither 200 nor 421 while catching up: {} {}", r.status, r.text());
            misdirected += 1;
            assert!(registered.elapsed() < interval + Duration::from_secs(5), "user {id} never applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(misdirected > 0, "no read reached the service before it applied the registration");
    windows.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "read-your-writes window (registration committed -> users service applied it, sync every {interval:?}): \
         n={} min={:.0}ms p50={:.0}ms max={:.0}ms; {misdirected} reads answered 421 meanwhile",
        windows.len(),
        ms(windows[0]),
        ms(windows[windows.len() / 2]),
        ms(*windows.last().unwrap())
    );
    assert!(*windows.last().unwrap() < interval + Duration::from_secs(2));

    // the whole flow with a real login: register, log in, read your profile at once
    let reg = json!({"username": "walker", "email": "walker@example.com", "password": "longpassword"});
    let id = send("POST", &format!("{m}/api/auth/register"), &[], Some(reg.to_string().as_bytes())).await.json()["id"]
        .as_i64()
        .unwrap();
    let auth = format!("Bearer {}", mono.login_with("walker", "longpassword").await);
    let r = send("GET", &format!("{s}/api/users/{id}"), &[("Authorization", &auth)], None).await;
    assert!(r.status == 200 || is_misdirected_to_legacy(&r), "{} {}", r.status, r.text());
}

#[test]
fn router_builds() {
    let (_d, st) = fixture(0);
    let _ = app(st);
}
