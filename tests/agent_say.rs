#![allow(clippy::unwrap_used)]
//! `say`: a route that speaks a sentence and hangs up once it was heard.
//! baresip records the call; the recording must contain the same speech as
//! espeak-ng makes of the text, and the server ends the call after it.

mod common;

use std::process::Command;

use common::audio;
use common::baresip::{Account, Baresip, Options};
use common::{require_peer, Server};

const TEXT: &str = "Thank you for calling. Goodbye.";

#[test]
fn say_speaks_the_text_then_hangs_up() {
    if require_peer("baresip").is_none() || require_peer("espeak-ng").is_none() {
        return;
    }
    let server = Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"bye\"\n\
         agent = {{ kind = \"say\", text = \"{TEXT}\" }}\n"
    ));
    let account = Account::new("1000", None, server.sip_port).regint(0);
    let mut opts = Options::new(account).dial("bye");
    // Silence from the phone for longer than the sentence: the server must
    // be the one to end the call.
    opts.tail_silence_ms = 12_000;
    opts.max_secs = 25;
    let out = Baresip::run(opts);
    let heard = out.heard().unwrap();
    let ctx = format!(
        "{}\n{}\n{}",
        out.sip_flow(),
        out.summary(),
        server.log_text()
    );
    assert!(out.facts.call_established, "{ctx}");
    assert!(
        server.log_text().contains("agent finished"),
        "the server hung up after speaking: {ctx}"
    );
    let bye_from_server = out
        .facts
        .messages
        .iter()
        .any(|m| !m.outgoing && m.status.is_none() && m.method == "BYE");
    assert!(bye_from_server, "BYE came from the server\n{ctx}");
    // What espeak-ng makes of the text is what the caller heard.
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref.wav");
    let st = Command::new("espeak-ng")
        .arg("-w")
        .arg(&reference)
        .arg(TEXT)
        .status()
        .unwrap();
    assert!(st.success());
    let reference = audio::read_wav(&reference).unwrap();
    let (at_ms, corr) = audio::find_segment(&heard, &reference).unwrap_or_else(|| {
        panic!(
            "the sentence is not in the recording: {}\n{ctx}",
            audio::describe(&heard)
        )
    });
    assert!(corr > 0.7, "correlation with the sentence {corr:.2}\n{ctx}");
    assert!(
        at_ms < 1500.0,
        "spoken right after answering, at {at_ms:.0} ms"
    );
    let speech = audio::speech_region(&heard.to_8k()).unwrap();
    let spoken_ms = (speech.1 - speech.0) as f64 / 8.0;
    assert!(
        spoken_ms > reference.duration_ms() * 0.8,
        "the whole sentence was played ({spoken_ms:.0} ms of {:.0} ms)",
        reference.duration_ms()
    );
    eprintln!("say: heard at {at_ms:.0} ms, corr {corr:.2}, {spoken_ms:.0} ms of speech");
}

/// `ambient_file` is mixed under the agent for the whole call, also when
/// the agent is silent (RTP keeps flowing).
#[test]
fn ambient_sound_plays_under_the_agent_for_the_whole_call() {
    if require_peer("baresip").is_none() || require_peer("espeak-ng").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hum = dir.path().join("hum.wav");
    let n = 8000;
    let tone = audio::Audio::new(
        8000,
        (0..n)
            .map(|i| (i as f32 * 1000.0 * std::f32::consts::TAU / 8000.0).sin() * 0.5)
            .collect(),
    );
    audio::write_wav(&hum, &tone).unwrap();
    let server = Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"hello\"\n\
         agent = {{ kind = \"say\", text = \"Hello.\", then = \"listen\" }}\n\
         ambient_file = \"{}\"\nambient_level = 0.2\n",
        hum.display()
    ));
    let account = Account::new("1000", None, server.sip_port).regint(0);
    let mut opts = Options::new(account).dial("hello");
    opts.tail_silence_ms = 5000;
    opts.max_secs = 15;
    let out = Baresip::run(opts);
    // From the first packet on (no alignment padding): silence frames
    // would otherwise count as speech below.
    let heard = out.heard().unwrap();
    let frames = audio::tone_frames(&heard, 1000.0);
    let ctx = format!("{}\n{}", out.summary(), audio::describe(&heard));
    // The last 2 s (after "Hello."): the hum alone, every frame.
    let tail = &frames[frames.len().saturating_sub(100)..];
    let on = tail.iter().filter(|&&t| t).count();
    assert!(on >= 95, "hum in {on} of the last 100 frames\n{ctx}");
    // At 0.2 of a 0.5 sine: about -23 dBFS.
    let level = audio::rms_dbfs(&heard.to_8k().samples[heard.to_8k().samples.len() - 8000..]);
    assert!(
        (-26.0..=-20.0).contains(&level),
        "hum level {level:.1} dBFS\n{ctx}"
    );
    // "Hello." was spoken over it: frames where the hum does not dominate.
    let voiced = frames.iter().filter(|&&t| !t).count();
    assert!(voiced > 10, "speech over the hum: {voiced} frames\n{ctx}");
}

/// A long `say` with the caller speaking `caller_wav` over it (after 2 s):
/// how long the announcement was heard (ms of sound at the phone minus
/// nothing: the phone's own speech is not in its recording) and the call's
/// view (`interruptions`, `backchannels`).
fn announcement_over(caller_wav: &std::path::Path, route_extra: &str) -> (f64, serde_json::Value) {
    let text = "This is a long announcement that keeps going on and on, \
                so that the caller has plenty of time to interrupt it before it ends.";
    let server = Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"long\"\n\
         agent = {{ kind = \"say\", text = \"{text}\", then = \"listen\" }}\n\
         dsp = {{ vad = true }}\n{route_extra}\n"
    ));
    let account = Account::new("1000", None, server.sip_port).regint(0);
    // 2 s of silence, then the caller talks over the announcement.
    let mut opts = Options::new(account).dial("long").play(caller_wav);
    opts.lead_silence_ms = 2000;
    opts.tail_silence_ms = 4000;
    opts.max_secs = 20;
    let mut phone = Baresip::start(opts);
    assert!(phone.wait_call_established(std::time::Duration::from_secs(10)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let id = loop {
        if let Some(id) = server.calls()[0]["id"].as_str() {
            break id.to_string();
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    phone.wait_call_closed(std::time::Duration::from_secs(20));
    let out = phone.stop();
    server.wait_idle(std::time::Duration::from_secs(10));
    let (_, body) = common::http_get(server.api_port, &format!("/calls/{id}")).unwrap();
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    // What the phone heard: the announcement.
    let heard = out.heard().unwrap().to_8k();
    let speech = audio::frame_levels(&heard.samples);
    let loud = speech.iter().filter(|&&l| l > -45.0).count() as f64 * 20.0;
    (loud, view)
}

/// Barge-in from our own VAD (what pipeline agents rely on): the caller
/// starts talking while a long `say` plays, and the rest of it is dropped
/// at once; a route with `barge_in = false` plays it to the end.
#[test]
fn caller_speech_cuts_the_agent_short_when_barge_in_is_on() {
    if require_peer("baresip").is_none() || require_peer("espeak-ng").is_none() {
        return;
    }
    let speech = common::data_path("speech_8k.wav");
    let n = |v: &serde_json::Value| v["interruptions"].as_u64().unwrap_or(0);
    let (cut, v_cut) = announcement_over(&speech, "barge_in = true");
    let (full, v_full) = announcement_over(&speech, "barge_in = false");
    assert_eq!(
        (n(&v_cut), n(&v_full)),
        (1, 0),
        "one barge-in, only with barge_in on"
    );
    assert!(
        full > 5000.0 && cut < full - 2000.0,
        "announcement heard {cut:.0} ms with barge-in, {full:.0} ms without"
    );
    eprintln!("barge-in: announcement heard {cut:.0} ms (cut) vs {full:.0} ms (whole)");
}

/// A backchannel is not a barge-in: the caller says one short word
/// (280 ms, "mm-hm" length) over the announcement, which goes on to its
/// end; the call counts a backchannel and no interruption. With
/// `barge_in_min_ms = 0` the same word cuts it (so the word is heard by
/// the VAD, and the default is what keeps the agent going).
#[test]
fn a_short_backchannel_does_not_interrupt_the_agent() {
    if require_peer("baresip").is_none() || require_peer("espeak-ng").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let speech = audio::read_wav(&common::data_path("speech_8k.wav")).unwrap();
    // Frames 28-41 of the test phrase: one 280 ms word between pauses.
    let word = audio::Audio::new(8000, speech.samples[28 * 160..42 * 160].to_vec());
    let word_wav = tmp.path().join("word.wav");
    audio::write_wav(&word_wav, &word).unwrap();

    let (whole, v) = announcement_over(&word_wav, "");
    let (cut, v_cut) = announcement_over(&word_wav, "barge_in_min_ms = 0");
    eprintln!(
        "backchannel: announcement heard {whole:.0} ms (backchannels {}, interruptions {}); \
         with barge_in_min_ms = 0 heard {cut:.0} ms (interruptions {})",
        v["backchannels"], v["interruptions"], v_cut["interruptions"]
    );
    assert_eq!(v["interruptions"], 0, "{v}");
    assert_eq!(v["backchannels"], 1, "{v}");
    assert!(whole > 5000.0, "announcement heard only {whole:.0} ms");
    assert_eq!(v_cut["interruptions"], 1, "{v_cut}");
    assert!(cut < whole - 2000.0, "{cut:.0} vs {whole:.0}");
}
