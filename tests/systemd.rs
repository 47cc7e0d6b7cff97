//! systemd integration: the real binary under a fake `NOTIFY_SOCKET` (READY
//! only once SIP and the API answer, watchdog pings, STATUS with the call
//! count, STOPPING on SIGTERM), and `systemd-analyze verify` of the shipped
//! unit file.
#![allow(clippy::unwrap_used)]
mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, free_rtp_range, http_get, require_peer, TRUSTED_ECHO_PROFILE};

/// Sends one OPTIONS (no retransmission) and says whether a 200 came back
/// within `within`.
fn options_answered(port: u16, within: Duration) -> bool {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind probe");
    probe.set_read_timeout(Some(within)).expect("timeout");
    let me = probe.local_addr().expect("addr");
    let options = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-sd-probe;rport\r\n\
         From: <sip:probe@{me}>;tag=probe\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: sd-probe-{port}\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    if probe
        .send_to(options.as_bytes(), ("127.0.0.1", port))
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 4096];
    matches!(probe.recv_from(&mut buf), Ok((n, _)) if buf[..n].starts_with(b"SIP/2.0 200"))
}

/// Every datagram on `sock` within `within`, each with its arrival time,
/// until `done` says so.
fn collect(
    sock: &UnixDatagram,
    within: Duration,
    got: &mut Vec<(Instant, String)>,
    done: impl Fn(&[(Instant, String)]) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if done(got) {
            return true;
        }
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    done(got)
}

fn has(got: &[(Instant, String)], line: &str) -> usize {
    got.iter()
        .filter(|(_, m)| m.lines().any(|l| l == line))
        .count()
}

fn statuses(got: &[(Instant, String)]) -> Vec<String> {
    got.iter()
        .flat_map(|(_, m)| m.lines())
        .filter_map(|l| l.strip_prefix("STATUS="))
        .map(str::to_string)
        .collect()
}

#[test]
fn notify_socket_gets_ready_watchdog_status_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let profile = dir.path().join("profile.toml");
    std::fs::write(&profile, TRUSTED_ECHO_PROFILE).expect("profile");
    let sip_port = free_port();
    let api_port = free_port();
    let rtp = free_rtp_range(20);
    let log = dir.path().join("agentline.log");
    // WATCHDOG_PID is left unset: the child's pid is not known before it
    // starts, and sd_notify (like libsystemd) takes no WATCHDOG_PID as "this
    // process".
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentline"))
        .arg("run")
        .arg("--profile")
        .arg(&profile)
        .args(["--sip-listen", &format!("udp:127.0.0.1:{sip_port}")])
        .args(["--rtp-ports", &format!("{}-{}", rtp.0, rtp.1)])
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info,rsipstack=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn agentline");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut got = Vec::new();
    let ready = collect(&sock, Duration::from_secs(15), &mut got, |g| {
        has(g, "READY=1") > 0
    });
    assert!(ready, "no READY=1 in 15 s: {got:?}\n{}", log_text());
    // READY=1 means every listener answers now, at the first try.
    assert!(
        options_answered(sip_port, Duration::from_secs(2)),
        "READY=1 came but the SIP port did not answer an OPTIONS\n{}",
        log_text()
    );
    let (code, body) = http_get(api_port, "/health").expect("GET /health after READY=1");
    assert_eq!(code, 200, "{body}");
    assert!(
        statuses(&got).iter().any(|s| s.contains("0 active calls")),
        "no STATUS with the call count: {got:?}"
    );

    // Watchdog pings at half of WATCHDOG_USEC (1 s): at least 2 in ~3 s.
    let t0 = Instant::now();
    let before = has(&got, "WATCHDOG=1");
    collect(&sock, Duration::from_secs(3), &mut got, |g| {
        has(g, "WATCHDOG=1") >= before + 3
    });
    let pings: Vec<_> = got
        .iter()
        .filter(|(t, m)| *t >= t0 && m.lines().any(|l| l == "WATCHDOG=1"))
        .collect();
    assert!(pings.len() >= 2, "watchdog pings in 3 s: {got:?}");

    // A call in progress shows in STATUS.
    if require_peer("sipp").is_some() {
        let sipp =
            common::sipp::spawn_scenario("invite_bye.xml", sip_port, "echo", &["-d", "5000"]);
        let one = collect(&sock, Duration::from_secs(6), &mut got, |g| {
            statuses(g).iter().any(|s| s.contains("1 active calls"))
        });
        assert!(one, "no STATUS with 1 active call: {got:?}");
        let out = sipp.wait(Duration::from_secs(20));
        assert!(out.success, "{}", out.report());
    }

    // SIGTERM: STOPPING=1 and the process exits.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let stopping = collect(&sock, Duration::from_secs(5), &mut got, |g| {
        has(g, "STOPPING=1") > 0
    });
    assert!(stopping, "no STOPPING=1 after SIGTERM: {got:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let exit = exit.unwrap_or_else(|| panic!("still running 10 s after SIGTERM\n{}", log_text()));
    assert!(exit.success(), "exit {exit}\n{}", log_text());
}

/// The unit as shipped, with the binary and profile paths pointed at this
/// build (the rest unchanged).
fn unit_for_test(dir: &Path, broken: bool) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/agentline.service");
    let text = std::fs::read_to_string(&shipped).expect("read the unit");
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-profiles/default.toml");
    let mut text = text
        .replace("/usr/local/bin/agentline", env!("CARGO_BIN_EXE_agentline"))
        .replace(
            "/etc/agentline/sip-profiles/default.toml",
            &profile.display().to_string(),
        );
    for key in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "ExecReload=",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(key)),
            "the unit has no {key}"
        );
    }
    if broken {
        text = text.replace("Type=notify", "Type=notifyy");
    }
    let path = dir.join("agentline.service");
    std::fs::write(&path, text).expect("write unit");
    path
}

#[test]
fn shipped_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = require_peer("systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_for_test(dir.path(), false);
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    assert!(
        !stderr.contains("agentline.service"),
        "verify warned about the unit: {stderr}"
    );

    // The same check sees a mistake in the unit.
    let bad_dir = tempfile::tempdir().expect("tempdir");
    let bad = unit_for_test(bad_dir.path(), true);
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&bad)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agentline.service") && stderr.contains("notifyy"),
        "verify did not flag a bad Type=: {stderr}"
    );
}
