#![allow(clippy::unwrap_used)]
//! The load harness cannot rot: `benches/load/run.sh --quick` (50 sipp calls
//! per case with looped speech over RTP, then 200 INVITE->200->BYE set-ups)
//! runs against the real binary and every case's row must show all its
//! calls up and completed, speech reaching the server, and a loose bound on
//! late packets. A smoke test of the harness, not a performance test: the
//! figures themselves are only printed (full runs go to benches/RESULTS.md).

mod common;

#[path = "../benches/load/pcap.rs"]
#[allow(dead_code)]
mod pcap;

use std::path::Path;
use std::process::Command;

const CALLS: u64 = 50;
const SETUP_CALLS: &str = "200";

/// The cells of the markdown row whose first cell is `case`.
fn row<'a>(table: &'a str, case: &str) -> Option<Vec<&'a str>> {
    table.lines().find_map(|l| {
        let cells: Vec<&str> = l
            .trim()
            .strip_prefix('|')?
            .strip_suffix('|')?
            .split('|')
            .map(str::trim)
            .collect();
        (cells.first() == Some(&case)).then_some(cells)
    })
}

#[test]
fn quick_load_run_reports_every_case_with_all_calls_up() {
    for peer in ["sipp", "sox", "jq", "curl", "tshark"] {
        if common::require_peer(peer).is_none() {
            return;
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin =
        std::env::var("AGENTLINE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentline").into());
    let captures = tempfile::tempdir().unwrap();
    pcap::write_all(&common::data_path("speech_8k.wav"), captures.path(), 30).unwrap();

    let out = Command::new("bash")
        .arg(root.join("benches/load/run.sh"))
        .arg("--quick")
        .env("AGENTLINE_BIN", &bin)
        .env("LOAD_PCAP_DIR", captures.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}\n{stdout}");
    assert!(out.status.success(), "run.sh --quick failed: {stderr}");

    // | case | calls | up | sipp ok/failed | agentline cores | calls per core | x plain |
    // x AVR | RSS per call | late % | concealed % | tx underrun % | rx % | tx % | codec errors | sipp cores |
    // sipp replays the G.722 and Opus captures through a raw socket.
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let cases: &[&str] = if root_user {
        &["plain", "vad", "full", "g722", "opus", "opus8k"]
    } else {
        eprintln!("not root: the g722, opus and opus8k cases are not checked");
        &["plain", "vad", "full"]
    };
    for &case in cases {
        let r = row(&stdout, case).unwrap_or_else(|| panic!("no row for case {case}:\n{stdout}"));
        assert!(r.len() >= 16, "case {case}: short row {r:?}");
        let num = |i: usize| -> f64 {
            r[i].parse()
                .unwrap_or_else(|_| panic!("case {case}: cell {i} `{}` is not a number", r[i]))
        };
        assert_eq!(num(1) as u64, CALLS, "case {case}: calls {r:?}");
        assert_eq!(
            num(2) as u64,
            CALLS,
            "case {case}: not every call was up {r:?}"
        );
        assert_eq!(
            r[3],
            format!("{CALLS}/0"),
            "case {case}: sipp did not complete every call {r:?}"
        );
        assert!(num(4) > 0.0, "case {case}: no agentline CPU measured {r:?}");
        assert!(num(9) < 10.0, "case {case}: late % {} >= 10 {r:?}", r[9]);
        // The looped speech really reached the server and the echo went out.
        assert!(num(12) > 50.0, "case {case}: rx {} % of 50/s {r:?}", r[12]);
        assert!(num(13) > 50.0, "case {case}: tx {} % of 50/s {r:?}", r[13]);
        assert_eq!(num(14) as u64, 0, "case {case}: codec errors {r:?}");
    }

    // | setup | calls | sipp ok/failed | offered | completed per s | p50 | p99 | timed by | cores |
    let r = row(&stdout, "setup").unwrap_or_else(|| panic!("no setup row:\n{stdout}"));
    assert_eq!(r[1], SETUP_CALLS, "{r:?}");
    assert_eq!(
        r[2],
        format!("{SETUP_CALLS}/0"),
        "set-up calls failed {r:?}"
    );
    let p50: f64 = r[5].parse().unwrap_or_else(|_| panic!("p50 `{}`", r[5]));
    let p99: f64 = r[6].parse().unwrap_or_else(|_| panic!("p99 `{}`", r[6]));
    assert!(
        p50 <= p99 && p99 < 1000.0,
        "INVITE->200 p50 {p50} p99 {p99} ms"
    );
    assert_eq!(r[7], "wire", "INVITE->200 not timed from the capture {r:?}");
}
