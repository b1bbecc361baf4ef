//! What every request counts, kept per worker thread and added up when
//! read.
//!
//! An atomic that every worker writes on every request is a cache line
//! passed from core to core each time: the writer waits for the other
//! core's copy to be invalidated, on each of the request's counts. A
//! thread's own shard stays in its own core's cache. The in-flight gauge
//! ([`super::InFlightGauge`]) and each route's request counts and latency
//! ([`super::RouteStats`]) count here; a read of the metrics first adds the
//! shards up into the Prometheus series ([`super::Metrics::gather`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Shards of each count: threads past this many share them (still
/// correct, only contended again).
const SHARDS: usize = 16;

/// This thread's shard: threads are numbered as they first count.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|index| *index)
}

/// A value on cache lines of its own (128 bytes: Intel's prefetcher
/// fetches lines in pairs).
#[repr(align(128))]
struct Line<T>(T);

/// One `T` per thread, made on the thread's first use (most counts are
/// used by a few threads: the workers).
pub struct PerThread<T> {
    shards: [OnceLock<Box<Line<T>>>; SHARDS],
}

impl<T> PerThread<T> {
    pub fn new() -> Self {
        PerThread { shards: std::array::from_fn(|_| OnceLock::new()) }
    }

    /// This thread's `T`, made by `make` on its first use.
    pub fn local(&self, make: impl FnOnce() -> T) -> &T {
        &self.shards[shard()].get_or_init(|| Box::new(Line(make()))).0
    }

    /// Every thread's `T` made so far.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().filter_map(|shard| shard.get().map(|line| &line.0))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    #[test]
    fn each_thread_counts_in_its_own_shard_and_the_sum_is_every_count() {
        let counts: PerThread<AtomicU64> = PerThread::new();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counts.local(AtomicU64::default).fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counts.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>(), 4000);
        assert!(counts.iter().count() >= 2, "the threads did not all share one shard");
        let first = counts.iter().next().unwrap() as *const AtomicU64 as usize;
        assert_eq!(first % 128, 0, "a shard starts a cache line of its own");
    }
}
