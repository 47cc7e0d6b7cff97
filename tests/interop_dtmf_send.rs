//! The control API sends RFC 4733 digits into a call and a real phone
//! (baresip) receives each one; bad requests get clear errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::baresip::{Account, Baresip, Options};
use common::{data_path, http_post, require_peer, Server};

/// baresip calling `echo` and playing the test speech (~4.6 s of call).
fn echo_call() -> (Server, Baresip) {
    let server = Server::start(common::TRUSTED_ECHO_PROFILE);
    let account = Account::new("1000", None, server.sip_port).regint(0);
    let opts = Options::new(account)
        .dial("echo")
        .play(&data_path("speech_8k.wav"));
    let phone = Baresip::start(opts);
    (server, phone)
}

#[test]
fn api_dtmf_reaches_the_phone_as_rfc4733_events() {
    if require_peer("baresip").is_none() {
        return;
    }
    let (server, mut phone) = echo_call();
    assert!(
        phone.wait_call_established(Duration::from_secs(15)),
        "{}",
        phone.output()
    );
    let calls = server.calls();
    let id = calls[0]["id"].as_str().unwrap().to_string();

    let (code, body) = http_post(
        server.api_port,
        &format!("/calls/{id}/dtmf"),
        r#"{"digits":"x1"}"#,
    )
    .unwrap();
    assert_eq!(code, 400, "not a digit: {body}");
    let (code, body) = http_post(server.api_port, "/calls/nope/dtmf", r#"{"digits":"1"}"#).unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, body) = http_post(
        server.api_port,
        &format!("/calls/{id}/dtmf"),
        r#"{"digits":"12#"}"#,
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");

    // The call ends when the phone's WAV does (~4.6 s); the digits take 0.6 s.
    phone.wait_call_closed(Duration::from_secs(20));
    let out = phone.stop();
    let text = format!("{}{}", out.stdout, out.stderr);
    let ends: Vec<&str> = text
        .match_indices("received event: '")
        .filter_map(|(i, _)| text.get(i + 17..i + 27))
        .filter(|s| s.contains("(end=1)"))
        .collect();
    let digits: String = ends.iter().filter_map(|s| s.chars().next()).collect();
    assert_eq!(
        digits, "12#",
        "each digit ends exactly once, in order:\n{text}"
    );
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
}

#[test]
fn api_hangup_ends_the_call_with_bye() {
    if require_peer("baresip").is_none() {
        return;
    }
    let (server, mut phone) = echo_call();
    assert!(phone.wait_call_established(Duration::from_secs(15)));
    let id = server.calls()[0]["id"].as_str().unwrap().to_string();
    let (code, body) = http_post(server.api_port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200, "{body}");
    let idle = server.wait_idle(Duration::from_secs(10));
    assert_eq!(idle["active_calls"], 0, "{idle}");
    let out = phone.stop();
    let bye_in = out
        .facts
        .messages
        .iter()
        .any(|m| !m.outgoing && m.start_line.starts_with("BYE "));
    assert!(bye_in, "the phone got our BYE:\n{}", out.sip_flow());
    assert!(
        out.facts.sent_requests("BYE").is_empty(),
        "the phone did not hang up itself:\n{}",
        out.sip_flow()
    );
}
