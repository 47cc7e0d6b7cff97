#![allow(clippy::unwrap_used)]
//! Overload control: past `[sip] max_cpu`, new INVITEs get 503 with
//! Retry-After while the calls already up keep clean audio. The ceiling is
//! set low (5 % of the machine) so that a sipp load of 40 echo calls with
//! the route's denoiser (RNNoise, ~0.4 % of a core per call; the VAD alone
//! is too cheap since it is spectral) goes over it on any machine; a
//! baresip call placed before the load must still pass the echo audio check.

mod common;

use std::time::{Duration, Instant};

use common::baresip::{assert_echo_audio, Account, Baresip, Options};
use common::sipp::spawn_scenario;

use common::{data_path, require_peer, Server};

const PROFILE: &str = "[sip]\ntrusted = [\"127.0.0.1/32\"]\nmax_cpu = 0.05\nmax_calls = 500\n\
    [[routes]]\ndial = \"echo\"\nagent = { kind = \"echo\" }\ndsp = { denoise = true, vad = true }\n";

#[test]
fn past_the_cpu_ceiling_new_calls_get_503_and_the_call_in_progress_stays_clean() {
    if require_peer("baresip").is_none() || require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(PROFILE);
    // Idle: not overloaded.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(server.health()["overloaded"], false, "{}", server.health());

    let account = Account::new("caller", None, server.sip_port).regint(0);
    let mut opts = Options::new(account)
        .dial("echo")
        .play(&data_path("speech_8k.wav"));
    opts.lead_silence_ms = 2500;
    opts.tail_silence_ms = 1000;
    opts.max_secs = 40;
    let mut phone = Baresip::start(opts);
    assert!(
        phone.wait_call_established(Duration::from_secs(15)),
        "{}",
        server.log_text()
    );
    // The load: 40 calls at 20 per second, 6 s each, audio both ways.
    let load = spawn_scenario(
        "uac_load.xml",
        server.sip_port,
        "echo",
        &["-m", "40", "-r", "20", "-l", "40", "-d", "6000"],
    );
    let mut saw_overloaded = false;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        let h = server.health();
        saw_overloaded |= h["overloaded"] == true;
        std::thread::sleep(Duration::from_millis(200));
    }
    phone.wait_call_closed(Duration::from_secs(30));
    let out = phone.stop();
    let sipp = load.wait(Duration::from_secs(60));
    let msgs = sipp.messages();
    let refused: Vec<_> = msgs
        .iter()
        .filter(|m| !m.sent && m.start_line.starts_with("SIP/2.0 503"))
        .collect();
    let answered = msgs
        .iter()
        .filter(|m| !m.sent && m.start_line.starts_with("SIP/2.0 200") && m.text.contains("INVITE"))
        .count();
    let ctx = format!("{}\n{}", sipp.report(), server.log_text());
    eprintln!(
        "overload: {answered} load calls answered, {} refused with 503; /health said overloaded: {saw_overloaded}",
        refused.len()
    );
    assert!(sipp.success, "{ctx}");
    assert!(!refused.is_empty(), "no INVITE was refused\n{ctx}");
    assert!(
        answered > 0,
        "the load never got in before the ceiling\n{ctx}"
    );
    assert!(
        refused.iter().all(|m| m.text.contains("Retry-After: 5")),
        "{}",
        refused[0].text
    );
    assert!(saw_overloaded, "{ctx}");
    assert!(server.metric("agentline_calls_refused_overload_total") >= refused.len() as f64);
    // The call that was up before the load: its echo is whole.
    assert!(out.facts.call_established, "{}", out.summary());
    assert_echo_audio(&out);
    // Once the load is gone, new calls are taken again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.health()["overloaded"] == true || server.health()["active_calls"] != 0 {
        assert!(
            Instant::now() < deadline,
            "still overloaded: {}",
            server.health()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = common::sipp::run_scenario("invite_bye.xml", server.sip_port, "echo", &[]);
    assert!(after.success, "{}", after.report());
}
