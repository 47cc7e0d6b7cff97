//! When caller speech over the agent is a barge-in and when it is only a
//! backchannel ("mm-hm", "yeah", "right"): sans-IO, driven by the route
//! VAD's turn events, its per-frame speech flags and the call's clock.
//!
//! The route VAD reports `SpeechStarted` once speech has lasted
//! `speech_start_ms` (100 ms by default), and `SpeechEnded` only after
//! `end_of_turn_ms` of silence (700 ms). While the agent talks, a start is
//! too early to cut it: listeners say "mm-hm" all the time. The start is
//! held until the speech has lasted `min` (the route's `barge_in_min_ms`,
//! 400 ms by default, pauses under [`GAP`] included). Speech that stops
//! before is a backchannel: neither its start nor the turn's end reaches
//! the agent, and the agent goes on. While the agent is silent, a start
//! passes at once (nothing to protect, no latency added to a normal turn).

use std::time::{Duration, Instant};

/// Silence that ends a held stretch of speech (a backchannel).
pub const GAP: Duration = Duration::from_millis(200);

/// What to do with a `SpeechStarted` or `SpeechEnded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the agent now.
    Pass,
    /// The agent was talking and the speech is long enough already: cut
    /// the agent, then hand the start over.
    Interrupt,
    /// Keep it from the agent (a start being timed, or the end of a turn
    /// already found to be a backchannel).
    Hold,
    /// Keep it from the agent: the turn ended while its start was still
    /// held, so it was a backchannel.
    Backchannel,
}

/// What a frame decided about held speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It went on long enough: cut the agent, hand the start over.
    BargeIn,
    /// It stopped short: a backchannel; the agent goes on.
    Backchannel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// A start kept from the agent while its speech is timed.
    Held {
        onset: Instant,
        last_voiced: Instant,
    },
    /// A backchannel: the turn detector still thinks the caller talks;
    /// its end is swallowed, and more speech is timed afresh.
    Swallow,
}

#[derive(Debug)]
pub struct BargeIn {
    min: Duration,
    /// How long the speech had lasted when the VAD reported its start.
    lead: Duration,
    state: State,
}

impl BargeIn {
    /// `min_ms`: speech needed to cut the agent; `speech_start_ms`: how
    /// much of it the VAD has already heard when it reports a start.
    pub fn new(min_ms: u32, speech_start_ms: u32) -> Self {
        Self {
            min: Duration::from_millis(min_ms.into()),
            lead: Duration::from_millis(speech_start_ms.into()),
            state: State::Idle,
        }
    }

    pub fn speech_started(&mut self, now: Instant, agent_talking: bool) -> Verdict {
        if !agent_talking {
            self.state = State::Idle;
            return Verdict::Pass;
        }
        if self.min <= self.lead {
            self.state = State::Idle;
            return Verdict::Interrupt;
        }
        self.state = State::Held {
            onset: now.checked_sub(self.lead).unwrap_or(now),
            last_voiced: now,
        };
        Verdict::Hold
    }

    pub fn speech_ended(&mut self) -> Verdict {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => Verdict::Pass,
            State::Held { .. } => Verdict::Backchannel,
            State::Swallow => Verdict::Hold,
        }
    }

    /// One frame's VAD verdict, while the call is up.
    pub fn frame(&mut self, now: Instant, voiced: bool) -> Option<Decision> {
        match &mut self.state {
            State::Idle => None,
            State::Held { onset, last_voiced } => {
                if voiced {
                    *last_voiced = now;
                    if now.duration_since(*onset) >= self.min {
                        self.state = State::Idle;
                        return Some(Decision::BargeIn);
                    }
                } else if now.duration_since(*last_voiced) >= GAP {
                    self.state = State::Swallow;
                    return Some(Decision::Backchannel);
                }
                None
            }
            State::Swallow => {
                if voiced {
                    self.state = State::Held {
                        onset: now,
                        last_voiced: now,
                    };
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds 20 ms frames from `from` (ms after t0) for `len` ms, all `voiced`
    /// or not; returns the decisions with their time.
    fn feed(
        b: &mut BargeIn,
        t0: Instant,
        from: u64,
        len: u64,
        voiced: bool,
    ) -> Vec<(u64, Decision)> {
        (0..len / 20)
            .filter_map(|k| {
                let t = from + k * 20;
                b.frame(t0 + ms(t), voiced).map(|d| (t, d))
            })
            .collect()
    }

    #[test]
    fn a_short_word_over_the_agent_is_a_backchannel_and_its_turn_is_swallowed() {
        let t0 = Instant::now();
        let mut b = BargeIn::new(400, 100);
        // 280 ms word: the VAD reports it 100 ms in.
        assert_eq!(b.speech_started(t0 + ms(100), true), Verdict::Hold);
        assert!(feed(&mut b, t0, 100, 180, true).is_empty());
        // Silence: 200 ms after the last voiced frame (260), a backchannel.
        assert_eq!(
            feed(&mut b, t0, 280, 400, false),
            vec![(460, Decision::Backchannel)]
        );
        // The turn detector's end (700 ms later) never reaches the agent.
        assert_eq!(b.speech_ended(), Verdict::Hold);
        // The next turn, with the agent silent, passes.
        assert_eq!(b.speech_started(t0 + ms(3000), false), Verdict::Pass);
        assert_eq!(b.speech_ended(), Verdict::Pass);
    }

    #[test]
    fn speech_that_goes_on_becomes_a_barge_in_at_the_minimum() {
        let t0 = Instant::now();
        let mut b = BargeIn::new(400, 100);
        assert_eq!(b.speech_started(t0 + ms(100), true), Verdict::Hold);
        // Short pauses inside the speech do not end it.
        assert!(feed(&mut b, t0, 100, 100, true).is_empty());
        assert!(feed(&mut b, t0, 200, 100, false).is_empty());
        assert_eq!(
            feed(&mut b, t0, 300, 300, true),
            vec![(400, Decision::BargeIn)]
        );
        // Its end is an ordinary end of turn.
        assert_eq!(b.speech_ended(), Verdict::Pass);
    }

    #[test]
    fn a_turn_that_ends_while_its_start_is_held_is_a_backchannel() {
        // A route with a short end_of_turn_ms: the turn detector ends the
        // turn before a 200 ms gap did.
        let t0 = Instant::now();
        let mut b = BargeIn::new(400, 100);
        assert_eq!(b.speech_started(t0 + ms(100), true), Verdict::Hold);
        assert!(feed(&mut b, t0, 100, 100, true).is_empty());
        assert!(feed(&mut b, t0, 200, 100, false).is_empty());
        assert_eq!(b.speech_ended(), Verdict::Backchannel);
        assert!(feed(&mut b, t0, 300, 1000, true).is_empty(), "nothing held");
    }

    #[test]
    fn talking_again_after_a_backchannel_is_timed_afresh() {
        let t0 = Instant::now();
        let mut b = BargeIn::new(400, 100);
        b.speech_started(t0 + ms(100), true);
        feed(&mut b, t0, 100, 100, true);
        assert_eq!(
            feed(&mut b, t0, 200, 200, false),
            vec![(380, Decision::Backchannel)]
        );
        // Within the turn detector's 700 ms: speech again, long this time.
        assert_eq!(
            feed(&mut b, t0, 400, 600, true),
            vec![(800, Decision::BargeIn)]
        );
        assert_eq!(b.speech_ended(), Verdict::Pass);
    }

    #[test]
    fn with_the_agent_silent_or_no_minimum_nothing_is_held() {
        let t0 = Instant::now();
        let mut b = BargeIn::new(400, 100);
        assert_eq!(b.speech_started(t0, false), Verdict::Pass);
        assert!(feed(&mut b, t0, 0, 1000, false).is_empty());
        assert_eq!(b.speech_ended(), Verdict::Pass);
        let mut b = BargeIn::new(0, 100);
        assert_eq!(b.speech_started(t0, true), Verdict::Interrupt);
        let mut b = BargeIn::new(100, 100);
        assert_eq!(b.speech_started(t0, true), Verdict::Interrupt);
        assert_eq!(b.speech_ended(), Verdict::Pass);
    }
}
