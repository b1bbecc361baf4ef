//! Stage 1, route: which route takes a request, chosen on its normalized
//! path and on the host the upstream will read.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Uri};

use super::Outcome;
use crate::error::ProxyError;
use crate::path;
use crate::router::host_bytes_for_matching;
use crate::table::{Route, Table};

/// A request's route, and what the later stages need from matching it.
pub struct Routed<'t, 'u> {
    pub route: &'t Route,
    /// The route's index among the router's entries.
    pub index: usize,
    /// The normalized path (borrowed from the request's URI when
    /// normalizing changed nothing).
    pub path: Cow<'u, str>,
    /// Bytes of `path` covered by the route's prefix (for `strip_prefix`).
    pub prefix_len: usize,
    /// The host the client addressed, as the upstream will be told it.
    pub host: Option<HeaderValue>,
}

/// Picks the route for a request, recording it in `outcome`. `uri` is the request's own, cloned by the caller so the path
/// can be borrowed while the headers are edited.
pub(super) fn route<'t, 'u>(
    table: &'t Table,
    method: &Method,
    uri: &'u Uri,
    headers: &HeaderMap,
    outcome: &mut Outcome,
) -> Result<Routed<'t, 'u>, ProxyError> {
    let routed = choose_route(table, method, uri, headers, |_| {})?;
    outcome.route = Some(routed.index);
    Ok(routed)
}

/// The route a request takes, or why it has none: the one decision the
/// proxy and `explain` share. Refuses CONNECT, a path that does not
/// normalize and a bad or doubled Host (400); no matching route is a 404.
/// `on_path` sees the normalized path as soon as it is known (`explain`
/// shows it for a request refused after that).
pub fn choose_route<'t, 'u>(
    table: &'t Table,
    method: &Method,
    uri: &'u Uri,
    headers: &HeaderMap,
    on_path: impl FnOnce(&str),
) -> Result<Routed<'t, 'u>, ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    let path = path::normalize(uri.path()).map_err(ProxyError::BadPath)?;
    on_path(&path);
    let host = downstream_host(uri, headers)?;
    // The route is chosen on the same host the upstream will read.
    let matching_host = match &host {
        Some(v) => Some(matching_host(v)?),
        None => None,
    };
    let found = table
        .router
        .lookup(&path, matching_host, method)
        .ok_or_else(|| ProxyError::NoRoute { method: method.to_string(), path: path.to_string() })?;
    Ok(Routed { route: found.value, index: found.index, prefix_len: found.prefix_len, path, host })
}

/// The host routes match on: without its port or trailing dot (the router
/// compares it case-insensitively); a 400 for a host no route could name.
pub fn matching_host(host: &HeaderValue) -> Result<&str, ProxyError> {
    host_bytes_for_matching(host.as_bytes()).ok_or(ProxyError::BadRequest("invalid Host"))
}

/// The host the client addressed: the authority of an absolute-form or
/// HTTP/2 request wins over `Host` (RFC 9112 §3.2.2), and is what the
/// upstream is then told.
pub fn downstream_host(uri: &Uri, headers: &HeaderMap) -> Result<Option<HeaderValue>, ProxyError> {
    if let Some(authority) = uri.authority() {
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| ProxyError::BadRequest("invalid authority"));
    }
    let mut hosts = crate::headers::values(headers, &header::HOST);
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};

    use super::super::testing::{request, table};
    use super::super::Outcome;
    use super::*;

    fn route_of(method: Method, target: &str, hosts: &[&str]) -> Result<(String, String, usize), ProxyError> {
        let table = table();
        let req = request(method, target, hosts);
        let mut outcome = Outcome::default();
        let routed = route(&table, req.method(), req.uri(), req.headers(), &mut outcome)?;
        assert!(std::ptr::eq(outcome.route(&table).unwrap(), routed.route), "the outcome names the route");
        Ok((routed.route.name.to_string(), routed.path.into_owned(), routed.prefix_len))
    }

    fn status_of(method: Method, target: &str, hosts: &[&str]) -> StatusCode {
        route_of(method, target, hosts).expect_err("refused").status()
    }

    #[test]
    fn the_longest_prefix_takes_the_normalized_path() {
        let (name, path, prefix_len) = route_of(Method::GET, "/api/./v1//users?x=1", &["example.com"]).unwrap();
        assert_eq!((name.as_str(), path.as_str(), prefix_len), ("api", "/api/v1/users", 4));
        assert_eq!(route_of(Method::GET, "/other", &[]).unwrap().0, "all");
    }

    #[test]
    fn routes_match_on_the_host_without_its_port() {
        assert_eq!(route_of(Method::GET, "/", &["Admin.Example.com.:8080"]).unwrap().0, "admin");
        assert_eq!(route_of(Method::GET, "/", &["example.com"]).unwrap().0, "all");
    }

    #[test]
    fn an_absolute_form_authority_wins_over_the_host_header() {
        assert_eq!(route_of(Method::GET, "http://admin.example.com/", &["example.com"]).unwrap().0, "admin");
    }

    #[test]
    fn connect_bad_paths_and_bad_hosts_are_400s() {
        assert_eq!(status_of(Method::CONNECT, "/", &[]), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(Method::GET, "/a%2Fb", &[]), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(Method::GET, "/", &["user@example.com"]), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(Method::GET, "/", &["a.example.com", "b.example.com"]), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_request_no_route_takes_is_a_404_naming_its_path() {
        let err = route_of(Method::DELETE, "/only-get/../only-get/x", &[]).expect_err("no route");
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        assert_eq!(err.to_string(), "no route matches DELETE /only-get/x");
    }
}
