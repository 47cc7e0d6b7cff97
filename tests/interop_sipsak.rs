//! REGISTER probes with sipsak: the right password binds, a wrong password
//! or a nonce we never issued does not, a too-short expiry gets 423.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{free_port, require_peer, Server};

const PROFILE: &str = r#"
[sip]
domain = "agentline.test"
[[users]]
name = "1000"
password = "secret1000"
[[routes]]
dial = "echo"
agent = { kind = "echo" }
"#;

fn sipsak(bin: &Path, args: &[String]) -> (Output, String) {
    let out = Command::new("timeout")
        .arg("20")
        .arg(bin)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn register_args(server: &Server, password: &str, expires: u32) -> Vec<String> {
    let local = free_port();
    vec![
        "-U".into(),
        "-C".into(),
        format!("sip:1000@127.0.0.1:{local}"),
        "-s".into(),
        format!("sip:1000@127.0.0.1:{}", server.sip_port),
        "-u".into(),
        "1000".into(),
        "-a".into(),
        password.into(),
        "-l".into(),
        local.to_string(),
        "-x".into(),
        expires.to_string(),
        "-i".into(),
        "-vv".into(),
    ]
}

#[test]
fn sipsak_registers_with_the_right_password() {
    let Some(bin) = require_peer("sipsak") else {
        return;
    };
    let server = Server::start(PROFILE);
    let (out, text) = sipsak(&bin, &register_args(&server, "secret1000", 120));
    assert!(out.status.success(), "sipsak failed:\n{text}");
    assert!(text.contains("authorizing"), "challenged first:\n{text}");
    assert!(
        server.health()["registrations"].as_u64().unwrap() >= 1,
        "binding stored"
    );
}

#[test]
fn sipsak_with_a_wrong_password_is_not_registered() {
    let Some(bin) = require_peer("sipsak") else {
        return;
    };
    let server = Server::start(PROFILE);
    let (out, text) = sipsak(&bin, &register_args(&server, "wrong", 120));
    assert!(!out.status.success(), "must fail:\n{text}");
    assert!(text.contains("authorization failed"), "{text}");
    assert_eq!(server.health()["registrations"], 0);
}

#[test]
fn sipsak_too_short_expiry_gets_423_with_min_expires() {
    let Some(bin) = require_peer("sipsak") else {
        return;
    };
    let server = Server::start(PROFILE);
    let (out, text) = sipsak(&bin, &register_args(&server, "secret1000", 15));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("423 Interval Too Brief"), "{text}");
    assert!(text.contains("Min-Expires: 60"), "{text}");
    assert_eq!(server.health()["registrations"], 0);
}

/// A REGISTER whose Authorization carries a nonce the server never issued
/// (sent verbatim by sipsak) is challenged again and binds nothing.
#[test]
fn sipsak_register_with_a_bad_nonce_is_rejected() {
    let Some(bin) = require_peer("sipsak") else {
        return;
    };
    let server = Server::start(PROFILE);
    let local = free_port();
    let msg = format!(
        "REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-bad-nonce;rport\r\n\
         From: <sip:1000@agentline.test>;tag=bad-nonce\r\n\
         To: <sip:1000@agentline.test>\r\n\
         Call-ID: bad-nonce-{local}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:1000@127.0.0.1:{local}>\r\n\
         Max-Forwards: 70\r\n\
         Authorization: Digest username=\"1000\", realm=\"agentline.test\", \
         nonce=\"00000000deadbeefdeadbeefdeadbeefdeadbeefdeadbeef\", \
         uri=\"sip:127.0.0.1:{port}\", response=\"0123456789abcdef0123456789abcdef\", \
         algorithm=MD5\r\n\
         Content-Length: 0\r\n\r\n",
        port = server.sip_port
    );
    let file = server.dir.path().join("bad-nonce.txt");
    std::fs::write(&file, msg).unwrap();
    let args = vec![
        "-f".to_string(),
        file.display().to_string(),
        "-s".into(),
        format!("sip:1000@127.0.0.1:{}", server.sip_port),
        "-l".into(),
        local.to_string(),
        "-vvv".into(),
    ];
    let (_, text) = sipsak(&bin, &args);
    assert!(text.contains("SIP/2.0 401 Unauthorized"), "{text}");
    assert!(
        !text.contains("stale=true"),
        "a forged nonce is not merely stale:\n{text}"
    );
    assert!(
        server.log_text().contains("nonce not issued by us"),
        "{}",
        server.log_text()
    );
    assert_eq!(server.health()["registrations"], 0);
}
