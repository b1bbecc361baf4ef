//! Prefix routing as `routes.yaml` documents it.

use crate::support::*;
use http::Method;
use http_body_util::Full;

async fn two_upstreams() -> (TestUpstream, TestUpstream) {
    (TestUpstream::start("legacy", Behaviour::Echo).await, TestUpstream::start("users", Behaviour::Echo).await)
}

fn routes(legacy: &TestUpstream, users: &TestUpstream, routes: &str) -> String {
    config(&[("legacy", &legacy.url()), ("users", &users.url())], routes)
}

#[tokio::test]
async fn prefix_matches_whole_segments_only() {
    let (legacy, users) = two_upstreams().await;
    let proxy = TestProxy::start(&routes(
        &legacy,
        &users,
        "  - {name: users, prefix: /api/users, upstream: users}\n  - {name: legacy, prefix: /, upstream: legacy}\n",
    ))
    .await;
    for (path, want) in [
        ("/api/users", "users"),
        ("/api/users/", "users"),
        ("/api/users/7", "users"),
        ("/api/users?x=1", "users"),
        ("/api/usersettings", "legacy"),
        ("/api/user", "legacy"),
        ("/", "legacy"),
    ] {
        let r = get(proxy.addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["upstream"], want, "{path}");
    }
    let r = get(proxy.addr, "/api/users?x=1&y=%20").await;
    assert_eq!(r.json()["uri"], "/api/users?x=1&y=%20", "the query passes unchanged");
}

#[tokio::test]
async fn order_in_file_never_matters() {
    let (legacy, users) = two_upstreams().await;
    let a = routes(
        &legacy,
        &users,
        "  - {name: legacy, prefix: /, upstream: legacy}\n  - {name: users, prefix: /api/users, upstream: users}\n",
    );
    let proxy = TestProxy::start(&a).await;
    assert_eq!(get(proxy.addr, "/api/users/1").await.json()["upstream"], "users");
}

#[tokio::test]
async fn wildcard_segment_and_literal_precedence() {
    let (legacy, users) = two_upstreams().await;
    let proxy = TestProxy::start(&routes(
        &legacy,
        &users,
        "  - {name: comments, prefix: /api/tasks/*/comments, upstream: users}\n  - {name: pinned, prefix: /api/tasks/pinned/comments, upstream: legacy}\n  - {name: legacy, prefix: /, upstream: legacy}\n",
    ))
    .await;
    assert_eq!(get(proxy.addr, "/api/tasks/7/comments").await.json()["upstream"], "users");
    assert_eq!(get(proxy.addr, "/api/tasks/7/comments/3").await.json()["upstream"], "users");
    assert_eq!(get(proxy.addr, "/api/tasks/pinned/comments").await.json()["upstream"], "legacy");
    assert_eq!(get(proxy.addr, "/api/tasks/7").await.json()["upstream"], "legacy");
}

#[tokio::test]
async fn host_and_methods_break_ties() {
    let (legacy, users) = two_upstreams().await;
    let proxy = TestProxy::start(&routes(
        &legacy,
        &users,
        "  - {name: reads, prefix: /api/users, upstream: users, methods: [GET, HEAD]}\n  - {name: api-host, prefix: /api, upstream: users, host: api.example.com}\n  - {name: legacy, prefix: /, upstream: legacy}\n",
    ))
    .await;
    let client = http1();
    let post = send(&client, req(Method::POST, proxy.addr, "/api/users").body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(post.json()["upstream"], "legacy", "POST is not in methods: falls to the shorter route");
    let get_users = get(proxy.addr, "/api/users").await;
    assert_eq!(get_users.json()["upstream"], "users");
    let with_host = send(
        &client,
        req(Method::POST, proxy.addr, "/api/projects")
            .header("host", "API.example.com:8443")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(with_host.json()["upstream"], "users", "host matches case-insensitively, port ignored");
    let other_host = send(
        &client,
        req(Method::POST, proxy.addr, "/api/projects")
            .header("host", "other.example.com")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(other_host.json()["upstream"], "legacy");
}

#[tokio::test]
async fn strip_prefix_forwards_the_rest() {
    let (legacy, users) = two_upstreams().await;
    let proxy = TestProxy::start(&routes(
        &legacy,
        &users,
        "  - {name: users, prefix: /api/users, upstream: users, strip_prefix: true}\n",
    ))
    .await;
    assert_eq!(get(proxy.addr, "/api/users/7?a=b").await.json()["uri"], "/7?a=b");
    assert_eq!(get(proxy.addr, "/api/users").await.json()["uri"], "/");
}

#[tokio::test]
async fn no_route_is_a_json_404_naming_the_path() {
    let (legacy, users) = two_upstreams().await;
    let proxy =
        TestProxy::start(&routes(&legacy, &users, "  - {name: users, prefix: /api/users, upstream: users}\n")).await;
    let r = get(proxy.addr, "/nowhere/x").await;
    assert_eq!(r.status, 404);
    let body = r.json();
    assert_eq!(body["error"], "no_route");
    assert_eq!(body["path"], "/nowhere/x");
    assert_eq!(body["fault"], "downstream");
    assert_eq!(legacy.hits() + users.hits(), 0);
}

#[tokio::test]
async fn round_robin_across_targets() {
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let b = TestUpstream::start("b", Behaviour::Echo).await;
    let text = format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\nupstreams:\n  pair:\n    targets: [\"{}\", \"{}\"]\nroutes:\n  - {{name: all, prefix: /, upstream: pair}}\n",
        a.url(),
        b.url()
    );
    let proxy = TestProxy::start(&text).await;
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
}
