#![allow(clippy::unwrap_used)]
//! `GET /metrics` through a real call (sipp, PCMU both ways): the names are
//! there before any call, the counters move during and after it (active 1
//! then 0, calls total +1 with who hung up, RTP packets, setup time, MOS),
//! a trunk that cannot register shows as down with its failures, `promtool
//! check metrics` accepts the exposition, and the Grafana dashboard is valid
//! JSON that only queries metrics the server exports.

mod common;
#[path = "common/prom.rs"]
mod prom;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::sipp::spawn_scenario;
use common::{free_port, http_get, require_peer, Server};
use prom::Scrape;

fn profile(dead_port: u16) -> String {
    format!(
        r#"
[sip]
trusted = ["127.0.0.1/32"]

[[trunks]]
name = "dead"
host = "127.0.0.1:{dead_port}"
transport = "tcp"
username = "u"
password = "p"
expires = 60

[[trunks]]
name = "static"
host = "127.0.0.1:{dead_port}"
register = false

[[routes]]
dial = "echo"
agent = {{ kind = "echo" }}
answer_delay_ms = 200
"#
    )
}

fn scrape(server: &Server) -> Scrape {
    let (code, body) = http_get(server.api_port, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "GET /metrics: {body}");
    Scrape::parse(&body)
}

/// Scrapes until `cond` holds or `within` passes; returns the last scrape.
fn scrape_until(server: &Server, within: Duration, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let s = scrape(server);
        if cond(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every family the server must export before its first call.
const ALWAYS: &[&str] = &[
    "agentline_calls_active",
    "agentline_call_setup_seconds",
    "agentline_registrations_active",
    "agentline_trunk_registered",
    "agentline_trunk_registration_failures_total",
    "agentline_rtp_packets_received_total",
    "agentline_rtp_packets_sent_total",
    "agentline_rtp_packets_lost_total",
    "agentline_rtp_jitter_seconds",
    "agentline_call_mos",
    "agentline_jitter_buffer_delay_seconds",
    "agentline_jitter_buffer_concealed_total",
    "agentline_jitter_buffer_late_total",
    "agentline_playout_underruns_total",
    "agentline_turn_latency_seconds",
    "agentline_provider_errors_total",
    "agentline_provider_failovers_total",
    "agentline_circuit_breakers_open",
    "agentline_webhook_failures_total",
    "agentline_process_cpu_seconds_total",
    "agentline_process_resident_memory_bytes",
    "agentline_process_open_fds",
];

#[test]
fn metrics_move_with_a_call_and_pass_promtool() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(&profile(free_port()));

    // Before any call: every family, zero calls, the trunks' state.
    let before = scrape_until(&server, Duration::from_secs(10), |s| {
        s.value(
            "agentline_trunk_registration_failures_total",
            &[("trunk", "dead")],
        )
        .is_some_and(|v| v >= 1.0)
    });
    let families = before.families();
    for name in ALWAYS {
        assert!(
            families.contains(*name),
            "{name} missing before the first call:\n{}",
            before.text
        );
    }
    assert_eq!(before.value("agentline_calls_active", &[]), Some(0.0));
    assert_eq!(before.value("agentline_calls_total", &[]), None);
    assert_eq!(
        before.value("agentline_rtp_packets_received_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        before.value("agentline_trunk_registered", &[("trunk", "dead")]),
        Some(0.0),
        "{}",
        before.text
    );
    assert_eq!(
        before.value("agentline_trunk_registered", &[("trunk", "static")]),
        Some(1.0),
        "{}",
        before.text
    );
    assert!(
        before
            .value(
                "agentline_trunk_registration_failures_total",
                &[("trunk", "dead")]
            )
            .is_some_and(|v| v >= 1.0),
        "a trunk on a closed port fails to register: {}\n{}",
        before.text,
        server.log_text()
    );
    assert_eq!(
        before.value(
            "agentline_trunk_registration_failures_total",
            &[("trunk", "static")]
        ),
        Some(0.0)
    );
    assert!(
        before
            .value("agentline_process_resident_memory_bytes", &[])
            .is_some_and(|b| b > 1e6),
        "{}",
        before.text
    );

    // During the call: one active, packets counted by the stats tick.
    let run = spawn_scenario("invite_bye.xml", server.sip_port, "echo", &["-d", "4000"]);
    let during = scrape_until(&server, Duration::from_secs(8), |s| {
        s.value("agentline_calls_active", &[]) == Some(1.0)
            && s.value("agentline_rtp_packets_received_total", &[])
                .is_some_and(|v| v > 0.0)
    });
    assert_eq!(
        during.value("agentline_calls_active", &[]),
        Some(1.0),
        "{}",
        during.text
    );
    let rx_during = during
        .value("agentline_rtp_packets_received_total", &[])
        .unwrap();
    assert!(rx_during > 0.0, "{}", during.text);
    assert_eq!(
        during.value(
            "agentline_call_setup_seconds_count",
            &[("direction", "inbound")]
        ),
        Some(1.0),
        "the 200 OK was sent: {}",
        during.text
    );
    let setup = during
        .value(
            "agentline_call_setup_seconds_sum",
            &[("direction", "inbound")],
        )
        .unwrap();
    assert!(
        (0.2..5.0).contains(&setup),
        "setup time {setup} s with answer_delay_ms = 200"
    );

    let out = run.wait(Duration::from_secs(30));
    assert!(out.success, "sipp failed\n{}", out.report());

    // After: no call active, one ended by the caller, all its media counted.
    let after = scrape_until(&server, Duration::from_secs(10), |s| {
        s.value("agentline_calls_active", &[]) == Some(0.0)
            && s.value("agentline_calls_total", &[]).is_some()
    });
    assert_eq!(
        after.value("agentline_calls_active", &[]),
        Some(0.0),
        "{}",
        after.text
    );
    assert_eq!(
        after.value(
            "agentline_calls_total",
            &[
                ("direction", "inbound"),
                ("route", "echo"),
                ("hung_up_by", "caller"),
                ("answered", "true"),
            ]
        ),
        Some(1.0),
        "{}",
        after.text
    );
    assert_eq!(after.value("agentline_calls_total", &[]), Some(1.0));
    // sipp streams 50 packets/s for the 4 s call; the echo answers each.
    let rx = after
        .value("agentline_rtp_packets_received_total", &[])
        .unwrap();
    let tx = after
        .value("agentline_rtp_packets_sent_total", &[])
        .unwrap();
    assert!(
        rx >= rx_during,
        "counters never go down: {rx} < {rx_during}"
    );
    assert!(
        (150.0..=260.0).contains(&rx),
        "RTP in: {rx} packets for a 4 s call at 50 packets/s\n{}",
        after.text
    );
    assert!(
        (150.0..=260.0).contains(&tx),
        "RTP out: {tx} packets for a 4 s call at 50 packets/s\n{}",
        after.text
    );
    assert_eq!(
        after.value("agentline_rtp_packets_lost_total", &[]),
        Some(0.0),
        "loopback loses nothing"
    );
    assert_eq!(after.value("agentline_call_mos_count", &[]), Some(1.0));
    let mos = after.value("agentline_call_mos_sum", &[]).unwrap();
    assert!(
        (4.0..=4.5).contains(&mos),
        "MOS {mos} on a clean loopback call"
    );
    let jitter_samples = after
        .value("agentline_rtp_jitter_seconds_count", &[])
        .unwrap();
    assert!(
        (2.0..=6.0).contains(&jitter_samples),
        "one jitter sample per second of media: {jitter_samples}"
    );
    assert!(
        after.value("agentline_process_cpu_seconds_total", &[]) > Some(0.0),
        "{}",
        after.text
    );

    promtool_check(&after.text);
    dashboard_queries_exported_metrics(&after);
}

/// `promtool check metrics` (Debian package `prometheus`) on the exposition.
fn promtool_check(text: &str) {
    let Some(promtool) = require_peer("promtool") else {
        return;
    };
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}\n--- exposition ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `agentline_*` name in a dashboard query, from its JSON.
fn query_names(dash: &serde_json::Value, into: &mut BTreeSet<String>) {
    match dash {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(e)) => {
                        let mut rest = e.as_str();
                        while let Some(i) = rest.find("agentline_") {
                            let name: String = rest[i..]
                                .chars()
                                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                .collect();
                            rest = &rest[i + name.len()..];
                            into.insert(name);
                        }
                    }
                    _ => query_names(v, into),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| query_names(v, into)),
        _ => {}
    }
}

fn dashboard_queries_exported_metrics(scrape: &Scrape) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/agentline.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    let panels = dash["panels"].as_array().unwrap();
    let mut targets = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
            targets += 1;
        }
    }
    assert!(targets >= 20, "{targets} queries");
    let mut names = BTreeSet::new();
    query_names(&dash, &mut names);
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !scrape.has_series_name(n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not export: {missing:?}"
    );
    // The panels the issue asks for are there.
    for needed in [
        "agentline_calls_active",
        "agentline_calls_total",
        "agentline_call_setup_seconds_bucket",
        "agentline_call_mos_bucket",
        "agentline_rtp_packets_lost_total",
        "agentline_rtp_jitter_seconds_bucket",
        "agentline_jitter_buffer_concealed_total",
        "agentline_playout_underruns_total",
        "agentline_turn_latency_seconds_bucket",
        "agentline_trunk_registered",
        "agentline_provider_errors_total",
        "agentline_provider_failovers_total",
        "agentline_process_cpu_seconds_total",
        "agentline_process_resident_memory_bytes",
    ] {
        assert!(names.contains(needed), "no panel queries {needed}");
    }
}
