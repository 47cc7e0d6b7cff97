#![allow(clippy::unwrap_used)]
//! Crash safety (issue 14): `kill -9` while recorded calls with RTP are up
//! and a SIP TCP connection is open, then the same server again at once on
//! the same ports and state directory. Nothing may block the restart (a
//! port, a lock, a state file); the killed calls' records end as `lost`
//! and their recordings' headers are made to match their length; an empty
//! and a header-less `.wav` in the recordings folder are left alone; and
//! a new call afterwards passes the echo audio check.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::baresip::{assert_echo_audio, Account, Baresip, Options};
use common::sipp::spawn_scenario;
use common::{data_path, http_get, require_peer, urlencode, Server};

const CALLS: usize = 4;

fn options(port: u16, local: &str, n: u32) -> String {
    format!(
        "OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/TCP {local};branch=z9hG4bK-crash-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag=crash{n}\r\n\
         To: <sip:probe@127.0.0.1:{port}>\r\n\
         Call-ID: crash-{n}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Sends an OPTIONS on `s` and reads until its 200 (true) or 3 s pass.
fn tcp_options(s: &mut TcpStream, port: u16, n: u32) -> bool {
    let local = s.local_addr().unwrap().to_string();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    if s.write_all(options(port, &local, n).as_bytes()).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(len) = s.read(&mut buf) {
        if len == 0 {
            break;
        }
        got.extend_from_slice(&buf[..len]);
        let text = String::from_utf8_lossy(&got);
        if text.contains("SIP/2.0 200") && text.contains(&format!("crash-{n}@")) {
            return true;
        }
    }
    false
}

/// (RIFF size, data size, file length, samples past the header that are
/// not zero) of one of our 44-byte-header recordings.
fn wav_sizes(path: &Path) -> (u32, u32, u64, usize) {
    let b = std::fs::read(path).unwrap();
    assert!(b.len() >= 44 && &b[..4] == b"RIFF", "{}", path.display());
    let le = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(&b[36..40], b"data", "{}", path.display());
    let loud = b[44..]
        .chunks_exact(2)
        .filter(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() > 300)
        .count();
    (le(4), le(40), b.len() as u64, loud)
}

#[test]
fn kill9_with_calls_up_restarts_at_once_and_recovers() {
    let (Some(_), Some(_)) = (require_peer("sipp"), require_peer("baresip")) else {
        return;
    };
    let records = tempfile::tempdir().unwrap();
    let profile = format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\n[state]\nrecord_dir = \"{}\"\n\
         [[routes]]\ndial = \"echo\"\nrecord = true\nagent = {{ kind = \"echo\" }}\n",
        records.path().display()
    );
    let mut server = Server::start(&profile);
    let port = server.sip_port;

    // Recorded calls with RTP (sipp sends a tone; each call would last a
    // minute), and a SIP TCP connection that has been used.
    let sipp = spawn_scenario(
        "invite_bye.xml",
        port,
        "echo",
        &[
            "-m", "4", "-l", "4", "-r", "20", "-d", "60000", "-timeout", "120s",
        ],
    );
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(
        tcp_options(&mut tcp, port, 1),
        "no 200 over TCP before the kill"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let (ids, recordings): (Vec<String>, Vec<PathBuf>) = loop {
        let calls = server.calls();
        let up: Vec<(String, PathBuf)> = calls
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| {
                Some((
                    c["id"].as_str()?.to_string(),
                    PathBuf::from(c["recording"].as_str()?),
                ))
            })
            .collect();
        if up.len() == CALLS {
            break up.into_iter().unzip();
        }
        assert!(
            Instant::now() < deadline,
            "{CALLS} recorded calls not up in 15 s: {calls:#}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // A few seconds of audio in each file; the kill lands between two
    // header rewrites (they are a second apart).
    std::thread::sleep(Duration::from_millis(3500));
    // What an earlier crash can leave too: a file killed before its header
    // was written, and one that is no WAV at all.
    let day = recordings[0].parent().unwrap().to_path_buf();
    let empty = day.join("crashed-before-header.wav");
    std::fs::write(&empty, b"").unwrap();
    let junk = day.join("not-a-wav.wav");
    let junk_bytes = b"RIFX this is not a recording".to_vec();
    std::fs::write(&junk, &junk_bytes).unwrap();

    let started = Instant::now();
    server.kill9_and_restart();
    let restart = started.elapsed();
    let log = server.log_text();

    // The old TCP connection is gone with the process; a new one works.
    let mut buf = [0u8; 64];
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(
        matches!(tcp.read(&mut buf), Ok(0) | Err(_)),
        "the killed server's TCP connection still open"
    );
    let mut tcp2 = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(
        tcp_options(&mut tcp2, port, 2),
        "no 200 over TCP after the restart\n{log}"
    );
    // The dead calls' caller gives up (it would send BYEs nobody knows).
    drop(sipp);

    // The killed calls: records closed as lost, recordings repaired.
    let mut repaired = 0;
    for (id, path) in ids.iter().zip(&recordings) {
        let (code, body) = http_get(server.api_port, &format!("/cdrs/{}", urlencode(id))).unwrap();
        assert_eq!(code, 200, "{body}");
        let cdr: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(cdr["end_reason"], "lost", "{cdr}");
        assert!(!cdr["end_at_unix_ms"].is_null(), "{cdr}");
        assert_eq!(
            cdr["recording"].as_str(),
            Some(path.to_str().unwrap()),
            "{cdr}"
        );
        let (riff, data, len, loud) = wav_sizes(path);
        assert_eq!(
            u64::from(data) + 44,
            len,
            "{}: data size\n{log}",
            path.display()
        );
        assert_eq!(u64::from(riff) + 8, len, "{}: RIFF size", path.display());
        assert_eq!(len % 4, 0, "whole stereo frames");
        // Over 3 s of the call on disk, and the tone in it.
        assert!(data >= 3 * 8000 * 4, "{}: {data} bytes", path.display());
        assert!(loud > 8000, "{}: {loud} loud samples", path.display());
        if log.lines().any(|l| {
            l.contains("recording header repaired") && l.contains(&path.display().to_string())
        }) {
            repaired += 1;
        }
    }
    assert!(
        repaired > 0,
        "no header needed repair: nothing tested\n{log}"
    );
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    assert_eq!(std::fs::read(&junk).unwrap(), junk_bytes);
    assert!(
        log.contains("empty recording left as it is"),
        "the empty file was not seen\n{log}"
    );

    // Nothing of the dead calls is left in the new process.
    let h = server.wait_idle(Duration::from_secs(5));
    for key in ["active_calls", "rtp_ports_in_use", "dialogs"] {
        assert_eq!(h[key].as_u64(), Some(0), "{key}: {h}");
    }

    // A new call: the echo is clean.
    let mut opts = Options::new(Account::new("1000", None, port).regint(0))
        .dial("echo")
        .play(&data_path("speech_8k.wav"));
    opts.tail_silence_ms = 1000;
    opts.max_secs = 30;
    let out = Baresip::run(opts);
    let echo = assert_echo_audio(&out);
    eprintln!(
        "crash_safety: restart after kill -9 ready in {:.0} ms (same SIP UDP/TCP, API and RTP ports, \
         same state dir); {CALLS} calls lost, {repaired} recording headers repaired; new call: {echo}",
        restart.as_secs_f64() * 1000.0
    );
    assert!(
        restart < Duration::from_secs(5),
        "restart took {restart:?}\n{}",
        server.log_text()
    );
}
