//! The client side of the proxy: our own HTTP/1.1 loop serves bodiless
//! requests and hands a connection to hyper at its first request with a
//! body, all on one connection, in order, with HTTP/1.0 and HTTP/1.1
//! keep-alive rules and JSON answers for refused heads.

use std::time::{Duration, Instant};

use strangler::server::ServeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::answers::{proxy_to, Scripted};
use crate::support::*;

async fn echo_proxy() -> (TestUpstream, TestProxy) {
    echo_proxy_with(ServeOptions::default()).await
}

async fn echo_proxy_with(options: ServeOptions) -> (TestUpstream, TestProxy) {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let proxy =
        TestProxy::start_with(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n"), options)
            .await;
    (up, proxy)
}

/// A 300 ms header timeout and a 1 s keep-alive timeout.
fn short_timeouts() -> ServeOptions {
    ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        keepalive_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

/// Sends `bytes` on a fresh connection and reads until the proxy closes it
/// (failing if it does not within 5 s).
async fn exchange(proxy: &TestProxy, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_until_closed(&mut stream).await
}

async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("the proxy kept the connection open")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect()
}

#[tokio::test]
async fn one_connection_moves_to_hyper_at_its_first_body_and_keeps_its_order() {
    let (up, proxy) = echo_proxy().await;
    let pipelined = "GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
                     POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                     GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let text = exchange(&proxy, pipelined.as_bytes()).await;
    assert_eq!(statuses(&text), ["200", "200", "200"], "{text}");
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle} missing: {text}"));
    assert!(at("\"/first\"") < at("\"/second\"") && at("\"/second\"") < at("\"/third\""), "{text}");
    assert!(text.contains("\"body_length\":5"), "the POST body arrived: {text}");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (up, proxy) = echo_proxy().await;
    let mut requests = String::new();
    for i in 0..20 {
        requests.push_str(&format!("GET /p/{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    requests.push_str("GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let text = exchange(&proxy, requests.as_bytes()).await;
    assert_eq!(statuses(&text).len(), 21, "{text}");
    let positions: Vec<usize> = (0..20).map(|i| text.find(&format!("\"/p/{i}\"")).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "answers out of order");
    assert!(text.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(up.hits(), 21);
}

#[tokio::test]
async fn http_1_0_closes_unless_asked_to_keep_alive() {
    let (_up, proxy) = echo_proxy().await;
    let text = exchange(&proxy, b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert_eq!(statuses(&text), ["200"], "{text}");

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..2 {
        stream
            .write_all(format!("GET /ka/{i} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: keep-alive"), "{answer}");
    }
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_for_http_1_1_and_close_delimited_for_http_1_0() {
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", true).await;
    let proxy = proxy_to(&up).await;
    let text = exchange(&proxy, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(text.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{text}");
    assert!(text.ends_with("d\r\nuntil the end\r\n0\r\n\r\n"), "{text:?}");

    let text = exchange(&proxy, b"GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n").await;
    let lower = text.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding") && lower.contains("connection: close"), "{text}");
    assert!(text.ends_with("\r\n\r\nuntil the end"), "{text:?}");
}

#[tokio::test]
async fn head_answers_keep_their_length_and_carry_no_body() {
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", false).await;
    let proxy = proxy_to(&up).await;
    let text = exchange(
        &proxy,
        b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), ["200", "200"], "{text}");
    assert_eq!(text.to_ascii_lowercase().matches("content-length: 42").count(), 2, "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a HEAD answer carried a body: {text:?}");
}

#[tokio::test]
async fn refused_heads_get_a_json_error_and_a_closed_connection() {
    let (up, proxy) = echo_proxy().await;
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let cases = [
        (format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"), "431", "header_too_large"),
        (huge, "431", "header_too_large"),
        ("GET / HTTP/1.2\r\nHost: x\r\n\r\n".to_string(), "505", "http_version_not_supported"),
        ("GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n".to_string(), "400", "bad_request"),
    ];
    for (request, status, error) in cases {
        let text = exchange(&proxy, request.as_bytes()).await;
        assert_eq!(statuses(&text), [status], "{text}");
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json") && lower.contains("connection: close"), "{text}");
        assert!(text.contains(&format!("\"error\":\"{error}\"")), "{text}");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_head_sent_in_pieces_is_read_whole_within_the_timeout() {
    let (_up, proxy) = echo_proxy().await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for piece in ["GET /sl", "ow HTTP/1.1\r\nHo", "st: x\r\n", "Connection: close\r\n\r\n"] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = read_until_closed(&mut stream).await;
    assert_eq!(statuses(&text), ["200"], "{text}");
    assert!(text.contains("\"/slow\""), "{text}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_frees_it_at_once() {
    let up = TestUpstream::start("up", Behaviour::Slow(Duration::from_secs(1))).await;
    let proxy = TestProxy::start(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let in_flight = || proxy.shared.metrics.in_flight.get();
    let started = Instant::now();
    while in_flight() == 0 && started.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_flight(), 1, "the request never started");
    drop(stream);
    let left = Instant::now();
    while in_flight() > 0 && left.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_flight(), 0);
    assert!(left.elapsed() < Duration::from_millis(800), "the request outlived its client by {:?}", left.elapsed());
}

#[tokio::test]
async fn hyper_serves_everything_when_our_loop_is_off() {
    let (_up, proxy) = echo_proxy_with(ServeOptions { inline_http1: false, ..Default::default() }).await;
    let text = exchange(&proxy, b"GET /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&text), ["200"], "{text}");
}

#[tokio::test]
async fn a_request_in_flight_when_draining_starts_is_answered_with_connection_close() {
    let up = TestUpstream::start("up", Behaviour::Slow(Duration::from_millis(500))).await;
    let mut proxy = TestProxy::start(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /draining HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    wait_for(Duration::from_secs(5), "the request to reach the upstream", || async { up.hits() == 1 }).await;
    proxy.shutdown();
    let text = read_until_closed(&mut stream).await;
    assert_eq!(statuses(&text), ["200"], "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
}

#[tokio::test]
async fn a_request_already_in_the_socket_when_draining_starts_is_answered_with_connection_close() {
    // This test's runtime has one thread, which the proxy shares: between
    // the write of the second request and the drain, the proxy cannot run,
    // so the request is surely in its socket, unread, when draining starts.
    // Our loop, and hyper.
    for inline_http1 in [true, false] {
        a_request_in_the_socket_at_the_drain_is_answered(ServeOptions { inline_http1, ..Default::default() }).await;
    }
}

async fn a_request_in_the_socket_at_the_drain_is_answered(options: ServeOptions) {
    let inline_http1 = options.inline_http1;
    let (up, mut proxy) = echo_proxy_with(options).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stream.write_all(b"GET /during HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    proxy.shutdown();
    let text = read_until_closed(&mut stream).await;
    assert_eq!(statuses(&text), ["200"], "our loop: {inline_http1}: the request was dropped: {text:?}");
    assert!(text.contains("\"/during\""), "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_as_soon_as_draining_starts() {
    // The keep-alive (75 s) and drain (30 s) timeouts are the defaults, and
    // the upstream's timeout is long (its timer, kept for the next request,
    // wakes the connection's task once at the deadline): only the drain's
    // wake-up closes the connection within the test's bound. Our loop, and hyper.
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let text = config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n")
        .replace("    timeout: 2s\n", "    timeout: 60s\n");
    for inline_http1 in [true, false] {
        let mut proxy = TestProxy::start_with(&text, ServeOptions { inline_http1, ..Default::default() }).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        for _ in 0..2 {
            // Two requests: the second idle wait is the one that counts, after
            // the connection has waited once before.
            stream.write_all(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let answer = read_answer(&mut stream).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        let draining = Instant::now();
        proxy.shutdown();
        // `read_until_closed` fails the test if the connection stays open for 5 s.
        let text = read_until_closed(&mut stream).await;
        assert!(text.is_empty(), "our loop: {inline_http1}: {text}");
        assert!(draining.elapsed() < Duration::from_secs(5), "our loop: {inline_http1}");
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout_and_a_busy_one_is_not() {
    let (_up, proxy) = echo_proxy_with(short_timeouts()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let ask = async |stream: &mut TcpStream| {
        stream.write_all(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answer = read_answer(stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    };
    // Busy for longer than the keep-alive timeout, never idle for long: stays open.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        ask(&mut stream).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle for twice the header timeout: that is not the idle limit.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Then idle: closed after the keep-alive timeout (counted from before the
    // last request, so that the server's idle time is surely not longer).
    let idle = Instant::now();
    ask(&mut stream).await;
    let text = read_until_closed(&mut stream).await;
    assert!(text.is_empty(), "{text}");
    let after = idle.elapsed();
    assert!(after >= Duration::from_secs(1), "closed after {after:?}, before the keep-alive timeout");
    assert!(after < Duration::from_millis(2500), "closed only after {after:?}");
}

#[tokio::test]
async fn after_the_hand_off_to_hyper_the_idle_limit_is_still_the_keepalive_timeout() {
    let (up, proxy) = echo_proxy_with(short_timeouts()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // A body: hyper serves this connection from here on.
    stream.write_all(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Idle for twice the header timeout: still open.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let idle = Instant::now();
    stream.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Then closed once idle for the keep-alive timeout.
    let text = read_until_closed(&mut stream).await;
    assert!(text.is_empty(), "{text}");
    assert!(idle.elapsed() >= Duration::from_secs(1), "closed after {:?}", idle.elapsed());
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn an_http2_connection_that_starts_no_request_for_the_keepalive_timeout_is_closed() {
    let (up, proxy) = echo_proxy_with(short_timeouts()).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let mut connection = tokio::spawn(connection);
    // Busy for twice the keep-alive timeout: stays open.
    let started = Instant::now();
    let (mut sent, mut last_sent) = (0, Instant::now());
    while started.elapsed() < Duration::from_secs(2) {
        last_sent = Instant::now();
        let request = http::Request::get("http://x/h2").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.expect("the busy connection stayed open");
        assert_eq!(response.status(), 200);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!connection.is_finished(), "a busy HTTP/2 connection was closed");
    // Idle: closed (GOAWAY, then the end of the connection) after 1 to 1.5
    // times the timeout from the last request.
    let ended = tokio::time::timeout(Duration::from_secs(3), &mut connection).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection was still open after 3 s");
    let after = last_sent.elapsed();
    assert!(after >= Duration::from_secs(1), "closed {after:?} after the last request");
    assert_eq!(up.hits(), sent);
}

/// A 300 ms header timeout and a 3 s keep-alive timeout: hyper's own
/// header timer, which also counts the idle time before a head, is the
/// longer of the two, so it alone would let a head take 3 s.
fn header_timeout_well_below_keepalive() -> ServeOptions {
    ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        keepalive_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

/// Sends a head a byte every 200 ms until the proxy closes the connection;
/// how long that took from the first byte (failing if the head was answered
/// or all of it, ~6.6 s worth, went out).
async fn trickle_a_head_until_closed(stream: &mut TcpStream) -> Duration {
    let head = b"GET /trickled HTTP/1.1\r\nHost: x\r\n\r\n";
    let started = Instant::now();
    for &byte in head {
        if stream.write_all(&[byte]).await.is_err() {
            return started.elapsed();
        }
        let mut answer = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut answer)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(n)) => panic!("a head that took too long was answered: {:?}", String::from_utf8_lossy(&answer[..n])),
            Err(_) => {}
        }
    }
    panic!("a head sent over {:?} was never cut off", started.elapsed());
}

#[tokio::test]
async fn after_the_hand_off_to_hyper_a_slow_head_is_cut_off_at_the_header_timeout_and_an_idle_connection_is_not() {
    let (up, proxy) = echo_proxy_with(header_timeout_well_below_keepalive()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // A body: hyper serves this connection from here on.
    stream.write_all(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Idle, no byte sent, for twice the header timeout: still served.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(b"POST /again HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").await.unwrap();
    assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"));
    let took = trickle_a_head_until_closed(&mut stream).await;
    assert!(took >= Duration::from_millis(300), "cut off after {took:?}, before the header timeout");
    assert!(took < Duration::from_millis(1500), "a slow head was read for {took:?} (header timeout 300 ms)");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn on_connections_only_hyper_serves_every_head_must_arrive_within_the_header_timeout() {
    let options = ServeOptions { inline_http1: false, ..header_timeout_well_below_keepalive() };
    let (up, proxy) = echo_proxy_with(options).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(b"GET /after-idling HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"));
    let took = trickle_a_head_until_closed(&mut stream).await;
    assert!(took < Duration::from_millis(1500), "a slow head was read for {took:?} (header timeout 300 ms)");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn an_upgraded_connection_is_a_tunnel_with_no_header_timeout() {
    let up = TestUpstream::start("up", Behaviour::UpgradeEcho).await;
    let options = header_timeout_well_below_keepalive();
    let proxy =
        TestProxy::start_with(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n"), options)
            .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    // Bytes through the tunnel, slower than any head may come: echoed.
    for piece in [&b"p"[..], b"i", b"n", b"g"] {
        stream.write_all(piece).await.unwrap();
        let mut echoed = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut echoed))
            .await
            .expect("the tunnel echoes")
            .expect("the tunnel is open");
        assert_eq!(&echoed, piece);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_fragment_in_the_target_is_a_400_on_our_loop_and_dropped_by_hyper() {
    let (up, proxy) = echo_proxy().await;
    // Our loop: refused, bodiless or not (a head with a body is read here
    // before it is handed to hyper).
    for request in [
        "GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /a?q=1#frag HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /a#frag HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let text = exchange(&proxy, request.as_bytes()).await;
        assert_eq!(statuses(&text), ["400"], "{request:?}: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json") && lower.contains("connection: close"), "{text}");
        assert!(text.contains("\"error\":\"bad_request\"") && text.contains("fragment"), "{text}");
    }
    assert_eq!(up.hits(), 0);
    // Heads hyper reads: the `http` crate cuts the fragment off, so the
    // route and the upstream both see the target without it.
    let (up, proxy) = echo_proxy_with(ServeOptions { inline_http1: false, ..Default::default() }).await;
    let text = exchange(&proxy, b"GET /a?q=1#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&text), ["200"], "{text}");
    assert_eq!(up.last_seen().uri, "/a?q=1");
}
