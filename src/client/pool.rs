//! Per-thread pools of idle upstream connections, for any kind of
//! connection ([`Pooled`]); [`super::h1`] and [`super::body`] each keep one.
//!
//! A target's pool is found by index ([`PoolId`], resolved at config load)
//! and lives in a thread-local: no lock, and with per-core runtimes a
//! connection stays on the core that drives it.
//!
//! A thread keeps at most [`MAX_IDLE_PER_TARGET`] idle connections per
//! target; past that, connections go to a shared overflow pool (behind a
//! lock, touched only when a thread's own pool is full, or empty and about to
//! connect), which holds up to [`MAX_SHARED_IDLE_PER_TARGET`]. Without it,
//! a thread that gets more connections back than it takes out (under the
//! work-stealing scheduler a request may end on another thread than it
//! started on) would close them while another thread opened new ones: a
//! churn that fills the machine with `TIME_WAIT` sockets until connects fail.
//!
//! Idle connections are reused newest first, so surplus ones age out: one
//! idle longer than its upstream's `idle_timeout` (which travels with the
//! pool's id, [`PoolRef`]) is closed, by a sweeper task on each thread that
//! pools connections ([`sweep`]: each per-core worker and the shadow's
//! thread), or at checkout, whichever comes first. Pools of targets that
//! left the config are emptied: the overflow at once, each thread's own by
//! its sweeper. (Under the work-stealing scheduler the one sweeper task
//! runs on whichever thread wakes it, so a thread's own idle connections
//! may wait for its next checkout or release of that pool.)

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use crate::clock;

/// How long an idle connection is kept when the upstream does not say
/// (`idle_timeout:`): below the keep-alive timeout of common servers, so
/// that the proxy, not the upstream, closes an idle connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a sweeper sleeps: a connection given back while it sleeps
/// is closed at most this long after its idle timeout.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest a sweeper sleeps, so that many near expiries are taken
/// together.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(10);
/// Idle connections kept per target on each thread.
pub const MAX_IDLE_PER_TARGET: usize = 256;
/// Idle connections per target in the shared overflow pool.
pub const MAX_SHARED_IDLE_PER_TARGET: usize = 1024;

/// Where one target's idle connections live: an index into every thread's
/// pool table, resolved when the config is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId(pub usize);

impl PoolId {
    /// A pool id never handed out before. Ids are unique in the process, not
    /// just in one config: pools are per thread, and two proxies in one
    /// process (tests) must not share.
    pub fn fresh() -> PoolId {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        PoolId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// A target's pool and how long its connections may wait there idle: what
/// a target and an answer's body carry to check a connection out and give
/// it back. As small as a pointer, so bodies do not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRef {
    index: u32,
    idle_millis: u32,
}

impl PoolRef {
    /// `idle_timeout` is kept in whole milliseconds (at least 1, at most
    /// about 49 days).
    pub fn new(id: PoolId, idle_timeout: Duration) -> PoolRef {
        let idle_millis = u32::try_from(idle_timeout.as_millis()).unwrap_or(u32::MAX).max(1);
        PoolRef { index: u32::try_from(id.0).expect("fewer than 2^32 pools in a process"), idle_millis }
    }

    /// Which pool.
    pub fn id(self) -> PoolId {
        PoolId(self.index as usize)
    }

    /// How long a connection may wait idle in it.
    pub fn idle_timeout(self) -> Duration {
        Duration::from_millis(u64::from(self.idle_millis))
    }
}

/// Something that can wait in a pool.
pub trait Pooled: Sized + Send + 'static {
    /// Can still carry a request.
    fn is_open(&mut self) -> bool;
}

/// A connection waiting in a pool, and until when it may.
pub struct Idle<T> {
    conn: T,
    expires: Instant,
}

/// Idle connections of each pool, indexed by [`PoolId`], on one thread
/// (or in the overflow), and how many retirements they have caught up with.
pub struct Queues<T> {
    slots: Vec<Slot<T>>,
    seen: usize,
}

impl<T> Default for Queues<T> {
    fn default() -> Self {
        Queues::new()
    }
}

impl<T> Queues<T> {
    /// No pools yet (for the `thread_local!` and `static` that hold them).
    pub const fn new() -> Self {
        Queues { slots: Vec::new(), seen: 0 }
    }

    fn slot(&mut self, pool: PoolId) -> &mut Slot<T> {
        if self.slots.len() <= pool.0 {
            self.slots.resize_with(pool.0 + 1, Slot::default);
        }
        &mut self.slots[pool.0]
    }

    /// Retires the slots of pools retired since the last call, closing
    /// their idle connections. One relaxed load when there is nothing new.
    #[inline]
    fn catch_up(&mut self) -> Vec<Idle<T>> {
        if RETIRED_COUNT.load(Ordering::Acquire) == self.seen {
            return Vec::new();
        }
        self.retire_new()
    }

    #[cold]
    fn retire_new(&mut self) -> Vec<Idle<T>> {
        let retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
        let mut closing = Vec::new();
        for &pool in &retired[self.seen.min(retired.len())..] {
            let slot = self.slot(pool);
            slot.retired = true;
            closing.extend(slot.idle.drain(..));
        }
        self.seen = retired.len();
        closing
    }

    /// Takes out the idle connections whose time is up at `now` (for the
    /// caller to close), and tells when the next of those left expires.
    fn reap(&mut self, now: Instant) -> (Vec<Idle<T>>, Option<Instant>) {
        let mut closing = Vec::new();
        let mut next: Option<Instant> = None;
        for slot in &mut self.slots {
            // Oldest first, so expired ones are mostly at the front; not
            // strictly in order after a reload changed an idle timeout.
            let mut i = 0;
            while i < slot.idle.len() {
                let expires = slot.idle[i].expires;
                if expires <= now {
                    closing.extend(slot.idle.remove(i));
                } else {
                    next = Some(next.map_or(expires, |n| n.min(expires)));
                    i += 1;
                }
            }
        }
        (closing, next)
    }
}

/// One pool's idle connections on one thread (or in the overflow). Once
/// its target has left the config the slot is retired: a connection given
/// back to it afterwards (an answer that was still streaming when the
/// sweeper ran) is closed instead of kept where nothing would take it out.
pub struct Slot<T> {
    idle: VecDeque<Idle<T>>,
    retired: bool,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot { idle: VecDeque::new(), retired: false }
    }
}

/// One kind of idle connection: each thread's own, and the overflow.
pub struct Pool<T: 'static> {
    pub local: &'static LocalKey<RefCell<Queues<T>>>,
    pub shared: &'static Mutex<Queues<T>>,
}

/// Pools of targets that left the config, in the order they were retired.
static RETIRED: Mutex<Vec<PoolId>> = Mutex::new(Vec::new());
/// `RETIRED.len()`, readable without the lock.
static RETIRED_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Counts retirements, so that each thread's sweeper wakes for them.
fn retirements() -> &'static tokio::sync::watch::Sender<usize> {
    static SENDER: std::sync::OnceLock<tokio::sync::watch::Sender<usize>> = std::sync::OnceLock::new();
    SENDER.get_or_init(|| tokio::sync::watch::Sender::new(0))
}

/// Records that `pools` left the config. Every thread retires their slots
/// at its next release of a connection, and at once where it runs an
/// [`sweep`]er; the overflows at their caller's
/// [`Pool::catch_up_shared`].
pub fn announce_retired(pools: &[PoolId]) {
    let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
    retired.extend_from_slice(pools);
    let count = retired.len();
    RETIRED_COUNT.store(count, Ordering::Release);
    drop(retired);
    retirements().send_replace(count);
}

/// A thread's sweeper, for ever (until its runtime ends): calls
/// `catch_up` now and at each retirement, so that a thread with no traffic
/// still closes its idle connections to removed targets; and `reap` (which
/// closes expired idle connections and tells when the next expires) at
/// that next expiry, or within [`MAX_SWEEP_INTERVAL`].
pub async fn sweep(mut catch_up: impl FnMut(), mut reap: impl FnMut(Instant) -> Option<Instant>) {
    let mut changed = retirements().subscribe();
    loop {
        catch_up();
        let now = Instant::now();
        let next = reap(now)
            .map_or(now + MAX_SWEEP_INTERVAL, |at| at.clamp(now + MIN_SWEEP_INTERVAL, now + MAX_SWEEP_INTERVAL));
        tokio::select! {
            // The sender is a static: it never closes.
            _ = changed.changed() => {}
            () = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

impl<T: Pooled> Pool<T> {
    /// Retires this thread's slots of retired pools.
    pub fn catch_up_local(&self) {
        let closing = self.local.try_with(|local| local.borrow_mut().catch_up());
        drop(closing);
    }

    /// Retires the overflow's slots of retired pools (the connections are
    /// closed after the lock is let go).
    pub fn catch_up_shared(&self) {
        let closing = self.shared.lock().unwrap_or_else(|e| e.into_inner()).catch_up();
        drop(closing);
    }

    /// Closes the expired idle connections of this thread's pools and of
    /// the overflow (after the lock is let go); tells when the next of
    /// those left expires.
    pub fn reap(&self, now: Instant) -> Option<Instant> {
        let (closing, local_next) =
            self.local.try_with(|local| local.borrow_mut().reap(now)).unwrap_or((Vec::new(), None));
        drop(closing);
        let (closing, shared_next) = self.shared.lock().unwrap_or_else(|e| e.into_inner()).reap(now);
        drop(closing);
        match (local_next, shared_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Keeps `conn` for the next request: in this thread's pool, or the
    /// overflow when that is full.
    pub fn release(&self, pool: PoolRef, conn: T) {
        let idle = Idle { conn, expires: clock::now() + pool.idle_timeout() };
        let pool = pool.id();
        // `try_with`: a body dropped while its thread is exiting just closes.
        let Ok(full) = self.local.try_with(|local| {
            let mut local = local.borrow_mut();
            let _closing = local.catch_up();
            let slot = local.slot(pool);
            if slot.retired {
                return None;
            }
            if slot.idle.len() >= MAX_IDLE_PER_TARGET {
                return Some(idle);
            }
            slot.idle.push_back(idle);
            None
        }) else {
            return;
        };
        if let Some(idle) = full {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            let slot = shared.slot(pool);
            if slot.retired {
                return;
            }
            if slot.idle.len() >= MAX_SHARED_IDLE_PER_TARGET {
                slot.idle.pop_front();
            }
            slot.idle.push_back(idle);
        }
    }

    /// The newest idle connection of a pool that is still open and fresh:
    /// this thread's own first, else the overflow's.
    pub fn checkout(&self, pool: PoolRef) -> Option<T> {
        let (now, pool) = (clock::now(), pool.id());
        let local = self
            .local
            .try_with(|local| {
                local.borrow_mut().slots.get_mut(pool.0).and_then(|slot| newest_open(&mut slot.idle, now))
            })
            .ok()
            .flatten();
        local.or_else(|| {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.slots.get_mut(pool.0).and_then(|slot| newest_open(&mut slot.idle, now))
        })
    }
}

fn newest_open<T: Pooled>(queue: &mut VecDeque<Idle<T>>, now: Instant) -> Option<T> {
    while queue.front().is_some_and(|oldest| oldest.expires <= now) {
        queue.pop_front();
    }
    while let Some(Idle { mut conn, expires }) = queue.pop_back() {
        if expires > now && conn.is_open() {
            return Some(conn);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Pooled for Fake {
        fn is_open(&mut self) -> bool {
            true
        }
    }

    thread_local! {
        static LOCAL: RefCell<Queues<Fake>> = const { RefCell::new(Queues::new()) };
    }
    static SHARED: Mutex<Queues<Fake>> = Mutex::new(Queues::new());
    static POOL: Pool<Fake> = Pool { local: &LOCAL, shared: &SHARED };

    fn fresh(idle: Duration) -> PoolRef {
        PoolRef::new(PoolId::fresh(), idle)
    }

    #[test]
    fn a_connection_given_back_to_a_retired_pool_is_closed_not_kept() {
        let (kept, retired) = (fresh(DEFAULT_IDLE_TIMEOUT), fresh(DEFAULT_IDLE_TIMEOUT));
        POOL.release(kept, Fake);
        announce_retired(&[retired.id()]);
        // An answer that was still streaming when the sweeper ran ends now.
        POOL.release(retired, Fake);
        assert!(POOL.checkout(retired).is_none());
        assert!(POOL.checkout(kept).is_some());
    }

    #[test]
    fn the_reaper_closes_connections_past_their_pools_idle_timeout_and_tells_the_next_expiry() {
        let (short, long) = (fresh(Duration::from_millis(100)), fresh(Duration::from_secs(60)));
        POOL.release(short, Fake);
        POOL.release(long, Fake);
        let now = Instant::now();
        let next = POOL.reap(now).expect("two are idle");
        // (Expiries are on the coarse clock: a few ms late at most.)
        assert!(next < now + Duration::from_secs(1), "the short one expires first");
        let next = POOL.reap(now + Duration::from_millis(200)).expect("the long one is left");
        assert!(next > now + Duration::from_secs(59));
        assert!(POOL.checkout(short).is_none(), "reaped");
        assert!(POOL.checkout(long).is_some());
    }

    #[test]
    fn an_idle_timeout_is_kept_in_milliseconds_and_never_zero() {
        let id = PoolId::fresh();
        assert_eq!(PoolRef::new(id, Duration::from_millis(300)).idle_timeout(), Duration::from_millis(300));
        assert_eq!(PoolRef::new(id, Duration::from_micros(10)).idle_timeout(), Duration::from_millis(1));
        assert_eq!(PoolRef::new(id, Duration::from_secs(60)).id(), id);
    }
}
