//! The request path through the proxy. [`handle`] serves one downstream
//! request; `forward` takes it through five stages, one file each, in the
//! order a request meets them:
//!
//! 1. `route.rs`, `route()`: normalize the path and pick the route on the
//!    host the upstream will read (400 for what cannot be routed, 404);
//!    the preview's sampler sees the outcome ([`crate::preview::Sampler`]).
//! 2. `admit.rs`, `admit()`: the route's rate limit (429).
//! 3. `prepare.rs`, `prepare()`: the path and headers the upstream gets,
//!    primary and fallback; then `start_mirror()` and `RequestBody::keep()`,
//!    which keeps the body whole when the request may be sent twice.
//! 4. `send.rs`, `send()`: attempts to the primary (retries within its
//!    budget, a concurrency slot each), then the fallback; each attempt
//!    within the upstream's timeout, on a timer `timeout.rs` reuses.
//! 5. `finish.rs`, `finish()`: the upstream's answer made the client's
//!    (headers, version, upgrade tunnel, the mirror's copy); then
//!    `Exchange::record()` counts the request, and the [`Exchange`] the
//!    server keeps until the answer's end writes the access-log line.
//!
//! Every stage edits the request or answer in place and streams bodies;
//! errors are [`ProxyError`]s, answered as JSON by [`handle`]. Mirroring
//! itself lives in [`crate::shadow`].

mod admit;
mod finish;
mod prepare;
mod route;
mod send;
#[cfg(test)]
mod testing;
mod timeout;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use http::header::{HeaderMap, HeaderValue};
use http::Request;

use crate::client::body::{Answer, ProxyBody};
use crate::error::ProxyError;
use crate::forwarded::TrustedProxies;
use crate::headers;
use crate::table::{Route, RouteUpstream, Table};
use crate::Shared;

use admit::admit;
use finish::{finish, AccessFields};
use prepare::{prepare, start_mirror, RequestBody};
use route::route;
use send::send;

pub use finish::{answer_headers, Exchange};
// The pure steps of routing, shared with `explain` so that it answers
// what the proxy does.
pub use prepare::upstream_path_and_query;
pub use route::{choose_route, downstream_host, matching_host, Routed};

/// What the proxy knows about the downstream connection (the client's
/// side), computed once per connection.
pub struct Downstream {
    /// The TCP peer: the client, or the load balancer in front of it.
    pub remote: SocketAddr,
    /// The peer's IP as a ready header value, appended to
    /// `X-Forwarded-For` (the peer, whoever the client is: the chain the
    /// upstream reads stays true hop by hop).
    pub ip: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

impl Downstream {
    /// Facts about a connection accepted from `remote` over `proto`.
    pub fn new(remote: SocketAddr, proto: &'static str) -> Self {
        let ip = HeaderValue::from_str(&remote.ip().to_string()).expect("an IP is a valid header value");
        Downstream { remote, ip, proto }
    }
}

/// The downstream client's address for one request: the TCP peer, or whom
/// the trusted proxies in front name in `X-Forwarded-For` (see
/// [`crate::forwarded`]). Per request, not per connection: behind a load
/// balancer one connection carries many clients' requests. Resolved at most
/// once, and only when something asks — the `client_ip` rate limit, the
/// access log, a mirror's record — so a request nothing asks about pays
/// nothing, and without `trusted_proxies` no header is read.
struct ClientIp<'a> {
    /// The connection the request came on.
    downstream: &'a Downstream,
    trusted: &'a TrustedProxies,
    resolved: Option<IpAddr>,
}

impl<'a> ClientIp<'a> {
    fn new(downstream: &'a Downstream, trusted: &'a TrustedProxies) -> Self {
        ClientIp { downstream, trusted, resolved: None }
    }

    /// The address, resolved from the request's headers the first time.
    /// The `X-Forwarded-For` the proxy appends the peer to resolves the same
    /// (the peer is either untrusted, and the answer, or a trusted hop).
    fn get(&mut self, headers: &HeaderMap) -> IpAddr {
        let (trusted, peer) = (self.trusted, self.downstream.remote.ip());
        *self.resolved.get_or_insert_with(|| trusted.client_ip(peer, headers))
    }
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a crate::metrics::InFlightGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one downstream request. Never fails: every error becomes a JSON
/// answer. The request's [`Exchange`] is put in `exchange` as soon as the
/// request is read, and the caller keeps it there until the answer's body
/// has gone out (it counts the bytes and writes the access-log line when
/// dropped; dropped before the answer, the client left: a 499).
///
/// The state and the connection's facts are borrowed from the caller,
/// which keeps them for the connection: the state's reference count, which
/// every worker shares, is not moved on each request. The exchange (~300
/// bytes) stays where the caller put it rather than being copied out with
/// the answer at each step back up.
///
/// The request comes boxed, as the server read it, and stays in its box
/// through the stages: handed on whole it would be copied (320 bytes) into
/// each stage's future. A plain function around an `async move` block
/// rather than an `async fn`, as are the stages' below: an `async fn` keeps
/// its own copy of each argument beside the caller's for its whole life.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn handle<'a>(
    shared: &'a Shared,
    downstream: &'a Downstream,
    mut req: Box<Request<ProxyBody>>,
    exchange: &'a mut Option<Exchange>,
) -> impl Future<Output = Answer> + Send + 'a {
    async move {
        let start = Instant::now();
        shared.metrics.in_flight.inc();
        let _in_flight = InFlight(&shared.metrics.in_flight);
        // Hop-by-hop headers go before anything is read or added.
        let upgrade = headers::is_upgrade_request(req.headers());
        headers::strip_hop_by_hop(req.headers_mut(), upgrade);
        let request_id = headers::request_id(req.headers());
        let exchange =
            exchange.insert(Exchange::new(shared.table.load_full(), request_id, req.method().clone(), start));
        let table = &exchange.table;
        let mut client = ClientIp::new(downstream, &table.trusted_proxies);
        exchange.access = AccessFields::sample(table, &req, &mut client);
        let forwarded = forward(shared, table, req, upgrade, &exchange.request_id, &mut client, &mut exchange.outcome);
        let response = match forwarded.await {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(request_id = ?exchange.request_id, error = %err, "request failed");
                Box::new(err.into_response(Some(&exchange.request_id)))
            }
        };
        exchange.record(response)
    }
}

/// How far a request got, as indices into the table it started on, for the
/// metrics and the access log; the stages fill it in as they get that far.
#[derive(Default, Clone, Copy)]
struct Outcome {
    /// Index into the router's entries of the request's route.
    route: Option<usize>,
    /// Index into `route.upstreams` of the upstream that answered (or was
    /// last tried); `None` when the request never got that far (a 429, say).
    upstream: Option<usize>,
    /// Index into `route.upstreams` of the upstream that answered 421 before
    /// the request went to the other side.
    misdirected_from: Option<usize>,
}

impl Outcome {
    fn route<'t>(&self, table: &'t Table) -> Option<&'t Route> {
        Some(&table.router.entries()[self.route?].1)
    }

    fn used<'t>(&self, table: &'t Table) -> Option<&'t RouteUpstream> {
        Some(&self.route(table)?.upstreams[self.upstream?])
    }
}

/// One request through the stages, each a function of its own.
#[allow(clippy::manual_async_fn)] // no second copy of `req`: see `handle`
fn forward<'a, 'c: 'a>(
    shared: &'a Shared,
    table: &'a Table,
    mut req: Box<Request<ProxyBody>>,
    upgrade: bool,
    request_id: &'a HeaderValue,
    client: &'a mut ClientIp<'c>,
    outcome: &'a mut Outcome,
) -> impl Future<Output = Result<Answer, ProxyError>> + use<'a, 'c> {
    async move {
        // A cheap clone (shared bytes): the normalized path may borrow from it
        // while the request's headers are edited.
        let uri = req.uri().clone();
        let routed = route(table, req.method(), &uri, req.headers(), outcome);
        shared.preview.observe(req.method(), &uri, req.headers(), routed.as_ref().map(|r| (&*r.path, r.route)));
        let routed = routed?;
        admit(routed.route, req.headers(), client)?;
        let plan = prepare(routed, &mut req, client.downstream, upgrade, request_id)?;
        outcome.upstream = Some(plan.primary);
        let mirror = start_mirror(&shared.shadow, &plan, &req, request_id, client, upgrade);
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
        let downstream_version = req.version();
        // The body goes its own way; the rest of the request stays in its box.
        let body = std::mem::replace(req.body_mut(), ProxyBody::empty());
        let (mut body, tap) = RequestBody::keep(&plan, req.headers(), body, mirror).await?;
        let response = send(&plan, &mut req, &mut body, outcome).await?;
        let upstream = outcome.used(table).map(|u| &u.upstream.name);
        finish(response, downstream_upgrade, downstream_version, request_id, tap, upstream)
    }
}
