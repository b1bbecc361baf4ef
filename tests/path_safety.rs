//! The path is normalized once, before matching, and the upstream receives
//! exactly the path that was matched. Attacks in the class of Envoy
//! CVE-2019-9901 / CVE-2021-29492 and Traefik CVE-2025-32431.

use std::time::Duration;

use crate::support::*;

async fn setup() -> (TestUpstream, TestUpstream, TestProxy) {
    let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
    let admin = TestUpstream::start("admin", Behaviour::Echo).await;
    let proxy = TestProxy::start(&config(
        &[("legacy", &legacy.url()), ("admin", &admin.url())],
        "  - {name: admin, prefix: /admin, upstream: admin}\n  - {name: users, prefix: /api/users, upstream: legacy}\n",
    ))
    .await;
    (legacy, admin, proxy)
}

async fn raw_get(proxy: &TestProxy, target: &str) -> String {
    raw(
        proxy.addr,
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await
}

#[tokio::test]
async fn dot_segments_resolve_before_matching() {
    let (legacy, admin, proxy) = setup().await;
    for target in [
        "/api/users/../../admin/x",
        "/api/users/%2e%2e/%2E%2E/admin/x",
        "/api/users/.%2e/%2e./admin/x",
        "//admin//x",
        "/api/./users/../../admin/./x",
    ] {
        let response = raw_get(&proxy, target).await;
        assert_eq!(raw_status(&response), Some(200), "{target}: {response}");
        assert_eq!(admin.last_seen().uri, "/admin/x", "{target} must reach admin as exactly the matched path");
    }
    assert_eq!(legacy.hits(), 0, "nothing meant for /admin reached the users upstream");
    let r = raw_get(&proxy, "/api/%75sers/7").await;
    assert_eq!(raw_status(&r), Some(200));
    assert_eq!(legacy.last_seen().uri, "/api/users/7", "unreserved escapes are decoded");
}

#[tokio::test]
async fn ambiguous_paths_are_refused_with_400() {
    let (legacy, admin, proxy) = setup().await;
    for target in [
        "/api/users/../../..",
        "/%2e%2e/admin",
        "/api/users/%2F..%2Fadmin",
        "/api/users%2fadmin",
        "/api/users/%5c..%5cadmin",
        "/api/users\\..\\admin",
        "/api/users/..;x/admin",
        "/api/users/.;x/admin",
        "/api/users/%2e%2e;/admin",
        "/api/users/%00",
        "/api/users/%c0%ae%c0%ae/admin",
        "/api/users/%zz",
    ] {
        let response = raw_get(&proxy, target).await;
        let status = raw_status(&response);
        assert_eq!(status, Some(400), "{target}: {response}");
        if response.contains("application/json") {
            assert!(response.contains("\"fault\":\"downstream\""), "{target}: {response}");
        }
    }
    assert_eq!(legacy.hits() + admin.hits(), 0, "no refused path reached an upstream");
}

#[tokio::test]
async fn fragment_and_nul_never_reach_an_upstream() {
    let (legacy, admin, proxy) = setup().await;
    // A fragment is never part of a request target (RFC 9112 §3.2): our
    // loop refuses it (hyper's parser would drop it; see server/connection.rs).
    let response = raw_get(&proxy, "/api/users#/../../admin").await;
    assert_eq!(raw_status(&response), Some(400), "{response}");
    assert!(response.contains("\"error\":\"bad_request\""), "{response}");
    assert_eq!(legacy.hits() + admin.hits(), 0);
    let response = raw_get(&proxy, "/admin/%23/../x").await;
    assert_eq!(admin.last_seen().uri, "/admin/x", "an encoded '#' is an ordinary byte: {response}");
    let response = raw(proxy.addr, b"GET /api/users/\0 HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(3)).await;
    assert!(raw_status(&response).is_none_or(|s| s == 400), "{response}");
    assert_eq!(legacy.hits() + admin.hits(), 1);
}
