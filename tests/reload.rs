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
    assert!(metrics.contains("strangler_config_reloads_total{result=\"success\"}"), "{metrics}");
}

#[tokio::test]
async fn an_invalid_version_never_replaces_the_valid_one() {
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let b = TestUpstream::start("b", Behaviour::Echo).await;
    let proxy = TestProxy::start(&routed_to(&a, &b, "a")).await;
    let good = proxy.hash();
    for bad in [
        routed_to(&a, &b, "nope"),
        "listen: [unclosed\n".to_string(),
        routed_to(&a, &b, "b").replace("routes:", "surprise: 1\nroutes:"),
    ] {
        proxy.config.write_in_place(&bad);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(proxy.hash(), good, "an invalid config was applied");
        assert_eq!(get(proxy.addr, "/").await.json()["upstream"], "a");
    }
    let metrics = get(proxy.admin, "/metrics").await.text();
    let failures: u64 = metrics
        .lines()
        .find(|l| l.starts_with("strangler_config_reloads_total{result=\"failure\"}"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap();
    assert!(failures >= 3, "{metrics}");
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
