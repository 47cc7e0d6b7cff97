#![allow(clippy::unwrap_used)]
//! The `avr_sts` agent (AVR speech-to-speech over WebSocket) in real calls
//! against tests/fakes/fake_avr_sts.py: the caller's speech reaches the
//! provider as 8 kHz s16, the provider's reply reaches the phone paced and
//! intact, DTMF is forwarded, a provider `interruption` cuts the reply, and
//! a provider that is down, drops mid-call or sends garbage does not cost
//! the caller the call.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::audio::{self, Audio};
use common::baresip::{Account, Baresip, Options, Outcome};
use common::fakes::Fake;
use common::sipp::run_scenario;
use common::{data_path, free_port, http_get, require_peer, Server};

/// Deterministic white noise (caller "speech" for the providers' energy VAD).
fn noise(ms: u32, amp: f32, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..8 * ms as usize)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn write(dir: &Path, name: &str, a: &Audio) -> PathBuf {
    let p = dir.join(name);
    audio::write_wav(&p, a).unwrap();
    p
}

fn profile(routes: &str) -> String {
    format!("[sip]\ntrusted = [\"127.0.0.1/32\"]\n{routes}")
}

fn sts_route(dial: &str, url: &str, extra: &str) -> String {
    format!(
        "[[routes]]\ndial = \"{dial}\"\nagent = {{ kind = \"avr_sts\", url = \"{url}\" }}\n{extra}\n"
    )
}

/// baresip dials `target` playing `wav` (then `tail_ms` of silence); the
/// call's id is read from the API while it runs.
fn call(
    server: &Server,
    target: &str,
    wav: Option<&Path>,
    lead_ms: u32,
    tail_ms: u32,
) -> (Outcome, Option<String>) {
    let mut opts = Options::new(Account::new("1000", None, server.sip_port).regint(0)).dial(target);
    opts.play = wav.map(Path::to_path_buf);
    opts.lead_silence_ms = lead_ms;
    opts.tail_silence_ms = tail_ms;
    opts.max_secs = 40;
    let mut phone = Baresip::start(opts);
    let mut id = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while id.is_none() && Instant::now() < deadline {
        id = server
            .calls()
            .as_array()
            .and_then(|a| a.first())
            .and_then(|c| c["id"].as_str())
            .map(str::to_string);
        std::thread::sleep(Duration::from_millis(50));
    }
    phone.wait_call_closed(Duration::from_secs(40));
    (phone.stop(), id)
}

fn call_info(server: &Server, id: &str) -> serde_json::Value {
    let (code, body) = http_get(server.api_port, &format!("/calls/{id}")).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The first `dir: out` audio message a fake sent, as unix seconds.
fn first_audio_out(fake: &Fake) -> Option<f64> {
    fake.events()
        .iter()
        .find(|e| e["dir"] == "out" && e["type"] == "audio")
        .and_then(|e| e["ts"].as_f64())
}

fn ws(fake: &Fake) -> String {
    format!("ws://127.0.0.1:{}", fake.port)
}

#[test]
fn caller_speech_reaches_the_provider_and_its_reply_plays_paced_and_intact() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reply = audio::chirp(2000, 300.0, 2500.0, 0.25);
    let reply_wav = write(tmp.path(), "reply.wav", &reply);
    // 800 ms end of utterance: the recording's pauses stay inside one turn.
    let Some(fake) = Fake::start(
        "fake_avr_sts.py",
        &[
            "--reply-wav",
            reply_wav.to_str().unwrap(),
            "--silence-ms",
            "800",
            "--chunk-ms",
            "1000,70,3",
        ],
    ) else {
        return;
    };
    let server = Server::start(&profile(&sts_route(
        "sts",
        &ws(&fake),
        "dsp = { vad = true }",
    )));
    let speech_path = data_path("speech_8k.wav");
    let (out, id) = call(&server, "sts", Some(&speech_path), 500, 4500);
    let ctx = format!(
        "{}\n{}\n{}",
        fake.events_text()
            .lines()
            .filter(|l| !l.contains("\"audio_bytes\""))
            .collect::<Vec<_>>()
            .join("\n"),
        out.summary(),
        server.log_text()
    );
    assert!(out.facts.call_established, "{ctx}");

    // The provider was greeted with the call's uuid first.
    let init = fake
        .wait_marker("init", Duration::from_secs(1))
        .expect("init");
    let id = id.expect("call id from GET /calls");
    let info = call_info(&server, &id);
    assert_eq!(
        init["uuid"], info["uuid"],
        "init carries the call's uuid: {ctx}"
    );

    // (1) The caller's speech reached the provider: 8 kHz s16, same level,
    // same waveform, no dropouts.
    let (input, wav) = audio::read_wav_info(&fake.input_wav()).unwrap();
    assert_eq!((wav.rate, wav.channels, wav.bits), (8000, 1, 16), "{ctx}");
    let speech = audio::read_wav(&speech_path).unwrap();
    let (offset, corr) = audio::find_segment(&input, &speech).expect("speech in input.wav");
    let level = audio::rms_within_db(&speech, &input, 3.0).unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let gap = audio::longest_gap_ms(&speech, &input, offset);
    eprintln!("caller->provider: corr {corr:.3} at {offset:.1} ms, level {level:+.2} dB, longest gap {gap} ms");
    assert!(
        corr >= 0.9,
        "speech at the provider correlates {corr:.3}\n{ctx}"
    );
    assert!(
        gap <= 40.0,
        "{gap} ms dropout in the speech the provider got\n{ctx}"
    );

    // (2) The reply reached the phone whole and paced: found with high
    // correlation, no dropout inside it, and as long as it was sent
    // (burst of 1000/70/3 ms messages re-chunked to 20 ms).
    let heard = out.heard().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let (at, rcorr) =
        audio::find_segment(&heard, &reply).unwrap_or_else(|| panic!("reply not heard\n{ctx}"));
    let rgap = audio::longest_gap_ms(&reply, &heard, at);
    let h8 = heard.to_8k();
    let (s, e) = audio::speech_region(&h8).expect("something heard");
    let heard_ms = (e - s) as f64 / 8.0;
    let pcorr = audio::worst_piece_corr(&heard, &reply, at, 250.0, 45.0);
    eprintln!(
        "provider->caller: corr {rcorr:.3} at {at:.0} ms (worst 250 ms piece {pcorr:.3}), longest gap {rgap} ms, heard {heard_ms:.0} ms of {} ms",
        reply.duration_ms()
    );
    assert!(
        pcorr >= 0.9,
        "reply's worst piece correlates {pcorr:.3}\n{ctx}"
    );
    assert!(rgap <= 40.0, "{rgap} ms dropout inside the reply\n{ctx}");
    assert!(
        (heard_ms - reply.duration_ms()).abs() <= 20.0,
        "heard {heard_ms} ms of reply\n{ctx}"
    );

    // Transcripts and the turn's latency (VAD end of turn -> first agent audio).
    let roles: Vec<&str> = info["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["role"].as_str())
        .collect();
    assert!(
        roles.contains(&"user") && roles.contains(&"agent"),
        "{info}"
    );
    let turns = info["turns"].as_array().unwrap();
    assert!(!turns.is_empty(), "no turn latency recorded: {info}\n{ctx}");
    let total = turns[0]["total_ms"].as_u64().unwrap();
    eprintln!("turn latency {total} ms (fake answers after 800 ms of audio-time silence)");
    assert!(total < 2000, "turn latency {total} ms: {info}");
}

#[test]
fn dtmf_reaches_the_provider() {
    if require_peer("sipp").is_none() {
        return;
    }
    let Some(fake) = Fake::start("fake_avr_sts.py", &[]) else {
        return;
    };
    let server = Server::start(&profile(&sts_route("sts", &ws(&fake), "")));
    let out = run_scenario("dtmf.xml", server.sip_port, "sts", &[]);
    assert!(out.success, "{}", out.report());
    server.wait_idle(Duration::from_secs(10));
    let digits: String = fake
        .markers("dtmf")
        .iter()
        .filter_map(|m| m["digit"].as_str())
        .collect();
    let ctx = format!("{}\n{}", fake.events_text(), server.log_text());
    assert!(
        digits.starts_with("123#"),
        "digits at the provider: {digits:?}\n{ctx}"
    );
    // The socket was closed by us at the end of the call, not dropped.
    let closed = fake
        .wait_marker("closed", Duration::from_secs(2))
        .expect("closed");
    assert_eq!(closed["reason"], "client closed", "{ctx}");
}

#[test]
fn provider_interruption_drops_the_queued_reply() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reply = audio::chirp(4000, 300.0, 2500.0, 0.25);
    let reply_wav = write(tmp.path(), "reply.wav", &reply);
    // The caller talks 1 s, pauses 0.9 s (the provider answers after 0.4 s
    // of silence with 4 s of audio, sent in one burst), then talks over the
    // reply until the call ends: the provider sends `interruption`.
    let mut caller = noise(1000, 0.2, 1);
    caller.extend(vec![0.0; 7200]);
    caller.extend(noise(3000, 0.2, 2));
    let caller_wav = write(tmp.path(), "caller.wav", &Audio::new(8000, caller));
    let Some(fake) = Fake::start(
        "fake_avr_sts.py",
        &["--reply-wav", reply_wav.to_str().unwrap()],
    ) else {
        return;
    };
    // barge_in = false: our own VAD does not clear anything, so whatever
    // is cut was cut by the provider's interruption.
    let server = Server::start(&profile(&sts_route("sts", &ws(&fake), "barge_in = false")));
    let (out, id) = call(&server, "sts", Some(&caller_wav), 0, 0);
    let ctx = format!("{}\n{}", out.summary(), server.log_text());
    let barge = fake.markers("barge_in_detected");
    assert!(
        !barge.is_empty(),
        "the fake saw no barge-in: {}\n{ctx}",
        fake.events_text()
    );
    let sent_interruption = fake
        .events()
        .iter()
        .any(|e| e["dir"] == "out" && e["type"] == "interruption");
    assert!(sent_interruption, "{ctx}");
    let info = call_info(&server, &id.expect("call id"));
    assert!(info["interruptions"].as_u64().unwrap() >= 1, "{info}");

    // The phone heard the start of the reply, then nothing: the rest of the
    // 4 s burst was dropped at once.
    let heard = out.heard().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let h8 = heard.to_8k();
    let (s, e) = audio::speech_region(&h8).unwrap_or_else(|| panic!("nothing heard\n{ctx}"));
    let heard_ms = (e - s) as f64 / 8.0;
    let into = barge[0]["into_reply_ms"].as_f64().unwrap_or(-1.0);
    let head = Audio::new(8000, reply.samples[..8 * 300].to_vec());
    let (_, corr) = audio::find_segment(&h8, &head).expect("reply start heard");
    eprintln!("barge-in {into:.0} ms into the reply; phone heard {heard_ms:.0} ms of the 4000 ms reply (start corr {corr:.3})");
    assert!(corr >= 0.9, "the reply's start was heard: {corr:.3}\n{ctx}");
    assert!(heard_ms >= 200.0, "heard {heard_ms} ms\n{ctx}");
    assert!(
        heard_ms <= into + 400.0 && heard_ms < 1600.0,
        "reply went on for {heard_ms} ms after a barge-in {into} ms into it\n{ctx}"
    );
}

/// Fallback timing: the caller hears the fallback's greeting this long after
/// the first provider went away (measured on the phone's clock).
#[test]
fn provider_dropping_mid_call_fails_over_within_a_second() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a_reply = audio::chirp(1000, 2500.0, 500.0, 0.25);
    let b_reply = audio::chirp(1500, 400.0, 3000.0, 0.25);
    let a_wav = write(tmp.path(), "a.wav", &a_reply);
    let b_wav = write(tmp.path(), "b.wav", &b_reply);
    let Some(a) = Fake::start(
        "fake_avr_sts.py",
        &[
            "--greeting",
            "--reply-wav",
            a_wav.to_str().unwrap(),
            "--mode",
            "disconnect-after:1500",
        ],
    ) else {
        return;
    };
    let Some(b) = Fake::start(
        "fake_avr_sts.py",
        &["--greeting", "--reply-wav", b_wav.to_str().unwrap()],
    ) else {
        return;
    };
    let fallback = format!(
        "fallback = [ {{ kind = \"avr_sts\", url = \"{}\" }} ]",
        ws(&b)
    );
    let server = Server::start(&profile(&sts_route("sts", &ws(&a), &fallback)));
    let (out, id) = call(&server, "sts", None, 0, 5000);
    let ctx = format!(
        "A:\n{}\nB:\n{}\n{}\n{}",
        a.events_text(),
        b.events_text(),
        out.summary(),
        server.log_text()
    );
    let disconnect = a.markers("disconnect");
    assert_eq!(disconnect.len(), 1, "{ctx}");
    let t_disc = disconnect[0]["ts"].as_f64().unwrap();
    let t_b = first_audio_out(&b).unwrap_or_else(|| panic!("the fallback never spoke\n{ctx}"));
    let provider_gap_ms = (t_b - t_disc) * 1000.0;

    // The phone heard both greetings whole. (Its recording holds only the
    // packets it received: the server sends nothing while the agent is
    // silent, so the gap itself is measured on the providers' clock, and
    // the server plays what arrives within a 20 ms tick.)
    // On the phone's clock (RTP flows through silence): where A's greeting
    // was heard maps the fakes' clock onto it.
    let aligned = out.heard_aligned().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let (at_a_phone, _) = audio::find_segment(&aligned, &a_reply).expect("A heard");
    let (at_b_phone, _) = audio::find_segment(&aligned, &b_reply).expect("B heard");
    let disc_on_phone = at_a_phone + (t_disc - first_audio_out(&a).unwrap()) * 1000.0;
    let heard_gap_ms = at_b_phone - disc_on_phone;
    eprintln!("failover heard on the phone {heard_gap_ms:.0} ms after the drop");
    assert!(
        heard_gap_ms < 1000.0,
        "phone heard the fallback {heard_gap_ms:.0} ms after the drop\n{ctx}"
    );
    let heard = out.heard().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let (_, corr_a) = audio::find_segment(&heard, &a_reply).expect("A heard");
    let (at_b, corr_b) = audio::find_segment(&heard, &b_reply).expect("B heard");
    let b_gap = audio::longest_gap_ms(&b_reply, &heard, at_b);
    eprintln!(
        "failover: fallback sent audio {provider_gap_ms:.0} ms after the disconnect \
         (A corr {corr_a:.3}, B corr {corr_b:.3}, B longest gap {b_gap} ms)"
    );
    assert!(corr_a >= 0.9 && corr_b >= 0.9, "{ctx}");
    assert!(
        provider_gap_ms < 1000.0,
        "fallback spoke {provider_gap_ms:.0} ms after the drop\n{ctx}"
    );
    assert!(b_gap <= 40.0, "{ctx}");
    let info = call_info(&server, &id.expect("call id"));
    assert!(
        info["last_agent_error"]
            .as_str()
            .is_some_and(|e| e.contains("avr_sts") || e.contains("ws://")),
        "{info}"
    );
}

#[test]
fn provider_down_at_call_start_fails_over_at_once() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b_reply = audio::chirp(1500, 400.0, 3000.0, 0.25);
    let b_wav = write(tmp.path(), "b.wav", &b_reply);
    let Some(b) = Fake::start(
        "fake_avr_sts.py",
        &["--greeting", "--reply-wav", b_wav.to_str().unwrap()],
    ) else {
        return;
    };
    let down = format!("ws://127.0.0.1:{}", free_port());
    let fallback = format!(
        "fallback = [ {{ kind = \"avr_sts\", url = \"{}\" }} ]",
        ws(&b)
    );
    let server = Server::start(&profile(&sts_route("sts", &down, &fallback)));
    let (out, id) = call(&server, "sts", None, 0, 3000);
    let ctx = format!(
        "{}\n{}\n{}",
        b.events_text(),
        out.summary(),
        server.log_text()
    );
    assert!(
        b.wait_marker("init", Duration::from_secs(1)).is_some(),
        "{ctx}"
    );
    let info = call_info(&server, &id.expect("call id"));
    let answered = info["answered_at_unix_ms"].as_f64().expect("answered") / 1000.0;
    let t_b = first_audio_out(&b).unwrap_or_else(|| panic!("the fallback never spoke\n{ctx}"));
    let after_answer_ms = (t_b - answered) * 1000.0;
    let heard = out.heard().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let (at, corr) =
        audio::find_segment(&heard, &b_reply).unwrap_or_else(|| panic!("nothing heard\n{ctx}"));
    let gap = audio::longest_gap_ms(&b_reply, &heard, at);
    eprintln!("provider down: fallback spoke {after_answer_ms:.0} ms after the answer (corr {corr:.3}, gap {gap} ms)");
    assert!(corr >= 0.9 && gap <= 40.0, "{ctx}");
    assert!(
        after_answer_ms < 1000.0,
        "fallback spoke {after_answer_ms:.0} ms after the answer\n{ctx}"
    );
    assert!(
        info["last_agent_error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{info}"
    );
}

#[test]
fn garbage_from_the_provider_is_ignored_and_the_call_goes_on() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a_reply = audio::chirp(1500, 2500.0, 500.0, 0.25);
    let a_wav = write(tmp.path(), "a.wav", &a_reply);
    let Some(a) = Fake::start(
        "fake_avr_sts.py",
        &[
            "--greeting",
            "--reply-wav",
            a_wav.to_str().unwrap(),
            "--mode",
            "garbage",
        ],
    ) else {
        return;
    };
    let Some(b) = Fake::start("fake_avr_sts.py", &["--greeting"]) else {
        return;
    };
    let fallback = format!(
        "fallback = [ {{ kind = \"avr_sts\", url = \"{}\" }} ]",
        ws(&b)
    );
    let server = Server::start(&profile(&sts_route("sts", &ws(&a), &fallback)));
    let (out, _) = call(&server, "sts", None, 0, 3000);
    let ctx = format!(
        "{}\n{}\n{}",
        a.events_text(),
        out.summary(),
        server.log_text()
    );
    assert!(out.facts.call_established, "{ctx}");
    assert!(
        a.markers("client_error").is_empty(),
        "we answered garbage with garbage\n{ctx}"
    );
    assert!(
        b.markers("connected").is_empty(),
        "no failover was needed\n{ctx}"
    );
    let heard = out.heard().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let (_, corr) =
        audio::find_segment(&heard, &a_reply).unwrap_or_else(|| panic!("nothing heard\n{ctx}"));
    assert!(corr >= 0.9, "{ctx}");
    assert_eq!(server.health()["status"], "ok", "{}", server.health());
}

/// avr-sts-ultravox sends `interruption` whenever it goes back to
/// listening, i.e. when its reply's play time ends on its own clock. Our
/// playout runs a little behind that clock, so such an interruption may
/// clip the very end of the reply: this bounds how much.
#[test]
fn interruption_at_the_end_of_a_reply_clips_at_most_its_last_frames() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reply = audio::chirp(2000, 300.0, 2500.0, 0.25);
    let reply_wav = write(tmp.path(), "reply.wav", &reply);
    let Some(fake) = Fake::start(
        "fake_avr_sts.py",
        &[
            "--greeting",
            "--spurious-interruption",
            "--reply-wav",
            reply_wav.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let server = Server::start(&profile(&sts_route("sts", &ws(&fake), "")));
    let (out, id) = call(&server, "sts", None, 0, 4000);
    let ctx = format!(
        "{}\n{}\n{}",
        fake.events_text(),
        out.summary(),
        server.log_text()
    );
    let sent = fake
        .events()
        .iter()
        .any(|e| e["dir"] == "out" && e["type"] == "interruption");
    assert!(sent, "the fake sent no interruption\n{ctx}");
    let info = call_info(&server, &id.expect("call id"));
    assert!(info["interruptions"].as_u64().unwrap() >= 1, "{info}");
    let heard = out.heard().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let h8 = heard.to_8k();
    let (s, e) = audio::speech_region(&h8).unwrap_or_else(|| panic!("nothing heard\n{ctx}"));
    let heard_ms = (e - s) as f64 / 8.0;
    eprintln!("spurious interruption at the reply's end: heard {heard_ms:.0} of 2000 ms");
    assert!(heard_ms >= 1900.0, "heard {heard_ms} ms of 2000\n{ctx}");
}
