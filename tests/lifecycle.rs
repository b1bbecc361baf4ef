//! The binary's lifecycle: SIGTERM drains, SIGHUP reloads, address changes
//! need a restart (access logs: `access_log.rs`).

use std::time::Duration;

use strangler::table::content_hash;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    // One worker; and two, with connections handed between them.
    for workers in [&["--threads", "1"][..], &["--threads", "2", "--connection-balance", "exact"]] {
        let up = TestUpstream::start("slow", Behaviour::Slow(Duration::from_millis(1500))).await;
        let dir = ConfigDir::new(&config(&[("slow", &up.url())], "  - {name: all, prefix: /, upstream: slow}\n"));
        let mut proxy = BinaryProxy::start(&dir.path(), &[&["--drain-timeout", "10s"][..], workers].concat()).await;
        let addr = proxy.addr;
        let in_flight: Vec<_> =
            (0..8).map(|i| tokio::spawn(async move { get(addr, &format!("/drain/{i}")).await })).collect();
        wait_for(Duration::from_secs(10), "all 8 requests to reach the upstream", || async { up.hits() == 8 }).await;
        proxy.signal("TERM");
        let admin = proxy.admin;
        wait_for(Duration::from_secs(5), "readiness to go false while draining", || async move {
            let ready =
                send(&http1(), req(http::Method::GET, admin, "/readyz").body(Default::default()).unwrap()).await;
            ready.is_ok_and(|r| r.status == 503)
        })
        .await;
        for r in in_flight {
            assert_eq!(r.await.unwrap().status, 200, "{workers:?}: an in-flight request was lost");
        }
        let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{workers:?}: exit status {status:?}");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "{workers:?}: the listener is closed");
    }
}

#[tokio::test]
async fn sigterm_with_a_shadow_records_the_copies_in_flight_then_exits_zero() {
    let primary = TestUpstream::start("primary", Behaviour::Echo).await;
    // Slower than the requests: the copies are still in flight at SIGTERM.
    let candidate = TestUpstream::start("candidate", Behaviour::Slow(Duration::from_millis(700))).await;
    let logs = tempfile::tempdir().unwrap();
    let diff_log = logs.path().join("diffs.jsonl");
    let text = config(
        &[("primary", &primary.url()), ("candidate", &candidate.url())],
        "  - {name: mirrored, prefix: /, upstream: primary, shadow: {upstream: candidate}}\n",
    );
    let text = format!("shadow: {{log: \"{}\"}}\n{text}", diff_log.display());
    let dir = ConfigDir::new(&text);
    let mut proxy = BinaryProxy::start(&dir.path(), &["--threads", "1"]).await;
    for i in 0..5 {
        assert_eq!(get(proxy.addr, &format!("/copy/{i}")).await.status, 200);
    }
    proxy.signal("TERM");
    let exited = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait()).await;
    let status = exited.expect("the proxy still runs 10 s after SIGTERM").unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(candidate.hits(), 5, "every copy reached the candidate");
    let records = std::fs::read_to_string(&diff_log).unwrap_or_default();
    let paths: Vec<String> = records
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["path"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(paths.len(), 5, "one record for each copy in flight at SIGTERM:\n{records}");
}

#[tokio::test]
async fn the_shadow_threads_run_below_the_workers_priority() {
    // Linux's scheduling policies, as /proc shows them (libc's numbers).
    use libc::{SCHED_IDLE, SCHED_OTHER};
    let primary = TestUpstream::start("primary", Behaviour::Echo).await;
    let candidate = TestUpstream::start("candidate", Behaviour::Echo).await;
    let logs = tempfile::tempdir().unwrap();
    let text = config(
        &[("primary", &primary.url()), ("candidate", &candidate.url())],
        "  - {name: mirrored, prefix: /, upstream: primary, shadow: {upstream: candidate}}\n",
    );
    let text = format!("shadow: {{log: \"{}\"}}\n{text}", logs.path().join("diffs.jsonl").display());
    let dir = ConfigDir::new(&text);
    let proxy = BinaryProxy::start(&dir.path(), &["--threads", "2"]).await;
    assert_eq!(get(proxy.addr, "/mirrored").await.status, 200);
    let pid = proxy.child.id().unwrap();
    // Each thread's name (its `comm`: cut to 15 bytes) and scheduling policy.
    let threads = || -> Vec<(String, i32)> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks
            .filter_map(|task| {
                let dir = task.ok()?.path();
                let name = std::fs::read_to_string(dir.join("comm")).ok()?.trim().to_string();
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                // Field 41, counted after the ")" that ends the name.
                let policy = stat[stat.rfind(')')? + 2..].split(' ').nth(38)?.parse().ok()?;
                Some((name, policy))
            })
            .collect()
    };
    let shadow = |name: &str| name.starts_with("strangler-shado") || name.starts_with("strangler-diff-");
    // Each thread is named before it lowers its class: wait for both steps.
    wait_for(Duration::from_secs(5), "the shadow's two threads to start, in SCHED_IDLE", || async {
        threads().iter().filter(|(name, policy)| shadow(name) && *policy == SCHED_IDLE).count() == 2
    })
    .await;
    let threads = threads();
    for (name, policy) in &threads {
        let expected = if shadow(name) { SCHED_IDLE } else { SCHED_OTHER };
        assert_eq!(
            *policy, expected,
            "thread {name}: the shadow's threads yield to live traffic, the rest keep theirs"
        );
    }
    assert!(threads.iter().any(|(name, _)| name.starts_with("strangler-worke")), "{threads:?}");
}

#[tokio::test]
async fn sighup_reloads_and_address_changes_need_a_restart() {
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    // The config lives behind a symlink into another directory, so that only
    // SIGHUP (not a file event) can tell the proxy about the change.
    let real = ConfigDir::new(&config(&[("a", &a.url())], "  - {name: all, prefix: /old, upstream: a}\n"));
    let link_dir = tempfile::tempdir().unwrap();
    let link = link_dir.path().join("routes.yaml");
    std::os::unix::fs::symlink(real.path(), &link).unwrap();
    let proxy = BinaryProxy::start(&link, &["--poll-interval", "1h"]).await;
    assert_eq!(get(proxy.addr, "/new").await.status, 404);

    let changed = config(&[("a", &a.url())], "  - {name: all, prefix: /new, upstream: a}\n")
        .replace("admin: \"127.0.0.1:0\"", "admin: \"127.0.0.1:1\"");
    real.write_in_place(&changed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(proxy.addr, "/new").await.status, 404, "reloaded without a trigger");
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!(metric_sum(&metrics, "strangler_config_reloads_total", &[]), 0.0, "the start-up load is no reload");
    proxy.signal("HUP");
    proxy.wait_for_log("config reloaded").await;
    assert_eq!(get(proxy.addr, "/new").await.status, 200);
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!(metric_sum(&metrics, "strangler_config_reloads_total", &[("result", "success")]), 1.0, "{metrics}");
    assert!(proxy.log_text().contains("take effect only after a restart"));
    let config = get(proxy.admin, "/config").await.json();
    assert_eq!(config["hash"], content_hash(&changed), "the admin listener keeps serving on its old address");
}

#[tokio::test]
async fn both_schedulers_serve_every_request_and_reuse_upstream_connections() {
    for scheduler in ["per-core", "work-stealing"] {
        let up = TestUpstream::start("up", Behaviour::Echo).await;
        let dir = ConfigDir::new(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n"));
        let proxy = BinaryProxy::start(&dir.path(), &["--threads", "2", "--scheduler", scheduler]).await;
        let addr = proxy.addr;
        let clients: Vec<_> = (0..8)
            .map(|c| {
                tokio::spawn(async move {
                    let client = http1();
                    let mut ok = 0;
                    for i in 0..50 {
                        let r = req(http::Method::GET, addr, &format!("/c{c}/{i}")).body(Default::default()).unwrap();
                        ok += matches!(send(&client, r).await, Ok(r) if r.status == 200) as usize;
                    }
                    ok
                })
            })
            .collect();
        let mut ok = 0;
        for c in clients {
            ok += c.await.unwrap();
        }
        assert_eq!(ok, 400, "{scheduler}: every request answered");
        assert_eq!(up.hits(), 400);
        // Per core: at most one upstream connection per concurrent request
        // per worker. Work stealing: a connection may go back to another
        // thread's pool than the one that next needs it, so a few more.
        let opened = up.connections_accepted();
        let most = if scheduler == "per-core" { 16 } else { 100 };
        eprintln!("{scheduler}: {opened} upstream connections for 400 requests");
        assert!(opened <= most, "{scheduler}: {opened} upstream connections for 400 requests");
    }
}

#[tokio::test]
async fn exact_balance_spreads_keep_alive_connections_evenly_over_the_workers() {
    for balance in ["exact", "kernel"] {
        let up = TestUpstream::start("up", Behaviour::Echo).await;
        let dir = ConfigDir::new(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n"));
        let proxy = BinaryProxy::start(&dir.path(), &["--threads", "2", "--connection-balance", balance]).await;
        let per_worker = |text: &str| {
            [0, 1].map(|w| metric_sum(text, "strangler_worker_connections", &[("worker", &w.to_string())]))
        };
        // Both workers must be up (a loaded machine may start the second one
        // after the first already answers); only started ones take hand-offs.
        if balance == "exact" {
            let admin = proxy.admin;
            wait_for(Duration::from_secs(10), "both workers to take connections", || async move {
                let text = get(admin, "/metrics").await.text();
                text.contains("strangler_worker_connections{worker=\"1\"}")
            })
            .await;
        }
        // Twenty keep-alive connections, each answered once and kept open;
        // the split is read after each one.
        let mut streams = Vec::new();
        let mut widest = 0.0f64;
        for i in 1..=20 {
            let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
            stream.write_all(format!("GET /first/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let answer = read_answer(&mut stream).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{balance}: {answer}");
            streams.push(stream);
            let counts = per_worker(&get(proxy.admin, "/metrics").await.text());
            assert_eq!(counts[0] + counts[1], i as f64, "{balance}: {counts:?}");
            widest = widest.max((counts[0] - counts[1]).abs());
        }
        eprintln!("{balance}: the workers' connection counts were at most {widest} apart");
        if balance == "exact" {
            // A worker keeps a connection while it has at most one more than the other.
            assert!(widest <= 2.0, "exact balance let the workers drift {widest} connections apart");
        }
        // Every connection, handed over or not, serves its next request.
        for (i, stream) in streams.iter_mut().enumerate() {
            stream.write_all(format!("GET /second/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let answer = read_answer(stream).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{balance}: {answer}");
        }
        assert_eq!(up.hits(), 40, "{balance}");
    }
}
