//! Browser calling without a browser: a str0m peer (full ICE, DTLS-SRTP,
//! Opus 48 kHz) calls the `echo` route through `POST /webrtc/{route}`, so
//! this runs wherever the crate builds. The call is listed with
//! `transport: "webrtc"` while it lasts, the echo comes back, the API's
//! hangup ends it like a SIP call's, and a bad or unroutable offer is
//! refused with the reason.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentline::media::codec::{self, CodecKind, CodecParams};
use common::{http_get, http_post, Server};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// POST of an SDP body: status, head, body.
fn post_sdp(port: u16, path: &str, sdp: &str) -> (u16, String, String) {
    let ct = "application/sdp";
    common::http_exchange(port, "POST", path, None, ct, sdp, Duration::from_secs(10))
}

/// What the peer saw.
#[derive(Default)]
struct Seen {
    connected: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
}

/// Runs the peer until `stop` or 20 s: Opus frames of a 440 Hz tone every
/// 20 ms once connected, counting the audio frames that come back.
fn run_peer(mut rtc: Rtc, sock: UdpSocket, mid: str0m::media::Mid, seen: &Seen, stop: &AtomicBool) {
    let local = sock.local_addr().unwrap();
    let mut enc = codec::encoder(&CodecParams::new(CodecKind::Opus)).unwrap();
    let n = enc.frame_samples();
    let mut buf = vec![0u8; 2048];
    let mut next_send = Instant::now();
    let mut k = 0u64;
    let end = Instant::now() + Duration::from_secs(20);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let wake = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = sock.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => seen.connected.store(true, Ordering::Relaxed),
                Output::Event(Event::MediaData(_)) => {
                    seen.received.fetch_add(1, Ordering::Relaxed);
                }
                Output::Event(_) => {}
            }
        };
        let now = Instant::now();
        if seen.connected.load(Ordering::Relaxed) && now >= next_send {
            let pcm: Vec<i16> = (0..n)
                .map(|i| {
                    let t = (k as usize * n + i) as f32 / 48_000.0;
                    ((t * 440.0 * std::f32::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            let mut payload = Vec::new();
            enc.encode(&pcm, &mut payload).unwrap();
            let w = rtc.writer(mid).unwrap();
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec == str0m::format::Codec::Opus)
                .unwrap()
                .pt();
            let ts = MediaTime::new(k * 960, Frequency::FORTY_EIGHT_KHZ);
            w.write(pt, now, ts, payload).unwrap();
            seen.sent.fetch_add(1, Ordering::Relaxed);
            k += 1;
            next_send += Duration::from_millis(20);
            continue;
        }
        let until = if seen.connected.load(Ordering::Relaxed) {
            wake.min(next_send)
        } else {
            wake
        };
        let timeout = until.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
            continue;
        }
        sock.set_read_timeout(Some(timeout)).unwrap();
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                let input = Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents: (&buf[..len]).try_into().unwrap(),
                    },
                );
                rtc.handle_input(input).unwrap();
            }
            Err(_) => rtc.handle_input(Input::Timeout(Instant::now())).unwrap(),
        }
    }
}

#[test]
fn a_webrtc_peer_calls_echo_and_the_api_hangs_it_up() {
    let server = Server::start("[[routes]]\ndial = \"echo\"\nagent = { kind = \"echo\" }\n");
    let port = server.api_port;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rtc = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(sock.local_addr().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let offer = offer.to_sdp_string();

    // Refusals say why.
    let (code, _, body) = post_sdp(port, "/webrtc/nowhere", &offer);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("nowhere"), "{body}");
    let (code, _, body) = post_sdp(port, "/webrtc/echo", "v=0\r\n");
    assert_eq!(code, 400, "{body}");
    let (code, body) = http_post(port, "/webrtc/echo", "{}").unwrap();
    assert_eq!(code, 415, "JSON is not an offer: {body}");

    let (code, head, answer) = post_sdp(port, "/webrtc/echo", &offer);
    assert_eq!(code, 201, "{head}\n{answer}");
    let location = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("location:")
                .then(|| l[9..].trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Location: {head}"));
    let id = location.strip_prefix("/webrtc/").unwrap().to_string();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert!(answer.contains("opus/48000/2"), "{answer}");
    assert!(answer.contains("a=fingerprint:"), "DTLS-SRTP: {answer}");
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let peer = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || run_peer(rtc, sock, mid, &seen, &stop))
    };

    // Listed as a webrtc call, answered, with Opus.
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let (_, body) = http_get(port, &format!("/calls/{id}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["state"] == "active" && v["media"]["rx_packets"].as_u64().unwrap_or(0) > 50 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "not active with media: {v:#}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(view["transport"], "webrtc", "{view:#}");
    assert_eq!(view["codec"], "opus", "{view:#}");
    assert_eq!(view["route"], "echo", "{view:#}");
    let (_, list) = http_get(port, "/calls").unwrap();
    assert!(list.contains("\"transport\":\"webrtc\""), "{list}");
    std::thread::sleep(Duration::from_secs(1));
    let back = seen.received.load(Ordering::Relaxed);
    let sent = seen.sent.load(Ordering::Relaxed);
    assert!(
        back > 50 && back * 10 >= sent * 8,
        "the echo came back: {back} of {sent} frames"
    );

    // The round trip comes from str0m (the connection's RTCP).
    let deadline = Instant::now() + Duration::from_secs(5);
    let rtt = loop {
        let (_, body) = http_get(port, &format!("/calls/{id}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if let Some(rtt) = v["quality"]["rtt_ms"].as_f64() {
            break rtt;
        }
        assert!(Instant::now() < deadline, "no RTT: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!((0.0..50.0).contains(&rtt), "RTT on loopback: {rtt} ms");

    // The API's hangup ends a browser call as it ends a SIP call.
    let (code, body) = http_post(port, &format!("/calls/{id}/hangup"), "{}").unwrap();
    assert_eq!(code, 200, "{body}");
    server.wait_idle(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    peer.join().unwrap();
    let (_, body) = http_get(port, &format!("/calls/{id}")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["end_reason"], "hangup by server", "{v:#}");
    let cdr = common::finished_cdr(&server, &id);
    assert_eq!(cdr["hung_up_by"], "api", "{cdr:#}");
    assert_eq!(cdr["codec"], "opus", "{cdr:#}");
    // A DELETE for a call that is over finds nothing.
    let (code, _) = common::http_delete(port, &location).unwrap();
    assert_eq!(code, 404);
    eprintln!("webrtc peer: sent {sent} frames, {back} came back, RTT {rtt:.2} ms");
}

#[test]
fn a_peer_that_vanishes_is_hung_up_as_the_caller() {
    let server = Server::start("[[routes]]\ndial = \"echo\"\nagent = { kind = \"echo\" }\n");
    let port = server.api_port;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rtc = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(sock.local_addr().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let (code, head, answer) = post_sdp(port, "/webrtc/echo", &offer.to_sdp_string());
    assert_eq!(code, 201, "{head}");
    let id = head
        .lines()
        .find_map(|l| {
            l.split_once("/webrtc/")
                .map(|(_, id)| id.trim().to_string())
        })
        .unwrap();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let peer = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || run_peer(rtc, sock, mid, &seen, &stop))
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(seen.received.load(Ordering::Relaxed) > 20);
    // The tab closes: no DELETE, no more packets.
    stop.store(true, Ordering::Relaxed);
    peer.join().unwrap();
    let gone = Instant::now();
    // Ended by ICE (consent lost) before the RTP timeout, ports given back.
    let h = server.wait_idle(Duration::from_secs(30));
    assert_eq!(h["active_calls"], 0, "{h:#}");
    assert_eq!(h["rtp_ports_in_use"], 0, "{h:#}");
    let s = gone.elapsed().as_secs_f64();
    let (_, body) = http_get(port, &format!("/calls/{id}")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["end_reason"],
        "caller hung up",
        "{v:#}\n{}",
        server.log_text()
    );
    eprintln!(
        "a vanished peer's call ended {s:.1} s later: {}",
        v["end_reason"]
    );
}
