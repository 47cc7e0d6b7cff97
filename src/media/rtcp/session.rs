//! The per-call RTCP state machine: receiver statistics per remote source,
//! the randomised report timer, SR/RR + SDES out, the peer's reports in
//! (RTT, its view of our stream, BYE), and the call's quality summary.

use std::time::{Duration, Instant};

use super::emodel::{e_model_mos, CodecImpairment};
use super::stats::{round_trip_time, ReceptionStats};
use super::{
    compact_ntp, parse_compound, write_compound, Bye, ReceiverReport, ReportBlock, RtcpError,
    RtcpPacket, Sdes, SdesChunk, SdesItem, SenderReport, MAX_COUNT, SDES_CNAME,
};
use crate::media::rtp::{SeqNo, Ssrc};

/// Nominal report interval: RFC 3550 section 6.2's minimum, which a two-party
/// voice call always hits (5% of ~80 kbit/s would allow one every ~0.2 s).
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// At most this many remote SSRCs are tracked; a new one evicts the stalest.
/// A call has one or two (an SSRC change on re-INVITE); the cap bounds memory
/// against a peer spraying SSRCs.
const MAX_SOURCES: usize = 8;
/// Packetisation delay counted in the E-model's one-way delay (one 20 ms frame).
const PACKETIZATION_MS: f64 = 20.0;

/// Quality of one call as RTCP sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CallQuality {
    /// RTP packets received from the peer (all its SSRCs).
    pub packets_received: u64,
    /// Packets the peer sent that never arrived (whole call).
    pub packets_lost: u64,
    /// `packets_lost` as a percentage of those expected (whole call).
    pub fraction_lost_pct: f64,
    /// Interarrival jitter of the peer's current stream.
    pub jitter_ms: f64,
    /// Latest round-trip time from the peer's report blocks.
    pub rtt_ms: Option<f64>,
    /// Loss of our stream at the peer, in its latest report's interval.
    pub remote_reported_loss_pct: Option<f64>,
    /// Jitter of our stream at the peer, from its latest report.
    pub remote_reported_jitter_ms: Option<f64>,
    /// E-model MOS over the worse direction: loss and jitter are the larger of
    /// ours and the peer's; one-way delay is RTT/2 + a jitter buffer of twice
    /// the jitter + one 20 ms frame.
    pub mos: f64,
}

#[derive(Debug, Clone)]
struct Source {
    ssrc: Ssrc,
    stats: ReceptionStats,
    heard_since_report: bool,
    last_heard: Instant,
    left: bool,
}

/// The peer's latest report block about our stream.
#[derive(Debug, Clone, Copy)]
struct RemoteView {
    fraction_lost: u8,
    jitter: u32,
}

/// The per-call RTCP state machine: feed it RTP sent and received and the
/// peer's RTCP; send what [`RtcpSession::handle_timeout`] returns.
#[derive(Debug, Clone)]
pub struct RtcpSession {
    local_ssrc: Ssrc,
    cname: String,
    clock_rate: u32,
    codec: CodecImpairment,
    sources: Vec<Source>,
    packets_sent: u32,
    octets_sent: u32,
    /// RTP timestamp of the last packet sent and when, to extrapolate the
    /// SR's RTP timestamp to the report's wallclock.
    last_sent: Option<(u32, Instant)>,
    sent_since_report: bool,
    remote: Option<RemoteView>,
    rtt: Option<Duration>,
    next_report: Instant,
    rng: u64,
    bye_sent: bool,
}

impl RtcpSession {
    /// `local_ssrc` is our RTP SSRC; it also seeds the interval randomisation
    /// (it is random per RFC 3550, so calls do not synchronise, and a test
    /// that fixes it gets fixed intervals). `cname` is cut to 255 bytes.
    /// The first report is due after half the interval (RFC 3550 6.2's
    /// initial Tmin of 2.5 s), randomised.
    pub fn new(local_ssrc: Ssrc, cname: String, clock_rate: u32, now: Instant) -> Self {
        let mut cname = cname;
        if cname.len() > 255 {
            let mut cut = 255;
            while !cname.is_char_boundary(cut) {
                cut -= 1;
            }
            cname.truncate(cut);
        }
        let mut session = RtcpSession {
            local_ssrc,
            cname,
            clock_rate: clock_rate.max(1),
            codec: CodecImpairment::G711_PLC,
            sources: Vec::new(),
            packets_sent: 0,
            octets_sent: 0,
            last_sent: None,
            sent_since_report: false,
            remote: None,
            rtt: None,
            next_report: now,
            rng: u64::from(local_ssrc.0) ^ 0x5254_4350_5f73_6565,
            bye_sent: false,
        };
        session.next_report = now + session.randomized(REPORT_INTERVAL / 2);
        session
    }

    /// The codec whose impairment the MOS estimate uses (default G.711 with PLC).
    pub fn with_codec(mut self, codec: CodecImpairment) -> Self {
        self.codec = codec;
        self
    }

    pub fn local_ssrc(&self) -> Ssrc {
        self.local_ssrc
    }

    /// An RTP packet from the peer (audio or telephone-event alike) arrived.
    pub fn on_rtp_received(&mut self, now: Instant, ssrc: Ssrc, seq: SeqNo, rtp_ts: u32) {
        let clock_rate = self.clock_rate;
        if let Some(src) = self.source_mut(now, ssrc, clock_rate) {
            src.stats.on_rtp(now, seq, rtp_ts);
            src.heard_since_report = true;
            src.last_heard = now;
            src.left = false;
        }
    }

    /// We sent an RTP packet; `payload_len` excludes the RTP header.
    pub fn on_rtp_sent(&mut self, now: Instant, rtp_ts: u32, payload_len: usize) {
        self.packets_sent = self.packets_sent.wrapping_add(1);
        let octets = u32::try_from(payload_len).unwrap_or(u32::MAX);
        self.octets_sent = self.octets_sent.wrapping_add(octets);
        self.last_sent = Some((rtp_ts, now));
        self.sent_since_report = true;
    }

    /// A compound RTCP datagram from the peer arrived at `now` (wallclock
    /// `wallclock_ntp`). Records SR timing for our LSR/DLSR, takes RTT and the
    /// peer's view of our stream from blocks about our SSRC, and notes BYE.
    pub fn handle_rtcp(
        &mut self,
        now: Instant,
        wallclock_ntp: u64,
        buf: &[u8],
    ) -> Result<(), RtcpError> {
        let arrival = compact_ntp(wallclock_ntp);
        for packet in parse_compound(buf)? {
            match packet {
                RtcpPacket::SenderReport(sr) => {
                    let clock_rate = self.clock_rate;
                    if let Some(src) = self.source_mut(now, sr.ssrc, clock_rate) {
                        src.stats.on_sender_report(now, sr.ntp_timestamp);
                    }
                    self.on_report_blocks(arrival, &sr.reports);
                }
                RtcpPacket::ReceiverReport(rr) => self.on_report_blocks(arrival, &rr.reports),
                RtcpPacket::Bye(bye) => {
                    for src in self.sources.iter_mut() {
                        if bye.sources.contains(&src.ssrc) {
                            src.left = true;
                        }
                    }
                }
                RtcpPacket::Sdes(_) | RtcpPacket::Other { .. } => {}
            }
        }
        Ok(())
    }

    fn on_report_blocks(&mut self, arrival: u32, blocks: &[ReportBlock]) {
        for b in blocks.iter().filter(|b| b.ssrc == self.local_ssrc) {
            self.remote = Some(RemoteView {
                fraction_lost: b.fraction_lost,
                jitter: b.jitter,
            });
            if let Some(rtt) = round_trip_time(arrival, b.last_sr, b.delay_since_last_sr) {
                self.rtt = Some(rtt);
            }
        }
    }

    /// When [`RtcpSession::handle_timeout`] next has a report to send.
    pub fn next_timeout(&self) -> Instant {
        self.next_report
    }

    /// If a report is due: schedules the next one (5 s x uniform [0.5, 1.5))
    /// and returns the compound datagram to send, SR (if we sent RTP since
    /// the last report) or RR, with report blocks for every source heard
    /// since the last report, then SDES CNAME. Nothing after [`RtcpSession::bye`].
    pub fn handle_timeout(&mut self, now: Instant, wallclock_ntp: u64) -> Option<Vec<u8>> {
        if now < self.next_report {
            return None;
        }
        self.next_report = now + self.randomized(REPORT_INTERVAL);
        if self.bye_sent {
            return None;
        }
        let reports: Vec<ReportBlock> = self
            .sources
            .iter_mut()
            .filter(|s| s.heard_since_report && !s.left)
            .take(MAX_COUNT)
            .map(|s| {
                s.heard_since_report = false;
                s.stats.report_block(now, s.ssrc)
            })
            .collect();
        let report = if self.sent_since_report {
            self.sent_since_report = false;
            let rtp_timestamp = match self.last_sent {
                Some((ts, at)) => {
                    let ticks = now.saturating_duration_since(at).as_nanos()
                        * u128::from(self.clock_rate)
                        / 1_000_000_000;
                    ts.wrapping_add(ticks as u32)
                }
                None => 0,
            };
            RtcpPacket::SenderReport(SenderReport {
                ssrc: self.local_ssrc,
                ntp_timestamp: wallclock_ntp,
                rtp_timestamp,
                packet_count: self.packets_sent,
                octet_count: self.octets_sent,
                reports,
            })
        } else {
            RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: self.local_ssrc,
                reports,
            })
        };
        Some(write_compound(&[report, self.sdes()]))
    }

    /// RR + SDES CNAME + BYE for our SSRC, to send when the call ends; no
    /// further reports follow.
    pub fn bye(&mut self) -> Vec<u8> {
        self.bye_sent = true;
        write_compound(&[
            RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: self.local_ssrc,
                reports: Vec::new(),
            }),
            self.sdes(),
            RtcpPacket::Bye(Bye {
                sources: vec![self.local_ssrc],
                reason: None,
            }),
        ])
    }

    /// Whether the peer sent an RTCP BYE for a source it had been sending.
    pub fn peer_sent_bye(&self) -> bool {
        self.sources.iter().any(|s| s.left)
    }

    pub fn quality(&self) -> CallQuality {
        let packets_received: u64 = self.sources.iter().map(|s| s.stats.received()).sum();
        let expected: u64 = self.sources.iter().map(|s| s.stats.expected()).sum();
        let lost: i64 = self.sources.iter().map(|s| s.stats.lost()).sum();
        let packets_lost = u64::try_from(lost).unwrap_or(0);
        let fraction_lost_pct = if expected > 0 {
            packets_lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        };
        let jitter_ms = self
            .sources
            .iter()
            .filter(|s| s.stats.received() > 0)
            .max_by_key(|s| s.last_heard)
            .map_or(0.0, |s| s.stats.jitter_ms());
        let rtt_ms = self.rtt.map(|d| d.as_secs_f64() * 1000.0);
        let remote_reported_loss_pct = self
            .remote
            .map(|r| f64::from(r.fraction_lost) * 100.0 / 256.0);
        // The peer measures our stream in our RTP clock.
        let remote_reported_jitter_ms = self
            .remote
            .map(|r| f64::from(r.jitter) * 1000.0 / f64::from(self.clock_rate));
        let loss = fraction_lost_pct.max(remote_reported_loss_pct.unwrap_or(0.0));
        let jitter = jitter_ms.max(remote_reported_jitter_ms.unwrap_or(0.0));
        let one_way = rtt_ms.unwrap_or(0.0) / 2.0 + 2.0 * jitter + PACKETIZATION_MS;
        CallQuality {
            packets_received,
            packets_lost,
            fraction_lost_pct,
            jitter_ms,
            rtt_ms,
            remote_reported_loss_pct,
            remote_reported_jitter_ms,
            mos: e_model_mos(one_way, loss, self.codec),
        }
    }

    fn sdes(&self) -> RtcpPacket {
        RtcpPacket::Sdes(Sdes {
            chunks: vec![SdesChunk {
                ssrc: self.local_ssrc,
                items: vec![SdesItem {
                    kind: SDES_CNAME,
                    value: self.cname.as_bytes().to_vec(),
                }],
            }],
        })
    }

    /// The source's state, created on first sight (evicting the stalest
    /// when [`MAX_SOURCES`] are tracked).
    fn source_mut(&mut self, now: Instant, ssrc: Ssrc, clock_rate: u32) -> Option<&mut Source> {
        let index = match self.sources.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => i,
            None => {
                if self.sources.len() >= MAX_SOURCES {
                    let stalest = self
                        .sources
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.last_heard)
                        .map(|(i, _)| i);
                    if let Some(i) = stalest {
                        self.sources.swap_remove(i);
                    }
                }
                self.sources.push(Source {
                    ssrc,
                    stats: ReceptionStats::new(clock_rate),
                    heard_since_report: false,
                    last_heard: now,
                    left: false,
                });
                self.sources.len() - 1
            }
        };
        self.sources.get_mut(index)
    }

    /// RFC 3550 6.3.1: the interval times a uniform factor in [0.5, 1.5), so
    /// participants that started together do not stay in step. No e - 3/2
    /// divisor: that compensates timer reconsideration, which a two-party
    /// call does not do.
    fn randomized(&mut self, nominal: Duration) -> Duration {
        let unit = (splitmix64(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64;
        nominal.mul_f64(0.5 + unit)
    }
}

/// SplitMix64: a tiny seeded generator, plenty for timer dithering.
pub(super) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::collections::VecDeque;
    use std::time::UNIX_EPOCH;

    use super::super::tests::*;
    use super::super::{ntp_from_system_time, RtcpPacket};
    use super::*;

    /// 2023-11-14T22:13:20Z as the test wallclock, advanced by virtual time.
    fn wallclock(t0: Instant, now: Instant) -> u64 {
        ntp_from_system_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000) + (now - t0))
    }

    #[test]
    fn rtt_from_our_sr_echoed_in_the_peers_rr() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(0x1111), "us".into(), 8000, t0);
        s.on_rtp_sent(t0, 0, 160);
        let sent_at = s.next_timeout();
        let sr = s.handle_timeout(sent_at, wallclock(t0, sent_at)).unwrap();
        let RtcpPacket::SenderReport(sr) = &parse_compound(&sr).unwrap()[0] else {
            panic!("expected SR");
        };
        // The peer holds our SR 1 s and its RR takes 125 ms each way.
        let rr = write_compound(&[RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: Ssrc(0x2222),
            reports: vec![block(
                0x1111,
                0,
                0,
                0,
                0,
                compact_ntp(sr.ntp_timestamp),
                65_536,
            )],
        })]);
        let arrived = sent_at + Duration::from_millis(1250);
        s.handle_rtcp(arrived, wallclock(t0, arrived), &rr).unwrap();
        let rtt = s.quality().rtt_ms.unwrap();
        assert!((rtt - 250.0).abs() < 0.1, "{rtt}");
    }

    fn ntp_after(ntp: u64, d: Duration) -> u64 {
        ntp + ((d.as_nanos() << 32) / 1_000_000_000) as u64
    }

    #[test]
    fn rtt_from_a_real_baresip_exchange_on_loopback_is_about_zero() {
        // Capture times: BARESIP_SR_SDES (from 0x71b3416b) left at 10.000133 s;
        // it echoes 0x0deb95cf's SR (NTP 0xeeaebb74_36874c8f) sent at 5.001317 s.
        let t0 = Instant::now();
        let mut b = RtcpSession::new(Ssrc(0x0deb_95cf), "b".into(), 8000, t0);
        let elapsed = Duration::from_nanos(10_000_132_619 - 5_001_316_539);
        let arrival = ntp_after(0xeeae_bb74_3687_4c8f, elapsed);
        b.handle_rtcp(t0, arrival, &hex(BARESIP_SR_SDES)).unwrap();
        let rtt = b.quality().rtt_ms.unwrap();
        assert!((0.0..2.0).contains(&rtt), "{rtt}");
        // The reply's DLSR (131/65536 s) exceeds the 1.4 ms A - LSR: clamped to 0.
        let mut a = RtcpSession::new(Ssrc(0x71b3_416b), "a".into(), 8000, t0);
        let arrival = ntp_after(0xeeae_bb79_3638_0021, Duration::from_nanos(1_435_428));
        a.handle_rtcp(t0, arrival, &hex(BARESIP_SR_REPLY)).unwrap();
        assert_eq!(a.quality().rtt_ms, Some(0.0));
        assert_eq!(a.quality().remote_reported_jitter_ms, Some(6.0 / 8.0));
    }

    // The session.
    #[test]
    fn report_intervals_are_randomised_between_half_and_one_and_a_half_nominal() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(0xdead_beef), "x".into(), 8000, t0);
        let first = s.next_timeout() - t0;
        assert!(first >= Duration::from_millis(1250) && first < Duration::from_millis(3750));
        assert_eq!(
            s.handle_timeout(s.next_timeout() - Duration::from_millis(1), 0),
            None
        );
        let (mut min, mut max, mut total) = (Duration::MAX, Duration::ZERO, Duration::ZERO);
        for _ in 0..1000 {
            let now = s.next_timeout();
            assert!(s.handle_timeout(now, wallclock(t0, now)).is_some());
            let interval = s.next_timeout() - now;
            assert!(interval >= Duration::from_millis(2500), "{interval:?}");
            assert!(interval < Duration::from_millis(7500), "{interval:?}");
            min = min.min(interval);
            max = max.max(interval);
            total += interval;
        }
        let mean = total.as_secs_f64() / 1000.0;
        assert!((4.8..5.2).contains(&mean), "{mean}");
        assert!(min < Duration::from_secs(3) && max > Duration::from_secs(7));
        // Seeded by the SSRC: deterministic, and different per SSRC.
        let again = RtcpSession::new(Ssrc(0xdead_beef), "x".into(), 8000, t0);
        let other = RtcpSession::new(Ssrc(0xdead_bef0), "x".into(), 8000, t0);
        assert_eq!(again.next_timeout() - t0, first);
        assert_ne!(other.next_timeout() - t0, first);
    }

    #[test]
    fn rr_until_we_send_then_sr_then_rr_again() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(5), "agentline@example".into(), 8000, t0);
        let next = |s: &mut RtcpSession| {
            let now = s.next_timeout();
            parse_compound(&s.handle_timeout(now, wallclock(t0, now)).unwrap()).unwrap()
        };
        let first = next(&mut s);
        assert_eq!(
            first,
            vec![
                RtcpPacket::ReceiverReport(ReceiverReport {
                    ssrc: Ssrc(5),
                    reports: vec![]
                }),
                cname_sdes(5, "agentline@example"),
            ]
        );
        let last_rtp = s.next_timeout() - Duration::from_millis(100);
        for i in 0..10u32 {
            s.on_rtp_sent(last_rtp, 1000 + 160 * i, 160);
        }
        let second = next(&mut s);
        let RtcpPacket::SenderReport(sr) = &second[0] else {
            panic!("expected SR, got {second:?}");
        };
        assert_eq!((sr.packet_count, sr.octet_count), (10, 1600));
        // 100 ms after the last packet (ts 2440): 800 ticks later.
        assert_eq!(sr.rtp_timestamp, 2440 + 800);
        assert!(matches!(next(&mut s)[0], RtcpPacket::ReceiverReport(_)));
    }

    #[test]
    fn report_blocks_cover_sources_heard_since_the_last_report() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(5), "x".into(), 8000, t0);
        for i in 0..50u16 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            s.on_rtp_received(at, Ssrc(77), SeqNo(i), u32::from(i) * 160);
        }
        let now = s.next_timeout();
        let packets = parse_compound(&s.handle_timeout(now, 0).unwrap()).unwrap();
        let RtcpPacket::ReceiverReport(rr) = &packets[0] else {
            panic!("expected RR");
        };
        assert_eq!(rr.reports.len(), 1);
        assert_eq!(
            (rr.reports[0].ssrc, rr.reports[0].highest_seq),
            (Ssrc(77), 49)
        );
        // Silence since: no block.
        let now = s.next_timeout();
        let packets = parse_compound(&s.handle_timeout(now, 0).unwrap()).unwrap();
        assert_eq!(
            packets[0],
            RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: Ssrc(5),
                reports: vec![]
            })
        );
    }

    #[test]
    fn lsr_and_dlsr_echo_the_peers_last_sr() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(5), "x".into(), 8000, t0);
        s.on_rtp_received(t0, Ssrc(0x0deb_95cf), SeqNo(1), 0);
        s.on_rtp_received(t0, Ssrc(0x0deb_95cf), SeqNo(2), 160);
        s.handle_rtcp(t0, 0, &hex(BARESIP_SR_REPLY)).unwrap();
        let now = t0 + Duration::from_millis(1500);
        s.next_report = now;
        let packets = parse_compound(&s.handle_timeout(now, 0).unwrap()).unwrap();
        let RtcpPacket::ReceiverReport(rr) = &packets[0] else {
            panic!("expected RR");
        };
        assert_eq!(rr.reports[0].last_sr, 0xbb79_3697); // middle of 0xeeaebb79_36975afa
        assert_eq!(rr.reports[0].delay_since_last_sr, 98_304); // 1.5 s
    }

    #[test]
    fn bye_is_rr_sdes_bye_and_ends_reporting() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(5), "x".into(), 8000, t0);
        let bye = parse_compound(&s.bye()).unwrap();
        assert_eq!(
            bye,
            vec![
                RtcpPacket::ReceiverReport(ReceiverReport {
                    ssrc: Ssrc(5),
                    reports: vec![]
                }),
                cname_sdes(5, "x"),
                RtcpPacket::Bye(Bye {
                    sources: vec![Ssrc(5)],
                    reason: None
                }),
            ]
        );
        let now = s.next_timeout();
        assert_eq!(s.handle_timeout(now, 0), None);
        assert!(
            s.next_timeout() > now,
            "rescheduled, so a driver does not spin"
        );
    }

    #[test]
    fn peer_bye_is_noticed_and_its_source_no_longer_reported() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(5), "x".into(), 8000, t0);
        for i in 0..10u16 {
            s.on_rtp_received(t0, Ssrc(0x0deb_95cf), SeqNo(i), 0);
        }
        assert!(!s.peer_sent_bye());
        s.handle_rtcp(t0, 0, &hex(BARESIP_BYE_SDES)).unwrap();
        assert!(s.peer_sent_bye());
        let now = s.next_timeout();
        let packets = parse_compound(&s.handle_timeout(now, 0).unwrap()).unwrap();
        let RtcpPacket::ReceiverReport(rr) = &packets[0] else {
            panic!("expected RR");
        };
        assert!(rr.reports.is_empty());
        assert_eq!(s.quality().packets_received, 9);
    }

    #[test]
    fn malformed_rtcp_is_an_error_and_changes_nothing() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(0x71b3_416b), "x".into(), 8000, t0);
        let mut bad = hex(BARESIP_SR_REPLY);
        bad.truncate(50);
        assert!(s.handle_rtcp(t0, 0, &bad).is_err());
        assert_eq!(s.quality().remote_reported_loss_pct, None);
    }

    #[test]
    fn tracked_sources_are_capped() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(5), "x".into(), 8000, t0);
        for ssrc in 0..100u32 {
            let at = t0 + Duration::from_millis(u64::from(ssrc));
            s.on_rtp_received(at, Ssrc(ssrc), SeqNo(0), 0);
        }
        assert_eq!(s.sources.len(), MAX_SOURCES);
        assert!(
            s.sources.iter().all(|src| src.ssrc.0 >= 92),
            "the newest stay"
        );
    }

    #[test]
    fn long_cname_is_cut_on_a_char_boundary() {
        let s = RtcpSession::new(Ssrc(5), "é".repeat(200), 8000, Instant::now());
        assert_eq!(s.cname.len(), 254);
        assert!(parse_compound(&s.clone().bye()).is_ok());
    }

    /// Two sessions over a virtual 30 ms path; A -> B drops every 20th packet.
    #[test]
    fn two_sessions_measure_loss_jitter_rtt_and_mos() {
        enum Datagram {
            Rtp(Ssrc, SeqNo, u32),
            Rtcp(Vec<u8>),
        }
        let t0 = Instant::now();
        let path = Duration::from_millis(30);
        let mut a = RtcpSession::new(Ssrc(0xaaaa_0001), "a@test".into(), 8000, t0);
        let mut b = RtcpSession::new(Ssrc(0xbbbb_0002), "b@test".into(), 8000, t0);
        // (arrival, to B?, datagram); one delay, so FIFO order is arrival order.
        let mut wire: VecDeque<(Instant, bool, Datagram)> = VecDeque::new();
        for ms in 0..30_000u64 {
            let now = t0 + Duration::from_millis(ms);
            while wire.front().is_some_and(|(at, _, _)| *at <= now) {
                let Some((_, to_b, d)) = wire.pop_front() else {
                    break;
                };
                let rx = if to_b { &mut b } else { &mut a };
                match d {
                    Datagram::Rtp(ssrc, seq, ts) => rx.on_rtp_received(now, ssrc, seq, ts),
                    Datagram::Rtcp(buf) => rx.handle_rtcp(now, wallclock(t0, now), &buf).unwrap(),
                }
            }
            if ms % 20 == 0 {
                let i = (ms / 20) as u32;
                let (seq, ts) = (SeqNo(65_000u16.wrapping_add(i as u16)), 7 + i * 160);
                a.on_rtp_sent(now, ts, 160);
                if i % 20 != 7 {
                    wire.push_back((now + path, true, Datagram::Rtp(a.local_ssrc(), seq, ts)));
                }
                b.on_rtp_sent(now, ts, 160);
                wire.push_back((now + path, false, Datagram::Rtp(b.local_ssrc(), seq, ts)));
            }
            if let Some(buf) = a.handle_timeout(now, wallclock(t0, now)) {
                wire.push_back((now + path, true, Datagram::Rtcp(buf)));
            }
            if let Some(buf) = b.handle_timeout(now, wallclock(t0, now)) {
                wire.push_back((now + path, false, Datagram::Rtcp(buf)));
            }
        }
        let qa = a.quality();
        let qb = b.quality();
        // B measures A's stream: 5% lost, constant delay so no jitter.
        assert!((qb.fraction_lost_pct - 5.0).abs() < 0.2, "{qb:?}");
        assert_eq!(qb.packets_lost, 75);
        assert_eq!(qb.jitter_ms, 0.0);
        assert_eq!((qa.packets_lost, qa.fraction_lost_pct), (0, 0.0));
        // A learns it from B's reports (one interval: 12 or 13 of 256).
        let remote = qa.remote_reported_loss_pct.unwrap();
        assert!((4.0..=5.5).contains(&remote), "{qa:?}");
        assert_eq!(qa.remote_reported_jitter_ms, Some(0.0));
        assert_eq!(qb.remote_reported_loss_pct, Some(0.0));
        for q in [&qa, &qb] {
            let rtt = q.rtt_ms.unwrap();
            assert!((rtt - 60.0).abs() < 0.1, "{q:?}");
            // ~5% loss with PLC at 50 ms one-way.
            assert!((3.7..=4.1).contains(&q.mos), "{q:?}");
        }
    }
}
