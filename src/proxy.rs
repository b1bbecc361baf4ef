//! The request path through the proxy: normalize the path, match a route,
//! edit headers in place, send upstream through the pooled client, and hand
//! the upstream's answer back as it streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::body::{ProxyBody, UpstreamBody};
use crate::client::SendError;
use crate::error::ProxyError;
use crate::headers;
use crate::path;
use crate::record::reason;
use crate::router::host_for_matching;
use crate::shadow::{PendingMirror, RequestFacts, ResponseTap};
use crate::table::{Route, RouteUpstream, Table};
use crate::upstream::{Unavailable, Upstream};
use crate::Shared;

/// What the proxy knows about a client connection, computed once per connection.
pub struct Conn {
    pub remote: SocketAddr,
    /// The client's IP as a ready header value, for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

impl Conn {
    pub fn new(remote: SocketAddr, proto: &'static str) -> Self {
        let client_ip = HeaderValue::from_str(&remote.ip().to_string()).expect("an IP is a valid header value");
        Conn { remote, client_ip, proto }
    }
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one client request. Never fails: every error becomes a JSON answer.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    shared.metrics.in_flight.inc();
    let _in_flight = InFlight(&shared.metrics.in_flight);
    // Hop-by-hop headers go before anything is read or added.
    let upgrade = headers::is_upgrade_request(req.headers());
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    let request_id = headers::request_id(req.headers());
    let table = shared.table.load_full();
    let method = req.method().clone();
    let mut outcome = Outcome::default();
    let mut response = match forward(&shared, &table, &conn, req, upgrade, &request_id, &mut outcome).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(request_id = ?request_id, error = %err, "request failed");
            err.into_response(Some(&request_id))
        }
    };
    if let Some(used) = outcome.used() {
        used.stats.record(&method, response.status(), start.elapsed());
        if let Some(name) = &table.upstream_header {
            response.headers_mut().insert(name.clone(), used.upstream.name_header.clone());
        }
    }
    access_log(&method, &outcome, &request_id, &response, start);
    Ok(response)
}

/// What the access log and metrics need to know about how a request went.
#[derive(Default)]
struct Outcome<'t> {
    path: Option<Box<str>>,
    route: Option<&'t Route>,
    /// Index into `route.upstreams` of the upstream that answered (or was
    /// last tried); `None` when the request never got that far (a 429, say).
    upstream: Option<usize>,
}

impl<'t> Outcome<'t> {
    fn used(&self) -> Option<&'t RouteUpstream> {
        Some(&self.route?.upstreams[self.upstream?])
    }
}

fn access_log(
    method: &Method,
    outcome: &Outcome<'_>,
    request_id: &HeaderValue,
    response: &Response<ProxyBody>,
    start: Instant,
) {
    if !tracing::enabled!(target: "strangler::access", tracing::Level::INFO) {
        return;
    }
    let bytes = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    tracing::info!(
        target: "strangler::access",
        request_id = request_id.to_str().unwrap_or(""),
        method = %method,
        path = outcome.path.as_deref().unwrap_or("-"),
        route = outcome.route.map_or("-", |r| &r.name),
        upstream = outcome.used().map_or("-", |u| &u.upstream.name),
        status = response.status().as_u16(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        bytes,
    );
}

async fn forward<'t>(
    shared: &Shared,
    table: &'t Table,
    conn: &Conn,
    mut req: Request<ProxyBody>,
    upgrade: bool,
    request_id: &HeaderValue,
    outcome: &mut Outcome<'t>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    // A cheap clone (shared bytes): the normalized path may borrow from it
    // while the request's headers are edited.
    let uri = req.uri().clone();
    let normalized = path::normalize(uri.path()).map_err(ProxyError::BadPath)?;
    if tracing::enabled!(target: "strangler::access", tracing::Level::INFO) {
        outcome.path = Some(normalized.as_ref().into());
    }
    let host_value = client_host(&req)?;
    // The route is chosen on the same host the upstream will read.
    let host = match &host_value {
        Some(v) => Some(v.to_str().ok().and_then(host_for_matching).ok_or(ProxyError::BadRequest("invalid Host"))?),
        None => None,
    };
    let found = table
        .router
        .lookup(&normalized, host, req.method())
        .ok_or_else(|| ProxyError::NoRoute { method: req.method().to_string(), path: normalized.to_string() })?;
    let route = found.value;
    outcome.route = Some(route);
    if let Some(limiter) = &route.rate_limit {
        if let Err(wait) = limiter.check(req.headers(), conn.remote.ip()) {
            route.rate_limited.inc();
            return Err(ProxyError::RateLimited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 });
        }
    }

    let upstream_path = if route.strip_prefix { &normalized[found.prefix_len..] } else { &normalized[..] };
    let path_and_query = upstream_path_and_query(req.uri(), upstream_path)?;
    let hdrs = req.headers_mut();
    if upgrade {
        headers::set_upgrade(hdrs);
    }
    // An absolute-form or HTTP/2 authority becomes the Host the upstream sees;
    // otherwise the client's Host header is already in place.
    if let (Some(host), Some(_)) = (&host_value, uri.authority()) {
        hdrs.insert(header::HOST, host.clone());
    }
    headers::add_forwarded(hdrs, &conn.client_ip, conn.proto, host_value);
    hdrs.insert(headers::X_REQUEST_ID.clone(), request_id.clone());

    let primary = route.choose(req.headers());
    outcome.upstream = Some(primary);
    let fallback = route.fallback.filter(|&f| f != primary);
    let replayable = !upgrade && route.may_replay(req.method());
    let wants_replay =
        replayable && (fallback.is_some() || route.upstreams.iter().any(|u| u.upstream.settings.retries > 0));
    let mirror = route
        .shadow
        .as_ref()
        // A split may have picked the shadow itself as the primary: nothing to compare then.
        .filter(|s| !upgrade && !Arc::ptr_eq(&s.upstream, &route.upstreams[primary].upstream))
        .filter(|s| s.wants(req.method(), req.headers()))
        .and_then(|s| {
            let facts = RequestFacts {
                route: &route.name,
                request_id,
                method: req.method(),
                path: &normalized,
                query: req.uri().query(),
                path_and_query: &path_and_query,
                headers: req.headers(),
                primary_upstream: &route.upstreams[primary].upstream.name,
            };
            PendingMirror::start(&shared.shadow, s, facts)
        });
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    let mut body = if wants_replay {
        // A client that stalls mid-body gets no longer than the upstream would.
        let deadline = route.upstreams[primary].upstream.settings.timeout;
        match Box::pin(RequestBody::buffer(&parts.headers, body, route.retry_buffer, deadline)).await {
            Ok(body) => body,
            Err(e) => {
                if let Some(mirror) = mirror {
                    mirror.skip(reason::NOT_COMPARABLE);
                }
                return Err(e);
            }
        }
    } else {
        RequestBody::Streamed(Some(body))
    };
    let tap = mirror.map(|mirror| body.mirror_to(mirror));
    let mut attempt = Attempt { parts: &mut parts, path_and_query: &path_and_query, body: &mut body, replayable };

    let mut result = attempt.send_to(&route.upstreams[primary].upstream).await;
    if let Some(fallback) = fallback {
        let failed = match &result {
            Ok(response) => is_gateway_error(response.status()),
            Err(e) => e.is_retryable(),
        };
        if failed && replayable && attempt.body.available() {
            route.fallbacks.inc();
            outcome.upstream = Some(fallback);
            tracing::debug!(route = %route.name, from = %route.upstreams[primary].upstream.name, "falling back");
            result = attempt.send_to(&route.upstreams[fallback].upstream).await;
        }
    }
    let mut response = result?;

    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match client_upgrade {
            Some(client_upgrade) => tunnel(client_upgrade, hyper::upgrade::on(&mut response)),
            None => {
                return Err(ProxyError::UpstreamFailed {
                    upstream: outcome.used().map_or_else(String::new, |u| u.upstream.name.to_string()),
                    detail: "answered 101 to a request that asked for no upgrade".into(),
                })
            }
        }
    }
    let hdrs = response.headers_mut();
    headers::strip_hop_by_hop(hdrs, switching);
    if switching {
        headers::set_upgrade(hdrs);
    }
    hdrs.insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    // Answer in the client's protocol version, whatever the upstream spoke.
    *response.version_mut() = client_version;
    match tap {
        Some(tap) => Ok(tap.tee(response, outcome.used().map_or_else(|| Arc::from(""), |u| u.upstream.name.clone()))),
        None => Ok(response),
    }
}

/// 502, 503 and 504: the upstream could not answer; worth trying elsewhere.
fn is_gateway_error(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

/// The request body: streamed through once, or kept (when small) so that
/// it can be sent again to a retry or the fallback.
enum RequestBody {
    Streamed(Option<ProxyBody>),
    Buffered(Bytes),
}

impl RequestBody {
    /// Keeps the body when it is known to be at most `limit` bytes.
    async fn buffer(
        headers: &http::HeaderMap,
        body: ProxyBody,
        limit: u64,
        deadline: std::time::Duration,
    ) -> Result<RequestBody, ProxyError> {
        if body.is_end_stream() {
            return Ok(RequestBody::Buffered(Bytes::new()));
        }
        let length =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        match length {
            Some(n) if n <= limit => {
                let collect = http_body_util::Limited::new(body, n as usize).collect();
                let collected = tokio::time::timeout(deadline, collect)
                    .await
                    .map_err(|_| ProxyError::BodyRead)?
                    .map_err(|_| ProxyError::BodyRead)?;
                Ok(RequestBody::Buffered(collected.to_bytes()))
            }
            _ => Ok(RequestBody::Streamed(Some(body))),
        }
    }

    /// Starts the mirror with this body: a copy of a kept body, or a tee on
    /// the streamed one (the primary still gets it streamed).
    fn mirror_to(&mut self, mirror: PendingMirror) -> ResponseTap {
        match self {
            RequestBody::Buffered(bytes) => mirror.spawn_with_copy(bytes),
            RequestBody::Streamed(Some(body)) => mirror.spawn_with_tee(body),
            RequestBody::Streamed(None) => mirror.spawn_with_copy(&Bytes::new()),
        }
    }

    /// Whether another attempt can still be sent.
    fn available(&self) -> bool {
        match self {
            RequestBody::Streamed(body) => body.is_some(),
            RequestBody::Buffered(_) => true,
        }
    }

    fn take(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Streamed(body) => body.take(),
            RequestBody::Buffered(bytes) => Some(ProxyBody::full(bytes.clone())),
        }
    }
}

/// One request on its way upstream, possibly over several attempts.
struct Attempt<'a> {
    parts: &'a mut http::request::Parts,
    path_and_query: &'a PathAndQuery,
    body: &'a mut RequestBody,
    /// The method allows sending the request more than once.
    replayable: bool,
}

impl Attempt<'_> {
    /// Sends to one upstream, retrying (within its budget) on connection
    /// failures and 502/503/504 when the body can be sent again.
    async fn send_to(&mut self, upstream: &Arc<Upstream>) -> Result<Response<ProxyBody>, ProxyError> {
        let may_retry = upstream.settings.retries > 0 && self.replayable;
        if may_retry {
            upstream.budget.record_request();
        }
        let mut retries = 0;
        loop {
            let result = self.send_once(upstream).await;
            let failed = match &result {
                Ok(response) => is_gateway_error(response.status()),
                Err(e) => e.is_retryable(),
            };
            let can_retry = failed
                && may_retry
                && retries < upstream.settings.retries
                && matches!(self.body, RequestBody::Buffered(_))
                && upstream.budget.try_retry();
            if !can_retry {
                return result;
            }
            retries += 1;
            upstream.counters.retries.inc();
            tokio::time::sleep(crate::upstream::backoff(retries - 1)).await;
        }
    }

    async fn send_once(&mut self, upstream: &Arc<Upstream>) -> Result<Response<ProxyBody>, ProxyError> {
        let permit = upstream.acquire().map_err(|why| match why {
            Unavailable::AllUnhealthy => ProxyError::NoHealthyTarget { upstream: upstream.name.to_string() },
            Unavailable::Overloaded => ProxyError::Overloaded { upstream: upstream.name.to_string() },
        })?;
        let body = self.body.take().ok_or_else(|| ProxyError::UpstreamFailed {
            upstream: upstream.name.to_string(),
            detail: "the request body was already sent and cannot be replayed".into(),
        })?;
        let mut request = Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = http::Uri::from(self.path_and_query.clone());
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() =
            if self.body.available() { self.parts.headers.clone() } else { std::mem::take(&mut self.parts.headers) };
        let sent = upstream.client.send(permit.target(), request);
        let result = match tokio::time::timeout(upstream.settings.timeout, sent).await {
            Err(_) => {
                upstream.counters.errors.timeout.inc();
                Err(ProxyError::UpstreamTimeout { upstream: upstream.name.to_string() })
            }
            Ok(Err(e)) => Err(classify_upstream_error(upstream, e)),
            Ok(Ok(answer)) => Ok(answer),
        };
        match &result {
            Ok(response) if !is_gateway_error(response.status()) => upstream.record_success(permit.target()),
            Err(ProxyError::BodyRead) => {}
            _ => upstream.record_failure(permit.target()),
        }
        // The slot is held until the response body ends, not just its head.
        result.map(|response| response.map(|body| ProxyBody::Upstream(UpstreamBody::new(body, permit))))
    }
}

/// The host the client addressed: the authority of an absolute-form or
/// HTTP/2 request wins over `Host` (RFC 9112 §3.2.2), and is what the
/// upstream is then told.
fn client_host(req: &Request<ProxyBody>) -> Result<Option<HeaderValue>, ProxyError> {
    if let Some(authority) = req.uri().authority() {
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| ProxyError::BadRequest("invalid authority"));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    Ok(host)
}

/// The path and query sent upstream: the matched path, plus the client's query.
fn upstream_path_and_query(uri: &http::Uri, path: &str) -> Result<PathAndQuery, ProxyError> {
    let path = if path.is_empty() { "/" } else { path };
    if path == uri.path() {
        if let Some(pq) = uri.path_and_query() {
            return Ok(pq.clone());
        }
    }
    let rebuilt = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    PathAndQuery::from_maybe_shared(rebuilt).map_err(|_| ProxyError::BadRequest("invalid request target"))
}

fn classify_upstream_error(upstream: &Upstream, e: SendError) -> ProxyError {
    let name = upstream.name.to_string();
    match e {
        SendError::ConnectTimeout(_) => {
            upstream.counters.errors.timeout.inc();
            ProxyError::UpstreamTimeout { upstream: name }
        }
        SendError::Connect(_) | SendError::Tls(_) => {
            upstream.counters.errors.connect.inc();
            ProxyError::UpstreamUnreachable { upstream: name }
        }
        // The client's upload failed (aborted, malformed): not the upstream's fault.
        SendError::Http(e) if caused_by_request_body(&e) => ProxyError::BodyRead,
        SendError::Http(e) => ProxyError::UpstreamFailed { upstream: name, detail: error_chain(&e) },
        SendError::Exchange(e) => ProxyError::UpstreamFailed { upstream: name, detail: e.to_string() },
    }
}

/// An error and every error beneath it.
fn error_sources<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |err| err.source())
}

fn caused_by_request_body(e: &(dyn std::error::Error + 'static)) -> bool {
    error_sources(e)
        .any(|err| err.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_user() || h.is_body_write_aborted()))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    error_sources(e).map(|err| err.to_string()).collect::<Vec<_>>().join(": ")
}

/// Copies bytes both ways once both sides have switched protocols.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "tunnel closed with an error");
        }
    });
}
