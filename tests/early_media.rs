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
