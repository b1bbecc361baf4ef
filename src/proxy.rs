//! The request path through the proxy: normalize the path, match a route,
//! edit headers in place, send upstream through the pooled client, and hand
//! the upstream's answer back as it streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::headers;
use crate::path;
use crate::router::host_without_port;
use crate::table::{Route, Table};
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
pub async fn handle(shared: Arc<Shared>, conn: Arc<Conn>, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
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
    let response = match forward(&table, &conn, req, upgrade, &request_id, &mut outcome).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(request_id = ?request_id, error = %err, "request failed");
            err.into_response(Some(&request_id))
        }
    };
    if let Some(route) = outcome.route {
        route.stats.record(&method, response.status(), start.elapsed());
    }
    access_log(&method, &outcome, &request_id, &response, start);
    Ok(response)
}

/// What the access log and metrics need to know about how a request went.
#[derive(Default)]
struct Outcome<'t> {
    path: Option<Box<str>>,
    route: Option<&'t Route>,
}

fn access_log(method: &Method, outcome: &Outcome<'_>, request_id: &HeaderValue, response: &Response<ProxyBody>, start: Instant) {
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
        upstream = outcome.route.map_or("-", |r| &r.upstream.name),
        status = response.status().as_u16(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        bytes,
    );
}

async fn forward<'t>(
    table: &'t Table,
    conn: &Conn,
    mut req: Request<Incoming>,
    upgrade: bool,
    request_id: &HeaderValue,
    outcome: &mut Outcome<'t>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    let normalized = path::normalize(req.uri().path()).map_err(ProxyError::BadPath)?;
    if tracing::enabled!(target: "strangler::access", tracing::Level::INFO) {
        outcome.path = Some(normalized.as_ref().into());
    }
    let host_value = client_host(&req)?;
    let host = host_value.as_ref().and_then(|v| v.to_str().ok()).map(host_without_port);
    let found = table.router.lookup(&normalized, host, req.method()).ok_or_else(|| ProxyError::NoRoute {
        method: req.method().to_string(),
        path: normalized.to_string(),
    })?;
    let route = found.value;
    outcome.route = Some(route);

    let upstream_path = if route.strip_prefix { &normalized[found.prefix_len..] } else { &normalized[..] };
    let path_and_query = upstream_path_and_query(req.uri(), upstream_path)?;
    let target = route.upstream.pick();

    let hdrs = req.headers_mut();
    if upgrade {
        headers::set_upgrade(hdrs);
    }
    if let Some(host) = &host_value {
        hdrs.insert(header::HOST, host.clone());
    }
    headers::add_forwarded(hdrs, &conn.client_ip, conn.proto, host_value);
    hdrs.insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();

    let (mut parts, body) = req.into_parts();
    parts.uri = target.uri(path_and_query);
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, ProxyBody::Streamed(body));

    let upstream = &route.upstream;
    let mut response = match tokio::time::timeout(upstream.timeout, upstream.client.request(upstream_req)).await {
        Err(_) => {
            upstream.errors.timeout.inc();
            return Err(ProxyError::UpstreamTimeout { upstream: upstream.name.to_string() });
        }
        Ok(Err(e)) => return Err(classify_upstream_error(upstream, e)),
        Ok(Ok(response)) => response,
    };

    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match client_upgrade {
            Some(client_upgrade) => tunnel(client_upgrade, hyper::upgrade::on(&mut response)),
            None => return Err(ProxyError::UpstreamFailed {
                upstream: upstream.name.to_string(),
                detail: "answered 101 to a request that asked for no upgrade".into(),
            }),
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
    Ok(response.map(ProxyBody::Streamed))
}

/// The host the client addressed: the authority of an absolute-form or
/// HTTP/2 request wins over `Host` (RFC 9112 §3.2.2), and is what the
/// upstream is then told.
fn client_host(req: &Request<Incoming>) -> Result<Option<HeaderValue>, ProxyError> {
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

fn classify_upstream_error(upstream: &crate::upstream::Upstream, e: hyper_util::client::legacy::Error) -> ProxyError {
    let name = upstream.name.to_string();
    if e.is_connect() {
        if error_chain_has_timeout(&e) {
            upstream.errors.timeout.inc();
            return ProxyError::UpstreamTimeout { upstream: name };
        }
        upstream.errors.connect.inc();
        return ProxyError::UpstreamUnreachable { upstream: name };
    }
    ProxyError::UpstreamFailed { upstream: name, detail: error_chain(&e) }
}

fn error_chain_has_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        current = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut current = e.source();
    while let Some(err) = current {
        out.push_str(": ");
        out.push_str(&err.to_string());
        current = err.source();
    }
    out
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
