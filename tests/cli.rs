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
