//! Report throughput (records/s): parse + judge + aggregate diff records in
//! memory, and `strangler report`'s whole reading of a 1M-record JSON-lines
//! file from disk (both passes: noise evidence, then records with ids
//! de-duplicated and judged again).

use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use strangler_evidence::noise::FleetNoise;
use strangler_evidence::record::{DiffKind, DiffRecord, Difference, Outcome, PrimarySide, ShadowSide};
use strangler_evidence::summary::ViewOptions;
use strangler_offline::report::collect::{self, Collector, SeenIds};
use strangler_offline::report::query::Query;
use strangler_offline::report::source::{self, Progress};
use strangler_offline::report::{html, input};

/// A realistic log of three replicas: 95% matches, mismatches on a few
/// fields, noise, skips, errors; every record with an id, instance and config hash.
fn log(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 700);
    write_log(n, &mut out);
    out
}

fn write_log(n: usize, out: &mut impl Write) {
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
            id: Some(format!(
                "0193{:04x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
                i >> 32,
                (i >> 16) & 0xffff,
                i & 0xfff,
                i % 0xfff,
                i
            )),
            instance: Some(format!("strangler-7d9f8c6b5-{}", ["x2x9q", "k8v4w", "p3m7z"][i % 3])),
            config_hash: Some("9f2c41d7a0b3e8c5".into()),
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
        serde_json::to_writer(&mut *out, &r).unwrap();
        out.write_all(b"\n").unwrap();
    }
}

/// Parses, judges and aggregates a log held in memory.
fn read(data: &[u8]) -> strangler_evidence::summary::Summary {
    let (query, noise, seen) = (Query::default(), FleetNoise::default(), SeenIds::default());
    let mut collector = Collector::new(&query, &noise, &seen);
    input::read_log("bench", &mut &data[..], &mut collector, &mut |_| {}).unwrap();
    collector.summary
}

fn bench(c: &mut Criterion) {
    const N: usize = 100_000;
    let data = log(N);
    let mut group = c.benchmark_group("report");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.bench_function("parse_and_aggregate", |b| {
        b.iter(|| {
            let summary = read(&data);
            assert_eq!(summary.records(), N as u64);
            summary
        })
    });
    let summary = read(&data);
    group.throughput(Throughput::Elements(1));
    group.bench_function("view_html", |b| b.iter(|| html::render(&summary.view(&ViewOptions::default())).len()));
    group.finish();

    // The figure the README quotes: 1M records from a file on disk, as `strangler report FILE` reads them.
    const MILLION: usize = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadow-diffs.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    write_log(MILLION, &mut file);
    file.flush().unwrap();
    drop(file);
    let sources = source::open_all(&[path], &[]).unwrap();
    let mut group = c.benchmark_group("report_file");
    group.throughput(Throughput::Elements(MILLION as u64));
    group.sample_size(10);
    group.bench_function("read_1m_records", |b| {
        b.iter(|| {
            let summary = collect::gather(&sources, &Query::default(), &Progress::default()).unwrap();
            assert_eq!(summary.records(), MILLION as u64);
            summary
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
