//! Errors are clean answers, never a hang or a dropped connection.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use strangler::server::ServeOptions;

#[tokio::test]
async fn refused_upstream_is_502_json() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = TestProxy::start(&config(
        &[("gone", &format!("http://{closed}"))],
        "  - {name: all, prefix: /, upstream: gone}\n",
    ))
    .await;
    let r = get(proxy.addr, "/x").await;
    assert_eq!(r.status, 502);
    let body = r.json();
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(body["fault"], "upstream");
    assert_eq!(body["request_id"], r.header("x-request-id").unwrap());
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert!(metrics.contains("strangler_upstream_errors_total{kind=\"connect\",upstream=\"gone\"} 1"), "{metrics}");
}

#[tokio::test]
async fn slow_upstream_is_504_json_after_the_timeout() {
    let up = TestUpstream::start("slow", Behaviour::Slow(Duration::from_secs(5))).await;
    let proxy = TestProxy::start(&config(&[("slow", &up.url())], "  - {name: all, prefix: /, upstream: slow}\n")).await;
    let started = Instant::now();
    let r = get(proxy.admin, "/healthz").await;
    assert_eq!(r.status, 200);
    let r = get(proxy.addr, "/x").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4), "timeout is 2s, took {waited:?}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let proxy = TestProxy::start(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")).await;
    let big = "a".repeat(100 * 1024);
    let response = raw(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(raw_status(&response), Some(431), "{response}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let proxy = TestProxy::start(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")).await;
    for bad in [
        "NOT A REQUEST\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    ] {
        let response = raw(proxy.addr, bad.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(raw_status(&response), Some(400), "{bad:?} -> {response}");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let options = ServeOptions { header_read_timeout: Duration::from_millis(500), ..ServeOptions::default() };
    let proxy =
        TestProxy::start_with(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n"), options)
            .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain(b"abcdefghijklmnopqrstuvwxyz".iter()) {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
        closed = read.is_ok();
    }
    assert!(closed, "the connection of a byte-by-byte header sender was not closed");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(up.hits(), 0);
}
