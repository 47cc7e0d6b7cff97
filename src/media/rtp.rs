//! RTP packets (RFC 3550 section 5.1): parsing into typed values and building.
//!
//! Parsing never panics on network bytes: a malformed packet becomes a
//! [`RtpError`] that the session counts and drops.

use std::cmp::Ordering;

/// Synchronisation source identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Ssrc(pub u32);

/// RTP payload type (7 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct PayloadType(pub u8);

/// A 16-bit RTP sequence number; ordering is modulo 2^16 (RFC 1982 style).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// Signed distance from `self` to `other` accounting for wrap-around.
    pub fn delta_to(self, other: SeqNo) -> i32 {
        other.0.wrapping_sub(self.0) as i16 as i32
    }
    pub fn next(self) -> SeqNo {
        SeqNo(self.0.wrapping_add(1))
    }
}

impl PartialOrd for SeqNo {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SeqNo {
    fn cmp(&self, other: &Self) -> Ordering {
        0.cmp(&self.delta_to(*other))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("RTP packet too short: expected at least {expected} bytes, got {got}")]
    TooShort { expected: usize, got: usize },
    #[error("RTP version: expected 2, got {0}")]
    Version(u8),
    #[error("RTP padding length {pad} exceeds payload of {len} bytes")]
    BadPadding { pad: usize, len: usize },
}

/// A parsed RTP packet borrowing its payload from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: PayloadType,
    pub seq: SeqNo,
    pub timestamp: u32,
    pub ssrc: Ssrc,
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        if buf.len() < 12 {
            return Err(RtpError::TooShort {
                expected: 12,
                got: buf.len(),
            });
        }
        let b0 = buf[0];
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let padding = b0 & 0x20 != 0;
        let extension = b0 & 0x10 != 0;
        let csrc_count = (b0 & 0x0f) as usize;
        let b1 = buf[1];
        let mut offset = 12 + 4 * csrc_count;
        if buf.len() < offset {
            return Err(RtpError::TooShort {
                expected: offset,
                got: buf.len(),
            });
        }
        if extension {
            if buf.len() < offset + 4 {
                return Err(RtpError::TooShort {
                    expected: offset + 4,
                    got: buf.len(),
                });
            }
            let words = u16::from_be_bytes([buf[offset + 2], buf[offset + 3]]) as usize;
            offset += 4 + 4 * words;
            if buf.len() < offset {
                return Err(RtpError::TooShort {
                    expected: offset,
                    got: buf.len(),
                });
            }
        }
        let mut end = buf.len();
        if padding {
            let pad = buf[buf.len() - 1] as usize;
            if pad == 0 || pad > end - offset {
                return Err(RtpError::BadPadding {
                    pad,
                    len: end - offset,
                });
            }
            end -= pad;
        }
        Ok(RtpPacket {
            marker: b1 & 0x80 != 0,
            payload_type: PayloadType(b1 & 0x7f),
            seq: SeqNo(u16::from_be_bytes([buf[2], buf[3]])),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: Ssrc(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]])),
            payload: &buf[offset..end],
        })
    }

    /// Serialises a packet without CSRCs, extension or padding.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(0x80);
        out.push((self.payload_type.0 & 0x7f) | if self.marker { 0x80 } else { 0 });
        out.extend_from_slice(&self.seq.0.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.0.to_be_bytes());
        out.extend_from_slice(self.payload);
    }
}

/// Whether a datagram on the RTP port is RTCP (RFC 5761 section 4: PT 64-95
/// in the second byte when the marker bit is folded in).
pub fn looks_like_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn packet_round_trips() {
        let p = RtpPacket {
            marker: true,
            payload_type: PayloadType(8),
            seq: SeqNo(65535),
            timestamp: 0xdead_beef,
            ssrc: Ssrc(0x1234_5678),
            payload: &[1, 2, 3],
        };
        let mut buf = Vec::new();
        p.write(&mut buf);
        assert_eq!(RtpPacket::parse(&buf).unwrap(), p);
    }

    #[test]
    fn csrc_extension_and_padding_are_skipped() {
        let mut buf = vec![0x80 | 0x20 | 0x10 | 0x01, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        buf.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        buf.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7]); // extension, 1 word
        buf.extend_from_slice(&[0xaa, 0xbb]); // payload
        buf.extend_from_slice(&[0, 2]); // padding of 2
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.payload, &[0xaa, 0xbb]);
    }

    #[test]
    fn malformed_packets_are_typed_errors() {
        assert!(matches!(
            RtpPacket::parse(&[0x80; 5]),
            Err(RtpError::TooShort { .. })
        ));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::Version(1)));
        let mut pad = vec![0xa0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 5];
        assert!(matches!(
            RtpPacket::parse(&pad),
            Err(RtpError::BadPadding { .. })
        ));
        pad[0] = 0x8f; // 15 CSRCs announced, none present
        assert!(matches!(
            RtpPacket::parse(&pad),
            Err(RtpError::TooShort { .. })
        ));
        for len in 0..pad.len() {
            let _ = RtpPacket::parse(&pad[..len]);
        }
    }

    #[test]
    fn sequence_numbers_compare_across_wrap() {
        assert!(SeqNo(65535) < SeqNo(0));
        assert!(SeqNo(65000) < SeqNo(10));
        assert_eq!(SeqNo(65535).delta_to(SeqNo(1)), 2);
        assert_eq!(SeqNo(1).delta_to(SeqNo(65535)), -2);
    }
}
