//! Packet-loss concealment for 16-bit PCM (G.711 and other codecs without
//! their own), in the manner of ITU-T G.711 Appendix I.
//!
//! It owns the per-call history of decoded audio and turns a missing frame
//! into a plausible one: the last pitch period (found by normalised
//! autocorrelation over 2.5-15 ms lags) is repeated, its wrap-around
//! junction smoothed; the repetition plays at full level for 10 ms, then
//! fades by 20 % of full level per 10 ms and is silent from 60 ms on. The
//! first good frame after a loss is cross-faded with the continued
//! repetition so the switch back does not click.
//!
//! Unlike Appendix I it adds no algorithmic delay: good frames pass through
//! untouched apart from that fade-in, which is what a jitter buffer's playout
//! needs. Everything is in-place or one frame long; there is no I/O.

/// History kept for the pitch search and the repetition, in milliseconds:
/// two periods of the lowest pitch (30 ms) plus room for the 20 ms
/// correlation window's lags.
const HISTORY_MS: u32 = 40;
/// Pitch search range, in tenths of a millisecond: 400 Hz down to 66 Hz.
const MIN_LAG_TENTH_MS: u32 = 25;
const MAX_LAG_TENTH_MS: u32 = 150;
/// Length of the correlation window (the most recent audio).
const CORR_WINDOW_MS: u32 = 20;
/// Full level for this long, then fade out over `FADE_MS`: -20 % per 10 ms.
const HOLD_MS: u32 = 10;
const FADE_MS: u32 = 50;

/// Per-call concealment state for one direction of audio.
pub struct Concealer {
    sample_rate: u32,
    frame_len: usize,
    /// The most recent audio (good or concealed), oldest first.
    history: Vec<f32>,
    min_lag: usize,
    max_lag: usize,
    /// Samples concealed in the current run of lost frames; 0 = not concealing.
    erased: usize,
    /// One pitch period to repeat, its end blended into the period before so
    /// the wrap to its start is continuous.
    cycle: Vec<f32>,
    pos: usize,
}

impl Concealer {
    /// `frame_len` samples per frame (160 for 20 ms at 8 kHz; 80..960 are
    /// the usual sizes). Nonsense values are clamped, never refused: this
    /// runs on the packet path.
    pub fn new(sample_rate: u32, frame_len: usize) -> Self {
        let sample_rate = sample_rate.clamp(4000, 192_000);
        let samples = |tenth_ms: u32| (sample_rate as usize * tenth_ms as usize) / 10_000;
        let history_len = samples(HISTORY_MS * 10);
        Concealer {
            sample_rate,
            frame_len: frame_len.clamp(1, history_len * 4),
            history: vec![0.0; history_len],
            min_lag: samples(MIN_LAG_TENTH_MS).max(2),
            max_lag: samples(MAX_LAG_TENTH_MS).max(3),
            erased: 0,
            cycle: Vec::new(),
            pos: 0,
        }
    }

    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Whether the last frame was concealed.
    pub fn concealing(&self) -> bool {
        self.erased > 0
    }

    /// A real decoded frame (any length). Right after concealment its start
    /// is cross-faded from the continued repetition; then it joins the history.
    pub fn good_frame(&mut self, pcm: &mut [i16]) {
        if self.erased > 0 {
            // Appendix I: 4 ms of overlap, plus 4 ms per further 10 ms lost,
            // at most 10 ms. A longer loss has drifted further from the real
            // signal and needs a gentler hand-over.
            let erased_ms = self.erased * 1000 / self.sample_rate as usize;
            let ola_ms = (4 + 4 * erased_ms.saturating_sub(10) / 10).min(10);
            let ola = (self.sample_rate as usize * ola_ms / 1000).min(pcm.len());
            for (i, s) in pcm.iter_mut().take(ola).enumerate() {
                let synth = self.next_synth();
                let w = (i + 1) as f32 / (ola + 1) as f32;
                *s = to_i16(synth * (1.0 - w) + f32::from(*s) * w);
            }
            self.erased = 0;
        }
        self.remember(pcm.iter().map(|&s| f32::from(s)));
    }

    /// One frame of concealment for a lost packet.
    pub fn conceal(&mut self) -> Vec<i16> {
        if self.erased == 0 {
            self.start_erasure();
        }
        let out: Vec<i16> = (0..self.frame_len)
            .map(|_| to_i16(self.next_synth()))
            .collect();
        // The concealed audio becomes history, so a later loss continues from
        // what was actually played.
        self.remember(out.iter().map(|&s| f32::from(s)));
        out
    }

    /// The next repeated sample at the current fade level; advances time.
    fn next_synth(&mut self) -> f32 {
        let gain = self.gain(self.erased);
        self.erased += 1;
        let Some(&s) = self.cycle.get(self.pos) else {
            return 0.0;
        };
        self.pos = (self.pos + 1) % self.cycle.len().max(1);
        s * gain
    }

    fn gain(&self, t: usize) -> f32 {
        let hold = self.sample_rate as usize * HOLD_MS as usize / 1000;
        let fade = self.sample_rate as usize * FADE_MS as usize / 1000;
        if t < hold {
            1.0
        } else if t >= hold + fade {
            0.0
        } else {
            1.0 - (t - hold) as f32 / fade as f32
        }
    }

    fn start_erasure(&mut self) {
        let period = self.pitch_period();
        let h = &self.history;
        let n = h.len();
        self.pos = 0;
        self.cycle.clear();
        if period == 0 || n < 2 * period {
            return;
        }
        // Appendix I blends a quarter period at the junction: the end of the
        // repeated period fades into the period before it, whose next
        // sample is exactly where the repetition starts again.
        let q = (period / 4).max(1);
        for i in 0..period {
            let cur = h.get(n - period + i).copied().unwrap_or(0.0);
            let v = if i + q >= period {
                let prev = h.get(n - 2 * period + i).copied().unwrap_or(0.0);
                let w = (i + q + 1 - period) as f32 / (q + 1) as f32;
                cur * (1.0 - w) + prev * w
            } else {
                cur
            };
            self.cycle.push(v);
        }
    }

    /// Pitch period in samples: the lag in 2.5-15 ms with the highest
    /// normalised correlation between the last 20 ms and the audio before
    /// it; 0 when the history is silent. Above 8 kHz a coarse search on
    /// every `step`-th sample and lag is refined at full resolution, which
    /// keeps the cost of 48 kHz near that of 8 kHz.
    fn pitch_period(&self) -> usize {
        let h = &self.history;
        let n = h.len();
        let window = (self.sample_rate as usize * CORR_WINDOW_MS as usize / 1000)
            .min(n.saturating_sub(self.max_lag));
        let Some(recent) = h.get(n - window..).filter(|r| !r.is_empty()) else {
            return 0;
        };
        let energy: f32 = recent.iter().map(|x| x * x).sum();
        if energy < window as f32 {
            // Below one LSB RMS: nothing worth repeating.
            return 0;
        }
        let step = (self.sample_rate / 8000).max(1) as usize;
        // Correlation of the recent window with the one `lag` earlier,
        // normalised by the earlier one's energy (the recent one's is the
        // same for every lag).
        let score = |lag: usize, step: usize| -> f32 {
            let start = (n - window).checked_sub(lag);
            let Some(earlier) = start.and_then(|a| h.get(a..a + window)) else {
                return f32::MIN;
            };
            let (xy, yy) = recent
                .iter()
                .zip(earlier)
                .step_by(step)
                .fold((0.0f32, 0.0f32), |(xy, yy), (x, y)| {
                    (xy + x * y, yy + y * y)
                });
            if yy <= 0.0 {
                return f32::MIN;
            }
            xy / yy.sqrt()
        };
        let mut best = (self.min_lag, f32::MIN);
        for lag in (self.min_lag..=self.max_lag).step_by(step) {
            let s = score(lag, step);
            if s > best.1 {
                best = (lag, s);
            }
        }
        if step > 1 {
            let lo = best.0.saturating_sub(step).max(self.min_lag);
            let hi = (best.0 + step).min(self.max_lag);
            best = (best.0, f32::MIN);
            for lag in lo..=hi {
                let s = score(lag, 1);
                if s > best.1 {
                    best = (lag, s);
                }
            }
        }
        best.0
    }

    fn remember(&mut self, samples: impl ExactSizeIterator<Item = f32>) {
        let n = self.history.len();
        let k = samples.len();
        if k >= n {
            self.history.clear();
            self.history.extend(samples.skip(k - n));
        } else {
            self.history.drain(..k);
            self.history.extend(samples);
        }
    }
}

fn to_i16(x: f32) -> i16 {
    x.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::f32::consts::TAU;

    /// A voiced-speech-like tone: a fundamental whose period is not a whole
    /// number of samples, plus two harmonics.
    fn voice(rate: u32, start: usize, len: usize) -> Vec<i16> {
        let f0 = 173.0;
        (start..start + len)
            .map(|n| {
                let t = n as f32 / rate as f32;
                let v = 6000.0 * (TAU * f0 * t).sin()
                    + 2500.0 * (TAU * 2.0 * f0 * t + 0.7).sin()
                    + 1200.0 * (TAU * 3.0 * f0 * t + 1.9).sin();
                v as i16
            })
            .collect()
    }

    fn correlation(a: &[i16], b: &[i16]) -> f64 {
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (f64::from(x), f64::from(y));
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        ab / (aa * bb).sqrt().max(1.0)
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
    }

    /// Feeds `frames` good frames of the test voice, returns the position reached.
    fn prime(c: &mut Concealer, rate: u32, frames: usize) -> usize {
        let n = c.frame_len();
        for k in 0..frames {
            let mut f = voice(rate, k * n, n);
            c.good_frame(&mut f);
        }
        frames * n
    }

    #[test]
    fn concealment_continues_a_voiced_signal_for_the_first_10_ms() {
        for (rate, frame) in [(8000, 160), (16_000, 320), (48_000, 960), (8000, 80)] {
            let mut c = Concealer::new(rate, frame);
            let at = prime(&mut c, rate, 8);
            let synth = c.conceal();
            assert_eq!(synth.len(), frame);
            let ten_ms = rate as usize / 100;
            let truth = voice(rate, at, ten_ms);
            let r = correlation(&synth[..ten_ms], &truth);
            println!(
                "{rate} Hz frame {frame}: correlation {r:.4} level {:.3}",
                rms(&synth[..ten_ms]) / rms(&truth)
            );
            assert!(r > 0.9, "{rate} Hz: correlation {r:.3}");
            let level = rms(&synth[..ten_ms]) / rms(&truth);
            assert!((0.8..1.2).contains(&level), "{rate} Hz: level {level:.2}");
        }
    }

    #[test]
    fn concealment_fades_and_is_silent_after_60_ms() {
        let rate = 8000;
        let mut c = Concealer::new(rate, 160);
        prime(&mut c, rate, 8);
        let out: Vec<i16> = (0..5).flat_map(|_| c.conceal()).collect();
        let per_10ms: Vec<f64> = out.chunks(80).map(rms).collect();
        println!("rms per 10 ms: {per_10ms:.0?}");
        assert!(per_10ms[1] < per_10ms[0] * 0.95, "{per_10ms:?}");
        assert!(
            per_10ms.windows(2).take(6).all(|w| w[1] < w[0]),
            "{per_10ms:?}"
        );
        assert!(out[480..].iter().all(|&s| s == 0), "silent from 60 ms on");
    }

    #[test]
    fn return_to_good_frames_has_no_discontinuity() {
        let rate = 8000;
        // The voice's largest natural sample-to-sample step.
        let v = voice(rate, 0, 8000);
        let natural = v
            .windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap();
        for lost in [1, 2, 3, 4] {
            let mut worst = 0;
            // Several phases, so the hand-over meets the wave at all heights.
            for shift in (0..46).step_by(5) {
                let mut c = Concealer::new(rate, 160);
                let mut at = shift;
                for _ in 0..8 {
                    let mut f = voice(rate, at, 160);
                    c.good_frame(&mut f);
                    at += 160;
                }
                let mut out: Vec<i16> = voice(rate, at - 160, 160);
                for _ in 0..lost {
                    out.extend(c.conceal());
                    at += 160;
                }
                for _ in 0..2 {
                    let mut f = voice(rate, at, 160);
                    c.good_frame(&mut f);
                    out.extend_from_slice(&f);
                    at += 160;
                }
                worst = out
                    .windows(2)
                    .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
                    .max()
                    .unwrap()
                    .max(worst);
                // After the overlap the good audio passes through untouched.
                let tail = &out[out.len() - 160..];
                assert_eq!(tail, &voice(rate, at - 160, 160)[..]);
            }
            println!("{lost} lost: worst step {worst}, natural {natural}");
            assert!(
                worst <= natural * 3 / 2,
                "{lost} lost: step {worst} vs natural {natural}"
            );
        }
    }

    #[test]
    fn silence_conceals_to_silence_and_odd_sizes_do_not_panic() {
        let mut c = Concealer::new(8000, 160);
        assert!(c.conceal().iter().all(|&s| s == 0));
        let mut empty: [i16; 0] = [];
        c.good_frame(&mut empty);
        let mut long = vec![1000i16; 5000];
        c.good_frame(&mut long);
        let mut short = vec![-3000i16; 7];
        c.good_frame(&mut short);
        assert_eq!(c.conceal().len(), 160);
        for (rate, frame) in [(0, 0), (1, 1), (u32::MAX, usize::MAX)] {
            let mut c = Concealer::new(rate, frame);
            let mut f = vec![i16::MAX; 100];
            c.good_frame(&mut f);
            let _ = c.conceal();
            let _ = c.conceal();
            c.good_frame(&mut f);
        }
    }
}
