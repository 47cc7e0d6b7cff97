//! The command line and first start: profile validation, generated
//! passwords, log formats.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::Server;

fn agentline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agentline"))
}

#[test]
fn check_config_accepts_the_shipped_profile() {
    let profile = concat!(env!("CARGO_MANIFEST_DIR"), "/sip-profiles/default.toml");
    let out = agentline()
        .args(["check-config", "--profile", profile])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agentline().arg("check-config").output().unwrap();
    assert!(out.status.success(), "embedded default must be valid");
}

#[test]
fn check_config_names_the_bad_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[sip]\nlisten = [\"udp:1.2.3.4\"]\n", "sip.listen[0]"),
        ("[rtp]\nports = \"9-3\"\n", "rtp.ports"),
        ("[sip]\nmax_callz = 3\n", "max_callz"),
        (
            "[[users]]\nname = \"1000\"\npassword_env = \"AGENTLINE_TEST_UNSET_VAR\"\n",
            "users[0].password_env",
        ),
        (
            "[[routes]]\ndial = \"x\"\nagent = { kind = \"nope\" }\n",
            "nope",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("p{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = agentline()
            .args(["check-config", "--profile"])
            .arg(&p)
            .env_remove("AGENTLINE_TEST_UNSET_VAR")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(err.contains(key), "case {i}: expected `{key}` in: {err}");
    }
}

#[test]
fn version_flag_prints_the_version() {
    let out = agentline().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn first_start_generates_a_password_prints_it_once_and_keeps_it() {
    let default = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sip-profiles/default.toml"
    ))
    .unwrap();
    let mut first = Server::start(&default);
    let file = first.state_dir().join("credentials/1000");
    let password = std::fs::read_to_string(&file).unwrap();
    assert!(password.trim().len() >= 16, "a strong password");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the service user may read it");
    }
    assert!(
        first.log_text().contains(password.trim()),
        "the generated password is shown in the first start's log"
    );
    first
        .terminate(Duration::from_secs(10))
        .expect("exits on SIGTERM");

    // Second start on the same state dir: same password, not printed again.
    let state = first.state_dir();
    let second = Server::start_with_args(&default, &["--state-dir", state.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), password);
    assert!(
        !second.log_text().contains(password.trim()),
        "the password must not be logged again"
    );
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let server = Server::start_with_args(
        "[[routes]]\ndial = \"echo\"\nagent = { kind = \"echo\" }\n",
        &["--log-format", "json"],
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
}

#[test]
fn check_config_refuses_a_tls_listener_whose_certificate_is_missing_or_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let gen = agentline()
        .args(["gen-cert", "--dir"])
        .arg(dir.path().join("certs"))
        .args(["--name", "localhost"])
        .output()
        .unwrap();
    assert!(gen.status.success());
    let cert = dir.path().join("certs/agentline.crt");
    let key = dir.path().join("certs/agentline.key");
    let listen = "[sip]\nlisten = [\"tls:127.0.0.1:5061\"]\n";
    let cases = [
        (
            format!(
                "{listen}tls_cert = \"/nonexistent/agentline.crt\"\ntls_key = \"{}\"\n",
                key.display()
            ),
            Some(("sip.tls_cert", "/nonexistent/agentline.crt")),
        ),
        (
            format!(
                "{listen}tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                junk.display(),
                key.display()
            ),
            Some(("sip.tls_cert", "expected a PEM certificate")),
        ),
        (
            format!(
                "{listen}tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                cert.display()
            ),
            Some(("sip.tls_key", "expected a PEM private key")),
        ),
        (
            format!(
                "{listen}tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            None,
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("p{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = agentline()
            .args(["check-config", "--profile"])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        match want {
            Some((key, detail)) => {
                assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
                assert!(
                    err.contains(key) && err.contains(detail),
                    "case {i}: expected `{key}` and `{detail}` in: {err}"
                );
            }
            None => assert!(out.status.success(), "case {i}: {err}"),
        }
    }
}

/// A start that fails on a busy port (SIP or API) exits non-zero and
/// neither stores nor prints a generated password: the next start that
/// works generates and shows the one it uses.
#[test]
fn a_busy_port_stops_the_start_without_announcing_a_password() {
    let sip_taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sip_busy = sip_taken.local_addr().unwrap().port();
    let api_taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_busy = api_taken.local_addr().unwrap().port();
    let (rtp_a, rtp_b) = common::free_rtp_range(10);
    let cases = [
        (sip_busy, common::free_port(), "SIP listener"),
        (common::free_port(), api_busy, "HTTP API"),
    ];
    for (sip, api, what) in cases {
        let state = tempfile::tempdir().unwrap();
        let mut child = agentline()
            .arg("run")
            .args(["--sip-listen", &format!("udp:127.0.0.1:{sip}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--rtp-ports", &format!("{rtp_a}-{rtp_b}")])
            .arg("--state-dir")
            .arg(state.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: agentline still runs on a busy port");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(what), "{what}: the error names it: {err}");
        assert!(
            !err.contains("generated a password") && !err.contains("password="),
            "{what}: no password announced: {err}"
        );
        assert!(
            !state.path().join("credentials/1000").exists(),
            "{what}: no password stored"
        );
    }
    drop((sip_taken, api_taken));
}
