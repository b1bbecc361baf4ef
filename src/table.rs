//! The validated, typed route table: what the hot path reads, through one
//! `ArcSwap`, for the whole life of a request.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::Method;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, RawConfig, RawRoute, Source};
use crate::metrics::{Metrics, RouteStats};
use crate::path;
use crate::router::{RouteKey, Router};
use crate::upstream::{ClientCache, Target, Upstream, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT};

/// One config version, ready to serve.
pub struct Table {
    pub router: Router<Route>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The config as written, for `/config`.
    pub raw: RawConfig,
    /// SHA-256 of the file's bytes, hex.
    pub hash: String,
    pub file: String,
    pub loaded_at: SystemTime,
}

/// What a matched request does.
pub struct Route {
    pub name: Arc<str>,
    pub upstream: Arc<Upstream>,
    pub strip_prefix: bool,
    pub stats: RouteStats,
}

/// What building a table needs besides the text: the metrics to register
/// handles in and the clients to reuse.
pub struct Context<'a> {
    pub metrics: &'a Metrics,
    pub clients: &'a ClientCache,
}

/// SHA-256 hex of a config's bytes.
pub fn content_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Table {
    /// Parses and validates `text` completely; nothing is shared until this succeeds.
    pub fn build(file: &str, text: &str, ctx: &Context<'_>) -> Result<Table, ConfigError> {
        let source = Source { file, text };
        let raw = source.parse()?;
        let listen = parse_addr(&source, "listen", &raw.listen)?;
        let admin = parse_addr(&source, "admin", &raw.admin)?;
        let upstreams = build_upstreams(&source, &raw, ctx)?;
        let routes = build_routes(&source, &raw, &upstreams, ctx)?;
        let router = Router::new(routes).map_err(|dup| {
            let (first, second) = (&raw.routes[dup.first].name, &raw.routes[dup.second].name);
            source.error_at(
                &[&format!("name: {second}")],
                format!("routes {first:?} and {second:?} match exactly the same requests (same prefix, host and methods)"),
            )
        })?;
        Ok(Table {
            router,
            upstreams,
            listen,
            admin,
            raw,
            hash: content_hash(text),
            file: file.to_string(),
            loaded_at: SystemTime::now(),
        })
    }
}

fn parse_addr(source: &Source<'_>, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        source.error_at(
            &[&format!("{key}:")],
            format!("{key}: {value:?} is not an address like \"0.0.0.0:8080\""),
        )
    })
}

fn build_upstreams(
    source: &Source<'_>,
    raw: &RawConfig,
    ctx: &Context<'_>,
) -> Result<BTreeMap<String, Arc<Upstream>>, ConfigError> {
    let mut upstreams = BTreeMap::new();
    for (name, up) in &raw.upstreams {
        let at = format!("{name}:");
        if up.targets.is_empty() {
            return Err(source.error_at(&["upstreams:", &at, "targets"], format!("upstream {name:?} has no targets")));
        }
        let targets = up
            .targets
            .iter()
            .map(|t| Target::parse(t).map_err(|e| source.error_at(&["upstreams:", &at, t], format!("upstream {name:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let connect_timeout = up.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let timeout = up.timeout.unwrap_or(DEFAULT_TIMEOUT);
        for (key, d) in [("connect_timeout", connect_timeout), ("timeout", timeout)] {
            if d.is_zero() {
                return Err(source.error_at(&["upstreams:", &at, key], format!("upstream {name:?}: {key} must be more than zero")));
            }
        }
        let upstream = Upstream::new(
            name,
            targets,
            connect_timeout,
            timeout,
            ctx.clients.get(connect_timeout),
            ctx.metrics.upstream_errors(name),
        );
        upstreams.insert(name.clone(), Arc::new(upstream));
    }
    Ok(upstreams)
}

fn build_routes(
    source: &Source<'_>,
    raw: &RawConfig,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    ctx: &Context<'_>,
) -> Result<Vec<(RouteKey, Route)>, ConfigError> {
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    for r in &raw.routes {
        let anchor = format!("name: {}", r.name);
        if r.name.is_empty() {
            return Err(source.error_at(&["routes:", "name"], "a route name must not be empty"));
        }
        if !names.insert(r.name.as_str()) {
            return Err(source.error_at(&[&anchor, &anchor], format!("duplicate route name {:?}", r.name)));
        }
        let key = route_key(r).map_err(|m| source.error_at(&[&anchor], format!("route {:?}: {m}", r.name)))?;
        let upstream = upstreams.get(&r.upstream).ok_or_else(|| {
            source.error_at(
                &[&anchor, "upstream", &r.upstream],
                format!("route {:?}: unknown upstream {:?} (known: {})", r.name, r.upstream, known(upstreams)),
            )
        })?;
        let route = Route {
            name: r.name.as_str().into(),
            upstream: upstream.clone(),
            strip_prefix: r.strip_prefix,
            stats: ctx.metrics.route_stats(&r.name, &r.upstream),
        };
        routes.push((key, route));
    }
    Ok(routes)
}

fn known(upstreams: &BTreeMap<String, Arc<Upstream>>) -> String {
    upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// The match key of a route, with its prefix normalized like request paths.
fn route_key(r: &RawRoute) -> Result<RouteKey, String> {
    if r.prefix.contains(['?', '#']) {
        return Err(format!("prefix {:?} must be a path without query or fragment", r.prefix));
    }
    let normalized = path::normalize(&r.prefix).map_err(|e| format!("prefix {:?}: {e}", r.prefix))?;
    let mut prefix = normalized.trim_end_matches('/').to_string();
    if prefix.is_empty() {
        prefix.push('/');
    }
    if prefix.split('/').any(|s| s.contains('*') && s != "*") {
        return Err(format!("prefix {:?}: '*' must be a whole segment", r.prefix));
    }
    let host = match &r.host {
        Some(h) if h.is_empty() || h.contains(['/', ' ', ':']) => {
            return Err(format!("host {h:?} must be a bare host name (no port, scheme or path)"))
        }
        Some(h) => Some(h.to_ascii_lowercase()),
        None => None,
    };
    let methods = match &r.methods {
        Some(list) if list.is_empty() => return Err("methods must not be empty (leave it out for all methods)".into()),
        Some(list) => Some(
            list.iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| format!("invalid method {m:?}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    Ok(RouteKey { prefix, host, methods })
}
