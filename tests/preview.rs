//! Preview: a running proxy (the real binary) routes its recent traffic
//! through a proposed `routes.yaml` and says what would move (`POST
//! /preview`, `strangler check NEW.yaml --preview URL`), and `strangler
//! check` warns of routes that can never match.
//!
//! The traffic is a recorded mix (a seeded random sequence of paths and
//! users) sent through the proxy to real upstreams on loopback, over several
//! connections at once; what the proxy really did with each request (its
//! answer names the upstream) is the truth a preview is held to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Output;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::support::*;

/// A config over upstreams named with their URLs.
fn config(upstreams: &[(&str, String)], routes: &str) -> String {
    let pairs: Vec<(&str, &str)> = upstreams.iter().map(|(n, u)| (*n, u.as_str())).collect();
    crate::support::config(&pairs, routes)
}

/// The routes in force: users split 60/40 between legacy and the users
/// service by `X-User-Id`; comments and tasks still on legacy.
const TODAY: &str = "  - name: users\n    prefix: /api/users\n    \
                     split: [{upstream: legacy, weight: 60}, {upstream: users, weight: 40}]\n    \
                     sticky: {header: X-User-Id}\n  \
                     - {name: comments, prefix: /api/comments, upstream: legacy}\n  \
                     - {name: tasks, prefix: /api/tasks, upstream: legacy}\n";

/// Values a request carries that no sample may keep.
const SECRETS: [&str; 4] = ["secret-query-value", "secret-header-value", "secret-cookie-value", "user-"];

/// Three upstreams that echo, and the proxy binary in front of them.
struct Stack {
    legacy: TestUpstream,
    users: TestUpstream,
    comments: TestUpstream,
    _config: ConfigDir,
    proxy: BinaryProxy,
}

/// What kind of request, by path: each kind is one route today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Users,
    Comments,
    Tasks,
    Nowhere,
}

/// One recorded request and what the proxy did with it.
#[derive(Debug, Clone)]
struct Served {
    kind: Kind,
    user: String,
    /// The upstream that answered (`None`: no route, a 404).
    upstream: Option<String>,
}

impl Stack {
    /// The proxy with `routes` in force, started with `args`; `admin` is
    /// the address its admin API listens on.
    async fn start(routes: &str, admin: &str, args: &[&str], env: &[(&str, &str)]) -> Stack {
        let legacy = TestUpstream::start("legacy", Behaviour::Echo).await;
        let users = TestUpstream::start("users", Behaviour::Echo).await;
        let comments = TestUpstream::start("comments", Behaviour::Echo).await;
        let text = config(&[("legacy", legacy.url()), ("users", users.url()), ("comments", comments.url())], routes)
            .replace("admin: \"127.0.0.1:0\"", &format!("admin: \"{admin}\""));
        let dir = ConfigDir::new(&text);
        let proxy = BinaryProxy::start_with_env(&dir.path(), args, env).await;
        Stack { legacy, users, comments, _config: dir, proxy }
    }

    /// A proposed config over the same upstreams.
    fn proposed(&self, routes: &str) -> String {
        config(&[("legacy", self.legacy.url()), ("users", self.users.url()), ("comments", self.comments.url())], routes)
    }

    /// Sends `total` requests of the recorded mix over `connections`
    /// connections at once: 45% users (300 users), 30% comments, 20%
    /// tasks, 5% a path no route takes, each with a query and headers
    /// holding secrets.
    async fn record(&self, total: usize, connections: usize) -> Vec<Served> {
        let mut rng = fastrand::Rng::with_seed(19);
        let mix: Vec<(Kind, String)> = (0..total)
            .map(|_| {
                let kind = match rng.u32(..100) {
                    0..45 => Kind::Users,
                    45..75 => Kind::Comments,
                    75..95 => Kind::Tasks,
                    _ => Kind::Nowhere,
                };
                (kind, format!("user-{}", rng.u32(..300)))
            })
            .collect();
        let addr = self.proxy.addr;
        let lanes: Vec<Vec<(Kind, String)>> =
            (0..connections).map(|c| mix.iter().skip(c).step_by(connections).cloned().collect()).collect();
        let tasks: Vec<_> = lanes.into_iter().map(|lane| tokio::spawn(send_lane(addr, lane))).collect();
        let mut served = Vec::with_capacity(total);
        for task in tasks {
            served.extend(task.await.unwrap());
        }
        served
    }
}

/// Sends `lane` in order over one keep-alive connection.
async fn send_lane(addr: SocketAddr, lane: Vec<(Kind, String)>) -> Vec<Served> {
    let client = http1();
    let mut served = Vec::with_capacity(lane.len());
    for (i, (kind, user)) in lane.into_iter().enumerate() {
        let path = match kind {
            Kind::Users => format!("/api/users/{i}"),
            Kind::Comments => format!("/api/comments/{i}"),
            Kind::Tasks => format!("/api/tasks/{i}"),
            Kind::Nowhere => format!("/nowhere/{i}"),
        };
        let request = req(Method::GET, addr, &format!("{path}?q=secret-query-value&page={i}"))
            .header("x-user-id", &user)
            .header("authorization", "Bearer secret-header-value")
            .header("cookie", "session=secret-cookie-value")
            .body(Full::default())
            .unwrap();
        let response = send(&client, request).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let expected = if kind == Kind::Nowhere { 404 } else { 200 };
        assert_eq!(response.status.as_u16(), expected, "GET {path}: {}", response.text());
        let upstream = (kind != Kind::Nowhere).then(|| response.json()["upstream"].as_str().unwrap().to_string());
        served.push(Served { kind, user, upstream });
    }
    served
}

/// The share of `served` for which `which` holds.
fn share(served: &[Served], which: impl Fn(&Served) -> bool) -> f64 {
    served.iter().filter(|s| which(s)).count() as f64 / served.len() as f64
}

/// `POST /preview?file=new-routes.yaml` with `text` as the body.
async fn preview(admin: SocketAddr, text: &str, token: Option<&str>) -> TestResponse {
    let mut request =
        req(Method::POST, admin, "/preview?file=new-routes.yaml").header("content-type", "application/yaml");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(&http1(), request.body(Full::new(Bytes::from(text.to_string()))).unwrap())
        .await
        .expect("the admin API answers")
}

/// A preview that must succeed, as JSON.
async fn preview_ok(stack: &Stack, routes: &str) -> Value {
    let answer = preview(stack.proxy.admin, &stack.proposed(routes), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.json()
}

fn moves_from<'a>(answer: &'a Value, route: &str) -> Vec<&'a Value> {
    answer["moves"].as_array().unwrap().iter().filter(|m| m["from_route"] == route).collect()
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("not a number: {value}"))
}

/// `actual` within two percentage points of `truth`.
fn within_two_points(actual: f64, truth: f64, what: &str) {
    assert!((actual - truth).abs() <= 0.02, "{what}: previewed {actual:.4}, true {truth:.4}");
}

#[tokio::test]
async fn a_recorded_mix_previews_within_two_points_of_what_the_proxy_did() {
    // One request in two is kept, so the ring (10,000) holds the recording:
    // a share's 95% interval is then under a point wide either way.
    let stack = Stack::start(TODAY, "127.0.0.1:0", &["--threads", "2", "--preview-sample-every", "2"], &[]).await;
    let started = Instant::now();
    let served = stack.record(16_000, 4).await;
    let recording = started.elapsed();
    let users_on_legacy = |s: &Served| s.kind == Kind::Users && s.upstream.as_deref() == Some("legacy");

    // One prefix moves: comments, from legacy to the comments service.
    let moved = "  - name: users\n    prefix: /api/users\n    \
                 split: [{upstream: legacy, weight: 60}, {upstream: users, weight: 40}]\n    \
                 sticky: {header: X-User-Id}\n  \
                 - {name: comments, prefix: /api/comments, upstream: comments}\n  \
                 - {name: tasks, prefix: /api/tasks, upstream: legacy}\n";
    let answer = preview_ok(&stack, moved).await;
    let sampled = answer["sampled"].as_u64().unwrap();
    assert!(sampled.abs_diff(8_000) <= 8, "one request in two of 16,000 is kept: {sampled}");
    let moves = answer["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "only comments move: {answer:#}");
    let comments = &moves[0];
    assert_eq!(
        [&comments["from_route"], &comments["to_route"], &comments["from_upstream"], &comments["to_upstream"]],
        [&json!("comments"), &json!("comments"), &json!("legacy"), &json!("comments")],
    );
    let true_comments = share(&served, |s| s.kind == Kind::Comments);
    within_two_points(f(&comments["share"]), true_comments, "comments");
    assert_eq!(answer["moving_share"], comments["share"]);
    assert_eq!(comments["sticky_keys"], 0, "the comments route reads no sticky key: {comments}");
    // req/s over the window stands for as many requests as were sent.
    let estimated = f(&comments["requests_per_second"]) * f(&answer["window_seconds"]);
    let sent = true_comments * served.len() as f64;
    assert!((estimated / sent - 1.0).abs() < 0.08, "{estimated:.0} comments estimated, {sent} sent");
    assert!(f(&answer["window_seconds"]) >= recording.as_secs_f64() * 0.9, "{answer:#}");
    let true_unmatched = share(&served, |s| s.kind == Kind::Nowhere);
    within_two_points(f(&answer["unmatched_share"]), true_unmatched, "unmatched");
    within_two_points(f(&answer["unmatched_share_now"]), true_unmatched, "unmatched today");
    assert_eq!(answer["unreachable_routes"], json!([]));
    let users = answer["routes"].as_array().unwrap().iter().find(|r| r["route"] == "users").unwrap();
    assert_eq!(users["moving_share"], 0.0, "{users}");
    within_two_points(f(&users["share"]), share(&served, |s| s.kind == Kind::Users), "users route");

    // The users split goes all the way: exactly the keys on legacy move.
    let all_in = TODAY.replace("weight: 60", "weight: 0").replace("weight: 40", "weight: 100");
    let answer = preview_ok(&stack, &all_in).await;
    let moves = answer["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "only users on legacy move, and only to users: {answer:#}");
    let users = &moves[0];
    assert_eq!((&users["from_upstream"], &users["to_upstream"]), (&json!("legacy"), &json!("users")));
    within_two_points(f(&users["share"]), share(&served, users_on_legacy), "users on legacy");
    let keys_on_legacy: BTreeSet<&str> = served.iter().filter(|s| users_on_legacy(s)).map(|s| &*s.user).collect();
    assert_eq!(users["sticky_keys"].as_u64(), Some(keys_on_legacy.len() as u64), "the keys the proxy sent to legacy");
    assert_eq!(answer["moving_sticky_keys"], users["sticky_keys"]);

    // Routes dropped: their requests would match nothing.
    let only_users = TODAY.split("  - {name: comments").next().unwrap().to_string();
    let answer = preview_ok(&stack, &only_users).await;
    let dropped = share(&served, |s| s.kind != Kind::Users);
    within_two_points(f(&answer["unmatched_share"]), dropped, "unmatched once comments and tasks go");
    for route in ["comments", "tasks"] {
        let moves = moves_from(&answer, route);
        assert_eq!(moves.len(), 1, "{route}: {answer:#}");
        assert_eq!((&moves[0]["to_route"], &moves[0]["to_upstream"]), (&Value::Null, &Value::Null));
    }
}

#[tokio::test]
async fn a_prefix_shadowed_by_longer_ones_is_reported_as_receiving_nothing() {
    let stack = Stack::start(TODAY, "127.0.0.1:0", &["--preview-sample-every", "1"], &[]).await;
    let served = stack.record(1_600, 2).await;
    let proposed = format!(
        "{TODAY}  - {{name: api, prefix: /api, upstream: comments}}\n  \
         - {{name: tags, prefix: /api/tags, upstream: comments}}\n  \
         - {{name: tunnel, prefix: /tunnel, methods: [CONNECT], upstream: comments}}\n"
    );
    let answer = preview_ok(&stack, &proposed).await;
    assert_eq!(answer["moves"], json!([]), "nothing moves: {answer:#}");
    assert_eq!(answer["unreachable_routes"], json!(["tunnel", "api"]), "{answer:#}");
    let tunnel = &answer["unreachable"][0];
    assert_eq!(tunnel["reason"], "never_matches", "{tunnel}");
    let api = &answer["unreachable"][1];
    assert_eq!(api["reason"], "shadowed", "{api}");
    assert_eq!(api["taken_by"], json!(["comments", "tasks", "users"]), "{api}");
    within_two_points(f(&api["covered_share"]), share(&served, |s| s.kind != Kind::Nowhere), "under /api");
    assert_eq!(answer["routes_without_traffic"], json!(["tags"]), "no evidence about /api/tags: {answer:#}");
}

#[tokio::test]
async fn the_sample_keeps_no_query_value_header_value_or_sticky_key() {
    let stack = Stack::start(TODAY, "127.0.0.1:0", &["--preview-sample-every", "1"], &[]).await;
    let served = stack.record(200, 2).await;
    let answer = get(stack.proxy.admin, "/preview/sample?limit=1000").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let text = answer.text();
    for secret in SECRETS {
        assert!(!text.contains(secret), "the sample shows {secret:?}: {text}");
    }
    let sample = answer.json();
    assert_eq!((sample["sample_every"].as_u64(), sample["kept"].as_u64()), (Some(1), Some(200)), "{sample:#}");
    let samples = sample["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 200);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for s in samples {
        let path = s["path"].as_str().unwrap();
        assert!(!path.contains('?'), "no query: {s}");
        assert_eq!((&s["method"], &s["host"]), (&json!("GET"), &json!("127.0.0.1")), "{s}");
        let sticky = path.starts_with("/api/users/");
        assert_eq!(s["sticky_key_hash"].is_string(), sticky, "a key hash on the sticky route only: {s}");
        *kinds.entry(path.split('/').nth(2).unwrap_or("")).or_default() += 1;
    }
    let sent = |kind| served.iter().filter(|s| s.kind == kind).count();
    assert_eq!(kinds.get("users"), Some(&sent(Kind::Users)), "{kinds:?}");
    assert_eq!(kinds.get("tasks"), Some(&sent(Kind::Tasks)), "{kinds:?}");

    // Nor does what a preview answers.
    let answer = preview(stack.proxy.admin, &stack.proposed(TODAY), None).await;
    for secret in SECRETS {
        assert!(!answer.text().contains(secret), "the preview shows {secret:?}: {}", answer.text());
    }
}

#[tokio::test]
async fn a_bad_proposed_config_is_a_400_naming_its_line_and_column() {
    let stack = Stack::start(TODAY, "127.0.0.1:0", &[], &[]).await;
    let routes = "  - {name: users, prefix: /api/users, upstream: users}\n  \
                  - name: comments\n    prefix: /api/comments\n    upstream: nope\n";
    let text = stack.proposed(routes);
    let answer = preview(stack.proxy.admin, &text, None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["error"], "invalid_config");
    let line = text.lines().position(|l| l.contains("upstream: nope")).unwrap() + 1;
    assert_eq!((body["line"].as_u64(), body["column"].as_u64()), (Some(line as u64), Some(15)), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("new-routes.yaml:{line}:15: ")), "{message}");
    assert!(message.contains("unknown upstream \"nope\""), "{message}");

    // Not YAML: located too.
    let broken = stack.proposed("  - {name: users, prefix: /api/users, upstream: users\n");
    let answer = preview(stack.proxy.admin, &broken, None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["error"], "invalid_config");
    let opened = broken.lines().count() as u64;
    assert!(body["line"].as_u64().is_some_and(|l| l >= opened), "{body}");
    assert!(body["column"].is_u64(), "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("new-routes.yaml:"), "{body}");
}

/// A local IPv4 address that is not loopback (a peer connecting from it is
/// not a loopback peer), from the kernel's table of local addresses.
fn non_loopback_ipv4() -> Ipv4Addr {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").expect("/proc/net/fib_trie");
    let mut last = None;
    for line in trie.lines().map(str::trim) {
        if let Some(ip) = line.strip_prefix("|-- ").and_then(|s| s.parse::<Ipv4Addr>().ok()) {
            last = Some(ip);
        } else if line == "/32 host LOCAL" {
            if let Some(ip) = last.filter(|ip| !ip.is_loopback()) {
                return ip;
            }
        }
    }
    panic!("this test needs a non-loopback IPv4 address on this machine; /proc/net/fib_trie has none:\n{trie}")
}

#[tokio::test]
async fn a_preview_needs_a_loopback_peer_or_the_admin_token() {
    let token = "preview-test-token";
    let stack =
        Stack::start(TODAY, "0.0.0.0:0", &["--preview-sample-every", "1"], &[("STRANGLER_ADMIN_TOKEN", token)]).await;
    stack.record(50, 1).await;
    let port = stack.proxy.admin.port();
    let (remote, local) = (
        SocketAddr::new(IpAddr::V4(non_loopback_ipv4()), port),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
    );
    let text = stack.proposed(TODAY);
    for (peer, given, allowed) in
        [(remote, None, false), (remote, Some("wrong-token"), false), (remote, Some(token), true), (local, None, true)]
    {
        let answer = preview(peer, &text, given).await;
        let expected = if allowed { StatusCode::OK } else { StatusCode::FORBIDDEN };
        assert_eq!(answer.status, expected, "from {peer} with {given:?}: {}", answer.text());
        if !allowed {
            assert_eq!(answer.json()["error"], "forbidden", "{}", answer.text());
        }
    }
    let sample = get(remote, "/preview/sample").await;
    assert_eq!(sample.status, StatusCode::FORBIDDEN, "the sample reads traffic back too: {}", sample.text());

    // The CLI sends the token from the environment.
    let proposed = ConfigDir::new(&text);
    let file = proposed.path().to_str().unwrap().to_string();
    let admin = format!("http://{remote}");
    let out = strangler_async(vec!["check".into(), file.clone(), "--preview".into(), admin.clone()], None).await;
    let (stdout, stderr) = text_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("answered 403") && stderr.contains("bearer token"), "{stderr}");
    let out = strangler_async(vec!["check".into(), file, "--preview".into(), admin], Some(token)).await;
    let (stdout, stderr) = text_of(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("nothing would move"), "{stdout}");
}

#[tokio::test]
async fn without_a_token_set_only_loopback_peers_may_preview() {
    let stack = Stack::start(TODAY, "0.0.0.0:0", &[], &[]).await;
    let remote = SocketAddr::new(IpAddr::V4(non_loopback_ipv4()), stack.proxy.admin.port());
    let answer = preview(remote, &stack.proposed(TODAY), Some("anything")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());
    assert!(answer.json()["message"].as_str().unwrap().contains("STRANGLER_ADMIN_TOKEN"), "{}", answer.text());
}

fn strangler(args: &[&str]) -> Output {
    std::process::Command::new(binary()).args(args).env_remove("STRANGLER_ADMIN_TOKEN").output().unwrap()
}

/// `strangler ARGS` off the runtime's thread (the proxy it asks may be in
/// this process's tests), with `STRANGLER_ADMIN_TOKEN` set to `token`.
async fn strangler_async(args: Vec<String>, token: Option<&str>) -> Output {
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(binary());
        command.args(&args).env_remove("STRANGLER_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("STRANGLER_ADMIN_TOKEN", token);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

fn text_of(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn check_with_preview_prints_what_would_move_as_a_table_or_as_json() {
    let stack = Stack::start(TODAY, "127.0.0.1:0", &["--threads", "1"], &[]).await;
    stack.record(1_600, 2).await;
    let moved = TODAY.replace(
        "{name: comments, prefix: /api/comments, upstream: legacy}",
        "{name: comments, prefix: /api/comments, upstream: comments}",
    );
    let proposed = ConfigDir::new(&stack.proposed(&moved));
    let file = proposed.path().to_str().unwrap().to_string();
    let admin = format!("http://{}", stack.proxy.admin);

    let out = strangler_async(vec!["check".into(), file.clone(), "--preview".into(), admin.clone()], None).await;
    let (stdout, stderr) = text_of(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains(": ok (3 routes, 3 upstreams"), "the check itself goes to stderr: {stderr}");
    assert!(stdout.contains("sampled requests (1 in 16)"), "{stdout}");
    let row = stdout.lines().find(|l| l.contains("legacy → comments")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.trim_start().starts_with("comments "), "{row}");
    assert!(stdout.contains("no route would take "), "{stdout}");

    let out =
        strangler_async(vec!["check".into(), file, "--preview".into(), admin, "--format".into(), "json".into()], None)
            .await;
    let (stdout, stderr) = text_of(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(answer["sampled"].as_u64().unwrap() > 0, "{answer}");
    assert!(answer["unreachable_routes"].is_array() && f(&answer["unmatched_share"]) > 0.0, "{answer}");
    let moves = answer["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "{answer:#}");
    for key in ["from_route", "to_route", "from_upstream", "to_upstream"] {
        assert!(moves[0][key].is_string(), "{key}: {}", moves[0]);
    }
    assert!((0.0..=1.0).contains(&f(&moves[0]["share"])), "a fraction of the sample: {}", moves[0]);
    assert_eq!(moves[0]["to_upstream"], "comments", "{answer}");
}

#[tokio::test]
async fn check_with_preview_refuses_a_bad_file_locally_and_says_when_the_proxy_cannot_be_asked() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let good =
        ConfigDir::new(&config(&[("up", "http://127.0.0.1:9".into())], "  - {name: all, prefix: /, upstream: up}\n"));
    let bad =
        ConfigDir::new(&config(&[("up", "http://127.0.0.1:9".into())], "  - {name: all, prefix: /, upstream: nope}\n"));
    let admin = format!("http://{closed}");
    let out = strangler(&["check", good.path().to_str().unwrap(), "--preview", &admin]);
    let (stdout, stderr) = text_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("cannot ask {admin}/preview")), "{stderr}");
    let out = strangler(&["check", bad.path().to_str().unwrap(), "--preview", &admin]);
    let (stdout, stderr) = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("unknown upstream \"nope\""), "{stderr}");
    let out = strangler(&["check", good.path().to_str().unwrap(), "--preview", "ftp://example.com"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text_of(&out));
    assert!(text_of(&out).1.contains("http://HOST:PORT"), "{:?}", text_of(&out));
}

#[test]
fn check_warns_of_a_route_that_can_never_match_and_fails_when_none_can() {
    let up = [("up", "http://127.0.0.1:9".to_string())];
    let routes = "  - name: reads\n    prefix: /api/comments\n    methods: [GET, HEAD, OPTIONS]\n    upstream: up\n  \
                  - name: writes\n    prefix: /api/comments\n    methods: [POST, PUT, PATCH, DELETE]\n    upstream: up\n  \
                  - name: rest\n    prefix: /api/comments\n    upstream: up\n  \
                  - name: all\n    prefix: /\n    upstream: up\n";
    let text = config(&up, routes);
    let dir = ConfigDir::new(&text);
    let out = strangler(&["check", dir.path().to_str().unwrap()]);
    let (stdout, stderr) = text_of(&out);
    assert!(out.status.success(), "a warning, not an error: {stdout}{stderr}");
    let line = text.lines().position(|l| l.contains("name: rest")).unwrap() + 1;
    assert!(
        stderr.contains(&format!(
            "routes.yaml:{line}:5: warning: route \"rest\" can never match: reads, writes take every"
        )),
        "{stderr}"
    );
    assert!(stdout.contains(": ok (4 routes"), "{stdout}");

    let routes = "  - {name: tunnel, prefix: /, methods: [CONNECT], upstream: up}\n";
    let dir = ConfigDir::new(&config(&up, routes));
    let out = strangler(&["check", dir.path().to_str().unwrap()]);
    let (stdout, stderr) = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "no route can match: {stdout}{stderr}");
    assert!(stderr.contains("error: route \"tunnel\" can never match: it allows only CONNECT"), "{stderr}");
}

#[test]
fn a_split_weighing_nothing_and_a_rollout_to_no_upstream_stay_errors() {
    let up = [("up", "http://127.0.0.1:9".to_string()), ("new", "http://127.0.0.1:9".to_string())];
    let cases = [
        (
            "  - name: all\n    prefix: /\n    split: [{upstream: up, weight: 0}, {upstream: new, weight: 0}]\n",
            "split weights must not all be 0",
        ),
        (
            "  - name: all\n    prefix: /\n    upstream: up\n    rollout: {to: nowhere, steps: [shadow, 100]}\n",
            "unknown upstream \"nowhere\"",
        ),
    ];
    for (routes, why) in cases {
        let text = config(&up, routes);
        let dir = ConfigDir::new(&text);
        let out = strangler(&["check", dir.path().to_str().unwrap()]);
        let (stdout, stderr) = text_of(&out);
        assert_eq!(out.status.code(), Some(1), "{why}: {stdout}{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        let place = stderr.split_once("routes.yaml:").map_or("", |(_, rest)| rest);
        let numbers: Vec<bool> = place.split(':').take(2).map(|n| n.parse::<u32>().is_ok()).collect();
        assert_eq!(numbers, [true, true], "{why}: routes.yaml:LINE:COLUMN in {stderr}");
    }
}
