//! Browser calling, end to end with a real browser: headless Chromium
//! (Debian `chromium` + `chromium-driver`, driven by selenium from a venv
//! under target/) opens the built-in `/phone` page, signs in with the API
//! token, and calls the `echo` route over WebRTC (ICE-lite, DTLS-SRTP,
//! Opus) with a fake microphone playing a speech WAV. Checked: the page's
//! 401 message before sign-in, the echoed speech measured by the page's
//! WebAudio analyser, keypad 1 2 3 (RTCDTMFSender, RFC 4733) in
//! `GET /calls/{id}`, `transport: webrtc`, the call's record, and
//! agentline's recording of the call against the WAV. A screenshot of the
//! page during the call is kept in target/webrtc-artifacts/.
//!
//! Skips when chromium is missing and CI is not set; under CI=true a
//! missing browser (or selenium that cannot be installed) is a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::audio::{self, Audio};
use common::{require_peer, Server};

const TOKEN: &str = "browser-test-token-7f3a";

fn ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// One HTTP/1.0 request with optional bearer token and body: status, head, body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, String, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let timeout = Duration::from_secs(10);
    common::http_exchange(
        port,
        method,
        path,
        auth.as_deref(),
        content_type,
        body,
        timeout,
    )
}

/// The Python with selenium: target/webrtc-venv, created on first use,
/// once per test binary (the tests run in parallel: two `venv`/`pip` runs
/// into one directory break each other).
fn selenium_python() -> Option<PathBuf> {
    static PY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PY.get_or_init(make_selenium_python).clone()
}

fn make_selenium_python() -> Option<PathBuf> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let venv = target.join("webrtc-venv");
    let py = venv.join("bin/python");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import selenium"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.is_file() && has(&py) {
        return Some(py);
    }
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "selenium"])
            .status()
            .is_ok_and(|s| s.success());
    if made && has(&py) {
        return Some(py);
    }
    assert!(
        !ci(),
        "selenium could not be installed in {}",
        venv.display()
    );
    eprintln!(
        "SKIP: selenium could not be installed in {}",
        venv.display()
    );
    None
}

/// A recording's two channels.
fn read_stereo(path: &Path) -> (Audio, Audio) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > 44,
        "{}: {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "stereo");
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for frame in bytes[44..].chunks_exact(4) {
        left.push(f32::from(i16::from_le_bytes([frame[0], frame[1]])) / 32768.0);
        right.push(f32::from(i16::from_le_bytes([frame[2], frame[3]])) / 32768.0);
    }
    (Audio::new(rate, left), Audio::new(rate, right))
}

/// A file under target/webrtc-artifacts/ (made, and the file removed).
fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/webrtc-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// What the browser script is asked to do.
struct Browser<'a> {
    route: &'a str,
    /// Play the call's recording from the page's recent calls afterwards.
    play_recording: bool,
    digits: &'a str,
    expect_transcript: &'a str,
    wav: &'a Path,
    screenshot: &'a Path,
}

/// Runs tests/webrtc/phone_call.py against `server` (its API needs
/// [`TOKEN`]): the page's measurements as JSON, and the context for a
/// failure (the script's output and the server's log).
fn browser_call(server: &Server, b: Browser) -> (serde_json::Value, String) {
    let chromium = require_peer("chromium").unwrap();
    let driver = require_peer("chromedriver").unwrap();
    let python = selenium_python().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webrtc/phone_call.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(["--url", &format!("http://127.0.0.1:{}", server.api_port)])
        .args(["--token", TOKEN, "--route", b.route])
        .args(["--digits", b.digits])
        .args(["--expect-transcript", b.expect_transcript])
        .args(b.play_recording.then_some("--play-recording"))
        .arg("--wav")
        .arg(b.wav)
        .arg("--screenshot")
        .arg(b.screenshot)
        .arg("--chromium")
        .arg(&chromium)
        .arg("--chromedriver")
        .arg(&driver)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ctx = format!(
        "stdout: {stdout}\nstderr: {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let result: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from the browser script\n{ctx}"));
    (result, ctx)
}

/// Chromium, chromedriver and selenium are there (else skip, or fail under CI).
fn browser_available() -> bool {
    require_peer("chromium").is_some()
        && require_peer("chromedriver").is_some()
        && selenium_python().is_some()
}

#[test]
fn a_browser_calls_echo_through_the_phone_page() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let server = Server::start(&format!(
        "[api]\ntoken_file = \"{}\"\n\
         [[routes]]\ndial = \"echo\"\nrecord = true\nagent = {{ kind = \"echo\" }}\n",
        token_file.display()
    ));
    let port = server.api_port;

    // Access: the page itself is open, everything it calls needs the token.
    let (code, _, page) = request(port, "GET", "/phone", None, "text/plain", "");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("agentline phone"), "{page}");
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    for (method, path, body) in [
        ("POST", "/webrtc/echo", offer),
        ("DELETE", "/webrtc/nope", ""),
        ("GET", "/routes", ""),
        ("GET", "/calls/nope/events", ""),
    ] {
        let (code, head, body) = request(port, method, path, None, "application/sdp", body);
        assert_eq!(
            code, 401,
            "{method} {path} without the token: {head}\n{body}"
        );
    }
    let (code, _, body) = request(port, "GET", "/routes", Some(TOKEN), "text/plain", "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"echo\""), "{body}");
    // A bad offer is refused with the reason, not a call.
    let (code, _, body) = request(
        port,
        "POST",
        "/webrtc/echo",
        Some(TOKEN),
        "application/sdp",
        "not sdp",
    );
    assert_eq!(code, 400, "{body}");
    let (code, _, body) = request(
        port,
        "POST",
        "/webrtc/nowhere",
        Some(TOKEN),
        "application/sdp",
        offer,
    );
    assert_eq!(code, 404, "{body}");

    // The browser: the fake microphone plays the speech WAV in a loop.
    let wav = common::data_path("speech_8k.wav");
    let shot = artifact("phone-call.png");
    let (result, ctx) = browser_call(
        &server,
        Browser {
            route: "echo",
            play_recording: true,
            digits: "123",
            expect_transcript: "",
            wav: &wav,
            screenshot: &shot,
        },
    );
    assert_eq!(result["ok"], true, "{ctx}");
    let msg = result["unauthorized_message"].as_str().unwrap_or("");
    assert!(
        msg.contains("401") && msg.contains("token"),
        "the page explains the 401: `{msg}`"
    );
    let during = &result["during_call"];
    let id = result["call_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("webrtc-"), "{id}");

    // The echo came back: the page's analyser heard speech from the agent.
    let speech_ms = during["outSpeechMs"].as_f64().unwrap();
    let out_peak = during["outPeakDb"].as_f64().unwrap();
    let in_peak = during["inPeakDb"].as_f64().unwrap();
    assert!(
        in_peak > -40.0,
        "the fake microphone plays: {in_peak:.1} dBFS\n{ctx}"
    );
    assert!(
        speech_ms >= 2000.0 && out_peak > -30.0,
        "echoed speech at the page: {speech_ms} ms above -45 dBFS, peak {out_peak:.1} dBFS\n{ctx}"
    );
    // The keypad's digits reached the call (RFC 4733 through str0m), and
    // the page learnt it from the call's event stream.
    assert_eq!(during["heardDigits"], "123", "{ctx}");
    assert_eq!(during["liveEvents"], true, "{ctx}");
    assert!(shot.is_file(), "screenshot {}", shot.display());

    // The server's view of the call, as for a SIP call.
    server.wait_idle(Duration::from_secs(10));
    let path = format!("/calls/{}", common::urlencode(&id));
    let (code, _, body) = request(port, "GET", &path, Some(TOKEN), "text/plain", "");
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["transport"], "webrtc", "{view:#}");
    assert_eq!(view["dtmf"], "123", "{view:#}");
    assert_eq!(view["codec"], "opus", "{view:#}");
    assert_eq!(view["end_reason"], "caller hung up", "{view:#}");
    // Its round trip is str0m's, from the browser's RTCP.
    let rtt = view["quality"]["rtt_ms"].as_f64();
    assert!(rtt.is_some_and(|r| r < 100.0), "RTT {rtt:?}\n{view:#}");
    let received = view["media"]["rx_packets"].as_u64().unwrap_or(0);
    assert!(received > 300, "RTP from the browser: {received}\n{view:#}");

    // The record and the recording: the caller's side is the WAV.
    let (code, _, cdr) = request(
        port,
        "GET",
        &format!("/cdrs/{}", common::urlencode(&id)),
        Some(TOKEN),
        "text/plain",
        "",
    );
    assert_eq!(code, 200, "{cdr}");
    let cdr: serde_json::Value = serde_json::from_str(&cdr).unwrap();
    assert_eq!(cdr["route"], "echo", "{cdr:#}");
    assert_eq!(cdr["hung_up_by"], "caller", "{cdr:#}");
    let rec = PathBuf::from(
        view["recording"]
            .as_str()
            .unwrap_or_else(|| panic!("{view:#}")),
    );
    let (left, right) = read_stereo(&rec);
    let sent = audio::read_wav(&wav).unwrap();
    let (at_l, corr_l) = audio::find_segment(&left, &sent).unwrap();
    let (at_r, corr_r) = audio::find_segment(&right, &sent).unwrap();
    eprintln!(
        "browser call {id}: page heard {speech_ms} ms of echo (peak {out_peak:.1} dBFS, mic {in_peak:.1}), \
         recording {:.1} s at {} Hz: caller corr {corr_l:.3} at {at_l:.0} ms, echo corr {corr_r:.3} at {at_r:.0} ms, \
         browser stats {}",
        left.duration_ms() / 1000.0,
        left.rate,
        during["stats"]
    );
    // The page's recent calls play the recording (fetched with the token).
    let played = result["recording_player_s"].as_f64().unwrap_or(0.0);
    eprintln!("the page's player: {played:.2} s of recording");
    assert!(
        (played - left.duration_ms() / 1000.0).abs() < 0.5,
        "the page's player has the {:.1} s recording: {played} s; recent calls: {}\n{ctx}",
        left.duration_ms() / 1000.0,
        result["recent_calls"]
    );
    assert!(
        corr_l >= 0.8,
        "caller side vs the WAV: corr {corr_l:.3}\n{ctx}"
    );
    assert!(
        corr_r >= 0.8,
        "echo side vs the WAV: corr {corr_r:.3}\n{ctx}"
    );
}

#[test]
fn a_browser_sees_the_agents_transcript_live() {
    if !browser_available() {
        return;
    }
    let Some(fake) = common::fakes::Fake::start("fake_avr_sts.py", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let server = Server::start(&format!(
        "[api]\ntoken_file = \"{}\"\n\
         [[routes]]\ndial = \"sts\"\nagent = {{ kind = \"avr_sts\", url = \"ws://127.0.0.1:{}\" }}\n",
        token_file.display(),
        fake.port
    ));
    // Speech, then a pause that ends the caller's turn at the fake (the
    // browser loops the file).
    let mut speech = audio::read_wav(&common::data_path("speech_8k.wav")).unwrap();
    speech.samples.extend(std::iter::repeat_n(0.0, 8000 * 2));
    let wav = dir.path().join("speech_pause.wav");
    audio::write_wav(&wav, &speech).unwrap();
    let shot = artifact("phone-transcript.png");
    let (result, ctx) = browser_call(
        &server,
        Browser {
            route: "sts",
            play_recording: false,
            digits: "",
            expect_transcript: "hello caller",
            wav: &wav,
            screenshot: &shot,
        },
    );
    assert_eq!(result["ok"], true, "{ctx}");
    let during = &result["during_call"];
    assert_eq!(during["liveEvents"], true, "{ctx}");
    // The fake hears the caller's speech, says its lines and the page
    // shows both from the event stream.
    let lines: Vec<(String, String)> = during["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["role"].as_str().unwrap_or("").to_string(),
                l["text"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        lines.contains(&("agent".into(), "hello caller".into())),
        "{lines:?}\n{ctx}"
    );
    assert!(
        lines.contains(&("user".into(), "hello agent".into())),
        "{lines:?}\n{ctx}"
    );
    assert!(shot.is_file());
    let id = result["call_id"].as_str().unwrap();
    server.wait_idle(Duration::from_secs(10));
    let (code, _, body) = request(
        server.api_port,
        "GET",
        &format!("/calls/{}", common::urlencode(id)),
        Some(TOKEN),
        "text/plain",
        "",
    );
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["transport"], "webrtc", "{view:#}");
    assert_eq!(view["agent"], "avr_sts", "{view:#}");
    eprintln!("browser call {id}: transcript on the page {lines:?}");
}
