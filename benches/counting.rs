//! What counting a request costs when every worker counts at once: the
//! Prometheus counter and histogram shared by all threads (what each
//! request wrote before), against [`strangler::metrics::RouteStats`], which
//! counts in the thread's own shard. Two threads (the bench's two workers)
//! count at the same time; the figure is the time per count. `make bench`
//! runs it.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Method, StatusCode};
use prometheus::{Histogram, HistogramOpts, IntCounter};
use strangler::metrics::Metrics;

const THREADS: usize = 2;

/// Runs `count` `iters` times on each of [`THREADS`] threads at once; the
/// time per count of one thread.
fn at_once(iters: u64, count: &(impl Fn() + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| (0..iters).for_each(|_| count()));
        }
    });
    start.elapsed()
}

fn counting(c: &mut Criterion) {
    let mut group = c.benchmark_group("count_a_request_on_2_threads");
    let elapsed = Duration::from_micros(700);
    let shared_counter = IntCounter::new("c", "c").unwrap();
    let shared_histogram = Histogram::with_opts(HistogramOpts::new("h", "h")).unwrap();
    group.bench_function("shared", |b| {
        b.iter_custom(|iters| {
            at_once(iters, &|| {
                shared_counter.inc();
                shared_histogram.observe(elapsed.as_secs_f64());
            })
        })
    });
    let metrics = Metrics::new();
    let stats = metrics.route_stats("r", "u");
    group.bench_function("per_thread", |b| {
        b.iter_custom(|iters| at_once(iters, &|| stats.record(&Method::GET, StatusCode::OK, elapsed)))
    });
    group.finish();
}

criterion_group!(benches, counting);
criterion_main!(benches);
