//! Step three of a config load, the only one with side effects: turns a
//! checked [`Plan`] into a live [`Table`] — connectors, pools, target
//! states, rate limiters and metric handles — reusing whatever the version
//! in force already has for the same settings, so pools stay warm, target
//! health survives an edit and no client gets a fresh rate-limit burst.
//!
//! Everything that can still fail (reading an upstream's CA file) is done
//! before anything is registered, so a rejected version leaves nothing
//! behind. After a swap, [`retire`] releases what the old version had and
//! the new one lacks: metric series deleted, pools closed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::access_log::AccessLog;
use crate::client::pool::{PoolId, PoolRef};
use crate::client::target::{Target, TargetState};
use crate::client::Connector;
use crate::config::{ConfigError, Source};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::rollout::machine::{self, Effective, Progress};
use crate::rollout::plan::ALL;
use crate::rollout::Progresses;
use crate::router::Router;
use crate::shadow::ShadowRoute;
use crate::split::Split;
use crate::upstream::{Upstream, UpstreamCounters};

use super::validate::{ConnectionSettings, Plan, RoutePlan, TargetPlan};
use super::{Backend, Route, RouteUpstream, ScheduledSplit, Table};

/// What instantiating needs besides the plan.
pub struct Context<'a> {
    /// Where metric handles are registered.
    pub metrics: &'a Metrics,
    /// The version in force, whose connectors, pools, target states and
    /// rate limiters are reused where the settings are the same.
    pub previous: Option<&'a Table>,
    /// Where each rollout stands: its step's weights and shadowing apply.
    pub rollouts: &'a Progresses,
}

/// The long-lived parts of a table, keyed by what makes them the same
/// across versions.
#[derive(Default)]
pub struct Resources {
    connectors: HashMap<ConnectionSettings, Arc<Connector>>,
    pools: HashMap<(ConnectionSettings, String), PoolId>,
    /// By (upstream name, target URL).
    targets: HashMap<(String, String), Arc<TargetState>>,
    /// By route and settings (see [`super::validate::RateLimitPlan::identity`]).
    limiters: HashMap<String, Arc<RateLimiter>>,
}

/// Builds the live table for `plan`. Fails only on what the text alone
/// cannot tell (an unreadable CA file), before any side effect.
pub fn instantiate(plan: Plan, ctx: &Context<'_>) -> Result<Table, ConfigError> {
    let previous = ctx.previous.map(|t| &t.resources);
    let connectors = connectors(&plan, previous)?;
    let access_log = access_log(&plan, ctx)?;
    // From here on nothing fails: handles and states may be registered.
    let mut resources = Resources { connectors, ..Resources::default() };
    let upstreams = plan
        .upstreams
        .iter()
        .map(|(name, up)| {
            let connection = up.connection();
            let idle_timeout = up.settings.idle_timeout;
            let targets = up
                .targets
                .iter()
                .map(|t| target(name, t, (&connection, idle_timeout), ctx, previous, &mut resources))
                .collect();
            let connector = resources.connectors[&connection].clone();
            let counters = UpstreamCounters::new(ctx.metrics, name);
            let upstream = Upstream::new(name, targets, up.settings.clone(), connector, counters);
            (name.clone(), Arc::new(upstream))
        })
        .collect::<BTreeMap<_, _>>();
    // Shadow records name the version their request was routed by.
    let config_hash: Arc<str> = plan.hash.as_str().into();
    let routes = plan
        .routes
        .into_iter()
        .map(|r| (r.key.clone(), route(r, &upstreams, ctx, previous, &mut resources, &config_hash)))
        .collect();
    let router = Router::new(routes).map_err(|_| {
        // validate() refused duplicates already; kept as an error, never a panic.
        ConfigError { file: plan.file.clone(), line: None, column: None, message: "duplicate routes".into() }
    })?;
    Ok(Table {
        router,
        upstreams,
        listen: plan.listen,
        admin: plan.admin,
        raw: plan.raw,
        hash: plan.hash,
        file: plan.file,
        text: plan.text,
        loaded_at: SystemTime::now(),
        upstream_header: plan.upstream_header,
        trusted_proxies: plan.trusted_proxies,
        resources,
        access_log,
    })
}

/// The access log: the version in force's sink when it writes to the same
/// place the same way, else a new one (opening a file, which may fail).
fn access_log(plan: &Plan, ctx: &Context<'_>) -> Result<Option<AccessLog>, ConfigError> {
    let Some(settings) = &plan.access_log else { return Ok(None) };
    let previous = ctx.previous.and_then(|t| t.access_log.as_ref());
    AccessLog::instantiate(settings, previous, &ctx.metrics.access_log_dropped).map(Some).map_err(|e| {
        let source = Source { file: &plan.file, text: &plan.text };
        source.error_at(&["access_log", "path"], format!("access_log: cannot open {}: {e}", settings.destination))
    })
}

/// One connector per distinct connection settings: the previous version's,
/// or a new one (which reads CA files, and so may fail).
fn connectors(
    plan: &Plan,
    previous: Option<&Resources>,
) -> Result<HashMap<ConnectionSettings, Arc<Connector>>, ConfigError> {
    let source = Source { file: &plan.file, text: &plan.text };
    let mut connectors = HashMap::new();
    for (name, up) in &plan.upstreams {
        let connection = up.connection();
        if connectors.contains_key(&connection) {
            continue;
        }
        let connector = match previous.and_then(|p| p.connectors.get(&connection)) {
            Some(connector) => connector.clone(),
            None => {
                let tls = crate::tls::client_config(up.tls.as_ref()).map_err(|e| {
                    source.error_at(&["upstreams:", &format!("{name}:"), "tls"], format!("upstream {name:?}: {e}"))
                })?;
                Arc::new(Connector::new(connection.0, tls))
            }
        };
        connectors.insert(connection, connector);
    }
    Ok(connectors)
}

/// A live target: its state and pool reused from `previous` when there,
/// its pool's connections kept for `idle_timeout`.
fn target(
    upstream: &str,
    plan: &TargetPlan,
    (connection, idle_timeout): (&ConnectionSettings, std::time::Duration),
    ctx: &Context<'_>,
    previous: Option<&Resources>,
    resources: &mut Resources,
) -> Target {
    let url = plan.url.as_str();
    let key = (upstream.to_string(), url.to_string());
    let reused = resources.targets.get(&key).or_else(|| previous.and_then(|p| p.targets.get(&key)));
    let state = match reused {
        Some(state) => state.clone(),
        None => Arc::new(TargetState::new(ctx.metrics.target_healthy(upstream, url))),
    };
    resources.targets.insert(key, state.clone());
    let pool_key = (connection.clone(), url.to_string());
    let pool = *resources
        .pools
        .entry(pool_key.clone())
        .or_insert_with(|| previous.and_then(|p| p.pools.get(&pool_key).copied()).unwrap_or_else(PoolId::fresh));
    let (scheme, authority) = (plan.scheme.clone(), plan.authority.clone());
    let address = Target::address(&scheme, &authority);
    Target { url: url.into(), scheme, authority, address, pool: PoolRef::new(pool, idle_timeout), state }
}

fn route(
    r: RoutePlan,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    ctx: &Context<'_>,
    previous: Option<&Resources>,
    resources: &mut Resources,
    config_hash: &Arc<str>,
) -> Route {
    let metrics = ctx.metrics;
    let members = r
        .members
        .iter()
        .map(|name| {
            let upstream = upstreams[name].clone();
            RouteUpstream {
                stats: metrics.route_stats(&r.name, name),
                split_decisions: metrics.split_decisions(&r.name, name),
                upstream,
            }
        })
        .collect();
    let rate_limit = r.rate_limit.map(|rl| {
        let limiter = previous
            .and_then(|p| p.limiters.get(&rl.identity).cloned())
            .unwrap_or_else(|| Arc::new(RateLimiter::new(rl.rps, rl.burst, rl.key)));
        resources.limiters.insert(rl.identity, limiter.clone());
        limiter
    });
    let now = crate::rollout::now_ms();
    let rollout = r.rollout.map(|plan| {
        let progress = ctx.rollouts.get(&r.name).copied().unwrap_or_else(|| Progress::start(0));
        let effective = machine::effective(&plan, &progress, now);
        let next = machine::next_change(&progress, now).map(|at| (at, machine::effective(&plan, &progress, at)));
        (Arc::new(plan), effective, next)
    });
    let backend = match &rollout {
        Some((plan, effective, None)) => Backend::Split(rollout_split(plan, effective, r.sticky)),
        Some((plan, effective, Some((at, then)))) => Backend::Scheduled(Box::new(ScheduledSplit {
            before: rollout_split(plan, effective, r.sticky.clone()),
            after: rollout_split(plan, then, r.sticky),
            at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(*at),
        })),
        None => r.split.map_or(Backend::Single, Backend::Split),
    };
    // Shadowing stays on across a scheduled switch; the rebuild at the
    // switch turns it off when the new step is 100%.
    let shadowing =
        rollout.as_ref().is_none_or(|(_, effective, next)| effective.shadow || next.is_some_and(|(_, e)| e.shadow));
    let shadow = r.shadow.filter(|_| shadowing).map(|plan| {
        let upstream = upstreams[&plan.upstream].clone();
        let noise = plan.noise.as_ref().map(|n| upstreams[n].clone());
        Arc::new(ShadowRoute::instantiate(plan, upstream, noise, config_hash.clone()))
    });
    Route {
        fallbacks: metrics.fallbacks(&r.name),
        rate_limited: metrics.rate_limited(&r.name),
        misdirected: metrics.misdirected(),
        name: r.name.into(),
        upstreams: members,
        backend,
        fallback: r.fallback,
        fallback_methods: r.fallback_methods,
        retry_buffer: r.retry_buffer,
        rate_limit,
        strip_prefix: r.strip_prefix,
        shadow,
        rollout: rollout.map(|(plan, effective, _)| (plan, effective)),
    }
}

/// A rollout's split between `from` (member 0) and `to` (member 1) at the
/// step's share: weighted rendezvous hashing moves sticky keys only
/// towards `to` as its share grows (see [`crate::split`]).
fn rollout_split(
    plan: &crate::rollout::plan::RolloutPlan,
    effective: &Effective,
    sticky: Option<crate::split::StickyKey>,
) -> Split {
    Split::new(vec![(0, ALL - effective.share, &plan.from), (1, effective.share, &plan.to)], sticky)
}

/// Releases what `old` had and `new` lacks, once `new` is in force: the
/// metric series of removed routes, upstreams and targets are deleted (an
/// alert on a removed upstream stops firing) and the idle connections of
/// removed targets are closed. Returns the names of the routes that left,
/// for the state other parts keep per route.
pub fn retire(old: &Table, new: &Table, metrics: &Metrics) -> Vec<Arc<str>> {
    let pairs = |t: &Table| -> HashSet<(Arc<str>, Arc<str>)> {
        t.router
            .entries()
            .iter()
            .flat_map(|(_, r)| r.upstreams.iter().map(|u| (r.name.clone(), u.upstream.name.clone())))
            .collect()
    };
    let new_pairs = pairs(new);
    for (_, route) in old.router.entries() {
        for used in
            route.upstreams.iter().filter(|u| !new_pairs.contains(&(route.name.clone(), u.upstream.name.clone())))
        {
            // Retired first: a request still on the old table then adds no series back.
            used.stats.retire();
            metrics.forget_route_upstream(&route.name, &used.upstream.name);
        }
    }
    let new_routes: HashSet<&str> = new.router.entries().iter().map(|(_, r)| &*r.name).collect();
    let gone_routes: Vec<Arc<str>> = old
        .router
        .entries()
        .iter()
        .filter(|(_, r)| !new_routes.contains(&*r.name))
        .map(|(_, r)| r.name.clone())
        .collect();
    for route in &gone_routes {
        metrics.forget_route(route);
    }
    for name in old.upstreams.keys().filter(|n| !new.upstreams.contains_key(*n)) {
        metrics.forget_upstream(name);
    }
    for (upstream, url) in old.resources.targets.keys().filter(|k| !new.resources.targets.contains_key(*k)) {
        metrics.forget_target(upstream, url);
    }
    let kept: HashSet<PoolId> = new.resources.pools.values().copied().collect();
    let gone: Vec<PoolId> = old.resources.pools.values().copied().filter(|p| !kept.contains(p)).collect();
    crate::client::retire_pools(&gone);
    gone_routes
}
