//! The bounded sample of recent traffic a preview routes again.
//!
//! The request path pays a thread-local increment, a multiply and a compare
//! per request (nothing shared between workers): the worker's request number
//! `n` is sampled when `n · φ` (Fibonacci hashing, φ = 2⁶⁴ / the golden
//! ratio) falls in the lowest `1 / every` of the `u64` range. That keeps
//! exactly one request in `every` over time, like a counter, but spread over
//! the sequence without a period, so a traffic mix that repeats every few
//! requests (a client's page load, a test's loop) is not aliased the way
//! `n % 16 == 0` would alias it. Each worker thread keeps its own count (a
//! connection stays on one worker), so workers never write a shared cache
//! line for a request that is not sampled. Only a sampled request goes
//! further: it claims the next slot of a ring of `capacity` slots (one
//! relaxed atomic add), each slot behind its own lock, taken with `try_lock`
//! (a slot being read is skipped, never waited for), and copies its fields
//! into the slot's reused buffers.
//!
//! A sample holds only what routing reads: the method, the host routes match
//! on (no port, lower-case), the normalized path (no query) and, for a route
//! with a sticky split, hashes of the sticky key — never a header value, a
//! query value or the key itself. Two kinds of hash: one under a secret drawn
//! at start, to count distinct keys (the only one the admin API shows; a
//! small key space such as numeric user ids cannot be enumerated back from
//! it), and the rendezvous hash of the key for each member of the route's
//! split (kept in memory only), so that a preview sends the key where the
//! proxy did and, when the weights change, exactly where the new weights
//! would. A proposed split's member that is not one of them today scores the
//! key from its secret hash instead (right in distribution, not per key).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, TryLockError};
use std::time::Instant;

use http::header::{self, HeaderMap};
use http::{Method, Uri};

use crate::error::ProxyError;
use crate::router::host_for_matching;
use crate::split::{stable_hash, Split, StickyKey};
use crate::table::Route;

/// One request in `SAMPLE_EVERY` is sampled by default.
pub const SAMPLE_EVERY: u64 = 16;
/// The default number of samples kept: the most recent ones.
pub const CAPACITY: usize = 10_000;
/// Longer paths are cut at the last `/` before this many bytes: routes match
/// on leading segments, and a slot's memory stays bounded.
pub const MAX_PATH: usize = 1024;
/// Longer hosts are kept as no host (no DNS name is that long).
const MAX_HOST: usize = 255;
/// 2⁶⁴ / φ, odd: multiplying by it spreads consecutive numbers evenly.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// Seed of the hash of where a key is read (any fixed value).
const SOURCE_SEED: u64 = 0x50_0ace;
/// The most rendezvous hashes a sample keeps (a split's members beyond these
/// are scored from the key's secret hash).
const MAX_MEMBERS: usize = 8;

/// The secret the keys' hashes are taken under, drawn at start.
static KEY_SEED: LazyLock<u64> = LazyLock::new(|| fastrand::u64(..));

thread_local! {
    /// Requests this thread has seen, sampled or not, across samplers.
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// A sticky key as a sample keeps it: hashes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StickyHash {
    /// Where the key was read (`header x-user-id`, `cookie session`), hashed:
    /// a split reading its key elsewhere cannot reuse this one.
    pub source: u64,
    /// The key's value, hashed under this process's secret.
    pub key: u64,
}

impl StickyHash {
    /// The hash of where `sticky` reads its key.
    pub fn source_of(sticky: &StickyKey) -> u64 {
        match sticky {
            StickyKey::Header(name) => stable_hash(name.as_str().as_bytes(), SOURCE_SEED),
            StickyKey::Cookie(name) => stable_hash(name.as_bytes(), SOURCE_SEED ^ 1),
        }
    }

    /// A key as read from a request.
    pub fn of(sticky: &StickyKey, key: &[u8]) -> StickyHash {
        StickyHash { source: StickyHash::source_of(sticky), key: stable_hash(key, *KEY_SEED) }
    }
}

/// The key's rendezvous hash for each member of `split`, by the member's salt.
pub fn rendezvous(split: &Split, key: &[u8], out: &mut Vec<(u64, u64)>) {
    out.clear();
    out.extend(split.shares.iter().take(MAX_MEMBERS).map(|share| (share.salt, stable_hash(key, share.salt))));
}

/// One sampled request: what routing reads, and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The request's method (routes may match on it).
    pub method: Method,
    /// The host routes match on: no port, no trailing dot, lower-case.
    pub host: Option<Box<str>>,
    /// The normalized path, without the query.
    pub path: Box<str>,
    /// The sticky key, hashed, when the route's split reads one.
    pub sticky: Option<StickyHash>,
    /// With `sticky`: `(salt, hash)` of the key for each member of the split
    /// it was read for (see [`rendezvous`]).
    pub rendezvous: Box<[(u64, u64)]>,
    /// When it arrived: the sample's window, and so req/s, is read from it.
    pub at: Instant,
}

impl Sample {
    /// The key's rendezvous hash for the upstream salted `salt`, if kept.
    pub fn rendezvous_hash(&self, salt: u64) -> Option<u64> {
        self.rendezvous.iter().find(|(s, _)| *s == salt).map(|(_, h)| *h)
    }
}

/// A ring slot; its strings keep their capacity from one sample to the next.
/// The ring holds 10,000 slots by default, so a slot is kept small: 104
/// bytes with its lock (152 with the sticky key's fields inline, which most
/// routes never fill).
#[derive(Default)]
struct Slot {
    method: Method,
    host: Option<String>,
    path: String,
    /// With a sticky key; the box is kept for the slot's next sticky sample.
    sticky: Option<Box<StickySample>>,
    /// `None` until the slot is first filled.
    at: Option<Instant>,
}

/// A sampled sticky key: its hash, and its rendezvous hashes (see [`Sample`]).
struct StickySample {
    hash: StickyHash,
    rendezvous: Vec<(u64, u64)>,
}

/// The recent-traffic sample of one proxy (in [`crate::Shared`]).
pub struct Sampler {
    /// Samples taken: the next one goes to slot `taken % capacity`.
    taken: AtomicU64,
    /// Samples lost to a slot that was being read.
    skipped: AtomicU64,
    /// `n · GOLDEN` at or below this is sampled (`u64::MAX / every`).
    threshold: AtomicU64,
    every: AtomicU64,
    /// The ring, in chunks of [`CHUNK`] slots allocated when first sampled
    /// into: a quiet instance does not hold a full ring (~1 MB) it has not used.
    chunks: Box<[OnceLock<Chunk>]>,
    capacity: usize,
}

/// Slots per chunk of the ring.
const CHUNK: usize = 256;

/// [`CHUNK`] slots of the ring (fewer in the last chunk).
type Chunk = Box<[Mutex<Slot>]>;

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new(SAMPLE_EVERY, CAPACITY)
    }
}

impl Sampler {
    /// Samples one request in `every` (at least 1), keeping the last `capacity`.
    pub fn new(every: u64, capacity: usize) -> Sampler {
        let sampler = Sampler {
            taken: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            threshold: AtomicU64::new(0),
            every: AtomicU64::new(1),
            chunks: (0..capacity.max(1).div_ceil(CHUNK)).map(|_| OnceLock::new()).collect(),
            capacity: capacity.max(1),
        };
        sampler.set_every(every);
        sampler
    }

    /// Samples one request in `every` (at least 1) from now on: a quiet
    /// instance may keep every request, a busy one fewer (`serve
    /// --preview-sample-every`).
    pub fn set_every(&self, every: u64) {
        let every = every.max(1);
        self.every.store(every, Ordering::Relaxed);
        self.threshold.store(u64::MAX / every, Ordering::Relaxed);
    }

    /// One request in how many is sampled.
    pub fn every(&self) -> u64 {
        self.every.load(Ordering::Relaxed)
    }

    /// How many samples the ring keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Samples taken since start (the ring keeps the last `capacity`).
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Samples lost because their slot was being read at that moment.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The request path's hook, called once a request's route is known:
    /// `matched` is its normalized path and route, or why it has none (only
    /// "no route" is kept: a request refused before matching is refused by
    /// any table). Costs a thread-local add, a multiply and a compare
    /// unless the request is sampled.
    #[inline]
    pub fn observe(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        matched: Result<(&str, &Route), &ProxyError>,
    ) {
        let n = SEEN.with(|seen| {
            let n = seen.get();
            seen.set(n.wrapping_add(1));
            n
        });
        if n.wrapping_mul(GOLDEN) <= self.threshold.load(Ordering::Relaxed) {
            self.record(method, uri, headers, matched);
        }
    }

    #[cold]
    #[inline(never)]
    fn record(&self, method: &Method, uri: &Uri, headers: &HeaderMap, matched: Result<(&str, &Route), &ProxyError>) {
        let (path, route) = match matched {
            Ok((path, route)) => (path, Some(route)),
            Err(ProxyError::NoRoute { path, .. }) => (path.as_str(), None),
            Err(_) => return,
        };
        let host = matching_host(uri, headers);
        let index = (self.taken.fetch_add(1, Ordering::Relaxed) % self.capacity as u64) as usize;
        let mut slot = match self.slot(index).try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        slot.method.clone_from(method);
        match (host, &mut slot.host) {
            (Some(host), Some(kept)) => {
                kept.clear();
                kept.extend(host.chars().map(|c| c.to_ascii_lowercase()));
            }
            (Some(host), kept) => *kept = Some(host.to_ascii_lowercase()),
            (None, kept) => *kept = None,
        }
        slot.path.clear();
        slot.path.push_str(bounded_path(path));
        match (route.and_then(|route| sticky_key(route, headers)), &mut slot.sticky) {
            (Some((split, sticky, key)), Some(kept)) => {
                kept.hash = StickyHash::of(sticky, key);
                rendezvous(split, key, &mut kept.rendezvous);
            }
            (Some((split, sticky, key)), kept) => {
                let mut sample = StickySample { hash: StickyHash::of(sticky, key), rendezvous: Vec::new() };
                rendezvous(split, key, &mut sample.rendezvous);
                *kept = Some(Box::new(sample));
            }
            (None, kept) => *kept = None,
        }
        slot.at = Some(Instant::now());
    }

    /// Ring slot `index`, its chunk allocated if this is the first sample in it.
    fn slot(&self, index: usize) -> &Mutex<Slot> {
        let chunk = self.chunks[index / CHUNK].get_or_init(|| {
            let len = CHUNK.min(self.capacity - index / CHUNK * CHUNK);
            (0..len).map(|_| Mutex::default()).collect()
        });
        &chunk[index % CHUNK]
    }

    /// The samples kept, in no particular order (each slot is locked in turn,
    /// so a request sampled meanwhile may or may not be in).
    pub fn snapshot(&self) -> Vec<Sample> {
        self.chunks
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|chunk| chunk.iter())
            .filter_map(|slot| {
                let slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                slot.at.map(|at| Sample {
                    method: slot.method.clone(),
                    host: slot.host.as_deref().map(Box::from),
                    path: slot.path.as_str().into(),
                    sticky: slot.sticky.as_ref().map(|sticky| sticky.hash),
                    rendezvous: slot
                        .sticky
                        .as_ref()
                        .map_or(Box::default(), |sticky| sticky.rendezvous.as_slice().into()),
                    at,
                })
            })
            .collect()
    }
}

/// The split of `route` in force, where it reads its key, and the request's
/// key, if the route's split is sticky and the request has one.
fn sticky_key<'a>(route: &'a Route, headers: &'a HeaderMap) -> Option<(&'a Split, &'a StickyKey, &'a [u8])> {
    let split = route.backend.split()?;
    let sticky = split.sticky.as_ref()?;
    Some((split, sticky, sticky.extract(headers)?))
}

/// The host routes matched on (see `proxy::route`): the authority of an
/// absolute-form or HTTP/2 request, else `Host`, without port or trailing dot.
fn matching_host<'h>(uri: &'h Uri, headers: &'h HeaderMap) -> Option<&'h str> {
    let value = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => headers.get(header::HOST)?.to_str().ok()?,
    };
    host_for_matching(value).filter(|h| h.len() <= MAX_HOST)
}

/// `path`, cut at the last `/` at or before [`MAX_PATH`] bytes when longer
/// (a cut segment could match a literal it does not equal).
fn bounded_path(path: &str) -> &str {
    if path.len() <= MAX_PATH {
        return path;
    }
    let cut = path.as_bytes()[..=MAX_PATH].iter().rposition(|&b| b == b'/').unwrap_or(0);
    if cut == 0 {
        "/"
    } else {
        &path[..cut]
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;
    use crate::proxy::choose_route;
    use crate::table::Table;

    const CONFIG: &str = "listen: \"127.0.0.1:0\"\nupstreams:\n  a: {targets: [\"http://127.0.0.1:9\"]}\n  b: {targets: [\"http://127.0.0.1:9\"]}\nroutes:\n  - {name: users, prefix: /api/users, split: [{upstream: a, weight: 50}, {upstream: b, weight: 50}], sticky: {header: X-User-Id}}\n  - {name: comments, prefix: /api/comments, upstream: a}\n";

    fn table() -> Table {
        let metrics = crate::metrics::Metrics::new();
        let rollouts = crate::rollout::Progresses::new();
        let ctx = crate::table::Context { metrics: &metrics, previous: None, rollouts: &rollouts };
        Table::build("r.yaml", CONFIG, &ctx).expect("valid")
    }

    /// Sends a request through `sampler` as the proxy's route stage does.
    fn observe(sampler: &Sampler, table: &Table, request: &Request<()>) {
        let (method, uri, headers) = (request.method(), request.uri(), request.headers());
        let chosen = choose_route(table, method, uri, headers, |_| {});
        sampler.observe(method, uri, headers, chosen.as_ref().map(|r| (&*r.path, r.route)));
    }

    fn request(target: &str) -> Request<()> {
        Request::get(target)
            .header("host", "API.Example.com:8443")
            .header("x-user-id", "secret-user-42")
            .header("authorization", "Bearer secret-token")
            .header("cookie", "session=secret-cookie")
            .body(())
            .unwrap()
    }

    #[test]
    fn one_request_in_every_is_sampled_and_the_ring_keeps_only_the_last_capacity() {
        let (table, sampler) = (table(), Sampler::new(16, 100));
        for i in 0..16_000 {
            observe(&sampler, &table, &request(&format!("/api/comments/{i}")));
        }
        let taken = sampler.taken();
        assert!(taken.abs_diff(1000) <= 5, "one in 16: {taken}");
        let samples = sampler.snapshot();
        assert_eq!(samples.len(), 100, "bounded by the capacity");
        let newest: Vec<u32> = samples.iter().map(|s| s.path.rsplit('/').next().unwrap().parse().unwrap()).collect();
        assert!(newest.iter().all(|&i| i >= 14_000), "only recent requests are kept: {newest:?}");
    }

    #[test]
    fn a_mix_that_repeats_every_few_requests_is_sampled_in_its_proportions() {
        let (table, sampler) = (table(), Sampler::new(16, 10_000));
        for i in 0..32_000 {
            // 7 in 10 to users, in a fixed order: `n % 16` would see only even positions.
            let path = if i % 10 < 7 { "/api/users/1" } else { "/api/comments/1" };
            observe(&sampler, &table, &request(path));
        }
        let samples = sampler.snapshot();
        let users = samples.iter().filter(|s| s.path.starts_with("/api/users")).count();
        let share = users as f64 / samples.len() as f64;
        assert!((share - 0.7).abs() < 0.01, "{share} of {}", samples.len());
    }

    #[test]
    fn a_sample_keeps_no_header_query_or_key_value() {
        let (table, sampler) = (table(), Sampler::new(1, 10));
        observe(&sampler, &table, &request("/api/users/7?token=secret-query"));
        let samples = sampler.snapshot();
        let sample = &samples[0];
        assert_eq!(&*sample.path, "/api/users/7");
        assert_eq!(sample.host.as_deref(), Some("api.example.com"));
        assert!(sample.sticky.is_some(), "the sticky route's key is kept, hashed");
        let text = format!("{sample:?}");
        assert!(!text.contains("secret"), "{text}");
        let hash = StickyHash::of(&StickyKey::Header(http::HeaderName::from_static("x-user-id")), b"secret-user-42");
        assert_eq!(sample.sticky, Some(hash), "the same key hashes the same everywhere");
    }

    #[test]
    fn requests_no_route_takes_are_kept_and_refused_ones_are_not() {
        let (table, sampler) = (table(), Sampler::new(1, 10));
        observe(&sampler, &table, &request("/nowhere"));
        observe(&sampler, &table, &request("/a%2Fb"));
        let samples = sampler.snapshot();
        assert_eq!(samples.len(), 1);
        assert_eq!((&*samples[0].path, samples[0].sticky), ("/nowhere", None));
    }

    #[test]
    fn a_long_path_is_cut_at_a_segment_boundary() {
        let long = format!("/api/{}/{}", "a".repeat(1000), "b".repeat(100));
        assert_eq!(bounded_path(&long), format!("/api/{}", "a".repeat(1000)));
        assert_eq!(bounded_path(&format!("/{}", "x".repeat(2000))), "/");
        assert_eq!(bounded_path("/api/users"), "/api/users");
    }

    #[test]
    fn the_ring_is_allocated_as_it_fills_and_keeps_the_last_capacity_samples() {
        let (table, sampler) = (table(), Sampler::new(1, CHUNK + 10));
        let allocated = |s: &Sampler| s.chunks.iter().filter(|c| c.get().is_some()).count();
        assert_eq!(allocated(&sampler), 0, "nothing allocated before the first sample");
        for i in 0..CHUNK {
            observe(&sampler, &table, &request(&format!("/api/comments/{i}")));
        }
        assert_eq!((allocated(&sampler), sampler.snapshot().len()), (1, CHUNK));
        for i in CHUNK..CHUNK + 20 {
            observe(&sampler, &table, &request(&format!("/api/comments/{i}")));
        }
        let kept = sampler.snapshot();
        assert_eq!((allocated(&sampler), kept.len()), (2, CHUNK + 10), "the last chunk is 10 slots");
        assert!(kept.iter().all(|s| s.path.as_ref() != "/api/comments/0"), "the oldest sample was replaced");
        assert!(kept.iter().any(|s| s.path.as_ref() == format!("/api/comments/{}", CHUNK + 19)));
    }

    #[test]
    fn a_slot_being_read_is_skipped_rather_than_waited_for() {
        let (table, sampler) = (table(), Sampler::new(1, 1));
        let held = sampler.slot(0).lock().unwrap();
        observe(&sampler, &table, &request("/api/comments/1"));
        drop(held);
        assert_eq!(sampler.skipped(), 1);
        assert!(sampler.snapshot().is_empty());
    }
}
