//! Sample-rate conversion, the one place the crate does it. Three entry
//! points over two engines:
//!
//! - [`Resampler`]: fixed blocks for the call's media path (`Session`
//!   decodes and resamples exactly once per direction). `rubato`'s FFT
//!   resampler: every block of `block_ms` in gives exactly one block of
//!   `block_ms` out, so the playout clock never drifts by a sample, for a
//!   fixed delay ([`Resampler::delay_samples`]) of 5 ms from running the FFT
//!   on 10 ms sub-blocks: 40 samples at 8 kHz, 80 at 16 kHz, 120 at 24 kHz,
//!   240 at 48 kHz.
//! - [`Polyphase`] and its `i16` wrapper [`StreamResampler`]: streaming, any
//!   rational pair of rates (22050 Hz Piper voices too), any piece length,
//!   2 ms of delay at 8 kHz. The caller DSP runs its RNNoise stage
//!   through it (the denoiser's latency is part of the turn timing), and
//!   agents use it for audio that arrives in pieces of any size (TTS
//!   streamed over HTTP).
//! - [`resample_once`]: a whole clip in memory (prompts, ambient sound),
//!   delay trimmed, exactly the clip's duration out: `rubato`'s FFT
//!   resampler when both rates are whole kHz, [`StreamResampler`] otherwise
//!   (22050 Hz voices; see [`resample_once`] for why not rubato there).

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

use super::codec::CodecError;

/// Length of one FFT sub-block. rubato's FFT resampler delays by half a
/// sub-block and its filter is one sub-block long, so this trades delay for
/// passband. Measured with the Blackman window below: at 10 ms the
/// passband is flat (within 0.01 dB) to 3.4 kHz into 8 kHz and to 7 kHz
/// into 16 kHz (-0.17 dB at 7.5 kHz), and tones 200 Hz above the new
/// Nyquist are down > 100 dB, for 5 ms of delay. At 5 ms a 3.4 kHz tone
/// lost 6.5 dB; 20 ms doubles the delay for nothing audible. Blocks
/// shorter than this run as a single sub-block.
const SUB_BLOCK_MS: u32 = 10;
/// Narrower main lobe than rubato's default (BlackmanHarris2), so the
/// short filter still has a sharp edge; its -58 dB side lobes are far below
/// what G.711 or G.722 resolve.
const WINDOW: rubato::WindowFunction = rubato::WindowFunction::Blackman;

/// Resamples mono 16-bit PCM from one rate to another in fixed blocks.
///
/// Identity (a copy, zero delay) when both rates are equal.
pub struct Resampler {
    from: u32,
    to: u32,
    block_in: usize,
    block_out: usize,
    engine: Engine,
}

enum Engine {
    Identity,
    Fft {
        fft: Box<Fft<f32>>,
        /// One input block as f32 (reused every call).
        input: Vec<f32>,
        /// One output block as f32 (reused every call).
        output: Vec<f32>,
    },
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("block_in", &self.block_in)
            .field("block_out", &self.block_out)
            .field("delay_samples", &self.delay_samples())
            .finish()
    }
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz taking blocks of `block_ms`.
    ///
    /// Both rates must give a whole number of samples per block (any
    /// multiple of 1 kHz does for 20 ms), and the pair must allow an FFT
    /// block that divides the block exactly, which holds for every pair of
    /// 8, 12, 16, 24, 32 and 48 kHz.
    pub fn new(from: u32, to: u32, block_ms: u32) -> Result<Self, CodecError> {
        let unsupported = CodecError::UnsupportedResample { from, to, block_ms };
        if from == 0 || to == 0 || block_ms == 0 {
            return Err(unsupported);
        }
        let (Some(block_in), Some(block_out)) = (
            samples_per_block(from, block_ms),
            samples_per_block(to, block_ms),
        ) else {
            return Err(unsupported);
        };
        if from == to {
            return Ok(Self {
                from,
                to,
                block_in,
                block_out,
                engine: Engine::Identity,
            });
        }
        // Prefer short sub-blocks (low delay); fall back to fewer, longer
        // ones until rubato's block size divides our block exactly, so that
        // every call yields exactly `block_out` samples.
        let wanted = (block_ms / SUB_BLOCK_MS).max(1) as usize;
        for sub_chunks in (1..=wanted).rev() {
            let fft = Fft::<f32>::new_custom(
                from as usize,
                to as usize,
                block_in,
                sub_chunks,
                1,
                WINDOW,
                FixedSync::Input,
            )?;
            if fft.input_frames_next() == block_in
                && fft.output_frames_next() == block_out
                && block_in.is_multiple_of(fft.fft_size_in())
            {
                return Ok(Self {
                    from,
                    to,
                    block_in,
                    block_out,
                    engine: Engine::Fft {
                        fft: Box::new(fft),
                        input: vec![0.0; block_in],
                        output: vec![0.0; block_out],
                    },
                });
            }
        }
        Err(unsupported)
    }

    /// Input rate in Hz.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate in Hz.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Samples in one input block.
    pub fn input_block(&self) -> usize {
        self.block_in
    }

    /// Samples in one output block.
    pub fn output_block(&self) -> usize {
        self.block_out
    }

    /// The resampler's delay, in output samples: output sample `n`
    /// corresponds to input time `n - delay_samples()`. Zero for identity.
    pub fn delay_samples(&self) -> usize {
        match &self.engine {
            Engine::Identity => 0,
            Engine::Fft { fft, .. } => fft.output_delay(),
        }
    }

    /// Resamples `input`, a whole number of input blocks, appending exactly
    /// `input.len() / input_block() * output_block()` samples to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) -> Result<(), CodecError> {
        if input.is_empty() || !input.len().is_multiple_of(self.block_in) {
            return Err(CodecError::FrameSize {
                expected: self.block_in,
                got: input.len(),
            });
        }
        let block_out = self.block_out;
        match &mut self.engine {
            Engine::Identity => out.extend_from_slice(input),
            Engine::Fft {
                fft,
                input: fin,
                output: fout,
            } => {
                out.reserve(input.len() / self.block_in * block_out);
                for block in input.chunks_exact(self.block_in) {
                    for (f, &s) in fin.iter_mut().zip(block) {
                        *f = f32::from(s);
                    }
                    let buf_in = InterleavedSlice::new(fin.as_slice(), 1, self.block_in)
                        .map_err(|e| CodecError::ResampleBuffer(e.to_string()))?;
                    let mut buf_out = InterleavedSlice::new_mut(fout.as_mut_slice(), 1, block_out)
                        .map_err(|e| CodecError::ResampleBuffer(e.to_string()))?;
                    let (_, produced) = fft.process_into_buffer(&buf_in, &mut buf_out, None)?;
                    if produced != block_out {
                        return Err(CodecError::FrameSize {
                            expected: block_out,
                            got: produced,
                        });
                    }
                    out.extend(fout.iter().map(|&v| to_i16(v)));
                }
            }
        }
        Ok(())
    }

    /// Forgets the signal history (e.g. after a long gap or a re-INVITE
    /// that changes the stream), so old audio does not bleed into new.
    pub fn reset(&mut self) {
        if let Engine::Fft { fft, .. } = &mut self.engine {
            fft.reset();
        }
    }
}

fn samples_per_block(rate: u32, block_ms: u32) -> Option<usize> {
    let n = u64::from(rate) * u64::from(block_ms);
    n.is_multiple_of(1000)
        .then(|| usize::try_from(n / 1000).ok())
        .flatten()
}

/// Round to nearest and saturate (rubato's own conversion truncates).
fn to_i16(v: f32) -> i16 {
    // `as` from f32 saturates and maps NaN to 0.
    v.round() as i16
}

// ---------------------------------------------------------------------------
// Whole clips

/// rubato's block length for whole clips (the clip is fed in pieces of this).
const CLIP_CHUNK: usize = 1024;

/// Resamples a whole clip (prompts, ambient sound) to exactly its duration
/// at the new rate (`pcm.len() * to / from` samples, rounded down), delay
/// trimmed off. Both rates whole kHz: rubato's FFT resampler. Otherwise
/// (22050 Hz espeak-ng and Piper voices, 44.1 kHz files): [`StreamResampler`],
/// whose delay is a whole number of output samples; rubato's resamplers
/// leave a fraction of a sample there (a 1 kHz tone at 22050 -> 8000 Hz
/// correlated 0.990 with the ideal one through rubato's FFT resampler and
/// 0.904 through its sinc resampler, > 0.999 through this one).
pub fn resample_once(pcm: &[i16], from: u32, to: u32) -> Result<Vec<i16>, CodecError> {
    if from == 0 || to == 0 {
        return Err(CodecError::UnsupportedRates { from, to });
    }
    if from == to || pcm.is_empty() {
        return Ok(pcm.to_vec());
    }
    let want =
        usize::try_from(pcm.len() as u64 * u64::from(to) / u64::from(from)).unwrap_or(usize::MAX);
    if !(from.is_multiple_of(1000) && to.is_multiple_of(1000)) {
        let mut r = StreamResampler::new(from, to);
        let mut out = Vec::with_capacity(want);
        r.process(pcm, &mut out);
        r.flush(&mut out);
        return Ok(out);
    }
    let input: Vec<f32> = pcm.iter().map(|&s| f32::from(s)).collect();
    let buf_in = InterleavedSlice::new(input.as_slice(), 1, input.len())
        .map_err(|e| CodecError::ResampleBuffer(e.to_string()))?;
    let mut fft = Fft::<f32>::new(from as usize, to as usize, CLIP_CHUNK, 1, FixedSync::Input)?;
    let out = fft.process_all(&buf_in, input.len(), None)?.take_data();
    let mut pcm: Vec<i16> = out.into_iter().take(want).map(to_i16).collect();
    pcm.resize(want, 0);
    Ok(pcm)
}

// ---------------------------------------------------------------------------
// Streaming, any rational ratio, low delay

/// Zero crossings of the filter's sinc on each side of its centre. 16 keeps
/// the delay at 2 ms per direction at 8 kHz (1 ms at 16 kHz) with a
/// transition band of about 0.23 x the narrow Nyquist frequency, so
/// telephone speech up to 3.5 kHz passes flat and images sit 60 dB down.
const ZERO_CROSSINGS: usize = 16;
/// Kaiser window beta for about 60 dB stop-band attenuation.
const KAISER_BETA: f64 = 5.65;

/// Streaming rational resampler (up by `up`, down by `down`) with a
/// Kaiser-windowed sinc, evaluated polyphase: only the output samples are
/// computed, and only the non-zero taps. Linear phase, with a delay of a
/// whole number of output samples ([`Polyphase::delay_out`]). Takes input
/// in pieces of any length; each piece yields the outputs it completes.
pub struct Polyphase {
    up: usize,
    down: usize,
    /// `phases[p]` = h[p], h[p + up], h[p + 2 up], ... reversed.
    phases: Vec<Vec<f32>>,
    /// Input samples kept from previous pieces.
    hist_len: usize,
    /// `hist_len` history samples followed by the current piece.
    buf: Vec<f32>,
    /// Filter centre, in samples at the upsampled rate.
    centre: usize,
    /// Upsampled-rate index of the next output, counted from the first
    /// sample of the next piece (0 after any piece of whole blocks).
    next: usize,
}

impl std::fmt::Debug for Polyphase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Polyphase")
            .field("up", &self.up)
            .field("down", &self.down)
            .field("delay_out", &self.delay_out())
            .finish()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Zeroth-order modified Bessel function (power series), for the Kaiser window.
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..50 {
        term *= q / f64::from(k * k);
        sum += term;
        if term < sum * 1e-12 {
            break;
        }
    }
    sum
}

impl Polyphase {
    /// A resampler from `from` Hz to `to` Hz (0 counts as 1).
    pub fn new(from: u32, to: u32) -> Self {
        let (from, to) = (from.max(1), to.max(1));
        let g = gcd(from, to).max(1);
        let up = (to / g).max(1) as usize;
        let down = (from / g).max(1) as usize;
        // The narrower of the two Nyquist bands, in up-rate samples per cycle.
        let r = up.max(down);
        // A centre on the output grid keeps the delay a whole output sample
        // (a no-op for the DSP's ratios, which all have `down` dividing it).
        let centre = (ZERO_CROSSINGS * r).div_ceil(down) * down;
        let n = 2 * centre + 1;
        let fc = 0.5 / r as f64; // cycles per up-rate sample
        let i0b = bessel_i0(KAISER_BETA);
        let mut h: Vec<f64> = (0..n)
            .map(|i| {
                let t = i as f64 - centre as f64;
                let x = 2.0 * fc * t;
                let sinc = if t == 0.0 {
                    1.0
                } else {
                    (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
                };
                let w = t / centre as f64;
                let win = bessel_i0(KAISER_BETA * (1.0 - w * w).max(0.0).sqrt()) / i0b;
                sinc * win
            })
            .collect();
        // Unity gain at DC at the output: each of the `up` phases sums to 1.
        let sum: f64 = h.iter().sum();
        for v in &mut h {
            *v *= up as f64 / sum;
        }
        // Stored oldest-input-first so the inner loop runs forward over both.
        let phases: Vec<Vec<f32>> = (0..up)
            .map(|p| {
                let mut taps: Vec<f32> = h.iter().skip(p).step_by(up).map(|&v| v as f32).collect();
                taps.reverse();
                taps
            })
            .collect();
        let hist_len = (n - 1).div_ceil(up);
        Self {
            up,
            down,
            phases,
            hist_len,
            buf: vec![0.0; hist_len],
            centre,
            next: 0,
        }
    }

    /// Output samples the next [`Polyphase::process`] of `n_in` input
    /// samples yields (`n_in * to / from` when the blocks divide evenly).
    pub fn out_len(&self, n_in: usize) -> usize {
        (n_in * self.up)
            .checked_sub(self.next)
            .map_or(0, |span| span.div_ceil(self.down))
    }

    /// Delay in output samples.
    pub fn delay_out(&self) -> usize {
        self.centre / self.down
    }

    /// Resamples one piece; `output.len()` must be `out_len(input.len())`
    /// (extra output samples are left untouched, missing ones skipped).
    pub fn process(&mut self, input: &[f32], output: &mut [f32]) {
        let n_out = self.out_len(input.len());
        self.buf.truncate(self.hist_len);
        self.buf.extend_from_slice(input);
        let mut t = self.next;
        for y in output.iter_mut().take(n_out) {
            let j = t / self.up;
            let taps = &self.phases[t - j * self.up];
            // taps[i] pairs with x[j - (len - 1 - i)], i.e. buf[end - len + i].
            let end = (self.hist_len + j + 1).min(self.buf.len());
            let n = taps.len().min(end);
            *y = dot(&taps[taps.len() - n..], &self.buf[end - n..end]);
            t += self.down;
        }
        // Where the first output not yet made falls, from the next piece on.
        self.next = (self.next + n_out * self.down).saturating_sub(input.len() * self.up);
        let keep_from = self.buf.len() - self.hist_len;
        self.buf.copy_within(keep_from.., 0);
        self.buf.truncate(self.hist_len);
    }

    /// Resamples one piece, appending what it yields to `out`.
    pub fn process_into(&mut self, input: &[f32], out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.out_len(input.len()), 0.0);
        self.process(input, &mut out[start..]);
    }

    /// Forgets the signal history.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.buf.resize(self.hist_len, 0.0);
        self.next = 0;
    }
}

/// Dot product in eight independent lanes, which the compiler vectorises
/// (a plain `zip().sum()` is a serial chain of float adds).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// 16-bit audio arriving in pieces of any length (a TTS answer streamed
/// over HTTP), resampled with [`Polyphase`] and its delay compensated: the
/// first sample out is the first sample in, and after
/// [`StreamResampler::flush`] the stream has come out at exactly its
/// duration at the new rate. Identity when both rates are equal.
pub struct StreamResampler {
    from: u32,
    to: u32,
    engine: Option<Polyphase>,
    /// Leading output samples still to drop (the filter's delay).
    skip: usize,
    consumed: u64,
    produced: u64,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("consumed", &self.consumed)
            .field("produced", &self.produced)
            .finish()
    }
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz (0 counts as 1).
    pub fn new(from: u32, to: u32) -> Self {
        let (from, to) = (from.max(1), to.max(1));
        let engine = (from != to).then(|| Polyphase::new(from, to));
        Self {
            from,
            to,
            skip: engine.as_ref().map_or(0, Polyphase::delay_out),
            engine,
            consumed: 0,
            produced: 0,
            input: Vec::new(),
            output: Vec::new(),
        }
    }

    /// Resamples the next piece, appending what it completes to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.consumed += input.len() as u64;
        self.run(input, out, u64::MAX);
    }

    /// Ends the stream: appends what the filter still holds, so that in
    /// all exactly `samples in * to / from` (rounded down) came out.
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        let target = self.consumed * u64::from(self.to) / u64::from(self.from);
        while self.produced < target {
            let missing = usize::try_from(target - self.produced).unwrap_or(usize::MAX / 2);
            let zeros = (missing.saturating_add(self.skip) as u64 * u64::from(self.from))
                .div_ceil(u64::from(self.to))
                + 1;
            let zeros = vec![0; usize::try_from(zeros).unwrap_or(usize::MAX / 2)];
            self.run(&zeros, out, target);
        }
    }

    fn run(&mut self, input: &[i16], out: &mut Vec<i16>, limit: u64) {
        let Some(engine) = self.engine.as_mut() else {
            let n = input
                .len()
                .min(usize::try_from(limit - self.produced).unwrap_or(usize::MAX));
            out.extend_from_slice(&input[..n]);
            self.produced += n as u64;
            return;
        };
        self.input.clear();
        self.input.extend(input.iter().map(|&s| f32::from(s)));
        self.output.clear();
        engine.process_into(&self.input, &mut self.output);
        let drop = self.skip.min(self.output.len());
        self.skip -= drop;
        let room = usize::try_from(limit - self.produced).unwrap_or(usize::MAX);
        let take = (self.output.len() - drop).min(room);
        out.extend(self.output[drop..drop + take].iter().map(|&v| to_i16(v)));
        self.produced += take as u64;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::codec::test_signal::{best_lag, sine, snr_db, speech_like};
    use std::f64::consts::TAU;

    fn run(r: &mut Resampler, input: &[i16]) -> Vec<i16> {
        let mut out = Vec::new();
        for block in input.chunks_exact(r.input_block()) {
            let before = out.len();
            r.process(block, &mut out).unwrap();
            assert_eq!(out.len() - before, r.output_block(), "exact per block");
        }
        out
    }

    #[test]
    fn round_trip_8k_48k_8k_keeps_a_503hz_sine() {
        let input = sine(503.0, 8000, 8000, 12000.0);
        let mut up = Resampler::new(8000, 48000, 20).unwrap();
        let mut down = Resampler::new(48000, 8000, 20).unwrap();
        let wide = run(&mut up, &input);
        assert_eq!(wide.len(), input.len() * 6);
        let back = run(&mut down, &wide);
        assert_eq!(back.len(), input.len());
        // Total delay in 8 kHz samples: up's delay is in 48 kHz samples.
        let lag = up.delay_samples() / 6 + down.delay_samples();
        let snr = snr_db(&input, &back, lag, 800);
        eprintln!(
            "8k->48k->8k 503 Hz: SNR {snr:.1} dB, delays up {} (48k) down {} (8k)",
            up.delay_samples(),
            down.delay_samples()
        );
        assert!(snr >= 30.0, "SNR {snr:.1} dB");

        // Speech-like audio (harmonics to 3.4 kHz) survives as well.
        let input = speech_like(8000, 16000, 3400.0);
        let back = run(&mut down, &run(&mut up, &input));
        let snr = snr_db(&input, &back, lag, 800);
        eprintln!("8k->48k->8k speech-like: SNR {snr:.1} dB");
        assert!(snr >= 30.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn every_agent_rate_pair_gives_exact_blocks_and_clean_tones() {
        let rates = [8000u32, 12000, 16000, 24000, 32000, 48000];
        for &from in &rates {
            for &to in &rates {
                let mut r = Resampler::new(from, to, 20).unwrap();
                assert_eq!(r.input_block(), from as usize / 50);
                assert_eq!(r.output_block(), to as usize / 50);
                // A tone inside both passbands comes out as the same tone.
                let f = 1013.0; // off the 200 Hz FFT bin grid
                let input = sine(f, from, from as usize, 10000.0);
                let out = run(&mut r, &input);
                assert_eq!(out.len(), to as usize);
                let want = sine(f, to, to as usize, 10000.0);
                let lag = r.delay_samples();
                let snr = snr_db(&want, &out, lag, to as usize / 10);
                eprintln!(
                    "{from}->{to}: delay {} samples ({:.2} ms), 1013 Hz SNR {snr:.1} dB",
                    r.delay_samples(),
                    r.delay_samples() as f64 * 1000.0 / f64::from(to)
                );
                assert!(snr >= 30.0, "{from}->{to}: SNR {snr:.1} dB");
            }
        }
    }

    #[test]
    fn reported_delay_is_the_signal_delay() {
        for (from, to) in [
            (8000, 48000),
            (48000, 8000),
            (8000, 16000),
            (24000, 8000),
            (16000, 24000),
        ] {
            let mut r = Resampler::new(from, to, 20).unwrap();
            // Noise band-limited to well under both Nyquists: a 1-2 kHz
            // pair of chirps is broadband enough to have one best lag.
            let n = from as usize;
            let input: Vec<i16> = (0..n)
                .map(|i| {
                    let t = i as f64 / f64::from(from);
                    (6000.0
                        * ((TAU * (300.0 * t + 900.0 * t * t)).sin()
                            + (TAU * 1300.0 * t * (1.0 + t)).sin())) as i16
                })
                .collect();
            let out = run(&mut r, &input);
            let want: Vec<i16> = (0..to as usize)
                .map(|i| {
                    let t = i as f64 / f64::from(to);
                    (6000.0
                        * ((TAU * (300.0 * t + 900.0 * t * t)).sin()
                            + (TAU * 1300.0 * t * (1.0 + t)).sin())) as i16
                })
                .collect();
            assert_eq!(
                best_lag(&want, &out, to as usize / 50),
                r.delay_samples(),
                "{from}->{to}"
            );
        }
    }

    #[test]
    fn passband_is_flat_to_the_top_of_telephone_and_wideband_speech() {
        let level = |from: u32, to: u32, f: f64| {
            let mut r = Resampler::new(from, to, 20).unwrap();
            let out = run(&mut r, &sine(f, from, from as usize, 10000.0));
            let rms =
                |s: &[i16]| s.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / s.len() as f64;
            10.0 * (rms(&out[to as usize / 10..]) / (10000.0f64.powi(2) / 2.0)).log10()
        };
        for (from, to, f) in [
            (48000, 8000, 3413.0),
            (8000, 48000, 3413.0),
            (16000, 8000, 3413.0),
            (8000, 16000, 3413.0),
            (48000, 16000, 7013.0),
            (16000, 24000, 7013.0),
            (24000, 16000, 7013.0),
            (24000, 8000, 313.0),
        ] {
            let db = level(from, to, f);
            assert!(db.abs() < 0.1, "{from}->{to} {f} Hz: {db:.2} dB");
        }
    }

    #[test]
    fn downsampling_rejects_tones_above_the_new_nyquist() {
        // 6.13 kHz at 48 kHz must not fold back into 8 kHz telephone audio.
        let mut r = Resampler::new(48000, 8000, 20).unwrap();
        let input = sine(6130.0, 48000, 48000, 16000.0);
        let out = run(&mut r, &input);
        let energy =
            |s: &[i16]| s.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / s.len() as f64;
        let rejection = 10.0 * (energy(&input) / energy(&out[800..]).max(1e-9)).log10();
        eprintln!("48k->8k: 6130 Hz tone attenuated by {rejection:.1} dB");
        assert!(rejection >= 40.0, "only {rejection:.1} dB");
    }

    #[test]
    fn equal_rates_pass_through_untouched() {
        let mut r = Resampler::new(16000, 16000, 20).unwrap();
        assert_eq!(r.delay_samples(), 0);
        let input: Vec<i16> = (0..640).map(|i| (i * 37 % 2000) as i16).collect();
        let mut out = vec![7];
        r.process(&input, &mut out).unwrap();
        assert_eq!(out[0], 7, "appends, never clears");
        assert_eq!(&out[1..], &input[..]);
    }

    #[test]
    fn several_blocks_in_one_call_match_block_by_block() {
        let input = sine(700.0, 8000, 1600, 9000.0);
        let mut a = Resampler::new(8000, 24000, 20).unwrap();
        let mut b = Resampler::new(8000, 24000, 20).unwrap();
        let mut whole = Vec::new();
        a.process(&input, &mut whole).unwrap();
        assert_eq!(whole, run(&mut b, &input));
    }

    #[test]
    fn wrong_block_length_is_an_error() {
        let mut r = Resampler::new(8000, 48000, 20).unwrap();
        let mut out = Vec::new();
        for len in [0usize, 1, 159, 161, 319] {
            let err = r.process(&vec![0; len], &mut out).unwrap_err();
            assert!(matches!(err, CodecError::FrameSize { expected: 160, got } if got == len));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn impossible_setups_are_errors() {
        for (from, to, ms) in [
            (0, 8000, 20),
            (8000, 0, 20),
            (8000, 16000, 0),
            (44100, 8000, 1),
        ] {
            assert!(
                matches!(
                    Resampler::new(from, to, ms),
                    Err(CodecError::UnsupportedResample { .. })
                ),
                "{from}->{to} @{ms} ms"
            );
        }
        // 44.1 kHz is not a telephony rate but works in 20 ms blocks.
        assert!(Resampler::new(44100, 48000, 20).is_ok());
    }

    #[test]
    fn output_rounds_and_saturates_instead_of_wrapping() {
        assert_eq!(to_i16(1.5), 2);
        assert_eq!(to_i16(-1.4), -1);
        assert_eq!(to_i16(40000.0), i16::MAX);
        assert_eq!(to_i16(-40000.0), i16::MIN);
        assert_eq!(to_i16(f32::NAN), 0);
        // A full-scale square wave overshoots (Gibbs) and must clip.
        let mut r = Resampler::new(8000, 16000, 20).unwrap();
        let input: Vec<i16> = (0..1600)
            .map(|i| {
                if (i / 20) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        let out = run(&mut r, &input);
        assert!(out.contains(&i16::MAX) && out.contains(&i16::MIN));
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    /// Correlation of `got` with a unit sine of `freq` at `rate` over the
    /// same samples (1.0: the same tone, in phase).
    fn tone_correlation(got: &[i16], freq: f64, rate: u32, first: usize) -> f64 {
        let ideal: Vec<f64> = (first..first + got.len())
            .map(|i| (TAU * freq * i as f64 / f64::from(rate)).sin())
            .collect();
        let dot: f64 = got.iter().zip(&ideal).map(|(&a, b)| f64::from(a) * b).sum();
        let na = got
            .iter()
            .map(|&a| f64::from(a).powi(2))
            .sum::<f64>()
            .sqrt();
        let nb = ideal.iter().map(|b| b * b).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    /// (Moved from `agent::pipeline`, where it tested the streaming
    /// windowed-sinc resampler this one replaced; same assertions.)
    #[test]
    fn stream_resampler_keeps_length_and_tone() {
        for (from, to) in [(24000, 16000), (22050, 16000), (22050, 8000), (8000, 16000)] {
            let n = from as usize; // 1 s
            let tone = sine(440.0, from, n, 8000.0);
            let mut r = StreamResampler::new(from, to);
            let mut out = Vec::new();
            for c in tone.chunks(777) {
                r.process(c, &mut out);
            }
            r.flush(&mut out);
            assert!(
                (out.len() as i64 - to as i64).abs() <= 2,
                "{from}->{to}: {}",
                out.len()
            );
            let mid = &out[to as usize / 4..to as usize * 3 / 4];
            let level = rms(mid);
            assert!(
                (level - 8000.0 / 2f64.sqrt()).abs() < 300.0,
                "{from}->{to}: rms {level}"
            );
            // Correlates with the ideal tone at the new rate: no delay left.
            let corr = tone_correlation(mid, 440.0, to, to as usize / 4);
            assert!(corr > 0.99, "{from}->{to}: corr {corr}");
        }
    }

    #[test]
    fn a_1khz_tone_keeps_its_frequency_and_level_in_every_resampler() {
        for (from, to) in [(8000u32, 16000u32), (16000, 24000), (22050, 8000)] {
            let tone = sine(1000.0, from, from as usize, 10000.0);
            let want_rms = 10000.0 / 2f64.sqrt();
            let check = |what: &str, out: &[i16]| {
                assert_eq!(out.len(), to as usize, "{what} {from}->{to}: length");
                // The middle half: away from the clip's edges.
                let (a, b) = (to as usize / 4, to as usize * 3 / 4);
                let level = rms(&out[a..b]);
                assert!(
                    (level / want_rms - 1.0).abs() < 0.02,
                    "{what} {from}->{to}: rms {level:.0}, want {want_rms:.0}"
                );
                let corr = tone_correlation(&out[a..b], 1000.0, to, a);
                assert!(corr > 0.999, "{what} {from}->{to}: corr {corr:.4}");
            };
            check("resample_once", &resample_once(&tone, from, to).unwrap());
            let mut s = StreamResampler::new(from, to);
            let mut out = Vec::new();
            for piece in tone.chunks(333) {
                s.process(piece, &mut out);
            }
            s.flush(&mut out);
            check("stream", &out);
            // The fixed-block resampler needs whole-kHz rates.
            if from % 1000 == 0 {
                let mut r = Resampler::new(from, to, 20).unwrap();
                let mut out = run(&mut r, &tone);
                // Undo its fixed delay, then pad back to the clip's length.
                out.drain(..r.delay_samples());
                out.resize(to as usize, 0);
                let (a, b) = (to as usize / 4, to as usize * 3 / 4);
                let level = rms(&out[a..b]);
                assert!(
                    (level / want_rms - 1.0).abs() < 0.02,
                    "block {from}->{to}: {level:.0}"
                );
                let corr = tone_correlation(&out[a..b], 1000.0, to, a);
                assert!(corr > 0.999, "block {from}->{to}: corr {corr:.4}");
            }
        }
    }

    #[test]
    fn resample_once_gives_the_clips_duration_and_refuses_zero_rates() {
        let clip = sine(300.0, 48000, 4801, 5000.0);
        assert_eq!(resample_once(&clip, 48000, 8000).unwrap().len(), 800);
        assert_eq!(resample_once(&clip, 48000, 44100).unwrap().len(), 4410);
        assert_eq!(resample_once(&clip, 48000, 48000).unwrap(), clip);
        assert!(resample_once(&[], 8000, 16000).unwrap().is_empty());
        assert_eq!(resample_once(&[1, 2, 3], 8000, 16000).unwrap().len(), 6);
        assert!(matches!(
            resample_once(&clip, 0, 8000),
            Err(CodecError::UnsupportedRates { from: 0, to: 8000 })
        ));
    }

    #[test]
    fn polyphase_in_odd_pieces_matches_whole_blocks() {
        // The DSP feeds whole 20 ms blocks; streams feed anything. Same output.
        for (from, to) in [
            (8000u32, 48000u32),
            (48000, 16000),
            (22050, 16000),
            (16000, 24000),
        ] {
            let x: Vec<f32> = sine(700.0, from, from as usize / 5, 9000.0)
                .iter()
                .map(|&s| f32::from(s))
                .collect();
            let block = from as usize / 50;
            let mut whole = Polyphase::new(from, to);
            let mut a = Vec::new();
            for b in x.chunks(block) {
                whole.process_into(b, &mut a);
            }
            let mut pieces = Polyphase::new(from, to);
            let mut b = Vec::new();
            for p in x.chunks(37) {
                pieces.process_into(p, &mut b);
            }
            assert_eq!(a.len(), b.len(), "{from}->{to}");
            assert!(
                a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-2),
                "{from}->{to}"
            );
        }
        // Whole 20 ms blocks of telephony rates come out as whole blocks.
        let mut p = Polyphase::new(8000, 48000);
        for _ in 0..3 {
            assert_eq!(p.out_len(160), 960);
            let mut out = vec![0.0; 960];
            p.process(&[0.5; 160], &mut out);
        }
        assert_eq!(p.delay_out(), 96);
    }

    /// Which engine is cheaper per 10 ms block (what `Session` feeds):
    /// `cargo test --release --lib engine_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, prints a table"]
    fn engine_cost_per_10ms_block() {
        for (from, to) in [
            (8000u32, 48000u32),
            (48000, 8000),
            (8000, 16000),
            (16000, 8000),
        ] {
            let input = sine(1000.0, from, from as usize, 8000.0);
            let block = from as usize / 100;
            let mut fft = Resampler::new(from, to, 10).unwrap();
            let mut poly = Polyphase::new(from, to);
            let f32_in: Vec<f32> = input.iter().map(|&s| f32::from(s)).collect();
            let mut out = Vec::new();
            let mut fout = vec![0.0f32; to as usize / 100];
            let rounds = 20;
            let t = std::time::Instant::now();
            for _ in 0..rounds {
                for b in input.chunks_exact(block) {
                    out.clear();
                    fft.process(b, &mut out).unwrap();
                }
            }
            let per_fft = t.elapsed() / (rounds * 100);
            let t = std::time::Instant::now();
            for _ in 0..rounds {
                for b in f32_in.chunks_exact(block) {
                    poly.process(b, &mut fout);
                    std::hint::black_box(&fout);
                }
            }
            let per_poly = t.elapsed() / (rounds * 100);
            eprintln!("{from}->{to}: FFT {per_fft:?}, polyphase {per_poly:?} per 10 ms block");
        }
    }
}
