//! HTTP/1.1 for requests without a body, driven inline in the request's own
//! task: the head is written straight to the socket and the answer is read
//! back from it, with no connection task, channel or extra wake-up between
//! the two (hyper's client spends about a third of a proxied GET's CPU on
//! that machinery). Requests with a body, and upgrades, still go through
//! hyper's client (see [`super`]).
//!
//! Answers are parsed strictly, as nginx does, because framing is where
//! response splitting and desync live: both `Content-Length` and
//! `Transfer-Encoding`, more than one `Content-Length`, a transfer coding
//! other than `chunked`, obsolete line folding, a malformed chunk, or a head
//! over [`MAX_HEAD`] is an error (the client gets a 502) and the connection
//! is closed. A connection goes back to its pool only after an answer that
//! was read to its exact end, with nothing after it, on a keep-alive
//! connection.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::pool::PoolId;
use crate::wire::{self, keeps_alive, parse_length, reserve_read_room, HEADROOM, MAX_HEADERS};

/// The largest answer head accepted (nginx's default is 4–8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// The largest trailer section of a chunked answer (trailers are dropped).
const MAX_TRAILERS: usize = 16 * 1024;
/// The longest chunk extension accepted (they are skipped).
const MAX_CHUNK_EXT: usize = 4096;
/// Read buffers grow by this much; a read shorter than the room it had
/// lets tokio skip the next `EAGAIN` read.
const READ_CHUNK: usize = 8 * 1024;
/// Large bodies are read this much at a time: fewer system calls and frames.
const BODY_READ: usize = 64 * 1024;
/// A pooled connection keeps a read buffer no larger than this.
const KEEP_BUFFER: usize = 32 * 1024;

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

/// A plain or TLS connection to a target.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A keep-alive connection with its buffers.
pub struct Conn {
    io: Io,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
}

impl Conn {
    /// Boxed, once per connection: answers and pools then move a pointer.
    pub fn new(io: Io) -> Box<Self> {
        Box::new(Conn { io, read_buf: BytesMut::new(), write_buf: Vec::new() })
    }

    /// Still open and silent since it went idle. Costs no system call unless
    /// the socket became readable (an EOF, a reset or stray bytes).
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io).poll_read(&mut cx, &mut buf).is_pending()
    }

    /// Sends a bodiless request and reads the head of its answer; the
    /// answer's body reads on from this connection, and gives it back to
    /// `pool` when it ends cleanly.
    pub async fn exchange(
        mut self: Box<Self>,
        request: &http::Request<crate::client::body::ProxyBody>,
        pool: PoolId,
    ) -> Result<Response<Body>, Error> {
        encode_head(&mut self.write_buf, request);
        self.io.write_all(&self.write_buf).await.map_err(|e| closed_or_io(e, false))?;
        self.io.flush().await.map_err(|e| closed_or_io(e, false))?;
        let head = self.read_head().await?;
        let framing = framing(request.method(), head.status, head.version, &head.headers)?;
        let mut response = Response::new(Body::new(self, framing, pool));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    /// Reads until a final answer head has arrived.
    async fn read_head(&mut self) -> Result<Head, Error> {
        let mut received = false;
        loop {
            if !self.read_buf.is_empty() {
                match parse_final_head(&mut self.read_buf)? {
                    Some(head) => return Ok(head),
                    None if self.read_buf.len() >= MAX_HEAD => return Err(Error::Invalid("head too large")),
                    None => {}
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

/// Writes the request line and headers. `Host` is already in the map; a
/// bodiless request whose method normally carries one says so with
/// `Content-Length: 0`.
fn encode_head(out: &mut Vec<u8>, request: &http::Request<crate::client::body::ProxyBody>) {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if expects_body(request.method()) && !request.headers().contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn expects_body(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE)
}

/// An answer's head, its header values sharing the read buffer's memory.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// Parses heads off the front of `buf` until a final one (not 1xx, or
/// 101): interim answers (100 Continue, 103 Early Hints) are skipped.
/// `None` until a final head is complete.
fn parse_final_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    while let Some(head) = parse_head(buf)? {
        if !head.status.is_informational() || head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Some(head));
        }
    }
    Ok(None)
}

/// Parses one head off the front of `buf`; `None` until it is complete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let (len, status, version, count) = {
        // Uninitialized: filling 100 empty slots per answer showed in profiles.
        let mut slots = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(Error::Invalid("too many header fields")),
                Err(_) => return Err(Error::Invalid("malformed head")),
            };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("invalid status code"))?;
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        (len, status, version, wire::record_spans(buf, parsed.headers, &mut spans))
    };
    let head = buf.split_to(len).freeze();
    // Room for the headers the proxy adds; hyper then parses the client's
    // next request on this connection into this same map, room included.
    let headers = wire::header_map(&head, &spans[..count], HEADROOM).ok_or(Error::Invalid("invalid header field"))?;
    Ok(Some(Head { status, version, headers }))
}

/// How an answer's body is delimited (RFC 9112 §6.3), and whether the
/// connection can carry another request after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Framing {
    decoder: Decoder,
    keep_alive: bool,
}

fn framing(method: &Method, status: StatusCode, version: Version, headers: &HeaderMap) -> Result<Framing, Error> {
    let keep_alive = keeps_alive(version, headers) && status != StatusCode::SWITCHING_PROTOCOLS;
    let no_body = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if no_body {
        return Ok(Framing { decoder: Decoder::Done, keep_alive });
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(Error::Invalid("more than one Content-Length"));
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if length.is_some() {
            return Err(Error::Invalid("both Content-Length and Transfer-Encoding"));
        }
        if codings.next().is_some() || !coding.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(Error::Invalid("a transfer coding other than chunked"));
        }
        return Ok(Framing { decoder: Decoder::Chunked(Chunked::default()), keep_alive });
    }
    match length {
        Some(value) => match parse_length(value.as_bytes()) {
            Some(0) => Ok(Framing { decoder: Decoder::Done, keep_alive }),
            Some(n) => Ok(Framing { decoder: Decoder::Length(n), keep_alive }),
            None => Err(Error::Invalid("invalid Content-Length")),
        },
        None => Ok(Framing { decoder: Decoder::UntilClose, keep_alive: false }),
    }
}

/// Where the body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the upstream closes the connection.
    UntilClose,
    Done,
}

/// The chunked decoder's state (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Chunked {
    /// Reading the hex chunk size: its value and digit count so far.
    #[default]
    SizeStart,
    Size(u64, u8),
    /// Skipping a chunk extension (or whitespace before it).
    Extension(u64, usize),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines (bytes seen so far), then CRLF.
    TrailerLineStart(usize),
    TrailerLine(usize),
    TrailerLineLf(usize),
    EndLf,
}

/// What the decoder produced from the buffered bytes.
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

impl Decoder {
    /// How much room the next read of the body gets: what is left of a
    /// known length (within [`READ_CHUNK`]..[`BODY_READ`]), else the most.
    fn read_room(&self) -> usize {
        match *self {
            Decoder::Length(n) => usize::try_from(n).unwrap_or(usize::MAX).clamp(READ_CHUNK, BODY_READ),
            _ => BODY_READ,
        }
    }

    /// Decodes what `buf` holds; framing bytes are consumed, data is split
    /// off without a copy.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        match self {
            Decoder::Done => Ok(Step::End),
            Decoder::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let take = (*remaining).min(buf.len() as u64) as usize;
                *remaining -= take as u64;
                if *remaining == 0 {
                    *self = Decoder::Done;
                }
                Ok(Step::Data(buf.split_to(take).freeze()))
            }
            Decoder::UntilClose if buf.is_empty() => Ok(Step::NeedMore),
            Decoder::UntilClose => Ok(Step::Data(buf.split().freeze())),
            Decoder::Chunked(state) => {
                let step = state.step(buf, false)?;
                if matches!(step, Step::End) {
                    *self = Decoder::Done;
                }
                Ok(step)
            }
        }
    }
}

impl Chunked {
    /// With `framing_only`, stops before any data: used to see whether the
    /// body's end is already buffered right behind the last data.
    fn step(&mut self, buf: &mut BytesMut, framing_only: bool) -> Result<Step, Error> {
        use Chunked::*;
        loop {
            if let Data(remaining) = *self {
                if buf.is_empty() || framing_only {
                    return Ok(Step::NeedMore);
                }
                let take = remaining.min(buf.len() as u64) as usize;
                *self = if take as u64 == remaining { DataCr } else { Data(remaining - take as u64) };
                return Ok(Step::Data(buf.split_to(take).freeze()));
            }
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let byte = buf[0];
            buf.advance(1);
            *self = match (*self, byte) {
                (SizeStart, _) => match hex(byte) {
                    Some(d) => Size(u64::from(d), 1),
                    None => return Err(Error::Invalid("invalid chunk size")),
                },
                (Size(_, 16), _) if hex(byte).is_some() => return Err(Error::Invalid("chunk size too large")),
                (Size(n, digits), _) if hex(byte).is_some() => Size(n << 4 | u64::from(hex(byte).unwrap()), digits + 1),
                (Size(n, _), b'\r') => SizeLf(n),
                (Size(n, _), b';' | b' ' | b'\t') => Extension(n, 1),
                (Extension(_, len), _) if len > MAX_CHUNK_EXT => {
                    return Err(Error::Invalid("chunk extension too long"))
                }
                (Extension(n, _), b'\r') => SizeLf(n),
                (Extension(_, _), b'\n') => return Err(Error::Invalid("bare LF in a chunk extension")),
                (Extension(n, len), _) => Extension(n, len + 1),
                (SizeLf(0), b'\n') => TrailerLineStart(0),
                (SizeLf(n), b'\n') => Data(n),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => SizeStart,
                (TrailerLineStart(_), b'\r') => EndLf,
                (TrailerLineStart(_) | TrailerLine(_), b'\n') => return Err(Error::Invalid("bare LF in trailers")),
                (TrailerLineStart(seen) | TrailerLine(seen), _) if seen >= MAX_TRAILERS => {
                    return Err(Error::Invalid("trailers too large"))
                }
                (TrailerLine(seen), b'\r') => TrailerLineLf(seen + 1),
                (TrailerLineStart(seen) | TrailerLine(seen), _) => TrailerLine(seen + 1),
                (TrailerLineLf(seen), b'\n') => TrailerLineStart(seen + 1),
                (EndLf, b'\n') => return Ok(Step::End),
                _ => return Err(Error::Invalid("malformed chunked body")),
            };
        }
    }
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// An answer's body, read from its connection as the client takes it. At a
/// clean end the connection goes back to its pool; dropped before that, it
/// closes.
pub struct Body {
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    keep_alive: bool,
    pool: PoolId,
    /// An error found while looking past the last frame, reported next.
    failed: Option<Error>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Body").field("decoder", &self.decoder).field("pool", &self.pool).finish()
    }
}

impl Body {
    fn new(conn: Box<Conn>, framing: Framing, pool: PoolId) -> Self {
        let mut body =
            Body { conn: Some(conn), decoder: framing.decoder, keep_alive: framing.keep_alive, pool, failed: None };
        if body.decoder == Decoder::Done {
            body.finish();
        }
        body
    }

    /// The body ended: the connection is reused if it is clean.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive && conn.read_buf.is_empty() {
            super::release_inline(self.pool, conn.into_idle());
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
                    if let Decoder::Chunked(state) = &mut self.decoder {
                        match state.step(&mut conn.read_buf, true) {
                            Ok(Step::End) => self.decoder = Decoder::Done,
                            Ok(_) => {}
                            Err(e) => {
                                self.conn = None;
                                self.failed = Some(e);
                            }
                        }
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
                    return Poll::Ready(Some(Err(e)));
                }
            }
            reserve_read_room(&mut conn.read_buf, self.decoder.read_room());
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

impl Drop for Body {
    fn drop(&mut self) {
        if self.decoder == Decoder::Done {
            self.finish();
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
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf).unwrap().expect("complete")
    }

    fn framing_of(text: &str) -> Result<Framing, Error> {
        let h = head(text);
        framing(&Method::GET, h.status, h.version, &h.headers)
    }

    /// Decodes a whole chunked body given in pieces; the data, or the error.
    fn dechunk(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), Error> {
        let mut decoder = Decoder::Chunked(Chunked::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decoder.step(&mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    Step::End => return Ok((out, buf.is_empty())),
                }
            }
        }
        Err(Error::Incomplete)
    }

    #[test]
    fn a_head_shares_the_buffer_and_leaves_the_body_in_it() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nok"[..]);
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"ok");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut partial).unwrap().is_none());
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(framing_of(text), Err(Error::Invalid(_))), "{text:?}");
        }
        // (A bare LF ending a head line is accepted, as RFC 9112 §2.2
        // allows: the head is written afresh to the client, so it cannot
        // split anything.)
        for text in
            ["HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nX\0: a\r\n\r\n"]
        {
            let mut buf = BytesMut::from(text.as_bytes());
            assert!(parse_head(&mut buf).is_err(), "{text:?}");
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let length = framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(length, Framing { decoder: Decoder::Length(5), keep_alive: true });
        let close = framing_of("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(close, Framing { decoder: Decoder::UntilClose, keep_alive: false });
        let told = framing_of("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(!told.keep_alive);
        let old = framing_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(!old.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(framing(&Method::HEAD, h.status, h.version, &h.headers).unwrap().decoder, Decoder::Done);
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").unwrap().decoder,
            Decoder::Done
        );
        let upgrade = framing_of("HTTP/1.1 101 Switching Protocols\r\n\r\n").unwrap();
        assert!(!upgrade.keep_alive);
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let body: &[u8] = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..body.len() {
            let (data, clean) = dechunk(&[&body[..cut], &body[cut..]]).unwrap();
            assert_eq!(data, b"hello 0123456789", "cut at {cut}");
            assert!(clean);
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(dechunk(&bytes).unwrap().0, b"hello 0123456789");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
            b"-1\r\n",
            b"\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"0\r\n\n",
        ] {
            assert!(matches!(dechunk(&[bad]), Err(Error::Invalid(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        let long_ext = [&b"1;"[..], &[b'a'; MAX_CHUNK_EXT + 10][..]].concat();
        assert!(matches!(dechunk(&[&long_ext]), Err(Error::Invalid(_))));
        let huge_trailers = [&b"0\r\n"[..], &[b'a'; MAX_TRAILERS + 10][..]].concat();
        assert!(matches!(dechunk(&[&huge_trailers]), Err(Error::Invalid(_))));
    }

    #[test]
    fn bytes_after_a_chunked_end_are_left_for_the_caller() {
        let (_, clean) = dechunk(&[b"0\r\n\r\nHTTP/1.1 200 OK"]).unwrap();
        assert!(!clean, "stray bytes make the connection unusable");
    }

    #[test]
    fn request_heads_are_origin_form_with_a_length_only_where_a_body_is_expected() {
        let mut out = Vec::new();
        let mut request = http::Request::new(crate::client::body::ProxyBody::empty());
        *request.uri_mut() = http::Uri::from_static("/a?b=1");
        request.headers_mut().insert(header::HOST, http::HeaderValue::from_static("up"));
        encode_head(&mut out, &request);
        assert_eq!(out, b"GET /a?b=1 HTTP/1.1\r\nhost: up\r\n\r\n");
        *request.method_mut() = Method::POST;
        encode_head(&mut out, &request);
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn lengths_are_plain_digits() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"123"), Some(123));
        for bad in [&b""[..], b" 1", b"1 ", b"-1", b"0x10", b"1234567890123456789"] {
            assert_eq!(parse_length(bad), None);
        }
    }
}

#[cfg(test)]
mod exchange_tests {
    use super::*;

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
        request.headers_mut().insert(header::HOST, http::HeaderValue::from_static("t"));
        let response = conn.exchange(&request, PoolId(0)).await?;
        let mut body = std::pin::pin!(response.into_body());
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().get_mut().poll_frame(cx)).await {
            out.extend_from_slice(frame?.data_ref().unwrap());
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole() {
        let body = exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nX-T: t\r\n\r\n").await;
        assert_eq!(body.unwrap(), b"hello world");
    }
}

/// For the fuzz target `h1_answer`: parses `data` as an answer (to a GET,
/// or to a HEAD when `head` is set) and decodes its body fed in two pieces
/// cut at `cut`. Never panics; a body never yields more than its
/// `Content-Length`, nor more bytes than arrived.
#[doc(hidden)]
pub fn check_answer(data: &[u8], head: bool, cut: usize) {
    let mut buf = BytesMut::from(data);
    let Ok(Some(parsed)) = parse_final_head(&mut buf) else { return };
    let method = if head { Method::HEAD } else { Method::GET };
    let Ok(framing) = framing(&method, parsed.status, parsed.version, &parsed.headers) else { return };
    let limit = match framing.decoder {
        Decoder::Length(n) => n,
        Decoder::Done => 0,
        _ => u64::MAX,
    };
    let rest = buf.split();
    let cut = cut.min(rest.len());
    let mut decoder = framing.decoder;
    let mut pending = BytesMut::new();
    let mut out = 0u64;
    for piece in [&rest[..cut], &rest[cut..]] {
        pending.extend_from_slice(piece);
        loop {
            match decoder.step(&mut pending) {
                Ok(Step::Data(d)) => out += d.len() as u64,
                Ok(Step::NeedMore) | Ok(Step::End) | Err(_) => break,
            }
            if decoder == Decoder::Done {
                break;
            }
        }
    }
    assert!(out <= limit && out <= rest.len() as u64, "decoded {out} of {} (limit {limit})", rest.len());
}
