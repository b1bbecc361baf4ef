//! Our own HTTP/1.1 server loop for client connections, plain TCP or TLS
//! (what it needs of each: [`super::downstream`]).
//!
//! The common request, one without a body or an upgrade, is read, proxied
//! and answered in the connection's own task: one `httparse` pass over the
//! head, header values that share the read buffer, no timer unless a head
//! arrives in pieces, and the answer's head (an upstream's fields copied
//! from the bytes they arrived in, no map) and a small body written with
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
//! This file does the socket I/O; the bytes are parsed and the answer's
//! head is written by the codec, [`crate::wire::request`] and
//! [`crate::wire::response`]. A head that cannot be parsed gets a 400, a
//! version other than 1.0/1.1 a 505, a head over the size limit or with
//! more than [`wire::MAX_HEADERS`] fields a 431, a target too long for a URI
//! a 414 ([`wire::request::Refusal`]), and a head that takes longer than the
//! header timeout a 408. Each has a JSON body, and the connection is then
//! closed.

use std::future::{poll_fn, Future};
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::deadline::Deadlines;
use super::downstream::{self, ClientIo};
use super::drain::Drain;
use crate::client::body::{Answer, ProxyBody};
use crate::proxy::{self, Downstream, Exchange};
use crate::wire;
use crate::wire::request::{self, Head, Parsed, Refusal};
use crate::wire::response::{self, Answering, Delimited, EncodedHead};
use crate::Shared;

/// How much a read asks for while a head comes in (nginx's
/// `client_header_buffer_size`; a larger head grows the buffer).
const READ_ROOM: usize = 1024;
/// What the answer's head (and a small body) is first given.
const OUT_ROOM: usize = 1024;
/// Answer bodies up to this size are copied behind the head and go out in
/// the same write; larger pieces are written from their own buffers.
const COALESCE: usize = 16 * 1024;

/// How a connection's time with this loop ended.
pub(crate) enum Ended {
    /// Nothing more to serve: the connection is done.
    Closed,
    /// A request this loop does not serve: hyper takes the connection,
    /// starting with these bytes (the request's head and whatever followed).
    HandOff(Bytes),
}

/// What our loop takes from the run, the same for every connection: each
/// connection's task holds one reference to it, not one for each part.
pub(crate) struct Settings {
    /// The proxy's state.
    pub shared: Arc<Shared>,
    /// The timeout policy (header read, keep-alive, refusal linger; the rest
    /// is for the connections hyper serves and for draining).
    pub deadlines: Deadlines,
    /// Largest request head accepted (hyper's builders have it too).
    pub max_head: usize,
}

/// Serves requests on `stream` until the client closes, a request asks to
/// close, the worker drains, or a request needs hyper. Heads are read under
/// `settings`' deadlines and up to its `max_head` bytes.
///
/// Most connections spend most of their life waiting in here, so the wait
/// holds as little as it can: no buffer (they live only while requests come
/// in), and the argument references once (a plain function around an
/// `async move` block: an `async fn` keeps a second copy of each).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(crate) fn serve<'a, S: ClientIo>(
    stream: &'a mut S,
    settings: &'a Settings,
    downstream: &'a Arc<Downstream>,
    drain: &'a mut Drain,
    first_within: Duration,
) -> impl Future<Output = Ended> + Send + 'a {
    async move {
        // The idle timer is armed once and re-armed only when it fires early,
        // not on every request (see `next_request_arrives`).
        let mut idle_timer = std::pin::pin!(tokio::time::sleep(first_within));
        let mut idle_until = tokio::time::Instant::from_std(crate::clock::now()) + first_within;
        'idle: loop {
            // Idle: no buffer is held (nginx does the same).
            let Some(mut buf) = next_request_arrives(stream, drain, idle_timer.as_mut(), idle_until).await else {
                return Ended::Closed;
            };
            // Requests back to back: a pipelined one is already in `buf`.
            let refusal = loop {
                let parsed = match read_head(stream, &mut buf, &settings.deadlines, settings.max_head).await {
                    Ok(Some(Head::Inline(parsed))) => parsed,
                    Ok(Some(Head::HandOff)) => return Ended::HandOff(buf.freeze()),
                    Ok(None) => return Ended::Closed,
                    // Answered out of this `match`: awaited in it, the refusal
                    // would keep the head's whole result (~330 bytes) in this
                    // future for the connection's life, idle or not.
                    Err(refusal) => break refusal,
                };
                // Boxed (one allocation per request, the proxy's future included):
                // an idle connection's task then holds only what waiting needs, not
                // the request's state (~4 KiB). The box is allocated first and the
                // future made in it: made first, it would be copied in whole.
                let serving =
                    Box::write(Box::new_uninit(), serve_request(stream, &settings.shared, downstream, parsed, drain));
                let kept = Box::into_pin(serving).await;
                if !kept {
                    let _ = stream.shutdown().await;
                    return Ended::Closed;
                }
                if buf.is_empty() {
                    idle_until = tokio::time::Instant::from_std(crate::clock::now()) + settings.deadlines.keepalive;
                    continue 'idle;
                }
            };
            Box::pin(refuse(stream, refusal, settings.deadlines.refusal_linger)).await;
            return Ended::Closed;
        }
    }
}

/// Proxies one request and writes its answer; `true` when the connection
/// can carry another request. `false` also when the client left first, or
/// when the worker started draining meanwhile (the answer then says
/// `Connection: close`).
/// (A plain function around an `async move` block: an `async fn` would keep
/// a second copy of `parsed`, see [`proxy::handle`].)
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve_request<'a, S: ClientIo>(
    stream: &'a mut S,
    shared: &'a Arc<Shared>,
    downstream: &'a Arc<Downstream>,
    parsed: Parsed<ProxyBody>,
    drain: &'a Drain,
) -> impl Future<Output = bool> + 'a {
    async move {
        // Here, in the request's box, not in the connection's task: an idle
        // connection holds no buffer.
        let mut out = Vec::with_capacity(OUT_ROOM);
        let is_head = parsed.request.method() == Method::HEAD;
        let version = parsed.request.version();
        // The proxy's future is pinned here, in this future's box (made in
        // `answer`, the request would be stored once more there), and in a
        // block of its own: it ends before the answer is written, so that
        // the writing shares its memory (the box is 4.0 KiB, not 5.2).
        // Dropped at the end of this function, the exchange writes the access
        // log line: after the last byte, when a write failed, or (a 499) when
        // the client left before the answer.
        let mut exchange = None;
        let answered = {
            let handling = std::pin::pin!(proxy::handle(shared, downstream, parsed.request, &mut exchange));
            answer(stream.tcp(), handling).await
        };
        let Some(response) = answered else {
            return false;
        };
        let keep_alive = parsed.keep_alive && !drain.is_draining();
        let to = Answering { is_head, version, keep_alive };
        matches!(write_response(stream, &mut out, response, to, exchange.as_mut()).await, Ok(true))
    }
}

/// Waits, holding no buffer, until the client sends more: the bytes that
/// came when reading them was how to tell (TLS), else an empty buffer.
/// `None` when the worker drains first with nothing in the socket (an idle
/// connection just closes), the connection has idled until `idle_until`
/// (the keep-alive timeout), or the socket fails. A request already in the
/// socket when draining starts is read and answered (with `Connection:
/// close`).
///
/// `timer` may be set for an earlier moment (it is re-armed lazily): when
/// it fires before `idle_until`, it is set again and the wait goes on.
/// (A plain function around an `async move` block: an `async fn` would keep
/// its arguments twice, in every idle connection.)
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn next_request_arrives<'a, S: ClientIo>(
    stream: &'a mut S,
    drain: &'a mut Drain,
    mut timer: Pin<&'a mut tokio::time::Sleep>,
    idle_until: tokio::time::Instant,
) -> impl Future<Output = Option<BytesMut>> + Send + 'a {
    async move {
        // By hand rather than `select!`, which keeps a copy of each future.
        poll_fn(|cx| loop {
            // The socket first: the wake-up that ends almost every wait is
            // the next request, and the drain's watch is then not polled a
            // second time. A request that arrives as draining starts is
            // served either way, with `Connection: close`.
            if let Poll::Ready(arrived) = stream.poll_arrival(cx) {
                return Poll::Ready(arrived.ok());
            }
            if drain.poll_draining(cx).is_ready() {
                return Poll::Ready(downstream::has_bytes_waiting(stream.tcp()).then(BytesMut::new));
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if tokio::time::Instant::now() >= idle_until {
                return Poll::Ready(None);
            }
            timer.as_mut().reset(idle_until);
        })
        .await
    }
}

/// Reads until a whole head is in `buf`; `None` when the client closes
/// first. The header timeout starts only if the first read leaves the head
/// incomplete: almost every head arrives in one read.
async fn read_head<S: ClientIo>(
    stream: &mut S,
    buf: &mut BytesMut,
    deadlines: &Deadlines,
    max_head: usize,
) -> Result<Option<Head<ProxyBody>>, Refusal> {
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            if let Some(head) = request::parse(buf, max_head, ProxyBody::empty)? {
                return Ok(Some(head));
            }
        }
        wire::reserve_read_room(buf, READ_ROOM);
        let read = match deadline {
            None => match stream.read_at_once(buf) {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    deadline = Some(tokio::time::Instant::now() + deadlines.header_read);
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

/// Drives the proxy's `handling` of a request to its answer. `None` if the
/// client closes its connection before the answer is ready: the request is
/// then dropped, upstream exchange and all (hyper does the same; the access
/// log says 499).
async fn answer<F>(stream: &tokio::net::TcpStream, mut handling: Pin<&mut F>) -> Option<Answer>
where
    F: Future<Output = Answer>,
{
    let mut watching = true;
    poll_fn(|cx| {
        if let Poll::Ready(answered) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(answered));
        }
        // The socket turns readable only on EOF (or a pipelined request);
        // a peek tells which. Over TLS any record is bytes, so a
        // `close_notify` ends the watch as a pipelined request does, and only
        // the socket's EOF counts as the client leaving.
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

/// Writes the answer; `Ok(true)` when the connection can carry another
/// request. `exchange` counts the body bytes written.
async fn write_response<S: ClientIo>(
    stream: &mut S,
    out: &mut Vec<u8>,
    response: Answer,
    to: Answering,
    mut exchange: Option<&mut Exchange>,
) -> std::io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    // Taken before the first frame: polling changes it.
    let exact_length = body.size_hint().exact();
    // Written before the body is polled: polling may end it, and give back
    // its connection with the head as it arrived.
    let head = encode_head(out, &parts, &body, exact_length, to, exchange.as_deref());
    // The first piece of the body, if it is already here, goes out with the head.
    let first = if to.carries_body(parts.status) {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await
    } else {
        Poll::Ready(None)
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
        if let Some(exchange) = exchange.as_deref_mut() {
            exchange.answered_with(failed.status());
        }
        return Box::pin(write_response(
            stream,
            out,
            Box::new(failed),
            Answering { keep_alive: false, ..to },
            exchange,
        ))
        .await;
    }
    // Mostly the empty map of an answer whose head was written from its bytes.
    crate::headers::discard(parts.headers);
    if head.body == Delimited::HeadOnly {
        stream.send_all(out).await?;
        return Ok(head.keep_alive);
    }
    let complete = write_body(stream, out, body, head.body, first, exchange).await?;
    Ok(head.keep_alive && complete)
}

/// Writes the answer's head into `out`: from the upstream's head as it
/// arrived when our client kept it so, else from the map; with the request
/// id and the upstream's name (`exchange`'s) in place of the upstream's.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &ProxyBody,
    exact_length: Option<u64>,
    to: Answering,
    exchange: Option<&Exchange>,
) -> EncodedHead {
    let added = [
        exchange.map(|exchange| (&crate::headers::X_REQUEST_ID, exchange.request_id())),
        exchange.and_then(Exchange::upstream_header),
    ];
    match body.raw_head() {
        Some((head, spans)) => {
            response::encode_head(out, parts.status, wire::raw_pairs(head, spans), exact_length, to, added)
        }
        None => response::encode_head(out, parts.status, response::map_fields(&parts.headers), exact_length, to, added),
    }
}

/// A body frame as polled: `Pending` when none was ready.
type Polled = Poll<Option<Result<http_body::Frame<Bytes>, crate::client::body::BoxError>>>;

/// Streams the body after the head already in `out`, starting with `first`;
/// `Ok(false)` if it failed or did not match its declared length (the
/// connection must close then). Body bytes count as sent (`exchange`) once
/// the write that carries them has succeeded.
async fn write_body<S: ClientIo>(
    stream: &mut S,
    out: &mut Vec<u8>,
    mut body: ProxyBody,
    framing: Delimited,
    first: Polled,
    exchange: Option<&mut Exchange>,
) -> std::io::Result<bool> {
    let mut sent = 0u64;
    let mut complete = true;
    let mut next = first;
    let mut writer = BodyWriter { stream, out, exchange, unwritten: 0 };
    loop {
        let frame = match next {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // More is coming, maybe not soon: what is here goes out now.
                writer.flush().await?;
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
        if let Delimited::Length(n) = framing {
            if data.len() as u64 > n - sent {
                data.truncate((n - sent) as usize);
                complete = false;
            }
        }
        if !data.is_empty() {
            sent += data.len() as u64;
            writer.put_data(&data, framing == Delimited::Chunked).await?;
        }
        if !complete || body.is_end_stream() {
            break;
        }
    }
    if let Delimited::Length(n) = framing {
        complete &= sent == n;
    }
    if framing == Delimited::Chunked && complete {
        writer.out.extend_from_slice(b"0\r\n\r\n");
    }
    writer.flush().await?;
    Ok(complete)
}

/// Writes an answer's body behind its head, counting the body bytes that
/// have gone out.
struct BodyWriter<'a, S> {
    stream: &'a mut S,
    /// The head and small pieces of body, coalesced into one write.
    out: &'a mut Vec<u8>,
    exchange: Option<&'a mut Exchange>,
    /// Body bytes in `out`.
    unwritten: usize,
}

impl<S: ClientIo> BodyWriter<'_, S> {
    /// Writes what `out` holds.
    async fn flush(&mut self) -> std::io::Result<()> {
        self.stream.send_all(self.out).await?;
        self.out.clear();
        let written = std::mem::take(&mut self.unwritten);
        self.count(written);
        Ok(())
    }

    fn count(&mut self, n: usize) {
        if let Some(exchange) = self.exchange.as_deref_mut() {
            exchange.sent(n);
        }
    }

    /// Adds a piece of body behind what `out` holds: copied when small,
    /// else written straight from its own buffer.
    async fn put_data(&mut self, data: &[u8], chunked: bool) -> std::io::Result<()> {
        if chunked {
            let _ = write!(self.out, "{:x}\r\n", data.len());
        }
        if self.out.len() + data.len() <= COALESCE {
            self.out.extend_from_slice(data);
            self.unwritten += data.len();
        } else {
            self.flush().await?;
            self.stream.send_all(data).await?;
            self.count(data.len());
        }
        if chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }
}

/// Answers a refused head with its JSON error and closes the connection,
/// reading what the client still sends for a moment (`linger_for`) first, so
/// that the close does not turn into a reset that could destroy the answer.
async fn refuse<S: ClientIo>(stream: &mut S, refusal: Refusal, linger_for: Duration) {
    let out = &mut Vec::new();
    let (status, code, message) = refusal.describe();
    tracing::debug!(status = status.as_u16(), reason = message, "request head refused");
    let response = crate::error::json_error(status, code, "downstream", message.into(), None, None);
    let to = Answering { is_head: false, version: Version::HTTP_11, keep_alive: false };
    if write_response(stream, out, Box::new(response), to, None).await.is_err() {
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
