#![allow(clippy::unwrap_used)]
//! The churn soak (issue 14): runs `benches/soak/run.sh` against this
//! build's binary and asserts its verdict (flat RSS over the steady phase;
//! fds and tokio tasks back to idle; calls, RTP ports, dialogs and SIP
//! transactions 0 after the drain; < 1 % failed calls). Under CI
//! (`CI=true`) or with `AGENTLINE_SOAK=1` it is the 5-minute `--short`
//! run; otherwise a 60-second one, so a local `cargo test` stays short.
//! `AGENTLINE_SOAK_ARGS` replaces the arguments (e.g. "--seconds 1800").

mod common;

use std::process::Command;
use std::time::Instant;

use common::require_peer;

#[test]
fn churn_soak_leaves_nothing_behind() {
    for peer in ["sipp", "sox", "jq", "curl", "python3"] {
        if require_peer(peer).is_none() {
            return;
        }
    }
    let on = |k: &str, v: &str| std::env::var(k).is_ok_and(|x| x == v);
    let args: Vec<String> = match std::env::var("AGENTLINE_SOAK_ARGS") {
        Ok(a) => a.split_whitespace().map(String::from).collect(),
        Err(_) if on("CI", "true") || on("AGENTLINE_SOAK", "1") => vec!["--short".into()],
        Err(_) => vec!["--seconds".into(), "60".into()],
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/soak/run.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(script)
        .args(&args)
        .env("AGENTLINE_BIN", env!("CARGO_BIN_EXE_agentline"))
        .output()
        .expect("run benches/soak/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "soak {args:?}: exit {:?} after {:.0} s\n{stdout}",
        out.status.code(),
        started.elapsed().as_secs_f64()
    );
    assert_ne!(
        out.status.code(),
        Some(3),
        "the soak harness could not run:\n{stderr}"
    );
    assert!(
        out.status.success() && stdout.contains("soak: PASS"),
        "the soak failed (exit {:?}):\n{stdout}\n--- progress ---\n{stderr}",
        out.status.code()
    );
    // The table really holds samples taken under load.
    assert!(
        stdout.lines().filter(|l| l.contains("| steady |")).count() >= 2,
        "{stdout}"
    );
}
