//! Adaptive end of turn for the pipeline agents (sans-IO, virtual time).
//!
//! The route's VAD ends a turn after `end_of_turn_ms` of silence (700 ms).
//! With `end_of_turn_min_ms` set, a pause of that length already has the
//! utterance so far transcribed (speculatively); when the transcript ends a
//! sentence (`.`, `?`, `!`, not after a filler or a conjunction) the turn
//! ends right there, with that transcript, instead of waiting for the VAD.
//! A transcript that ends on a hesitation ("I want to, um", a comma, "...")
//! makes the turn wait past the VAD's end, up to `end_of_turn_max_ms` of
//! silence. When the caller speaks again the speculative transcript is
//! discarded (the whole utterance is transcribed later), and after an early
//! end the caller's next words take the turn back while the agent has not
//! spoken (the pipeline re-sends the audio whole: no word is lost).
//!
//! Times are `Instant`s handed in by the caller (the pipeline passes
//! `Instant::now()`, tests a virtual clock); `next_timeout` says when to
//! call `handle_timeout` (a phone that stops sending in silence still ends
//! its turn).

use std::time::{Duration, Instant};

/// How a transcript ends, for the end-of-turn decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A finished sentence: `.`, `?` or `!` after a word that can end one.
    Complete,
    /// A hesitation: a filler ("um", "uh", "so"), a conjunction ("and",
    /// "because"), a comma or an ellipsis at the end.
    Hesitation,
    /// No end mark (the ASR does not punctuate, or the words run on).
    Open,
}

/// Words after which a sentence is not finished, even with a period
/// (ASRs punctuate every segment: "I want to, um." is not an answerable
/// question).
const HESITATION_WORDS: &[&str] = &[
    "um", "umm", "uh", "uhm", "er", "erm", "ah", "hmm", "mm", "so", "and", "or", "but", "because",
    "like", "well", "then", "if", "to", "the", "a", "an", "of", "with", "my", "is",
];

/// Classifies the end of a transcript.
pub fn ending(text: &str) -> Ending {
    let t = text
        .trim()
        .trim_end_matches(['"', '\'', ')', ']', '\u{201d}', '\u{2019}'])
        .trim_end();
    if t.is_empty() {
        return Ending::Open;
    }
    if t.ends_with("...") || t.ends_with('\u{2026}') || t.ends_with(',') || t.ends_with('-') {
        return Ending::Hesitation;
    }
    let last_word = t
        .rsplit(|c: char| c.is_whitespace() || c == ',')
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
        .to_lowercase();
    if HESITATION_WORDS.contains(&last_word.as_str()) {
        return Ending::Hesitation;
    }
    if t.ends_with(['.', '?', '!']) {
        Ending::Complete
    } else {
        Ending::Open
    }
}

/// The route's thresholds (agent options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Pause after which the utterance so far is transcribed.
    pub min: Duration,
    /// Longest silence a hesitation-final transcript waits for.
    pub max: Duration,
}

/// What the pipeline does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Transcribe the utterance so far; hand the result to
    /// [`EndOfTurn::transcript`] with this id.
    Speculate(u64),
    /// The turn ends now with this (speculative) transcript; `early` when
    /// the route's VAD has not ended the turn yet.
    EndWithText { text: String, early: bool },
    /// The turn ends now: transcribe the whole utterance (as without
    /// adaptive end of turn).
    EndWithAudio,
    /// After an early end the caller spoke again: the turn is theirs.
    Resumed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    /// In flight.
    Asked(u64),
    /// Came back, not used yet.
    Got(u64, Ending, String),
    /// Failed or empty: this pause goes the usual way.
    Failed,
}

/// Loud frames in a row that mean the caller speaks again after an early
/// end (60 ms at 20 ms frames, like the loop's energy VAD).
const RESUME_FRAMES: u32 = 3;

/// The end-of-turn decision of one call.
#[derive(Debug)]
pub struct EndOfTurn {
    timing: Option<Timing>,
    /// Between the caller's speech start and the end of their turn.
    collecting: bool,
    last_voice: Option<Instant>,
    spec: Option<Spec>,
    next_id: u64,
    /// The route's VAD ended the turn; we wait for a transcript or a
    /// hesitation's longer silence.
    vad_ended: bool,
    defer_until: Option<Instant>,
    /// The turn ended before the route's VAD said so.
    early: bool,
    loud_run: u32,
}

impl EndOfTurn {
    /// `None`: off; every turn ends at the route VAD's end.
    pub fn new(timing: Option<Timing>) -> EndOfTurn {
        EndOfTurn {
            timing,
            collecting: false,
            last_voice: None,
            spec: None,
            next_id: 0,
            vad_ended: false,
            defer_until: None,
            early: false,
            loud_run: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.timing.is_some()
    }

    /// The turn ended before the route's VAD said so (its end is still to
    /// come).
    pub fn early(&self) -> bool {
        self.early
    }

    fn reset(&mut self) {
        self.collecting = false;
        self.spec = None;
        self.vad_ended = false;
        self.defer_until = None;
    }

    /// The caller started speaking (the route's VAD).
    pub fn speech_started(&mut self, now: Instant) {
        self.reset();
        self.early = false;
        self.collecting = true;
        self.last_voice = Some(now);
    }

    /// One caller frame, `loud` when it has voice.
    pub fn frame(&mut self, now: Instant, loud: bool) -> Option<Step> {
        if !self.enabled() {
            return None;
        }
        if loud {
            self.last_voice = Some(now);
            self.loud_run += 1;
            if self.collecting {
                // The caller goes on: what was transcribed is not the
                // whole utterance.
                self.spec = None;
                self.defer_until = None;
                self.vad_ended = false;
            }
            if self.early && self.loud_run >= RESUME_FRAMES {
                self.early = false;
                self.reset();
                self.collecting = true;
                return Some(Step::Resumed);
            }
            return None;
        }
        self.loud_run = 0;
        self.handle_timeout(now)
    }

    /// A speculative transcript came back (`None`: it failed).
    pub fn transcript(&mut self, _now: Instant, id: u64, text: Option<String>) -> Option<Step> {
        if self.spec != Some(Spec::Asked(id)) {
            return None; // stale: the caller spoke since
        }
        let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
            self.spec = Some(Spec::Failed);
            return self.vad_ended.then(|| {
                self.reset();
                Step::EndWithAudio
            });
        };
        let e = ending(&text);
        match (e, self.vad_ended) {
            (Ending::Complete, _) | (Ending::Open, true) => {
                let early = !self.vad_ended;
                self.reset();
                self.early = early;
                Some(Step::EndWithText { text, early })
            }
            (Ending::Hesitation, true) => {
                self.spec = Some(Spec::Got(id, e, text));
                self.defer();
                None
            }
            (_, false) => {
                self.spec = Some(Spec::Got(id, e, text));
                None
            }
        }
    }

    fn defer(&mut self) {
        if let (Some(t), Some(v)) = (self.timing, self.last_voice) {
            self.defer_until = Some(v + t.max);
        }
    }

    /// The route's VAD ended the turn.
    pub fn vad_ended(&mut self, now: Instant) -> Option<Step> {
        if self.early {
            // Ended already; this is the VAD catching up.
            self.early = false;
            self.reset();
            return None;
        }
        if !self.enabled() {
            self.reset();
            return Some(Step::EndWithAudio);
        }
        self.vad_ended = true;
        match self.spec.clone() {
            Some(Spec::Asked(_)) => None, // its transcript decides
            Some(Spec::Got(_, Ending::Hesitation, _)) => {
                self.defer();
                self.handle_timeout(now)
            }
            Some(Spec::Got(_, _, text)) => {
                self.reset();
                Some(Step::EndWithText { text, early: false })
            }
            Some(Spec::Failed) | None => {
                self.reset();
                Some(Step::EndWithAudio)
            }
        }
    }

    /// When to call [`EndOfTurn::handle_timeout`] at the latest.
    pub fn next_timeout(&self) -> Option<Instant> {
        let t = self.timing?;
        let spec_due = match (self.collecting, &self.spec, self.vad_ended, self.last_voice) {
            (true, None, false, Some(v)) => Some(v + t.min),
            _ => None,
        };
        match (spec_due, self.defer_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Option<Step> {
        let t = self.timing?;
        if self.defer_until.is_some_and(|d| now >= d) {
            let text = match self.spec.take() {
                Some(Spec::Got(_, _, text)) => Some(text),
                _ => None,
            };
            self.reset();
            return Some(match text {
                Some(text) => Step::EndWithText { text, early: false },
                None => Step::EndWithAudio,
            });
        }
        let quiet_for = self.last_voice.map(|v| now.saturating_duration_since(v));
        if self.collecting && self.spec.is_none() && !self.vad_ended && quiet_for >= Some(t.min) {
            self.next_id += 1;
            self.spec = Some(Spec::Asked(self.next_id));
            return Some(Step::Speculate(self.next_id));
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_are_classified_by_how_they_end() {
        for t in [
            "What is the capital of France?",
            "I'd like to book a table.",
            "Yes!",
            "  Call me back tomorrow. ",
            "He said \"no.\"",
        ] {
            assert_eq!(ending(t), Ending::Complete, "{t}");
        }
        for t in [
            "I want to, um",
            "I want to, um.",
            "So...",
            "Let me think\u{2026}",
            "I need a room and",
            "I need a room because.",
            "My number is,",
            "Uh.",
            "I'd like to -",
            "Can you tell me the.",
        ] {
            assert_eq!(ending(t), Ending::Hesitation, "{t}");
        }
        for t in ["", "what is the capital of france", "Paris 3"] {
            assert_eq!(ending(t), Ending::Open, "{t}");
        }
    }

    const MIN: Duration = Duration::from_millis(300);
    const EOT: Duration = Duration::from_millis(700);
    const MAX: Duration = Duration::from_millis(1500);

    /// A caller in virtual time: 20 ms frames, the route's VAD ending the
    /// turn after EOT of silence, the ASR answering `asr` after it is asked.
    struct Sim {
        t0: Instant,
        eot: EndOfTurn,
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                t0: Instant::now(),
                eot: EndOfTurn::new(Some(Timing { min: MIN, max: MAX })),
            }
        }
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
        /// Speech from `from` to `to` ms, then silence to `until`; the
        /// speculative transcript is `text`, back `asr` ms after it was
        /// asked. Returns (ms, step) of every step.
        fn run(
            &mut self,
            from: u64,
            speech_to: u64,
            until: u64,
            text: &str,
            asr: u64,
        ) -> Vec<(u64, Step)> {
            let mut steps = Vec::new();
            let mut asked: Vec<(u64, u64)> = Vec::new(); // (due ms, id)
            self.eot.speech_started(self.at(from));
            let mut ms = from;
            while ms <= until {
                let now = self.at(ms);
                for &(_, id) in asked.iter().filter(|(d, _)| *d == ms) {
                    steps.extend(
                        self.eot
                            .transcript(now, id, Some(text.to_string()))
                            .map(|s| (ms, s)),
                    );
                }
                if let Some(s) = self.eot.frame(now, ms <= speech_to) {
                    if let Step::Speculate(id) = s {
                        asked.push((ms + asr, id));
                    }
                    steps.push((ms, s));
                }
                if ms == speech_to + EOT.as_millis() as u64 {
                    steps.extend(self.eot.vad_ended(now).map(|s| (ms, s)));
                }
                ms += 20;
            }
            steps
        }
    }

    #[test]
    fn a_finished_sentence_ends_the_turn_at_the_short_pause() {
        let mut s = Sim::new();
        let steps = s.run(0, 2000, 4000, "What is the capital of France?", 100);
        assert_eq!(
            steps,
            vec![
                (2300, Step::Speculate(1)),
                (
                    2400,
                    Step::EndWithText {
                        text: "What is the capital of France?".into(),
                        early: true
                    }
                )
            ],
            "ends 300 ms + the ASR's 100 ms after speech, not 700 ms; the VAD's end is ignored"
        );
    }

    #[test]
    fn a_hesitation_waits_past_the_vad_up_to_the_longest_silence() {
        let mut s = Sim::new();
        let steps = s.run(0, 2000, 4000, "I want to, um", 100);
        assert_eq!(
            steps,
            vec![
                (2300, Step::Speculate(1)),
                (
                    3500,
                    Step::EndWithText {
                        text: "I want to, um".into(),
                        early: false
                    }
                )
            ],
            "no end at 2400 (speculation) nor 2700 (VAD): at 2000 + 1500"
        );
    }

    #[test]
    fn a_slow_asr_is_waited_for_not_asked_twice() {
        // The transcript comes after the VAD's end: the turn ends on it
        // (the audio is not uploaded a second time).
        let mut s = Sim::new();
        let steps = s.run(0, 2000, 4000, "what is the capital of france", 600);
        assert_eq!(
            steps,
            vec![
                (2300, Step::Speculate(1)),
                (
                    2900,
                    Step::EndWithText {
                        text: "what is the capital of france".into(),
                        early: false
                    }
                )
            ]
        );
        // An unpunctuated one that comes before the VAD waits for it.
        let mut s = Sim::new();
        let steps = s.run(0, 2000, 4000, "what is the capital of france", 100);
        assert_eq!(
            steps.last().unwrap(),
            &(
                2700,
                Step::EndWithText {
                    text: "what is the capital of france".into(),
                    early: false
                }
            )
        );
    }

    #[test]
    fn speech_after_the_pause_discards_the_speculation() {
        let mut e = EndOfTurn::new(Some(Timing { min: MIN, max: MAX }));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        e.speech_started(at(0));
        assert_eq!(e.frame(at(1000), true), None);
        assert_eq!(e.next_timeout(), Some(at(1300)));
        assert_eq!(e.frame(at(1300), false), Some(Step::Speculate(1)));
        // The caller goes on before the transcript is back.
        assert_eq!(e.frame(at(1350), true), None);
        assert_eq!(
            e.transcript(at(1400), 1, Some("I want to fly.".into())),
            None,
            "stale: the utterance grew"
        );
        assert_eq!(e.frame(at(1700), false), Some(Step::Speculate(2)));
        assert_eq!(
            e.transcript(at(1750), 2, Some("I want to fly to Paris.".into())),
            Some(Step::EndWithText {
                text: "I want to fly to Paris.".into(),
                early: true
            })
        );
        // After the early end, the caller speaks again: the turn is theirs.
        assert_eq!(e.frame(at(1800), true), None);
        assert_eq!(e.frame(at(1820), true), None);
        assert_eq!(e.frame(at(1840), true), Some(Step::Resumed));
        // ... and it ends the usual way (speculation, then the VAD).
        assert_eq!(e.frame(at(2140), false), Some(Step::Speculate(3)));
        assert_eq!(e.transcript(at(2200), 3, None), None);
        assert_eq!(e.vad_ended(at(2540)), Some(Step::EndWithAudio));
    }

    #[test]
    fn off_ends_every_turn_at_the_vad() {
        let mut e = EndOfTurn::new(None);
        let t0 = Instant::now();
        e.speech_started(t0);
        for ms in (0..3000).step_by(20) {
            assert_eq!(e.frame(t0 + Duration::from_millis(ms), ms < 1000), None);
        }
        assert_eq!(e.next_timeout(), None);
        assert_eq!(e.vad_ended(t0), Some(Step::EndWithAudio));
    }

    #[test]
    fn a_phone_silent_in_pauses_still_ends_its_turn() {
        // No frames during silence (DTX): the timeouts do it.
        let mut e = EndOfTurn::new(Some(Timing { min: MIN, max: MAX }));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        e.speech_started(at(0));
        e.frame(at(500), true);
        assert_eq!(e.next_timeout(), Some(at(800)));
        assert_eq!(e.handle_timeout(at(800)), Some(Step::Speculate(1)));
        assert_eq!(e.transcript(at(900), 1, Some("So,".into())), None);
        assert_eq!(e.vad_ended(at(1200)), None);
        assert_eq!(e.next_timeout(), Some(at(2000)));
        assert_eq!(
            e.handle_timeout(at(2000)),
            Some(Step::EndWithText {
                text: "So,".into(),
                early: false
            })
        );
    }
}
