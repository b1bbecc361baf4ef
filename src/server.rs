//! The proxy listener: accepts connections, serves HTTP/1.1 and HTTP/2
//! (prior knowledge) on each, and drains them on shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::{self, Conn};
use crate::Shared;

/// Listener settings that are fixed for the life of the process.
pub struct ServeOptions {
    /// A client must send a complete request head within this time.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// TLS on the main listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// An extra plain-HTTP listener (with TLS on the main one).
    pub plain: Option<PlainListener>,
}

/// A plain-HTTP listener beside the TLS one.
pub struct PlainListener {
    pub listener: TcpListener,
    /// Answer every request with a redirect to HTTPS on this port instead of proxying.
    pub redirect_to_port: Option<u16>,
}

/// How a connection is served.
#[derive(Clone)]
enum Kind {
    Proxy { tls: Option<tokio_rustls::TlsAcceptor> },
    Redirect { port: u16 },
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            tls: None,
            plain: None,
        }
    }
}

/// Serves the proxy and admin listeners until `shutdown` resolves, then turns
/// readiness false, stops accepting, and waits for in-flight requests (up to
/// the drain timeout).
pub async fn run(
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    shared: Arc<Shared>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(crate::admin::serve(admin_listener, shared.clone(), async {
        let _ = admin_stopped.await;
    }));
    let table = shared.table.load_full();
    crate::health::spawn_for(&table);
    if table.wants_shadow_log() {
        shared.shadow.start_log();
    }
    drop(table);
    let builder = connection_builder(&options);
    let graceful = GracefulShutdown::new();
    let main_kind = Kind::Proxy { tls: options.tls.clone().map(tokio_rustls::TlsAcceptor::from) };
    let (plain_listener, plain_kind) = match options.plain {
        Some(p) => {
            let kind = match p.redirect_to_port {
                Some(port) => Kind::Redirect { port },
                None => Kind::Proxy { tls: None },
            };
            (Some(p.listener), kind)
        }
        None => (None, Kind::Proxy { tls: None }),
    };
    tokio::pin!(shutdown);
    loop {
        let (accepted, kind) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = proxy_listener.accept() => (accepted, &main_kind),
            accepted = accept_optional(plain_listener.as_ref()) => (accepted, &plain_kind),
        };
        match accepted {
            Ok((stream, _)) => {
                serve_connection(&builder, &graceful, &shared, stream, kind.clone(), options.header_read_timeout)
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    shared.draining.store(true, Ordering::SeqCst);
    drop(proxy_listener);
    drop(plain_listener);
    tracing::info!(connections = graceful.count(), "draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(options.drain_timeout) => tracing::warn!("drain timeout reached; closing the remaining connections"),
    }
    let _ = admin_stop.send(());
    let _ = admin.await;
}

fn connection_builder(options: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(options.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
}

async fn accept_optional(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// A TLS handshake must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    shared: &Arc<Shared>,
    stream: TcpStream,
    kind: Kind,
    first_byte_timeout: Duration,
) {
    let Ok(remote) = stream.peer_addr() else { return };
    let _ = stream.set_nodelay(true);
    // hyper reads the first bytes (to tell HTTP/1 from HTTP/2) with no
    // deadline of its own: a client that connects and stays silent would pin
    // the connection forever.
    let stream = FirstByteDeadline::new(stream, first_byte_timeout);
    match kind {
        Kind::Proxy { tls: None } => {
            let conn = Arc::new(Conn::new(remote, "http"));
            let shared = shared.clone();
            let service = service_fn(move |req| proxy::handle(shared.clone(), conn.clone(), req));
            let connection =
                graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, %remote, "connection ended with an error");
                }
            });
        }
        Kind::Proxy { tls: Some(acceptor) } => {
            let (builder, watcher, shared) = (builder.clone(), graceful.watcher(), shared.clone());
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream.into_inner())).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!(error = %e, %remote, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
                };
                let stream = FirstByteDeadline::new(stream, first_byte_timeout);
                let conn = Arc::new(Conn::new(remote, "https"));
                let service = service_fn(move |req| proxy::handle(shared.clone(), conn.clone(), req));
                let connection =
                    watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, %remote, "connection ended with an error");
                }
            });
        }
        Kind::Redirect { port } => {
            let service =
                service_fn(move |req| async move { Ok::<_, std::convert::Infallible>(redirect_to_https(&req, port)) });
            let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
            tokio::spawn(connection);
        }
    }
}

/// `308` to the same host and path on HTTPS.
fn redirect_to_https<B>(req: &http::Request<B>, port: u16) -> http::Response<crate::body::ProxyBody> {
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
    let mut response = http::Response::new(crate::body::ProxyBody::empty());
    *response.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = http::HeaderValue::from_str(&format!("https://{authority}{path}")) {
        response.headers_mut().insert(http::header::LOCATION, location);
    }
    response
}

/// Fails the first read of a connection that sends nothing within the deadline.
struct FirstByteDeadline<S> {
    inner: S,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        FirstByteDeadline { inner, deadline: Some(Box::pin(tokio::time::sleep(timeout))) }
    }

    fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(deadline) = self.deadline.as_mut() {
            match &polled {
                std::task::Poll::Ready(Ok(())) if buf.filled().len() > before => self.deadline = None,
                std::task::Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return std::task::Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
                }
                _ => {}
            }
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
