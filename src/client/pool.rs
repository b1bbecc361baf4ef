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

/// Idle connections of each pool, indexed by [`PoolId`].
pub type Queues<T> = Vec<Slot<T>>;

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

/// Counts retirements, so that each thread's sweeper wakes for them.
fn retirements() -> &'static tokio::sync::watch::Sender<usize> {
    static SENDER: std::sync::OnceLock<tokio::sync::watch::Sender<usize>> = std::sync::OnceLock::new();
    SENDER.get_or_init(|| tokio::sync::watch::Sender::new(0))
}

/// Records that `pools` left the config; every [`on_retired`] loop hears of them.
pub fn announce_retired(pools: &[PoolId]) {
    let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
    retired.extend_from_slice(pools);
    let count = retired.len();
    drop(retired);
    retirements().send_replace(count);
}

/// Calls `forget` with the pools retired so far, then with each new batch,
/// for ever (until the process ends).
pub async fn on_retired(mut forget: impl FnMut(&[PoolId])) {
    let mut changed = retirements().subscribe();
    let mut done = 0;
    loop {
        let batch: Vec<PoolId> = {
            let retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
            retired[done.min(retired.len())..].to_vec()
        };
        done += batch.len();
        forget(&batch);
        if changed.changed().await.is_err() {
            return;
        }
    }
}

impl<T: Pooled> Pool<T> {
    /// Drops this thread's idle connections of `pools`.
    pub fn forget_local(&self, pools: &[PoolId]) {
        let _ = self.local.try_with(|local| forget(&mut local.borrow_mut(), pools));
    }

    /// Drops the overflow's idle connections of `pools`.
    pub fn forget_shared(&self, pools: &[PoolId]) {
        forget(&mut self.shared.lock().unwrap_or_else(|e| e.into_inner()), pools);
    }

    /// Keeps `conn` for the next request: in this thread's pool, or the
    /// overflow when that is full.
    pub fn release(&self, pool: PoolId, conn: T) {
        let idle = Idle { conn, since: Instant::now() };
        // `try_with`: a body dropped while its thread is exiting just closes.
        let Ok(full) = self.local.try_with(|local| {
            let mut local = local.borrow_mut();
            let slot = slot(&mut local, pool);
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
            let slot = slot(&mut shared, pool);
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
            .try_with(|local| local.borrow_mut().get_mut(pool.0).and_then(|slot| newest_open(&mut slot.idle, now)))
            .ok()
            .flatten();
        local.or_else(|| {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.get_mut(pool.0).and_then(|slot| newest_open(&mut slot.idle, now))
        })
    }
}

/// Closes the idle connections of `pools` and retires their slots.
fn forget<T>(queues: &mut Queues<T>, pools: &[PoolId]) {
    for &pool in pools {
        *slot(queues, pool) = Slot { idle: VecDeque::new(), retired: true };
    }
}

fn slot<T>(pools: &mut Queues<T>, pool: PoolId) -> &mut Slot<T> {
    if pools.len() <= pool.0 {
        pools.resize_with(pool.0 + 1, Slot::default);
    }
    &mut pools[pool.0]
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
        static LOCAL: RefCell<Queues<Fake>> = const { RefCell::new(Vec::new()) };
    }
    static SHARED: Mutex<Queues<Fake>> = Mutex::new(Vec::new());
    static POOL: Pool<Fake> = Pool { local: &LOCAL, shared: &SHARED };

    #[test]
    fn a_connection_given_back_to_a_retired_pool_is_closed_not_kept() {
        let (kept, retired) = (PoolId::fresh(), PoolId::fresh());
        POOL.release(kept, Fake);
        POOL.forget_local(&[retired]);
        POOL.forget_shared(&[retired]);
        // An answer that was still streaming when the sweeper ran ends now.
        POOL.release(retired, Fake);
        assert!(POOL.checkout(retired).is_none());
        assert!(POOL.checkout(kept).is_some());
    }
}
