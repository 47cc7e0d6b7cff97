//! Driver for the sipp scenarios in `tests/sipp/`: runs `sipp` as a UAC
//! against the server under test on 127.0.0.1, always bounded in calls (`-m`)
//! and time (`-timeout … -timeout_error`, plus a hard kill here), with its
//! logs in a temp dir so that a failing assertion can show what sipp saw.
//!
//! Every run gets its own SIP port (`-p`) and media ports (`-mp`), and a raw
//! G.711 u-law tone (`tone.ulaw`) that scenarios stream as RTP through
//! `<exec rtp_stream="[audio_stream]"/>` (passed as `-key audio_stream`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// sipp's own global timeout, unless the caller passes `-timeout`.
pub const DEFAULT_TIMEOUT_S: u64 = 30;
/// Extra time given to sipp past its own timeout before it is killed.
const KILL_MARGIN: Duration = Duration::from_secs(15);

/// Path of a scenario in `tests/sipp/` (`"options"` or `"options.xml"`).
pub fn scenario_path(scenario: &str) -> PathBuf {
    let file = if scenario.ends_with(".xml") {
        scenario.to_string()
    } else {
        format!("{scenario}.xml")
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(file)
}

/// What one sipp run did.
#[derive(Debug)]
pub struct SippOutcome {
    /// sipp exited 0: every call of the run succeeded.
    pub success: bool,
    /// sipp's exit code (1: some call failed, 97/99: no call completed,
    /// 255/254: fatal or bind error); `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// sipp outlived its own timeout plus a margin and was killed here.
    pub killed: bool,
    pub elapsed: Duration,
    /// The command line, for reproducing by hand.
    pub command: String,
    /// sipp's final statistics screen.
    pub stdout: String,
    pub stderr: String,
    /// `-trace_err`: unexpected messages, failed regexps, timeouts.
    pub error_log: String,
    /// `-trace_msg`: every SIP message sent and received.
    pub message_log: String,
}

/// One SIP message from sipp's `-trace_msg` log.
#[derive(Debug, Clone)]
pub struct TracedMessage {
    /// true if sipp sent it, false if sipp received it.
    pub sent: bool,
    /// Start line: `INVITE sip:… SIP/2.0` or `SIP/2.0 200 OK`.
    pub start_line: String,
    pub text: String,
}

impl SippOutcome {
    /// Everything useful for an assertion message.
    pub fn report(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(r, "sipp command: {}", self.command);
        let _ = writeln!(
            r,
            "exit code: {:?}{} after {:.1} s",
            self.exit_code,
            if self.killed {
                " (killed by the test)"
            } else {
                ""
            },
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(r, "---- sipp stderr ----\n{}", tail(&self.stderr, 3000));
        let _ = writeln!(
            r,
            "---- sipp error trace ----\n{}",
            tail(&self.error_log, 6000)
        );
        let _ = writeln!(
            r,
            "---- sipp messages (tail) ----\n{}",
            tail(&self.message_log, 6000)
        );
        let _ = writeln!(
            r,
            "---- sipp screen (tail) ----\n{}",
            tail(&self.stdout, 2500)
        );
        r
    }

    /// SIP messages in the order sipp logged them.
    pub fn messages(&self) -> Vec<TracedMessage> {
        parse_message_log(&self.message_log)
    }

    /// Number of requests with this method that sipp sent.
    pub fn sent_requests(&self, method: &str) -> usize {
        count_requests(&self.messages(), method, true)
    }

    /// Number of requests with this method that sipp received.
    pub fn received_requests(&self, method: &str) -> usize {
        count_requests(&self.messages(), method, false)
    }
}

impl std::fmt::Display for SippOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.report())
    }
}

fn count_requests(msgs: &[TracedMessage], method: &str, sent: bool) -> usize {
    let prefix = format!("{method} ");
    msgs.iter()
        .filter(|m| m.sent == sent && m.start_line.starts_with(&prefix))
        .count()
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Splits sipp's `-trace_msg` file into messages. Each entry looks like
/// `----…---- <date>\nUDP message sent (N bytes):\n\n<SIP message>` (or
/// `… message received [N] bytes :`).
fn parse_message_log(log: &str) -> Vec<TracedMessage> {
    let mut out = Vec::new();
    for block in log.split("\n-----------------------------------------------") {
        let mut lines = block.lines();
        let Some(header) =
            lines.find(|l| l.contains(" message sent") || l.contains(" message received"))
        else {
            continue;
        };
        let sent = header.contains(" message sent");
        let rest: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        let Some(start_line) = rest.first() else {
            continue;
        };
        out.push(TracedMessage {
            sent,
            start_line: start_line.trim().to_string(),
            text: rest.join("\n"),
        });
    }
    out
}

/// A sipp run in the background (e.g. a call held while the server gets
/// SIGTERM). Killed on drop if still running.
pub struct SippRun {
    child: Option<Child>,
    dir: tempfile::TempDir,
    command: String,
    started: Instant,
    limit: Duration,
}

impl SippRun {
    /// sipp's process id (its Call-IDs are `N-<pid>@127.0.0.1`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The Call-ID sipp gives its `n`-th call (1-based).
    pub fn call_id(&self, n: u32) -> String {
        format!("{n}-{}@127.0.0.1", self.pid())
    }

    /// True while sipp has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The message trace so far (sipp flushes it as it goes).
    pub fn message_log(&self) -> String {
        read(&self.dir.path().join("messages.log"))
    }

    /// Waits for sipp to exit, at most `within` (and never past sipp's own
    /// timeout plus a margin); a run still going then is killed.
    pub fn wait(mut self, within: Duration) -> SippOutcome {
        let deadline =
            Instant::now() + within.min(self.limit.saturating_sub(self.started.elapsed()));
        let mut status: Option<ExitStatus> = None;
        let mut killed = false;
        if let Some(mut child) = self.child.take() {
            loop {
                match child.try_wait() {
                    Ok(Some(st)) => {
                        status = Some(st);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        status = child.wait().ok();
                        killed = true;
                        break;
                    }
                }
            }
        }
        let exit_code = status.and_then(|s| s.code());
        let d = self.dir.path();
        SippOutcome {
            success: !killed && exit_code == Some(0),
            exit_code,
            killed,
            elapsed: self.started.elapsed(),
            command: self.command.clone(),
            stdout: read(&d.join("stdout.log")),
            stderr: read(&d.join("stderr.log")),
            error_log: read(&d.join("errors.log")),
            message_log: read(&d.join("messages.log")),
        }
    }
}

impl Drop for SippRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Runs `scenario` (a file in `tests/sipp/`) as a UAC against
/// 127.0.0.1:`server_sip_port`, dialling `service` (`-s`), and waits for it.
///
/// Defaults: one call (`-m 1`), `-r 10 -l 10`, `-recv_timeout 10000`,
/// `-timeout 30s -timeout_error`; `extra_args` come last, so they override
/// (e.g. `["-m", "50", "-r", "20", "-d", "300"]`, or `-timeout 60s`, which
/// also moves the hard kill limit).
pub fn run_scenario(
    scenario: &str,
    server_sip_port: u16,
    service: &str,
    extra_args: &[&str],
) -> SippOutcome {
    spawn_scenario(scenario, server_sip_port, service, extra_args).wait(Duration::MAX)
}

/// Like [`run_scenario`], but returns at once with sipp running in the
/// background; finish with [`SippRun::wait`].
pub fn spawn_scenario(
    scenario: &str,
    server_sip_port: u16,
    service: &str,
    extra_args: &[&str],
) -> SippRun {
    let remote = format!("127.0.0.1:{server_sip_port}");
    spawn(
        scenario,
        super::free_port(),
        &["-s", service],
        extra_args,
        Some(&remote),
    )
}

/// Runs `scenario` (a UAS: it starts by receiving) as sipp listening on
/// 127.0.0.1:`port` for the server to call, in the background, with the
/// same bounds, logs and defaults as [`run_scenario`] (one call); finish
/// with [`SippRun::wait`], whose outcome says whether the call went as the
/// scenario expects.
pub fn spawn_uas(scenario: &str, port: u16, extra_args: &[&str]) -> SippRun {
    spawn(scenario, port, &[], extra_args, None)
}

/// sipp with `scenario` on local SIP port `port`: `role_args` after the
/// scenario, `extra_args` after the defaults, `remote` last (a UAC's
/// target).
fn spawn(
    scenario: &str,
    port: u16,
    role_args: &[&str],
    extra_args: &[&str],
    remote: Option<&str>,
) -> SippRun {
    let path = scenario_path(scenario);
    assert!(path.is_file(), "no sipp scenario {}", path.display());
    let dir = tempfile::Builder::new()
        .prefix("sipp-")
        .tempdir()
        .expect("sipp tempdir");
    let d = dir.path();
    let tone = d.join("tone.ulaw");
    std::fs::write(&tone, ulaw_tone(440.0, 1000)).expect("write tone");

    let local_port = port.to_string();
    let media_port = super::free_rtp_range(4).0.to_string();
    let audio_stream = format!("{},-1,0", tone.display());
    let timeout_s = timeout_secs(extra_args).unwrap_or(DEFAULT_TIMEOUT_S);
    let timeout = format!("{DEFAULT_TIMEOUT_S}s");
    let p = |name: &str| d.join(name).display().to_string();
    let (errors, messages, screen) = (p("errors.log"), p("messages.log"), p("screen.log"));

    let mut args: Vec<String> = ["-sf", &path.display().to_string()]
        .iter()
        .chain(role_args)
        .map(|s| s.to_string())
        .collect();
    args.extend(
        [
            "-i",
            "127.0.0.1",
            "-p",
            &local_port,
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port,
            "-key",
            "audio_stream",
            &audio_stream,
            "-m",
            "1",
            "-r",
            "10",
            "-l",
            "10",
            "-recv_timeout",
            "10000",
            "-timeout",
            &timeout,
            "-timeout_error",
            "-nostdin",
            "-trace_err",
            "-error_file",
            &errors,
            "-trace_msg",
            "-message_file",
            &messages,
            "-trace_screen",
            "-screen_file",
            &screen,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(extra_args.iter().map(|s| s.to_string()));
    args.extend(remote.map(str::to_string));

    let command = format!("sipp {}", args.join(" "));
    let stdout = std::fs::File::create(d.join("stdout.log")).expect("sipp stdout file");
    let stderr = std::fs::File::create(d.join("stderr.log")).expect("sipp stderr file");
    let child = Command::new("sipp")
        .args(&args)
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start sipp ({e}): {command}"));
    SippRun {
        child: Some(child),
        dir,
        command,
        started: Instant::now(),
        limit: Duration::from_secs(timeout_s) + KILL_MARGIN,
    }
}

/// The value of `-timeout Ns` (or `N`) in `args`, in seconds.
fn timeout_secs(args: &[&str]) -> Option<u64> {
    let i = args.iter().rposition(|a| *a == "-timeout")?;
    let v = args.get(i + 1)?;
    v.trim_end_matches('s').parse().ok()
}

/// `ms` milliseconds of a sine tone at `hz`, 8 kHz, G.711 u-law, about
/// -12 dBFS: what sipp's `rtp_stream` sends as payload type 0.
pub fn ulaw_tone(hz: f64, ms: u32) -> Vec<u8> {
    let n = 8 * ms as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let s = (8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16;
            linear_to_ulaw(s)
        })
        .collect()
}

/// ITU-T G.711 u-law encoding of one 16-bit linear sample (the library's).
pub use agentline::media::g711::linear_to_ulaw;

/// Starts sipp as a one-call UAS playing `scenario` on `port`, in the
/// background (`-bg`: returns once sipp has forked), working in `dir` (where
/// sipp drops its default-named logs). `extra` adds arguments
/// (`-rtp_echo`, `-trace_msg` ...).
pub fn start_uas(sipp: &Path, scenario: &str, port: u16, extra: &[&str], dir: &Path) {
    let mut uas = Command::new(sipp)
        .arg("-sf")
        .arg(scenario_path(scenario))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mp", &super::free_port().to_string()])
        .args([
            "-m",
            "1",
            "-timeout",
            "40s",
            "-timeout_error",
            "-nostdin",
            "-bg",
        ])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipp");
    let _ = uas.wait();
}
