//! 16-bit little-endian PCM (`s16le`) to and from samples: the one place
//! the crate turns audio bytes into `i16` and back (WAV data chunks, agent
//! wire formats, HTTP bodies).

/// Appends the samples in `bytes`; an odd trailing byte is ignored.
pub fn extend_from_s16le(bytes: &[u8], out: &mut Vec<i16>) {
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]])),
    );
}

/// The samples in `bytes`; an odd trailing byte is ignored.
pub fn s16le_to_i16(bytes: &[u8]) -> Vec<i16> {
    let mut out = Vec::with_capacity(bytes.len() / 2);
    extend_from_s16le(bytes, &mut out);
    out
}

/// Appends `pcm` as s16le bytes.
pub fn extend_s16le(pcm: &[i16], out: &mut Vec<u8>) {
    out.reserve(pcm.len() * 2);
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// `pcm` as s16le bytes.
pub fn i16_to_s16le(pcm: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pcm.len() * 2);
    extend_s16le(pcm, &mut out);
    out
}

/// s16le arriving in pieces of any length (a stream, HTTP chunks): an odd
/// byte at the end of one piece is kept and joined with the next.
#[derive(Debug, Default, Clone)]
pub struct S16leStream {
    carry: Option<u8>,
}

impl S16leStream {
    /// Appends the whole samples `bytes` completes.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<i16>) {
        let mut rest = bytes;
        if let Some(lo) = self.carry.take() {
            match rest.split_first() {
                Some((&hi, tail)) => {
                    out.push(i16::from_le_bytes([lo, hi]));
                    rest = tail;
                }
                None => {
                    self.carry = Some(lo);
                    return;
                }
            }
        }
        let mut chunks = rest.chunks_exact(2);
        out.extend(chunks.by_ref().map(|c| i16::from_le_bytes([c[0], c[1]])));
        self.carry = chunks.remainder().first().copied();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_sample_value() {
        let pcm: Vec<i16> = (i16::MIN..=i16::MAX).collect();
        let bytes = i16_to_s16le(&pcm);
        assert_eq!(bytes.len(), pcm.len() * 2);
        assert_eq!(&bytes[..4], &[0x00, 0x80, 0x01, 0x80], "little-endian");
        assert_eq!(s16le_to_i16(&bytes), pcm);
    }

    #[test]
    fn odd_trailing_byte_is_ignored_whole() {
        assert_eq!(s16le_to_i16(&[1, 0, 2]), vec![1]);
        assert_eq!(s16le_to_i16(&[7]), Vec::<i16>::new());
        let mut out = vec![9];
        extend_from_s16le(&[0xff, 0xff], &mut out);
        assert_eq!(out, vec![9, -1], "appends");
    }

    #[test]
    fn stream_carries_odd_bytes_across_pieces() {
        let mut p = S16leStream::default();
        let mut out = Vec::new();
        p.push(&[1, 0, 2], &mut out);
        p.push(&[0], &mut out);
        p.push(&[], &mut out);
        p.push(&[3, 0], &mut out);
        p.push(&[4], &mut out);
        p.push(&[], &mut out);
        p.push(&[1, 5, 0], &mut out);
        assert_eq!(out, vec![1, 2, 3, 0x104, 5]);
    }
}
