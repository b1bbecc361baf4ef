//! Shadowing: every kind of difference is reported exactly; noise is
//! learned; the client never feels the shadow; secrets never reach the log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::Full;
use serde_json::{json, Value};

use crate::support::*;

struct Setup {
    primary: TestUpstream,
    shadow: TestUpstream,
    proxy: TestProxy,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A proxy whose `/api` route answers from `primary` and shadows to `shadow`
/// with the given extra shadow settings (YAML lines, indented by the caller).
/// The test upstreams name themselves in `X-Upstream`, a real difference
/// that every test but one ignores.
async fn setup(primary: Behaviour, shadow: Behaviour, shadow_extra: &str, global_extra: &str) -> Setup {
    let primary = TestUpstream::start("legacy", primary).await;
    let shadow = TestUpstream::start("users", shadow).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("diffs.jsonl");
    let text = format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\nshadow:\n  log: {log}\n{global_extra}upstreams:\n  legacy:\n    targets: [\"{p}\"]\n  users:\n    targets: [\"{s}\"]\nroutes:\n  - name: users\n    prefix: /api\n    upstream: legacy\n    shadow:\n      upstream: users\n      timeout: 500ms\n      ignore_headers: [x-upstream]\n{shadow_extra}",
        log = log.display(),
        p = primary.url(),
        s = shadow.url(),
    );
    let proxy = TestProxy::start(&text).await;
    Setup { primary, shadow, proxy, log, _dir: dir }
}

/// Waits until the diff log holds `n` records and returns them.
async fn records(log: &Path, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} records in {}: {:?}", log.display(), std::fs::read_to_string(log));
}

async fn one_record(primary: Behaviour, shadow: Behaviour, extra: &str) -> Value {
    let s = setup(primary, shadow, extra, "").await;
    let r = get(s.proxy.addr, "/api/users/7?x=1").await;
    assert_eq!(r.status, 200);
    records(&s.log, 1).await.remove(0)
}

fn pointers(record: &Value) -> Vec<String> {
    record["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}:{}", d["kind"].as_str().unwrap(), d["pointer"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn identical_answers_match_and_the_record_is_complete() {
    let body = json!({"id": 7, "name": "ada", "tags": ["a", "b"]});
    let record = one_record(Behaviour::json(body.clone()), Behaviour::json(body), "").await;
    assert_eq!(record["result"], "match");
    for field in [
        "ts",
        "request_id",
        "route",
        "endpoint",
        "method",
        "path",
        "query",
        "primary",
        "shadow",
        "result",
        "diffs",
        "noise",
    ] {
        assert!(record.get(field).is_some(), "record lacks {field}: {record}");
    }
    assert_eq!(record["route"], "users");
    assert_eq!(record["endpoint"], "/api/users/{id}");
    assert_eq!(record["path"], "/api/users/7");
    assert_eq!(record["query"], "x=1");
    assert_eq!(record["primary"]["upstream"], "legacy");
    assert_eq!(record["shadow"]["upstream"], "users");
    assert_eq!(record["primary"]["status"], 200);
    assert!(record["shadow"]["latency_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn the_admin_shadow_endpoint_summarizes_live() {
    let s = setup(Behaviour::json(json!({"a": 1})), Behaviour::json(json!({"a": 2})), "", "").await;
    for i in 0..3 {
        get(s.proxy.addr, &format!("/api/users/{i}")).await;
    }
    records(&s.log, 3).await;
    let summary = get(s.proxy.admin, "/shadow?min_samples=3").await.json();
    assert_eq!(summary["totals"]["mismatch"], 3, "{summary}");
    assert_eq!(summary["routes"][0]["route"], "users");
    assert_eq!(summary["ready"], false);
}

#[tokio::test]
async fn a_renamed_field_is_two_body_differences() {
    let record = one_record(
        Behaviour::json(json!({"id": 7, "full_name": "Ada"})),
        Behaviour::json(json!({"id": 7.0, "fullName": "Ada"})),
        "",
    )
    .await;
    assert_eq!(record["result"], "mismatch");
    assert_eq!(
        pointers(&record),
        vec!["body:/fullName", "body:/full_name"],
        "1 and 1.0 are equal; key order never matters"
    );
    assert_eq!(record["diffs"][1]["primary"], "Ada");
    assert_eq!(record["diffs"][1]["shadow"], Value::Null);
}

#[tokio::test]
async fn a_date_format_difference_names_the_field_and_both_values() {
    let record = one_record(
        Behaviour::json(json!({"created_at": "Wed, 25 Nov 2026 20:26:10 GMT"})),
        Behaviour::json(json!({"created_at": "2026-11-25T20:26:10Z"})),
        "",
    )
    .await;
    assert_eq!(pointers(&record), vec!["body:/created_at"]);
    assert_eq!(record["diffs"][0]["primary"], "Wed, 25 Nov 2026 20:26:10 GMT");
    assert_eq!(record["diffs"][0]["shadow"], "2026-11-25T20:26:10Z");
}

#[tokio::test]
async fn array_order_matters_unless_the_array_is_unordered() {
    let p = json!({"items": [{"id": 1}, {"id": 2}]});
    let s = json!({"items": [{"id": 2}, {"id": 1}]});
    let ordered = one_record(Behaviour::json(p.clone()), Behaviour::json(s.clone()), "").await;
    assert_eq!(pointers(&ordered), vec!["body:/items/0/id", "body:/items/1/id"]);
    let unordered = one_record(Behaviour::json(p), Behaviour::json(s), "      unordered: [\"/items\"]\n").await;
    assert_eq!(unordered["result"], "match");
}

#[tokio::test]
async fn a_status_difference_is_reported_as_status() {
    let record = one_record(
        Behaviour::json(json!({"ok": true})),
        Behaviour::Fixed {
            status: 404,
            content_type: "application/json",
            body: "{\"ok\":true}".into(),
            gzip: false,
            delay: Duration::ZERO,
        },
        "",
    )
    .await;
    assert_eq!(pointers(&record), vec!["status:"]);
    assert_eq!(record["diffs"][0]["primary"], 200);
    assert_eq!(record["diffs"][0]["shadow"], 404);
}

#[tokio::test]
async fn gzip_on_one_side_only_is_not_a_difference() {
    let body = json!({"a": [1, 2, 3], "b": "text"});
    let gz = Behaviour::Fixed {
        status: 200,
        content_type: "application/json",
        body: body.to_string(),
        gzip: true,
        delay: Duration::ZERO,
    };
    let record = one_record(Behaviour::json(body), gz, "").await;
    assert_eq!(record["result"], "match", "{record}");
}

#[tokio::test]
async fn ignored_fields_and_headers_are_left_out() {
    let p = Behaviour::json(json!({"id": 1, "updated_at": "a", "items": [{"etag": "x", "v": 1}]}));
    let s = Behaviour::json(json!({"id": 1, "updated_at": "b", "items": [{"etag": "y", "v": 1}]}));
    let record = one_record(p, s, "      ignore: [\"/updated_at\", \"/items/*/etag\"]\n").await;
    assert_eq!(record["result"], "match", "{record}");
}

#[tokio::test]
async fn a_random_id_is_learned_as_noise_and_excluded() {
    let s = setup(Behaviour::Varying, Behaviour::Varying, "      noise: legacy\n", "").await;
    for _ in 0..3 {
        assert_eq!(get(s.proxy.addr, "/api/users/1").await.status, 200);
    }
    let records = records(&s.log, 3).await;
    for record in &records {
        assert_eq!(record["result"], "match", "the nonce differs on every answer, so it is noise: {record}");
        assert_eq!(record["noise"], json!(["/nonce"]));
    }
    assert!(s.primary.hits() >= 6, "the primary was asked twice per sampled request");
}

#[tokio::test]
async fn text_bodies_get_a_short_unified_diff() {
    let text = |body: &str| Behaviour::Fixed {
        status: 200,
        content_type: "text/plain",
        body: body.into(),
        gzip: false,
        delay: Duration::ZERO,
    };
    let record = one_record(text("one\ntwo\nthree\n"), text("one\n2\nthree\n"), "").await;
    let diff = record["diffs"][0]["primary"].as_str().unwrap();
    assert!(diff.contains("-two") && diff.contains("+2"), "{diff}");
}

#[tokio::test]
async fn a_slow_or_dead_shadow_changes_nothing_for_the_client() {
    let slow = Behaviour::Fixed {
        status: 200,
        content_type: "application/json",
        body: "{}".into(),
        gzip: false,
        delay: Duration::from_secs(2),
    };
    let s = setup(Behaviour::json(json!({"from": "primary"})), slow, "", "").await;
    let started = Instant::now();
    let r = get(s.proxy.addr, "/api/users/1").await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the client waited for the shadow: {:?}",
        started.elapsed()
    );
    assert_eq!(r.json(), json!({"from": "primary"}));
    assert_eq!(r.header("x-upstream"), Some("legacy"));
    let record = records(&s.log, 1).await.remove(0);
    assert_eq!(record["result"], "shadow_error");
    assert_eq!(record["reason"], "shadow_timeout");

    s.shadow.stop();
    let r = get(s.proxy.addr, "/api/users/2").await;
    assert_eq!(r.status, 200);
    let records = records(&s.log, 2).await;
    assert_eq!(records[1]["result"], "shadow_error");
    assert_eq!(records[1]["reason"], "shadow_error");
    let metrics = get(s.proxy.admin, "/metrics").await.text();
    assert!(
        metrics.contains("strangler_shadow_requests_total{result=\"shadow_error\",route=\"users\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("strangler_shadow_dropped_total{reason=\"shadow_timeout\",route=\"users\"} 1"));
}

#[tokio::test]
async fn the_inflight_cap_drops_and_counts() {
    let slow = Behaviour::Fixed {
        status: 200,
        content_type: "application/json",
        body: "{}".into(),
        gzip: false,
        delay: Duration::from_millis(400),
    };
    let s = setup(Behaviour::json(json!({})), slow, "", "  max_inflight: 1\n").await;
    let addr = s.proxy.addr;
    let all: Vec<_> = (0..4).map(|i| tokio::spawn(async move { get(addr, &format!("/api/{i}")).await })).collect();
    for r in all {
        assert_eq!(r.await.unwrap().status, 200);
    }
    let records = records(&s.log, 4).await;
    let capped = records.iter().filter(|r| r["reason"] == "inflight_cap").count();
    assert!(capped >= 1, "{records:?}");
    assert!(records.iter().all(|r| r["result"] == "skipped" || r["result"] == "match"));
}

#[tokio::test]
async fn mirrored_requests_are_marked_keep_host_and_never_loop() {
    let body = json!({"ok": 1});
    let s = setup(
        Behaviour::json(body.clone()),
        Behaviour::json(body),
        "      headers: { set: { X-Env: shadow }, remove: [X-Drop] }\n",
        "",
    )
    .await;
    let client = http1();
    send(
        &client,
        req(Method::GET, s.proxy.addr, "/api/a")
            .header("host", "shop.example")
            .header("x-drop", "1")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    records(&s.log, 1).await;
    let seen = s.shadow.last_seen().headers;
    assert_eq!(seen["x-strangler-shadow"], "1");
    assert_eq!(seen["host"], "shop.example");
    assert_eq!(seen["x-env"], "shadow");
    assert!(seen.get("x-drop").is_none());
    assert!(s.primary.last_seen().headers.get("x-strangler-shadow").is_none());
    let before = s.shadow.hits();
    send(
        &client,
        req(Method::GET, s.proxy.addr, "/api/b").header("x-strangler-shadow", "1").body(Full::default()).unwrap(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.shadow.hits(), before, "an already mirrored request is not mirrored again");
}

#[tokio::test]
async fn writes_are_not_mirrored_by_default() {
    let s = setup(Behaviour::json(json!({})), Behaviour::json(json!({})), "", "").await;
    let client = http1();
    let r = send(&client, req(Method::POST, s.proxy.addr, "/api/users").body(Full::from("{}")).unwrap()).await.unwrap();
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.shadow.hits(), 0);
}

#[tokio::test]
async fn unsafe_writes_mirror_the_whole_body() {
    let s = setup(
        Behaviour::Echo,
        Behaviour::Echo,
        "      methods: [POST]\n      unsafe_writes: true\n      ignore: [\"/upstream\", \"/headers\"]\n",
        "",
    )
    .await;
    let client = http1();
    let payload = "x".repeat(100_000);
    let r =
        send(&client, req(Method::POST, s.proxy.addr, "/api/users").body(Full::from(payload)).unwrap()).await.unwrap();
    assert_eq!(r.json()["body_length"], 100_000);
    let record = records(&s.log, 1).await.remove(0);
    assert_eq!(record["result"], "match", "{record}");
    assert_eq!(s.shadow.body_bytes.load(std::sync::atomic::Ordering::SeqCst), 100_000);
}

#[tokio::test]
async fn secrets_never_reach_the_diff_log() {
    let p = Behaviour::json(json!({"user": "ada", "password": "hunter2", "token": "t-primary"}));
    let s_ = Behaviour::json(json!({"user": "ada", "password": "hunter3", "token": "t-shadow"}));
    let s = setup(p, s_, "      redact: [\"/password\", \"/token\"]\n", "").await;
    let client = http1();
    send(
        &client,
        req(Method::GET, s.proxy.addr, "/api/me")
            .header("authorization", "Bearer sekrit-token")
            .header("cookie", "session=sekrit-cookie")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    let record = records(&s.log, 1).await.remove(0);
    assert_eq!(record["result"], "mismatch");
    let text = std::fs::read_to_string(&s.log).unwrap();
    for secret in ["hunter2", "hunter3", "t-primary", "t-shadow", "sekrit-token", "sekrit-cookie"] {
        assert!(!text.contains(secret), "{secret} leaked into the diff log: {text}");
    }
    assert!(text.contains("[redacted]"));
}

#[test]
fn mirroring_writes_needs_unsafe_writes() {
    let dir = ConfigDir::new(
        "listen: \"127.0.0.1:0\"\nupstreams:\n  a:\n    targets: [\"http://127.0.0.1:1\"]\nroutes:\n  - name: r\n    prefix: /\n    upstream: a\n    shadow:\n      upstream: a\n      methods: [GET, POST]\n",
    );
    let out = std::process::Command::new(binary()).arg("check").arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsafe_writes") && err.contains(":11:"), "{err}");
}

#[tokio::test]
async fn sample_keys_sample_whole_sessions() {
    let body = json!({"ok": true});
    let s = setup(
        Behaviour::json(body.clone()),
        Behaviour::json(body),
        "      sample: 0.5\n      sample_key: header:X-User-Id\n",
        "",
    )
    .await;
    let client = http1();
    for user in 0..40 {
        for _ in 0..5 {
            let r = req(Method::GET, s.proxy.addr, "/api/x")
                .header("x-user-id", format!("user-{user}"))
                .body(Full::default())
                .unwrap();
            send(&client, r).await.unwrap();
        }
    }
    // The copies go out off the request path, on a thread that runs only
    // when nothing else wants the CPU: counted once every session seen has
    // all 5 and no copy has come for a second (a busy machine can hold them
    // back longer than any fixed pause).
    let per_user = || {
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for seen in s.shadow.seen.lock().unwrap().iter() {
            let user = seen.headers.get("x-user-id").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            *counts.entry(user).or_default() += 1;
        }
        counts
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut quiet_since) = (s.shadow.hits(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let hits = s.shadow.hits();
        if hits != last {
            (last, quiet_since) = (hits, Instant::now());
        }
        let whole = per_user().values().all(|&n| n == 5);
        if (whole && quiet_since.elapsed() >= Duration::from_secs(1)) || Instant::now() > deadline {
            break;
        }
    }
    let counts = per_user();
    for (user, mirrored) in &counts {
        assert_eq!(*mirrored, 5, "{user}: {mirrored} of 5 requests mirrored");
    }
    let mirrored_users = counts.len();
    assert!((10..=30).contains(&mirrored_users), "{mirrored_users} of 40 sessions sampled at 0.5");
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn a_mirrored_copy_is_a_request_of_its_own_in_the_users_trace() {
    let s = setup(Behaviour::Echo, Behaviour::Echo, "      noise: legacy\n", "").await;
    let sent = [("x-request-id", "user-req-1"), ("traceparent", TRACEPARENT), ("tracestate", "vendor=1")];
    let r = call(s.proxy.addr, Method::GET, "/api/users/7", &sent, None).await;
    assert_eq!((r.status.as_u16(), r.header("x-request-id")), (200, Some("user-req-1")));
    let record = records(&s.log, 1).await.remove(0);
    let primary_seen = s.primary.seen.lock().unwrap().clone();
    let (copies, users): (Vec<_>, Vec<_>) =
        primary_seen.into_iter().map(|seen| seen.headers).partition(|h| h.contains_key("x-strangler-shadow"));
    let user = &users[0];
    assert_eq!(user["x-request-id"], "user-req-1");
    assert_eq!(user["traceparent"], TRACEPARENT, "the user's request goes on untouched");
    assert!(user.get("x-strangler-shadow-of").is_none());
    let candidate = s.shadow.last_seen().headers;
    let candidate_id = candidate["x-request-id"].to_str().unwrap().to_string();
    for copy in [&candidate, &copies[0]] {
        let id = copy["x-request-id"].to_str().unwrap();
        assert_ne!(id, "user-req-1", "a copy has an id of its own");
        assert_eq!(copy["x-strangler-shadow-of"], "user-req-1", "and names the user's");
        let span = copy["traceparent"].to_str().unwrap();
        assert_eq!(&span[..36], &TRACEPARENT[..36], "the same trace: {span}");
        assert_ne!(&span[36..52], &TRACEPARENT[36..52], "a span of its own: {span}");
        assert_eq!(&span[52..], "-01", "still sampled: {span}");
        assert_eq!(copy["tracestate"], "vendor=1");
    }
    assert_ne!(copies[0]["x-request-id"], candidate_id, "the noise call is another copy");
    assert_eq!(record["request_id"], "user-req-1", "ops find the record by the user's id");
    assert_eq!(record["shadow_request_id"], candidate_id.as_str(), "and the candidate's logs by this one");
}

#[tokio::test]
async fn an_invalid_traceparent_is_not_forwarded_on_the_copy() {
    let s = setup(Behaviour::Echo, Behaviour::Echo, "", "").await;
    let invalid = TRACEPARENT.replace("-01", "-0x");
    let sent = [("traceparent", invalid.as_str()), ("tracestate", "vendor=1")];
    assert_eq!(call(s.proxy.addr, Method::GET, "/api/users/7", &sent, None).await.status, 200);
    records(&s.log, 1).await;
    let copy = s.shadow.last_seen().headers;
    assert!(copy.get("traceparent").is_none() && copy.get("tracestate").is_none(), "{copy:?}");
    assert_eq!(s.primary.last_seen().headers["traceparent"], invalid.as_str(), "the user's request is not ours to fix");
}

#[tokio::test]
async fn the_diff_record_names_the_client_behind_a_trusted_proxy() {
    let body = json!({"id": 7});
    let trusted = "trusted_proxies: [\"127.0.0.0/8\"]\n";
    let s = setup(Behaviour::json(body.clone()), Behaviour::json(body), "", trusted).await;
    let chain = [("x-forwarded-for", "198.51.100.77, 203.0.113.9")];
    assert_eq!(call(s.proxy.addr, Method::GET, "/api/users/7", &chain, None).await.status, 200);
    let record = records(&s.log, 1).await.remove(0);
    assert_eq!(record["client_ip"], "203.0.113.9", "{record}");
}
