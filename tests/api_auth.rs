//! API access control: with `[api] token_file` set, every route but
//! `/health` needs `Authorization: Bearer <token>`; an API reachable from
//! other hosts without a token does not start; `POST /calls` and the AMI
//! `/originate` take a route from the profile, never an agent from the
//! request (which could name its own URL, an environment variable or a file).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, Server};

const TOKEN: &str = "s3cret-api-token-for-tests";

/// Every route that must need the token, with a body that would otherwise
/// be accepted or answered.
const PROTECTED: &[(&str, &str, &str)] = &[
    ("GET", "/calls", ""),
    ("GET", "/calls/nope", ""),
    ("GET", "/trunks", ""),
    (
        "POST",
        "/calls",
        r#"{"trunk":"carrier","to":"123","route":"echo"}"#,
    ),
    ("POST", "/calls/nope/hangup", "{}"),
    ("POST", "/reload", ""),
    ("POST", "/calls/nope/dtmf", r#"{"digits":"1"}"#),
    ("POST", "/calls/nope/transfer", r#"{"to":"123"}"#),
    ("POST", "/transfer", r#"{"uuid":"x","exten":"123"}"#),
    ("POST", "/hangup", r#"{"uuid":"x"}"#),
    (
        "POST",
        "/originate",
        r#"{"channel":"carrier/123","exten":"echo"}"#,
    ),
    ("POST", "/variables", r#"{"uuid":"x"}"#),
    ("POST", "/setvar", r#"{"uuid":"x","name":"a","value":"b"}"#),
    ("GET", "/no-such-route", ""),
];

/// One HTTP/1.0 request; returns the status, the head and the body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let json = "application/json";
    common::http_exchange(port, method, path, auth, json, body, Duration::from_secs(5))
}

/// A server whose API needs [`TOKEN`], read from a file (with a newline
/// and spaces around it, which are trimmed).
fn server_with_token(extra_profile: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-token");
    std::fs::write(&file, format!("  {TOKEN}\n")).unwrap();
    let profile = format!(
        "[api]\ntoken_file = \"{}\"\n[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:9\"\n\
         register = false\n[[routes]]\ndial = \"echo\"\nagent = {{ kind = \"echo\" }}\n{extra_profile}",
        file.display()
    );
    (Server::start(&profile), dir)
}

#[test]
fn without_the_token_every_route_but_health_answers_401() {
    let (server, _dir) = server_with_token("");
    let (code, _, body) = request(server.api_port, "GET", "/health", None, "");
    assert_eq!(code, 200, "health stays open for probes: {body}");
    for (method, path, body) in PROTECTED {
        for auth in [
            None,
            Some("Bearer wrong-token".to_string()),
            Some(format!("Basic {TOKEN}")),
            Some(format!("Bearer {TOKEN}x")),
        ] {
            let (code, head, answer) =
                request(server.api_port, method, path, auth.as_deref(), body);
            assert_eq!(code, 401, "{method} {path} with {auth:?}: {head}\n{answer}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{method} {path}: {head}"
            );
            let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert!(v["error"].as_str().is_some(), "{answer}");
        }
    }
}

#[test]
fn with_the_token_the_routes_answer() {
    let (server, _dir) = server_with_token("");
    let bearer = format!("Bearer {TOKEN}");
    let (code, _, body) = request(server.api_port, "GET", "/calls", Some(&bearer), "");
    assert_eq!((code, body.as_str()), (200, "[]"));
    for (method, path, body) in PROTECTED {
        let (code, head, answer) = request(server.api_port, method, path, Some(&bearer), body);
        assert_ne!(code, 401, "{method} {path}: {head}\n{answer}");
    }
    let (code, _, body) = request(server.api_port, "GET", "/trunks", Some(&bearer), "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"carrier\""), "{body}");
    // The scheme name is case-insensitive (RFC 9110 11.1).
    let (code, _, _) = request(
        server.api_port,
        "GET",
        "/calls",
        Some(&format!("bearer {TOKEN}")),
        "",
    );
    assert_eq!(code, 200);
    // An unknown call is still a 404 once authorised.
    let (code, _, _) = request(server.api_port, "GET", "/calls/nope", Some(&bearer), "");
    assert_eq!(code, 404);
}

#[test]
fn originate_refuses_an_agent_from_the_request() {
    // The probe from issue 11: an agent pointed at the requester's own
    // listener, naming an environment variable and a file.
    let attacker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    attacker.set_nonblocking(true).unwrap();
    let at = attacker.local_addr().unwrap();
    let (server, _dir) = server_with_token("");
    let bearer = format!("Bearer {TOKEN}");
    let probe = format!(
        r#"{{"trunk":"carrier","to":"123","agent":{{"kind":"openai_realtime","base_url":"ws://{at}/",
            "api_key_env":"HOME","instructions_file":"/etc/shadow"}}}}"#
    );
    let (code, _, body) = request(server.api_port, "POST", "/calls", Some(&bearer), &probe);
    assert_eq!(code, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("`agent` is not accepted") && error.contains("\"route\""),
        "the error says to name a route: {error}"
    );
    // Together with a route, too.
    let both = r#"{"trunk":"carrier","to":"123","route":"echo","agent":{"kind":"echo"}}"#;
    let (code, _, body) = request(server.api_port, "POST", "/calls", Some(&bearer), both);
    assert_eq!(code, 400, "{body}");
    // The AMI route likewise.
    let ami =
        r#"{"channel":"carrier/123","exten":"echo","agent":{"kind":"avr_sts","url":"ws://x"}}"#;
    let (code, _, body) = request(server.api_port, "POST", "/originate", Some(&bearer), ami);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("`agent` is not accepted"), "{body}");
    // A route the profile does not have.
    let (code, _, body) = request(
        server.api_port,
        "POST",
        "/calls",
        Some(&bearer),
        r#"{"trunk":"carrier","to":"123","route":"sales"}"#,
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no route `sales`"), "{body}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        attacker.accept().is_err(),
        "nothing connected to the requester's listener"
    );
    assert_eq!(server.health()["active_calls"], 0);
}

#[test]
fn originate_by_route_places_the_call_with_the_routes_agent() {
    let (server, _dir) = server_with_token("");
    let bearer = format!("Bearer {TOKEN}");
    let (code, _, body) = request(
        server.api_port,
        "POST",
        "/calls",
        Some(&bearer),
        r#"{"trunk":"carrier","to":"123","route":"echo","ring_timeout_s":1}"#,
    );
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, view) = request(
        server.api_port,
        "GET",
        &format!("/calls/{id}"),
        Some(&bearer),
        "",
    );
    assert_eq!(code, 200, "{view}");
    let v: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(v["agent"], "echo", "the route's agent: {v}");
}

/// Runs `agentline` with `args` and waits (at most 15 s) for it to exit.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentline"))
        .args(args)
        .arg("--state-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agentline {args:?} still runs after 15 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_api_reachable_from_other_hosts_without_a_token_does_not_start() {
    let api = format!("0.0.0.0:{}", free_port());
    let sip = format!("udp:127.0.0.1:{}", free_port());
    let (code, err) = run_to_exit(&["run", "--api-listen", &api, "--sip-listen", &sip]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("api.listen") && err.contains(&api) && err.contains("api.token_file"),
        "the error names the address and the fix: {err}"
    );
    assert!(
        !err.contains("generated a password"),
        "nothing announced: {err}"
    );
    let (code, err) = run_to_exit(&["check-config", "--api-listen", &api]);
    assert_eq!(code, Some(1), "check-config reports it too: {err}");
    assert!(err.contains("api.listen"), "{err}");
}

#[test]
fn a_token_source_that_gives_nothing_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, " \n").unwrap();
    let cases = [
        (
            "[api]\ntoken_file = \"/nonexistent/agentline-token\"\n".to_string(),
            "api.token_file",
            "/nonexistent/agentline-token",
        ),
        (
            format!("[api]\ntoken_file = \"{}\"\n", empty.display()),
            "api.token_file",
            "is empty",
        ),
        (
            "[api]\ntoken_env = \"AGENTLINE_TEST_UNSET_TOKEN\"\n".to_string(),
            "api.token_env",
            "AGENTLINE_TEST_UNSET_TOKEN",
        ),
    ];
    for (i, (text, key, detail)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("p{i}.toml"));
        std::fs::write(&p, text).unwrap();
        for cmd in ["check-config", "run"] {
            let out = Command::new(env!("CARGO_BIN_EXE_agentline"))
                .arg(cmd)
                .arg("--profile")
                .arg(&p)
                .arg("--state-dir")
                .arg(dir.path().join("state"))
                .env_remove("AGENTLINE_TEST_UNSET_TOKEN")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd} case {i}: {err}");
            assert!(
                err.contains(key) && err.contains(detail),
                "{cmd} case {i}: expected `{key}` and `{detail}` in: {err}"
            );
        }
    }
    // The token from the environment works, and a non-loopback API with it starts
    // as far as the profile goes.
    let p = dir.path().join("env.toml");
    std::fs::write(&p, "[api]\ntoken_env = \"AGENTLINE_TEST_TOKEN\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentline"))
        .args(["check-config", "--api-listen", "0.0.0.0:8080", "--profile"])
        .arg(&p)
        .env("AGENTLINE_TEST_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
