//! Request sanity checks in the dispatcher, before any dialog or call work:
//!
//! - a request whose version is not SIP/2.0 gets a stateless
//!   `505 Version Not Supported` (itself SIP/2.0; rsipstack would answer
//!   `SIP/7.0 200 OK`);
//! - an offer (INVITE, re-INVITE, UPDATE) whose media address (`c=` at
//!   session or media level, or the `a=rtcp` address) is multicast,
//!   broadcast or reserved gets `488 Not Acceptable Here` with a
//!   `Warning: 399` saying which address and why. `0.0.0.0` / `::` is hold
//!   (RFC 3264 section 8.4, RFC 2543 style) in a re-INVITE or UPDATE, and
//!   refused in an initial INVITE, which has nothing to hold;
//! - an offer whose SDP has no m= line at all gets the same 488 + Warning.
//!
//! Offer/answer ([`crate::sdp::check_media`] in `negotiate_offer` and
//! `accept_answer`) applies the same address rules to answers: an ACK's
//! late answer or a trunk's 200 with such an address ends the call with a
//! BYE (its `Reason` says why) instead of sending RTP there (`0.0.0.0` in
//! an answer reads as hold: nothing is sent).
//!
//! Each refusal is counted in `agentline_sip_rejected_total{reason}`
//! (`version`, `sdp_address`, `sdp_no_media`; [`super::message_size`] adds
//! `too_large_udp`).

use rsipstack::sip::{Header, Method, Request, StatusCode, Version};
use rsipstack::transaction::transaction::Transaction;
use tracing::info;

use super::shared::{reply_and_finish, Shared};
use crate::sdp::SessionDescription;

/// The metric every refusal here (and in `message_size`) is counted in.
pub const REJECTED_METRIC: &str = "agentline_sip_rejected_total";

/// The `reason` label of [`REJECTED_METRIC`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Not SIP/2.0: 505.
    Version,
    /// An offer with an unusable media address: 488.
    SdpAddress,
    /// An offer (SDP) with no m= line: 488.
    SdpNoMedia,
    /// A UDP datagram over `[security] max_message_bytes`: dropped.
    TooLargeUdp,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] = [
        RejectReason::Version,
        RejectReason::SdpAddress,
        RejectReason::SdpNoMedia,
        RejectReason::TooLargeUdp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Version => "version",
            RejectReason::SdpAddress => "sdp_address",
            RejectReason::SdpNoMedia => "sdp_no_media",
            RejectReason::TooLargeUdp => "too_large_udp",
        }
    }
}

/// Counts one refusal.
pub fn count(reason: RejectReason) {
    metrics::counter!(REJECTED_METRIC, "reason" => reason.as_str()).increment(1);
}

pub use crate::sdp::{classify, AddressKind, BadAddress};

/// Why an offer is refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadOffer {
    /// A multicast, broadcast or reserved media address (or 0.0.0.0 in an
    /// initial offer).
    #[error(transparent)]
    Address(#[from] BadAddress),
    /// SDP with no m= line at all: nothing to answer a call with.
    #[error("the SDP has no m= line: there is no media to take")]
    NoMedia,
}

impl BadOffer {
    fn reason(&self) -> RejectReason {
        match self {
            BadOffer::Address(_) => RejectReason::SdpAddress,
            BadOffer::NoMedia => RejectReason::SdpNoMedia,
        }
    }
}

/// Checks an offer: it has media (an m= line), and its media addresses are
/// unicast. `reoffer`: a re-INVITE or UPDATE, where `0.0.0.0` means hold.
/// A body that is not SDP passes (the offer/answer code answers it with its
/// own 488).
pub fn check_offer(body: &[u8], reoffer: bool) -> Result<(), BadOffer> {
    if body.is_empty() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(body);
    let Ok(sd) = SessionDescription::parse(&text) else {
        return Ok(());
    };
    if sd.media.is_empty() {
        return Err(BadOffer::NoMedia);
    }
    for m in sd.media.iter().filter(|m| m.port != 0) {
        crate::sdp::check_media(&sd, m, reoffer)?;
    }
    Ok(())
}

/// True for SIP/2.0 (`SIP/2` reads as 2.0 too).
fn is_sip2(v: &Version) -> bool {
    matches!(v, Version::V2 | Version::V(2, 0))
}

/// Refuses a request that is not SIP/2.0 (stateless 505; an ACK is
/// dropped). `None` when it was refused.
pub fn check_version(tx: Transaction) -> Option<Transaction> {
    if is_sip2(&tx.original.version) {
        return Some(tx);
    }
    count(RejectReason::Version);
    info!(version = %tx.original.version, method = %tx.original.method,
          "SIP version not supported: 505");
    if tx.original.method != Method::Ack {
        super::edge::reply_stateless(tx, StatusCode::VersionNotSupported, vec![]);
    }
    None
}

/// The `Warning` header of a 488 for `bad` (RFC 3261 20.43, code 399).
fn warning(shared: &Shared, bad: &BadOffer) -> Header {
    Header::Warning(format!("399 {} \"{bad}\"", shared.advertised_ip).into())
}

fn offers(req: &Request) -> bool {
    matches!(req.method, Method::Invite | Method::Update) && !req.body.is_empty()
}

/// An initial INVITE with a bad media address: stateless 488 (nothing is
/// kept for a request that never becomes a call). `None` when refused.
pub fn check_initial(shared: &Shared, tx: Transaction) -> Option<Transaction> {
    if !offers(&tx.original) {
        return Some(tx);
    }
    match check_offer(&tx.original.body, false) {
        Ok(()) => Some(tx),
        Err(bad) => {
            count(bad.reason());
            info!(error = %bad, "offer refused: 488");
            let w = warning(shared, &bad);
            super::edge::reply_stateless(tx, StatusCode::NotAcceptableHere, vec![w]);
            None
        }
    }
}

/// A re-INVITE or UPDATE of a known dialog with a bad media address: 488
/// through its transaction (retransmissions and the ACK are absorbed); the
/// call keeps its media (RFC 3261 section 14.2). `None` when refused.
pub fn check_in_dialog(shared: &Shared, tx: Transaction) -> Option<Transaction> {
    if !offers(&tx.original) {
        return Some(tx);
    }
    match check_offer(&tx.original.body, true) {
        Ok(()) => Some(tx),
        Err(bad) => {
            count(bad.reason());
            info!(error = %bad, "re-offer refused: 488");
            let w = warning(shared, &bad);
            reply_and_finish(tx, StatusCode::NotAcceptableHere, vec![w]);
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The address `check_offer` refuses `body` for.
    fn bad_address(body: &[u8], reoffer: bool) -> BadAddress {
        match check_offer(body, reoffer) {
            Err(BadOffer::Address(b)) => b,
            other => panic!("expected a bad address, got {other:?}"),
        }
    }

    fn sdp(session_c: &str, media: &str) -> Vec<u8> {
        format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n{session_c}t=0 0\r\n\
             m=audio 4000 RTP/AVP 0\r\n{media}a=rtpmap:0 PCMU/8000\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn unicast_offers_pass() {
        assert_eq!(
            check_offer(&sdp("c=IN IP4 192.0.2.1\r\n", ""), false),
            Ok(())
        );
        assert_eq!(
            check_offer(&sdp("c=IN IP6 2001:db8::1\r\n", ""), false),
            Ok(())
        );
        assert_eq!(
            check_offer(&sdp("c=IN IP4 127.0.0.1\r\n", ""), false),
            Ok(())
        );
        assert_eq!(check_offer(b"", false), Ok(()));
        assert_eq!(check_offer(b"not sdp", false), Ok(()));
    }

    #[test]
    fn multicast_broadcast_and_reserved_are_refused_at_both_levels() {
        let cases = [
            ("c=IN IP4 224.0.0.1/127\r\n", "", AddressKind::Multicast),
            ("c=IN IP4 239.1.2.3\r\n", "", AddressKind::Multicast),
            ("c=IN IP4 255.255.255.255\r\n", "", AddressKind::Broadcast),
            ("c=IN IP4 240.0.0.7\r\n", "", AddressKind::Reserved),
            ("c=IN IP4 0.1.2.3\r\n", "", AddressKind::Reserved),
            ("c=IN IP6 ff02::1\r\n", "", AddressKind::Multicast),
            (
                "c=IN IP6 ::ffff:255.255.255.255\r\n",
                "",
                AddressKind::Broadcast,
            ),
            // Media level overrides a good session level.
            (
                "c=IN IP4 192.0.2.1\r\n",
                "c=IN IP4 224.0.0.9\r\n",
                AddressKind::Multicast,
            ),
        ];
        for (s, m, kind) in cases {
            let err = bad_address(&sdp(s, m), false);
            assert_eq!(err.kind, kind, "{s} {m}");
            assert_eq!(err.field, "c=");
        }
    }

    #[test]
    fn rtcp_address_is_checked_too() {
        let err = bad_address(
            &sdp(
                "c=IN IP4 192.0.2.1\r\n",
                "a=rtcp:4001 IN IP4 255.255.255.255\r\n",
            ),
            false,
        );
        assert_eq!((err.field, err.kind), ("a=rtcp", AddressKind::Broadcast));
        assert!(
            err.to_string().contains("255.255.255.255 is broadcast"),
            "{err}"
        );
    }

    #[test]
    fn zero_address_is_hold_in_a_reoffer_only() {
        let held = sdp("c=IN IP4 0.0.0.0\r\n", "");
        assert_eq!(check_offer(&held, true), Ok(()));
        assert_eq!(bad_address(&held, false).kind, AddressKind::Unspecified);
        assert_eq!(check_offer(&sdp("c=IN IP6 ::\r\n", ""), true), Ok(()));
        // Multicast is refused in a re-offer as well.
        assert!(check_offer(&sdp("c=IN IP4 224.0.0.1\r\n", ""), true).is_err());
    }

    #[test]
    fn a_disabled_stream_is_not_judged() {
        let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
                    m=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\n\
                    m=video 0 RTP/AVP 96\r\nc=IN IP4 224.0.0.1\r\n";
        assert_eq!(check_offer(body.as_bytes(), false), Ok(()));
    }

    #[test]
    fn an_sdp_without_media_is_refused_initial_or_not() {
        let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";
        for reoffer in [false, true] {
            let err = check_offer(body, reoffer).unwrap_err();
            assert_eq!(err, BadOffer::NoMedia);
            assert_eq!(err.reason(), RejectReason::SdpNoMedia);
            assert!(err.to_string().contains("no m= line"), "{err}");
        }
    }

    #[test]
    fn only_sip_2_0_passes() {
        assert!(is_sip2(&Version::V2));
        assert!(is_sip2(&Version::V(2, 0)));
        assert!(!is_sip2(&Version::V(7, 0)));
        assert!(!is_sip2(&Version::V(1, 0)));
    }
}
