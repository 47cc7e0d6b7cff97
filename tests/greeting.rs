#![allow(clippy::unwrap_used)]
//! Greetings: a route's `greeting_file` is heard the moment the call is
//! answered, for every agent kind, before the provider says anything; a
//! text `greeting` is spoken first by agents with a voice of their own
//! (openai_compat through its TTS, openai_realtime through the model).
//! baresip calls and records; the fake providers of tests/fakes stand in
//! for the AI services.

mod common;
#[path = "common/pipeline.rs"]
mod pipeline;

use std::path::Path;

use common::audio::{self, Audio};
use common::fakes::Fake;
use common::{require_peer, Server};
use pipeline::{call, call_info};

fn silence_wav(dir: &Path, ms: u32) -> std::path::PathBuf {
    let p = dir.join("silence.wav");
    audio::write_wav(&p, &Audio::new(8000, vec![0.0; (8 * ms) as usize])).unwrap();
    p
}

/// Calls route `g` (whose agent is `agent`, greeting `extra`), the phone
/// silent for 3 s; returns what it heard and the call's view.
fn greeted(agent: &str, extra: &str, dir: &Path) -> (Audio, serde_json::Value, String) {
    let server = Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"g\"\nagent = {agent}\n{extra}\n"
    ));
    let (out, id) = call(&server, "g", &silence_wav(dir, 3000), 300);
    let ctx = format!("{}\n{}", out.summary(), server.log_text());
    let id = id.unwrap_or_else(|| panic!("no call\n{ctx}"));
    let view = call_info(&server, &id);
    // On the clock of what the phone sent, which starts when the call is
    // established (the dec dump only starts with the first packet heard).
    let heard = out.heard_aligned().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    (heard, view, ctx)
}

#[test]
fn a_greeting_file_is_heard_within_300_ms_of_the_answer_for_every_agent_kind() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // 700 ms rising chirp: nothing a fake provider plays looks like it.
    let greeting = audio::chirp(700, 400.0, 1800.0, 0.3);
    let gwav = tmp.path().join("greeting.wav");
    audio::write_wav(&gwav, &greeting).unwrap();
    let key = tmp.path().join("key");
    std::fs::write(&key, "sk-test\n").unwrap();
    let kinds: [(&str, &str, Vec<&str>); 5] = [
        ("audiosocket", "fake_audiosocket.py", vec![]),
        ("avr_sts", "fake_avr_sts.py", vec![]),
        ("avr_pipeline", "fake_avr_pipeline.py", vec![]),
        ("openai_compat", "fake_openai_compat.py", vec![]),
        (
            "openai_realtime",
            "fake_openai_realtime.py",
            vec!["--api-key", "sk-test"],
        ),
    ];
    let mut report = Vec::new();
    for (kind, script, args) in kinds {
        let Some(fake) = Fake::start(script, &args) else {
            return;
        };
        let p = fake.port;
        let agent = match kind {
            "audiosocket" => format!("{{ kind = \"audiosocket\", addr = \"127.0.0.1:{p}\" }}"),
            "avr_sts" => format!("{{ kind = \"avr_sts\", url = \"ws://127.0.0.1:{p}\" }}"),
            "avr_pipeline" => format!(
                "{{ kind = \"avr_pipeline\", asr_url = \"http://127.0.0.1:{p}/speech-to-text-stream\", \
                 llm_url = \"http://127.0.0.1:{p}/prompt-stream\", \
                 tts_url = \"http://127.0.0.1:{p}/text-to-speech-stream\" }}"
            ),
            "openai_compat" => {
                format!("{{ kind = \"openai_compat\", base_url = \"http://127.0.0.1:{p}/v1\" }}")
            }
            _ => format!(
                "{{ kind = \"openai_realtime\", base_url = \"ws://127.0.0.1:{p}/v1/realtime\", \
                 api_key_file = \"{}\" }}",
                key.display()
            ),
        };
        let extra = format!("greeting_file = \"{}\"", gwav.display());
        let (heard, view, ctx) = greeted(&agent, &extra, tmp.path());
        let (at, corr) = audio::find_segment(&heard, &greeting)
            .unwrap_or_else(|| panic!("{kind}: greeting not heard\n{ctx}"));
        let whole = audio::worst_piece_corr(&heard, &greeting, at, 100.0, 45.0);
        report.push(format!(
            "{kind}: greeting at {at:.0} ms after the answer (corr {corr:.3}, worst piece {whole:.3})"
        ));
        assert_eq!(view["agent"], kind, "{view}");
        assert!(
            whole >= 0.9,
            "{kind}: greeting not whole: {whole:.3}\n{ctx}"
        );
        assert!(
            (0.0..=300.0).contains(&at),
            "{kind}: greeting heard {at:.0} ms after the answer\n{ctx}"
        );
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn a_text_greeting_is_spoken_first_by_the_agents_own_voice() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let text = "Welcome to the test line. How can I help?";

    // openai_compat: the greeting goes to the TTS (no ASR, no LLM), its
    // audio is heard first, and it is the agent's first transcript line.
    let Some(fake) = Fake::start("fake_openai_compat.py", &[]) else {
        return;
    };
    let agent = format!(
        "{{ kind = \"openai_compat\", base_url = \"http://127.0.0.1:{}/v1\" }}",
        fake.port
    );
    let (heard, view, ctx) = greeted(&agent, &format!("greeting = \"{text}\""), tmp.path());
    let tts: Vec<String> = fake
        .markers("speech_request")
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(tts.join(" "), text, "{ctx}");
    assert_eq!(view["transcript"][0]["role"], "agent", "{view}");
    assert_eq!(view["transcript"][0]["text"], text, "{view}");
    let h8 = heard.to_8k();
    let (s, _) = audio::speech_region(&h8).unwrap_or_else(|| panic!("nothing heard\n{ctx}"));
    let at = s as f64 / 8.0;
    eprintln!("openai_compat text greeting: first audio {at:.0} ms after the answer");
    assert!(at < 1000.0, "greeting {at:.0} ms after the answer\n{ctx}");

    // openai_realtime: the model is asked to say it (response.create with
    // the text in its instructions) before the caller says anything.
    let key = tmp.path().join("key");
    std::fs::write(&key, "sk-test\n").unwrap();
    let Some(fake) = Fake::start("fake_openai_realtime.py", &["--api-key", "sk-test"]) else {
        return;
    };
    let agent = format!(
        "{{ kind = \"openai_realtime\", base_url = \"ws://127.0.0.1:{}/v1/realtime\", \
         api_key_file = \"{}\" }}",
        fake.port,
        key.display()
    );
    let (heard, _, ctx) = greeted(&agent, &format!("greeting = \"{text}\""), tmp.path());
    let asked = fake.events().into_iter().any(|e| {
        e["dir"] == "in"
            && e["type"] == "response.create"
            && e["response"]["instructions"]
                .as_str()
                .is_some_and(|i| i.contains(text))
    });
    assert!(
        asked,
        "no response.create with the greeting\n{}",
        fake.events_text()
    );
    let h8 = heard.to_8k();
    let (s, _) = audio::speech_region(&h8).unwrap_or_else(|| panic!("nothing heard\n{ctx}"));
    let at = s as f64 / 8.0;
    eprintln!("openai_realtime text greeting: first audio {at:.0} ms after the answer");
    assert!(at < 1000.0, "greeting {at:.0} ms after the answer\n{ctx}");
}

#[test]
fn a_text_greeting_for_an_agent_without_a_voice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("p.toml");
    std::fs::write(
        &profile,
        "[[routes]]\ndial = \"g\"\nagent = { kind = \"avr_sts\", url = \"ws://127.0.0.1:9\" }\n\
         greeting = \"Hello\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentline"))
        .args(["check-config", "--profile", profile.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("greeting") && err.contains("greeting_file"),
        "{err}"
    );
}

/// First and last frame (ms) where `hz` dominates, and how many frames.
fn tone_span(a: &Audio, hz: f32) -> Option<(f64, f64, usize)> {
    let f = audio::tone_frames(a, hz);
    let first = f.iter().position(|&t| t)?;
    let last = f.iter().rposition(|&t| t)?;
    Some((
        first as f64 * 20.0,
        last as f64 * 20.0,
        f.iter().filter(|&&t| t).count(),
    ))
}

/// A slow LLM (1.5 s): `filler_after_ms` after the caller's turn ended the
/// filler sound plays, and it stops the moment the agent's answer starts;
/// without `filler_file` the wait is silent.
#[test]
fn a_filler_covers_a_slow_answer_and_stops_when_the_agent_speaks() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let filler = tmp.path().join("filler.wav");
    // Longer than the wait, so the cut is visible.
    audio::write_wav(&filler, &audio::tone(4000, 1000.0)).unwrap();
    let run = |extra: &str| {
        let fake = Fake::start(
            "fake_openai_compat.py",
            &["--mode", "slow-start:1500", "--fail-route", "chat"],
        )?;
        let server = Server::start(&format!(
            "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"f\"\n\
             agent = {{ kind = \"openai_compat\", base_url = \"http://127.0.0.1:{}/v1\" }}\n\
             dsp = {{ vad = true }}\n{extra}\n",
            fake.port
        ));
        let speech = common::data_path("speech_8k.wav");
        let (out, id) = call(&server, "f", &speech, 6000);
        let ctx = format!("{}\n{}", out.summary(), server.log_text());
        let view = call_info(&server, &id.unwrap_or_else(|| panic!("no call\n{ctx}")));
        let heard = out.heard_aligned().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
        Some((heard, view, ctx))
    };
    let Some((heard, view, ctx)) = run(&format!(
        "filler_file = \"{}\"\nfiller_after_ms = 300",
        filler.display()
    )) else {
        return;
    };
    // The fake's answer is a 440 Hz tone; the caller's turn ended ~0.7 s
    // after the phrase (3.4 s into the call).
    let (a0, _, _) = tone_span(&heard, 440.0).unwrap_or_else(|| panic!("no answer heard\n{ctx}"));
    let (f0, f1, n) = tone_span(&heard, 1000.0).unwrap_or_else(|| panic!("no filler heard\n{ctx}"));
    eprintln!(
        "filler from {f0:.0} to {f1:.0} ms ({n} frames), answer from {a0:.0} ms; turns {}",
        view["turns"]
    );
    assert!(f0 < a0, "the filler came before the answer\n{ctx}");
    assert!(
        f1 < a0 + 40.0,
        "the filler stopped when the answer began: {f1} vs {a0}\n{ctx}"
    );
    assert!(
        a0 - f0 >= 800.0,
        "the filler covered the wait ({f0:.0}-{a0:.0} ms)\n{ctx}"
    );
    assert_eq!(
        view["interruptions"], 0,
        "cutting the filler is no barge-in: {view}"
    );

    // Without a filler the wait is silent.
    let Some((heard, _, ctx)) = run("") else {
        return;
    };
    assert!(tone_span(&heard, 440.0).is_some(), "no answer heard\n{ctx}");
    assert!(tone_span(&heard, 1000.0).is_none(), "{ctx}");
}
