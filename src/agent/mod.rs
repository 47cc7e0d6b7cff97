//! AI bridges behind one trait: `echo`, `demo`, `say`, and the provider
//! bridges (OpenAI Realtime, AVR STS/pipeline, AudioSocket,
//! OpenAI-compatible), with `fallback` chains and circuit breakers.
//!
//! An [`Agent`] is sans-IO from the call task's point of view: it is handed
//! caller audio and DTMF and answers with audio to play and requests.
//! Provider bridges run their network client in a task of their own
//! ([`remote::Remote`]); the media path only ever does channel operations.

pub mod audiosocket;
pub mod avr_pipeline;
pub mod avr_sts;
pub mod error;
pub mod fallback;
pub mod openai_compat;
pub mod openai_realtime;
pub mod pipeline;
pub mod remote;
pub mod say;
pub mod turn_end;
pub mod webhooks;

pub use error::{AgentError, ProviderError, Stage};

use crate::config::AgentConfig;
use crate::media::wav::Wav;

/// What an agent asks the call to do after an input.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AgentOutput {
    /// Audio to queue for playout, 16-bit PCM at the call's rate.
    pub audio: Vec<i16>,
    /// Drop queued audio before queueing `audio` (barge-in).
    pub clear: bool,
    /// End the call.
    pub hangup: bool,
    /// End the call once the queued audio has been played.
    pub hangup_after_playout: bool,
    /// Things to report (transcripts, tool calls, transfer requests, errors).
    pub events: Vec<AgentEvent>,
    /// The audio from here on starts a reply whose first provider byte
    /// came at this instant (the call measures when it goes out).
    pub reply_started: Option<std::time::Instant>,
}

/// Per-turn latency: caller end of speech to the first agent audio handed
/// to the call, with the stages a provider exposes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TurnLatency {
    pub total_ms: u64,
    pub asr_ms: Option<u64>,
    pub llm_first_token_ms: Option<u64>,
    pub tts_first_byte_ms: Option<u64>,
    /// The silence waited from the caller's last voiced frame to the
    /// turn's end (`end_of_turn_ms` of the VAD, or less with adaptive end
    /// of turn).
    pub end_of_turn_wait_ms: Option<u64>,
    /// Agentline's own time on the way in: from the end of turn to the
    /// ASR request, and from the transcript to the LLM request.
    pub own_in_ms: Option<u64>,
    /// Agentline's own time on the way out: from the first TTS audio to
    /// the first RTP packet of it sent (filled in by the call).
    pub own_out_ms: Option<u64>,
}

/// Something an agent reports besides audio.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// `role` is `user` (the caller) or `agent`.
    Transcript {
        role: String,
        text: String,
    },
    /// The caller barged in: queued agent audio was dropped.
    Interruption,
    /// The agent asks to hand the caller to someone (`transfer_call` tool).
    Transfer {
        to: String,
    },
    /// A tool call the provider made (reported to webhooks).
    ToolCall {
        name: String,
        arguments: String,
    },
    Latency(TurnLatency),
    /// The provider cannot go on (no connection, dropped, error, silent);
    /// a fallback chain replaces it.
    Failed {
        reason: String,
    },
    /// A provider-side error that does not end the session.
    Error {
        message: String,
    },
    /// Which provider is speaking now (after a failover).
    Provider {
        kind: String,
    },
}

/// What a provider bridge knows about its call.
#[derive(Debug, Clone, Default)]
pub struct AgentContext {
    /// The call's id, sent as the AVR/AudioSocket UUID.
    pub uuid: String,
    pub caller: String,
    pub called: String,
    /// The negotiated codec: a G.711 call can pass mu-law straight through.
    pub codec: Option<crate::sdp::Codec>,
    /// Per-call overrides from the `call_initiated` webhook (`sts_url`, ...).
    pub overrides: std::collections::HashMap<String, String>,
    /// The route's text greeting, for the call's first agent only.
    pub greeting: Option<String>,
}

pub trait Agent: Send {
    fn kind(&self) -> &'static str;
    fn start(&mut self, _out: &mut AgentOutput) {}
    fn on_audio(&mut self, pcm: &[i16], out: &mut AgentOutput);
    /// Called on every media tick (each ptime) whether or not the caller's
    /// audio arrived: agents fed from elsewhere (a provider connection, the
    /// other leg of a bridge) hand over what they have here.
    fn poll(&mut self, _out: &mut AgentOutput) {}
    fn on_dtmf(&mut self, _digit: char, _out: &mut AgentOutput) {}
    /// The caller put the call on hold (or resumed it). Nothing is sent while
    /// held; an agent may queue music or stay silent.
    fn on_hold(&mut self, _held: bool, _out: &mut AgentOutput) {}
    /// The call dropped `dropped_ms` of this agent's queued audio (barge-in),
    /// so a provider can tell how much the caller really heard.
    fn on_cleared(&mut self, _dropped_ms: u64) {}
    /// The caller started or finished a turn (route VAD): barge-in and
    /// end-of-turn for agents that take turns.
    fn on_turn(&mut self, _event: crate::media::dsp::TurnEvent, _out: &mut AgentOutput) {}
    /// The PCM rate this agent hears and speaks; `None` takes the call's
    /// codec rate (no resampling at all).
    fn sample_rate(&self) -> Option<u32> {
        None
    }
    /// Keep at most this much audio queued (echo keeps its added delay low).
    fn max_queue_ms(&self) -> Option<u32> {
        None
    }
    /// Never queue more than this much of this agent's audio: what would
    /// go past it is dropped and counted. Remote providers have one (a
    /// provider streaming faster than real time for ever must not grow
    /// the call's memory without end).
    fn playout_cap_ms(&self) -> Option<u32> {
        None
    }
}

/// Builds the agent a route names (without its fallbacks).
pub fn build(cfg: &AgentConfig) -> Result<Box<dyn Agent>, AgentError> {
    build_for(cfg, &AgentContext::default())
}

/// Builds the agent a route names for one call.
pub fn build_for(cfg: &AgentConfig, ctx: &AgentContext) -> Result<Box<dyn Agent>, AgentError> {
    Ok(match cfg {
        AgentConfig::Echo { rate } => Box::new(Echo { rate: *rate }),
        AgentConfig::Demo => Box::new(Demo::new()?),
        AgentConfig::OpenaiRealtime { .. } => Box::new(openai_realtime::spawn(cfg, ctx)?),
        AgentConfig::Say { text, wav, then } => {
            Box::new(say::spawn(text.clone(), wav.clone(), then.clone())?)
        }
        AgentConfig::AvrSts { url } => Box::new(avr_sts::spawn(url, ctx)),
        AgentConfig::Audiosocket { addr } => Box::new(audiosocket::spawn(addr, ctx)),
        AgentConfig::OpenaiCompat {
            base_url,
            asr_url,
            llm_url,
            tts_url,
            asr_model,
            llm_model,
            tts_model,
            voice,
            api_key_env,
            system,
            preroll_ms,
            end_of_turn_min_ms,
            end_of_turn_max_ms,
            warm_up,
        } => Box::new(openai_compat::spawn(
            openai_compat::Settings::from_config(
                base_url.as_deref(),
                asr_url.as_deref(),
                llm_url.as_deref(),
                tts_url.as_deref(),
                asr_model,
                llm_model,
                tts_model,
                voice.as_deref(),
                api_key_env.as_deref(),
                system.as_deref(),
            )?
            .with_preroll(preroll_ms.unwrap_or(crate::config::DEFAULT_PREROLL_MS))
            .with_end_of_turn(end_of_turn_min_ms.map(|min| turn_end::Timing {
                min: std::time::Duration::from_millis(u64::from(min)),
                max: std::time::Duration::from_millis(u64::from(
                    end_of_turn_max_ms.unwrap_or(crate::config::DEFAULT_END_OF_TURN_MAX_MS),
                )),
            }))
            .with_warm_up(warm_up.unwrap_or(true)),
            ctx,
        )?),
        AgentConfig::AvrPipeline {
            asr_url,
            llm_url,
            tts_url,
            system,
            end_of_turn_max_ms,
        } => Box::new(avr_pipeline::spawn(
            avr_pipeline::Settings {
                asr_url: asr_url.clone(),
                llm_url: llm_url.clone(),
                tts_url: tts_url.clone(),
                system: system.clone(),
                // Transcripts come from the AVR ASR: only the longest wait
                // of a hesitation applies.
                end_of_turn: end_of_turn_max_ms.map(|max| turn_end::Timing {
                    min: std::time::Duration::ZERO,
                    max: std::time::Duration::from_millis(u64::from(max)),
                }),
            },
            ctx,
        )?),
    })
}

/// One side of a two-leg bridge (a transfer completed as a B2BUA): what this
/// leg's caller says is handed to the other leg, and the other leg's audio
/// is played here. When the other leg ends, this one hangs up.
pub struct Bridge {
    tx: std::sync::mpsc::SyncSender<Vec<i16>>,
    rx: std::sync::mpsc::Receiver<Vec<i16>>,
    rate: u32,
}

/// Frames in flight between the legs before new ones are dropped (1 s).
const BRIDGE_FRAMES: usize = 50;

/// Two connected bridge ends, both at `rate`.
pub fn bridge_pair(rate: u32) -> (Bridge, Bridge) {
    let (a_tx, b_rx) = std::sync::mpsc::sync_channel(BRIDGE_FRAMES);
    let (b_tx, a_rx) = std::sync::mpsc::sync_channel(BRIDGE_FRAMES);
    (
        Bridge {
            tx: a_tx,
            rx: a_rx,
            rate,
        },
        Bridge {
            tx: b_tx,
            rx: b_rx,
            rate,
        },
    )
}

impl Agent for Bridge {
    fn kind(&self) -> &'static str {
        "bridge"
    }
    fn on_audio(&mut self, pcm: &[i16], out: &mut AgentOutput) {
        use std::sync::mpsc::TrySendError;
        if let Err(TrySendError::Disconnected(_)) = self.tx.try_send(pcm.to_vec()) {
            out.hangup = true;
        }
        self.poll(out);
    }
    fn poll(&mut self, out: &mut AgentOutput) {
        use std::sync::mpsc::TryRecvError;
        loop {
            match self.rx.try_recv() {
                Ok(frame) => out.audio.extend_from_slice(&frame),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    out.hangup = true;
                    break;
                }
            }
        }
    }
    fn sample_rate(&self) -> Option<u32> {
        Some(self.rate)
    }
    fn max_queue_ms(&self) -> Option<u32> {
        Some(ECHO_MAX_QUEUE_MS * 2)
    }
}

/// Echo's queue may grow to this before the oldest audio is dropped (down
/// to one frame): enough for arrival jitter, small enough for < 40 ms
/// average added delay when the caller's clock drifts.
const ECHO_MAX_QUEUE_MS: u32 = 60;

/// Returns the caller's audio as it comes, at the codec's rate or at a
/// fixed `rate` (then the call resamples or transcodes both ways, as for an
/// AI agent at that rate).
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo {
    pub rate: Option<u32>,
}

impl Agent for Echo {
    fn kind(&self) -> &'static str {
        "echo"
    }
    fn sample_rate(&self) -> Option<u32> {
        self.rate
    }
    fn on_audio(&mut self, pcm: &[i16], out: &mut AgentOutput) {
        out.audio.extend_from_slice(pcm);
    }
    fn max_queue_ms(&self) -> Option<u32> {
        Some(ECHO_MAX_QUEUE_MS)
    }
}

const GREETING_WAV: &[u8] = include_bytes!("../../assets/greeting.wav");

/// Plays the embedded greeting, then echoes. Caller audio heard during the
/// greeting is not echoed; the greeting's length is measured in caller
/// samples received, which arrive in real time, so no clock is needed.
pub struct Demo {
    greeting: Option<Vec<i16>>,
    rate: u32,
    remaining: usize,
}

impl Demo {
    pub fn new() -> Result<Self, AgentError> {
        let wav = Wav::parse(GREETING_WAV)?;
        let pcm = wav.mono();
        // A short pause after the greeting before the echo starts.
        let remaining = pcm.len() + wav.sample_rate as usize / 5;
        Ok(Demo {
            greeting: Some(pcm),
            rate: wav.sample_rate,
            remaining,
        })
    }
}

impl Agent for Demo {
    fn kind(&self) -> &'static str {
        "demo"
    }
    /// The greeting's rate; the media session resamples for wideband calls.
    fn sample_rate(&self) -> Option<u32> {
        Some(self.rate)
    }
    fn start(&mut self, out: &mut AgentOutput) {
        if let Some(g) = self.greeting.take() {
            out.audio.extend(g);
        }
    }
    fn on_audio(&mut self, pcm: &[i16], out: &mut AgentOutput) {
        if self.remaining > 0 {
            self.remaining = self.remaining.saturating_sub(pcm.len());
            return;
        }
        out.audio.extend_from_slice(pcm);
    }
    fn max_queue_ms(&self) -> Option<u32> {
        (self.remaining == 0).then_some(ECHO_MAX_QUEUE_MS)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn echo_returns_what_it_hears() {
        let mut a = build(&AgentConfig::Echo { rate: None }).unwrap();
        let mut out = AgentOutput::default();
        a.on_audio(&[1, 2, 3], &mut out);
        assert_eq!(out.audio, vec![1, 2, 3]);
    }

    #[test]
    fn demo_greets_then_echoes_after_the_greeting() {
        let mut a = build(&AgentConfig::Demo).unwrap();
        let mut out = AgentOutput::default();
        a.start(&mut out);
        let greeting_len = out.audio.len();
        assert!(greeting_len > 8000);
        let mut during = AgentOutput::default();
        a.on_audio(&[7; 160], &mut during);
        assert!(during.audio.is_empty(), "no echo during the greeting");
        let mut fed = 160;
        let mut after = AgentOutput::default();
        while after.audio.is_empty() {
            a.on_audio(&[7; 160], &mut after);
            fed += 160;
            assert!(fed < greeting_len + 8000, "echo never started");
        }
        assert!(fed > greeting_len, "echo started before the greeting ended");
    }

    #[test]
    fn demo_speaks_at_its_greetings_rate_and_echo_at_the_calls() {
        assert_eq!(build(&AgentConfig::Demo).unwrap().sample_rate(), Some(8000));
        assert_eq!(
            build(&AgentConfig::Echo { rate: None })
                .unwrap()
                .sample_rate(),
            None
        );
        assert_eq!(
            build(&AgentConfig::Echo { rate: Some(8000) })
                .unwrap()
                .sample_rate(),
            Some(8000)
        );
    }

    #[test]
    fn bridge_carries_audio_both_ways_and_hangs_up_when_the_other_leg_goes() {
        let (mut a, mut b) = bridge_pair(8000);
        let mut out = AgentOutput::default();
        a.on_audio(&[1; 160], &mut out);
        assert!(out.audio.is_empty() && !out.hangup);
        b.on_audio(&[2; 160], &mut out);
        assert_eq!(out.audio, vec![1; 160], "b plays what a's caller said");
        let mut out = AgentOutput::default();
        a.on_audio(&[3; 160], &mut out);
        assert_eq!(out.audio, vec![2; 160]);
        drop(b);
        let mut out = AgentOutput::default();
        a.on_audio(&[4; 160], &mut out);
        assert!(out.hangup, "the other leg ended");
    }
}
