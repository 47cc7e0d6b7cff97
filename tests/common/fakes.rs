//! Starts the Python fake providers of `tests/fakes/` (see its README) and
//! reads what they recorded. Their interpreter is a venv with aiohttp made
//! once under `target/fakes-venv` (or `AGENTLINE_FAKES_PYTHON`); without
//! python3 the tests skip, except under CI=true where that is a failure.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The Python with aiohttp, or `None` (skip) outside CI.
pub fn python() -> Option<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    if let Ok(p) = std::env::var("AGENTLINE_FAKES_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/fakes-venv");
    let py = venv.join("bin/python");
    let ready = venv.join(".ready");
    if ready.exists() {
        return Some(py);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // Several test binaries may get here at once: one creates, the others wait.
    let lock_dir = root.join("target/fakes-venv.lock");
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::create_dir(&lock_dir).is_err() {
        if ready.exists() {
            return Some(py);
        }
        assert!(
            Instant::now() < deadline,
            "waited 300 s for {}",
            lock_dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&py)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(root.join("tests/fakes/requirements.txt"))
            .status()
            .is_ok_and(|s| s.success());
    if made {
        let _ = std::fs::write(&ready, "ok");
    }
    let _ = std::fs::remove_dir(&lock_dir);
    if made {
        Some(py)
    } else if ci {
        panic!("CI: cannot set up the fakes' Python venv (python3 -m venv + pip install aiohttp)");
    } else {
        eprintln!("SKIP: no python3 venv with aiohttp for the fake providers");
        None
    }
}

/// A running fake: its port and the folder it records into.
pub struct Fake {
    child: Child,
    pub port: u16,
    pub record: tempfile::TempDir,
    pub name: String,
}

impl Fake {
    /// `script` is e.g. `fake_avr_sts.py`; `args` are its options. `None`
    /// when Python is missing outside CI.
    pub fn start(script: &str, args: &[&str]) -> Option<Fake> {
        let py = python()?;
        let record = tempfile::tempdir().expect("record dir");
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fakes")
            .join(script);
        let mut child = Command::new(py)
            .arg(&path)
            .args(["--port", "0", "--record"])
            .arg(record.path())
            .arg("--exit-on-stdin-eof")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fake");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("fake READY line");
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{script}: expected `READY <port>`, got {line:?}"));
        Some(Fake {
            child,
            port,
            record,
            name: script.to_string(),
        })
    }

    /// Every line of events.jsonl so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.record.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Marker events named `name` (`{"event": name, ...}`).
    pub fn markers(&self, name: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Waits until a marker `name` was recorded; returns it.
    pub fn wait_marker(&self, name: &str, within: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.markers(name).into_iter().next() {
                return Some(m);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// All events as text, for assertion messages.
    pub fn events_text(&self) -> String {
        std::fs::read_to_string(self.record.path().join("events.jsonl")).unwrap_or_default()
    }

    /// The caller audio the fake received (`input.wav`).
    pub fn input_wav(&self) -> PathBuf {
        self.record.path().join("input.wav")
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
