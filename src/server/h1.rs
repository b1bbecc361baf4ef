//! Our own HTTP/1.1 server loop for plain-TCP client connections.
//!
//! The common request, one without a body or an upgrade, is read, proxied
//! and answered in the connection's own task: one `httparse` pass over the
//! head, header values that share the read buffer, no timer unless a head
//! arrives in pieces, and the answer's head and a small body written with
//! one system call. An idle connection holds no buffer (hyper keeps 8 KiB
//! for each).
//!
//! The first request this loop does not serve itself (one with a body,
//! `Expect` or `Upgrade`, CONNECT, or a target that is not origin-form)
//! hands the connection to hyper together with the bytes already read, and
//! hyper serves it from then on. Framing that could be ambiguous is thus
//! never decided here: any `Transfer-Encoding`, and any `Content-Length` but
//! a single `0`, goes to hyper.
//!
//! A head that cannot be parsed gets a 400, a version other than 1.0/1.1 a
//! 505, a head over the size limit or with more than [`wire::MAX_HEADERS`] fields
//! a 431, a target too long for a URI a 414, and a head that takes longer
//! than the header timeout a 408. Each has a JSON body, and the connection
//! is then closed.

use std::future::{poll_fn, Future};
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::deadline::Deadlines;
use super::worker::Drain;
use crate::body::ProxyBody;
use crate::proxy::{self, Conn};
use crate::wire::{self, Span, HEADROOM, MAX_HEADERS};
use crate::Shared;

/// How much a read asks for while a head comes in (nginx's
/// `client_header_buffer_size`; a larger head grows the buffer).
const READ_ROOM: usize = 1024;
/// What the answer's head (and a small body) is first given.
const OUT_ROOM: usize = 1024;
/// Answer bodies up to this size are copied behind the head and go out in
/// the same write; larger pieces are written from their own buffers.
const COALESCE: usize = 16 * 1024;
/// The longest target the `http` crate takes into a `Uri`.
const MAX_URI: usize = u16::MAX as usize - 1;

/// How a connection's time with this loop ended.
pub(crate) enum Ended {
    /// Nothing more to serve: the connection is done.
    Closed,
    /// A request this loop does not serve: hyper takes the connection,
    /// starting with these bytes (the request's head and whatever followed).
    HandOff(Bytes),
}

/// Serves requests on `stream` until the client closes, a request asks to
/// close, the worker drains, or a request needs hyper. Heads are read under
/// `deadlines` (header read, keep-alive, refusal linger) and up to
/// `max_head` bytes.
pub(crate) async fn serve(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    deadlines: &Deadlines,
    max_head: usize,
    drain: &mut Drain,
) -> Ended {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    // The idle timer is armed once and re-armed only when it fires early,
    // not on every request (see `next_request_arrives`).
    let mut idle_timer = std::pin::pin!(tokio::time::sleep(deadlines.keepalive));
    loop {
        if buf.is_empty() {
            // Idle: the buffers go back to the allocator (nginx does the same).
            (buf, out) = (BytesMut::new(), Vec::new());
            let idle_until = tokio::time::Instant::now() + deadlines.keepalive;
            if !next_request_arrives(stream, drain, idle_timer.as_mut(), idle_until).await {
                return Ended::Closed;
            }
            out.reserve(OUT_ROOM);
        }
        let parsed = match read_head(stream, &mut buf, deadlines.header_read, max_head).await {
            Ok(Some(Head::Ours(parsed))) => parsed,
            Ok(Some(Head::Hyper)) => return Ended::HandOff(buf.freeze()),
            Ok(None) => return Ended::Closed,
            Err(refusal) => {
                Box::pin(refuse(stream, &mut out, refusal, deadlines.refusal_linger)).await;
                return Ended::Closed;
            }
        };
        // Boxed (one allocation per request, the proxy's future included):
        // an idle connection's task then holds only what waiting needs, not
        // the request's state (~6 KiB).
        let kept = Box::pin(serve_request(stream, shared, conn, parsed, drain, &mut out)).await;
        if !kept {
            let _ = stream.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// Proxies one request and writes its answer; `true` when the connection
/// can carry another request. `false` also when the client left first, or
/// when the worker started draining meanwhile (the answer then says
/// `Connection: close`).
async fn serve_request(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    parsed: Parsed,
    drain: &Drain,
    out: &mut Vec<u8>,
) -> bool {
    let is_head = parsed.request.method() == Method::HEAD;
    let version = parsed.request.version();
    let Some(response) = answer(stream, shared, conn, parsed.request).await else { return false };
    let keep_alive = parsed.keep_alive && !*drain.borrow();
    matches!(write_response(stream, out, response, is_head, version, keep_alive).await, Ok(true))
}

/// Waits, holding no buffer, until the client sends more. `false` when the
/// worker drains first (an idle connection just closes), the connection has
/// idled until `idle_until` (the keep-alive timeout), or the socket fails.
///
/// `timer` may be set for an earlier moment (it is re-armed lazily): when
/// it fires before `idle_until`, it is set again and the wait goes on.
async fn next_request_arrives(
    stream: &TcpStream,
    drain: &mut Drain,
    mut timer: Pin<&mut tokio::time::Sleep>,
    idle_until: tokio::time::Instant,
) -> bool {
    loop {
        tokio::select! {
            biased;
            _ = drain.wait_for(|draining| *draining) => return false,
            ready = poll_fn(|cx| stream.poll_read_ready(cx)) => return ready.is_ok(),
            _ = timer.as_mut() => {
                if tokio::time::Instant::now() >= idle_until {
                    return false;
                }
                timer.as_mut().reset(idle_until);
            }
        }
    }
}

/// A request head, parsed. Not boxed: one per request, moved out at once,
/// where a box would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// One this loop serves.
    Ours(Parsed),
    /// One for hyper; nothing was taken off the buffer.
    Hyper,
}

struct Parsed {
    request: Request<ProxyBody>,
    keep_alive: bool,
}

/// Why a head was refused; each becomes a JSON error and a closed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Malformed,
    Version,
    TooLarge,
    TargetTooLong,
    Timeout,
}

impl Refusal {
    fn describe(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Refusal::Malformed => (StatusCode::BAD_REQUEST, "bad_request", "malformed request head"),
            Refusal::Version => {
                (StatusCode::HTTP_VERSION_NOT_SUPPORTED, "http_version_not_supported", "only HTTP/1.0 and 1.1 here")
            }
            Refusal::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
                "request head too large or too many header fields",
            ),
            Refusal::TargetTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long", "request target too long"),
            Refusal::Timeout => {
                (StatusCode::REQUEST_TIMEOUT, "request_timeout", "request head not received within the header timeout")
            }
        }
    }
}

/// Reads until a whole head is in `buf`; `None` when the client closes
/// first. The `timeout` starts only if the first read leaves the head
/// incomplete: almost every head arrives in one read.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
    max_head: usize,
) -> Result<Option<Head>, Refusal> {
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse(buf, max_head)? {
                return Ok(Some(head));
            }
        }
        wire::reserve_read_room(buf, READ_ROOM);
        let read = match deadline {
            None => match poll_once(std::pin::pin!(stream.read_buf(buf))) {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    deadline = Some(tokio::time::Instant::now() + timeout);
                    continue;
                }
            },
            Some(deadline) => match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                Ok(read) => read,
                Err(_) => return Err(Refusal::Timeout),
            },
        };
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Polls a future once, without a task to wake (the socket's readiness is
/// already known; if it is not ready, the caller awaits it properly).
fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Parses the head at the front of `buf`: `None` until it is complete.
/// A request for this loop is split off the buffer, its header values
/// sharing that memory; one for hyper is left in place.
fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, Refusal> {
    let mut spans: [Span; MAX_HEADERS] = [[0; 4]; MAX_HEADERS];
    let (len, method, target, version, count) = {
        // Uninitialized: filling 100 empty slots per request shows in profiles.
        let mut slots = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) if len <= max_head => len,
                Ok(httparse::Status::Partial) if buf.len() < max_head => return Ok(None),
                Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
                Err(httparse::Error::Version) if names_a_version(buf) => return Err(Refusal::Version),
                Err(_) => return Err(Refusal::Malformed),
            };
        let (method, path) = (parsed.method.unwrap_or_default(), parsed.path.unwrap_or_default());
        if !is_ours(method, path, parsed.headers) {
            return Ok(Some(Head::Hyper));
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| Refusal::Malformed)?;
        let start = path.as_ptr() as usize - buf.as_ptr() as usize;
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        (len, method, start..start + path.len(), version, wire::record_spans(buf, parsed.headers, &mut spans))
    };
    let head = buf.split_to(len).freeze();
    let too_long = target.len() >= MAX_URI;
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| {
        if too_long {
            Refusal::TargetTooLong
        } else {
            Refusal::Malformed
        }
    })?;
    let headers = wire::header_map(&head, &spans[..count], HEADROOM).ok_or(Refusal::Malformed)?;
    let keep_alive = wire::keeps_alive(version, &headers);
    let mut request = Request::new(ProxyBody::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head::Ours(Parsed { request, keep_alive })))
}

/// Whether the request line ends in an `HTTP/` version (one httparse does
/// not take), rather than in garbage.
fn names_a_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let version = line.trim_ascii().rsplit(|&b| b == b' ').next().unwrap_or_default();
    version.starts_with(b"HTTP/")
}

/// Whether this loop serves the request: an origin-form target, not
/// CONNECT, no body (no `Transfer-Encoding`, no `Content-Length` but one
/// `0`), and no `Upgrade` or `Expect`.
fn is_ours(method: &str, path: &str, headers: &[httparse::Header<'_>]) -> bool {
    if method == "CONNECT" || !path.starts_with('/') {
        return false;
    }
    let mut lengths = 0;
    for field in headers {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            if lengths > 1 || field.value != b"0" {
                return false;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return false;
        }
    }
    true
}

/// Proxies the request. `None` if the client closes its connection before
/// the answer is ready: the request is then dropped, upstream exchange and
/// all (hyper does the same).
async fn answer(
    stream: &TcpStream,
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    request: Request<ProxyBody>,
) -> Option<Response<ProxyBody>> {
    // Not boxed on its own: it lives in `serve_request`'s box.
    let mut handling = std::pin::pin!(proxy::handle(shared.clone(), conn.clone(), request));
    let mut watching = true;
    poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        // The socket turns readable only on EOF (or a pipelined request);
        // a peek tells which.
        while watching && stream.poll_read_ready(cx).is_ready() {
            let mut byte = [0u8; 1];
            match stream.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => watching = false,
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// How an answer's body is delimited on the client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// HEAD, 1xx, 204, 304: a head alone.
    None,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client and a body of unknown length: ends with the connection.
    UntilClose,
}

/// Writes the answer; `Ok(true)` when the connection can carry another request.
async fn write_response(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    response: Response<ProxyBody>,
    is_head: bool,
    version: Version,
    keep_alive: bool,
) -> std::io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = is_head || status.is_informational() || status == StatusCode::NOT_MODIFIED;
    let no_length = status.is_informational() || status == StatusCode::NO_CONTENT;
    // Taken before the first frame: polling changes it.
    let exact_length = body.size_hint().exact();
    // The first piece of the body, if it is already here, goes out with the head.
    let first = if bodiless || no_length {
        Poll::Ready(None)
    } else {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await
    };
    if let Poll::Ready(Some(Err(e))) = &first {
        // Nothing has gone out yet: the client can still get a proper error.
        tracing::debug!(error = %e, "an answer failed before its first byte");
        let failed = crate::error::json_error(
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            "upstream",
            "the upstream's answer failed before any of it was sent".into(),
            None,
            parts.headers.get(&crate::headers::X_REQUEST_ID),
        );
        return Box::pin(write_response(stream, out, failed, is_head, version, false)).await;
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            length = wire::parse_length(value.as_bytes());
            if no_length || length.is_none() {
                continue;
            }
        } else if *name == header::TRANSFER_ENCODING || *name == header::CONNECTION {
            continue;
        } else if *name == header::DATE {
            has_date = true;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = if bodiless || no_length {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = exact_length {
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Length(n)
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        Framing::UntilClose
    };
    if !has_date {
        with_date(|date| put_field(out, b"date", date));
    }
    let keep_alive = keep_alive && framing != Framing::UntilClose;
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        stream.write_all(out).await?;
        return Ok(keep_alive);
    }
    let complete = write_body(stream, out, body, framing, first).await?;
    Ok(keep_alive && complete)
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A body frame as polled: `Pending` when none was ready.
type Polled = Poll<Option<Result<http_body::Frame<Bytes>, crate::body::BoxError>>>;

/// Streams the body after the head already in `out`, starting with `first`;
/// `Ok(false)` if it failed or did not match its declared length (the
/// connection must close then).
async fn write_body(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    mut body: ProxyBody,
    framing: Framing,
    first: Polled,
) -> std::io::Result<bool> {
    let mut sent = 0u64;
    let mut complete = true;
    let mut next = first;
    loop {
        let frame = match next {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // More is coming, maybe not soon: what is here goes out now.
                stream.write_all(out).await?;
                out.clear();
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let Ok(frame) = frame else {
            complete = false;
            break;
        };
        next = Poll::Pending;
        let Ok(mut data) = frame.into_data() else { continue };
        if let Framing::Length(n) = framing {
            if data.len() as u64 > n - sent {
                data.truncate((n - sent) as usize);
                complete = false;
            }
        }
        if !data.is_empty() {
            sent += data.len() as u64;
            put_data(stream, out, &data, framing == Framing::Chunked).await?;
        }
        if !complete || body.is_end_stream() {
            break;
        }
    }
    if let Framing::Length(n) = framing {
        complete &= sent == n;
    }
    if framing == Framing::Chunked && complete {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    stream.write_all(out).await?;
    out.clear();
    Ok(complete)
}

/// Adds a piece of body behind what `out` holds: copied when small, else
/// written straight from its own buffer.
async fn put_data(stream: &mut TcpStream, out: &mut Vec<u8>, data: &[u8], chunked: bool) -> std::io::Result<()> {
    if chunked {
        let _ = write!(out, "{:x}\r\n", data.len());
    }
    if out.len() + data.len() <= COALESCE {
        out.extend_from_slice(data);
    } else {
        stream.write_all(out).await?;
        out.clear();
        stream.write_all(data).await?;
    }
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// Calls `f` with the current `Date` value, formatted at most once a second
/// per thread.
fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            *text = httpdate::fmt_http_date(now).into_bytes();
        }
        f(text)
    })
}

/// Answers a refused head with its JSON error and closes the connection,
/// reading what the client still sends for a moment (`linger`) first, so
/// that the close does not turn into a reset that could destroy the answer.
async fn refuse(stream: &mut TcpStream, out: &mut Vec<u8>, refusal: Refusal, linger_for: Duration) {
    let (status, code, message) = refusal.describe();
    tracing::debug!(status = status.as_u16(), reason = message, "request head refused");
    let response = crate::error::json_error(status, code, "downstream", message.into(), None, None);
    if write_response(stream, out, response, false, Version::HTTP_11, false).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let linger = async {
        // On the heap: an array here would size every connection's task for it.
        let mut sink = vec![0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(linger_for, linger).await;
}

/// For the fuzz target `h1_request`: parses `data` as request heads,
/// whole and cut at `cut`. Never panics; a request this loop serves has no
/// body framing but a single `Content-Length: 0`, an origin-form target
/// and no CONNECT; what follows its head stays in the buffer byte for
/// byte; and a prefix is never a complete request the whole is not.
#[doc(hidden)]
pub fn check_request(data: &[u8], cut: usize) {
    const LIMIT: usize = 8 * 1024;
    let mut buf = BytesMut::from(data);
    let whole = parse(&mut buf, LIMIT);
    if let Ok(Some(Head::Ours(parsed))) = &whole {
        let headers = parsed.request.headers();
        assert!(!headers.contains_key(header::TRANSFER_ENCODING) && !headers.contains_key(header::UPGRADE));
        assert!(headers.get_all(header::CONTENT_LENGTH).iter().all(|v| v == "0"));
        assert!(headers.get_all(header::CONTENT_LENGTH).iter().count() <= 1);
        assert!(parsed.request.uri().path().starts_with('/') && parsed.request.method() != Method::CONNECT);
        assert_eq!(&buf[..], &data[data.len() - buf.len()..], "the bytes after a head changed");
    }
    let cut = cut.min(data.len());
    if let Ok(Some(Head::Ours(part))) = parse(&mut BytesMut::from(&data[..cut]), LIMIT) {
        let Ok(Some(Head::Ours(parsed))) = &whole else { panic!("a prefix is a request the whole is not") };
        assert_eq!(part.request.uri(), parsed.request.uri());
        assert_eq!(part.request.headers(), parsed.request.headers());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Option<Head>, Refusal> {
        parse(&mut BytesMut::from(text), 64 * 1024)
    }

    fn ours(text: &str) -> Parsed {
        match parse_text(text) {
            Ok(Some(Head::Ours(parsed))) => parsed,
            Ok(Some(Head::Hyper)) => panic!("handed to hyper: {text:?}"),
            other => panic!("not parsed: {text:?}: {:?}", other.map(|h| h.is_some())),
        }
    }

    fn goes_to_hyper(text: &str) -> bool {
        matches!(parse_text(text), Ok(Some(Head::Hyper)))
    }

    #[test]
    fn a_bodiless_request_is_parsed_with_values_in_the_buffer() {
        let mut buf = BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nGET /next");
        let Ok(Some(Head::Ours(parsed))) = parse(&mut buf, 1024) else { panic!("not parsed") };
        assert_eq!(parsed.request.method(), Method::GET);
        assert_eq!(parsed.request.uri(), "/a?b=1");
        assert_eq!(parsed.request.headers()["host"], "x");
        assert_eq!(parsed.request.headers()["x-a"], "1");
        assert!(parsed.keep_alive);
        assert_eq!(&buf[..], b"GET /next", "a pipelined request stays in the buffer");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(!ours("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ours("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ours("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert_eq!(ours("GET / HTTP/1.0\r\n\r\n").request.version(), Version::HTTP_10);
    }

    #[test]
    fn bodies_upgrades_and_unusual_targets_go_to_hyper() {
        assert!(goes_to_hyper("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"));
        assert!(goes_to_hyper("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(goes_to_hyper("GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"));
        assert!(goes_to_hyper("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"));
        assert!(goes_to_hyper("PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"));
        assert!(goes_to_hyper("CONNECT x:443 HTTP/1.1\r\n\r\n"));
        assert!(goes_to_hyper("GET http://x/ HTTP/1.1\r\n\r\n"));
        assert!(goes_to_hyper("OPTIONS * HTTP/1.1\r\n\r\n"));
        assert_eq!(ours("DELETE /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").request.method(), Method::DELETE);
    }

    #[test]
    fn bad_heads_are_refused_with_the_right_reason() {
        assert_eq!(parse_text("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").err(), Some(Refusal::Malformed));
        assert_eq!(parse_text("GET / HTTP/1.2\r\n\r\n").err(), Some(Refusal::Version));
        assert_eq!(parse_text("NOT A REQUEST\r\n\r\n").err(), Some(Refusal::Malformed));
        assert_eq!(parse_text("GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n").err(), Some(Refusal::Malformed));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(parse_text(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err(), Some(Refusal::TooLarge));
        let mut big = BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000)).as_str());
        assert_eq!(parse(&mut big, 1024).err(), Some(Refusal::TooLarge));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI));
        assert_eq!(parse(&mut BytesMut::from(long.as_str()), 1 << 20).err(), Some(Refusal::TargetTooLong));
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        for text in ["", "GE", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: x\r\n"] {
            assert!(matches!(parse_text(text), Ok(None)), "{text:?}");
        }
    }
}
