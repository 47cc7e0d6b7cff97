#![allow(clippy::unwrap_used)]
//! RTP hijack attempts against a real call (baresip from 127.0.0.1, the
//! echo route) from an attacker on 127.0.0.2 spraying agentline's whole RTP
//! port range: other-source and other-SSRC packets, 1-11-byte and
//! oversized garbage, RTCP garbage, and a caller pause (the phone stopped,
//! no RTP, no signalling) while the attacker sends. The caller's echo
//! must stay clean and the attacker must get none of the agent's audio.
//! And the RTP of a killed server's calls, still arriving after a restart
//! on the same ports, must not take over a new call.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::audio;
use common::baresip::{assert_echo_audio, Account, Baresip, Options};
use common::{data_path, http_get, require_peer, Server, TRUSTED_ECHO_PROFILE};

/// What the attacker's sockets sent and got back.
#[derive(Debug, Default)]
struct AttackReport {
    sent: u64,
    /// Datagrams agentline sent to any attacker socket.
    received: u64,
}

struct Attack {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<AttackReport>,
}

impl Attack {
    fn stop(self) -> AttackReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// An RTP packet (PCMU) with a loud square wave: if it were played, the
/// echo would not correlate with the caller's speech.
fn rtp(ssrc: u32, seq: u16, ts: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| if (i / 4) % 2 == 0 { 0x80 } else { 0x00 }));
    p
}

/// Every 20 ms, to every RTP port of `range` (and its RTCP port): RTP from
/// 127.0.0.2, RTP with another SSRC from 127.0.0.1 (another port than the
/// phone's), and in turn 1-11-byte garbage, an oversized packet and RTCP
/// garbage. With `full` false only the two RTP streams are sent (a dead
/// call's stream).
fn spray(range: (u16, u16), full: bool) -> Attack {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let far = UdpSocket::bind("127.0.0.2:0").unwrap();
        let near = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&far, &near] {
            s.set_nonblocking(true).unwrap();
        }
        let mut r = AttackReport::default();
        let mut buf = [0u8; 4096];
        let mut tick: u32 = 0;
        let mut next = Instant::now();
        while !flag.load(Ordering::SeqCst) {
            let seq = tick as u16;
            let ts = tick.wrapping_mul(160);
            for port in (range.0..range.1).step_by(2) {
                let mut send = |s: &UdpSocket, to: u16, b: &[u8]| {
                    if s.send_to(b, ("127.0.0.1", to)).is_ok() {
                        r.sent += 1;
                    }
                };
                send(&far, port, &rtp(0xA77A_C4E5, seq, ts, 160));
                send(&near, port, &rtp(0x0BAD_55C0, seq, ts, 160));
                if full {
                    match tick % 3 {
                        0 => send(&far, port, &vec![0x80; (tick as usize / 3) % 11 + 1]),
                        1 => send(&far, port, &rtp(0xA77A_C4E5, seq, ts, 1600)),
                        _ => send(&far, port + 1, &[0x80, 201, 0, 1, 0xA7, 0x7A, 0xC4, 0xE5]),
                    }
                }
            }
            for s in [&far, &near] {
                while s.recv_from(&mut buf).is_ok() {
                    r.received += 1;
                }
            }
            tick += 1;
            next += Duration::from_millis(20);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        r
    });
    Attack { stop, handle }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

fn phone(server: &Server, lead_silence_ms: u32, max_secs: u64) -> Baresip {
    let mut opts = Options::new(Account::new("1000", None, server.sip_port).regint(0))
        .dial("echo")
        .play(&data_path("speech_8k.wav"));
    opts.lead_silence_ms = lead_silence_ms;
    opts.tail_silence_ms = 1000;
    opts.max_secs = max_secs;
    Baresip::start(opts)
}

/// The one call's entry in `GET /calls`, if there is one.
fn the_call(server: &Server) -> Option<serde_json::Value> {
    server.calls().as_array().and_then(|a| a.first().cloned())
}

/// `agentline_rtp_dropped_total{reason="..."}` from `/metrics`.
fn dropped_metric(server: &Server, reason: &str) -> f64 {
    let (_, text) = http_get(server.api_port, "/metrics").unwrap();
    let key = format!("agentline_rtp_dropped_total{{reason=\"{reason}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

/// One echo call from baresip under the spray; with `pause`, the phone is
/// stopped (no RTP, no re-INVITE) for 1.5 s early in its lead silence
/// while the attacker keeps sending. Returns the phone's outcome, the
/// attack's report and the call's last `GET /calls` entry.
fn call_under_attack(
    server: &Server,
    pause: bool,
    attacked: bool,
) -> (common::baresip::Outcome, AttackReport, serde_json::Value) {
    // The attack runs before, during and after the call (an empty range:
    // no attack, for a baseline).
    let range = if attacked {
        server.rtp
    } else {
        (server.rtp.0, server.rtp.0)
    };
    let attack = spray(range, true);
    let mut phone = phone(server, if pause { 6000 } else { 1000 }, 40);
    assert!(
        phone.wait_call_established(Duration::from_secs(15)),
        "call not established:\n{}",
        common::baresip::strip_trace(&phone.output())
    );
    if pause {
        std::thread::sleep(Duration::from_millis(300));
        let pid = phone.pid().unwrap();
        signal(pid, "-STOP");
        std::thread::sleep(Duration::from_millis(1500));
        signal(pid, "-CONT");
    }
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(35);
    while Instant::now() < deadline && phone.facts().call_closed.is_none() {
        if let Some(c) = the_call(server) {
            last = Some(c);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = attack.stop();
    let out = phone.stop();
    (out, report, last.expect("the call in GET /calls"))
}

/// What every attacked call must show: the attacker got nothing, the
/// stream stayed latched to the phone, the drops were counted.
fn assert_attack_repelled(server: &Server, report: &AttackReport, call: &serde_json::Value) {
    let media = &call["media"];
    assert_eq!(
        report.received, 0,
        "the attacker got the agent's packets: {report:?}"
    );
    let count = |k: &str| media[k].as_u64().unwrap_or(0);
    assert!(count("rx_dropped_source") > 100, "{media}");
    assert!(count("rx_malformed") > 10, "{media}");
    assert!(count("rx_oversized") > 10, "{media}");
    assert!(
        call["remote_rtp"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "latched to the phone: {call}"
    );
    for reason in ["source", "malformed", "oversized"] {
        assert!(dropped_metric(server, reason) > 0.0, "metric {reason}");
    }
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
}

#[test]
fn a_sprayed_port_range_leaves_the_echo_clean() {
    if require_peer("baresip").is_none() {
        return;
    }
    let server = Server::start(TRUSTED_ECHO_PROFILE);
    let (out, report, call) = call_under_attack(&server, false, true);
    let echo = assert_echo_audio(&out);
    eprintln!(
        "attack: {report:?}; echo: {echo}; call media: {}",
        call["media"]
    );
    assert_attack_repelled(&server, &report, &call);
}

/// The phone's wake-up burst after the pause moves the jitter buffers'
/// delay during its speech (measured: echo correlation ~0.81 with no
/// attacker at all), so the attacked call is judged against the same call
/// without the attack: any attacker audio played in it would pull its
/// correlation well below the baseline's.
#[test]
fn a_caller_pause_does_not_hand_the_stream_to_the_attacker() {
    if require_peer("baresip").is_none() {
        return;
    }
    let server = Server::start(TRUSTED_ECHO_PROFILE);
    let corr = |out: &common::baresip::Outcome| {
        let sent = out.sent().unwrap();
        let heard = out.heard_aligned().unwrap();
        if let Err(e) = audio::rms_within_db(&sent, &heard, 3.0) {
            panic!("{e}");
        }
        let r = audio::echo_report(&sent, &heard, 2000.0);
        (r.delay.as_ref().map_or(0.0, |d| d.corr), r.to_string())
    };
    let (base_out, _, _) = call_under_attack(&server, true, false);
    let (base, base_text) = corr(&base_out);
    let (out, report, call) = call_under_attack(&server, true, true);
    let (attacked, text) = corr(&out);
    eprintln!(
        "pause, no attack: {base_text}\npause, attacked: {text}\nattack: {report:?}; call media: {}",
        call["media"]
    );
    assert!(
        attacked >= base - 0.05 && attacked >= 0.7,
        "echo correlation {attacked:.3} under attack vs {base:.3} without"
    );
    assert_attack_repelled(&server, &report, &call);
}

#[test]
fn a_killed_servers_rtp_does_not_take_over_a_new_call_after_restart() {
    if require_peer("baresip").is_none() {
        return;
    }
    let mut server = Server::start(TRUSTED_ECHO_PROFILE);
    // A call that stays up (30 s of silence before its speech).
    let old = phone(&server, 30_000, 60);
    let mut old = old;
    assert!(old.wait_call_established(Duration::from_secs(15)));
    let mut old_port = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while old_port.is_none() && Instant::now() < deadline {
        old_port = the_call(&server).and_then(|c| c["local_rtp_port"].as_u64());
        std::thread::sleep(Duration::from_millis(100));
    }
    let old_port = old_port.expect("the old call's RTP port");
    // More dead calls' streams: to every port, from the phone's IP and
    // from another.
    let stale = spray(server.rtp, false);
    std::thread::sleep(Duration::from_millis(500));
    server.kill9_and_restart();
    // The old phone keeps sending to old_port: it never heard a BYE.
    let mut new = phone(&server, 0, 40);
    assert!(new.wait_call_established(Duration::from_secs(15)));
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(35);
    while Instant::now() < deadline && new.facts().call_closed.is_none() {
        if let Some(c) = the_call(&server) {
            last = Some(c);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = stale.stop();
    let out = new.stop();
    let _ = old.stop();
    let echo = assert_echo_audio(&out);
    let call = last.expect("the new call in GET /calls");
    eprintln!("stale senders: {report:?}; echo: {echo}; new call: {call}");
    assert_eq!(
        call["local_rtp_port"].as_u64(),
        Some(old_port),
        "the new call got the dead call's port (the case under test)"
    );
    assert_eq!(report.received, 0, "{report:?}");
    assert!(
        call["media"]["rx_dropped_source"].as_u64().unwrap_or(0) > 100,
        "{call}"
    );
}
