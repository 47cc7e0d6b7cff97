//! Shared by the pipeline-agent tests (`openai_compat`, `avr_pipeline`):
//! a caller who says the test phrase twice, a short reply recording for
//! the fake TTS, and checks on what the phone heard.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::audio::{self, Audio};
use crate::common::baresip::{Account, Baresip, Options, Outcome};
use crate::common::{data_path, http_get, Server};

/// Silence between the caller's two phrases (the agent answers in it).
pub const GAP_MS: u32 = 4500;
/// Length of the fake TTS answer per sentence.
pub const REPLY_MS: u32 = 1200;

pub fn speech() -> Audio {
    audio::read_wav(&data_path("speech_8k.wav")).expect("speech_8k.wav")
}

/// Where the speech in speech_8k.wav ends (ms; the file has a short tail).
pub fn spoken_end_ms() -> f64 {
    let s = speech().to_8k();
    audio::speech_region(&s).expect("speech").1 as f64 / 8.0
}

/// The phrase, `GAP_MS` of silence, the phrase again.
pub fn two_phrases(dir: &Path) -> (PathBuf, Audio) {
    let s = speech();
    let mut samples = s.samples.clone();
    samples.extend(std::iter::repeat_n(0.0, (s.rate * GAP_MS / 1000) as usize));
    samples.extend_from_slice(&s.samples);
    let a = Audio::new(s.rate, samples);
    let p = dir.join("two_phrases.wav");
    audio::write_wav(&p, &a).expect("write two_phrases.wav");
    (p, a)
}

/// The first `REPLY_MS` of the account phrase: what the fake TTS says for
/// every sentence (distinct from the caller's phrase).
pub fn reply_wav(dir: &Path) -> (PathBuf, Audio) {
    let s = audio::read_wav(&data_path("speech_account_8k.wav")).expect("speech_account_8k.wav");
    let n = (s.rate * REPLY_MS / 1000) as usize;
    let a = Audio::new(s.rate, s.samples[..n].to_vec());
    let p = dir.join("reply.wav");
    audio::write_wav(&p, &a).expect("write reply.wav");
    (p, a)
}

/// A call from baresip to `route` playing `wav` then `tail_ms` of silence;
/// returns the outcome and the call's id (read from the API while it ran).
pub fn call(server: &Server, route: &str, wav: &Path, tail_ms: u32) -> (Outcome, Option<String>) {
    let account = Account::new("caller", None, server.sip_port).regint(0);
    let mut opts = Options::new(account).dial(route).play(wav);
    opts.tail_silence_ms = tail_ms;
    opts.max_secs = 60;
    let mut phone = Baresip::start(opts);
    let mut id = None;
    if phone.wait_call_established(Duration::from_secs(15)) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while id.is_none() && Instant::now() < deadline {
            id = server.calls()[0]["id"].as_str().map(str::to_string);
            std::thread::sleep(Duration::from_millis(100));
        }
        phone.wait_call_closed(Duration::from_secs(55));
    }
    (phone.stop(), id)
}

/// `GET /calls/{id}` (ended calls stay readable).
pub fn call_info(server: &Server, id: &str) -> serde_json::Value {
    let (code, body) = http_get(server.api_port, &format!("/calls/{id}")).expect("GET /calls/{id}");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("call json")
}

/// A slice of `a` between two times (ms).
pub fn window(a: &Audio, from_ms: f64, to_ms: f64) -> Audio {
    let a = a.to_8k();
    let s = ((from_ms.max(0.0) * 8.0) as usize).min(a.samples.len());
    let e = ((to_ms * 8.0) as usize).clamp(s, a.samples.len());
    Audio::new(8000, a.samples[s..e].to_vec())
}

/// `reply` repeated `n` times back to back.
pub fn repeated(reply: &Audio, n: usize) -> Audio {
    let r = reply.to_8k();
    let mut v = Vec::new();
    for _ in 0..n {
        v.extend_from_slice(&r.samples);
    }
    Audio::new(8000, v)
}

/// Start and end (ms, on the heard clock) of the sound in `heard` after
/// `from_ms`: 20 ms frames above -45 dBFS, gaps up to 300 ms joined.
pub fn sound_after(heard: &Audio, from_ms: f64) -> Option<(f64, f64)> {
    let h = heard.to_8k();
    let levels = audio::frame_levels(&h.samples);
    let first = (from_ms / 20.0) as usize;
    let start = (first..levels.len()).find(|&i| levels[i] > -45.0)?;
    let mut end = start;
    let mut quiet = 0;
    for (i, &l) in levels.iter().enumerate().skip(start) {
        if l > -45.0 {
            end = i;
            quiet = 0;
        } else {
            quiet += 1;
            if quiet > 15 {
                break;
            }
        }
    }
    Some((start as f64 * 20.0, (end + 1) as f64 * 20.0))
}

/// Latency entries of a call, for the report.
pub fn print_turns(label: &str, info: &serde_json::Value) {
    eprintln!("{label}: turns = {}", info["turns"]);
}

/// The phone heard `sentences` x the TTS recording starting 0.1-2.5 s
/// after `after_ms` (the end of the speech in a caller's phrase, on the caller's clock),
/// intact, at real-time pace and without gaps. Returns when it started.
pub fn assert_reply_after(out: &Outcome, reply: &Audio, after_ms: f64, sentences: usize) -> f64 {
    let heard = out.heard_aligned().expect("decoder dump");
    let ctx = format!("heard: {}\n{}", audio::describe(&heard), out.summary());
    let (start, end) = sound_after(&heard, after_ms)
        .unwrap_or_else(|| panic!("nothing heard after {after_ms} ms: {ctx}"));
    let expected = repeated(reply, sentences);
    let want_ms = expected.duration_ms();
    assert!(
        (100.0..=2500.0).contains(&(start - after_ms)),
        "agent speech started {} ms after the caller's phrase: {ctx}",
        start - after_ms
    );
    assert!(
        ((end - start) - want_ms).abs() <= 250.0,
        "heard {} ms of agent speech, the TTS said {want_ms} ms: {ctx}",
        end - start
    );
    let got = window(&heard, start - 100.0, end + 200.0);
    let d = audio::cross_correlation_delay(&expected, &got, 400.0)
        .unwrap_or_else(|| panic!("heard audio does not line up with the TTS audio: {ctx}"));
    assert!(
        d.corr >= 0.8,
        "heard audio differs from the TTS audio (corr {:.2}): {ctx}",
        d.corr
    );
    let gap = audio::longest_gap_ms(&expected, &got, d.ms);
    assert!(gap <= 60.0, "{gap} ms gap inside the agent's speech: {ctx}");
    start
}

/// Nothing but silence reached the phone between two times (ms).
pub fn assert_silent_between(out: &Outcome, from_ms: f64, to_ms: f64) {
    let heard = out.heard_aligned().expect("decoder dump");
    if let Some((s, _)) = sound_after(&heard, from_ms) {
        assert!(
            s >= to_ms,
            "sound at {s} ms, expected silence {from_ms}-{to_ms} ms: {}",
            out.summary()
        );
    }
}
