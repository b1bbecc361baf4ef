//! Hot reload: in-place writes, renames and Kubernetes `..data` swaps are
//! applied without failing a request; invalid versions are rejected.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strangler::table::content_hash;

use crate::support::*;

fn routed_to(a: &TestUpstream, b: &TestUpstream, target: &str) -> String {
    config(&[("a", &a.url()), ("b", &b.url())], &format!("  - {{name: all, prefix: /, upstream: {target}}}\n"))
}

/// Sends requests in a loop until stopped; counts failures.
fn background_load(
    addr: std::net::SocketAddr,
) -> (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let client = http1();
        while !s.load(Ordering::SeqCst) {
            match send(&client, req(http::Method::GET, addr, "/load").body(Default::default()).unwrap()).await {
                Ok(r) if r.status == 200 => o.fetch_add(1, Ordering::SeqCst),
                _ => f.fetch_add(1, Ordering::SeqCst),
            };
        }
    });
    (stop, ok, failed, task)
}

#[tokio::test]
async fn every_kind_of_file_update_is_applied_without_failed_requests() {
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let b = TestUpstream::start("b", Behaviour::Echo).await;
    let proxy = TestProxy::start(&routed_to(&a, &b, "a")).await;
    let (stop, ok, failed, task) = background_load(proxy.addr);

    let to_b = routed_to(&a, &b, "b");
    proxy.config.write_in_place(&to_b);
    proxy.wait_for_hash(&content_hash(&to_b)).await;
    assert_eq!(get(proxy.addr, "/").await.json()["upstream"], "b");

    let to_a = routed_to(&a, &b, "a") + "# renamed over\n";
    proxy.config.rename_over(&to_a);
    proxy.wait_for_hash(&content_hash(&to_a)).await;
    assert_eq!(get(proxy.addr, "/").await.json()["upstream"], "a");

    for version in 1..=3 {
        let text = routed_to(&a, &b, if version % 2 == 1 { "b" } else { "a" }) + &format!("# kubernetes v{version}\n");
        proxy.config.kubernetes_swap(&text, version);
        proxy.wait_for_hash(&content_hash(&text)).await;
    }
    assert_eq!(get(proxy.addr, "/").await.json()["upstream"], "b");

    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during reloads");
    assert!(ok.load(Ordering::SeqCst) > 10);
    let metrics = get(proxy.admin, "/metrics").await.text();
    // One write in place, one rename, three swaps: one success each, none at start-up.
    assert_eq!(reloads(&metrics, "success"), 5.0, "{metrics}");
}

/// `strangler_config_reloads_total` for one result.
fn reloads(metrics: &str, result: &str) -> f64 {
    metric_sum(metrics, "strangler_config_reloads_total", &[("result", result)])
}

/// Writes other files in `dir` (a log, build output) for `window`, as a
/// busy config directory sees: events the watcher hears, none for the config.
async fn write_other_files(dir: &std::path::Path, window: Duration) {
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < window {
        std::fs::write(dir.join("access.log"), format!("line {i}\n")).unwrap();
        std::fs::write(dir.join(format!("build-{}.o", i % 4)), [i as u8; 64]).unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_bad_file_is_rejected_and_logged_once_however_often_its_directory_changes_until_sighup() {
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let b = TestUpstream::start("b", Behaviour::Echo).await;
    let dir = ConfigDir::new(&routed_to(&a, &b, "a"));
    let proxy = BinaryProxy::start(&dir.path(), &["--poll-interval", "100ms", "--threads", "1"]).await;
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert!(metrics.contains("strangler_config_reloads_total{result=\"success\"} 0"), "{metrics}");
    assert!(metrics.contains("strangler_config_reloads_total{result=\"failure\"} 0"), "{metrics}");

    dir.rename_over(&routed_to(&a, &b, "nope"));
    wait_for(Duration::from_secs(10), "the bad file to be rejected", || async {
        reloads(&get(proxy.admin, "/metrics").await.text(), "failure") >= 1.0
    })
    .await;
    // ~20 polls and ~100 directory events while the bad file stays in place.
    write_other_files(dir.dir.path(), Duration::from_secs(2)).await;
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!(reloads(&metrics, "failure"), 1.0, "the same bad bytes were rejected again");
    assert_eq!(reloads(&metrics, "success"), 0.0);
    assert_eq!(proxy.log_text().matches("config rejected").count(), 1, "{}", proxy.log_text());
    assert_eq!(get(proxy.addr, "/").await.json()["upstream"], "a");
    // SIGHUP asks for another try: the same bytes are parsed (and refused) again.
    proxy.signal("HUP");
    wait_for(Duration::from_secs(10), "SIGHUP to retry the rejected file", || async {
        reloads(&get(proxy.admin, "/metrics").await.text(), "failure") == 2.0
    })
    .await;

    let fixed = routed_to(&a, &b, "b");
    dir.rename_over(&fixed);
    wait_for(Duration::from_secs(10), "the fixed file to be applied", || async {
        get(proxy.admin, "/config").await.json()["hash"] == content_hash(&fixed)
    })
    .await;
    write_other_files(dir.dir.path(), Duration::from_millis(600)).await;
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!((reloads(&metrics, "success"), reloads(&metrics, "failure")), (1.0, 2.0), "{metrics}");
    assert_eq!(proxy.log_text().matches("config reloaded").count(), 1);
    assert_eq!(get(proxy.addr, "/").await.json()["upstream"], "b");
}

#[tokio::test]
async fn an_invalid_version_never_replaces_the_valid_one() {
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let b = TestUpstream::start("b", Behaviour::Echo).await;
    let proxy = TestProxy::start(&routed_to(&a, &b, "a")).await;
    let good = proxy.hash();
    for (i, bad) in [
        routed_to(&a, &b, "nope"),
        "listen: [unclosed\n".to_string(),
        routed_to(&a, &b, "b").replace("routes:", "surprise: 1\nroutes:"),
    ]
    .into_iter()
    .enumerate()
    {
        proxy.config.rename_over(&bad);
        wait_for(Duration::from_secs(10), "the invalid version to be rejected", || async {
            reloads(&get(proxy.admin, "/metrics").await.text(), "failure") == (i + 1) as f64
        })
        .await;
        assert_eq!(proxy.hash(), good, "an invalid config was applied");
        assert_eq!(get(proxy.addr, "/").await.json()["upstream"], "a");
    }
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!((reloads(&metrics, "failure"), reloads(&metrics, "success")), (3.0, 0.0), "{metrics}");
    // And a valid version after them is taken.
    let fixed = routed_to(&a, &b, "b");
    proxy.config.write_in_place(&fixed);
    proxy.wait_for_hash(&content_hash(&fixed)).await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_table_they_started_with() {
    let slow = TestUpstream::start("a", Behaviour::Slow(Duration::from_millis(800))).await;
    let b = TestUpstream::start("b", Behaviour::Echo).await;
    let proxy = TestProxy::start(&routed_to(&slow, &b, "a")).await;
    let addr = proxy.addr;
    let pending = tokio::spawn(async move { get(addr, "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let to_b = routed_to(&slow, &b, "b");
    proxy.config.write_in_place(&to_b);
    proxy.wait_for_hash(&content_hash(&to_b)).await;
    let r = pending.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "a");
    assert_eq!(get(proxy.addr, "/").await.json()["upstream"], "b");
}

/// The metrics page without the reload counters (which a rejected version
/// moves) and the process's own figures (CPU, memory: they move by themselves).
fn metrics_but_reloads(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains("strangler_config_reloads_total") && !l.starts_with("process_"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_rejected_version_leaves_the_metrics_as_they_were_apart_from_the_reload_counters() {
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let b = TestUpstream::start("b", Behaviour::Echo).await;
    let proxy = TestProxy::start(&routed_to(&a, &b, "a")).await;
    assert_eq!(get(proxy.addr, "/x").await.status, 200);
    let before = get(proxy.admin, "/metrics").await.text();
    // A new upstream, then a route naming one that does not exist: the
    // version is refused after its upstreams were read.
    let bad = config(
        &[("a", &a.url()), ("b", &b.url()), ("fresh", "http://127.0.0.1:9")],
        "  - {name: all, prefix: /, upstream: nope}\n",
    );
    proxy.config.write_in_place(&bad);
    wait_for(Duration::from_secs(10), "the rejection to be counted", || async {
        let text = get(proxy.admin, "/metrics").await.text();
        metric_sum(&text, "strangler_config_reloads_total", &[("result", "failure")]) >= 1.0
    })
    .await;
    let after = get(proxy.admin, "/metrics").await.text();
    assert_eq!(metrics_but_reloads(&after), metrics_but_reloads(&before));
    assert!(!after.contains("fresh"), "{after}");
}

#[tokio::test]
async fn removing_an_upstream_removes_its_series_and_closes_its_connections() {
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let b = TestUpstream::start("b", Behaviour::Echo).await;
    let both = config(
        &[("a", &a.url()), ("b", &b.url())],
        "  - {name: first, prefix: /a, upstream: a}\n  - {name: second, prefix: /b, upstream: b}\n",
    );
    let proxy = TestProxy::start(&both).await;
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/b/x").await.status, 200);
        assert_eq!(get(proxy.addr, "/a/x").await.status, 200);
    }
    let b_port = b.addr.port();
    assert!(connections_to(b_port) >= 1, "the proxy keeps an idle connection to b");
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert!(metrics.contains("upstream=\"b\"") && metrics.contains("route=\"second\""), "{metrics}");

    let only_a = config(&[("a", &a.url())], "  - {name: first, prefix: /a, upstream: a}\n");
    proxy.config.write_in_place(&only_a);
    proxy.wait_for_hash(&content_hash(&only_a)).await;
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert!(!metrics.contains("upstream=\"b\""), "series of the removed upstream remain:\n{metrics}");
    assert!(!metrics.contains("route=\"second\""), "series of the removed route remain:\n{metrics}");
    assert!(metrics.contains("upstream=\"a\""), "{metrics}");
    wait_for(Duration::from_secs(5), "the idle connections to b to close", || async { connections_to(b_port) == 0 })
        .await;
    // The kept upstream's pool is still in use.
    assert_eq!(get(proxy.addr, "/a/x").await.status, 200);
}

#[tokio::test]
async fn an_answer_still_streaming_when_its_upstream_is_removed_does_not_leave_its_connection_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let b = TestUpstream::start("b", Behaviour::Download(16 << 20)).await;
    let both = config(
        &[("a", &a.url()), ("b", &b.url())],
        "  - {name: first, prefix: /a, upstream: a}\n  - {name: second, prefix: /b, upstream: b}\n",
    );
    let proxy = TestProxy::start(&both).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"GET /b/big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut first = vec![0; 64 * 1024];
    let n = client.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"), "the download started");

    let only_a = config(&[("a", &a.url())], "  - {name: first, prefix: /a, upstream: a}\n");
    proxy.config.write_in_place(&only_a);
    proxy.wait_for_hash(&content_hash(&only_a)).await;
    // The answer ends after the reload, and its connection is given back.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.len() as u64 + n as u64 > 16 << 20, "the whole download arrived");
    wait_for(Duration::from_secs(5), "the connection to the removed upstream to close", || async {
        connections_to(b.addr.port()) == 0
    })
    .await;
}
