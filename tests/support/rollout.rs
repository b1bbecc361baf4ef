//! Helpers for autopilot tests: the route's rollout as an instance's admin
//! API shows it, and sticky traffic that remembers which upstream answered
//! each user, in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::*;

/// A GET of the admin API, as JSON.
pub async fn admin_json(admin: SocketAddr, path: &str) -> Value {
    get(admin, path).await.json()
}

/// The route's status on one instance's admin API.
pub async fn status(admin: SocketAddr) -> Value {
    admin_json(admin, "/rollout").await["rollouts"][0].clone()
}

/// Percent of the route's traffic on `comments`, as `/config` shows it.
pub async fn effective(admin: SocketAddr) -> f64 {
    let config = admin_json(admin, "/config").await;
    config["rollouts"][0]["effective"]["weights"]["comments"].as_f64().unwrap()
}

/// What two instances served while a rollout walked: each one's effective
/// weights in the order they changed, the polls where the two differed, and
/// the statuses last read.
#[derive(Debug)]
pub struct Walk {
    pub seen_weights: Vec<Vec<f64>>,
    pub disagreements: Vec<[f64; 2]>,
    pub statuses: [Value; 2],
}

/// Polls both instances until both say `done`. `Err` with what was seen
/// when one says `rolled_back` or `within` runs out.
pub async fn watch_until_done(admins: [SocketAddr; 2], within: Duration) -> Result<Walk, Walk> {
    let mut walk = Walk { seen_weights: vec![Vec::new(); 2], disagreements: Vec::new(), statuses: Default::default() };
    let deadline = Instant::now() + within;
    loop {
        let weights = [effective(admins[0]).await, effective(admins[1]).await];
        for (seen, w) in walk.seen_weights.iter_mut().zip(weights) {
            if seen.last() != Some(&w) {
                seen.push(w);
            }
        }
        if weights[0] != weights[1] {
            walk.disagreements.push(weights);
        }
        walk.statuses = [status(admins[0]).await, status(admins[1]).await];
        if walk.statuses.iter().all(|s| s["status"] == "done") {
            return Ok(walk);
        }
        if walk.statuses.iter().any(|s| s["status"] == "rolled_back") || Instant::now() > deadline {
            return Err(walk);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The steps a route's history entered (its `holding` transitions), in order.
pub fn steps_entered(history: &[Value]) -> Vec<String> {
    history.iter().filter(|t| t["to"]["status"] == "holding").map(|t| t["to"]["step"].to_string()).collect()
}

/// One answer to a sticky user: who gave it, and when the request left and
/// the answer came back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub upstream: String,
    pub sent: Instant,
    pub received: Instant,
}

/// Every user's answers, as [`Traffic`] saw them.
#[derive(Debug, Default)]
pub struct Seen(pub HashMap<String, Vec<Answer>>);

impl Seen {
    /// Whether every answer came from `upstream`.
    pub fn all_from(&self, upstream: &str) -> bool {
        self.0.values().flatten().all(|a| a.upstream == upstream)
    }

    /// Users sent back to `legacy` after `comments` had answered them: a
    /// request that left after a `comments` answer had arrived was answered
    /// by `legacy`. (Ordered by what the client knew, so two requests of one
    /// user in flight at once around a switch prove nothing either way.)
    pub fn moved_back(&self) -> Vec<String> {
        let mut users = Vec::new();
        for (user, answers) in &self.0 {
            let first_on_new = answers.iter().filter(|a| a.upstream == "comments").map(|a| a.received).min();
            let back = first_on_new.and_then(|t| answers.iter().find(|a| a.upstream == "legacy" && a.sent > t));
            if let (Some(t), Some(back)) = (first_on_new, back) {
                users.push(format!(
                    "{user}: on comments by {t:?}, then legacy for a request sent {:?} later",
                    back.sent - t
                ));
            }
        }
        users
    }
}

/// Requests through every instance, by sticky user, until stopped: which
/// upstream answered each user, and when.
pub struct Traffic {
    seen: Arc<Mutex<HashMap<String, Vec<Answer>>>>,
    failed: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Three clients per address, each sending as fast as answers come.
    pub fn start(addrs: &[SocketAddr]) -> Traffic {
        Traffic::paced(addrs, Duration::ZERO)
    }

    /// Three clients per address, each pausing `pause` between requests
    /// (to leave a shared machine some room).
    pub fn paced(addrs: &[SocketAddr], pause: Duration) -> Traffic {
        let seen = Arc::new(Mutex::new(HashMap::<String, Vec<Answer>>::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for (i, addr) in addrs.iter().copied().cycle().take(addrs.len() * 3).enumerate() {
            let (seen, failed, stopped) = (seen.clone(), failed.clone(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                let client = http1();
                let mut n = i;
                while !*stopped.borrow() {
                    let user = format!("user-{}", n % 300);
                    n += 7;
                    let request = req(http::Method::GET, addr, "/items/1")
                        .header("x-user-id", &user)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    let sent = Instant::now();
                    match send(&client, request).await {
                        Ok(r) if r.status == 200 => {
                            let upstream = r.header("x-strangler-upstream").unwrap_or("?").to_string();
                            let answer = Answer { upstream, sent, received: Instant::now() };
                            seen.lock().unwrap().entry(user).or_default().push(answer);
                        }
                        Ok(r) => failed.lock().unwrap().push(format!("{} {}", r.status, r.text())),
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }));
        }
        Traffic { seen, failed, stop, tasks }
    }

    /// Stops the clients: every user's answers, and the failures.
    pub async fn stop(self) -> (Seen, Vec<String>) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        (Seen(seen), failed)
    }
}
