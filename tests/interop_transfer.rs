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

fn uuid_of(server: &Server, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(u) = call_view(server, id)["uuid"].as_str() {
            return u.to_string();
        }
        assert!(Instant::now() < deadline, "no uuid on the call");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The avr-ami routes AVR tools call (`AMI_URL`): /variables, /setvar,
/// /transfer (a REFER with the asked-for target) and /hangup, by uuid.
#[test]
fn ami_routes_transfer_and_hang_up_by_uuid() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    let run = spawn_scenario("refer_accept.xml", server.sip_port, "echo", &[]);
    let id = active_call(&server);
    let uuid = uuid_of(&server, &id);
    let post = |path: &str, body: &str| {
        let (code, text) = http_post(server.api_port, path, body).unwrap();
        (
            code,
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
        )
    };
    let (code, v) = post(
        "/variables",
        r#"{"uuid":"00000000-0000-4000-8000-000000000000"}"#,
    );
    assert_eq!(code, 404, "{v}");
    let (code, v) = post(
        "/setvar",
        &format!(r#"{{"uuid":"{uuid}","name":"customer","value":"42"}}"#),
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = post("/variables", &format!(r#"{{"uuid":"{uuid}"}}"#));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["message"]["customer"], "42", "{v}");
    assert_eq!(v["message"]["uuid"], uuid.as_str(), "{v}");
    let (code, v) = post("/transfer", &format!(r#"{{"uuid":"{uuid}"}}"#));
    assert_eq!(code, 400, "exten is required: {v}");
    let (code, v) = post(
        "/transfer",
        &format!(
            r#"{{"uuid":"{uuid}","exten":"sip:operator@pbx.example.test","context":"default","priority":1}}"#
        ),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["message"], "Transfer initiated");
    let out = run.wait(Duration::from_secs(30));
    assert!(
        out.success,
        "REFER to the AMI's exten\n{}\n{}",
        out.report(),
        server.log_text()
    );
    assert_eq!(call_view(&server, &id)["transfer"]["state"], "succeeded");

    // /hangup on a second call.
    let run = spawn_scenario("server_bye.xml", server.sip_port, "echo", &[]);
    let id = active_call(&server);
    let uuid = uuid_of(&server, &id);
    let (code, v) = post("/hangup", &format!(r#"{{"uuid":"{uuid}"}}"#));
    assert_eq!(code, 200, "{v}");
    let out = run.wait(Duration::from_secs(15));
    assert!(out.success, "BYE after /hangup\n{}", out.report());
    let (code, _) = post("/hangup", &format!(r#"{{"uuid":"{uuid}"}}"#));
    assert_eq!(code, 404, "the call is gone");
}
