//! SIP trunks against kamailio as the provider (tests/interop/kamailio-trunk.cfg):
//! digest registration and refresh before the granted expiry, a wrong
//! password backing off instead of looping, and an inbound call from the
//! trunk reaching the DID's agent with clean echoed audio.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::baresip::{assert_echo_audio, Account, Baresip, Options, Registration};
use common::{data_path, free_port, require_peer, Server};

/// kamailio on a free port with the shared trunk config; killed on drop.
struct Kamailio {
    child: Child,
    port: u16,
    /// Where it relays authenticated calls to echo@ (a sipp UAS listens there).
    uas: u16,
    _dir: tempfile::TempDir,
}

impl Kamailio {
    fn start() -> Option<Kamailio> {
        Self::start_on(free_port(), free_port())
    }

    fn start_on(port: u16, uas: u16) -> Option<Kamailio> {
        Self::start_with(port, uas, None)
    }

    /// Also listens for SIP over TLS on `tls.0` with certificate `tls.1`
    /// and key `tls.2` (kamailio's tls module).
    fn start_with(port: u16, uas: u16, tls: Option<(u16, &Path, &Path)>) -> Option<Kamailio> {
        require_peer("kamailio")?;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/kamailio-trunk.cfg"
        ))
        .unwrap()
        .replace("127.0.0.1:5080", &format!("127.0.0.1:{port}"))
        .replace("trunk.test:5080", &format!("trunk.test:{port}"))
        .replace("127.0.0.1:5090", &format!("127.0.0.1:{uas}"));
        if let Some((tls_port, cert, key)) = tls {
            let modules = common::kamailio::modules_dir().join("tls.so");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                assert!(
                    modules.exists(),
                    "CI: kamailio-tls-modules missing ({})",
                    modules.display()
                );
            } else if !modules.exists() {
                eprintln!("SKIP: kamailio-tls-modules not installed");
                return None;
            }
            cfg = cfg
                .replacen(
                    "listen=tcp:",
                    &format!(
                        "enable_tls=yes\nlisten=tls:127.0.0.1:{tls_port}\nalias=\"127.0.0.1:{tls_port}\"\nlisten=tcp:"
                    ),
                    1,
                )
                .replacen(
                    "loadmodule \"tm.so\"",
                    &format!(
                        "loadmodule \"tls.so\"\nmodparam(\"tls\", \"certificate\", \"{}\")\n\
                         modparam(\"tls\", \"private_key\", \"{}\")\n\
                         modparam(\"tls\", \"tls_method\", \"TLSv1.2+\")\n\
                         modparam(\"tls\", \"verify_certificate\", 0)\n\
                         modparam(\"tls\", \"require_certificate\", 0)\nloadmodule \"tm.so\"",
                        cert.display(),
                        key.display()
                    ),
                    1,
                );
        }
        let child = common::kamailio::spawn(&cfg, dir.path());
        // Ready when it answers an OPTIONS (the config replies 200 to them).
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = probe.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        loop {
            let options = format!(
                "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-probe-{n};rport\r\n\
                 From: <sip:probe@{me}>;tag=probe\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: probe-{port}\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                n = deadline.elapsed().as_nanos()
            );
            let _ = probe.send_to(options.as_bytes(), ("127.0.0.1", port));
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                if buf[..n].starts_with(b"SIP/2.0 200") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "kamailio did not start");
        }
        Some(Kamailio {
            child,
            port,
            uas,
            _dir: dir,
        })
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        common::kamailio::stop(&mut self.child);
    }
}

/// Routes `POST /calls` names: the agent of an outbound call is the
/// profile's, chosen by route.
const OUTBOUND_ROUTES: &str = r#"
[[routes]]
dial = "demo"
agent = { kind = "demo" }
[[routes]]
dial = "echo"
agent = { kind = "echo" }
"#;

fn profile(kam_port: u16, password: &str) -> String {
    format!(
        r#"
[sip]
domain = "agentline.test"
[[trunks]]
name = "carrier"
host = "127.0.0.1:{kam_port}"
username = "trunkuser"
password = "{password}"
expires = 10
[[routes]]
did = "trunkuser"
agent = {{ kind = "echo" }}
{OUTBOUND_ROUTES}"#
    )
}

/// sipp's UAS behind the provider's echo@ (one call, echoing RTP), in the
/// background; its messages go to `log`.
fn start_echo_uas(sipp: &std::path::Path, port: u16, log: &std::path::Path) {
    let log_s = log.to_str().expect("utf-8 path");
    // sipp drops default-named logs in its working directory.
    let dir = log.parent().unwrap_or(Path::new("."));
    common::sipp::start_uas(
        sipp,
        "uas_echo.xml",
        port,
        &["-rtp_echo", "-trace_msg", "-message_file", log_s],
        dir,
    );
}

fn trunk(server: &Server) -> serde_json::Value {
    let (code, body) = common::http_get(server.api_port, "/trunks").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()[0].clone()
}

fn wait_trunk(
    server: &Server,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let t = trunk(server);
        if done(&t) || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `POST /calls` through the `carrier` trunk, answered by the profile's
/// route `route` (see [`OUTBOUND_ROUTES`]); returns the call id (202).
fn place_call(server: &Server, to: &str, route: &str) -> String {
    let req = format!(r#"{{"trunk":"carrier","to":"{to}","route":"{route}"}}"#);
    let (code, body) = common::http_post(server.api_port, "/calls", &req).unwrap();
    assert_eq!(code, 202, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Polls `GET /calls/{id}` for up to 10 s until `done`; returns the last view.
fn wait_call(
    server: &Server,
    id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut call = serde_json::Value::Null;
    while Instant::now() < deadline {
        let (code, body) = common::http_get(server.api_port, &format!("/calls/{id}")).unwrap();
        if code == 200 {
            call = serde_json::from_str(&body).unwrap_or_default();
            if done(&call) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    call
}

#[test]
fn trunk_registers_with_digest_and_refreshes_before_expiry() {
    let Some(kam) = Kamailio::start() else {
        return;
    };
    let mut server = Server::start(&profile(kam.port, "trunkpass"));
    let t = wait_trunk(&server, Duration::from_secs(10), |t| {
        t["state"] == "registered"
    });
    assert_eq!(t["state"], "registered", "{t}\n{}", server.log_text());
    assert_eq!(t["granted_expires_s"], 10, "kamailio granted 10 s: {t}");
    // Granted 10 s: the refresh must come before the binding lapses.
    let started = Instant::now();
    let t = wait_trunk(&server, Duration::from_secs(12), |t| {
        t["registrations"].as_u64() >= Some(3)
    });
    assert!(
        t["registrations"].as_u64() >= Some(3) && started.elapsed() < Duration::from_secs(11),
        "two refreshes within 11 s of a 10 s grant: {t}"
    );
    assert_eq!(server.health()["trunks_registered"], 1);
    server
        .terminate(Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(
        server.log_text().contains("trunk unregistered"),
        "un-REGISTER on shutdown:\n{}",
        server.log_text()
    );
}

#[test]
fn trunk_with_a_wrong_password_reports_the_error_and_backs_off() {
    let Some(kam) = Kamailio::start() else {
        return;
    };
    let server = Server::start(&profile(kam.port, "not-the-password"));
    let t = wait_trunk(&server, Duration::from_secs(10), |t| t["state"] == "failed");
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["last_code"], 401, "{t}");
    assert!(
        t["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("authentication"),
        "a clear error: {t}"
    );
    // Back-off 2, 4, 8 s (+-20 %): at most 3 attempts in 7 s, not a tight loop.
    std::thread::sleep(Duration::from_secs(7));
    let t = trunk(&server);
    let failures = t["failures"].as_u64().unwrap();
    assert!((2..=3).contains(&failures), "attempts in ~7 s: {t}");
    assert!(t["next_attempt_in_ms"].as_u64() >= Some(3000), "{t}");
}

#[test]
fn inbound_trunk_call_reaches_the_did_route_and_echoes() {
    if require_peer("baresip").is_none() {
        return;
    }
    let Some(kam) = Kamailio::start() else {
        return;
    };
    let server = Server::start(&profile(kam.port, "trunkpass"));
    let t = wait_trunk(&server, Duration::from_secs(10), |t| {
        t["state"] == "registered"
    });
    assert_eq!(t["state"], "registered", "{t}");
    // alice, a customer of the provider, calls our trunk number through it.
    let account = Account::new("alice", Some("alicepass"), kam.port).regint(60);
    let mut opts = Options::new(account)
        .dial("trunkuser")
        .play(&data_path("speech_8k.wav"));
    opts.tail_silence_ms = 1000;
    opts.dial_after_register = true;
    opts.max_secs = 40;
    let mut phone = Baresip::start(opts);
    assert_eq!(
        phone.wait_registration(Duration::from_secs(10)),
        Registration::Registered,
        "{}",
        phone.output()
    );
    phone.dial_now().unwrap();
    assert!(
        phone.wait_call_established(Duration::from_secs(15)),
        "{}\n{}",
        phone.output(),
        server.log_text()
    );
    let calls = server.calls();
    assert_eq!(calls[0]["route"], "trunkuser", "routed by DID: {calls}");
    phone.wait_call_closed(Duration::from_secs(20));
    let out = phone.stop();
    assert_echo_audio(&out);
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
}

#[test]
fn outbound_call_answers_the_407_and_reaches_the_uas() {
    let Some(sipp) = require_peer("sipp") else {
        return;
    };
    let Some(kam) = Kamailio::start() else {
        return;
    };
    // The far end: sipp's UAS, echoing RTP, behind the provider's echo@.
    let dir = tempfile::tempdir().unwrap();
    start_echo_uas(&sipp, kam.uas, &dir.path().join("uas.log"));
    let server = Server::start(&profile(kam.port, "trunkpass"));
    let (code, body) = common::http_post(
        server.api_port,
        "/calls",
        r#"{"trunk":"nope","to":"echo","route":"demo"}"#,
    )
    .unwrap();
    assert_eq!(code, 404, "unknown trunk: {body}");
    let id = place_call(&server, "echo", "demo");
    let call = wait_call(&server, &id, |c| {
        c["state"] == "active" && c["media"]["rx_packets"].as_u64() > Some(20)
    });
    assert_eq!(
        call["state"],
        "active",
        "answered through the provider: {call}\n{}",
        server.log_text()
    );
    assert!(
        call["media"]["rx_packets"].as_u64() > Some(20),
        "the UAS echoes our greeting back: {call}"
    );
    let (code, _) =
        common::http_post(server.api_port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200);
    let idle = server.wait_idle(Duration::from_secs(10));
    let log = std::fs::read_to_string(dir.path().join("uas.log")).unwrap_or_default();
    assert_eq!(
        idle["active_calls"],
        0,
        "{idle}\n{log}\n{}",
        server.log_text()
    );
    assert!(
        log.contains("INVITE sip:echo@"),
        "the UAS got the INVITE:\n{log}"
    );
    assert!(log.contains("BYE sip:"), "and our BYE:\n{log}");
    let cdr = common::finished_cdr(&server, &id);
    assert_eq!(cdr["direction"], "outbound", "{cdr}");
    assert_eq!(cdr["trunk"], "carrier", "{cdr}");
    assert_eq!(cdr["sip_code"], 200, "{cdr}");
    assert_eq!(cdr["hung_up_by"], "api", "{cdr}");
    assert!(cdr["duration_ms"].as_i64() > Some(0), "{cdr}");
}

/// Behind NAT the provider can only reach us while our binding is open:
/// while registered we send CRLF pings to it (seen on the wire) - as UDP
/// datagrams, or on the TCP flow the registration uses (RFC 5626 4.4.1).
fn trunk_sends_crlf_keepalives(transport: &str) {
    let Some(tshark) = require_peer("tshark") else {
        return;
    };
    let Some(kam) = Kamailio::start() else {
        return;
    };
    let server = Server::start(&profile(kam.port, "trunkpass").replace(
        "expires = 10",
        &format!("expires = 60\nkeepalive_s = 1\ntransport = \"{transport}\""),
    ));
    let t = wait_trunk(&server, Duration::from_secs(10), |t| {
        t["state"] == "registered"
    });
    assert_eq!(t["state"], "registered", "{t}\n{}", server.log_text());
    // Capture 4 s of payloads towards the provider; count the CRLF CRLF ones.
    let (filter, field) = if transport == "udp" {
        (
            format!("udp dst port {} and udp[4:2] = 12", kam.port),
            "data.data",
        )
    } else {
        (format!("tcp dst port {}", kam.port), "tcp.payload")
    };
    let out = Command::new(tshark)
        .args(["-i", "lo", "-a", "duration:4", "-f", &filter])
        .args(["-T", "fields", "-e", field])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let pings = text
        .lines()
        .filter(|l| l.trim().replace(':', "") == "0d0a0d0a")
        .count();
    assert!(
        pings >= 2,
        "CRLF keep-alives over {transport} in 4 s (1 s period): {pings}\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(trunk(&server)["keepalives_sent"].as_u64() >= Some(2));
    assert_eq!(
        trunk(&server)["state"],
        "registered",
        "pings do not break the flow"
    );
}

#[test]
fn registered_udp_trunk_sends_crlf_keepalives() {
    trunk_sends_crlf_keepalives("udp");
}

#[test]
fn registered_tcp_trunk_sends_crlf_keepalives_on_its_flow() {
    trunk_sends_crlf_keepalives("tcp");
}

/// The provider restarts (losing its registrations): the trunk registers
/// again with the new instance on its next refresh.
#[test]
fn trunk_reregisters_after_the_provider_restarts() {
    let Some(kam) = Kamailio::start() else {
        return;
    };
    let (port, uas) = (kam.port, kam.uas);
    let server = Server::start(&profile(port, "trunkpass"));
    let t = wait_trunk(&server, Duration::from_secs(10), |t| {
        t["state"] == "registered"
    });
    assert_eq!(t["state"], "registered", "{t}");
    let before = t["registrations"].as_u64().unwrap();
    drop(kam);
    let _kam = Kamailio::start_on(port, uas).unwrap();
    let t = wait_trunk(&server, Duration::from_secs(15), |t| {
        t["registrations"].as_u64() > Some(before) && t["state"] == "registered"
    });
    assert!(
        t["registrations"].as_u64() > Some(before) && t["state"] == "registered",
        "registered with the restarted provider: {t}\n{}",
        server.log_text()
    );
}

/// An outbound call the provider refuses (after our answer to its 407) ends
/// with the provider's final code in `GET /calls/{id}`, and frees its slot.
#[test]
fn refused_outbound_call_reports_the_final_code() {
    let Some(kam) = Kamailio::start() else {
        return;
    };
    let server = Server::start(&profile(kam.port, "trunkpass"));
    let id = place_call(&server, "nobody", "echo");
    let call = wait_call(&server, &id, |c| c["state"] == "ended");
    assert_eq!(call["state"], "ended", "{call}");
    let reason = call["end_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("404"),
        "the provider's 404 after auth: {call}"
    );
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
    // Its record: outbound through the trunk, the callee's final code.
    let cdr = common::finished_cdr(&server, &id);
    assert_eq!(cdr["direction"], "outbound", "{cdr}");
    assert_eq!(cdr["trunk"], "carrier", "{cdr}");
    assert_eq!(cdr["to"], "nobody", "{cdr}");
    assert_eq!(cdr["sip_code"], 404, "{cdr}");
    assert_eq!(cdr["hung_up_by"], "callee", "{cdr}");
    assert!(cdr["answer_at_unix_ms"].is_null(), "{cdr}");
}

/// Transfer to a caller that refuses REFER (sipp answers 501): mode `auto`
/// falls back to a bridged leg through the trunk (kamailio's echo@ -> sipp
/// UAS echoing RTP). The caller's leg switches to the bridge once that leg
/// answers, audio flows through both legs, and hanging up the caller's leg
/// ends the bridged one too.
#[test]
fn refused_refer_falls_back_to_a_bridge_through_the_trunk() {
    let Some(sipp) = require_peer("sipp") else {
        return;
    };
    let Some(kam) = Kamailio::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    start_echo_uas(&sipp, kam.uas, &dir.path().join("uas.log"));
    // Callers from 127.0.0.1 reach `echo` (in OUTBOUND_ROUTES) without a challenge.
    let profile =
        profile(kam.port, "trunkpass").replace("[sip]\n", "[sip]\ntrusted = [\"127.0.0.1/32\"]\n");
    let server = Server::start(&profile);
    let t = wait_trunk(&server, Duration::from_secs(10), |t| {
        t["state"] == "registered"
    });
    assert_eq!(t["state"], "registered", "{t}");
    let caller = common::sipp::spawn_scenario("refer_reject.xml", server.sip_port, "echo", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let a = loop {
        let calls = server.calls();
        if let Some(c) = calls
            .as_array()
            .and_then(|v| v.iter().find(|c| c["state"] == "active"))
        {
            break c["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no call: {calls}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (code, body) = common::http_post(
        server.api_port,
        &format!("/calls/{a}/transfer"),
        r#"{"to":"echo","trunk":"carrier"}"#,
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    let call_a = wait_call(&server, &a, |c| c["transfer"]["state"] == "succeeded");
    assert_eq!(
        call_a["transfer"]["state"],
        "succeeded",
        "{call_a}\n{}",
        server.log_text()
    );
    assert_eq!(call_a["transfer"]["method"], "bridge", "{call_a}");
    assert_eq!(call_a["agent"], "bridge", "{call_a}");
    let b = call_a["transfer"]["bridged_call"]
        .as_str()
        .unwrap()
        .to_string();
    // Audio through both legs: the caller's tone reaches the UAS, whose echo
    // comes back on leg B and is played to the caller on leg A.
    let call_b = wait_call(&server, &b, |c| {
        c["media"]["rx_packets"].as_u64() > Some(100)
    });
    assert_eq!(call_b["agent"], "bridge", "{call_b}");
    assert!(
        call_b["media"]["rx_packets"].as_u64() > Some(100),
        "{call_b}"
    );
    let tx_a = call_a["media"]["tx_packets"].as_u64().unwrap_or(0);
    let call_a = wait_call(&server, &a, |c| {
        c["media"]["tx_packets"].as_u64() > Some(tx_a + 50)
    });
    assert!(
        call_a["media"]["tx_packets"].as_u64() > Some(tx_a + 50),
        "leg A keeps sending what leg B hears: {call_a}"
    );
    assert!(
        call_b["media"]["tx_packets"].as_u64() > Some(50),
        "{call_b}"
    );
    let (code, _) =
        common::http_post(server.api_port, &format!("/calls/{a}/hangup"), "{}").unwrap();
    assert_eq!(code, 200);
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(
        idle["active_calls"],
        0,
        "both legs end: {idle}\n{}",
        server.log_text()
    );
    let out = caller.wait(Duration::from_secs(15));
    assert!(out.success, "{}", out.report());
}

/// A provider answers 302: the outbound call follows the Contact with a new
/// INVITE (same offer), which a second UAS answers.
#[test]
fn outbound_call_follows_a_302_redirect() {
    let Some(sipp) = require_peer("sipp") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let moved = common::free_port();
    start_echo_uas(&sipp, moved, &dir.path().join("moved.log"));
    let redirector = common::free_port();
    let mut r = Command::new(&sipp)
        .arg("-sf")
        .arg(common::sipp::scenario_path("uas_redirect.xml"))
        .args(["-i", "127.0.0.1", "-p", &redirector.to_string()])
        .args(["-key", "moved_port", &moved.to_string()])
        .args([
            "-m",
            "1",
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
            "-bg",
        ])
        .args(["-trace_msg", "-message_file"])
        .arg(dir.path().join("redirect.log"))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = r.wait();
    // An IP-authenticated trunk (no registration) to the redirecting provider.
    let server = Server::start(&format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:{redirector}\"\nregister = false\n{OUTBOUND_ROUTES}"
    ));
    let id = place_call(&server, "echo", "demo");
    let call = wait_call(&server, &id, |c| {
        c["state"] == "active" && c["media"]["rx_packets"].as_u64() > Some(20)
    });
    let logs = format!(
        "{}\n{}\n{}",
        std::fs::read_to_string(dir.path().join("redirect.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("moved.log")).unwrap_or_default(),
        server.log_text()
    );
    assert_eq!(call["state"], "active", "{call}\n{logs}");
    assert!(logs.contains("INVITE sip:moved@127.0.0.1"), "{logs}");
    let (code, _) =
        common::http_post(server.api_port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200);
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
    assert_eq!(
        idle["dialogs"], 0,
        "the redirected dialog is gone too: {idle}"
    );
}

fn gen_cert(dir: &Path) -> std::path::PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_agentline"))
        .args(["gen-cert", "--dir"])
        .arg(dir)
        .args(["--name", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("agentline.crt")
}

/// A trunk with `transport = "tls"` registers over TLS to a provider whose
/// certificate chains to `sip.tls_ca`, and refuses one it cannot verify.
#[test]
fn tls_trunk_registers_and_verifies_the_providers_certificate() {
    let provider = tempfile::tempdir().unwrap();
    let provider_cert = gen_cert(provider.path());
    let stranger = tempfile::tempdir().unwrap();
    let stranger_cert = gen_cert(stranger.path());
    let tls_port = free_port();
    let Some(kam) = Kamailio::start_with(
        free_port(),
        free_port(),
        Some((
            tls_port,
            &provider_cert,
            &provider.path().join("agentline.key"),
        )),
    ) else {
        return;
    };
    let profile = |ca: &Path| {
        format!(
            "[sip]\ntls_ca = \"{}\"\n[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:{tls_port}\"\n\
             transport = \"tls\"\nusername = \"trunkuser\"\npassword = \"trunkpass\"\nexpires = 60\n",
            ca.display()
        )
    };
    let _ = kam.port;
    let server = Server::start(&profile(&provider_cert));
    let t = wait_trunk(&server, Duration::from_secs(10), |t| {
        t["state"] == "registered"
    });
    assert_eq!(
        t["state"],
        "registered",
        "over TLS: {t}\n{}",
        server.log_text()
    );
    drop(server);
    // The same provider, but we trust someone else: no registration.
    let server = Server::start(&profile(&stranger_cert));
    let t = wait_trunk(&server, Duration::from_secs(6), |t| {
        t["state"] == "failed" || t["state"] == "registered"
    });
    assert_ne!(t["state"], "registered", "an unverified provider: {t}");
    assert!(
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate") || e.contains("UnknownIssuer")),
        "the error is shown: {t}\n{}",
        server.log_text()
    );
}

/// `outbound_proxy`: the trunk's host is a name that does not resolve here
/// (`trunk.test`, kamailio's alias); REGISTER and the outbound INVITE go to
/// the proxy address and still carry the host in their request-URIs.
#[test]
fn outbound_proxy_carries_registration_and_calls() {
    let Some(sipp) = require_peer("sipp") else {
        return;
    };
    let Some(kam) = Kamailio::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    start_echo_uas(&sipp, kam.uas, &dir.path().join("uas.log"));
    let server = Server::start(&profile(kam.port, "trunkpass").replace(
        &format!("host = \"127.0.0.1:{}\"", kam.port),
        &format!(
            "host = \"trunk.test:{0}\"\noutbound_proxy = \"127.0.0.1:{0}\"",
            kam.port
        ),
    ));
    let t = wait_trunk(&server, Duration::from_secs(10), |t| {
        t["state"] == "registered"
    });
    assert_eq!(
        t["state"],
        "registered",
        "via the proxy: {t}\n{}",
        server.log_text()
    );
    let id = place_call(&server, "echo", "demo");
    let call = wait_call(&server, &id, |c| {
        c["state"] == "active" && c["media"]["rx_packets"].as_u64() > Some(20)
    });
    let log = std::fs::read_to_string(dir.path().join("uas.log")).unwrap_or_default();
    assert_eq!(
        call["state"],
        "active",
        "{call}\n{log}\n{}",
        server.log_text()
    );
    let (code, _) =
        common::http_post(server.api_port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200);
    server.wait_idle(Duration::from_secs(10));
}

/// A call from the provider's side to our trunk number, through kamailio:
/// it reaches us only while the trunk is registered there.
fn call_through_provider(kam: &Kamailio) -> common::sipp::SippOutcome {
    common::sipp::run_scenario("invite_bye.xml", kam.port, "trunkuser", &["-d", "300"])
}

#[test]
fn reload_reregisters_a_changed_trunk_and_unregisters_a_removed_one() {
    if require_peer("sipp").is_none() {
        return;
    }
    let Some(kam) = Kamailio::start() else {
        return;
    };
    let mut server = Server::start(&profile(kam.port, "not-the-password"));
    let t = wait_trunk(&server, Duration::from_secs(10), |t| t["state"] == "failed");
    assert_eq!(t["state"], "failed", "{t}");
    let profile_path = server.dir.path().join("profile.toml");

    // The password fixed: the trunk is changed, registers again, and calls
    // from the provider reach us.
    std::fs::write(&profile_path, profile(kam.port, "trunkpass")).unwrap();
    let (code, body) = common::http_post(server.api_port, "/reload", "").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["trunks_changed"], serde_json::json!(["carrier"]), "{v}");
    let t = wait_trunk(&server, Duration::from_secs(10), |t| {
        t["state"] == "registered"
    });
    assert_eq!(t["state"], "registered", "{t}\n{}", server.log_text());
    let out = call_through_provider(&kam);
    assert!(out.success, "registered trunk: {}", out.report());

    // The trunk removed: it un-REGISTERs, so the provider no longer finds us
    // (kamailio's lookup fails and it challenges the call instead).
    let no_trunk = profile(kam.port, "trunkpass").replace(
        &format!(
            "[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:{}\"\nusername = \"trunkuser\"\npassword = \"trunkpass\"\nexpires = 10\n",
            kam.port
        ),
        "",
    );
    assert!(!no_trunk.contains("[[trunks]]"), "{no_trunk}");
    std::fs::write(&profile_path, no_trunk).unwrap();
    let (code, body) = common::http_post(server.api_port, "/reload", "").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["trunks_removed"], serde_json::json!(["carrier"]), "{v}");
    assert_eq!(v["trunks"], 0, "{v}");
    let (_, body) = common::http_get(server.api_port, "/trunks").unwrap();
    assert_eq!(body, "[]");
    assert!(
        server.log_text().contains("trunk unregistered"),
        "{}",
        server.log_text()
    );
    let out = call_through_provider(&kam);
    assert!(!out.success, "the call still reached us: {}", out.report());
    assert!(
        out.messages()
            .iter()
            .any(|m| !m.sent && m.start_line.contains(" 407 ")),
        "the provider no longer has our binding: {}",
        out.report()
    );
    // Our server took no call from it.
    assert_eq!(server.health()["active_calls"], 0);
    server
        .terminate(Duration::from_secs(15))
        .expect("exits on SIGTERM");
}
