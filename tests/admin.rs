//! The admin listener: health, readiness, metrics, config and explain.

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
