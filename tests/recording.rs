#![allow(clippy::unwrap_used)]
//! Call recordings (`record = true` on a route): one stereo WAV per call,
//! the caller on the left and what we sent on the right, written while the
//! call runs. Real peers: baresip places the calls, sox reads the files,
//! and the server is killed with SIGKILL mid-call to check what a crash
//! leaves and what the next start-up repairs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::audio::{self, Audio};
use common::baresip::{Account, Baresip, Options};
use common::{http_get, require_peer, Server};

/// A recording's two channels and what its header states.
struct Stereo {
    rate: u32,
    left: Audio,
    right: Audio,
    /// RIFF and data sizes as written in the header.
    riff_size: u32,
    data_size: u32,
    file_len: u64,
}

impl Stereo {
    /// Reads a recording as it is on disk: every whole stereo frame after
    /// the 44-byte header, whatever the header's sizes say.
    fn read(path: &Path) -> Stereo {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.len() >= 44,
            "{}: {} bytes",
            path.display(),
            bytes.len()
        );
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(&bytes[8..16], b"WAVEfmt ");
        assert_eq!(&bytes[36..40], b"data");
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
        assert_eq!(channels, 2, "stereo");
        let rate = u32_at(24);
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for frame in bytes[44..].chunks_exact(4) {
            left.push(f32::from(i16::from_le_bytes([frame[0], frame[1]])) / 32768.0);
            right.push(f32::from(i16::from_le_bytes([frame[2], frame[3]])) / 32768.0);
        }
        Stereo {
            rate,
            left: Audio::new(rate, left),
            right: Audio::new(rate, right),
            riff_size: u32_at(4),
            data_size: u32_at(40),
            file_len: bytes.len() as u64,
        }
    }

    fn duration_s(&self) -> f64 {
        self.left.samples.len() as f64 / f64::from(self.rate)
    }

    /// Seconds of audio the header states.
    fn stated_s(&self) -> f64 {
        f64::from(self.data_size) / f64::from(self.rate * 4)
    }
}

/// `sox --i -<flag>` of a file: sox must be able to open it.
fn sox_info(path: &Path, flag: &str) -> String {
    let out = Command::new("sox")
        .args(["--i", flag])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sox --i {flag} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wavs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "wav") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

fn call_view(server: &Server, id: &str) -> serde_json::Value {
    let (code, body) = http_get(server.api_port, &format!("/calls/{id}")).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The ids of the calls the server has up (answered or not).
fn call_ids(server: &Server) -> Vec<String> {
    server
        .calls()
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_recorded_call_has_the_caller_left_and_the_agent_right() {
    if require_peer("baresip").is_none() || require_peer("sox").is_none() {
        return;
    }
    let agent_wav = common::data_path("speech_account_8k.wav");
    let server = Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[[routes]]\ndial = \"rec\"\nrecord = true\n\
         agent = {{ kind = \"say\", wav = \"{}\", then = \"listen\" }}\n",
        agent_wav.display()
    ));
    let account = Account::new("1000", None, server.sip_port).regint(0);
    let mut opts = Options::new(account)
        .dial("rec")
        .play(&common::data_path("speech_8k.wav"));
    opts.lead_silence_ms = 500;
    // The agent's 4.8 s must be over before the phone hangs up.
    opts.tail_silence_ms = 3500;
    opts.max_secs = 20;
    let mut phone = Baresip::start(opts);
    assert!(phone.wait_call_established(Duration::from_secs(10)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let id = loop {
        if let Some(id) = call_ids(&server).into_iter().next() {
            break id;
        }
        assert!(Instant::now() < deadline, "no call listed");
        std::thread::sleep(Duration::from_millis(50));
    };
    phone.wait_call_closed(Duration::from_secs(20));
    let out = phone.stop();
    server.wait_idle(Duration::from_secs(10));
    let view = call_view(&server, &id);
    let ctx = format!("{view:#}\n{}", server.log_text());
    // Where the call's info says, under the state dir's recordings/<day>/.
    let path = PathBuf::from(
        view["recording"]
            .as_str()
            .unwrap_or_else(|| panic!("{ctx}")),
    );
    assert!(
        path.starts_with(server.state_dir().join("recordings")),
        "{}\n{ctx}",
        path.display()
    );
    assert_eq!(view["recording_dropped_frames"], 0, "{ctx}");
    let files = wavs_under(&server.state_dir().join("recordings"));
    assert_eq!(files, vec![path.clone()], "one file for the call");
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{name}"
    );
    // sox reads it: stereo at the call's internal rate (say speaks 16 kHz).
    assert_eq!(sox_info(&path, "-c"), "2");
    assert_eq!(sox_info(&path, "-r"), "16000");
    let rec = Stereo::read(&path);
    // Closed at the end: the header states the whole file.
    assert_eq!(u64::from(rec.data_size) + 44, rec.file_len, "{ctx}");
    assert_eq!(u64::from(rec.riff_size) + 8, rec.file_len);
    let call_s = out.sent().unwrap().duration_ms() / 1000.0;
    assert!(
        (rec.duration_s() - call_s).abs() < 1.5,
        "recorded {:.2} s of a {call_s:.2} s call",
        rec.duration_s()
    );
    // Left: what the phone sent.
    let sent = audio::read_wav(&common::data_path("speech_8k.wav")).unwrap();
    let (at_l, corr_l) = audio::find_segment(&rec.left, &sent).unwrap();
    assert!(corr_l >= 0.9, "caller on the left: corr {corr_l:.3}\n{ctx}");
    // Right: what the agent said.
    let said = audio::read_wav(&agent_wav).unwrap();
    let (at_r, corr_r) = audio::find_segment(&rec.right, &said).unwrap();
    assert!(corr_r >= 0.9, "agent on the right: corr {corr_r:.3}\n{ctx}");
    // Not swapped: each channel holds only its own side.
    let (_, cross) = audio::find_segment(&rec.left, &said).unwrap_or((0.0, 0.0));
    assert!(cross < 0.5, "the agent leaked into the left: {cross:.3}");
    // The phone's speech starts after its lead silence, the agent's at once.
    assert!(
        (300.0..1500.0).contains(&at_l),
        "caller speech at {at_l:.0} ms"
    );
    assert!(at_r < 500.0, "agent speech at {at_r:.0} ms");
    eprintln!(
        "recording: {:.2} s, left corr {corr_l:.3} at {at_l:.0} ms, right corr {corr_r:.3} at {at_r:.0} ms",
        rec.duration_s()
    );
}

/// Several recorded calls, then `kill -9` mid-call: each file is playable
/// as left (its header at most about a second behind), holds the audio
/// sent up to then, and the next start-up fixes its header.
#[test]
fn a_crash_leaves_playable_recordings_and_start_up_repairs_them() {
    if require_peer("baresip").is_none() || require_peer("sox").is_none() {
        return;
    }
    const CALLS: usize = 4;
    let records = tempfile::tempdir().unwrap();
    let profile = format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[state]\nrecord_dir = \"{}\"\n\
         [[routes]]\ndial = \"echo\"\nrecord = true\nagent = {{ kind = \"echo\" }}\n",
        records.path().display()
    );
    // The same state dir (and call store) across the crash.
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap().to_string();
    let mut server = Server::start_with_args(&profile, &["--state-dir", &state_arg]);
    // Speech for longer than the calls will last (three times the clip).
    let clip = audio::read_wav(&common::data_path("speech_8k.wav")).unwrap();
    let mut long = clip.clone();
    for _ in 0..2 {
        long.samples.extend(std::iter::repeat_n(0.0, 2000));
        long.samples.extend_from_slice(&clip.samples);
    }
    let input = records.path().join("caller.wav.in");
    audio::write_wav(&input, &long).unwrap();
    let mut phones = Vec::new();
    for i in 0..CALLS {
        let account = Account::new(&format!("10{i:02}"), None, server.sip_port).regint(0);
        let mut opts = Options::new(account).dial("echo").play(&input);
        opts.tail_silence_ms = 2000;
        opts.max_secs = 40;
        phones.push(Baresip::start(opts));
    }
    for p in &mut phones {
        assert!(
            p.wait_call_established(Duration::from_secs(15)),
            "{}",
            server.log_text()
        );
    }
    // Let every call record a few seconds, then crash the server.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ids: Vec<String>;
    let answered: Vec<(String, u64)> = loop {
        let calls = server.calls();
        ids = calls
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| Some(c["id"].as_str()?.to_string()))
            .collect();
        let up: Vec<(String, u64)> = calls
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| {
                Some((
                    c["recording"].as_str()?.to_string(),
                    c["answered_at_unix_ms"].as_u64()?,
                ))
            })
            .collect();
        if up.len() == CALLS {
            break up;
        }
        assert!(Instant::now() < deadline, "{calls:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Mid-way between two header rewrites (each file's first one is when
    // it appears, and they are a second apart).
    std::thread::sleep(Duration::from_millis(4600));
    let pid = server.pid().unwrap();
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        server.terminate(Duration::from_secs(5)).is_some(),
        "the server died"
    );
    let outcomes: Vec<_> = phones.into_iter().map(Baresip::stop).collect();
    let log = server.log_text();
    assert!(!log.contains("recording closed"), "no clean close: {log}");

    let files = wavs_under(records.path());
    assert_eq!(files.len(), CALLS, "{files:?}");
    let mut stale = Vec::new();
    for (path, answered_ms) in &answered {
        let path = PathBuf::from(path);
        assert!(files.contains(&path), "{} not in {files:?}", path.display());
        // As left by the crash: sox opens it, the header a second or so
        // behind the data at most.
        assert_eq!(sox_info(&path, "-c"), "2");
        assert_eq!(sox_info(&path, "-r"), "8000");
        let rec = Stereo::read(&path);
        let behind = rec.duration_s() - rec.stated_s();
        eprintln!(
            "crash: {} on disk {:.3} s, header {:.3} s",
            path.display(),
            rec.duration_s(),
            rec.stated_s()
        );
        if rec.data_size as u64 + 44 != rec.file_len {
            stale.push(path.clone());
        }
        assert!(
            (-0.05..=1.5).contains(&behind),
            "{}: header states {:.2} s of {:.2} s",
            path.display(),
            rec.stated_s(),
            rec.duration_s()
        );
        // The data is the call's audio: the caller's speech on the left,
        // its echo on the right.
        let up_s = (killed_at_ms - answered_ms) as f64 / 1000.0;
        assert!(
            rec.duration_s() > up_s - 1.5 && rec.duration_s() < up_s + 0.5,
            "{:.2} s on disk for {up_s:.2} s up",
            rec.duration_s()
        );
        let (_, corr) = audio::find_segment(&long, &rec.left).unwrap();
        assert!(
            corr >= 0.9,
            "{}: left vs sent corr {corr:.3}",
            path.display()
        );
        let (_, corr) = audio::find_segment(&long, &rec.right).unwrap();
        assert!(
            corr >= 0.8,
            "{}: right vs sent corr {corr:.3}",
            path.display()
        );
    }
    drop(outcomes);
    // Samples reach the disk every 4 KB, the header every second: the
    // crash caught (almost surely all) the files with samples past it.
    assert!(!stale.is_empty(), "no header was stale: nothing to repair");

    // The next start repairs every header before taking calls.
    let restarted = Server::start_with_args(&profile, &["--state-dir", &state_arg]);
    let log = restarted.log_text();
    for (path, answered_ms) in &answered {
        let path = PathBuf::from(path);
        let rec = Stereo::read(&path);
        assert_eq!(
            u64::from(rec.data_size) + 44,
            rec.file_len,
            "{}\n{log}",
            path.display()
        );
        assert_eq!(u64::from(rec.riff_size) + 8, rec.file_len);
        assert_eq!(rec.file_len % 4, 0, "whole stereo frames");
        let up_s = (killed_at_ms - answered_ms) as f64 / 1000.0;
        assert!(
            (rec.stated_s() - up_s).abs() <= 1.5,
            "{}: {:.2} s stated, {up_s:.2} s up to the kill",
            path.display(),
            rec.stated_s()
        );
        let secs: f64 = sox_info(&path, "-D").parse().unwrap();
        assert!((secs - rec.stated_s()).abs() < 0.01, "sox says {secs} s");
    }
    assert!(log.contains("recordings checked"), "{log}");
    // Each call's record: lost, naming its recording, which the API serves
    // as repaired.
    assert_eq!(ids.len(), CALLS);
    for id in &ids {
        let (code, body) = common::http_get(
            restarted.api_port,
            &format!("/cdrs/{}", id.replace('@', "%40")),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        let cdr: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(cdr["end_reason"], "lost", "{cdr}");
        let path = cdr["recording"].as_str().unwrap_or_else(|| panic!("{cdr}"));
        assert!(answered.iter().any(|(p, _)| p == path), "{cdr}");
        let (head, bytes) = get_bytes(
            restarted.api_port,
            &format!("/cdrs/{}/recording", id.replace('@', "%40")),
        );
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: audio/wav"),
            "{head}"
        );
        assert_eq!(bytes, std::fs::read(path).unwrap(), "the file as repaired");
    }
    for path in &stale {
        assert!(
            log.lines().any(|l| l.contains("recording header repaired")
                && l.contains(&path.display().to_string())),
            "{} repaired at start-up\n{log}",
            path.display()
        );
    }
}

/// A call we place (`POST /calls`) with a recorded route: the far end
/// (sipp's UAS, echoing RTP) is on the left, the demo greeting we send on
/// the right, and the far end's echo of it on the left after.
#[test]
fn an_outbound_call_on_a_recorded_route_is_recorded_too() {
    let (Some(sipp), Some(_)) = (require_peer("sipp"), require_peer("sox")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let uas = common::free_port();
    common::sipp::start_uas(&sipp, "uas_echo.xml", uas, &["-rtp_echo"], dir.path());
    let server = Server::start(&format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:{uas}\"\nregister = false\n\
         [[routes]]\ndial = \"demo\"\nagent = {{ kind = \"demo\" }}\nrecord = true\n"
    ));
    let (code, body) = common::http_post(
        server.api_port,
        "/calls",
        r#"{"trunk":"carrier","to":"echo","route":"demo"}"#,
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The greeting (5 s) and its echo, then hang up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while call_view(&server, &id)["state"] != "active" {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(6000));
    let (code, _) =
        common::http_post(server.api_port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200);
    server.wait_idle(Duration::from_secs(10));
    let view = call_view(&server, &id);
    let ctx = format!("{view:#}\n{}", server.log_text());
    let path = PathBuf::from(
        view["recording"]
            .as_str()
            .unwrap_or_else(|| panic!("{ctx}")),
    );
    assert_eq!(sox_info(&path, "-c"), "2");
    assert_eq!(sox_info(&path, "-r"), "8000");
    let rec = Stereo::read(&path);
    assert_eq!(u64::from(rec.data_size) + 44, rec.file_len, "{ctx}");
    let greeting =
        audio::read_wav(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/greeting.wav"))
            .unwrap();
    let (at_r, corr_r) = audio::find_segment(&rec.right, &greeting).unwrap();
    assert!(corr_r >= 0.9, "greeting on the right: {corr_r:.3}\n{ctx}");
    let (at_l, corr_l) = audio::find_segment(&rec.left, &greeting).unwrap();
    assert!(corr_l >= 0.8, "its echo on the left: {corr_l:.3}\n{ctx}");
    assert!(
        at_l >= at_r,
        "the echo comes after: {at_l:.0} ms vs {at_r:.0} ms"
    );
    eprintln!("outbound recording: right corr {corr_r:.3} at {at_r:.0} ms, left corr {corr_l:.3} at {at_l:.0} ms");
}

/// GET returning the head and the raw body (a WAV is not text).
fn get_bytes(port: u16, path: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (
        String::from_utf8_lossy(&all[..split]).to_string(),
        all[split + 4..].to_vec(),
    )
}
