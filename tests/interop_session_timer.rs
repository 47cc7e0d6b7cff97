//! RFC 4028 session timers against sipp: we refresh when we are the
//! refresher, hang up when the caller should refresh and does not, and
//! refuse an interval below Min-SE with 422.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sipp::run_scenario;
use common::{require_peer, Server};

// min_se_s = 2 so a test runs in seconds (RFC 4028's floor of 90 s is the default).
const PROFILE: &str = r#"
[sip]
trusted = ["127.0.0.1/32"]
min_se_s = 2
[[routes]]
dial = "echo"
agent = { kind = "echo" }
"#;

#[test]
fn server_refreshes_the_session_as_refresher() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let out = run_scenario("session_timer_refresh.xml", server.sip_port, "echo", &[]);
    assert!(
        out.success,
        "no refresh re-INVITE within the interval:\n{}",
        out.report()
    );
    assert_eq!(out.received_requests("INVITE"), 1, "{}", out.report());
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
}

#[test]
fn unrefreshed_session_is_hung_up() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let out = run_scenario("session_timer_expiry.xml", server.sip_port, "echo", &[]);
    assert!(
        out.success,
        "no BYE before the interval ended:\n{}",
        out.report()
    );
    assert!(
        server.log_text().contains("session not refreshed"),
        "{}",
        server.log_text()
    );
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
}

#[test]
fn session_interval_below_min_se_gets_422() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let out = run_scenario("session_timer_too_small.xml", server.sip_port, "echo", &[]);
    assert!(out.success, "expected 422 with Min-SE: 2\n{}", out.report());
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
}
