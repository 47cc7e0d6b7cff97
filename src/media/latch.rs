//! Which source may feed a call's media: symmetric RTP latching with the
//! rules that keep a stranger out of the call (sans-IO, like the session).
//!
//! - Before the first packet only the SDP's address latches; when the
//!   caller looks to be behind NAT (the SDP address is private or
//!   unspecified, or differs from where the signalling came from) any port
//!   of the SDP's IP or of the signalling source's IP may latch. A source
//!   other than the SDP's exact address that was already sending before
//!   our answer (so it cannot know this call's port: a killed server's old
//!   call) never latches.
//! - After latching, RTP/RTCP from any other address is dropped; another
//!   SSRC from the latched address is dropped unless a re-INVITE/UPDATE
//!   just signalled a change or the old SSRC has been silent for the
//!   re-latch window.
//! - Re-latching (NAT rebinding): only after the latched address has been
//!   silent for the window, and only to a new port of the same IP; a
//!   signalled change (new `c=`/`m=`) starts over from the new SDP. A
//!   latch made on a NAT guess yields to the SDP's exact address.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::rtp::Ssrc;

/// How long after a signalled change (re-INVITE/UPDATE with SDP) a new
/// SSRC from the latched address is taken at once.
const SIGNALLED_SSRC_GRACE: Duration = Duration::from_secs(5);
/// Sources remembered as stale (sending before our answer): enough for a
/// port that several dead calls' streams hit.
const MAX_STALE: usize = 16;

/// The call's latching settings (from `[rtp]` and the INVITE's source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatchPolicy {
    /// Silence after which the latched address may move to a new port of
    /// the same IP and a new SSRC may take over; `None`: never (only a
    /// signalled change moves the stream).
    pub relatch_after: Option<Duration>,
    /// Where the signalling came from: its IP may latch too when the
    /// caller looks to be behind NAT.
    pub signal_ip: Option<IpAddr>,
}

impl Default for LatchPolicy {
    fn default() -> Self {
        LatchPolicy {
            relatch_after: Some(DEFAULT_RELATCH_AFTER),
            signal_ip: None,
        }
    }
}

/// `[rtp] relatch_after_ms`'s default.
pub const DEFAULT_RELATCH_AFTER: Duration = Duration::from_secs(3);

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// From an address that may not feed this call.
    Source,
    /// From the latched address with another SSRC, unsignalled.
    Ssrc,
}

#[derive(Debug, Clone, Copy)]
struct Latched {
    addr: SocketAddr,
    ssrc: Ssrc,
    /// Last packet accepted from `addr`.
    seen: Instant,
    /// Latched because it is the SDP's exact address (not a NAT guess).
    exact: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SsrcWindow {
    Closed,
    /// A change was signalled; the window opens at the next packet.
    Signalled,
    Until(Instant),
}

/// One call's latch state.
#[derive(Debug, Clone)]
pub struct Latch {
    policy: LatchPolicy,
    /// The SDP's address for our RTP.
    sdp: Option<SocketAddr>,
    stale: Vec<SocketAddr>,
    current: Option<Latched>,
    new_ssrc: SsrcWindow,
}

/// Private, shared (CGNAT), link-local or unspecified: an address a
/// caller behind NAT writes into its SDP.
fn is_nat_side(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            v6.is_unspecified() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

impl Latch {
    pub fn new(sdp: Option<SocketAddr>) -> Self {
        Latch {
            policy: LatchPolicy::default(),
            sdp,
            stale: Vec::new(),
            current: None,
            new_ssrc: SsrcWindow::Closed,
        }
    }

    pub fn set_policy(&mut self, policy: LatchPolicy) {
        self.policy = policy;
    }

    /// Sources seen sending before our answer: they never latch.
    pub fn refuse(&mut self, sources: &[SocketAddr]) {
        for s in sources {
            if self.stale.len() < MAX_STALE && !self.stale.contains(s) {
                self.stale.push(*s);
            }
        }
    }

    /// The latched address, if any.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.current.map(|l| l.addr)
    }

    /// A re-INVITE/UPDATE (or the 200 after early media) signalled the
    /// media: a new SDP address starts latching over; the same one lets a
    /// new SSRC in for a while (phones change it on hold/resume).
    pub fn signalled(&mut self, sdp: Option<SocketAddr>) {
        if sdp != self.sdp {
            self.current = None;
            self.sdp = sdp;
        }
        self.new_ssrc = SsrcWindow::Signalled;
    }

    /// Whether the caller looks to be behind NAT.
    fn behind_nat(&self) -> bool {
        match (self.sdp, self.policy.signal_ip) {
            (None, _) => true,
            (Some(sdp), signal) => is_nat_side(sdp.ip()) || signal.is_some_and(|ip| ip != sdp.ip()),
        }
    }

    /// May `from` latch before any packet did?
    fn may_latch_first(&self, from: SocketAddr) -> bool {
        if Some(from) == self.sdp {
            // Even if it sent before our answer: a phone calling back
            // from its fixed RTP port may trail its last call's packets.
            return true;
        }
        if self.stale.contains(&from) {
            return false;
        }
        let known_ip = self.sdp.is_some_and(|s| s.ip() == from.ip())
            || self.policy.signal_ip == Some(from.ip());
        known_ip && self.behind_nat() && !from.ip().is_unspecified()
    }

    fn silent_for_window(&self, now: Instant, since: Instant) -> bool {
        self.policy
            .relatch_after
            .is_some_and(|w| now.saturating_duration_since(since) >= w)
    }

    /// May an RTP packet from `from` with `ssrc` enter? Changes nothing.
    pub fn check(&self, now: Instant, from: SocketAddr, ssrc: Ssrc) -> Result<(), Refusal> {
        let Some(l) = self.current else {
            return if self.may_latch_first(from) {
                Ok(())
            } else {
                Err(Refusal::Source)
            };
        };
        if from == l.addr {
            let open = match self.new_ssrc {
                SsrcWindow::Closed => false,
                SsrcWindow::Signalled => true,
                SsrcWindow::Until(t) => now < t,
            };
            return if ssrc == l.ssrc || open || self.silent_for_window(now, l.seen) {
                Ok(())
            } else {
                Err(Refusal::Ssrc)
            };
        }
        if !l.exact && Some(from) == self.sdp {
            // The SDP's own address beats a NAT guess.
            return Ok(());
        }
        if from.ip() == l.addr.ip() && self.silent_for_window(now, l.seen) {
            return Ok(());
        }
        Err(Refusal::Source)
    }

    /// Takes a packet [`Latch::check`] let in; `Some(addr)` when the
    /// stream (re)latched to `addr`.
    pub fn accept(&mut self, now: Instant, from: SocketAddr, ssrc: Ssrc) -> Option<SocketAddr> {
        if self.new_ssrc == SsrcWindow::Signalled {
            self.new_ssrc = SsrcWindow::Until(now + SIGNALLED_SSRC_GRACE);
        }
        match &mut self.current {
            Some(l) if l.addr == from => {
                if l.ssrc != ssrc {
                    l.ssrc = ssrc;
                    self.new_ssrc = SsrcWindow::Closed;
                }
                l.seen = now;
                None
            }
            _ => {
                self.current = Some(Latched {
                    addr: from,
                    ssrc,
                    seen: now,
                    exact: Some(from) == self.sdp,
                });
                Some(from)
            }
        }
    }

    /// May RTCP from `from` be read? Muxed RTCP follows the RTP address
    /// rules (without an SSRC check); on its own port, the IP must be the
    /// latched one (before latching: one RTP might latch from).
    pub fn check_rtcp(&self, from: SocketAddr, muxed: bool) -> Result<(), Refusal> {
        let ok = match (self.current, muxed) {
            (Some(l), true) => from == l.addr,
            (Some(l), false) => from.ip() == l.addr.ip(),
            (None, true) => self.may_latch_first(from),
            (None, false) => {
                !self.stale.contains(&from)
                    && (self.sdp.is_some_and(|s| s.ip() == from.ip())
                        || (self.behind_nat() && self.policy.signal_ip == Some(from.ip())))
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Refusal::Source)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// `check` then `accept`, as the session does.
    fn feed(l: &mut Latch, now: Instant, from: &str, ssrc: u32) -> Result<(), Refusal> {
        l.check(now, a(from), Ssrc(ssrc))?;
        l.accept(now, a(from), Ssrc(ssrc));
        Ok(())
    }

    #[test]
    fn only_the_sdp_address_latches_a_public_caller() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a("198.51.100.7:4000")));
        l.set_policy(LatchPolicy {
            signal_ip: Some("198.51.100.7".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(
            feed(&mut l, t0, "203.0.113.9:4000", 1),
            Err(Refusal::Source)
        );
        assert_eq!(
            feed(&mut l, t0, "198.51.100.7:4002", 1),
            Err(Refusal::Source),
            "not behind NAT: the SDP port exactly"
        );
        assert_eq!(l.latched(), None);
        feed(&mut l, t0, "198.51.100.7:4000", 1).unwrap();
        assert_eq!(l.latched(), Some(a("198.51.100.7:4000")));
    }

    #[test]
    fn a_caller_behind_nat_latches_from_its_signalling_ip() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a("192.168.1.20:4000")));
        l.set_policy(LatchPolicy {
            signal_ip: Some("198.51.100.7".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(
            feed(&mut l, t0, "203.0.113.9:31000", 1),
            Err(Refusal::Source)
        );
        feed(&mut l, t0, "198.51.100.7:31000", 1).unwrap();
        assert_eq!(l.latched(), Some(a("198.51.100.7:31000")));
    }

    #[test]
    fn a_source_sending_before_the_answer_never_latches() {
        let t0 = Instant::now();
        // Same IP as the caller (NAT: any port would do), but it was
        // already sending before the caller could know our port.
        let mut l = Latch::new(Some(a("10.0.0.5:4000")));
        l.set_policy(LatchPolicy {
            signal_ip: Some("198.51.100.7".parse().unwrap()),
            ..Default::default()
        });
        l.refuse(&[a("198.51.100.7:5000")]);
        assert_eq!(
            feed(&mut l, t0, "198.51.100.7:5000", 9),
            Err(Refusal::Source)
        );
        feed(&mut l, ms(t0, 20), "198.51.100.7:6000", 1).unwrap();
        assert_eq!(l.latched(), Some(a("198.51.100.7:6000")));
    }

    #[test]
    fn the_sdp_address_takes_over_from_a_nat_guess() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a("192.168.1.20:4000")));
        // A LAN phone: private SDP, same IP as the signalling.
        l.set_policy(LatchPolicy {
            signal_ip: Some("192.168.1.20".parse().unwrap()),
            ..Default::default()
        });
        feed(&mut l, t0, "192.168.1.20:4444", 9).unwrap();
        feed(&mut l, ms(t0, 20), "192.168.1.20:4000", 1).unwrap();
        assert_eq!(l.latched(), Some(a("192.168.1.20:4000")));
        assert_eq!(
            feed(&mut l, ms(t0, 40), "192.168.1.20:4444", 9),
            Err(Refusal::Source),
            "and keeps it"
        );
    }

    #[test]
    fn after_latching_other_sources_are_refused_even_after_silence() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a("198.51.100.7:4000")));
        feed(&mut l, t0, "198.51.100.7:4000", 1).unwrap();
        for at in [20, 600, 10_000] {
            assert_eq!(
                feed(&mut l, ms(t0, at), "203.0.113.9:4000", 1),
                Err(Refusal::Source),
                "at {at} ms"
            );
        }
        assert_eq!(l.latched(), Some(a("198.51.100.7:4000")));
    }

    #[test]
    fn nat_rebinding_relatches_to_a_new_port_of_the_same_ip_after_silence() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a("198.51.100.7:4000")));
        feed(&mut l, t0, "198.51.100.7:4000", 1).unwrap();
        assert_eq!(
            feed(&mut l, ms(t0, 2_999), "198.51.100.7:4100", 1),
            Err(Refusal::Source),
            "the old port was heard 2.999 s ago"
        );
        feed(&mut l, ms(t0, 3_000), "198.51.100.7:4100", 1).unwrap();
        assert_eq!(l.latched(), Some(a("198.51.100.7:4100")));
        assert_eq!(
            feed(&mut l, ms(t0, 3_020), "198.51.100.7:4200", 1),
            Err(Refusal::Source),
            "the new port holds it now"
        );
    }

    #[test]
    fn relatch_after_none_never_moves_the_stream() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a("198.51.100.7:4000")));
        l.set_policy(LatchPolicy {
            relatch_after: None,
            signal_ip: None,
        });
        feed(&mut l, t0, "198.51.100.7:4000", 1).unwrap();
        assert_eq!(
            feed(&mut l, ms(t0, 3_600_000), "198.51.100.7:4100", 1),
            Err(Refusal::Source)
        );
        assert_eq!(
            feed(&mut l, ms(t0, 3_600_000), "198.51.100.7:4000", 2),
            Err(Refusal::Ssrc)
        );
    }

    #[test]
    fn a_new_ssrc_needs_a_signal_or_the_old_ones_silence() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a("198.51.100.7:4000")));
        feed(&mut l, t0, "198.51.100.7:4000", 1).unwrap();
        // Injected packets with another SSRC while the stream flows.
        feed(&mut l, ms(t0, 20), "198.51.100.7:4000", 1).unwrap();
        assert_eq!(
            feed(&mut l, ms(t0, 30), "198.51.100.7:4000", 2),
            Err(Refusal::Ssrc)
        );
        // The old SSRC went silent for the window: the new one takes over.
        feed(&mut l, ms(t0, 3_020), "198.51.100.7:4000", 2).unwrap();
        assert_eq!(
            feed(&mut l, ms(t0, 3_040), "198.51.100.7:4000", 1),
            Err(Refusal::Ssrc),
            "and the old one is out"
        );
        // A re-INVITE (same address): the next new SSRC is taken at once.
        l.signalled(Some(a("198.51.100.7:4000")));
        feed(&mut l, ms(t0, 3_060), "198.51.100.7:4000", 2).unwrap();
        feed(&mut l, ms(t0, 3_080), "198.51.100.7:4000", 3).unwrap();
        assert_eq!(
            feed(&mut l, ms(t0, 3_100), "198.51.100.7:4000", 4),
            Err(Refusal::Ssrc),
            "one change per signal"
        );
        // A signal whose SSRC change never came closes after the grace.
        l.signalled(Some(a("198.51.100.7:4000")));
        feed(&mut l, ms(t0, 3_120), "198.51.100.7:4000", 3).unwrap();
        feed(&mut l, ms(t0, 8_980), "198.51.100.7:4000", 3).unwrap();
        assert_eq!(
            feed(&mut l, ms(t0, 9_000), "198.51.100.7:4000", 5),
            Err(Refusal::Ssrc)
        );
    }

    #[test]
    fn a_signalled_new_address_latches_over() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a("198.51.100.7:4000")));
        feed(&mut l, t0, "198.51.100.7:4000", 1).unwrap();
        l.signalled(Some(a("198.51.100.8:5000")));
        assert_eq!(l.latched(), None);
        assert_eq!(
            feed(&mut l, ms(t0, 20), "198.51.100.7:4000", 1),
            Err(Refusal::Source),
            "the old address is out"
        );
        feed(&mut l, ms(t0, 40), "198.51.100.8:5000", 7).unwrap();
        assert_eq!(l.latched(), Some(a("198.51.100.8:5000")));
    }

    #[test]
    fn rtcp_comes_from_the_latched_ip_or_the_muxed_address() {
        let t0 = Instant::now();
        let mut l = Latch::new(Some(a("198.51.100.7:4000")));
        assert_eq!(l.check_rtcp(a("198.51.100.7:4001"), false), Ok(()));
        assert_eq!(
            l.check_rtcp(a("203.0.113.9:4001"), false),
            Err(Refusal::Source)
        );
        feed(&mut l, t0, "198.51.100.7:4000", 1).unwrap();
        assert_eq!(l.check_rtcp(a("198.51.100.7:4001"), false), Ok(()));
        assert_eq!(l.check_rtcp(a("198.51.100.7:4000"), true), Ok(()));
        assert_eq!(
            l.check_rtcp(a("198.51.100.7:4001"), true),
            Err(Refusal::Source)
        );
        assert_eq!(
            l.check_rtcp(a("203.0.113.9:4001"), false),
            Err(Refusal::Source)
        );
    }
}
