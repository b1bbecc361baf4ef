//! The upstream client: keep-alive HTTP/1.1 connections to each target, kept
//! in per-thread idle pools. Requests without a body (most of the traffic)
//! are exchanged inline by [`h1`]; requests with a body, and upgrades, by
//! hyper's low-level `client::conn`. The two kinds of connection are pooled
//! apart.
//!
//! Why not hyper-util's pooled client: it keys its pool by `(scheme,
//! authority)` in a SipHashed map behind a mutex, builds an absolute URI per
//! request and spawns a task to return each connection; profiling showed it
//! as a quarter of the proxy's CPU. Here a target's pool is found by index
//! (resolved at config load), lives in a thread-local (no lock, and with
//! per-core runtimes a connection stays on the core that drives it), and a
//! connection goes back to it when the response body ends.
//!
//! A thread keeps at most [`MAX_IDLE_PER_TARGET`] idle connections per
//! target; past that, connections go to a shared overflow pool (behind a
//! lock, touched only when a thread's own pool is full, or empty and about to
//! connect), which holds up to [`MAX_SHARED_IDLE_PER_TARGET`]. Without it,
//! a thread that gets more connections back than it takes out (under the
//! work-stealing scheduler a request may end on another thread than it
//! started on) would close them while another thread opened new ones: a
//! churn that fills the machine with `TIME_WAIT` sockets until connects fail.
//!
//! Idle connections are reused newest first, so surplus ones age out: one
//! idle longer than [`IDLE_TIMEOUT`] is closed instead of reused.

pub mod h1;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{BoxError, ProxyBody};

/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per target on each thread.
pub const MAX_IDLE_PER_TARGET: usize = 256;
/// Idle connections per target in the shared overflow pool.
pub const MAX_SHARED_IDLE_PER_TARGET: usize = 1024;

/// Where one target's idle connections live: an index into every thread's
/// pool table, resolved when the config is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId(pub usize);

impl PoolId {
    /// A pool id never handed out before. Ids are unique in the process, not
    /// just in one config: pools are per thread, and two proxies in one
    /// process (tests) must not share.
    pub fn fresh() -> PoolId {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        PoolId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// Makes connections to targets: TCP (with a connect timeout) and, for
/// `https` targets, TLS.
pub struct Connector {
    connect_timeout: Duration,
    tls: tokio_rustls::TlsConnector,
}

/// Why a request could not be sent or answered. Connection failures are
/// kept apart from HTTP failures: only the latter may have reached the
/// upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("connecting: timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Exchange(#[from] h1::Error),
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
    pool: PoolId,
}

impl HyperBody {
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

impl http_body::Body for ResponseBody {
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

/// Something that can wait in a pool.
trait Pooled: Sized + Send + 'static {
    /// Can still carry a request.
    fn is_open(&mut self) -> bool;
}

impl Pooled for SendRequest<ProxyBody> {
    fn is_open(&mut self) -> bool {
        !self.is_closed()
    }
}

impl Pooled for Box<h1::Conn> {
    fn is_open(&mut self) -> bool {
        self.is_reusable()
    }
}

struct Idle<T> {
    conn: T,
    since: Instant,
}

type Queues<T> = Vec<VecDeque<Idle<T>>>;

/// One kind of idle connection: each thread's own, and the overflow.
struct Pool<T: 'static> {
    local: &'static LocalKey<RefCell<Queues<T>>>,
    shared: &'static Mutex<Queues<T>>,
}

thread_local! {
    static INLINE_LOCAL: RefCell<Queues<Box<h1::Conn>>> = const { RefCell::new(Vec::new()) };
    static HYPER_LOCAL: RefCell<Queues<SendRequest<ProxyBody>>> = const { RefCell::new(Vec::new()) };
}
static INLINE_SHARED: Mutex<Queues<Box<h1::Conn>>> = Mutex::new(Vec::new());
static HYPER_SHARED: Mutex<Queues<SendRequest<ProxyBody>>> = Mutex::new(Vec::new());

/// Connections for bodiless requests, exchanged by [`h1`].
static INLINE: Pool<Box<h1::Conn>> = Pool { local: &INLINE_LOCAL, shared: &INLINE_SHARED };
/// Connections driven by hyper, for requests with a body.
static HYPER: Pool<SendRequest<ProxyBody>> = Pool { local: &HYPER_LOCAL, shared: &HYPER_SHARED };

/// Gives a connection whose answer ended cleanly back to its pool.
pub(crate) fn release_inline(pool: PoolId, conn: Box<h1::Conn>) {
    INLINE.release(pool, conn);
}

/// Pools of targets that left the config, in the order they were retired.
static RETIRED: Mutex<Vec<PoolId>> = Mutex::new(Vec::new());

/// Counts retirements, so that each thread's sweeper wakes for them.
fn retirements() -> &'static tokio::sync::watch::Sender<usize> {
    static SENDER: std::sync::OnceLock<tokio::sync::watch::Sender<usize>> = std::sync::OnceLock::new();
    SENDER.get_or_init(|| tokio::sync::watch::Sender::new(0))
}

/// Closes the idle connections of targets that left the config: the
/// overflow pools at once, each thread's own pools by the sweeper that
/// thread runs ([`close_retired_pools`]). Ids are never handed out again.
pub fn retire_pools(pools: &[PoolId]) {
    if pools.is_empty() {
        return;
    }
    INLINE.forget_shared(pools);
    HYPER.forget_shared(pools);
    let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
    retired.extend_from_slice(pools);
    let count = retired.len();
    drop(retired);
    retirements().send_replace(count);
}

/// Runs for the life of a runtime thread (a per-core worker spawns it):
/// whenever pools are retired, closes this thread's idle connections in
/// them. Pools are thread-local, so only a task on this thread can. The hot
/// path pays nothing for it.
pub async fn close_retired_pools() {
    let mut changed = retirements().subscribe();
    let mut done = 0;
    loop {
        let retired: Vec<PoolId> = {
            let retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
            retired[done.min(retired.len())..].to_vec()
        };
        done += retired.len();
        INLINE.forget_local(&retired);
        HYPER.forget_local(&retired);
        if changed.changed().await.is_err() {
            return;
        }
    }
}

impl<T: Pooled> Pool<T> {
    /// Drops this thread's idle connections of `pools`.
    fn forget_local(&self, pools: &[PoolId]) {
        let _ = self.local.try_with(|local| forget(&mut local.borrow_mut(), pools));
    }

    /// Drops the overflow's idle connections of `pools`.
    fn forget_shared(&self, pools: &[PoolId]) {
        forget(&mut self.shared.lock().unwrap_or_else(|e| e.into_inner()), pools);
    }

    /// Keeps `conn` for the next request: in this thread's pool, or the
    /// overflow when that is full.
    fn release(&self, pool: PoolId, conn: T) {
        let idle = Idle { conn, since: Instant::now() };
        // `try_with`: a body dropped while its thread is exiting just closes.
        let Ok(full) = self.local.try_with(|local| {
            let mut local = local.borrow_mut();
            let queue = queue(&mut local, pool);
            if queue.len() >= MAX_IDLE_PER_TARGET {
                return Some(idle);
            }
            queue.push_back(idle);
            None
        }) else {
            return;
        };
        if let Some(idle) = full {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queue(&mut shared, pool);
            if queue.len() >= MAX_SHARED_IDLE_PER_TARGET {
                queue.pop_front();
            }
            queue.push_back(idle);
        }
    }

    /// The newest idle connection of a pool that is still open and fresh:
    /// this thread's own first, else the overflow's.
    fn checkout(&self, pool: PoolId) -> Option<T> {
        let now = Instant::now();
        let local = self
            .local
            .try_with(|local| local.borrow_mut().get_mut(pool.0).and_then(|queue| newest_open(queue, now)))
            .ok()
            .flatten();
        local.or_else(|| {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.get_mut(pool.0).and_then(|queue| newest_open(queue, now))
        })
    }
}

fn forget<T>(queues: &mut Queues<T>, pools: &[PoolId]) {
    for pool in pools {
        if let Some(queue) = queues.get_mut(pool.0) {
            *queue = VecDeque::new();
        }
    }
}

fn queue<T>(pools: &mut Queues<T>, pool: PoolId) -> &mut VecDeque<Idle<T>> {
    if pools.len() <= pool.0 {
        pools.resize_with(pool.0 + 1, VecDeque::new);
    }
    &mut pools[pool.0]
}

fn newest_open<T: Pooled>(queue: &mut VecDeque<Idle<T>>, now: Instant) -> Option<T> {
    while queue.front().is_some_and(|oldest| now.duration_since(oldest.since) > IDLE_TIMEOUT) {
        queue.pop_front();
    }
    while let Some(Idle { mut conn, .. }) = queue.pop_back() {
        if conn.is_open() {
            return Some(conn);
        }
    }
    None
}

impl Connector {
    /// `tls` is used for `https` targets; ALPN is set to HTTP/1.1 here.
    pub fn new(connect_timeout: Duration, mut tls: rustls::ClientConfig) -> Self {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Connector { connect_timeout, tls: tokio_rustls::TlsConnector::from(Arc::new(tls)) }
    }

    /// Sends `request` (origin-form URI) to the target, on an idle
    /// connection from its pool when there is one. A request without `Host`
    /// (HTTP/1.0 clients, health checks) is given the target's.
    pub async fn send(
        &self,
        target: &crate::upstream::Target,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        if !request.headers().contains_key(http::header::HOST) {
            if let Ok(host) = http::HeaderValue::from_str(target.authority.as_str()) {
                request.headers_mut().insert(http::header::HOST, host);
            }
        }
        if request.body().is_end_stream() && !request.headers().contains_key(http::header::UPGRADE) {
            return self.send_inline(target, request).await;
        }
        // Boxed: rarer, and its future is large.
        Box::pin(self.send_with_hyper(target, request)).await
    }

    /// A bodiless request. A pooled connection the upstream closed before
    /// answering (its keep-alive timeout raced the request) is given up, and
    /// an idempotent request is sent again on another one, as nginx does.
    async fn send_inline(
        &self,
        target: &crate::upstream::Target,
        request: Request<ProxyBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        let resendable = request.method().is_idempotent();
        while let Some(conn) = INLINE.checkout(target.pool) {
            match conn.exchange(&request, target.pool).await {
                Ok(response) => return Ok(response.map(ResponseBody::Inline)),
                Err(h1::Error::ClosedBeforeAnswer) if resendable => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // Boxed: the connect path (DNS, TCP, TLS) is rare and its future is
        // large; inline, every client connection would carry its size.
        let conn = h1::Conn::new(Box::pin(self.connect(target)).await?);
        let response = conn.exchange(&request, target.pool).await?;
        Ok(response.map(ResponseBody::Inline))
    }

    /// A request with a body, or an upgrade: hyper's client streams the body
    /// while it watches for an early answer. A pooled connection found
    /// closed before the request was written is skipped; a request that was
    /// written and then failed is not resent.
    async fn send_with_hyper(
        &self,
        target: &crate::upstream::Target,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        let mut sender = loop {
            let Some(mut sender) = HYPER.checkout(target.pool) else {
                break handshake(self.connect(target).await?).await?;
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(hyper_response(response, sender, target.pool)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        };
        let response = sender.send_request(request).await?;
        Ok(hyper_response(response, sender, target.pool))
    }

    /// Opens a connection (each resolved address in turn, TLS for `https`),
    /// all within the connect timeout.
    async fn connect(&self, target: &crate::upstream::Target) -> Result<h1::Io, SendError> {
        let connecting = async {
            let stream = connect_tcp(&target.address).await.map_err(SendError::Connect)?;
            let _ = stream.set_nodelay(true);
            if target.scheme != http::uri::Scheme::HTTPS {
                return Ok(h1::Io::Tcp(stream));
            }
            let name = rustls_pki_types::ServerName::try_from(target.authority.host().to_string())
                .map_err(|e| SendError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
            let stream = self.tls.connect(name, stream).await.map_err(SendError::Tls)?;
            Ok(h1::Io::Tls(Box::new(stream)))
        };
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .unwrap_or(Err(SendError::ConnectTimeout(self.connect_timeout)))
    }
}

fn hyper_response(
    response: Response<Incoming>,
    sender: SendRequest<ProxyBody>,
    pool: PoolId,
) -> Response<ResponseBody> {
    response.map(|body| ResponseBody::Hyper(HyperBody { body, sender: Some(sender), pool }))
}

/// Tries each address the target's name resolves to.
async fn connect_tcp(address: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolved to no address")))
}

/// Hands a new connection to hyper and spawns the task that drives it.
async fn handshake(io: h1::Io) -> Result<SendRequest<ProxyBody>, SendError> {
    let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Reads a whole (small) response body, for callers that need it in memory
/// (health checks, shadow answers); the connection goes back to its pool.
pub async fn read_to_end(body: ResponseBody, mut each: impl FnMut(&[u8])) -> Result<(), BoxError> {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            each(data);
        }
    }
    Ok(())
}
