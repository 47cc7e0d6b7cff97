//! Audio checks for media tests: a small RIFF/WAV reader and writer (16-bit
//! PCM, any channel count and rate, no extra crates), resampling to 8 kHz, and
//! the measurements an echo test needs: speech level (dBFS), level match,
//! cross-correlation delay, longest dropout inside speech, and finding a known
//! clip (a greeting) inside a recording.
//!
//! Conventions: samples are `f32` in [-1, 1) (i16 / 32768); dBFS is the RMS
//! relative to 1.0 (a full-scale square wave is 0 dBFS, a full-scale sine
//! -3 dBFS); analysis runs at 8 kHz on 20 ms frames.

use std::path::Path;

/// Sample rate at which all comparisons run.
pub const ANALYSIS_RATE: u32 = 8000;
/// Analysis frame length.
pub const FRAME_MS: usize = 20;
/// A frame counts as speech if it is within this many dB of the loudest frame.
const ACTIVE_BELOW_PEAK_DB: f64 = 40.0;
/// ... and above this absolute floor (dBFS), so a silent file has no speech.
const ACTIVE_FLOOR_DBFS: f64 = -60.0;
/// Level returned for digital silence instead of -inf.
pub const SILENCE_DBFS: f64 = -150.0;

/// Mono audio: channels are averaged when a file is read.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    pub rate: u32,
    pub samples: Vec<f32>,
}

impl Audio {
    pub fn new(rate: u32, samples: Vec<f32>) -> Audio {
        Audio { rate, samples }
    }

    pub fn duration_ms(&self) -> f64 {
        if self.rate == 0 {
            return 0.0;
        }
        self.samples.len() as f64 * 1000.0 / self.rate as f64
    }

    /// This audio at 8 kHz (a copy when it already is).
    pub fn to_8k(&self) -> Audio {
        resample(self, ANALYSIS_RATE)
    }
}

/// What the file header said, for checks on recordings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WavInfo {
    pub rate: u32,
    pub channels: u16,
    pub bits: u16,
    /// Whole frames of audio present in the file.
    pub frames: usize,
    /// The data chunk's declared size did not match the bytes present (a file
    /// whose writer was killed before it fixed the header up).
    pub truncated_header: bool,
}

/// Reads a 16-bit PCM WAV file; channels are averaged to mono.
pub fn read_wav(path: &Path) -> Result<Audio, String> {
    read_wav_info(path).map(|(a, _)| a)
}

/// Like [`read_wav`], also returning the header facts.
pub fn read_wav_info(path: &Path) -> Result<(Audio, WavInfo), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_wav(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses RIFF/WAVE bytes. Accepts format tag 1 (PCM) and 0xFFFE
/// (WAVE_FORMAT_EXTENSIBLE with a PCM sub-format), 16 bits, 1..=8 channels,
/// any rate; skips unknown chunks (odd sizes are padded to even); tolerates a
/// RIFF or data size of 0 / 0xFFFFFFFF / too large (streaming or killed
/// writers) by taking the bytes that are there.
pub fn parse_wav(bytes: &[u8]) -> Result<(Audio, WavInfo), String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut pos = 12usize;
    let mut fmt: Option<(u16, u16, u32, u16)> = None; // tag, channels, rate, bits
    let mut data: Option<(usize, usize, bool)> = None; // start, len, header wrong
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = le_u32(bytes, pos + 4) as usize;
        let body = pos + 8;
        let avail = bytes.len() - body;
        if id == b"fmt " {
            if size < 16 || avail < 16 {
                return Err(format!("fmt chunk too short ({size} bytes)"));
            }
            let mut tag = le_u16(bytes, body);
            let channels = le_u16(bytes, body + 2);
            let rate = le_u32(bytes, body + 4);
            let bits = le_u16(bytes, body + 14);
            if tag == 0xFFFE {
                // WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the tag.
                if size < 40 || avail < 40 {
                    return Err("extensible fmt chunk too short".into());
                }
                tag = le_u16(bytes, body + 24);
            }
            fmt = Some((tag, channels, rate, bits));
        } else if id == b"data" {
            let wrong = size == 0 || size > avail;
            let len = if wrong { avail } else { size };
            data = Some((body, len, wrong));
            if wrong {
                break; // the data runs to the end of the file
            }
        }
        // Chunks are padded to an even size.
        pos = body.saturating_add(size).saturating_add(size & 1);
    }
    let (tag, channels, rate, bits) = fmt.ok_or("no fmt chunk")?;
    let (start, len, truncated_header) = data.ok_or("no data chunk")?;
    if tag != 1 {
        return Err(format!("format tag {tag} is not PCM"));
    }
    if bits != 16 {
        return Err(format!("{bits}-bit samples, only 16-bit PCM is supported"));
    }
    if channels == 0 || channels > 8 {
        return Err(format!("{channels} channels"));
    }
    if rate == 0 {
        return Err("sample rate 0".into());
    }
    let frame_bytes = 2 * channels as usize;
    let frames = len / frame_bytes;
    let mut samples = Vec::with_capacity(frames);
    for f in 0..frames {
        let at = start + f * frame_bytes;
        let sum: f32 = (0..channels as usize)
            .map(|c| i16::from_le_bytes([bytes[at + 2 * c], bytes[at + 2 * c + 1]]) as f32)
            .sum();
        samples.push(sum / channels as f32 / 32768.0);
    }
    let info = WavInfo {
        rate,
        channels,
        bits,
        frames,
        truncated_header,
    };
    Ok((Audio { rate, samples }, info))
}

/// Writes 16-bit PCM mono (samples are clipped to the i16 range).
pub fn write_wav(path: &Path, audio: &Audio) -> Result<(), String> {
    write_wav_channels(path, audio, 1)
}

/// Writes `audio` with every sample repeated on `channels` channels (baresip
/// wants its WAV source in the codec's own format, e.g. 48 kHz stereo for Opus).
pub fn write_wav_channels(path: &Path, audio: &Audio, channels: u16) -> Result<(), String> {
    let channels = channels.max(1);
    let data_len = audio.samples.len() * 2 * channels as usize;
    let mut out = Vec::with_capacity(44 + data_len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&audio.rate.to_le_bytes());
    out.extend_from_slice(&(audio.rate * 2 * channels as u32).to_le_bytes());
    out.extend_from_slice(&(2 * channels).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for s in &audio.samples {
        let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        for _ in 0..channels {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}

/// Band-limited resampling (windowed sinc, cut-off just under the lower
/// Nyquist frequency, so downsampling does not alias).
pub fn resample(audio: &Audio, rate: u32) -> Audio {
    if audio.rate == rate || audio.samples.is_empty() || audio.rate == 0 {
        return Audio::new(rate, audio.samples.clone());
    }
    let ratio = rate as f64 / audio.rate as f64;
    // Cut-off relative to the input rate (cycles/sample), 0.45 = 90% of Nyquist.
    let cutoff = 0.45 * ratio.min(1.0);
    let half_taps = (8.0 / cutoff).ceil() as i64; // ~16 zero crossings
    let n_out = (audio.samples.len() as f64 * ratio).round() as usize;
    let src = &audio.samples;
    let mut out = Vec::with_capacity(n_out);
    for j in 0..n_out {
        let t = j as f64 / ratio; // position in input samples
        let centre = t.floor() as i64;
        let mut acc = 0.0f64;
        for k in (centre - half_taps + 1)..=(centre + half_taps) {
            if k < 0 || k as usize >= src.len() {
                continue;
            }
            let x = t - k as f64;
            let sinc = if x.abs() < 1e-12 {
                2.0 * cutoff
            } else {
                (2.0 * std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
            };
            // Hann window over [-half_taps, half_taps].
            let w = 0.5 + 0.5 * (std::f64::consts::PI * x / half_taps as f64).cos();
            acc += src[k as usize] as f64 * sinc * w;
        }
        out.push(acc as f32);
    }
    Audio::new(rate, out)
}

/// RMS in dBFS of a block of samples ([`SILENCE_DBFS`] for digital silence).
pub fn rms_dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return SILENCE_DBFS;
    }
    let ms: f64 = samples
        .iter()
        .map(|&s| (s as f64) * (s as f64))
        .sum::<f64>()
        / samples.len() as f64;
    power_db(ms)
}

fn power_db(mean_square: f64) -> f64 {
    if mean_square <= 1e-15 {
        SILENCE_DBFS
    } else {
        10.0 * mean_square.log10()
    }
}

fn frame_len() -> usize {
    ANALYSIS_RATE as usize * FRAME_MS / 1000
}

/// dBFS of each whole 20 ms frame of 8 kHz samples.
pub fn frame_levels(samples_8k: &[f32]) -> Vec<f64> {
    samples_8k.chunks_exact(frame_len()).map(rms_dbfs).collect()
}

/// The speech part of a signal, in samples at 8 kHz: from the first to the end
/// of the last 20 ms frame that is within 40 dB of the loudest frame and above
/// -60 dBFS. `None` when there is no such frame (silence).
pub fn speech_region(audio_8k: &Audio) -> Option<(usize, usize)> {
    let levels = frame_levels(&audio_8k.samples);
    let peak = levels.iter().cloned().fold(SILENCE_DBFS, f64::max);
    let threshold = (peak - ACTIVE_BELOW_PEAK_DB).max(ACTIVE_FLOOR_DBFS);
    let first = levels.iter().position(|&l| l >= threshold)?;
    let last = levels.iter().rposition(|&l| l >= threshold)?;
    Some((first * frame_len(), (last + 1) * frame_len()))
}

/// RMS level (dBFS) of the speech part of `audio`; [`SILENCE_DBFS`] if silent.
pub fn speech_rms_dbfs(audio: &Audio) -> f64 {
    let a = audio.to_8k();
    match speech_region(&a) {
        Some((s, e)) => rms_dbfs(&a.samples[s..e]),
        None => SILENCE_DBFS,
    }
}

/// Speech levels of two signals; `Ok(received - sent)` in dB when they differ
/// by at most `tol_db`, otherwise an error that shows both levels.
pub fn rms_within_db(sent: &Audio, received: &Audio, tol_db: f64) -> Result<f64, String> {
    let s = speech_rms_dbfs(sent);
    let r = speech_rms_dbfs(received);
    let diff = r - s;
    if diff.abs() <= tol_db {
        Ok(diff)
    } else {
        Err(format!(
            "speech RMS: sent {s:.2} dBFS, received {r:.2} dBFS, difference {diff:+.2} dB \
             exceeds {tol_db} dB"
        ))
    }
}

/// Result of a cross-correlation search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delay {
    /// Offset of `received` (or haystack) relative to `sent` (or needle), ms.
    pub ms: f64,
    /// Normalised correlation at that offset (1.0 = identical up to a gain).
    pub corr: f64,
}

/// How far `received` lags `sent`: the offset in 0..=`max_ms` with the highest
/// normalised cross-correlation (at 8 kHz, 0.125 ms steps). Only offsets at
/// which at least half of the sent signal's energy overlaps the received
/// signal count. `None` if either signal is silent or no offset qualifies.
pub fn cross_correlation_delay(sent: &Audio, received: &Audio, max_ms: f64) -> Option<Delay> {
    let a = sent.to_8k().samples;
    let b = received.to_8k().samples;
    let max_lag = (max_ms * ANALYSIS_RATE as f64 / 1000.0).round() as i64;
    best_lag(&a, &b, 0, max_lag)
}

/// A linear chirp at 8 kHz from `f0` to `f1` Hz over `ms`: a test signal
/// nothing else in a call looks like, and that no shift matches but the
/// right one.
pub fn chirp(ms: u32, f0: f64, f1: f64, amp: f32) -> Audio {
    let n = 8 * ms as usize;
    let t_total = ms as f64 / 1000.0;
    let samples = (0..n)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let phase = 2.0 * std::f64::consts::PI * (f0 * t + (f1 - f0) * t * t / (2.0 * t_total));
            amp * phase.sin() as f32
        })
        .collect();
    Audio::new(8000, samples)
}

/// A steady `hz` tone at 8 kHz, amplitude 0.25, `ms` long.
pub fn tone(ms: u32, hz: f32) -> Audio {
    let n = (8000 * ms / 1000) as usize;
    Audio::new(
        8000,
        (0..n)
            .map(|i| (i as f32 * hz * std::f32::consts::TAU / 8000.0).sin() * 0.25)
            .collect(),
    )
}

/// Where `needle` occurs in `haystack`: `(offset_ms, corr)` of the best
/// normalised cross-correlation over every offset at which at least half of
/// the needle's energy lies inside the haystack. The offset is negative when
/// the needle started before the recording did (a phone that missed the
/// first packets). `None` when either is silent or nothing overlaps enough.
pub fn find_segment(haystack: &Audio, needle: &Audio) -> Option<(f64, f64)> {
    let n = needle.to_8k().samples;
    let h = haystack.to_8k().samples;
    if h.is_empty() || n.is_empty() {
        return None;
    }
    best_lag(&n, &h, -(n.len() as i64 - 1), h.len() as i64 - 1).map(|d| (d.ms, d.corr))
}

/// How faithfully `needle` plays inside `haystack` from `at_ms` on, piece by
/// piece: the needle is cut into `piece_ms` pieces and each is looked for
/// within `slack_ms` of where the previous one was found (the first one
/// around `at_ms`). Returns the lowest normalised correlation of any piece
/// that carries energy. A whole-signal correlation punishes a single 20 ms
/// frame inserted by a phone's jitter buffer as much as a distorted reply
/// (a chirp decorrelates after a one-frame shift); this measure does not,
/// while a distorted, clipped or missing piece still scores low. Slips are
/// bounded by the callers' own gap and length checks.
pub fn worst_piece_corr(
    haystack: &Audio,
    needle: &Audio,
    at_ms: f64,
    piece_ms: f64,
    slack_ms: f64,
) -> f64 {
    let n = needle.to_8k().samples;
    let h = haystack.to_8k().samples;
    let per_ms = ANALYSIS_RATE as f64 / 1000.0;
    let piece = (piece_ms * per_ms).round() as usize;
    let slack = (slack_ms * per_ms).round() as i64;
    let mut lag = (at_ms * per_ms).round() as i64;
    let peak = n.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let mut worst = 1.0f64;
    let mut start = 0usize;
    while start + piece <= n.len() {
        let p = &n[start..start + piece];
        if p.iter().fold(0.0f32, |m, &v| m.max(v.abs())) < 0.1 * peak {
            start += piece;
            continue;
        }
        // The haystack window in which this piece may lie.
        let lo = start as i64 + lag - slack;
        let hi = start as i64 + lag + slack + piece as i64;
        let (lo_c, hi_c) = (lo.max(0) as usize, (hi.max(0) as usize).min(h.len()));
        let found = if hi_c > lo_c {
            best_lag(p, &h[lo_c..hi_c], 0, (hi_c - lo_c) as i64 - 1)
        } else {
            None
        };
        match found {
            Some(d) => {
                let abs = lo_c as i64 + (d.ms * per_ms).round() as i64;
                lag = abs - start as i64;
                worst = worst.min(d.corr);
            }
            None => return 0.0,
        }
        start += piece;
    }
    worst
}

/// How late a paced sender's worst frame left against its own schedule,
/// in ms: `sent_s` are the send times (seconds) of consecutive frames of
/// `frame_ms` each. The schedule is anchored on the sender's most punctual
/// frame, so a constant start-up delay counts as nothing. A receiver that
/// cushions `c` ms cannot hide lateness beyond `c`: that much of a gap on
/// the phone is the sender's (a test's fake stalled on a loaded machine),
/// not the server's.
pub fn pacing_lateness_ms(sent_s: &[f64], frame_ms: f64) -> f64 {
    let offsets: Vec<f64> = sent_s
        .iter()
        .enumerate()
        .map(|(k, t)| t * 1000.0 - k as f64 * frame_ms)
        .collect();
    let earliest = offsets.iter().copied().fold(f64::INFINITY, f64::min);
    offsets.iter().map(|o| o - earliest).fold(0.0, f64::max)
}

/// Best lag L in [min_lag, max_lag] maximising
/// sum a[i] b[i+L] / sqrt(sum a[i]^2 * sum b[i+L]^2) over the overlap.
fn best_lag(a: &[f32], b: &[f32], min_lag: i64, max_lag: i64) -> Option<Delay> {
    if a.is_empty() || b.is_empty() || max_lag < min_lag {
        return None;
    }
    let prefix = |x: &[f32]| {
        let mut p = Vec::with_capacity(x.len() + 1);
        p.push(0.0f64);
        let mut acc = 0.0f64;
        for &v in x {
            acc += v as f64 * v as f64;
            p.push(acc);
        }
        p
    };
    let pa = prefix(a);
    let pb = prefix(b);
    let total_a = pa[a.len()];
    if total_a <= 1e-9 || pb[b.len()] <= 1e-9 {
        return None;
    }
    let xc = cross_correlate(a, b);
    let (la, lb) = (a.len() as i64, b.len() as i64);
    let mut best: Option<Delay> = None;
    for lag in min_lag.max(-(la - 1))..=max_lag.min(lb - 1) {
        // overlap: i in [i0, i1) with 0 <= i < la and 0 <= i + lag < lb
        let i0 = 0.max(-lag);
        let i1 = la.min(lb - lag);
        if i1 <= i0 {
            continue;
        }
        let ea = pa[i1 as usize] - pa[i0 as usize];
        if ea < 0.5 * total_a {
            continue;
        }
        let eb = pb[(i1 + lag) as usize] - pb[(i0 + lag) as usize];
        if eb <= 1e-12 {
            continue;
        }
        let num = xc.at(lag);
        let corr = num / (ea * eb).sqrt();
        if best.map(|d| corr > d.corr).unwrap_or(true) {
            best = Some(Delay {
                ms: lag as f64 * 1000.0 / ANALYSIS_RATE as f64,
                corr,
            });
        }
    }
    best
}

/// Raw cross-correlation c[L] = sum_i a[i] b[i+L] for every lag, via FFT.
struct XCorr {
    values: Vec<f64>,
}

impl XCorr {
    fn at(&self, lag: i64) -> f64 {
        let n = self.values.len() as i64;
        self.values[lag.rem_euclid(n) as usize]
    }
}

fn cross_correlate(a: &[f32], b: &[f32]) -> XCorr {
    let n = (a.len() + b.len()).next_power_of_two();
    let mut fa: Vec<(f64, f64)> = a.iter().map(|&v| (v as f64, 0.0)).collect();
    fa.resize(n, (0.0, 0.0));
    let mut fb: Vec<(f64, f64)> = b.iter().map(|&v| (v as f64, 0.0)).collect();
    fb.resize(n, (0.0, 0.0));
    fft(&mut fa, false);
    fft(&mut fb, false);
    // conj(A) * B
    let mut prod: Vec<(f64, f64)> = fa
        .iter()
        .zip(&fb)
        .map(|(&(ar, ai), &(br, bi))| (ar * br + ai * bi, ar * bi - ai * br))
        .collect();
    fft(&mut prod, true);
    XCorr {
        values: prod.iter().map(|&(re, _)| re / n as f64).collect(),
    }
}

/// In-place iterative radix-2 FFT (`len` must be a power of two); the inverse
/// is unscaled.
fn fft(x: &mut [(f64, f64)], inverse: bool) {
    let n = x.len();
    if n <= 1 {
        return;
    }
    let mut j = 0usize;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            x.swap(i, j);
        }
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut len = 2;
    while len <= n {
        let ang = sign * 2.0 * std::f64::consts::PI / len as f64;
        let (wr, wi) = (ang.cos(), ang.sin());
        for start in (0..n).step_by(len) {
            let (mut cr, mut ci) = (1.0f64, 0.0f64);
            for k in 0..len / 2 {
                let (ur, ui) = x[start + k];
                let (vr0, vi0) = x[start + k + len / 2];
                let (vr, vi) = (vr0 * cr - vi0 * ci, vr0 * ci + vi0 * cr);
                x[start + k] = (ur + vr, ui + vi);
                x[start + k + len / 2] = (ur - vr, ui - vi);
                let nr = cr * wr - ci * wi;
                ci = cr * wi + ci * wr;
                cr = nr;
            }
        }
        len <<= 1;
    }
}

/// Longest dropout (ms) in `received` while `sent` is speaking, after shifting
/// `sent` by `delay_ms`: the longest run of consecutive 20 ms frames of the
/// sent speech region in which the sent frame is speech (no more than 20 dB
/// below the sent speech RMS) but the received frame is near silence (more
/// than 30 dB below the sent speech RMS). Received audio that ends early counts
/// as silence. Natural pauses (sent frame quiet too) end a run.
pub fn longest_gap_ms(sent: &Audio, received: &Audio, delay_ms: f64) -> f64 {
    let s = sent.to_8k();
    let r = received.to_8k();
    let Some((start, end)) = speech_region(&s) else {
        return 0.0;
    };
    let speech_db = rms_dbfs(&s.samples[start..end]);
    let speech_floor = speech_db - 20.0;
    let silence = speech_db - 30.0;
    let fl = frame_len();
    let shift = (delay_ms * ANALYSIS_RATE as f64 / 1000.0).round() as i64;
    let mut run = 0usize;
    let mut longest = 0usize;
    let mut f = start;
    while f + fl <= end {
        let sent_db = rms_dbfs(&s.samples[f..f + fl]);
        let r0 = f as i64 + shift;
        let recv_db = if r0 < 0 {
            SILENCE_DBFS
        } else {
            let r0 = r0 as usize;
            let r1 = (r0 + fl).min(r.samples.len());
            if r0 >= r1 {
                SILENCE_DBFS
            } else {
                // a partial last frame: energy over the full frame length
                let e: f64 = r.samples[r0..r1].iter().map(|&v| v as f64 * v as f64).sum();
                power_db(e / fl as f64)
            }
        };
        if sent_db >= speech_floor && recv_db < silence {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
        f += fl;
    }
    (longest * FRAME_MS) as f64
}

/// A one-line summary of a signal for assertion messages.
pub fn describe(audio: &Audio) -> String {
    let a = audio.to_8k();
    let region = speech_region(&a)
        .map(|(s, e)| format!("speech {:.0}-{:.0} ms", s as f64 / 8.0, e as f64 / 8.0))
        .unwrap_or_else(|| "no speech".into());
    format!(
        "{:.0} ms at {} Hz, {region}, speech RMS {:.2} dBFS",
        audio.duration_ms(),
        audio.rate,
        speech_rms_dbfs(audio)
    )
}

/// Everything an echo test asserts on, measured once.
#[derive(Clone, Debug)]
pub struct EchoReport {
    pub sent_rms_dbfs: f64,
    pub received_rms_dbfs: f64,
    pub delay: Option<Delay>,
    pub longest_gap_ms: f64,
    pub received_ms: f64,
}

impl EchoReport {
    pub fn level_diff_db(&self) -> f64 {
        self.received_rms_dbfs - self.sent_rms_dbfs
    }
}

impl std::fmt::Display for EchoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {:.2} dBFS, received {:.2} dBFS ({:+.2} dB), ",
            self.sent_rms_dbfs,
            self.received_rms_dbfs,
            self.level_diff_db()
        )?;
        match self.delay {
            Some(d) => write!(f, "delay {:.1} ms (corr {:.3}), ", d.ms, d.corr)?,
            None => write!(f, "no correlation, ")?,
        }
        write!(
            f,
            "longest gap {:.0} ms, received {:.0} ms",
            self.longest_gap_ms, self.received_ms
        )
    }
}

/// Measures an echo: levels, delay (0..=`max_delay_ms`) and the longest gap
/// after aligning by that delay (the whole sent speech counts as missing when
/// no delay is found).
pub fn echo_report(sent: &Audio, received: &Audio, max_delay_ms: f64) -> EchoReport {
    let delay = cross_correlation_delay(sent, received, max_delay_ms);
    let gap = match delay {
        Some(d) => longest_gap_ms(sent, received, d.ms),
        None => {
            let s = sent.to_8k();
            speech_region(&s)
                .map(|(a, b)| (b - a) as f64 * 1000.0 / ANALYSIS_RATE as f64)
                .unwrap_or(0.0)
        }
    };
    EchoReport {
        sent_rms_dbfs: speech_rms_dbfs(sent),
        received_rms_dbfs: speech_rms_dbfs(received),
        delay,
        longest_gap_ms: gap,
        received_ms: received.duration_ms(),
    }
}

/// For each 20 ms frame (8 kHz): whether a steady tone at `hz` dominates it
/// (its Goertzel magnitude carries > 80 % of the frame's RMS, and the frame
/// is not silent).
pub fn tone_frames(audio: &Audio, hz: f32) -> Vec<bool> {
    let h = audio.to_8k().samples;
    h.chunks_exact(160)
        .map(|f| {
            let (mut re, mut im, mut e) = (0f32, 0f32, 0f32);
            for (i, &x) in f.iter().enumerate() {
                let ph = i as f32 * hz * std::f32::consts::TAU / 8000.0;
                re += x * ph.cos();
                im += x * ph.sin();
                e += x * x;
            }
            let mag = (re * re + im * im).sqrt() * 2.0 / 160.0;
            let rms = (e / 160.0).sqrt();
            rms > 0.02 && mag / (rms * std::f32::consts::SQRT_2) > 0.8
        })
        .collect()
}
