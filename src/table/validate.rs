//! Step two of a config load: every check of `routes.yaml` that needs only
//! the text. Pure — no I/O, no metrics, no shared state — so a rejected
//! version leaves no trace anywhere, and the fuzzer can run it by the
//! million. What it returns, a [`Plan`], names upstreams by name; only
//! [`super::instantiate`] turns names into live objects.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::Method;

use crate::access_log;
use crate::client::pool::DEFAULT_IDLE_TIMEOUT;
use crate::client::target::Target;
use crate::config::{parse_methods, ConfigError, RawConfig, RawRoute, RawUpstream, RawUpstreamTls, Source};
use crate::forwarded::TrustedProxies;
use crate::path;
use crate::ratelimit::RateKey;
use crate::rollout::plan::RolloutPlan;
use crate::router::{RouteKey, Router};
use crate::shadow::ShadowPlan;
use crate::split::{Split, StickyKey};
use crate::upstream::{UpstreamSettings, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT};

/// Default `retry_buffer`: request bodies up to this size are kept for a replay.
pub const DEFAULT_RETRY_BUFFER: u64 = 64 * 1024;

/// A config that passed every check, with nothing instantiated yet.
pub struct Plan {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub upstream_header: Option<HeaderName>,
    /// Whose `X-Forwarded-For` is believed for the client's address.
    pub trusted_proxies: TrustedProxies,
    pub upstreams: BTreeMap<String, UpstreamPlan>,
    pub routes: Vec<RoutePlan>,
    /// The config as written, for `/config`.
    pub raw: RawConfig,
    /// SHA-256 of the file's bytes, hex.
    pub hash: String,
    pub file: String,
    /// The file's text, to locate errors found while instantiating (TLS files).
    pub text: String,
    /// `None`: `access_log: off`.
    pub access_log: Option<access_log::Settings>,
}

/// One upstream, checked.
pub struct UpstreamPlan {
    /// Each target, in the order written.
    pub targets: Vec<TargetPlan>,
    pub settings: UpstreamSettings,
    pub tls: Option<RawUpstreamTls>,
}

/// One target URL, parsed.
pub struct TargetPlan {
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
}

/// One route, checked; upstreams by name.
pub struct RoutePlan {
    pub key: RouteKey,
    pub name: String,
    /// The primary (or the split's members, in order), then the fallback if
    /// it is not one of them.
    pub members: Vec<String>,
    /// `None`: always `members[0]`.
    pub split: Option<Split>,
    /// Index into `members`.
    pub fallback: Option<usize>,
    pub fallback_methods: Vec<Method>,
    pub retry_buffer: u64,
    pub rate_limit: Option<RateLimitPlan>,
    pub strip_prefix: bool,
    pub shadow: Option<ShadowPlan>,
    /// The autopilot: `split` is then `None` and instantiating builds it
    /// from the rollout's progress, with this sticky key.
    pub rollout: Option<RolloutPlan>,
    pub sticky: Option<StickyKey>,
}

/// A route's token bucket settings.
pub struct RateLimitPlan {
    /// Route and settings: a limiter with the same identity keeps its buckets across reloads.
    pub identity: String,
    pub rps: f64,
    pub burst: f64,
    pub key: RateKey,
}

/// SHA-256 hex of a config's bytes.
pub fn content_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of the field that names the upstream in each answer: a valid
/// one, and not one the proxy or the connection owns (framing, hop-by-hop,
/// `Date`, `X-Request-Id`): the server writes it beside those, and two
/// `Content-Length` fields, say, would be a framing hazard.
fn upstream_header(name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("upstream_header: {name:?} is not a valid header name"))?;
    if crate::wire::Kind::of_name(&parsed) != crate::wire::Kind::Other || parsed == crate::headers::X_REQUEST_ID {
        return Err(format!(
            "upstream_header: {name:?} is a field the proxy or the connection sets; choose another name \
             (the default is \"x-strangler-upstream\")"
        ));
    }
    Ok(parsed)
}

/// Parses and checks `text` completely (`file` names it in errors).
pub fn validate(file: &str, text: &str) -> Result<Plan, ConfigError> {
    let source = Source { file, text };
    let raw = source.parse()?;
    let listen = parse_addr(&source, "listen", &raw.listen)?;
    let admin = parse_addr(&source, "admin", &raw.admin)?;
    let upstream_header = match raw.upstream_header.as_str() {
        "" => None,
        name => Some(upstream_header(name).map_err(|why| source.error_at(&["upstream_header"], why))?),
    };
    let trusted_proxies = TrustedProxies::parse(&raw.trusted_proxies)
        .map_err(|(value, message)| source.error_at(&["trusted_proxies", &value], message))?;
    let access_log = access_log::plan(raw.access_log.as_ref())
        .map_err(|invalid| source.error_at(&["access_log", invalid.key], invalid.message))?;
    if let Some(shadow) = &raw.shadow {
        crate::shadow::validate_store(shadow).map_err(|(key, message)| source.error_at(&["shadow:", key], message))?;
    }
    if let Some(autopilot) = &raw.autopilot {
        crate::rollout::state::validate_settings(autopilot)
            .map_err(|(key, message)| source.error_at(&["autopilot:", key], message))?;
    }
    let upstreams = raw
        .upstreams
        .iter()
        .map(|(name, up)| Ok((name.clone(), validate_upstream(&source, name, up)?)))
        .collect::<Result<BTreeMap<_, _>, ConfigError>>()?;
    let routes = validate_routes(&source, &raw, &upstreams)?;
    let keys = routes.iter().map(|r| (r.key.clone(), ())).collect();
    Router::new(keys).map_err(|dup| {
        let (first, second) = (&raw.routes[dup.first].name, &raw.routes[dup.second].name);
        source.error_at(
            &[&format!("name: {second}")],
            format!("routes {first:?} and {second:?} match exactly the same requests (same prefix, host and methods)"),
        )
    })?;
    Ok(Plan {
        listen,
        admin,
        upstream_header,
        trusted_proxies,
        upstreams,
        routes,
        raw,
        hash: content_hash(text),
        file: file.to_string(),
        text: text.to_string(),
        access_log,
    })
}

fn parse_addr(source: &Source<'_>, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        source.error_at(&[&format!("{key}:")], format!("{key}: {value:?} is not an address like \"0.0.0.0:8080\""))
    })
}

fn validate_upstream(source: &Source<'_>, name: &str, up: &RawUpstream) -> Result<UpstreamPlan, ConfigError> {
    let at = format!("{name}:");
    let fail = |key: &str, message: String| source.error_at(&["upstreams:", &at, key], message);
    if up.targets.is_empty() {
        return Err(fail("targets", format!("upstream {name:?} has no targets")));
    }
    let targets = up
        .targets
        .iter()
        .map(|url| {
            let (scheme, authority) = Target::parse(url).map_err(|e| fail(url, format!("upstream {name:?}: {e}")))?;
            Ok(TargetPlan { url: url.clone(), scheme, authority })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let connect_timeout = up.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let timeout = up.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let idle_timeout = up.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
    for (key, d) in [("connect_timeout", connect_timeout), ("timeout", timeout), ("idle_timeout", idle_timeout)] {
        if d.is_zero() {
            return Err(fail(key, format!("upstream {name:?}: {key} must be more than zero")));
        }
    }
    if up.max_concurrent == Some(0) {
        return Err(fail("max_concurrent", format!("upstream {name:?}: max_concurrent must be at least 1")));
    }
    if let Some(h) = &up.health_check {
        if !h.path.starts_with('/')
            || h.interval.is_zero()
            || h.timeout.is_zero()
            || h.unhealthy_after == 0
            || h.healthy_after == 0
        {
            return Err(fail(
                "health_check",
                format!("upstream {name:?}: health_check needs a path starting with '/', non-zero interval and timeout, and thresholds of at least 1"),
            ));
        }
    }
    let outlier = up.outlier.clone().unwrap_or_default();
    if outlier.consecutive_failures == 0 {
        return Err(fail(
            "consecutive_failures",
            format!("upstream {name:?}: consecutive_failures must be at least 1"),
        ));
    }
    let settings = UpstreamSettings {
        connect_timeout,
        timeout,
        idle_timeout,
        retries: up.retries,
        load_balancing: up.load_balancing,
        max_concurrent: up.max_concurrent,
        health_check: up.health_check.clone(),
        outlier,
    };
    Ok(UpstreamPlan { targets, settings, tls: up.tls.clone() })
}

fn validate_routes(
    source: &Source<'_>,
    raw: &RawConfig,
    upstreams: &BTreeMap<String, UpstreamPlan>,
) -> Result<Vec<RoutePlan>, ConfigError> {
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
        let route = validate_route(r, key, upstreams)
            .map_err(|(value, m)| source.error_at(&[&anchor, &value], format!("route {:?}: {m}", r.name)))?;
        routes.push(route);
    }
    Ok(routes)
}

/// An error found in a route: the offending value (to locate it) and a message.
type RouteError = (String, String);

/// Checks one route's behaviour.
fn validate_route(
    r: &RawRoute,
    key: RouteKey,
    upstreams: &BTreeMap<String, UpstreamPlan>,
) -> Result<RoutePlan, RouteError> {
    let known = |name: &str| -> Result<String, RouteError> {
        if upstreams.contains_key(name) {
            return Ok(name.to_string());
        }
        let list = upstreams.keys().cloned().collect::<Vec<_>>().join(", ");
        Err((name.to_string(), format!("unknown upstream {name:?} (known: {list})")))
    };
    let mut members = Vec::new();
    let rollout = match &r.rollout {
        None => None,
        Some(raw) => Some(crate::rollout::plan::validate(raw, r.upstream.as_deref(), r.split.is_some(), known)?),
    };
    let split = match (&r.upstream, &r.split) {
        (Some(name), None) => {
            members.push(known(name)?);
            if let Some(rollout) = &rollout {
                members.push(rollout.to.clone());
            } else if r.sticky.is_some() {
                return Err(("sticky".into(), "sticky needs a split".into()));
            }
            None
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
                members.push(known(&share.upstream)?);
                shares.push((i, share.weight, share.upstream.as_str()));
            }
            if split.iter().all(|s| s.weight == 0) {
                return Err(("weight".into(), "split weights must not all be 0".into()));
            }
            Some(Split::new(shares, sticky_key(r)?))
        }
        (Some(_), Some(_)) => return Err(("split".into(), "give either upstream or split, not both".into())),
        (None, None) => return Err(("name".into(), "needs an upstream or a split".into())),
    };
    let fallback = match &r.fallback {
        None => None,
        Some(name) => {
            let name = known(name)?;
            Some(members.iter().position(|m| *m == name).unwrap_or_else(|| {
                members.push(name);
                members.len() - 1
            }))
        }
    };
    let fallback_methods =
        parse_methods(r.fallback_methods.as_deref().unwrap_or(&[])).map_err(|m| ("fallback_methods".to_string(), m))?;
    // Checked in the order a reader meets them: rate_limit, then shadow.
    let rate_limit = rate_limit(r)?;
    let implied_shadow = rollout.as_ref().map(|plan| crate::config::RawShadow::of(&plan.to));
    let shadow = match r.shadow.as_ref().or(implied_shadow.as_ref()) {
        None => None,
        Some(raw) => {
            known(&raw.upstream)?;
            if let Some(plan) = rollout.as_ref().filter(|plan| plan.to != raw.upstream) {
                return Err((
                    raw.upstream.clone(),
                    format!(
                        "shadow.upstream must be rollout.to ({:?}): the rollout's gates judge its answers",
                        plan.to
                    ),
                ));
            }
            if let Some(noise) = &raw.noise {
                known(noise)?;
            }
            Some(crate::shadow::validate(raw)?)
        }
    };
    Ok(RoutePlan {
        key,
        name: r.name.clone(),
        members,
        split,
        fallback,
        fallback_methods,
        retry_buffer: r.retry_buffer.map_or(DEFAULT_RETRY_BUFFER, |b| b.0),
        rate_limit,
        strip_prefix: r.strip_prefix,
        shadow,
        sticky: if rollout.is_some() { sticky_key(r)? } else { None },
        rollout,
    })
}

fn sticky_key(r: &RawRoute) -> Result<Option<StickyKey>, RouteError> {
    let Some(s) = &r.sticky else { return Ok(None) };
    Ok(Some(match (&s.header, &s.cookie) {
        (Some(h), None) => StickyKey::Header(
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| (h.clone(), format!("invalid header name {h:?}")))?,
        ),
        (None, Some(c)) if !c.is_empty() => StickyKey::Cookie(c.as_str().into()),
        _ => return Err(("sticky".into(), "sticky takes exactly one of header or cookie".into())),
    }))
}

fn rate_limit(r: &RawRoute) -> Result<Option<RateLimitPlan>, RouteError> {
    let Some(rl) = &r.rate_limit else { return Ok(None) };
    if !(rl.rps > 0.0 && rl.rps.is_finite()) {
        return Err(("rps".into(), format!("rate_limit.rps must be more than 0, not {}", rl.rps)));
    }
    let burst = rl.burst.unwrap_or(rl.rps).max(1.0);
    let key = match rl.key.as_str() {
        "client_ip" => RateKey::ClientIp,
        other => match other.strip_prefix("header:").map(|h| HeaderName::from_bytes(h.as_bytes())) {
            Some(Ok(name)) => RateKey::Header(name),
            _ => return Err((other.to_string(), format!("rate_limit.key {other:?} must be client_ip or header:NAME"))),
        },
    };
    // Same route, same settings: keep the buckets across reloads, so an
    // edit of routes.yaml never hands every client a fresh burst.
    let identity = format!("{}|{}|{}|{}", r.name, rl.rps, burst, rl.key);
    Ok(Some(RateLimitPlan { identity, rps: rl.rps, burst, key }))
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

/// Connection settings of a target: targets with equal settings share a
/// connector and, per URL, a pool.
pub type ConnectionSettings = (Duration, Option<RawUpstreamTls>);

impl UpstreamPlan {
    /// How this upstream's targets are connected to.
    pub fn connection(&self) -> ConnectionSettings {
        (self.settings.connect_timeout, self.tls.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "listen: \"127.0.0.1:0\"\nupstreams:\n  up: {targets: [\"http://127.0.0.1:9\"]}\nroutes:\n  - {name: all, prefix: /, upstream: up}\n";

    #[test]
    fn trusted_proxies_are_parsed_into_the_plan() {
        let text = format!("trusted_proxies: [\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.1\"]\n{CONFIG}");
        let plan = validate("r.yaml", &text).expect("valid");
        assert!(!plan.trusted_proxies.is_empty());
        assert!(validate("r.yaml", CONFIG).expect("valid").trusted_proxies.is_empty(), "none by default");
    }

    #[test]
    fn a_bad_trusted_proxy_is_an_error_at_its_line_and_column() {
        let text = format!("trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n{CONFIG}");
        let err = validate("r.yaml", &text).err().expect("refused");
        assert_eq!((err.line, err.column), (Some(3), Some(5)), "{err}");
        assert!(err.to_string().starts_with("r.yaml:3:5: trusted_proxies: \"10.0.0.0/33\""), "{err}");
        let text = format!("trusted_proxies: [\"10.0.0.1/8\"]\n{CONFIG}");
        let err = validate("r.yaml", &text).err().expect("refused");
        assert_eq!((err.line, err.column), (Some(1), Some(20)), "{err}");
        assert!(err.message.contains("did you mean \"10.0.0.0/8\""), "{err}");
    }

    #[test]
    fn the_upstream_header_must_be_a_name_of_its_own() {
        let with = |name: &str| validate("r.yaml", &format!("upstream_header: {name:?}\n{CONFIG}"));
        assert_eq!(with("X-Served-By").unwrap().upstream_header.unwrap(), "x-served-by");
        for taken in ["Content-Length", "transfer-encoding", "Connection", "Date", "X-Request-Id", "keep-alive"] {
            let err = with(taken).err().expect("refused");
            assert_eq!((err.line, err.column), (Some(1), Some(1)), "{err}");
            assert!(err.message.contains("a field the proxy or the connection sets"), "{err}");
        }
        assert!(with("bad name").err().expect("refused").message.contains("not a valid header name"));
    }

    fn with_idle_timeout(line: &str) -> String {
        format!(
            "listen: \"127.0.0.1:0\"\nupstreams:\n  a:\n    targets: [\"http://127.0.0.1:1\"]\n{line}routes:\n  - {{name: all, prefix: /, upstream: a}}\n"
        )
    }

    #[test]
    fn an_upstreams_idle_timeout_defaults_to_a_minute_and_must_be_more_than_zero() {
        let plan = validate("r.yaml", &with_idle_timeout("")).unwrap();
        assert_eq!(plan.upstreams["a"].settings.idle_timeout, Duration::from_secs(60));
        let plan = validate("r.yaml", &with_idle_timeout("    idle_timeout: 300ms\n")).unwrap();
        assert_eq!(plan.upstreams["a"].settings.idle_timeout, Duration::from_millis(300));
        let err = validate("r.yaml", &with_idle_timeout("    idle_timeout: 0s\n")).err().expect("refused");
        assert_eq!(err.to_string(), "r.yaml:5:5: upstream \"a\": idle_timeout must be more than zero");
    }
}
