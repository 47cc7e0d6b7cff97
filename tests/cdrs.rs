#![allow(clippy::unwrap_used)]
//! Call records through real calls (sipp as the caller), on SQLite (the
//! default) and on a real PostgreSQL: answered, cancelled, 404, 488, hung up
//! by the API, transferred, an agent that fails over; each record has the
//! fields a call centre reads. Then `kill -9` during calls: after the
//! restart every one of them is found, closed as `lost`.

mod common;

use std::time::{Duration, Instant};

use common::pg::Postgres;
use common::sipp::{spawn_scenario, SippRun};
use common::{finished_cdr, http_get, http_post, require_peer, urlencode, Server};
use serde_json::Value;

fn profile(store: &str) -> String {
    format!(
        r#"
[sip]
trusted = ["127.0.0.1/32"]

[[routes]]
dial = "echo"
agent = {{ kind = "echo" }}
record = true

[[routes]]
dial = "ring"
agent = {{ kind = "echo" }}
answer_delay_ms = 2000

# The first agent's server is down: the fallback takes the call.
[[routes]]
dial = "failover"
agent = {{ kind = "audiosocket", addr = "127.0.0.1:{closed}" }}
fallback = [ {{ kind = "echo" }} ]

{store}
"#,
        closed = common::free_port()
    )
}

fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let (code, body) = http_get(server.api_port, path).unwrap();
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The id of the call whose SIP Call-ID is `call_id` (active or ended).
fn id_of(server: &Server, call_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, page) = get_json(server, "/cdrs?limit=1000");
        if let Some(c) = page["cdrs"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["call_id"] == call_id))
        {
            return c["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no record with Call-ID {call_id}: {page}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn active_call(server: &Server, call_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let calls = server.calls();
        if let Some(c) = calls.as_array().and_then(|a| {
            a.iter()
                .find(|c| c["call_id"] == call_id && c["state"] == "active")
        }) {
            return c["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "call {call_id} not active: {calls}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sipp_ok(what: &str, run: SippRun, server: &Server) {
    let out = run.wait(Duration::from_secs(40));
    assert!(
        out.success,
        "{what}: sipp failed\n{}\n{}",
        out.report(),
        server.log_text()
    );
}

/// Every kind of end, checked in the records; returns the server.
fn records_every_kind_of_call_end(store_section: &str) -> Server {
    let server = Server::start(&profile(store_section));

    // Answered, 3 s of audio both ways, the caller hangs up.
    let run = spawn_scenario("invite_bye.xml", server.sip_port, "echo", &["-d", "3000"]);
    let answered_cid = run.call_id(1);
    sipp_ok("answered call", run, &server);
    // Cancelled while ringing.
    let run = spawn_scenario("cancel.xml", server.sip_port, "ring", &[]);
    let cancelled_cid = run.call_id(1);
    sipp_ok("cancelled call", run, &server);
    // No such route.
    let run = spawn_scenario("unknown_user.xml", server.sip_port, "nobody", &[]);
    let unknown_cid = run.call_id(1);
    sipp_ok("404", run, &server);
    // No common codec.
    let run = spawn_scenario("g729_only.xml", server.sip_port, "echo", &[]);
    let g729_cid = run.call_id(1);
    sipp_ok("488", run, &server);
    // Hung up through the API; sipp answers our BYE.
    let run = spawn_scenario("server_bye.xml", server.sip_port, "echo", &[]);
    let api_cid = run.call_id(1);
    let id = active_call(&server, &api_cid);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, body) = http_post(server.api_port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200, "{body}");
    sipp_ok("API hangup", run, &server);
    // Transferred by REFER.
    let run = spawn_scenario("refer_accept.xml", server.sip_port, "echo", &[]);
    let refer_cid = run.call_id(1);
    let id = active_call(&server, &refer_cid);
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = http_post(
        server.api_port,
        &format!("/calls/{id}/transfer"),
        r#"{"to":"sip:operator@pbx.example.test","mode":"refer"}"#,
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    sipp_ok("transfer", run, &server);
    // The first agent cannot connect: the fallback answers.
    let run = spawn_scenario(
        "invite_bye.xml",
        server.sip_port,
        "failover",
        &["-d", "2000"],
    );
    let failover_cid = run.call_id(1);
    sipp_ok("failover call", run, &server);

    let c = finished_cdr(&server, &id_of(&server, &answered_cid));
    assert_eq!(c["direction"], "inbound", "{c}");
    assert_eq!(c["route"], "echo", "{c}");
    assert_eq!(c["agent"], "echo", "{c}");
    assert_eq!(c["end_reason"], "caller hung up", "{c}");
    assert_eq!(c["hung_up_by"], "caller", "{c}");
    assert_eq!(c["sip_code"], 200, "{c}");
    assert_eq!(c["codec"], "PCMU", "{c}");
    assert_eq!(
        c["caller_id"], "sipp",
        "the From user without a P-Asserted-Identity: {c}"
    );
    assert!(c["uuid"].as_str().is_some_and(|u| u.len() == 36), "{c}");
    let answer = c["answer_at_unix_ms"].as_i64().unwrap();
    let invite = c["invite_at_unix_ms"].as_i64().unwrap();
    let end = c["end_at_unix_ms"].as_i64().unwrap();
    assert!(invite <= answer && answer < end, "{c}");
    let dur = c["duration_ms"].as_i64().unwrap();
    assert!((2500..6000).contains(&dur), "3 s call lasted {dur} ms: {c}");
    assert_eq!(dur, end - answer, "{c}");
    let q = &c["quality"];
    assert!(q["packets_received"].as_u64().unwrap() > 50, "{c}");
    let (mos_min, mos_avg) = (
        q["mos_min"].as_f64().unwrap(),
        q["mos_avg"].as_f64().unwrap(),
    );
    assert!(mos_min > 3.5 && mos_min <= mos_avg && mos_avg <= 4.5, "{c}");
    assert!(c["jitter_buffer"]["played"].as_u64().unwrap() > 50, "{c}");
    assert!(c["media"]["tx_packets"].as_u64().unwrap() > 50, "{c}");
    assert_eq!(c["agents_used"], serde_json::json!(["echo"]), "{c}");

    let c = finished_cdr(&server, &id_of(&server, &cancelled_cid));
    assert_eq!(c["route"], "ring", "{c}");
    assert_eq!(c["end_reason"], "caller cancelled", "{c}");
    assert_eq!(c["hung_up_by"], "caller", "{c}");
    assert_eq!(c["sip_code"], 487, "{c}");
    assert!(c["answer_at_unix_ms"].is_null(), "{c}");
    assert_eq!(c["duration_ms"], 0, "{c}");

    let c = finished_cdr(&server, &id_of(&server, &unknown_cid));
    assert_eq!(c["route"], "nobody", "{c}");
    assert_eq!(c["sip_code"], 404, "{c}");
    assert_eq!(c["end_reason"], "rejected 404: no route", "{c}");
    assert_eq!(c["duration_ms"], 0, "{c}");

    let c = finished_cdr(&server, &id_of(&server, &g729_cid));
    assert_eq!(c["sip_code"], 488, "{c}");
    assert_eq!(c["hung_up_by"], "error", "{c}");
    assert!(
        c["end_reason"]
            .as_str()
            .unwrap()
            .starts_with("rejected 488: "),
        "{c}"
    );

    let c = finished_cdr(&server, &id_of(&server, &api_cid));
    assert_eq!(c["hung_up_by"], "api", "{c}");
    assert_eq!(
        c["caller_id"], "+41445550000",
        "from P-Asserted-Identity: {c}"
    );
    assert_eq!(c["end_reason"], "hangup by server", "{c}");
    assert_eq!(c["sip_code"], 200, "{c}");
    assert!(c["duration_ms"].as_i64().unwrap() >= 1000, "{c}");

    let c = finished_cdr(&server, &id_of(&server, &refer_cid));
    assert_eq!(c["hung_up_by"], "agent", "{c}");
    assert_eq!(
        c["end_reason"], "transferred to sip:operator@pbx.example.test",
        "{c}"
    );
    assert_eq!(c["transfer"]["state"], "succeeded", "{c}");
    assert_eq!(c["transfer"]["method"], "refer", "{c}");

    let c = finished_cdr(&server, &id_of(&server, &failover_cid));
    assert_eq!(c["route"], "failover", "{c}");
    assert_eq!(c["agent"], "echo", "{c}");
    let used: Vec<&str> = c["agents_used"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(used.last(), Some(&"echo"), "{c}");
    assert!(
        c["last_agent_error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{c}"
    );

    // Listing: newest first, filters, paging, bad input refused.
    let (code, page) = get_json(&server, "/cdrs?route=echo&limit=2");
    assert_eq!(code, 200, "{page}");
    let rows = page["cdrs"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{page}");
    assert!(rows.iter().all(|r| r["route"] == "echo"), "{page}");
    assert!(
        rows[0]["invite_at_unix_ms"].as_i64() >= rows[1]["invite_at_unix_ms"].as_i64(),
        "{page}"
    );
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (code, next) = get_json(
        &server,
        &format!("/cdrs?route=echo&limit=2&cursor={}", urlencode(&cursor)),
    );
    assert_eq!(code, 200, "{next}");
    let next_ids: Vec<&Value> = next["cdrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert!(
        !next_ids.is_empty() && !next_ids.contains(&&rows[0]["id"]),
        "{next}"
    );
    let (code, none) = get_json(&server, "/cdrs?from=2999-01-01");
    assert_eq!(code, 200, "{none}");
    assert_eq!(none["cdrs"].as_array().unwrap().len(), 0, "{none}");
    let (code, all_today) = get_json(&server, &format!("/cdrs?from={}", invite - 60_000));
    assert_eq!(code, 200);
    assert!(
        all_today["cdrs"].as_array().unwrap().len() >= 7,
        "{all_today}"
    );
    for bad in [
        "/cdrs?from=yesterday",
        "/cdrs?cursor=nonsense",
        "/cdrs?limit=x",
        "/cdrs?colour=red",
    ] {
        let (code, v) = get_json(&server, bad);
        assert_eq!(code, 400, "{bad}: {v}");
        assert!(v["error"].as_str().is_some(), "{bad}: {v}");
    }
    let (code, _) = get_json(&server, "/cdrs/no-such-call");
    assert_eq!(code, 404);
    server
}

#[test]
fn sqlite_records_every_kind_of_call_end() {
    if require_peer("sipp").is_none() {
        return;
    }
    let _server = records_every_kind_of_call_end("");
}

#[test]
fn postgres_records_every_kind_of_call_end() {
    if require_peer("sipp").is_none() {
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    let server = records_every_kind_of_call_end(&format!(
        "[store]\nurl = \"{}\"\nnode = \"pg-test\"",
        pg.url()
    ));
    // The database goes away: the node stops saying it is ready (its
    // records could not be written), while /health still answers.
    let (code, _) = get_json(&server, "/ready");
    assert_eq!(code, 200);
    drop(pg);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, v) = loop {
        let (code, v) = get_json(&server, "/ready");
        if code == 503 || Instant::now() > deadline {
            break (code, v);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 503, "{v}\n{}", server.log_text());
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("call store")),
        "{v}"
    );
    assert_eq!(server.health()["status"], "ok");
}

/// Calls up when the server is killed.
const CALLS: usize = 5;

/// `kill -9` with recorded calls up; the restarted server (same store) has
/// closed every one of them as `lost`, at most a heartbeat (1 s) before the
/// kill, and each names its recording, which `sox` opens as repaired.
fn kill9_calls_are_lost_after_restart(store_section: &str) {
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap().to_string();
    let prof = profile(store_section);
    let server = Server::start_with_args(&prof, &["--state-dir", &state_arg]);
    let runs: Vec<SippRun> = (0..CALLS)
        .map(|_| spawn_scenario("server_bye.xml", server.sip_port, "echo", &[]))
        .collect();
    let cids: Vec<String> = runs.iter().map(|r| r.call_id(1)).collect();
    for cid in &cids {
        active_call(&server, cid);
    }
    // Answered and recorded as open.
    let ids: Vec<String> = cids.iter().map(|c| id_of(&server, c)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = common::unix_ms_now();
    let pid = server.pid().unwrap();
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    drop(server);
    drop(runs);
    let server = Server::start_with_args(&prof, &["--state-dir", &state_arg]);
    assert!(
        server.log_text().contains("recorded as lost"),
        "{}",
        server.log_text()
    );
    for id in &ids {
        let (code, c) = get_json(&server, &format!("/cdrs/{}", urlencode(id)));
        assert_eq!(code, 200, "{c}");
        assert_eq!(c["end_reason"], "lost", "{c}");
        assert_eq!(c["hung_up_by"], "lost", "{c}");
        let end = c["end_at_unix_ms"].as_i64().unwrap();
        let answer = c["answer_at_unix_ms"].as_i64().expect("answer time kept");
        assert!(
            end >= answer && end <= killed_at && killed_at - end <= 2500,
            "killed at {killed_at}: {c}"
        );
        assert_eq!(c["duration_ms"].as_i64().unwrap(), end - answer, "{c}");
        // The recording, its header repaired at start: sox reads the
        // stereo file, as long as the call was up (within a second).
        let path = c["recording"].as_str().unwrap_or_else(|| panic!("{c}"));
        let sox = |flag: &str| {
            let out = std::process::Command::new("sox")
                .args(["--i", flag, path])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "sox --i {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(sox("-c"), "2", "{c}");
        assert_eq!(sox("-r"), "8000", "{c}");
        let secs: f64 = sox("-D").parse().unwrap();
        let up = (killed_at - answer) as f64 / 1000.0;
        assert!((secs - up).abs() < 1.5, "{secs} s recorded, {up} s up: {c}");
    }
    // The command line reads the same records (the server still runs).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentline"))
        .args(["cdrs", "--profile"])
        .arg(server.dir.path().join("profile.toml"))
        .args(["--state-dir", &state_arg, "--json", "--limit", "10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lost = page["cdrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["end_reason"] == "lost")
        .count();
    assert_eq!(lost, CALLS, "{page}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentline"))
        .args(["cdrs", "--profile"])
        .arg(server.dir.path().join("profile.toml"))
        .args(["--state-dir", &state_arg])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in &ids {
        assert!(table.contains(id.as_str()), "{id} not in\n{table}");
    }
    assert_eq!(
        table.lines().filter(|l| l.contains(" lost ")).count(),
        CALLS,
        "{table}"
    );
}

#[test]
fn sqlite_kill9_calls_are_found_lost_after_restart() {
    if require_peer("sipp").is_none() || require_peer("sox").is_none() {
        return;
    }
    kill9_calls_are_lost_after_restart("");
}

#[test]
fn postgres_kill9_calls_are_found_lost_after_restart() {
    if require_peer("sipp").is_none() || require_peer("sox").is_none() {
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    kill9_calls_are_lost_after_restart(&format!("[store]\nurl = \"{}\"", pg.url()));
}
