//! Shared harness for integration tests: starts the real `agentline` binary on
//! free loopback ports and finds the real peers (sipp, baresip, sipsak).
#![allow(dead_code)]

pub mod audio;
pub mod baresip;
pub mod fakes;
pub mod kamailio;
pub mod pg;
pub mod rawsip;
pub mod sipp;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Returns the path of a peer program, or `None` when it is missing on a
/// developer's machine. Under CI (`CI=true`) a missing peer is a failure.
pub fn require_peer(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("CI").map(|v| v == "true").unwrap_or(false) => {
            panic!("peer `{name}` is not installed, and CI=true forbids skipping")
        }
        None => {
            eprintln!("SKIP: peer `{name}` not installed");
            None
        }
    }
}

/// A port that is free for both UDP and TCP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An even RTP base port with `count` free ports after it.
pub fn free_rtp_range(count: u16) -> (u16, u16) {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let pid_off = (std::process::id() % 40) as u16 * 200;
    loop {
        let n = NEXT.fetch_add(count + 2, Ordering::SeqCst);
        let base = 20000 + ((pid_off + n) % 9000) / 2 * 2;
        let ok = (base..base + count).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if ok {
            return (base, base + count - 1);
        }
    }
}

pub struct Server {
    child: Option<Child>,
    pub sip_port: u16,
    pub api_port: u16,
    pub rtp: (u16, u16),
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    /// The command line's extra arguments and environment, for
    /// [`Server::kill9_and_restart`].
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts `agentline run` with `profile` (TOML) written to a temp file; the
    /// listen addresses, RTP range, API address and state dir are set by flags.
    pub fn start(profile: &str) -> Server {
        Self::start_with_args(profile, &[])
    }

    pub fn start_with_args(profile: &str, extra_args: &[&str]) -> Server {
        Self::start_custom(profile, extra_args, None, &[])
    }

    /// [`Server::start_with_args`] with the server's stderr sent to `stderr`
    /// instead of [`Server::log`] (which then stays empty), and `env` added
    /// to its environment.
    pub fn start_custom(
        profile: &str,
        extra_args: &[&str],
        stderr: Option<Stdio>,
        env: &[(&str, &str)],
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile_path = dir.path().join("profile.toml");
        std::fs::write(&profile_path, profile).expect("write profile");
        let sip_port = free_port();
        let api_port = free_port();
        let rtp = free_rtp_range(100);
        let log = dir.path().join("agentline.log");
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = Self::spawn(
            dir.path(),
            (sip_port, api_port, rtp),
            &extra_args,
            &log,
            stderr,
            &env,
        );
        let mut s = Server {
            child: Some(child),
            sip_port,
            api_port,
            rtp,
            dir,
            log,
            extra_args,
            env,
        };
        s.wait_ready();
        s
    }

    /// `agentline run` in `dir` (profile.toml, state/) on these ports
    /// (SIP, API, RTP range), appending its stderr to `log` unless `stderr`
    /// is given.
    fn spawn(
        dir: &Path,
        (sip_port, api_port, rtp): (u16, u16, (u16, u16)),
        extra_args: &[String],
        log: &Path,
        stderr: Option<Stdio>,
        env: &[(String, String)],
    ) -> Child {
        let stderr = stderr.unwrap_or_else(|| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log file")
                .into()
        });
        Command::new(env!("CARGO_BIN_EXE_agentline"))
            .arg("run")
            .arg("--profile")
            .arg(dir.join("profile.toml"))
            .args(["--sip-listen", &format!("udp:127.0.0.1:{sip_port}")])
            .args(["--sip-listen", &format!("tcp:127.0.0.1:{sip_port}")])
            .args(["--rtp-ports", &format!("{}-{}", rtp.0, rtp.1)])
            .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("AGENTLINE_TEST_LOG")
                    .unwrap_or_else(|_| "info,rsipstack=warn".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn agentline")
    }

    /// `kill -9` (calls in progress die with it), then the same server
    /// again: same profile, ports and state directory; returns once ready.
    pub fn kill9_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let child = Self::spawn(
            self.dir.path(),
            (self.sip_port, self.api_port, self.rtp),
            &self.extra_args,
            &self.log,
            None,
            &self.env,
        );
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("agentline exited early ({status}):\n{}", self.log_text());
            }
            if let Ok((200, _)) = http_get(self.api_port, "/health") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agentline not ready in 15 s:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of the first `/metrics` sample named `name` (0 if absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.api_port, "/metrics").expect("GET /metrics");
        body.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn health(&self) -> serde_json::Value {
        let (code, body) = http_get(self.api_port, "/health").expect("GET /health");
        assert_eq!(code, 200, "health: {body}");
        serde_json::from_str(&body).expect("health json")
    }

    pub fn calls(&self) -> serde_json::Value {
        let (code, body) = http_get(self.api_port, "/calls").expect("GET /calls");
        assert_eq!(code, 200, "calls: {body}");
        serde_json::from_str(&body).expect("calls json")
    }

    /// Polls until `/health` reports no active calls, RTP ports or dialogs.
    pub fn wait_idle(&self, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let h = self.health();
            let idle = ["active_calls", "rtp_ports_in_use", "dialogs"]
                .iter()
                .all(|k| h[*k].as_u64() == Some(0));
            if idle || Instant::now() > deadline {
                return h;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and returns at once (the server drains its calls).
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- agentline log ----\n{}", self.log_text());
        }
    }
}

/// A profile for sipp-driven tests: 127.0.0.1 may call without auth, and
/// `echo` answers at once.
pub const TRUSTED_ECHO_PROFILE: &str = r#"
[sip]
trusted = ["127.0.0.1/32"]
[[routes]]
dial = "echo"
agent = { kind = "echo" }
"#;

/// [`TRUSTED_ECHO_PROFILE`] plus `ring`, which rings 2 s before answering,
/// so a caller can CANCEL or retransmit its INVITE while it rings.
pub const TRUSTED_ECHO_RING_PROFILE: &str = r#"
[sip]
trusted = ["127.0.0.1/32"]

[[routes]]
dial = "echo"
agent = { kind = "echo" }

[[routes]]
dial = "ring"
agent = { kind = "echo" }
answer_delay_ms = 2000
"#;

/// Minimal HTTP/1.0 GET on 127.0.0.1 (keeps the test build free of an HTTP client).
/// CPU seconds (user + system) process `pid` has used so far
/// (/proc/<pid>/stat fields 14 and 15; CLK_TCK is 100 on Linux).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// VmRSS of process `pid` in kB (0 when it cannot be read).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
    )
}

/// Minimal HTTP/1.0 POST of a JSON body on 127.0.0.1.
pub fn http_post(port: u16, path: &str, json: &str) -> std::io::Result<(u16, String)> {
    http_request(
        port,
        &format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        ),
    )
}

/// Minimal HTTP/1.0 DELETE on 127.0.0.1.
pub fn http_delete(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(
        port,
        &format!("DELETE {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
    )
}

/// One HTTP/1.0 request on 127.0.0.1 with an optional `Authorization`
/// value and a body of `content_type`: the status, the head and the body.
pub fn http_exchange(
    port: u16,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    content_type: &str,
    body: &str,
    timeout: Duration,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_read_timeout(Some(timeout)).expect("read timeout");
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send the request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read the response");
    let buf = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

fn http_request(port: u16, request: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

pub fn data_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Wall-clock Unix milliseconds, as the server stamps its records.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `s` percent-encoded for a URL path segment (call ids hold `@`).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `POST /calls` with `json` (an outbound call): asserts 202 and returns
/// the new call's id.
pub fn originate(server: &Server, json: &str) -> String {
    let (code, body) = http_post(server.api_port, "/calls", json).expect("POST /calls");
    assert_eq!(code, 202, "POST /calls {json}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("POST /calls json");
    v["id"].as_str().expect("POST /calls id").to_string()
}

/// The call record of `id` once it is complete (the store writes
/// asynchronously): polls `GET /cdrs/{id}` for up to 10 s.
pub fn finished_cdr(server: &Server, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) =
            http_get(server.api_port, &format!("/cdrs/{}", urlencode(id))).expect("GET /cdrs/{id}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if code == 200 && !v["end_at_unix_ms"].is_null() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no finished record for {id}: {code} {body}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
