//! Moving traffic safely: splits, sticky assignment, fallback, retries,
//! health checks, outlier ejection, concurrency caps and rate limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::Full;
use strangler::table::content_hash;

use crate::support::*;

fn upstreams_yaml(list: &[(&str, Vec<String>, &str)]) -> String {
    let mut text = String::from("listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\nupstreams:\n");
    for (name, targets, extra) in list {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        text.push_str(&format!(
            "  {name}:\n    targets: [{}]\n    connect_timeout: 300ms\n    timeout: 2s\n",
            targets.join(", ")
        ));
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            text.push_str(&format!("    {}\n", line.trim()));
        }
    }
    text.push_str("routes:\n");
    text
}

/// GETs `n` times with `concurrency` workers; returns every response.
async fn many(
    addr: SocketAddr,
    path: &str,
    n: usize,
    concurrency: usize,
    header: Option<(&'static str, String)>,
) -> Vec<TestResponse> {
    let client = http1();
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let path = path.to_string();
        let header = header.clone();
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in (w..n).step_by(concurrency) {
                let mut builder = req(Method::GET, addr, &path);
                if let Some((k, v)) = &header {
                    builder = builder.header(*k, v.as_str());
                }
                out.push(send(&client, builder.body(Full::default()).unwrap()).await.unwrap());
            }
            out
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

fn count_by_upstream(responses: &[TestResponse]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in responses {
        *counts.entry(r.header("x-strangler-upstream").unwrap_or("-").to_string()).or_default() += 1;
    }
    counts
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn split_shares_hold_within_two_points_over_ten_thousand_requests() {
    let new = TestUpstream::start("new", Behaviour::Echo).await;
    let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
    let text = upstreams_yaml(&[("new", vec![new.url()], ""), ("legacy", vec![legacy.url()], "")])
        + "  - name: projects\n    prefix: /api/projects\n    split:\n      - { upstream: new, weight: 10 }\n      - { upstream: legacy, weight: 90 }\n";
    let proxy = TestProxy::start(&text).await;
    let responses = many(proxy.addr, "/api/projects", 10_000, 16, None).await;
    assert!(responses.iter().all(|r| r.status == 200));
    let counts = count_by_upstream(&responses);
    let share = counts["new"] as f64 / 10_000.0;
    assert!((share - 0.10).abs() <= 0.02, "new got {:.2}%", share * 100.0);
    assert_eq!(counts["new"], new.hits(), "the header names the upstream that answered");
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!(
        metric(&metrics, "strangler_split_decisions_total{route=\"projects\",upstream=\"new\"}"),
        counts["new"] as f64
    );
    let explain = get(proxy.admin, "/explain?path=/api/projects/1").await.json();
    assert_eq!(explain["split"][0]["weight"], 10);
    assert_eq!(explain["split"][1]["percent"], 90.0);
    assert_eq!(explain["upstreams"][0]["targets"][0]["healthy"], true);
}

#[tokio::test]
async fn sticky_keys_only_move_toward_the_upstream_that_gains() {
    let new = TestUpstream::start("new", Behaviour::Echo).await;
    let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
    let with_weights = |w: u32| {
        upstreams_yaml(&[("new", vec![new.url()], ""), ("legacy", vec![legacy.url()], "")])
            + &format!("  - name: projects\n    prefix: /api/projects\n    sticky: {{ header: X-User-Id }}\n    split:\n      - {{ upstream: new, weight: {w} }}\n      - {{ upstream: legacy, weight: {} }}\n", 100 - w)
    };
    let proxy = TestProxy::start(&with_weights(0)).await;
    let client = http1();
    let mut placement: HashMap<u32, String> = HashMap::new();
    for weight in [0u32, 10, 50, 100] {
        let text = with_weights(weight);
        proxy.config.write_in_place(&text);
        proxy.wait_for_hash(&content_hash(&text)).await;
        let mut on_new = 0;
        for user in 0..400u32 {
            let mut seen = None;
            for _ in 0..2 {
                let r = send(
                    &client,
                    req(Method::GET, proxy.addr, "/api/projects")
                        .header("x-user-id", user.to_string())
                        .body(Full::default())
                        .unwrap(),
                )
                .await
                .unwrap();
                let up = r.header("x-strangler-upstream").unwrap().to_string();
                assert!(
                    seen.as_ref().is_none_or(|s| s == &up),
                    "user {user} moved between two requests at weight {weight}"
                );
                seen = Some(up);
            }
            let up = seen.unwrap();
            if let Some(before) = placement.get(&user) {
                assert!(
                    !(before == "new" && up == "legacy"),
                    "user {user} went back to legacy when new grew to {weight}"
                );
            }
            on_new += (up == "new") as u32;
            placement.insert(user, up);
        }
        let share = on_new as f64 / 400.0 * 100.0;
        assert!((share - weight as f64).abs() <= 6.0, "weight {weight}: {share:.1}% of users on new");
    }
}

#[tokio::test]
async fn a_dying_new_service_loses_no_request_thanks_to_the_fallback() {
    let new = TestUpstream::start("new", Behaviour::Echo).await;
    let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
    let text = upstreams_yaml(&[("new", vec![new.url()], ""), ("legacy", vec![legacy.url()], "")])
        + "  - name: users\n    prefix: /api/users\n    fallback: legacy\n    split:\n      - { upstream: new, weight: 50 }\n      - { upstream: legacy, weight: 50 }\n";
    let proxy = TestProxy::start(&text).await;
    let addr = proxy.addr;
    let load = tokio::spawn(async move { many(addr, "/api/users/1", 3000, 8, None).await });
    wait_for(Duration::from_secs(10), "the load to reach the new service", || async { new.hits() > 50 }).await;
    new.stop();
    let responses = load.await.unwrap();
    let failed: Vec<_> = responses.iter().filter(|r| r.status != 200).collect();
    assert!(failed.is_empty(), "{} of {} failed, first: {:?}", failed.len(), responses.len(), failed.first());
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert!(metric(&metrics, "strangler_fallbacks_total{route=\"users\"}") >= 1.0, "{metrics}");
    assert!(new.hits() > 0 && legacy.hits() > 0);
}

#[tokio::test]
async fn gateway_errors_fall_back_for_idempotent_methods_only() {
    let new = TestUpstream::start("new", Behaviour::Status(503)).await;
    let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
    let text = upstreams_yaml(&[("new", vec![new.url()], ""), ("legacy", vec![legacy.url()], "")])
        + "  - {name: strict, prefix: /strict, upstream: new, fallback: legacy}\n  - {name: posts, prefix: /posts, upstream: new, fallback: legacy, fallback_methods: [POST]}\n";
    let proxy = TestProxy::start(&text).await;
    let client = http1();
    let put =
        send(&client, req(Method::PUT, proxy.addr, "/strict/1").body(Full::from("{\"a\":1}")).unwrap()).await.unwrap();
    assert_eq!(put.status, 200);
    assert_eq!(put.header("x-strangler-upstream"), Some("legacy"));
    assert_eq!(put.json()["body_length"], 7, "the buffered body is replayed whole");
    let post = send(&client, req(Method::POST, proxy.addr, "/strict/1").body(Full::from("x")).unwrap()).await.unwrap();
    assert_eq!(post.status, 503, "POST is not idempotent: the upstream's answer stands");
    assert_eq!(post.header("x-strangler-upstream"), Some("new"));
    let allowed =
        send(&client, req(Method::POST, proxy.addr, "/posts").body(Full::from("payload")).unwrap()).await.unwrap();
    assert_eq!(allowed.status, 200, "fallback_methods lets POST fall back");
    assert_eq!(allowed.json()["body_length"], 7);
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let failing = TestUpstream::start("failing", Behaviour::Status(503)).await;
    // Ejection off, so that every request reaches the failing target.
    let text =
        upstreams_yaml(&[("svc", vec![failing.url()], "retries: 2\noutlier: { consecutive_failures: 1000000 }")])
            + "  - {name: all, prefix: /, upstream: svc}\n";
    let proxy = TestProxy::start(&text).await;
    let responses = many(proxy.addr, "/x", 500, 4, None).await;
    assert!(responses.iter().all(|r| r.status == 503));
    let hits = failing.hits();
    assert!(hits > 500, "some retries happened ({hits})");
    assert!(hits as f64 <= 500.0 * 1.2 + 1.0, "{hits} attempts for 500 requests: retries exceeded 20%");
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!(metric(&metrics, "strangler_retries_total{upstream=\"svc\"}") as usize, hits - 500);
}

#[tokio::test]
async fn retries_move_to_another_target_and_ejection_takes_the_dead_one_out() {
    let live = TestUpstream::start("live", Behaviour::Echo).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = upstreams_yaml(&[(
        "svc",
        vec![format!("http://{dead}"), live.url()],
        "retries: 2\noutlier: { consecutive_failures: 2, base_ejection: 30s }",
    )]) + "  - {name: all, prefix: /, upstream: svc}\n";
    let proxy = TestProxy::start(&text).await;
    // Warm the budget with successful traffic first (retries are at most 20% of requests).
    let responses = many(proxy.addr, "/x", 200, 1, None).await;
    let failed = responses.iter().filter(|r| r.status != 200).count();
    assert!(failed <= 2, "{failed} failed");
    let upstreams = get(proxy.admin, "/upstreams").await.json();
    let targets = &upstreams["upstreams"][0]["targets"];
    assert_eq!(targets[0]["ejected"], true, "{upstreams}");
    assert_eq!(targets[1]["ejected"], false);
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert!(metric(&metrics, "strangler_ejections_total{upstream=\"svc\"}") >= 1.0);
}

#[tokio::test]
async fn outlier_detection_never_ejects_the_last_available_target() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = upstreams_yaml(&[(
        "svc",
        vec![format!("http://{dead}")],
        "outlier: { consecutive_failures: 2, base_ejection: 30s }",
    )]) + "  - {name: all, prefix: /, upstream: svc}\n";
    let proxy = TestProxy::start(&text).await;
    for _ in 0..10 {
        let r = get(proxy.addr, "/x").await;
        // Each request is tried (and fails) rather than refused as "no healthy target".
        assert_eq!(r.json()["error"], "upstream_unreachable", "{}", r.text());
    }
    let upstreams = get(proxy.admin, "/upstreams").await.json();
    assert_eq!(upstreams["upstreams"][0]["targets"][0]["ejected"], false, "{upstreams}");
}

#[tokio::test]
async fn health_checks_take_targets_out_and_back() {
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let b = TestUpstream::start("b", Behaviour::Echo).await;
    let text = upstreams_yaml(&[(
        "svc",
        vec![a.url(), b.url()],
        "health_check: { path: /healthz, interval: 100ms, timeout: 100ms, unhealthy_after: 2, healthy_after: 2 }",
    )]) + "  - {name: all, prefix: /, upstream: svc}\n";
    let proxy = TestProxy::start(&text).await;
    let healthy = |target: &TestUpstream, verdict: u8| {
        format!("strangler_upstream_target_healthy{{target=\"{}\",upstream=\"svc\"}} {verdict}", target.url())
    };
    let admin = proxy.admin;
    let metrics_show = |series: String| async move { get(admin, "/metrics").await.text().contains(&series) };
    a.set(Behaviour::Status(500));
    wait_for(Duration::from_secs(5), "a to be marked unhealthy", || metrics_show(healthy(&a, 0))).await;
    let hits_before = a.hits();
    let responses = many(proxy.addr, "/x", 40, 2, None).await;
    assert!(responses.iter().all(|r| r.status == 200 && r.json()["upstream"] == "b"));
    assert!(a.hits() - hits_before <= 12, "only health checks reach the unhealthy target");

    b.set(Behaviour::Status(500));
    wait_for(Duration::from_secs(5), "b to be marked unhealthy", || metrics_show(healthy(&b, 0))).await;
    let started = Instant::now();
    let r = get(proxy.addr, "/x").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_target");
    // Answered by the proxy itself, not after an attempt's 2 s timeout.
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");

    a.set(Behaviour::Echo);
    wait_for(Duration::from_secs(5), "a to be marked healthy again", || metrics_show(healthy(&a, 1))).await;
    assert_eq!(get(proxy.addr, "/x").await.json()["upstream"], "a", "a recovered target takes traffic again");
}

#[tokio::test]
async fn max_concurrent_answers_503_at_once_instead_of_queueing() {
    let slow = TestUpstream::start("slow", Behaviour::Slow(Duration::from_millis(800))).await;
    let text = upstreams_yaml(&[("svc", vec![slow.url()], "max_concurrent: 2")])
        + "  - {name: all, prefix: /, upstream: svc}\n";
    let proxy = TestProxy::start(&text).await;
    let started = Instant::now();
    let addr = proxy.addr;
    let handles: Vec<_> =
        (0..10).map(|_| tokio::spawn(async move { (get(addr, "/x").await, started.elapsed()) })).collect();
    let mut ok = 0;
    for h in handles {
        let (r, took) = h.await.unwrap();
        if r.status == 200 {
            ok += 1;
        } else {
            assert_eq!(r.status, 503);
            assert_eq!(r.json()["error"], "upstream_overloaded");
            assert!(took < Duration::from_millis(500), "a rejection waited {took:?}");
        }
    }
    assert_eq!(ok, 2);
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!(metric(&metrics, "strangler_breaker_rejections_total{upstream=\"svc\"}"), 8.0);
}

#[tokio::test]
async fn rate_limit_holds_its_rate_within_ten_percent() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let text = upstreams_yaml(&[("svc", vec![up.url()], "")])
        + "  - name: limited\n    prefix: /\n    upstream: svc\n    rate_limit: { rps: 100, burst: 20, key: \"header:X-Client\" }\n";
    let proxy = TestProxy::start(&text).await;
    let client = http1();
    let started = Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(3) {
        let r =
            send(&client, req(Method::GET, proxy.addr, "/x").header("x-client", "a").body(Full::default()).unwrap())
                .await
                .unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert!(r.header("retry-after").is_some());
                assert_eq!(r.json()["error"], "rate_limited");
            }
            s => panic!("unexpected {s}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 20.0 + 100.0 * elapsed;
    assert!((ok as f64 - expected).abs() <= expected * 0.1, "{ok} passed in {elapsed:.2}s, expected ~{expected:.0}");
    assert!(limited > 0);
    let other =
        send(&client, req(Method::GET, proxy.addr, "/x").header("x-client", "b").body(Full::default()).unwrap())
            .await
            .unwrap();
    assert_eq!(other.status, 200, "another key has its own bucket");
}

/// The status of a GET from 127.0.0.1 that says, in `X-Forwarded-For`, it
/// was forwarded for `chain`.
async fn status_forwarded_for(proxy: &TestProxy, chain: &str) -> u16 {
    call(proxy.addr, Method::GET, "/x", &[("x-forwarded-for", chain)], None).await.status.as_u16()
}

/// A route limited to one request per client (no refill within a test).
fn one_request_per_client(up: &TestUpstream, top: &str) -> String {
    upstreams_yaml(&[("svc", vec![up.url()], "")]).replace("upstreams:\n", &format!("{top}upstreams:\n"))
        + "  - name: limited\n    prefix: /\n    upstream: svc\n    rate_limit: { rps: 0.01, burst: 1, key: client_ip }\n"
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_get_a_bucket_each_and_a_spoofed_entry_changes_nothing() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let proxy = TestProxy::start(&one_request_per_client(&up, "trusted_proxies: [\"127.0.0.0/8\"]\n")).await;
    assert_eq!(status_forwarded_for(&proxy, "203.0.113.1").await, 200);
    assert_eq!(status_forwarded_for(&proxy, "203.0.113.2").await, 200, "another client behind the same proxy");
    assert_eq!(status_forwarded_for(&proxy, "203.0.113.1").await, 429, "the first client's bucket is empty");
    assert_eq!(
        status_forwarded_for(&proxy, "198.51.100.77, 203.0.113.1").await,
        429,
        "an entry the client wrote itself, left of what the trusted proxy saw, is not believed"
    );
    assert_eq!(status_forwarded_for(&proxy, "203.0.113.3, 127.0.0.9").await, 200, "trusted hops are passed over");
    assert_eq!(status_forwarded_for(&proxy, "203.0.113.3").await, 429, "and it is the same client");
}

#[tokio::test]
async fn without_trusted_proxies_every_client_behind_a_proxy_shares_its_bucket_until_a_reload_trusts_it() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let proxy = TestProxy::start(&one_request_per_client(&up, "")).await;
    assert_eq!(status_forwarded_for(&proxy, "203.0.113.1").await, 200);
    assert_eq!(status_forwarded_for(&proxy, "203.0.113.2").await, 429, "X-Forwarded-For is not believed");
    let trusting = one_request_per_client(&up, "trusted_proxies: [\"127.0.0.1\"]\n");
    proxy.config.write_in_place(&trusting);
    proxy.wait_for_hash(&content_hash(&trusting)).await;
    assert_eq!(status_forwarded_for(&proxy, "203.0.113.2").await, 200, "believed from the reload on");
}

#[tokio::test]
async fn least_request_prefers_the_idle_target() {
    let fast = TestUpstream::start("fast", Behaviour::Echo).await;
    let slow = TestUpstream::start("slow", Behaviour::Slow(Duration::from_millis(200))).await;
    let text = upstreams_yaml(&[("svc", vec![fast.url(), slow.url()], "load_balancing: least_request")])
        + "  - {name: all, prefix: /, upstream: svc}\n";
    let proxy = TestProxy::start(&text).await;
    let responses = many(proxy.addr, "/x", 200, 8, None).await;
    assert!(responses.iter().all(|r| r.status == 200));
    assert!(fast.hits() > 3 * slow.hits(), "fast {} vs slow {}", fast.hits(), slow.hits());
}

#[tokio::test]
async fn upstream_header_can_be_renamed_or_switched_off() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let off = upstreams_yaml(&[("svc", vec![up.url()], "")]).replace("routes:\n", "upstream_header: \"\"\nroutes:\n")
        + "  - {name: all, prefix: /, upstream: svc}\n";
    let proxy = TestProxy::start(&off).await;
    assert!(get(proxy.addr, "/").await.header("x-strangler-upstream").is_none());
    let renamed = off.replace("upstream_header: \"\"", "upstream_header: X-Served-By");
    proxy.config.write_in_place(&renamed);
    proxy.wait_for_hash(&content_hash(&renamed)).await;
    assert_eq!(get(proxy.addr, "/").await.header("x-served-by"), Some("svc"));
}

#[tokio::test]
async fn a_reload_does_not_refill_the_rate_limit_buckets() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let text = upstreams_yaml(&[("svc", vec![up.url()], "")])
        + "  - name: limited\n    prefix: /\n    upstream: svc\n    rate_limit: { rps: 0.5, burst: 2 }\n";
    let proxy = TestProxy::start(&text).await;
    assert_eq!(get(proxy.addr, "/").await.status, 200);
    assert_eq!(get(proxy.addr, "/").await.status, 200);
    assert_eq!(get(proxy.addr, "/").await.status, 429);
    let edited = text.clone() + "# an unrelated edit\n";
    proxy.config.write_in_place(&edited);
    proxy.wait_for_hash(&content_hash(&edited)).await;
    assert_eq!(get(proxy.addr, "/").await.status, 429, "the reload handed out a fresh burst");
}

#[tokio::test]
async fn a_streaming_answer_holds_its_concurrency_slot_until_it_ends() {
    let big = TestUpstream::start("big", Behaviour::Download(64 * 1024 * 1024)).await;
    let text = upstreams_yaml(&[("svc", vec![big.url()], "max_concurrent: 1")])
        + "  - {name: all, prefix: /, upstream: svc}\n";
    let proxy = TestProxy::start(&text).await;
    let client = http1();
    // Take the response head, leave the body unread.
    let held = client.request(req(Method::GET, proxy.addr, "/big").body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(held.status(), 200);
    let upstreams = get(proxy.admin, "/upstreams").await.json();
    assert_eq!(upstreams["upstreams"][0]["in_flight"], 1, "{upstreams}");
    let second = get(proxy.addr, "/big-too").await;
    assert_eq!(second.status, 503, "the slot is still taken by the unfinished body");
    drop(held);
    let mut freed = false;
    for _ in 0..50 {
        if get(proxy.admin, "/upstreams").await.json()["upstreams"][0]["in_flight"] == 0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "dropping the body releases the slot");
}
