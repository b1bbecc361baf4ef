//! Stage 3, prepare: the request as the upstream will get it (its path and
//! query, the proxy's headers), which upstream is asked first and which
//! falls back; then the mirror starts, and the body is kept whole when the
//! request may have to be sent twice.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::Request;
use http_body::Body as _;
use http_body_util::BodyExt;

use super::route::Routed;
use super::{ClientIp, Downstream};
use crate::client::body::ProxyBody;
use crate::error::ProxyError;
use crate::headers;
use crate::record::reason;
use crate::shadow::{PendingMirror, RequestFacts, ResponseTap, ShadowRuntime};
use crate::table::{Backend, Route};
use crate::wire::request::Added;

/// Where the request goes and how often it may be sent.
pub(super) struct Plan<'t, 'u> {
    pub route: &'t Route,
    /// The normalized path (what routes matched, and the diff log records).
    pub path: Cow<'u, str>,
    /// What the upstream is sent: the path after `strip_prefix`, with the
    /// client's query.
    pub path_and_query: PathAndQuery,
    /// Index into `route.upstreams` of the upstream asked first.
    pub primary: usize,
    /// Index into `route.upstreams` of the fallback, unless it is the primary.
    pub fallback: Option<usize>,
    /// The method allows sending the request more than once (and it is no upgrade).
    pub replayable: bool,
    /// Index into `route.upstreams` of the other side, where a `421
    /// Misdirected Request` from the primary is sent once: the fallback, else
    /// another member of the split.
    pub misdirect_to: Option<usize>,
    /// A retry, the fallback or a 421's other side may send the request
    /// again: its body is kept when small.
    pub keeps_body: bool,
    /// The `X-Forwarded-*` and `X-Request-Id` headers, added as each attempt
    /// is written (see [`Added`]); `None` when they are in the request's map
    /// already.
    pub forwarding: Option<Forwarding<'t>>,
}

/// What the headers the proxy adds are made of, kept until an attempt
/// writes them.
pub(super) struct Forwarding<'t> {
    peer_ip: &'t HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
    request_id: &'t HeaderValue,
}

impl Forwarding<'_> {
    /// The headers, as the client writes (or inserts) them.
    pub(super) fn added(&self) -> Added<'_> {
        Added { peer_ip: self.peer_ip, proto: self.proto, host: self.host.as_ref(), request_id: self.request_id }
    }
}

/// Edits the request's headers for the upstream (`X-Forwarded-*`,
/// `X-Request-Id`, `Host` from an absolute-form target, `Connection:
/// upgrade` back for an upgrade) and plans where it goes. Only a target
/// that is no valid path and query is refused (400).
///
/// `X-Forwarded-*` and `X-Request-Id` go into the request's map only on a
/// route where something reads the map after this (a mirror copies it, a
/// split may be sticky on one of them); elsewhere the plan keeps them for
/// the client to write.
pub(super) fn prepare<'t, 'u>(
    routed: Routed<'t, 'u>,
    req: &mut Request<ProxyBody>,
    downstream: &'t Downstream,
    upgrade: bool,
    request_id: &'t HeaderValue,
) -> Result<Plan<'t, 'u>, ProxyError> {
    let Routed { route, path, prefix_len, host, .. } = routed;
    let path_and_query = upstream_path_and_query(route, &path, prefix_len, req.uri())?;
    let absolute_form = req.uri().authority().is_some();
    let hdrs = req.headers_mut();
    if upgrade {
        headers::set_upgrade(hdrs);
    }
    // An absolute-form or HTTP/2 authority becomes the Host the upstream sees;
    // otherwise the client's Host header is already in place.
    if let (Some(host), true) = (&host, absolute_form) {
        hdrs.insert(header::HOST, host.clone());
    }
    let forwarding = Forwarding { peer_ip: &downstream.ip, proto: downstream.proto, host, request_id };
    let read_later = route.shadow.is_some() || matches!(route.backend, Backend::Split(_));
    let forwarding = if read_later {
        forwarding.added().insert_into(hdrs);
        None
    } else {
        Some(forwarding)
    };

    let primary = route.choose(req.headers());
    let fallback = route.fallback.filter(|&f| f != primary);
    let replayable = !upgrade && route.may_replay(req.method());
    // A 421 means the request was not processed: any method may go on.
    let misdirect_to = if upgrade { None } else { route.other_side(primary) };
    let keeps_body = misdirect_to.is_some()
        || replayable && (fallback.is_some() || route.upstreams.iter().any(|u| u.upstream.settings.retries > 0));
    Ok(Plan { route, path, path_and_query, primary, fallback, replayable, misdirect_to, keeps_body, forwarding })
}

/// The path and query sent upstream: the normalized `path` (less the
/// route's prefix, `prefix_len` bytes, with `strip_prefix`), plus the
/// client's query from `uri`. Shared with `explain`.
pub fn upstream_path_and_query(
    route: &Route,
    path: &str,
    prefix_len: usize,
    uri: &http::Uri,
) -> Result<PathAndQuery, ProxyError> {
    let path = if route.strip_prefix { &path[prefix_len..] } else { path };
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

/// Starts mirroring the request (see [`crate::shadow`]) when its route
/// shadows and wants it (method, sampling, not itself a mirrored request).
/// Never for an upgrade, nor when a split picked the shadow itself as the
/// primary: there is nothing to compare then. The record names the
/// client's address (resolved here, for mirrored requests only).
pub(super) fn start_mirror(
    runtime: &Arc<ShadowRuntime>,
    plan: &Plan<'_, '_>,
    req: &Request<ProxyBody>,
    request_id: &HeaderValue,
    client: &mut ClientIp<'_>,
    upgrade: bool,
) -> Option<PendingMirror> {
    let shadow = plan.route.shadow.as_ref()?;
    let primary = &plan.route.upstreams[plan.primary].upstream;
    if upgrade || Arc::ptr_eq(&shadow.upstream, primary) || !shadow.wants(req.method(), req.headers()) {
        return None;
    }
    let facts = RequestFacts {
        route: &plan.route.name,
        request_id,
        client_ip: client.get(req.headers()),
        method: req.method(),
        path: &plan.path,
        query: req.uri().query(),
        path_and_query: &plan.path_and_query,
        headers: req.headers(),
        primary_upstream: &primary.name,
    };
    PendingMirror::start(runtime, shadow, facts)
}

/// The request body: streamed through once, or kept (when small) so that
/// it can be sent again to a retry or the fallback.
pub(super) enum RequestBody {
    Streamed(Option<ProxyBody>),
    Buffered(Bytes),
}

impl RequestBody {
    /// The body as the attempts will send it: kept whole when the plan may
    /// send the request twice, else streamed. A started mirror gets its copy
    /// here and runs from now on; if the body cannot be read, it is
    /// recorded as skipped instead.
    pub(super) async fn keep(
        plan: &Plan<'_, '_>,
        headers: &HeaderMap,
        body: ProxyBody,
        mirror: Option<PendingMirror>,
    ) -> Result<(RequestBody, Option<ResponseTap>), ProxyError> {
        let mut body = if plan.keeps_body {
            // A client that stalls mid-body gets no longer than the upstream would.
            let deadline = plan.route.upstreams[plan.primary].upstream.settings.timeout;
            match Box::pin(RequestBody::buffer(headers, body, plan.route.retry_buffer, deadline)).await {
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
        Ok((body, tap))
    }

    /// Keeps the body when it is known to be at most `limit` bytes.
    async fn buffer(
        headers: &HeaderMap,
        body: ProxyBody,
        limit: u64,
        deadline: std::time::Duration,
    ) -> Result<RequestBody, ProxyError> {
        if body.is_end_stream() {
            return Ok(RequestBody::Buffered(Bytes::new()));
        }
        let length = headers.get(header::CONTENT_LENGTH).and_then(|v| crate::wire::parse_length(v.as_bytes()));
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
    pub(super) fn available(&self) -> bool {
        match self {
            RequestBody::Streamed(body) => body.is_some(),
            RequestBody::Buffered(_) => true,
        }
    }

    /// The body for the next attempt: a kept body each time, a streamed one once.
    pub(super) fn take(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Streamed(body) => body.take(),
            RequestBody::Buffered(bytes) => Some(ProxyBody::full(bytes.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request};

    use super::super::route::route;
    use super::super::testing::{request, shared, table};
    use super::super::Outcome;
    use super::*;
    use crate::table::Table;

    /// What `prepare` decided, and the request it left for the upstream.
    struct Prepared {
        route: String,
        path_and_query: String,
        fallback: bool,
        replayable: bool,
        keeps_body: bool,
        req: Request<ProxyBody>,
    }

    fn downstream() -> Downstream {
        Downstream::new("192.0.2.7:5000".parse().unwrap(), "https")
    }

    fn prepared(table: &Table, mut req: Request<ProxyBody>, upgrade: bool) -> Prepared {
        let uri = req.uri().clone();
        let routed = route(table, req.method(), &uri, req.headers(), &mut Outcome::default()).expect("routed");
        let id = HeaderValue::from_static("req-1");
        let downstream = downstream();
        let plan = prepare(routed, &mut req, &downstream, upgrade, &id).expect("prepared");
        // What the upstream is told: the headers the client writes with the request's own.
        if let Some(forwarding) = &plan.forwarding {
            forwarding.added().insert_into(req.headers_mut());
        }
        Prepared {
            route: plan.route.name.to_string(),
            path_and_query: plan.path_and_query.to_string(),
            fallback: plan.fallback.is_some(),
            replayable: plan.replayable,
            keeps_body: plan.keeps_body,
            req,
        }
    }

    /// Routes and prepares `req` on `shared`'s table, then starts its mirror.
    fn mirror(shared: &crate::Shared, mut req: Request<ProxyBody>, upgrade: bool) -> Option<PendingMirror> {
        let table = shared.table.load_full();
        let uri = req.uri().clone();
        let routed = route(&table, req.method(), &uri, req.headers(), &mut Outcome::default()).expect("routed");
        let id = HeaderValue::from_static("req-1");
        let downstream = downstream();
        let plan = prepare(routed, &mut req, &downstream, upgrade, &id).expect("prepared");
        let mut client = ClientIp::new(&downstream, &table.trusted_proxies);
        start_mirror(&shared.shadow, &plan, &req, &id, &mut client, upgrade)
    }

    /// `strangler_shadow_dropped_total` for a route and reason.
    fn dropped(shared: &crate::Shared, route: &str, reason: &str) -> u64 {
        let (route, reason) = (format!("route=\"{route}\""), format!("reason=\"{reason}\""));
        let metrics = shared.metrics.render();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("strangler_shadow_dropped_total{") && l.contains(&route) && l.contains(&reason));
        line.map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
    }

    fn header<'r>(req: &'r Request<ProxyBody>, name: &str) -> Option<&'r str> {
        req.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn the_upstream_is_told_who_asked_for_what_and_the_request_id() {
        let mut req = request(Method::GET, "/api/v1/users?page=2", &["example.com"]);
        req.headers_mut().insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        let p = prepared(&table(), req, false);
        assert_eq!((p.route.as_str(), p.path_and_query.as_str()), ("api", "/v1/users?page=2"), "prefix stripped");
        assert_eq!(header(&p.req, "x-forwarded-for"), Some("198.51.100.1, 192.0.2.7"));
        assert_eq!(header(&p.req, "x-forwarded-proto"), Some("https"));
        assert_eq!(header(&p.req, "x-forwarded-host"), Some("example.com"));
        assert_eq!(header(&p.req, "x-request-id"), Some("req-1"));
        assert_eq!(header(&p.req, "host"), Some("example.com"));
        assert_eq!(header(&p.req, "connection"), None);
    }

    #[test]
    fn the_proxys_headers_enter_the_map_only_where_something_reads_it_later() {
        let table = table();
        for (target, read_later) in [("/x", false), ("/api/x", false), ("/mirrored/x", true), ("/cut-over/x", true)] {
            let mut req = request(Method::GET, target, &["example.com"]);
            let uri = req.uri().clone();
            let routed = route(&table, req.method(), &uri, req.headers(), &mut Outcome::default()).expect("routed");
            let (downstream, id) = (downstream(), HeaderValue::from_static("req-1"));
            let plan = prepare(routed, &mut req, &downstream, false, &id).expect("prepared");
            assert_eq!(plan.forwarding.is_none(), read_later, "{target}");
            assert_eq!(header(&req, "x-forwarded-for").is_some(), read_later, "{target}");
            assert_eq!(header(&req, "x-request-id").is_some(), read_later, "{target}");
        }
    }

    #[test]
    fn an_absolute_form_target_becomes_the_host_the_upstream_sees() {
        let p = prepared(&table(), request(Method::GET, "http://admin.example.com/x", &["example.com"]), false);
        assert_eq!(header(&p.req, "host"), Some("admin.example.com"));
        assert_eq!(header(&p.req, "x-forwarded-host"), Some("admin.example.com"));
        assert_eq!(p.path_and_query, "/x");
    }

    #[test]
    fn an_upgrade_is_marked_again_and_never_replayed() {
        let p = prepared(&table(), request(Method::GET, "/orders/ws", &[]), true);
        assert_eq!(header(&p.req, "connection"), Some("upgrade"));
        assert!(!p.replayable && !p.keeps_body);
    }

    #[test]
    fn only_a_request_that_may_be_resent_keeps_its_body() {
        let table = table();
        let orders = prepared(&table, request(Method::GET, "/orders/7", &[]), false);
        assert!(orders.fallback && orders.replayable && orders.keeps_body, "a fallback may resend a GET");
        let post = prepared(&table, request(Method::POST, "/orders", &[]), false);
        assert!(post.fallback && !post.replayable, "a POST is not resent after a failure");
        assert!(post.keeps_body, "but a 421 (not processed) sends it to the other side");
        let retried = prepared(&table, request(Method::GET, "/api/x", &[]), false);
        assert!(!retried.fallback && retried.keeps_body, "the upstream retries");
        let plain = prepared(&table, request(Method::GET, "/x", &[]), false);
        assert!(plain.replayable && !plain.keeps_body, "nothing would resend it");
    }

    #[test]
    fn a_started_mirror_that_is_skipped_is_recorded_with_its_reason() {
        let shared = shared();
        let started = mirror(&shared, request(Method::GET, "/mirrored/7", &[]), false).expect("mirrored");
        started.skip(reason::NOT_COMPARABLE);
        assert_eq!(dropped(&shared, "mirrored", reason::NOT_COMPARABLE), 1);
    }

    #[test]
    fn at_the_in_flight_cap_a_sampled_request_is_recorded_as_skipped() {
        let shared = shared();
        let first = mirror(&shared, request(Method::GET, "/mirrored/1", &[]), false).expect("under the cap of 1");
        assert!(mirror(&shared, request(Method::GET, "/mirrored/2", &[]), false).is_none());
        assert_eq!(dropped(&shared, "mirrored", reason::INFLIGHT_CAP), 1);
        first.skip(reason::NOT_COMPARABLE);
        assert!(mirror(&shared, request(Method::GET, "/mirrored/3", &[]), false).is_some(), "the slot is back");
    }

    #[test]
    fn upgrades_writes_mirrored_requests_and_a_shadow_picked_as_primary_are_not_mirrored() {
        let shared = shared();
        assert!(mirror(&shared, request(Method::GET, "/mirrored/ws", &[]), true).is_none(), "an upgrade");
        assert!(mirror(&shared, request(Method::POST, "/mirrored/7", &[]), false).is_none(), "a write");
        let mut again = request(Method::GET, "/mirrored/7", &[]);
        again.headers_mut().insert(&crate::shadow::X_STRANGLER_SHADOW, HeaderValue::from_static("1"));
        assert!(mirror(&shared, again, false).is_none(), "a mirrored request");
        assert!(
            mirror(&shared, request(Method::GET, "/cut-over/7", &[]), false).is_none(),
            "the split chose the shadow"
        );
        assert_eq!(dropped(&shared, "mirrored", reason::INFLIGHT_CAP), 0, "none was even sampled");
    }

    #[tokio::test]
    async fn a_small_body_of_known_length_is_kept_and_a_larger_one_streamed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let deadline = std::time::Duration::from_secs(1);
        let mut kept = RequestBody::buffer(&headers, ProxyBody::full("hello"), 5, deadline).await.unwrap();
        assert!(matches!(&kept, RequestBody::Buffered(b) if b == "hello"));
        assert!(kept.take().is_some() && kept.available(), "a kept body can be sent again");
        let mut streamed = RequestBody::buffer(&headers, ProxyBody::full("hello"), 4, deadline).await.unwrap();
        assert!(streamed.take().is_some() && !streamed.available(), "a streamed body goes once");
        let empty = RequestBody::buffer(&HeaderMap::new(), ProxyBody::empty(), 0, deadline).await.unwrap();
        assert!(matches!(empty, RequestBody::Buffered(b) if b.is_empty()));
    }

    #[tokio::test]
    async fn a_content_length_with_a_sign_is_not_a_length_to_buffer_by() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("+5"));
        let deadline = std::time::Duration::from_secs(1);
        let body = RequestBody::buffer(&headers, ProxyBody::full("hello"), 5, deadline).await.unwrap();
        assert!(matches!(body, RequestBody::Streamed(_)), "parsed by the one strict Content-Length parser");
    }
}
