#![allow(clippy::unwrap_used)]
//! The `openai_compat` agent against the fake OpenAI-compatible services,
//! called from baresip: the caller's phrase is uploaded as a 16 kHz WAV,
//! the transcript (and the history) reaches the chat completion, each
//! sentence of the streamed answer (without `<think>`) is spoken, and the
//! caller hears the speech intact and paced. Failures of one service are
//! errors the call survives, and the route's fallback answers.

mod common;
#[path = "common/pipeline.rs"]
mod pipeline;
#[path = "common/prom.rs"]
mod prom;

use std::time::Duration;

use common::audio;
use common::fakes::Fake;
use common::{require_peer, Server};
use pipeline::*;

const TRANSCRIPT: &str = "I would like to book an appointment";

fn profile(route_agent: &str, fallback: &str) -> String {
    format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n\
         [[routes]]\ndial = \"bot\"\nagent = {route_agent}\n{fallback}\
         dsp = {{ vad = true }}\nresponse_timeout_ms = 2000\n"
    )
}

fn compat(port: u16, extra: &str) -> String {
    format!(
        "{{ kind = \"openai_compat\", base_url = \"http://127.0.0.1:{port}/v1\", \
         system = \"You are a test agent.\", voice = \"nova\"{extra} }}"
    )
}

#[test]
fn caller_speech_is_transcribed_answered_sentence_by_sentence_and_heard() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reply_path, reply) = reply_wav(tmp.path());
    let Some(fake) = Fake::start(
        "fake_openai_compat.py",
        &[
            "--think",
            "--api-key",
            "sk-pipeline-test",
            "--transcript",
            TRANSCRIPT,
            "--reply-wav",
            reply_path.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    std::env::set_var("AGENTLINE_TEST_OAI_KEY", "sk-pipeline-test");
    let server = Server::start(&profile(
        &compat(
            fake.port,
            ", api_key_env = \"AGENTLINE_TEST_OAI_KEY\", llm_model = \"test-llm\"",
        ),
        "",
    ));
    let (wav, _) = two_phrases(tmp.path());
    let (out, id) = call(&server, "bot", &wav, 5000);
    let ctx = || {
        format!(
            "{}\n--- fake ---\n{}\n{}",
            out.summary(),
            fake.events_text(),
            server.log_text()
        )
    };
    let id = id.unwrap_or_else(|| panic!("call never showed in /calls: {}", ctx()));
    assert!(
        fake.markers("auth_failed").is_empty(),
        "bearer key: {}",
        ctx()
    );

    // The caller's phrases reached the ASR as 16 kHz mono WAVs of about the
    // spoken length that carry the phrase.
    let utts = fake.markers("utterance");
    assert_eq!(utts.len(), 2, "two utterances uploaded: {}", ctx());
    let sp = speech();
    let (s0, s1) = audio::speech_region(&sp.to_8k()).unwrap();
    let spoken_ms = (s1 - s0) as f64 / 8.0;
    for u in &utts {
        assert_eq!(u["rate"], 16000, "{u}");
        assert_eq!(u["channels"], 1, "{u}");
        assert_eq!(u["model"], "whisper-1", "{u}");
        let d = u["duration_ms"].as_f64().unwrap();
        assert!(
            d >= spoken_ms - 200.0 && d <= spoken_ms + 1000.0,
            "utterance {d} ms for {spoken_ms} ms of speech: {u}"
        );
        let (a, info) =
            audio::read_wav_info(&fake.record.path().join(u["file"].as_str().unwrap())).unwrap();
        assert_eq!((info.rate, info.channels), (16000, 1));
        let (at, corr) = audio::find_segment(&a, &sp).unwrap();
        // Piece by piece (250 ms, each within 45 ms of the last): a 20 ms
        // frame the jitter buffer concealed or stretched on a loaded
        // machine shifts the rest of a phrase, which whole-phrase
        // correlation punishes like distortion; lost or garbled speech
        // still fails here.
        let pieces = audio::worst_piece_corr(&a, &sp, at, 250.0, 45.0);
        eprintln!("uploaded utterance vs the caller's phrase: corr {corr:.3}, worst 250 ms piece {pieces:.3}");
        assert!(
            pieces >= 0.85,
            "uploaded utterance vs the caller's phrase: corr {corr:.3}, worst 250 ms piece {pieces:.3}"
        );
    }

    // The chat got the transcript, then the history with our answer, and
    // streamed; <think> never reached the history or the TTS.
    let chats: Vec<serde_json::Value> = fake
        .events()
        .into_iter()
        .filter(|e| e["dir"] == "in" && e["route"] == "chat" && e["body"].is_object())
        .map(|e| e["body"].clone())
        .collect();
    assert_eq!(chats.len(), 2, "{}", ctx());
    assert_eq!(chats[0]["stream"], true);
    assert_eq!(chats[0]["model"], "test-llm");
    let roles = |b: &serde_json::Value| -> Vec<(String, String)> {
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
        roles(&chats[0]),
        vec![s("system", "You are a test agent."), s("user", TRANSCRIPT)]
    );
    assert_eq!(
        roles(&chats[1]),
        vec![
            s("system", "You are a test agent."),
            s("user", TRANSCRIPT),
            s("assistant", "Hello caller. How can I help?"),
            s("user", TRANSCRIPT)
        ]
    );
    let speech_reqs = fake.markers("speech_request");
    let texts: Vec<&str> = speech_reqs
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        vec![
            "Hello caller.",
            "How can I help?",
            "Hello caller.",
            "How can I help?"
        ],
        "one TTS request per sentence, no <think>: {}",
        ctx()
    );
    for m in &speech_reqs {
        assert_eq!(m["voice"], "nova");
        assert_eq!(m["response_format"], "pcm");
    }

    // The API shows the conversation and the per-turn latency.
    // The phone heard both answers (two sentences each), and each came
    // before the caller's next phrase.
    let info = call_info(&server, &id);
    print_turns("openai_compat", &info);
    let p1 = spoken_end_ms();
    let p2 = p1 + speech().duration_ms() + GAP_MS as f64;
    assert_reply_after(&out, &reply, p1, 2);
    assert_reply_after(&out, &reply, p2, 2);
    let ts = |m: &serde_json::Value| m["ts"].as_f64().unwrap();
    let replies = fake.markers("reply_started");
    assert!(
        ts(&utts[0]) < ts(&replies[0]) && ts(&replies[1]) < ts(&utts[1]),
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
        let total = t["total_ms"].as_u64().unwrap();
        let asr = t["asr_ms"].as_u64().unwrap();
        let llm = t["llm_first_token_ms"].as_u64().unwrap();
        let tts = t["tts_first_byte_ms"].as_u64().unwrap();
        assert!(total < 1500, "{t}");
        assert!(
            asr + llm + tts <= total + 5,
            "stages add up within the total: {t}"
        );
    }
    assert!(info["last_agent_error"].is_null(), "{info}");

    // /metrics: the turn-latency histogram holds both turns at every stage,
    // and its total matches the turns the API shows.
    let (code, body) = common::http_get(server.api_port, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    let m = prom::Scrape::parse(&body);
    for stage in ["asr", "llm_first_token", "tts_first_byte", "total"] {
        assert_eq!(
            m.value("agentline_turn_latency_seconds_count", &[("stage", stage)]),
            Some(2.0),
            "turn latency samples for {stage}:\n{body}"
        );
    }
    let total_s: f64 = turns
        .iter()
        .map(|t| t["total_ms"].as_u64().unwrap() as f64 / 1000.0)
        .sum();
    let sum = m
        .value("agentline_turn_latency_seconds_sum", &[("stage", "total")])
        .unwrap();
    assert!(
        (sum - total_s).abs() < 0.001,
        "{sum} s vs {total_s} s: {body}"
    );
}

/// The TTS answers 500: the turn is an error, the call goes on, and after
/// the route's response deadline the fallback (a working service) answers
/// the caller's next phrase.
#[test]
fn tts_failure_is_survived_and_the_fallback_answers() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reply_path, reply) = reply_wav(tmp.path());
    let Some(bad) = Fake::start(
        "fake_openai_compat.py",
        &["--fail-route", "speech", "--mode", "http500"],
    ) else {
        return;
    };
    let Some(good) = Fake::start(
        "fake_openai_compat.py",
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
        &compat(bad.port, ""),
        &format!("fallback = [ {} ]\n", compat(good.port, "")),
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
    assert!(!bad.markers("http500").is_empty(), "{}", ctx());
    assert_eq!(
        bad.markers("speech_request").len(),
        1,
        "the failed turn stopped: {}",
        ctx()
    );
    let info = call_info(&server, &id);
    print_turns("openai_compat fallback", &info);
    // The failed turn was reported as an error (the failover after the
    // response deadline overwrites `last_agent_error`).
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("agent error") && l.contains("TTS: HTTP 500")),
        "{}",
        ctx()
    );
    assert!(info["last_agent_error"].is_string(), "{info}");
    assert_eq!(
        info["end_reason"], "caller hung up",
        "the call survived: {info}"
    );
    // The fallback heard the second phrase and answered it.
    let texts: Vec<String> = good
        .markers("speech_request")
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, vec!["Fallback here."], "{}", ctx());
    // Only the fallback's answer was heard (nothing of the failed turn).
    let p1 = spoken_end_ms();
    let p2 = p1 + speech().duration_ms() + GAP_MS as f64;
    assert_silent_between(&out, p1 + 100.0, p2);
    assert_reply_after(&out, &reply, p2, 1);
}

/// A dead endpoint fails over at once; a service answering garbage is an
/// error (the process stays up) and the next fallback answers.
#[test]
fn dead_endpoint_and_garbage_fail_over_without_crashing() {
    if require_peer("baresip").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reply_path, reply) = reply_wav(tmp.path());
    let Some(junk) = Fake::start(
        "fake_openai_compat.py",
        &["--fail-route", "transcriptions", "--mode", "garbage"],
    ) else {
        return;
    };
    let Some(good) = Fake::start(
        "fake_openai_compat.py",
        &[
            "--llm-text",
            "Third time lucky.",
            "--reply-wav",
            reply_path.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let dead = common::free_port();
    let server = Server::start(&profile(
        &compat(dead, ""),
        &format!(
            "fallback = [ {}, {} ]\n",
            compat(junk.port, ""),
            compat(good.port, "")
        ),
    ));
    let (wav, _) = two_phrases(tmp.path());
    let (out, id) = call(&server, "bot", &wav, 5000);
    let ctx = || {
        format!(
            "{}\n--- junk ---\n{}\n--- good ---\n{}\n{}",
            out.summary(),
            junk.events_text(),
            good.events_text(),
            server.log_text()
        )
    };
    let id = id.unwrap_or_else(|| panic!("no call id: {}", ctx()));
    // The garbage service got the first phrase, the good one the second.
    assert_eq!(junk.markers("utterance").len(), 1, "{}", ctx());
    assert!(junk.markers("chat_request").is_empty(), "{}", ctx());
    assert_eq!(good.markers("utterance").len(), 1, "{}", ctx());
    let info = call_info(&server, &id);
    assert_eq!(info["end_reason"], "caller hung up", "{info}");
    let p1 = spoken_end_ms();
    let p2 = p1 + speech().duration_ms() + GAP_MS as f64;
    assert_silent_between(&out, p1 + 100.0, p2);
    assert_reply_after(&out, &reply, p2, 1);
    let log = server.log_text();
    assert!(
        log.contains("Connection refused") || log.contains("onnection refused"),
        "{log}"
    );
    assert_eq!(server.health()["status"], "ok", "{}", ctx());
    std::thread::sleep(Duration::from_millis(10));
}
