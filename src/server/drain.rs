//! A worker's drain signal: one [`Signal`] per worker, one [`Drain`] per
//! connection. When the worker stops, [`Signal::start`] asks each of its
//! connections to finish its request and close, and [`Signal::drained`]
//! waits until the last has.
//!
//! A connection waits for the signal at every idle moment, between two
//! requests, so that wait must cost next to nothing. A `watch` channel
//! (what this was) puts the waiter in the channel's list under a lock on
//! each wait and takes it out under the lock again when the next request
//! comes first: two locks a request, on a lock every connection of the
//! worker shares. Here a connection files its task's waker once, on its
//! first wait, and again only when the waker changes (it does not while the
//! same task serves the connection); a wait is then one atomic read.
//!
//! A [`Drain`] is made by [`Signal::subscribe`] before a connection is
//! served (on the accepting worker's thread, for a connection handed over
//! to another worker) and dropped when the connection ends; the number
//! alive is the worker's live connections, which the balancer compares
//! ([`super::balance`]).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use slab::Slab;
use tokio::sync::Notify;

/// One worker's side: whether it drains, and the connections that wait.
#[derive(Default)]
pub(crate) struct Signal {
    draining: AtomicBool,
    /// Live [`Drain`]s: the worker's connections.
    live: AtomicUsize,
    /// The wakers of the connections that have waited, each filed once.
    waiting: Mutex<Slab<Waker>>,
    /// Told when the last [`Drain`] of a draining worker goes.
    last_gone: Notify,
}

impl Signal {
    /// A connection's end of the signal; it counts as live until dropped.
    pub fn subscribe(self: &Arc<Self>) -> Drain {
        self.live.fetch_add(1, Ordering::Relaxed);
        Drain { signal: self.clone(), filed: None }
    }

    /// How many connections hold a [`Drain`] of this worker.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Asks every connection to finish its request and close; each waiting
    /// one is woken.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for (_, waker) in self.waiting().iter() {
            waker.wake_by_ref();
        }
    }

    /// Resolves when no connection holds a [`Drain`] any more.
    pub async fn drained(&self) {
        loop {
            let mut notified = std::pin::pin!(self.last_gone.notified());
            // Listening before the count is read: a last drop in between
            // is then not missed.
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Slab<Waker>> {
        // Poisoned only by a waker that panicked in `start`: the slab is
        // still sound.
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A connection's end of its worker's drain signal, held for exactly the
/// connection's life.
pub(crate) struct Drain {
    signal: Arc<Signal>,
    /// The waker filed in the signal's list, and its key there.
    filed: Option<(usize, Waker)>,
}

impl Drain {
    /// Whether the worker has started draining.
    pub fn is_draining(&self) -> bool {
        self.signal.draining.load(Ordering::SeqCst)
    }

    /// Ready once the worker drains; until then, `cx`'s task is woken when
    /// it starts.
    pub fn poll_draining(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_draining() {
            return Poll::Ready(());
        }
        if !self.filed.as_ref().is_some_and(|(_, filed)| filed.will_wake(cx.waker())) {
            self.file(cx.waker());
            // Filed before this second look: a drain that started between
            // the two either is seen here or wakes the waker just filed.
            if self.is_draining() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Resolves once the worker drains.
    pub async fn draining(&mut self) {
        poll_fn(|cx| self.poll_draining(cx)).await
    }

    fn file(&mut self, waker: &Waker) {
        let mut waiting = self.signal.waiting();
        let key = match &self.filed {
            Some((key, _)) => {
                waiting[*key] = waker.clone();
                *key
            }
            None => waiting.insert(waker.clone()),
        };
        drop(waiting);
        self.filed = Some((key, waker.clone()));
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Some((key, _)) = self.filed.take() {
            self.signal.waiting().remove(key);
        }
        if self.signal.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.signal.last_gone.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiting_connection_is_woken_when_draining_starts() {
        let signal = Arc::new(Signal::default());
        let mut drain = signal.subscribe();
        let waiting = tokio::spawn(async move {
            drain.draining().await;
            drain
        });
        // The connection has filed its waker (a first poll) before the drain starts.
        while signal.waiting().is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        signal.start();
        let drain = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").unwrap();
        assert!(drain.is_draining());
    }

    #[tokio::test]
    async fn a_connection_that_waits_after_the_start_sees_it_at_once() {
        let signal = Arc::new(Signal::default());
        let mut drain = signal.subscribe();
        signal.start();
        tokio::time::timeout(Duration::from_secs(5), drain.draining()).await.expect("ready at once");
        assert!(signal.waiting().is_empty(), "nothing filed for a wait that never slept");
    }

    #[tokio::test]
    async fn the_waker_is_filed_once_across_waits_and_removed_with_the_connection() {
        let signal = Arc::new(Signal::default());
        let mut drain = signal.subscribe();
        for _ in 0..3 {
            // A wait that ends some other way (the next request), as between requests.
            let waited = tokio::time::timeout(Duration::from_millis(1), drain.draining()).await;
            assert!(waited.is_err());
            assert_eq!(signal.waiting().len(), 1);
        }
        assert_eq!(signal.live(), 1);
        drop(drain);
        assert!(signal.waiting().is_empty());
        assert_eq!(signal.live(), 0);
    }

    #[tokio::test]
    async fn drained_resolves_when_the_last_connection_goes() {
        let signal = Arc::new(Signal::default());
        let (first, second) = (signal.subscribe(), signal.subscribe());
        assert_eq!(signal.live(), 2);
        signal.start();
        let waiter = {
            let signal = signal.clone();
            tokio::spawn(async move { signal.drained().await })
        };
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one connection is still live");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("drained").unwrap();
        // And at once when none is live.
        tokio::time::timeout(Duration::from_secs(5), signal.drained()).await.expect("none live");
    }
}
