//! The bridge between the call's media loop (sync, one call per task) and a
//! provider client running in a task of its own. The media loop only does
//! non-blocking channel operations: caller audio is `try_send` (a stalled
//! provider loses frames instead of stalling the call), and agent
//! audio and events are drained on every 20 ms tick by [`Agent::poll`].

use std::future::Future;

use tokio::sync::mpsc;

use super::{Agent, AgentError, AgentEvent, AgentOutput};
use crate::media::dsp::TurnEvent;

/// What the call hands to a provider task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// One frame of caller audio at the agent's rate.
    Audio(Vec<i16>),
    Dtmf(char),
    /// Our VAD's view of the caller's turn.
    Turn(TurnEvent),
    Hold(bool),
    /// The call dropped this much queued agent audio (barge-in).
    Cleared {
        dropped_ms: u64,
    },
}

/// What a provider task hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Agent audio at the agent's rate, any length (re-chunked and paced by
    /// the media session).
    Audio(Vec<i16>),
    /// Drop queued audio now (the provider saw the caller barge in).
    Clear,
    Hangup,
    /// Hang up once the queued audio has been played.
    HangupAfterPlayout,
    Event(AgentEvent),
    /// The audio that follows starts a reply; its first provider byte came
    /// at this instant (for `own_out_ms`).
    ReplyStart(std::time::Instant),
}

/// Frames of caller audio buffered towards a provider (1 s at 20 ms).
const INPUT_FRAMES: usize = 50;

/// The most agent audio a call queues from a provider: replies arrive
/// faster than real time and are played out as they come; past this, a
/// provider that never stops sending has its audio dropped (counted in
/// the call's `tx_capped_ms` and `agentline_playout_capped_frames_total`).
pub const PLAYOUT_CAP_MS: u32 = 30_000;

/// An [`Agent`] whose work happens in a spawned task.
pub struct Remote {
    kind: &'static str,
    rate: u32,
    tx: mpsc::Sender<Input>,
    rx: mpsc::UnboundedReceiver<Output>,
    ended: bool,
    playout_cap_ms: Option<u32>,
}

/// The task's ends of the channels.
pub struct Io {
    pub inputs: mpsc::Receiver<Input>,
    pub outputs: mpsc::UnboundedSender<Output>,
}

impl Io {
    /// Hands something to the call; false once the call has gone.
    pub fn send(&self, o: Output) -> bool {
        self.outputs.send(o).is_ok()
    }
}

impl Remote {
    /// Spawns `run` with its channels. When `run` returns an error the agent
    /// reports [`AgentEvent::Failed`] (a fallback chain then takes over);
    /// when it returns `Ok` the provider ended the conversation (hangup).
    pub fn spawn<F, Fut>(kind: &'static str, rate: u32, run: F) -> Remote
    where
        F: FnOnce(Io) -> Fut,
        Fut: Future<Output = Result<(), AgentError>> + Send + 'static,
    {
        let (in_tx, in_rx) = mpsc::channel(INPUT_FRAMES);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let io = Io {
            inputs: in_rx,
            outputs: out_tx.clone(),
        };
        let fut = run(io);
        tokio::spawn(async move {
            let end = match fut.await {
                Ok(()) => Output::Hangup,
                Err(e) => {
                    tracing::warn!(provider = kind, error = %e, "agent provider failed");
                    // The string is for the API and webhooks (the call's
                    // `last_agent_error`).
                    Output::Event(AgentEvent::Failed {
                        reason: e.to_string(),
                    })
                }
            };
            let _ = out_tx.send(end);
        });
        Remote {
            kind,
            rate,
            tx: in_tx,
            rx: out_rx,
            ended: false,
            playout_cap_ms: Some(PLAYOUT_CAP_MS),
        }
    }

    /// Without the playout cap: for audio known to be finite and already
    /// in memory (`say`'s prompt, which may be longer than the cap).
    pub fn uncapped(mut self) -> Remote {
        self.playout_cap_ms = None;
        self
    }

    fn push(&mut self, i: Input) {
        match self.tx.try_send(i) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::trace!(
                    provider = self.kind,
                    "provider behind: caller frame dropped"
                )
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl Agent for Remote {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn on_audio(&mut self, pcm: &[i16], out: &mut AgentOutput) {
        self.push(Input::Audio(pcm.to_vec()));
        self.poll(out);
    }
    fn on_dtmf(&mut self, digit: char, _out: &mut AgentOutput) {
        self.push(Input::Dtmf(digit));
    }
    fn on_turn(&mut self, event: TurnEvent, _out: &mut AgentOutput) {
        self.push(Input::Turn(event));
    }
    fn on_hold(&mut self, held: bool, _out: &mut AgentOutput) {
        self.push(Input::Hold(held));
    }
    fn on_cleared(&mut self, dropped_ms: u64) {
        self.push(Input::Cleared { dropped_ms });
    }
    fn poll(&mut self, out: &mut AgentOutput) {
        if self.ended {
            return;
        }
        loop {
            match self.rx.try_recv() {
                Ok(Output::Audio(a)) => out.audio.extend_from_slice(&a),
                Ok(Output::Clear) => {
                    out.audio.clear();
                    out.reply_started = None;
                    out.clear = true;
                }
                // Marks the reply's first audio: only when nothing is
                // ahead of it in this batch (otherwise the mark would
                // point at older audio).
                Ok(Output::ReplyStart(at)) if out.audio.is_empty() => {
                    out.reply_started = Some(at);
                }
                Ok(Output::ReplyStart(_)) => {}
                Ok(Output::HangupAfterPlayout) => out.hangup_after_playout = true,
                Ok(Output::Hangup) => {
                    out.hangup = true;
                    self.ended = true;
                    break;
                }
                Ok(Output::Event(e)) => {
                    if matches!(e, AgentEvent::Failed { .. }) {
                        self.ended = true;
                        out.events.push(e);
                        break;
                    }
                    out.events.push(e);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.ended = true;
                    out.events.push(AgentEvent::Failed {
                        reason: "provider task ended".into(),
                    });
                    break;
                }
            }
        }
    }
    fn sample_rate(&self) -> Option<u32> {
        Some(self.rate)
    }
    fn playout_cap_ms(&self) -> Option<u32> {
        self.playout_cap_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn audio_goes_out_and_comes_back_through_the_task() {
        let mut r = Remote::spawn("test", 8000, |mut io: Io| async move {
            while let Some(i) = io.inputs.recv().await {
                match i {
                    Input::Audio(a) => {
                        io.send(Output::Audio(a.iter().map(|s| s + 1).collect()));
                    }
                    Input::Dtmf('#') => return Ok(()),
                    Input::Dtmf(_) => return Err(AgentError::Synthesis("boom".into())),
                    _ => {}
                }
            }
            Ok(())
        });
        let mut out = AgentOutput::default();
        r.on_audio(&[1, 2], &mut out);
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            r.poll(&mut out);
            if !out.audio.is_empty() {
                break;
            }
        }
        assert_eq!(out.audio, vec![2, 3]);
        r.on_dtmf('1', &mut out);
        let mut out = AgentOutput::default();
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            r.poll(&mut out);
            if !out.events.is_empty() {
                break;
            }
        }
        assert_eq!(
            out.events,
            vec![AgentEvent::Failed {
                reason: "speech synthesis: boom".into()
            }]
        );
    }
}
