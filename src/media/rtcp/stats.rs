//! Receiver statistics for one remote RTP source (RFC 3550 appendix A.1
//! sequence validation, A.3 loss, A.8 interarrival jitter) and the
//! round-trip time from a report block's LSR/DLSR (section 6.4.1).

use std::time::{Duration, Instant};

use super::{clamp_cumulative_lost, compact_ntp, duration_to_compact, ReportBlock};
use crate::media::rtp::{SeqNo, Ssrc};

/// A computed RTT above this is a clock step or garbage, and is dropped.
const MAX_RTT: Duration = Duration::from_secs(60);
/// Peers compute DLSR coarsely (baresip said 2 ms for a 1.4 ms hold in our
/// capture), so on a LAN `A - LSR - DLSR` can come out slightly negative;
/// within this much it counts as 0.
const RTT_SLOP_UNITS: u32 = 65536 / 10;

/// RFC 3550 section 6.4.1: RTT = A - LSR - DLSR, all in 1/65536 s, where A
/// is when the report arrived. `None` when the peer has had no SR from us
/// (LSR 0) or the numbers cannot be a real path (clock step, garbage).
pub(super) fn round_trip_time(arrival: u32, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let since_sr = arrival.wrapping_sub(lsr);
    if since_sr > u32::MAX / 2 {
        return None; // the SR would be from the future
    }
    let rtt = match since_sr.checked_sub(dlsr) {
        Some(units) => units,
        None if dlsr - since_sr <= RTT_SLOP_UNITS => 0,
        None => return None,
    };
    let rtt = Duration::from_nanos(u64::from(rtt) * 1_000_000_000 / 65536);
    (rtt <= MAX_RTT).then_some(rtt)
}

const RTP_SEQ_MOD: u32 = 1 << 16;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const MIN_SEQUENTIAL: u32 = 2;

/// What we know about one remote RTP source (RFC 3550 appendix A.1):
/// sequence validation, loss (A.3), interarrival jitter (A.8), and the SR
/// timing that LSR/DLSR echo back.
#[derive(Debug, Clone)]
pub struct ReceptionStats {
    clock_rate: u32,
    seen: bool,
    /// Sequential packets still needed before the source counts (A.1).
    probation: u32,
    max_seq: u16,
    /// Wrap count shifted left 16 bits, as in A.1 (but 64-bit).
    cycles: u64,
    base_seq: u16,
    /// Sequence number that would confirm a restart after a large jump.
    bad_seq: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Arrival clock zero: the first packet's `Instant`.
    epoch: Option<Instant>,
    /// Last relative transit time, in timestamp units (A.8).
    transit: Option<u32>,
    /// Interarrival jitter scaled by 16, in timestamp units (A.8 integer form).
    jitter_x16: u64,
    /// Compact NTP timestamp of the source's last SR and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

impl ReceptionStats {
    /// `clock_rate` is the RTP clock of the stream (8000 for PCMU and G.722,
    /// 48000 for Opus).
    pub fn new(clock_rate: u32) -> Self {
        ReceptionStats {
            clock_rate: clock_rate.max(1),
            seen: false,
            probation: 0,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: RTP_SEQ_MOD + 1,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            epoch: None,
            transit: None,
            jitter_x16: 0,
            last_sr: None,
        }
    }

    /// An RTP packet of this source arrived at `arrival`.
    pub fn on_rtp(&mut self, arrival: Instant, seq: SeqNo, rtp_ts: u32) {
        if !self.update_seq(seq.0) {
            return;
        }
        let epoch = *self.epoch.get_or_insert(arrival);
        let elapsed = arrival.saturating_duration_since(epoch);
        // Arrival in timestamp units; it wraps like the RTP timestamp does and
        // only differences are used. Recomputed from the epoch so rounding
        // never accumulates.
        let ticks = elapsed.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000;
        self.update_jitter(ticks as u32, rtp_ts);
    }

    /// The source sent an SR with this NTP timestamp; it arrived at `now`.
    pub fn on_sender_report(&mut self, now: Instant, ntp_timestamp: u64) {
        self.last_sr = Some((compact_ntp(ntp_timestamp), now));
    }

    /// RFC 3550 A.1 `update_seq`: whether the packet counts.
    fn update_seq(&mut self, seq: u16) -> bool {
        if !self.seen {
            self.seen = true;
            self.init_seq(seq);
            self.max_seq = seq.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            // A new source needs MIN_SEQUENTIAL in-order packets first.
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += u64::from(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: two sequential packets mean the sender
            // restarted its sequence; otherwise drop the packet.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // else: a duplicate or a reordered packet; counted as received.
        self.received += 1;
        true
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
        // Timestamps restart with the sequence: transit starts over.
        self.transit = None;
    }

    /// RFC 3550 A.8, the integer form: J += |D| - J/16, with J scaled by 16.
    fn update_jitter(&mut self, arrival: u32, rtp_ts: u32) {
        let transit = arrival.wrapping_sub(rtp_ts);
        if let Some(prev) = self.transit {
            let d = u64::from((transit.wrapping_sub(prev) as i32).unsigned_abs());
            self.jitter_x16 = self.jitter_x16 + d - ((self.jitter_x16 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    fn extended_max(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    /// Packets counted as received (duplicates included, as A.3 does).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected from the first validated one to the highest seen.
    pub fn expected(&self) -> u64 {
        if !self.seen || self.probation > 0 {
            return 0;
        }
        (self.extended_max() + 1).saturating_sub(u64::from(self.base_seq))
    }

    /// Cumulative packets lost: expected minus received, negative when
    /// duplicates outnumber losses. Not clamped (the report block is).
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Interarrival jitter in timestamp units, as reported.
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_x16 >> 4).unwrap_or(u32::MAX)
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter_x16 as f64 / 16.0 * 1000.0 / f64::from(self.clock_rate)
    }

    /// The report block about this source (RFC 3550 A.3), starting a new
    /// interval for `fraction_lost`.
    pub fn report_block(&mut self, now: Instant, source: Ssrc) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => (lsr, duration_to_compact(now.saturating_duration_since(at))),
            None => (0, 0),
        };
        ReportBlock {
            ssrc: source,
            fraction_lost,
            cumulative_lost: clamp_cumulative_lost(self.lost()),
            highest_seq: self.extended_max() as u32,
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::super::{write_compound, ReceiverReport, RtcpPacket};
    use super::*;

    // RFC 3550 A.1/A.3: loss. Each packet arrives on a 20 ms grid.
    fn feed(stats: &mut ReceptionStats, t0: Instant, seqs: impl IntoIterator<Item = u16>) {
        for (i, seq) in seqs.into_iter().enumerate() {
            let at = t0 + Duration::from_millis(20 * i as u64);
            stats.on_rtp(at, SeqNo(seq), u32::from(seq).wrapping_mul(160));
        }
    }

    #[test]
    fn new_source_counts_only_after_probation() {
        let t0 = Instant::now();
        let mut s = ReceptionStats::new(8000);
        feed(&mut s, t0, [500]);
        assert_eq!((s.received(), s.expected(), s.lost()), (0, 0, 0));
        feed(&mut s, t0, [501]);
        assert_eq!((s.received(), s.expected(), s.lost()), (1, 1, 0));
    }

    #[test]
    fn loss_is_counted_and_fraction_is_per_report_interval() {
        let t0 = Instant::now();
        let mut s = ReceptionStats::new(8000);
        let dropped = [10, 20, 30, 40, 50];
        feed(&mut s, t0, (0..=100).filter(|q| !dropped.contains(q)));
        // Validated from seq 1: 100 expected, 95 received.
        let b = s.report_block(t0, Ssrc(7));
        assert_eq!(b.ssrc, Ssrc(7));
        assert_eq!(b.cumulative_lost, 5);
        assert_eq!(b.fraction_lost, 12); // 5 * 256 / 100
        assert_eq!(b.highest_seq, 100);
        feed(&mut s, t0, 101..=200);
        let b = s.report_block(t0, Ssrc(7));
        assert_eq!((b.fraction_lost, b.cumulative_lost), (0, 5));
        feed(&mut s, t0, (201..=300).filter(|q| q % 2 == 0));
        let b = s.report_block(t0, Ssrc(7));
        assert_eq!((b.fraction_lost, b.cumulative_lost), (128, 55));
        // No packets since the last report: no fraction.
        let b = s.report_block(t0, Ssrc(7));
        assert_eq!((b.fraction_lost, b.cumulative_lost), (0, 55));
        assert_eq!(s.lost(), 55);
    }

    #[test]
    fn sequence_wrap_extends_highest_seq_and_keeps_counting_loss() {
        let t0 = Instant::now();
        let mut s = ReceptionStats::new(8000);
        let seqs = (65_530u16..=65_535).chain((0u16..=20).filter(|&q| q != 2));
        feed(&mut s, t0, seqs);
        let b = s.report_block(t0, Ssrc(1));
        assert_eq!(b.highest_seq, 0x0001_0014);
        // base 65531 .. 65536+20: 26 expected, one (seq 2) lost.
        assert_eq!(s.expected(), 26);
        assert_eq!(b.cumulative_lost, 1);
        assert_eq!(b.fraction_lost, 9); // 256 / 26
    }

    #[test]
    fn cumulative_lost_field_clamps_at_24_bits() {
        let t0 = Instant::now();
        let mut s = ReceptionStats::new(8000);
        // Jumps just under MAX_DROPOUT: ~3000 lost per packet, 9 M in all.
        let seqs = [0u16, 1]
            .into_iter()
            .chain((1..3000u32).map(|k| (1 + k * 2999) as u16));
        feed(&mut s, t0, seqs);
        assert!(s.lost() > 0x7f_ffff, "{}", s.lost());
        let b = s.report_block(t0, Ssrc(1));
        assert_eq!(b.cumulative_lost, 0x7f_ffff);
        assert_eq!(b.fraction_lost, 255);
    }

    #[test]
    fn duplicates_make_cumulative_lost_negative() {
        let t0 = Instant::now();
        let mut s = ReceptionStats::new(8000);
        feed(&mut s, t0, (0..=10).chain([5, 5, 5]));
        let b = s.report_block(t0, Ssrc(1));
        assert_eq!((b.cumulative_lost, b.fraction_lost), (-3, 0));
        let rr = write_compound(&[RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: Ssrc(2),
            reports: vec![b],
        })]);
        assert_eq!(rr[13..16], [0xff, 0xff, 0xfd]);
    }

    #[test]
    fn restarted_sequence_is_accepted_after_two_sequential_packets() {
        let t0 = Instant::now();
        let mut s = ReceptionStats::new(8000);
        feed(&mut s, t0, 0..=10);
        feed(&mut s, t0, [30_000]); // a stray jump: dropped
        assert_eq!((s.received(), s.expected()), (10, 10));
        feed(&mut s, t0, [40_000, 40_001, 40_002]);
        // Restarted at 40001: counts start over from there.
        assert_eq!((s.received(), s.expected(), s.lost()), (2, 2, 0));
        assert_eq!(s.report_block(t0, Ssrc(1)).highest_seq, 40_002);
    }

    // RFC 3550 A.8: jitter.
    fn stream(
        clock_rate: u32,
        frame: u32,
        n: u32,
        ts0: u32,
        late: impl Fn(u32) -> u64,
    ) -> ReceptionStats {
        let t0 = Instant::now();
        let mut s = ReceptionStats::new(clock_rate);
        for i in 0..n {
            let at = t0 + Duration::from_millis(20 * u64::from(i) + late(i));
            s.on_rtp(at, SeqNo(i as u16), ts0.wrapping_add(i * frame));
        }
        s
    }

    #[test]
    fn constant_transit_gives_zero_jitter_even_across_timestamp_wrap() {
        let s = stream(8000, 160, 500, u32::MAX - 10_000, |_| 37);
        assert_eq!(s.jitter(), 0);
        assert_eq!(s.jitter_ms(), 0.0);
        let s = stream(48_000, 960, 500, 123, |_| 0);
        assert_eq!(s.jitter(), 0);
    }

    #[test]
    fn every_other_packet_10ms_late_converges_to_10ms_jitter() {
        let late = |i: u32| if i % 2 == 1 { 10 } else { 0 };
        // First |D| of 80 units: J = 80/16 = 5; then 80 + 80 - 5 = 155 -> 9.
        assert_eq!(stream(8000, 160, 3, 0, late).jitter(), 5);
        assert_eq!(stream(8000, 160, 4, 0, late).jitter(), 9);
        // J += (|D| - J)/16 converges on |D| = 10 ms = 80 units.
        let s = stream(8000, 160, 500, 0, late);
        assert!((79..=80).contains(&s.jitter()), "{}", s.jitter());
        assert!((s.jitter_ms() - 10.0).abs() < 0.1, "{}", s.jitter_ms());
        let s = stream(48_000, 960, 500, 0, late);
        assert!((479..=480).contains(&s.jitter()), "{}", s.jitter());
    }

    // RFC 3550 6.4.1: RTT.
    #[test]
    fn rtt_matches_the_rfc_3550_figure_2_example() {
        // A = 0xb710:8000 (46864.500 s), LSR = 0xb705:2000 (46853.125 s),
        // DLSR = 0x0005:4000 (5.250 s): RTT = 0x0006:2000 = 6.125 s.
        assert_eq!(
            round_trip_time(0xb710_8000, 0xb705_2000, 0x0005_4000),
            Some(Duration::from_millis(6125))
        );
    }

    #[test]
    fn rtt_is_none_without_an_sr_or_for_impossible_numbers() {
        assert_eq!(round_trip_time(0xb710_8000, 0, 0), None);
        // LSR after A: an SR from the future.
        assert_eq!(round_trip_time(0xb705_2000, 0xb710_8000, 0), None);
        // DLSR a little longer than A - LSR (coarse peer clock): 0.
        assert_eq!(
            round_trip_time(0x1_0100, 0x1_0000, 0x180),
            Some(Duration::ZERO)
        );
        // ...a lot longer: garbage.
        assert_eq!(round_trip_time(0x1_0100, 0x1_0000, 0x9_0000), None);
        // Over a minute.
        assert_eq!(round_trip_time(0x100_0000, 0x1_0000, 0), None);
    }
}
