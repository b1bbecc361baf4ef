//! The validated, typed route table: what the hot path reads, through one
//! `ArcSwap`, for the whole life of a request.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::HeaderName;
use http::Method;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, RawConfig, RawRoute, Source};
use crate::metrics::{Metrics, RouteStats};
use crate::path;
use crate::ratelimit::{RateKey, RateLimiter};
use crate::router::{RouteKey, Router};
use crate::shadow::{self, ShadowRoute};
use crate::split::{Split, StickyKey};
use crate::upstream::{
    Target, TargetState, Upstream, UpstreamCache, UpstreamSettings, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT,
};

/// Default `retry_buffer`: request bodies up to this size are kept for a replay.
pub const DEFAULT_RETRY_BUFFER: u64 = 64 * 1024;

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
    /// Response header naming the upstream that answered, if switched on.
    pub upstream_header: Option<HeaderName>,
}

/// What a matched request does.
pub struct Route {
    pub name: Arc<str>,
    /// Every upstream this route can send to: the primary (or the split's
    /// members, in order), then the fallback if it is not one of them.
    pub upstreams: Vec<RouteUpstream>,
    pub backend: Backend,
    /// Index into `upstreams`.
    pub fallback: Option<usize>,
    /// Methods beyond the idempotent ones that may fall back or retry.
    pub fallback_methods: Vec<Method>,
    pub retry_buffer: u64,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub strip_prefix: bool,
    pub fallbacks: IntCounter,
    pub rate_limited: IntCounter,
    /// Mirroring to a candidate upstream for comparison.
    pub shadow: Option<Arc<ShadowRoute>>,
}

/// One upstream as a route uses it, with the route's metric handles for it.
pub struct RouteUpstream {
    pub upstream: Arc<Upstream>,
    pub stats: RouteStats,
    pub split_decisions: IntCounter,
}

/// How a route picks its primary upstream.
pub enum Backend {
    /// Always `upstreams[0]`.
    Single,
    Split(Split),
}

impl Route {
    /// Index (into `upstreams`) of the primary upstream for this request.
    pub fn choose(&self, headers: &http::HeaderMap) -> usize {
        let Backend::Split(split) = &self.backend else { return 0 };
        let share = split.choose(headers);
        let mut chosen = split.shares[share].upstream;
        if !self.upstreams[chosen].upstream.any_available() {
            // Keep users off a member that is down when another can serve.
            if let Some(other) = split
                .shares
                .iter()
                .filter(|s| s.weight > 0)
                .find(|s| self.upstreams[s.upstream].upstream.any_available())
            {
                chosen = other.upstream;
            }
        }
        self.upstreams[chosen].split_decisions.inc();
        chosen
    }

    /// Idempotent methods may be replayed; others only where the route says so.
    pub fn may_replay(&self, method: &Method) -> bool {
        matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
            || self.fallback_methods.contains(method)
    }
}

/// What building a table needs besides the text: the metrics to register
/// handles in and the clients and target states to reuse.
pub struct Context<'a> {
    pub metrics: &'a Metrics,
    pub cache: &'a UpstreamCache,
}

/// SHA-256 hex of a config's bytes.
pub fn content_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Table {
    /// Whether this version needs the shadow-diff log: a route shadows, or
    /// the top-level `shadow:` section is set.
    pub fn wants_shadow_log(&self) -> bool {
        self.raw.shadow.is_some() || self.router.entries().iter().any(|(_, r)| r.shadow.is_some())
    }

    /// Parses and validates `text` completely; nothing is shared until this succeeds.
    pub fn build(file: &str, text: &str, ctx: &Context<'_>) -> Result<Table, ConfigError> {
        let source = Source { file, text };
        let raw = source.parse()?;
        let listen = parse_addr(&source, "listen", &raw.listen)?;
        let admin = parse_addr(&source, "admin", &raw.admin)?;
        let upstream_header = match raw.upstream_header.as_str() {
            "" => None,
            name => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                source.error_at(&["upstream_header"], format!("upstream_header: {name:?} is not a valid header name"))
            })?),
        };
        let upstreams = build_upstreams(&source, &raw, ctx)?;
        let routes = build_routes(&source, &raw, &upstreams, ctx)?;
        let router = Router::new(routes).map_err(|dup| {
            let (first, second) = (&raw.routes[dup.first].name, &raw.routes[dup.second].name);
            source.error_at(
                &[&format!("name: {second}")],
                format!(
                    "routes {first:?} and {second:?} match exactly the same requests (same prefix, host and methods)"
                ),
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
            upstream_header,
        })
    }
}

fn parse_addr(source: &Source<'_>, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        source.error_at(&[&format!("{key}:")], format!("{key}: {value:?} is not an address like \"0.0.0.0:8080\""))
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
        let connect_timeout = up.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let targets = up
            .targets
            .iter()
            .map(|url| {
                let (scheme, authority) = Target::parse(url)
                    .map_err(|e| source.error_at(&["upstreams:", &at, url], format!("upstream {name:?}: {e}")))?;
                let state =
                    ctx.cache.target_state(name, url, || TargetState::new(ctx.metrics.target_healthy(name, url)));
                let pool = ctx.cache.pool(connect_timeout, up.tls.as_ref(), url);
                let address = Target::address(&scheme, &authority);
                Ok(Target { url: url.as_str().into(), scheme, authority, address, pool, state })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let timeout = up.timeout.unwrap_or(DEFAULT_TIMEOUT);
        for (key, d) in [("connect_timeout", connect_timeout), ("timeout", timeout)] {
            if d.is_zero() {
                return Err(source
                    .error_at(&["upstreams:", &at, key], format!("upstream {name:?}: {key} must be more than zero")));
            }
        }
        if up.max_concurrent == Some(0) {
            return Err(source.error_at(
                &["upstreams:", &at, "max_concurrent"],
                format!("upstream {name:?}: max_concurrent must be at least 1"),
            ));
        }
        if let Some(h) = &up.health_check {
            if !h.path.starts_with('/')
                || h.interval.is_zero()
                || h.timeout.is_zero()
                || h.unhealthy_after == 0
                || h.healthy_after == 0
            {
                return Err(source.error_at(
                    &["upstreams:", &at, "health_check"],
                    format!("upstream {name:?}: health_check needs a path starting with '/', non-zero interval and timeout, and thresholds of at least 1"),
                ));
            }
        }
        let outlier = up.outlier.clone().unwrap_or_default();
        if outlier.consecutive_failures == 0 {
            return Err(source.error_at(
                &["upstreams:", &at, "consecutive_failures"],
                format!("upstream {name:?}: consecutive_failures must be at least 1"),
            ));
        }
        let settings = UpstreamSettings {
            connect_timeout,
            timeout,
            retries: up.retries,
            load_balancing: up.load_balancing,
            max_concurrent: up.max_concurrent,
            health_check: up.health_check.clone(),
            outlier,
        };
        let client = ctx
            .cache
            .connector(connect_timeout, up.tls.as_ref())
            .map_err(|e| source.error_at(&["upstreams:", &at, "tls"], format!("upstream {name:?}: {e}")))?;
        let upstream = Upstream::new(name, targets, settings, client, ctx.metrics.upstream_counters(name));
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
        let fail = |m: String| source.error_at(&[&anchor], format!("route {:?}: {m}", r.name));
        let key = route_key(r).map_err(fail)?;
        let route = build_route(r, upstreams, ctx)
            .map_err(|(value, m)| source.error_at(&[&anchor, &value], format!("route {:?}: {m}", r.name)))?;
        routes.push((key, route));
    }
    Ok(routes)
}

/// Builds one route's behaviour; errors carry the offending value (to locate it) and a message.
fn build_route(
    r: &RawRoute,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    ctx: &Context<'_>,
) -> Result<Route, (String, String)> {
    let lookup = |name: &str| {
        upstreams
            .get(name)
            .cloned()
            .ok_or_else(|| (name.to_string(), format!("unknown upstream {name:?} (known: {})", known(upstreams))))
    };
    let route_upstream = |upstream: Arc<Upstream>| RouteUpstream {
        stats: ctx.metrics.route_stats(&r.name, &upstream.name),
        split_decisions: ctx.metrics.split_decisions(&r.name, &upstream.name),
        upstream,
    };
    let mut members = Vec::new();
    let backend = match (&r.upstream, &r.split) {
        (Some(name), None) => {
            members.push(route_upstream(lookup(name)?));
            if r.sticky.is_some() {
                return Err(("sticky".into(), "sticky needs a split".into()));
            }
            Backend::Single
        }
        (None, Some(split)) => {
            if split.is_empty() {
                return Err(("split".into(), "split must list at least one upstream".into()));
            }
            let mut shares = Vec::new();
            for (i, share) in split.iter().enumerate() {
                if split[..i].iter().any(|s| s.upstream == share.upstream) {
                    return Err((
                        share.upstream.clone(),
                        format!("upstream {:?} appears twice in the split", share.upstream),
                    ));
                }
                members.push(route_upstream(lookup(&share.upstream)?));
                shares.push((i, share.weight, share.upstream.as_str()));
            }
            if split.iter().all(|s| s.weight == 0) {
                return Err(("weight".into(), "split weights must not all be 0".into()));
            }
            let sticky = match &r.sticky {
                None => None,
                Some(s) => Some(match (&s.header, &s.cookie) {
                    (Some(h), None) => StickyKey::Header(
                        HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| (h.clone(), format!("invalid header name {h:?}")))?,
                    ),
                    (None, Some(c)) if !c.is_empty() => StickyKey::Cookie(c.as_str().into()),
                    _ => return Err(("sticky".into(), "sticky takes exactly one of header or cookie".into())),
                }),
            };
            Backend::Split(Split::new(shares, sticky))
        }
        (Some(_), Some(_)) => return Err(("split".into(), "give either upstream or split, not both".into())),
        (None, None) => return Err(("name".into(), "needs an upstream or a split".into())),
    };
    let fallback = match &r.fallback {
        None => None,
        Some(name) => {
            let upstream = lookup(name)?;
            match members.iter().position(|m| Arc::ptr_eq(&m.upstream, &upstream)) {
                Some(i) => Some(i),
                None => {
                    members.push(route_upstream(upstream));
                    Some(members.len() - 1)
                }
            }
        }
    };
    let fallback_methods =
        parse_methods(r.fallback_methods.as_deref().unwrap_or(&[])).map_err(|m| ("fallback_methods".to_string(), m))?;
    let rate_limit = match &r.rate_limit {
        None => None,
        Some(rl) => {
            if !(rl.rps > 0.0 && rl.rps.is_finite()) {
                return Err(("rps".into(), format!("rate_limit.rps must be more than 0, not {}", rl.rps)));
            }
            let burst = rl.burst.unwrap_or(rl.rps).max(1.0);
            let key = match rl.key.as_str() {
                "client_ip" => RateKey::ClientIp,
                other => match other.strip_prefix("header:").map(|h| HeaderName::from_bytes(h.as_bytes())) {
                    Some(Ok(name)) => RateKey::Header(name),
                    _ => {
                        return Err((
                            other.to_string(),
                            format!("rate_limit.key {other:?} must be client_ip or header:NAME"),
                        ))
                    }
                },
            };
            // Same route, same settings: keep the buckets across reloads, so an
            // edit of routes.yaml never hands every client a fresh burst.
            let identity = format!("{}|{}|{}|{}", r.name, rl.rps, burst, rl.key);
            Some(ctx.cache.rate_limiter(identity, || RateLimiter::new(rl.rps, burst, key)))
        }
    };
    let shadow = match &r.shadow {
        None => None,
        Some(raw) => Some(build_shadow(raw, &lookup)?),
    };
    Ok(Route {
        shadow,
        name: r.name.as_str().into(),
        upstreams: members,
        backend,
        fallback,
        fallback_methods,
        retry_buffer: r.retry_buffer.map_or(DEFAULT_RETRY_BUFFER, |b| b.0),
        rate_limit,
        strip_prefix: r.strip_prefix,
        fallbacks: ctx.metrics.fallbacks(&r.name),
        rate_limited: ctx.metrics.rate_limited(&r.name),
    })
}

type Lookup<'a> = dyn Fn(&str) -> Result<Arc<Upstream>, (String, String)> + 'a;

fn build_shadow(raw: &crate::config::RawShadow, lookup: &Lookup<'_>) -> Result<Arc<ShadowRoute>, (String, String)> {
    let plan = shadow::validate(raw);
    // Unknown upstreams are reported before the rest of the block.
    let upstream = lookup(&raw.upstream)?;
    let noise = raw.noise.as_deref().map(lookup).transpose()?;
    Ok(Arc::new(ShadowRoute::instantiate(plan?, upstream, noise)))
}

fn parse_methods(list: &[String]) -> Result<Vec<Method>, String> {
    list.iter()
        .map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| format!("invalid method {m:?}")))
        .collect()
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
        Some(list) => Some(parse_methods(list)?),
        None => None,
    };
    Ok(RouteKey { prefix, host, methods })
}
