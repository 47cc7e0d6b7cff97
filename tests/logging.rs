#![allow(clippy::unwrap_used)]
//! Logging that cannot take the server down, and log lines fit for files
//! and the journal. The real binary runs with its stderr as:
//! - a pipe whose reader is closed before the start, or mid-call: the calls
//!   (baresip, judged by the echo it heard) go on, the dropped lines are
//!   counted, and SIGTERM still drains and exits;
//! - a file: no ANSI escape codes, fields as plain values (no `Some(..)`);
//! - a file that `JOURNAL_STREAM` names (as systemd sets it for the
//!   journal's stream): `<N>` priority prefixes, no timestamps;
//! - a terminal (a pty from `script`): colour, unless `NO_COLOR` is set.

mod common;

use std::io::Read;
use std::net::UdpSocket;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::baresip::{assert_echo_audio, Account, Baresip, Options};
use common::{data_path, free_port, free_rtp_range, require_peer, Server};

const PROFILE: &str = r#"
[sip]
trusted = ["127.0.0.1/32"]
[[users]]
name = "1000"
password = "right-password"
[[routes]]
dial = "echo"
agent = { kind = "echo" }
"#;

/// A REGISTER for 1000 with a wrong digest answer: logged as
/// "REGISTER rejected" with its source; answered 401.
fn bad_register(port: u16) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let local = sock.local_addr().unwrap();
    let msg = format!(
        "REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-log-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1000@127.0.0.1>;tag=log{n}\r\n\
         To: <sip:1000@127.0.0.1>\r\n\
         Call-ID: log-{n}@127.0.0.1\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:1000@{local}>\r\n\
         Authorization: Digest username=\"1000\", realm=\"x\", nonce=\"made-up\", \
         uri=\"sip:127.0.0.1\", response=\"00000000000000000000000000000000\"\r\n\
         Expires: 60\r\n\
         Content-Length: 0\r\n\r\n",
        n = common::unix_ms_now()
    );
    // Sent again every 500 ms for 5 s, as a UDP client would (Timer E).
    let mut buf = [0u8; 4096];
    for _ in 0..10 {
        sock.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).to_string();
        }
    }
    panic!("no answer to the REGISTER in 5 s");
}

/// An echo call from baresip, with speech after `lead_ms` of silence.
fn echo_phone(server: &Server, lead_ms: u32) -> Baresip {
    let account = Account::new("caller", None, server.sip_port).regint(0);
    let mut opts = Options::new(account)
        .dial("echo")
        .play(&data_path("speech_8k.wav"));
    opts.lead_silence_ms = lead_ms;
    opts.tail_silence_ms = 1000;
    opts.max_secs = 40;
    Baresip::start(opts)
}

/// SIGTERM: the server drains and exits 0 well within its grace (30 s).
fn assert_sigterm_exits(server: &mut Server) {
    let started = Instant::now();
    let status = server
        .terminate(Duration::from_secs(20))
        .expect("still running 20 s after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    eprintln!("exited {status} {:?} after SIGTERM", started.elapsed());
}

#[test]
fn stderr_closed_before_the_start_calls_work_and_sigterm_exits() {
    if require_peer("baresip").is_none() {
        return;
    }
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut server = Server::start_custom(PROFILE, &[], Some(writer.into()), &[]);
    let mut phone = echo_phone(&server, 500);
    assert!(phone.wait_call_established(Duration::from_secs(15)));
    // Something to log while the call is up (into the closed pipe).
    assert!(bad_register(server.sip_port).starts_with("SIP/2.0 401"));
    phone.wait_call_closed(Duration::from_secs(30));
    let out = phone.stop();
    assert!(out.facts.call_established, "{}", out.summary());
    assert_echo_audio(&out);
    let h = server.wait_idle(Duration::from_secs(10));
    assert_eq!(h["active_calls"].as_u64(), Some(0), "{h}");
    let dropped = server.metric("agentline_log_lines_dropped_total");
    assert!(dropped >= 1.0, "no log line counted as dropped: {dropped}");
    assert_sigterm_exits(&mut server);
}

#[test]
fn stderr_closed_mid_call_the_call_goes_on_and_sigterm_exits() {
    if require_peer("baresip").is_none() || require_peer("sipp").is_none() {
        return;
    }
    // The reader is never read: the start-up lines wait in the pipe's
    // buffer until it is closed.
    let (reader, writer) = std::io::pipe().unwrap();
    let mut server = Server::start_custom(PROFILE, &[], Some(writer.into()), &[]);
    let mut phone = echo_phone(&server, 2500);
    assert!(phone.wait_call_established(Duration::from_secs(15)));
    drop(reader);
    let before = server.metric("agentline_log_lines_dropped_total");
    // Log lines during the call, into the now broken pipe.
    for _ in 0..3 {
        assert!(bad_register(server.sip_port).starts_with("SIP/2.0 401"));
    }
    phone.wait_call_closed(Duration::from_secs(30));
    let out = phone.stop();
    assert!(out.facts.call_established, "{}", out.summary());
    assert_echo_audio(&out);
    let dropped = server.metric("agentline_log_lines_dropped_total") - before;
    assert!(dropped >= 3.0, "log lines after the pipe broke: {dropped}");
    // New calls still work, signalling and media.
    let after = common::sipp::run_scenario("invite_bye.xml", server.sip_port, "echo", &[]);
    assert!(after.success, "{}", after.report());
    server.wait_idle(Duration::from_secs(10));
    assert_sigterm_exits(&mut server);
}

#[test]
fn a_log_file_gets_no_escape_codes_and_plain_field_values() {
    if require_peer("sipp").is_none() {
        return;
    }
    let mut server = Server::start(PROFILE);
    assert!(bad_register(server.sip_port).starts_with("SIP/2.0 401"));
    let nobody = common::sipp::run_scenario("unknown_user.xml", server.sip_port, "nobody", &[]);
    assert!(nobody.success, "{}", nobody.report());
    let call = common::sipp::run_scenario("invite_bye.xml", server.sip_port, "echo", &[]);
    assert!(call.success, "{}", call.report());
    server.wait_idle(Duration::from_secs(10));
    server.terminate(Duration::from_secs(20));
    let log = server.log_text();
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` line in:\n{log}"))
            .to_string()
    };
    // The lines whose fields were Options or Debug values.
    let rejected = line("REGISTER rejected");
    assert!(rejected.contains(" source=127.0.0.1:"), "{rejected}");
    let no_route = line("no route: 404");
    assert!(no_route.contains(" dialled=nobody"), "{no_route}");
    assert!(no_route.contains(" to=nobody"), "{no_route}");
    assert!(
        !no_route.contains("trunk="),
        "no trunk, no field: {no_route}"
    );
    let answered = line("call answered");
    assert!(answered.contains(" remote=127.0.0.1:"), "{answered}");
    assert!(!log.contains('\x1b'), "escape codes in a file:\n{log}");
    for debug in ["Some(", "None", "=\"127.0.0.1"] {
        assert!(!log.contains(debug), "`{debug}` in the log:\n{log}");
    }
    // Plain lines keep their timestamp.
    assert!(
        log.lines().all(|l| l.starts_with("20")),
        "a line without its timestamp:\n{log}"
    );
}

#[test]
fn under_journal_stream_lines_carry_a_priority_and_no_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal-stream");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut server = Server::start_custom(
        PROFILE,
        &[],
        Some(file.into()),
        &[("JOURNAL_STREAM", &stream)],
    );
    assert!(bad_register(server.sip_port).starts_with("SIP/2.0 401"));
    server.terminate(Duration::from_secs(20));
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(
        log.contains("<6> INFO agentline::server: agentline ready"),
        "{log}"
    );
    assert!(log.contains("REGISTER rejected"), "{log}");
    for l in log.lines() {
        // `<N>` then the level: no timestamp in front of it.
        let (prio, rest) = l
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .unwrap_or_else(|| panic!("no priority prefix: {l}"));
        assert!(["3", "4", "6", "7"].contains(&prio), "{l}");
        let level = rest.split_whitespace().next().unwrap_or("");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "not the level after the priority (a timestamp?): {l}"
        );
    }
    assert!(!log.contains('\x1b'), "{log}");

    // JOURNAL_STREAM naming another stream (stderr redirected under
    // systemd): ordinary lines.
    let other = dir.path().join("other");
    let file = std::fs::File::create(&other).unwrap();
    let mut server = Server::start_custom(
        PROFILE,
        &[],
        Some(file.into()),
        &[("JOURNAL_STREAM", &stream)],
    );
    server.terminate(Duration::from_secs(20));
    let log = std::fs::read_to_string(&other).unwrap();
    assert!(log.contains("agentline ready"), "{log}");
    assert!(log.lines().all(|l| l.starts_with("20")), "{log}");
}

/// The server's output when its stderr is a terminal (a pty made by
/// `script`), stopped by `timeout` once it has started.
fn run_on_a_terminal(no_color: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.toml");
    std::fs::write(&profile, PROFILE).unwrap();
    let (sip, api, rtp) = (free_port(), free_port(), free_rtp_range(10));
    let cmd = format!(
        "timeout -s TERM 3 {} run --profile {} --sip-listen udp:127.0.0.1:{sip} \
         --api-listen 127.0.0.1:{api} --rtp-ports {}-{} --state-dir {}",
        env!("CARGO_BIN_EXE_agentline"),
        profile.display(),
        rtp.0,
        rtp.1,
        dir.path().join("state").display()
    );
    let mut c = Command::new("script");
    c.args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    let mut child = c.spawn().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    assert!(out.contains("agentline ready"), "{out}");
    out
}

#[test]
fn colour_on_a_terminal_unless_no_color() {
    if require_peer("script").is_none() {
        return;
    }
    let coloured = run_on_a_terminal(None);
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal:\n{coloured}"
    );
    let plain = run_on_a_terminal(Some("1"));
    assert!(!plain.contains('\x1b'), "colour with NO_COLOR=1:\n{plain}");
}
