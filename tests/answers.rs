//! Unusual and hostile upstream answers, from a scripted upstream on a raw
//! socket. Bodiless requests are exchanged by the proxy's own HTTP/1.1 codec
//! (`client::h1`), so this is where its framing is held to account: a
//! well-formed answer in any framing reaches the client intact; an
//! ambiguous or malformed one is a 502 and its connection is never reused,
//! so no stray bytes can be taken for the next request's answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// An upstream that answers every request head with the same bytes, and
/// closes the connection after each answer when `close` is set.
pub(crate) struct Scripted {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    pub(crate) async fn start(answer: &'static [u8], close: bool) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            reqs.fetch_add(1, Ordering::SeqCst);
                            if stream.write_all(answer).await.is_err() || close {
                                return;
                            }
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        Scripted { url, connections, requests }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

pub(crate) async fn proxy_to(upstream: &Scripted) -> TestProxy {
    TestProxy::start(&config(&[("up", &upstream.url)], "  - {name: all, prefix: /, upstream: up}\n")).await
}

/// Sends `n` GETs one after another on one client connection.
async fn gets(proxy: &TestProxy, n: usize) -> Vec<TestResponse> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(get(proxy.addr, &format!("/r/{i}")).await);
    }
    out
}

#[tokio::test]
async fn well_formed_answers_in_every_framing_arrive_intact() {
    let cases: [(&[u8], &str, bool); 5] = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "hello", true),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            "hello world",
            true,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok", true),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "", true),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold", "old", false),
    ];
    for (answer, body, reused) in cases {
        let up = Scripted::start(answer, false).await;
        let proxy = proxy_to(&up).await;
        for r in gets(&proxy, 3).await {
            assert!(r.status.is_success(), "{:?}: {}", String::from_utf8_lossy(answer), r.status);
            assert_eq!(r.text(), body, "{:?}", String::from_utf8_lossy(answer));
        }
        let expected = if reused { 1 } else { 3 };
        assert_eq!(up.connections(), expected, "connections for {:?}", String::from_utf8_lossy(answer));
    }
}

/// An answer carrying every hop-by-hop field, one `Connection` names, and
/// the fields the proxy writes itself.
const HOP_BY_HOP_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\
Proxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n\
Connection: X-Secret\r\nX-Secret: s\r\nX-Request-Id: upstream-made\r\nX-Strangler-Upstream: spoofed\r\n\
ETag: \"v1\"\r\n\r\nok";

#[tokio::test]
async fn hop_by_hop_fields_of_an_answer_never_reach_the_client_in_either_protocol() {
    // Without a `Connection` that names a field, the answer's head goes to
    // an HTTP/1.1 client as it arrived (no map); with one, through the map.
    let plain: &'static [u8] = Box::leak(
        String::from_utf8_lossy(HOP_BY_HOP_ANSWER)
            .replace("Connection: X-Secret\r\n", "")
            .into_bytes()
            .into_boxed_slice(),
    );
    for answer in [HOP_BY_HOP_ANSWER, plain] {
        let up = Scripted::start(answer, false).await;
        let proxy = proxy_to(&up).await;
        let h1 =
            raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", Duration::from_secs(5)).await;
        let h1 = h1.to_ascii_lowercase();
        let h2 =
            send(&http2(), req(http::Method::GET, proxy.addr, "/").body(Default::default()).unwrap()).await.unwrap();
        for gone in ["keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer", "upgrade"] {
            assert!(!h1.contains(&format!("\r\n{gone}:")), "{gone} over HTTP/1.1: {h1}");
            assert!(!h2.headers.contains_key(gone), "{gone} over HTTP/2: {:?}", h2.headers);
        }
        // A field is hop-by-hop only when `Connection` names it.
        let named = answer == HOP_BY_HOP_ANSWER;
        assert_eq!(h1.contains("\r\nx-secret: s\r\n"), !named, "{h1}");
        assert_eq!(h2.headers.contains_key("x-secret"), !named, "{:?}", h2.headers);
        assert!(h1.ends_with("\r\n\r\nok") && h1.contains("\r\netag: \"v1\"\r\n"), "{h1}");
        assert!(h1.contains("\r\nx-strangler-upstream: up\r\n") && !h1.contains("spoofed"), "{h1}");
        assert!(!h1.contains("upstream-made") && h1.contains("\r\nx-request-id: "), "{h1}");
        assert_eq!((h2.status.as_u16(), h2.text()), (200, "ok".to_string()));
        assert_eq!(h2.header("etag"), Some("\"v1\""));
        assert_eq!(h2.header("x-strangler-upstream"), Some("up"));
        assert!(h2.header("x-request-id").is_some_and(|id| id != "upstream-made"), "{:?}", h2.headers);
    }
}

#[tokio::test]
async fn an_answer_delimited_by_close_arrives_whole_and_the_connection_is_not_reused() {
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", true).await;
    let proxy = proxy_to(&up).await;
    for r in gets(&proxy, 2).await {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "until the end");
    }
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_head_answer_has_no_body_and_its_connection_is_kept_only_when_it_announced_none() {
    // A body announced to HEAD may still come from a broken upstream, late
    // enough to be read as the next request's answer: that connection is
    // closed. One that announced none is reused.
    for (answer, length, connections) in [
        (&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..], Some("5"), 2),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", None, 2),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Some("0"), 1),
    ] {
        let up = Scripted::start(answer, false).await;
        let proxy = proxy_to(&up).await;
        for _ in 0..2 {
            let head = req(http::Method::HEAD, proxy.addr, "/").body(Default::default()).unwrap();
            let r = send(&http1(), head).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-length"), length, "the head says what the body would be");
            assert!(r.body.is_empty());
        }
        assert_eq!(up.connections(), connections, "connections for {:?}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn ambiguous_or_malformed_answers_are_502_and_their_connection_is_dropped() {
    let huge_head: &'static [u8] = Box::leak(
        [&b"HTTP/1.1 200 OK\r\nX-Big: "[..], &vec![b'a'; 70 * 1024], b"\r\nContent-Length: 0\r\n\r\n"]
            .concat()
            .into_boxed_slice(),
    );
    let many_headers: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n", "X-H: 1\r\n".repeat(150))
            .into_bytes()
            .into_boxed_slice(),
    );
    let cases: [&'static [u8]; 11] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 99 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        huge_head,
        many_headers,
    ];
    for answer in cases {
        let up = Scripted::start(answer, false).await;
        let proxy = proxy_to(&up).await;
        let shown = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
        for i in 0..2 {
            let sent = send(
                &http1(),
                req(http::Method::GET, proxy.addr, &format!("/r/{i}")).body(Default::default()).unwrap(),
            )
            .await;
            match sent {
                Ok(r) => {
                    assert_eq!(r.status, 502, "{shown}: {}", r.text());
                    assert_eq!(r.json()["error"], "upstream_failed", "{shown}");
                }
                // A chunked body found malformed after its head went out:
                // the client's answer is cut off instead (as nginx does).
                Err(e) => assert!(shown.contains("chunked") && e.contains("IncompleteMessage"), "{shown}: {e}"),
            }
        }
        assert_eq!(up.connections(), up.requests(), "{shown}: a connection was reused after a bad answer");
    }
}

#[tokio::test]
async fn bytes_after_an_answer_are_never_taken_for_the_next_answer() {
    // Content-Length says 2 but a whole second answer follows: response
    // splitting. The extra bytes must not answer the next request.
    let up = Scripted::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
        false,
    )
    .await;
    let proxy = proxy_to(&up).await;
    for r in gets(&proxy, 3).await {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(up.connections(), 3, "the connection with stray bytes was closed each time");
}

#[tokio::test]
async fn a_body_cut_short_is_an_incomplete_answer_not_a_hang() {
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true).await;
    let proxy = proxy_to(&up).await;
    let started = std::time::Instant::now();
    let raw_answer =
        raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(4), "the client was left hanging");
    // The head may have gone out before the cut: the connection then
    // closes short of the promised length, which the client can tell.
    assert!(raw_answer.is_empty() || raw_answer.ends_with("short"), "{raw_answer:?}");
    // The broken connection is not reused: each request gets a fresh one.
    let _ = send(&http1(), req(http::Method::GET, proxy.addr, "/again").body(Default::default()).unwrap()).await;
    assert_eq!(up.connections(), 2);
}
