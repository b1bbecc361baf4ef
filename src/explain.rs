//! Why a request takes the route it takes: the answer behind `/explain` and
//! `strangler explain`.

use http::Method;
use serde::Serialize;

use crate::path;
use crate::router::{host_without_port, RouteKey};
use crate::split::StickyKey;
use crate::table::{Backend, Table};

/// The decision for one request, and every route that could have applied.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub normalized_path: Option<String>,
    /// `null` when the request would be refused or match nothing.
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub targets: Vec<String>,
    pub upstream_path: Option<String>,
    /// For a split: each share, its weight and whether it can take traffic now.
    pub split: Vec<ShareReport>,
    pub sticky: Option<String>,
    pub fallback: Option<String>,
    /// Health and load of every upstream the route can use.
    pub upstreams: Vec<crate::upstream::UpstreamReport>,
    pub status: u16,
    pub reason: String,
    pub candidates: Vec<Candidate>,
}

/// One share of a split as it stands.
#[derive(Debug, Serialize)]
pub struct ShareReport {
    pub upstream: String,
    pub weight: u32,
    pub percent: f64,
    pub available: bool,
}

/// A route whose prefix covers the path, and whether it won.
#[derive(Debug, Serialize)]
pub struct Candidate {
    pub route: String,
    pub prefix: String,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
    pub verdict: String,
}

/// Explains how `table` routes `method path` with an optional `Host`.
pub fn explain(table: &Table, method: &str, path_and_query: &str, host: Option<&str>) -> Explanation {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut out = Explanation {
        method: method.to_string(),
        path: path_and_query.to_string(),
        host: host.map(str::to_string),
        normalized_path: None,
        route: None,
        upstream: None,
        targets: vec![],
        upstream_path: None,
        split: vec![],
        sticky: None,
        fallback: None,
        upstreams: vec![],
        status: 404,
        reason: String::new(),
        candidates: vec![],
    };
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        out.status = 400;
        out.reason = format!("{method:?} is not a valid method");
        return out;
    };
    let normalized = match path::normalize(path) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            out.status = 400;
            out.reason = format!("refused before matching: {e}");
            return out;
        }
    };
    let bare_host = host.map(host_without_port);
    let found = table.router.lookup(&normalized, bare_host, &method);
    out.candidates = candidates(table, &normalized, bare_host, &method, found.as_ref().map(|m| m.index));
    out.normalized_path = Some(normalized.clone());
    let Some(found) = found else {
        out.reason = "no route's prefix, host and methods all match".into();
        return out;
    };
    let route = found.value;
    let forwarded = if route.strip_prefix { &normalized[found.prefix_len..] } else { &normalized[..] };
    let forwarded = if forwarded.is_empty() { "/" } else { forwarded };
    out.status = 200;
    out.route = Some(route.name.to_string());
    let primary = &route.upstreams[0].upstream;
    match &route.backend {
        Backend::Single => {
            out.upstream = Some(primary.name.to_string());
            out.targets = primary.targets.iter().map(|t| t.url.to_string()).collect();
        }
        Backend::Split(split) => {
            out.split = split
                .shares
                .iter()
                .map(|share| {
                    let upstream = &route.upstreams[share.upstream].upstream;
                    ShareReport {
                        upstream: upstream.name.to_string(),
                        weight: share.weight,
                        percent: share.weight as f64 * 100.0 / split.total.max(1) as f64,
                        available: upstream.any_available(),
                    }
                })
                .collect();
            out.sticky = split.sticky.as_ref().map(|k| match k {
                StickyKey::Header(h) => format!("header {h}"),
                StickyKey::Cookie(c) => format!("cookie {c}"),
            });
        }
    }
    out.fallback = route.fallback.map(|i| route.upstreams[i].upstream.name.to_string());
    out.upstreams = route.upstreams.iter().map(|u| u.upstream.report()).collect();
    out.upstream_path = Some(match query {
        Some(q) => format!("{forwarded}?{q}"),
        None => forwarded.to_string(),
    });
    out.reason = describe_win(found.key);
    out
}

fn describe_win(key: &RouteKey) -> String {
    let depth = key.prefix.split('/').filter(|s| !s.is_empty()).count();
    let mut reason = format!("longest matching prefix {} ({depth} segments)", key.prefix);
    if key.host.is_some() {
        reason.push_str(", host matches");
    }
    if key.methods.is_some() {
        reason.push_str(", method allowed");
    }
    reason
}

fn candidates(table: &Table, path: &str, host: Option<&str>, method: &Method, winner: Option<usize>) -> Vec<Candidate> {
    let path_segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    table
        .router
        .entries()
        .iter()
        .enumerate()
        .filter_map(|(i, (key, route))| {
            let prefix: Vec<&str> = key.prefix.split('/').filter(|s| !s.is_empty()).collect();
            let covers = prefix.len() <= path_segments.len()
                && prefix.iter().zip(&path_segments).all(|(p, s)| *p == "*" || p == s);
            if !covers {
                return None;
            }
            let verdict = if Some(i) == winner {
                "chosen".to_string()
            } else if key.host.as_deref().is_some_and(|h| host.is_none_or(|got| !h.eq_ignore_ascii_case(got))) {
                "host does not match".to_string()
            } else if key.methods.as_ref().is_some_and(|m| !m.contains(method)) {
                format!("method {method} not allowed")
            } else {
                "a longer or more specific route won".to_string()
            };
            Some(Candidate {
                route: route.name.to_string(),
                prefix: key.prefix.clone(),
                host: key.host.clone(),
                methods: key.methods.as_ref().map(|m| m.iter().map(|m| m.to_string()).collect()),
                verdict,
            })
        })
        .collect()
}
