//! Autopilot rollouts for a fleet: two instances of the real binary keep
//! their rollout state and their shadow records in one real PostgreSQL
//! (Debian's, per test), and their 5xx and p99 gates read a real Prometheus
//! (Debian's) scraping both admin ports every second. One instance decides
//! at a time (it holds the store's lead lock), the other follows; the match
//! gate reads the fleet's records, judged as `strangler report` judges them.
//! Holds of a second or two and an interval of 500 ms keep each test short.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strangler_store::tokio_postgres;

use crate::support::*;

/// Time between two evaluations (and two reads of the state by a follower).
const INTERVAL_MS: u64 = 500;

/// Both upstreams answer this, so the shadow comparison matches (the test
/// upstreams name themselves in `x-upstream`, which the route ignores).
fn same_answer() -> Behaviour {
    Behaviour::json(json!({"items": [1, 2, 3]}))
}

/// Shadow records and rollout state in the store at `dsn`; the route
/// `items` rolls out from `legacy` to `comments` with `plan` (indented
/// lines under `rollout:`), its gates reading Prometheus at `prometheus`.
fn fleet_config(dsn: &str, prometheus: &str, legacy: &TestUpstream, comments: &TestUpstream, plan: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\n\
         shadow: {{ log: \"off\", store: \"{dsn}\" }}\n\
         autopilot: {{ state: \"{dsn}\", interval: {INTERVAL_MS}ms }}\n\
         upstreams:\n  legacy: {{ targets: [\"{legacy}\"] }}\n  comments: {{ targets: [\"{comments}\"] }}\n\
         routes:\n  - name: items\n    prefix: /items\n    upstream: legacy\n    sticky: {{ header: X-User-Id }}\n\
         \x20   shadow: {{ upstream: comments, ignore_headers: [x-upstream] }}\n\
         \x20   rollout:\n      to: comments\n      prometheus: {prometheus}\n{plan}",
        legacy = legacy.url(),
        comments = comments.url(),
    )
}

/// Two replicas (`pod-a`, `pod-b`) sharing one store, scraped by one Prometheus.
struct Fleet {
    pg: Postgres,
    _prometheus: Prometheus,
    comments: TestUpstream,
    _legacy: TestUpstream,
    config: ConfigDir,
    proxies: Vec<BinaryProxy>,
}

impl Fleet {
    async fn start(plan: &str, comments_says: Behaviour) -> Fleet {
        let pg = Postgres::start();
        let prometheus = Prometheus::start().await;
        let legacy = TestUpstream::start("legacy", same_answer()).await;
        let comments = TestUpstream::start("comments", comments_says).await;
        let text = fleet_config(&pg.dsn_with_password(), &prometheus.url, &legacy, &comments, plan);
        let config = ConfigDir::new(&text);
        let mut proxies = Vec::new();
        for pod in ["pod-a", "pod-b"] {
            let env = [("POD_NAME", pod)];
            proxies.push(BinaryProxy::start_with_env(&config.path(), &["--threads", "1"], &env).await);
        }
        prometheus.scrape(&proxies.iter().map(|p| p.admin).collect::<Vec<_>>());
        prometheus.wait_for_targets_up(2).await;
        Fleet { pg, _prometheus: prometheus, comments, _legacy: legacy, config, proxies }
    }

    fn admins(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(|p| p.admin).collect()
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(|p| p.addr).collect()
    }

    /// `strangler rollout ARGS --config …` against the shared store: exit
    /// code and output (stdout, then stderr).
    fn cli(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = self.run(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut command = std::process::Command::new(binary());
        command.arg("rollout").args(args).arg("--config").arg(self.config.path()).output().unwrap()
    }

    /// The route's audit trail from the store, through the CLI.
    fn history(&self) -> Vec<Value> {
        let out = self.run(&["history", "items", "--format", "json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The instance that decides, once exactly one of the live ones says so.
    async fn decider(&self, live: &[usize]) -> usize {
        let found = std::cell::Cell::new(None);
        wait_for(Duration::from_secs(20), "exactly one instance decides", || async {
            let mut leaders = Vec::new();
            for &i in live {
                if admin_json(self.proxies[i].admin, "/rollout").await["leader"] == true {
                    leaders.push(i);
                }
            }
            found.set(leaders.first().copied());
            leaders.len() == 1
        })
        .await;
        found.get().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_walks_a_good_candidate_to_done_with_one_decider_and_the_same_weights_on_both() {
    let started = Instant::now();
    let plan = "      steps: [shadow, 10, 50, 100]\n      hold: 1s\n      \
                gates: { min_samples: 20, min_requests: 10, max_p99_ratio: 100 }\n";
    let fleet = Fleet::start(plan, same_answer()).await;
    let admins = fleet.admins();
    let traffic = Traffic::paced(&fleet.addrs(), Duration::from_millis(2));
    let walk = watch_until_done([admins[0], admins[1]], Duration::from_secs(60))
        .await
        .unwrap_or_else(|w| panic!("the rollout is not done: {w:#?}\n{:#?}", fleet.history()));
    let Walk { seen_weights, disagreements, .. } = walk;
    let (seen, failed) = traffic.stop().await;
    assert!(failed.is_empty(), "no request failed: {failed:?}");
    for weights in &seen_weights {
        assert_eq!(weights, &[0.0, 10.0, 50.0, 100.0], "each instance served every step, in order");
    }
    // Both switch at the instant written in the state; a poll of two
    // instances in turn may straddle it.
    assert!(disagreements.len() < 10, "the instances disagreed too long: {disagreements:?}");
    let moved_back = seen.moved_back();
    assert!(moved_back.is_empty(), "no sticky user went back to legacy as the share grew: {moved_back:?}");
    let history = fleet.history();
    assert_eq!(steps_entered(&history), ["\"shadow\"", "10", "50", "100"], "each step entered once: {history:#?}");
    assert_eq!(history.last().unwrap()["to"]["status"], "done");
    assert!(history.iter().all(|t| t["actor"].is_null()), "the pilot alone moved it: {history:#?}");
    // The step to 50% was taken on the fleet's evidence: the match gate from
    // the store's records, 5xx and p99 from Prometheus.
    let to_50 = history.iter().find(|t| t["to"]["step"] == 50).unwrap();
    let source = |gate: &str| {
        let reading = to_50["readings"].as_array().unwrap().iter().find(|r| r["name"] == gate).cloned();
        reading.and_then(|r| r["source"].as_str().map(str::to_string)).unwrap_or_default()
    };
    assert!(source("min_match").starts_with("fleet store postgres://strangler:***@"), "{to_50:#}");
    assert!(source("max_5xx_ratio").starts_with("sum(increase(strangler_requests_total{"), "{to_50:#}");
    // One decides, the other follows; `status` names the decider.
    let decider = fleet.decider(&[0, 1]).await;
    let mut leader_gauges = 0.0;
    for admin in &admins {
        leader_gauges += metric_sum(&get(*admin, "/metrics").await.text(), "strangler_rollout_leader", &[]);
    }
    assert_eq!(leader_gauges, 1.0, "strangler_rollout_leader is 1 on one instance only");
    let (code, text) = fleet.cli(&["status"]);
    assert_eq!(code, Some(0), "{text}");
    let pod = ["pod-a", "pod-b"][decider];
    assert!(text.contains(&format!("decided by: strangler-pilot {pod}")), "{text}");
    println!("{text}");
    println!("walked shadow -> 10 -> 50 -> 100 -> done in {:?} (test total)", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_rolls_back_a_candidate_failing_at_10_percent_on_both_instances_within_an_interval() {
    let plan = "      steps: [shadow, 10, 100]\n      hold: 30s\n      \
                gates: { min_samples: 20, min_requests: 10, max_p99_ratio: 100 }\n";
    let fleet = Fleet::start(plan, same_answer()).await;
    let admins = fleet.admins();
    let traffic = Traffic::paced(&fleet.addrs(), Duration::from_millis(2));
    let (code, out) = fleet.cli(&["promote", "items", "--actor", "test"]);
    assert_eq!(code, Some(0), "{out}");
    wait_for(Duration::from_secs(10), "both instances serve 10%", || async {
        effective(admins[0]).await == 10.0 && effective(admins[1]).await == 10.0
    })
    .await;
    let broke_at = pilot_clock();
    fleet.comments.set(Behaviour::Status(500));
    // When each instance first serves 0% again, by the clock the state uses.
    let back_at = [std::cell::Cell::new(None::<u64>), std::cell::Cell::new(None)];
    wait_for(Duration::from_secs(20), "both instances rolled back", || async {
        for (at, admin) in back_at.iter().zip(&admins) {
            if at.get().is_none() && effective(*admin).await == 0.0 {
                at.set(Some(pilot_clock()));
            }
        }
        back_at.iter().all(|at| at.get().is_some())
    })
    .await;
    let (_, failed) = traffic.stop().await;
    let history = fleet.history();
    let rollback = history.last().unwrap();
    assert_eq!(rollback["to"]["status"], "rolled_back", "{history:#?}");
    assert!(rollback["actor"].is_null() && rollback["reason"].as_str().unwrap().contains("failed"), "{rollback:#}");
    let decided_at = rollback["at_ms"].as_u64().unwrap();
    let lags: Vec<u64> = back_at.iter().map(|at| at.get().unwrap().saturating_sub(decided_at)).collect();
    println!(
        "{} {}ms after the candidate turned to 500s ({} answers were 5xx); on 0% {lags:?} ms after the decision",
        rollback["reason"].as_str().unwrap(),
        decided_at - broke_at,
        failed.len()
    );
    // One interval for the follower's next read, and slack for this poll
    // of two instances and the rebuild of the table.
    let within = INTERVAL_MS + 500;
    assert!(lags.iter().all(|&lag| lag <= within), "both on 0% within {within} ms of the decision: {lags:?}");
    for admin in &admins {
        assert_eq!(status(*admin).await["status"], "rolled_back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_keeps_a_candidate_whose_answers_differ_in_shadow() {
    let plan = "      steps: [shadow, 50, 100]\n      hold: 1s\n      gates: { min_samples: 20, min_requests: 10 }\n";
    let fleet = Fleet::start(plan, Behaviour::json(json!({"items": [1, 2]}))).await;
    let admins = fleet.admins();
    let traffic = Traffic::paced(&fleet.addrs(), Duration::from_millis(2));
    wait_for(Duration::from_secs(30), "the rollout is rolled back", || async {
        status(admins[0]).await["status"] == "rolled_back"
    })
    .await;
    let (seen, failed) = traffic.stop().await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(seen.all_from("legacy"), "no client was ever answered by the candidate");
    for admin in &admins {
        let s = status(*admin).await;
        assert_eq!((s["step"].as_str(), s["status"].as_str()), (Some("shadow"), Some("rolled_back")), "{s}");
        let gate = s["gates"].as_array().unwrap().iter().find(|g| g["ok"] == false).cloned().unwrap();
        assert_eq!(gate["name"], "min_match", "{s}");
        assert!(gate["source"].as_str().unwrap().starts_with("fleet store "), "from the fleet's records: {s}");
    }
    assert_eq!(steps_entered(&fleet.history()), ["\"shadow\""], "never left shadow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_deciding_instance_leaves_the_other_to_go_on_from_the_same_step() {
    let plan = "      steps: [shadow, 10, 50, 100]\n      hold: 2s\n      \
                gates: { min_samples: 20, min_requests: 10, max_p99_ratio: 100 }\n";
    let mut fleet = Fleet::start(plan, same_answer()).await;
    let traffic = Traffic::paced(&fleet.addrs(), Duration::from_millis(2));
    let admins = fleet.admins();
    wait_for(Duration::from_secs(30), "the rollout reached 10%", || async {
        effective(admins[0]).await >= 10.0 && effective(admins[1]).await >= 10.0
    })
    .await;
    let decider = fleet.decider(&[0, 1]).await;
    let survivor = 1 - decider;
    let step_at_kill = status(admins[survivor]).await["step"].clone();
    fleet.proxies[decider].child.kill().await.unwrap();
    let took = wait_for(Duration::from_secs(20), "the survivor takes the lead", || async {
        admin_json(admins[survivor], "/rollout").await["leader"] == true
    })
    .await;
    wait_for(Duration::from_secs(60), "the survivor finished the rollout", || async {
        status(admins[survivor]).await["status"] == "done"
    })
    .await;
    let (_, failed) = traffic.stop().await;
    // Requests in flight on the killed instance fail; none answered may be a 5xx.
    assert!(failed.iter().all(|e| !e.starts_with('5')), "{failed:?}");
    let history = fleet.history();
    assert_eq!(steps_entered(&history), ["\"shadow\"", "10", "50", "100"], "no step skipped or repeated: {history:#?}");
    let pod = ["pod-a", "pod-b"][survivor];
    let s = status(admins[survivor]).await;
    assert_eq!(s["decided_by"], format!("strangler-pilot {pod}"), "{s}");
    println!("killed the decider on step {step_at_kill}; {pod} took the lead {took:?} later and finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_stopped_both_keep_their_weights_show_paused_and_resume_when_it_is_back() {
    // The pilot walks alone (a command could race its own step forward); a
    // hold long enough that the store is stopped before the step after 10%
    // is scheduled (a step already scheduled begins on time, store or not).
    let plan = "      steps: [shadow, 10, 100]\n      hold: 3s\n      \
                gates: { min_samples: 20, min_requests: 10, max_p99_ratio: 100 }\n";
    let mut fleet = Fleet::start(plan, same_answer()).await;
    let admins = fleet.admins();
    let traffic = Traffic::paced(&fleet.addrs(), Duration::from_millis(2));
    wait_for(Duration::from_secs(20), "both serve 10%", || async {
        effective(admins[0]).await == 10.0 && effective(admins[1]).await == 10.0
    })
    .await;
    fleet.pg.stop();
    wait_for(Duration::from_secs(10), "both show paused, store unavailable", || async {
        let mut paused = 0;
        for admin in &admins {
            let body = admin_json(*admin, "/rollout").await;
            let s = &body["rollouts"][0];
            let unavailable = s["reason"] == "store unavailable" && body["state_error"].is_string();
            paused += usize::from(s["status"] == "paused" && unavailable);
        }
        paused == 2
    })
    .await;
    for admin in &admins {
        wait_for(Duration::from_secs(10), "the pilot counts its failed evaluations", || async {
            metric_sum(&get(*admin, "/metrics").await.text(), "strangler_rollout_state_errors_total", &[]) >= 1.0
        })
        .await;
    }
    let (code, out) = fleet.cli(&["status"]);
    assert_eq!(code, Some(2), "the CLI says the state is unavailable: {out}");
    // Past the hold: nothing may move, and both keep serving 10%.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!([effective(admins[0]).await, effective(admins[1]).await], [10.0, 10.0]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.pg.restart();
    let took = wait_for(Duration::from_secs(30), "the rollout goes on by itself", || async {
        status(admins[0]).await["status"] == "done" && status(admins[1]).await["status"] == "done"
    })
    .await;
    let (_, failed) = traffic.stop().await;
    assert!(failed.is_empty(), "clients never felt the store go: {failed:?}");
    let history = fleet.history();
    assert_eq!(steps_entered(&history), ["\"shadow\"", "10", "100"], "{history:#?}");
    println!("with the store back, the rollout was done {took:?} later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_commands_do_what_they_say_and_are_recorded_with_their_actor() {
    let plan = "      steps: [shadow, 10, 100]\n      hold: 1h\n";
    let fleet = Fleet::start(plan, same_answer()).await;
    let admins = fleet.admins();
    wait_for(Duration::from_secs(10), "the rollout began", || async { status(admins[0]).await["status"] == "holding" })
        .await;
    let (code, out) = fleet.cli(&["promote", "items", "--actor", "alice"]);
    assert_eq!(code, Some(0), "{out}");
    wait_for(Duration::from_secs(10), "10% on both", || async {
        effective(admins[0]).await == 10.0 && effective(admins[1]).await == 10.0
    })
    .await;
    assert_eq!(fleet.cli(&["pause", "items", "--actor", "alice"]).0, Some(0));
    wait_for(Duration::from_secs(5), "paused on both", || async {
        status(admins[0]).await["status"] == "paused" && status(admins[1]).await["status"] == "paused"
    })
    .await;
    assert_eq!([effective(admins[0]).await, effective(admins[1]).await], [10.0, 10.0], "a pause keeps the weights");
    // The admin API of the instance that does not decide writes to the same state.
    let follower = 1 - fleet.decider(&[0, 1]).await;
    let resume = req(http::Method::POST, admins[follower], "/rollout/items/resume")
        .header("x-actor", "bob")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = send(&http1(), resume).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(Duration::from_secs(5), "holding again on both", || async {
        status(admins[0]).await["status"] == "holding" && status(admins[1]).await["status"] == "holding"
    })
    .await;
    assert_eq!(fleet.cli(&["abort", "items", "--actor", "carol"]).0, Some(0));
    wait_for(Duration::from_secs(10), "everything back on legacy", || async {
        effective(admins[0]).await == 0.0 && effective(admins[1]).await == 0.0
    })
    .await;
    let (code, out) = fleet.cli(&["pause", "items"]);
    assert_eq!(code, Some(1), "a rolled-back rollout cannot be paused: {out}");
    assert!(out.contains("cannot pause a rollout that is rolled_back"), "{out}");
    let by: Vec<(String, String)> = fleet
        .history()
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
    let (code, text) = fleet.cli(&["history", "items"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("10% paused -> 10% holding (resume by bob; bob)"), "{text}");
    // An edit of the plan is in the store's audit trail too, once per instance that read it.
    let edited = std::fs::read_to_string(fleet.config.path()).unwrap().replace("hold: 1h", "hold: 2h");
    fleet.config.write_in_place(&edited);
    for proxy in &fleet.proxies {
        proxy.wait_for_log("config reloaded").await;
    }
    wait_for(Duration::from_secs(10), "the reload is in the history", || async {
        fleet.cli(&["history", "items"]).1.contains("route changed")
    })
    .await;
}

/// Records to store: route, milliseconds after the step began, endpoint,
/// result, the (kind, pointer) of each field that differs, and how many.
type StoredRecords<'a> = (&'a str, i64, &'a str, &'a str, &'a [(&'a str, &'a str)], usize);

#[tokio::test]
async fn the_match_gate_counts_a_routes_records_as_the_report_does() {
    let pg = Postgres::start();
    let dsn = pg.dsn_with_password();
    let (mut db, connection) =
        dsn.parse::<tokio_postgres::Config>().unwrap().connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    strangler_store::schema::migrate(&mut db).await.unwrap();
    let since_ms: i64 = 1_800_000_000_000;
    let rows: &[StoredRecords] = &[
        ("items", 5, "/items/{id}", "match", &[], 50),
        ("items", 6, "/items/{id}", "mismatch", &[("body", "/name")], 5),
        // Noise for the endpoint, once array indexes are folded: a match.
        ("items", 7, "/items/{id}", "mismatch", &[("body", "/items/3/etag")], 7),
        // A header is noise by its lower-case name: a match.
        ("items", 8, "/items/{id}", "mismatch", &[("header", "ETag")], 3),
        // A status is never noise.
        ("items", 9, "/items/{id}", "mismatch", &[("status", ""), ("header", "etag")], 2),
        // Noise is per endpoint.
        ("items", 10, "/items", "mismatch", &[("body", "/items/3/etag")], 4),
        // Noise and a real difference: a mismatch.
        ("items", 11, "/items/{id}", "mismatch", &[("body", "/items/0/etag"), ("body", "/name")], 2),
        ("items", 12, "/items/{id}", "mismatch", &[], 1),
        ("items", 13, "/items/{id}", "shadow_error", &[], 3),
        ("items", 14, "/items/{id}", "skipped", &[], 2),
        // Before the step, or another route: not counted.
        ("items", -1000, "/items/{id}", "mismatch", &[("body", "/name")], 10),
        ("users", 20, "/users/{id}", "match", &[], 5),
    ];
    let mut n = 0;
    for (route, offset, endpoint, result, fields, count) in rows {
        for _ in 0..*count {
            n += 1;
            let ms = since_ms + offset;
            let diffs: Vec<Value> = fields
                .iter()
                .map(|(kind, pointer)| json!({"kind": kind, "pointer": pointer, "primary": 1, "shadow": 2}))
                .collect();
            let record = json!({
                "ts": rfc3339_ms(ms), "request_id": format!("r{n}"), "route": route, "endpoint": endpoint,
                "method": "GET", "path": "/items/1",
                "primary": {"upstream": "legacy", "status": 200, "latency_ms": 1.0, "body_bytes": 10},
                "shadow": {"upstream": "comments", "status": 200, "latency_ms": 1.0, "body_bytes": 10},
                "result": result, "diffs": diffs, "noise": [],
            });
            db.execute(
                "INSERT INTO shadow_records (id, ts, route, endpoint, instance, config_hash, result, record)
                 VALUES (gen_random_uuid(), to_timestamp($1::bigint::double precision / 1000), $2, $3, 'pod-a', 'h', $4, $5::text::jsonb)",
                &[&ms, route, endpoint, result, &record.to_string()],
            )
            .await
            .unwrap();
        }
    }
    for (endpoint, pointer) in [("/items/{id}", "/items/0/etag"), ("/items/{id}", "header:etag")] {
        db.execute(
            "INSERT INTO shadow_noise (route, endpoint, pointer, instance) VALUES ('items', $1, $2, 'pod-b')",
            &[&endpoint, &pointer],
        )
        .await
        .unwrap();
    }
    let gate = strangler_store::read::match_counts(&db, "items", since_ms).await.unwrap();
    let out = std::process::Command::new(binary())
        .args(["report", "--from", &dsn, "--route", "items", "--since", &rfc3339_ms(since_ms), "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = &report["routes"][0]["counts"];
    assert_eq!(
        (gate.compared, gate.matched),
        (counts["compared"].as_u64().unwrap(), counts["match"].as_u64().unwrap()),
        "the gate and the report agree: {report:#}"
    );
    assert_eq!((gate.compared, gate.matched), (74, 60), "50 matches, 7 + 3 mismatches of noise only");
}

#[test]
fn a_bad_autopilot_state_is_a_config_error_at_its_line_without_the_password() {
    let check = |autopilot: &str| {
        let text = format!(
            "listen: \"127.0.0.1:0\"\nautopilot:\n{autopilot}upstreams:\n  a:\n    targets: [\"http://127.0.0.1:1\"]\nroutes:\n  - name: r\n    prefix: /\n    upstream: a\n"
        );
        let dir = ConfigDir::new(&text);
        let out = std::process::Command::new(binary()).arg("check").arg(dir.path()).output().unwrap();
        assert!(!out.status.success(), "accepted: {autopilot}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = check("  interval: 1s\n  state: mysql://u:hunter2@db/x\n");
    assert!(err.contains("routes.yaml:4:3:") && err.contains("postgres://") && !err.contains("hunter2"), "{err}");
    let err = check("  state: postgres://u@db/x?sslmode=sometimes\n");
    assert!(err.contains("routes.yaml:3:3:") && err.contains("verify-full"), "{err}");
    let err = check("  state: postgres://u:hunter2@db/x\n  password_file: /run/secret\n");
    assert!(err.contains("routes.yaml:4:3:") && err.contains("give it once") && !err.contains("hunter2"), "{err}");
    let err = check("  state: ./rollouts.json\n  password_file: /run/secret\n");
    assert!(err.contains("routes.yaml:4:3:") && err.contains("postgres:// state"), "{err}");
}

/// Now, in milliseconds since the epoch: the clock the rollout state uses.
fn pilot_clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `2027-01-15T08:00:00.005Z` for epoch milliseconds.
fn rfc3339_ms(ms: i64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}
