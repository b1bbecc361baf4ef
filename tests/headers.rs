//! Header handling: hop-by-hop removal before the proxy adds its own,
//! X-Forwarded-*, Host, X-Request-Id.

use std::time::Duration;

use crate::support::*;

async fn echo_proxy() -> (TestUpstream, TestProxy) {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let proxy = TestProxy::start(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")).await;
    (up, proxy)
}

#[tokio::test]
async fn hop_by_hop_and_connection_listed_headers_are_removed_first() {
    let (up, proxy) = echo_proxy().await;
    let request =
        "GET /h HTTP/1.1\r\nHost: shop.example:8080\r\nConnection: close, x-forwarded-for, x-secret, x-request-id\r\n\
        Keep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\nX-Secret: s\r\n\
        X-Forwarded-For: 10.1.2.3\r\nX-Request-Id: client-id-1\r\nUpgrade: h2c\r\n\r\n";
    let response = raw(proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(raw_status(&response), Some(200), "{response}");
    let seen = up.last_seen().headers;
    for gone in ["connection", "keep-alive", "proxy-authorization", "te", "x-secret", "upgrade"] {
        assert!(seen.get(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(seen["host"], "shop.example:8080", "the client's Host is kept");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "a Connection-listed XFF is dropped, then ours is set");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example:8080");
    let id = seen["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "client-id-1", "a Connection-listed request id is dropped and a new one made");
    assert!(
        response.to_ascii_lowercase().contains(&format!("x-request-id: {id}")),
        "the id comes back on the response"
    );
}

#[tokio::test]
async fn forwarded_for_appends_and_request_id_passes_through() {
    let (up, proxy) = echo_proxy().await;
    let client = http1();
    let r = send(
        &client,
        req(http::Method::GET, proxy.addr, "/")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-request-id", "abc-123")
            .body(Default::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let seen = up.last_seen().headers;
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-request-id"], "abc-123");
}

#[tokio::test]
async fn request_ids_are_generated_when_absent() {
    let (up, proxy) = echo_proxy().await;
    let a = get(proxy.addr, "/").await;
    let b = get(proxy.addr, "/").await;
    let (ida, idb) = (a.header("x-request-id").unwrap(), b.header("x-request-id").unwrap());
    assert_ne!(ida, idb);
    assert_eq!(up.last_seen().headers["x-request-id"], idb);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let proxy = TestProxy::start(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")).await;
    let r = get(proxy.addr, "/").await;
    assert!(r.headers.get("keep-alive").is_none());
    assert_eq!(r.header("x-upstream"), Some("up"), "end-to-end headers pass");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_upstream_gets_the_chain_with_the_peer_appended() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let text = config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")
        .replace("upstreams:\n", "trusted_proxies: [\"127.0.0.0/8\"]\nupstreams:\n");
    let proxy = TestProxy::start(&text).await;
    let r = call(proxy.addr, http::Method::GET, "/", &[("x-forwarded-for", "198.51.100.77, 203.0.113.9")], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last_seen().headers["x-forwarded-for"],
        "198.51.100.77, 203.0.113.9, 127.0.0.1",
        "the chain is passed on as it came, with the hop the proxy saw; nothing is rewritten"
    );
}

#[tokio::test]
async fn the_access_log_names_the_client_behind_a_trusted_proxy() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let text = config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")
        .replace("upstreams:\n", "trusted_proxies: [\"127.0.0.0/8\", \"10.0.0.0/8\"]\nupstreams:\n");
    let dir = ConfigDir::new(&text);
    let proxy = BinaryProxy::start(&dir.path(), &["--log-format", "json", "--threads", "1"]).await;
    let chain = [("x-forwarded-for", "198.51.100.77, 203.0.113.9, 10.1.2.3")];
    let served = access_line(&proxy, &call(proxy.addr, http::Method::GET, "/", &chain, None).await).await;
    assert_eq!(served["client_ip"], "203.0.113.9", "{served}");
    let refused = access_line(&proxy, &call(proxy.addr, http::Method::GET, "/a%2Fb", &chain, None).await).await;
    assert_eq!(refused["status"], 400, "{refused}");
    assert_eq!(refused["client_ip"], "203.0.113.9", "a refused request names its client too: {refused}");
}

/// The JSON access log line of the request `answer` answered.
async fn access_line(proxy: &BinaryProxy, answer: &TestResponse) -> serde_json::Value {
    let id = answer.header("x-request-id").expect("an id on every answer");
    proxy.wait_for_log(id).await;
    let text = proxy.log_text();
    serde_json::from_str(text.lines().find(|l| l.contains(id)).unwrap()).unwrap()
}
