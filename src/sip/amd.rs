//! Answering-machine detection on an outbound call, sans-IO: the call core
//! feeds it the callee's audio after the answer ([`CallAmd::push`]) and
//! drains [`CallAmd::poll_step`]: reports for the registry, the webhook and
//! the record, and the route's `amd_action` on a machine (hang up, or hold
//! the agent back until the beep, play the message, then hang up). The
//! classifier itself is [`crate::media::amd`].

use std::collections::VecDeque;
use std::time::Instant;

use crate::calls::AmdReport;
use crate::media::amd::{Amd, AmdConfig, AmdEvent, AmdResult};

/// What the route does with a machine.
#[derive(Debug, Clone, PartialEq)]
pub enum AmdMode {
    /// The agent keeps the call; AMD only reports.
    Agent,
    Hangup,
    /// Play this audio (PCM, its rate) after the beep, then hang up.
    Message(Vec<i16>, u32),
}

/// The route's `amd_action` for a call, its message WAV read now (a file
/// that went missing since the profile loaded falls back to hanging up).
pub async fn mode_for(action: &crate::config::AmdAction) -> AmdMode {
    use crate::config::AmdAction as A;
    match action {
        A::Agent => AmdMode::Agent,
        A::Hangup => AmdMode::Hangup,
        A::Message(file) => {
            let parsed = match tokio::fs::read(file).await {
                Ok(b) => crate::media::wav::Wav::parse(&b).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match parsed {
                Ok(w) => AmdMode::Message(w.mono(), w.sample_rate),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "AMD message not loaded: hanging up on machines");
                    AmdMode::Hangup
                }
            }
        }
    }
}

/// What the call core must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum AmdStep {
    /// Something new to report: `kind` is the webhook's `result`
    /// (human / machine / notsure / beep / greeting_ended).
    Report {
        kind: &'static str,
        at_ms: u64,
        report: AmdReport,
    },
    /// A machine, and the route hangs up on machines.
    Hangup,
    /// Drop what the agent queued and play this (at the call's rate).
    PlayMessage(Vec<i16>),
}

/// One call's detector and what its route does with the result.
pub struct CallAmd {
    amd: Amd,
    mode: AmdMode,
    rate: u32,
    report: AmdReport,
    /// A machine under `Message`: the agent is not heard from now on.
    hold: bool,
    /// The message is queued; the call ends when it has played.
    message_queued: bool,
    steps: VecDeque<AmdStep>,
}

impl CallAmd {
    /// A detector on audio at `rate` Hz (the call's agent rate).
    pub fn new(mode: AmdMode, rate: u32) -> CallAmd {
        CallAmd {
            amd: Amd::new(AmdConfig::default(), rate),
            mode,
            rate,
            report: AmdReport::default(),
            hold: false,
            message_queued: false,
            steps: VecDeque::new(),
        }
    }

    pub fn push(&mut self, now: Instant, pcm: &[i16]) {
        if !self.amd.is_done() {
            self.amd.push(now, pcm);
            self.drain();
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.amd.is_done() {
            self.amd.handle_timeout(now);
            self.drain();
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.amd.poll_timeout()
    }

    pub fn poll_step(&mut self) -> Option<AmdStep> {
        self.steps.pop_front()
    }

    /// The agent's audio (and its clears) are held back: a machine whose
    /// route leaves a message.
    pub fn holds_agent(&self) -> bool {
        self.hold
    }

    /// The message has been queued for playout.
    pub fn message_queued(&self) -> bool {
        self.message_queued
    }

    fn drain(&mut self) {
        while let Some(ev) = self.amd.poll_event() {
            let (kind, at_ms, machine_done) = match ev {
                AmdEvent::Decided(d) => {
                    let (kind, at) = (d.result.as_str(), d.at_ms);
                    self.report.result = Some(d.result);
                    self.report.ms = Some(at);
                    self.report.decision = Some(d);
                    (kind, at, false)
                }
                AmdEvent::Beep(b) => {
                    self.report.beep = Some(b);
                    ("beep", b.at_ms + b.length_ms, true)
                }
                AmdEvent::GreetingEnded { at_ms } => {
                    self.report.greeting_ended_ms = Some(at_ms);
                    ("greeting_ended", at_ms, true)
                }
            };
            self.steps.push_back(AmdStep::Report {
                kind,
                at_ms,
                report: self.report.clone(),
            });
            if kind == "machine" {
                match &self.mode {
                    AmdMode::Agent => {}
                    AmdMode::Hangup => self.steps.push_back(AmdStep::Hangup),
                    AmdMode::Message(..) => self.hold = true,
                }
            }
            let machine = self.report.result == Some(AmdResult::Machine);
            if machine_done && machine && !self.message_queued {
                if let AmdMode::Message(pcm, rate) = &self.mode {
                    let pcm = crate::media::resample::resample_once(pcm, *rate, self.rate)
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "AMD message not resampled");
                            Vec::new()
                        });
                    self.message_queued = true;
                    self.steps.push_back(AmdStep::PlayMessage(pcm));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tone(hz: f32, ms: u32, amp: f32) -> Vec<i16> {
        (0..8 * ms)
            .map(|i| (amp * (2.0 * std::f32::consts::PI * hz * i as f32 / 8000.0).sin()) as i16)
            .collect()
    }

    /// A voice-like buzz (many harmonics: not a tone).
    fn voice(ms: u32) -> Vec<i16> {
        (0..8 * ms)
            .map(|i| {
                let t = i as f32 / 8000.0;
                let buzz: f32 = (1..20)
                    .map(|h| (2.0 * std::f32::consts::PI * 130.0 * h as f32 * t).sin() / h as f32)
                    .sum();
                (3000.0 * buzz) as i16
            })
            .collect()
    }

    fn run(amd: &mut CallAmd, pcm: &[i16]) -> Vec<(u64, AmdStep)> {
        let t0 = Instant::now();
        let mut steps = Vec::new();
        for (k, c) in pcm.chunks(160).enumerate() {
            amd.push(t0 + Duration::from_millis(20 * k as u64), c);
            while let Some(s) = amd.poll_step() {
                steps.push((20 * k as u64, s));
            }
        }
        steps
    }

    fn machine_with_beep() -> Vec<i16> {
        [
            vec![0; 3200],
            voice(3000),
            vec![0; 3200],
            tone(1000.0, 400, 9000.0),
            vec![0; 8000],
        ]
        .concat()
    }

    #[test]
    fn message_mode_holds_the_agent_from_the_decision_and_plays_after_the_beep() {
        let msg = vec![1000i16; 1600];
        let mut amd = CallAmd::new(AmdMode::Message(msg.clone(), 8000), 8000);
        let steps = run(&mut amd, &machine_with_beep());
        let kinds: Vec<&str> = steps
            .iter()
            .map(|(_, s)| match s {
                AmdStep::Report { kind, .. } => *kind,
                AmdStep::Hangup => "hangup",
                AmdStep::PlayMessage(_) => "play",
            })
            .collect();
        assert_eq!(kinds, ["machine", "beep", "play"]);
        assert!(amd.holds_agent() && amd.message_queued());
        // Played at the beep's end (400 + 3000 + 400 + 400 ms), not before.
        let (at, step) = &steps[2];
        assert!((4200..=4260).contains(at), "{at}");
        assert_eq!(step, &AmdStep::PlayMessage(msg));
    }

    #[test]
    fn hangup_mode_hangs_up_on_the_decision_and_agent_mode_only_reports() {
        let mut amd = CallAmd::new(AmdMode::Hangup, 8000);
        let steps = run(&mut amd, &machine_with_beep());
        assert!(matches!(steps[1].1, AmdStep::Hangup), "{steps:?}");
        let mut amd = CallAmd::new(AmdMode::Agent, 8000);
        let steps = run(&mut amd, &machine_with_beep());
        assert!(steps
            .iter()
            .all(|(_, s)| matches!(s, AmdStep::Report { .. })));
        assert!(!amd.holds_agent());
    }

    #[test]
    fn a_human_is_reported_and_never_gets_the_message() {
        let mut amd = CallAmd::new(AmdMode::Message(vec![1; 10], 8000), 8000);
        let pcm = [vec![0; 4000], voice(500), vec![0; 16000]].concat();
        let steps = run(&mut amd, &pcm);
        assert_eq!(steps.len(), 1, "{steps:?}");
        match &steps[0].1 {
            AmdStep::Report { kind, report, .. } => {
                assert_eq!(*kind, "human");
                assert_eq!(report.result, Some(AmdResult::Human));
            }
            other => panic!("{other:?}"),
        }
        assert!(!amd.holds_agent());
    }
}
