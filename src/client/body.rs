//! The one body type the proxy sends in both directions: a streamed body from
//! the other side, or a small body the proxy made itself (errors, admin).
//! An enum rather than a boxed trait object, so no allocation per request.
//!
//! It lives with the connections because an upstream's answer body is one
//! of its kinds, and such a body gives its connection back to the pool
//! ([`ResponseBody`]) and its concurrency slot back to the upstream
//! ([`UpstreamBody`]) when it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::cell::RefCell;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use sha2::{Digest, Sha256};

use super::h1;
use super::pool::{Pool, PoolRef, Pooled, Queues};
use super::target::Permit;
use crate::wire::Span;

/// Any body's error: the client's upload, or the upstream's answer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An answer on its way to the client, boxed where it is made (by our
/// client, or as the proxy's own error): each stage hands it on as a
/// pointer. Whole it is 208 bytes, and a proxied GET passed it through some
/// twenty returns and `await`s, each a copy (~1k instructions, and the
/// cache misses of writing it into every future on the way).
pub type Answer = Box<Response<ProxyBody>>;

/// A request or response body passing through the proxy.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the client or the upstream, frame by frame.
    Streamed(Incoming),
    /// Made by the proxy; sent once.
    Full(Option<Bytes>),
    /// Streamed through unchanged while a copy is taken for shadow comparison.
    Tee(Box<Tee>),
    /// An upstream's answer: holds its concurrency slot until the body ends,
    /// then gives the connection back to its pool.
    Upstream(UpstreamBody),
}

/// The body of an upstream's answer, holding the exchange's concurrency
/// slot until it ends (its connection is the client's business).
#[derive(Debug)]
pub struct UpstreamBody {
    body: ResponseBody,
    permit: Option<Permit>,
}

impl UpstreamBody {
    /// An answer's body before its exchange has been charged to a slot
    /// ([`hold_slot`]).
    pub fn unheld(body: ResponseBody) -> Self {
        UpstreamBody { body, permit: None }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.body.is_end_stream() {
            self.permit = None;
        }
        polled
    }
}

/// What a tee saw of a body.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The body, when it was at most the capture limit (else empty).
    pub body: Bytes,
    pub len: u64,
    pub sha256: [u8; 32],
    /// The whole body fits in `body`.
    pub within_limit: bool,
}

/// Called once when a teed body ends: with what it saw, or `None` if the
/// stream failed or was dropped before its end.
pub type OnEnd = Box<dyn FnOnce(Option<Captured>) + Send + Sync>;

/// A body passing through while up to `limit` bytes of it are kept and all
/// of it is hashed.
pub struct Tee {
    inner: ProxyBody,
    capture: Capture,
    on_end: Option<OnEnd>,
}

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee").field("len", &self.capture.len).field("limit", &self.capture.limit).finish()
    }
}

impl Tee {
    pub fn wrap(inner: ProxyBody, limit: usize, on_end: OnEnd) -> ProxyBody {
        ProxyBody::Tee(Box::new(Tee { inner, capture: Capture::new(limit), on_end: Some(on_end) }))
    }

    fn finish(&mut self, complete: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end(complete.then(|| std::mem::replace(&mut self.capture, Capture::new(0)).finish()));
        }
    }
}

/// Keeps up to `limit` bytes of a body and hashes all of it, as it passes.
pub struct Capture {
    limit: usize,
    buf: BytesMut,
    len: u64,
    hasher: Sha256,
    overflow: bool,
}

impl Capture {
    pub fn new(limit: usize) -> Self {
        Capture { limit, buf: BytesMut::new(), len: 0, hasher: Sha256::new(), overflow: false }
    }

    pub fn observe(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.hasher.update(data);
        if !self.overflow {
            if self.buf.len() + data.len() <= self.limit {
                self.buf.extend_from_slice(data);
            } else {
                self.overflow = true;
                self.buf = BytesMut::new();
            }
        }
    }

    pub fn finish(self) -> Captured {
        Captured {
            body: self.buf.freeze(),
            len: self.len,
            sha256: self.hasher.finalize().into(),
            within_limit: !self.overflow,
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }

    /// The upstream answer's head as it arrived, while its map is not
    /// built (see [`h1::Body::raw_head`]).
    pub fn raw_head(&self) -> Option<(&Bytes, &[Span])> {
        match self {
            ProxyBody::Upstream(upstream) => upstream.body.raw_head(),
            _ => None,
        }
    }
}

/// Puts the fields of an answer whose head our client kept as it arrived
/// into its map (before what the map already holds, which wins on a name);
/// `false` if there was no such head. Every reader of an upstream answer's
/// map calls it first; only our server's HTTP/1.1 loop writes the head
/// from its bytes instead, and spares the map.
pub fn fill_headers<B: HasRawHead>(response: &mut Response<B>) -> bool {
    let Some(mut map) = response.body_mut().take_header_map() else { return false };
    map.extend(std::mem::take(response.headers_mut()));
    *response.headers_mut() = map;
    true
}

/// Charges an upstream's answer to the concurrency slot its exchange took:
/// the slot is held until the answer's body ends, not only its head.
pub fn hold_slot(answer: &mut Response<ProxyBody>, permit: Permit) {
    if let ProxyBody::Upstream(body) = answer.body_mut() {
        body.permit = Some(permit);
    }
}

/// A body that may hold its answer's head as it arrived ([`fill_headers`]).
pub trait HasRawHead {
    /// The head's fields as a map, made once (`None` after, or if none).
    fn take_header_map(&mut self) -> Option<HeaderMap>;
}

impl HasRawHead for ResponseBody {
    fn take_header_map(&mut self) -> Option<HeaderMap> {
        match self {
            ResponseBody::Inline(body) => body.take_header_map(),
            ResponseBody::Hyper(_) => None,
        }
    }
}

impl HasRawHead for ProxyBody {
    fn take_header_map(&mut self) -> Option<HeaderMap> {
        match self {
            ProxyBody::Upstream(upstream) => upstream.body.take_header_map(),
            _ => None,
        }
    }
}

impl ResponseBody {
    /// See [`ProxyBody::raw_head`].
    pub fn raw_head(&self) -> Option<(&Bytes, &[Span])> {
        match self {
            ResponseBody::Inline(body) => body.raw_head(),
            ResponseBody::Hyper(_) => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Streamed(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(upstream) => upstream.poll_frame(cx),
            ProxyBody::Tee(tee) => {
                let polled = Pin::new(&mut tee.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            tee.capture.observe(data);
                        }
                        if tee.inner.is_end_stream() {
                            tee.finish(true);
                        }
                    }
                    Poll::Ready(None) => tee.finish(true),
                    Poll::Ready(Some(Err(_))) => tee.finish(false),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Streamed(body) => body.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Tee(tee) => tee.inner.is_end_stream(),
            ProxyBody::Upstream(upstream) => upstream.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Streamed(body) => body.size_hint(),
            ProxyBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Tee(tee) => tee.inner.size_hint(),
            ProxyBody::Upstream(upstream) => upstream.body.size_hint(),
        }
    }
}

/// An upstream's answer body. Its connection goes back to the pool when it
/// ends cleanly; dropped half-read, the connection closes.
#[derive(Debug)]
pub enum ResponseBody {
    Inline(h1::Body),
    Hyper(HyperBody),
}

/// A body read by hyper's connection task, with the connection it came on.
#[derive(Debug)]
pub struct HyperBody {
    body: Incoming,
    sender: Option<SendRequest<ProxyBody>>,
    pool: PoolRef,
}

/// Connections driven by hyper, for requests with a body.
pub static HYPER: Pool<SendRequest<ProxyBody>> = Pool { local: &HYPER_LOCAL, shared: &HYPER_SHARED };

thread_local! {
    static HYPER_LOCAL: RefCell<Queues<SendRequest<ProxyBody>>> = const { RefCell::new(Queues::new()) };
}
static HYPER_SHARED: Mutex<Queues<SendRequest<ProxyBody>>> = Mutex::new(Queues::new());

impl Pooled for SendRequest<ProxyBody> {
    fn is_open(&mut self) -> bool {
        !self.is_closed()
    }
}

impl HyperBody {
    /// An answer's body and the connection to pool when it ends (`None`:
    /// closed when it ends).
    pub fn new(body: Incoming, sender: Option<SendRequest<ProxyBody>>, pool: PoolRef) -> Self {
        HyperBody { body, sender, pool }
    }

    fn finish(&mut self) {
        if let Some(sender) = self.sender.take() {
            if !sender.is_closed() {
                HYPER.release(self.pool, sender);
            }
        }
    }
}

impl Drop for HyperBody {
    fn drop(&mut self) {
        // An empty answer (HEAD, 204, 304, `Content-Length: 0`) is never polled.
        if self.body.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Inline(body) => body.poll_frame(cx).map_err(Into::into),
            ResponseBody::Hyper(hyper) => {
                let polled = Pin::new(&mut hyper.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(_))) if hyper.body.is_end_stream() => hyper.finish(),
                    Poll::Ready(None) => hyper.finish(),
                    // A broken body leaves the connection unusable.
                    Poll::Ready(Some(Err(_))) => hyper.sender = None,
                    _ => {}
                }
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Inline(body) => body.is_end_stream(),
            ResponseBody::Hyper(hyper) => hyper.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Inline(body) => body.size_hint(),
            ResponseBody::Hyper(hyper) => hyper.body.size_hint(),
        }
    }
}
