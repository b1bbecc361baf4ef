//! Autopilot rollouts through the real binary: a route walks itself from
//! shadow to 100% on evidence, every instance sharing the state serves the
//! same weights, a failing candidate is rolled back alone, and commands are
//! recorded with who gave them. Holds and intervals are short so each test
//! takes seconds. The interval is 200 ms, not less: a step forward begins
//! `lead` (two intervals and 50 ms) after it is decided, and every instance
//! must have read it by then. With 100 ms, an instance of the full suite on
//! two busy cores once read a step late and served the old share for a
//! moment, and a sticky user went back to legacy.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Both upstreams answer this, so the shadow comparison matches (the
/// test upstreams name themselves in `x-upstream`, which the route ignores).
fn same_answer() -> Behaviour {
    Behaviour::json(json!({"items": [1, 2, 3]}))
}

/// A config whose `items` route rolls out from `legacy` to `comments`.
fn rollout_config(dir: &std::path::Path, legacy: &TestUpstream, comments: &TestUpstream, plan: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\n\
         shadow: {{ log: \"{log}\" }}\n\
         autopilot: {{ state: \"{state}\", interval: 200ms }}\n\
         upstreams:\n  legacy: {{ targets: [\"{legacy}\"] }}\n  comments: {{ targets: [\"{comments}\"] }}\n\
         routes:\n  - name: items\n    prefix: /items\n    upstream: legacy\n    sticky: {{ header: X-User-Id }}\n\
         \x20   shadow: {{ upstream: comments, ignore_headers: [x-upstream] }}\n\
         \x20   rollout:\n      to: comments\n{plan}",
        log = dir.join("diffs.jsonl").display(),
        state = dir.join("rollouts.json").display(),
        legacy = legacy.url(),
        comments = comments.url(),
    )
}

struct Fleet {
    legacy: TestUpstream,
    comments: TestUpstream,
    config: ConfigDir,
    proxies: Vec<BinaryProxy>,
}

impl Fleet {
    async fn start(instances: usize, plan: &str, comments_says: Behaviour) -> Fleet {
        let legacy = TestUpstream::start("legacy", same_answer()).await;
        let comments = TestUpstream::start("comments", comments_says).await;
        let config = ConfigDir::new("");
        config.write_in_place(&rollout_config(config.dir.path(), &legacy, &comments, plan));
        let mut proxies = Vec::new();
        for _ in 0..instances {
            proxies.push(BinaryProxy::start(&config.path(), &["--threads", "1"]).await);
        }
        Fleet { legacy, comments, config, proxies }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(binary())
            .arg("rollout")
            .args(args)
            .arg("--config")
            .arg(self.config.path())
            .output()
            .unwrap()
    }
}

#[tokio::test]
async fn a_good_candidate_walks_every_step_to_done_and_both_instances_serve_the_same_weights() {
    // Latency on a loaded test machine is noise: this test is about the walk.
    let plan = "      steps: [shadow, 10, 50, 100]\n      hold: 1s\n      \
                gates: { min_samples: 20, min_requests: 10, max_p99_ratio: 100 }\n";
    let fleet = Fleet::start(2, plan, same_answer()).await;
    let admins: Vec<SocketAddr> = fleet.proxies.iter().map(|p| p.admin).collect();
    let traffic = Traffic::start(&fleet.proxies.iter().map(|p| p.addr).collect::<Vec<_>>());
    let walk = watch_until_done([admins[0], admins[1]], Duration::from_secs(60)).await.unwrap_or_else(|w| {
        let history = fleet.cli(&["history", "items", "--format", "json"]).stdout;
        panic!("the rollout is not done: {w:#?}\n{}", String::from_utf8_lossy(&history))
    });
    let Walk { seen_weights, disagreements, .. } = walk;
    let (seen, failed) = traffic.stop().await;
    assert!(failed.is_empty(), "no request failed: {failed:?}");
    for weights in &seen_weights {
        assert_eq!(weights, &[0.0, 10.0, 50.0, 100.0], "each instance served every step, in order");
    }
    // Replicas read the state at their own ticks: they may differ for one
    // interval around a step, never by more than one step.
    assert!(disagreements.len() < 20, "instances disagreed too long: {disagreements:?}");
    let moved_back = seen.moved_back();
    assert!(moved_back.is_empty(), "no sticky user went back to legacy as the share grew: {moved_back:?}");
    let history = fleet.cli(&["history", "items", "--format", "json"]);
    let history: Vec<Value> = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(steps_entered(&history), ["\"shadow\"", "10", "50", "100"], "each step entered once: {history:#?}");
    assert_eq!(history.last().unwrap()["to"]["status"], "done");
    let metrics = get(admins[0], "/metrics").await.text();
    assert_eq!(metric_sum(&metrics, "strangler_rollout_step", &[("route", "items")]), 100.0);
}

#[tokio::test]
async fn a_candidate_failing_at_10_percent_is_rolled_back_on_both_instances() {
    let plan = "      steps: [shadow, 10, 100]\n      hold: 30s\n      gates: { min_samples: 20, min_requests: 10, max_p99_ratio: 100 }\n";
    let fleet = Fleet::start(2, plan, same_answer()).await;
    let admins: Vec<SocketAddr> = fleet.proxies.iter().map(|p| p.admin).collect();
    let traffic = Traffic::start(&fleet.proxies.iter().map(|p| p.addr).collect::<Vec<_>>());
    // Skip the long shadow hold by hand: 10% now.
    let promoted = fleet.cli(&["promote", "items", "--actor", "test"]);
    assert!(promoted.status.success(), "{}", String::from_utf8_lossy(&promoted.stderr));
    wait_for(Duration::from_secs(10), "both instances serve 10%", || async {
        effective(admins[0]).await == 10.0 && effective(admins[1]).await == 10.0
    })
    .await;
    fleet.comments.set(Behaviour::Status(500));
    let took = wait_for(Duration::from_secs(10), "both instances rolled back", || async {
        effective(admins[0]).await == 0.0 && effective(admins[1]).await == 0.0
    })
    .await;
    let (_, failed) = traffic.stop().await;
    let s = status(admins[0]).await;
    assert_eq!(s["status"], "rolled_back", "{s}");
    println!("rolled back {took:?} after the candidate turned to 500s; {} answers were 5xx", failed.len());
    let history = String::from_utf8(fleet.cli(&["history", "items"]).stdout).unwrap();
    assert!(history.contains("rolled_back") && history.contains("failed"), "{history}");
    // Shadow copies of the stopped traffic may still be on their way: count from when they stop.
    let comments = &fleet.comments;
    let last = std::cell::Cell::new(comments.hits());
    wait_for(Duration::from_secs(5), "the last shadow copies arrived", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last.replace(comments.hits()) == comments.hits()
    })
    .await;
    let comments_hits = comments.hits();
    for _ in 0..30 {
        let r = get(fleet.proxies[1].addr, "/items/2").await;
        assert_eq!(r.header("x-strangler-upstream"), Some("legacy"));
    }
    let mirrored = fleet.comments.hits() - comments_hits;
    assert!(mirrored <= 30, "after a rollback the candidate gets shadow copies only ({mirrored})");
    drop(fleet.legacy);
}

#[tokio::test]
async fn a_candidate_whose_answers_differ_never_leaves_shadow() {
    let plan =
        "      steps: [shadow, 50, 100]\n      hold: 200ms\n      gates: { min_samples: 20, min_requests: 10 }\n";
    let fleet = Fleet::start(1, plan, Behaviour::json(json!({"items": [1, 2]}))).await;
    let admin = fleet.proxies[0].admin;
    let traffic = Traffic::start(&[fleet.proxies[0].addr]);
    wait_for(Duration::from_secs(20), "the rollout is rolled back", || async {
        status(admin).await["status"] == "rolled_back"
    })
    .await;
    let (seen, failed) = traffic.stop().await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(seen.all_from("legacy"), "no client was ever answered by the candidate");
    let s = status(admin).await;
    assert_eq!(s["step"], "shadow", "{s}");
    let failed_gate = s["gates"].as_array().unwrap().iter().find(|g| g["ok"] == false).cloned();
    assert_eq!(failed_gate.unwrap()["name"], "min_match", "{s}");
}

#[tokio::test]
async fn pause_resume_promote_and_abort_do_what_they_say_and_are_recorded_with_their_actor() {
    let plan = "      steps: [shadow, 10, 100]\n      hold: 1h\n";
    let fleet = Fleet::start(1, plan, same_answer()).await;
    let admin = fleet.proxies[0].admin;
    wait_for(Duration::from_secs(10), "the rollout began", || async { status(admin).await["status"] == "holding" })
        .await;
    let run = |args: &[&str]| {
        let out = fleet.cli(args);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, out) = run(&["promote", "items", "--actor", "alice"]);
    assert_eq!(code, Some(0), "{out}");
    wait_for(Duration::from_secs(10), "10% served", || async { effective(admin).await == 10.0 }).await;
    assert_eq!(run(&["pause", "items", "--actor", "alice"]).0, Some(0));
    wait_for(Duration::from_secs(5), "paused", || async { status(admin).await["status"] == "paused" }).await;
    assert_eq!(effective(admin).await, 10.0, "a pause keeps the step's weights");
    // The same commands on the admin API (loopback), with the actor named.
    let resume = req(http::Method::POST, admin, "/rollout/items/resume")
        .header("x-actor", "bob")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = send(&http1(), resume).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(run(&["abort", "items", "--actor", "carol"]).0, Some(0));
    wait_for(Duration::from_secs(10), "everything back on legacy", || async { effective(admin).await == 0.0 }).await;
    let (code, out) = run(&["pause", "items"]);
    assert_eq!(code, Some(1), "a rolled-back rollout cannot be paused: {out}");
    assert!(out.contains("cannot pause a rollout that is rolled_back"), "{out}");
    let refused = req(http::Method::POST, admin, "/rollout/items/promote")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = send(&http1(), refused).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (409, Some("conflict")), "{}", r.text());
    let (_, history) = run(&["history", "items", "--format", "json"]);
    let history: Vec<Value> = serde_json::from_str(&history).unwrap();
    let by: Vec<(String, String)> = history
        .iter()
        .filter(|t| !t["actor"].is_null())
        .map(|t| (t["reason"].as_str().unwrap().to_string(), t["actor"].as_str().unwrap().to_string()))
        .collect();
    let expected = [
        ("promote by alice", "alice"),
        ("pause by alice", "alice"),
        ("resume by bob", "bob"),
        ("abort by carol", "carol"),
    ];
    assert_eq!(by, expected.map(|(r, a)| (r.to_string(), a.to_string())));
    let (code, text) = run(&["status"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("items: step 10") && text.contains("rolled_back"), "{text}");
    // An edit of the plan is in the audit trail too.
    let edited = std::fs::read_to_string(fleet.config.path()).unwrap().replace("hold: 1h", "hold: 2h");
    fleet.config.write_in_place(&edited);
    fleet.proxies[0].wait_for_log("config reloaded").await;
    let (_, text) = run(&["history", "items"]);
    assert!(text.contains("config reload (") && text.contains("route changed"), "{text}");
}

#[tokio::test]
async fn killing_one_instance_mid_rollout_leaves_the_other_to_go_on_from_the_same_step() {
    let plan = "      steps: [shadow, 10, 50, 100]\n      hold: 1s\n      \
                gates: { min_samples: 20, min_requests: 10, max_p99_ratio: 100 }\n";
    let mut fleet = Fleet::start(2, plan, same_answer()).await;
    let survivor = fleet.proxies[1].admin;
    let traffic = Traffic::start(&fleet.proxies.iter().map(|p| p.addr).collect::<Vec<_>>());
    wait_for(Duration::from_secs(30), "the rollout reached 10%", || async { effective(survivor).await >= 10.0 }).await;
    fleet.proxies[0].child.kill().await.unwrap();
    wait_for(Duration::from_secs(60), "the survivor finished the rollout", || async {
        status(survivor).await["status"] == "done"
    })
    .await;
    let (_, failed) = traffic.stop().await;
    // Requests in flight on the killed instance fail; none on the survivor may.
    assert!(failed.iter().all(|e| !e.starts_with('5')), "{failed:?}");
    let history = fleet.cli(&["history", "items", "--format", "json"]);
    let history: Vec<Value> = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(steps_entered(&history), ["\"shadow\"", "10", "50", "100"], "no step skipped or repeated: {history:#?}");
}

#[tokio::test]
async fn without_its_state_an_instance_keeps_its_weights_shows_paused_and_resumes_when_it_is_back() {
    let plan = "      steps: [shadow, 10, 100]\n      hold: 500ms\n      \
                gates: { min_samples: 20, min_requests: 10, max_p99_ratio: 100 }\n";
    let fleet = Fleet::start(1, plan, same_answer()).await;
    let admin = fleet.proxies[0].admin;
    let state = fleet.config.dir.path().join("rollouts.json");
    let traffic = Traffic::start(&[fleet.proxies[0].addr]);
    let promoted = fleet.cli(&["promote", "items", "--actor", "test"]);
    assert!(promoted.status.success());
    wait_for(Duration::from_secs(10), "10% served", || async { effective(admin).await == 10.0 }).await;
    // The state goes away: a directory where the file was cannot be read.
    let saved = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    wait_for(Duration::from_secs(10), "status shows paused", || async {
        let body = admin_json(admin, "/rollout").await;
        body["rollouts"][0]["status"] == "paused" && body["state_error"].is_string()
    })
    .await;
    wait_for(Duration::from_secs(10), "the pilot counts its failed evaluations", || async {
        metric_sum(&get(admin, "/metrics").await.text(), "strangler_rollout_state_errors_total", &[]) >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // longer than the hold: no step may be taken
    assert_eq!(effective(admin).await, 10.0, "the weights in force stay while the state is gone");
    std::fs::remove_dir(&state).unwrap();
    std::fs::write(&state, saved).unwrap();
    wait_for(Duration::from_secs(30), "the rollout moves on once the state is back", || async {
        status(admin).await["status"] == "done"
    })
    .await;
    let (_, failed) = traffic.stop().await;
    assert!(failed.is_empty(), "{failed:?}");
}
