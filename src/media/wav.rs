//! Minimal RIFF/WAVE reader for 16-bit PCM (the embedded greeting, prompts).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("WAV format: expected 16-bit PCM, got format {format} with {bits} bits")]
    Unsupported { format: u16, bits: u16 },
    #[error("WAV file has no `{0}` chunk")]
    MissingChunk(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    pub sample_rate: u32,
    pub channels: u16,
    /// Interleaved samples.
    pub samples: Vec<i16>,
}

impl Wav {
    pub fn parse(buf: &[u8]) -> Result<Wav, WavError> {
        if buf.len() < 12 || &buf[0..4] != b"RIFF" || &buf[8..12] != b"WAVE" {
            return Err(WavError::NotWave);
        }
        let mut pos = 12;
        let mut fmt: Option<(u16, u16, u32, u16)> = None;
        while pos + 8 <= buf.len() {
            let id = &buf[pos..pos + 4];
            let len = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]])
                as usize;
            let body_start = pos + 8;
            let body_end = body_start.saturating_add(len).min(buf.len());
            let body = &buf[body_start..body_end];
            if id == b"fmt " && body.len() >= 16 {
                let format = u16::from_le_bytes([body[0], body[1]]);
                let channels = u16::from_le_bytes([body[2], body[3]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                let bits = u16::from_le_bytes([body[14], body[15]]);
                fmt = Some((format, channels, rate, bits));
            } else if id == b"data" {
                let (format, channels, sample_rate, bits) =
                    fmt.ok_or(WavError::MissingChunk("fmt "))?;
                // 0xfffe = WAVE_FORMAT_EXTENSIBLE, which sox writes for some files.
                if !(format == 1 || format == 0xfffe) || bits != 16 || channels == 0 {
                    return Err(WavError::Unsupported { format, bits });
                }
                let samples = body
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect();
                return Ok(Wav {
                    sample_rate,
                    channels,
                    samples,
                });
            }
            pos = body_start.saturating_add(len + (len & 1));
        }
        Err(WavError::MissingChunk("data"))
    }

    /// The first channel only.
    pub fn mono(&self) -> Vec<i16> {
        self.samples
            .iter()
            .step_by(self.channels.max(1) as usize)
            .copied()
            .collect()
    }
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
}
