//! Cheap clock readings for the deadlines a few milliseconds do not change:
//! keep-alive and pool idle expiry, upstream timeouts, ejections, the retry
//! budget's window.
//!
//! A precise reading (`Instant::now()`, `SystemTime::now()`: the vDSO reads
//! the TSC) costs ~23 ns on the VMs we measure on, and a proxied GET made
//! seven of them. The kernel's coarse clocks (`CLOCK_MONOTONIC_COARSE`,
//! `CLOCK_REALTIME_COARSE`) return the time of its last tick instead: a read
//! of the vDSO's data page, ~5 ns, behind by less than a tick (1–4 ms,
//! [`resolution`]). nginx makes the same trade: its timers read a time it
//! caches once per turn of its event loop.
//!
//! Readings here are not early: a deadline made from one is at least as
//! late as one made from the precise clock, and at most two ticks later,
//! so a timeout does not fire before its time. One exception: the kernel's
//! ticks can themselves run late on a VM (the host has not run the vCPU
//! that keeps time), and the coarse clock then lags by that delay too; a
//! reading is then early by what the tick was late beyond one tick (a unit
//! test saw 1 ms, once, with both cores busy), and a timeout of seconds
//! fires that much early. Latencies (metrics, the access log's
//! `duration_us`) keep the precise clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::time::{clock_getres, clock_gettime, ClockId, Timespec};

/// The coarse clock's step: how far behind the true time a reading may be.
pub fn resolution() -> Duration {
    static RESOLUTION: OnceLock<Duration> = OnceLock::new();
    *RESOLUTION.get_or_init(|| duration(clock_getres(ClockId::MonotonicCoarse)))
}

/// Now, or a little later (by less than two [`resolution`]s), as an
/// [`Instant`] comparable with precise ones.
pub fn now() -> Instant {
    // The coarse clock's reading and a precise instant just after it: the
    // coarse clock's progress since, added to that instant, is an instant.
    // The pair is taken once. The reading now may lag by up to a tick: one
    // tick added makes the sum never early (and the lag of the first
    // reading makes it up to two ticks late).
    // In whole nanoseconds: plain integer arithmetic, where `Duration`'s
    // keeps seconds and nanoseconds apart and carries between them at each
    // step (a third of this function's ~70 instructions, four times a GET).
    static BASE: OnceLock<(u64, Instant)> = OnceLock::new();
    let (coarse, precise) = *BASE.get_or_init(|| {
        let coarse = monotonic_coarse_nanos();
        (coarse, Instant::now() + resolution())
    });
    precise + Duration::from_nanos(monotonic_coarse_nanos().saturating_sub(coarse))
}

/// Milliseconds since the Unix epoch, at the kernel's last tick plus one
/// (so not early, but for a late tick: see above): for deadlines that
/// threads share as plain numbers.
pub fn unix_ms() -> u64 {
    let now = duration(clock_gettime(ClockId::RealtimeCoarse)) + resolution();
    now.as_millis() as u64
}

fn monotonic_coarse_nanos() -> u64 {
    let t = clock_gettime(ClockId::MonotonicCoarse);
    (t.tv_sec.max(0) as u64) * 1_000_000_000 + t.tv_nsec.clamp(0, 999_999_999) as u64
}

fn duration(t: Timespec) -> Duration {
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How late a tick may be in these tests (two ticks): on a VM with both
    /// cores busy, one was seen 1 ms late (see the module doc).
    const LATE_TICKS: u32 = 2;

    #[test]
    fn a_coarse_reading_is_not_early_and_at_most_two_ticks_late() {
        let tick = resolution();
        assert!(tick > Duration::ZERO && tick <= Duration::from_millis(10), "{tick:?}");
        for _ in 0..1000 {
            let before = Instant::now();
            let coarse = now();
            let after = Instant::now();
            assert!(coarse + LATE_TICKS * tick >= before, "early by {:?}", before - coarse);
            assert!(coarse <= after + 2 * tick, "late by {:?}", coarse - after);
        }
    }

    #[test]
    fn the_coarse_wall_clock_is_not_early_and_at_most_two_ticks_late() {
        let ms = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let tick = resolution().as_millis() as u64 + 1;
        for _ in 0..1000 {
            let before = ms(std::time::SystemTime::now());
            let coarse = unix_ms();
            let after = ms(std::time::SystemTime::now());
            let early_bound = before.saturating_sub(u64::from(LATE_TICKS) * tick);
            assert!(coarse >= early_bound && coarse <= after + 2 * tick, "{before} <= {coarse} <= {after} + 2 ticks");
        }
    }

    #[test]
    fn coarse_readings_never_go_back() {
        let mut last = now();
        for _ in 0..10_000 {
            let next = now();
            assert!(next >= last);
            last = next;
        }
    }
}
