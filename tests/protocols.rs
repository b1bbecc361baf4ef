//! HTTP/2 clients, streamed bodies with flat memory, and protocol upgrades.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let proxy = TestProxy::start(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")).await;
    let client = http2();
    let mut joins = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let addr = proxy.addr;
        joins.push(tokio::spawn(async move {
            send(&client, req(Method::GET, addr, &format!("/h2/{i}")).body(Full::default()).unwrap()).await.unwrap()
        }));
    }
    for j in joins {
        let r = j.await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.header("x-request-id").is_some());
    }
    let seen = up.last_seen();
    assert!(seen.headers["host"].to_str().unwrap().starts_with("127.0.0.1:"), "an h2 :authority becomes Host upstream");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[tokio::test]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let up = TestUpstream::start("up", Behaviour::Download(SIZE)).await;
    let text = config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n");
    let dir = ConfigDir::new(&format!("access_log: off\n{text}"));
    let proxy = BinaryProxy::start(&dir.path(), &[]).await;
    let client = http1();

    // Download: count bytes as they arrive.
    let response = client.request(req(Method::GET, proxy.addr, "/big").body(Full::default()).unwrap()).await.unwrap();
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE);

    // Upload: a streamed body of the same size; the upstream counts it.
    up.set(Behaviour::Echo);
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let chunks = (0..SIZE / chunk.len() as u64).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone())));
    let stream = futures_util::stream::iter(chunks);
    let upload = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let response = upload
        .request(
            req(Method::POST, proxy.addr, "/up")
                .header("content-length", SIZE.to_string())
                .body(StreamBody::new(stream))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["body_length"], SIZE);

    let peak_mib = vm_hwm_kib(proxy.child.id().unwrap()) / 1024;
    assert!(peak_mib < 64, "proxy peak RSS {peak_mib} MiB after moving 2 x 256 MiB: bodies are not streamed");
}

#[tokio::test]
async fn upgrade_tunnels_bytes_only_after_101() {
    let up = TestUpstream::start("ws", Behaviour::UpgradeEcho).await;
    let proxy = TestProxy::start(&config(&[("ws", &up.url())], "  - {name: all, prefix: /, upstream: ws}\n")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    let seen = up.last_seen().headers;
    assert_eq!(seen["upgrade"], "echo");
    assert_eq!(seen["connection"], "upgrade");
    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"ping through the tunnel");
}

#[tokio::test]
async fn upgrade_refused_by_upstream_is_a_normal_response() {
    let up = TestUpstream::start("plain", Behaviour::Echo).await;
    let proxy =
        TestProxy::start(&config(&[("plain", &up.url())], "  - {name: all, prefix: /, upstream: plain}\n")).await;
    let response = raw(
        proxy.addr,
        b"GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(raw_status(&response), Some(200), "{response}");
}

/// An upstream that answers the first request on each connection and keeps
/// it open, then closes it without answering when the next request comes:
/// the race a keep-alive timeout causes, made certain. Counts requests seen.
async fn closes_reused_connections() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                // The next request (if any) finds the connection closing.
                if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_bodiless_idempotent_request_is_resent_when_a_reused_connection_was_closed() {
    let (url, seen) = closes_reused_connections().await;
    let proxy = TestProxy::start(&config(&[("up", &url)], "  - {name: all, prefix: /, upstream: up}\n")).await;
    for i in 0..3 {
        let r = get(proxy.addr, &format!("/get/{i}")).await;
        assert_eq!(r.status, 200, "GET {i}: {}", r.text());
    }
    // Each GET after the first met a closed pooled connection, then a new one.
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 5);
    // A POST is never sent twice: it fails instead. Bodiless ones are
    // exchanged inline, ones with a body by hyper; each kind has its pool.
    let client = http1();
    let post = |body: &'static str| {
        send(&client, req(Method::POST, proxy.addr, "/post").body(Full::new(Bytes::from(body))).unwrap())
    };
    let r = post("").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_failed");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 6);
    assert_eq!(post("x").await.unwrap().status, 200, "a new connection");
    let r = post("x").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 8);
}
