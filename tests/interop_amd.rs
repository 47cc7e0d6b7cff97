#![allow(clippy::unwrap_used)]
//! Answering-machine detection on outbound calls to a real callee:
//! baresip answers `POST /calls` through a registration-less trunk and
//! plays a clip of `tests/data/amd` as its microphone, recording what it
//! hears. A voicemail greeting with a beep gets `machine` (API, webhook
//! `amd`, CDR) and, with `amd_action = "message"`, the route's message
//! right after the beep, then our BYE; "Hello?" gets `human` and the agent.

mod common;

use std::time::{Duration, Instant};

use common::baresip::{Account, Baresip, Options};
use common::fakes::Fake;
use common::{audio, data_path, require_peer, Server};

/// The callee's user at baresip (its account; INVITEs go to it).
const CALLEE: &str = "callee";

fn profile(callee_sip_port: u16, hook_port: u16) -> String {
    let message = data_path("speech_8k.wav");
    format!(
        "[webhooks]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n\
         [[trunks]]\nname = \"phones\"\nhost = \"127.0.0.1:{callee_sip_port}\"\nregister = false\n\
         [[routes]]\ndial = \"vm\"\nagent = {{ kind = \"echo\" }}\namd = true\n\
         amd_action = \"message\"\namd_message = \"{m}\"\n\
         [[routes]]\ndial = \"screen\"\nagent = {{ kind = \"echo\" }}\namd = true\n\
         amd_action = \"hangup\"\n\
         [[routes]]\ndial = \"plain\"\nagent = {{ kind = \"echo\" }}\n\
         amd_action = \"message\"\namd_message = \"{m}\"\n",
        m = message.display()
    )
}

/// A baresip that answers, plays `clip` (then `tail_ms` of silence: the
/// call lasts as long as its in.wav) and records what it hears.
fn callee(clip: &str, tail_ms: u32) -> Baresip {
    let account = Account::new(CALLEE, None, common::free_port()).regint(0);
    let mut opts = Options::new(account).play(&data_path(&format!("amd/{clip}")));
    opts.tail_silence_ms = tail_ms;
    Baresip::start(opts)
}

fn place_call(server: &Server, body: &str) -> String {
    let (code, body) = common::http_post(server.api_port, "/calls", body).unwrap();
    assert_eq!(code, 202, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn call_view(server: &Server, id: &str) -> serde_json::Value {
    let (code, body) = common::http_get(server.api_port, &format!("/calls/{id}")).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The `amd` webhooks' payloads so far (in order).
fn amd_hooks(hook: &Fake) -> Vec<serde_json::Value> {
    hook.events()
        .into_iter()
        .filter(|e| e["dir"] == "in" && e["body"]["type"] == "amd")
        .map(|e| e["body"]["payload"].clone())
        .collect()
}

fn wait_hooks(hook: &Fake, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = amd_hooks(hook);
        if done(&h) || Instant::now() > deadline {
            return h;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One outbound call to a baresip callee playing `clip` (then `tail_ms` of
/// silence): `POST /calls` on `route` with `extra` fields, run to its end.
struct Placed {
    server: Server,
    hook: Fake,
    out: common::baresip::Outcome,
    id: String,
    call: serde_json::Value,
    ctx: String,
}

fn place(clip: &str, tail_ms: u32, route: &str, extra: &str) -> Option<Placed> {
    let hook = Fake::start("fake_webhook.py", &[])?;
    let mut phone = callee(clip, tail_ms);
    let server = Server::start(&profile(phone.sip_port, hook.port));
    let id = place_call(
        &server,
        &format!(r#"{{"trunk":"phones","to":"{CALLEE}","route":"{route}"{extra}}}"#),
    );
    let closed = phone.wait_call_closed(Duration::from_secs(25));
    let out = phone.stop();
    let ctx = format!("{}\n{}", out.summary(), server.log_text());
    assert!(closed, "the call ended: {ctx}");
    let call = call_view(&server, &id);
    Some(Placed {
        server,
        hook,
        out,
        id,
        call,
        ctx,
    })
}

#[test]
fn voicemail_with_a_beep_gets_machine_and_the_message_after_the_beep() {
    if require_peer("baresip").is_none() {
        return;
    }
    // "Hey, it's Dave. Leave a message." then a 950 Hz beep at 2940 ms for
    // 350 ms; 8 s of silence after it, longer than the message (3.6 s).
    let Some(Placed {
        server,
        hook,
        out,
        id,
        call,
        ctx,
    }) = place("vm_dave_beep950.wav", 8000, "vm", "")
    else {
        return;
    };
    let amd = &call["amd"];
    assert_eq!(amd["result"], "machine", "{call}\n{ctx}");
    let beep_at = amd["beep"]["at_ms"].as_u64().unwrap_or(0);
    let beep_len = amd["beep"]["length_ms"].as_u64().unwrap_or(0);
    assert!(
        amd["beep"]["hz"]
            .as_u64()
            .is_some_and(|hz| hz.abs_diff(950) <= 50),
        "{amd}"
    );
    // The detector's clock starts with the first audio from the callee.
    assert!(beep_at.abs_diff(2940) <= 300, "beep at {beep_at} ms: {amd}");
    assert_eq!(
        call["end_reason"], "answering machine: message left",
        "{call}\n{ctx}"
    );
    // The record and the webhook say so too.
    let cdr = common::finished_cdr(&server, &id);
    assert_eq!(cdr["amd"], "machine", "{cdr}");
    assert_eq!(cdr["hung_up_by"], "agent", "{cdr}");
    let hooks = wait_hooks(&hook, |h| h.iter().any(|p| p["result"] == "beep"));
    // One delivery task per event: they may arrive in either order.
    let mut results: Vec<&str> = hooks.iter().filter_map(|p| p["result"].as_str()).collect();
    results.sort_unstable();
    assert_eq!(results, ["beep", "machine"], "{hooks:?}");
    let by = |r: &str| hooks.iter().find(|p| p["result"] == r).unwrap();
    assert_eq!(
        by("machine")["cause"],
        amd["decision"]["cause"],
        "{hooks:?}"
    );
    assert_eq!(by("machine")["ms"], amd["ms"], "{hooks:?}");
    // ... and Prometheus counts them.
    let (_, metrics) = common::http_get(server.api_port, "/metrics").unwrap();
    for result in ["machine", "beep"] {
        let line = format!("agentline_amd_results_total{{result=\"{result}\"}} 1");
        assert!(metrics.contains(&line), "no `{line}` in /metrics");
    }
    assert_eq!(by("beep")["beep"]["hz"], amd["beep"]["hz"], "{hooks:?}");
    // The callee heard the message, starting after the beep ended (on the
    // clock of what it played) and within a second of it.
    let heard = out.heard_aligned().unwrap();
    let message = audio::read_wav(&data_path("speech_8k.wav"))
        .unwrap()
        .to_8k();
    let (at_ms, corr) = audio::find_segment(&heard, &message)
        .unwrap_or_else(|| panic!("the message is not in what the callee heard: {ctx}"));
    println!(
        "AMD machine: beep {beep_at} ms + {beep_len} ms; message heard at {at_ms:.0} ms (corr {corr:.2})"
    );
    assert!(corr > 0.6, "message correlation {corr:.2} at {at_ms:.0} ms");
    let beep_end = 2940.0 + 350.0;
    assert!(
        at_ms >= beep_end - 40.0 && at_ms <= beep_end + 1000.0,
        "the message starts at {at_ms:.0} ms, the beep ends at {beep_end} ms"
    );
}

#[test]
fn a_person_saying_hello_gets_human_and_the_agent() {
    if require_peer("baresip").is_none() {
        return;
    }
    // "Hello?" 0.5 s in, then silence: the callee hangs up after ~8 s.
    // The route has no `amd`: the request asks for it.
    let Some(Placed {
        server,
        hook,
        out,
        id,
        call,
        ctx,
    }) = place("hu_hello.wav", 5000, "plain", r#","amd":true"#)
    else {
        return;
    };
    assert_eq!(call["amd"]["result"], "human", "{call}\n{ctx}");
    let decided = call["amd"]["ms"].as_u64().unwrap_or(0);
    assert!((1000..=3000).contains(&decided), "{call}");
    assert_eq!(call["amd"]["decision"]["at_ms"], decided, "{call}");
    assert_ne!(
        call["end_reason"], "answering machine: message left",
        "{call}"
    );
    let cdr = common::finished_cdr(&server, &id);
    assert_eq!(cdr["amd"], "human", "{cdr}");
    let hooks = wait_hooks(&hook, |h| !h.is_empty());
    let results: Vec<&str> = hooks.iter().filter_map(|p| p["result"].as_str()).collect();
    assert_eq!(results, ["human"], "{hooks:?}");
    // The agent (echo) kept the call: the callee heard its "Hello?" back,
    // and never the machine's message.
    let heard = out.heard_aligned().unwrap();
    let sent = out.sent().unwrap().to_8k();
    let hello = audio::Audio::new(
        audio::ANALYSIS_RATE,
        sent.samples[..(sent.samples.len()).min(audio::ANALYSIS_RATE as usize * 2)].to_vec(),
    );
    let echo = audio::find_segment(&heard, &hello);
    assert!(
        echo.is_some_and(|(_, c)| c > 0.6),
        "the echo agent answered the person: {echo:?}\n{ctx}"
    );
    let message = audio::read_wav(&data_path("speech_8k.wav"))
        .unwrap()
        .to_8k();
    let msg = audio::find_segment(&heard, &message);
    assert!(
        msg.is_none_or(|(_, c)| c < 0.4),
        "a person must not get the machine's message: {msg:?}"
    );
}

#[test]
fn amd_action_hangup_ends_the_call_when_the_machine_is_decided() {
    if require_peer("baresip").is_none() {
        return;
    }
    // A long greeting: "long greeting" is decided while it still plays.
    let Some(Placed {
        server,
        id,
        call,
        ctx,
        ..
    }) = place("vm_john_beep850.wav", 3000, "screen", "")
    else {
        return;
    };
    assert_eq!(call["amd"]["result"], "machine", "{call}\n{ctx}");
    assert_eq!(call["end_reason"], "answering machine", "{call}\n{ctx}");
    let decided = call["amd"]["decision"]["at_ms"].as_u64().unwrap_or(0);
    // BYE right at the decision, long before the greeting (7.2 s) ends.
    let duration = call["end_at_unix_ms"].as_u64().unwrap_or(0)
        - call["answer_at_unix_ms"].as_u64().unwrap_or(0);
    assert!(
        decided > 0 && duration < decided + 1000,
        "decided at {decided} ms, call lasted {duration} ms: {call}"
    );
    let cdr = common::finished_cdr(&server, &id);
    assert_eq!(cdr["amd"], "machine", "{cdr}");
    assert_eq!(cdr["end_reason"], "answering machine", "{cdr}");
}
