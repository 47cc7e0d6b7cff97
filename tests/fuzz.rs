//! Fuzzing on stable Rust: every parser that reads bytes from the network
//! or a provider runs a fixed number of mutated inputs (seeded from
//! `tests/fuzz/corpus/<target>/` and from the crate's own encoders) with
//! zero panics and bounded memory. `FUZZ_ITERS=1000000` runs longer,
//! `FUZZ_SEED=n` explores other inputs (the default seed is fixed, so CI
//! runs are reproducible). A crashing input is written to
//! `target/fuzz-crashes/<target>/`; once fixed it goes into the corpus.

#[path = "fuzz/engine.rs"]
mod engine;

use std::path::Path;
use std::time::Instant;

use agentline::media::rtcp::{self, RtcpSession};
use agentline::media::rtp::{self, PayloadType, RtpPacket, SeqNo, Ssrc};
use agentline::media::srtp::{SrtpSession, SrtpSuite, MASTER_KEY_LEN};
use engine::Target;

/// RSS may grow this much (kB) from the warm-up to the end of a target.
const RSS_GROWTH_LIMIT_KB: u64 = 64 * 1024;

fn iters(default: u64) -> u64 {
    std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_a9e1)
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    engine::load_corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/corpus")
            .join(name),
    )
}

fn words(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|w| w.as_bytes().to_vec()).collect()
}

/// Runs a target: `Err` with every panic (each with its input) or with
/// the RSS growth past the limit. Skipped (Ok) when `FUZZ_TARGET` names
/// another target.
fn fuzz(t: Target, default_iters: u64) -> Result<(), String> {
    if std::env::var("FUZZ_TARGET").is_ok_and(|only| only != t.name) {
        return Ok(());
    }
    let n = iters(default_iters);
    let r = engine::run(&t, n, seed());
    let growth = r.rss_after_kb.saturating_sub(r.rss_before_kb);
    eprintln!(
        "fuzz {}: {} inputs in {:.1} s ({:.0}/s), {} panics, RSS {} -> {} kB",
        t.name,
        r.executed,
        r.elapsed.as_secs_f64(),
        r.executed as f64 / r.elapsed.as_secs_f64().max(1e-9),
        r.panics.len(),
        r.rss_before_kb,
        r.rss_after_kb
    );
    if let Some(c) = r.panics.first() {
        let all: Vec<String> = r
            .panics
            .iter()
            .map(|c| format!("  {} <- {:?}", c.message, c.saved_to))
            .collect();
        return Err(format!(
            "fuzz {}: {} panicking inputs (seed {}):\n{}\nfirst input: \"{}\"",
            t.name,
            r.panics.len(),
            seed(),
            all.join("\n"),
            engine::escaped(&c.input)
        ));
    }
    if growth > RSS_GROWTH_LIMIT_KB {
        return Err(format!(
            "fuzz {}: RSS grew {growth} kB over {n} inputs (limit {RSS_GROWTH_LIMIT_KB} kB)",
            t.name
        ));
    }
    Ok(())
}

/// Every target in turn, in one test: RSS is the process's, so targets
/// running in parallel threads would be charged each other's peaks.
#[test]
fn every_parser_takes_mutated_input_without_a_panic_in_bounded_memory() {
    let targets: &[fn() -> Result<(), String>] = &[
        fuzz_sip_message,
        fuzz_sip_stream,
        fuzz_sdp,
        fuzz_authorization,
        fuzz_rtp,
        fuzz_rtcp,
        fuzz_srtp,
        fuzz_media_session,
        fuzz_dtmf,
        fuzz_wav,
        fuzz_audiosocket,
        fuzz_openai_realtime,
        fuzz_avr_sts,
        fuzz_avr_pipeline,
        fuzz_openai_compat_llm,
        fuzz_openai_compat_speech,
    ];
    let failures: Vec<String> = targets.iter().filter_map(|t| t().err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

const SIP_WORDS: &[&str] = &[
    "\r\n",
    "\r\n\r\n",
    "\n",
    " ",
    ";",
    ":",
    ",",
    "=",
    "\"",
    "<",
    ">",
    "@",
    "sip:",
    "sips:",
    "tel:",
    "SIP/2.0",
    "SIP/2.0/UDP ",
    "SIP/2.0/TCP ",
    "SIP/7.0",
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "UPDATE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PRACK",
    "Via: ",
    "v: ",
    "From: ",
    "f: ",
    "To: ",
    "t: ",
    "Call-ID: ",
    "i: ",
    "CSeq: ",
    "Contact: ",
    "m: ",
    "Content-Length: ",
    "l: ",
    "Content-Type: ",
    "c: ",
    "Max-Forwards: ",
    "Expires: ",
    "Route: ",
    "Record-Route: ",
    "Authorization: ",
    "Proxy-Authorization: ",
    "WWW-Authenticate: ",
    "Session-Expires: ",
    "Min-SE: ",
    "Supported: timer",
    "Require: ",
    "Event: refer",
    "P-Asserted-Identity: ",
    "Refer-To: ",
    "Retry-After: ",
    "Date: ",
    "Allow: ",
    "Accept: ",
    ";tag=",
    ";branch=z9hG4bK",
    ";rport",
    ";received=",
    ";expires=",
    ";transport=tcp",
    ";lr",
    ";q=0.5",
    "*",
    "[::1]",
    "[",
    "]",
    "%00",
    "%",
    "Digest ",
    "username=",
    "realm=",
    "nonce=",
    "uri=",
    "response=",
    "qop=auth",
    "nc=",
    "cnonce=",
    "algorithm=SHA-256",
    "application/sdp",
    "application/dtmf-relay",
    "Signal=",
    "SIP/2.0 200 OK",
    "SIP/2.0 302 Moved",
    "v=0",
    "m=audio ",
    "c=IN IP4 ",
    "c=IN IP6 ",
    "a=rtpmap:",
    "a=crypto:",
    "a=fmtp:",
    "inline:",
    "RTP/SAVP",
    "4294967296",
    "\u{0}",
    "\u{feff}",
    "\u{7f}",
    "\t",
    "\r",
    " \r\n ",
];

const SDP_WORDS: &[&str] = &[
    "\r\n",
    "\n",
    " ",
    "/",
    ":",
    "=",
    "v=0",
    "o=- 1 1 IN IP4 ",
    "s=-",
    "c=IN IP4 ",
    "c=IN IP6 ",
    "c=IN IP4 224.0.0.1",
    "c=IN IP4 255.255.255.255",
    "t=0 0",
    "m=audio ",
    "m=video ",
    " RTP/AVP ",
    " RTP/SAVP ",
    " UDP/TLS/RTP/SAVP ",
    "a=rtpmap:",
    "PCMU/8000",
    "PCMA/8000",
    "G722/8000",
    "opus/48000/2",
    "telephone-event/8000",
    "a=fmtp:",
    "0-15",
    "a=ptime:",
    "a=maxptime:",
    "a=sendrecv",
    "a=sendonly",
    "a=recvonly",
    "a=inactive",
    "a=rtcp:",
    "a=rtcp-mux",
    "a=crypto:1 ",
    "AES_CM_128_HMAC_SHA1_80 ",
    "AES_CM_128_HMAC_SHA1_32 ",
    "inline:",
    "|2^20",
    "|1:4",
    "0",
    "8",
    "9",
    "96",
    "101",
    "111",
    "127",
    "128",
    "255",
    "65535",
    "65536",
    "0.0.0.0",
    "::",
];

const JSON_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "null",
    "true",
    "false",
    "-1",
    "1e999",
    "\"type\"",
    "\"delta\"",
    "\"audio\"",
    "\"text\"",
    "\"content\"",
    "\"transcript\"",
    "\"error\"",
    "\"message\"",
    "\"arguments\"",
    "\"name\"",
    "\"transfer_call\"",
    "\"end_call\"",
    "\"to\"",
    "\"choices\"",
    "\"role\"",
    "data: ",
    "data: [DONE]",
    "\n\n",
    "\n",
    "AAAA",
    "=",
    "==",
    "\"response.output_audio.delta\"",
    "\"response.function_call_arguments.done\"",
    "\"input_audio_buffer.speech_started\"",
    "\"interruption\"",
    "\"tool_invocation\"",
];

const BIN_WORDS: &[&str] = &[
    "\u{0}\u{0}\u{0}\u{0}",
    "\u{80}",
    "RIFF",
    "WAVE",
    "fmt ",
    "data",
    "LIST",
];

fn text_target(name: &'static str, dict: &[&str], run: fn(&[u8])) -> Target {
    Target {
        name,
        corpus: corpus(name),
        dict: words(dict),
        max_len: 16 * 1024,
        run,
    }
}

/// `n` cut points from the input's own bytes (where a stream splits).
fn cuts(data: &[u8], n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = data
        .iter()
        .step_by(7)
        .take(n)
        .map(|&b| usize::from(b) * data.len() / 256)
        .collect();
    v.sort_unstable();
    v
}

// ---- SIP ----------------------------------------------------------------

fn fuzz_sip_message() -> Result<(), String> {
    fuzz(
        text_target("sip", SIP_WORDS, agentline::sip::fuzz_entry::message),
        300_000,
    )
}

fn fuzz_sip_stream() -> Result<(), String> {
    let mut t = text_target("sip", SIP_WORDS, |d| {
        agentline::sip::fuzz_entry::stream(d, &cuts(d, 3))
    });
    // Back-to-back messages and keep-alives on one connection.
    let c = t.corpus.clone();
    for (a, b) in c.iter().zip(c.iter().skip(1)).step_by(9) {
        t.corpus
            .push([a.as_slice(), b"\r\n\r\n", b.as_slice()].concat());
    }
    t.name = "sip_stream";
    fuzz(t, 150_000)
}

fn fuzz_sdp() -> Result<(), String> {
    fuzz(
        text_target("sdp", SDP_WORDS, agentline::sip::fuzz_entry::sdp),
        100_000,
    )
}

fn fuzz_authorization() -> Result<(), String> {
    fuzz(
        text_target(
            "authorization",
            SIP_WORDS,
            agentline::sip::fuzz_entry::authorization,
        ),
        100_000,
    )
}

// ---- media --------------------------------------------------------------

/// Seeds from the crate's own encoders next to the captured ones.
fn rtp_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (pt, len) in [(0u8, 160usize), (8, 160), (9, 160), (101, 4), (111, 60)] {
        let p = RtpPacket {
            marker: pt == 101,
            payload_type: PayloadType(pt),
            seq: SeqNo(65_534),
            timestamp: 0xffff_ff00,
            ssrc: Ssrc(0x0102_0304),
            payload: &vec![0x55; len],
        };
        let mut buf = Vec::new();
        p.write(&mut buf);
        out.push(buf);
    }
    out
}

fn rtp_target(d: &[u8]) {
    let now = Instant::now();
    let mut stats = RtcpSession::new(Ssrc(0x0102_0304), "fuzz@agentline".into(), 8000, now);
    if rtp::looks_like_rtcp(d) {
        let _ = stats.handle_rtcp(now, 0xeeae_bb79_3638_0021, d);
    } else if let Ok(p) = RtpPacket::parse(d) {
        stats.on_rtp_received(now, p.ssrc, p.seq, p.timestamp);
        let mut dtmf = agentline::media::dtmf::DtmfReceiver::default();
        let _ = dtmf.handle(p.seq.0, p.timestamp, p.payload);
    }
    let _ = stats.quality();
}

fn fuzz_rtp() -> Result<(), String> {
    let mut t = text_target("rtp", BIN_WORDS, rtp_target);
    t.corpus.extend(rtp_seeds());
    t.max_len = 2048;
    fuzz(t, 100_000)
}

fn rtcp_target(d: &[u8]) {
    let now = Instant::now();
    let _ = rtcp::parse_compound(d);
    let mut s = RtcpSession::new(Ssrc(0x71b3_416b), "fuzz@agentline".into(), 8000, now);
    let _ = s.handle_rtcp(now, 0xeeae_bb79_3638_0021, d);
    let _ = s.handle_rtcp(now, 0, d);
    let _ = (s.quality(), s.peer_sent_bye());
    let _ = s.handle_timeout(
        now + std::time::Duration::from_secs(6),
        0xeeae_bb7a_0000_0000,
    );
}

fn fuzz_rtcp() -> Result<(), String> {
    let mut t = text_target("rtcp", BIN_WORDS, rtcp_target);
    t.max_len = 2048;
    fuzz(t, 100_000)
}

const KEY: [u8; MASTER_KEY_LEN] = [
    0xe1, 0xf9, 0x7a, 0x0d, 0x3e, 0x01, 0x8b, 0xe0, 0xd6, 0x4f, 0xa3, 0x2c, 0x06, 0xde, 0x41, 0x39,
    0x0e, 0xc6, 0x75, 0xad, 0x49, 0x8a, 0xfe, 0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6,
];

/// SRTP with a fixed key: the bytes as they come (must be refused unless
/// authentic), and as a plaintext packet protected, unprotected (must give
/// it back) and tampered with (must be refused).
fn srtp_target(d: &[u8]) {
    for suite in [
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
    ] {
        let Ok(mut rx) = SrtpSession::new(suite, &KEY, &KEY) else {
            return;
        };
        let _ = rx.unprotect(d);
        let Ok(mut tx) = SrtpSession::new(suite, &KEY, &KEY) else {
            return;
        };
        let Some(p) = tx.protect(d) else {
            continue;
        };
        let Ok(mut rx) = SrtpSession::new(suite, &KEY, &KEY) else {
            return;
        };
        let back = rx.unprotect(&p);
        assert_eq!(
            back.as_deref(),
            Some(d),
            "SRTP round trip changed the packet"
        );
        if let Some(&b) = d.first() {
            let mut bad = p.clone();
            let i = usize::from(b) % bad.len();
            bad[i] ^= 0x01;
            let Ok(mut rx) = SrtpSession::new(suite, &KEY, &KEY) else {
                return;
            };
            assert!(
                rx.unprotect(&bad).is_none(),
                "a tampered SRTP packet was accepted"
            );
        }
    }
}

fn fuzz_srtp() -> Result<(), String> {
    let mut t = text_target("srtp", BIN_WORDS, srtp_target);
    t.corpus.extend(rtp_seeds());
    t.max_len = 1500;
    fuzz(t, 100_000)
}

/// Datagrams of one input are separated by this (a dictionary token, so
/// mutations add and remove packet boundaries).
const PACKET_SEP: &[u8] = b"|PKT|";

/// A call's media session fed the datagrams of one input 20 ms apart, as
/// the driver does (RTCP-looking ones to `handle_rtcp`), with its timers
/// run and its output drained: jitter buffer, decoders (garbage G.722 and
/// Opus payloads too), DTMF, loss concealment, RTCP.
fn media_session_target(d: &[u8]) {
    use agentline::media::codec::Codec;
    use agentline::media::session::{Direction, MediaParams, Session};
    let (codec, pt) = match d.first().map_or(0, |b| b & 3) {
        0 => (Codec::Pcmu, 0),
        1 => (Codec::Pcma, 8),
        2 => (Codec::G722, 9),
        _ => (Codec::Opus, 111),
    };
    let params = MediaParams {
        send_silence: true,
        codec,
        pt,
        te_pt: Some(101),
        ptime_ms: 20,
        remote: Some(([127, 0, 0, 1], 4000).into()),
        remote_rtcp: None,
        rtcp_mux: d.get(1).is_some_and(|b| b & 1 == 1),
        direction: Direction::SendRecv,
        jitter_min_ms: 20,
        jitter_max_ms: 200,
        agent_rate: 16_000,
        codec_fmtp: None,
    };
    let t0 = Instant::now();
    let Ok(mut s) = Session::new(t0, std::time::UNIX_EPOCH, params, 1, 100, 1000) else {
        return;
    };
    let from = ([127, 0, 0, 1], 4000).into();
    let mut now = t0;
    let rest = d.get(2..).unwrap_or_default();
    let mut packets: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while let Some(i) = rest[at..]
        .windows(PACKET_SEP.len())
        .position(|w| w == PACKET_SEP)
    {
        packets.push(&rest[at..at + i]);
        at += i + PACKET_SEP.len();
    }
    packets.push(&rest[at..]);
    for p in packets.into_iter().take(200) {
        now += std::time::Duration::from_millis(20);
        if rtp::looks_like_rtcp(p) {
            s.handle_rtcp(now, from, p);
        } else {
            s.handle_rtp(now, from, p);
        }
        s.handle_agent_audio(&[0; 320]);
        let mut rounds = 0;
        while s.next_timeout() <= now {
            s.handle_timeout(now);
            rounds += 1;
            assert!(
                rounds < 1000,
                "handle_timeout does not move next_timeout past now"
            );
        }
        while s.poll_transmit().is_some() {}
        while s.poll_event().is_some() {}
    }
    let _ = (s.stats(), s.quality(), s.jitter_stats());
}

fn fuzz_media_session() -> Result<(), String> {
    let mut corpus = Vec::new();
    for (sel, pt, payload) in [
        (0u8, 0u8, vec![0xffu8; 160]),
        (1, 8, vec![0xd5; 160]),
        (2, 9, vec![0x7f; 160]),
        (3, 111, vec![0xf8, 0xff, 0xfe]),
        (0, 101, vec![5, 0x8a, 0x03, 0x20]),
    ] {
        let mut input = vec![sel, 0];
        for i in 0..30u16 {
            let mut buf = Vec::new();
            RtpPacket {
                marker: i == 0,
                payload_type: PayloadType(pt),
                seq: SeqNo(65_520u16.wrapping_add(i)),
                timestamp: 0xffff_f000u32.wrapping_add(160 * u32::from(i)),
                ssrc: Ssrc(0x0a0b_0c0d),
                payload: &payload,
            }
            .write(&mut buf);
            input.extend_from_slice(&buf);
            input.extend_from_slice(PACKET_SEP);
        }
        input.extend_from_slice(&corpus_rtcp());
        corpus.push(input);
    }
    fuzz(
        Target {
            name: "media_session",
            corpus,
            dict: [PACKET_SEP, b"\x80\x00", b"\x80\x65", b"\x81\xc8"]
                .iter()
                .map(|w| w.to_vec())
                .collect(),
            max_len: 16 * 1024,
            run: media_session_target,
        },
        8_000,
    )
}

/// The baresip SR+SDES capture, to end the session seeds with RTCP.
fn corpus_rtcp() -> Vec<u8> {
    corpus("rtcp").into_iter().next().unwrap_or_default()
}

fn fuzz_dtmf() -> Result<(), String> {
    let mut t = text_target("dtmf", BIN_WORDS, |d| {
        let mut r = agentline::media::dtmf::DtmfReceiver::default();
        for (i, chunk) in d.chunks(4).enumerate() {
            let _ = r.handle(i as u16, 0, chunk);
        }
        let _ = r.handle(0, 0, d);
    });
    t.max_len = 64;
    fuzz(t, 100_000)
}

fn fuzz_wav() -> Result<(), String> {
    let mut t = text_target("wav", BIN_WORDS, |d| {
        let _ = agentline::media::wav::header(d);
        if let Ok(w) = agentline::media::wav::Wav::parse(d) {
            let _ = w.mono();
        }
    });
    t.corpus.push(agentline::media::wav::mono_bytes(
        &[0, 1000, -1000, 32767],
        8000,
    ));
    t.max_len = 4096;
    fuzz(t, 100_000)
}

// ---- agents -------------------------------------------------------------

fn fuzz_audiosocket() -> Result<(), String> {
    use agentline::agent::audiosocket::{Frame, Parser};
    let mut t = text_target("audiosocket", BIN_WORDS, |d| {
        let mut p = Parser::default();
        let mut at = 0;
        for end in cuts(d, 4).into_iter().chain([d.len()]) {
            p.push(&d[at..end.max(at)]);
            at = end.max(at);
            loop {
                match p.next_frame() {
                    Ok(Some(Frame::Audio(a))) => {
                        let _ = agentline::media::pcm::s16le_to_i16(&a);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return, // the connection is dropped
                }
            }
        }
    });
    t.corpus.push(
        [
            Frame::Uuid([7; 16]).encode(),
            Frame::Audio(vec![1; 320]).encode(),
            Frame::Dtmf(b'#').encode(),
            Frame::Error(Some(3)).encode(),
            Frame::Hangup.encode(),
        ]
        .concat(),
    );
    t.max_len = 4096;
    fuzz(t, 100_000)
}

fn fuzz_openai_realtime() -> Result<(), String> {
    fuzz(
        text_target("openai_realtime", JSON_WORDS, |d| {
            agentline::agent::openai_realtime::fuzz_server_event(&String::from_utf8_lossy(d))
        }),
        100_000,
    )
}

fn fuzz_avr_sts() -> Result<(), String> {
    fuzz(
        text_target("avr_sts", JSON_WORDS, |d| {
            let mut s = agentline::agent::avr_sts::Session::default();
            let now = Instant::now();
            // Two messages: an odd byte of audio carries over.
            let text = String::from_utf8_lossy(d);
            let _ = s.on_text(&text, now);
            let _ = s.on_text(&text, now);
        }),
        100_000,
    )
}

fn fuzz_avr_pipeline() -> Result<(), String> {
    fuzz(
        text_target("avr_pipeline", JSON_WORDS, |d| {
            let mut p = agentline::agent::avr_pipeline::LlmParser::default();
            let mut split = agentline::agent::pipeline::SentenceSplitter::default();
            let mut at = 0;
            for end in cuts(d, 4).into_iter().chain([d.len()]) {
                match p.push(&d[at..end.max(at)]) {
                    Ok(texts) => {
                        for t in texts {
                            let _ = split.push(&t);
                        }
                    }
                    Err(_) => return,
                }
                at = end.max(at);
            }
            let _ = p.finish();
            let _ = split.finish();
        }),
        100_000,
    )
}

fn fuzz_openai_compat_llm() -> Result<(), String> {
    fuzz(
        text_target(
            "openai_compat_llm",
            JSON_WORDS,
            agentline::agent::openai_compat::fuzz_llm_answer,
        ),
        100_000,
    )
}

fn fuzz_openai_compat_speech() -> Result<(), String> {
    let mut t = text_target("openai_compat_speech", BIN_WORDS, |d| {
        let rate = [8000, 22_050, 24_000, 48_000][d.first().map_or(0, |b| usize::from(b & 3))];
        agentline::agent::openai_compat::fuzz_speech(d, &cuts(d, 4), rate)
    });
    t.max_len = 8192;
    fuzz(t, 30_000)
}
