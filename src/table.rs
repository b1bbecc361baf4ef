//! The validated, typed route table: what the hot path reads, through one
//! `ArcSwap`, for the whole life of a request.
//!
//! A config version is loaded in three steps, as pingora and rpxy do:
//! 1. parse ([`crate::config`]: serde, unknown keys refused);
//! 2. [`validate`]: every check that needs only the text — pure, so a
//!    rejected version leaves no trace and the fuzzer can drive it;
//! 3. [`instantiate`]: the only step with side effects (connectors, pools,
//!    target states, metric handles), run only for a version that passed.
//!
//! Once a new version is in force, [`retire`] releases what the old one had
//! and the new one lacks.

mod instantiate;
mod validate;

pub use instantiate::{instantiate, retire, Context, Resources};
pub use validate::{content_hash, validate, Plan, DEFAULT_RETRY_BUFFER};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::HeaderName;
use http::Method;
use prometheus::{IntCounter, IntCounterVec};

use crate::access_log::AccessLog;
use crate::config::{ConfigError, RawConfig};
use crate::forwarded::TrustedProxies;
use crate::metrics::RouteStats;
use crate::ratelimit::RateLimiter;
use crate::rollout::machine::Effective;
use crate::rollout::plan::RolloutPlan;
use crate::router::Router;
use crate::shadow::ShadowRoute;
use crate::split::Split;
use crate::upstream::Upstream;

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
    /// The file's text, to build this version again with a rollout's new weights.
    pub text: String,
    pub loaded_at: SystemTime,
    /// Response header naming the upstream that answered, if switched on.
    pub upstream_header: Option<HeaderName>,
    /// Whose `X-Forwarded-For` is believed for the downstream client's
    /// address (`trusted_proxies`); empty, the client is the TCP peer.
    pub trusted_proxies: TrustedProxies,
    /// Connectors, pools, target states and rate limiters, for the next
    /// version to reuse and for [`retire`] to release.
    pub resources: Resources,
    /// Where access-log lines go and which requests get one; `None`: `off`.
    pub access_log: Option<AccessLog>,
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
    /// `strangler_misdirected_total`; labels resolved at a 421 only (rare).
    pub misdirected: IntCounterVec,
    /// Mirroring to a candidate upstream for comparison.
    pub shadow: Option<Arc<ShadowRoute>>,
    /// The route's autopilot and the weights its progress gave this version.
    pub rollout: Option<(Arc<RolloutPlan>, Effective)>,
}

/// One upstream as a route uses it, with the route's metric handles for it.
pub struct RouteUpstream {
    pub upstream: Arc<Upstream>,
    pub stats: Arc<RouteStats>,
    pub split_decisions: IntCounter,
}

/// How a route picks its primary upstream.
pub enum Backend {
    /// Always `upstreams[0]`.
    Single,
    Split(Split),
    /// A rollout step that begins at a set instant: requests before it use
    /// `before`, from it on `after`. Every replica switches at that instant
    /// by its own clock, not when it next rebuilds its table, so a sticky
    /// user crossing replicas is never sent back.
    Scheduled(Box<ScheduledSplit>),
}

/// Two splits and the instant between them.
pub struct ScheduledSplit {
    pub before: Split,
    pub after: Split,
    pub at: SystemTime,
}

impl Backend {
    /// The split in force for a request arriving now, if the route splits.
    pub fn split(&self) -> Option<&Split> {
        match self {
            Backend::Single => None,
            Backend::Split(split) => Some(split),
            Backend::Scheduled(s) if SystemTime::now() >= s.at => Some(&s.after),
            Backend::Scheduled(s) => Some(&s.before),
        }
    }
}

impl Route {
    /// Index (into `upstreams`) of the primary upstream for this request.
    pub fn choose(&self, headers: &http::HeaderMap) -> usize {
        let Some(split) = self.backend.split() else { return 0 };
        let chosen = self.member_for_share(split, split.choose(headers));
        self.upstreams[chosen].split_decisions.inc();
        chosen
    }

    /// Index (into `upstreams`) of the member that takes a request whose
    /// share of `split` is `share`: that share's upstream, unless it is down
    /// and another member with weight can serve. Counts nothing, so
    /// `explain` can answer where a sticky key lands.
    pub fn member_for_share(&self, split: &Split, share: usize) -> usize {
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
        chosen
    }

    /// Where a `421 Misdirected Request` from upstream `from` goes once, on
    /// a route that has a fallback (it opts in to sending a request again,
    /// and so to keeping its body): the fallback, or, when the fallback itself
    /// answered, another member of the split with a weight. Routes without a
    /// fallback stream bodies as before and pass a 421 through.
    pub fn other_side(&self, from: usize) -> Option<usize> {
        let fallback = self.fallback?;
        if fallback != from {
            return Some(fallback);
        }
        let split = self.backend.split()?;
        split.shares.iter().find(|s| s.weight > 0 && s.upstream != from).map(|s| s.upstream)
    }

    /// Idempotent methods may be replayed; others only where the route says so.
    pub fn may_replay(&self, method: &Method) -> bool {
        matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
            || self.fallback_methods.contains(method)
    }
}

impl Table {
    /// The names of the routes that shadow: their result series start at 0.
    pub fn shadowed_routes(&self) -> impl Iterator<Item = &str> {
        self.router.entries().iter().filter(|(_, r)| r.shadow.is_some()).map(|(_, r)| &*r.name)
    }

    /// Whether this version needs the shadow-diff log: a route shadows, or
    /// the top-level `shadow:` section is set.
    pub fn wants_shadow_log(&self) -> bool {
        self.raw.shadow.is_some() || self.router.entries().iter().any(|(_, r)| r.shadow.is_some())
    }

    /// Parses, validates and instantiates `text`: nothing is registered or
    /// shared unless every check passed.
    pub fn build(file: &str, text: &str, ctx: &Context<'_>) -> Result<Table, ConfigError> {
        instantiate(validate(file, text)?, ctx)
    }
}
