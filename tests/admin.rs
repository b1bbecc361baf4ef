//! The admin listener: health, readiness, metrics, config and explain.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn admin_endpoints_answer() {
    let up = TestUpstream::start("users", Behaviour::Echo).await;
    let text =
        config(&[("users", &up.url())], "  - {name: users, prefix: /api/users, upstream: users, strip_prefix: true}\n");
    let proxy = TestProxy::start(&text).await;
    assert_eq!(get(proxy.admin, "/healthz").await.json()["status"], "ok");
    assert_eq!(get(proxy.admin, "/readyz").await.json()["ready"], true);

    let config = get(proxy.admin, "/config").await.json();
    assert_eq!(config["hash"], strangler::table::content_hash(&text));
    assert_eq!(config["config"]["routes"][0]["name"], "users");
    assert!(config["loaded_at"].as_str().unwrap().ends_with('Z'));

    let explained = get(proxy.admin, "/explain?method=GET&path=/api/users/7%3Fx%3D1").await.json();
    assert_eq!(explained["route"], "users");
    assert_eq!(explained["upstream"], "users");
    assert_eq!(explained["upstream_path"], "/7?x=1");
    assert_eq!(explained["targets"][0], up.url());
    let missing = get(proxy.admin, "/explain?path=/other").await.json();
    assert_eq!(missing["route"], serde_json::Value::Null);
    assert_eq!(missing["status"], 404);
    let refused = get(proxy.admin, "/explain?path=/api/users/..%2F..%2F..").await.json();
    assert_eq!(refused["status"], 400);
}

#[tokio::test]
async fn metrics_are_labelled_by_route_never_by_path() {
    let up = TestUpstream::start("users", Behaviour::Echo).await;
    let proxy =
        TestProxy::start(&config(&[("users", &up.url())], "  - {name: users, prefix: /api/users, upstream: users}\n"))
            .await;
    for i in 0..5 {
        get(proxy.addr, &format!("/api/users/{i}")).await;
    }
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert!(
        metrics.contains(
            "strangler_requests_total{method=\"GET\",route=\"users\",status_class=\"2xx\",upstream=\"users\"} 5"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("strangler_request_duration_seconds_count{route=\"users\",upstream=\"users\"} 5"));
    assert!(metrics.contains("strangler_requests_in_flight 0"));
    assert!(metrics.contains(&format!("strangler_config_info{{hash=\"{}\"}} 1", proxy.hash())));
    assert!(!metrics.contains("/api/users/"), "no raw path in labels");
}

#[tokio::test]
async fn config_shows_the_addresses_in_force_and_lists_what_waits_for_a_restart() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let first = config(&[("up", &up.url())], "  - {name: old, prefix: /old, upstream: up}\n");
    let proxy = TestProxy::start(&first).await;
    let shown = get(proxy.admin, "/config").await.json();
    assert_eq!(shown["pending_restart"], serde_json::json!({}));
    assert_eq!(shown["pending_hash"], serde_json::Value::Null);

    let moved = config(&[("up", &up.url())], "  - {name: new, prefix: /new, upstream: up}\n")
        .replace("listen: \"127.0.0.1:0\"", "listen: \"127.0.0.1:18080\"\nshadow: {max_inflight: 7}");
    proxy.config.rename_over(&moved);
    proxy.wait_for_hash(&strangler::table::content_hash(&moved)).await;
    assert_eq!(get(proxy.addr, "/new").await.status, 200, "the routes are applied");
    let shown = get(proxy.admin, "/config").await.json();
    assert_eq!(shown["hash"], strangler::table::content_hash(&moved), "{shown}");
    assert_eq!(shown["config"]["routes"][0]["name"], "new");
    assert_eq!(shown["config"]["listen"], "127.0.0.1:0", "the old listener still serves: {shown}");
    assert_eq!(shown["config"].get("shadow"), None, "{shown}");
    assert_eq!(shown["pending_hash"], strangler::table::content_hash(&moved));
    let pending = &shown["pending_restart"];
    assert_eq!(pending["listen"], serde_json::json!({"in_force": "127.0.0.1:0", "read": "127.0.0.1:18080"}));
    assert_eq!(pending["shadow"]["in_force"], serde_json::Value::Null);
    assert_eq!(pending["shadow"]["read"]["max_inflight"], 7);
    assert_eq!(pending.as_object().unwrap().len(), 2, "admin and tls did not change: {pending}");

    // Back to the addresses in force: nothing waits any more.
    let back = config(&[("up", &up.url())], "  - {name: newer, prefix: /newer, upstream: up}\n");
    proxy.config.rename_over(&back);
    proxy.wait_for_hash(&strangler::table::content_hash(&back)).await;
    let shown = get(proxy.admin, "/config").await.json();
    assert_eq!(shown["pending_restart"], serde_json::json!({}));
    assert_eq!(shown["pending_hash"], serde_json::Value::Null);
}

/// An admin error as the proxy shapes its own.
fn assert_json_error(response: &TestResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["fault"], "downstream", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn admin_errors_are_json_in_the_proxys_shape() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let proxy = TestProxy::start(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")).await;
    let missing = get(proxy.admin, "/explain?method=GET").await;
    assert_json_error(&missing, 400, "bad_request");
    assert!(missing.json()["message"].as_str().unwrap().contains("path"), "{}", missing.text());
    assert_json_error(&get(proxy.admin, "/shadow?min_match=lots").await, 400, "bad_request");
    let unknown = get(proxy.admin, "/nope").await;
    assert_json_error(&unknown, 404, "not_found");
    assert!(unknown.json()["message"].as_str().unwrap().contains("/nope"));
    let post = send(&http1(), req(http::Method::POST, proxy.admin, "/config").body(Default::default()).unwrap())
        .await
        .unwrap();
    assert_json_error(&post, 405, "method_not_allowed");
}

/// A split with a sticky header, and a route that strips its prefix.
fn explained_config(new: &TestUpstream, legacy: &TestUpstream) -> String {
    config(
        &[("new", &new.url()), ("legacy", &legacy.url())],
        "  - {name: api, prefix: /api, upstream: new, strip_prefix: true}\n  - name: canary\n    prefix: /canary\n    split: [{upstream: new, weight: 50}, {upstream: legacy, weight: 50}]\n    sticky: {header: X-User-Id}\n  - {name: all, prefix: /, upstream: legacy}\n",
    )
}

async fn explained(admin: std::net::SocketAddr, query: &str) -> serde_json::Value {
    let response = get(admin, &format!("/explain?{query}")).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[tokio::test]
async fn explain_refuses_what_the_proxy_refuses_and_names_the_path_the_upstream_gets() {
    let new = TestUpstream::start("new", Behaviour::Echo).await;
    let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
    let proxy = TestProxy::start(&explained_config(&new, &legacy)).await;

    // A Host no route could name: the proxy answers 400, and so does explain.
    let answer =
        raw(proxy.addr, b"GET /api/x HTTP/1.1\r\nHost: user@example.com\r\n\r\n", Duration::from_secs(2)).await;
    assert_eq!(raw_status(&answer), Some(400), "{answer}");
    let v = explained(proxy.admin, "path=/api/x&host=user%40example.com").await;
    assert_eq!((v["status"].clone(), v["route"].clone()), (400.into(), serde_json::Value::Null), "{v}");
    assert_eq!(v["error"]["error"], "bad_request", "{v}");
    // Two Hosts (the parameter and a header): 400 as the proxy answers.
    let v = explained(proxy.admin, "path=/api/x&host=a.example&header=Host:b.example").await;
    assert_eq!(v["status"], 400, "{v}");
    assert_eq!(v["error"]["message"], "malformed request: more than one Host header");
    // A path that escapes: 400 with the proxy's code.
    let v = explained(proxy.admin, "path=/api/..%2F..%2Fetc").await;
    assert_eq!((v["status"].clone(), v["error"]["error"].clone()), (400.into(), "bad_path".into()), "{v}");

    // What explain says the upstream gets is what it gets.
    for target in ["/api/users/7?x=1&y=%20", "/api/./a//b/../c", "/api", "/other/p?q", "/api/%7Euser"] {
        let v = explained(
            proxy.admin,
            &format!("path={}", target.replace('%', "%25").replace('?', "%3F").replace('&', "%26")),
        )
        .await;
        let r = get(proxy.addr, target).await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(v["upstream_path"], r.json()["uri"], "{target}: {v}");
        assert_eq!(v["upstream"], r.json()["upstream"], "{target}");
    }
}

#[tokio::test]
async fn explain_answers_where_a_sticky_key_lands_on_a_split() {
    let new = TestUpstream::start("new", Behaviour::Echo).await;
    let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
    let proxy = TestProxy::start(&explained_config(&new, &legacy)).await;
    let mut landed = std::collections::BTreeSet::new();
    for user in 1..=16 {
        let v = explained(proxy.admin, &format!("path=/canary/x&user={user}")).await;
        assert_eq!(v["sticky_key"]["key"], user.to_string(), "{v}");
        let by_header = explained(proxy.admin, &format!("path=/canary/x&header=X-User-Id:{user}")).await;
        assert_eq!(by_header["upstream"], v["upstream"]);
        let id = user.to_string();
        let r = call(proxy.addr, http::Method::GET, "/canary/x", &[("x-user-id", id.as_str())], None).await;
        assert_eq!(v["upstream"], r.json()["upstream"], "user {user}: {v}");
        landed.insert(r.json()["upstream"].as_str().unwrap().to_string());
    }
    assert_eq!(landed.len(), 2, "16 users all landed on one member of a 50/50 split");
    let v = explained(proxy.admin, "path=/canary/x").await;
    assert_eq!(v["upstream"], serde_json::Value::Null, "no key: chosen at random");
    assert_eq!(v["health"], "live");
    assert_eq!(v["split"][0]["available"], true);
}
