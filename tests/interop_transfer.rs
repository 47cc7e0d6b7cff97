#![allow(clippy::unwrap_used)]
//! Blind transfer (RFC 3515) against sipp as the caller: the API asks for a
//! transfer, the caller's side gets a REFER with the right Refer-To and
//! Referred-By, and the NOTIFY sipfrag reports decide the outcome: 200 ends
//! our leg with BYE; a refused REFER (501) leaves the call with its agent.
//! The bridged fallback through a trunk is in interop_trunk.rs.

mod common;

use std::time::{Duration, Instant};

use common::sipp::spawn_scenario;
use common::{http_post, require_peer, Server};

const PROFILE: &str = common::TRUSTED_ECHO_PROFILE;

/// Waits for the one active call and returns its id.
fn active_call(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let calls = server.calls();
        if let Some(c) = calls
            .as_array()
            .and_then(|a| a.iter().find(|c| c["state"] == "active"))
        {
            return c["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no active call: {calls}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn call_view(server: &Server, id: &str) -> serde_json::Value {
    let (code, body) = common::http_get(server.api_port, &format!("/calls/{id}")).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn refer_accepted_and_notify_200_ends_our_leg() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let run = spawn_scenario("refer_accept.xml", server.sip_port, "echo", &[]);
    let id = active_call(&server);
    std::thread::sleep(Duration::from_millis(500));
    // Bad requests are refused before anything is sent.
    let (code, body) = http_post(
        server.api_port,
        &format!("/calls/{id}/transfer"),
        r#"{"to":"not a uri"}"#,
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, body) = http_post(
        server.api_port,
        "/calls/nope/transfer",
        r#"{"to":"sip:operator@pbx.example.test"}"#,
    )
    .unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, body) = http_post(
        server.api_port,
        &format!("/calls/{id}/transfer"),
        r#"{"to":"sip:operator@pbx.example.test","mode":"refer"}"#,
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    let out = run.wait(Duration::from_secs(30));
    assert!(
        out.success,
        "sipp: REFER with Refer-To <sip:operator@pbx.example.test> and Referred-By, \
         NOTIFYs answered, then our BYE\n{}\n{}",
        out.report(),
        server.log_text()
    );
    let h = server.wait_idle(Duration::from_secs(10));
    assert_eq!(h["active_calls"], 0, "{h}");
    let call = call_view(&server, &id);
    assert_eq!(call["transfer"]["state"], "succeeded", "{call}");
    assert_eq!(call["transfer"]["method"], "refer", "{call}");
    assert_eq!(
        call["end_reason"], "transferred to sip:operator@pbx.example.test",
        "{call}"
    );
}

#[test]
fn refused_refer_leaves_the_call_with_its_agent() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let run = spawn_scenario("refer_reject.xml", server.sip_port, "echo", &[]);
    let id = active_call(&server);
    std::thread::sleep(Duration::from_millis(500));
    // No trunk here: REFER only, and the call stays when it is refused.
    let (code, body) = http_post(
        server.api_port,
        &format!("/calls/{id}/transfer"),
        r#"{"to":"sip:operator@pbx.example.test"}"#,
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut call = call_view(&server, &id);
    while call["transfer"]["state"] != "failed" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        call = call_view(&server, &id);
    }
    assert_eq!(call["transfer"]["state"], "failed", "{call}");
    assert_eq!(call["transfer"]["detail"], "REFER refused: 501", "{call}");
    assert_eq!(call["state"], "active", "the call goes on: {call}");
    assert_eq!(call["agent"], "echo", "{call}");
    let rx_before = call["media"]["rx_packets"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(1500));
    let call = call_view(&server, &id);
    assert!(
        call["media"]["tx_packets"].as_u64().unwrap_or(0) > 50
            && call["media"]["rx_packets"].as_u64().unwrap_or(0) > rx_before,
        "media still flows: {call}"
    );
    let (code, _) = http_post(server.api_port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200);
    let out = run.wait(Duration::from_secs(15));
    assert!(out.success, "{}", out.report());
}
