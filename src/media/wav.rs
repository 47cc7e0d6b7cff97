//! RIFF/WAVE for 16-bit PCM, the one WAV reader and writer of the crate:
//! whole files ([`Wav::parse`]: the embedded greeting, prompts, espeak-ng's
//! output), headers of WAVs still arriving ([`header`]: TTS answers
//! streamed over HTTP, sizes possibly unknown), and mono files out
//! ([`mono_bytes`]: utterances sent to ASR).
//!
//! Not `hound`: it reads through `std::io::Read` and wants the whole header
//! there (a streamed answer has only part of it yet), and it trusts the
//! size fields, which espeak-ng and streaming servers leave as placeholders.
//! Every read of the bytes here is bounds-checked: garbage is a
//! [`WavError`], never a panic.

use super::pcm;

/// A header longer than this (chunks before `data`) is refused while
/// waiting for the rest of it.
pub const MAX_HEADER: usize = 64 * 1024;

/// Sample rates a WAV may declare. Outside it the rate is refused: a
/// streamed answer's resampler is sized by the rate ratio, and a garbage
/// rate (found by the fuzz tests: 4 294 967 295 Hz) asked it for more
/// memory than the machine has, aborting the process.
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 4_000..=192_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("WAV format: expected 16-bit PCM, got format {format} with {bits} bits")]
    Unsupported { format: u16, bits: u16 },
    #[error("WAV format: {channels} channels at {rate} Hz (1 or more channels at 4000-192000 Hz)")]
    BadLayout { channels: u16, rate: u32 },
    #[error("WAV file has no `{0}` chunk")]
    MissingChunk(&'static str),
    #[error("WAV header longer than {MAX_HEADER} bytes")]
    HeaderTooLong,
}

/// What a complete header says: the format, and where the samples start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sample_rate: u32,
    pub channels: u16,
    /// Offset of the first sample byte (just past the `data` chunk header).
    pub data_start: usize,
    /// The `data` chunk's size field, as written: streaming writers put a
    /// placeholder (0 or `u32::MAX`) there, so trust the bytes, not this.
    pub data_len: u32,
}

/// How far the header of a (possibly partial) WAV has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStatus {
    /// More bytes are needed to reach the `data` chunk.
    Incomplete,
    Complete(Header),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Walks the chunks of `buf` (the start of a WAV) up to `data`.
///
/// [`HeaderStatus::Incomplete`] while the header is still cut short (up to
/// [`MAX_HEADER`] bytes); an error as soon as the bytes cannot be a 16-bit
/// PCM WAV.
pub fn header(buf: &[u8]) -> Result<HeaderStatus, WavError> {
    if buf.get(..4).is_some_and(|m| m != b"RIFF") || buf.get(8..12).is_some_and(|m| m != b"WAVE") {
        return Err(WavError::NotWave);
    }
    let mut pos = 12;
    // (format, channels, rate, bits) from the `fmt ` chunk.
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while let (Some(id), Some(len)) = (buf.get(pos..pos + 4), u32_at(buf, pos + 4)) {
        let body_start = pos + 8;
        if id == b"data" {
            let (format, channels, sample_rate, bits) =
                fmt.ok_or(WavError::MissingChunk("fmt "))?;
            // 0xfffe = WAVE_FORMAT_EXTENSIBLE, which sox writes for some files.
            if !(format == 1 || format == 0xfffe) || bits != 16 {
                return Err(WavError::Unsupported { format, bits });
            }
            if channels == 0 || !SAMPLE_RATES.contains(&sample_rate) {
                return Err(WavError::BadLayout {
                    channels,
                    rate: sample_rate,
                });
            }
            return Ok(HeaderStatus::Complete(Header {
                sample_rate,
                channels,
                data_start: body_start,
                data_len: len,
            }));
        }
        let len = len as usize;
        let Some(body) = buf.get(body_start..body_start.saturating_add(len)) else {
            break; // this chunk is not all here yet
        };
        if id == b"fmt " && body.len() >= 16 {
            if let (Some(format), Some(channels), Some(rate), Some(bits)) = (
                u16_at(body, 0),
                u16_at(body, 2),
                u32_at(body, 4),
                u16_at(body, 14),
            ) {
                fmt = Some((format, channels, rate, bits));
            }
        }
        pos = body_start.saturating_add(len + (len & 1));
    }
    if buf.len() > MAX_HEADER {
        return Err(WavError::HeaderTooLong);
    }
    Ok(HeaderStatus::Incomplete)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    pub sample_rate: u32,
    pub channels: u16,
    /// Interleaved samples.
    pub samples: Vec<i16>,
}

impl Wav {
    /// A whole WAV file in memory. The samples are what the `data` chunk
    /// holds up to its size field or the end of the bytes, whichever comes
    /// first (placeholder sizes are common).
    pub fn parse(buf: &[u8]) -> Result<Wav, WavError> {
        let h = match header(buf)? {
            HeaderStatus::Complete(h) => h,
            HeaderStatus::Incomplete if buf.len() < 12 => return Err(WavError::NotWave),
            HeaderStatus::Incomplete => return Err(WavError::MissingChunk("data")),
        };
        let end = h.data_start.saturating_add(h.data_len as usize);
        let data = buf.get(h.data_start..end.min(buf.len())).unwrap_or(&[]);
        Ok(Wav {
            sample_rate: h.sample_rate,
            channels: h.channels,
            samples: pcm::s16le_to_i16(data),
        })
    }

    /// The first channel only.
    pub fn mono(&self) -> Vec<i16> {
        first_channel(&self.samples, self.channels)
    }
}

/// The first channel of interleaved samples (all of them for mono).
pub fn first_channel(samples: &[i16], channels: u16) -> Vec<i16> {
    samples
        .iter()
        .step_by(channels.max(1) as usize)
        .copied()
        .collect()
}

/// A 16-bit mono WAV file of `pcm` at `rate` Hz (44-byte header).
pub fn mono_bytes(pcm: &[i16], rate: u32) -> Vec<u8> {
    let data = u32::try_from(pcm.len() * 2).unwrap_or(u32::MAX);
    let mut v = Vec::with_capacity(44 + pcm.len() * 2);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&data.saturating_add(36).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&1u16.to_le_bytes()); // mono
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&rate.saturating_mul(2).to_le_bytes()); // bytes per second
    v.extend_from_slice(&2u16.to_le_bytes()); // block align
    v.extend_from_slice(&16u16.to_le_bytes()); // bits
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data.to_le_bytes());
    pcm::extend_s16le(pcm, &mut v);
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn embedded_greeting_is_8khz_mono_speech() {
        let w = Wav::parse(include_bytes!("../../assets/greeting.wav")).unwrap();
        assert_eq!((w.sample_rate, w.channels), (8000, 1));
        assert!(w.samples.len() > 8000, "at least a second of audio");
        assert!(
            w.samples.iter().any(|s| s.unsigned_abs() > 5000),
            "not silence"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Wav::parse(b"hello"), Err(WavError::NotWave));
        let mut b = b"RIFF\0\0\0\0WAVEdata\xff\xff\xff\xff".to_vec();
        assert_eq!(Wav::parse(&b), Err(WavError::MissingChunk("fmt ")));
        b.truncate(14);
        assert!(Wav::parse(&b).is_err());
    }

    #[test]
    fn written_file_reads_back() {
        let pcm: Vec<i16> = (0..1001).map(|i| (i * 37 - 16000) as i16).collect();
        let bytes = mono_bytes(&pcm, 22050);
        assert_eq!(bytes.len(), 44 + 2002);
        let w = Wav::parse(&bytes).unwrap();
        assert_eq!((w.sample_rate, w.channels), (22050, 1));
        assert_eq!(w.samples, pcm);
        assert_eq!(w.mono(), pcm);
    }

    #[test]
    fn every_truncated_header_is_an_error_or_incomplete() {
        let bytes = mono_bytes(&[1, 2, 3], 16000);
        for n in 0..44 {
            let cut = &bytes[..n];
            assert!(Wav::parse(cut).is_err(), "{n} bytes parsed");
            assert_eq!(header(cut), Ok(HeaderStatus::Incomplete), "{n} bytes");
        }
        assert_eq!(
            header(&bytes[..44]),
            Ok(HeaderStatus::Complete(Header {
                sample_rate: 16000,
                channels: 1,
                data_start: 44,
                data_len: 6,
            }))
        );
    }

    #[test]
    fn placeholder_sizes_read_to_the_end_of_the_bytes() {
        // espeak-ng and streaming TTS servers: sizes unknown when written.
        let mut bytes = mono_bytes(&[5, -6, 7], 8000);
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Wav::parse(&bytes).unwrap().samples, vec![5, -6, 7]);
        // An odd byte at the end is not a sample.
        bytes.push(9);
        assert_eq!(Wav::parse(&bytes).unwrap().samples, vec![5, -6, 7]);
    }

    #[test]
    fn stereo_keeps_the_first_channel_and_other_formats_are_refused() {
        let mut bytes = mono_bytes(&[1, -1, 2, -2], 8000);
        bytes[22] = 2; // channels
        let w = Wav::parse(&bytes).unwrap();
        assert_eq!(w.channels, 2);
        assert_eq!(w.mono(), vec![1, 2]);
        let mut float = bytes.clone();
        float[20] = 3; // IEEE float
        float[34] = 32;
        assert_eq!(
            Wav::parse(&float),
            Err(WavError::Unsupported {
                format: 3,
                bits: 32
            })
        );
        let mut no_rate = bytes.clone();
        no_rate[24..28].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            Wav::parse(&no_rate),
            Err(WavError::BadLayout {
                channels: 2,
                rate: 0
            })
        );
        let mut not_wave = bytes.clone();
        not_wave[8] = b'X';
        assert_eq!(header(&not_wave), Err(WavError::NotWave));
        // A garbage rate would size a resampler past the machine's memory.
        for (rate, ok) in [
            (3_999, false),
            (4_000, true),
            (192_000, true),
            (192_001, false),
            (u32::MAX, false),
        ] {
            let mut b = bytes.clone();
            b[24..28].copy_from_slice(&rate.to_le_bytes());
            assert_eq!(header(&b).is_ok(), ok, "{rate} Hz");
        }
    }

    #[test]
    fn a_chunk_before_data_waits_for_its_end_but_not_forever() {
        let wav = mono_bytes(&[1, 2], 8000);
        // A LIST chunk between fmt and data, arriving byte by byte.
        let mut bytes = wav[..36].to_vec();
        bytes.extend_from_slice(b"LIST");
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(b"INFO");
        bytes.extend_from_slice(&wav[36..]);
        for n in 0..56 {
            assert_eq!(header(&bytes[..n]), Ok(HeaderStatus::Incomplete), "{n}");
        }
        assert!(matches!(
            header(&bytes[..56]),
            Ok(HeaderStatus::Complete(Header { data_start: 56, .. }))
        ));
        assert_eq!(Wav::parse(&bytes).unwrap().samples, vec![1, 2]);
        // A chunk that claims 1 MB before any data.
        let mut long = wav[..36].to_vec();
        long.extend_from_slice(b"junk");
        long.extend_from_slice(&1_000_000u32.to_le_bytes());
        long.resize(MAX_HEADER + 1, 0);
        assert_eq!(header(&long), Err(WavError::HeaderTooLong));
    }
}
