#![allow(clippy::unwrap_used)]
//! Resource leaks: after many calls that end every way a call can end
//! (answered and hung up by the caller, cancelled while ringing, rejected),
//! the server must be back to zero calls, RTP ports and dialogs, and still
//! serve SIP.

mod common;

use common::sipp::run_scenario;
use common::{require_peer, Server};
use std::time::{Duration, Instant};

const PROFILE: &str = common::TRUSTED_ECHO_RING_PROFILE;

/// (scenario, dialled user, calls per round)
const MIX: [(&str, &str, u32); 3] = [
    ("invite_bye.xml", "echo", 25),
    ("cancel.xml", "ring", 15),
    ("unknown_user.xml", "nobody-here", 10),
];
const ROUNDS: u32 = 4;

#[test]
fn no_leaks_after_200_sequential_calls() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let started = Instant::now();
    let mut total = 0;
    for round in 1..=ROUNDS {
        for (scenario, user, calls) in MIX {
            let m = calls.to_string();
            // 20 calls/s, at most 4 at once, answered calls held 200 ms
            // with RTP; sipp gives up after 30 s.
            let out = run_scenario(
                scenario,
                server.sip_port,
                user,
                &["-m", &m, "-r", "20", "-l", "4", "-d", "200"],
            );
            assert!(
                out.success,
                "round {round}: {calls} x {scenario} to {user}: not all calls succeeded\n{}",
                out.report()
            );
            total += calls;
        }
    }
    assert_eq!(total, 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let h = server.health();
        let idle = ["active_calls", "rtp_ports_in_use", "dialogs"]
            .iter()
            .all(|k| h[*k].as_u64() == Some(0));
        if idle || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for key in ["active_calls", "rtp_ports_in_use", "dialogs"] {
        assert_eq!(
            health[key].as_u64(),
            Some(0),
            "{key} not back to 0 within 20 s after {total} calls (test ran {:.0} s): {health}",
            started.elapsed().as_secs_f64()
        );
    }
    assert_eq!(health["status"], "ok", "{health}");
    let calls = server.calls();
    assert_eq!(
        calls.as_array().map(Vec::len),
        Some(0),
        "calls left: {calls}"
    );

    // Still alive and still serving SIP.
    let out = run_scenario("options.xml", server.sip_port, "echo", &[]);
    assert!(out.success, "OPTIONS after the load\n{}", out.report());
    let out = run_scenario("invite_bye.xml", server.sip_port, "echo", &["-d", "200"]);
    assert!(out.success, "a call after the load\n{}", out.report());
}
