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
//! (resolved at config load), lives in a thread-local ([`pool`]), and a
//! connection goes back to it when the response body ends.
//!
//! Layout: [`pool`] keeps idle connections per thread; [`h1`] is the inline
//! exchange; [`body`] holds the body type both directions use, including an
//! upstream's answer, which gives its connection and its concurrency slot
//! back when it ends; [`target`] is what a request is sent to, with its live
//! state and the permit a request holds.

pub mod h1;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub mod body;
pub mod pool;
pub mod target;

use crate::wire::request::Added;
use body::{Answer, BoxError, HyperBody, ProxyBody, ResponseBody, UpstreamBody};
use pool::{PoolId, PoolRef};
use target::Target;

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
        target: &Target,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let mut response = *self.send_request(target, &mut request, None).await?;
        body::fill_headers(&mut response);
        Ok(response)
    }

    /// [`Connector::send`] with the request left where the caller keeps it
    /// (it takes the body, and a request with one whole): the proxy's request
    /// path moves its futures at every `await`, and this one then holds a
    /// pointer, not the request's 320 bytes, twice. `added`: the headers the
    /// proxy adds, written into the head by the inline exchange, inserted
    /// into the map for hyper. An answer read by the inline exchange keeps
    /// its head as it arrived and an empty map: see [`body::fill_headers`].
    pub async fn send_request(
        &self,
        target: &Target,
        request: &mut Request<ProxyBody>,
        added: Option<&Added<'_>>,
    ) -> Result<Answer, SendError> {
        if !crate::headers::has(request.headers(), &http::header::HOST) {
            if let Ok(host) = http::HeaderValue::from_str(target.authority.as_str()) {
                request.headers_mut().insert(http::header::HOST, host);
            }
        }
        if request.body().is_end_stream() && !crate::headers::has(request.headers(), &http::header::UPGRADE) {
            return self.send_inline(target, request, added).await;
        }
        let mut request = std::mem::replace(request, Request::new(ProxyBody::empty()));
        if let Some(added) = added {
            added.insert_into(request.headers_mut());
        }
        // Boxed: rarer, and its future is large.
        Box::pin(self.send_with_hyper(target, request)).await
    }

    /// A bodiless request. A pooled connection the upstream closed before
    /// answering (its keep-alive timeout raced the request) is given up, and
    /// an idempotent request is sent again on another one, as nginx does.
    async fn send_inline(
        &self,
        target: &Target,
        request: &Request<ProxyBody>,
        added: Option<&Added<'_>>,
    ) -> Result<Answer, SendError> {
        let resendable = request.method().is_idempotent();
        while let Some(conn) = h1::POOL.checkout(target.pool) {
            match conn.exchange(request, added, target.pool).await {
                Ok(response) => return Ok(response),
                Err(h1::Error::ClosedBeforeAnswer) if resendable => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // Boxed: the connect path (DNS, TCP, TLS) is rare and its future is
        // large; inline, every client connection would carry its size.
        let conn = h1::Conn::new(Box::pin(self.connect(target)).await?);
        Ok(conn.exchange(request, added, target.pool).await?)
    }

    /// A request with a body, or an upgrade: hyper's client streams the body
    /// while it watches for an early answer. A pooled connection found
    /// closed before the request was written is skipped; a request that was
    /// written and then failed is not resent.
    async fn send_with_hyper(&self, target: &Target, mut request: Request<ProxyBody>) -> Result<Answer, SendError> {
        let head = request.method() == http::Method::HEAD;
        let mut sender = loop {
            let Some(mut sender) = body::HYPER.checkout(target.pool) else {
                break handshake(self.connect(target).await?).await?;
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(hyper_response(response, sender, target.pool, head)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        };
        let response = sender.send_request(request).await?;
        Ok(hyper_response(response, sender, target.pool, head))
    }

    /// Opens a connection (each resolved address in turn, TLS for `https`),
    /// all within the connect timeout.
    async fn connect(&self, target: &Target) -> Result<h1::Io, SendError> {
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

/// The answer, with its connection to give back when its body ends; not
/// after an answer to HEAD that announced a body (it may still come, and
/// be read as the next request's answer).
fn hyper_response(response: Response<Incoming>, sender: SendRequest<ProxyBody>, pool: PoolRef, head: bool) -> Answer {
    let sender = (!(head && crate::wire::Fields::of(response.headers()).announces_body())).then_some(sender);
    let body =
        |body| ProxyBody::Upstream(UpstreamBody::unheld(ResponseBody::Hyper(HyperBody::new(body, sender, pool))));
    Box::new(response.map(body))
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
pub async fn read_to_end(body: ProxyBody, mut each: impl FnMut(&[u8])) -> Result<(), BoxError> {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            each(data);
        }
    }
    Ok(())
}

/// Closes the idle connections of targets that left the config: the
/// overflow pools at once, each thread's own at its next release of a
/// connection, or at once where it runs [`sweep_idle_pools`]. Ids are
/// never handed out again.
pub fn retire_pools(pools: &[PoolId]) {
    if pools.is_empty() {
        return;
    }
    pool::announce_retired(pools);
    h1::POOL.catch_up_shared();
    body::HYPER.catch_up_shared();
}

/// Runs for the life of a runtime thread (each per-core worker, and the
/// shadow's thread, spawn it), even with no traffic to notice: closes this
/// thread's idle connections (and the overflow's) once they have been idle
/// for their upstream's `idle_timeout`, and, whenever pools are retired,
/// this thread's idle connections in them.
pub async fn sweep_idle_pools() {
    pool::sweep(
        || {
            h1::POOL.catch_up_local();
            body::HYPER.catch_up_local();
        },
        |now| match (h1::POOL.reap(now), body::HYPER.reap(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    )
    .await
}
