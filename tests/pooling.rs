//! Pooled upstream connections: an answer never crosses to another request
//! through a reused connection, and idle connections are closed on time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const MARKER: &str = "MARKER-FROM-A-LATE-HEAD-BODY";

/// A broken upstream: it answers HEAD with `Content-Length: 5` and no body,
/// then 10–50 ms later writes a whole second answer carrying [`MARKER`], as
/// if the body had been an answer; any other request gets `ok`.
async fn late_body_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let delays = Arc::new(AtomicUsize::new(0));
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_late_bodies(stream, delays.clone()));
        }
    });
    addr
}

async fn serve_late_bodies(mut stream: TcpStream, delays: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head: Vec<u8> = buf.drain(..end + 4).collect();
        let written = if head.starts_with(b"HEAD ") {
            let answered = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
            // 10, 20, .. 50 ms: before and after the next request is sent.
            let delay = 10 + 10 * (delays.fetch_add(1, Ordering::Relaxed) % 5) as u64;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let late = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{MARKER}", MARKER.len());
            answered.and(stream.write_all(late.as_bytes()).await)
        } else {
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await
        };
        if written.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_late_body_after_an_answer_to_head_never_becomes_another_requests_answer() {
    let upstream = late_body_upstream().await;
    let routes = "  - {name: all, prefix: /, upstream: broken}\n";
    let proxy = TestProxy::start(&config(&[("broken", &format!("http://{upstream}"))], routes)).await;
    let addr = proxy.addr;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let client = http1();
                let (mut gets, mut markers, mut failed) = (0, 0, Vec::new());
                for _ in 0..40 {
                    let head = send(&client, req(Method::HEAD, addr, "/h").body(Full::default()).unwrap()).await;
                    assert_eq!(head.map(|r| r.status.as_u16()), Ok(200));
                    for _ in 0..2 {
                        gets += 1;
                        match send(&client, req(Method::GET, addr, "/g").body(Full::default()).unwrap()).await {
                            Ok(r) if r.text() == MARKER => markers += 1,
                            Ok(r) if r.status == 200 && r.text() == "ok" => {}
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                }
                (gets, markers, failed)
            })
        })
        .collect();
    let (mut gets, mut markers, mut failed) = (0, 0, Vec::new());
    for client in clients {
        let (g, m, f) = client.await.unwrap();
        (gets, markers) = (gets + g, markers + m);
        failed.extend(f);
    }
    assert_eq!(gets, 320);
    assert_eq!(markers, 0, "{markers} of {gets} GETs got the late body of an answer to HEAD");
    assert!(failed.is_empty(), "GETs that did not get their own answer: {failed:?}");
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_upstreams_idle_timeout_without_more_traffic() {
    let short = TestUpstream::start("short", Behaviour::Echo).await;
    let long = TestUpstream::start("long", Behaviour::Echo).await;
    let text = format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\nupstreams:\n  short:\n    targets: [\"{}\"]\n    idle_timeout: 300ms\n  long:\n    targets: [\"{}\"]\nroutes:\n  - {{name: short, prefix: /short, upstream: short}}\n  - {{name: long, prefix: /long, upstream: long}}\n",
        short.url(),
        long.url()
    );
    let proxy = TestProxy::start(&text).await;
    let client = http1();
    let last_request = Instant::now();
    for path in ["/short/x", "/long/x"] {
        // A bodiless request (our own client's pool) and one with a body
        // (hyper's), each leaving a connection idle in its pool.
        let got = send(&client, req(Method::GET, proxy.addr, path).body(Full::default()).unwrap()).await.unwrap();
        assert_eq!(got.status, 200);
        let posted = req(Method::POST, proxy.addr, path).body(Full::from("body")).unwrap();
        assert_eq!(send(&client, posted).await.unwrap().status, 200);
    }
    wait_for(Duration::from_secs(5), "the idle connections to `short` to close", || async {
        connections_to(short.addr.port()) == 0
    })
    .await;
    let idle_for = last_request.elapsed();
    assert!(idle_for >= Duration::from_millis(300), "closed before the idle timeout, within {idle_for:?}");
    assert_eq!(connections_to(long.addr.port()), 2, "the default idle timeout (60 s) keeps both of `long`'s");
    // The pool still works: a new request opens a new connection.
    assert_eq!(get(proxy.addr, "/short/again").await.status, 200);
}
