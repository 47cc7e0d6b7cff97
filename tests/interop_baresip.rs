#![allow(clippy::unwrap_used)]
//! A real softphone (baresip) against the server: digest registration, the
//! echo and demo agents over UDP and TCP, judged by what the phone recorded.
//! A raw-UDP REGISTER with a made-up nonce checks the digest nonce handling.

mod common;

use common::baresip::assert_echo_audio;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::audio::{self, Audio};
use common::baresip::{Account, Baresip, Options, Outcome, Registration, Transport};
use common::{data_path, require_peer, Server};

const USER: &str = "1000";
const PASSWORD: &str = "horse-battery-1000";
const DOMAIN: &str = "agentline.test";

/// Users 1000 (with a password), routes `echo` and `demo`; `trusted` lets
/// 127.0.0.1 call routes without digest auth.
fn profile(trusted: bool) -> String {
    let trusted = if trusted { "\"127.0.0.1/32\"" } else { "" };
    format!(
        r#"
[sip]
domain = "{DOMAIN}"
trusted = [{trusted}]
max_calls = 10

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[routes]]
dial = "echo"
agent = {{ kind = "echo" }}

[[routes]]
dial = "demo"
agent = {{ kind = "demo" }}

[[routes]]
dial = "echo-dsp"
agent = {{ kind = "echo" }}
dsp = {{ denoise = true, vad = true, agc = true }}
"#
    )
}

fn speech() -> Audio {
    audio::read_wav(&data_path("speech_8k.wav")).unwrap()
}

/// Polls `/health` until `key` equals `want` (or `within` passes); returns the
/// last value seen.
fn wait_health(server: &Server, key: &str, want: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let v = server.health()[key].as_u64().unwrap_or(u64::MAX);
        if v == want || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn softphone_registers_with_right_password() {
    if require_peer("baresip").is_none() {
        return;
    }
    let server = Server::start(&profile(false));
    let mut phone = Baresip::start(Options::new(Account::new(
        USER,
        Some(PASSWORD),
        server.sip_port,
    )));
    let reg = phone.wait_registration(Duration::from_secs(10));
    let health = server.health();
    let out = phone.stop();
    let f = &out.facts;
    let ctx = format!("{}\n{}", out.sip_flow(), out.summary());
    assert_eq!(
        reg,
        Registration::Registered,
        "REGISTER not accepted\n{ctx}"
    );
    let statuses = f.register_statuses();
    assert_eq!(
        statuses.first(),
        Some(&401),
        "the first REGISTER must be challenged: {statuses:?}\n{ctx}"
    );
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}\n{ctx}");

    let challenge = f
        .messages
        .iter()
        .find(|m| m.method == "REGISTER" && m.status == Some(401))
        .unwrap();
    let www: Vec<&str> = challenge
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("WWW-Authenticate"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        www.iter().any(|h| {
            let p = digest_params(h);
            p.get("realm").map(String::as_str) == Some(DOMAIN)
                && p.get("qop")
                    .is_some_and(|q| q.split(',').any(|q| q.trim() == "auth"))
                && p.get("algorithm")
                    .is_none_or(|a| a.eq_ignore_ascii_case("MD5"))
        }),
        "no MD5 qop=auth challenge with realm {DOMAIN}: {www:?}"
    );
    let ok = f
        .messages
        .iter()
        .find(|m| m.method == "REGISTER" && m.status == Some(200))
        .unwrap();
    let contact = ok.header("Contact").unwrap_or_default();
    assert!(
        contact.contains("expires="),
        "200 to REGISTER needs Contact;expires=, got Contact: {contact:?}"
    );

    let regs = health["registrations"].as_u64();
    assert!(
        regs.is_some_and(|n| n >= 1),
        "/health while registered: {health}"
    );
    // baresip un-REGISTERs (expires=0) when it stops
    let left = wait_health(&server, "registrations", 0, Duration::from_secs(5));
    assert_eq!(left, 0, "binding left after the phone un-REGISTERed\n{ctx}");
}

#[test]
fn softphone_with_wrong_password_is_not_registered() {
    if require_peer("baresip").is_none() {
        return;
    }
    let server = Server::start(&profile(false));
    let mut phone = Baresip::start(Options::new(Account::new(
        USER,
        Some("not-the-password"),
        server.sip_port,
    )));
    let reg = phone.wait_registration(Duration::from_secs(10));
    let health = server.health();
    let out = phone.stop();
    let ctx = format!("{}\n{}", out.sip_flow(), out.summary());
    assert!(
        matches!(
            reg,
            Registration::Failed {
                code: Some(401),
                ..
            }
        ),
        "expected baresip to give up with 401, got {reg:?}\n{ctx}"
    );
    let statuses = out.facts.register_statuses();
    assert!(
        statuses.len() >= 2 && statuses.iter().all(|&s| s == 401),
        "every REGISTER (with and without credentials) must get 401: {statuses:?}\n{ctx}"
    );
    let authenticated = out
        .facts
        .sent_requests("REGISTER")
        .iter()
        .filter(|m| m.header("Authorization").is_some())
        .count();
    assert!(
        authenticated >= 1,
        "baresip never answered the challenge\n{ctx}"
    );
    assert_eq!(
        health["registrations"].as_u64(),
        Some(0),
        "/health after a wrong password: {health}"
    );
    assert!(!out.facts.registered, "{ctx}");
}

#[test]
fn register_with_made_up_nonce_is_rejected() {
    let server = Server::start(&profile(false));
    let mut ua = RawUa::new(server.sip_port);

    let first = ua.register(None);
    assert_eq!(
        first.status, 401,
        "unauthenticated REGISTER:\n{}",
        first.raw
    );
    let challenge = first.md5_challenge().unwrap_or_else(|| {
        panic!("no MD5 challenge in the 401:\n{}", first.raw);
    });
    assert_eq!(
        challenge.get("realm").map(String::as_str),
        Some(DOMAIN),
        "{}",
        first.raw
    );
    let genuine = challenge.get("nonce").cloned().unwrap_or_default();

    // A nonce the server never issued, with a response computed correctly for it.
    let forged = "bm90LWlzc3VlZC1ieS10aGUtc2VydmVyLTAwMDAx".to_string();
    let r = ua.register(Some(Creds::new(&challenge, &forged, PASSWORD)));
    assert_eq!(r.status, 401, "made-up nonce:\n{}", r.raw);
    let fresh = r.md5_challenge().unwrap_or_else(|| {
        panic!(
            "401 to a made-up nonce must carry a new challenge:\n{}",
            r.raw
        );
    });
    assert_ne!(
        fresh.get("nonce"),
        Some(&forged),
        "the server echoed the made-up nonce back:\n{}",
        r.raw
    );
    assert!(
        !fresh
            .get("stale")
            .is_some_and(|s| s.eq_ignore_ascii_case("true")),
        "stale=true is only for an expired nonce the server issued:\n{}",
        r.raw
    );

    // The genuine nonce with one character changed.
    let mut tampered = genuine.clone().into_bytes();
    if let Some(c) = tampered.last_mut() {
        *c = if *c == b'A' { b'B' } else { b'A' };
    }
    let tampered = String::from_utf8(tampered).unwrap();
    let r = ua.register(Some(Creds::new(&challenge, &tampered, PASSWORD)));
    assert_eq!(
        r.status, 401,
        "tampered nonce {tampered:?} (issued {genuine:?}):\n{}",
        r.raw
    );
    let regs = server.health()["registrations"].as_u64();
    assert_eq!(regs, Some(0), "bindings after forged nonces");

    // Control: the same computation with a nonce the server issued is
    // accepted, so the 401s above are about the nonce, not the digest maths.
    let latest = r.md5_challenge().unwrap_or(challenge);
    let nonce = latest.get("nonce").cloned().unwrap_or_default();
    let r = ua.register(Some(Creds::new(&latest, &nonce, PASSWORD)));
    assert_eq!(r.status, 200, "issued nonce, right password:\n{}", r.raw);
    let regs = server.health()["registrations"].as_u64();
    assert_eq!(regs, Some(1), "bindings after the good REGISTER");
}

/// What a running echo call looked like from the API.
struct DuringCall {
    calls: serde_json::Value,
    health: serde_json::Value,
}

/// baresip calls `target`, plays speech_8k.wav (+1 s of silence so the echo
/// of the last word is recorded), and the API is sampled while it talks.
fn call_with_speech(
    server: &Server,
    account: Account,
    target: &str,
    lead_silence_ms: u32,
    dial_after_register: bool,
) -> (Outcome, Option<DuringCall>) {
    call_with_speech_as(
        server,
        account,
        target,
        lead_silence_ms,
        dial_after_register,
        (8000, 1),
    )
}

fn call_with_speech_as(
    server: &Server,
    account: Account,
    target: &str,
    lead_silence_ms: u32,
    dial_after_register: bool,
    input_format: (u32, u16),
) -> (Outcome, Option<DuringCall>) {
    let mut opts = Options::new(account)
        .dial(target)
        .play(&data_path("speech_8k.wav"));
    opts.input_format = input_format;
    opts.lead_silence_ms = lead_silence_ms;
    opts.tail_silence_ms = 1000;
    opts.dial_after_register = dial_after_register;
    opts.max_secs = 40;
    let mut phone = Baresip::start(opts);
    if dial_after_register {
        let reg = phone.wait_registration(Duration::from_secs(10));
        assert_eq!(
            reg,
            Registration::Registered,
            "{}\n{}",
            common::baresip::flow(&phone.facts().messages),
            common::baresip::strip_trace(&phone.output())
        );
        phone.dial_now().unwrap();
    }
    let mut during = None;
    if phone.wait_call_established(Duration::from_secs(15)) {
        // the call runs for several seconds; give the API a moment
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let calls = server.calls();
            let n = calls.as_array().map(Vec::len).unwrap_or(0);
            if n > 0 || Instant::now() >= deadline {
                during = Some(DuringCall {
                    calls,
                    health: server.health(),
                });
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        phone.wait_call_closed(Duration::from_secs(35));
    }
    (phone.stop(), during)
}

/// The call was set up, carried PCMU both ways for as long as in.wav lasted,
/// and was torn down cleanly; the API showed it while it ran.
fn assert_clean_call(out: &Outcome, during: Option<&DuringCall>, route: &str) {
    assert_clean_call_with(out, during, route, "PCMU");
}

/// [`assert_clean_call`] for a call that must use `codec` (baresip's name).
fn assert_clean_call_with(out: &Outcome, during: Option<&DuringCall>, route: &str, codec: &str) {
    let f = &out.facts;
    let ctx = format!("{}\n{}", out.sip_flow(), out.summary());
    assert!(f.call_established, "call not established\n{ctx}");
    assert!(
        f.statuses("INVITE").contains(&200),
        "no 200 to INVITE: {:?}\n{ctx}",
        f.statuses("INVITE")
    );
    assert_eq!(f.codec.as_deref(), Some(codec), "codec\n{ctx}");
    assert!(
        f.ended_by_file,
        "the call must last until the phone's audio ends (hung up by the phone): {:?}\n{ctx}",
        f.call_closed
    );
    assert!(
        f.statuses("BYE").contains(&200),
        "the phone's BYE was not answered with 200: {:?}\n{ctx}",
        f.statuses("BYE")
    );
    assert!(!out.killed, "baresip did not exit cleanly\n{ctx}");

    let during = during.unwrap();
    let calls = during.calls.as_array().cloned().unwrap_or_default();
    assert_eq!(
        calls.len(),
        1,
        "GET /calls during the call: {}",
        during.calls
    );
    let c = &calls[0];
    assert_eq!(c["route"].as_str(), Some(route), "GET /calls: {c}");
    assert!(
        c["codec"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case(codec)),
        "GET /calls codec: {c}"
    );
    assert!(
        c["from"].as_str().is_some_and(|s| s.contains(USER)),
        "GET /calls from: {c}"
    );
    let h = &during.health;
    assert_eq!(h["active_calls"].as_u64(), Some(1), "/health during: {h}");
    assert!(
        h["rtp_ports_in_use"].as_u64().is_some_and(|n| n >= 1),
        "/health during: {h}"
    );
}

fn assert_idle_after(server: &Server) {
    let h = server.wait_idle(Duration::from_secs(10));
    for k in ["active_calls", "rtp_ports_in_use", "dialogs"] {
        assert_eq!(h[k].as_u64(), Some(0), "/health after the call: {h}");
    }
}

/// The echoed speech matches what was sent: level within 3 dB, round trip
/// under 100 ms (measured on the phone's own clock), no dropout over 40 ms.
fn echo_test(transport: Transport) {
    let server = Server::start(&profile(true));
    let account = Account::new(USER, None, server.sip_port)
        .regint(0)
        .transport(transport);
    let (out, during) = call_with_speech(&server, account, "echo", 0, false);
    assert_clean_call(&out, during.as_ref(), "echo");
    assert_echo_audio(&out);
    assert_idle_after(&server);
}

/// A wideband call: baresip offers only `codec` (`name/rate/channels`);
/// the echo must come back with the same level, delay and continuity
/// checks as G.711.
fn wideband_echo_test(codec: &str, rate: u32, channels: u16) {
    let server = Server::start(&profile(true));
    let account = Account::new(USER, None, server.sip_port)
        .regint(0)
        .audio_codecs(Some(&format!("{codec}/{rate}/{channels}")));
    let (out, during) = call_with_speech_as(&server, account, "echo", 0, false, (rate, channels));
    assert_clean_call_with(&out, during.as_ref(), "echo", codec);
    assert_echo_audio(&out);
    assert_idle_after(&server);
}

#[test]
fn opus_call_echoes_the_callers_speech() {
    if require_peer("baresip").is_none() {
        return;
    }
    wideband_echo_test("opus", 48000, 2);
}

#[test]
fn g722_call_echoes_the_callers_speech() {
    if require_peer("baresip").is_none() {
        return;
    }
    wideband_echo_test("G722", 16000, 1);
}

/// A route with caller-side DSP: the VAD sees the caller's phrase start and
/// end (one turn), and the denoised, gain-controlled echo still passes the
/// level, delay and gap checks (the phrase is clean speech).
#[test]
fn dsp_route_detects_the_callers_turn_and_still_echoes() {
    if require_peer("baresip").is_none() {
        return;
    }
    let server = Server::start(&profile(true));
    let account = Account::new(USER, None, server.sip_port).regint(0);
    let (out, during) = call_with_speech(&server, account, "echo-dsp", 0, false);
    assert_clean_call(&out, during.as_ref(), "echo-dsp");
    let log = server.log_text();
    assert!(
        log.contains("SpeechStarted"),
        "VAD saw no speech start:\n{log}"
    );
    assert!(
        log.contains("SpeechEnded"),
        "VAD saw no end of turn:\n{log}"
    );
    let report = audio::echo_report(&out.sent().unwrap(), &out.heard_aligned().unwrap(), 1000.0);
    assert!(
        report.level_diff_db().abs() <= 6.0,
        "denoised echo level off by more than 6 dB: {report}"
    );
    assert_idle_after(&server);
}

#[test]
fn echo_returns_the_callers_speech() {
    if require_peer("baresip").is_none() {
        return;
    }
    echo_test(Transport::Udp);
}

#[test]
fn echo_over_tcp_returns_the_callers_speech() {
    if require_peer("baresip").is_none() {
        return;
    }
    echo_test(Transport::Tcp);
}

#[test]
fn registered_softphone_call_is_challenged_then_echoed() {
    if require_peer("baresip").is_none() {
        return;
    }
    // no trusted sources: the INVITE needs the phone's digest credentials
    let server = Server::start(&profile(false));
    let account = Account::new(USER, Some(PASSWORD), server.sip_port);
    let (out, during) = call_with_speech(&server, account, "echo", 0, true);
    let invites = out.facts.statuses("INVITE");
    let challenged = invites.iter().position(|&s| s == 407);
    let answered = invites.iter().position(|&s| s == 200);
    assert!(
        matches!((challenged, answered), (Some(c), Some(a)) if c < a),
        "INVITE should get 407 and then, with credentials, 200: {invites:?}\n{}",
        out.sip_flow()
    );
    assert_clean_call(&out, during.as_ref(), "echo");
    assert_echo_audio(&out);
    assert_idle_after(&server);
}

#[test]
fn demo_plays_greeting_then_echo() {
    if require_peer("baresip").is_none() {
        return;
    }
    let greeting_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/greeting.wav");
    let greeting = audio::read_wav(&greeting_path)
        .unwrap_or_else(|e| panic!("the demo greeting asset is missing or bad: {e}"));
    let greeting_ms = greeting.duration_ms();
    let server = Server::start(&profile(true));
    // stay quiet through the greeting, then speak
    let lead = (greeting_ms + 1500.0) as u32;
    let account = Account::new(USER, None, server.sip_port).regint(0);
    let (out, during) = call_with_speech(&server, account, "demo", lead, false);
    assert_clean_call(&out, during.as_ref(), "demo");

    let heard = out.heard().unwrap();
    let ctx = format!(
        "heard: {}\ngreeting: {}\n{}",
        audio::describe(&heard),
        audio::describe(&greeting),
        out.summary()
    );
    // 1. the greeting, from the start of what the phone heard
    let (g_off, g_corr) = audio::find_segment(&heard, &greeting)
        .unwrap_or_else(|| panic!("nothing heard to search for the greeting\n{ctx}"));
    assert!(
        g_corr >= 0.8,
        "greeting not heard: best match corr {g_corr:.3} at {g_off:.0} ms\n{ctx}"
    );
    assert!(
        (-100.0..1000.0).contains(&g_off),
        "greeting starts {g_off:.0} ms into what the phone heard, expected -100..1000 ms\n{ctx}"
    );
    // its level, over the part that was recorded (a negative offset means the
    // phone missed the first packets)
    let (g8, h8) = (greeting.to_8k().samples, heard.to_8k().samples);
    let g_start = (g_off * 8.0).round() as i64;
    let skip = (-g_start).max(0) as usize;
    let from = g_start.max(0) as usize;
    let len = (g8.len() - skip.min(g8.len())).min(h8.len().saturating_sub(from));
    let played = Audio::new(8000, g8[skip..skip + len].to_vec());
    let heard_greeting = Audio::new(8000, h8[from..from + len].to_vec());
    if let Err(e) = audio::rms_within_db(&played, &heard_greeting, 3.0) {
        panic!("greeting level: {e}\n{ctx}");
    }

    // 2. then the caller's own speech, echoed right after it was said
    let aligned = out.heard_aligned().unwrap();
    let (s_off, s_corr) = audio::find_segment(&aligned, &speech())
        .unwrap_or_else(|| panic!("nothing heard to search for the echo\n{ctx}"));
    assert!(
        s_corr >= 0.8,
        "caller's speech not echoed: best match corr {s_corr:.3} at {s_off:.0} ms\n{ctx}"
    );
    let delay = s_off - lead as f64;
    assert!(
        (-20.0..100.0).contains(&delay),
        "echo of speech said at {lead} ms heard at {s_off:.0} ms ({delay:.0} ms later)\n{ctx}"
    );
    let greeting_end = g_off + out.heard_offset_ms().unwrap() + greeting_ms;
    assert!(
        greeting_end <= s_off + 20.0,
        "greeting (ends at {greeting_end:.0} ms) overlaps the echo (from {s_off:.0} ms)\n{ctx}"
    );
    eprintln!(
        "demo: greeting at {g_off:.0} ms (corr {g_corr:.3}), echo {delay:.0} ms after the speech (corr {s_corr:.3})"
    );
    assert_idle_after(&server);
}

// ---- a raw SIP UA for the nonce test -------------------------------------

/// Parsed `Digest k=v, k="v"` parameters (keys lower-case).
fn digest_params(h: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let rest = h.trim();
    let rest = rest
        .strip_prefix("Digest")
        .or_else(|| rest.strip_prefix("digest"))
        .unwrap_or(rest);
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
            val = val.trim().to_string();
        }
        out.insert(key, val);
    }
    out
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    raw: String,
}

impl Reply {
    /// The WWW-Authenticate challenge for MD5 (or without an algorithm).
    fn md5_challenge(&self) -> Option<std::collections::HashMap<String, String>> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("WWW-Authenticate"))
            .map(|(_, v)| digest_params(v))
            .find(|p| {
                p.get("algorithm")
                    .is_none_or(|a| a.eq_ignore_ascii_case("MD5"))
            })
    }
}

struct Creds {
    realm: String,
    nonce: String,
    opaque: Option<String>,
    qop: bool,
    password: String,
}

impl Creds {
    fn new(challenge: &std::collections::HashMap<String, String>, nonce: &str, pw: &str) -> Creds {
        Creds {
            realm: challenge.get("realm").cloned().unwrap_or_default(),
            nonce: nonce.to_string(),
            opaque: challenge.get("opaque").cloned(),
            qop: challenge
                .get("qop")
                .is_some_and(|q| q.split(',').any(|q| q.trim() == "auth")),
            password: pw.to_string(),
        }
    }
}

struct RawUa {
    sock: UdpSocket,
    server_port: u16,
    call_id: String,
    cseq: u32,
}

impl RawUa {
    fn new(server_port: u16) -> RawUa {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        RawUa {
            sock,
            server_port,
            call_id: format!("nonce-test-{port}-{}@127.0.0.1", std::process::id()),
            cseq: 0,
        }
    }

    /// Sends one REGISTER (retransmitted up to 4 times) and returns the final
    /// response.
    fn register(&mut self, creds: Option<Creds>) -> Reply {
        self.cseq += 1;
        let local = self.sock.local_addr().unwrap().port();
        let sp = self.server_port;
        let uri = format!("sip:127.0.0.1:{sp}");
        let branch = format!("z9hG4bK-{}-{}-{}", std::process::id(), local, self.cseq);
        let mut auth = String::new();
        if let Some(c) = creds {
            let ha1 = md5_hex(format!("{USER}:{}:{}", c.realm, c.password).as_bytes());
            let ha2 = md5_hex(format!("REGISTER:{uri}").as_bytes());
            let (cnonce, nc) = ("0a4f113b", "00000001");
            let (response, qop) = if c.qop {
                (
                    md5_hex(format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce).as_bytes()),
                    format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""),
                )
            } else {
                (
                    md5_hex(format!("{ha1}:{}:{ha2}", c.nonce).as_bytes()),
                    String::new(),
                )
            };
            let opaque = c
                .opaque
                .map(|o| format!(", opaque=\"{o}\""))
                .unwrap_or_default();
            auth = format!(
                "Authorization: Digest username=\"{USER}\", realm=\"{}\", nonce=\"{}\", \
                 uri=\"{uri}\", response=\"{response}\", algorithm=MD5{qop}{opaque}\r\n",
                c.realm, c.nonce
            );
        }
        let msg = format!(
            "REGISTER {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{USER}@127.0.0.1:{sp}>;tag=raw{local}\r\n\
             To: <sip:{USER}@127.0.0.1:{sp}>\r\n\
             Call-ID: {}\r\n\
             CSeq: {} REGISTER\r\n\
             Contact: <sip:{USER}@127.0.0.1:{local}>\r\n\
             Expires: 60\r\n\
             {auth}\
             User-Agent: agentline-nonce-test\r\n\
             Content-Length: 0\r\n\r\n",
            self.call_id, self.cseq
        );
        let dst = ("127.0.0.1", self.server_port);
        for _ in 0..4 {
            self.sock.send_to(msg.as_bytes(), dst).unwrap();
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                let mut buf = [0u8; 65535];
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    continue;
                };
                let raw = String::from_utf8_lossy(&buf[..n]).to_string();
                let Some(reply) = parse_reply(&raw) else {
                    continue;
                };
                let cseq = reply
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("CSeq"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                if reply.status >= 200 && cseq == format!("{} REGISTER", self.cseq) {
                    return reply;
                }
            }
        }
        panic!("no final response to REGISTER CSeq {}:\n{msg}", self.cseq);
    }
}

fn parse_reply(raw: &str) -> Option<Reply> {
    let head = raw.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .strip_prefix("SIP/2.0 ")?
        .get(..3)?
        .parse()
        .ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Reply {
        status,
        headers,
        raw: raw.to_string(),
    })
}

/// MD5 (RFC 1321), lower-case hex; small enough to keep the test free of
/// the server's own digest code.
fn md5_hex(data: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32)
        .collect();
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    let mut h: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    for block in msg.chunks_exact(64) {
        let m: Vec<u32> = block
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
    }
    h.iter()
        .flat_map(|v| v.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn md5_of_the_rfc_1321_test_suite() {
    // guards the digest maths the nonce test relies on
    assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        md5_hex(
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
        ),
        "57edf4a22be3c955ac49da2e2107b67a"
    );
}
