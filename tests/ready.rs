//! `GET /ready`: 200 while the server takes calls, 503 with the reason while
//! it drains (a call still up), and open without the API token.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_get, require_peer, Server};

fn ready(port: u16) -> (u16, serde_json::Value) {
    let (code, body) = http_get(port, "/ready").expect("GET /ready");
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("/ready body: {body}"));
    (code, v)
}

#[test]
fn ready_is_200_while_running_and_503_while_draining_a_call() {
    let Some(_) = require_peer("sipp") else {
        return;
    };
    let mut server = Server::start(
        r#"
[sip]
trusted = ["127.0.0.1/32"]
shutdown_grace_s = 6
[[routes]]
dial = "echo"
agent = { kind = "echo" }
"#,
    );
    let (code, v) = ready(server.api_port);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, serde_json::json!({"status": "ready"}));

    // A call that stays up, then its caller stops answering: our BYE at the
    // drain goes unanswered, so the call is still up while we drain.
    let mut sipp =
        common::sipp::spawn_scenario("invite_bye.xml", server.sip_port, "echo", &["-d", "20000"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.health()["active_calls"] != 1 {
        assert!(Instant::now() < deadline, "the call did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ready(server.api_port).0, 200, "ready with a call up");
    let sipp_pid = sipp.pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &sipp_pid])
        .status()
        .unwrap()
        .success());
    let pid = server.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = None;
    while Instant::now() < deadline {
        let (code, v) = ready(server.api_port);
        let active = server.health()["active_calls"].as_u64();
        if code == 503 && active == Some(1) {
            seen = Some(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").args(["-CONT", &sipp_pid]).status();
    let v = seen.expect("no 503 from /ready while draining with the call up");
    assert_eq!(v["status"], "not_ready", "{v}");
    assert!(
        v["reason"].as_str().unwrap_or("").contains("draining"),
        "{v}"
    );
    let _ = Command::new("kill").args(["-KILL", &sipp_pid]).status();
    let _ = sipp.is_running();
    assert!(
        server.terminate(Duration::from_secs(15)).is_some(),
        "did not exit after the drain"
    );
}

#[test]
fn ready_needs_no_token_when_the_api_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-token");
    std::fs::write(&file, "a-token-for-ready\n").unwrap();
    let server = Server::start(&format!(
        "[api]\ntoken_file = \"{}\"\n[[routes]]\ndial = \"echo\"\nagent = {{ kind = \"echo\" }}\n",
        file.display()
    ));
    let (code, v) = ready(server.api_port);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "ready");
    // The other routes still need it.
    let (code, _) = http_get(server.api_port, "/calls").unwrap();
    assert_eq!(code, 401);
}
