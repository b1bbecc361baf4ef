//! The upstream client: keep-alive HTTP/1.1 connections to each target,
//! made with hyper's low-level `client::conn` and kept in per-thread idle
//! pools.
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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ProxyBody;

/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per target on each thread.
pub const MAX_IDLE_PER_TARGET: usize = 256;
/// Idle connections per target in the shared overflow pool.
pub const MAX_SHARED_IDLE_PER_TARGET: usize = 1024;
/// A pooled connection idle at least this long may have met the upstream's
/// keep-alive timeout (node's is 5 s, gunicorn's 2 s): a bodiless idempotent
/// request sent on it keeps a copy, to send again if it turns out closed.
/// Busier connections skip the copy (it costs ~4% of a request's CPU).
pub const RESEND_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Where one target's idle connections live: an index into every thread's
/// pool table, resolved when the config is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolId(pub usize);

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
}

/// A connection on loan for one exchange. Give it back with
/// [`Lease::release`] once the response body has ended; dropping it instead
/// closes the connection when it is done.
pub struct Lease {
    sender: SendRequest<ProxyBody>,
    pool: PoolId,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({:?})", self.pool)
    }
}

impl Lease {
    /// Returns the connection to its pool for the next request.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let idle = Idle { sender: self.sender, since: Instant::now() };
        // `try_with`: a body dropped while its thread is exiting just closes.
        let Ok(full) = IDLE.try_with(|local| {
            let mut local = local.borrow_mut();
            let queue = pool_queue(&mut local, self.pool);
            if queue.len() >= MAX_IDLE_PER_TARGET {
                return Some(idle);
            }
            queue.push_back(idle);
            None
        }) else {
            return;
        };
        if let Some(idle) = full {
            let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            let queue = pool_queue(&mut shared, self.pool);
            if queue.len() >= MAX_SHARED_IDLE_PER_TARGET {
                queue.pop_front();
            }
            queue.push_back(idle);
        }
    }
}

fn pool_queue(pools: &mut Vec<VecDeque<Idle>>, pool: PoolId) -> &mut VecDeque<Idle> {
    if pools.len() <= pool.0 {
        pools.resize_with(pool.0 + 1, VecDeque::new);
    }
    &mut pools[pool.0]
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

thread_local! {
    /// This thread's idle connections, by pool.
    static IDLE: RefCell<Vec<VecDeque<Idle>>> = const { RefCell::new(Vec::new()) };
}

/// Idle connections no thread had room for, by pool.
static SHARED: std::sync::Mutex<Vec<VecDeque<Idle>>> = std::sync::Mutex::new(Vec::new());

/// The newest idle connection of a pool that is still open and fresh, and
/// how long it has been idle: this thread's own first, else the overflow's.
fn checkout(pool: PoolId) -> Option<(SendRequest<ProxyBody>, Duration)> {
    let now = Instant::now();
    let local = IDLE
        .try_with(|local| local.borrow_mut().get_mut(pool.0).and_then(|queue| newest_open(queue, now)))
        .ok()
        .flatten();
    local.or_else(|| {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        shared.get_mut(pool.0).and_then(|queue| newest_open(queue, now))
    })
}

fn newest_open(queue: &mut VecDeque<Idle>, now: Instant) -> Option<(SendRequest<ProxyBody>, Duration)> {
    while queue.front().is_some_and(|oldest| now.duration_since(oldest.since) > IDLE_TIMEOUT) {
        queue.pop_front();
    }
    while let Some(Idle { sender, since }) = queue.pop_back() {
        if !sender.is_closed() {
            return Some((sender, now.duration_since(since)));
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
    /// connection from its pool when there is one. A pooled connection the
    /// upstream closed meanwhile is skipped, and the request is sent on
    /// another one; a request that was written and then failed is not resent.
    /// A request without `Host` (HTTP/1.0 clients, health checks) is given
    /// the target's.
    pub async fn send(
        &self,
        target: &crate::upstream::Target,
        mut request: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        if !request.headers().contains_key(http::header::HOST) {
            if let Ok(host) = http::HeaderValue::from_str(target.authority.as_str()) {
                request.headers_mut().insert(http::header::HOST, host);
            }
        }
        while let Some((mut sender, idle)) = checkout(target.pool) {
            if sender.ready().await.is_err() {
                continue;
            }
            // An upstream may close an idle connection just as a request is
            // written to it (its keep-alive timeout). An idempotent request
            // without a body is then sent again on a new connection, as
            // nginx does; that needs a copy of its head.
            let again = if idle >= RESEND_AFTER_IDLE { resendable_copy(&request) } else { None };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease { sender, pool: target.pool })),
                Err(mut e) => match (e.take_message(), again) {
                    (Some(unsent), _) => request = unsent,
                    (None, Some(copy)) if closed_before_answering(e.error()) => {
                        request = copy;
                        break;
                    }
                    (None, _) => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        // Boxed: the connect path (DNS, TCP, TLS) is rare and its future is
        // large; inline, every client connection would carry its size.
        let mut sender = Box::pin(self.connect(target)).await?;
        let response = sender.send_request(request).await?;
        Ok((response, Lease { sender, pool: target.pool }))
    }

    /// Opens a new connection (each resolved address in turn, all within
    /// the connect timeout) and spawns the task that drives it.
    async fn connect(&self, target: &crate::upstream::Target) -> Result<SendRequest<ProxyBody>, SendError> {
        let connecting = async {
            let stream = connect_tcp(&target.address).await.map_err(SendError::Connect)?;
            let _ = stream.set_nodelay(true);
            if target.scheme == http::uri::Scheme::HTTPS {
                let name = rustls_pki_types::ServerName::try_from(target.authority.host().to_string())
                    .map_err(|e| SendError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
                let stream = self.tls.connect(name, stream).await.map_err(SendError::Tls)?;
                handshake(stream).await
            } else {
                handshake(stream).await
            }
        };
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .unwrap_or(Err(SendError::ConnectTimeout(self.connect_timeout)))
    }
}

/// A copy of a bodiless idempotent request, to send again if a reused
/// connection turns out to be closed.
fn resendable_copy(request: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    use http_body::Body as _;
    if !request.method().is_idempotent() || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(ProxyBody::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// The connection was closed (or reset) before any answer came back.
fn closed_before_answering(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    e.is_incomplete_message()
        || e.is_canceled()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted))
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

async fn handshake<S>(stream: S) -> Result<SendRequest<ProxyBody>, SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Reads a whole (small) response body and gives the connection back, for
/// callers that need the body in memory (health checks, shadow answers).
pub async fn read_to_end(mut body: Incoming, lease: Lease, mut each: impl FnMut(&[u8])) -> Result<(), hyper::Error> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            each(data);
        }
    }
    lease.release();
    Ok(())
}
