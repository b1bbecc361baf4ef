//! How fast `strangler report --from postgres://…` reads: 1,000,000 records
//! generated in a throwaway PostgreSQL server (the tests' own, from Debian's
//! package), then read back with [`strangler_store::read`] and summarized as
//! the report does. Fails when the read takes 10 s or more.
//!
//! `cargo bench -p strangler-store --bench read` (part of `make bench`);
//! `STORE_BENCH_RECORDS=N` changes the count.

#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use strangler_evidence::record::{DiffKind, Outcome};
use strangler_evidence::summary::Summary;
use strangler_store::tokio_postgres;

const LIMIT: Duration = Duration::from_secs(10);

fn main() {
    // `cargo bench` passes `--bench`; a filter that names another bench skips this one.
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"read".contains(a.as_str())) {
        return;
    }
    let count: u64 = std::env::var("STORE_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let server = postgres::Postgres::start();
    let dsn = server.dsn_with_password();
    let started = Instant::now();
    fill(&dsn, count);
    eprintln!("generated {count} records in the store in {:.1?}", started.elapsed());

    let started = Instant::now();
    let mut read = 0u64;
    strangler_store::read(&dsn, &strangler_store::Query::default(), |_| read += 1).expect("read");
    eprintln!("read and parsed alone (no summary): {:.2} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let mut summary = Summary::default();
    let stats = strangler_store::read(&dsn, &strangler_store::Query::default(), |r| summary.add(&r)).expect("read");
    let took = started.elapsed();
    assert_eq!(stats.rows, count);
    let rate = count as f64 / took.as_secs_f64();
    println!(
        "store read: {count} records read and summarized in {:.2} s ({:.0} records/s; limit {} s)",
        took.as_secs_f64(),
        rate,
        LIMIT.as_secs()
    );
    if count >= 1_000_000 && took >= LIMIT {
        eprintln!("too slow: 1M records must be read in under {} s", LIMIT.as_secs());
        std::process::exit(1);
    }
    report_end_to_end(&dsn, count);
}

/// The same read through `strangler report --from` (both passes, ids
/// counted once, records judged again), when a release binary is there:
/// `STRANGLER_BIN`, else the workspace's `target/release/strangler`.
fn report_end_to_end(dsn: &str, count: u64) {
    let bin = std::env::var_os("STRANGLER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/strangler"));
    if !bin.exists() {
        println!("strangler report --from: no release binary at {} (make release), not measured", bin.display());
        return;
    }
    let started = Instant::now();
    let out = std::process::Command::new(&bin).args(["report", "--format", "json", "--from", dsn]).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "report: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["totals"]["sampled"], count);
    println!("strangler report --from postgres://…: {count} records in {:.2} s", took.as_secs_f64());
}

/// `count` realistic records (one in fifty a mismatch with two differing
/// fields), made from one template by the server itself.
fn fill(dsn: &str, count: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (mut client, connection) = dsn.parse::<tokio_postgres::Config>().unwrap().connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        strangler_store::schema::migrate(&mut client).await.unwrap();
        let mut record = strangler_evidence::testkit::record(
            0,
            "users",
            Outcome::Match,
            vec![
                (DiffKind::Body, "/email", "a@example.com".into(), "A@example.com".into()),
                (DiffKind::Header, "cache-control", "no-cache".into(), "max-age=0".into()),
            ],
        );
        record.instance = Some("pod-a".into());
        record.config_hash = Some("9f2c4e1d2b7a".repeat(5));
        record.client_ip = Some("10.1.2.3".into());
        record.query = Some("page=2".into());
        let mismatch = serde_json::to_string(&record).unwrap();
        record.diffs.clear();
        let matched = serde_json::to_string(&record).unwrap();
        client
            .execute(
                "INSERT INTO shadow_records (id, ts, route, endpoint, instance, config_hash, result, record)
                 SELECT gen_random_uuid(), now() - make_interval(secs => i / 100.0), 'users', '/api/users/{id}', 'pod-a', 'h',
                        CASE WHEN i % 50 = 0 THEN 'mismatch' ELSE 'match' END,
                        jsonb_set(jsonb_set(
                            CASE WHEN i % 50 = 0 THEN ($2::text)::jsonb || '{\"result\": \"mismatch\"}' ELSE ($3::text)::jsonb END,
                            '{request_id}', to_jsonb('req-' || i)),
                            '{ts}', to_jsonb(to_char((now() - make_interval(secs => i / 100.0)) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')))
                 FROM generate_series(1, $1::bigint) AS i",
                &[&(count as i64), &mismatch, &matched],
            )
            .await
            .unwrap();
        client.batch_execute("VACUUM ANALYZE shadow_records").await.unwrap();
    });
}
