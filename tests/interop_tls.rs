#![allow(clippy::unwrap_used)]
//! SIP over TLS with SRTP (SDES) against a real softphone: baresip trusts
//! the certificate `agentline gen-cert` wrote, registers over TLS, calls
//! the echo agent with `mediaenc=srtp` (RTP/AVP + a=crypto, best effort) or
//! `srtp-mand` (RTP/SAVP), and the echo passes the audio checks. tshark
//! watches the RTP ports: every packet carries an SRTP tag and its payload
//! looks like ciphertext, not G.711 speech.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::baresip::{assert_echo_audio, Account, Baresip, Options, Registration, Transport};
use common::{data_path, free_port, require_peer, Server};

const USER: &str = "1000";
const PASSWORD: &str = "tls-horse-1000";

fn gen_cert(dir: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_agentline"))
        .args(["gen-cert", "--dir"])
        .arg(dir)
        .args(["--name", "127.0.0.1", "--name", "localhost"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gen-cert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("agentline.crt")
}

struct TlsServer {
    server: Server,
    tls_port: u16,
    ca: PathBuf,
    _certs: tempfile::TempDir,
}

fn start_tls_server() -> TlsServer {
    let certs = tempfile::tempdir().unwrap();
    let ca = gen_cert(certs.path());
    let profile = format!(
        r#"
[sip]
domain = "agentline.test"
tls_cert = "{cert}"
tls_key = "{key}"

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[routes]]
dial = "echo"
agent = {{ kind = "echo" }}
"#,
        cert = ca.display(),
        key = certs.path().join("agentline.key").display(),
    );
    let tls_port = free_port();
    let listen = format!("tls:127.0.0.1:{tls_port}");
    let server = Server::start_with_args(&profile, &["--sip-listen", &listen]);
    TlsServer {
        server,
        tls_port,
        ca,
        _certs: certs,
    }
}

/// Captures UDP on the server's RTP range into a pcap until stopped.
struct Capture {
    child: Child,
    file: PathBuf,
    tshark: PathBuf,
}

impl Capture {
    fn start(tshark: &Path, ports: (u16, u16), dir: &Path) -> Capture {
        let file = dir.join("rtp.pcap");
        let child = Command::new(tshark)
            .args(["-i", "lo", "-q", "-w"])
            .arg(&file)
            .arg("-f")
            .arg(format!("udp portrange {}-{}", ports.0, ports.1))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // tshark needs a moment before it captures.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture {
            child,
            file,
            tshark: tshark.to_path_buf(),
        }
    }

    /// Stops the capture and returns each UDP payload.
    fn payloads(mut self) -> Vec<Vec<u8>> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let out = Command::new(&self.tshark)
            .arg("-r")
            .arg(&self.file)
            .args(["-T", "fields", "-e", "data.data"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| hex::decode(l.trim().replace(':', "")).unwrap())
            .collect()
    }
}

/// Shannon entropy in bits per byte of all bytes together.
fn entropy(bytes: &[u8]) -> f64 {
    let mut counts = [0usize; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn srtp_call(mediaenc: &str) {
    if require_peer("baresip").is_none() {
        return;
    }
    let Some(tshark) = require_peer("tshark") else {
        return;
    };
    let s = start_tls_server();
    let mut account = Account::new(USER, Some(PASSWORD), s.tls_port).transport(Transport::Tls);
    account.extra.push(format!("mediaenc={mediaenc}"));
    let mut opts = Options::new(account)
        .dial("echo")
        .play(&data_path("speech_8k.wav"));
    opts.dial_after_register = true;
    opts.max_secs = 40;
    opts.ca_file = Some(s.ca.clone());
    let capture = Capture::start(&tshark, s.server.rtp, s.server.dir.path());
    let mut phone = Baresip::start(opts);
    let reg = phone.wait_registration(Duration::from_secs(10));
    assert_eq!(
        reg,
        Registration::Registered,
        "REGISTER over TLS\n{}\n{}",
        common::baresip::strip_trace(&phone.output()),
        s.server.log_text()
    );
    phone.dial_now().unwrap();
    assert!(
        phone.wait_call_established(Duration::from_secs(15)),
        "call over TLS not established\n{}\n{}",
        common::baresip::strip_trace(&phone.output()),
        s.server.log_text()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let calls = s.server.calls();
    phone.wait_call_closed(Duration::from_secs(35));
    let out = phone.stop();
    let payloads = capture.payloads();

    // Signalling went over TLS.
    let invite = out
        .facts
        .sent_requests("INVITE")
        .last()
        .map(|m| (m.transport.clone(), m.body.clone()))
        .unwrap();
    assert_eq!(invite.0, "TLS", "INVITE transport\n{}", out.sip_flow());
    assert!(invite.1.contains("a=crypto:"), "offer: {}", invite.1);
    let call = &calls[0];
    assert_eq!(
        call["srtp"], "AES_CM_128_HMAC_SHA1_80",
        "the call must run SRTP: {call}"
    );
    assert_echo_audio(&out);

    // On the wire: 20 ms PCMU (160 bytes) + 12-byte header + 10-byte tag,
    // and ciphertext (G.711 speech and silence is far from uniform).
    let rtp: Vec<&Vec<u8>> = payloads
        .iter()
        .filter(|p| p.len() >= 12 && p[0] >> 6 == 2 && !(192..=223).contains(&p[1]))
        .collect();
    assert!(rtp.len() > 200, "captured {} RTP packets", rtp.len());
    let wrong = rtp.iter().filter(|p| p.len() != 12 + 160 + 10).count();
    assert_eq!(wrong, 0, "RTP packets without an 80-bit SRTP tag");
    let body: Vec<u8> = rtp.iter().flat_map(|p| p[12..172].to_vec()).collect();
    let h = entropy(&body);
    assert!(h > 7.9, "payload entropy {h:.2} bits/byte: not encrypted?");
    eprintln!(
        "{} SRTP packets, payload entropy {h:.3} bits/byte",
        rtp.len()
    );
    s.server.wait_idle(Duration::from_secs(10));
}

#[test]
fn tls_softphone_calls_with_best_effort_srtp() {
    srtp_call("srtp");
}

#[test]
fn tls_softphone_calls_with_mandatory_srtp() {
    srtp_call("srtp-mand");
}

#[test]
fn plain_rtp_entropy_is_far_below_the_ciphertext_threshold() {
    // The check above must be able to fail: the same speech as G.711.
    let speech = common::audio::read_wav(&data_path("speech_8k.wav")).unwrap();
    let mulaw: Vec<u8> = speech
        .samples
        .iter()
        .map(|&s| agentline::media::g711::linear_to_ulaw((s * 32767.0) as i16))
        .collect();
    let h = entropy(&mulaw);
    assert!(h < 7.5, "plain G.711 speech entropy {h:.2}");
}
