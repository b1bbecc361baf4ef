//! A throwaway Prometheus from Debian's `prometheus` package: a temporary
//! config and TSDB, the server as a child process on an ephemeral loopback
//! port, killed and removed on drop. It scrapes every second the targets
//! listed in a file (`file_sd`), so a test starts it before the proxies
//! whose `rollout.prometheus:` names it, then tells it their admin ports.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::get;

/// Where Debian installs the server.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// A running server; killed and deleted on drop.
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`, as `rollout.prometheus:` takes it.
    pub url: String,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl Prometheus {
    /// A server with no targets yet, ready to answer queries.
    pub async fn start() -> Prometheus {
        assert!(
            std::path::Path::new(PROMETHEUS_BIN).exists(),
            "\n\nThese tests need Prometheus ({PROMETHEUS_BIN}): apt-get install prometheus (see `make system-deps`).\n"
        );
        let dir = tempfile::Builder::new().prefix("strangler-prom-").tempdir().expect("a temporary directory");
        let targets = dir.path().join("targets.json");
        std::fs::write(&targets, "[]").unwrap();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n\
             \x20 - job_name: strangler\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n\
             \x20   file_sd_configs:\n      - files: [\"{}\"]\n        refresh_interval: 1s\n",
            targets.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut child = spawn(&dir, addr);
            if ready(&mut child, addr).await {
                return Prometheus { url: format!("http://{addr}"), addr, dir, child };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        panic!("Prometheus did not start; its log:\n{log}");
    }

    /// Scrapes `/metrics` of these admin listeners from now on (replacing any before).
    pub fn scrape(&self, admins: &[SocketAddr]) {
        let list: Vec<String> = admins.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!("[{{\"targets\": [{}], \"labels\": {{}}}}]", list.join(", "));
        // Written whole, then renamed over: Prometheus never reads half a file.
        let staged = self.dir.path().join("targets.json.new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(staged, self.targets()).unwrap();
    }

    /// Waits until `n` targets are up (scraped at least once).
    pub async fn wait_for_targets_up(&self, n: usize) {
        super::wait_for(Duration::from_secs(30), &format!("Prometheus scrapes {n} targets"), || async {
            let answer = get(self.addr, "/api/v1/targets?state=active").await.json();
            let active = answer["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
            active.iter().filter(|t| t["health"] == "up").count() == n
        })
        .await;
    }

    fn targets(&self) -> PathBuf {
        self.dir.path().join("targets.json")
    }
}

fn spawn(dir: &tempfile::TempDir, addr: SocketAddr) -> Child {
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    Command::new(PROMETHEUS_BIN)
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting prometheus")
}

/// Whether the server came up on `addr` (false if it exited: the port was taken).
async fn ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() && get(addr, "/-/ready").await.status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
