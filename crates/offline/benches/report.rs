//! Report throughput: parse + aggregate diff records (records/s).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use strangler_evidence::record::{DiffKind, DiffRecord, Difference, Outcome, PrimarySide, ShadowSide};
use strangler_evidence::summary::{Summary, ViewOptions};
use strangler_offline::report::{html, input};

/// A realistic log: 95% matches, mismatches on a few fields, noise, skips, errors.
fn log(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 600);
    for i in 0..n {
        let result = match i % 100 {
            0..=94 => Outcome::Match,
            95..=97 => Outcome::Mismatch,
            98 => Outcome::Skipped,
            _ => Outcome::ShadowError,
        };
        let diffs = if result == Outcome::Mismatch {
            vec![
                Difference {
                    kind: DiffKind::Body,
                    pointer: "/created_at".into(),
                    primary: json!("2026-01-01T00:00:00Z"),
                    shadow: json!("2026-01-01T00:00:00.000Z"),
                },
                Difference {
                    kind: DiffKind::Body,
                    pointer: format!("/items/{}/email", i % 5),
                    primary: json!("a@example.com"),
                    shadow: json!("A@example.com"),
                },
            ]
        } else {
            vec![]
        };
        let r = DiffRecord {
            ts: format!(
                "2026-11-25T{:02}:{:02}:{:02}.{:03}Z",
                (i / 3_600_000) % 24,
                (i / 60_000) % 60,
                (i / 1000) % 60,
                i % 1000
            ),
            request_id: format!("01JD{i:020}"),
            shadow_request_id: None,
            id: None,
            instance: None,
            config_hash: None,
            client_ip: None,
            route: ["users-read", "comments-read", "task-comments-read"][i % 3].into(),
            endpoint: ["/api/users/{id}", "/api/comments/{id}", "/api/tasks/{id}/comments"][i % 3].into(),
            method: "GET".into(),
            path: format!("/api/users/{}", i % 5000),
            query: (i % 4 == 0).then(|| "page=2&per_page=50".to_string()),
            primary: PrimarySide {
                upstream: "legacy".into(),
                status: Some(200),
                latency_ms: Some(5.0 + (i % 97) as f64),
                body_bytes: Some(1834),
            },
            shadow: ShadowSide {
                upstream: "users".into(),
                status: Some(200),
                latency_ms: Some(3.0 + (i % 89) as f64),
                body_bytes: Some(1830),
                error: (result == Outcome::ShadowError).then(|| "connection refused".to_string()),
            },
            result,
            reason: match result {
                Outcome::Skipped => Some("too_large".into()),
                Outcome::ShadowError => Some("shadow_error".into()),
                _ => None,
            },
            diffs,
            noise: if i % 10 == 0 { vec!["/updated_at".into()] } else { vec![] },
        };
        serde_json::to_writer(&mut out, &r).unwrap();
        out.push(b'\n');
    }
    out
}

fn bench(c: &mut Criterion) {
    const N: usize = 100_000;
    let data = log(N);
    let mut group = c.benchmark_group("report");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.bench_function("parse_and_aggregate", |b| {
        b.iter(|| {
            let mut summary = Summary::new();
            input::read_log("bench", &mut &data[..], &input::Filter::default(), &mut summary, &mut |_| {}).unwrap();
            assert_eq!(summary.records(), N as u64);
            summary
        })
    });
    let mut summary = Summary::new();
    input::read_log("bench", &mut &data[..], &input::Filter::default(), &mut summary, &mut |_| {}).unwrap();
    group.throughput(Throughput::Elements(1));
    group.bench_function("view_html", |b| b.iter(|| html::render(&summary.view(&ViewOptions::default())).len()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
