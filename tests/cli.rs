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
