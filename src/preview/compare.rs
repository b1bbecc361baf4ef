//! The sample routed twice: through the table in force and through a
//! proposed plan, and what changes between the two.
//!
//! Each sampled request lands, on each side, on a route (or none) and on an
//! upstream — or, on a split it has no sticky key for, on each member with
//! the member's weight as probability. A request with a sticky key lands
//! where weighted rendezvous hashing puts it, on both sides
//! ([`crate::split::Split::choose_by`]): from the key's own hashes for the
//! upstreams its split has today (so exactly where the proxy sent it, and
//! exactly where new weights would), from its secret hash for an upstream
//! that is new to it; so only keys whose upstream really changes count as
//! moving. When
//! the route stays the same, the least traffic that must move between the two
//! distributions moves (what a split's weight change does); when it changes,
//! all of it does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::lint::never_matching;
use super::sample::{Sample, StickyHash};
use crate::rollout::machine::{self, Progress};
use crate::rollout::plan::ALL;
use crate::rollout::Progresses;
use crate::router::Router;
use crate::split::{stable_hash, Split};
use crate::table::{Plan, Table};

/// What an edit would move, as `POST /preview` answers it. Shares are
/// fractions of the sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Preview {
    /// Sampled requests routed again.
    pub sampled: usize,
    /// One request in this many was sampled.
    pub sample_every: u64,
    /// From the oldest sample to now: the period req/s figures are over.
    pub window_seconds: f64,
    /// Each (route, upstream) → (route, upstream) change, largest first.
    pub moves: Vec<Move>,
    /// The share of requests whose route or upstream would change.
    pub moving_share: f64,
    /// Distinct sticky keys among the requests that would move.
    pub moving_sticky_keys: usize,
    /// Per route in force (`null`: requests no route takes today).
    pub routes: Vec<RouteMoves>,
    /// Proposed routes that would receive nothing: names.
    pub unreachable_routes: Vec<String>,
    /// The same routes, with why and who takes their requests.
    pub unreachable: Vec<Unreachable>,
    /// Proposed routes whose prefix no sampled request falls under (no
    /// evidence either way).
    pub routes_without_traffic: Vec<String>,
    /// Requests no proposed route would take.
    pub unmatched_share: f64,
    /// Requests no route takes today.
    pub unmatched_share_now: f64,
}

/// Requests that would change route or upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Move {
    /// The route today (`null`: no route).
    pub from_route: Option<String>,
    /// The route under the proposed file (`null`: no route).
    pub to_route: Option<String>,
    /// The upstream today (`null`: no route).
    pub from_upstream: Option<String>,
    /// The upstream under the proposed file (`null`: no route).
    pub to_upstream: Option<String>,
    /// Its fraction of the sample.
    pub share: f64,
    /// Half the width of the share's 95% interval, from the sample's size.
    pub margin: f64,
    /// Estimated from the sample, its rate and its window.
    pub requests_per_second: f64,
    /// Distinct sticky keys among these requests.
    pub sticky_keys: usize,
}

/// What would move of one route in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteMoves {
    /// The route in force (`null`: requests no route takes today).
    pub route: Option<String>,
    /// Its share of the sample.
    pub share: f64,
    /// The share of the sample that is this route's and would move.
    pub moving_share: f64,
    /// The req/s those moving requests stand for.
    pub moving_requests_per_second: f64,
    /// Distinct sticky keys among them.
    pub moving_sticky_keys: usize,
}

/// A proposed route that would receive nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unreachable {
    /// The proposed route's name.
    pub route: String,
    /// `shadowed`: sampled requests fall under it, other routes take them
    /// all; `never_matches`: no request can reach it (see [`super::lint`]).
    pub reason: String,
    /// Why, for people.
    pub detail: String,
    /// The routes that take its requests.
    pub taken_by: Vec<String>,
    /// The share of the sample it would match on its own.
    pub covered_share: f64,
}

/// How one side routes: per route of its router, by index.
struct View<'a> {
    name: &'a str,
    /// Upstream names by member index.
    members: Vec<&'a str>,
    split: Option<&'a Split>,
}

/// Where a request lands on one side: a route, and upstreams with their probability.
struct Landing<'a> {
    route: Option<&'a str>,
    upstreams: Vec<(Option<&'a str>, f64)>,
}

/// A change of (route, upstream): from route, to route, from upstream, to upstream.
type Change<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, Option<&'a str>);

#[derive(Default)]
struct Tally {
    mass: f64,
    keys: HashSet<u64>,
}

#[derive(Default)]
struct RouteTally {
    mass: f64,
    moving: Tally,
}

/// Routes `samples` through `current` and through `proposed` (whose
/// rollouts stand where `rollouts` says at `now_ms`) and reports what
/// changes. `every` is the sampler's rate, `now` the clock the samples'
/// arrival times are read against.
pub fn compare(
    current: &Table,
    proposed: &Plan,
    rollouts: &Progresses,
    samples: &[Sample],
    (every, now, now_ms): (u64, Instant, u64),
) -> Result<Preview, String> {
    let current_views: Vec<View<'_>> = current.router.entries().iter().map(|(_, route)| table_view(route)).collect();
    let rollout_splits = rollout_splits(proposed, rollouts, now_ms);
    let proposed_views: Vec<View<'_>> = proposed
        .routes
        .iter()
        .zip(&rollout_splits)
        .map(|(route, rollout)| View {
            name: &route.name,
            members: route.members.iter().map(String::as_str).collect(),
            split: rollout.as_ref().or(route.split.as_ref()),
        })
        .collect();
    let proposed_router = Router::new(proposed.routes.iter().map(|r| (r.key.clone(), r.name.as_str())).collect())
        .map_err(|_| "two proposed routes match the same requests".to_string())?;
    let singles: Vec<Router<()>> = proposed
        .routes
        .iter()
        .map(|r| Router::new(vec![(r.key.clone(), ())]).expect("one route is never a duplicate"))
        .collect();

    let mut changes: HashMap<Change<'_>, Tally> = HashMap::new();
    let mut per_route: BTreeMap<Option<&str>, RouteTally> = BTreeMap::new();
    let (mut unmatched, mut unmatched_now) = (0usize, 0usize);
    let (mut covered, mut won) = (vec![0usize; singles.len()], vec![0usize; singles.len()]);
    let mut takers: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); singles.len()];
    for sample in samples {
        let (method, host, path) = (&sample.method, sample.host.as_deref(), &*sample.path);
        let now_index = current.router.lookup(path, host, method).map(|m| m.index);
        let then_index = proposed_router.lookup(path, host, method).map(|m| m.index);
        unmatched_now += usize::from(now_index.is_none());
        unmatched += usize::from(then_index.is_none());
        if let Some(winner) = then_index {
            won[winner] += 1;
        }
        for (i, single) in singles.iter().enumerate() {
            if single.lookup(path, host, method).is_some() {
                covered[i] += 1;
                if let Some(winner) = then_index.filter(|&w| w != i) {
                    takers[i].insert(proposed_views[winner].name);
                }
            }
        }
        let from = landing(now_index.map(|i| &current_views[i]), sample);
        let to = landing(then_index.map(|i| &proposed_views[i]), sample);
        let tally = per_route.entry(from.route).or_default();
        tally.mass += 1.0;
        for (from_upstream, to_upstream, mass) in couple(&from, &to) {
            if from.route == to.route && from_upstream == to_upstream {
                continue;
            }
            let change = changes.entry((from.route, to.route, from_upstream, to_upstream)).or_default();
            change.mass += mass;
            tally.moving.mass += mass;
            if let Some(key) = sample.sticky {
                change.keys.insert(key.key);
                tally.moving.keys.insert(key.key);
            }
        }
    }

    let n = samples.len();
    let window = samples.iter().map(|s| now.saturating_duration_since(s.at)).max().unwrap_or_default();
    let scale = Scale { n, every, window_seconds: window.as_secs_f64() };
    let mut moves: Vec<Move> = changes
        .into_iter()
        .map(|((from_route, to_route, from_upstream, to_upstream), tally)| Move {
            from_route: from_route.map(str::to_string),
            to_route: to_route.map(str::to_string),
            from_upstream: from_upstream.map(str::to_string),
            to_upstream: to_upstream.map(str::to_string),
            share: scale.share(tally.mass),
            margin: scale.margin(tally.mass),
            requests_per_second: scale.rate(tally.mass),
            sticky_keys: tally.keys.len(),
        })
        .collect();
    moves.sort_by(|a, b| b.share.total_cmp(&a.share).then_with(|| a.from_route.cmp(&b.from_route)));
    let moving_keys: HashSet<u64> = per_route.values().flat_map(|t| t.moving.keys.iter().copied()).collect();
    let moving_mass: f64 = per_route.values().map(|t| t.moving.mass).sum();
    let routes = per_route
        .into_iter()
        .map(|(route, tally)| RouteMoves {
            route: route.map(str::to_string),
            share: scale.share(tally.mass),
            moving_share: scale.share(tally.moving.mass),
            moving_requests_per_second: scale.rate(tally.moving.mass),
            moving_sticky_keys: tally.moving.keys.len(),
        })
        .collect();

    let never = never_matching(&proposed_router, |name| *name);
    let mut unreachable: Vec<Unreachable> = never
        .into_iter()
        .map(|dead| Unreachable {
            covered_share: scale.share(covered[dead.index] as f64),
            route: dead.route,
            reason: "never_matches".into(),
            detail: dead.detail,
            taken_by: dead.taken_by,
        })
        .collect();
    let mut routes_without_traffic = Vec::new();
    for (i, route) in proposed.routes.iter().enumerate() {
        if unreachable.iter().any(|u| u.route == route.name) {
            continue;
        }
        if covered[i] == 0 {
            routes_without_traffic.push(route.name.clone());
        } else if won[i] == 0 {
            let taken_by: Vec<String> = takers[i].iter().map(|s| s.to_string()).collect();
            unreachable.push(Unreachable {
                route: route.name.clone(),
                reason: "shadowed".into(),
                detail: format!(
                    "{} of recent requests fall under its prefix and every one goes to {}",
                    percent(scale.share(covered[i] as f64)),
                    taken_by.join(", ")
                ),
                taken_by,
                covered_share: scale.share(covered[i] as f64),
            });
        }
    }
    Ok(Preview {
        sampled: n,
        sample_every: every,
        window_seconds: round(window.as_secs_f64(), 3),
        moves,
        moving_share: scale.share(moving_mass),
        moving_sticky_keys: moving_keys.len(),
        routes,
        unreachable_routes: unreachable.iter().map(|u| u.route.clone()).collect(),
        unreachable,
        routes_without_traffic,
        unmatched_share: scale.share(unmatched as f64),
        unmatched_share_now: scale.share(unmatched_now as f64),
    })
}

fn table_view(route: &crate::table::Route) -> View<'_> {
    View {
        name: &route.name,
        members: route.upstreams.iter().map(|u| &*u.upstream.name).collect(),
        split: route.backend.split(),
    }
}

/// The split each proposed rollout route serves with, from where its
/// rollout stands (as instantiating the plan would build it).
fn rollout_splits(plan: &Plan, rollouts: &Progresses, now_ms: u64) -> Vec<Option<Split>> {
    plan.routes
        .iter()
        .map(|route| {
            let rollout = route.rollout.as_ref()?;
            let progress = rollouts.get(&route.name).copied().unwrap_or_else(|| Progress::start(0));
            let share = machine::effective(rollout, &progress, now_ms).share;
            let shares = vec![(0, ALL - share, rollout.from.as_str()), (1, share, rollout.to.as_str())];
            Some(Split::new(shares, route.sticky.clone()))
        })
        .collect()
}

/// Where `sample` lands on `view` (`None`: no route).
fn landing<'a>(view: Option<&View<'a>>, sample: &Sample) -> Landing<'a> {
    let Some(view) = view else { return Landing { route: None, upstreams: vec![(None, 1.0)] } };
    let upstreams = match view.split {
        None => vec![(Some(view.members[0]), 1.0)],
        Some(split) => {
            let keyed = sample
                .sticky
                .filter(|key| split.sticky.as_ref().is_some_and(|s| StickyHash::source_of(s) == key.source));
            match keyed {
                Some(key) => {
                    let secret = key.key.to_le_bytes();
                    let share = split.choose_by(|share| {
                        sample.rendezvous_hash(share.salt).unwrap_or_else(|| stable_hash(&secret, share.salt))
                    });
                    vec![(Some(view.members[split.shares[share].upstream]), 1.0)]
                }
                None => by_weight(view, split),
            }
        }
    };
    Landing { route: Some(view.name), upstreams }
}

/// A split's members with their weight as probability (a request without a key).
fn by_weight<'a>(view: &View<'a>, split: &Split) -> Vec<(Option<&'a str>, f64)> {
    let total = split.total as f64;
    let weighted: Vec<_> = split
        .shares
        .iter()
        .filter(|s| s.weight > 0)
        .map(|s| (Some(view.members[s.upstream]), s.weight as f64 / total))
        .collect();
    if weighted.is_empty() {
        // Weights all 0 (refused by validation): the proxy picks the first share.
        return vec![(Some(view.members[split.shares[0].upstream]), 1.0)];
    }
    weighted
}

/// How one request's probability mass goes from `from`'s upstreams to
/// `to`'s. On the same route, as little as possible moves: each upstream
/// keeps what both sides give it, and the rest goes from those that lose
/// to those that gain, in order. On a different route, everything moves.
fn couple<'a>(from: &Landing<'a>, to: &Landing<'a>) -> Vec<(Option<&'a str>, Option<&'a str>, f64)> {
    let mut flows = Vec::new();
    if from.route != to.route {
        for &(u, p) in &from.upstreams {
            for &(v, q) in &to.upstreams {
                flows.push((u, v, p * q));
            }
        }
        return flows;
    }
    let given = |side: &[(Option<&'a str>, f64)], u: Option<&'a str>| -> f64 {
        side.iter().filter(|(name, _)| *name == u).map(|(_, p)| p).sum()
    };
    let mut losing: Vec<(Option<&'a str>, f64)> = Vec::new();
    for &(u, p) in &from.upstreams {
        let kept = p.min(given(&to.upstreams, u));
        flows.push((u, u, kept));
        if p > kept {
            losing.push((u, p - kept));
        }
    }
    let mut gaining: Vec<(Option<&'a str>, f64)> = to
        .upstreams
        .iter()
        .map(|&(v, q)| (v, q - q.min(given(&from.upstreams, v))))
        .filter(|(_, q)| *q > 0.0)
        .collect();
    let mut g = 0;
    for (u, mut left) in losing {
        while left > 1e-12 && g < gaining.len() {
            let moved = left.min(gaining[g].1);
            flows.push((u, gaining[g].0, moved));
            left -= moved;
            gaining[g].1 -= moved;
            if gaining[g].1 <= 1e-12 {
                g += 1;
            }
        }
    }
    flows
}

/// Turns sample counts into shares and rates.
struct Scale {
    n: usize,
    every: u64,
    window_seconds: f64,
}

impl Scale {
    fn share(&self, mass: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        round(mass / self.n as f64, 4)
    }

    /// Half the 95% interval of a share estimated from `n` samples.
    fn margin(&self, mass: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let p = mass / self.n as f64;
        round(1.96 * (p * (1.0 - p) / self.n as f64).sqrt(), 4)
    }

    /// Requests per second these samples stand for, over at least a second.
    fn rate(&self, mass: f64) -> f64 {
        round(mass * self.every as f64 / self.window_seconds.max(1.0), 2)
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (x * factor).round() / factor
}

/// `0.301` as `30.1%`.
pub fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderName, Method};

    use super::*;
    use crate::split::StickyKey;
    use crate::table::{validate, Context};

    const UPSTREAMS: &str = "listen: \"127.0.0.1:0\"\nupstreams:\n  legacy: {targets: [\"http://127.0.0.1:9\"]}\n  users: {targets: [\"http://127.0.0.1:9\"]}\n  comments: {targets: [\"http://127.0.0.1:9\"]}\nroutes:\n";

    fn table(routes: &str) -> Table {
        let metrics = crate::metrics::Metrics::new();
        let rollouts = Progresses::new();
        let ctx = Context { metrics: &metrics, previous: None, rollouts: &rollouts };
        Table::build("now.yaml", &format!("{UPSTREAMS}{routes}"), &ctx).expect("valid")
    }

    fn plan(routes: &str) -> Plan {
        validate("new.yaml", &format!("{UPSTREAMS}{routes}")).expect("valid")
    }

    fn sample(path: &str, user: Option<&str>, now: Instant) -> Sample {
        let header = StickyKey::Header(HeaderName::from_static("x-user-id"));
        Sample {
            method: Method::GET,
            host: None,
            path: path.into(),
            sticky: user.map(|u| StickyHash::of(&header, u.as_bytes())),
            rendezvous: Box::new([]),
            at: now - Duration::from_secs(10),
        }
    }

    /// A sample as the proxy takes it on a route with `split`: with the
    /// key's rendezvous hash for each of its members.
    fn taken_on(split: &Split, path: &str, user: &str, now: Instant) -> Sample {
        let mut hashes = Vec::new();
        super::super::sample::rendezvous(split, user.as_bytes(), &mut hashes);
        Sample { rendezvous: hashes.into(), ..sample(path, Some(user), now) }
    }

    /// `counts` requests per path (users `u0`, `u1`, … when `sticky`).
    fn samples(counts: &[(&str, usize)], sticky: bool, now: Instant) -> Vec<Sample> {
        let mut out = Vec::new();
        for (path, n) in counts {
            for i in 0..*n {
                let user = format!("u{i}");
                out.push(sample(path, sticky.then_some(user.as_str()), now));
            }
        }
        out
    }

    fn run(now: &str, new: &str, samples: &[Sample], at: Instant) -> Preview {
        compare(&table(now), &plan(new), &Progresses::new(), samples, (16, at, 0)).expect("compared")
    }

    const TODAY: &str = "  - {name: users, prefix: /api/users, upstream: users}\n  - {name: comments, prefix: /api/comments, upstream: legacy}\n";

    #[test]
    fn moving_one_prefix_moves_exactly_its_requests() {
        let at = Instant::now();
        let new = "  - {name: users, prefix: /api/users, upstream: users}\n  - {name: comments, prefix: /api/comments, upstream: comments}\n";
        let preview = run(TODAY, new, &samples(&[("/api/users/1", 70), ("/api/comments/2", 30)], false, at), at);
        assert_eq!(preview.sampled, 100);
        assert_eq!(preview.moves.len(), 1);
        let m = &preview.moves[0];
        assert_eq!(
            (m.from_upstream.as_deref(), m.to_upstream.as_deref(), m.share),
            (Some("legacy"), Some("comments"), 0.3)
        );
        assert_eq!(m.requests_per_second, 30.0 * 16.0 / 10.0, "30 samples of 1 in 16 over 10 s");
        assert_eq!((preview.moving_share, preview.unmatched_share), (0.3, 0.0));
        assert!(preview.unreachable.is_empty() && preview.routes_without_traffic.is_empty(), "{preview:?}");
    }

    #[test]
    fn an_unchanged_config_moves_nothing() {
        let at = Instant::now();
        let split = "  - {name: users, prefix: /api/users, split: [{upstream: users, weight: 30}, {upstream: legacy, weight: 70}], sticky: {header: X-User-Id}}\n";
        let traffic =
            [samples(&[("/api/users/1", 50)], true, at), samples(&[("/api/users/1", 50)], false, at)].concat();
        let preview = run(split, split, &traffic, at);
        assert_eq!((preview.moves.len(), preview.moving_share, preview.moving_sticky_keys), (0, 0.0, 0), "{preview:?}");
    }

    #[test]
    fn a_sticky_split_moves_only_the_keys_its_new_weights_move_toward_the_gainer() {
        let at = Instant::now();
        let before = "  - {name: users, prefix: /api/users, split: [{upstream: users, weight: 10}, {upstream: legacy, weight: 90}], sticky: {header: X-User-Id}}\n";
        let after = before.replace("weight: 10", "weight: 60").replace("weight: 90", "weight: 40");
        let traffic = samples(&[("/api/users/1", 1000)], true, at);
        let preview = run(before, &after, &traffic, at);
        assert_eq!(preview.moves.len(), 1, "keys only move from legacy to users: {preview:?}");
        let m = &preview.moves[0];
        assert_eq!((m.from_upstream.as_deref(), m.to_upstream.as_deref()), (Some("legacy"), Some("users")));
        // The same rendezvous hashing the proxy uses, over the keys' hashes.
        let (old, new) = (plan(before), plan(&after));
        let (old, new) = (old.routes[0].split.as_ref().unwrap(), new.routes[0].split.as_ref().unwrap());
        let moved = traffic
            .iter()
            .filter(|s| {
                let bytes = s.sticky.unwrap().key.to_le_bytes();
                old.choose_for_key(&bytes) != new.choose_for_key(&bytes)
            })
            .count();
        assert_eq!(m.sticky_keys, moved);
        assert_eq!(m.share, moved as f64 / 1000.0);
        assert!((m.share - 0.5).abs() < 0.05, "about the weights' difference: {}", m.share);
    }

    #[test]
    fn a_key_sampled_with_its_rendezvous_hashes_moves_exactly_as_the_proxy_would_move_it() {
        let at = Instant::now();
        let before = "  - {name: users, prefix: /api/users, split: [{upstream: users, weight: 10}, {upstream: legacy, weight: 90}], sticky: {header: X-User-Id}}\n";
        let after = before.replace("weight: 10", "weight: 60").replace("weight: 90", "weight: 40");
        let today = table(before);
        let split = today.router.entries()[0].1.backend.split().unwrap().clone();
        let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let traffic: Vec<Sample> = users.iter().map(|u| taken_on(&split, "/api/users/1", u, at)).collect();
        let preview = compare(&today, &plan(&after), &Progresses::new(), &traffic, (16, at, 0)).unwrap();
        let new = plan(&after).routes[0].split.clone().unwrap();
        let moved = users.iter().filter(|u| split.choose_for_key(u.as_bytes()) != new.choose_for_key(u.as_bytes()));
        assert_eq!(preview.moving_sticky_keys, moved.count(), "the keys the proxy would move, exactly: {preview:?}");
        assert_eq!(preview.moves.len(), 1, "{preview:?}");
        assert_eq!(preview.moves[0].to_upstream.as_deref(), Some("users"));

        // A member new to the split: keys only move to it.
        let three = before.replace("]", ", {upstream: comments, weight: 30}]");
        let preview = compare(&today, &plan(&three), &Progresses::new(), &traffic, (16, at, 0)).unwrap();
        assert!(preview.moves.iter().all(|m| m.to_upstream.as_deref() == Some("comments")), "{preview:?}");
        let share = preview.moving_share;
        assert!((share - 30.0 / 130.0).abs() < 0.05, "about the new member's weight: {share}");
    }

    #[test]
    fn requests_without_a_key_move_by_the_difference_of_the_weights() {
        let at = Instant::now();
        let before = "  - {name: users, prefix: /api/users, split: [{upstream: users, weight: 10}, {upstream: legacy, weight: 90}]}\n";
        let after = before.replace("weight: 10", "weight: 50").replace("weight: 90", "weight: 50");
        let preview = run(before, &after, &samples(&[("/api/users/1", 10)], false, at), at);
        assert_eq!(preview.moves.len(), 1, "{preview:?}");
        assert_eq!(preview.moves[0].share, 0.4);
        assert_eq!(preview.moves[0].sticky_keys, 0);
    }

    #[test]
    fn a_renamed_route_moves_its_requests_even_on_the_same_upstream() {
        let at = Instant::now();
        let new = "  - {name: users, prefix: /api/users, upstream: users}\n  - {name: comments-read, prefix: /api/comments, upstream: legacy}\n";
        let preview = run(TODAY, new, &samples(&[("/api/comments/1", 4)], false, at), at);
        let m = &preview.moves[0];
        assert_eq!(
            (m.from_route.as_deref(), m.to_route.as_deref(), m.share),
            (Some("comments"), Some("comments-read"), 1.0)
        );
        assert_eq!((m.from_upstream.as_deref(), m.to_upstream.as_deref()), (Some("legacy"), Some("legacy")));
    }

    #[test]
    fn shadowed_unreachable_and_quiet_routes_are_told_apart() {
        let at = Instant::now();
        let new = format!(
            "{TODAY}  - {{name: api, prefix: /api, upstream: comments}}\n  - {{name: tags, prefix: /api/tags, upstream: comments}}\n  - {{name: tunnel, prefix: /t, methods: [CONNECT], upstream: comments}}\n"
        );
        let preview = run(TODAY, &new, &samples(&[("/api/users/1", 7), ("/api/comments/2", 3)], false, at), at);
        assert_eq!(preview.unreachable_routes, vec!["tunnel", "api"]);
        assert_eq!(preview.unreachable[0].reason, "never_matches");
        let api = &preview.unreachable[1];
        assert_eq!((api.reason.as_str(), api.covered_share), ("shadowed", 1.0));
        assert_eq!(api.taken_by, vec!["comments", "users"]);
        assert_eq!(preview.routes_without_traffic, vec!["tags"]);
    }

    #[test]
    fn requests_that_match_nothing_are_counted_on_both_sides() {
        let at = Instant::now();
        let new = "  - {name: comments, prefix: /api/comments, upstream: legacy}\n  - {name: all, prefix: /, upstream: legacy}\n";
        let traffic = samples(&[("/api/users/1", 5), ("/elsewhere", 5)], false, at);
        let preview = run(TODAY, new, &traffic, at);
        assert_eq!((preview.unmatched_share_now, preview.unmatched_share), (0.5, 0.0));
        let from_nothing = preview.moves.iter().find(|m| m.from_route.is_none()).expect("a move from no route");
        assert_eq!((from_nothing.to_route.as_deref(), from_nothing.share), (Some("all"), 0.5));
        let users = preview.moves.iter().find(|m| m.from_route.as_deref() == Some("users")).unwrap();
        assert_eq!((users.to_route.as_deref(), users.to_upstream.as_deref()), (Some("all"), Some("legacy")));
        assert_eq!(preview.routes.iter().find(|r| r.route.is_none()).unwrap().share, 0.5);
    }

    #[test]
    fn a_proposed_rollout_serves_where_its_progress_stands() {
        let at = Instant::now();
        let rolling = "  - name: comments\n    prefix: /api/comments\n    upstream: legacy\n    sticky: {header: X-User-Id}\n    rollout: {to: comments, steps: [shadow, 10, 100]}\n";
        let traffic = samples(&[("/api/comments/1", 100)], true, at);
        let preview = run(TODAY, rolling, &traffic, at);
        assert!(
            preview.moves.iter().all(|m| m.from_route.as_deref() != Some("comments")),
            "shadow moves nothing: {preview:?}"
        );
        let mut progresses = Progresses::new();
        progresses.insert("comments".into(), crate::rollout::machine::Progress { step: 2, ..Progress::start(0) });
        let preview = compare(&table(TODAY), &plan(rolling), &progresses, &traffic, (16, at, 1)).unwrap();
        assert_eq!(preview.moving_share, 1.0, "100% on comments: {preview:?}");
    }

    #[test]
    fn no_samples_make_an_empty_preview() {
        let preview = run(TODAY, TODAY, &[], Instant::now());
        assert_eq!((preview.sampled, preview.moving_share, preview.window_seconds), (0, 0.0, 0.0));
        assert_eq!(preview.routes_without_traffic, vec!["users", "comments"]);
    }
}
