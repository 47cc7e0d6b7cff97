//! A throwaway PostgreSQL cluster on a free loopback port, for the call
//! store's tests: `initdb` into a temp dir, `postgres` with fsync off,
//! trust authentication for user `agentline`, stopped (and removed) on drop.
//! As root (CI), the cluster runs as the `postgres` system user that the
//! Debian package creates, since PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

/// `initdb` on PATH or in Debian's versioned folder.
fn find_bin(name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    }) {
        return Some(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The command, run as `postgres` when we are root.
fn as_pg_user(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Postgres {
    /// Starts a cluster, or `None` (a skip) when PostgreSQL is not installed
    /// on a developer's machine; under CI a missing server is a failure.
    pub fn start() -> Option<Postgres> {
        let (initdb, postgres) = match (find_bin("initdb"), find_bin("postgres")) {
            (Some(i), Some(p)) => (i, p),
            _ => {
                if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
                    panic!("PostgreSQL (initdb, postgres) is not installed, and CI=true forbids skipping");
                }
                eprintln!("SKIP: PostgreSQL not installed");
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "cannot chown the cluster's folder to `postgres`");
            // The temp dir's parents must be traversable by `postgres`.
            let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
        }
        let out = as_pg_user(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-U", "agentline", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = super::free_port();
        let logf = std::fs::File::create(&log).expect("postgres log");
        if is_root() {
            let _ = Command::new("chown").arg("postgres").arg(&log).status();
        }
        let child = as_pg_user(&postgres)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn postgres");
        let mut pg = Postgres {
            child: Some(child),
            port,
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(st))) = pg.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited ({st}):\n{}", pg.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not listening in 30 s:\n{}",
                pg.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Accepting connections is not yet accepting logins.
        std::thread::sleep(Duration::from_millis(300));
        Some(pg)
    }

    /// The URL for `[store] url`.
    pub fn url(&self) -> String {
        format!("postgres://agentline@127.0.0.1:{}/postgres", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown. With runuser in between,
            // signal the whole group of the child.
            let _ = Command::new("pkill")
                .args(["-INT", "-P", &c.id().to_string()])
                .status();
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
