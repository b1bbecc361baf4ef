//! The upstream timeout of one attempt, on a timer reused from request to
//! request instead of a new one each time.
//!
//! `tokio::time::timeout` files a new entry in tokio's timer wheel for each
//! attempt and takes it out again when the answer comes first, as it nearly
//! always does: ~580 instructions of a proxied GET. Here each thread keeps
//! the timers of finished attempts ([`KEEP`] at most), and the next attempt
//! resets one to its own deadline. Reset to a deadline later than the one the
//! wheel holds, tokio only records the new deadline (one atomic exchange);
//! when the wheel reaches the old one, it finds the entry not yet due and
//! files it again. A timer reset to an earlier deadline is moved in the
//! wheel, as a new one would be. Either way the attempt times out at its
//! own deadline, as before.
//!
//! A kept timer that was not reused before its deadline wakes, once, the
//! task that used it last: a spurious wake-up, which tasks tolerate. Kept
//! timers belong to the runtime that made them: a thread that finds timers
//! of another runtime (tests start one per test) drops them.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::runtime::{Handle, Id};
use tokio::task::coop;
use tokio::time::{Instant, Sleep};

/// Timers a thread keeps for its next attempts: more than the attempts a
/// worker usually has in flight at once, few enough to be small (~100 bytes each).
const KEEP: usize = 256;

thread_local! {
    static KEPT: RefCell<Kept> = const { RefCell::new(Kept { runtime: None, timers: Vec::new() }) };
}

/// A thread's idle timers, and the runtime whose timer wheel holds them.
struct Kept {
    runtime: Option<Id>,
    timers: Vec<Pin<Box<Sleep>>>,
}

/// `future`'s output, or `None` when `timeout` passed first: the future is
/// polled first, and the timer outside the task's budget when the future
/// used it up, as `tokio::time::timeout` does. Takes the future pinned
/// where its caller keeps it: it is not moved again.
pub(super) async fn within<F: Future>(timeout: Duration, mut future: Pin<&mut F>) -> Option<F::Output> {
    let Some(deadline) = Instant::from_std(crate::clock::now()).checked_add(timeout) else {
        return Some(future.await);
    };
    let mut timer = Lent::take(deadline);
    std::future::poll_fn(|cx| {
        let had_budget = coop::has_budget_remaining();
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        let sleep = timer.sleep().as_mut();
        let fired = if had_budget && !coop::has_budget_remaining() {
            // The future used up the task's budget: the timer is polled
            // outside it (as `tokio::time::timeout` does), or a future that
            // always used it up would never time out.
            Pin::new(&mut coop::unconstrained(sleep)).poll(cx)
        } else {
            sleep.poll(cx)
        };
        fired.map(|()| None)
    })
    .await
}

/// A kept timer lent to one attempt; given back when the attempt ends,
/// however it ends.
struct Lent {
    runtime: Id,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Lent {
    /// A kept timer reset to `deadline`, or a new one.
    fn take(deadline: Instant) -> Self {
        let runtime = Handle::current().id();
        let kept = KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.runtime != Some(runtime) {
                kept.timers.clear();
                kept.runtime = Some(runtime);
            }
            kept.timers.pop()
        });
        let sleep = match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Lent { runtime, sleep: Some(sleep) }
    }

    fn sleep(&mut self) -> &mut Pin<Box<Sleep>> {
        self.sleep.as_mut().expect("a lent timer is held until dropped")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else { return };
        // `try_`: a task dropped as its thread exits finds no thread-locals.
        let _ = KEPT.try_with(|kept| {
            let Ok(mut kept) = kept.try_borrow_mut() else { return };
            if kept.runtime == Some(self.runtime) && kept.timers.len() < KEEP {
                kept.timers.push(sleep);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A future that is pending at its first poll and ready at its second.
    fn ready_on_second_poll() -> impl Future<Output = ()> {
        let mut polled = false;
        std::future::poll_fn(move |cx| {
            if polled {
                return Poll::Ready(());
            }
            polled = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
    }

    /// How long `within(timeout, pending)` took to give up.
    async fn gave_up_after(timeout: Duration) -> Duration {
        let start = std::time::Instant::now();
        let never = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(within(timeout, never).await, None);
        start.elapsed()
    }

    #[tokio::test]
    async fn a_reused_timer_times_out_at_its_new_deadline_later_or_earlier_than_its_last() {
        // Filed in the wheel at 50 ms, then kept: reset to 300 ms it must not
        // fire at 50.
        let answered = std::pin::pin!(ready_on_second_poll());
        assert_eq!(within(Duration::from_millis(50), answered).await, Some(()));
        assert_eq!(KEPT.with(|k| k.borrow().timers.len()), 1, "the timer was kept");
        let took = gave_up_after(Duration::from_millis(300)).await;
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
        // Filed at 60 s, then kept: reset to 100 ms it must fire at 100.
        let answered = std::pin::pin!(ready_on_second_poll());
        assert_eq!(within(Duration::from_secs(60), answered).await, Some(()));
        let took = gave_up_after(Duration::from_millis(100)).await;
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn a_future_that_always_uses_up_the_tasks_budget_still_times_out() {
        let busy = std::pin::pin!(async {
            loop {
                tokio::task::coop::consume_budget().await;
            }
        });
        let gave_up = tokio::time::timeout(Duration::from_secs(10), within(Duration::from_millis(50), busy)).await;
        assert_eq!(gave_up.ok(), Some(None), "the attempt's own timeout fired");
    }

    #[test]
    fn timers_of_another_runtime_are_dropped_not_used() {
        for _ in 0..2 {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            runtime.block_on(async {
                let answered = std::pin::pin!(ready_on_second_poll());
                assert_eq!(within(Duration::from_secs(60), answered).await, Some(()));
                let took = gave_up_after(Duration::from_millis(20)).await;
                assert!(took >= Duration::from_millis(20), "{took:?}");
            });
        }
    }
}
