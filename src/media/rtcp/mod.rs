//! RTCP (RFC 3550 section 6) for one call, in three parts like str0m's
//! `rtcp/`: this module is the packet codec (compound datagrams parsed into
//! typed SR, RR, SDES, BYE values and built from them, NTP timestamps);
//! [`stats`] keeps the receiver statistics (appendix A.1, A.3, A.8) and the
//! round-trip time from LSR/DLSR; [`emodel`] turns loss and delay into an
//! ITU-T G.107 E-model MOS; [`session`] is the per-call state machine with
//! the randomised report timer that ties them together.
//!
//! Sans-IO like the rest of `media`: nothing here reads a clock or touches a
//! socket. The call task passes `now` (an [`Instant`](std::time::Instant),
//! for intervals) and the wallclock as a 64-bit NTP timestamp (see
//! [`ntp_from_system_time`]; used for SR timestamps and RTT), and sends
//! whatever [`RtcpSession::handle_timeout`] returns. Parsing never panics on
//! network bytes: a malformed datagram is an [`RtcpError`] that the caller
//! counts and drops.
//!
//! Driving it: report every RTP packet received and sent
//! ([`RtcpSession::on_rtp_received`], [`RtcpSession::on_rtp_sent`]), hand it
//! every RTCP datagram (from the RTCP port, or from the RTP port when
//! [`looks_like_rtcp`](super::rtp::looks_like_rtcp) says so under
//! rtcp-mux), wake it at [`RtcpSession::next_timeout`] and send what
//! `handle_timeout` returns, and send [`RtcpSession::bye`] at hang-up.
// Every read of network bytes goes through `get`/`split_at_checked`.
#![deny(clippy::indexing_slicing)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::rtp::Ssrc;

pub mod emodel;
pub mod session;
pub mod stats;

pub use emodel::{e_model_mos, CodecImpairment};
pub use session::{CallQuality, RtcpSession};
pub use stats::ReceptionStats;

const VERSION: u8 = 2;
const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
/// The 5-bit count field: report blocks, SDES chunks or BYE sources per packet.
const MAX_COUNT: usize = 31;

/// SDES item type of the canonical name (RFC 3550 section 6.5.1).
pub const SDES_CNAME: u8 = 1;

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub(super) mod tests {
    use super::session::splitmix64;
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// baresip 1.0.0, PCMU call on loopback (tshark capture, UDP payloads
    /// verbatim). SR from 0x71b3416b with one block about 0x0deb95cf, then
    /// SDES CNAME.
    pub(crate) const BARESIP_SR_SDES: &str =
        "81c8000c71b3416beeaebb7936380021000177c8000001f400013880\
        0deb95cf0000000000004ca500000005bb7436870004ff7c\
        81ca000771b3416b01157369703a61403132372e302e302e313a323530363000";
    /// The other side's SR, 1.4 ms later in the same capture: its block about
    /// 0x71b3416b echoes the SR above (LSR 0xbb793638, DLSR 131/65536 s).
    pub(crate) const BARESIP_SR_REPLY: &str =
        "81c8000c0deb95cfeeaebb7936975afa0001d187000001f400013880\
        71b3416b00000000000069f400000006bb79363800000083\
        81ca00070deb95cf01157369703a62403132372e302e302e313a323530363200";
    /// baresip's hang-up: BYE (reason "Adjo") first, then SDES; no RR.
    pub(crate) const BARESIP_BYE_SDES: &str = "81cb00030deb95cf0441646a6f000000\
        81ca00070deb95cf01157369703a62403132372e302e302e313a323530363200";
    /// baresip's NAT pinhole opener: APP, name "PING", data "PONG".
    pub(crate) const BARESIP_APP_PING: &str = "80cc000371b3416b50494e47504f4e47";
    /// Built field by field per RFC 3550 6.4.2: V=2 P=0 RC=1 PT=201 length=7,
    /// reporter 0x5a4c2f10; block about 0xb1e2d3c4: fraction 12/256, 42 lost,
    /// one wrap + seq 0x022b, jitter 19, LSR 0xbb793638, DLSR 1.5 s.
    pub(crate) const RR_ONE_BLOCK: &str = "81c900075a4c2f10\
        b1e2d3c40c00002a0001022b00000013bb79363800018000";
    /// As above but duplicates outnumber losses: cumulative lost -3 (0xfffffd).
    pub(crate) const RR_NEGATIVE_LOSS: &str = "81c900075a4c2f10\
        b1e2d3c400fffffd00010005000000000000000000000000";

    pub(crate) fn block(
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

    pub(crate) fn cname_sdes(ssrc: u32, cname: &str) -> RtcpPacket {
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

    pub(crate) fn baresip_sr_sdes() -> Vec<RtcpPacket> {
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

    pub(crate) fn baresip_sr_reply() -> Vec<RtcpPacket> {
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

    pub(crate) fn baresip_bye_sdes() -> Vec<RtcpPacket> {
        vec![
            RtcpPacket::Bye(Bye {
                sources: vec![Ssrc(0x0deb_95cf)],
                reason: Some("Adjo".into()),
            }),
            cname_sdes(0x0deb_95cf, "sip:b@127.0.0.1:25062"),
        ]
    }

    pub(crate) fn baresip_app_ping() -> Vec<RtcpPacket> {
        vec![RtcpPacket::Other { pt: 204 }]
    }

    pub(crate) fn rr_one_block() -> Vec<RtcpPacket> {
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

    pub(crate) fn rr_negative_loss() -> Vec<RtcpPacket> {
        vec![RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: Ssrc(0x5a4c_2f10),
            reports: vec![block(0xb1e2_d3c4, 0, -3, 0x0001_0005, 0, 0, 0)],
        })]
    }

    /// A named datagram as hex and what it parses to.
    type Vector = (&'static str, &'static str, fn() -> Vec<RtcpPacket>);

    /// Datagrams as hex and what they parse to.
    pub(crate) const VECTORS: &[Vector] = &[
        ("baresip SR+SDES", BARESIP_SR_SDES, baresip_sr_sdes),
        ("baresip SR+SDES reply", BARESIP_SR_REPLY, baresip_sr_reply),
        ("baresip BYE+SDES", BARESIP_BYE_SDES, baresip_bye_sdes),
        ("baresip APP PING", BARESIP_APP_PING, baresip_app_ping),
        ("RR with one block", RR_ONE_BLOCK, rr_one_block),
        ("RR with negative loss", RR_NEGATIVE_LOSS, rr_negative_loss),
    ];

    /// Byte offsets where the packets of a well-formed compound end.
    pub(crate) fn packet_ends(buf: &[u8]) -> Vec<usize> {
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
        }
    }

    /// The demultiplexer the session uses under rtcp-mux
    /// ([`looks_like_rtcp`](crate::media::rtp::looks_like_rtcp)) takes every
    /// captured RTCP datagram for RTCP and no audio payload type for it.
    #[test]
    fn rtcp_is_told_apart_from_rtp_for_rtcp_mux() {
        use crate::media::rtp::looks_like_rtcp;
        for (name, h, _) in VECTORS {
            assert!(looks_like_rtcp(&hex(h)), "{name}");
        }
        // PCMU (PT 0), PCMA (8), G.722 (9), dynamic 96-127, with and without marker.
        for pt in [0u8, 8, 9, 96, 101, 111, 127] {
            for marker in [0, 0x80] {
                let rtp = [0x80, pt | marker, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
                assert!(!looks_like_rtcp(&rtp), "PT {pt} marker {marker}");
            }
        }
        assert!(!looks_like_rtcp(&[]));
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
