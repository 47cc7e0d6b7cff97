#![allow(clippy::unwrap_used)]
//! The server against sipp, the scripted SIP peer: one test per scenario in
//! tests/sipp/. Each test starts its own `agentline` on free loopback ports,
//! drives one call (or ping) with sipp and then checks through GET /health
//! that nothing is left behind.

mod common;

use common::sipp::{run_scenario, spawn_scenario, SippOutcome};
use common::{require_peer, Server};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PROFILE: &str = common::TRUSTED_ECHO_RING_PROFILE;

fn assert_sipp_ok(what: &str, out: &SippOutcome) {
    assert!(out.success, "{what}: sipp failed\n{}", out.report());
}

/// After the call: no call, RTP port or dialog may be left.
fn assert_idle(server: &Server) {
    let h = server.wait_idle(Duration::from_secs(10));
    for key in ["active_calls", "rtp_ports_in_use", "dialogs"] {
        assert_eq!(
            h[key].as_u64(),
            Some(0),
            "{key} not back to 0 within 10 s after the call: {h}"
        );
    }
}

/// Polls `cond` on GET /health every 50 ms until it holds or `within` passes.
fn wait_health(
    server: &Server,
    within: Duration,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let h = server.health();
        if cond(&h) || Instant::now() > deadline {
            return h;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn options_is_answered_200() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let out = run_scenario("options.xml", server.sip_port, "echo", &[]);
    assert_sipp_ok("OPTIONS -> 200", &out);
    assert_eq!(out.sent_requests("OPTIONS"), 1, "{}", out.report());
    assert_idle(&server);
}

#[test]
fn invite_ack_bye_completes() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    // 3 s call with RTP (PCMU tone) both ways; the 200 must answer PCMU.
    let mut run = spawn_scenario("invite_bye.xml", server.sip_port, "echo", &["-d", "3000"]);
    let call_id = run.call_id(1);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline && run.is_running() {
        let calls = server.calls();
        if let Some(c) = calls
            .as_array()
            .and_then(|a| a.iter().find(|c| c["call_id"] == call_id.as_str()))
        {
            if !c["codec"].is_null() {
                seen = Some((c.clone(), server.health()));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run.wait(Duration::from_secs(30));
    assert_sipp_ok("INVITE/200/ACK/BYE", &out);

    let (call, health) = seen.unwrap_or_else(|| {
        panic!(
            "call {call_id} with a codec never showed in GET /calls during the call\n{}",
            out.report()
        )
    });
    let codec = call["codec"].to_string().to_ascii_uppercase();
    assert!(codec.contains("PCMU"), "codec of {call} should be PCMU");
    assert_eq!(
        health["active_calls"].as_u64(),
        Some(1),
        "during the call: {health}"
    );
    assert!(
        health["rtp_ports_in_use"].as_u64().unwrap_or(0) >= 1,
        "during the call no RTP port in use: {health}"
    );
    assert_idle(&server);
}

#[test]
fn cancel_before_answer_gets_487() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    // `ring` waits 2 s before answering; sipp CANCELs as soon as it sees 180.
    let out = run_scenario("cancel.xml", server.sip_port, "ring", &[]);
    assert_sipp_ok("INVITE/180/CANCEL -> 200 + 487", &out);
    assert_eq!(out.sent_requests("CANCEL"), 1, "{}", out.report());
    assert_idle(&server);
}

#[test]
fn pcma_only_offer_is_answered_with_pcma() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    // The scenario's regexp (check_it) fails the call unless the 200's SDP
    // has "m=audio <port> RTP/AVP 8".
    let out = run_scenario("pcma_only.xml", server.sip_port, "echo", &["-d", "500"]);
    assert_sipp_ok("PCMA-only offer -> 200 with RTP/AVP 8", &out);
    assert_idle(&server);
}

#[test]
fn g729_only_offer_is_rejected_488() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let out = run_scenario("g729_only.xml", server.sip_port, "echo", &[]);
    assert_sipp_ok("G.729-only offer -> 488", &out);
    assert_idle(&server);
}

#[test]
fn unknown_user_gets_404() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let out = run_scenario("unknown_user.xml", server.sip_port, "nobody-here", &[]);
    assert_sipp_ok("INVITE to an unknown user -> 404", &out);
    assert_idle(&server);
}

#[test]
fn retransmitted_invite_makes_one_call() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    // Three copies of one INVITE, 150 ms apart, while `ring` rings (2 s);
    // then a 2 s call. Meanwhile count the calls the server reports.
    let mut run = spawn_scenario(
        "invite_retransmit.xml",
        server.sip_port,
        "ring",
        &["-d", "2000"],
    );
    let mut call_ids = BTreeSet::new();
    let (mut max_listed, mut max_active, mut max_dialogs) = (0, 0, 0);
    let mut samples = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while run.is_running() && Instant::now() < deadline {
        let calls = server.calls();
        let list = calls.as_array().cloned().unwrap_or_default();
        max_listed = max_listed.max(list.len());
        call_ids.extend(list.iter().map(|c| match c["call_id"].as_str() {
            Some(id) => id.to_string(),
            None => c["call_id"].to_string(),
        }));
        let h = server.health();
        max_active = max_active.max(h["active_calls"].as_u64().unwrap_or(0));
        max_dialogs = max_dialogs.max(h["dialogs"].as_u64().unwrap_or(0));
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run.wait(Duration::from_secs(30));
    assert_sipp_ok("INVITE x3 / 200 / ACK / BYE", &out);
    assert_eq!(
        out.sent_requests("INVITE"),
        3,
        "sipp should have sent the INVITE 3 times before the answer\n{}",
        out.report()
    );
    assert!(
        samples > 10,
        "only {samples} samples of /calls during the call"
    );
    assert_eq!(
        max_listed, 1,
        "GET /calls listed {max_listed} calls at once (ids seen: {call_ids:?})"
    );
    assert_eq!(
        call_ids.len(),
        1,
        "more than one call id in /calls: {call_ids:?}"
    );
    assert_eq!(max_active, 1, "active_calls peaked at {max_active}");
    assert!(max_dialogs <= 1, "dialogs peaked at {max_dialogs}");
    assert_idle(&server);
}

#[test]
fn server_sends_bye_on_sigterm() {
    if require_peer("sipp").is_none() {
        return;
    }
    let mut server = Server::start(PROFILE);
    // An established call that only the server can end.
    let mut run = spawn_scenario("server_bye.xml", server.sip_port, "echo", &[]);
    let h = wait_health(&server, Duration::from_secs(10), |h| {
        h["active_calls"].as_u64() == Some(1)
    });
    if h["active_calls"].as_u64() != Some(1) {
        let out = run.wait(Duration::from_secs(1));
        panic!("the call never became active: {h}\n{}", out.report());
    }
    // Caller ID comes from P-Asserted-Identity (the From user is `sipp`).
    assert_eq!(
        server.calls()[0]["caller_id"],
        "+41445550000",
        "{}",
        server.calls()
    );
    // Let the ACK land and RTP flow before pulling the plug.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        run.is_running(),
        "sipp ended before SIGTERM:\n{}",
        run.message_log()
    );

    let status = server.terminate(Duration::from_secs(20));
    let out = run.wait(Duration::from_secs(15));
    let status = status.unwrap_or_else(|| {
        panic!(
            "agentline still running 20 s after SIGTERM\n{}\n---- agentline log ----\n{}",
            out.report(),
            server.log_text()
        )
    });
    assert!(
        out.received_requests("BYE") >= 1,
        "sipp got no BYE from the server\n{}\n---- agentline log ----\n{}",
        out.report(),
        server.log_text()
    );
    assert_sipp_ok("server BYE on SIGTERM, answered 200", &out);
    assert!(
        status.success(),
        "agentline exited with {status} after SIGTERM\n---- agentline log ----\n{}",
        server.log_text()
    );
}

#[test]
fn invite_without_sdp_gets_offer_in_200() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    // The scenario's regexp fails the call unless the 200 carries an offer
    // with PCMU; its ACK carries the answer.
    let out = run_scenario("late_offer.xml", server.sip_port, "echo", &["-d", "1000"]);
    assert_sipp_ok("INVITE without SDP -> offer in 200, answer in ACK", &out);
    assert_idle(&server);
}
