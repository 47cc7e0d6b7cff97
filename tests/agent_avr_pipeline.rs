#![allow(clippy::unwrap_used)]
//! The `avr_pipeline` agent against the fake AVR ASR/LLM/TTS containers,
//! called from baresip: the whole call streams to the ASR as 8 kHz l16 in
//! one chunked request (X-UUID), each transcript goes to the LLM with the
//! history, each sentence of its streamed answer (without `<think>`) goes to
//! the TTS, and the caller hears that audio intact and paced. A broken
//! provider is survived and the route's fallback answers.

mod common;
#[path = "common/pipeline.rs"]
mod pipeline;

use common::audio;
use common::fakes::Fake;
use common::{require_peer, Server};
use pipeline::*;

const TRANSCRIPT: &str = "I would like to book an appointment";

fn avr(port: u16) -> String {
    format!(
        "{{ kind = \"avr_pipeline\", asr_url = \"http://127.0.0.1:{port}/speech-to-text-stream\", \
         llm_url = \"http://127.0.0.1:{port}/prompt-stream\", \
         tts_url = \"http://127.0.0.1:{port}/text-to-speech-stream\", system = \"Be brief.\" }}"
    )
}

fn profile(agent: &str, fallback: &str) -> String {
    format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n\
         [[routes]]\ndial = \"bot\"\nagent = {agent}\n{fallback}\
         dsp = {{ vad = true }}\nresponse_timeout_ms = 2000\n"
    )
}

#[test]
fn call_streams_to_asr_and_the_answer_is_spoken_sentence_by_sentence() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reply_path, reply) = reply_wav(tmp.path());
    let Some(fake) = Fake::start(
        "fake_avr_pipeline.py",
        &[
            "--think",
            "--transcript",
            TRANSCRIPT,
            "--reply-wav",
            reply_path.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let server = Server::start(&profile(&avr(fake.port), ""));
    let (wav, sent) = two_phrases(tmp.path());
    let (out, id) = call(&server, "bot", &wav, 5000);
    let ctx = || {
        format!(
            "{}\n--- fake ---\n{}\n{}",
            out.summary(),
            fake.events_text(),
            server.log_text()
        )
    };
    let id = id.unwrap_or_else(|| panic!("no call id: {}", ctx()));
    let info = call_info(&server, &id);
    print_turns("avr_pipeline", &info);

    // One streaming ASR request for the whole call, with the call's UUID.
    let asr: Vec<serde_json::Value> = fake
        .events()
        .into_iter()
        .filter(|e| e["dir"] == "in" && e["route"] == "asr" && e["http"] == "POST")
        .collect();
    assert_eq!(asr.len(), 1, "{}", ctx());
    assert_eq!(asr[0]["x_uuid"], info["uuid"], "{}", ctx());
    assert!(asr[0]["content_type"]
        .as_str()
        .unwrap_or_default()
        .starts_with("audio/l16"));
    assert_eq!(asr[0]["transfer_encoding"], "chunked");
    // The fake recorded 8 kHz audio as long as the call that carries both
    // phrases.
    // Read the recording once the fake closed the ASR stream (written last).
    assert!(
        fake.wait_marker("closed", std::time::Duration::from_secs(5))
            .is_some(),
        "ASR stream never closed: {}",
        ctx()
    );
    let (input, winfo) = audio::read_wav_info(&fake.input_wav()).unwrap();
    assert_eq!(winfo.rate, 8000);
    assert!(
        (input.duration_ms() - (sent.duration_ms() + 5000.0)).abs() < 1500.0,
        "ASR heard {} ms of a {} ms call",
        input.duration_ms(),
        sent.duration_ms() + 5000.0
    );
    let sp = speech();
    // Piece by piece (250 ms, each within 45 ms of the last): a frame the
    // jitter buffer concealed on a loaded machine shifts the rest of a
    // phrase without losing any of it; dropped or garbled speech fails.
    let w1 = window(&input, 0.0, 6000.0);
    let (off1, c1) = audio::find_segment(&w1, &sp).unwrap();
    let p1 = audio::worst_piece_corr(&w1, &sp, off1, 250.0, 45.0);
    assert!(
        p1 >= 0.9,
        "first phrase at the ASR: corr {c1:.2}, worst piece {p1:.2}"
    );
    let w2 = window(&input, off1 + sp.duration_ms(), input.duration_ms());
    let (off2, c2) = audio::find_segment(&w2, &sp).unwrap();
    let p2 = audio::worst_piece_corr(&w2, &sp, off2, 250.0, 45.0);
    assert!(
        p2 >= 0.9,
        "second phrase at the ASR: corr {c2:.2}, worst piece {p2:.2}"
    );
    assert!(
        ((off2 + sp.duration_ms()) - (sp.duration_ms() + GAP_MS as f64)).abs() < 100.0,
        "the phrases arrive {} ms apart (sent {GAP_MS} ms apart): real time, nothing dropped",
        off2
    );
    assert_eq!(fake.markers("transcript_sent").len(), 2, "{}", ctx());

    // LLM: the transcript with the history (our answer without <think>).
    let llm: Vec<serde_json::Value> = fake
        .events()
        .into_iter()
        .filter(|e| e["dir"] == "in" && e["route"] == "llm" && e["body"].is_object())
        .map(|e| e["body"].clone())
        .collect();
    assert_eq!(llm.len(), 2, "{}", ctx());
    for b in &llm {
        assert_eq!(b["uuid"], info["uuid"]);
        assert_eq!(b["message"], TRANSCRIPT);
    }
    let msgs = |b: &serde_json::Value| -> Vec<(String, String)> {
        b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["content"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let s = |r: &str, c: &str| (r.to_string(), c.to_string());
    assert_eq!(
        msgs(&llm[0]),
        vec![s("system", "Be brief."), s("user", TRANSCRIPT)]
    );
    assert_eq!(
        msgs(&llm[1]),
        vec![
            s("system", "Be brief."),
            s("user", TRANSCRIPT),
            s("assistant", "Hello caller. How can I help?"),
            s("user", TRANSCRIPT)
        ]
    );
    let tts: Vec<String> = fake
        .markers("tts_text")
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        tts,
        vec![
            "Hello caller.",
            "How can I help?",
            "Hello caller.",
            "How can I help?"
        ],
        "{}",
        ctx()
    );

    // The caller heard both answers, each sentence's audio back to back.
    let p1 = spoken_end_ms();
    let p2 = p1 + speech().duration_ms() + GAP_MS as f64;
    assert_reply_after(&out, &reply, p1, 2);
    assert_reply_after(&out, &reply, p2, 2);
    let ts = |m: &serde_json::Value| m["ts"].as_f64().unwrap();
    let sent_tr = fake.markers("transcript_sent");
    let replies = fake.markers("reply_started");
    assert!(
        ts(&sent_tr[0]) < ts(&replies[0]) && ts(&replies[1]) < ts(&sent_tr[1]),
        "{}",
        ctx()
    );

    let lines: Vec<(String, String)> = info["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["role"].as_str().unwrap().to_string(),
                l["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            s("user", TRANSCRIPT),
            s("agent", "Hello caller. How can I help?"),
            s("user", TRANSCRIPT),
            s("agent", "Hello caller. How can I help?")
        ],
        "{info}"
    );
    let turns = info["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "{info}");
    for t in turns {
        assert!(t["total_ms"].as_u64().unwrap() < 1500, "{t}");
        assert!(
            t["asr_ms"].is_u64()
                && t["llm_first_token_ms"].is_u64()
                && t["tts_first_byte_ms"].is_u64(),
            "{t}"
        );
    }
    assert!(info["last_agent_error"].is_null(), "{info}");
}

/// The LLM connection is cut mid-answer: no half sentence is spoken, the
/// error is recorded, the call goes on, and the fallback pipeline answers
/// the next phrase.
#[test]
fn llm_disconnect_is_survived_and_the_fallback_answers() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reply_path, reply) = reply_wav(tmp.path());
    let Some(bad) = Fake::start(
        "fake_avr_pipeline.py",
        &["--fail-route", "llm", "--mode", "disconnect-after:25"],
    ) else {
        return;
    };
    let Some(good) = Fake::start(
        "fake_avr_pipeline.py",
        &[
            "--llm-text",
            "Fallback here.",
            "--reply-wav",
            reply_path.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let server = Server::start(&profile(
        &avr(bad.port),
        &format!("fallback = [ {} ]\n", avr(good.port)),
    ));
    let (wav, _) = two_phrases(tmp.path());
    let (out, id) = call(&server, "bot", &wav, 5000);
    let ctx = || {
        format!(
            "{}\n--- bad ---\n{}\n--- good ---\n{}\n{}",
            out.summary(),
            bad.events_text(),
            good.events_text(),
            server.log_text()
        )
    };
    let id = id.unwrap_or_else(|| panic!("no call id: {}", ctx()));
    assert_eq!(bad.markers("llm_request").len(), 1, "{}", ctx());
    assert!(!bad.markers("disconnect").is_empty(), "{}", ctx());
    assert!(
        bad.markers("tts_text").is_empty(),
        "nothing of the cut answer spoken: {}",
        ctx()
    );
    let info = call_info(&server, &id);
    assert!(info["last_agent_error"].as_str().is_some(), "{info}");
    assert_eq!(info["end_reason"], "caller hung up", "{info}");
    let tts: Vec<String> = good
        .markers("tts_text")
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tts, vec!["Fallback here."], "{}", ctx());
    let p1 = spoken_end_ms();
    let p2 = p1 + speech().duration_ms() + GAP_MS as f64;
    assert_silent_between(&out, p1 + 100.0, p2);
    assert_reply_after(&out, &reply, p2, 1);
}

/// An ASR answering 500 fails the provider at once: the fallback takes
/// the call before the caller finished the first phrase and answers both.
#[test]
fn asr_500_fails_over_at_once() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reply_path, reply) = reply_wav(tmp.path());
    let Some(bad) = Fake::start(
        "fake_avr_pipeline.py",
        &["--fail-route", "asr", "--mode", "http500"],
    ) else {
        return;
    };
    let Some(good) = Fake::start(
        "fake_avr_pipeline.py",
        &[
            "--llm-text",
            "Fallback here.",
            "--reply-wav",
            reply_path.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let server = Server::start(&profile(
        &avr(bad.port),
        &format!("fallback = [ {} ]\n", avr(good.port)),
    ));
    let (wav, _) = two_phrases(tmp.path());
    let (out, id) = call(&server, "bot", &wav, 5000);
    let ctx = || {
        format!(
            "{}\n--- good ---\n{}\n{}",
            out.summary(),
            good.events_text(),
            server.log_text()
        )
    };
    let id = id.unwrap_or_else(|| panic!("no call id: {}", ctx()));
    assert!(!bad.markers("http500").is_empty(), "{}", ctx());
    assert_eq!(good.markers("tts_text").len(), 2, "{}", ctx());
    let info = call_info(&server, &id);
    assert_eq!(info["end_reason"], "caller hung up", "{info}");
    let p1 = spoken_end_ms();
    let p2 = p1 + speech().duration_ms() + GAP_MS as f64;
    assert_reply_after(&out, &reply, p1, 1);
    assert_reply_after(&out, &reply, p2, 1);
}
