//! DTMF reaches the call: RFC 4733 events replayed by sipp from the sample
//! captures of sip-tester, and SIP INFO digits, each exactly once.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::sipp::spawn_scenario;
use common::{require_peer, Server};

#[test]
fn rfc4733_and_sip_info_digits_arrive_exactly_once() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(common::TRUSTED_ECHO_PROFILE);
    let mut run = spawn_scenario("dtmf.xml", server.sip_port, "echo", &[]);
    // The call stays up ~1.5 s after the last digit; keep the longest
    // digit string /calls showed.
    let mut digits = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while run.is_running() && Instant::now() < deadline {
        if let Some(calls) = server.calls().as_array() {
            for c in calls {
                let d = c["dtmf"].as_str().unwrap_or_default();
                if d.len() > digits.len() {
                    digits = d.to_string();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run.wait(Duration::from_secs(30));
    assert!(out.success, "sipp failed:\n{}", out.report());
    assert_eq!(
        digits,
        "123#57",
        "digits seen in GET /calls (RFC 4733 1 2 3 #, then INFO 5 and 7)\n{}",
        server.log_text()
    );
    let log = server.log_text();
    assert_eq!(
        log.matches("DTMF").count(),
        6,
        "one log line per digit:\n{log}"
    );
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
}
