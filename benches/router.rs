//! Route lookup cost at 10, 1,000 and 10,000 routes: the trie must make the
//! three cost about the same. `make bench` runs it.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use strangler::router::{RouteKey, Router};

/// A table shaped like a real one: many services, each with nested
/// resources, one wildcard route per service, and a catch-all.
fn table(n: usize) -> Router<usize> {
    let mut entries = vec![(RouteKey { prefix: "/".into(), host: None, methods: None }, 0)];
    for i in 1..n {
        let prefix = match i % 3 {
            0 => format!("/api/svc{}/items", i / 3),
            1 => format!("/api/svc{}/items/*/notes", i / 3),
            _ => format!("/api/svc{}", i / 3),
        };
        entries.push((RouteKey { prefix, host: None, methods: None }, i));
    }
    Router::new(entries).unwrap()
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 10_000] {
        let router = table(n);
        let paths = ["/api/svc1/items/42/notes/7", "/api/svc2/other/thing", "/static/app.js", "/api/svc3/items?page=2"];
        group.bench_with_input(BenchmarkId::from_parameter(n), &router, |b, router| {
            b.iter(|| {
                for path in paths {
                    black_box(router.lookup(black_box(path), None, &Method::GET));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
