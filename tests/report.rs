//! `strangler report` and `strangler replay`, run as the real binary on
//! diff logs with known content.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use strangler::record::{DiffKind, DiffRecord, Difference, Outcome, PrimarySide, ShadowSide};

use crate::support::*;

const XSS: &str = "<script>alert('pwned')</script>";

fn rec(minute: u64, i: u64, route: &str, result: Outcome) -> DiffRecord {
    DiffRecord {
        ts: format!("2026-11-25T20:{:02}:{:02}.{:03}Z", minute % 60, i % 60, i % 1000),
        request_id: format!("{route}-{minute}-{i}"),
        shadow_request_id: None,
        id: None,
        instance: None,
        config_hash: None,
        client_ip: None,
        route: route.into(),
        endpoint: format!("/api/{route}/{{id}}"),
        method: "GET".into(),
        path: format!("/api/{route}/{i}"),
        query: None,
        primary: PrimarySide {
            upstream: "legacy".into(),
            status: Some(200),
            latency_ms: Some(10.0 + (i % 10) as f64),
            body_bytes: Some(200),
        },
        shadow: ShadowSide {
            upstream: "new".into(),
            status: Some(200),
            latency_ms: Some(30.0 + (i % 10) as f64),
            body_bytes: Some(200),
            error: None,
        },
        result,
        reason: None,
        diffs: vec![],
        noise: vec![],
    }
}

fn diff(kind: DiffKind, pointer: &str, primary: Value, shadow: Value) -> Difference {
    Difference { kind, pointer: pointer.into(), primary, shadow }
}

/// Replica A: users (1000 matches, 12 mismatches on {/created_at, /email}
/// with a script tag in the values, 8 on the status, noise, skips, shadow
/// errors), 1000 comment matches, 300 task matches, and a corrupt line 17.
fn replica_a() -> Vec<String> {
    let mut lines = Vec::new();
    let mut push = |r: DiffRecord| lines.push(serde_json::to_string(&r).unwrap());
    for i in 0..1000 {
        let mut r = rec(i / 20, i, "users", Outcome::Match);
        if i % 40 == 0 {
            r.noise = vec!["/updated_at".into(), "/items/3/etag".into()];
        }
        push(r);
    }
    for i in 0..12 {
        let mut r = rec(48 + i / 2, 1000 + i, "users", Outcome::Mismatch);
        r.diffs = vec![
            diff(DiffKind::Body, "/created_at", json!("2026-01-01T00:00:00Z"), json!("2026-01-01T00:00:00.000Z")),
            diff(DiffKind::Body, "/email", json!(format!("{XSS}@example.com")), json!("SHADOW@example.com")),
        ];
        push(r);
    }
    for i in 0..8 {
        let mut r = rec(55, 2000 + i, "users", Outcome::Mismatch);
        r.diffs = vec![diff(DiffKind::Status, "", json!(200), json!(500))];
        r.shadow.status = Some(500);
        push(r);
    }
    for i in 0..5 {
        let mut r = rec(30, 3000 + i, "users", Outcome::Skipped);
        r.reason = Some("too_large".into());
        push(r);
    }
    for i in 0..3 {
        let mut r = rec(31, 4000 + i, "users", Outcome::ShadowError);
        r.reason = Some("shadow_timeout".into());
        r.shadow.error = Some("no answer within 5s".into());
        r.shadow.status = None;
        push(r);
    }
    for i in 0..1000 {
        push(rec(i / 20, i, "comments", Outcome::Match));
    }
    for i in 0..300 {
        push(rec(i / 10, i, "tasks", Outcome::Match));
    }
    lines.insert(16, "{\"ts\": \"2026-11-25T20:00:00Z\", \"route\": \"truncated".into());
    lines
}

/// Replica B (gzip): 1000 more users matches, 500 more comments matches.
fn replica_b() -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..1000 {
        lines.push(serde_json::to_string(&rec(i / 20, 10_000 + i, "users", Outcome::Match)).unwrap());
    }
    for i in 0..500 {
        lines.push(serde_json::to_string(&rec(i / 10, 10_000 + i, "comments", Outcome::Match)).unwrap());
    }
    lines
}

struct Logs {
    dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
}

fn logs() -> Logs {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    std::fs::write(&a, replica_a().join("\n") + "\n").unwrap();
    let b = dir.path().join("b.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&b).unwrap(), flate2::Compression::fast());
    gz.write_all((replica_b().join("\n") + "\n").as_bytes()).unwrap();
    gz.finish().unwrap();
    Logs { dir, a, b }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn report(files: &[&Path], args: &[&str]) -> Run {
    let out = Command::new(binary()).arg("report").args(files).args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn route<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["routes"].as_array().unwrap().iter().find(|r| r["route"] == name).unwrap_or_else(|| panic!("no route {name}"))
}

#[test]
fn json_report_merges_replicas_and_judges_routes() {
    let logs = logs();
    let run = report(&[&logs.a, &logs.b], &["--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("a.jsonl:17: invalid record: "), "{}", run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["inputs"]["corrupt_lines"], 1);
    assert_eq!(v["inputs"]["files"].as_array().unwrap().len(), 2);
    assert_eq!(v["totals"]["sampled"], 1000 + 20 + 5 + 3 + 1000 + 300 + 1000 + 500);
    assert_eq!(v["ready"], false);

    let users = route(&v, "users");
    assert_eq!(users["counts"]["compared"], 2020);
    assert_eq!(users["counts"]["mismatch"], 20);
    assert_eq!(users["verdict"]["ready"], false);
    assert_eq!(users["verdict"]["reasons"][0], "match rate 99.0% < 99.9%");
    let rate = &users["match_rate"];
    assert!(rate["ci95_low"].as_f64().unwrap() < 99.0099 && rate["ci95_high"].as_f64().unwrap() > 99.0099);
    assert_eq!(users["mismatches_by_kind"], json!({"status": 8, "header": 0, "body": 12}));
    assert_eq!(users["triage"][0]["fields"], json!(["/created_at", "/email"]));
    assert_eq!(users["triage"][0]["count"], 12);
    assert_eq!(users["triage"][1]["fields"], json!(["status"]));
    assert_eq!(users["triage"][1]["count"], 8);
    let email = users["fields"].as_array().unwrap().iter().find(|f| f["field"] == "/email").unwrap();
    assert_eq!(email["count"], 12);
    assert_eq!(email["examples"].as_array().unwrap().len(), 3);
    assert_eq!(email["examples"][0]["primary"], format!("{XSS}@example.com"));
    assert_eq!(email["examples"][0]["shadow"], "SHADOW@example.com");
    assert_eq!(email["examples"][0]["request_id"], "users-48-1000");
    assert_eq!(users["noise"][0], json!({"name": "/items/*/etag", "count": 25}));
    assert_eq!(users["ignore_snippet"], "shadow:\n  ignore: [\"/items/*/etag\", \"/updated_at\"]\n");
    assert_eq!(users["skipped"], json!([{"name": "too_large", "count": 5}]));
    assert_eq!(users["shadow_errors"]["count"], 3);
    assert_eq!(users["shadow_errors"]["top_messages"][0]["name"], "no answer within 5s");
    let p50 = users["latency"]["primary"]["p50"].as_f64().unwrap();
    let s50 = users["latency"]["shadow"]["p50"].as_f64().unwrap();
    assert!((13.0..=15.5).contains(&p50) && (33.0..=35.5).contains(&s50), "{p50} {s50}");
    assert!(!users["timeline"]["buckets"].as_array().unwrap().is_empty());

    let comments = route(&v, "comments");
    assert_eq!(comments["counts"]["compared"], 1500, "merged from both replicas");
    assert_eq!(comments["verdict"], json!({"ready": true, "reasons": []}));
    let tasks = route(&v, "tasks");
    // 300 compared from 20:00:00 to the report's end at 20:55:27: 700 more take about 2h 9m.
    assert_eq!(
        tasks["verdict"]["reasons"],
        json!(["not enough samples: 300 < 1000, about 2h 9m more at the current rate (5.4 compared per minute)"])
    );
    assert_eq!(tasks["verdict"]["samples_eta_seconds"], 7764);
    // Every route's timeline has the same buckets, to the end of the report.
    let timelines: Vec<&Value> = v["routes"].as_array().unwrap().iter().map(|r| &r["timeline"]).collect();
    for t in &timelines {
        assert_eq!(t["bucket_seconds"], timelines[0]["bucket_seconds"]);
        assert_eq!(t["buckets"].as_array().unwrap().len(), timelines[0]["buckets"].as_array().unwrap().len());
        assert_eq!(t["end"], "2026-11-25T21:00:00Z", "the bucket holding the last record (20:55:27) ends at 21:00");
    }
    let errors: u64 =
        users["timeline"]["buckets"].as_array().unwrap().iter().map(|b| b["shadow_error"].as_u64().unwrap()).sum();
    assert_eq!(errors, 3, "shadow errors are on the timeline");
}

#[test]
fn exit_code_gates_a_cutover() {
    let logs = logs();
    let out = logs.dir.path().join("r.json");
    let o = out.to_str().unwrap();
    assert_eq!(report(&[&logs.a, &logs.b], &["--format", "json", "--fail-if-not-ready", "-o", o]).code, 2);
    let run = report(&[&logs.a, &logs.b], &["--format", "json", "--fail-if-not-ready", "--route", "comments", "-o", o]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["routes"].as_array().unwrap().len(), 1);
    assert_eq!(v["ready"], true);
    let run =
        report(&[&logs.a], &["--format", "json", "--min-match", "98", "--min-samples", "200", "--fail-if-not-ready"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    // --since: only records from 20:40 on (users 800 + comments 200 from replica A).
    let run = report(&[&logs.a], &["--format", "json", "--since", "2026-11-25T20:40:00Z"]);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(route(&v, "users")["counts"]["match"], 200);
    assert_eq!(route(&v, "users")["counts"]["mismatch"], 20);
    assert!(v["inputs"]["filtered_out"].as_u64().unwrap() > 1000);
    let run = report(&[&logs.a], &["--since", "two days ago"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--since"), "{}", run.stderr);
    let run = report(&[&logs.dir.path().join("missing.jsonl")], &[]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("missing.jsonl"), "{}", run.stderr);
}

#[test]
fn markdown_report_has_the_tables() {
    let logs = logs();
    let run = report(&[&logs.a, &logs.b], &["--format", "md"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let md = run.stdout;
    assert!(
        md.contains(
            "| users | ❌ match rate 99.0% < 99.9%; shadow errors 0.15% of compared-or-failed requests > 0.1% |"
        ),
        "{md}"
    );
    assert!(md.contains("| comments | ✅ ready |"), "{md}");
    assert!(
        md.contains("| tasks | ❌ not enough samples: 300 < 1000, about 2h 9m more at the current rate (5.4 compared per minute) |"),
        "{md}"
    );
    assert!(md.contains("| 12 | 60.0% | {/created\\_at, /email} |"), "{md}");
    assert!(md.contains("ignore: [\"/items/*/etag\", \"/updated_at\"]"), "{md}");
    assert!(md.contains("**corrupt lines 1**"), "{md}");
    assert!(md.contains("| too\\_large | 5 |"), "{md}");
    assert!(!md.contains("<script>"), "traffic values must be escaped");
    assert!(md.contains("&lt;script>alert(1)&lt;/script>@example.com") || md.contains("&lt;script>"), "{md}");
}

/// Per chart, the values of its rate-axis and request-axis tick labels.
fn chart_ticks(html: &str) -> Vec<(Vec<f64>, Vec<f64>)> {
    let labels = |svg: &str, class: &str| -> Vec<f64> {
        let marker = format!("class=\"{class}\"");
        svg.split(&marker)
            .skip(1)
            .map(|rest| {
                let text = &rest[rest.find('>').unwrap() + 1..rest.find("</text>").unwrap()];
                text.trim_end_matches('%').replace('k', "e3").parse::<f64>().unwrap_or_else(|e| panic!("{text}: {e}"))
            })
            .collect()
    };
    html.split("<svg class=\"timeline\"")
        .skip(1)
        .map(|svg| {
            let svg = &svg[..svg.find("</svg>").unwrap()];
            (labels(svg, "rate-tick"), labels(svg, "count-tick"))
        })
        .collect()
}

fn assert_round(ticks: &[f64]) {
    assert!(ticks.len() >= 2, "{ticks:?}");
    let step = ticks[1] - ticks[0];
    let magnitude = 10f64.powf(step.log10().floor());
    let mantissa = step / magnitude;
    assert!([1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6), "step {step} of {ticks:?}");
    for pair in ticks.windows(2) {
        assert!((pair[1] - pair[0] - step).abs() < 1e-6, "uneven ticks {ticks:?}");
    }
    for t in ticks {
        assert!(((t / step).round() * step - t).abs() < 1e-6, "{t} is not a multiple of {step}: {ticks:?}");
    }
}

fn chromium() -> Option<PathBuf> {
    let candidate = std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    candidate.exists().then_some(candidate)
}

#[test]
fn html_report_is_self_contained_escaped_and_renders() {
    let logs = logs();
    let html_path = logs.dir.path().join("report.html");
    let run = report(&[&logs.a, &logs.b], &["--format", "html", "-o", html_path.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "-o writes to the file");
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(!html.to_lowercase().contains("<script"), "no script: neither ours nor the traffic's");
    assert!(html.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;@example.com"));
    for external in ["http://", "https://", "<link", "@import", "url("] {
        let allowed = html.matches("http://www.w3.org/2000/svg").count();
        if external == "http://" {
            assert_eq!(html.matches(external).count(), allowed, "only the SVG namespace");
        } else {
            assert!(!html.contains(external), "{external}");
        }
    }
    assert!(html.contains("<svg"));
    assert!(html.contains("not enough samples: 300 &lt; 1000, about 2h 9m more at the current rate"));
    assert!(html.contains("match rate 99.0% &lt; 99.9%"));
    assert!(html.contains("ready to cut over"));
    assert!(html.contains("/created_at</code><code class=\"f\">/email</code>"));

    // Both axes of every chart have round ticks: equal steps of 1, 2 or 5 times a power of ten.
    let charts = chart_ticks(&html);
    assert_eq!(charts.len(), 3, "one chart per route");
    for (rate, counts) in &charts {
        assert_round(rate);
        assert_round(counts);
        assert_eq!(*rate.last().unwrap(), 100.0, "the rate axis ends at 100%");
        assert_eq!(counts[0], 0.0, "the request axis starts at 0");
    }
    let comments = &charts[0].0;
    assert_eq!(comments, &[99.85, 99.9, 99.95, 100.0], "all matches: the threshold shows with room below it");

    if std::env::var("STRANGLER_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("STRANGLER_SKIP_BROWSER=1: not rendering the report in Chromium");
        return;
    }
    let Some(chromium) = chromium() else {
        panic!(
            "Chromium is needed to render the HTML report: install it (apt-get install -y chromium), \
             point CHROMIUM at it, or set STRANGLER_SKIP_BROWSER=1 to skip this check"
        );
    };
    let profile = tempfile::tempdir().unwrap();
    let png = std::env::var_os("STRANGLER_REPORT_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| logs.dir.path().join("report.png"));
    let out = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,2000")
        .arg(format!("file://{}", html_path.display()))
        .output()
        .unwrap();
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!("no screenshot at {} ({e}); chromium said: {}", png.display(), String::from_utf8_lossy(&out.stderr))
    });
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 50_000, "a blank page compresses to almost nothing: {} bytes", bytes.len());
}

fn mismatch(i: u64, path: &str, query: Option<&str>, diffs: Vec<Difference>) -> DiffRecord {
    let mut r = rec(0, i, "users", Outcome::Mismatch);
    r.request_id = format!("req-{i}");
    r.endpoint = "/api/users/{id}".into();
    r.path = path.into();
    r.query = query.map(str::to_string);
    r.diffs = diffs;
    r
}

async fn replay(log: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(binary()).arg("replay").arg(log).args(args).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_tells_fixed_from_still_different() {
    // The new build echoes the request as JSON: {"upstream": "v2", "uri": ..., "headers": {...}}.
    let new = TestUpstream::start("v2", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("diffs.jsonl");
    let body = |p: &str, primary: Value| diff(DiffKind::Body, p, primary, json!("old shadow value"));
    let mut records = vec![
        mismatch(1, "/api/users/1", None, vec![body("/upstream", json!("v2"))]),
        mismatch(2, "/api/users/2", None, vec![body("/upstream", json!("legacy")), body("/method", json!("GET"))]),
        mismatch(3, "/api/users/3", Some("x=1"), vec![body("/uri", json!("/api/users/3?x=1"))]),
        mismatch(5, "/api/users/5", None, vec![body("/headers/authorization", json!("Bearer t0k"))]),
        mismatch(6, "/api/users/6", None, vec![diff(DiffKind::Status, "", json!(404), json!(200))]),
        mismatch(7, "/api/users/7", None, vec![diff(DiffKind::Header, "x-upstream", json!("v2"), json!("v1"))]),
    ];
    records[4].primary.status = Some(404);
    let mut post = mismatch(4, "/api/users/4", None, vec![body("/upstream", json!("v2"))]);
    post.method = "POST".into();
    records.push(post);
    records.push(rec(0, 8, "users", Outcome::Match));
    let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(&log, text).unwrap();

    let (code, out, err) = replay(&log, &["--upstream", &new.url(), "--header", "Authorization: Bearer t0k"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 6 of 7 mismatches"), "{out}");
    assert!(out.contains("skipped 1 with unsafe methods (POST 1)"), "{out}");
    let row =
        |name: &str, fixed: u64, still: u64, error: u64| format!("{name:<19}  {fixed:>7}  {still:>15}  {error:>7}\n");
    assert!(out.contains(&row("GET /api/users/{id}", 4, 2, 0)), "{out}");
    assert!(out.contains(&row("total", 4, 2, 0)), "{out}");
    assert!(out.contains("GET /api/users/2  req-2  /upstream\n"), "{out}");
    assert!(out.contains("GET /api/users/6  req-6  status\n"), "{out}");
    assert_eq!(new.hits(), 6, "only safe methods are replayed");
    assert_eq!(new.last_seen().headers["authorization"], "Bearer t0k");

    // Without the token, the authorization field is still different.
    let (_, out, _) = replay(&log, &["--upstream", &new.url(), "--format", "json", "--limit", "4"]).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replayed"], 4);
    assert_eq!(v["total"], json!({"fixed": 2, "still_different": 2, "error": 0}));
    let req5 = v["not_fixed"].as_array().unwrap().iter().find(|r| r["request_id"] == "req-5").unwrap();
    assert_eq!(req5["verdict"], "still_different");
    assert_eq!(req5["fields"], json!(["/headers/authorization"]));

    // An upstream that is down: every request is an error, and the command still succeeds.
    let down = TestUpstream::start("down", Behaviour::Echo).await;
    let url = down.url();
    down.stop();
    drop(down);
    let (code, out, _) = replay(&log, &["--upstream", &url, "--limit", "2"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&row("total", 0, 0, 2)), "{out}");
    assert!(out.contains("errors:"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_with_primary_compares_in_full_minus_noise() {
    let new = TestUpstream::start("v2", Behaviour::Echo).await;
    let primary = TestUpstream::start("v2", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("diffs.jsonl");
    // The two echo the same, except the Host header each one saw.
    let mut noisy = mismatch(1, "/api/users/1", None, vec![diff(DiffKind::Body, "/upstream", json!("a"), json!("b"))]);
    noisy.noise = vec!["/headers/host".into()];
    let plain = mismatch(2, "/api/users/2", None, vec![diff(DiffKind::Body, "/upstream", json!("a"), json!("b"))]);
    let text = [noisy, plain].iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect::<String>();
    std::fs::write(&log, text).unwrap();
    let (code, out, err) =
        replay(&log, &["--upstream", &new.url(), "--primary", &primary.url(), "--format", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"], json!({"fixed": 1, "still_different": 1, "error": 0}), "{out}");
    assert_eq!(v["not_fixed"][0]["request_id"], "req-2");
    assert_eq!(v["not_fixed"][0]["fields"], json!(["/headers/host"]));
    assert_eq!(primary.hits(), 2);
}

/// Record `i` (one a second from 20:00) of `instance`, with a UUIDv7-shaped id of its own.
fn fleet_rec(i: u64, route: &str, instance: &str, result: Outcome) -> DiffRecord {
    let mut r = rec(i / 60, i, route, result);
    r.ts = format!("2026-11-25T{:02}:{:02}:{:02}.000Z", 20 + i / 3600, (i / 60) % 60, i % 60);
    r.id = Some(format!("019ab3c4-{:04x}-7000-8000-{i:012x}", route.len()));
    r.instance = Some(instance.into());
    r.config_hash = Some("5e1f00d2c4a1b7e9".into());
    r
}

fn write_jsonl(path: &Path, records: &[DiffRecord]) {
    let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

fn json_report(files: &[&Path], args: &[&str]) -> Value {
    let run = report(files, &[&["--format", "json"], args].concat());
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn overlapping_exports_count_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<DiffRecord> = (0..1200).map(|i| fleet_rec(i, "users", "pod-a", Outcome::Match)).collect();
    // Two exports of the same pod's log that overlap by 10 minutes (600 records).
    let (early, late) = (dir.path().join("until-20h15.jsonl"), dir.path().join("from-20h05.jsonl"));
    write_jsonl(&early, &all[..900]);
    write_jsonl(&late, &all[300..]);
    let v = json_report(&[&early], &["--from", late.to_str().unwrap()]);
    assert_eq!(v["totals"]["sampled"], 1200);
    assert_eq!(v["totals"]["match"], 1200);
    assert_eq!(v["inputs"]["duplicates_ignored"], 600);
    assert_eq!(v["inputs"]["files"].as_array().unwrap().len(), 2);
    assert_eq!(v["instances"], json!([{"name": "pod-a", "count": 1200}]));
    assert_eq!(v["ready"], true);
    // The same file twice, once through stdin: still once.
    let out = Command::new(binary())
        .args(["report", "--format", "json", "-"])
        .arg(&early)
        .stdin(std::fs::File::open(&early).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["totals"]["sampled"], 900);
    assert_eq!(v["inputs"]["duplicates_ignored"], 900);
}

/// A route whose primary puts a random `nonce` in every answer, otherwise equal answers.
fn nonce_mismatch(i: u64, instance: &str) -> DiffRecord {
    let mut r = fleet_rec(i, "orders", instance, Outcome::Mismatch);
    r.diffs = vec![diff(DiffKind::Body, "/nonce", json!(format!("{i:x}-p")), json!(format!("{i:x}-s")))];
    r
}

#[test]
fn noise_one_replica_learned_late_is_noise_for_the_whole_fleet() {
    let dir = tempfile::tempdir().unwrap();
    // Replica a probes the primary, but only learns the nonce is noise after 300 requests.
    let mut a: Vec<DiffRecord> = (0..300).map(|i| nonce_mismatch(i, "pod-a")).collect();
    for i in 300..700 {
        let mut r = fleet_rec(i, "orders", "pod-a", Outcome::Match);
        r.noise = vec!["/nonce".into()];
        a.push(r);
    }
    // Replica b never probes: every one of its answers is a mismatch on the nonce.
    let b: Vec<DiffRecord> = (1000..1600).map(|i| nonce_mismatch(i, "pod-b")).collect();
    let (pa, pb) = (dir.path().join("pod-a.jsonl"), dir.path().join("pod-b.jsonl"));
    write_jsonl(&pa, &a);
    write_jsonl(&pb, &b);
    let v = json_report(&[&pa, &pb], &[]);
    let orders = route(&v, "orders");
    assert_eq!(orders["counts"]["compared"], 1300);
    assert_eq!(orders["counts"]["mismatch"], 0);
    assert_eq!(orders["match_rate"]["percent"], 100.0);
    assert_eq!(orders["rejudged_as_match"], 900);
    assert_eq!(orders["verdict"], json!({"ready": true, "reasons": []}));
    assert_eq!(orders["triage"], json!([]));
    assert_eq!(orders["noise"][0]["name"], "/nonce");
    assert_eq!(orders["ignore_snippet"], "shadow:\n  ignore: [\"/nonce\"]\n");
    assert_eq!(v["totals"]["mismatch"], 0);
    assert_eq!(v["ready"], true);
    // The pod that never probed, alone, is judged with what the fleet learned.
    let v = json_report(&[&pa, &pb], &["--instance", "pod-b", "--min-samples", "500"]);
    assert_eq!(route(&v, "orders")["counts"]["mismatch"], 0);
    assert_eq!(route(&v, "orders")["counts"]["match"], 600);
}

#[test]
fn route_time_and_instance_filters_narrow_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = Vec::new();
    for i in 0..3600 {
        let pod = if i % 2 == 0 { "pod-a" } else { "pod-b" };
        records.push(fleet_rec(i, ["users", "comments", "tasks"][(i % 3) as usize], pod, Outcome::Match));
    }
    let path = dir.path().join("fleet.jsonl");
    write_jsonl(&path, &records);
    let routes = |v: &Value| -> Vec<String> {
        v["routes"].as_array().unwrap().iter().map(|r| r["route"].as_str().unwrap().to_string()).collect()
    };

    let v = json_report(&[&path], &["--route", "users", "--route", "tasks"]);
    assert_eq!(routes(&v), ["tasks", "users"]);
    assert_eq!(v["totals"]["sampled"], 2400);
    assert_eq!(v["inputs"]["filtered_out"], 1200);

    // 20:10 (inclusive) to 20:40 (exclusive): 1800 records.
    let v = json_report(&[&path], &["--since", "2026-11-25T20:10:00Z", "--until", "2026-11-25T20:40:00Z"]);
    assert_eq!(v["totals"]["sampled"], 1800);
    assert_eq!(v["span"]["first"], "2026-11-25T20:10:00Z");
    assert_eq!(v["span"]["last"], "2026-11-25T20:39:59Z");

    let v = json_report(&[&path], &["--instance", "pod-b", "--route", "users"]);
    assert_eq!(v["totals"]["sampled"], 600);
    assert_eq!(v["instances"], json!([{"name": "pod-b", "count": 600}]));

    // A relative --until: everything in 2026 is more than a minute ago... or, on a machine whose
    // clock says otherwise, nothing is; either way the flag is accepted.
    let run = report(&[&path], &["--format", "json", "--until", "1m"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = report(&[&path], &["--until", "2026-11-25T20:00:00Z", "--since", "2026-11-25T21:00:00Z"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--until must be later than --since"), "{}", run.stderr);
}

#[test]
fn a_store_source_that_cannot_be_reached_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_jsonl(&path, &[fleet_rec(1, "users", "pod-a", Outcome::Match)]);
    let run = report(&[&path], &["--from", "postgres://strangler:hunter2@127.0.0.1:1/shadow?sslmode=disable"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("postgres://strangler:***@127.0.0.1:1/shadow"), "{}", run.stderr);
    assert!(run.stderr.contains("cannot read the store"), "{}", run.stderr);
    assert!(!run.stderr.contains("hunter2"), "the password never shows: {}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let run = report(&[], &[]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("no records to read"), "{}", run.stderr);
}
