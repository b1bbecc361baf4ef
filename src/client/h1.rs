//! HTTP/1.1 for requests without a body, driven inline in the request's own
//! task: the head is written straight to the socket and the answer is read
//! back from it, with no connection task, channel or extra wake-up between
//! the two (hyper's client spends about a third of a proxied GET's CPU on
//! that machinery). Requests with a body, and upgrades, still go through
//! hyper's client (see [`super`]).
//!
//! This file does the socket I/O; the request head is written, and the
//! answer parsed and its body decoded, by the codec
//! ([`crate::wire::request`], [`crate::wire::response`],
//! [`crate::wire::body`]), strictly, as nginx does: an answer whose framing
//! is malformed or ambiguous is an error (the client gets a 502) and the
//! connection is closed. A connection goes back to its pool only after an
//! answer that was read to its exact end, with nothing after it, on a
//! keep-alive connection, and not after an answer to HEAD that announced a
//! body (a broken upstream may send it anyway, after the next request was
//! written, and it would be read as that request's answer). A pooled
//! connection that became readable while idle is closed, not reused.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::body::{Answer, ProxyBody, ResponseBody, UpstreamBody};
use super::pool::{Pool, PoolRef, Pooled, Queues};
use crate::wire::body::{Decoder, Step};
use crate::wire::response::{self, Framing, Head};
use crate::wire::{request, reserve_read_room, Invalid, Span, Spans};

/// Read buffers grow by this much; a read shorter than the room it had
/// lets tokio skip the next `EAGAIN` read.
const READ_CHUNK: usize = 8 * 1024;
/// Large bodies are read this much at a time: fewer system calls and frames.
const BODY_READ: usize = 64 * 1024;
/// A pooled connection keeps a read buffer no larger than this.
const KEEP_BUFFER: usize = 32 * 1024;

/// Idle connections for bodiless requests; an answer read to its end
/// gives its connection back here.
pub static POOL: Pool<Box<Conn>> = Pool { local: &POOL_LOCAL, shared: &POOL_SHARED };

thread_local! {
    static POOL_LOCAL: RefCell<Queues<Box<Conn>>> = const { RefCell::new(Queues::new()) };
}
static POOL_SHARED: Mutex<Queues<Box<Conn>>> = Mutex::new(Queues::new());

impl Pooled for Box<Conn> {
    fn is_open(&mut self) -> bool {
        self.is_reusable()
    }
}

/// What went wrong with an exchange.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Closed (or reset) before any byte of an answer: on a reused
    /// connection this is the keep-alive race, and a new connection may be
    /// tried.
    #[error("the connection closed before an answer")]
    ClosedBeforeAnswer,
    #[error("the connection closed in the middle of the answer")]
    Incomplete,
    #[error("invalid answer: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Io(std::io::Error),
}

impl From<Invalid> for Error {
    fn from(Invalid(why): Invalid) -> Self {
        Error::Invalid(why)
    }
}

/// A plain or TLS connection to a target.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A keep-alive connection with its buffers, and the head of the answer
/// being read while it is still as it arrived.
pub struct Conn {
    io: Io,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
    /// The answer's head, until it is written out or made a map (empty then).
    answer: Bytes,
    /// Where the answer's fields sit in `answer`.
    spans: Spans,
}

impl Conn {
    /// Boxed, once per connection: answers and pools then move a pointer.
    pub fn new(io: Io) -> Box<Self> {
        Box::new(Conn {
            io,
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
            answer: Bytes::new(),
            spans: Spans::default(),
        })
    }

    /// Still open and silent since it went idle: nothing buffered, and the
    /// socket not readable. Readability is what the reactor recorded: a read
    /// polled with a no-op waker returns `Pending` at once, with no system
    /// call, while tokio's readiness for the socket is clear (it is cleared
    /// by the short read that ended the last answer). Only when the reactor
    /// saw the socket become readable (an EOF, a reset or stray bytes after
    /// the answer), or the last read filled its buffer exactly, is one
    /// `read` of a byte made: stray bytes or an EOF close the connection,
    /// `EAGAIN` clears the readiness and it is reused. Bytes that arrive
    /// after the reactor last looked are not seen here; for the one case
    /// where they are expected (HEAD) the connection is not pooled at all.
    ///
    /// Over plain TCP the read is tried without a future or the task's
    /// budget (`try_read`: `WouldBlock` at once while the readiness is clear).
    pub fn is_reusable(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        match &mut self.io {
            Io::Tcp(stream) => {
                matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            io => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                Pin::new(io).poll_read(&mut cx, &mut ReadBuf::new(&mut byte)).is_pending()
            }
        }
    }

    /// Sends a bodiless request, with the headers the proxy adds
    /// (`added`), and reads the head of its answer; the
    /// answer's body reads on from this connection, and gives it back to
    /// `pool` when it ends cleanly. The answer's map is left empty and its
    /// head kept as it arrived ([`Body::raw_head`]), unless its `Connection`
    /// names fields to drop (the map's hop-by-hop strip does that).
    pub async fn exchange(
        mut self: Box<Self>,
        request: &http::Request<ProxyBody>,
        added: Option<&request::Added<'_>>,
        pool: PoolRef,
    ) -> Result<Answer, Error> {
        request::encode_head(&mut self.write_buf, request, added);
        self.io.send_all(&self.write_buf).await.map_err(|e| closed_or_io(e, false))?;
        let head = self.read_head().await?;
        let framing = response::framing(request.method(), head.status, head.version, &head.fields)?;
        let headers = if head.fields.lists_others {
            Some(Head::header_map(&head.bytes, &self.spans))
        } else {
            self.answer = head.bytes;
            None
        };
        let body = UpstreamBody::unheld(ResponseBody::Inline(Body::new(self, framing, pool)));
        let mut response = Box::new(Response::new(ProxyBody::Upstream(body)));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        if let Some(headers) = headers {
            crate::headers::put_map(response.headers_mut(), headers);
        }
        Ok(response)
    }

    /// Reads until a final answer head has arrived.
    async fn read_head(&mut self) -> Result<Head, Error> {
        let mut received = false;
        loop {
            if !self.read_buf.is_empty() {
                if let Some(head) = response::parse_final_head(&mut self.read_buf, &mut self.spans)? {
                    return Ok(head);
                }
            }
            reserve_read_room(&mut self.read_buf, READ_CHUNK);
            let n = self.io.read_buf(&mut self.read_buf).await.map_err(|e| closed_or_io(e, received))?;
            if n == 0 {
                return Err(if received { Error::Incomplete } else { Error::ClosedBeforeAnswer });
            }
            received = true;
        }
    }

    /// Gets the connection ready to wait in a pool.
    fn into_idle(mut self: Box<Self>) -> Box<Self> {
        self.answer = Bytes::new();
        if self.read_buf.capacity() > KEEP_BUFFER {
            self.read_buf = BytesMut::new();
        }
        self
    }
}

/// A reset or broken pipe before any answer counts as the connection having
/// closed under us.
fn closed_or_io(e: std::io::Error, received: bool) -> Error {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    match e.kind() {
        ConnectionReset | BrokenPipe | ConnectionAborted if !received => Error::ClosedBeforeAnswer,
        _ => Error::Io(e),
    }
}

/// An answer's body, read from its connection as the client takes it. At a
/// clean end the connection goes back to its pool; dropped before that, it
/// closes.
pub struct Body {
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    keep_alive: bool,
    pool: PoolRef,
    /// An error found while looking past the last frame, reported next.
    failed: Option<Error>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Body").field("decoder", &self.decoder).field("pool", &self.pool).finish()
    }
}

impl Body {
    fn new(conn: Box<Conn>, framing: Framing, pool: PoolRef) -> Self {
        let mut body =
            Body { conn: Some(conn), decoder: framing.decoder, keep_alive: framing.keep_alive, pool, failed: None };
        // A bodiless answer gives its connection back at once, unless its
        // head is still to be read from it (then when dropped or polled).
        if body.decoder == Decoder::Done && body.raw_head().is_none() {
            body.finish();
        }
        body
    }

    /// The answer's head as it arrived, and where its fields sit: `None`
    /// once it has been made a map, or its body has ended (the connection
    /// may be back in its pool then: read the head before the body).
    pub fn raw_head(&self) -> Option<(&Bytes, &[Span])> {
        let conn = self.conn.as_ref().filter(|conn| !conn.answer.is_empty())?;
        Some((&conn.answer, conn.spans.as_slice()))
    }

    /// The map of a head still as it arrived (made once: `None` after).
    pub fn take_header_map(&mut self) -> Option<HeaderMap> {
        let conn = self.conn.as_mut().filter(|conn| !conn.answer.is_empty())?;
        let bytes = std::mem::take(&mut conn.answer);
        Some(Head::header_map(&bytes, &conn.spans))
    }

    /// The body ended: the connection is reused if it is clean.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive && conn.read_buf.is_empty() {
            POOL.release(self.pool, conn.into_idle());
        }
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            match self.decoder.step(&mut conn.read_buf) {
                Ok(Step::Data(data)) => {
                    // Framing right behind the data (a chunked body's
                    // `0\r\n\r\n`) is read now, so the end is seen at once;
                    // an error there is the next frame.
                    if let Err(e) = self.decoder.read_framing(&mut conn.read_buf) {
                        self.conn = None;
                        self.failed = Some(e.into());
                    }
                    if self.decoder == Decoder::Done {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            reserve_read_room(&mut conn.read_buf, read_room(&self.decoder));
            let read = std::pin::pin!(conn.io.read_buf(&mut conn.read_buf));
            match ready!(std::future::Future::poll(read, cx)) {
                Ok(0) if self.decoder == Decoder::UntilClose => {
                    self.keep_alive = false;
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Incomplete)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Io(e))));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// How much room the next read of a body gets: what is left of a known
/// length (within [`READ_CHUNK`]..[`BODY_READ`]), else the most.
fn read_room(decoder: &Decoder) -> usize {
    match *decoder {
        Decoder::Length(n) => usize::try_from(n).unwrap_or(usize::MAX).clamp(READ_CHUNK, BODY_READ),
        _ => BODY_READ,
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if self.decoder == Decoder::Done {
            self.finish();
        }
    }
}

impl Io {
    /// Sends all of `bytes`: over plain TCP at once when the socket takes
    /// them ([`crate::wire::write_all`]), over TLS written and flushed.
    async fn send_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Tcp(stream) => crate::wire::write_all(stream, bytes).await,
            Io::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod exchange_tests {
    use super::*;
    use http_body::Body as _;

    /// One exchange with a loopback peer that answers `answer`.
    pub(super) async fn exchange(answer: &'static [u8]) -> Result<Vec<u8>, Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = peer.read(&mut buf).await;
            peer.write_all(answer).await.unwrap();
            let _ = peer.read(&mut buf).await;
        });
        let conn = Conn::new(Io::Tcp(TcpStream::connect(addr).await.unwrap()));
        let mut request = http::Request::new(crate::client::body::ProxyBody::empty());
        request.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("t"));
        let pool = PoolRef::new(crate::client::pool::PoolId::fresh(), std::time::Duration::from_secs(1));
        let response = conn.exchange(&request, None, pool).await?;
        let mut body = std::pin::pin!(response.into_body());
        let mut body = body.as_mut();
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            out.extend_from_slice(
                frame.map_err(|e| *e.downcast::<Error>().expect("an exchange error"))?.data_ref().unwrap(),
            );
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole() {
        let body = exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nX-T: t\r\n\r\n").await;
        assert_eq!(body.unwrap(), b"hello world");
    }

    /// A keep-alive connection whose peer answers `ok` to a GET, then,
    /// once told, writes `stray` (nothing when empty) and keeps the
    /// connection open. Returns the pool the connection went back to.
    async fn pooled_then(stray: &'static [u8]) -> PoolRef {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (written, wrote) = tokio::sync::oneshot::channel();
        let (go, told) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = peer.read(&mut buf).await;
            peer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
            let _ = told.await;
            peer.write_all(stray).await.unwrap();
            let _ = written.send(());
            let _ = peer.read(&mut buf).await;
        });
        let pool = PoolRef::new(crate::client::pool::PoolId::fresh(), std::time::Duration::from_secs(60));
        let conn = Conn::new(Io::Tcp(TcpStream::connect(addr).await.unwrap()));
        let mut request = http::Request::new(crate::client::body::ProxyBody::empty());
        request.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("t"));
        let mut body = std::pin::pin!(conn.exchange(&request, None, pool).await.unwrap().into_body());
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            frame.unwrap();
        }
        go.send(()).unwrap();
        wrote.await.unwrap();
        // Lets the reactor look at the sockets before this task runs on.
        tokio::task::yield_now().await;
        pool
    }

    #[tokio::test]
    async fn a_pooled_connection_that_became_readable_while_idle_is_closed_not_reused() {
        let pool = pooled_then(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray").await;
        assert!(POOL.checkout(pool).is_none(), "stray bytes while idle");
        let pool = pooled_then(b"").await;
        assert!(POOL.checkout(pool).is_some(), "a silent idle connection is reused");
    }
}
