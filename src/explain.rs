//! Why a request takes the route it takes: the answer behind `/explain` and
//! `strangler explain`. The decision itself is the proxy's own code
//! ([`crate::proxy::choose_route`], [`crate::proxy::upstream_path_and_query`],
//! [`crate::split::Split::choose`] and [`Route::member_for_share`]), so
//! explain refuses what the proxy refuses, with the same status and error.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use serde::Serialize;

use crate::error::ProxyError;
use crate::proxy::{choose_route, downstream_host, matching_host, upstream_path_and_query};
use crate::router::RouteKey;
use crate::split::StickyKey;
use crate::table::Table;

/// A request to explain, as the admin API and the CLI take it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Question<'a> {
    pub method: &'a str,
    /// The request target: a path with an optional query (or absolute-form).
    pub target: &'a str,
    /// The request's `Host`.
    pub host: Option<&'a str>,
    /// More request headers, each `Name: Value` (a `Cookie`, the sticky header).
    pub headers: &'a [String],
    /// A sticky key, put where the route's `sticky` reads it (its header or
    /// cookie), to see which member of a split it lands on.
    pub user: Option<&'a str>,
}

/// Whether the targets' health was ever observed: the admin API knows it,
/// the offline CLI does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Live,
    Unchecked,
}

/// The decision for one request, and every route that could have applied.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub normalized_path: Option<String>,
    /// `null` when the request would be refused or match nothing.
    pub route: Option<String>,
    /// The upstream asked first: the route's, or for a split the member a
    /// sticky key lands on (`null` for a split chosen at random).
    pub upstream: Option<String>,
    pub targets: Vec<String>,
    pub upstream_path: Option<String>,
    /// For a split: each share, its weight and whether it can take traffic now.
    pub split: Vec<ShareReport>,
    pub sticky: Option<String>,
    /// Where the given sticky key lands on a split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_key: Option<StickyLanding>,
    pub fallback: Option<String>,
    /// `live`, or `unknown` when no target was ever checked (the offline
    /// CLI): health and availability are then left out, not guessed.
    pub health: &'static str,
    /// Health and load of every upstream the route can use (live only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<crate::upstream::UpstreamReport>>,
    /// The status the proxy answers itself (400, 404), else 200 for a
    /// request it forwards.
    pub status: u16,
    pub reason: String,
    /// The JSON error the client would get, as the proxy words it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
    /// Remarks on the question itself (a `user` the route does not read).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub candidates: Vec<Candidate>,
}

/// The error body the proxy would answer (see [`crate::error`]).
#[derive(Debug, Serialize)]
pub struct ErrorReport {
    pub error: &'static str,
    pub message: String,
    pub status: u16,
    pub fault: &'static str,
}

/// One share of a split as it stands.
#[derive(Debug, Serialize)]
pub struct ShareReport {
    pub upstream: String,
    pub weight: u32,
    pub percent: f64,
    /// Whether it can take traffic now (left out when health is unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,
    pub targets: Vec<String>,
}

/// Where a sticky key lands on a split.
#[derive(Debug, Serialize)]
pub struct StickyLanding {
    pub key: String,
    /// The member the key's hash picks (weighted rendezvous hashing).
    pub hashed_to: String,
    /// The member that takes it now: `hashed_to`, unless that one is down
    /// and another can serve.
    pub upstream: String,
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

impl Explanation {
    /// The request is refused by the proxy itself.
    fn refused(mut self, error: ProxyError) -> Explanation {
        self.status = error.status().as_u16();
        self.reason = match &error {
            ProxyError::NoRoute { .. } => "no route's prefix, host and methods all match".into(),
            ProxyError::BadPath(_) => format!("refused before matching: {error}"),
            _ => error.to_string(),
        };
        self.error = Some(ErrorReport {
            error: error.code(),
            message: error.to_string(),
            status: self.status,
            fault: error.fault(),
        });
        self
    }
}

/// Explains how `table` routes the request `question` describes.
pub fn explain(table: &Table, question: &Question<'_>, health: Health) -> Explanation {
    let mut out = Explanation {
        method: question.method.to_string(),
        path: question.target.to_string(),
        host: question.host.map(str::to_string),
        normalized_path: None,
        route: None,
        upstream: None,
        targets: vec![],
        upstream_path: None,
        split: vec![],
        sticky: None,
        sticky_key: None,
        fallback: None,
        health: match health {
            Health::Live => "live",
            Health::Unchecked => "unknown",
        },
        upstreams: None,
        status: 400,
        reason: String::new(),
        error: None,
        notes: vec![],
        candidates: vec![],
    };
    let Ok(method) = Method::from_bytes(question.method.to_ascii_uppercase().as_bytes()) else {
        out.reason = format!("{:?} is not a valid method", question.method);
        return out;
    };
    let Ok(uri) = question.target.parse::<Uri>() else {
        return out.refused(ProxyError::BadRequest("invalid request target"));
    };
    let mut headers = HeaderMap::new();
    if let Some(host) = question.host {
        match HeaderValue::from_str(host) {
            Ok(v) => headers.append(header::HOST, v),
            Err(_) => return out.refused(ProxyError::BadRequest("invalid Host")),
        };
    }
    for line in question.headers {
        let Some((name, value)) = parse_header(line) else {
            out.reason = format!("{line:?} is not a header like \"X-User-Id: 42\"");
            return out;
        };
        headers.append(name, value);
    }
    let mut normalized = None;
    let chosen = choose_route(table, &method, &uri, &headers, |path| normalized = Some(path.to_string()));
    out.normalized_path = normalized;
    // The host routes matched on, for the list of candidates.
    let host = downstream_host(&uri, &headers).ok().flatten();
    let host = host.as_ref().and_then(|h| matching_host(h).ok());
    let routed = match chosen {
        Ok(routed) => routed,
        Err(e) => {
            if let (ProxyError::NoRoute { .. }, Some(path)) = (&e, &out.normalized_path) {
                out.candidates = candidates(table, path, host, &method, None);
            }
            return out.refused(e);
        }
    };
    let route = routed.route;
    let entries = table.router.entries();
    let index = entries.iter().position(|(_, r)| std::ptr::eq(r, route)).unwrap_or_default();
    out.candidates = candidates(table, &routed.path, host, &method, Some(index));
    match upstream_path_and_query(route, &routed.path, routed.prefix_len, &uri) {
        Ok(pq) => out.upstream_path = Some(pq.as_str().to_string()),
        Err(e) => return out.refused(e),
    }
    out.status = 200;
    out.route = Some(route.name.to_string());
    let primary = &route.upstreams[0].upstream;
    match route.backend.split() {
        None => {
            out.upstream = Some(primary.name.to_string());
            out.targets = primary.targets.iter().map(|t| t.url.to_string()).collect();
            if question.user.is_some() {
                out.notes.push("`user` ignored: the route is no split".into());
            }
        }
        Some(split) => {
            out.split = split
                .shares
                .iter()
                .map(|share| {
                    let upstream = &route.upstreams[share.upstream].upstream;
                    ShareReport {
                        upstream: upstream.name.to_string(),
                        weight: share.weight,
                        percent: share.weight as f64 * 100.0 / split.total.max(1) as f64,
                        available: (health == Health::Live).then(|| upstream.any_available()),
                        targets: upstream.targets.iter().map(|t| t.url.to_string()).collect(),
                    }
                })
                .collect();
            out.sticky = split.sticky.as_ref().map(|k| match k {
                StickyKey::Header(h) => format!("header {h}"),
                StickyKey::Cookie(c) => format!("cookie {c}"),
            });
            if let Some(user) = question.user {
                match (&split.sticky, HeaderValue::from_str(user)) {
                    (Some(StickyKey::Header(name)), Ok(value)) => {
                        headers.insert(name.clone(), value);
                    }
                    (Some(StickyKey::Cookie(name)), Ok(_)) => match HeaderValue::from_str(&format!("{name}={user}")) {
                        Ok(cookie) => {
                            headers.append(header::COOKIE, cookie);
                        }
                        Err(_) => out.notes.push(format!("`user` {user:?} cannot be a cookie value")),
                    },
                    (None, _) => out.notes.push("`user` ignored: the split has no sticky key".into()),
                    (_, Err(_)) => out.notes.push(format!("`user` {user:?} cannot be a header value")),
                }
            }
            if let Some(key) = split.sticky.as_ref().and_then(|k| k.extract(&headers)) {
                let key = String::from_utf8_lossy(key).into_owned();
                let share = split.choose(&headers);
                let hashed_to = &route.upstreams[split.shares[share].upstream].upstream;
                let member = &route.upstreams[route.member_for_share(split, share)].upstream;
                out.upstream = Some(member.name.to_string());
                out.targets = member.targets.iter().map(|t| t.url.to_string()).collect();
                out.sticky_key = Some(StickyLanding {
                    key,
                    hashed_to: hashed_to.name.to_string(),
                    upstream: member.name.to_string(),
                });
                if health == Health::Unchecked {
                    out.notes.push(format!(
                        "health unknown: a live proxy sends this key to {} unless it is down",
                        hashed_to.name
                    ));
                }
            }
        }
    }
    out.fallback = route.fallback.map(|i| route.upstreams[i].upstream.name.to_string());
    if health == Health::Live {
        out.upstreams = Some(route.upstreams.iter().map(|u| u.upstream.report()).collect());
    }
    out.reason = describe_win(&entries[index].0);
    out
}

/// `Name: Value` (or `Name:Value`) as a request header.
fn parse_header(line: &str) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = line.split_once(':')?;
    Some((HeaderName::from_bytes(name.trim().as_bytes()).ok()?, HeaderValue::from_str(value.trim()).ok()?))
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
