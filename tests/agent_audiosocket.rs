#![allow(clippy::unwrap_used)]
//! The `audiosocket` agent (Asterisk's AudioSocket over TCP, as avr-core
//! listens for it) in real calls against tests/fakes/fake_audiosocket.py:
//! the UUID frame carries the call's uuid, the caller's speech arrives as
//! 8 kHz s16 frames, the server's paced reply reaches the phone intact, a
//! server hangup ends the call, DTMF and our hangup reach the server, and
//! an error frame, garbage or a dropped connection fail over to the
//! fallback.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::audio::{self, Audio};
use common::baresip::{Account, Baresip, Options, Outcome};
use common::fakes::Fake;
use common::sipp::run_scenario;
use common::{data_path, http_get, require_peer, Server};

/// The phone-call tests run one at a time: each has a server, a baresip
/// phone and one or two Python fakes pacing audio in real time, and two of
/// them side by side on a 2-core CI machine stalled a fake past the
/// server's cushion. What they judge is real-time audio, so they do not
/// share the machine with each other.
fn one_call_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn write(dir: &Path, name: &str, a: &Audio) -> PathBuf {
    let p = dir.join(name);
    audio::write_wav(&p, a).unwrap();
    p
}

fn profile(addr: &str, extra: &str) -> String {
    format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"as\"\n\
         agent = {{ kind = \"audiosocket\", addr = \"{addr}\" }}\n{extra}\n"
    )
}

fn addr(f: &Fake) -> String {
    format!("127.0.0.1:{}", f.port)
}

fn call(
    server: &Server,
    wav: Option<&Path>,
    lead_ms: u32,
    tail_ms: u32,
) -> (Outcome, Option<serde_json::Value>) {
    let mut opts = Options::new(Account::new("1000", None, server.sip_port).regint(0)).dial("as");
    opts.play = wav.map(Path::to_path_buf);
    opts.lead_silence_ms = lead_ms;
    opts.tail_silence_ms = tail_ms;
    opts.max_secs = 40;
    let mut phone = Baresip::start(opts);
    let mut info = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let c = server.calls().as_array().and_then(|a| a.first()).cloned();
        if c.as_ref().is_some_and(|c| c["uuid"].is_string()) {
            info = c;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    phone.wait_call_closed(Duration::from_secs(40));
    (phone.stop(), info)
}

#[test]
fn speech_goes_to_the_server_its_paced_reply_plays_and_its_hangup_ends_the_call() {
    if require_peer("baresip").is_none() {
        return;
    }
    let _one = one_call_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let reply = audio::chirp(2000, 300.0, 2500.0, 0.25);
    let reply_wav = write(tmp.path(), "reply.wav", &reply);
    let Some(fake) = Fake::start(
        "fake_audiosocket.py",
        &[
            "--reply-wav",
            reply_wav.to_str().unwrap(),
            "--silence-ms",
            "800",
            "--hangup-after-reply",
        ],
    ) else {
        return;
    };
    let server = Server::start(&profile(&addr(&fake), ""));
    let speech_path = data_path("speech_8k.wav");
    // 8 s of silence after the speech: the server's hangup must end the
    // call long before the phone's file does.
    let (out, info) = call(&server, Some(&speech_path), 500, 8000);
    let ctx = format!("{}\n{}", out.summary(), server.log_text());
    let events = fake.events_text();
    let info = info.unwrap_or_else(|| panic!("no call in GET /calls\n{ctx}"));

    // The UUID frame: the call's uuid as 16 raw bytes.
    let uuid = fake
        .wait_marker("uuid", Duration::from_secs(1))
        .expect("uuid frame");
    assert_eq!(uuid["uuid"], info["uuid"], "{events}");

    // (1) Caller speech at the server.
    let (input, wav) = audio::read_wav_info(&fake.input_wav()).unwrap();
    assert_eq!((wav.rate, wav.channels, wav.bits), (8000, 1, 16));
    let frames: Vec<u64> = fake
        .events()
        .iter()
        .filter(|e| e["dir"] == "in" && e["kind"] == "audio")
        .filter_map(|e| e["len"].as_u64())
        .collect();
    assert!(
        frames.len() > 100 && frames.iter().all(|&l| l == 320),
        "audio frames not all 320 bytes: {events}"
    );
    let speech = audio::read_wav(&speech_path).unwrap();
    let (offset, corr) = audio::find_segment(&input, &speech).expect("speech at the server");
    let level = audio::rms_within_db(&speech, &input, 3.0).unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let gap = audio::longest_gap_ms(&speech, &input, offset);
    eprintln!(
        "caller->server: corr {corr:.3}, level {level:+.2} dB, longest gap {gap} ms, {} frames",
        frames.len()
    );
    assert!(corr >= 0.9, "{corr}\n{ctx}");
    assert!(gap <= 40.0, "{gap}\n{ctx}");

    // (2) The reply on the phone: whole, no dropouts, its full length.
    let heard = out.heard().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    let (at, rcorr) =
        audio::find_segment(&heard, &reply).unwrap_or_else(|| panic!("reply not heard\n{ctx}"));
    let rgap = audio::longest_gap_ms(&reply, &heard, at);
    let h8 = heard.to_8k();
    let (s, e) = audio::speech_region(&h8).expect("heard something");
    let heard_ms = (e - s) as f64 / 8.0;
    let stall = fake_stall_ms(&fake);
    let pcorr = audio::worst_piece_corr(&heard, &reply, at, 250.0, 45.0 + stall);
    eprintln!(
        "server->caller: corr {rcorr:.3} (worst 250 ms piece {pcorr:.3}), longest gap {rgap} ms, heard {heard_ms:.0} ms of 2000 ms"
    );
    assert!(pcorr >= 0.9, "{pcorr}\n{ctx}");
    assert!(rgap <= 40.0 + stall, "{rgap}\n{ctx}");
    assert!(
        heard_ms >= 1980.0 && heard_ms <= 2020.0 + stall,
        "{heard_ms}\n{ctx}"
    );

    // (3) The server's hangup frame ended the call (our BYE), well before
    // the phone ran out of audio to play.
    assert!(
        fake.wait_marker("hangup_sent", Duration::from_secs(1))
            .is_some(),
        "{events}"
    );
    assert!(
        !out.facts.ended_by_file,
        "the call ran until the phone's file ended\n{ctx}"
    );
    let total_in = 500.0 + speech.duration_ms() + 8000.0;
    assert!(
        out.elapsed.as_secs_f64() * 1000.0 < total_in - 2000.0,
        "call lasted {:?}\n{ctx}",
        out.elapsed
    );
    let id = info["id"].as_str().unwrap();
    let (_, body) = http_get(server.api_port, &format!("/calls/{id}")).unwrap();
    let after: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(after["end_reason"], "agent finished", "{after}\n{ctx}");
}

#[test]
fn dtmf_and_our_hangup_reach_the_server() {
    if require_peer("sipp").is_none() {
        return;
    }
    let Some(fake) = Fake::start("fake_audiosocket.py", &[]) else {
        return;
    };
    let server = Server::start(&profile(&addr(&fake), ""));
    let out = run_scenario("dtmf.xml", server.sip_port, "as", &[]);
    assert!(out.success, "{}", out.report());
    server.wait_idle(Duration::from_secs(10));
    let ctx = format!("{}\n{}", fake.events_text(), server.log_text());
    let digits: String = fake
        .markers("dtmf")
        .iter()
        .filter_map(|m| m["digit"].as_str())
        .collect();
    assert!(
        digits.starts_with("123#"),
        "digits at the server: {digits:?}\n{ctx}"
    );
    assert!(
        fake.wait_marker("hangup", Duration::from_secs(2)).is_some(),
        "no hangup frame at call end\n{ctx}"
    );
    let closed = fake.wait_marker("closed", Duration::from_secs(2)).unwrap();
    assert_eq!(closed["reason"], "hangup", "{ctx}");
}

/// One call to a failing server with a healthy fallback (greeting `b`):
/// what the phone heard, and the two fakes.
fn failover_call(
    mode: &str,
    b_reply: &Audio,
    tmp: &Path,
) -> Option<(Outcome, Fake, Fake, Server, serde_json::Value)> {
    let b_wav = write(tmp, "b.wav", b_reply);
    let a_wav = write(tmp, "a.wav", &audio::chirp(1000, 2500.0, 500.0, 0.25));
    let a = Fake::start(
        "fake_audiosocket.py",
        &[
            "--greeting",
            "--reply-wav",
            a_wav.to_str().unwrap(),
            "--mode",
            mode,
        ],
    )?;
    let b = Fake::start(
        "fake_audiosocket.py",
        &["--greeting", "--reply-wav", b_wav.to_str().unwrap()],
    )?;
    let fallback = format!(
        "fallback = [ {{ kind = \"audiosocket\", addr = \"{}\" }} ]",
        addr(&b)
    );
    let server = Server::start(&profile(&addr(&a), &fallback));
    let (out, info) = call(&server, None, 0, 4000);
    let id = info.expect("call in GET /calls")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = http_get(server.api_port, &format!("/calls/{id}")).unwrap();
    assert_eq!(code, 200);
    let info = serde_json::from_str(&body).unwrap();
    Some((out, a, b, server, info))
}

/// How far the fake's paced audio fell behind its own 20 ms schedule
/// beyond the server's 60 ms cushion (a stall of the Python fake on a
/// loaded machine): a gap that long on the phone is the fake's, so the
/// checks allow it on top of their own tolerance, and say so.
fn fake_stall_ms(f: &Fake) -> f64 {
    let sent: Vec<f64> = f
        .events()
        .iter()
        .filter(|e| e["dir"] == "out" && e["kind"] == "audio")
        .filter_map(|e| e["ts"].as_f64())
        .collect();
    let late = audio::pacing_lateness_ms(&sent, 20.0);
    let stall = (late - 60.0).max(0.0);
    if stall > 0.0 {
        eprintln!(
            "the fake fell {late:.0} ms behind its pacing: {stall:.0} ms more than the cushion"
        );
    }
    stall
}

fn first_audio_out(f: &Fake) -> Option<f64> {
    f.events()
        .iter()
        .find(|e| e["dir"] == "out" && e["kind"] == "audio")
        .and_then(|e| e["ts"].as_f64())
}

#[test]
fn error_frame_and_garbage_fail_over_to_the_fallback_at_once() {
    if require_peer("baresip").is_none() {
        return;
    }
    let _one = one_call_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let b_reply = audio::chirp(1500, 400.0, 3000.0, 0.25);
    for mode in ["http500", "garbage"] {
        let Some((out, a, b, server, info)) = failover_call(mode, &b_reply, tmp.path()) else {
            return;
        };
        let ctx = format!(
            "{mode}\nA:\n{}\nB:\n{}\n{}\n{}\n{info}",
            a.events_text(),
            b.events_text(),
            out.summary(),
            server.log_text()
        );
        assert!(
            a.wait_marker("uuid", Duration::from_secs(1)).is_some(),
            "{ctx}"
        );
        assert!(
            b.wait_marker("uuid", Duration::from_secs(1)).is_some(),
            "no failover\n{ctx}"
        );
        assert!(first_audio_out(&a).is_none(), "{ctx}");
        let answered = info["answered_at_unix_ms"].as_f64().unwrap() / 1000.0;
        let t_b = first_audio_out(&b).unwrap_or_else(|| panic!("the fallback never spoke\n{ctx}"));
        let after_answer_ms = (t_b - answered) * 1000.0;
        let heard = out.heard().unwrap_or_else(|e| panic!("{e}\n{ctx}"));
        let (at, corr) =
            audio::find_segment(&heard, &b_reply).unwrap_or_else(|| panic!("nothing heard\n{ctx}"));
        let gap = audio::longest_gap_ms(&b_reply, &heard, at);
        let stall = fake_stall_ms(&b);
        let pcorr = audio::worst_piece_corr(&heard, &b_reply, at, 250.0, 45.0 + stall);
        eprintln!("{mode}: fallback spoke {after_answer_ms:.0} ms after the answer (corr {corr:.3}, worst 250 ms piece {pcorr:.3}, longest gap {gap} ms)");
        assert!(pcorr >= 0.9 && gap <= 40.0 + stall, "{ctx}");
        assert!(after_answer_ms < 1000.0, "{ctx}");
        let err = info["last_agent_error"].as_str().unwrap_or_default();
        let want = if mode == "http500" {
            "error frame"
        } else {
            "unknown AudioSocket frame kind 0x42"
        };
        assert!(err.contains(want), "last_agent_error {err:?}\n{ctx}");
        assert_eq!(server.health()["status"], "ok");
        let (code, _) = http_get(server.api_port, "/health").unwrap();
        assert_eq!(code, 200);
    }
}

#[test]
fn dropped_connection_fails_over_within_a_second() {
    if require_peer("baresip").is_none() {
        return;
    }
    let _one = one_call_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let b_reply = audio::chirp(1500, 400.0, 3000.0, 0.25);
    let Some((out, a, b, server, info)) =
        failover_call("disconnect-after:1500", &b_reply, tmp.path())
    else {
        return;
    };
    let ctx = format!(
        "A:\n{}\nB:\n{}\n{}\n{}\n{info}",
        a.events_text(),
        b.events_text(),
        out.summary(),
        server.log_text()
    );
    let t_disc = a
        .wait_marker("disconnect", Duration::from_secs(1))
        .expect("disconnect")["ts"]
        .as_f64()
        .unwrap();
    let t_b = first_audio_out(&b).unwrap_or_else(|| panic!("the fallback never spoke\n{ctx}"));
    let provider_gap = (t_b - t_disc) * 1000.0;
    // The phone's recording holds only received packets (no RTP while the
    // agent is silent), so the gap is timed on the fakes' clock; the phone
    // must have heard both greetings whole.
    let a_reply = audio::chirp(1000, 2500.0, 500.0, 0.25);
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
    let (at_a, corr_a) = audio::find_segment(&heard, &a_reply).expect("A heard");
    let (at_b, corr_b) = audio::find_segment(&heard, &b_reply).expect("B heard");
    // Each greeting is judged piece by piece, allowing what its own fake
    // fell behind its pacing beyond the cushion (printed when it happens).
    let stall_a = fake_stall_ms(&a);
    let pcorr_a = audio::worst_piece_corr(&heard, &a_reply, at_a, 250.0, 45.0 + stall_a);
    let gap_a = audio::longest_gap_ms(&a_reply, &heard, at_a);
    let gap_b = audio::longest_gap_ms(&b_reply, &heard, at_b);
    let stall = fake_stall_ms(&b);
    let pcorr_b = audio::worst_piece_corr(&heard, &b_reply, at_b, 250.0, 45.0 + stall);
    eprintln!(
        "AudioSocket failover: fallback sent audio {provider_gap:.0} ms after the drop \
         (A corr {corr_a:.3}, worst 250 ms piece {pcorr_a:.3}, A gap {gap_a} ms; \
         B corr {corr_b:.3}, worst 250 ms piece {pcorr_b:.3}, B gap {gap_b} ms)"
    );
    assert!(
        pcorr_a >= 0.9 && gap_a <= 40.0 + stall_a,
        "A's greeting damaged: worst piece {pcorr_a:.3}, gap {gap_a} ms\n{ctx}"
    );
    assert!(
        pcorr_b >= 0.9 && gap_b <= 40.0 + stall,
        "B's greeting damaged: worst piece {pcorr_b:.3}, gap {gap_b} ms\n{ctx}"
    );
    assert!(provider_gap < 1000.0, "{ctx}");
    assert!(
        info["last_agent_error"]
            .as_str()
            .is_some_and(|e| e.contains("connection")),
        "{ctx}"
    );
}
