//! Reloading the profile (POST /reload, SIGHUP) while a call is up: new
//! routes answer, the call in progress keeps its route and media and ends
//! with the caller's BYE, and a broken profile is refused with the old one
//! still in force.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_post, require_peer, sipp, Server};

fn profile(routes: &[&str], extra: &str) -> String {
    let mut p = format!("[sip]\ntrusted = [\"127.0.0.1/32\"]\n{extra}\n");
    for r in routes {
        p.push_str(&format!(
            "[[routes]]\ndial = \"{r}\"\nagent = {{ kind = \"echo\" }}\n"
        ));
    }
    p
}

fn write_profile(server: &Server, text: &str) {
    std::fs::write(server.dir.path().join("profile.toml"), text).unwrap();
}

fn reload(server: &Server) -> (u16, serde_json::Value) {
    let (code, body) = http_post(server.api_port, "/reload", "").unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("/reload body: {body}"));
    (code, v)
}

/// One short answered call to `dial` (sipp sends the BYE); true on success.
fn call_answered(server: &Server, dial: &str) -> Result<(), String> {
    let out = sipp::run_scenario("invite_bye.xml", server.sip_port, dial, &["-d", "500"]);
    if out.success {
        Ok(())
    } else {
        Err(out.report())
    }
}

fn rejected_404(server: &Server, dial: &str) -> Result<(), String> {
    let out = sipp::run_scenario("unknown_user.xml", server.sip_port, dial, &[]);
    if out.success {
        Ok(())
    } else {
        Err(out.report())
    }
}

/// The call with this route, from `GET /calls`.
fn call_on(server: &Server, route: &str) -> Option<serde_json::Value> {
    server
        .calls()
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["route"] == route && c["ended_at_unix_ms"].is_null())
        .cloned()
}

fn packets(c: &serde_json::Value) -> (u64, u64) {
    (
        c["media"]["rx_packets"].as_u64().unwrap_or(0),
        c["media"]["tx_packets"].as_u64().unwrap_or(0),
    )
}

#[test]
fn reload_applies_routes_without_touching_the_call_in_progress() {
    let Some(_) = require_peer("sipp") else {
        return;
    };
    let server = Server::start(&profile(&["alpha"], ""));
    // A call on route alpha that stays up ~10 s, then the caller hangs up.
    let first = sipp::spawn_scenario("invite_bye.xml", server.sip_port, "alpha", &["-d", "10000"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        if let Some(c) = call_on(&server, "alpha") {
            if packets(&c).0 > 10 {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "the first call did not come up");
        std::thread::sleep(Duration::from_millis(100));
    };
    rejected_404(&server, "beta").expect("beta before the reload");

    // The new profile drops alpha and adds beta: the call on alpha goes on
    // with the route it started with.
    write_profile(&server, &profile(&["beta"], "max_calls = 20"));
    let (code, v) = reload(&server);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "reloaded", "{v}");
    assert_eq!(v["routes"], 1, "{v}");
    assert_eq!(v["needs_restart"], serde_json::json!([]), "{v}");
    call_answered(&server, "beta").expect("a call to the new route beta");
    rejected_404(&server, "alpha").expect("alpha is gone for new calls");

    let still = call_on(&server, "alpha").expect("the first call ended at the reload");
    assert_eq!(still["id"], before["id"]);
    // Media stats are published once a second.
    std::thread::sleep(Duration::from_millis(2200));
    let later = call_on(&server, "alpha").expect("the first call ended after the reload");
    let (rx0, tx0) = packets(&still);
    let (rx1, tx1) = packets(&later);
    assert!(
        rx1 > rx0 && tx1 > tx0,
        "media stopped after the reload: rx {rx0}->{rx1}, tx {tx0}->{tx1}"
    );
    // It ends with the caller's BYE (sipp fails on a BYE from us).
    let out = first.wait(Duration::from_secs(30));
    assert!(out.success, "first call: {}", out.report());
    assert!(
        !server.log_text().contains("grace period over"),
        "{}",
        server.log_text()
    );

    // A broken profile is refused: 400 with the parse error, beta still answers.
    write_profile(&server, "[[routes]\ndial = \"gamma\"\n");
    let (code, v) = reload(&server);
    assert_eq!(code, 400, "{v}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("profile.toml") && err.contains("TOML parse error"),
        "{v}"
    );
    // A profile that parses but does not validate is refused too.
    write_profile(
        &server,
        "[[routes]]\ndial = \"gamma\"\nagent = { kind = \"no-such-kind\" }\n",
    );
    let (code, v) = reload(&server);
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("profile"),
        "{v}"
    );
    call_answered(&server, "beta").expect("beta after the refused reloads");
    rejected_404(&server, "gamma").expect("nothing of the refused profiles applied");
    assert!(
        server.log_text().contains("reload refused"),
        "{}",
        server.log_text()
    );
}

#[test]
fn sighup_reloads_and_start_settings_are_reported() {
    let Some(_) = require_peer("sipp") else {
        return;
    };
    let server = Server::start(&profile(&["alpha"], ""));
    write_profile(&server, &profile(&["alpha", "delta"], ""));
    let pid = server.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("profile reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload after SIGHUP:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    call_answered(&server, "delta").expect("delta after SIGHUP");
    call_answered(&server, "alpha").expect("alpha after SIGHUP");

    // A setting bound at start is reported and not applied; the rest is.
    write_profile(&server, &profile(&["alpha"], "user_agent = \"other-ua\""));
    let (code, v) = reload(&server);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["needs_restart"],
        serde_json::json!(["sip.user_agent"]),
        "{v}"
    );
    rejected_404(&server, "delta").expect("delta removed");
    call_answered(&server, "alpha").expect("alpha on the running RTP ports");
}

/// A REGISTER with this user and password, by a real phone (baresip).
fn registers(server: &Server, user: &str, password: &str) -> common::baresip::Registration {
    use common::baresip::{Account, Baresip, Options};
    let mut phone = Baresip::start(Options::new(
        Account::new(user, Some(password), server.sip_port).regint(60),
    ));
    let reg = phone.wait_registration(Duration::from_secs(10));
    let out = phone.stop();
    eprintln!(
        "{user}/{password}: {reg:?} {:?}",
        out.facts.register_statuses()
    );
    reg
}

#[test]
fn reload_applies_users_to_new_registrations() {
    use common::baresip::Registration;
    if require_peer("baresip").is_none() {
        return;
    }
    let users = |pw: &str| {
        format!(
            "[[users]]\nname = \"2000\"\npassword = \"{pw}\"\n[[routes]]\ndial = \"echo\"\nagent = {{ kind = \"echo\" }}\n"
        )
    };
    let server = Server::start(&users("first-pass"));
    assert_eq!(
        registers(&server, "2000", "first-pass"),
        Registration::Registered
    );
    write_profile(
        &server,
        &format!(
            "{}[[users]]\nname = \"2001\"\npassword = \"other-pass\"\n",
            users("second-pass")
        ),
    );
    let (code, v) = reload(&server);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["users"], 2, "{v}");
    assert_eq!(
        registers(&server, "2000", "second-pass"),
        Registration::Registered,
        "the new password"
    );
    assert!(
        matches!(
            registers(&server, "2000", "first-pass"),
            Registration::Failed {
                code: Some(401),
                ..
            }
        ),
        "the old password still works"
    );
    // The added user registers; removing it drops its registration at once.
    let mut phone = common::baresip::Baresip::start(common::baresip::Options::new(
        common::baresip::Account::new("2001", Some("other-pass"), server.sip_port).regint(60),
    ));
    assert_eq!(
        phone.wait_registration(Duration::from_secs(10)),
        Registration::Registered,
        "the added user"
    );
    assert_eq!(server.health()["registrations"], 1);
    write_profile(&server, &users("second-pass"));
    let (code, v) = reload(&server);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["users"], 1, "{v}");
    assert_eq!(v["registrations_dropped"], 1, "{v}");
    assert_eq!(server.health()["registrations"], 0);
    phone.stop();
    assert!(
        matches!(
            registers(&server, "2001", "other-pass"),
            Registration::Failed {
                code: Some(401),
                ..
            }
        ),
        "the removed user still registers"
    );
}
