//! The proxy listener: accepts connections, serves HTTP/1.1 and HTTP/2
//! (prior knowledge) on each, and drains them on shutdown. Plain-HTTP/1.1
//! requests without a body are served by our own loop ([`h1`]); hyper
//! serves the rest (bodies, upgrades, TLS, HTTP/2).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::proxy::{self, Conn};
use crate::Shared;

mod balance;
pub mod h1;

/// Listener settings that are fixed for the life of the process.
pub struct ServeOptions {
    /// A client must send a complete request head within this time. On
    /// connections hyper serves, this holds for the first head; later ones
    /// may take up to the longer of this and `keepalive_timeout` (hyper has
    /// one timer for heads and idling).
    pub header_read_timeout: Duration,
    /// A connection idle between requests for this long is closed (nginx's
    /// `keepalive_timeout`, 75 s by default; keep it above the idle timeout
    /// of a load balancer in front, or it may send a request on a connection
    /// just as it is closed). HTTP/2: no new stream for this long.
    pub keepalive_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// TLS on the main listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// An extra plain-HTTP listener (with TLS on the main one).
    pub plain: Option<PlainListener>,
    /// Accept loops, each on its own thread and single-threaded runtime.
    pub workers: usize,
    /// Serve bodiless plain-HTTP/1.1 requests with our own loop
    /// ([`h1`]; hyper takes a connection at its first other request).
    /// Off: hyper serves every request.
    pub inline_http1: bool,
    /// With several workers, hand a new connection to the worker with the
    /// fewest open connections (`balance`). Off (the default): the kernel's
    /// `SO_REUSEPORT` hash alone decides.
    pub balance_connections: bool,
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
            keepalive_timeout: Duration::from_secs(75),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            tls: None,
            plain: None,
            workers: 1,
            inline_http1: true,
            balance_connections: false,
        }
    }
}

/// Serves the proxy and admin listeners until `shutdown` resolves, then turns
/// readiness false, stops accepting, and waits for in-flight requests (up to
/// the drain timeout).
///
/// With `workers > 1`, each extra worker is a thread with its own
/// single-threaded runtime and its own accept loop on the same port (a
/// `SO_REUSEPORT` socket when the main one is, else a shared duplicate), so a
/// connection, its requests and its upstream connections stay on one core.
/// Admin, health checks and config reloads run on the calling runtime.
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
        shared.shadow.start_background();
    }
    drop(table);
    let workers = options.workers.max(1);
    let (lanes, mut inboxes) = balance::lanes(workers, options.balance_connections && workers > 1);
    let worker = Arc::new(Worker {
        http1: http1_builder(&options),
        http2: http2_builder(&options),
        shared: shared.clone(),
        header_read_timeout: options.header_read_timeout,
        keepalive_timeout: options.keepalive_timeout,
        drain_timeout: options.drain_timeout,
        inline_http1: options.inline_http1.then_some(h1::Limits {
            header_read_timeout: options.header_read_timeout,
            keepalive_timeout: options.keepalive_timeout,
            max_head: options.max_header_bytes,
        }),
        lanes: Arc::new(lanes),
    });
    // For this run only: a registry outlives the server in tests.
    let _connections = balance::ConnectionsMetric::register(&shared.metrics.registry, &worker.lanes);
    let main_kind = Kind::Proxy { tls: options.tls.clone().map(tokio_rustls::TlsAcceptor::from) };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let extra = spawn_workers(&worker, &proxy_listener, &main_kind, &mut inboxes, stopped);
    let plain = options.plain.map(|p| {
        let kind = match p.redirect_to_port {
            Some(port) => Kind::Redirect { port },
            None => Kind::Proxy { tls: None },
        };
        (p.listener, kind)
    });
    // Inboxes of workers that did not start are dropped here, so that no
    // connection is handed to them.
    let own_inbox = inboxes[0].take();
    drop(inboxes);
    worker
        .serve(0, own_inbox, (proxy_listener, main_kind), plain, async {
            shutdown.await;
            shared.draining.store(true, Ordering::SeqCst);
            let _ = stop.send(true);
        })
        .await;
    for done in extra {
        let _ = done.await;
    }
    let _ = admin_stop.send(());
    let _ = admin.await;
}

/// One accept loop and the connections it serves (shared by them through
/// an `Arc`, so that an idle connection holds a pointer, not the builders).
struct Worker {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    header_read_timeout: Duration,
    /// HTTP/2 connections that start no request for this long are closed.
    keepalive_timeout: Duration,
    drain_timeout: Duration,
    /// Limits for our own HTTP/1.1 loop, when it is on.
    inline_http1: Option<h1::Limits>,
    /// Each worker's drain and inbox, by worker index.
    lanes: Arc<Vec<balance::Lane>>,
}

impl Worker {
    /// Accepts until `stop` resolves, then drains this worker's connections.
    /// `me` is this worker's index; `inbox` brings the connections other
    /// workers hand over.
    async fn serve(
        self: &Arc<Self>,
        me: usize,
        mut inbox: Option<UnboundedReceiver<balance::Handoff>>,
        (listener, kind): (TcpListener, Kind),
        plain: Option<(TcpListener, Kind)>,
        stop: impl Future<Output = ()>,
    ) {
        // Each connection holds a receiver of this: `true` asks it to finish
        // its request and close; `closed()` is "all drained".
        let lane = &self.lanes[me];
        let drain = &lane.drain;
        lane.start();
        // Pools are per thread: this worker's own sweeper closes its idle
        // connections to targets that left the config.
        let sweeper = tokio::spawn(crate::client::close_retired_pools());
        let plain_kind = plain.as_ref().map_or(Kind::Proxy { tls: None }, |(_, k)| k.clone());
        let plain_listener = plain.map(|(l, _)| l);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => match balance::place(&self.lanes, me, stream) {
                        balance::Placement::Here(stream, drain) => self.serve_connection(drain, stream, kind.clone()),
                        balance::Placement::Elsewhere => {}
                    },
                    Err(e) => accept_failed(e).await,
                },
                accepted = accept_optional(plain_listener.as_ref()) => match accepted {
                    Ok((stream, _)) => self.serve_connection(drain.subscribe(), stream, plain_kind.clone()),
                    Err(e) => accept_failed(e).await,
                },
                handoff = balance::handed_over(inbox.as_mut()) => self.take_over(handoff, &kind),
            }
        }
        // Connections handed over from now on are served where they were
        // accepted; those already on their way (sends in progress included:
        // `recv` waits for them) are served here.
        if let Some(inbox) = &mut inbox {
            inbox.close();
            while let Some(handoff) = inbox.recv().await {
                self.take_over(handoff, &kind);
            }
        }
        drop(listener);
        drop(plain_listener);
        tracing::info!(connections = drain.receiver_count(), "draining");
        drain.send_replace(true);
        tokio::select! {
            _ = drain.closed() => tracing::info!("drained"),
            _ = tokio::time::sleep(self.drain_timeout) => tracing::warn!("drain timeout reached; closing the remaining connections"),
        }
        sweeper.abort();
    }
}

impl Worker {
    /// Serves a connection another worker handed over, in this worker's reactor.
    fn take_over(self: &Arc<Self>, (stream, drain): balance::Handoff, kind: &Kind) {
        match TcpStream::from_std(stream) {
            Ok(stream) => self.serve_connection(drain, stream, kind.clone()),
            Err(e) => tracing::warn!(error = %e, "cannot take a connection over; closing it"),
        }
    }
}

/// Out of file descriptors and the like: back off, keep serving.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Starts a worker for each inbox after the first (the calling runtime is
/// worker 0); each signals when it has drained.
fn spawn_workers(
    worker: &Arc<Worker>,
    listener: &TcpListener,
    kind: &Kind,
    inboxes: &mut [Option<UnboundedReceiver<balance::Handoff>>],
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::sync::oneshot::Receiver<()>> {
    let mut done = Vec::new();
    for (i, inbox) in inboxes.iter_mut().enumerate().skip(1) {
        let socket = match worker_socket(listener) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::error!(error = %e, "cannot open a listener for another worker; serving with fewer");
                break;
            }
        };
        let (worker, kind, mut stopped, inbox) = (worker.clone(), kind.clone(), stopped.clone(), inbox.take());
        let (finished, finished_rx) = tokio::sync::oneshot::channel();
        let started = std::thread::Builder::new().name(format!("strangler-worker-{i}")).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(runtime) => runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => {
                            let stop = async move {
                                let _ = stopped.wait_for(|stop| *stop).await;
                            };
                            worker.serve(i, inbox, (listener, kind), None, stop).await
                        }
                        Err(e) => tracing::error!(error = %e, "worker cannot use its listener"),
                    }
                }),
                Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
            }
            let _ = finished.send(());
        });
        match started {
            Ok(_) => done.push(finished_rx),
            Err(e) => tracing::error!(error = %e, "cannot start a worker thread; serving with fewer"),
        }
    }
    done
}

/// A listening socket for another worker: its own `SO_REUSEPORT` socket on
/// the same address (the kernel spreads connections evenly) when the main
/// listener allows it, else a duplicate of the main one (shared queue).
fn worker_socket(listener: &TcpListener) -> std::io::Result<std::net::TcpListener> {
    let main = socket2::SockRef::from(listener);
    let socket =
        if main.reuse_port().unwrap_or(false) { reuse_port_socket(listener.local_addr()?)? } else { main.try_clone()? };
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn reuse_port_socket(addr: std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// Binds the proxy listener; with several workers, as a `SO_REUSEPORT`
/// socket so that each worker gets its own accept queue.
pub fn bind(addr: std::net::SocketAddr, workers: usize) -> std::io::Result<TcpListener> {
    let socket = if workers > 1 {
        reuse_port_socket(addr)?
    } else {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket
    };
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

fn http1_builder(options: &ServeOptions) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's header timer runs while a connection idles too, so it is
        // also the idle limit (see `FirstHeadDeadline`).
        .header_read_timeout(options.header_read_timeout.max(options.keepalive_timeout))
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

async fn accept_optional(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// A TLS handshake must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Worker {
    fn serve_connection(self: &Arc<Self>, drain: Drain, stream: TcpStream, kind: Kind) {
        let Ok(remote) = stream.peer_addr() else { return };
        let _ = stream.set_nodelay(true);
        let head_timeout = self.header_read_timeout;
        let worker = self.clone();
        match kind {
            Kind::Proxy { tls: None } => {
                // hyper's connection state is boxed, so that the task of a
                // connection that never needs hyper is not sized for it.
                tokio::spawn(async move {
                    let Some(protocol) = sniff(&stream, head_timeout, remote).await else { return };
                    let conn = Arc::new(Conn::new(remote, "http"));
                    match (&protocol, &worker.inline_http1) {
                        (Protocol::Http1, Some(limits)) => {
                            let (mut stream, mut drain) = (stream, drain);
                            let ended = h1::serve(&mut stream, &worker.shared, &conn, limits, &mut drain).await;
                            if let h1::Ended::HandOff(read) = ended {
                                let service = proxy_service(worker.shared.clone(), conn, None);
                                let stream = h1::Prefixed::new(read, stream);
                                Box::pin(worker.serve_http(stream, protocol, service, drain, remote, None)).await
                            }
                        }
                        _ => {
                            let (stream, requests) = FirstHeadDeadline::counted(stream, &protocol, head_timeout);
                            let service = proxy_service(worker.shared.clone(), conn, Some(requests.clone()));
                            Box::pin(worker.serve_http(stream, protocol, service, drain, remote, Some(requests))).await
                        }
                    }
                });
            }
            Kind::Proxy { tls: Some(acceptor) } => {
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(error = %e, %remote, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
                    };
                    let protocol = match stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    // HTTP/2 has no deadline for a silent client of its own.
                    let (stream, requests) = FirstHeadDeadline::counted(stream, &protocol, head_timeout);
                    let conn = Arc::new(Conn::new(remote, "https"));
                    let service = proxy_service(worker.shared.clone(), conn, Some(requests.clone()));
                    worker.serve_http(stream, protocol, service, drain, remote, Some(requests)).await
                });
            }
            Kind::Redirect { port } => {
                tokio::spawn(async move {
                    let Some(protocol) = sniff(&stream, head_timeout, remote).await else { return };
                    let (stream, requests) = FirstHeadDeadline::counted(stream, &protocol, head_timeout);
                    let counted = requests.clone();
                    let service = service_fn(move |req| {
                        counted.started();
                        async move { Ok::<_, std::convert::Infallible>(redirect_to_https(&req, port)) }
                    });
                    worker.serve_http(stream, protocol, service, drain, remote, Some(requests)).await
                });
            }
        }
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
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
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
                let idle = requests.map(|r| (r, self.keepalive_timeout));
                tokio::spawn(until_drained(connection, |c| c.graceful_shutdown(), drain, remote, idle));
            }
        }
    }
}

/// A connection's end of the worker's drain signal.
pub(crate) type Drain = tokio::sync::watch::Receiver<bool>;

/// Serves a connection to its end; once draining starts, lets its
/// in-flight request finish and then closes it.
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
    // Borrowed, not moved: the receiver must live until the connection has
    // ended, since the worker counts live receivers to know it has drained.
    let draining = async {
        let _ = drain.wait_for(|draining| *draining).await.is_ok();
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = draining => {
            shutdown(connection.as_mut());
            connection.await
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
/// `requests`, when given, counts each request as its head completes.
fn proxy_service(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    requests: Option<Arc<RequestCount>>,
) -> impl HttpService<Future = ProxyFuture> + Clone {
    service_fn(move |req| -> ProxyFuture {
        if let Some(requests) = &requests {
            requests.started();
        }
        Box::pin(proxy::handle(shared.clone(), conn.clone(), req.map(crate::client::body::ProxyBody::Streamed)))
    })
}

/// A request's way through the proxy, boxed (see [`proxy_service`]).
type ProxyFuture = Pin<Box<dyn Future<Output = Result<ProxyResponse, Infallible>> + Send>>;
type ProxyResponse = http::Response<crate::client::body::ProxyBody>;

/// What [`Worker::serve_http`] serves: a service that always answers.
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

/// How an HTTP/2 connection preface starts (RFC 9113 §3.4).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Tells HTTP/1 from HTTP/2 by peeking at the first bytes. Peeking leaves
/// them in the socket, so hyper reads the whole head in one go into a buffer
/// of its usual size. `None` (logged) for a client that closes or sends
/// nothing within `timeout`.
async fn sniff(stream: &TcpStream, timeout: Duration, remote: SocketAddr) -> Option<Protocol> {
    match peek_protocol(stream, timeout).await {
        Ok(protocol) => Some(protocol),
        Err(e) => {
            tracing::debug!(error = %e, %remote, "connection closed before a request");
            None
        }
    }
}

async fn peek_protocol(stream: &TcpStream, timeout: Duration) -> std::io::Result<Protocol> {
    let sniffing = async {
        let mut buf = [0u8; H2_PREFACE_START.len()];
        loop {
            let n = stream.peek(&mut buf).await?;
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
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(timeout, sniffing).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
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

/// Requests a hyper-served connection has started, counted by its service
/// as each head completes. The first ends the first-head deadline
/// (HTTP/1.1), and a count that stops moving is an idle connection (HTTP/2,
/// whose connections hyper never closes for idling).
#[derive(Default)]
struct RequestCount(AtomicU64);

impl RequestCount {
    fn started(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Resolves once no request has started for `timeout` (checked every half
/// of it, so after between 1 and 1.5 times it); never without `idle`.
async fn idle_for(idle: Option<(Arc<RequestCount>, Duration)>) {
    let Some((requests, timeout)) = idle else { return std::future::pending().await };
    let half = (timeout / 2).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    // The counts seen one and two ticks ago.
    let mut seen = [requests.get(), requests.get()];
    loop {
        tick.tick().await;
        let now = requests.get();
        if now == seen[0] && now == seen[1] {
            return;
        }
        seen = [now, seen[0]];
    }
}

/// Fails a connection's reads once its deadline passes before its first
/// request head is complete (HTTP/1.1: the service was called, which
/// `head_seen` records) or, without `head_seen` (HTTP/2), before its first
/// byte. hyper's own header timer is set to the keep-alive timeout when that
/// is longer (hyper starts it when a connection turns idle, so it is also the
/// idle limit); this keeps the first head to the shorter header timeout.
struct FirstHeadDeadline<S> {
    inner: S,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    head_seen: Option<Arc<RequestCount>>,
}

impl<S> FirstHeadDeadline<S> {
    /// `inner` under the deadline, and the count its service is to keep:
    /// HTTP/1.1's first head ends when the count moves; HTTP/2, which has no
    /// heads of its own to wait for, needs only a first byte.
    fn counted(inner: S, protocol: &Protocol, timeout: Duration) -> (Self, Arc<RequestCount>) {
        let requests = Arc::new(RequestCount::default());
        let head_seen = matches!(protocol, Protocol::Http1).then(|| requests.clone());
        let deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        (FirstHeadDeadline { inner, deadline, head_seen }, requests)
    }

    fn first_head_done(&self, read_bytes: bool) -> bool {
        match &self.head_seen {
            Some(requests) => requests.get() > 0,
            None => read_bytes,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstHeadDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.deadline.is_some() {
            let read_bytes = matches!(polled, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before;
            if self.first_head_done(read_bytes) {
                self.deadline = None;
            } else if polled.is_pending() && self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
            }
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstHeadDeadline<S> {
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
