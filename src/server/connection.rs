//! One downstream connection's life: TLS or a peek at its first bytes to
//! tell HTTP/1.1 from HTTP/2, then our own HTTP/1.1 loop ([`super::h1`]) or
//! hyper, the hand-off from our loop to hyper (with the bytes already read),
//! and the end: closed, drained, or idle for too long. A plain listener
//! beside a TLS one may instead answer everything with a redirect to HTTPS.
//!
//! Every HTTP/1.1 head, ours or hyper's, must arrive within the header
//! timeout ([`super::deadline::HeadDeadline`] over hyper's IO), while a
//! connection with no bytes waiting may idle for the keep-alive timeout.
//!
//! Heads hyper reads (after a hand-off, and on HTTP/2 and `--http1 hyper`
//! connections) are parsed by httparse and the `http` crate, not by
//! [`crate::wire::request`], with two differences our loop does not share:
//! a `#` in the target is not refused, the fragment is dropped (the `http`
//! crate's URI parser cuts it off, so the route and the upstream both see
//! the target without it); and a line ending in a bare LF is read as if it
//! ended in CRLF (RFC 9112 §2.2 allows it; the upstream is then told the
//! request hyper read, in CRLF). Our loop refuses both with a 400 on every
//! head it reads, the one it hands over included.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::deadline::{idle_for, Deadlines, FirstRequest, RequestCount};
use super::downstream::TlsClient;
use super::drain::Drain;
use super::h1;
use super::ServeOptions;
use crate::client::body::ProxyBody;
use crate::proxy::{self, Downstream, Exchange};
use crate::Shared;

/// How a connection is served.
#[derive(Clone)]
pub(super) enum Kind {
    Proxy { tls: Option<tokio_rustls::TlsAcceptor> },
    Redirect { port: u16 },
}

/// What every connection of a run shares: the hyper builders, the proxy's
/// state, the timeout policy.
pub(super) struct Connections {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// The proxy's state, the timeouts and the head size limit (which
    /// hyper's builders have too), as our loop takes them.
    pub settings: h1::Settings,
    /// Serve bodiless plain-HTTP/1.1 requests with our own loop.
    inline_http1: bool,
}

impl Connections {
    pub fn new(options: &ServeOptions, shared: Arc<Shared>) -> Self {
        let deadlines = Deadlines::new(options);
        Connections {
            http1: http1_builder(options, &deadlines),
            http2: http2_builder(options),
            settings: h1::Settings { shared, deadlines, max_head: options.max_header_bytes },
            inline_http1: options.inline_http1,
        }
    }

    /// Serves `stream` in a task of its own, until it ends or has drained.
    pub fn serve(self: &Arc<Self>, drain: Drain, stream: TcpStream, kind: Kind) {
        let Ok(remote) = stream.peer_addr() else { return };
        let _ = stream.set_nodelay(true);
        let this = self.clone();
        match kind {
            Kind::Proxy { tls: None } => {
                tokio::spawn(this.serve_plain(stream, drain, Arc::new(Downstream::new(remote, "http"))));
            }
            Kind::Proxy { tls: Some(acceptor) } => {
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    let stream = match tokio::time::timeout(this.settings.deadlines.tls_handshake, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(error = %e, %remote, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
                    };
                    let protocol = match stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    let downstream = Arc::new(Downstream::new(remote, "https"));
                    if let (Protocol::Http1, true) = (&protocol, this.inline_http1) {
                        return Box::pin(this.serve_inline(stream, drain, downstream)).await;
                    }
                    // HTTP/2 has no deadline for a silent client of its own.
                    let (stream, requests) = this.settings.deadlines.first_head(stream, protocol.first_request());
                    this.serve_proxied(stream, protocol, downstream, drain, requests).await
                });
            }
            Kind::Redirect { port } => {
                tokio::spawn(async move {
                    let Some(protocol) = sniff(&stream, this.settings.deadlines.header_read, &remote).await else {
                        return;
                    };
                    let (stream, requests) = this.settings.deadlines.first_head(stream, protocol.first_request());
                    let counted = requests.clone();
                    let service = service_fn(move |req| {
                        counted.started();
                        let answer = redirect_to_https(&req, port)
                            .map(|body| AnswerBody::new(body, Some(counted.clone()), None));
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    this.serve_http(stream, protocol, service, drain, remote, Some(requests)).await
                });
            }
        }
    }

    /// A plain-TCP connection's task: the protocol sniffed, then our own
    /// HTTP/1.1 loop, or hyper. Most connections idle most of their life in
    /// this task, so what it holds then is kept small (a test below bounds
    /// it): hyper's connection state is boxed, and this is a plain function
    /// around an `async move` block, which keeps its arguments once (an
    /// `async fn` would keep a second copy of the stream and the drain).
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    fn serve_plain(
        self: Arc<Self>,
        mut stream: TcpStream,
        mut drain: Drain,
        downstream: Arc<Downstream>,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let Some(protocol) = sniff(&stream, self.settings.deadlines.header_read, &downstream.remote).await else {
                return;
            };
            if let (Protocol::Http1, true) = (&protocol, self.inline_http1) {
                // The first bytes are here (the sniff saw them).
                let ended =
                    h1::serve(&mut stream, &self.settings, &downstream, &mut drain, self.settings.deadlines.keepalive);
                let h1::Ended::HandOff(read) = ended.await else { return };
                return Box::pin(self.hand_to_hyper(read, stream, downstream, drain)).await;
            }
            let (stream, requests) = self.settings.deadlines.first_head(stream, protocol.first_request());
            Box::pin(self.serve_proxied(stream, protocol, downstream, drain, requests)).await
        }
    }

    /// A TLS connection's HTTP/1.1 requests: our loop, then hyper if a
    /// request needs it (see [`Self::serve_plain`]). The handshake is done,
    /// so the first head is due within the header timeout, as hyper's would be.
    async fn serve_inline(self: Arc<Self>, mut stream: TlsClient, mut drain: Drain, downstream: Arc<Downstream>) {
        let first_within = self.settings.deadlines.header_read;
        let ended = h1::serve(&mut stream, &self.settings, &downstream, &mut drain, first_within);
        let h1::Ended::HandOff(read) = ended.await else { return };
        self.hand_to_hyper(read, stream, downstream, drain).await
    }

    /// Hands a connection from our loop to hyper, with the bytes the loop
    /// had already `read`: its next head is due within the header timeout.
    async fn hand_to_hyper<I>(&self, read: Bytes, io: I, downstream: Arc<Downstream>, drain: Drain)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (io, requests) = self.settings.deadlines.later_heads(Prefixed::new(read, io));
        self.serve_proxied(io, Protocol::Http1, downstream, drain, requests).await
    }

    /// Serves a connection to the proxy with hyper (see [`Self::serve_http`]),
    /// for `downstream`, its requests counted by `requests`.
    async fn serve_proxied<I>(
        &self,
        io: I,
        protocol: Protocol,
        downstream: Arc<Downstream>,
        drain: Drain,
        requests: Arc<RequestCount>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let remote = downstream.remote;
        let service = proxy_service(self.settings.shared.clone(), downstream, Some(requests.clone()));
        self.serve_http(io, protocol, service, drain, remote, Some(requests)).await
    }

    /// Serves one connection in the protocol it speaks, until it ends or
    /// has drained, or (HTTP/2) has started no request for the keep-alive
    /// timeout (`requests` counts them).
    async fn serve_http<I, S>(
        &self,
        io: I,
        protocol: Protocol,
        service: S,
        drain: Drain,
        remote: SocketAddr,
        requests: Option<Arc<RequestCount>>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        match protocol {
            Protocol::Http1 => {
                // hyper's header timer closes idle HTTP/1.1 connections.
                let connection = self.http1.serve_connection(TokioIo::new(io), service).with_upgrades();
                until_drained(connection, |c| c.graceful_shutdown(), drain, remote, None).await
            }
            Protocol::Http2 => {
                let connection = self.http2.serve_connection(TokioIo::new(io), service);
                // Its own task, so that HTTP/1.1 connection tasks (the most)
                // are not sized for HTTP/2's state.
                let idle = requests.map(|r| (r, self.settings.deadlines.keepalive));
                tokio::spawn(until_drained(connection, |c| c.graceful_shutdown(), drain, remote, idle));
            }
        }
    }
}

fn http1_builder(options: &ServeOptions, deadlines: &Deadlines) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(deadlines.hyper_header_timer())
        .max_header_size(options.max_header_bytes)
        .max_buf_size(options.max_header_bytes.max(8192));
    builder
}

fn http2_builder(options: &ServeOptions) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(options.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
}

/// Serves a connection to its end; once draining starts, lets its
/// in-flight request (and one already in the socket) finish and then
/// closes it.
async fn until_drained<C, E>(
    connection: C,
    shutdown: impl FnOnce(Pin<&mut C>),
    mut drain: Drain,
    remote: SocketAddr,
    idle: Option<(Arc<RequestCount>, Duration)>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    // Borrowed, not moved: the `Drain` must live until the connection has
    // ended, since the worker counts live ones to know it has drained.
    let draining = drain.draining();
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = draining => {
            // A request already in the socket is read before the connection
            // is told to close, so that it is answered (with `Connection:
            // close`), not dropped: the reactor first catches up with the
            // socket (a yield lets it run), then hyper gets one look.
            tokio::task::yield_now().await;
            match std::future::poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx))).await {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    shutdown(connection.as_mut());
                    connection.await
                }
            }
        }
        _ = idle_for(idle) => {
            // In-flight streams finish; the client opens a new connection.
            tracing::debug!(%remote, "closing an idle HTTP/2 connection");
            shutdown(connection.as_mut());
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %remote, "connection ended with an error");
    }
}

/// The proxy as a hyper service for one client connection. Each request's
/// future is boxed: hyper keeps a slot the size of the service's future for
/// the connection's whole life, and the proxy's is ~4 KiB that an idle
/// keep-alive connection would otherwise hold.
///
/// `requests`, when given, counts each request as its head completes and
/// as its answer has gone out.
fn proxy_service(
    shared: Arc<Shared>,
    downstream: Arc<Downstream>,
    requests: Option<Arc<RequestCount>>,
) -> impl HttpService<Future = ProxyFuture> + Clone {
    service_fn(move |req| -> ProxyFuture {
        if let Some(requests) = &requests {
            requests.started();
        }
        let (requests, shared, downstream) = (requests.clone(), shared.clone(), downstream.clone());
        // The proxy's future is made inside the box: made outside, it would
        // be stored twice (captured, then awaited).
        Box::pin(async move {
            let mut exchange = None;
            let mut response =
                proxy::handle(&shared, &downstream, Box::new(req.map(ProxyBody::Streamed)), &mut exchange).await;
            // Our own loop writes these into the head; hyper writes the map.
            let headers = proxy::answer_headers(&mut response);
            if let Some(exchange) = &exchange {
                headers.insert(crate::headers::X_REQUEST_ID.clone(), exchange.request_id().clone());
                if let Some((name, value)) = exchange.upstream_header() {
                    headers.insert(name.clone(), value.clone());
                }
            }
            // After a 101 the connection is a tunnel: no head comes next.
            let requests = requests.filter(|_| response.status() != http::StatusCode::SWITCHING_PROTOCOLS);
            Ok((*response).map(|body| AnswerBody::new(body, requests, exchange)))
        })
    })
}

/// A request's way through the proxy, boxed (see [`proxy_service`]).
type ProxyFuture = Pin<Box<dyn Future<Output = Result<ProxyResponse, Infallible>> + Send>>;
type ProxyResponse = http::Response<AnswerBody>;

/// An answer's body as hyper sends it. hyper drops it once it is sent (or
/// the connection ends): the request then counts as answered, so that the
/// connection's next head gets its own deadline ([`RequestCount`]), and its
/// [`Exchange`] writes the access-log line with the body bytes hyper took
/// to send.
struct AnswerBody {
    body: ProxyBody,
    requests: Option<Arc<RequestCount>>,
    exchange: Option<Exchange>,
}

impl AnswerBody {
    fn new(body: ProxyBody, requests: Option<Arc<RequestCount>>, exchange: Option<Exchange>) -> Self {
        AnswerBody { body, requests, exchange }
    }
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        if let Some(requests) = &self.requests {
            requests.answered();
        }
    }
}

impl http_body::Body for AnswerBody {
    type Data = Bytes;
    type Error = crate::client::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(exchange)) = (&polled, &mut this.exchange) {
            exchange.sent(frame.data_ref().map_or(0, Bytes::len));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What [`Connections::serve_http`] serves: a service that always answers.
trait HttpService:
    hyper::service::Service<http::Request<hyper::body::Incoming>, Response = ProxyResponse, Error = Infallible>
{
}

impl<S> HttpService for S where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = ProxyResponse, Error = Infallible>
{
}

/// What a plain-TCP client speaks.
enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

impl Protocol {
    /// What ends the wait for this connection's first request.
    fn first_request(&self) -> FirstRequest {
        match self {
            Protocol::Http1 => FirstRequest::Head,
            Protocol::Http2 => FirstRequest::Byte,
        }
    }
}

/// How an HTTP/2 connection preface starts (RFC 9113 §3.4).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Tells HTTP/1 from HTTP/2 by peeking at the first bytes. Peeking leaves
/// them in the socket, so hyper reads the whole head in one go into a buffer
/// of its usual size. `None` (logged) for a client that closes or sends
/// nothing within `timeout`.
///
/// Part of every plain connection's task, whose size is set by its largest
/// state: hence plain functions around `async move` blocks (an `async fn`
/// keeps its arguments twice), the peek by `poll_peek` (tokio's `peek`
/// future is 232 bytes) and the rare second peek's timer boxed.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn sniff<'a>(
    stream: &'a TcpStream,
    timeout: Duration,
    remote: &'a SocketAddr,
) -> impl Future<Output = Option<Protocol>> + Send + 'a {
    async move {
        let peeked = tokio::time::timeout(timeout, peek_protocol(stream)).await;
        match peeked.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
            Ok(protocol) => Some(protocol),
            Err(e) => {
                tracing::debug!(error = %e, %remote, "connection closed before a request");
                None
            }
        }
    }
}

#[allow(clippy::manual_async_fn)] // see `sniff`
fn peek_protocol(stream: &TcpStream) -> impl Future<Output = std::io::Result<Protocol>> + Send + '_ {
    async move {
        let mut buf = [0u8; H2_PREFACE_START.len()];
        loop {
            let n = std::future::poll_fn(|cx| stream.poll_peek(cx, &mut ReadBuf::new(&mut buf))).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if !H2_PREFACE_START.starts_with(&buf[..n]) {
                return Ok(Protocol::Http1);
            }
            if n == buf.len() {
                return Ok(Protocol::Http2);
            }
            // Part of a preface: peek again once more may have arrived.
            Box::pin(tokio::time::sleep(Duration::from_millis(1))).await;
        }
    }
}

/// `308` to the same host and path on HTTPS.
fn redirect_to_https<B>(req: &http::Request<B>, port: u16) -> http::Response<crate::client::body::ProxyBody> {
    let host = req.uri().authority().map(|a| a.host().to_string()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| crate::router::host_without_port(h).to_string())
    });
    let Some(host) = host.filter(|h| !h.is_empty() && !h.contains(['/', '@', ' '])) else {
        return crate::error::json_error(
            http::StatusCode::BAD_REQUEST,
            "bad_request",
            "downstream",
            "a Host header is needed to redirect to HTTPS".into(),
            None,
            None,
        );
    };
    let authority = if port == 443 { host } else { format!("{host}:{port}") };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut response = http::Response::new(crate::client::body::ProxyBody::empty());
    *response.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = http::HeaderValue::from_str(&format!("https://{authority}{path}")) {
        response.headers_mut().insert(http::header::LOCATION, location);
    }
    response
}

/// A connection our loop hands to hyper: the bytes the loop already read
/// come first, then the socket.
struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    fn new(prefix: Bytes, io: I) -> Self {
        Prefixed { prefix, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten thousand idle keep-alive connections cost what their tasks hold
    /// (nginx's memory with as many is the mark): tokio adds 104 bytes to a
    /// task's future and rounds the sum up to 128 bytes, so a future of up
    /// to 536 bytes makes a 640-byte task (it was 1,280 with a 1,056-byte
    /// future). What the idle wait holds: the stream, the drain, the idle
    /// timer and the futures that wait on them (see `h1::serve`).
    #[tokio::test]
    async fn a_plain_connections_task_fits_in_640_bytes() {
        let config = "listen: \"127.0.0.1:0\"\nupstreams:\n  up:\n    targets: [\"http://127.0.0.1:9\"]\n\
                      routes:\n  - {name: all, prefix: /, upstream: up}\n";
        let shared = Shared::from_text("test.yaml", config).expect("a valid config");
        let connections = Arc::new(Connections::new(&ServeOptions::default(), shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let _client = TcpStream::connect(listener.local_addr().expect("its address")).await.expect("connected");
        let (stream, remote) = listener.accept().await.expect("accepted");
        let signal = Arc::new(crate::server::drain::Signal::default());
        let task = connections.serve_plain(stream, signal.subscribe(), Arc::new(Downstream::new(remote, "http")));
        let size = std::mem::size_of_val(&task);
        assert!(size <= 536, "a plain connection's future is {size} bytes: its task no longer fits in 640");
    }
}
