//! RTCP (RFC 3550 section 6) for one call: compound packets parsed into typed
//! values and built, receiver statistics (appendix A.1, A.3, A.8), the
//! randomised report timer, round-trip time from LSR/DLSR, and an ITU-T G.107
//! E-model MOS estimate of the call.
//!
//! Sans-IO like the rest of `media`: nothing here reads a clock or touches a
//! socket. The call task passes `now` (an [`Instant`], for intervals) and the
//! wallclock as a 64-bit NTP timestamp (see [`ntp_from_system_time`]; used for
//! SR timestamps and RTT), and sends whatever [`RtcpSession::handle_timeout`]
//! returns. Parsing never panics on network bytes: a malformed datagram is an
//! [`RtcpError`] that the caller counts and drops.
//!
//! Driving it: report every RTP packet received and sent
//! ([`RtcpSession::on_rtp_received`], [`RtcpSession::on_rtp_sent`]), hand it
//! every RTCP datagram (from the RTCP port, or from the RTP port when
//! [`is_rtcp`] says so under rtcp-mux), wake it at
//! [`RtcpSession::next_timeout`] and send what `handle_timeout` returns, and
//! send [`RtcpSession::bye`] at hang-up.
// Every read of network bytes goes through `get`/`split_at_checked`.
#![deny(clippy::indexing_slicing)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::rtp::{SeqNo, Ssrc};

const VERSION: u8 = 2;
const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
/// The 5-bit count field: report blocks, SDES chunks or BYE sources per packet.
const MAX_COUNT: usize = 31;

/// SDES item type of the canonical name (RFC 3550 section 6.5.1).
pub const SDES_CNAME: u8 = 1;

/// Nominal report interval: RFC 3550 section 6.2's minimum, which a two-party
/// voice call always hits (5% of ~80 kbit/s would allow one every ~0.2 s).
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// At most this many remote SSRCs are tracked; a new one evicts the stalest.
/// A call has one or two (an SSRC change on re-INVITE); the cap bounds memory
/// against a peer spraying SSRCs.
const MAX_SOURCES: usize = 8;
/// A computed RTT above this is a clock step or garbage, and is dropped.
const MAX_RTT: Duration = Duration::from_secs(60);
/// Peers compute DLSR coarsely (baresip said 2 ms for a 1.4 ms hold in our
/// capture), so on a LAN `A - LSR - DLSR` can come out slightly negative;
/// within this much it counts as 0.
const RTT_SLOP_UNITS: u32 = 65536 / 10;
/// Packetisation delay counted in the E-model's one-way delay (one 20 ms frame).
const PACKETIZATION_MS: f64 = 20.0;

/// Seconds between the NTP era (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("empty datagram: expected at least one 4-byte RTCP header, got 0 bytes")]
    Empty,
    #[error("RTCP header truncated: expected 4 bytes, got {got}")]
    ShortHeader { got: usize },
    #[error("RTCP version: expected 2, got {0}")]
    Version(u8),
    #[error("RTCP length field: expected at most {available} bytes left in the datagram, got a length of {declared}")]
    LengthOverrun { declared: usize, available: usize },
    #[error("RTCP padding: expected 1..={max} octets, got {pad}")]
    BadPadding { pad: usize, max: usize },
    #[error("RTCP {kind} too short: expected at least {expected} bytes, got {got}")]
    Truncated {
        kind: &'static str,
        expected: usize,
        got: usize,
    },
}

/// One reception report block (RFC 3550 section 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: Ssrc,
    /// Loss since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost over the whole session, a 24-bit signed field (negative
    /// with duplicates); values outside it are clamped when written.
    pub cumulative_lost: i32,
    /// Extended highest sequence number: wrap cycles in the upper 16 bits.
    pub highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units of the reported stream.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR from that source.
    pub last_sr: u32,
    /// Time since that SR arrived, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: Ssrc,
    pub ntp_timestamp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
    pub reports: Vec<ReportBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverReport {
    pub ssrc: Ssrc,
    pub reports: Vec<ReportBlock>,
}

/// One SDES item; `value` is the raw text (UTF-8 by RFC 3550, not enforced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesItem {
    pub kind: u8,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesChunk {
    pub ssrc: Ssrc,
    pub items: Vec<SdesItem>,
}

impl SdesChunk {
    /// The CNAME item, if present and valid UTF-8.
    pub fn cname(&self) -> Option<&str> {
        self.items
            .iter()
            .find(|i| i.kind == SDES_CNAME)
            .and_then(|i| std::str::from_utf8(&i.value).ok())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdes {
    pub chunks: Vec<SdesChunk>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bye {
    pub sources: Vec<Ssrc>,
    /// Reason text, lossily decoded; `None` when absent or empty.
    pub reason: Option<String>,
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport(SenderReport),
    ReceiverReport(ReceiverReport),
    Sdes(Sdes),
    Bye(Bye),
    /// APP, XR, RTPFB/PSFB (NACK, PLI) and anything else: skipped by length.
    Other {
        pt: u8,
    },
}

/// Whether a datagram on a multiplexed RTP port is RTCP (RFC 5761 section 4):
/// version 2 and a second octet of 192..=223, i.e. RTCP packet types 192-223,
/// which RTP payload types 64-95 (with the marker bit) would collide with and
/// so are never used with rtcp-mux.
pub fn is_rtcp(buf: &[u8]) -> bool {
    match *buf {
        [b0, b1, _, _, ..] => b0 >> 6 == VERSION && (192..=223).contains(&b1),
        _ => false,
    }
}

/// Parses a compound RTCP datagram into its packets.
///
/// Checks RFC 3550 appendix A.2's structure: version 2 everywhere, lengths
/// that tile the datagram exactly, sane padding. It does not insist that the
/// first packet is SR/RR: baresip sends BYE+SDES without one, and RFC 5506
/// reduced-size RTCP drops the rule anyway.
pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::Empty);
    }
    let mut packets = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let (packet, tail) = parse_one(rest)?;
        packets.push(packet);
        rest = tail;
    }
    Ok(packets)
}

/// Parses the packet at the start of `buf`; returns it and the bytes after it.
fn parse_one(buf: &[u8]) -> Result<(RtcpPacket, &[u8]), RtcpError> {
    let [b0, pt, l0, l1, ..] = *buf else {
        return Err(RtcpError::ShortHeader { got: buf.len() });
    };
    let version = b0 >> 6;
    if version != VERSION {
        return Err(RtcpError::Version(version));
    }
    let total = (usize::from(u16::from_be_bytes([l0, l1])) + 1) * 4;
    let (packet, tail) = buf
        .split_at_checked(total)
        .ok_or(RtcpError::LengthOverrun {
            declared: total,
            available: buf.len(),
        })?;
    let mut end = total;
    if b0 & 0x20 != 0 {
        let pad = usize::from(packet.last().copied().unwrap_or(0));
        if pad == 0 || pad > total - 4 {
            return Err(RtcpError::BadPadding {
                pad,
                max: total - 4,
            });
        }
        end = total - pad;
    }
    let body = packet
        .get(4..end)
        .ok_or(RtcpError::ShortHeader { got: end })?;
    let count = usize::from(b0 & 0x1f);
    let parsed = match pt {
        PT_SR => {
            let mut r = Reader::new(body, "sender report");
            RtcpPacket::SenderReport(SenderReport {
                ssrc: Ssrc(r.u32()?),
                ntp_timestamp: r.u64()?,
                rtp_timestamp: r.u32()?,
                packet_count: r.u32()?,
                octet_count: r.u32()?,
                reports: r.report_blocks(count)?,
            })
        }
        PT_RR => {
            let mut r = Reader::new(body, "receiver report");
            RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: Ssrc(r.u32()?),
                reports: r.report_blocks(count)?,
            })
        }
        PT_SDES => RtcpPacket::Sdes(parse_sdes(body, count)?),
        PT_BYE => RtcpPacket::Bye(parse_bye(body, count)?),
        pt => RtcpPacket::Other { pt },
    };
    Ok((parsed, tail))
}

fn parse_sdes(body: &[u8], count: usize) -> Result<Sdes, RtcpError> {
    let mut r = Reader::new(body, "SDES");
    let mut chunks = Vec::with_capacity(count);
    for _ in 0..count {
        let ssrc = Ssrc(r.u32()?);
        let mut items = Vec::new();
        // Items end with a null octet, then nulls up to a 32-bit boundary.
        // A chunk that simply runs to the end of the packet is accepted too.
        while r.remaining() > 0 {
            let kind = r.u8()?;
            if kind == 0 {
                let to_boundary = (4 - r.pos % 4) % 4;
                r.take(to_boundary.min(r.remaining()))?;
                break;
            }
            let len = usize::from(r.u8()?);
            items.push(SdesItem {
                kind,
                value: r.take(len)?.to_vec(),
            });
        }
        chunks.push(SdesChunk { ssrc, items });
    }
    Ok(Sdes { chunks })
}

fn parse_bye(body: &[u8], count: usize) -> Result<Bye, RtcpError> {
    let mut r = Reader::new(body, "BYE");
    let mut sources = Vec::with_capacity(count);
    for _ in 0..count {
        sources.push(Ssrc(r.u32()?));
    }
    let mut reason = None;
    if r.remaining() > 0 {
        let len = usize::from(r.u8()?);
        let text = r.take(len)?;
        if !text.is_empty() {
            reason = Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    Ok(Bye { sources, reason })
}

/// Bounds-checked big-endian reads over one packet's body; a short read is
/// a [`RtcpError::Truncated`] naming the packet and the sizes, header included.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], kind: &'static str) -> Self {
        Reader { buf, pos: 0, kind }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RtcpError> {
        let end = self.pos.saturating_add(n);
        let bytes = self.buf.get(self.pos..end).ok_or(RtcpError::Truncated {
            kind: self.kind,
            expected: end.saturating_add(4),
            got: self.buf.len() + 4,
        })?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RtcpError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| RtcpError::Truncated {
            kind: self.kind,
            expected: N,
            got: bytes.len(),
        })
    }

    fn u8(&mut self) -> Result<u8, RtcpError> {
        self.array::<1>().map(u8::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, RtcpError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, RtcpError> {
        self.array().map(u64::from_be_bytes)
    }

    fn report_blocks(&mut self, count: usize) -> Result<Vec<ReportBlock>, RtcpError> {
        let mut blocks = Vec::with_capacity(count);
        for _ in 0..count {
            let ssrc = Ssrc(self.u32()?);
            let [fraction_lost, c0, c1, c2] = self.array()?;
            blocks.push(ReportBlock {
                ssrc,
                fraction_lost,
                // Sign-extend the 24-bit field.
                cumulative_lost: i32::from_be_bytes([c0, c1, c2, 0]) >> 8,
                highest_seq: self.u32()?,
                jitter: self.u32()?,
                last_sr: self.u32()?,
                delay_since_last_sr: self.u32()?,
            });
        }
        // Anything after the blocks is a profile-specific extension: ignored.
        Ok(blocks)
    }
}

/// Serialises packets into one compound datagram.
pub fn write_compound(packets: &[RtcpPacket]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for p in packets {
        p.append_to(&mut out);
    }
    out
}

impl RtcpPacket {
    /// Appends this packet to `out`. Counts are 5-bit: past 31 report blocks,
    /// chunks or sources the rest are dropped (send them in another packet);
    /// SDES values and BYE reasons are cut at 255 bytes. `Other` is written
    /// as a bare header.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        match self {
            RtcpPacket::SenderReport(sr) => {
                let start = header(out, sr.reports.len(), PT_SR);
                out.extend_from_slice(&sr.ssrc.0.to_be_bytes());
                out.extend_from_slice(&sr.ntp_timestamp.to_be_bytes());
                out.extend_from_slice(&sr.rtp_timestamp.to_be_bytes());
                out.extend_from_slice(&sr.packet_count.to_be_bytes());
                out.extend_from_slice(&sr.octet_count.to_be_bytes());
                for b in sr.reports.iter().take(MAX_COUNT) {
                    write_block(out, b);
                }
                finish(out, start);
            }
            RtcpPacket::ReceiverReport(rr) => {
                let start = header(out, rr.reports.len(), PT_RR);
                out.extend_from_slice(&rr.ssrc.0.to_be_bytes());
                for b in rr.reports.iter().take(MAX_COUNT) {
                    write_block(out, b);
                }
                finish(out, start);
            }
            RtcpPacket::Sdes(sdes) => {
                let start = header(out, sdes.chunks.len(), PT_SDES);
                for chunk in sdes.chunks.iter().take(MAX_COUNT) {
                    out.extend_from_slice(&chunk.ssrc.0.to_be_bytes());
                    // A kind of 0 would end the chunk early: not writable.
                    for item in chunk.items.iter().filter(|i| i.kind != 0) {
                        let value = item.value.get(..255).unwrap_or(&item.value);
                        out.push(item.kind);
                        out.push(value.len() as u8);
                        out.extend_from_slice(value);
                    }
                    out.push(0);
                    pad_to_word(out, start);
                }
                finish(out, start);
            }
            RtcpPacket::Bye(bye) => {
                let start = header(out, bye.sources.len(), PT_BYE);
                for s in bye.sources.iter().take(MAX_COUNT) {
                    out.extend_from_slice(&s.0.to_be_bytes());
                }
                if let Some(reason) = bye.reason.as_deref().filter(|r| !r.is_empty()) {
                    let text = reason.as_bytes();
                    let text = text.get(..255).unwrap_or(text);
                    out.push(text.len() as u8);
                    out.extend_from_slice(text);
                }
                finish(out, start);
            }
            RtcpPacket::Other { pt } => {
                let start = header(out, 0, *pt);
                finish(out, start);
            }
        }
    }
}

fn header(out: &mut Vec<u8>, count: usize, pt: u8) -> usize {
    let start = out.len();
    out.push((VERSION << 6) | count.min(MAX_COUNT) as u8);
    out.push(pt);
    out.extend_from_slice(&[0, 0]);
    start
}

fn pad_to_word(out: &mut Vec<u8>, start: usize) {
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
}

/// Pads to a 32-bit boundary with nulls and fills in the length field.
fn finish(out: &mut Vec<u8>, start: usize) {
    pad_to_word(out, start);
    let words = (out.len() - start) / 4 - 1;
    let len = u16::try_from(words).unwrap_or(u16::MAX);
    if let Some(field) = out.get_mut(start + 2..start + 4) {
        field.copy_from_slice(&len.to_be_bytes());
    }
}

fn write_block(out: &mut Vec<u8>, b: &ReportBlock) {
    out.extend_from_slice(&b.ssrc.0.to_be_bytes());
    out.push(b.fraction_lost);
    let [_, c0, c1, c2] = clamp_cumulative_lost(i64::from(b.cumulative_lost)).to_be_bytes();
    out.extend_from_slice(&[c0, c1, c2]);
    out.extend_from_slice(&b.highest_seq.to_be_bytes());
    out.extend_from_slice(&b.jitter.to_be_bytes());
    out.extend_from_slice(&b.last_sr.to_be_bytes());
    out.extend_from_slice(&b.delay_since_last_sr.to_be_bytes());
}

/// RFC 3550 A.3: the cumulative-lost field is 24-bit signed, so clamp.
fn clamp_cumulative_lost(lost: i64) -> i32 {
    lost.clamp(-0x80_0000, 0x7f_ffff) as i32
}

/// A 64-bit NTP timestamp (RFC 5905: seconds since 1900 in the upper half,
/// binary fraction in the lower) for a wallclock reading. Seconds wrap in
/// 2036 as NTP era 1 does; only differences of the middle bits matter to
/// RTCP. A clock before 1970 is taken as 1970.
pub fn ntp_from_system_time(t: SystemTime) -> u64 {
    let since_unix = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since_unix.as_secs().wrapping_add(NTP_UNIX_OFFSET_SECS) & 0xffff_ffff;
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp: the "compact" form in LSR, in
/// units of 1/65536 s.
fn compact_ntp(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

fn duration_to_compact(d: Duration) -> u32 {
    let units = d.as_nanos() * 65536 / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// RFC 3550 section 6.4.1: RTT = A - LSR - DLSR, all in 1/65536 s, where A
/// is when the report arrived. `None` when the peer has had no SR from us
/// (LSR 0) or the numbers cannot be a real path (clock step, garbage).
fn round_trip_time(arrival: u32, lsr: u32, dlsr: u32) -> Option<Duration> {
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

/// ITU-T G.107 equipment impairment `Ie` and packet-loss robustness `Bpl`
/// of a codec, on the narrowband (R <= 100) scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    pub ie: f64,
    pub bpl: f64,
}

impl CodecImpairment {
    /// G.711 without concealment, random loss: the provisional planning
    /// values of G.113 (11/2007) Appendix I.
    pub const G711: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 4.3 };
    /// G.711 with G.711 Appendix I packet-loss concealment: same source.
    pub const G711_PLC: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };
    /// G.722 at 64 kbit/s. G.113 only rates it on the wideband scale
    /// (Ie,wb, G.107.1); on this narrowband scale it is no worse than G.711
    /// (Ie 0), and its Appendix III/IV concealment is taken as robust as
    /// G.711's. Assumed values, not from a table.
    pub const G722: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };
    /// Opus at voice bitrates: not in G.113. Transparent on the narrowband
    /// scale (Ie 0) with built-in concealment; taken as robust as G.711 with
    /// PLC, which understates it when in-band FEC is on. Assumed values.
    pub const OPUS: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };
}

/// The simplified E-model rating factor: R = 93.2 - Id - Ie,eff with the
/// G.107 default R0 - Is = 93.2 and no advantage factor.
fn e_model_r(one_way_delay_ms: f64, loss_pct: f64, codec: CodecImpairment) -> f64 {
    // NaN counts as 0 (`max` returns the other operand); infinite delay stays
    // and drives R down.
    let d = one_way_delay_ms.max(0.0);
    let ppl = if loss_pct.is_nan() {
        0.0
    } else {
        loss_pct.clamp(0.0, 100.0)
    };
    // Delay impairment, Cole & Rosenbluth's fit to G.107 Id (echo-cancelled).
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    // G.107 (7-29) with BurstR = 1: random loss.
    let ie_eff = if ppl > 0.0 {
        codec.ie + (95.0 - codec.ie) * ppl / (ppl + codec.bpl.max(0.0))
    } else {
        codec.ie
    };
    93.2 - id - ie_eff
}

/// G.107 Annex B: MOS from R, clamped to [1, 4.5] (the cubic dips a hair
/// below 1 for 0 < R < 6.5, where G.107 also says 1).
fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        return 1.0;
    }
    if r >= 100.0 {
        return 4.5;
    }
    (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6).clamp(1.0, 4.5)
}

/// ITU-T G.107 E-model, simplified as VoIP monitors (and RFC 3611's VoIP
/// metrics) use it: `R = 93.2 - Id(delay) - Ie,eff(loss, codec)`, MOS from R.
/// `one_way_delay_ms` is mouth-to-ear (network, jitter buffer, packetisation);
/// `loss_pct` is random packet loss in percent. Non-increasing in both.
pub fn e_model_mos(one_way_delay_ms: f64, loss_pct: f64, codec: CodecImpairment) -> f64 {
    mos_from_r(e_model_r(one_way_delay_ms, loss_pct, codec))
}

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
fn splitmix64(state: &mut u64) -> u64 {
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

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// baresip 1.0.0, PCMU call on loopback (tshark capture, UDP payloads
    /// verbatim). SR from 0x71b3416b with one block about 0x0deb95cf, then
    /// SDES CNAME.
    const BARESIP_SR_SDES: &str = "81c8000c71b3416beeaebb7936380021000177c8000001f400013880\
        0deb95cf0000000000004ca500000005bb7436870004ff7c\
        81ca000771b3416b01157369703a61403132372e302e302e313a323530363000";
    /// The other side's SR, 1.4 ms later in the same capture: its block about
    /// 0x71b3416b echoes the SR above (LSR 0xbb793638, DLSR 131/65536 s).
    const BARESIP_SR_REPLY: &str = "81c8000c0deb95cfeeaebb7936975afa0001d187000001f400013880\
        71b3416b00000000000069f400000006bb79363800000083\
        81ca00070deb95cf01157369703a62403132372e302e302e313a323530363200";
    /// baresip's hang-up: BYE (reason "Adjo") first, then SDES; no RR.
    const BARESIP_BYE_SDES: &str = "81cb00030deb95cf0441646a6f000000\
        81ca00070deb95cf01157369703a62403132372e302e302e313a323530363200";
    /// baresip's NAT pinhole opener: APP, name "PING", data "PONG".
    const BARESIP_APP_PING: &str = "80cc000371b3416b50494e47504f4e47";
    /// Built field by field per RFC 3550 6.4.2: V=2 P=0 RC=1 PT=201 length=7,
    /// reporter 0x5a4c2f10; block about 0xb1e2d3c4: fraction 12/256, 42 lost,
    /// one wrap + seq 0x022b, jitter 19, LSR 0xbb793638, DLSR 1.5 s.
    const RR_ONE_BLOCK: &str = "81c900075a4c2f10\
        b1e2d3c40c00002a0001022b00000013bb79363800018000";
    /// As above but duplicates outnumber losses: cumulative lost -3 (0xfffffd).
    const RR_NEGATIVE_LOSS: &str = "81c900075a4c2f10\
        b1e2d3c400fffffd00010005000000000000000000000000";

    fn block(
        ssrc: u32,
        fraction_lost: u8,
        cumulative_lost: i32,
        highest_seq: u32,
        jitter: u32,
        last_sr: u32,
        delay_since_last_sr: u32,
    ) -> ReportBlock {
        ReportBlock {
            ssrc: Ssrc(ssrc),
            fraction_lost,
            cumulative_lost,
            highest_seq,
            jitter,
            last_sr,
            delay_since_last_sr,
        }
    }

    fn cname_sdes(ssrc: u32, cname: &str) -> RtcpPacket {
        RtcpPacket::Sdes(Sdes {
            chunks: vec![SdesChunk {
                ssrc: Ssrc(ssrc),
                items: vec![SdesItem {
                    kind: SDES_CNAME,
                    value: cname.as_bytes().to_vec(),
                }],
            }],
        })
    }

    fn baresip_sr_sdes() -> Vec<RtcpPacket> {
        vec![
            RtcpPacket::SenderReport(SenderReport {
                ssrc: Ssrc(0x71b3_416b),
                ntp_timestamp: 0xeeae_bb79_3638_0021,
                rtp_timestamp: 0x0001_77c8,
                packet_count: 500,
                octet_count: 80_000,
                reports: vec![block(
                    0x0deb_95cf,
                    0,
                    0,
                    0x4ca5,
                    5,
                    0xbb74_3687,
                    0x0004_ff7c,
                )],
            }),
            cname_sdes(0x71b3_416b, "sip:a@127.0.0.1:25060"),
        ]
    }

    fn baresip_sr_reply() -> Vec<RtcpPacket> {
        vec![
            RtcpPacket::SenderReport(SenderReport {
                ssrc: Ssrc(0x0deb_95cf),
                ntp_timestamp: 0xeeae_bb79_3697_5afa,
                rtp_timestamp: 0x0001_d187,
                packet_count: 500,
                octet_count: 80_000,
                reports: vec![block(0x71b3_416b, 0, 0, 0x69f4, 6, 0xbb79_3638, 0x83)],
            }),
            cname_sdes(0x0deb_95cf, "sip:b@127.0.0.1:25062"),
        ]
    }

    fn baresip_bye_sdes() -> Vec<RtcpPacket> {
        vec![
            RtcpPacket::Bye(Bye {
                sources: vec![Ssrc(0x0deb_95cf)],
                reason: Some("Adjo".into()),
            }),
            cname_sdes(0x0deb_95cf, "sip:b@127.0.0.1:25062"),
        ]
    }

    fn baresip_app_ping() -> Vec<RtcpPacket> {
        vec![RtcpPacket::Other { pt: 204 }]
    }

    fn rr_one_block() -> Vec<RtcpPacket> {
        vec![RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: Ssrc(0x5a4c_2f10),
            reports: vec![block(
                0xb1e2_d3c4,
                12,
                42,
                0x0001_022b,
                19,
                0xbb79_3638,
                0x0001_8000,
            )],
        })]
    }

    fn rr_negative_loss() -> Vec<RtcpPacket> {
        vec![RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: Ssrc(0x5a4c_2f10),
            reports: vec![block(0xb1e2_d3c4, 0, -3, 0x0001_0005, 0, 0, 0)],
        })]
    }

    /// A named datagram as hex and what it parses to.
    type Vector = (&'static str, &'static str, fn() -> Vec<RtcpPacket>);

    /// Datagrams as hex and what they parse to.
    const VECTORS: &[Vector] = &[
        ("baresip SR+SDES", BARESIP_SR_SDES, baresip_sr_sdes),
        ("baresip SR+SDES reply", BARESIP_SR_REPLY, baresip_sr_reply),
        ("baresip BYE+SDES", BARESIP_BYE_SDES, baresip_bye_sdes),
        ("baresip APP PING", BARESIP_APP_PING, baresip_app_ping),
        ("RR with one block", RR_ONE_BLOCK, rr_one_block),
        ("RR with negative loss", RR_NEGATIVE_LOSS, rr_negative_loss),
    ];

    /// Byte offsets where the packets of a well-formed compound end.
    fn packet_ends(buf: &[u8]) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            at += (usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])) + 1) * 4;
            ends.push(at);
        }
        ends
    }

    #[test]
    fn captured_and_built_datagrams_parse_to_typed_packets() {
        for (name, h, want) in VECTORS {
            assert_eq!(parse_compound(&hex(h)).unwrap(), want(), "{name}");
        }
    }

    #[test]
    fn datagrams_rebuild_byte_for_byte() {
        for (name, h, want) in VECTORS {
            let packets = want();
            if packets
                .iter()
                .any(|p| matches!(p, RtcpPacket::Other { .. }))
            {
                continue; // APP's body is skipped, not kept
            }
            assert_eq!(write_compound(&packets), hex(h), "{name}");
        }
    }

    #[test]
    fn sdes_chunk_yields_its_cname() {
        let packets = parse_compound(&hex(BARESIP_SR_SDES)).unwrap();
        let RtcpPacket::Sdes(sdes) = &packets[1] else {
            panic!("expected SDES, got {:?}", packets[1]);
        };
        assert_eq!(sdes.chunks[0].cname(), Some("sip:a@127.0.0.1:25060"));
    }

    #[test]
    fn built_compound_round_trips() {
        let packets = vec![
            RtcpPacket::SenderReport(SenderReport {
                ssrc: Ssrc(u32::MAX),
                ntp_timestamp: u64::MAX,
                rtp_timestamp: 1,
                packet_count: 2,
                octet_count: 3,
                reports: vec![
                    block(1, 255, 0x7f_ffff, u32::MAX, u32::MAX, 7, 8),
                    block(2, 0, -0x80_0000, 0, 0, 0, 0),
                ],
            }),
            RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: Ssrc(9),
                reports: vec![],
            }),
            RtcpPacket::Sdes(Sdes {
                chunks: vec![
                    SdesChunk {
                        ssrc: Ssrc(10),
                        items: vec![
                            SdesItem {
                                kind: SDES_CNAME,
                                value: b"agentline@10.0.0.1".to_vec(),
                            },
                            SdesItem {
                                kind: 6, // TOOL
                                value: vec![b'x'; 255],
                            },
                            SdesItem {
                                kind: 8, // PRIV
                                value: vec![],
                            },
                        ],
                    },
                    SdesChunk {
                        ssrc: Ssrc(11),
                        items: vec![],
                    },
                ],
            }),
            RtcpPacket::Bye(Bye {
                sources: vec![Ssrc(12), Ssrc(13)],
                reason: Some("call ended".into()),
            }),
            RtcpPacket::Bye(Bye {
                sources: vec![],
                reason: None,
            }),
            RtcpPacket::Other { pt: 205 },
        ];
        let bytes = write_compound(&packets);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(packet_ends(&bytes).last(), Some(&bytes.len()));
        assert_eq!(parse_compound(&bytes).unwrap(), packets);
    }

    #[test]
    fn writer_clamps_cumulative_lost_to_24_bits() {
        for (lost, want, bytes) in [
            (i32::MAX, 0x7f_ffff, [0x7f, 0xff, 0xff]),
            (i32::MIN, -0x80_0000, [0x80, 0x00, 0x00]),
            (-1, -1, [0xff, 0xff, 0xff]),
            (0x12_3456, 0x12_3456, [0x12, 0x34, 0x56]),
        ] {
            let rr = RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: Ssrc(1),
                reports: vec![block(2, 0, lost, 0, 0, 0, 0)],
            });
            let buf = write_compound(std::slice::from_ref(&rr));
            assert_eq!(buf[13..16], bytes, "{lost}");
            let RtcpPacket::ReceiverReport(back) = &parse_compound(&buf).unwrap()[0] else {
                panic!("expected RR");
            };
            assert_eq!(back.reports[0].cumulative_lost, want, "{lost}");
        }
        assert_eq!(clamp_cumulative_lost(i64::MAX), 0x7f_ffff);
        assert_eq!(clamp_cumulative_lost(i64::MIN), -0x80_0000);
    }

    #[test]
    fn truncation_anywhere_but_a_packet_boundary_is_an_error() {
        for (name, h, want) in VECTORS {
            let buf = hex(h);
            let ends = packet_ends(&buf);
            for len in 0..buf.len() {
                let got = parse_compound(&buf[..len]);
                match ends.iter().position(|&e| e == len) {
                    // A prefix ending on a boundary is a shorter valid compound.
                    Some(i) => assert_eq!(got.unwrap(), want()[..=i], "{name} at {len}"),
                    None => assert!(got.is_err(), "{name} cut at {len}: {got:?}"),
                }
            }
        }
    }

    #[test]
    fn wrong_version_is_rejected() {
        let good = hex(BARESIP_SR_SDES);
        for v in [0u8, 1, 3] {
            let mut buf = good.clone();
            buf[0] = (buf[0] & 0x3f) | (v << 6);
            assert_eq!(parse_compound(&buf), Err(RtcpError::Version(v)));
            // ...also in the second packet of the compound.
            let mut buf = good.clone();
            buf[52] = (buf[52] & 0x3f) | (v << 6);
            assert_eq!(parse_compound(&buf), Err(RtcpError::Version(v)));
        }
    }

    #[test]
    fn length_field_past_the_datagram_is_rejected() {
        let mut buf = hex(RR_ONE_BLOCK);
        buf[3] = 8; // 36 bytes declared, 32 present
        assert_eq!(
            parse_compound(&buf),
            Err(RtcpError::LengthOverrun {
                declared: 36,
                available: 32
            })
        );
        buf[2] = 0xff;
        buf[3] = 0xff;
        assert!(matches!(
            parse_compound(&buf),
            Err(RtcpError::LengthOverrun {
                declared: 262_144,
                ..
            })
        ));
    }

    #[test]
    fn empty_and_short_datagrams_are_errors() {
        assert_eq!(parse_compound(&[]), Err(RtcpError::Empty));
        assert_eq!(
            parse_compound(&[0x81, 0xc9, 0x00]),
            Err(RtcpError::ShortHeader { got: 3 })
        );
        // A header whose length 0 leaves no room for an SR's fields.
        assert_eq!(
            parse_compound(&[0x80, 0xc8, 0x00, 0x00]),
            Err(RtcpError::Truncated {
                kind: "sender report",
                expected: 8,
                got: 4
            })
        );
        // A bare header of an unknown type is fine: it is skipped.
        assert_eq!(
            parse_compound(&[0x80, 0xcf, 0x00, 0x00]).unwrap(),
            vec![RtcpPacket::Other { pt: 207 }]
        );
    }

    #[test]
    fn counts_beyond_the_packet_length_are_truncation_errors() {
        let mut rr = hex(RR_ONE_BLOCK);
        rr[0] = 0x82; // RC=2, one block present
        assert_eq!(
            parse_compound(&rr),
            Err(RtcpError::Truncated {
                kind: "receiver report",
                expected: 36,
                got: 32
            })
        );
        let mut bye = hex(BARESIP_BYE_SDES);
        bye[0] = 0x85; // five sources announced in 16 bytes
        assert!(matches!(
            parse_compound(&bye),
            Err(RtcpError::Truncated { kind: "BYE", .. })
        ));
        // An SDES item whose length runs past its packet.
        let mut sdes = hex(BARESIP_SR_SDES);
        sdes[52 + 9] = 0x40;
        assert!(matches!(
            parse_compound(&sdes),
            Err(RtcpError::Truncated { kind: "SDES", .. })
        ));
        let mut sdes = hex(BARESIP_SR_SDES);
        sdes[52] = 0x82; // two chunks announced, one present
        assert!(matches!(
            parse_compound(&sdes),
            Err(RtcpError::Truncated { kind: "SDES", .. })
        ));
    }

    #[test]
    fn padding_is_checked_and_stripped() {
        // RR, no blocks, P=1, length 2: 8 bytes of RR + 4 of padding.
        let padded = [0xa0, 0xc9, 0, 2, 0, 0, 0, 9, 0, 0, 0, 4];
        assert_eq!(
            parse_compound(&padded).unwrap(),
            vec![RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: Ssrc(9),
                reports: vec![]
            })]
        );
        let mut zero = padded;
        zero[11] = 0;
        assert_eq!(
            parse_compound(&zero),
            Err(RtcpError::BadPadding { pad: 0, max: 8 })
        );
        let mut too_much = padded;
        too_much[11] = 9;
        assert_eq!(
            parse_compound(&too_much),
            Err(RtcpError::BadPadding { pad: 9, max: 8 })
        );
        // Padding that eats the SSRC leaves the RR truncated.
        let mut eats = padded;
        eats[11] = 8;
        assert!(matches!(
            parse_compound(&eats),
            Err(RtcpError::Truncated { .. })
        ));
    }

    #[test]
    fn error_messages_say_what_was_expected_and_what_came() {
        let cases = [
            (RtcpError::Version(1), "expected 2, got 1"),
            (
                RtcpError::LengthOverrun {
                    declared: 36,
                    available: 32,
                },
                "expected at most 32 bytes left in the datagram, got a length of 36",
            ),
            (
                RtcpError::Truncated {
                    kind: "receiver report",
                    expected: 36,
                    got: 32,
                },
                "RTCP receiver report too short: expected at least 36 bytes, got 32",
            ),
            (RtcpError::ShortHeader { got: 3 }, "expected 4 bytes, got 3"),
            (
                RtcpError::BadPadding { pad: 9, max: 8 },
                "expected 1..=8 octets, got 9",
            ),
            (RtcpError::Empty, "got 0 bytes"),
        ];
        for (err, text) in cases {
            assert!(err.to_string().contains(text), "{err}");
        }
    }

    #[test]
    fn mutated_and_random_bytes_never_panic() {
        for (_, h, _) in VECTORS {
            let good = hex(h);
            for i in 0..good.len() {
                for v in [
                    0x00,
                    0xff,
                    0x80,
                    0x1f,
                    good[i] ^ 0x20,
                    good[i].wrapping_add(1),
                ] {
                    let mut buf = good.clone();
                    buf[i] = v;
                    let _ = parse_compound(&buf);
                }
            }
        }
        let mut state = 7u64;
        for _ in 0..20_000 {
            let len = (splitmix64(&mut state) % 120) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| splitmix64(&mut state) as u8).collect();
            if let Some(b0) = buf.first_mut() {
                *b0 = 0x80 | (*b0 & 0x3f); // get past the version check
            }
            if let Some(b1) = buf.get_mut(1) {
                *b1 = 200 + *b1 % 5;
            }
            let _ = parse_compound(&buf);
            let _ = is_rtcp(&buf);
        }
    }

    #[test]
    fn rtcp_is_told_apart_from_rtp_for_rtcp_mux() {
        for (name, h, _) in VECTORS {
            assert!(is_rtcp(&hex(h)), "{name}");
        }
        // PCMU (PT 0), PCMA (8), G.722 (9), dynamic 96-127, with and without marker.
        for pt in [0u8, 8, 9, 96, 101, 111, 127] {
            for marker in [0, 0x80] {
                let rtp = [0x80, pt | marker, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
                assert!(!is_rtcp(&rtp), "PT {pt} marker {marker}");
            }
        }
        assert!(!is_rtcp(&[0x81, 0xc9]));
        assert!(!is_rtcp(&[]));
        assert!(!is_rtcp(&[0x01, 0xc9, 0, 1])); // STUN-like first byte
    }

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

    // E-model.
    #[test]
    fn g711_without_loss_at_20ms_is_mos_4_4() {
        let r = e_model_r(20.0, 0.0, CodecImpairment::G711);
        assert!((r - 92.72).abs() < 1e-9, "{r}");
        let mos = e_model_mos(20.0, 0.0, CodecImpairment::G711);
        assert!((mos - 4.40).abs() < 0.01, "{mos}");
        assert!((e_model_mos(0.0, 0.0, CodecImpairment::G711_PLC) - 4.41).abs() < 0.01);
    }

    #[test]
    fn five_percent_random_loss_with_plc_is_fair_to_good() {
        // Ie,eff = 95 * 5 / (5 + 25.1) = 15.8 -> R = 76.9 -> MOS 3.90: the
        // "some users dissatisfied" band of G.107 (R 70-80, MOS 3.6-4.0).
        let mos = e_model_mos(20.0, 5.0, CodecImpairment::G711_PLC);
        assert!((3.7..=4.1).contains(&mos), "{mos}");
        // Without concealment the same loss is far worse (R 41.6 -> MOS 2.1).
        let bare = e_model_mos(20.0, 5.0, CodecImpairment::G711);
        assert!((1.8..=2.5).contains(&bare), "{bare}");
    }

    #[test]
    fn mos_never_rises_with_more_loss_or_delay() {
        let codecs = [
            CodecImpairment::G711,
            CodecImpairment::G711_PLC,
            CodecImpairment::G722,
            CodecImpairment::OPUS,
        ];
        for codec in codecs {
            for delay in [0.0, 100.0, 200.0, 400.0] {
                let mut prev = e_model_mos(delay, 0.0, codec);
                for step in 1..=200 {
                    let mos = e_model_mos(delay, f64::from(step) * 0.5, codec);
                    assert!(mos <= prev, "{codec:?} {delay} ms {step}");
                    if prev > 1.0 {
                        assert!(mos < prev, "{codec:?} {delay} ms {step}");
                    }
                    prev = mos;
                }
            }
            for loss in [0.0, 1.0, 5.0, 20.0] {
                let mut prev = e_model_mos(0.0, loss, codec);
                for step in 1..=200 {
                    let mos = e_model_mos(f64::from(step) * 5.0, loss, codec);
                    assert!(mos <= prev, "{codec:?} {loss}% {step}");
                    if prev > 1.0 {
                        assert!(mos < prev, "{codec:?} {loss}% {step}");
                    }
                    prev = mos;
                }
            }
        }
        for (d, l) in [
            (f64::NAN, 0.0),
            (0.0, f64::NAN),
            (f64::INFINITY, 0.0),
            (-5.0, -1.0),
            (0.0, 500.0),
        ] {
            let mos = e_model_mos(d, l, CodecImpairment::G711);
            assert!((1.0..=4.5).contains(&mos), "{d} {l} -> {mos}");
        }
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

    #[test]
    fn ntp_timestamps_from_wallclock() {
        assert_eq!(ntp_from_system_time(UNIX_EPOCH), 0x83aa_7e80_0000_0000);
        let half = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(ntp_from_system_time(half), 0x83aa_7e81_8000_0000);
        // 2036-02-07T06:28:16Z: NTP era 1 starts, seconds wrap to 0.
        let era1 = UNIX_EPOCH + Duration::from_secs((1 << 32) - NTP_UNIX_OFFSET_SECS);
        assert_eq!(ntp_from_system_time(era1), 0);
        let before_unix = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(ntp_from_system_time(before_unix), 0x83aa_7e80_0000_0000);
        assert_eq!(compact_ntp(0xeeae_bb79_3638_0021), 0xbb79_3638);
    }
}
