//! Answering-machine detection, sans-IO: classifies the first seconds of
//! the callee's audio on an outbound call as a person or a machine, and
//! then listens for the machine's beep.
//!
//! The rules are Asterisk's `AMD()` (app_amd.c) on 20 ms frames: a frame is
//! voice when its mean absolute level is above the silence threshold (raised
//! over the line's noise floor, so a hissy line is not one long word);
//! voice runs of `min_word_ms` are words, silences of
//! `between_words_silence_ms` separate them. Too long an initial silence, a
//! greeting longer than `greeting_ms`, more than `max_words` words or one
//! word longer than `max_word_ms` make a machine; a short greeting followed
//! by `after_greeting_silence_ms` of silence is a person (they said
//! "hello?" and wait for an answer). Nothing decided within
//! `total_analysis_ms` is `NotSure`.
//!
//! The beep detector (what FreeSWITCH's mod_avmd looks for): a Goertzel bank
//! over 300-2500 Hz every voiced frame; a frame is tonal when one bin holds
//! most of its energy, and a run of tonal frames on the same frequency for
//! `beep_min_ms` or more, ended by a change or silence, is the beep. A beep
//! heard before the decision decides `Machine` on the spot. After a machine
//! decision the detector keeps listening until the beep, or until
//! `greeting_end_silence_ms` of silence says the greeting is over without
//! one (some machines never beep), or `beep_timeout_ms` from the start.
//!
//! Inputs are `(now, pcm)` at the call's audio rate, in any chunk size;
//! missing audio (no packets) counts as silence once `now` runs ahead of
//! the audio by more than [`MAX_AUDIO_LAG_MS`]. Results come out of
//! [`Amd::poll_event`]. It never reads a clock. Cost: a few multiply-adds
//! per sample for the level, plus 45 Goertzel bins over each voiced frame
//! while the beep is awaited (about 7 200 multiply-adds per 20 ms at 8 kHz).

use std::collections::VecDeque;
use std::time::Instant;

/// Every decision is made on 20 ms frames.
const FRAME_MS: u32 = 20;
/// Audio may lag `now` by this much (a late packet, a jitter buffer up to
/// its 200 ms maximum plus a tick) before the missing time is counted as
/// silence.
pub const MAX_AUDIO_LAG_MS: u64 = 400;
/// The beep bank: 300-2500 Hz in 50 Hz steps.
const BEEP_LOW_HZ: u32 = 300;
const BEEP_HIGH_HZ: u32 = 2500;
const BEEP_STEP_HZ: u32 = 50;
/// Frames of the noise-floor window (the quietest frame in the last 1.5 s).
const NOISE_WINDOW_FRAMES: usize = 75;
/// The voice threshold is this many times the noise floor's level ...
const NOISE_FACTOR: f32 = 2.5;
/// ... but never more than this many times `silence_threshold` (speech
/// from the first frame must not become the "noise floor").
const MAX_THRESHOLD_FACTOR: f32 = 4.0;

/// The classifier's parameters (Asterisk's `amd.conf` names, in ms).
#[derive(Debug, Clone, PartialEq)]
pub struct AmdConfig {
    /// Silence before any voice longer than this: a machine.
    pub initial_silence_ms: u32,
    /// Voice in the greeting longer than this: a machine.
    pub greeting_ms: u32,
    /// Silence after a short greeting this long: a person.
    pub after_greeting_silence_ms: u32,
    /// No decision by this time: not sure.
    pub total_analysis_ms: u32,
    /// A voice run this long is a word.
    pub min_word_ms: u32,
    /// A silence this long ends a word.
    pub between_words_silence_ms: u32,
    /// More words than this: a machine.
    pub max_words: u32,
    /// One word longer than this: a machine.
    pub max_word_ms: u32,
    /// Mean absolute level (0-32767) below which a frame is silence on a
    /// clean line; raised over a noisy line's floor.
    pub silence_threshold: u16,
    /// A steady tone at least this long is a beep.
    pub beep_min_ms: u32,
    /// After a machine decision: silence this long means the greeting ended
    /// without a beep.
    pub greeting_end_silence_ms: u32,
    /// Stop waiting for the beep this long after the start.
    pub beep_timeout_ms: u32,
}

impl Default for AmdConfig {
    /// Asterisk's defaults, except `greeting_ms` (1500), `max_words` (2)
    /// and `between_words_silence_ms` (50), loosened for people who answer
    /// with a sentence ("Hello, this is Mark speaking." is 1.6-1.9 s of
    /// voice); measured on `tests/data/amd`: 45/45 right with these, 43/45
    /// with Asterisk's (`tests/amd_dataset.rs` prints both).
    fn default() -> Self {
        AmdConfig {
            initial_silence_ms: 2500,
            greeting_ms: 2000,
            after_greeting_silence_ms: 800,
            total_analysis_ms: 5000,
            min_word_ms: 100,
            between_words_silence_ms: 100,
            max_words: 4,
            max_word_ms: 5000,
            silence_threshold: 256,
            beep_min_ms: 120,
            greeting_end_silence_ms: 1500,
            beep_timeout_ms: 30_000,
        }
    }
}

/// Person or machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AmdResult {
    Human,
    Machine,
    NotSure,
}

impl AmdResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AmdResult::Human => "human",
            AmdResult::Machine => "machine",
            AmdResult::NotSure => "notsure",
        }
    }
}

/// Which rule decided (Asterisk's `AMDCAUSE`, plus the beep).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AmdCause {
    /// Silence after a short greeting (a person).
    AfterGreetingSilence,
    InitialSilence,
    LongGreeting,
    MaxWords,
    MaxWordLength,
    /// A beep before any other rule fired.
    Beep,
    /// Nothing fired within `total_analysis_ms`.
    TooLong,
}

impl AmdCause {
    pub fn as_str(self) -> &'static str {
        match self {
            AmdCause::AfterGreetingSilence => "after_greeting_silence",
            AmdCause::InitialSilence => "initial_silence",
            AmdCause::LongGreeting => "long_greeting",
            AmdCause::MaxWords => "max_words",
            AmdCause::MaxWordLength => "max_word_length",
            AmdCause::Beep => "beep",
            AmdCause::TooLong => "too_long",
        }
    }
}

/// What the decision rested on. Times in ms from the first audio.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AmdDecision {
    pub result: AmdResult,
    pub cause: AmdCause,
    /// When it was decided.
    pub at_ms: u64,
    /// Silence before the first word.
    pub initial_silence_ms: u64,
    /// Voice heard since the first word.
    pub greeting_ms: u64,
    pub words: u32,
    /// Silences between words.
    pub pauses: u32,
}

/// The machine's beep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Beep {
    /// Its start, in ms from the first audio.
    pub at_ms: u64,
    pub length_ms: u64,
    pub hz: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AmdEvent {
    Decided(AmdDecision),
    Beep(Beep),
    /// A machine's greeting ended (silence) without a beep, or the beep
    /// wait timed out; `at_ms` is when this was decided.
    GreetingEnded {
        at_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Classifying.
    Deciding,
    /// A machine: waiting for the beep or the greeting's end.
    AwaitingBeep,
    Done,
}

/// A run of tonal frames on one frequency.
#[derive(Debug, Clone, Copy)]
struct ToneRun {
    start_frame: u64,
    frames: u32,
    bin: usize,
    hz_sum: u64,
}

/// One call's answering-machine detector.
pub struct Amd {
    cfg: AmdConfig,
    frame_len: usize,
    /// Samples of the frame being filled.
    pending: Vec<i16>,
    start: Option<Instant>,
    frames: u64,
    stage: Stage,
    events: VecDeque<AmdEvent>,
    // Word state (Asterisk's).
    in_greeting: bool,
    in_word: bool,
    silence_ms: u64,
    consecutive_voice_ms: u64,
    voice_ms: u64,
    words: u32,
    pauses: u32,
    initial_silence_ms: u64,
    /// Recent frame levels for the noise floor.
    levels: VecDeque<f32>,
    // Beep detector: Goertzel coefficients, the Hann window.
    bins: Vec<(u32, f32)>,
    window: Vec<f32>,
    tone: Option<ToneRun>,
    voiced_since_decision: bool,
}

impl Amd {
    /// A detector for audio at `sample_rate` Hz (8000, 16000, ...).
    pub fn new(cfg: AmdConfig, sample_rate: u32) -> Amd {
        let frame_len = (sample_rate * FRAME_MS / 1000).max(1) as usize;
        let n = frame_len as f32;
        let bins = (BEEP_LOW_HZ..=BEEP_HIGH_HZ.min(sample_rate / 2))
            .step_by(BEEP_STEP_HZ as usize)
            .map(|hz| {
                let w = 2.0 * std::f32::consts::PI * hz as f32 / sample_rate as f32;
                (hz, 2.0 * w.cos())
            })
            .collect();
        let window = (0..frame_len)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / n).cos())
            .collect();
        Amd {
            cfg,
            frame_len,
            pending: Vec::with_capacity(frame_len),
            start: None,
            frames: 0,
            stage: Stage::Deciding,
            events: VecDeque::new(),
            in_greeting: false,
            in_word: false,
            silence_ms: 0,
            consecutive_voice_ms: 0,
            voice_ms: 0,
            words: 0,
            pauses: 0,
            initial_silence_ms: 0,
            levels: VecDeque::with_capacity(NOISE_WINDOW_FRAMES),
            bins,
            window,
            tone: None,
            voiced_since_decision: false,
        }
    }

    pub fn config(&self) -> &AmdConfig {
        &self.cfg
    }

    /// Whether it has nothing more to say.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// The callee's audio, any number of samples, received at `now`. The
    /// first call starts the clock.
    pub fn push(&mut self, now: Instant, pcm: &[i16]) {
        self.catch_up(now);
        for &s in pcm {
            self.pending.push(s);
            if self.pending.len() == self.frame_len {
                let frame = std::mem::take(&mut self.pending);
                self.frame(&frame);
                self.pending = frame;
                self.pending.clear();
            }
        }
    }

    /// Time passes without audio: what is missing beyond
    /// [`MAX_AUDIO_LAG_MS`] counts as silence.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.catch_up(now);
    }

    /// When [`Self::handle_timeout`] can next change something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let start = self.start?;
        if self.stage == Stage::Done {
            return None;
        }
        Some(
            start
                + std::time::Duration::from_millis(
                    self.audio_ms() + MAX_AUDIO_LAG_MS + u64::from(FRAME_MS),
                ),
        )
    }

    pub fn poll_event(&mut self) -> Option<AmdEvent> {
        self.events.pop_front()
    }

    fn audio_ms(&self) -> u64 {
        self.frames * u64::from(FRAME_MS)
    }

    fn catch_up(&mut self, now: Instant) {
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start).as_millis() as u64;
        if self.stage == Stage::Done {
            return;
        }
        let silent = vec![0i16; self.frame_len];
        while elapsed > self.audio_ms() + MAX_AUDIO_LAG_MS && self.stage != Stage::Done {
            self.pending.clear();
            self.frame(&silent);
        }
    }

    fn frame(&mut self, frame: &[i16]) {
        if self.stage == Stage::Done {
            return;
        }
        let level = frame.iter().map(|&s| f32::from(s).abs()).sum::<f32>() / frame.len() as f32;
        let voiced = level > self.threshold(level);
        self.frames += 1;
        let now_ms = self.audio_ms();
        // The beep: judged on voiced frames, ended by a change or silence.
        let tonal = if voiced { self.tonal_bin(frame) } else { None };
        self.track_tone(tonal, now_ms);
        if self.stage == Stage::Done {
            return;
        }
        match self.stage {
            Stage::Deciding => self.classify(voiced, now_ms),
            Stage::AwaitingBeep => {
                if voiced {
                    self.voiced_since_decision = true;
                    self.silence_ms = 0;
                } else {
                    self.silence_ms += u64::from(FRAME_MS);
                }
                if self.silence_ms >= u64::from(self.cfg.greeting_end_silence_ms)
                    && self.voiced_since_decision
                    && self.tone.is_none()
                {
                    self.finish_without_beep(now_ms);
                }
            }
            Stage::Done => {}
        }
        if self.stage == Stage::AwaitingBeep && now_ms >= u64::from(self.cfg.beep_timeout_ms) {
            self.finish_without_beep(now_ms);
        }
    }

    /// The voice threshold for this frame: above the line's noise floor.
    fn threshold(&mut self, level: f32) -> f32 {
        if self.levels.len() == NOISE_WINDOW_FRAMES {
            self.levels.pop_front();
        }
        self.levels.push_back(level);
        let floor = self.levels.iter().copied().fold(f32::MAX, f32::min);
        let base = f32::from(self.cfg.silence_threshold);
        (floor * NOISE_FACTOR).clamp(base, base * MAX_THRESHOLD_FACTOR)
    }

    /// Asterisk's rules, one frame at a time.
    fn classify(&mut self, voiced: bool, now_ms: u64) {
        let frame = u64::from(FRAME_MS);
        let cfg = &self.cfg;
        if !voiced {
            self.silence_ms += frame;
            if self.in_word && self.silence_ms >= u64::from(cfg.between_words_silence_ms) {
                self.in_word = false;
                self.consecutive_voice_ms = 0;
            }
            if !self.in_greeting {
                if self.silence_ms >= u64::from(cfg.initial_silence_ms) {
                    self.initial_silence_ms = self.silence_ms;
                    return self.decide(AmdResult::Machine, AmdCause::InitialSilence, now_ms);
                }
            } else if self.silence_ms >= u64::from(cfg.after_greeting_silence_ms) {
                return self.decide(AmdResult::Human, AmdCause::AfterGreetingSilence, now_ms);
            }
        } else {
            self.consecutive_voice_ms += frame;
            if self.in_greeting {
                self.voice_ms += frame;
            }
            if self.consecutive_voice_ms >= u64::from(cfg.min_word_ms) && !self.in_word {
                if !self.in_greeting {
                    // The greeting starts with its first word; its voice
                    // counts from that word's start.
                    self.in_greeting = true;
                    self.initial_silence_ms = now_ms.saturating_sub(self.consecutive_voice_ms);
                    self.voice_ms = self.consecutive_voice_ms;
                } else {
                    self.pauses += 1;
                }
                self.in_word = true;
                self.words += 1;
            }
            if self.consecutive_voice_ms >= frame {
                self.silence_ms = 0;
            }
            if self.consecutive_voice_ms >= u64::from(cfg.max_word_ms) {
                return self.decide(AmdResult::Machine, AmdCause::MaxWordLength, now_ms);
            }
            if self.words > cfg.max_words {
                return self.decide(AmdResult::Machine, AmdCause::MaxWords, now_ms);
            }
            if self.in_greeting && self.voice_ms >= u64::from(cfg.greeting_ms) {
                return self.decide(AmdResult::Machine, AmdCause::LongGreeting, now_ms);
            }
        }
        if now_ms >= u64::from(self.cfg.total_analysis_ms) {
            self.decide(AmdResult::NotSure, AmdCause::TooLong, now_ms);
        }
    }

    fn decide(&mut self, result: AmdResult, cause: AmdCause, now_ms: u64) {
        if !self.in_greeting && cause != AmdCause::InitialSilence {
            self.initial_silence_ms = now_ms;
        }
        self.events.push_back(AmdEvent::Decided(AmdDecision {
            result,
            cause,
            at_ms: now_ms,
            initial_silence_ms: self.initial_silence_ms,
            greeting_ms: self.voice_ms,
            words: self.words,
            pauses: self.pauses,
        }));
        if result == AmdResult::Machine {
            self.stage = Stage::AwaitingBeep;
            // The greeting is over only after voice, then silence.
            self.voiced_since_decision = cause != AmdCause::InitialSilence;
            self.silence_ms = 0;
        } else {
            self.stage = Stage::Done;
        }
    }

    fn finish_without_beep(&mut self, now_ms: u64) {
        self.events
            .push_back(AmdEvent::GreetingEnded { at_ms: now_ms });
        self.stage = Stage::Done;
    }

    /// The bin holding most of a frame's energy, if one does (a tone).
    fn tonal_bin(&self, frame: &[i16]) -> Option<(usize, u32)> {
        let mut windowed = [0f32; 480];
        let n = frame.len().min(windowed.len());
        let mut energy = 0f32;
        for i in 0..n {
            let v = f32::from(frame[i]) * self.window[i];
            windowed[i] = v;
            energy += v * v;
        }
        if energy <= 0.0 {
            return None;
        }
        let mut best = (0usize, 0f32);
        for (k, &(_, coeff)) in self.bins.iter().enumerate() {
            let (mut s1, mut s2) = (0f32, 0f32);
            for &x in &windowed[..n] {
                let s0 = x + coeff * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
            if power > best.1 {
                best = (k, power);
            }
        }
        // A pure tone on a bin's frequency gives 1 (Hann: |X|^2 = N/3 of
        // the windowed energy); half a bin off about 0.72; speech under 0.4.
        let tonality = 3.0 * best.1 / (n as f32 * energy);
        (tonality >= TONALITY_MIN).then(|| (best.0, self.bins[best.0].0))
    }

    fn track_tone(&mut self, tonal: Option<(usize, u32)>, now_ms: u64) {
        let frame = u64::from(FRAME_MS);
        match (tonal, self.tone.as_mut()) {
            (Some((bin, hz)), Some(run)) if bin.abs_diff(run.bin) <= 1 => {
                run.frames += 1;
                run.hz_sum += u64::from(hz);
                return;
            }
            _ => {}
        }
        // The run (if any) ended with this frame.
        if let Some(run) = self.tone.take() {
            let length_ms = u64::from(run.frames) * frame;
            if length_ms >= u64::from(self.cfg.beep_min_ms) && self.stage != Stage::Done {
                let beep = Beep {
                    at_ms: run.start_frame * frame,
                    length_ms,
                    hz: (run.hz_sum / u64::from(run.frames)) as u32,
                };
                if self.stage == Stage::Deciding {
                    self.decide(AmdResult::Machine, AmdCause::Beep, now_ms);
                }
                self.events.push_back(AmdEvent::Beep(beep));
                self.stage = Stage::Done;
                return;
            }
        }
        if let Some((bin, hz)) = tonal {
            self.tone = Some(ToneRun {
                start_frame: self.frames - 1,
                frames: 1,
                bin,
                hz_sum: u64::from(hz),
            });
        }
    }
}

/// Tonality (see [`Amd::tonal_bin`]) from which a frame counts as a tone.
const TONALITY_MIN: f32 = 0.6;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const RATE: u32 = 8000;

    fn tone(hz: f32, ms: u32, amp: f32) -> Vec<i16> {
        (0..RATE * ms / 1000)
            .map(|i| {
                (amp * (2.0 * std::f32::consts::PI * hz * i as f32 / RATE as f32).sin()) as i16
            })
            .collect()
    }

    fn silence(ms: u32) -> Vec<i16> {
        vec![0; (RATE * ms / 1000) as usize]
    }

    /// Speech-like voice: a 140 Hz buzz through many harmonics (no single
    /// one dominates), amplitude-modulated like syllables.
    fn voice(ms: u32) -> Vec<i16> {
        (0..RATE * ms / 1000)
            .map(|i| {
                let t = i as f32 / RATE as f32;
                let syllable = 0.75 + 0.25 * (2.0 * std::f32::consts::PI * 4.0 * t).sin();
                let buzz: f32 = (1..20)
                    .map(|h| (2.0 * std::f32::consts::PI * 140.0 * h as f32 * t).sin() / h as f32)
                    .sum();
                (3000.0 * syllable * buzz) as i16
            })
            .collect()
    }

    /// Feeds `pcm` in 20 ms packets in virtual time from `t0`; returns the
    /// events with the time they came out.
    fn run(amd: &mut Amd, t0: Instant, pcm: &[i16]) -> Vec<AmdEvent> {
        let mut out = Vec::new();
        for (k, chunk) in pcm.chunks(160).enumerate() {
            amd.push(t0 + Duration::from_millis(20 * k as u64), chunk);
            while let Some(e) = amd.poll_event() {
                out.push(e);
            }
        }
        out
    }

    fn cat(parts: &[Vec<i16>]) -> Vec<i16> {
        parts.concat()
    }

    fn decision(events: &[AmdEvent]) -> AmdDecision {
        events
            .iter()
            .find_map(|e| match e {
                AmdEvent::Decided(d) => Some(d.clone()),
                _ => None,
            })
            .expect("a decision")
    }

    #[test]
    fn short_hello_then_silence_is_human_after_the_silence() {
        let mut amd = Amd::new(AmdConfig::default(), RATE);
        let pcm = cat(&[silence(500), voice(600), silence(2000)]);
        let ev = run(&mut amd, Instant::now(), &pcm);
        let d = decision(&ev);
        assert_eq!(d.result, AmdResult::Human);
        assert_eq!(d.cause, AmdCause::AfterGreetingSilence);
        // Voice ends at 1100 ms; 800 ms of silence later.
        assert!((1880..=1960).contains(&d.at_ms), "{d:?}");
        assert!((480..=520).contains(&d.initial_silence_ms), "{d:?}");
        assert!(amd.is_done());
    }

    #[test]
    fn long_greeting_is_a_machine_then_the_beep_is_timed() {
        let mut amd = Amd::new(AmdConfig::default(), RATE);
        let pcm = cat(&[
            silence(400),
            voice(3000),
            silence(400),
            tone(1000.0, 500, 12000.0),
            silence(1000),
        ]);
        let ev = run(&mut amd, Instant::now(), &pcm);
        let d = decision(&ev);
        assert_eq!(
            (d.result, d.cause),
            (AmdResult::Machine, AmdCause::LongGreeting)
        );
        // The greeting's 2000 ms of voice are reached 2400 ms in.
        assert!((2380..=2440).contains(&d.at_ms), "{d:?}");
        let beep = ev.iter().find_map(|e| match e {
            AmdEvent::Beep(b) => Some(*b),
            _ => None,
        });
        let beep = beep.expect("a beep");
        assert!(beep.at_ms.abs_diff(3800) <= 20, "{beep:?}");
        assert!(beep.length_ms.abs_diff(500) <= 40, "{beep:?}");
        assert_eq!(beep.hz, 1000);
        assert!(amd.is_done());
    }

    #[test]
    fn beep_frequencies_across_the_band_are_found() {
        for hz in [440.0, 620.0, 913.0, 1400.0, 2100.0] {
            let mut amd = Amd::new(AmdConfig::default(), RATE);
            let pcm = cat(&[
                silence(300),
                voice(2500),
                silence(300),
                tone(hz, 200, 8000.0),
                silence(500),
            ]);
            let ev = run(&mut amd, Instant::now(), &pcm);
            let beep = ev.iter().find_map(|e| match e {
                AmdEvent::Beep(b) => Some(*b),
                _ => None,
            });
            let beep = beep.unwrap_or_else(|| panic!("no beep at {hz} Hz: {ev:?}"));
            assert!((beep.hz as f32 - hz).abs() <= 50.0, "{hz}: {beep:?}");
            assert!(beep.at_ms.abs_diff(3100) <= 20, "{hz}: {beep:?}");
        }
    }

    #[test]
    fn a_tone_shorter_than_beep_min_is_not_a_beep() {
        let mut amd = Amd::new(AmdConfig::default(), RATE);
        let pcm = cat(&[
            silence(300),
            voice(2500),
            silence(300),
            tone(1000.0, 60, 8000.0),
            silence(3000),
        ]);
        let ev = run(&mut amd, Instant::now(), &pcm);
        assert!(!ev.iter().any(|e| matches!(e, AmdEvent::Beep(_))), "{ev:?}");
        // The greeting ended in silence instead.
        assert!(
            ev.iter()
                .any(|e| matches!(e, AmdEvent::GreetingEnded { .. })),
            "{ev:?}"
        );
    }

    #[test]
    fn a_beep_before_any_rule_decides_machine() {
        let mut amd = Amd::new(AmdConfig::default(), RATE);
        // "Leave a message." - short - then at once the beep.
        let pcm = cat(&[
            silence(400),
            voice(700),
            silence(200),
            tone(800.0, 400, 9000.0),
            silence(1500),
        ]);
        let ev = run(&mut amd, Instant::now(), &pcm);
        let d = decision(&ev);
        assert_eq!(d.result, AmdResult::Machine, "{ev:?}");
        assert!(ev.iter().any(|e| matches!(e, AmdEvent::Beep(_))), "{ev:?}");
    }

    #[test]
    fn no_audio_at_all_is_a_machine_by_initial_silence_in_virtual_time() {
        let mut amd = Amd::new(AmdConfig::default(), RATE);
        let t0 = Instant::now();
        amd.push(t0, &[]);
        amd.handle_timeout(t0 + Duration::from_millis(2000));
        assert_eq!(amd.poll_event(), None);
        // 1600 ms counted as silence so far; the next frame is due soon.
        let at = amd.poll_timeout().expect("a timeout while deciding");
        assert!(at <= t0 + Duration::from_millis(2100), "{:?}", at - t0);
        amd.handle_timeout(t0 + Duration::from_millis(2950));
        let d = match amd.poll_event() {
            Some(AmdEvent::Decided(d)) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (d.result, d.cause),
            (AmdResult::Machine, AmdCause::InitialSilence)
        );
        assert!((2500..=2560).contains(&d.at_ms), "{d:?}");
    }

    #[test]
    fn many_short_words_are_a_machine() {
        let mut amd = Amd::new(AmdConfig::default(), RATE);
        let mut parts = vec![silence(300)];
        for _ in 0..6 {
            parts.push(voice(200));
            parts.push(silence(200));
        }
        parts.push(silence(2000));
        let ev = run(&mut amd, Instant::now(), &cat(&parts));
        let d = decision(&ev);
        assert_eq!(
            (d.result, d.cause),
            (AmdResult::Machine, AmdCause::MaxWords)
        );
        assert_eq!(d.words, 5);
        assert_eq!(d.pauses, 4);
    }

    #[test]
    fn hiss_on_the_line_is_not_voice() {
        // Deterministic noise at a mean level of about 500 (over the fixed
        // threshold of 256): the noise floor raises the threshold.
        let mut x = 12345u32;
        let noise: Vec<i16> = (0..RATE * 6)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 16) as i16 as f32 / 32768.0 * 1000.0) as i16
            })
            .collect();
        let mut pcm = cat(&[silence(0), voice(600)]);
        pcm = cat(&[vec![0; 4000], pcm, vec![0; 16000]]);
        for (p, n) in pcm.iter_mut().zip(&noise) {
            *p = p.saturating_add(*n);
        }
        let mut amd = Amd::new(AmdConfig::default(), RATE);
        let ev = run(&mut amd, Instant::now(), &pcm);
        assert_eq!(decision(&ev).result, AmdResult::Human, "{ev:?}");
    }

    #[test]
    fn works_at_16_khz() {
        let rate = 16_000;
        let up = |v: Vec<i16>| v.iter().flat_map(|&s| [s, s]).collect::<Vec<i16>>();
        let pcm = up(cat(&[
            silence(300),
            voice(2500),
            silence(300),
            tone(1000.0, 300, 9000.0),
            silence(500),
        ]));
        let mut amd = Amd::new(AmdConfig::default(), rate);
        let t0 = Instant::now();
        let mut ev = Vec::new();
        for (k, chunk) in pcm.chunks(320).enumerate() {
            amd.push(t0 + Duration::from_millis(20 * k as u64), chunk);
            ev.extend(std::iter::from_fn(|| amd.poll_event()));
        }
        assert_eq!(decision(&ev).result, AmdResult::Machine);
        let beep = ev.iter().find_map(|e| match e {
            AmdEvent::Beep(b) => Some(*b),
            _ => None,
        });
        assert!(
            beep.is_some_and(|b| b.at_ms.abs_diff(3100) <= 20 && b.hz.abs_diff(1000) <= 50),
            "{ev:?}"
        );
    }
}
