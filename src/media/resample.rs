//! Mono 16-bit sample-rate conversion in fixed blocks (`rubato`'s FFT
//! resampler), so a call decodes and resamples exactly once per direction.
//!
//! Every block of `block_ms` in gives exactly one block of `block_ms` out:
//! the playout clock never drifts by a sample. The price is a fixed delay
//! ([`Resampler::delay_samples`]) of 5 ms, from running the FFT on 10 ms
//! sub-blocks: 40 samples at 8 kHz, 80 at 16 kHz, 120 at 24 kHz, 240 at
//! 48 kHz.

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
}
