//! The proxy under test: in-process (`server::run`, the real server on an
//! ephemeral port) or as the real binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use strangler::server::{self, ServeOptions};
use strangler::{reload, Shared};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A config file in its own directory, as ops would keep it.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new(text: &str) -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routes.yaml"), text).unwrap();
        ConfigDir { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("routes.yaml")
    }

    /// Rewrites the file in place (truncate and write, as `echo >` does).
    pub fn write_in_place(&self, text: &str) {
        std::fs::write(self.path(), text).unwrap();
    }

    /// Writes a temporary file and renames it over the config (as editors do).
    pub fn rename_over(&self, text: &str) {
        let tmp = self.dir.path().join(".routes.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.path()).unwrap();
    }

    /// Lays the config out as Kubernetes mounts a ConfigMap: `routes.yaml ->
    /// ..data/routes.yaml`, `..data -> ..<version>`; each call swaps `..data`
    /// atomically to a new version directory.
    pub fn kubernetes_swap(&self, text: &str, version: u32) {
        let root = self.dir.path();
        let version_dir = root.join(format!("..v{version}"));
        std::fs::create_dir_all(&version_dir).unwrap();
        std::fs::write(version_dir.join("routes.yaml"), text).unwrap();
        let tmp_link = root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(format!("..v{version}"), &tmp_link).unwrap();
        std::fs::rename(&tmp_link, root.join("..data")).unwrap();
        let link = self.path();
        if std::fs::symlink_metadata(&link).map(|m| !m.file_type().is_symlink()).unwrap_or(true) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("..data/routes.yaml", &link).unwrap();
        }
    }
}

/// A config with the given upstreams and route lines, listening on port 0.
pub fn config(upstreams: &[(&str, &str)], routes: &str) -> String {
    let mut text = String::from("listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\nupstreams:\n");
    for (name, url) in upstreams {
        text.push_str(&format!("  {name}:\n    targets: [\"{url}\"]\n    connect_timeout: 500ms\n    timeout: 2s\n"));
    }
    text.push_str("routes:\n");
    text.push_str(routes);
    text
}

/// The real server, run in the test's runtime.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub shared: Arc<Shared>,
    pub config: ConfigDir,
    stop: Option<oneshot::Sender<()>>,
    _watcher: reload::Watcher,
}

impl TestProxy {
    pub async fn start(text: &str) -> TestProxy {
        Self::start_with(text, ServeOptions::default()).await
    }

    pub async fn start_with(text: &str, options: ServeOptions) -> TestProxy {
        // The access log's default destination is stderr, which in-process
        // proxies share with the test binary: their lines would bury its
        // output. Tests that read access lines use a file or the binary.
        strangler::access_log::silence_stderr();
        let config = ConfigDir::new(text);
        let shared = Shared::load(&config.path()).unwrap_or_else(|e| panic!("config: {e}"));
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
        let watcher = reload::spawn(config.path(), shared.clone(), Duration::from_millis(500));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::run(proxy, admin, shared.clone(), options, async {
            let _ = stopped.await;
        }));
        TestProxy { addr, admin: admin_addr, shared, config, stop: Some(stop), _watcher: watcher }
    }

    /// Starts draining, as SIGTERM does.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn hash(&self) -> String {
        self.shared.table.load().hash.clone()
    }

    /// Waits until the table in force has `hash` (or panics after a while).
    pub async fn wait_for_hash(&self, hash: &str) {
        for _ in 0..100 {
            if self.hash() == hash {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("config with hash {hash} was not applied");
    }
}

/// The `strangler` binary, started as ops would start it.
pub struct BinaryProxy {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// stderr, line by line: diagnostics and (by default) access-log lines.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// stdout, line by line (diff records with `shadow.log: "-"`).
    pub stdout: Arc<std::sync::Mutex<Vec<String>>>,
}

/// The binary under test: this build's, or `STRANGLER_TEST_BIN` (a release,
/// profile-guided or BOLT-reordered build: `make test-pgo` runs the suite on
/// the binary `make bench` measures and the image ships).
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("STRANGLER_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strangler").to_string())
    })
}

impl BinaryProxy {
    pub async fn start(config: &Path, extra: &[&str]) -> BinaryProxy {
        Self::start_with_env(config, extra, &[]).await
    }

    /// As [`Self::start`], with these environment variables set (`POD_NAME`, ...).
    pub async fn start_with_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> BinaryProxy {
        let mut child = tokio::process::Command::new(binary())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("the proxy logs its addresses")
                .unwrap()
                .unwrap_or_else(|| panic!("the proxy exited early: {:?}", log.lock().unwrap()));
            addr = field(&line, "proxy").and_then(|v| v.parse().ok());
            admin = field(&line, "admin").and_then(|v| v.parse().ok());
            log.lock().unwrap().push(line);
        }
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (sink, mut out_lines) = (stdout.clone(), BufReader::new(child.stdout.take().unwrap()).lines());
        tokio::spawn(async move {
            while let Ok(Some(line)) = out_lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        BinaryProxy { child, addr: addr.unwrap(), admin: admin.unwrap(), log, stdout }
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill").args(["-s", signal, &pid]).status().unwrap();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        for _ in 0..100 {
            if self.log_text().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no log line with {needle:?} in:\n{}", self.log_text());
    }
}

/// `key=value` (text logs) or `"key":"value"` (JSON logs) from a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    for pattern in [format!("{key}="), format!("\"{key}\":\"")] {
        if let Some(i) = line.find(&pattern) {
            let rest = &line[i + pattern.len()..];
            let end = rest.find([' ', '"', ',']).unwrap_or(rest.len());
            return Some(&rest[..end]);
        }
    }
    None
}
