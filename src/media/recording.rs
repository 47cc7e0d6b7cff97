//! Call recordings as stereo WAV, sans-IO: the caller on the left channel,
//! what we send on the right, 16-bit PCM at the call's internal rate.
//!
//! A recording is written while the call runs, so a crash leaves a file
//! whose header sizes are behind its length: [`header`] builds the header
//! the writer rewrites as it goes, and [`plan_repair`] says how to fix a
//! file that was left stale (new size fields, and a cut at the last whole
//! sample frame). The file I/O itself is the caller's (`sip::recorder`).

use super::wav::{self, HeaderStatus, WavError};

/// Length of the header [`header`] writes (RIFF, `fmt `, `data`).
pub const HEADER_LEN: usize = 44;

/// Left = caller, right = agent.
pub const CHANNELS: u16 = 2;

/// The largest `data` size a RIFF header can state.
pub const MAX_DATA_LEN: u64 = u32::MAX as u64 - HEADER_LEN as u64;

/// One tick of a recording: interleaved stereo samples (left, right, ...)
/// at `rate` Hz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StereoFrame {
    pub rate: u32,
    pub samples: Vec<i16>,
}

/// The 44-byte header of a 16-bit PCM WAV with `data_len` bytes of samples.
/// Sizes past what RIFF can state are capped.
pub fn header(rate: u32, channels: u16, data_len: u64) -> [u8; HEADER_LEN] {
    let data = u32::try_from(data_len.min(MAX_DATA_LEN)).unwrap_or(u32::MAX);
    let block = channels.saturating_mul(2);
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data.saturating_add(36).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&rate.saturating_mul(u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data.to_le_bytes());
    h
}

/// Interleaves one tick: `n` stereo frames from `left` and `right`, each
/// padded with silence when shorter than `n` (extra samples are ignored).
pub fn interleave(left: &[i16], right: &[i16], n: usize, out: &mut Vec<i16>) {
    out.reserve(n * 2);
    for i in 0..n {
        out.push(left.get(i).copied().unwrap_or(0));
        out.push(right.get(i).copied().unwrap_or(0));
    }
}

/// What a recording file needs, judged from its first bytes and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The header's sizes match the file: nothing to do.
    UpToDate,
    /// Write each `(offset, bytes)` and cut the file to `truncate_to`
    /// (the last whole sample frame) when it is longer.
    Fix {
        patches: Vec<(u64, [u8; 4])>,
        truncate_to: Option<u64>,
        /// The `data` size the fixed header states.
        data_len: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepairError {
    #[error("not a 16-bit PCM WAV: {0}")]
    NotWav(#[from] WavError),
    #[error("the WAV header is cut short ({0} bytes)")]
    NoHeader(u64),
}

/// How to make the sizes in a WAV's header match its length. `head` is
/// the start of the file (at least the header: [`wav::MAX_HEADER`] bytes
/// or the whole file if shorter), `file_len` its length on disk. The data
/// is taken to run to the end of the file, as a recording's does.
pub fn plan_repair(head: &[u8], file_len: u64) -> Result<Repair, RepairError> {
    let h = match wav::header(head)? {
        HeaderStatus::Complete(h) => h,
        HeaderStatus::Incomplete => return Err(RepairError::NoHeader(file_len)),
    };
    let data_start = h.data_start as u64;
    let block = u64::from(h.channels) * 2;
    let available = file_len.saturating_sub(data_start);
    let data_len = (available - available % block).min(MAX_DATA_LEN - MAX_DATA_LEN % block);
    let end = data_start + data_len;
    let riff_now = head
        .get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes);
    let riff_len = u32::try_from(end - 8).unwrap_or(u32::MAX);
    let data_field = u32::try_from(data_len).unwrap_or(u32::MAX);
    if end == file_len && u64::from(h.data_len) == data_len && riff_now == Some(riff_len) {
        return Ok(Repair::UpToDate);
    }
    Ok(Repair::Fix {
        patches: vec![
            (4, riff_len.to_le_bytes()),
            (data_start - 4, data_field.to_le_bytes()),
        ],
        truncate_to: (end < file_len).then_some(end),
        data_len,
    })
}

/// A name for a file made from network input (a SIP Call-ID): only
/// `[A-Za-z0-9._-]`, no leading dot, no `..`, at most 120 characters, never
/// empty. Anything else becomes `_`.
pub fn safe_file_stem(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(120));
    for c in raw.chars().take(120) {
        let c = if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
            c
        } else {
            '_'
        };
        // No hidden files, no `..` anywhere.
        if c == '.' && (out.is_empty() || out.ends_with('.')) {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push_str("call");
    }
    out
}

/// `YYYY-MM-DD` (UTC) of a Unix time in seconds.
pub fn utc_date(unix_secs: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let days = (unix_secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::pcm;
    use crate::media::wav::Wav;

    fn file(rate: u32, samples: &[i16], stated: u64) -> Vec<u8> {
        let mut f = header(rate, 2, stated).to_vec();
        pcm::extend_s16le(samples, &mut f);
        f
    }

    fn apply(f: &mut Vec<u8>, r: &Repair) {
        if let Repair::Fix {
            patches,
            truncate_to,
            ..
        } = r
        {
            for (at, b) in patches {
                f[*at as usize..*at as usize + 4].copy_from_slice(b);
            }
            if let Some(t) = truncate_to {
                f.truncate(*t as usize);
            }
        }
    }

    #[test]
    fn interleave_puts_caller_left_and_agent_right_padding_with_silence() {
        let mut out = Vec::new();
        interleave(&[1, 2, 3], &[-1, -2], 3, &mut out);
        assert_eq!(out, vec![1, -1, 2, -2, 3, 0]);
        out.clear();
        interleave(&[], &[7, 8, 9, 10], 2, &mut out);
        assert_eq!(out, vec![0, 7, 0, 8]);
    }

    #[test]
    fn header_states_stereo_rate_and_sizes_and_reads_back() {
        let samples: Vec<i16> = (0..320).map(|i| i as i16 * 3 - 400).collect();
        let f = file(16000, &samples, 640);
        assert_eq!(&f[4..8], &(640u32 + 36).to_le_bytes());
        assert_eq!(&f[28..32], &64000u32.to_le_bytes(), "bytes per second");
        assert_eq!(&f[32..34], &4u16.to_le_bytes(), "block align");
        let w = Wav::parse(&f).unwrap();
        assert_eq!((w.sample_rate, w.channels), (16000, 2));
        assert_eq!(w.samples, samples);
        assert_eq!(plan_repair(&f, f.len() as u64), Ok(Repair::UpToDate));
    }

    #[test]
    fn rewritten_header_covers_what_was_appended() {
        // The writer's rewrite: a header for the new length.
        let mut f = file(8000, &[1, 2, 3, 4], 0);
        pcm::extend_s16le(&[5, 6], &mut f);
        f[..HEADER_LEN].copy_from_slice(&header(8000, 2, 12));
        assert_eq!(plan_repair(&f, f.len() as u64), Ok(Repair::UpToDate));
        assert_eq!(Wav::parse(&f).unwrap().samples, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn stale_sizes_are_fixed_to_the_file_length() {
        let samples: Vec<i16> = (0..800).map(|i| (i * 7) as i16).collect();
        // Header last rewritten when 100 frames were there.
        let mut f = file(8000, &samples, 400);
        let r = plan_repair(&f, f.len() as u64).unwrap();
        assert_eq!(
            r,
            Repair::Fix {
                patches: vec![
                    (4, (1600u32 + 36).to_le_bytes()),
                    (40, 1600u32.to_le_bytes())
                ],
                truncate_to: None,
                data_len: 1600,
            }
        );
        apply(&mut f, &r);
        assert_eq!(Wav::parse(&f).unwrap().samples, samples);
        assert_eq!(plan_repair(&f, f.len() as u64), Ok(Repair::UpToDate));
    }

    #[test]
    fn a_file_cut_mid_sample_is_truncated_to_whole_frames() {
        let mut f = file(8000, &[1, 2, 3, 4], 0);
        f.extend_from_slice(&[9, 9, 9]); // half a stereo frame, odd byte
        let r = plan_repair(&f, f.len() as u64).unwrap();
        assert_eq!(
            r,
            Repair::Fix {
                patches: vec![(4, 44u32.to_le_bytes()), (40, 8u32.to_le_bytes())],
                truncate_to: Some(52),
                data_len: 8,
            }
        );
        apply(&mut f, &r);
        assert_eq!(f.len(), 52);
        assert_eq!(Wav::parse(&f).unwrap().samples, vec![1, 2, 3, 4]);
        // A header that claims more than the file holds is fixed too.
        let mut g = file(8000, &[1, 2], 4000);
        let r = plan_repair(&g, g.len() as u64).unwrap();
        apply(&mut g, &r);
        assert_eq!(&g[40..44], &4u32.to_le_bytes());
    }

    #[test]
    fn not_a_wav_is_a_typed_error_and_a_cut_header_too() {
        assert_eq!(
            plan_repair(b"hello, this is not a WAV file at all.........", 46),
            Err(RepairError::NotWav(WavError::NotWave))
        );
        let f = file(8000, &[], 0);
        assert_eq!(plan_repair(&f[..20], 20), Err(RepairError::NoHeader(20)));
        assert_eq!(plan_repair(&[], 0), Err(RepairError::NoHeader(0)));
    }

    #[test]
    fn file_stems_from_call_ids_are_safe() {
        assert_eq!(
            safe_file_stem("a84b4c76e66710@pc33.atlanta.com"),
            "a84b4c76e66710_pc33.atlanta.com"
        );
        assert_eq!(safe_file_stem("../../etc/passwd"), "_._.__etc_passwd");
        assert_eq!(safe_file_stem(".."), "_.");
        assert_eq!(safe_file_stem("a..b"), "a._b");
        assert_eq!(safe_file_stem(""), "call");
        assert_eq!(safe_file_stem("x/y\\z\0é"), "x_y_z__");
        assert_eq!(safe_file_stem(&"k".repeat(500)).len(), 120);
        for s in ["../x", "..", ".hidden", "a/../b", "...."] {
            let stem = safe_file_stem(s);
            assert!(
                !stem.contains("..") && !stem.starts_with('.'),
                "{s} -> {stem}"
            );
        }
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_798_761_599), "2026-12-31");
        assert_eq!(utc_date(1_798_761_600), "2027-01-01");
    }
}
