//! The access log as ops read it: one JSON object per line on stderr (or in
//! a file), apart from the diff records on stdout; the body bytes really
//! sent; sampling, `off`, live reloads; written within its flush interval
//! and completed on SIGTERM.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::Value;
use strangler::table::content_hash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The access-log lines among `lines` (diagnostics and diff records are not).
fn access_lines<'a>(lines: impl IntoIterator<Item = &'a String>) -> Vec<Value> {
    lines
        .into_iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("body_bytes_sent").is_some())
        .collect()
}

/// Waits for the access-log line of request `id` among captured `lines`.
async fn line_in(lines: &Mutex<Vec<String>>, id: &str) -> Value {
    let find = || access_lines(lines.lock().unwrap().iter()).into_iter().find(|v| v["request_id"] == id);
    wait_for(Duration::from_secs(10), &format!("the access line of {id}"), || async { find().is_some() }).await;
    find().unwrap()
}

/// The access-log lines written to `file` so far.
fn file_lines(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect()
}

/// Waits for the line of request `id` in `file`.
async fn line_in_file(file: &Path, id: &str) -> Value {
    let find = || file_lines(file).into_iter().find(|v| v["request_id"] == id);
    wait_for(Duration::from_secs(10), &format!("the access line of {id} in {}", file.display()), || async {
        find().is_some()
    })
    .await;
    find().unwrap()
}

fn one_route(up: &TestUpstream) -> String {
    config(&[("up", &up.url())], "  - {name: web, prefix: /, upstream: up}\n")
}

/// `access_log: {path: <file>, …}` in front of `text`.
fn logging_to(file: &Path, settings: &str, text: &str) -> String {
    format!("access_log: {{path: {:?}{settings}}}\n{text}", file.display().to_string())
}

async fn get_with(addr: std::net::SocketAddr, client: &TestClient, path: &str, id: &str) -> TestResponse {
    let request = req(Method::GET, addr, path).header("x-request-id", id).body(Full::default()).unwrap();
    send(client, request).await.unwrap()
}

#[tokio::test]
async fn access_lines_go_to_stderr_as_json_and_diff_records_alone_to_stdout() {
    let primary = TestUpstream::start("primary", Behaviour::Echo).await;
    let candidate = TestUpstream::start("candidate", Behaviour::Echo).await;
    let text = format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\nshadow: {{log: \"-\"}}\nupstreams:\n  primary: {{targets: [\"{}\"]}}\n  candidate: {{targets: [\"{}\"]}}\nroutes:\n  - {{name: web, prefix: /, upstream: primary, shadow: {{upstream: candidate}}}}\n",
        primary.url(),
        candidate.url()
    );
    let dir = ConfigDir::new(&text);
    let proxy = BinaryProxy::start(&dir.path(), &["--threads", "1"]).await;
    let request = req(Method::GET, proxy.addr, "/logged/page?token=secret")
        .header("user-agent", "probe/1.0")
        .header("x-request-id", "stderr-1")
        .body(Full::default())
        .unwrap();
    let answer = send(&http1(), request).await.unwrap();
    assert_eq!(answer.status, 200);
    let line = line_in(&proxy.log, "stderr-1").await;
    let ts = line["ts"].as_str().unwrap();
    assert!(ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "RFC 3339 UTC seconds: {ts}");
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/logged/page", "the path, never the query");
    assert!(!line.to_string().contains("secret"));
    assert_eq!(line["route"], "web");
    assert_eq!(line["upstream"], "primary");
    assert!(line.get("misdirected_from").is_none());
    assert_eq!(line["status"], 200);
    assert_eq!(line["body_bytes_sent"], answer.body.len() as u64);
    assert!(line["duration_us"].is_u64(), "{line}");
    assert_eq!(line["user_agent"], "probe/1.0");
    assert_eq!(line["config_hash"], content_hash(&text));
    // The diff record of the same request is on stdout, and nothing else is.
    wait_for(Duration::from_secs(10), "the diff record on stdout", || async {
        proxy.stdout.lock().unwrap().iter().any(|l| l.contains("stderr-1"))
    })
    .await;
    let stdout = proxy.stdout.lock().unwrap().clone();
    for record in &stdout {
        let record: Value = serde_json::from_str(record).unwrap_or_else(|e| panic!("{e}: {record}"));
        assert!(record.get("result").is_some() && record.get("body_bytes_sent").is_none(), "{record}");
    }
    assert!(access_lines(proxy.log.lock().unwrap().iter()).iter().all(|l| l.get("result").is_none()));
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!(metric_sum(&metrics, "strangler_access_log_dropped_total", &[]), 0.0, "{metrics}");
    assert!(metrics.contains("strangler_access_log_dropped_total{reason=\"queue_full\"} 0"), "{metrics}");
}

#[tokio::test]
async fn body_bytes_sent_counts_what_went_out_on_our_loop_and_on_hyper_alike() {
    let up = TestUpstream::start("up", Behaviour::Download(300_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let proxy = TestProxy::start(&logging_to(&file, ", flush: 50ms", &one_route(&up))).await;
    // Our own loop (a bodiless HTTP/1.1 GET), hyper (HTTP/2), and HEAD.
    assert_eq!(get_with(proxy.addr, &http1(), "/h1", "h1").await.body.len(), 300_000);
    assert_eq!(get_with(proxy.addr, &http2(), "/h2", "h2").await.body.len(), 300_000);
    let head = req(Method::HEAD, proxy.addr, "/head").header("x-request-id", "head").body(Full::default()).unwrap();
    assert_eq!(send(&http1(), head).await.unwrap().status, 200);
    // A request with a body: hyper takes the connection from our loop.
    up.set(Behaviour::Echo);
    let post = req(Method::POST, proxy.addr, "/post")
        .header("x-request-id", "post")
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .unwrap();
    let echoed = send(&http1(), post).await.unwrap();
    for (id, bytes) in [("h1", 300_000), ("h2", 300_000), ("head", 0), ("post", echoed.body.len() as u64)] {
        let line = line_in_file(&file, id).await;
        assert_eq!(line["body_bytes_sent"], bytes, "{id}: {line}");
        assert_eq!(line["status"], 200, "{id}: {line}");
    }
    assert_eq!(line_in_file(&file, "post").await["method"], "POST");
}

#[tokio::test]
async fn a_client_that_drops_a_streamed_answer_is_logged_with_the_bytes_it_was_sent() {
    const TOTAL: u64 = 1 << 30;
    let up = TestUpstream::start("up", Behaviour::Download(TOTAL)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let proxy = TestProxy::start(&logging_to(&file, ", flush: 50ms", &one_route(&up))).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /big HTTP/1.1\r\nHost: proxy\r\nX-Request-Id: dropped-1\r\n\r\n").await.unwrap();
    // Read the head and 1 MiB of the body, then hang up.
    let mut read = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let body_received = loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed early");
        read.extend_from_slice(&buf[..n]);
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            if read.len() - (end + 4) >= 1 << 20 {
                break (read.len() - (end + 4)) as u64;
            }
        }
    };
    drop(stream);
    let line = line_in_file(&file, "dropped-1").await;
    let sent = line["body_bytes_sent"].as_u64().unwrap();
    assert!(sent >= body_received, "{sent} < {body_received} the client read");
    assert!(sent < TOTAL / 4, "{sent}: the count stops where the client left, not at Content-Length {TOTAL}");
    assert_eq!(line["status"], 200);
}

#[tokio::test]
async fn off_and_sample_zero_write_no_line_and_a_reload_switches_the_log_on_live() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let proxy = TestProxy::start(&format!("access_log: off\n{}", one_route(&up))).await;
    let client = http1();
    for i in 0..5 {
        get_with(proxy.addr, &client, "/", &format!("off-{i}")).await;
    }
    let sampled_none = logging_to(&file, ", sample: 0, flush: 50ms", &one_route(&up));
    proxy.config.write_in_place(&sampled_none);
    proxy.wait_for_hash(&content_hash(&sampled_none)).await;
    for i in 0..20 {
        get_with(proxy.addr, &client, "/", &format!("sample-0-{i}")).await;
    }
    // Same file, buffer and flush: the same writer, so any line of the
    // requests above would be in the file before this one.
    let every = logging_to(&file, ", flush: 50ms", &one_route(&up));
    proxy.config.write_in_place(&every);
    proxy.wait_for_hash(&content_hash(&every)).await;
    get_with(proxy.addr, &client, "/", "sampled").await;
    line_in_file(&file, "sampled").await;
    let ids: Vec<Value> = file_lines(&file).iter().map(|l| l["request_id"].clone()).collect();
    assert_eq!(ids, ["sampled"], "only the request after the reload");
    assert_eq!(file_lines(&file)[0]["config_hash"], content_hash(&every));
}

#[tokio::test]
async fn access_log_off_keeps_stderr_free_of_access_lines() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let dir = ConfigDir::new(&format!("access_log: off\n{}", one_route(&up)));
    let mut proxy = BinaryProxy::start(&dir.path(), &[]).await;
    for i in 0..10 {
        get_with(proxy.addr, &http1(), "/", &format!("quiet-{i}")).await;
    }
    // A drain writes every buffered line: after exit, nothing is pending.
    proxy.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let log = proxy.log_text();
    assert!(!log.contains("quiet-"), "{log}");
    assert!(access_lines(proxy.log.lock().unwrap().iter()).is_empty(), "{log}");
}

#[tokio::test]
async fn a_file_log_is_written_within_its_flush_interval_and_completed_on_sigterm() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let soon = dir.path().join("soon.log");
    let conf = ConfigDir::new(&logging_to(&soon, ", flush: 300ms", &one_route(&up)));
    let proxy = BinaryProxy::start(&conf.path(), &["--threads", "2"]).await;
    let asked = Instant::now();
    get_with(proxy.addr, &http1(), "/", "soon").await;
    line_in_file(&soon, "soon").await;
    assert!(asked.elapsed() < Duration::from_secs(3), "a line waits about one flush interval: {:?}", asked.elapsed());
    drop(proxy);

    // Lines that would wait an hour in a 16 MiB buffer are written by the drain.
    let late = dir.path().join("late.log");
    let conf = ConfigDir::new(&logging_to(&late, ", flush: 1h, buffer: 16MiB", &one_route(&up)));
    let mut proxy = BinaryProxy::start(&conf.path(), &["--threads", "2"]).await;
    let client = http1();
    for i in 0..50 {
        get_with(proxy.addr, &client, "/", &format!("late-{i}")).await;
    }
    assert!(file_lines(&late).is_empty(), "buffered, not yet written");
    proxy.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let mut ids: Vec<String> =
        file_lines(&late).iter().map(|l| l["request_id"].as_str().unwrap().to_string()).collect();
    ids.sort_by_key(|id| id[5..].parse::<u32>().unwrap());
    assert_eq!(ids, (0..50).map(|i| format!("late-{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn hostile_user_agents_and_paths_stay_inside_their_json_strings() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let proxy = TestProxy::start(&logging_to(&file, ", flush: 50ms", &one_route(&up))).await;
    let mut head =
        b"GET /q%22uote/\"raw\"/back\\slash/{x} HTTP/1.1\r\nHost: proxy\r\nX-Request-Id: hostile-1\r\n".to_vec();
    head.extend_from_slice(b"User-Agent: evil\"agent\\ \t\xff\xfe\xc3\x28 }{\r\nConnection: close\r\n\r\n");
    // The backslash is refused (400): a refused request is logged all the same.
    let answer = raw(proxy.addr, &head, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), Some(400), "{answer}");
    let line = line_in_file(&file, "hostile-1").await;
    assert_eq!(line["user_agent"], "evil\"agent\\ \t\u{fffd}\u{fffd}\u{fffd}( }{");
    assert_eq!(line["path"], "/q%22uote/\"raw\"/back\\slash/{x}", "as the client sent it");
    assert_eq!(line["route"], Value::Null);
    assert_eq!(line["status"], 400, "the fields after them are intact: {line}");
}

#[tokio::test]
async fn a_bad_access_log_setting_is_refused_with_its_line_and_column() {
    let dir = ConfigDir::new(
        "listen: \"127.0.0.1:0\"\nupstreams:\n  a: {targets: [\"http://127.0.0.1:1\"]}\nroutes: []\naccess_log:\n  path: \"-\"\n  sample: 1.5\n",
    );
    let out = std::process::Command::new(binary()).arg("check").arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:7:3: access_log: sample must be between 0.0 and 1.0, not 1.5", dir.path().display());
    assert!(stderr.contains(&expected), "{stderr}");
    let missing_dir = ConfigDir::new(
        "listen: \"127.0.0.1:0\"\nupstreams:\n  a: {targets: [\"http://127.0.0.1:1\"]}\nroutes: []\naccess_log: {path: /nonexistent-dir/a.log}\n",
    );
    let out = std::process::Command::new(binary()).arg("check").arg(missing_dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":5:") && stderr.contains("cannot open /nonexistent-dir/a.log"), "{stderr}");
}
