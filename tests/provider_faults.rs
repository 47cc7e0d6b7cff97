#![allow(clippy::unwrap_used)]
//! Provider faults on real calls (baresip dials, the fake providers of
//! tests/fakes answer) that the per-agent tests do not cover: a provider
//! that never answers its handshake (with and without a fallback), a slow
//! first byte (heard when it comes within the connect timeout, replaced
//! when it does not), audio in a format that was not asked for, and a
//! provider streaming audio faster than real time for ever. Each ends in
//! the provider heard, the fallback heard, or a clean hang-up with the
//! reason - never a silent call.
//! (Mid-stream disconnects, 5xx and invalid JSON are covered per agent in
//! agent_avr_sts, agent_audiosocket, agent_openai_compat and
//! agent_avr_pipeline.)

mod common;
#[path = "common/pipeline.rs"]
mod pipeline;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::audio::{self, Audio};
use common::fakes::Fake;
use common::{finished_cdr, require_peer, Server};
use pipeline::{call, call_info};

fn write(dir: &Path, name: &str, a: &Audio) -> PathBuf {
    let p = dir.join(name);
    audio::write_wav(&p, a).unwrap();
    p
}

fn silence(dir: &Path, ms: u32) -> PathBuf {
    write(
        dir,
        "silence.wav",
        &Audio::new(8000, vec![0.0; (8 * ms) as usize]),
    )
}

/// Deterministic white noise (caller "speech" for the fakes' energy VAD).
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

fn sts(fake: &Fake) -> String {
    format!(
        "{{ kind = \"avr_sts\", url = \"ws://127.0.0.1:{}\" }}",
        fake.port
    )
}

fn server(agent: &str, extra: &str) -> Server {
    Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"p\"\nagent = {agent}\n{extra}\n"
    ))
}

fn say_fallback(wav: &Path) -> String {
    format!(
        "fallback = [ {{ kind = \"say\", wav = \"{}\", then = \"listen\" }} ]",
        wav.display()
    )
}

/// Where `want` starts in what the phone heard, on the clock of what it
/// sent (0 = the call established), and how well it matched.
fn heard_at(out: &common::baresip::Outcome, want: &Audio, ctx: &str) -> Option<(f64, f64)> {
    let heard = out.heard_aligned().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    audio::find_segment(&heard, want)
}

#[test]
fn a_slow_first_byte_is_waited_for_and_a_too_slow_one_is_replaced() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a_reply = audio::chirp(1000, 2500.0, 500.0, 0.25);
    let b_reply = audio::chirp(1500, 400.0, 3000.0, 0.25);
    let a_wav = write(tmp.path(), "a.wav", &a_reply);
    let b_wav = write(tmp.path(), "b.wav", &b_reply);
    let quiet = silence(tmp.path(), 7000);
    let mut report = Vec::new();
    for (delay_ms, provider_heard) in [(1500u32, true), (5000, false)] {
        let mode = format!("slow-start:{delay_ms}");
        let Some(a) = Fake::start(
            "fake_avr_sts.py",
            &[
                "--greeting",
                "--reply-wav",
                a_wav.to_str().unwrap(),
                "--mode",
                &mode,
            ],
        ) else {
            return;
        };
        let server = server(&sts(&a), &say_fallback(&b_wav));
        let (out, id) = call(&server, "p", &quiet, 0);
        let ctx = format!(
            "{mode}\n{}\n{}\n{}",
            a.events_text(),
            out.summary(),
            server.log_text()
        );
        let info = call_info(&server, &id.unwrap_or_else(|| panic!("no call\n{ctx}")));
        let a_heard = heard_at(&out, &a_reply, &ctx).filter(|(_, c)| *c >= 0.9);
        let b_heard = heard_at(&out, &b_reply, &ctx).filter(|(_, c)| *c >= 0.9);
        report.push(format!(
            "{mode}: provider {a_heard:?}, fallback {b_heard:?}"
        ));
        if provider_heard {
            let (at, _) =
                a_heard.unwrap_or_else(|| panic!("the slow provider was not heard\n{ctx}"));
            assert!(
                b_heard.is_none(),
                "the fallback took over a provider 1.5 s slow\n{ctx}"
            );
            assert!(
                (delay_ms as f64..delay_ms as f64 + 1500.0).contains(&at),
                "greeting heard at {at:.0} ms\n{ctx}"
            );
            assert!(info["last_agent_error"].is_null(), "{info}");
        } else {
            let (at, _) = b_heard.unwrap_or_else(|| panic!("no fallback heard\n{ctx}"));
            assert!(a_heard.is_none(), "{ctx}");
            // The handshake timeout is 3 s: the fallback speaks then.
            assert!(
                (2500.0..4500.0).contains(&at),
                "fallback heard {at:.0} ms after the answer\n{ctx}"
            );
            let err = info["last_agent_error"].as_str().unwrap_or_default();
            assert!(err.contains("no answer within"), "{info}");
        }
    }
    eprintln!("slow start: {}", report.join("; "));
}

#[test]
fn a_provider_that_never_answers_without_a_fallback_ends_the_call_as_an_agent_error() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Accepts TCP, never answers the WebSocket handshake.
    let Some(a) = Fake::start(
        "fake_avr_sts.py",
        &["--greeting", "--mode", "slow-start:60000"],
    ) else {
        return;
    };
    let server = server(&sts(&a), "");
    let started = Instant::now();
    let (out, id) = call(&server, "p", &silence(tmp.path(), 15_000), 0);
    let took = started.elapsed();
    let ctx = format!(
        "{}\n{}\n{}",
        a.events_text(),
        out.summary(),
        server.log_text()
    );
    let id = id.unwrap_or_else(|| panic!("no call\n{ctx}"));
    let cdr = finished_cdr(&server, &id);
    let info = call_info(&server, &id);
    eprintln!(
        "never answers: call over after {:.1} s, end_reason {:?}, hung_up_by {:?}",
        took.as_secs_f64(),
        cdr["end_reason"],
        cdr["hung_up_by"]
    );
    let reason = cdr["end_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("agent error: ") && reason.contains("no answer within"),
        "{cdr}\n{ctx}"
    );
    assert_eq!(info["end_reason"], cdr["end_reason"], "{info}");
    assert_eq!(cdr["hung_up_by"], "error", "{cdr}");
    // The server hung up (BYE) after the 3 s handshake timeout, long before
    // the phone's 15 s were over.
    let got_bye = out
        .facts
        .messages
        .iter()
        .any(|m| !m.outgoing && m.status.is_none() && m.method.eq_ignore_ascii_case("BYE"));
    assert!(got_bye, "the phone got no BYE\n{}\n{ctx}", out.sip_flow());
    let dur = cdr["duration_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(
        (2500.0..6000.0).contains(&dur),
        "call lasted {dur} ms\n{ctx}"
    );
}

#[test]
fn audio_in_a_format_not_asked_for_is_a_counted_error_and_the_fallback_takes_over() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b_reply = audio::chirp(1500, 400.0, 3000.0, 0.25);
    let b_wav = write(tmp.path(), "b.wav", &b_reply);
    // The TTS answers a 32-bit float WAV where s16 PCM was asked for.
    let Some(a) = Fake::start("fake_openai_compat.py", &["--speech-float-wav"]) else {
        return;
    };
    let agent = format!(
        "{{ kind = \"openai_compat\", base_url = \"http://127.0.0.1:{}/v1\" }}",
        a.port
    );
    let extra = format!(
        "greeting = \"Welcome to the test line.\"\nresponse_timeout_ms = 2000\n{}",
        say_fallback(&b_wav)
    );
    let server = server(&agent, &extra);
    let errors_before = server.metric("agentline_provider_errors_total{kind=\"error\"}");
    let (path, _) = pipeline::two_phrases(tmp.path());
    let (out, id) = call(&server, "p", &path, 3000);
    let ctx = format!(
        "{}\n{}\n{}",
        a.events_text(),
        out.summary(),
        server.log_text()
    );
    let info = call_info(&server, &id.unwrap_or_else(|| panic!("no call\n{ctx}")));
    assert!(
        !a.markers("float_wav_sent").is_empty(),
        "the fake never answered\n{ctx}"
    );
    let errors = server.metric("agentline_provider_errors_total{kind=\"error\"}") - errors_before;
    let failovers = server.metric("agentline_provider_failovers_total");
    let err = info["last_agent_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let b = heard_at(&out, &b_reply, &ctx);
    eprintln!("float WAV: {errors} provider errors, {failovers} failovers, fallback heard {b:?}, last error {err:?}");
    assert!(errors >= 1.0, "the wrong format was not counted\n{ctx}");
    assert!(err.contains("wrong audio format"), "{info}");
    let (_, corr) = b.unwrap_or_else(|| panic!("silent call: no fallback heard\n{ctx}"));
    assert!(corr >= 0.9, "{ctx}");
    assert!(failovers >= 1.0, "{ctx}");
    // The server is fine.
    let _ = server.health();
}

#[test]
fn endless_audio_is_capped_and_a_barge_in_still_clears_it() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reply = audio::chirp(1000, 300.0, 2500.0, 0.25);
    let reply_wav = write(tmp.path(), "reply.wav", &reply);
    // 100 times real time, for ever: 100 s of audio every second.
    let Some(a) = Fake::start(
        "fake_avr_sts.py",
        &[
            "--reply-wav",
            reply_wav.to_str().unwrap(),
            "--endless",
            "100",
        ],
    ) else {
        return;
    };
    // The caller listens 8 s, then talks until the call ends.
    let mut caller = vec![0.0; 8 * 8000];
    caller.extend(noise(4000, 0.2, 7));
    let caller_wav = write(tmp.path(), "caller.wav", &Audio::new(8000, caller));
    // barge_in = false: the provider's `interruption` is what must clear
    // the 30 s of audio queued.
    let server = server(&sts(&a), "barge_in = false");
    let pid = server.pid().unwrap();
    let rss_before = common::rss_kb(pid);
    let (out, id) = call(&server, "p", &caller_wav, 0);
    let rss_after = common::rss_kb(pid);
    let ctx = format!(
        "{}\n{}\n{}",
        a.events_text()
            .lines()
            .take(60)
            .collect::<Vec<_>>()
            .join("\n"),
        out.summary(),
        server.log_text()
    );
    let id = id.unwrap_or_else(|| panic!("no call\n{ctx}"));
    let cdr = finished_cdr(&server, &id);
    let stopped = a.markers("endless_stopped");
    let barge = a.markers("barge_in_detected");
    let started = a.markers("endless_started");
    assert!(
        !started.is_empty() && !barge.is_empty() && !stopped.is_empty(),
        "{ctx}"
    );
    let sent_ms = stopped[0]["sent_ms"].as_f64().unwrap();
    let capped_ms = cdr["media"]["tx_capped_ms"].as_f64().unwrap_or(0.0);
    let streamed_s = barge[0]["ts"].as_f64().unwrap() - started[0]["ts"].as_f64().unwrap();
    let metric = server.metric("agentline_playout_capped_frames_total");
    // What the call took in: everything sent but what the cap refused.
    let taken_ms = sent_ms - capped_ms;
    eprintln!(
        "endless: provider sent {:.0} s of audio in {streamed_s:.1} s; {:.0} s dropped at the \
         cap, {:.1} s taken; server RSS {rss_before} -> {rss_after} kB (+{} kB); metric {metric}",
        sent_ms / 1000.0,
        capped_ms / 1000.0,
        taken_ms / 1000.0,
        rss_after.saturating_sub(rss_before)
    );
    assert!(
        sent_ms > 100_000.0,
        "the provider was not faster than real time\n{ctx}"
    );
    // Taken: what played until the barge-in plus at most the 30 s cap.
    assert!(
        taken_ms <= streamed_s * 1000.0 + 30_000.0 + 2000.0,
        "the queue grew past the cap: {taken_ms} ms taken\n{cdr}"
    );
    assert!(
        metric * 20.0 >= capped_ms - 20.0 && capped_ms > 0.0,
        "{metric} {cdr}"
    );
    // Uncapped, the 770 s dropped would be 12 MB of queued samples (more
    // with the queue's doubling); capped, the call holds 30 s (480 kB).
    assert!(
        rss_after.saturating_sub(rss_before) < 8 * 1024,
        "RSS grew {rss_before} -> {rss_after} kB"
    );
    // The caller heard the agent while it streamed: its audio (the reply,
    // looped) from the start to the barge-in without a gap over 300 ms ...
    let heard = out.heard_aligned().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let (_, corr) =
        audio::find_segment(&heard, &reply).unwrap_or_else(|| panic!("nothing heard\n{ctx}"));
    let (from, to) = pipeline::sound_after(&heard, 0.0).unwrap_or_else(|| panic!("silent\n{ctx}"));
    let into_ms = barge[0]["audio_ms"].as_f64().unwrap_or(8000.0);
    eprintln!(
        "endless: agent heard {from:.0}-{to:.0} ms (corr {corr:.3}), barge-in at {into_ms:.0} ms"
    );
    assert!(corr >= 0.9, "{ctx}");
    assert!(
        from < 1500.0 && to >= into_ms - 500.0,
        "agent heard only {from:.0}-{to:.0} ms, barge-in at {into_ms:.0}\n{ctx}"
    );
    // ... and, once the caller talked over it, the 30 s queued were
    // dropped: silence from shortly after the barge-in to the end.
    let after = pipeline::sound_after(&heard, into_ms + 1000.0);
    assert!(
        after.is_none(),
        "agent audio still heard after the barge-in at {into_ms} ms: {after:?}\n{ctx}"
    );
    assert!(cdr["interruptions"].as_u64().unwrap_or(0) >= 1, "{cdr}");
}
