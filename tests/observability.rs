//! What Prometheus scrapes from the real binary for the fleet's dashboards and
//! alerts (k8s/base/observability): `process_*`, `strangler_build_info` and
//! the expiry of each served certificate.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_show_the_process_resources_and_the_build_it_runs() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let dir = ConfigDir::new(&config(&[("up", &up.url())], "  - {name: all, prefix: /, upstream: up}\n"));
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let proxy = BinaryProxy::start(&dir.path(), &["--threads", "1"]).await;
    let metrics = get(proxy.admin, "/metrics").await.text();

    let value = |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in:\n{metrics}"));
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(metrics.contains("# TYPE process_cpu_seconds_total counter"), "{metrics}");
    assert!(value("process_resident_memory_bytes") > 1e6, "a running proxy holds more than 1 MB");
    assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
    let (open, max) = (value("process_open_fds"), value("process_max_fds"));
    assert!(open >= 3.0 && open < max, "open fds {open}, limit {max}");
    assert!(value("process_threads") >= 2.0, "the runtime's worker and the main thread");
    let start = value("process_start_time_seconds");
    assert!((start - started).abs() < 30.0, "started at {start}, the test launched it at {started}");

    let build = metrics.lines().find(|l| l.starts_with("strangler_build_info{")).expect("strangler_build_info");
    assert!(build.ends_with("} 1"), "{build}");
    assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{build}");
    let commit = build.split("commit=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert!(commit.len() == 12 && head.starts_with(commit), "commit {commit:?}, HEAD {head}"),
        None => assert_eq!(commit, "unknown"),
    }
}

/// A self-signed certificate for `name`, valid until 1 January of `year`.
fn cert_until(dir: &Path, file: &str, name: &str, year: i32) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
    // Key first: a watcher that fires between the two writes sees a mismatch and keeps the old pair.
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    (cert_path.display().to_string(), key_path.display().to_string())
}

/// Unix seconds of 1 January of `year`, 00:00 UTC.
fn new_year(year: i32) -> i64 {
    let days: i64 = (1970..year).map(|y| if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 { 366 } else { 365 }).sum();
    days * 86_400
}

#[tokio::test]
async fn each_served_certificate_exports_its_expiry_and_a_replaced_one_leaves() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let certs = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = cert_until(certs.path(), "a", "a.test", 2031);
    let (b_cert, b_key) = cert_until(certs.path(), "b", "b.test", 2032);
    let text = format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\ntls:\n  cert: {a_cert}\n  key: {a_key}\n  sni:\n    - {{cert: {b_cert}, key: {b_key}}}\nupstreams:\n  up:\n    targets: [\"{}\"]\nroutes:\n  - {{name: all, prefix: /, upstream: up}}\n",
        up.url()
    );
    let dir = ConfigDir::new(&text);
    let proxy = BinaryProxy::start(&dir.path(), &["--poll-interval", "200ms", "--threads", "1"]).await;
    let series =
        |cert: &str, name: &str| format!("strangler_tls_cert_not_after_seconds{{cert=\"{cert}\",name=\"{name}\"}}");

    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!(sample(&metrics, &series(&a_cert, "a.test")), Some(new_year(2031) as f64), "{metrics}");
    assert_eq!(sample(&metrics, &series(&b_cert, "b.test")), Some(new_year(2032) as f64), "{metrics}");

    // The SNI certificate is rotated to one for another name: its old series goes.
    cert_until(certs.path(), "b", "c.test", 2033);
    let (admin, rotated) = (proxy.admin, series(&b_cert, "c.test"));
    wait_for(Duration::from_secs(10), "the rotated certificate's expiry", || {
        let rotated = rotated.clone();
        async move { sample(&get(admin, "/metrics").await.text(), &rotated) == Some(new_year(2033) as f64) }
    })
    .await;
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert!(!metrics.contains("name=\"b.test\""), "the replaced certificate's series stays:\n{metrics}");
    assert_eq!(sample(&metrics, &series(&a_cert, "a.test")), Some(new_year(2031) as f64));

    // A broken file is refused: the certificate still served keeps its series.
    std::fs::write(certs.path().join("a.crt"), "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        .unwrap();
    wait_for(Duration::from_secs(10), "the broken certificate's rejection", || async move {
        let metrics = get(admin, "/metrics").await.text();
        sample(&metrics, "strangler_tls_reloads_total{result=\"failure\"}").unwrap_or(0.0) >= 1.0
    })
    .await;
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert_eq!(sample(&metrics, &series(&a_cert, "a.test")), Some(new_year(2031) as f64), "{metrics}");
}

#[tokio::test]
async fn a_shadowed_route_shows_zero_mismatches_before_its_first_comparison() {
    let (up, candidate) =
        (TestUpstream::start("up", Behaviour::Echo).await, TestUpstream::start("c", Behaviour::Echo).await);
    let routes = "  - {name: mirrored, prefix: /m, upstream: up, shadow: {upstream: c}}\n  - {name: plain, prefix: /, upstream: up}\n";
    let dir = ConfigDir::new(&config(&[("up", &up.url()), ("c", &candidate.url())], routes));
    let proxy = BinaryProxy::start(&dir.path(), &["--threads", "1"]).await;
    let metrics = get(proxy.admin, "/metrics").await.text();
    for result in ["match", "mismatch", "shadow_error", "skipped"] {
        let series = format!("strangler_shadow_requests_total{{result=\"{result}\",route=\"mirrored\"}}");
        assert_eq!(sample(&metrics, &series), Some(0.0), "{series} in:\n{metrics}");
    }
    let plain = metrics.lines().filter(|l| l.starts_with("strangler_shadow_") && l.contains("route=\"plain\"")).count();
    assert_eq!(plain, 0, "an unshadowed route has no shadow series:\n{metrics}");
}
