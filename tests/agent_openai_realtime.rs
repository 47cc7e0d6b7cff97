#![allow(clippy::unwrap_used)]
//! OpenAI Realtime against a local server speaking its protocol
//! (tests/fakes/fake_openai_realtime.py): a baresip caller (PCMU) speaks,
//! the provider hears G.711 mu-law at 8 kHz (passed through, no resampling),
//! answers, and the caller hears the answer; the caller barges in and the
//! provider is told, with `conversation.item.truncate`, how much of its
//! answer was really heard. A provider that dies mid-call is replaced by the
//! route's fallback within a second.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::audio::{self, Audio};
use common::baresip::{Account, Baresip, Options};
use common::fakes::Fake;
use common::{data_path, require_peer, Server};

fn silence(ms: u32) -> Vec<f32> {
    vec![0.0; (8 * ms) as usize]
}

/// The route `ai` to the fake at `port`, with the API key in a file in `dir`.
fn profile(port: u16, dir: &Path, extra: &str) -> String {
    let key_file = dir.join("key");
    std::fs::write(&key_file, "sk-test\n").unwrap();
    format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"ai\"\n\
         agent = {{ kind = \"openai_realtime\", base_url = \"ws://127.0.0.1:{port}/v1/realtime\", \
         api_key_file = \"{}\", instructions = \"Be brief.\", voice = \"alloy\" }}\n{extra}",
        key_file.display()
    )
}

struct Call {
    heard: Audio,
    id: String,
    view: serde_json::Value,
    ctx: String,
}

/// baresip calls `ai` playing `input` (8 kHz); returns what it heard and
/// the call's final API view.
fn call(server: &Server, input: &Audio, dir: &Path, max_secs: u64) -> Call {
    let wav = dir.join("caller.wav");
    audio::write_wav(&wav, input).unwrap();
    let account = Account::new("1000", None, server.sip_port).regint(0);
    let mut opts = Options::new(account).dial("ai").play(&wav);
    opts.tail_silence_ms = 500;
    opts.max_secs = max_secs;
    let mut phone = Baresip::start(opts);
    assert!(
        phone.wait_call_established(Duration::from_secs(10)),
        "{}",
        server.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let id = loop {
        let calls = server.calls();
        if let Some(id) = calls[0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no call in the API");
        std::thread::sleep(Duration::from_millis(50));
    };
    phone.wait_call_closed(Duration::from_secs(max_secs));
    let out = phone.stop();
    server.wait_idle(Duration::from_secs(10));
    let (_, body) = common::http_get(server.api_port, &format!("/calls/{id}")).unwrap();
    Call {
        heard: out.heard().unwrap(),
        id,
        view: serde_json::from_str(&body).unwrap(),
        ctx: format!("{}\n{}", out.summary(), server.log_text()),
    }
}

/// How long the first stretch of a steady tone at `hz` sounds in `heard`
/// (gaps up to 40 ms bridged).
fn tone_ms(heard: &Audio, hz: f32) -> f64 {
    let mut on = 0usize;
    let mut off_run = 0usize;
    for t in audio::tone_frames(heard, hz) {
        if t {
            on += 1 + off_run.min(2) * usize::from(on > 0);
            off_run = 0;
        } else if on > 0 {
            off_run += 1;
            if off_run > 2 {
                break;
            }
        }
    }
    on as f64 * 20.0
}

#[test]
fn a_turn_goes_through_in_g711_and_barge_in_truncates_what_was_heard() {
    if require_peer("baresip").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reply = dir.path().join("reply.wav");
    audio::write_wav(&reply, &audio::tone(4000, 440.0)).unwrap();
    let Some(fake) = Fake::start(
        "fake_openai_realtime.py",
        &[
            "--api-key",
            "sk-test",
            "--reply-wav",
            reply.to_str().unwrap(),
            "--silence-ms",
            "700",
            "--transcript",
            "hello agent",
        ],
    ) else {
        return;
    };
    let server = Server::start(&profile(fake.port, dir.path(), ""));
    // Speech, a pause (the provider answers with a 4 s tone), then the
    // caller talks over the answer 1 s into it.
    let speech = audio::read_wav(&data_path("speech_8k.wav"))
        .unwrap()
        .to_8k();
    let mut input = speech.samples.clone();
    input.extend(silence(1700));
    input.extend(&speech.samples);
    input.extend(silence(2000));
    let c = call(&server, &Audio::new(8000, input), dir.path(), 30);
    let ctx = format!("{}\n{}", c.ctx, fake.events_text());
    if let Ok(p) = std::env::var("SAVE_HEARD") {
        audio::write_wav(Path::new(&p), &c.heard).unwrap();
    }

    // The session asked for G.711 both ways (PCMU call: no transcoding).
    let fmt = fake
        .wait_marker("session_format", Duration::from_secs(1))
        .unwrap();
    assert_eq!(
        (
            fmt["shape"].as_str(),
            fmt["input"].as_str(),
            fmt["output"].as_str()
        ),
        (Some("ga"), Some("pcmu"), Some("pcmu")),
        "{fmt}"
    );
    // The caller's speech reached the provider intact.
    let got = audio::read_wav(&fake.input_wav()).unwrap();
    let (at, corr) = audio::find_segment(&got, &speech)
        .unwrap_or_else(|| panic!("speech not in input.wav\n{ctx}"));
    assert!(
        corr > 0.9,
        "speech at the provider: corr {corr:.2} at {at:.0} ms\n{ctx}"
    );
    // The answer reached the caller, and the barge-in cut it.
    let heard_ms = tone_ms(&c.heard, 440.0);
    let truncate = fake
        .wait_marker("truncate", Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no conversation.item.truncate\n{ctx}"));
    let end_ms = truncate["audio_end_ms"].as_f64().unwrap();
    assert!(
        heard_ms > 500.0,
        "the caller heard {heard_ms} ms of the answer\n{ctx}"
    );
    assert!(
        heard_ms < 3000.0,
        "barge-in stops the 4 s answer: heard {heard_ms} ms\n{ctx}"
    );
    assert!(
        (end_ms - heard_ms).abs() <= 120.0,
        "truncate says {end_ms} ms were heard; the recording has {heard_ms} ms\n{ctx}"
    );
    assert_eq!(c.view["interruptions"], 1, "{}", c.view);
    // Transcripts and a turn latency are on the call.
    let lines: Vec<(String, String)> = c.view["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["role"].as_str().unwrap().into(),
                l["text"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        lines.contains(&("user".into(), "hello agent".into())),
        "{lines:?}"
    );
    assert!(lines.iter().any(|(r, _)| r == "agent"), "{lines:?}");
    let turn = &c.view["turns"][0];
    assert!(
        turn["total_ms"].as_u64().is_some_and(|t| t < 1000),
        "turn latency: {}",
        c.view
    );
    eprintln!(
        "realtime: speech corr {corr:.2}; heard {heard_ms} ms of the answer, truncate {end_ms} ms; latency {} ms; call {}",
        turn["total_ms"], c.id
    );
}

#[test]
fn provider_dying_mid_call_hands_over_to_the_fallback_within_a_second() {
    if require_peer("baresip").is_none() || require_peer("espeak-ng").is_none() {
        return;
    }
    let Some(fake) = Fake::start(
        "fake_openai_realtime.py",
        &["--api-key", "sk-test", "--mode", "disconnect-after:2000"],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&profile(
        fake.port,
        dir.path(),
        "fallback = [ { kind = \"say\", text = \"Sorry, please call again later.\" } ]\n",
    ));
    let c = call(&server, &Audio::new(8000, silence(6000)), dir.path(), 20);
    let ctx = format!("{}\n{}", c.ctx, fake.events_text());
    let dropped = fake
        .wait_marker("disconnect", Duration::from_secs(1))
        .unwrap_or_else(|| panic!("the fake did not disconnect\n{ctx}"));
    let connected = fake
        .wait_marker("connected", Duration::from_secs(1))
        .unwrap();
    // On the caller's clock: the call was answered when the session
    // connected; the fallback's speech must start within 1 s of the drop.
    let drop_after_ms =
        (dropped["ts"].as_f64().unwrap() - connected["ts"].as_f64().unwrap()) * 1000.0;
    let speech = audio::speech_region(&c.heard.to_8k()).unwrap_or_else(|| panic!("silence\n{ctx}"));
    let speech_at_ms = speech.0 as f64 / 8.0;
    assert!(
        speech_at_ms > drop_after_ms - 200.0 && speech_at_ms < drop_after_ms + 1000.0,
        "fallback spoke at {speech_at_ms:.0} ms, the provider dropped at {drop_after_ms:.0} ms\n{ctx}"
    );
    assert_eq!(c.view["agent"], "say", "{}", c.view);
    assert!(c.view["last_agent_error"].as_str().is_some(), "{}", c.view);
    assert_eq!(c.view["end_reason"], "agent finished", "{}", c.view);
    eprintln!(
        "failover: provider dropped at {drop_after_ms:.0} ms, fallback audible at {speech_at_ms:.0} ms"
    );
}

/// A profile HTTP tool: the model's arguments are POSTed to it and its
/// answer goes back as `function_call_output`, then a new response.
#[test]
fn http_tool_call_round_trips_through_the_profile_tool() {
    if require_peer("baresip").is_none() {
        return;
    }
    let Some(backend) = Fake::start("fake_webhook.py", &["--call-initiated-response", "{}"]) else {
        return;
    };
    let Some(fake) = Fake::start(
        "fake_openai_realtime.py",
        &[
            "--api-key",
            "sk-test",
            "--tool-call",
            "lookup_order",
            "--tool-args",
            "{\"order\": \"A-17\"}",
            "--silence-ms",
            "700",
        ],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &profile(fake.port, dir.path(), "").replace(
            "voice = \"alloy\" }",
            &format!(
                "voice = \"alloy\", tools = [ {{ name = \"lookup_order\", description = \"Order status\", \
                 url = \"http://127.0.0.1:{}/orders\" }} ] }}",
                backend.port
            ),
        ),
    );
    let speech = audio::read_wav(&data_path("speech_8k.wav"))
        .unwrap()
        .to_8k();
    let mut input = speech.samples.clone();
    input.extend(silence(4000));
    let c = call(&server, &Audio::new(8000, input), dir.path(), 20);
    let ctx = format!(
        "{}\n{}\n{}",
        c.ctx,
        fake.events_text(),
        backend.events_text()
    );
    let posted: Vec<serde_json::Value> = backend
        .events()
        .into_iter()
        .filter(|e| e["dir"] == "in" && e["path"] == "/orders")
        .collect();
    assert_eq!(posted.len(), 1, "the tool was called once\n{ctx}");
    assert_eq!(posted[0]["body"]["order"], "A-17", "{ctx}");
    let output = fake
        .wait_marker("function_call_output", Duration::from_secs(2))
        .unwrap_or_else(|| panic!("no function_call_output\n{ctx}"));
    assert_eq!(output["call_id"], "call_1", "{output}");
    assert!(
        fake.wait_marker("response_create", Duration::from_secs(1))
            .is_some(),
        "a new response was asked for\n{ctx}"
    );
    // The answer after the tool reached the caller.
    assert!(tone_ms(&c.heard, 440.0) > 1000.0, "{ctx}");
}

/// A wideband (G.722) caller: the session uses PCM16 at 24 kHz, here over
/// the beta protocol (`OpenAI-Beta: realtime=v1`, beta event names).
#[test]
fn wideband_call_uses_pcm16_24k_over_the_beta_protocol() {
    if require_peer("baresip").is_none() {
        return;
    }
    let Some(fake) = Fake::start(
        "fake_openai_realtime.py",
        &[
            "--api-key",
            "sk-test",
            "--beta-names",
            "--silence-ms",
            "700",
        ],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &profile(fake.port, dir.path(), "")
            .replace("voice = \"alloy\" }", "voice = \"alloy\", beta = true }"),
    );
    let speech = audio::read_wav(&data_path("speech_8k.wav")).unwrap();
    let wav = dir.path().join("caller.wav");
    let mut samples = speech.to_8k().samples;
    samples.extend(silence(3500));
    audio::write_wav(&wav, &Audio::new(8000, samples)).unwrap();
    let account = Account::new("1000", None, server.sip_port)
        .regint(0)
        .audio_codecs(Some("G722/16000/1"));
    let mut opts = Options::new(account).dial("ai").play(&wav);
    opts.input_format = (16000, 1);
    opts.max_secs = 20;
    let out = Baresip::run(opts);
    let ctx = format!(
        "{}\n{}\n{}",
        out.summary(),
        server.log_text(),
        fake.events_text()
    );
    let fmt = fake
        .wait_marker("session_format", Duration::from_secs(1))
        .unwrap();
    assert_eq!(
        (
            fmt["shape"].as_str(),
            fmt["input"].as_str(),
            fmt["beta_header"].as_bool()
        ),
        (Some("beta"), Some("pcm16"), Some(true)),
        "{fmt}"
    );
    let (got, info) = audio::read_wav_info(&fake.input_wav()).unwrap();
    assert_eq!(info.rate, 24000, "{ctx}");
    let (_, corr) = audio::find_segment(&got, &speech).unwrap_or_else(|| panic!("{ctx}"));
    assert!(
        corr > 0.85,
        "G.722 -> 24 kHz speech at the provider: corr {corr:.2}\n{ctx}"
    );
    assert!(
        tone_ms(&out.heard().unwrap(), 440.0) > 1000.0,
        "the answer was heard\n{ctx}"
    );
    eprintln!("wideband: speech at the provider corr {corr:.2}");
}

/// The model calls `transfer_call`: the caller's phone (baresip) gets a
/// REFER to the asked-for target, and the NOTIFYs it sends back are read.
#[test]
fn transfer_call_tool_sends_a_refer_to_the_caller() {
    if require_peer("baresip").is_none() {
        return;
    }
    let Some(fake) = Fake::start(
        "fake_openai_realtime.py",
        &[
            "--api-key",
            "sk-test",
            "--tool-call",
            "transfer_call",
            "--tool-args",
            "{\"to\": \"sip:operator@127.0.0.1:9\"}",
            "--silence-ms",
            "700",
        ],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&profile(fake.port, dir.path(), ""));
    let speech = audio::read_wav(&data_path("speech_8k.wav"))
        .unwrap()
        .to_8k();
    let mut samples = speech.samples.clone();
    samples.extend(silence(5000));
    let wav = dir.path().join("caller.wav");
    audio::write_wav(&wav, &Audio::new(8000, samples)).unwrap();
    let account = Account::new("1000", None, server.sip_port).regint(0);
    let mut opts = Options::new(account).dial("ai").play(&wav);
    opts.max_secs = 12;
    let out = Baresip::run(opts);
    let ctx = format!(
        "{}\n{}\n{}",
        out.sip_flow(),
        server.log_text(),
        fake.events_text()
    );
    let refer = out
        .facts
        .messages
        .iter()
        .find(|m| !m.outgoing && m.status.is_none() && m.method == "REFER")
        .unwrap_or_else(|| panic!("no REFER reached the phone\n{ctx}"));
    assert!(
        refer
            .header("Refer-To")
            .is_some_and(|r| r.contains("sip:operator@127.0.0.1:9")),
        "{:?}\n{ctx}",
        refer.headers
    );
    let output = fake
        .wait_marker("function_call_output", Duration::from_secs(2))
        .unwrap_or_else(|| panic!("the model got no tool output\n{ctx}"));
    assert!(
        output["output"]
            .as_str()
            .is_some_and(|o| o.contains("transferring")),
        "{output}"
    );
    assert!(server.log_text().contains("transfer requested"), "{ctx}");
}

/// DTMF from the caller (RFC 4733, sipp) reaches the model as a user item.
#[test]
fn dtmf_reaches_the_model() {
    if require_peer("sipp").is_none() {
        return;
    }
    let Some(fake) = Fake::start("fake_openai_realtime.py", &["--api-key", "sk-test"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&profile(fake.port, dir.path(), ""));
    let out = common::sipp::run_scenario("dtmf.xml", server.sip_port, "ai", &[]);
    assert!(out.success, "{}", out.report());
    server.wait_idle(Duration::from_secs(10));
    let texts: Vec<String> = fake
        .events()
        .iter()
        .filter(|e| e["dir"] == "in" && e["type"] == "conversation.item.create")
        .filter_map(|e| e["item"]["content"][0]["text"].as_str().map(str::to_string))
        .collect();
    let keys: String = texts
        .iter()
        .filter_map(|t| t.strip_prefix("(The caller pressed the key "))
        .filter_map(|t| t.chars().next())
        .collect();
    assert!(
        keys.starts_with("123"),
        "digits the model was told: {keys:?}\n{}",
        fake.events_text()
    );
}
