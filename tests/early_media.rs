#![allow(clippy::unwrap_used)]
//! Early media: a route with `early_media = "ringback"` answers an INVITE
//! with 183 + SDP and plays ringback while the agent is set up (here: a
//! `call_initiated` webhook that takes 1.5 s), then 200 - the caller never
//! hears dead air. baresip calls and records what it hears.

mod common;
#[path = "common/pipeline.rs"]
mod pipeline;

use common::audio::{self, Audio};
use common::fakes::Fake;
use common::{require_peer, Server};
use pipeline::{call, call_info};

/// Calls route `r` of a server whose `call_initiated` webhook answers after
/// 1.5 s; returns what the phone heard (from its first packet), the SIP
/// responses it got to its INVITE, and the call's view.
fn ring(
    route_extra: &str,
    agent_wav: &std::path::Path,
    dir: &std::path::Path,
) -> (Audio, Vec<u16>, serde_json::Value, String) {
    let Some(hook) = Fake::start("fake_webhook.py", &["--mode", "slow-start:1500"]) else {
        panic!("fake_webhook.py did not start");
    };
    let server = Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[webhooks]\nurl = \"http://127.0.0.1:{}/hook\"\n\
         [[routes]]\ndial = \"r\"\nagent = {{ kind = \"say\", wav = \"{}\" }}\n{route_extra}\n",
        hook.port,
        agent_wav.display()
    ));
    let silence = dir.join("silence.wav");
    audio::write_wav(&silence, &Audio::new(8000, vec![0.0; 8 * 4000])).unwrap();
    let (out, id) = call(&server, "r", &silence, 300);
    let ctx = format!(
        "{}\n{}\n{}",
        out.sip_flow(),
        out.summary(),
        server.log_text()
    );
    let id = id.unwrap_or_else(|| panic!("no call\n{ctx}"));
    let view = call_info(&server, &id);
    let heard = out.heard().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    (heard, out.facts.statuses("INVITE"), view, ctx)
}

#[test]
fn the_caller_hears_ringback_while_the_agent_is_set_up_then_the_agent() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reply = audio::chirp(800, 600.0, 2400.0, 0.3);
    let wav = tmp.path().join("reply.wav");
    audio::write_wav(&wav, &reply).unwrap();

    let (heard, statuses, view, ctx) = ring(
        "early_media = \"ringback\"\nringback_tone = \"eu\"",
        &wav,
        tmp.path(),
    );
    // 183 (early media), then 200 once the webhook answered.
    let p183 = statuses.iter().position(|&c| c == 183);
    let p200 = statuses.iter().position(|&c| c == 200);
    assert!(
        p183.is_some() && p183 < p200,
        "INVITE responses {statuses:?}\n{ctx}"
    );
    assert_eq!(view["early_media"], true, "{view}");
    // The EU cadence: 425 Hz for 1 s from the first packet, then its pause.
    let tone = audio::tone_frames(&heard, 425.0);
    let first_s = tone.iter().take(50).filter(|&&t| t).count();
    let (at, corr) =
        audio::find_segment(&heard, &reply).unwrap_or_else(|| panic!("agent not heard\n{ctx}"));
    let after_agent = tone
        .iter()
        .skip((at / 20.0) as usize)
        .filter(|&&t| t)
        .count();
    eprintln!(
        "early media: {first_s}/50 ringback frames in the first second; agent heard at {at:.0} ms \
         (corr {corr:.3}); {after_agent} ringback frames after it"
    );
    assert!(first_s >= 45, "ringback not heard: {first_s}/50\n{ctx}");
    // The agent only once the webhook answered (1.5 s), and no ringback over it.
    assert!(at >= 1300.0, "agent heard at {at:.0} ms\n{ctx}");
    assert!(corr >= 0.9, "{ctx}");
    assert_eq!(after_agent, 0, "{ctx}");

    // Without early media the same call rings with 180 and the phone hears
    // nothing before the agent: the dead air this option removes.
    let (heard, statuses, view, ctx) = ring("", &wav, tmp.path());
    assert!(!statuses.contains(&183), "{statuses:?}\n{ctx}");
    assert_eq!(view["early_media"], false, "{view}");
    let tone = audio::tone_frames(&heard, 425.0);
    assert!(tone.iter().all(|&t| !t), "{ctx}");
}

/// The AudioSocket fake's input frames with their arrival times (unix s)
/// and levels (dBFS).
fn heard_frames(fake: &Fake) -> Vec<(f64, f64)> {
    let input = audio::read_wav(&fake.input_wav()).unwrap_or_else(|_| Audio::new(8000, vec![]));
    let times: Vec<f64> = fake
        .events()
        .iter()
        .filter(|e| e["dir"] == "in" && e["kind"] == "audio")
        .filter_map(|e| e["ts"].as_f64())
        .collect();
    input
        .samples
        .chunks(160)
        .zip(times)
        .map(|(f, t)| (t, audio::rms_dbfs(f)))
        .collect()
}

#[test]
fn an_outbound_calls_early_media_reaches_the_agent_before_the_200() {
    let Some(sipp) = require_peer("sipp") else {
        return;
    };
    let Some(fake) = Fake::start("fake_audiosocket.py", &[]) else {
        panic!("fake_audiosocket.py did not start");
    };
    let dir = tempfile::tempdir().unwrap();
    let uas = common::free_port();
    common::sipp::start_uas(
        &sipp,
        "uas_early_media.xml",
        uas,
        &["-trace_msg"],
        dir.path(),
    );
    let server = Server::start(&format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:{uas}\"\nregister = false\n\
         [[routes]]\ndial = \"out\"\nagent = {{ kind = \"audiosocket\", addr = \"127.0.0.1:{}\" }}\n",
        fake.port
    ));
    let (code, body) = common::http_post(
        server.api_port,
        "/calls",
        r#"{"trunk":"carrier","to":"callee","route":"out"}"#,
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t_post = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while call_info(&server, &id)["state"] != "active" {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let (code, _) =
        common::http_post(server.api_port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let view = call_info(&server, &id);
    let ctx = format!(
        "{view}\n{}\n{}",
        fake.events_text()
            .lines()
            .filter(|l| !l.contains("\"audio\""))
            .collect::<Vec<_>>()
            .join("\n"),
        server.log_text()
    );
    assert_eq!(view["early_media"], true, "{ctx}");
    let answered = view["answered_at_unix_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("not answered\n{ctx}"))
        / 1000.0;
    // The callee answered 3 s after its 183.
    assert!(
        answered - t_post >= 2.5,
        "answered {:.1} s after the POST\n{ctx}",
        answered - t_post
    );
    let frames = heard_frames(&fake);
    let early: Vec<&(f64, f64)> = frames.iter().filter(|(t, _)| *t < answered).collect();
    let early_voiced = early.iter().filter(|(_, db)| *db > -40.0).count();
    eprintln!(
        "outbound early media: the agent got {} frames before the 200 ({early_voiced} with sound), {} in all",
        early.len(),
        frames.len()
    );
    // ~2.5 s of the callee's early audio reached the agent before the answer.
    assert!(
        early_voiced >= 75,
        "{early_voiced} voiced frames before the answer\n{ctx}"
    );
    assert_eq!(view["end_reason"], "hangup by server", "{ctx}");
}
