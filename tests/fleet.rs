//! The fleet store: replicas of the real binary share one real PostgreSQL
//! server (Debian's, started per test on an ephemeral port): one report for
//! the fleet, noise learned by one replica used by all, a database outage
//! that clients never feel, migrations applied once however many replicas
//! start at once, and retention that deletes old rows and only those.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strangler_store::tokio_postgres;

use crate::support::*;

/// A config whose routes `/api/users` and `/api/orders` answer from
/// `legacy` and shadow to `users-new` / `orders-new`, with records going
/// to `log` and to the store (`store_lines`: the lines of `shadow:` about
/// it). The test upstreams name themselves in `X-Upstream`, ignored here.
fn fleet_config(
    legacy: &str,
    users_new: &str,
    orders_new: &str,
    log: &Path,
    store_lines: &str,
    users_shadow: &str,
) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\n\
         shadow:\n  log: {log}\n{store_lines}\
         upstreams:\n  legacy:\n    targets: [\"{legacy}\"]\n  users-new:\n    targets: [\"{users_new}\"]\n  orders-new:\n    targets: [\"{orders_new}\"]\n\
         routes:\n\
         \x20 - name: users\n    prefix: /api/users\n    upstream: legacy\n    shadow:\n      upstream: users-new\n      timeout: 2s\n      ignore_headers: [x-upstream]\n{users_shadow}\
         \x20 - name: orders\n    prefix: /api/orders\n    upstream: legacy\n    shadow:\n      upstream: orders-new\n      timeout: 2s\n      ignore_headers: [x-upstream]\n",
        log = log.display(),
    )
}

/// A replica: the real binary, named `pod` (as Kubernetes' `POD_NAME`), with its own config file.
async fn replica(pod: &str, text: &str) -> (BinaryProxy, ConfigDir) {
    let dir = ConfigDir::new(text);
    let proxy = BinaryProxy::start_with_env(&dir.path(), &["--threads", "1"], &[("POD_NAME", pod)]).await;
    (proxy, dir)
}

async fn connect(dsn: &str) -> tokio_postgres::Client {
    let (client, connection) =
        dsn.parse::<tokio_postgres::Config>().unwrap().connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// One number from the database (0 while the table does not exist yet).
async fn scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    match client.query_one(sql, &[]).await {
        Ok(row) => row.get(0),
        Err(_) => 0,
    }
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    get(admin, "/metrics").await.text()
}

/// `strangler report --format json ARGS...`, its JSON.
fn report(args: &[&str]) -> Value {
    let out =
        std::process::Command::new(binary()).arg("report").args(args).args(["--format", "json"]).output().unwrap();
    assert!(out.status.success(), "report failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn two_replicas_sharing_a_store_make_one_report_of_exactly_what_both_shadowed() {
    let pg = Postgres::start();
    let legacy = TestUpstream::start("legacy", Behaviour::json(json!({"id": 1, "name": "ada"}))).await;
    let users_new = TestUpstream::start("users-new", Behaviour::json(json!({"id": 1, "name": "ada"}))).await;
    let orders_new = TestUpstream::start("orders-new", Behaviour::json(json!({"id": 1, "name": "Ada"}))).await;
    let dir = tempfile::tempdir().unwrap();
    // The password comes from a file, as a mounted Secret gives it.
    let password = dir.path().join("password");
    std::fs::write(&password, format!("{PG_PASSWORD}\n")).unwrap();
    let store = format!("  store: {}\n  password_file: {}\n", pg.dsn(), password.display());
    let config = |name: &str| {
        fleet_config(&legacy.url(), &users_new.url(), &orders_new.url(), &dir.path().join(name), &store, "")
    };
    let (a, _a_dir) = replica("pod-a", &config("a.jsonl")).await;
    let (b, _b_dir) = replica("pod-b", &config("b.jsonl")).await;
    for (proxy, users, orders) in [(&a, 12, 8), (&b, 10, 5)] {
        for i in 0..users {
            assert_eq!(get(proxy.addr, &format!("/api/users/{i}")).await.status, 200);
        }
        for i in 0..orders {
            assert_eq!(get(proxy.addr, &format!("/api/orders/{i}")).await.status, 200);
        }
    }
    let db = connect(&pg.dsn_with_password()).await;
    wait_for(Duration::from_secs(20), "35 records in the store", || async {
        scalar(&db, "SELECT count(*) FROM shadow_records").await == 35
    })
    .await;

    let fleet = report(&["--from", &pg.dsn_with_password()]);
    assert_eq!(
        fleet["totals"],
        json!({"sampled": 35, "compared": 35, "match": 22, "mismatch": 13, "shadow_error": 0, "skipped": 0}),
        "{fleet}"
    );
    let routes = fleet["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2, "{fleet}");
    assert!(routes.iter().all(|r| r["verdict"]["ready"] == false), "35 samples are too few: {fleet}");
    let users = report(&["--from", &pg.dsn_with_password(), "--route", "users"]);
    assert_eq!(users["totals"]["sampled"], 22, "{users}");
    let pod_b = report(&["--from", &pg.dsn_with_password(), "--instance", "pod-b"]);
    assert_eq!(pod_b["totals"]["sampled"], 15, "{pod_b}");
    // A diff log given as well as the store holds records already counted.
    let a_log = dir.path().join("a.jsonl").display().to_string();
    let with_log = report(&["--from", &pg.dsn_with_password(), &a_log]);
    assert_eq!(with_log["totals"], fleet["totals"], "{with_log}");

    // Every row names its replica and the config version it was routed by.
    let instances = db.query("SELECT instance, count(*) FROM shadow_records GROUP BY 1 ORDER BY 1", &[]).await.unwrap();
    let instances: Vec<(String, i64)> = instances.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(instances, [("pod-a".to_string(), 20), ("pod-b".to_string(), 15)]);
    let hash = get(a.admin, "/readyz").await.json()["config_hash"].as_str().unwrap().to_string();
    assert_eq!(scalar(&db, &format!("SELECT count(*) FROM shadow_records WHERE config_hash = '{hash}'")).await, 20);
    // The diff logs are written as well, with the same ids.
    let line = std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap();
    let first: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(first["instance"], "pod-a");
    let id = first["id"].as_str().unwrap();
    assert_eq!(scalar(&db, &format!("SELECT count(*) FROM shadow_records WHERE id = '{id}'")).await, 1);
    assert!(!a.log_text().contains(PG_PASSWORD) && !b.log_text().contains(PG_PASSWORD), "a password in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_for_ten_seconds_never_fails_or_slows_a_client_and_writing_resumes() {
    let mut pg = Postgres::start();
    let body = json!({"id": 1, "name": "ada"});
    let legacy = TestUpstream::start("legacy", Behaviour::json(body.clone())).await;
    let users_new = TestUpstream::start("users-new", Behaviour::json(body.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    // A small queue, so that ten seconds of traffic overflow it.
    let store = format!("  store: {}\n  store_queue: 50\n", pg.dsn_with_password());
    let text = fleet_config(&legacy.url(), &users_new.url(), &users_new.url(), &dir.path().join("d.jsonl"), &store, "");
    let (proxy, _config) = replica("pod-a", &text).await;
    let db_dsn = pg.dsn_with_password();
    let db = connect(&db_dsn).await;
    wait_for(Duration::from_secs(10), "the store is up", || async {
        metric_sum(&metrics(proxy.admin).await, "strangler_store_up", &[]) == 1.0
    })
    .await;

    // Steady load from four clients, for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (addr, stop) = (proxy.addr, stop.clone());
            tokio::spawn(async move {
                let client = http1();
                let mut seen = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 20_000 {
                    let started = Instant::now();
                    let request = req(http::Method::GET, addr, &format!("/api/users/{c}-{i}"));
                    let r = send(&client, request.body(Default::default()).unwrap()).await;
                    seen.push((started, started.elapsed(), r.map(|r| r.status.as_u16())));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored_before = scalar(&db, "SELECT count(*) FROM shadow_records").await;
    assert!(stored_before > 0, "nothing written before the outage");
    let down_at = Instant::now();
    pg.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let up_at = Instant::now();
    let up_at_wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    pg.restart();
    wait_for(Duration::from_secs(15), "the store is up again", || async {
        metric_sum(&metrics(proxy.admin).await, "strangler_store_up", &[]) == 1.0
    })
    .await;
    let back_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end_at = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }

    let failed: Vec<_> = seen.iter().filter(|(_, _, r)| *r != Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let p99 = |from: Instant, to: Instant| {
        let mut took: Vec<Duration> = seen.iter().filter(|(at, _, _)| *at >= from && *at < to).map(|s| s.1).collect();
        took.sort();
        assert!(took.len() > 100, "only {} requests in a phase", took.len());
        took[took.len() * 99 / 100]
    };
    // The machine's own noise is measured on both sides of the outage.
    let before = p99(down_at - Duration::from_secs(3), down_at);
    let during = p99(down_at, up_at);
    let after = p99(back_at, end_at);
    eprintln!("client p99: {before:?} before the outage, {during:?} during it, {after:?} after it");
    assert!(
        during <= before.max(after).max(Duration::from_millis(2)) * 3 + Duration::from_millis(20),
        "p99 {during:?} while the database was down, {before:?} before, {after:?} after"
    );

    // Dropped records are counted; the rest are written once it is back,
    // and every shadowed request is one or the other.
    let sent = seen.len() as f64;
    let db = {
        drop(db);
        connect(&db_dsn).await
    };
    wait_for(Duration::from_secs(30), "every record written or counted as dropped", || async {
        let text = metrics(proxy.admin).await;
        let recorded = metric_sum(&text, "strangler_shadow_requests_total", &[]);
        let dropped = metric_sum(&text, "strangler_shadow_records_dropped_total", &[("reason", "store_unavailable")]);
        let stored = scalar(&db, "SELECT count(*) FROM shadow_records").await as f64;
        recorded == sent && stored + dropped == sent
    })
    .await;
    let text = metrics(proxy.admin).await;
    assert!(metric_sum(&text, "strangler_shadow_records_dropped_total", &[("reason", "store_unavailable")]) > 0.0);
    assert_eq!(metric_sum(&text, "strangler_store_up", &[]), 1.0);
    let after_outage =
        scalar(&db, &format!("SELECT count(*) FROM shadow_records WHERE ts >= to_timestamp({up_at_wall})")).await;
    assert!(after_outage > 0, "nothing written after the database came back");
    proxy.wait_for_log("shadow store reachable again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_replicas_starting_at_once_migrate_the_schema_once() {
    let pg = Postgres::start();
    let up = TestUpstream::start("legacy", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("  store: {}\n", pg.dsn_with_password());
    // Records to the store only: no diff log.
    let text = fleet_config(&up.url(), &up.url(), &up.url(), Path::new("off"), &store, "");
    let text = &text;
    let replicas =
        futures_util::future::join_all((0..10).map(|i| async move { replica(&format!("pod-{i}"), text).await })).await;
    for (proxy, _) in &replicas {
        wait_for(Duration::from_secs(20), "the store is up on every replica", || async {
            metric_sum(&metrics(proxy.admin).await, "strangler_store_up", &[]) == 1.0
        })
        .await;
    }
    let db = connect(&pg.dsn_with_password()).await;
    let versions =
        db.query("SELECT version, count(*) FROM schema_migrations GROUP BY 1 ORDER BY 1", &[]).await.unwrap();
    let versions: Vec<(i32, i64)> = versions.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected: Vec<(i32, i64)> = strangler_store::schema::MIGRATIONS.iter().map(|m| (m.0, 1)).collect();
    assert_eq!(versions, expected);
    let logs: Vec<String> = replicas.iter().map(|(p, _)| p.log_text()).collect();
    let applied = logs.iter().map(|l| l.matches("store schema migration applied").count()).sum::<usize>();
    assert_eq!(applied, strangler_store::schema::MIGRATIONS.len(), "each migration applied by one replica");
    for log in &logs {
        assert!(!log.contains("ERROR") && !log.contains("cannot reach the shadow store"), "{log}");
    }
    for (i, (proxy, _)) in replicas.iter().enumerate() {
        assert_eq!(get(proxy.addr, &format!("/api/users/{i}")).await.status, 200);
    }
    wait_for(Duration::from_secs(20), "10 records in the store", || async {
        scalar(&db, "SELECT count(*) FROM shadow_records").await == 10
    })
    .await;
    assert!(
        !repo_root().join("off").exists() && std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "log: off wrote a file"
    );
}

#[tokio::test]
async fn retention_deletes_rows_past_it_and_only_those() {
    let pg = Postgres::start();
    let dsn = pg.dsn_with_password();
    let mut db = connect(&dsn).await;
    strangler_store::schema::migrate(&mut db).await.unwrap();
    for (age_days, n) in [(20, 120), (15, 30), (13, 40), (0, 50)] {
        db.execute(
            "INSERT INTO shadow_records (id, ts, route, endpoint, instance, config_hash, result, record)
             SELECT gen_random_uuid(), now() - make_interval(days => $1) + make_interval(secs => i), 'users', '/u', 'old-pod', 'h', 'match', '{}'
             FROM generate_series(1, $2) AS i",
            &[&age_days, &n],
        )
        .await
        .unwrap();
    }
    let up = TestUpstream::start("legacy", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("  store: {dsn}\n  retention: 14d\n");
    let text = fleet_config(&up.url(), &up.url(), &up.url(), &dir.path().join("r.jsonl"), &store, "");
    let (a, _a) = replica("pod-a", &text).await;
    let (b, _b) = replica("pod-b", &text).await;
    wait_for(Duration::from_secs(20), "rows older than 14 days deleted", || async {
        scalar(&db, "SELECT count(*) FROM shadow_records WHERE ts < now() - interval '14 days'").await == 0
    })
    .await;
    assert_eq!(scalar(&db, "SELECT count(*) FROM shadow_records").await, 90, "the 13-day-old and new rows stay");
    let deleted = |text: String| metric_sum(&text, "strangler_store_retention_deleted_total", &[]);
    assert_eq!(deleted(metrics(a.admin).await) + deleted(metrics(b.admin).await), 150.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_one_replica_learns_is_used_by_a_replica_that_never_probed_within_seconds() {
    let pg = Postgres::start();
    let pg_dsn = pg.dsn_with_password();
    // Every answer carries a new `nonce`; otherwise the two sides agree.
    let legacy = TestUpstream::start("legacy", Behaviour::Varying).await;
    let users_new = TestUpstream::start("users-new", Behaviour::Varying).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("  store: {}\n", pg.dsn_with_password());
    let config = |name: &str, users_shadow: &str| {
        fleet_config(&legacy.url(), &users_new.url(), &users_new.url(), &dir.path().join(name), &store, users_shadow)
    };
    // A asks the primary twice (and so learns the noise); B and C never do.
    let (a, _a) = replica("pod-a", &config("a.jsonl", "      noise: legacy\n")).await;
    let (b, _b) = replica("pod-b", &config("b.jsonl", "")).await;
    let (c, _c) = replica("pod-c", &config("c.jsonl", "")).await;
    let db = connect(&pg.dsn_with_password()).await;
    // C answers before anyone has learned the noise: its records say mismatch.
    for i in 0..5 {
        assert_eq!(get(c.addr, &format!("/api/users/{i}")).await.status, 200);
    }
    wait_for(Duration::from_secs(20), "C's 5 mismatches in the store", || async {
        scalar(&db, "SELECT count(*) FROM shadow_records WHERE result = 'mismatch'").await == 5
    })
    .await;
    let noise_fields = |text: String| metric_sum(&text, "strangler_shadow_noise_fields", &[("route", "users")]);
    assert_eq!(get(a.addr, "/api/users/1").await.status, 200);
    wait_for(Duration::from_secs(10), "A learns the noise", || async { noise_fields(metrics(a.admin).await) == 1.0 })
        .await;
    let learned_at = Instant::now();
    wait_for(Duration::from_secs(10), "B knows A's noise", || async { noise_fields(metrics(b.admin).await) == 1.0 })
        .await;
    assert!(learned_at.elapsed() < Duration::from_secs(5), "B took {:?}", learned_at.elapsed());
    for i in 0..10 {
        assert_eq!(get(b.addr, &format!("/api/users/{i}")).await.status, 200);
        assert_eq!(get(a.addr, &format!("/api/users/{i}")).await.status, 200);
    }
    wait_for(Duration::from_secs(20), "26 records in the store", || async {
        scalar(&db, "SELECT count(*) FROM shadow_records").await == 26
    })
    .await;
    assert_eq!(scalar(&db, "SELECT count(*) FROM shadow_records WHERE result = 'match'").await, 21);
    let row =
        db.query_one("SELECT record::text FROM shadow_records WHERE instance = 'pod-b' LIMIT 1", &[]).await.unwrap();
    let b_record: Value = serde_json::from_str(row.get(0)).unwrap();
    assert_eq!(b_record["noise"], json!(["/nonce"]), "B names the field it left out: {b_record}");
    // The live views of A and B agree, and the fleet report judges every
    // record with the fleet's noise: C's, written before anyone learned it, too.
    for (admin, n) in [(a.admin, 11), (b.admin, 10)] {
        let view = get(admin, "/shadow?min_samples=1").await.json();
        assert_eq!(
            (view["totals"]["match"].as_u64(), view["totals"]["mismatch"].as_u64()),
            (Some(n), Some(0)),
            "{view}"
        );
    }
    let fleet = report(&["--from", &pg.dsn_with_password()]);
    assert_eq!(
        (fleet["totals"]["match"].as_u64(), fleet["totals"]["mismatch"].as_u64()),
        (Some(26), Some(0)),
        "{fleet}"
    );
    // The store and the three diff logs hold the same records: each counts once.
    let logs: Vec<String> =
        ["a", "b", "c"].iter().map(|n| dir.path().join(format!("{n}.jsonl")).display().to_string()).collect();
    let mut args = vec!["--from", pg_dsn.as_str()];
    args.extend(logs.iter().map(String::as_str));
    let both = report(&args);
    assert_eq!(both["totals"], fleet["totals"], "{both}");
}

#[tokio::test]
async fn a_store_that_is_down_never_stops_the_proxy_and_its_password_is_never_shown() {
    let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = format!("  store: postgres://strangler:hunter2@127.0.0.1:{dead}/db?sslmode=disable\n");
    let text = fleet_config(&legacy.url(), &legacy.url(), &legacy.url(), &dir.path().join("x.jsonl"), &store, "");
    let (proxy, _config) = replica("pod-a", &text).await;
    for i in 0..20 {
        assert_eq!(get(proxy.addr, &format!("/api/users/{i}")).await.status, 200);
    }
    let config = get(proxy.admin, "/config").await.text();
    assert!(config.contains(&format!("postgres://strangler:***@127.0.0.1:{dead}/db")), "{config}");
    proxy.wait_for_log("cannot reach the shadow store").await;
    let text = metrics(proxy.admin).await;
    assert_eq!(metric_sum(&text, "strangler_store_up", &[]), 0.0);
    assert!(metric_sum(&text, "strangler_store_connect_failures_total", &[]) >= 1.0);
    assert!(!config.contains("hunter2") && !proxy.log_text().contains("hunter2"), "the password was shown");
}

#[test]
fn a_bad_store_setting_is_a_config_error_at_its_line_without_the_password() {
    let check = |shadow: &str| {
        let text = format!(
            "listen: \"127.0.0.1:0\"\nshadow:\n{shadow}upstreams:\n  a:\n    targets: [\"http://127.0.0.1:1\"]\nroutes:\n  - name: r\n    prefix: /\n    upstream: a\n"
        );
        let dir = ConfigDir::new(&text);
        let out = std::process::Command::new(binary()).arg("check").arg(dir.path()).output().unwrap();
        assert!(!out.status.success(), "accepted: {shadow}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = check("  log: off\n  store: mysql://u:hunter2@db/x\n");
    assert!(err.contains("routes.yaml:4:3:") && err.contains("postgres://") && !err.contains("hunter2"), "{err}");
    let err = check("  store: postgres://u@db/x?sslmode=sometimes\n");
    assert!(err.contains("routes.yaml:3:3:") && err.contains("verify-full"), "{err}");
    let err = check("  store: postgres://u:hunter2@db/x\n  password_file: /run/secret\n");
    assert!(err.contains("routes.yaml:4:3:") && err.contains("give it once") && !err.contains("hunter2"), "{err}");
    let err = check("  store: postgres://u@db/x\n  retention: 10s\n");
    assert!(err.contains("routes.yaml:4:3:") && err.contains("retention"), "{err}");
}

/// `strangler report --from URL`'s error, for a read that must fail.
fn report_error(url: &str) -> String {
    let out =
        std::process::Command::new(binary()).args(["report", "--format", "json", "--from", url]).output().unwrap();
    assert!(!out.status.success(), "read {url}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn sslmode_is_honoured_as_libpq_does() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let ca = |name: &str| {
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let (ours, other) = (ca("store CA"), ca("another CA"));
    let mut pg = Postgres::start();
    let dir = pg.dir().to_path_buf();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ours).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    pg.give(&dir.join("server.key"));
    let (ours_pem, other_pem) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
    std::fs::write(&ours_pem, ours.pem()).unwrap();
    std::fs::write(&other_pem, other.pem()).unwrap();
    pg.configure(&format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    ));
    // TCP clients must use TLS.
    let hba = dir.join("data/pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, text.lines().map(|l| l.replacen("host ", "hostssl ", 1) + "\n").collect::<String>()).unwrap();
    pg.stop();
    pg.restart();

    let url = |host: &str, mode: &str, root: Option<&Path>| {
        let root = root.map(|r| format!("&sslrootcert={}", r.display())).unwrap_or_default();
        format!("postgres://{PG_USER}:{PG_PASSWORD}@{host}:{}/postgres?sslmode={mode}{root}", pg.port)
    };
    // A replica writes over verify-ca (the certificate names `localhost`, not the address).
    let up = TestUpstream::start("legacy", Behaviour::json(json!({"a": 1}))).await;
    let logs = tempfile::tempdir().unwrap();
    let store = format!("  store: \"{}\"\n", url("127.0.0.1", "verify-ca", Some(&ours_pem)));
    let text = fleet_config(&up.url(), &up.url(), &up.url(), &logs.path().join("t.jsonl"), &store, "");
    let (proxy, _config) = replica("pod-a", &text).await;
    for i in 0..3 {
        assert_eq!(get(proxy.addr, &format!("/api/users/{i}")).await.status, 200);
    }
    let full = url("localhost", "verify-full", Some(&ours_pem));
    wait_for(Duration::from_secs(20), "3 records readable over verify-full", || async {
        let out = std::process::Command::new(binary())
            .args(["report", "--format", "json", "--from", &full])
            .output()
            .unwrap();
        out.status.success() && serde_json::from_slice::<Value>(&out.stdout).unwrap()["totals"]["sampled"] == 3
    })
    .await;
    assert_eq!(
        report(&["--from", &url("127.0.0.1", "require", None)])["totals"]["sampled"],
        3,
        "require: encrypted, unchecked"
    );
    let err = report_error(&url("127.0.0.1", "verify-full", Some(&ours_pem)));
    assert!(err.contains("NotValidForName") || err.contains("not valid for name"), "{err}");
    let err = report_error(&url("localhost", "verify-ca", Some(&other_pem)));
    assert!(err.contains("UnknownIssuer") || err.contains("issuer"), "{err}");
    let err = report_error(&url("127.0.0.1", "disable", None));
    assert!(err.contains("no encryption") && !err.contains(PG_PASSWORD), "{err}");
}
