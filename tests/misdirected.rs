//! `421 Misdirected Request`: the upstream that does not own a request (a
//! feature's writes mid-handover, a replica behind its feed) says so, and
//! the proxy sends the request once to the other side — for any method,
//! since a 421 means it was not processed. Never more than one hop.

use bytes::Bytes;
use http::Method;
use http_body_util::Full;

use crate::support::*;

/// `legacy` and `service` upstreams answering as told, and a proxy with `route` over them.
async fn stack(
    legacy_says: Behaviour,
    service_says: Behaviour,
    route: &str,
) -> (TestUpstream, TestUpstream, TestProxy) {
    let legacy = TestUpstream::start("legacy", legacy_says).await;
    let service = TestUpstream::start("service", service_says).await;
    let proxy = TestProxy::start(&config(&[("legacy", &legacy.url()), ("service", &service.url())], route)).await;
    (legacy, service, proxy)
}

async fn post(proxy: &TestProxy, path: &str, body: Vec<u8>) -> TestResponse {
    let request = req(Method::POST, proxy.addr, path).body(Full::new(Bytes::from(body))).unwrap();
    send(&http1(), request).await.unwrap()
}

#[tokio::test]
async fn a_write_the_primary_refuses_with_421_lands_once_on_the_fallback() {
    let (legacy, service, proxy) = stack(
        Behaviour::Status(421),
        Behaviour::Echo,
        "  - {name: comments, prefix: /api/comments, upstream: legacy, fallback: service}\n",
    )
    .await;
    let r = post(&proxy, "/api/comments", b"{\"body\":\"hello\"}".to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], "service");
    assert_eq!(r.json()["body_length"], 16, "the body was sent again, whole");
    assert_eq!((legacy.hits(), service.hits()), (1, 1));
    let metrics = get(proxy.admin, "/metrics").await.text();
    let series = [("route", "comments"), ("from", "legacy"), ("to", "service")];
    assert_eq!(metric_sum(&metrics, "strangler_misdirected_total", &series), 1.0, "{metrics}");
}

#[tokio::test]
async fn a_body_larger_than_the_retry_buffer_gets_the_421_through() {
    let (_legacy, service, proxy) = stack(
        Behaviour::Status(421),
        Behaviour::Echo,
        "  - {name: comments, prefix: /api/comments, upstream: legacy, fallback: service, retry_buffer: 1KiB}\n",
    )
    .await;
    let r = post(&proxy, "/api/comments", vec![b'x'; 4096]).await;
    assert_eq!(r.status, 421, "{}", r.text());
    assert_eq!(service.hits(), 0, "nothing could be sent again");
}

#[tokio::test]
async fn two_upstreams_that_both_answer_421_do_not_bounce_the_request() {
    let (legacy, service, proxy) = stack(
        Behaviour::Status(421),
        Behaviour::Status(421),
        "  - {name: comments, prefix: /api/comments, upstream: legacy, fallback: service}\n",
    )
    .await;
    let r = post(&proxy, "/api/comments", b"{}".to_vec()).await;
    assert_eq!(r.status, 421, "the other side's answer goes to the client");
    assert_eq!((legacy.hits(), service.hits()), (1, 1), "one hop, no loop");
}

#[tokio::test]
async fn on_a_split_whose_fallback_answered_421_the_request_goes_to_the_other_member() {
    let (legacy, _service, proxy) = stack(Behaviour::Status(421), Behaviour::Echo, "  - name: comments\n    prefix: /api/comments\n    fallback: legacy\n    split:\n      - {upstream: legacy, weight: 50}\n      - {upstream: service, weight: 50}\n").await;
    for i in 0..20 {
        let r = post(&proxy, &format!("/api/comments/{i}"), b"{}".to_vec()).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.json()["upstream"], "service", "request {i}");
    }
    assert!(legacy.hits() > 0, "the split chose legacy at times");
}

#[tokio::test]
async fn a_route_without_a_fallback_streams_its_body_and_passes_a_421_through() {
    let (_legacy, service, proxy) = stack(Behaviour::Status(421), Behaviour::Echo, "  - name: comments\n    prefix: /api/comments\n    split:\n      - {upstream: legacy, weight: 1}\n      - {upstream: service, weight: 0}\n").await;
    let r = post(&proxy, "/api/comments", b"{}".to_vec()).await;
    assert_eq!(r.status, 421);
    assert_eq!(service.hits(), 0);
}
