//! Hold and resume by re-INVITE: the call survives, nothing is sent while
//! the caller holds us, and audio resumes after sendrecv.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::sipp::spawn_scenario;
use common::{require_peer, Server};

#[test]
fn reinvite_sendonly_holds_and_sendrecv_resumes_audio() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(common::TRUSTED_ECHO_PROFILE);
    let mut run = spawn_scenario("hold.xml", server.sip_port, "echo", &[]);
    // (elapsed ms, on_hold, tx_packets) samples from GET /calls.
    let mut samples: Vec<(u128, bool, u64)> = Vec::new();
    let t0 = Instant::now();
    while run.is_running() && t0.elapsed() < Duration::from_secs(30) {
        if let Some(c) = server.calls().as_array().and_then(|a| a.first().cloned()) {
            samples.push((
                t0.elapsed().as_millis(),
                c["on_hold"].as_bool().unwrap(),
                c["media"]["tx_packets"].as_u64().unwrap(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run.wait(Duration::from_secs(30));
    assert!(
        out.success,
        "sipp failed (answers must be recvonly, then sendrecv):\n{}",
        out.report()
    );
    let held: Vec<_> = samples.iter().filter(|s| s.1).collect();
    assert!(
        held.len() >= 10,
        "the call showed on_hold for ~2 s: {samples:?}"
    );
    // The stats refresh every second: skip the first second of the hold.
    let settled: Vec<u64> = held.iter().skip(10).map(|s| s.2).collect();
    if let (Some(first), Some(last)) = (settled.first(), settled.last()) {
        assert_eq!(first, last, "RTP was sent while on hold: {samples:?}");
    }
    let hold_tx = held.last().unwrap().2;
    let resumed_at = samples.iter().position(|s| s.1).unwrap() + held.len();
    let after: Vec<_> = samples[resumed_at..].iter().collect();
    assert!(after.iter().all(|s| !s.1), "hold ended: {samples:?}");
    let final_tx = after.last().unwrap().2;
    assert!(
        final_tx > hold_tx + 40,
        "audio resumed after sendrecv: tx {hold_tx} -> {final_tx} ({samples:?})"
    );
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
}
