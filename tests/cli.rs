//! `strangler check` and `strangler explain`, as ops run them.

use std::process::Command;

use crate::support::*;

fn check(text: &str) -> (bool, String) {
    let dir = ConfigDir::new(text);
    let out = Command::new(binary()).arg("check").arg(dir.path()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
}

const GOOD: &str = "listen: \"0.0.0.0:8080\"
upstreams:
  legacy:
    targets: [\"http://127.0.0.1:5000\"]
    connect_timeout: 1s
    timeout: 30s
routes:
  - name: legacy
    prefix: /
    upstream: legacy
";

#[test]
fn check_accepts_a_valid_config_and_the_root_example() {
    let (ok, out) = check(GOOD);
    assert!(ok, "{out}");
    assert!(out.contains("ok (1 routes, 1 upstreams"), "{out}");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/routes.yaml");
    let out = Command::new(binary()).args(["check", root]).output().unwrap();
    assert!(out.status.success(), "the root routes.yaml must stay valid: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_names_file_line_column_and_value() {
    let cases: &[(&str, String, &str, &str)] = &[
        ("unknown upstream", GOOD.replace("    upstream: legacy", "    upstream: nope"), ":10:15:", "\"nope\""),
        (
            "unknown key",
            GOOD.replace("    timeout: 30s", "    timeout: 30s\n    retries_typo: 2"),
            ":7:5:",
            "retries_typo",
        ),
        ("bad duration", GOOD.replace("timeout: 30s", "timeout: 30 parsecs"), ":6:", "parsecs"),
        ("bad url", GOOD.replace("http://127.0.0.1:5000", "ftp://127.0.0.1"), ":4:", "ftp://127.0.0.1"),
        ("empty targets", GOOD.replace("[\"http://127.0.0.1:5000\"]", "[]"), ":4:5:", "no targets"),
        (
            "duplicate name",
            format!("{GOOD}  - name: legacy\n    prefix: /x\n    upstream: legacy\n"),
            ":11:",
            "duplicate route name \"legacy\"",
        ),
        (
            "duplicate match",
            format!("{GOOD}  - name: again\n    prefix: /\n    upstream: legacy\n"),
            ":11:",
            "match exactly the same requests",
        ),
        ("bad listen", GOOD.replace("0.0.0.0:8080", "eighty"), ":1:1:", "\"eighty\""),
        ("bad prefix", GOOD.replace("prefix: /", "prefix: /a/../.."), ":8:", "climbs above"),
    ];
    for (what, text, location, value) in cases {
        let (ok, out) = check(text);
        assert!(!ok, "{what}: accepted");
        assert!(out.contains("routes.yaml"), "{what}: no file name in {out}");
        assert!(out.contains(location), "{what}: no {location} in {out}");
        assert!(out.contains(value), "{what}: no {value} in {out}");
    }
}

#[test]
fn explain_shows_the_route_and_why() {
    let dir = ConfigDir::new(&format!(
        "{GOOD}  - name: users\n    prefix: /api/users\n    upstream: legacy\n    methods: [GET]\n"
    ));
    let out = Command::new(binary())
        .args(["explain", "--config"])
        .arg(dir.path())
        .args(["GET", "/api/users/7"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["route"], "users");
    assert_eq!(v["candidates"].as_array().unwrap().len(), 2);
    let out = Command::new(binary())
        .args(["explain", "--config"])
        .arg(dir.path())
        .args(["POST", "/api/users/7"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["route"], "legacy");
    assert!(v["candidates"].to_string().contains("method POST not allowed"));
}

fn explain(dir: &ConfigDir, args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(binary()).args(["explain", "--config"]).arg(dir.path()).args(args).output().unwrap();
    let v =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v)
}

#[test]
fn offline_explain_claims_no_health_it_never_checked() {
    let dir = ConfigDir::new(&format!(
        "{}  new:\n    targets: [\"http://127.0.0.1:5001\"]\n{}  - name: canary\n    prefix: /canary\n    split: [{{upstream: new, weight: 50}}, {{upstream: legacy, weight: 50}}]\n    sticky: {{cookie: session}}\n",
        &GOOD[..GOOD.find("routes:").unwrap()],
        &GOOD[GOOD.find("routes:").unwrap()..],
    ));
    let (ok, v) = explain(&dir, &["GET", "/canary/x"]);
    assert!(ok, "{v}");
    assert_eq!(v["health"], "unknown");
    let text = v.to_string();
    assert!(!text.contains("healthy") && !text.contains("available"), "claims health it never checked: {v}");
    assert_eq!(v["split"][1]["targets"][0], "http://127.0.0.1:5000");

    // A sticky key lands where the live proxy's hash puts it, on every run.
    let (ok, v) = explain(&dir, &["--user", "alice", "GET", "/canary/x"]);
    assert!(ok, "{v}");
    let landed = v["upstream"].as_str().unwrap().to_string();
    assert!(landed == "new" || landed == "legacy", "{v}");
    assert_eq!(v["sticky_key"]["hashed_to"], landed);
    let (_, by_cookie) = explain(&dir, &["-H", "Cookie: a=1; session=alice", "GET", "/canary/x"]);
    assert_eq!(by_cookie["upstream"], landed.as_str());
}

#[test]
fn offline_explain_refuses_a_host_the_proxy_would_refuse() {
    let dir = ConfigDir::new(GOOD);
    let (ok, v) = explain(&dir, &["--host", "user@example.com", "GET", "/x"]);
    assert!(!ok, "{v}");
    assert_eq!(v["status"], 400);
    assert_eq!(v["error"]["error"], "bad_request");
    let (ok, v) = explain(&dir, &["--host", "Example.COM.:8080", "GET", "/x"]);
    assert!(ok, "{v}");
    assert_eq!(v["route"], "legacy");
}
