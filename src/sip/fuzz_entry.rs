//! Entry points for the fuzz tests (`tests/fuzz.rs`), not an API: bytes off
//! the SIP port go through the calls the transport, the transaction layer
//! and the server make on them, in that order. Kept here (next to the code
//! it calls) so that a change of what the server reads is fuzzed without a
//! copy of it in the tests.

use std::net::{Ipv4Addr, SocketAddr};

use rsipstack::dialog::DialogId;
use rsipstack::sip::prelude::*;
use rsipstack::sip::{Header, Request, Response, SipMessage, Transport};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transport::connection::SipConnection;

use super::{call, digest, registrar, server, timer};
use crate::config::SipTransport;
use crate::sdp;

/// The source the fuzzed datagram "came from".
const PEER: (Ipv4Addr, u16) = (Ipv4Addr::new(192, 0, 2, 7), 5062);

/// One datagram (or one framed TCP message): rsipstack's parser, its
/// `received`/`rport` stamp, the transaction and dialog keys, the log line,
/// then what agentline reads from a request or a response.
#[doc(hidden)]
pub fn message(bytes: &[u8]) {
    let _ = String::from_utf8_lossy(bytes); // the transport logs the raw text
    if let Ok(msg) = SipMessage::try_from(bytes) {
        received(msg);
    }
}

/// A parsed message: the transport's `received` stamp, the transaction
/// and dialog keys, then agentline's reads.
fn received(msg: SipMessage) {
    let _ = msg.to_string(); // the stream transport logs the parsed message
    let peer = SocketAddr::from(PEER);
    let Ok(msg) = SipConnection::update_msg_received(msg, peer, Transport::Udp) else {
        return;
    };
    let _ = msg.cseq_header().map(|c| c.value().to_string());
    typed_headers(msg.headers());
    match &msg {
        SipMessage::Request(req) => {
            let _ = TransactionKey::from_request(req, TransactionRole::Server);
            let _ = DialogId::try_from((req, TransactionRole::Server));
            request(req);
        }
        SipMessage::Response(resp) => {
            let _ = TransactionKey::from_response(resp, TransactionRole::Client);
            let _ = DialogId::try_from((resp, TransactionRole::Client));
            response(resp);
        }
    }
}

/// A TCP/TLS byte stream: rsipstack's framing codec (Content-Length,
/// keep-alives) over the bytes cut at `cuts`, each framed message then as
/// [`message`] takes it after the parser.
#[doc(hidden)]
pub fn stream(bytes: &[u8], cuts: &[usize]) {
    use rsipstack::transport::stream::{SipCodec, SipCodecType};
    use tokio_util::codec::Decoder;
    let mut codec = SipCodec::new();
    let mut buf = bytes::BytesMut::new();
    let mut at = 0;
    for end in cuts.iter().copied().chain([bytes.len()]) {
        let end = end.clamp(at, bytes.len());
        buf.extend_from_slice(&bytes[at..end]);
        at = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(SipCodecType::Message(msg))) => received(msg),
                Ok(Some(_)) => {}
                Ok(None) => break,
                // The connection is closed on a framing error.
                Err(_) => return,
            }
        }
    }
}

/// Every header with a typed form, as the dialog layer and the trunk
/// client read them (From/To/Contact of a new dialog, Route sets, the
/// challenge of a 401/407).
fn typed_headers(headers: &rsipstack::sip::Headers) {
    use rsipstack::sip::headers::ToTypedHeader;
    for h in headers.iter() {
        match h {
            Header::From(v) => {
                let _ = v.typed();
            }
            Header::To(v) => {
                let _ = v.typed();
            }
            Header::Via(v) => {
                let _ = v.typed();
            }
            Header::CSeq(v) => {
                let _ = v.typed();
            }
            Header::WwwAuthenticate(v) => {
                let _ = v.typed();
            }
            Header::ProxyAuthenticate(v) => {
                let _ = v.typed();
            }
            Header::Route(v) => {
                let _ = v.typed();
            }
            Header::RecordRoute(v) => {
                let _ = v.typed();
            }
            Header::Contact(v) => {
                let _ = v.typed();
            }
            _ => {}
        }
    }
}

/// What `sip::server` and `sip::call` read from a request: dialog match,
/// credentials, REGISTER's contacts and expiry, INVITE's route, SDP offer,
/// session timer, caller id, in-dialog INFO/NOTIFY bodies; and the reply
/// built from it.
fn request(req: &Request) {
    let _ = server::to_tag(req);
    let _ = server::source_of(req);
    for name in ["Authorization", "Proxy-Authorization"] {
        if let Some(v) = server::header_value(req, name) {
            credentials(&v, req.method.to_string().as_str());
        }
    }
    let _ = req
        .to_header()
        .ok()
        .and_then(|t| t.uri().ok())
        .map(|u| u.user().map(str::to_string));
    let _ = req
        .expires_header()
        .map(|e| e.value().trim().parse::<u32>());
    for c in req.contact_headers() {
        let _ = registrar::contact_hostport(c.value());
    }
    if let Ok(typed) = req.typed_contact_headers() {
        for c in &typed {
            let _ = (c.expires(), c.uri.to_string());
        }
    }
    let _ = req.call_id_header().map(|c| c.value().to_string());
    let _ = req.cseq_header().ok().and_then(|c| c.seq().ok());
    let _ = req.uri.user().map(str::to_string);
    let _ = req
        .contact_header()
        .ok()
        .map(|c| registrar::contact_hostport(c.value()));
    let supported = super::server::supported_options(req);
    let _ = timer::decide(
        req.session_expires_header().map(|h| h.value()),
        &supported,
        90,
        1800,
    );
    let _ = call::caller_id(req);
    let _ = call::dtmf_from_info(req);
    let _ = call::refer_notify_status(req);
    if !req.body.is_empty() {
        offer(&req.body);
    }
    let _ = reply(req).to_string();
}

/// What an outbound call and a trunk registration read from a response.
fn response(resp: &Response) {
    let _ = call::redirect_target(resp);
    let _ = resp
        .contact_header()
        .ok()
        .map(|c| registrar::contact_hostport(c.value()));
    let _ = resp.to_header().and_then(|h| h.tag());
    if !resp.body().is_empty() {
        let text = String::from_utf8_lossy(resp.body());
        if let Ok(sd) = sdp::SessionDescription::parse(&text) {
            let _ = sdp::accept_answer(&sd, &super::core::local_caps(SipTransport::Udp));
        }
    }
}

/// An `Authorization` value: parsed, its nonce checked, the response
/// verified (as `sip::auth` does).
fn credentials(value: &str, method: &str) {
    let Ok(resp) = digest::DigestResponse::parse(value) else {
        return;
    };
    let issuer = digest::NonceIssuer::new([7; 32], 300);
    let _ = issuer.check(&resp.nonce, 1_000_000, "agentline");
    let _ = digest::verify(&resp, "secret", method);
}

/// An SDP body as an INVITE's offer (UDP and TLS capabilities), an answer
/// to our offer, and the answer we would write back.
fn offer(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    let Ok(sd) = sdp::SessionDescription::parse(&text) else {
        return;
    };
    for t in [SipTransport::Udp, SipTransport::Tls] {
        let caps = super::core::local_caps(t);
        if let Ok(neg) = sdp::negotiate_offer(&sd, &caps) {
            let local = sdp::LocalMedia {
                ip: std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
                rtp_port: 20_000,
                session_id: 1,
                session_version: 1,
                srtp_key: Some([9; crate::media::srtp::MASTER_KEY_LEN]),
            };
            let _ = sdp::build_answer(&neg, &local);
        }
        let _ = sdp::accept_answer(&sd, &caps);
    }
}

/// The reply the transaction layer builds: the request's Via, Call-ID,
/// From, To and CSeq copied into a response.
fn reply(req: &Request) -> Response {
    let headers: Vec<Header> = req
        .headers
        .iter()
        .filter(|h| {
            matches!(
                h,
                Header::Via(_)
                    | Header::CallId(_)
                    | Header::From(_)
                    | Header::To(_)
                    | Header::CSeq(_)
            )
        })
        .cloned()
        .collect();
    Response {
        status_code: rsipstack::sip::StatusCode::OK,
        wire_reason: None,
        version: *req.version(),
        headers: headers.into(),
        body: Vec::new(),
    }
}

/// An SDP body on its own (offer, answer, and the answer we write).
#[doc(hidden)]
pub fn sdp(bytes: &[u8]) {
    offer(bytes);
}

/// An `Authorization` / `Proxy-Authorization` header value on its own.
#[doc(hidden)]
pub fn authorization(bytes: &[u8]) {
    credentials(&String::from_utf8_lossy(bytes), "INVITE");
}
