//! A throwaway PostgreSQL server from Debian's `postgresql` package: `initdb`
//! in a temporary directory, `postgres` as a child process on an ephemeral
//! loopback port, stopped and removed on drop. As root (CI) the server runs
//! as `nobody`, since PostgreSQL refuses to run as root.
//!
//! Std only (no client code), so the store's benchmark includes this same
//! file. Binaries are found through `STRANGLER_PG_BIN`, then the newest
//! `/usr/lib/postgresql/<version>/bin`, then `PATH`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser the server is created with, and its password (scram-sha-256 over TCP).
pub const PG_USER: &str = "strangler";
pub const PG_PASSWORD: &str = "fleet-secret";

/// A running server; stopped and deleted on drop.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    /// A new cluster, started and accepting connections.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("strangler-pg-").tempdir().expect("a temporary directory");
        let run_as = running_as_root().then(nobody);
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the data directory to nobody");
        }
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PG_PASSWORD).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", PG_USER, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "-N"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let out = as_user(&mut initdb, run_as).output().expect("running initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut server = Postgres { port: 0, dir, bin, run_as, child: None };
        for _ in 0..5 {
            server.port = free_port();
            if server.try_start() {
                return server;
            }
        }
        panic!("PostgreSQL did not start; its log:\n{}", server.log());
    }

    /// The DSN of the `postgres` database, without the password.
    pub fn dsn(&self) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// The DSN with the password in it.
    pub fn dsn_with_password(&self) -> String {
        format!("postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// A new database on this server, and its DSN with the password.
    pub fn create_database(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", PG_USER, "-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE {name}"))
            .env("PGPASSWORD", PG_PASSWORD)
            .output()
            .expect("running psql");
        assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
        format!("postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/{name}?sslmode=disable", self.port)
    }

    /// The directory the server's files live in (readable by it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Extra `postgresql.conf` lines (e.g. TLS), applied at the next start.
    pub fn configure(&self, lines: &str) {
        use std::io::Write;
        let conf = self.dir.path().join("data/postgresql.conf");
        let mut file = std::fs::OpenOptions::new().append(true).open(conf).unwrap();
        writeln!(file, "{lines}").unwrap();
    }

    /// Hands `path` to the server's user (a key file it must read).
    pub fn give(&self, path: &Path) {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// Stops the server as `pg_ctl stop -m fast` does (SIGINT): sessions are
    /// ended, the port closes.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "INT");
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again, on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        assert!(self.try_start(), "PostgreSQL did not start again on port {}; its log:\n{}", self.port, self.log());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn try_start(&mut self) -> bool {
        let log_path = self.dir.path().join("postgres.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).unwrap();
        }
        let before = self.log().len();
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"])
            .arg(self.dir.path())
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "shared_buffers=32MB", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = as_user(&mut command, self.run_as).spawn().expect("starting postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let log = self.log();
            if log.get(before..).is_some_and(|new| new.contains("database system is ready to accept connections")) {
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(&child, "QUIT");
        let _ = child.wait();
        false
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: nothing here needs to survive.
            signal(&child, "QUIT");
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status();
}

fn as_user(command: &mut Command, run_as: Option<(u32, u32)>) -> &mut Command {
    // Somewhere the server's user may be (it cannot enter a root-only working directory).
    command.current_dir(std::env::temp_dir());
    if let Some((uid, gid)) = run_as {
        command.gid(gid).uid(uid);
    }
    command
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// The uid and gid of `nobody`.
fn nobody() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "nobody"]).output().expect("running id");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("nobody has an id")
    };
    (id("-u"), id("-g"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The directory with `initdb` and `postgres`.
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRANGLER_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let on_path =
        std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").exists()));
    on_path.unwrap_or_else(|| {
        panic!(
            "\n\nThese tests need PostgreSQL's server binaries (initdb, postgres), which are missing.\n\
             Run `make system-deps` (or: apt-get install postgresql), or point STRANGLER_PG_BIN at them.\n"
        )
    })
}
