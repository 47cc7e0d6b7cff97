#![allow(clippy::unwrap_used)]
//! Webhooks in AVR's format reach the backend with the secret header, for
//! a call from sipp to the echo agent: call_initiated, call_started,
//! dtmf_digit, call_ended. A backend answering 500 is retried.

mod common;

use std::time::Duration;

use common::fakes::Fake;
use common::sipp::run_scenario;
use common::{require_peer, Server};

#[test]
fn call_events_reach_the_webhook_with_the_secret_and_retries() {
    if require_peer("sipp").is_none() {
        return;
    }
    let Some(hook) = Fake::start(
        "fake_webhook.py",
        &["--mode", "http500", "--fail-count", "2"],
    ) else {
        return;
    };
    let server = Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[webhooks]\nurl = \"http://127.0.0.1:{}/hook\"\n\
         secret = \"s3cret\"\ntimeout_ms = 1000\nretries = 3\n\
         [[routes]]\ndial = \"echo\"\nagent = {{ kind = \"echo\" }}\n",
        hook.port
    ));
    let out = run_scenario("dtmf.xml", server.sip_port, "echo", &[]);
    assert!(out.success, "{}", out.report());
    server.wait_idle(Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let types = loop {
        let types: Vec<String> = hook
            .events()
            .iter()
            .filter(|e| e["dir"] == "in" && e["body"]["type"].is_string())
            .map(|e| e["body"]["type"].as_str().unwrap().to_string())
            .collect();
        if types.iter().any(|t| t == "call_ended") || std::time::Instant::now() > deadline {
            break types;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ctx = format!("{types:?}\n{}\n{}", hook.events_text(), server.log_text());
    for t in ["call_initiated", "call_started", "dtmf_digit", "call_ended"] {
        assert!(types.iter().any(|x| x == t), "missing {t}: {ctx}");
    }
    let ins: Vec<serde_json::Value> = hook
        .events()
        .into_iter()
        .filter(|e| e["dir"] == "in")
        .collect();
    for e in &ins {
        let secret = e["headers"]["X-AVR-WEBHOOK-SECRET"]
            .as_str()
            .or(e["headers"]["x-avr-webhook-secret"].as_str());
        assert_eq!(
            secret,
            Some("s3cret"),
            "secret header on every request: {e}"
        );
        let b = &e["body"];
        assert!(b["uuid"].as_str().is_some_and(|u| u.len() == 36), "{b}");
        assert!(
            b["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{b}"
        );
    }
    // The backend failed the first two requests (call_initiated, which is
    // not retried, and call_started): call_started came again.
    let started = ins
        .iter()
        .filter(|e| e["body"]["type"] == "call_started")
        .count();
    assert!(started >= 2, "call_started retried after a 500: {ctx}");
    let uuids: std::collections::HashSet<&str> = ins
        .iter()
        .filter_map(|e| e["body"]["uuid"].as_str())
        .collect();
    assert_eq!(uuids.len(), 1, "one call, one uuid: {ctx}");
    let digits: Vec<&str> = ins
        .iter()
        .filter(|e| e["body"]["type"] == "dtmf_digit")
        .filter_map(|e| e["body"]["payload"]["digit"].as_str())
        .collect();
    assert!(!digits.is_empty(), "{ctx}");
}

/// The backend's answer to `call_initiated` can point this call at another
/// STS provider (`{"sts_url": ...}`), as with AVR.
#[test]
fn call_initiated_answer_overrides_the_sts_url() {
    if require_peer("sipp").is_none() {
        return;
    }
    let Some(sts) = Fake::start("fake_avr_sts.py", &[]) else {
        return;
    };
    let answer = format!(r#"{{"sts_url": "ws://127.0.0.1:{}"}}"#, sts.port);
    let Some(hook) = Fake::start("fake_webhook.py", &["--call-initiated-response", &answer]) else {
        return;
    };
    let server = Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[webhooks]\nurl = \"http://127.0.0.1:{}/hook\"\n\
         [[routes]]\ndial = \"bot\"\nagent = {{ kind = \"avr_sts\", url = \"ws://127.0.0.1:9\" }}\n",
        hook.port
    ));
    let out = run_scenario("invite_bye.xml", server.sip_port, "bot", &[]);
    assert!(out.success, "{}", out.report());
    let init = sts
        .wait_marker("init", Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "the overriding STS got no init\n{}\n{}",
                hook.events_text(),
                server.log_text()
            )
        });
    let uuid = hook
        .events()
        .iter()
        .find(|e| e["dir"] == "in" && e["body"]["type"] == "call_initiated")
        .and_then(|e| e["body"]["uuid"].as_str().map(str::to_string))
        .unwrap();
    assert_eq!(init["uuid"].as_str(), Some(uuid.as_str()), "{init}");
}
