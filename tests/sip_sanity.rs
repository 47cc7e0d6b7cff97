#![allow(clippy::unwrap_used)]
//! Request sanity at the SIP edge, over real UDP against the release
//! binary: a request that is not SIP/2.0 gets a SIP/2.0 `505`; an offer
//! whose media address is multicast, broadcast or reserved gets `488` with a
//! `Warning: 399` (0.0.0.0 only as hold in a re-INVITE); a UDP datagram over
//! `[security] max_message_bytes` is dropped unanswered. Each is counted in
//! `agentline_sip_rejected_total{reason}`, and afterwards the server still
//! answers OPTIONS and completes a real call (sipp).
//!
//! With sipp scenarios: re-INVITEs with no m= line or a multicast/broadcast
//! `c=` get 488 + Warning and the call's RTP stays where it was (a hold
//! with `c=0.0.0.0` is still taken); a late answer in an ACK, and an
//! outbound call's 200, with a multicast `c=` end the call with a BYE whose
//! `Reason` says why, and no RTP is sent.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::rawsip::{RawSip, Reply};
use common::sipp::{run_scenario, spawn_scenario};
use common::{require_peer, Server};

const WAIT: Duration = Duration::from_secs(3);

fn rejected(server: &Server, reason: &str) -> f64 {
    server.metric(&format!(
        "agentline_sip_rejected_total{{reason=\"{reason}\"}}"
    ))
}

/// One request of a dialog the test drives by hand.
struct Leg {
    call_id: String,
    from_tag: String,
    to_tag: Option<String>,
    cseq: u32,
    branch: u32,
}

impl Leg {
    fn new(name: &str) -> Leg {
        Leg {
            call_id: format!("sanity-{name}-{}", std::process::id()),
            from_tag: format!("t-{name}"),
            to_tag: None,
            cseq: 0,
            branch: 0,
        }
    }

    /// A request of this leg; `version` as written on the request line;
    /// `cseq` None takes the next number (ACK passes the INVITE's).
    fn request(
        &mut self,
        raw: &RawSip,
        method: &str,
        version: &str,
        cseq: Option<u32>,
        extra: &str,
        body: &str,
    ) -> String {
        let cseq = cseq.unwrap_or_else(|| {
            self.cseq += 1;
            self.cseq
        });
        self.branch += 1;
        let local = raw.local();
        let sp = raw.server_port;
        let to_tag = self
            .to_tag
            .as_deref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let ctype = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_string()
        };
        format!(
            "{method} sip:echo@127.0.0.1:{sp} {version}\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-{}-{};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:caller@127.0.0.1>;tag={}\r\n\
             To: <sip:echo@127.0.0.1:{sp}>{to_tag}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:caller@{local}>\r\n\
             {extra}{ctype}\
             Content-Length: {}\r\n\r\n{body}",
            self.call_id,
            self.branch,
            self.from_tag,
            self.call_id,
            body.len()
        )
    }
}

/// An audio offer: `c` the session-level address, `media` extra m-level lines.
fn offer(c: &str, media: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\n\
         m=audio 40000 RTP/AVP 0 101\r\n{media}a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

fn to_tag(reply: &Reply) -> Option<String> {
    let to = reply.header("To")?;
    let at = to.find(";tag=")? + 5;
    Some(
        to[at..]
            .split([';', ' ', '>'])
            .next()
            .unwrap_or_default()
            .to_string(),
    )
}

fn assert_488_warning(reply: Option<Reply>, says: &str, server: &Server) {
    let reply = reply.unwrap_or_else(|| panic!("no answer:\n{}", server.log_text()));
    assert_eq!(reply.status, 488, "{}", reply.raw);
    let warning = reply
        .header("Warning")
        .unwrap_or_else(|| panic!("488 without Warning:\n{}", reply.raw));
    assert!(
        warning.starts_with("399 ") && warning.contains(says),
        "Warning {warning:?} should be 399 and say {says:?}"
    );
}

#[test]
fn a_request_that_is_not_sip_2_0_gets_a_sip_2_0_505() {
    let server = Server::start(common::TRUSTED_ECHO_PROFILE);
    let raw = RawSip::bind("127.0.0.1", server.sip_port);
    for method in ["OPTIONS", "INVITE"] {
        let mut leg = Leg::new(&format!("v7-{method}"));
        let body = if method == "INVITE" {
            offer("127.0.0.1", "")
        } else {
            String::new()
        };
        let msg = leg.request(&raw, method, "SIP/7.0", None, "", &body);
        // `exchange` takes only answers starting `SIP/2.0 `.
        let reply = raw
            .exchange(&msg, WAIT)
            .unwrap_or_else(|| panic!("no SIP/2.0 answer to {method} SIP/7.0"));
        assert_eq!(reply.status, 505, "{}", reply.raw);
        assert!(reply.raw.starts_with("SIP/2.0 505 "), "{}", reply.raw);
    }
    assert_eq!(rejected(&server, "version"), 2.0);
    assert_eq!(server.calls().as_array().map(Vec::len), Some(0));
    // SIP/2.0 is answered as before.
    let mut leg = Leg::new("v2");
    let ok = raw.exchange(&leg.request(&raw, "OPTIONS", "SIP/2.0", None, "", ""), WAIT);
    assert_eq!(ok.map(|r| r.status), Some(200));
    assert_eq!(rejected(&server, "version"), 2.0);
}

#[test]
fn offers_with_multicast_broadcast_or_reserved_media_get_488_and_calls_still_work() {
    let server = Server::start(common::TRUSTED_ECHO_PROFILE);
    let raw = RawSip::bind("127.0.0.1", server.sip_port);
    let cases = [
        (
            "mcast",
            offer("224.0.1.10/127", ""),
            "224.0.1.10 is multicast",
        ),
        (
            "bcast",
            offer("255.255.255.255", ""),
            "255.255.255.255 is broadcast",
        ),
        (
            "m-level",
            offer("127.0.0.1", "c=IN IP4 239.255.0.1\r\n"),
            "239.255.0.1 is multicast",
        ),
        (
            "rtcp",
            offer("127.0.0.1", "a=rtcp:40001 IN IP4 255.255.255.255\r\n"),
            "a=rtcp address 255.255.255.255 is broadcast",
        ),
        ("class-e", offer("240.1.2.3", ""), "240.1.2.3 is reserved"),
        // Nothing to hold in an initial INVITE.
        ("zero", offer("0.0.0.0", ""), "0.0.0.0 is unspecified"),
    ];
    for (name, body, says) in &cases {
        let mut leg = Leg::new(name);
        let msg = leg.request(&raw, "INVITE", "SIP/2.0", None, "", body);
        assert_488_warning(raw.exchange(&msg, WAIT), says, &server);
    }
    assert_eq!(rejected(&server, "sdp_address"), cases.len() as f64);
    // Refused at the edge: no call, no dialog, no port.
    let idle = server.wait_idle(Duration::from_secs(5));
    assert_eq!(idle["active_calls"], 0, "{idle}");

    let mut leg = Leg::new("after");
    let ok = raw.exchange(&leg.request(&raw, "OPTIONS", "SIP/2.0", None, "", ""), WAIT);
    assert_eq!(
        ok.map(|r| r.status),
        Some(200),
        "OPTIONS after the refusals"
    );
    if require_peer("sipp").is_none() {
        return;
    }
    let out = run_scenario("invite_bye.xml", server.sip_port, "echo", &["-d", "1000"]);
    assert!(
        out.success,
        "a normal call after the refusals:\n{}",
        out.report()
    );
    assert_eq!(rejected(&server, "sdp_address"), cases.len() as f64);
}

#[test]
fn a_reinvite_may_hold_with_zero_but_not_move_to_multicast() {
    let server = Server::start(common::TRUSTED_ECHO_PROFILE);
    let raw = RawSip::bind("127.0.0.1", server.sip_port);
    let mut leg = Leg::new("reinvite");
    let invite = leg.request(&raw, "INVITE", "SIP/2.0", None, "", &offer("127.0.0.1", ""));
    let ok = raw.exchange(&invite, WAIT).expect("200 to the INVITE");
    assert_eq!(ok.status, 200, "{}", ok.raw);
    leg.to_tag = to_tag(&ok);
    assert!(leg.to_tag.is_some(), "{}", ok.raw);
    raw.send(&leg.request(&raw, "ACK", "SIP/2.0", Some(1), "", ""));

    // Moving the media to a multicast group: refused, the call goes on.
    let re = leg.request(&raw, "INVITE", "SIP/2.0", None, "", &offer("224.2.2.2", ""));
    assert_488_warning(raw.exchange(&re, WAIT), "224.2.2.2 is multicast", &server);
    // The ACK to a non-2xx belongs to the INVITE's transaction (its branch).
    leg.branch -= 1;
    raw.send(&leg.request(&raw, "ACK", "SIP/2.0", Some(leg.cseq), "", ""));
    assert_eq!(rejected(&server, "sdp_address"), 1.0);
    let calls = server.calls();
    assert_eq!(calls.as_array().map(Vec::len), Some(1), "{calls}");
    assert_eq!(calls[0]["on_hold"], false, "{calls}");

    // RFC 2543-style hold: c=0.0.0.0 in a re-INVITE is taken.
    let hold = leg.request(&raw, "INVITE", "SIP/2.0", None, "", &offer("0.0.0.0", ""));
    let held = raw
        .exchange(&hold, WAIT)
        .unwrap_or_else(|| panic!("no answer to the hold:\n{}", server.log_text()));
    assert_eq!(held.status, 200, "{}", held.raw);
    raw.send(&leg.request(&raw, "ACK", "SIP/2.0", Some(leg.cseq), "", ""));
    assert_eq!(rejected(&server, "sdp_address"), 1.0);

    let bye = leg.request(&raw, "BYE", "SIP/2.0", None, "", "");
    assert_eq!(raw.exchange(&bye, WAIT).map(|r| r.status), Some(200));
    server.wait_idle(Duration::from_secs(5));
}

/// OPTIONS padded to `size` bytes with an `X-Pad` header.
fn padded_options(raw: &RawSip, name: &str, size: usize) -> String {
    let bare = Leg::new(name).request(raw, "OPTIONS", "SIP/2.0", None, "X-Pad: \r\n", "");
    let pad = "a".repeat(size.saturating_sub(bare.len()));
    Leg::new(name).request(
        raw,
        "OPTIONS",
        "SIP/2.0",
        None,
        &format!("X-Pad: {pad}\r\n"),
        "",
    )
}

#[test]
fn a_udp_datagram_over_max_message_bytes_is_dropped_and_counted() {
    let server = Server::start(common::TRUSTED_ECHO_PROFILE);
    let raw = RawSip::bind("127.0.0.1", server.sip_port);
    let big = padded_options(&raw, "big", 10 * 1024);
    assert!(big.len() >= 10 * 1024, "{}", big.len());
    assert!(
        raw.exchange(&big, Duration::from_secs(1)).is_none(),
        "10 KB answered"
    );
    assert_eq!(rejected(&server, "too_large_udp"), 1.0);
    // Under the 8,192 default: answered.
    let fits = padded_options(&raw, "fits", 6000);
    assert_eq!(raw.exchange(&fits, WAIT).map(|r| r.status), Some(200));
    let mut leg = Leg::new("plain");
    let plain = leg.request(&raw, "OPTIONS", "SIP/2.0", None, "", "");
    assert_eq!(raw.exchange(&plain, WAIT).map(|r| r.status), Some(200));
    assert_eq!(rejected(&server, "too_large_udp"), 1.0);
    let log = server.log_text();
    assert_eq!(
        log.matches("over security.max_message_bytes").count(),
        1,
        "{log}"
    );

    // A lower limit from the profile applies as set.
    let server = Server::start(&format!(
        "[security]\nmax_message_bytes = 1500\n{}",
        common::TRUSTED_ECHO_PROFILE
    ));
    let raw = RawSip::bind("127.0.0.1", server.sip_port);
    for i in 0..3 {
        let over = padded_options(&raw, &format!("over{i}"), 3000);
        assert!(
            raw.exchange(&over, Duration::from_secs(1)).is_none(),
            "3000 B answered"
        );
    }
    assert_eq!(rejected(&server, "too_large_udp"), 3.0);
    let log = server.log_text();
    assert_eq!(
        log.matches("over security.max_message_bytes").count(),
        1,
        "one line per 10 s:\n{log}"
    );
    let under = padded_options(&raw, "under", 1400);
    assert_eq!(raw.exchange(&under, WAIT).map(|r| r.status), Some(200));
}

/// The record of the call whose SIP Call-ID is `call_id`, once it has
/// ended (polls `GET /cdrs` for up to 10 s).
fn ended_record(server: &Server, call_id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = common::http_get(server.api_port, "/cdrs?limit=100").unwrap();
        let page: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let found = page["cdrs"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["call_id"] == call_id))
            .filter(|c| !c["end_at_unix_ms"].is_null());
        if let Some(c) = found {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no ended record for {call_id}: {page}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True if one message of sipp's `-trace_msg` log has all of `parts`.
fn logged(log: &str, parts: &[&str]) -> bool {
    log.split("\n----------")
        .any(|m| parts.iter().all(|p| m.contains(p)))
}

/// sipp (tests/sipp/reinvite_bad_sdp.xml) re-INVITEs an answered call with
/// an SDP without m= lines, a multicast session c= and a broadcast media
/// c=: each gets 488 with a Warning 399 saying why (checked by sipp), and
/// the call's RTP keeps going to the address it had (a UDP port of this
/// test's). The RFC 2543 hold that follows (c=0.0.0.0) is taken, and the
/// RTP stops - the refused re-offers would have moved it too.
#[test]
fn sipp_reinvites_without_media_or_to_multicast_get_488_and_the_media_stays_put() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(common::TRUSTED_ECHO_PROFILE);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let sink_port = sink.local_addr().unwrap().port().to_string();
    let mut run = spawn_scenario(
        "reinvite_bad_sdp.xml",
        server.sip_port,
        "echo",
        &["-key", "rtp_sink", &sink_port],
    );
    // RTP at the sink: before the first 488, between the third 488 and
    // the hold re-INVITE, and from 200 ms after the hold's 200 to the BYE.
    let (mut before, mut between, mut held) = (0usize, 0usize, 0usize);
    let mut held_at: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 2048];
    while run.is_running() && Instant::now() < deadline {
        let rtp = matches!(sink.recv(&mut buf), Ok(n) if n >= 12 && buf[0] >> 6 == 2);
        let log = run.message_log();
        let refused = log.matches("SIP/2.0 488").count();
        if held_at.is_none() && logged(&log, &["SIP/2.0 200", "CSeq: 5 INVITE"]) {
            held_at = Some(Instant::now());
        }
        if !rtp || log.contains("CSeq: 6 BYE") {
            continue;
        }
        match held_at {
            Some(t) if t.elapsed() >= Duration::from_millis(200) => held += 1,
            Some(_) => {}
            None if refused == 0 => before += 1,
            None if refused == 3 && !log.contains("CSeq: 5 INVITE") => between += 1,
            None => {}
        }
    }
    let out = run.wait(Duration::from_secs(10));
    assert!(out.success, "{}\n{}", out.report(), server.log_text());
    eprintln!("RTP at the call's address: {before} before the re-INVITEs, {between} after the three 488s, {held} on hold");
    assert!(before >= 20, "{before} RTP packets before the re-INVITEs");
    assert!(
        between >= 40,
        "{between} RTP packets after the refused re-INVITEs: the media moved\n{}",
        server.log_text()
    );
    assert_eq!(held, 0, "RTP sent while held with c=0.0.0.0");
    assert_eq!(rejected(&server, "sdp_no_media"), 1.0);
    assert_eq!(rejected(&server, "sdp_address"), 2.0);
    // Only the hold reached the call.
    let log = server.log_text();
    assert_eq!(log.matches("re-INVITE answered").count(), 1, "{log}");
    server.wait_idle(Duration::from_secs(5));
}

/// Late offer (sipp, tests/sipp/late_offer_bad_answer.xml): the answer in
/// the ACK puts the media on multicast. The call ends at once with a BYE
/// whose Reason says 488 and why (checked by sipp), its record says so,
/// and no RTP is sent at all.
#[test]
fn a_late_answer_in_the_ack_with_multicast_media_ends_the_call_with_a_reason() {
    if require_peer("sipp").is_none() {
        return;
    }
    let server = Server::start(common::TRUSTED_ECHO_PROFILE);
    let run = spawn_scenario("late_offer_bad_answer.xml", server.sip_port, "echo", &[]);
    let call_id = run.call_id(1);
    let out = run.wait(Duration::from_secs(20));
    assert!(out.success, "{}\n{}", out.report(), server.log_text());
    let record = ended_record(&server, &call_id);
    let reason = record["end_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("bad answer in ACK: c= address 224.0.1.10 is multicast"),
        "{record}"
    );
    server.wait_idle(Duration::from_secs(5));
    assert_eq!(server.metric("agentline_rtp_packets_sent_total"), 0.0);
}

/// An outbound call (POST /calls through a trunk) that the far end (sipp
/// as UAS, tests/sipp/uas_bad_answer.xml) answers with a multicast c=: ACK
/// then BYE with a Reason saying 488 and why (checked by sipp), the call
/// ends with that reason, and no RTP is sent.
#[test]
fn an_outbound_call_answered_with_multicast_media_is_hung_up_with_a_reason() {
    if require_peer("sipp").is_none() {
        return;
    }
    let uas_port = common::free_port();
    let uas = common::sipp::spawn_uas("uas_bad_answer.xml", uas_port, &[]);
    let server = Server::start(&format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.1:{uas_port}\"\nregister = false\n\
         [[routes]]\ndial = \"out\"\nagent = {{ kind = \"echo\" }}\n"
    ));
    let id = common::originate(
        &server,
        r#"{"trunk":"carrier","to":"callee","route":"out"}"#,
    );
    let out = uas.wait(Duration::from_secs(25));
    assert!(out.success, "{}\n{}", out.report(), server.log_text());
    assert!(
        out.message_log.contains("Reason: SIP;cause=488"),
        "{}",
        out.report()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let (_, body) = common::http_get(server.api_port, &format!("/calls/{id}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if !v["end_reason"].is_null() || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let reason = view["end_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("bad SDP answer: c= address 239.255.0.1 is multicast"),
        "{view}\n{}",
        server.log_text()
    );
    server.wait_idle(Duration::from_secs(5));
    assert_eq!(server.metric("agentline_rtp_packets_sent_total"), 0.0);
}
