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
//! idle longer than [`IDLE_TIMEOUT`] is closed instead of reused. Pools of
//! targets that left the config are emptied: the overflow at once, each
//! thread's own by a task on that thread ([`on_retired`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
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

/// Something that can wait in a pool.
pub trait Pooled: Sized + Send + 'static {
    /// Can still carry a request.
    fn is_open(&mut self) -> bool;
}

/// A connection waiting in a pool, and since when.
pub struct Idle<T> {
    conn: T,
    since: Instant,
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
/// [`on_retired`] sweeper; the overflows at their caller's
/// [`Pool::catch_up_shared`].
pub fn announce_retired(pools: &[PoolId]) {
    let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
    retired.extend_from_slice(pools);
    let count = retired.len();
    RETIRED_COUNT.store(count, Ordering::Release);
    drop(retired);
    retirements().send_replace(count);
}

/// Calls `catch_up` now and at each retirement, for ever (until the
/// process ends): a thread with no traffic still closes its idle
/// connections to removed targets.
pub async fn on_retired(mut catch_up: impl FnMut()) {
    let mut changed = retirements().subscribe();
    loop {
        catch_up();
        if changed.changed().await.is_err() {
            return;
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

    /// Keeps `conn` for the next request: in this thread's pool, or the
    /// overflow when that is full.
    pub fn release(&self, pool: PoolId, conn: T) {
        let idle = Idle { conn, since: Instant::now() };
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
    pub fn checkout(&self, pool: PoolId) -> Option<T> {
        let now = Instant::now();
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
    while queue.front().is_some_and(|oldest| now.duration_since(oldest.since) > IDLE_TIMEOUT) {
        queue.pop_front();
    }
    while let Some(Idle { mut conn, .. }) = queue.pop_back() {
        if conn.is_open() {
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

    #[test]
    fn a_connection_given_back_to_a_retired_pool_is_closed_not_kept() {
        let (kept, retired) = (PoolId::fresh(), PoolId::fresh());
        POOL.release(kept, Fake);
        announce_retired(&[retired]);
        // An answer that was still streaming when the sweeper ran ends now.
        POOL.release(retired, Fake);
        assert!(POOL.checkout(retired).is_none());
        assert!(POOL.checkout(kept).is_some());
    }
}
