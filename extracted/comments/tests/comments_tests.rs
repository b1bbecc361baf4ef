//! Integration tests of the `comments` service: reads and writes against its own DB,
//! auth, validation, backfill, sync, the write handover (ownership from the feed,
//! 421s, its own feed, hand-back, cascades, replicas behind their feed), and a
//! contract test against the REAL monolith.

use comments::{backfill, open_db, run, spawn_sync, AppState, CommentsApplier, SharedState};
use extracted_common::db;
use extracted_common::sync::{self, Event, SyncConfig};
use extracted_common::testkit::assert_same_or_misdirected;
use extracted_common::testkit::{assert_same, send, token, Monolith, Resp};
use rusqlite::{params, Connection};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

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

/// users 1..=3, tasks 1..=3, comments: 25 on task 1 by user 1 (ids 1..=25), 1 on task 2 by user 2 (id 26);
/// applied so far: users up to 5, tasks up to 10, comments up to 30 (the rest since deleted).
/// The monolith owns comments.
fn fixture() -> (tempfile::TempDir, SharedState) {
    let dir = tempfile::tempdir().unwrap();
    let c = open_db(&dir.path().join("comments.db")).unwrap();
    for i in 1..=3 {
        c.execute("INSERT INTO users (id, username) VALUES (?1, ?2)", params![i, format!("user{i:04}")]).unwrap();
        c.execute("INSERT INTO tasks (id, project_id) VALUES (?1, 1)", [i]).unwrap();
    }
    for i in 1..=26 {
        let (task, author) = if i <= 25 { (1, 1) } else { (2, 2) };
        c.execute("INSERT INTO comments (id, task_id, author_id, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, '2024-01-01 09:37:00', '2024-01-01 09:37:00')",
            params![i, task, author, if i == 1 { "Zoë says hi".to_string() } else { format!("comment {i}") }]).unwrap();
    }
    for (entity, max) in [("user", 5), ("task", 10), ("comment", 30)] {
        db::raise_high_water(&c, entity, max).unwrap();
    }
    (dir, AppState::configured(c, SECRET, 4096, Some(ITOK.into())))
}

const ITOK: &str = "internal-secret";

/// The monolith's handover event: `comments` owned by `owner` at `epoch`.
fn handover(id: i64, owner: &str, epoch: i64, high_water: i64) -> Value {
    ev(
        id,
        "ownership",
        "handover",
        0,
        json!({"feature": "comments", "owner": owner, "epoch": epoch, "high_water": high_water}),
    )
}

fn apply(st: &SharedState, events: &[Value]) -> (usize, i64) {
    let events: Vec<Event> = serde_json::from_value(Value::Array(events.to_vec())).unwrap();
    sync::apply_batch(&st.db, &CommentsApplier, &events).unwrap()
}

/// `fixture()` after applying the monolith's handover (epoch 2, high-water mark 30).
fn owner_fixture() -> (tempfile::TempDir, SharedState) {
    let (dir, st) = fixture();
    assert_eq!(apply(&st, &[handover(1, "comments", 2, 30)]), (1, 1));
    (dir, st)
}

fn itok() -> [(&'static str, &'static str); 1] {
    [("X-Internal-Token", ITOK)]
}

/// This service's own feed, read as the monolith reads it.
async fn feed_events(url: &str, after: i64) -> Vec<Value> {
    let r = send("GET", &format!("{url}/internal/events?after={after}"), &itok(), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["events"].as_array().unwrap().clone()
}

/// (entity, entity_id, op, payload) of feed events, for comparisons.
fn summary(events: &[Value]) -> Vec<(String, i64, String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["entity"].as_str().unwrap().to_string(),
                e["entity_id"].as_i64().unwrap(),
                e["op"].as_str().unwrap().to_string(),
                e["payload"].clone(),
            )
        })
        .collect()
}

async fn ownership_of(url: &str) -> Value {
    let r = send("GET", &format!("{url}/internal/ownership"), &itok(), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn bearer(uid: i64) -> String {
    format!("Bearer {}", token(SECRET, uid, 3600))
}

async fn req(method: &str, url: &str, uid: Option<i64>, body: Option<&str>) -> Resp {
    let b = uid.map(bearer);
    let h: Vec<(&str, &str)> = b.iter().map(|v| ("Authorization", v.as_str())).collect();
    send(method, url, &h, body.map(str::as_bytes)).await
}

fn assert_err(r: &Resp, status: u16, body: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(r.text(), format!("{body}\n"));
    if status == 401 {
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    }
}

fn verr(msg: &str) -> String {
    format!(r#"{{"error":"validation_error","field":"body","message":"{msg}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_against_own_db() {
    let (_dir, st) = fixture();
    let svc = start(st).await;
    let u = &svc.url;
    let r = req("GET", &format!("{u}/api/comments/1"), Some(3), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"author_id\":1,\"body\":\"Zo\\u00eb says hi\",\"created_at\":\"Mon, 01 Jan 2024 09:37:00 GMT\",\"id\":1,\"task_id\":1,\"updated_at\":\"Mon, 01 Jan 2024 09:37:00 GMT\"}\n");
    let r = req("GET", &format!("{u}/api/tasks/1/comments"), Some(3), None).await.json();
    assert_eq!((r["total"].clone(), r["page"].clone(), r["per_page"].clone()), (json!(25), json!(1), json!(20)));
    assert_eq!(r["items"].as_array().unwrap().len(), 20);
    let r = req("GET", &format!("{u}/api/tasks/1/comments?page=2&per_page=10"), Some(3), None).await.json();
    assert_eq!(r["items"][0]["id"], 11);
    let r = req("GET", &format!("{u}/api/tasks/3/comments"), Some(3), None).await.json();
    assert_eq!(r, json!({"items": [], "page": 1, "per_page": 20, "total": 0}));
    let r = req("GET", &format!("{u}/api/tasks/1/comments?per_page=1000"), Some(3), None).await.json();
    assert_eq!(r["per_page"], 100);
    assert_err(
        &req("GET", &format!("{u}/api/tasks/9/comments"), Some(3), None).await,
        404,
        r#"{"error":"not_found","message":"task 9 not found"}"#,
    );
    // above the largest task applied: the monolith may have it already (the proxy asks it)
    assert_err(
        &req("GET", &format!("{u}/api/tasks/11/comments"), Some(3), None).await,
        421,
        r#"{"epoch":1,"error":"misdirected","message":"the comments service's replica is behind: task 11 is not applied yet","owner":"legacy"}"#,
    );
    // unknown task wins over bad pagination
    assert_err(
        &req("GET", &format!("{u}/api/tasks/9/comments?page=0"), Some(3), None).await,
        404,
        r#"{"error":"not_found","message":"task 9 not found"}"#,
    );
    assert_err(
        &req("GET", &format!("{u}/api/tasks/1/comments?page=0"), Some(3), None).await,
        400,
        r#"{"error":"validation_error","field":"page","message":"page must be >= 1"}"#,
    );
    assert_err(
        &req("GET", &format!("{u}/api/tasks/1/comments?per_page=z"), Some(3), None).await,
        400,
        r#"{"error":"validation_error","field":"per_page","message":"per_page must be an integer"}"#,
    );
    assert_err(
        &req("GET", &format!("{u}/api/comments/28"), Some(3), None).await,
        404,
        r#"{"error":"not_found","message":"comment 28 not found"}"#,
    );
    assert_err(
        &req("GET", &format!("{u}/api/comments/999"), Some(3), None).await,
        421,
        r#"{"epoch":1,"error":"misdirected","message":"the comments service's replica is behind: comment 999 is not applied yet","owner":"legacy"}"#,
    );
    for p in ["/api/comments/x", "/api/comments/", "/api/tasks/x/comments", "/api/tasks/1/comments/", "/api/comments"] {
        let r = req("GET", &format!("{u}{p}"), None, None).await;
        assert_eq!((r.status, r.body.len()), (404, 207), "{p}");
    }
    let r = req("PUT", &format!("{u}/api/comments/1"), None, None).await;
    assert_eq!((r.status, r.body.len()), (405, 153));
    let r = req("DELETE", &format!("{u}/api/tasks/1/comments"), None, None).await;
    assert_eq!(r.status, 405);
    // auth
    let missing = r#"{"error":"unauthorized","message":"missing bearer token"}"#;
    assert_err(&req("GET", &format!("{u}/api/comments/1"), None, None).await, 401, missing);
    let expired = format!("Bearer {}", token(SECRET, 1, -30));
    assert_err(
        &send("GET", &format!("{u}/api/comments/1"), &[("Authorization", &expired)], None).await,
        401,
        r#"{"error":"unauthorized","message":"token expired"}"#,
    );
    assert_err(
        &req("GET", &format!("{u}/api/comments/1"), Some(4), None).await,
        401,
        r#"{"error":"unauthorized","message":"invalid token"}"#,
    );
    // a subject above the largest user applied: registered a moment ago, perhaps
    assert_err(
        &req("GET", &format!("{u}/api/comments/1"), Some(99), None).await,
        421,
        r#"{"epoch":1,"error":"misdirected","message":"the comments service's replica is behind: user 99 is not applied yet","owner":"legacy"}"#,
    );
    let wrong = format!("Bearer {}", token("nope", 1, 60));
    assert_err(
        &send("GET", &format!("{u}/api/comments/1"), &[("Authorization", &wrong)], None).await,
        401,
        r#"{"error":"unauthorized","message":"invalid token"}"#,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_against_own_db() {
    let (_dir, st) = owner_fixture();
    let svc = start(st.clone()).await;
    let u = &svc.url;
    let missing = r#"{"error":"unauthorized","message":"missing bearer token"}"#;
    assert_err(&req("POST", &format!("{u}/api/tasks/1/comments"), None, Some("{}")).await, 401, missing);
    assert_err(&req("PATCH", &format!("{u}/api/comments/1"), None, Some("{}")).await, 401, missing);
    assert_err(&req("DELETE", &format!("{u}/api/comments/1"), None, None).await, 401, missing);
    // create (any user, any existing task), text/plain body is fine, unknown fields ignored
    let r = send(
        "POST",
        &format!("{u}/api/tasks/3/comments"),
        &[("Authorization", &bearer(2)), ("Content-Type", "text/plain")],
        Some(br#"{"body": "  hello \u00e9  ", "author_id": 1, "id": 5, "task_id": 2}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let c = r.json();
    assert_eq!(
        (c["id"].clone(), c["task_id"].clone(), c["author_id"].clone(), c["body"].clone()),
        (json!(31), json!(3), json!(2), json!("  hello é  ")),
        "the first id above the high-water mark"
    );
    assert_eq!(c["created_at"], c["updated_at"]);
    assert!(c["created_at"].as_str().unwrap().ends_with(" GMT"));
    assert_eq!(req("GET", &format!("{u}/api/comments/31"), Some(1), None).await.json(), c);
    // validation (same bodies as the monolith)
    let post = |b: &'static str| {
        let u = u.clone();
        async move { req("POST", &format!("{u}/api/tasks/1/comments"), Some(1), Some(b)).await }
    };
    assert_err(&post("").await, 400, r#"{"error":"bad_request","message":"malformed JSON body"}"#);
    assert_err(&post("{bad").await, 400, r#"{"error":"bad_request","message":"malformed JSON body"}"#);
    assert_err(&post("[1, 2]").await, 400, r#"{"error":"bad_request","message":"JSON body must be an object"}"#);
    assert_err(&post("\"body\"").await, 400, r#"{"error":"bad_request","message":"JSON body must be an object"}"#);
    assert_err(&post("{}").await, 400, &verr("body is required"));
    assert_err(&post(r#"{"body": null}"#).await, 400, &verr("body must be a string"));
    assert_err(&post(r#"{"body": 5}"#).await, 400, &verr("body must be a string"));
    assert_err(&post(r#"{"body": ["x"]}"#).await, 400, &verr("body must be a string"));
    assert_err(&post(r#"{"body": ""}"#).await, 400, &verr("body must not be empty"));
    assert_err(&post("{\"body\": \" \\t\\n\\u3000\\u001f \"}").await, 400, &verr("body must not be empty"));
    let long = format!(r#"{{"body": "{}"}}"#, "é".repeat(10001));
    let r = send("POST", &format!("{u}/api/tasks/1/comments"), &[("Authorization", &bearer(1))], Some(long.as_bytes()))
        .await;
    // this service's fixture uses a 4096-byte body limit -> 413 first
    assert_err(
        &r,
        413,
        r#"{"error":"payload_too_large","message":"request body exceeds the maximum upload size of 4096 bytes"}"#,
    );
    // unknown task -> 404 before the body is looked at
    assert_err(
        &req("POST", &format!("{u}/api/tasks/7/comments"), Some(1), Some("nonsense")).await,
        404,
        r#"{"error":"not_found","message":"task 7 not found"}"#,
    );

    // PATCH: author only; 404 before 403 before 400
    assert_err(
        &req("PATCH", &format!("{u}/api/comments/999"), Some(1), Some("x")).await,
        404,
        r#"{"error":"not_found","message":"comment 999 not found"}"#,
    );
    // as the owner, a comment it does not have does not exist: 404 on reads too
    assert_err(
        &req("GET", &format!("{u}/api/comments/999"), Some(1), None).await,
        404,
        r#"{"error":"not_found","message":"comment 999 not found"}"#,
    );
    assert_err(
        &req("PATCH", &format!("{u}/api/comments/1"), Some(2), Some("x")).await,
        403,
        r#"{"error":"forbidden","message":"only the author can modify comment 1"}"#,
    );
    assert_err(
        &req("PATCH", &format!("{u}/api/comments/1"), Some(1), Some("x")).await,
        400,
        r#"{"error":"bad_request","message":"malformed JSON body"}"#,
    );
    assert_err(
        &req("PATCH", &format!("{u}/api/comments/1"), Some(1), Some(r#"{"text": "x"}"#)).await,
        400,
        &verr("body is required"),
    );
    let r = req("PATCH", &format!("{u}/api/comments/2"), Some(1), Some(r#"{"body": "edited", "task_id": 3}"#)).await;
    assert_eq!(r.status, 200);
    let c = r.json();
    assert_eq!(
        (c["body"].clone(), c["task_id"].clone(), c["created_at"].clone()),
        (json!("edited"), json!(1), json!("Mon, 01 Jan 2024 09:37:00 GMT"))
    );
    assert_ne!(c["updated_at"], c["created_at"]);

    // DELETE: author only
    assert_err(
        &req("DELETE", &format!("{u}/api/comments/26"), Some(1), None).await,
        403,
        r#"{"error":"forbidden","message":"only the author can modify comment 26"}"#,
    );
    let r = req("DELETE", &format!("{u}/api/comments/26"), Some(2), None).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(req("GET", &format!("{u}/api/comments/26"), Some(2), None).await.status, 404);
    assert_eq!(req("DELETE", &format!("{u}/api/comments/26"), Some(2), None).await.status, 404);
    let n: i64 = st.db.lock().unwrap().query_row("SELECT COUNT(*) FROM comments", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 26);
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
async fn backfill_copies_users_tasks_comments() {
    let dir = tempfile::tempdir().unwrap();
    let m = monolith_like_db(&dir.path().join("m.db"));
    m.execute_batch("
        INSERT INTO users VALUES (1,'a','a@x','h','A','2024-01-01 00:00:00','2024-01-01 00:00:00');
        INSERT INTO users VALUES (2,'b','b@x','h','B','2024-01-01 00:00:00','2024-01-01 00:00:00');
        INSERT INTO projects VALUES (1,'p','',1,'2024-01-01 00:00:00','2024-01-01 00:00:00');
        INSERT INTO tasks (id, project_id, title, creator_id, created_at, updated_at) VALUES (5,1,'t',1,'2024-01-01 00:00:00','2024-01-01 00:00:00');
        INSERT INTO comments VALUES (9,5,2,'hi','2024-03-04 05:06:07','2024-03-05 05:06:07');
        INSERT INTO events (entity, entity_id, op, payload, created_at) VALUES ('x',1,'create','{}','2024-01-01 00:00:00'), ('x',2,'create','{}','2024-01-01 00:00:00');
    ").unwrap();
    let mut conn = open_db(&dir.path().join("c.db")).unwrap();
    let s = backfill(&mut conn, &dir.path().join("m.db")).unwrap();
    assert_eq!((s.users, s.tasks, s.comments, s.last_event_id), (2, 1, 1, 2));
    assert_eq!(db::cursor(&conn).unwrap(), 2);
    let st = AppState::new(conn, SECRET);
    let svc = start(st.clone()).await;
    let r = req("GET", &format!("{}/api/tasks/5/comments", svc.url), Some(1), None).await.json();
    assert_eq!(
        r,
        json!({"items": [{"author_id": 2, "body": "hi", "created_at": "Mon, 04 Mar 2024 05:06:07 GMT", "id": 9, "task_id": 5,
        "updated_at": "Tue, 05 Mar 2024 05:06:07 GMT"}], "page": 1, "per_page": 20, "total": 1})
    );
    // a task above the largest backfilled one may exist on the monolith
    assert_eq!(req("GET", &format!("{}/api/tasks/6/comments", svc.url), Some(1), None).await.status, 421);
    // the monolith hands over; new local comments continue after its high-water mark
    let r = req("POST", &format!("{}/api/tasks/5/comments", svc.url), Some(1), Some(r#"{"body":"next"}"#)).await;
    assert_eq!(r.status, 421);
    assert_eq!(apply(&st, &[handover(3, "comments", 2, 9)]), (1, 3));
    let r = req("POST", &format!("{}/api/tasks/5/comments", svc.url), Some(1), Some(r#"{"body":"next"}"#)).await;
    assert_eq!(r.json()["id"], 10);
}

// ----------------------------------------------------------------- fake feed
#[derive(Default)]
struct Feed {
    events: Vec<Value>,
    afters: Vec<i64>,
}

async fn fake_feed(feed: Arc<Mutex<Feed>>) -> String {
    use axum::extract::{Query, State};
    async fn h(
        State(f): State<Arc<Mutex<Feed>>>,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> axum::Json<Value> {
        let after: i64 = q.get("after").and_then(|s| s.parse().ok()).unwrap_or(0);
        let limit: usize = q.get("limit").and_then(|s| s.parse().ok()).unwrap_or(100);
        let mut f = f.lock().unwrap();
        f.afters.push(after);
        let evs: Vec<Value> =
            f.events.iter().filter(|e| e["id"].as_i64().unwrap() > after).take(limit).cloned().collect();
        let next = evs.last().map(|e| e["id"].as_i64().unwrap()).unwrap_or(after);
        axum::Json(json!({"events": evs, "next_after": next}))
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let router = axum::Router::new().route("/internal/events", axum::routing::get(h)).with_state(feed);
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    url
}

fn ev(id: i64, entity: &str, op: &str, eid: i64, payload: Value) -> Value {
    json!({"created_at": "Mon, 01 Jan 2024 09:37:00 GMT", "entity": entity, "entity_id": eid, "id": id, "op": op, "payload": payload})
}

fn cmt(id: i64, task: i64, author: i64, body: &str) -> Value {
    json!({"author_id": author, "body": body, "created_at": "Mon, 01 Jan 2024 09:37:00 GMT", "id": id, "task_id": task,
           "updated_at": "Tue, 02 Jan 2024 10:00:00 GMT"})
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

fn rows(st: &SharedState) -> Vec<(i64, i64, String)> {
    st.db
        .lock()
        .unwrap()
        .prepare("SELECT id, task_id, body FROM comments ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_applies_resumes_deletes() {
    let feed = Arc::new(Mutex::new(Feed::default()));
    feed.lock().unwrap().events = vec![
        ev(1, "user", "create", 1, json!({"id": 1, "username": "a"})),
        ev(2, "task", "create", 10, json!({"id": 10, "project_id": 1})),
        ev(3, "task", "create", 11, json!({"id": 11, "project_id": 1})),
        ev(4, "comment", "create", 100, cmt(100, 10, 1, "first")),
        ev(5, "comment", "create", 101, cmt(101, 10, 1, "second")),
        ev(6, "comment", "update", 100, cmt(100, 10, 1, "first, edited")),
        ev(7, "comment", "create", 102, cmt(102, 11, 1, "on 11")),
        ev(8, "comment", "delete", 101, json!({"id": 101})),
        ev(9, "project", "update", 1, json!({"id": 1})),
    ];
    let url = fake_feed(feed.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut cfg = SyncConfig::new(url, None, Duration::from_millis(30));
    cfg.batch = 4;
    let st = AppState::new(open_db(&path).unwrap(), SECRET);
    let h = spawn_sync(&st, cfg.clone());
    wait_cursor(&st, 9).await;
    h.stop().await;
    assert_eq!(rows(&st), vec![(100, 10, "first, edited".into()), (102, 11, "on 11".into())]);
    let svc = start(st.clone()).await;
    let r = req("GET", &format!("{}/api/comments/100", svc.url), Some(1), None).await;
    assert_eq!(r.json(), cmt(100, 10, 1, "first, edited"));
    // replaying applied events does nothing
    let old: Vec<Event> =
        serde_json::from_value(json!([ev(5, "comment", "create", 101, cmt(101, 10, 1, "second"))])).unwrap();
    assert_eq!(sync::apply_batch(&st.db, &CommentsApplier, &old).unwrap(), (0, 9));
    assert_eq!(rows(&st).len(), 2);
    drop(svc);
    drop(st);
    // restart: resume from 9; a task delete removes the task and its comments
    {
        let mut f = feed.lock().unwrap();
        f.afters.clear();
        f.events.push(ev(10, "comment", "delete", 102, json!({"id": 102})));
        f.events.push(ev(11, "task", "delete", 11, json!({"id": 11})));
    }
    let st = AppState::new(open_db(&path).unwrap(), SECRET);
    let h = spawn_sync(&st, cfg);
    wait_cursor(&st, 11).await;
    h.stop().await;
    assert_eq!(feed.lock().unwrap().afters[0], 9);
    assert_eq!(rows(&st), vec![(100, 10, "first, edited".into())]);
    let svc = start(st).await;
    assert_eq!(req("GET", &format!("{}/api/tasks/11/comments", svc.url), Some(1), None).await.status, 404);
}

// ------------------------------------------------------------- contract test
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_against_real_monolith() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "contract-secret";
    let Some(mono) = Monolith::start(dir.path(), secret, None).await else { return };
    let mut conn = open_db(&dir.path().join("comments.db")).unwrap();
    let stats = backfill(&mut conn, &mono.db).unwrap();
    assert_eq!((stats.users, stats.tasks, stats.comments), (10, 40, 100));
    // who wrote what, to find authors / non-authors
    let (cid, author): (i64, i64) = conn
        .query_row("SELECT id, author_id FROM comments ORDER BY id LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    let other = if author == 1 { 2 } else { 1 };
    let st = AppState::new(conn, secret);
    let _sync = spawn_sync(&st, SyncConfig::new(mono.url.clone(), None, Duration::from_millis(100)));
    let svc = start(st.clone()).await;
    let (m, s) = (mono.url.as_str(), svc.url.as_str());
    let tok_author = format!("Bearer {}", mono.login(&format!("user{author:04}")).await);
    let tok_other = format!("Bearer {}", mono.login(&format!("user{other:04}")).await);
    let a: &[(&str, &str)] = &[("Authorization", &tok_other)];

    let mut paths: Vec<String> = (1..=41).map(|t| format!("/api/tasks/{t}/comments")).collect();
    paths.extend((0..=102).step_by(3).map(|c| format!("/api/comments/{c}")));
    for q in [
        "?page=2",
        "?per_page=1",
        "?per_page=2&page=3",
        "?per_page=101",
        "?page=99",
        "?page=0",
        "?per_page=0",
        "?page=x",
        "?per_page=1.0",
        "?page=-3",
        "?page=",
        "?page=%2B1",
    ] {
        for t in [1, 7, 999] {
            paths.push(format!("/api/tasks/{t}/comments{q}"));
        }
    }
    for p in [
        "/api/comments",
        "/api/comments/",
        "/api/comments/abc",
        "/api/comments/1/",
        "/api/tasks/abc/comments",
        "/api/tasks/1/comments/",
        "/api/tasks/1/comment",
        "/api/comments/99999999999999999999999",
    ] {
        paths.push(p.to_string());
    }
    // ids above what the service has applied (40 tasks, 100 comments) get 421: the client gets the monolith's 404
    let mut misdirected = std::collections::BTreeSet::new();
    for p in &paths {
        if assert_same_or_misdirected(m, s, "GET", p, a, None).await.1 {
            misdirected.insert(p.split('?').next().unwrap().to_string());
        }
        assert_same(m, s, "GET", p, &[], None).await;
    }
    let above: std::collections::BTreeSet<String> =
        ["/api/tasks/41/comments", "/api/tasks/999/comments", "/api/comments/102"].map(String::from).into();
    assert_eq!(misdirected, above);
    for p in ["/api/tasks/1/comments", "/api/comments/5", "/api/comments/999"] {
        assert_same_or_misdirected(m, s, "HEAD", p, a, None).await;
        assert_same(m, s, "OPTIONS", p, &[], None).await;
    }
    // While the monolith owns comments, every write is 421 before anything else.
    for (meth, p) in [("POST", "/api/tasks/3/comments"), ("PATCH", "/api/comments/5"), ("DELETE", "/api/comments/5")] {
        let r = send(meth, &format!("{s}{p}"), &[("Authorization", "Basic x")], Some(b"nope")).await;
        assert_eq!(r.status, 421, "{meth} {p}: {}", r.text());
        assert_eq!(
            r.json(),
            json!({"error": "misdirected", "message": "comments are owned by legacy (epoch 1)", "owner": "legacy", "epoch": 1})
        );
    }
    // To compare the write checks, the service is made owner by hand while the
    // monolith (the owner in this test) accepts writes too: a split brain only a test creates.
    let set_owner = |owner: &str| {
        st.db.lock().unwrap().execute("UPDATE ownership SET owner = ?1 WHERE feature = 'comments'", [owner]).unwrap();
    };
    set_owner("comments");
    for (meth, p) in [
        ("PUT", "/api/comments/1"),
        ("POST", "/api/comments/1"),
        ("DELETE", "/api/tasks/1/comments"),
        ("PATCH", "/api/tasks/1/comments"),
    ] {
        assert_eq!(assert_same(m, s, meth, p, &[], None).await.status, 405);
    }
    let expired = format!("Bearer {}", token(secret, 1, -60));
    let bad_sig = format!("Bearer {}", token("x", 1, 60));
    for h in ["Bearer nope", expired.as_str(), bad_sig.as_str(), "Basic x"] {
        assert_same(m, s, "GET", "/api/comments/1", &[("Authorization", h)], None).await;
        assert_same(m, s, "POST", "/api/tasks/1/comments", &[("Authorization", h)], Some(b"{}")).await;
        assert_same(m, s, "PATCH", "/api/comments/1", &[("Authorization", h)], Some(b"{}")).await;
        assert_same(m, s, "DELETE", "/api/comments/1", &[("Authorization", h)], None).await;
    }
    // failing writes (nothing is written on either side)
    let long = format!(r#"{{"body": "{}"}}"#, "x".repeat(10001));
    let bodies: Vec<&[u8]> = vec![
        b"",
        b"   ",
        b"{",
        b"nope",
        b"[]",
        b"42",
        b"null",
        b"\"s\"",
        b"{}",
        br#"{"body": null}"#,
        br#"{"body": 1}"#,
        br#"{"body": true}"#,
        br#"{"body": {}}"#,
        br#"{"body": ""}"#,
        br#"{"body": "   "}"#,
        b"{\"body\": \"\\t\\n\"}",
        br#"{"Body": "x"}"#,
        long.as_bytes(),
        b"\xff\xfe",
        b"{\"body\": \"\xc3\"}",
    ];
    for b in &bodies {
        assert_same(m, s, "POST", "/api/tasks/3/comments", a, Some(b)).await;
        assert_same(m, s, "POST", "/api/tasks/999/comments", a, Some(b)).await;
        assert_same(m, s, "PATCH", &format!("/api/comments/{cid}"), &[("Authorization", &tok_author)], Some(b)).await;
        assert_same(m, s, "PATCH", &format!("/api/comments/{cid}"), a, Some(b)).await; // 403 first
        assert_same(m, s, "PATCH", "/api/comments/9999", a, Some(b)).await;
    }
    assert_same(m, s, "DELETE", &format!("/api/comments/{cid}"), a, None).await; // 403
    assert_same(m, s, "DELETE", "/api/comments/9999", a, None).await;
    set_owner("legacy");

    // writes through the monolith reach the service within 5 s
    let r = send("POST", &format!("{m}/api/tasks/3/comments"), a, Some("{\"body\": \"Zoë \u{1F600} new\"}".as_bytes()))
        .await;
    assert_eq!(r.status, 201);
    let new_id = r.json()["id"].as_i64().unwrap();
    let r = send(
        "PATCH",
        &format!("{m}/api/comments/{cid}"),
        &[("Authorization", &tok_author)],
        Some(br#"{"body": "edited in the monolith"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send("DELETE", &format!("{m}/api/comments/{new_id}"), a, None).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r2 = send("POST", &format!("{m}/api/tasks/4/comments"), a, Some(br#"{"body": "stays"}"#)).await;
    let kept = r2.json()["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let check = [
        format!("/api/comments/{cid}"),
        format!("/api/comments/{new_id}"),
        format!("/api/comments/{kept}"),
        "/api/tasks/3/comments?per_page=100".to_string(),
        "/api/tasks/4/comments?per_page=100".to_string(),
    ];
    loop {
        let mut same = true;
        for p in &check {
            let x = send("GET", &format!("{m}{p}"), a, None).await;
            let y = send("GET", &format!("{s}{p}"), a, None).await;
            same &= x.status == y.status && x.body == y.body;
        }
        if same {
            break;
        }
        assert!(Instant::now() < deadline, "service did not catch up within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in &check {
        assert_same(m, s, "GET", p, a, None).await;
    }
}

// ------------------------------------------------------------ write handover

/// A fresh service following `feed` every 30 ms (the sync stops when the handle drops).
async fn following(
    feed: &Arc<Mutex<Feed>>,
    interval: Duration,
) -> (tempfile::TempDir, SharedState, Svc, sync::SyncHandle) {
    let url = fake_feed(feed.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let st = AppState::configured(open_db(&dir.path().join("c.db")).unwrap(), SECRET, 1 << 20, Some(ITOK.into()));
    let h = spawn_sync(&st, SyncConfig::new(url, None, interval));
    let svc = start(st.clone()).await;
    (dir, st, svc, h)
}

fn push(feed: &Arc<Mutex<Feed>>, events: Vec<Value>) {
    feed.lock().unwrap().events.extend(events);
}

fn misdirected(owner: &str, epoch: i64) -> Value {
    json!({"error": "misdirected", "message": format!("comments are owned by {owner} (epoch {epoch})"), "owner": owner, "epoch": epoch})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_get_421_until_the_handover_event_is_applied_then_land_above_the_high_water_mark() {
    let feed = Arc::new(Mutex::new(Feed::default()));
    push(
        &feed,
        vec![
            ev(1, "user", "create", 1, json!({"id": 1, "username": "a"})),
            ev(2, "task", "create", 10, json!({"id": 10, "project_id": 1})),
            ev(3, "comment", "create", 100, cmt(100, 10, 1, "from the monolith")),
        ],
    );
    let (_dir, st, svc, _sync) = following(&feed, Duration::from_millis(30)).await;
    let u = &svc.url;
    wait_cursor(&st, 3).await;
    // Not the owner: 421 before anything else (no token, a body that is not JSON).
    for (meth, p) in
        [("POST", "/api/tasks/10/comments"), ("PATCH", "/api/comments/100"), ("DELETE", "/api/comments/100")]
    {
        let r = send(meth, &format!("{u}{p}"), &[], Some(b"not json")).await;
        assert_eq!((r.status, r.json()), (421, misdirected("legacy", 1)), "{meth} {p}");
        assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
        let r = req(meth, &format!("{u}{p}"), Some(1), Some(r#"{"body": "x"}"#)).await;
        assert_eq!(r.status, 421, "{meth} {p} with a valid token");
    }
    assert_eq!(req("GET", &format!("{u}/api/comments/100"), Some(1), None).await.status, 200, "reads are served");
    assert_eq!(
        ownership_of(u).await,
        json!({"features": {"comments": {"owner": "legacy", "epoch": 1, "high_water": 0}}, "applied_event_id": 3, "published_event_id": 0})
    );
    assert!(feed_events(u, 0).await.is_empty());

    push(&feed, vec![handover(4, "comments", 2, 500)]);
    wait_cursor(&st, 4).await;
    let r = req("POST", &format!("{u}/api/tasks/10/comments"), Some(1), Some(r#"{"body": "on the service"}"#)).await;
    assert_eq!((r.status, r.json()["id"].clone()), (201, json!(501)), "{}", r.text());
    let r = req("PATCH", &format!("{u}/api/comments/100"), Some(1), Some(r#"{"body": "edited on the service"}"#)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        ownership_of(u).await["features"]["comments"],
        json!({"owner": "comments", "epoch": 2, "high_water": 500})
    );

    // A comment event the monolith should not have emitted after the handover is
    // stale: it does not overwrite the newer local write, nor delete anything.
    push(
        &feed,
        vec![
            ev(5, "comment", "update", 100, cmt(100, 10, 1, "stale edit from the monolith")),
            ev(6, "comment", "create", 501, cmt(501, 10, 1, "stale id clash")),
            ev(7, "comment", "delete", 501, json!({"id": 501})),
        ],
    );
    wait_cursor(&st, 7).await;
    assert_eq!(rows(&st), vec![(100, 10, "edited on the service".into()), (501, 10, "on the service".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_appends_its_event_to_the_service_feed_in_order() {
    let (_dir, st) = owner_fixture();
    let svc = start(st).await;
    let u = &svc.url;
    let created = req("POST", &format!("{u}/api/tasks/3/comments"), Some(2), Some(r#"{"body": "Zoë"}"#)).await.json();
    let updated = req("PATCH", &format!("{u}/api/comments/31"), Some(2), Some(r#"{"body": "edited"}"#)).await.json();
    assert_eq!(req("DELETE", &format!("{u}/api/comments/31"), Some(2), None).await.status, 204);
    assert_eq!(req("DELETE", &format!("{u}/api/comments/2"), Some(1), None).await.status, 204);
    // refused writes publish nothing
    assert_eq!(req("PATCH", &format!("{u}/api/comments/26"), Some(1), Some(r#"{"body": "x"}"#)).await.status, 403);
    assert_eq!(req("POST", &format!("{u}/api/tasks/3/comments"), Some(1), Some("{}")).await.status, 400);
    assert_eq!(req("DELETE", &format!("{u}/api/comments/31"), Some(2), None).await.status, 404);

    let events = feed_events(u, 0).await;
    assert_eq!(
        summary(&events),
        vec![
            ("comment".into(), 31, "create".into(), created.clone()),
            ("comment".into(), 31, "update".into(), updated),
            ("comment".into(), 31, "delete".into(), json!({"id": 31, "task_id": 3})),
            ("comment".into(), 2, "delete".into(), json!({"id": 2, "task_id": 1})),
        ]
    );
    assert_eq!(events.iter().map(|e| e["id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(events[0]["created_at"], created["created_at"]);
    // paging, like the monolith's feed
    let r = send("GET", &format!("{u}/internal/events?after=1&limit=2"), &itok(), None).await.json();
    assert_eq!((r["events"].as_array().unwrap().len(), r["next_after"].clone()), (2, json!(3)));
    let r = send("GET", &format!("{u}/internal/events?after=4"), &itok(), None).await.json();
    assert_eq!(r, json!({"events": [], "next_after": 4}));
    assert_err(
        &send("GET", &format!("{u}/internal/events?after=x"), &itok(), None).await,
        400,
        r#"{"error":"validation_error","field":"after","message":"after must be an integer"}"#,
    );
    // the internal token
    let denied = r#"{"error":"unauthorized","message":"missing or invalid X-Internal-Token"}"#;
    assert_err(&send("GET", &format!("{u}/internal/events"), &[], None).await, 401, denied);
    assert_err(&send("GET", &format!("{u}/internal/events"), &[("X-Internal-Token", "nope")], None).await, 401, denied);
    assert_err(&send("GET", &format!("{u}/internal/ownership"), &[], None).await, 401, denied);
    let body = Some(br#"{"owner": "legacy"}"#.as_slice());
    assert_err(&send("POST", &format!("{u}/internal/ownership/comments"), &[], body).await, 401, denied);
    assert_eq!(ownership_of(u).await["features"]["comments"]["owner"], "comments", "nothing handed back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handing_back_needs_ownership_is_idempotent_and_rejects_bad_bodies() {
    let (_dir, st) = fixture();
    let svc = start(st.clone()).await;
    let u = format!("{}/internal/ownership/comments", svc.url);
    let ask = |owner: &'static str| {
        let u = u.clone();
        async move { send("POST", &u, &itok(), Some(format!(r#"{{"owner": "{owner}"}}"#).as_bytes())).await }
    };
    // the monolith owns comments: already in the requested state, or not ours to give
    let r = ask("legacy").await;
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"feature": "comments", "owner": "legacy", "epoch": 1, "high_water": 0}))
    );
    assert_err(
        &ask("comments").await,
        409,
        r#"{"epoch":1,"error":"conflict","message":"comments are owned by legacy (epoch 1): only the owner can hand them over","owner":"legacy"}"#,
    );
    for (body, want) in [
        ("", r#"{"error":"bad_request","message":"malformed JSON body"}"#),
        ("[]", r#"{"error":"bad_request","message":"JSON body must be an object"}"#),
        ("{}", r#"{"error":"validation_error","field":"owner","message":"owner is required"}"#),
        (r#"{"owner": 5}"#, r#"{"error":"validation_error","field":"owner","message":"owner must be a string"}"#),
        (
            r#"{"owner": "users"}"#,
            r#"{"error":"validation_error","field":"owner","message":"owner must be \"legacy\" or \"comments\""}"#,
        ),
    ] {
        assert_err(&send("POST", &u, &itok(), Some(body.as_bytes())).await, 400, want);
    }
    assert_err(
        &send("POST", &format!("{}/internal/ownership/tasks", svc.url), &itok(), Some(br#"{"owner": "legacy"}"#)).await,
        404,
        r#"{"error":"not_found","message":"feature tasks not found"}"#,
    );
    assert_eq!(send("GET", &u, &itok(), None).await.status, 405);
    assert!(feed_events(&svc.url, 0).await.is_empty(), "no event for a change that did not happen");

    // after the handover: owner; asking for what is already true changes nothing
    apply(&st, &[handover(1, "comments", 2, 30)]);
    let r = ask("comments").await;
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"feature": "comments", "owner": "comments", "epoch": 2, "high_water": 30}))
    );
    let c = req("POST", &format!("{}/api/tasks/1/comments", svc.url), Some(1), Some(r#"{"body": "b"}"#)).await;
    assert_eq!(c.json()["id"], 31);
    // hand back: epoch + 1, high-water = the largest id here, the event published after the writes
    let back = json!({"feature": "comments", "owner": "legacy", "epoch": 3, "high_water": 31});
    let r = ask("legacy").await;
    assert_eq!((r.status, r.json()), (200, back.clone()));
    let events = feed_events(&svc.url, 0).await;
    assert_eq!(
        summary(&events),
        vec![
            ("comment".into(), 31, "create".into(), c.json()),
            ("ownership".into(), 0, "handover".into(), back.clone())
        ]
    );
    let r = req("POST", &format!("{}/api/tasks/1/comments", svc.url), Some(1), Some(r#"{"body": "b"}"#)).await;
    assert_eq!((r.status, r.json()), (421, misdirected("legacy", 3)));
    // again: the same answer, no second event
    let r = ask("legacy").await;
    assert_eq!((r.status, r.json()), (200, back));
    assert_eq!(feed_events(&svc.url, 0).await.len(), 2);
    assert_eq!(ownership_of(&svc.url).await["published_event_id"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ownership_event_the_feed_serves_twice_is_applied_once() {
    let feed = Arc::new(Mutex::new(Feed::default()));
    push(
        &feed,
        vec![
            ev(1, "user", "create", 1, json!({"id": 1, "username": "a"})),
            ev(2, "task", "create", 1, json!({"id": 1, "project_id": 1})),
            handover(3, "comments", 2, 50),
            handover(4, "comments", 2, 50), // the same handover again (e.g. re-sent by an operator script)
            handover(5, "legacy", 2, 0),    // not newer than the current epoch, whatever it says
        ],
    );
    let (_dir, st, svc, _sync) = following(&feed, Duration::from_millis(30)).await;
    let u = &svc.url;
    wait_cursor(&st, 5).await;
    let post = || async { req("POST", &format!("{u}/api/tasks/1/comments"), Some(1), Some(r#"{"body": "b"}"#)).await };
    assert_eq!(post().await.json()["id"], 51);
    assert_eq!(
        ownership_of(u).await["features"]["comments"],
        json!({"owner": "comments", "epoch": 2, "high_water": 50})
    );
    // hand back, then the old handover shows up once more: it must not make the service owner again
    let r = send("POST", &format!("{u}/internal/ownership/comments"), &itok(), Some(br#"{"owner": "legacy"}"#)).await;
    assert_eq!(r.json()["epoch"], 3);
    push(&feed, vec![handover(6, "comments", 2, 50)]);
    wait_cursor(&st, 6).await;
    assert_eq!(ownership_of(u).await["features"]["comments"], json!({"owner": "legacy", "epoch": 3, "high_water": 51}));
    assert_eq!((post().await.status, post().await.json()), (421, misdirected("legacy", 3)));
    // the next real handover (the monolith applied epoch 3 and moved to 4)
    push(&feed, vec![handover(7, "comments", 4, 60)]);
    wait_cursor(&st, 7).await;
    assert_eq!(post().await.json()["id"], 61);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_deleted_on_the_monolith_takes_its_comments_along_and_the_deletes_are_published() {
    let feed = Arc::new(Mutex::new(Feed::default()));
    push(
        &feed,
        vec![
            ev(1, "user", "create", 1, json!({"id": 1, "username": "a"})),
            ev(2, "task", "create", 10, json!({"id": 10, "project_id": 1})),
            ev(3, "task", "create", 11, json!({"id": 11, "project_id": 1})),
            ev(4, "task", "create", 12, json!({"id": 12, "project_id": 2})),
            ev(5, "comment", "create", 100, cmt(100, 10, 1, "on 10")),
            ev(6, "comment", "create", 101, cmt(101, 11, 1, "on 11")),
            handover(7, "comments", 2, 101),
        ],
    );
    let (_dir, st, svc, _sync) = following(&feed, Duration::from_millis(30)).await;
    let u = &svc.url;
    wait_cursor(&st, 7).await;
    for task in [10, 12] {
        let r = req("POST", &format!("{u}/api/tasks/{task}/comments"), Some(1), Some(r#"{"body": "new"}"#)).await;
        assert_eq!(r.status, 201);
    }
    assert_eq!(feed_events(u, 0).await.len(), 2);
    // The monolith deletes task 10 (it announces its own copies' deletes first),
    // and project 2 (whose task delete this feed leaves out: the safety net).
    push(
        &feed,
        vec![
            ev(8, "comment", "delete", 100, json!({"id": 100})),
            ev(9, "task", "delete", 10, json!({"id": 10})),
            ev(10, "project", "delete", 2, json!({"id": 2})),
        ],
    );
    wait_cursor(&st, 10).await;
    assert_eq!(rows(&st), vec![(101, 11, "on 11".into())]);
    let published = feed_events(u, 2).await;
    assert_eq!(
        summary(&published),
        vec![
            ("comment".into(), 100, "delete".into(), json!({"id": 100, "task_id": 10})),
            ("comment".into(), 102, "delete".into(), json!({"id": 102, "task_id": 10})),
            ("comment".into(), 103, "delete".into(), json!({"id": 103, "task_id": 12})),
        ]
    );
    assert_eq!(req("GET", &format!("{u}/api/tasks/10/comments"), Some(1), None).await.status, 404);
    assert_eq!(req("GET", &format!("{u}/api/comments/102"), Some(1), None).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_naming_a_user_or_task_not_applied_yet_waits_for_one_fresh_feed_round() {
    let feed = Arc::new(Mutex::new(Feed::default()));
    push(
        &feed,
        vec![
            ev(1, "user", "create", 1, json!({"id": 1, "username": "a"})),
            ev(2, "task", "create", 10, json!({"id": 10, "project_id": 1})),
            handover(3, "comments", 2, 0),
        ],
    );
    // Rounds every minute: only a write's wake-up makes the loop fetch in time.
    let (_dir, st, svc, sync) = following(&feed, Duration::from_secs(60)).await;
    let u = &svc.url;
    wait_cursor(&st, 3).await;
    // just registered on the monolith, with a task just created there
    push(
        &feed,
        vec![
            ev(4, "user", "create", 7, json!({"id": 7, "username": "newbie"})),
            ev(5, "task", "create", 20, json!({"id": 20, "project_id": 1})),
        ],
    );
    // a read is sent to the monolith at once
    assert_eq!(req("GET", &format!("{u}/api/tasks/10/comments"), Some(7), None).await.status, 421);
    let t = Instant::now();
    let r = req("POST", &format!("{u}/api/tasks/20/comments"), Some(7), Some(r#"{"body": "first!"}"#)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(2), "waited {:?}", t.elapsed());
    // after a fresh round, absent means absent
    assert_err(
        &req("POST", &format!("{u}/api/tasks/20/comments"), Some(50), Some(r#"{"body": "x"}"#)).await,
        401,
        r#"{"error":"unauthorized","message":"invalid token"}"#,
    );
    assert_err(
        &req("POST", &format!("{u}/api/tasks/99/comments"), Some(7), Some(r#"{"body": "x"}"#)).await,
        404,
        r#"{"error":"not_found","message":"task 99 not found"}"#,
    );
    // no feed round in time (the loop is stopped): 503 with Retry-After, nothing written
    sync.stop().await;
    let t = Instant::now();
    let r = req("POST", &format!("{u}/api/tasks/20/comments"), Some(60), Some(r#"{"body": "x"}"#)).await;
    assert_err(
        &r,
        503,
        r#"{"error":"unavailable","message":"the comments service has not applied user 60 from the monolith yet; retry shortly"}"#,
    );
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(t.elapsed() >= comments::REPLICA_WAIT);
    assert_eq!(feed_events(u, 0).await.len(), 1);
}
