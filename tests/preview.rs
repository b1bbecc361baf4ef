//! Preview: a running proxy routes its recent traffic through a proposed
//! `routes.yaml` and says what would move (`POST /preview`, `strangler check
//! NEW.yaml --preview URL`), and `strangler check` warns of routes that can
//! never match. The traffic is recorded through the real server and real
//! upstreams; the mixes repeat every ten requests, in order, over one
//! connection (one request in 16 is sampled, spread without a period, so the
//! sample keeps the mix's proportions).

use std::net::SocketAddr;
use std::process::Output;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use crate::support::*;

/// Three upstreams that echo, and a proxy whose comments still go to legacy.
struct Stack {
    legacy: TestUpstream,
    users: TestUpstream,
    comments: TestUpstream,
    proxy: TestProxy,
}

impl Stack {
    async fn start() -> Stack {
        let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
        let users = TestUpstream::start("users", Behaviour::Echo).await;
        let comments = TestUpstream::start("comments", Behaviour::Echo).await;
        let routes = "  - {name: users, prefix: /api/users, upstream: users}\n  \
                      - {name: comments, prefix: /api/comments, upstream: legacy}\n";
        let proxy = TestProxy::start(&config(&Self::upstreams(&legacy, &users, &comments), routes)).await;
        Stack { legacy, users, comments, proxy }
    }

    fn upstreams<'a>(
        legacy: &'a TestUpstream,
        users: &'a TestUpstream,
        comments: &'a TestUpstream,
    ) -> Vec<(&'a str, String)> {
        vec![("legacy", legacy.url()), ("users", users.url()), ("comments", comments.url())]
    }

    /// A proposed config over the same upstreams.
    fn proposed(&self, routes: &str) -> String {
        config(&Self::upstreams(&self.legacy, &self.users, &self.comments), routes)
    }

    /// `total` GETs over one connection, in order: of every ten, `mix` says
    /// how many go to each path (and the status each must get).
    async fn record(&self, total: usize, mix: &[(&str, usize, u16)]) {
        let client = http1();
        let period: usize = mix.iter().map(|(_, n, _)| n).sum();
        for i in 0..total {
            let mut slot = i % period;
            let (path, _, status) = mix
                .iter()
                .find(|(_, n, _)| {
                    let here = slot < *n;
                    slot = slot.saturating_sub(*n);
                    here
                })
                .expect("a slot of the period");
            let request = req(Method::GET, self.proxy.addr, path).body(Full::default()).unwrap();
            let response = send(&client, request).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert_eq!(response.status.as_u16(), *status, "GET {path}: {}", response.text());
        }
    }
}

fn config(upstreams: &[(&str, String)], routes: &str) -> String {
    let pairs: Vec<(&str, &str)> = upstreams.iter().map(|(n, u)| (*n, u.as_str())).collect();
    crate::support::config(&pairs, routes)
}

/// `POST /preview?file=new-routes.yaml` with `text` as the body.
async fn preview(admin: SocketAddr, text: &str) -> TestResponse {
    let request = req(Method::POST, admin, "/preview?file=new-routes.yaml")
        .header("content-type", "application/yaml")
        .body(Full::new(Bytes::from(text.to_string())))
        .unwrap();
    send(&http1(), request).await.expect("the admin API answers")
}

fn moves_from<'a>(answer: &'a Value, route: &str) -> Vec<&'a Value> {
    answer["moves"].as_array().unwrap().iter().filter(|m| m["from_route"] == route).collect()
}

#[tokio::test]
async fn moving_a_prefix_to_another_upstream_reports_its_share_of_recent_traffic() {
    let stack = Stack::start().await;
    stack.record(3200, &[("/api/users/7", 7, 200), ("/api/comments/3", 3, 200)]).await;
    let routes = "  - {name: users, prefix: /api/users, upstream: users}\n  \
                  - {name: comments, prefix: /api/comments, upstream: comments}\n";
    let answer = preview(stack.proxy.admin, &stack.proposed(routes)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let answer = answer.json();
    let sampled = answer["sampled"].as_u64().unwrap();
    assert!((190..=210).contains(&sampled), "one request in 16 of 3,200: {answer}");
    let moves = answer["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "only comments move: {answer}");
    let comments = &moves[0];
    assert_eq!(
        (&comments["from_route"], &comments["to_route"], &comments["from_upstream"], &comments["to_upstream"]),
        (&Value::from("comments"), &Value::from("comments"), &Value::from("legacy"), &Value::from("comments")),
    );
    let share = comments["share"].as_f64().unwrap();
    assert!((share - 0.30).abs() <= 0.02, "comments are 30% of the traffic: {share}");
    assert!(comments["requests_per_second"].as_f64().unwrap() > 0.0, "{comments}");
    assert_eq!(answer["moving_share"], comments["share"]);
    assert_eq!(answer["unmatched_share"], 0.0);
    assert_eq!(answer["unreachable_routes"], serde_json::json!([]));
    let users = answer["routes"].as_array().unwrap().iter().find(|r| r["route"] == "users").unwrap();
    assert_eq!(users["moving_share"], 0.0, "{users}");
    assert!((users["share"].as_f64().unwrap() - 0.70).abs() <= 0.02, "{users}");
}

#[tokio::test]
async fn a_new_prefix_shadowed_by_longer_ones_is_reported_as_receiving_nothing() {
    let stack = Stack::start().await;
    stack.record(1600, &[("/api/users/7", 7, 200), ("/api/comments/3", 3, 200)]).await;
    let routes = "  - {name: users, prefix: /api/users, upstream: users}\n  \
                  - {name: comments, prefix: /api/comments, upstream: legacy}\n  \
                  - {name: api, prefix: /api, upstream: comments}\n  \
                  - {name: tags, prefix: /api/tags, upstream: comments}\n";
    let answer = preview(stack.proxy.admin, &stack.proposed(routes)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let answer = answer.json();
    assert_eq!(answer["moves"], serde_json::json!([]), "nothing moves: {answer}");
    assert_eq!(answer["unreachable_routes"], serde_json::json!(["api"]), "{answer}");
    let api = &answer["unreachable"][0];
    assert_eq!(api["reason"], "shadowed");
    assert_eq!(api["taken_by"], serde_json::json!(["comments", "users"]));
    assert_eq!(api["covered_share"], 1.0, "every recent request falls under /api: {api}");
    assert_eq!(answer["routes_without_traffic"], serde_json::json!(["tags"]), "no evidence about /api/tags: {answer}");
}

#[tokio::test]
async fn requests_no_route_would_take_are_counted_as_unmatched() {
    let stack = Stack::start().await;
    stack.record(3200, &[("/api/users/7", 6, 200), ("/api/comments/3", 3, 200), ("/nowhere", 1, 404)]).await;
    let routes = "  - {name: users, prefix: /api/users, upstream: users}\n";
    let answer = preview(stack.proxy.admin, &stack.proposed(routes)).await.json();
    let unmatched = answer["unmatched_share"].as_f64().unwrap();
    let unmatched_now = answer["unmatched_share_now"].as_f64().unwrap();
    assert!((unmatched - 0.40).abs() <= 0.02, "comments and /nowhere match nothing: {answer}");
    assert!((unmatched_now - 0.10).abs() <= 0.02, "/nowhere matches nothing today: {answer}");
    let comments = moves_from(&answer, "comments");
    assert_eq!(comments.len(), 1, "{answer}");
    assert_eq!((&comments[0]["to_route"], &comments[0]["to_upstream"]), (&Value::Null, &Value::Null));
    assert!((comments[0]["share"].as_f64().unwrap() - 0.30).abs() <= 0.02, "{answer}");
}

#[tokio::test]
async fn a_bad_proposed_config_is_a_400_naming_its_line_and_column() {
    let stack = Stack::start().await;
    let routes = "  - {name: users, prefix: /api/users, upstream: users}\n  - name: comments\n    prefix: /api/comments\n    upstream: nope\n";
    let answer = preview(stack.proxy.admin, &stack.proposed(routes)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["error"], "invalid_config");
    let line = stack.proposed(routes).lines().position(|l| l.contains("upstream: nope")).unwrap() + 1;
    assert_eq!((body["line"].as_u64(), body["column"].as_u64()), (Some(line as u64), Some(15)), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("new-routes.yaml:{line}:15: ")), "{message}");
    assert!(message.contains("unknown upstream \"nope\""), "{message}");
    let answer = preview(stack.proxy.admin, "routes: [").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    assert!(answer.json()["line"].is_u64(), "a YAML error is located too: {}", answer.text());
}

fn strangler(args: &[&str]) -> Output {
    std::process::Command::new(binary()).args(args).output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn check_with_preview_prints_what_would_move_as_a_table_or_as_json() {
    let stack = Stack::start().await;
    stack.record(800, &[("/api/users/7", 7, 200), ("/api/comments/3", 3, 200)]).await;
    let routes = "  - {name: users, prefix: /api/users, upstream: users}\n  \
                  - {name: comments, prefix: /api/comments, upstream: comments}\n";
    let proposed = ConfigDir::new(&stack.proposed(routes));
    let (file, admin) = (proposed.path(), format!("http://{}", stack.proxy.admin));
    let file = file.to_str().unwrap().to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || strangler(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };

    let out = run(vec!["check".into(), file.clone(), "--preview".into(), admin.clone()]).await.unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("sampled requests (1 in 16)"), "{stdout}");
    let row = stdout.lines().find(|l| l.contains("legacy → comments")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.trim_start().starts_with("comments "), "{row}");
    assert!(stdout.contains("no route would take 0.0% of recent requests"), "{stdout}");

    let out =
        run(vec!["check".into(), file, "--preview".into(), admin, "--format".into(), "json".into()]).await.unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(answer["sampled"].as_u64().unwrap() > 0, "{answer}");
    assert_eq!(answer["moves"][0]["to_upstream"], "comments", "{answer}");
}

#[tokio::test]
async fn check_with_preview_refuses_a_bad_file_locally_and_says_when_the_proxy_cannot_be_asked() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let good = ConfigDir::new(&crate::support::config(
        &[("up", "http://127.0.0.1:9")],
        "  - {name: all, prefix: /, upstream: up}\n",
    ));
    let bad = ConfigDir::new(&crate::support::config(
        &[("up", "http://127.0.0.1:9")],
        "  - {name: all, prefix: /, upstream: nope}\n",
    ));
    let admin = format!("http://{closed}");
    let out = strangler(&["check", good.path().to_str().unwrap(), "--preview", &admin]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("cannot ask {admin}/preview")), "{stderr}");
    let out = strangler(&["check", bad.path().to_str().unwrap(), "--preview", &admin]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("unknown upstream \"nope\""), "{stderr}");
    let out = strangler(&["check", good.path().to_str().unwrap(), "--preview", "ftp://example.com"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("http://HOST:PORT"), "{:?}", text(&out));
}

#[test]
fn check_warns_of_a_route_that_can_never_match_and_fails_when_none_can() {
    let routes = "  - name: reads\n    prefix: /api/comments\n    methods: [GET, HEAD, OPTIONS]\n    upstream: up\n  \
                  - name: writes\n    prefix: /api/comments\n    methods: [POST, PUT, PATCH, DELETE]\n    upstream: up\n  \
                  - name: rest\n    prefix: /api/comments\n    upstream: up\n  \
                  - name: all\n    prefix: /\n    upstream: up\n";
    let text_ = crate::support::config(&[("up", "http://127.0.0.1:9")], routes);
    let dir = ConfigDir::new(&text_);
    let out = strangler(&["check", dir.path().to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "a warning, not an error: {stdout}{stderr}");
    let line = text_.lines().position(|l| l.contains("name: rest")).unwrap() + 1;
    assert!(
        stderr.contains(&format!(
            "routes.yaml:{line}:5: warning: route \"rest\" can never match: reads, writes take every"
        )),
        "{stderr}"
    );
    assert!(stdout.contains(": ok (4 routes"), "{stdout}");

    let routes = "  - {name: tunnel, prefix: /, methods: [CONNECT], upstream: up}\n";
    let dir = ConfigDir::new(&crate::support::config(&[("up", "http://127.0.0.1:9")], routes));
    let out = strangler(&["check", dir.path().to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "no route can match: {stdout}{stderr}");
    assert!(stderr.contains("error: route \"tunnel\" can never match: it allows only CONNECT"), "{stderr}");
}
