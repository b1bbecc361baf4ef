//! Hostile input on raw sockets: request smuggling shapes, malformed framing,
//! oversized and slow clients, HTTP/2 abuse (rapid reset, CONTINUATION flood),
//! path and Host games against host-matched routes. Each case must end in a
//! clean 4xx or a closed connection — never a crash, a hang, or a request
//! reaching an upstream it should not — and the proxy must still serve a
//! normal request afterwards.
//!
//! `tests/errors.rs` and `tests/path_safety.rs` cover the basic cases (one
//! oversized header, CL/CL with different values, two Host headers, the
//! classic dot-segment and encoded-slash paths); this file extends them.
//! The fuzz targets' regression inputs live at the bottom (`fuzz_regressions`).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;
use strangler::server::ServeOptions;

const ADMIN_HOST: &str = "admin.example.com";

/// `admin` answers only for Host admin.example.com under /admin; everything
/// else goes to `public`.
async fn setup_with(options: ServeOptions) -> (TestUpstream, TestUpstream, TestProxy) {
    let public = TestUpstream::start("public", Behaviour::Echo).await;
    let admin = TestUpstream::start("admin", Behaviour::Echo).await;
    let proxy = TestProxy::start_with(
        &config(
            &[("public", &public.url()), ("admin", &admin.url())],
            "  - {name: admin, prefix: /admin, upstream: admin, host: admin.example.com}\n  - {name: public, prefix: /, upstream: public}\n",
        ),
        options,
    )
    .await;
    (public, admin, proxy)
}

async fn setup() -> (TestUpstream, TestUpstream, TestProxy) {
    setup_with(ServeOptions::default()).await
}

/// The proxy still answers a normal request (on a fresh connection).
async fn still_serves(proxy: &TestProxy, after: &str) {
    let r = tokio::time::timeout(Duration::from_secs(10), async { get(proxy.addr, "/alive").await })
        .await
        .unwrap_or_else(|_| panic!("after {after}: a normal request hung"));
    assert_eq!(r.status, 200, "after {after}: {}", r.text());
}

/// Every status line in a raw HTTP/1.x response stream.
fn statuses(response: &str) -> Vec<u16> {
    response.split("HTTP/1.").skip(1).filter_map(|s| s.get(2..5).and_then(|code| code.parse().ok())).collect()
}

/// A clean refusal: a 4xx first answer, or no answer at all (closed).
fn refused(response: &str) -> bool {
    match raw_status(response) {
        None => true,
        Some(s) => (400..500).contains(&s),
    }
}

// ---------------------------------------------------------------- framing

#[tokio::test]
async fn conflicting_framing_is_refused_or_normalized_and_never_smuggles() {
    let (public, admin, proxy) = setup().await;
    // Each message carries a second, smuggled request for the admin route
    // right behind an ambiguous body. Whatever the proxy does, the admin
    // upstream must never see it and the public upstream must never see
    // conflicting framing headers.
    let smuggled = "GET /admin/secret HTTP/1.1\r\nHost: admin.example.com\r\n\r\n";
    let cases = [
        // CL.TE and TE.CL
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{smuggled}"),
        // obfuscated Transfer-Encoding
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"),
        // Transfer-Encoding in HTTP/1.0
        format!("POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
        // duplicate / list / signed / overflowing Content-Length
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 62\r\n\r\nhello{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nhello{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nhello{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello{smuggled}"),
        // obsolete line folding, hiding a header or continuing Host
        format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n\r\n{smuggled}"),
        format!("GET /admin/x HTTP/1.1\r\nHost: x\r\n admin.example.com\r\n\r\n{smuggled}"),
        format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n{smuggled}"),
        // bare CR inside a header value
        format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n{smuggled}"),
    ];
    for (i, case) in cases.iter().enumerate() {
        let response = raw(proxy.addr, case.as_bytes(), Duration::from_secs(2)).await;
        let codes = statuses(&response);
        // An answer, if any, is a refusal, or the one request was forwarded
        // with framing the upstream cannot read differently.
        if let Some(&first) = codes.first() {
            assert!(first == 200 || (400..500).contains(&first), "case {i} {case:?}: {response}");
        }
        assert_eq!(admin.hits(), 0, "case {i} {case:?} smuggled a request to the admin upstream: {response}");
        for seen in public.seen.lock().unwrap().iter() {
            let h = &seen.headers;
            assert!(
                !(h.contains_key("content-length") && h.contains_key("transfer-encoding")),
                "case {i}: the upstream saw both Content-Length and Transfer-Encoding: {h:?}"
            );
            assert!(h.get_all("content-length").iter().count() <= 1, "case {i}: {h:?}");
        }
        still_serves(&proxy, &format!("case {i}")).await;
    }
}

#[tokio::test]
async fn bare_lf_line_ends_are_refused() {
    let (public, admin, proxy) = setup().await;
    // RFC 9112 §2.2 lets a recipient accept a bare LF as a line end; a proxy
    // cannot know that the upstream behind it reads the head the same way,
    // so it refuses it (400) or closes.
    let response =
        raw(proxy.addr, b"GET /admin/x HTTP/1.1\nHost: x\nConnection: close\n\n", Duration::from_secs(2)).await;
    let status = raw_status(&response);
    assert!(status.is_none() || status == Some(400), "a bare-LF request was not refused: {response}");
    assert_eq!(public.hits() + admin.hits(), 0, "a bare-LF request reached an upstream");
    // A bare LF hiding a Host for the admin route inside another header.
    let response = raw(
        proxy.addr,
        b"GET /admin/x HTTP/1.1\r\nHost: x\r\nX-A: a\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(refused(&response), "two Host headers hidden behind a bare LF: {response}");
    assert_eq!(admin.hits(), 0);
    still_serves(&proxy, "bare LF").await;
}

#[tokio::test]
async fn invalid_chunk_sizes_never_complete_a_request() {
    let (_public, admin, proxy) = setup().await;
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
        "5\r\nhello\r\n0\r\nBad Trailer: x\r\n\r\n",
    ] {
        let msg = format!("POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let response = raw(proxy.addr, msg.as_bytes(), Duration::from_secs(3)).await;
        let status = raw_status(&response);
        // The head may already be upstream (bodies stream), but the request
        // must not complete as if the body were fine: no 2xx to the client.
        assert!(
            status.is_none() || status.is_some_and(|s| s >= 400),
            "{body:?} was accepted as a valid chunked body: {response}"
        );
        still_serves(&proxy, &format!("chunk {body:?}")).await;
    }
    assert_eq!(admin.hits(), 0);
}

// ------------------------------------------------------------ size limits

#[tokio::test]
async fn too_many_headers_and_huge_request_lines_are_refused() {
    let (public, admin, proxy) = setup().await;
    let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response =
        raw(proxy.addr, format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(), Duration::from_secs(3)).await;
    assert!(refused(&response), "2000 headers: {response}");
    let long_path = format!("/{}", "a".repeat(200 * 1024));
    let response =
        raw(proxy.addr, format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(), Duration::from_secs(3))
            .await;
    assert!(refused(&response), "200 KiB request line: {}", &response[..response.len().min(200)]);
    // Many small headers adding up past the 64 KiB head limit (~90 KiB).
    let filler: String = (0..90).map(|i| format!("X-F{i}: {}\r\n", "b".repeat(1000))).collect();
    let response =
        raw(proxy.addr, format!("GET / HTTP/1.1\r\nHost: x\r\n{filler}\r\n").as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(raw_status(&response), Some(431), "a ~90 KiB head: {}", &response[..response.len().min(300)]);
    assert!(response.contains("\"error\":\"header_too_large\""), "{response}");
    assert_eq!(admin.hits() + public.hits(), 0);
    still_serves(&proxy, "oversized heads").await;
}

#[tokio::test]
async fn many_slowloris_connections_do_not_starve_normal_clients() {
    let options = ServeOptions { header_read_timeout: Duration::from_millis(800), ..ServeOptions::default() };
    let (_public, admin, proxy) = setup_with(options).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a").await.unwrap();
        slow.push((s, Instant::now()));
    }
    // Normal clients are served while the slow ones hold their connections.
    let started = Instant::now();
    still_serves(&proxy, "200 slowloris connections").await;
    assert!(started.elapsed() < Duration::from_secs(2), "a normal request waited {:?}", started.elapsed());
    // The slow ones are cut off at the header timeout (counted by the proxy
    // from a little after their bytes were written), each with a 408 or a
    // bare close, not much later.
    let closing: Vec<_> = slow
        .into_iter()
        .map(|(mut s, written)| {
            tokio::spawn(async move {
                let mut answer = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
                assert!(read.is_ok(), "a slow header sender was still connected 10 s after its last byte");
                (written.elapsed(), String::from_utf8_lossy(&answer).into_owned())
            })
        })
        .collect();
    let mut latest = Duration::ZERO;
    for closed in closing {
        let (after, answer) = closed.await.unwrap();
        assert!(answer.is_empty() || raw_status(&answer) == Some(408), "{answer}");
        assert!(after >= Duration::from_millis(800), "closed {after:?} after its last byte, before the header timeout");
        latest = latest.max(after);
    }
    // The margin is for a loaded machine: 200 connections on one core.
    assert!(latest < Duration::from_millis(800 + 1200), "the last slow sender was closed only after {latest:?}");
    assert_eq!(admin.hits(), 0);
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let options = ServeOptions { header_read_timeout: Duration::from_millis(500), ..ServeOptions::default() };
    let (_public, _admin, proxy) = setup_with(options).await;
    // Connects and never sends a byte.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(read.is_ok(), "a connection that sent nothing was still open after 5 s (header timeout 500 ms)");
    still_serves(&proxy, "silent connection").await;
}

#[tokio::test]
async fn slow_body_sender_does_not_block_others() {
    let (public, _admin, proxy) = setup().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab").await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"c").await.unwrap();
    }
    still_serves(&proxy, "a slow body").await;
    drop(s);
    let _ = public;
}

// ----------------------------------------------------------------- HTTP/2

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET path` with `:authority`, literal fields without indexing.
fn hpack_get(path: &str, authority: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    b.push(0x04); // :path, literal without indexing
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x01); // :authority
    b.push(authority.len() as u8);
    b.extend_from_slice(authority.as_bytes());
    b
}

/// A literal header with a new name (lengths < 127).
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// Frame types the server sent, read until it closes or `wait` passes.
async fn read_frames(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    let deadline = Instant::now() + wait;
    let mut closed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let mut kinds = Vec::new();
    let mut i = 0;
    while i + 9 <= data.len() {
        let len = ((data[i] as usize) << 16) | ((data[i + 1] as usize) << 8) | data[i + 2] as usize;
        kinds.push(data[i + 3]);
        i += 9 + len;
    }
    (kinds, closed)
}

#[tokio::test]
async fn h2_normal_request_by_hand_works() {
    // The hand-written frames are right: a single GET gets a HEADERS answer.
    let (public, _admin, proxy) = setup().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &hpack_get("/h2", "x")));
    s.write_all(&out).await.unwrap();
    let (kinds, _) = read_frames(&mut s, Duration::from_secs(2)).await;
    assert!(kinds.contains(&HEADERS), "no response HEADERS: {kinds:?}");
    assert_eq!(public.last_seen().uri, "/h2");
}

#[tokio::test]
async fn h2_rapid_reset_is_cut_off() {
    let (public, admin, proxy) = setup().await;
    public.set(Behaviour::Slow(Duration::from_millis(200)));
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    const N: u32 = 20_000;
    for i in 0..N {
        let id = 1 + 2 * i;
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &hpack_get("/reset", "x")));
        out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&out).await;
        w
    });
    let started = Instant::now();
    let mut data = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), r.read_to_end(&mut data)).await;
    let _ = writer.await;
    let hits = public.hits();
    assert!(read.is_ok(), "a rapid-reset connection was still open after 15 s");
    assert!(hits < (N / 10) as usize, "{hits} of {N} reset streams reached the upstream");
    assert_eq!(admin.hits(), 0);
    eprintln!("rapid reset: closed after {:?}, {hits} upstream hits", started.elapsed());
    public.set(Behaviour::Echo);
    still_serves(&proxy, "rapid reset").await;
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let (public, admin, proxy) = setup().await;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let mut head = PREFACE.to_vec();
    head.extend(frame(SETTINGS, 0, 0, &[]));
    head.extend(frame(HEADERS, END_STREAM, 1, &hpack_get("/flood", "x"))); // no END_HEADERS
    let block: Vec<u8> = (0..10).flat_map(|i| hpack_literal(&format!("x-flood-{i}"), &"f".repeat(100))).collect();
    let writer = tokio::spawn(async move {
        if w.write_all(&head).await.is_err() {
            return 0usize;
        }
        let mut sent = 0usize;
        // Up to ~20 MiB of header block that never ends.
        for _ in 0..20_000 {
            if w.write_all(&frame(CONTINUATION, 0, 1, &block)).await.is_err() {
                break;
            }
            sent += block.len();
        }
        sent
    });
    let mut data = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), r.read_to_end(&mut data)).await;
    assert!(read.is_ok(), "a CONTINUATION flood was still being read after 15 s");
    let sent = tokio::time::timeout(Duration::from_secs(15), writer).await.unwrap().unwrap();
    assert!(sent < 20_000 * block_len(), "the proxy read a 20 MiB header block to the end");
    assert_eq!(public.hits() + admin.hits(), 0, "a never-ending header block reached an upstream");
    still_serves(&proxy, "CONTINUATION flood").await;
}

fn block_len() -> usize {
    10 * (2 + 10 + 1 + 100)
}

#[tokio::test]
async fn h2_authority_decides_the_route_and_the_upstream_host() {
    let (public, admin, proxy) = setup().await;
    // :authority says admin, a `host` header says otherwise: the route and the
    // Host the upstream is told must agree.
    for (authority, host) in [(ADMIN_HOST, "x"), ("x", ADMIN_HOST)] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let mut block = hpack_get("/admin/h2", authority);
        block.extend(hpack_literal("host", host));
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
        s.write_all(&out).await.unwrap();
        let (kinds, _) = read_frames(&mut s, Duration::from_millis(1500)).await;
        assert!(kinds.contains(&HEADERS) || kinds.contains(&GOAWAY) || kinds.contains(&RST_STREAM), "{kinds:?}");
    }
    check_host_consistency(&public, &admin);
    still_serves(&proxy, "h2 authority games").await;
}

// ------------------------------------------------------------------- paths

#[tokio::test]
async fn more_encoded_path_tricks_never_reach_the_admin_route() {
    let (public, admin, proxy) = setup().await;
    for target in [
        "/%61dmin/x",                  // an unreserved escape: decodes to /admin/x, on the public host
        "/x/%2e%2E/admin",             // mixed case dot escapes
        "/x/%252e%252e/admin",         // double encoding must not be decoded twice
        "/x/%c0%af../admin",           // overlong '/'
        "/x/%e0%80%ae%e0%80%ae/admin", // 3-byte overlong '.'
        "/x/%f0%80%80%ae/admin",       // 4-byte overlong '.'
        "/x/%ed%a0%80/admin",          // a UTF-16 surrogate
        "/x/%u002e%u002e/admin",       // IIS %u escapes
        "/x/%e2%88%95admin",           // U+2215 DIVISION SLASH
        "/x/%ef%bc%8fadmin",           // U+FF0F FULLWIDTH SOLIDUS
        "/x;/../admin",
        "/x/%2e%2e%2fadmin",
        "/x/..%00/admin",
        "/x/%0d%0aHost:%20admin.example.com",
        "/x?/../../admin",
        "/x/%",
        "/x/%2",
    ] {
        let response = raw(
            proxy.addr,
            format!("GET {target} HTTP/1.1\r\nHost: public.example.com\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        let status = raw_status(&response);
        assert!(
            status.is_none() || status == Some(200) || status == Some(400) || status == Some(404),
            "{target}: {response}"
        );
        if status == Some(200) {
            let uri = public.last_seen().uri;
            assert!(!uri.contains("%2e") && !uri.contains("%2E"), "{target} was forwarded as {uri}");
            assert!(!uri.split('?').next().unwrap().contains("/../"), "{target} was forwarded as {uri}");
        }
        assert_eq!(admin.hits(), 0, "{target} reached the admin upstream from another host");
    }
    // Same tricks on the admin host: whatever was matched is what arrives.
    for target in ["/admin/%2e%2e/x", "/x/..%2fadmin", "/x/%2e%2e/admin/y", "/ADMIN/y"] {
        let response = raw(
            proxy.addr,
            format!("GET {target} HTTP/1.1\r\nHost: {ADMIN_HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        assert!(raw_status(&response).is_some(), "{target}: no answer");
    }
    check_host_consistency(&public, &admin);
    for seen in admin.seen.lock().unwrap().iter() {
        assert!(seen.uri.starts_with("/admin"), "the admin upstream got {}", seen.uri);
    }
    still_serves(&proxy, "encoded paths").await;
}

#[tokio::test]
async fn raw_utf8_in_the_path_reaches_the_upstream_unchanged() {
    let (public, _admin, proxy) = setup().await;
    let response = raw(
        proxy.addr,
        "GET /caf\u{e9}/%41?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    let status = raw_status(&response);
    assert!(status == Some(200) || status == Some(400), "{response}");
    if status == Some(200) {
        let uri = public.last_seen().uri;
        assert!(uri == "/caf%C3%A9/A?q=1" || uri == "/caf\u{e9}/A?q=1", "forwarded as {uri:?}");
    }
    still_serves(&proxy, "raw UTF-8 path").await;
}

// ----------------------------------------------------------- Host games

/// The host a backend would read from a Host value: userinfo, port and a
/// trailing dot dropped, lower-cased.
fn backend_host(value: &str) -> String {
    let v = value.rsplit('@').next().unwrap_or(value);
    let v = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        v.split(':').next().unwrap_or(v)
    };
    v.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The route was chosen on the host the upstream was told: the admin
/// upstream only ever hears of the admin host, the public one never does.
fn check_host_consistency(public: &TestUpstream, admin: &TestUpstream) {
    let violations = host_violations(public, admin);
    assert!(violations.is_empty(), "route and upstream Host disagree:\n{}", violations.join("\n"));
}

fn host_violations(public: &TestUpstream, admin: &TestUpstream) -> Vec<String> {
    let mut out = Vec::new();
    for seen in admin.seen.lock().unwrap().iter() {
        let host = seen.headers.get("host").map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
        if host.as_deref().map(backend_host).as_deref() != Some(ADMIN_HOST) {
            out.push(format!("the admin upstream got {} with Host {host:?}", seen.uri));
        }
    }
    for seen in public.seen.lock().unwrap().iter() {
        if !seen.uri.starts_with("/admin") {
            continue;
        }
        for host in seen.headers.get_all("host") {
            let host = String::from_utf8_lossy(host.as_bytes()).into_owned();
            if backend_host(&host) == ADMIN_HOST {
                out.push(format!(
                    "{} with Host {host:?} was routed to the public upstream, which reads it as the admin host",
                    seen.uri
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn absolute_form_authority_wins_over_host_consistently() {
    let (public, admin, proxy) = setup().await;
    for request in [
        format!("GET http://other-host/admin/x HTTP/1.1\r\nHost: {ADMIN_HOST}\r\nConnection: close\r\n\r\n"),
        format!("GET http://{ADMIN_HOST}/admin/x HTTP/1.1\r\nHost: other-host\r\nConnection: close\r\n\r\n"),
        format!("GET http://{ADMIN_HOST}:8080/admin/x HTTP/1.1\r\nHost: other-host\r\nConnection: close\r\n\r\n"),
        format!("GET https://other-host/admin/x HTTP/1.1\r\nHost: {ADMIN_HOST}\r\nConnection: close\r\n\r\n"),
        "GET http://other-host/admin/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
    ] {
        let response = raw(proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
        assert!(raw_status(&response).is_some(), "{request:?}: no answer");
    }
    check_host_consistency(&public, &admin);
    assert_eq!(admin.hits(), 2, "the two absolute-form requests for the admin host reach it");
    still_serves(&proxy, "absolute-form").await;
}

#[tokio::test]
async fn host_header_games_route_on_the_host_the_upstream_is_told() {
    let (public, admin, proxy) = setup().await;
    for hosts in [
        vec![format!("{}", ADMIN_HOST.to_uppercase())],
        vec![format!("{ADMIN_HOST}:80")],
        vec![format!("{ADMIN_HOST}.")],
        vec![format!("user@{ADMIN_HOST}")],
        vec![format!("user:pw@{ADMIN_HOST}:80")],
        vec![format!("{ADMIN_HOST}@other-host")],
        vec![format!("other-host, {ADMIN_HOST}")],
        vec![format!("{ADMIN_HOST}:80:90")],
        vec![format!("{ADMIN_HOST} ")],
        vec![format!(" {ADMIN_HOST}")],
        vec![format!("{ADMIN_HOST}\tx")],
        vec![String::new()],
        vec!["other-host".into(), ADMIN_HOST.into()],
        vec![ADMIN_HOST.into(), "other-host".into()],
    ] {
        let header_lines: String = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| if i == 0 { format!("Host: {h}\r\n") } else { format!("host: {h}\r\n") })
            .collect();
        let request = format!("GET /admin/x HTTP/1.1\r\n{header_lines}Connection: close\r\n\r\n");
        let response = raw(proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
        let status = raw_status(&response);
        assert!(
            status.is_none() || status.is_some_and(|s| s == 200 || (400..500).contains(&s)),
            "{hosts:?}: {response}"
        );
        if hosts.len() > 1 {
            assert!(refused(&response), "two Host headers {hosts:?} were accepted: {response}");
        }
    }
    // Absolute-form with userinfo: refused, or routed on the host it names.
    let response = raw(
        proxy.addr,
        format!("GET http://user@{ADMIN_HOST}/admin/x HTTP/1.1\r\nHost: {ADMIN_HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(raw_status(&response).is_some(), "{response}");
    still_serves(&proxy, "Host games").await;
    check_host_consistency(&public, &admin);
}

// ------------------------------------------------------ fuzz regressions

/// Inputs the fuzz targets (fuzz/) found or that guard their invariants;
/// run here so `cargo test` keeps them fixed.
#[test]
fn fuzz_regressions() {
    use strangler::path::normalize;
    for input in [
        "/",
        "//",
        "/./",
        "/a/..",
        "/%2e",
        "/a/%2e%2e/",
        "/%41%2e/.",
        "/a//./../b/",
        "/..a",
        "/a/.../b",
        "/%7e/",
        "/%25",
    ] {
        if let Ok(once) = normalize(input) {
            let twice = normalize(&once).unwrap_or_else(|e| panic!("{input:?} -> {once:?} -> {e:?}"));
            assert_eq!(once, twice, "normalize is not idempotent on {input:?}");
        }
    }
    // fuzz/path_router crash-7218e8fc: raw non-ASCII bytes next to an escape
    // came out as mojibake (each UTF-8 byte pushed as a Latin-1 char), so
    // normalize was not idempotent and the upstream got another path.
    for input in ["/\u{FFFD}\u{FFFD}%222222", "/caf\u{e9}/%41", "/\u{65e5}\u{672c}/%7e/../x"] {
        let once = normalize(input).unwrap();
        assert_eq!(normalize(&once).unwrap(), once, "{input:?}");
        assert!(!once.contains('\u{c3}'), "{input:?} -> {once:?}");
    }
    assert_eq!(normalize("/caf\u{e9}/%41").unwrap(), "/caf\u{e9}/A");
    for text in ["", "listen: x", "listen: 1\nupstreams: {}\nroutes: []\n", "routes: [{}]", "{", "\u{0}", "- - -"] {
        let _ = strangler::config::Source { file: "fuzz.yaml", text }.parse();
    }
}
