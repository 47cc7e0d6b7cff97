//! Turn-taking shared by the pipeline agents (`openai_compat`,
//! `avr_pipeline`): caller utterances end a turn, the LLM's streamed text is
//! cut into sentences (`<think>` removed), each sentence goes to TTS as soon
//! as it is complete and its audio is handed to the call as it arrives.
//! Caller speech while the agent talks cancels the turn (barge-in).
//!
//! Latency per turn ([`TurnLatency`]): `total_ms` from the caller's end of
//! speech to the first agent audio handed to the call; `asr_ms` from the end
//! of speech to the transcript; `llm_first_token_ms` from the LLM request to
//! its first text; `tts_first_byte_ms` from the first TTS request to its
//! first audio byte.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::error::excerpt;
use super::remote::{Input, Io, Output};
use super::turn_end::{self, EndOfTurn, Ending, Step, Timing};
use super::{AgentError, AgentEvent, ProviderError, Stage, TurnLatency};
use crate::media::dsp::TurnEvent;

/// Frame level (RMS) that counts as the caller's voice for the adaptive
/// end of turn (the level `trim_utterance` keeps as sound).
const EOT_VOICE_RMS: f64 = 300.0;
/// Consecutive failed turns after which the provider is given up (failover).
pub const MAX_TURN_FAILURES: u32 = 2;
/// Connect timeout for every provider request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for response headers or for the next body chunk.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Msg {
    pub role: String,
    pub content: String,
}

impl Msg {
    pub fn new(role: &str, content: &str) -> Msg {
        Msg {
            role: role.into(),
            content: content.into(),
        }
    }
}

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a pipeline provider does; `openai_compat` and `avr_pipeline`
/// implement it.
pub trait Backend: Send + Sync + 'static {
    /// Transcribes one utterance (agent rate); `None` when transcripts come
    /// from elsewhere (a streaming ASR).
    fn transcribe(&self, _pcm: Vec<i16>) -> BoxFut<'_, Result<String, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::Unexpected {
                expected: "a provider that transcribes utterances",
                got: "one that only streams transcripts".into(),
            })
        })
    }
    /// Streams the answer to `messages` (the last one is the caller's) as
    /// text pieces into `tx`.
    fn llm(
        &self,
        messages: Vec<Msg>,
        tx: mpsc::UnboundedSender<String>,
    ) -> BoxFut<'_, Result<(), ProviderError>>;
    /// Streams `text` as audio at the agent rate into `tx`.
    fn tts(
        &self,
        text: String,
        tx: mpsc::UnboundedSender<Vec<i16>>,
    ) -> BoxFut<'_, Result<(), ProviderError>>;
}

/// Cuts streamed LLM text into sentences and drops `<think>...</think>`,
/// also when tags or sentences are split across pieces.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    raw: String,
    in_think: bool,
    text: String,
    /// Something was handed out already: only a reply's first sentence is
    /// cut at a clause (the later ones are synthesized while the first
    /// plays, so their wait is not heard).
    started: bool,
}

/// A reply's first sentence longer than this goes to TTS clause by clause
/// (its first clause at once, not after the whole sentence streamed).
pub const FIRST_CLAUSE_MIN_CHARS: usize = 60;
/// Words a first clause needs before its cut (shorter ones sound clipped).
const FIRST_CLAUSE_MIN_WORDS: usize = 4;

/// Where the first clause of `text` ends (after its `,` `;` `:` or dash),
/// when it has at least [`FIRST_CLAUSE_MIN_WORDS`] words and white space
/// follows the mark ("1,000" and "a-b" do not cut).
fn first_clause_end(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let mark_len = match b[i] {
            b',' | b';' | b':' => 1,
            // " - " (a spaced hyphen), an en or em dash.
            b'-' if i > 0 && b[i - 1] == b' ' => 1,
            _ if b[i..].starts_with("\u{2013}".as_bytes())
                || b[i..].starts_with("\u{2014}".as_bytes()) =>
            {
                3
            }
            _ => 0,
        };
        if mark_len > 0 {
            let end = i + mark_len;
            let words = text[..i].split_whitespace().count();
            if words >= FIRST_CLAUSE_MIN_WORDS
                && b.get(end).is_some_and(|c| c.is_ascii_whitespace())
            {
                return Some(end);
            }
        }
        i += 1;
    }
    None
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// How much of the end of `s` could be the start of `tag`.
fn partial_tag_len(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| {
            s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..])
        })
        .unwrap_or(0)
}

impl SentenceSplitter {
    /// Adds a piece; returns the sentences it completed.
    pub fn push(&mut self, piece: &str) -> Vec<String> {
        self.raw.push_str(piece);
        loop {
            if self.in_think {
                match self.raw.find(THINK_CLOSE) {
                    Some(i) => {
                        self.raw.drain(..i + THINK_CLOSE.len());
                        self.in_think = false;
                    }
                    None => {
                        // Keep only what may be the start of the closing tag.
                        let keep = partial_tag_len(&self.raw, THINK_CLOSE);
                        let cut = self.raw.len() - keep;
                        self.raw.drain(..cut);
                        break;
                    }
                }
            } else {
                match self.raw.find(THINK_OPEN) {
                    Some(i) => {
                        self.text.push_str(&self.raw[..i]);
                        self.raw.drain(..i + THINK_OPEN.len());
                        self.in_think = true;
                    }
                    None => {
                        let keep = partial_tag_len(&self.raw, THINK_OPEN);
                        let cut = self.raw.len() - keep;
                        self.text.push_str(&self.raw[..cut]);
                        self.raw.drain(..cut);
                        break;
                    }
                }
            }
        }
        self.take_sentences(false)
    }

    /// The rest of the text once the stream ended.
    pub fn finish(&mut self) -> Vec<String> {
        if !self.in_think {
            let rest = std::mem::take(&mut self.raw);
            self.text.push_str(&rest);
        }
        self.raw.clear();
        self.take_sentences(true)
    }

    fn take_sentences(&mut self, all: bool) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let b = self.text.as_bytes();
            // A sentence ends at a newline, or at . ! ? followed by white
            // space (so "3.5" and "e.g." inside words do not cut).
            let mut end = None;
            for (i, &c) in b.iter().enumerate() {
                if c == b'\n' {
                    end = Some(i + 1);
                    break;
                }
                if matches!(c, b'.' | b'!' | b'?') {
                    match b.get(i + 1) {
                        Some(n) if n.is_ascii_whitespace() => {
                            end = Some(i + 1);
                            break;
                        }
                        Some(_) => {}
                        None if all => {}
                        None => break, // wait: "3." may continue as "3.5"
                    }
                }
            }
            // No sentence end yet: a long first sentence gives its first
            // clause now.
            let end = match end {
                Some(e) => e,
                None if !all
                    && !self.started
                    && self.text.trim().len() > FIRST_CLAUSE_MIN_CHARS =>
                {
                    match first_clause_end(&self.text) {
                        Some(e) => e,
                        None => break,
                    }
                }
                None => break,
            };
            let s: String = self.text.drain(..end).collect();
            let s = s.trim();
            if !s.is_empty() {
                out.push(s.to_string());
                self.started = true;
            }
        }
        if all {
            let s = std::mem::take(&mut self.text);
            let s = s.trim();
            if !s.is_empty() {
                out.push(s.to_string());
            }
        }
        out
    }
}

pub fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    (pcm.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / pcm.len() as f64).sqrt()
}

/// Simple energy VAD for when the route's VAD is off: 3 loud frames start
/// speech, `end_ms` of quiet ends it.
pub struct EnergyVad {
    threshold: f64,
    end_ms: u32,
    loud_run: u32,
    quiet_ms: u32,
    speaking: bool,
}

impl EnergyVad {
    pub fn new(threshold: f64, end_ms: u32) -> EnergyVad {
        EnergyVad {
            threshold,
            end_ms,
            loud_run: 0,
            quiet_ms: 0,
            speaking: false,
        }
    }

    pub fn feed(&mut self, frame: &[i16], rate: u32) -> Option<TurnEvent> {
        let ms = (frame.len() as u64 * 1000 / rate.max(1) as u64) as u32;
        if rms(frame) >= self.threshold {
            self.loud_run += 1;
            self.quiet_ms = 0;
            if !self.speaking && self.loud_run >= 3 {
                self.speaking = true;
                return Some(TurnEvent::SpeechStarted);
            }
        } else {
            self.loud_run = 0;
            if self.speaking {
                self.quiet_ms += ms;
                if self.quiet_ms >= self.end_ms {
                    self.speaking = false;
                    return Some(TurnEvent::SpeechEnded);
                }
            }
        }
        None
    }
}

/// Call-wide view of what the agent said and when it will have been heard.
#[derive(Default)]
struct Speaking {
    /// When the audio handed out so far ends playing (estimate).
    play_until: Option<Instant>,
    /// The current turn's caller text and the agent text sent to TTS.
    user_text: Option<String>,
    agent_text: String,
    first_audio: bool,
}

fn lock(s: &Mutex<Speaking>) -> std::sync::MutexGuard<'_, Speaking> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A turn's input kept until the agent speaks (see `pending`).
enum Carry {
    Audio(Vec<i16>),
    Text(String),
}

/// What starts a turn.
pub enum TurnInput {
    /// An utterance to transcribe (agent rate).
    Audio(Vec<i16>),
    /// A transcript from a streaming ASR, `asr_ms` after the end of speech.
    Text(String, Option<u64>),
    /// Words the agent says itself (the route's greeting): straight to TTS.
    Say(String),
}

struct Turn {
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

/// A turn's clock: where its latency starts and agentline's own time
/// spent before the first provider request.
#[derive(Debug, Clone, Copy)]
struct TurnClock {
    /// The end of the deliberate end-of-turn wait (what `total_ms`
    /// counts from): the VAD's end, or for a speculative transcript the
    /// moment its ASR request went out.
    t0: Instant,
    /// When the turn's input was ready (the loop's decision).
    ready: Instant,
    /// Our own time already spent on this turn's input (the speculative
    /// upload's preparation).
    own_before: Duration,
    /// The silence waited from the last voiced frame to `t0`.
    wait_ms: Option<u64>,
}

impl TurnClock {
    fn at(now: Instant) -> TurnClock {
        TurnClock {
            t0: now,
            ready: now,
            own_before: Duration::ZERO,
            wait_ms: None,
        }
    }
}

/// A speculative transcription of the utterance so far.
struct SpecTask {
    id: u64,
    decided: Instant,
    task: tokio::task::JoinHandle<(Instant, Result<String, ProviderError>)>,
}

/// One turn: transcript (if needed), LLM streamed into sentences, each to
/// TTS, audio to the call.
async fn run_turn(
    backend: Arc<dyn Backend>,
    mut history: Vec<Msg>,
    input: TurnInput,
    clock: TurnClock,
    rate: u32,
    out: mpsc::UnboundedSender<Output>,
    speaking: Arc<Mutex<Speaking>>,
) -> Result<(), AgentError> {
    let t0 = clock.t0;
    // Agentline's own share on the way in: before the ASR request and
    // between the transcript and the LLM request.
    let mut own_in = clock.own_before;
    // A greeting is the agent's own words: no caller text, no LLM, no
    // turn latency; its sentences go through the same TTS path.
    let (text, asr_ms, greeting, text_ready) = match input {
        TurnInput::Say(t) => (t, None, true, Instant::now()),
        TurnInput::Text(t, ms) => (t, ms, false, clock.ready),
        TurnInput::Audio(pcm) => {
            own_in += clock.ready.elapsed();
            let t = backend
                .transcribe(pcm)
                .await
                .map_err(AgentError::stage(Stage::Asr))?;
            (
                t,
                Some(t0.elapsed().as_millis() as u64),
                false,
                Instant::now(),
            )
        }
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        return Ok(());
    }
    if !greeting {
        let _ = out.send(Output::Event(AgentEvent::Transcript {
            role: "user".into(),
            text: text.clone(),
        }));
        lock(&speaking).user_text = Some(text.clone());
        history.push(Msg::new("user", &text));
    }

    let (piece_tx, mut piece_rx) = mpsc::unbounded_channel::<String>();
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<String>();
    let llm_started = Instant::now();
    let llm_first = Arc::new(Mutex::new(None::<u64>));
    let own_llm = Arc::new(Mutex::new(Duration::ZERO));
    let llm = {
        let backend = backend.clone();
        let own_llm = own_llm.clone();
        async move {
            *own_llm.lock().unwrap_or_else(|p| p.into_inner()) = text_ready.elapsed();
            if greeting {
                let _ = piece_tx.send(text);
                return Ok(());
            }
            backend
                .llm(history, piece_tx)
                .await
                .map_err(AgentError::stage(Stage::Llm))
        }
    };
    let split = {
        let llm_first = llm_first.clone();
        async move {
            let mut sp = SentenceSplitter::default();
            while let Some(p) = piece_rx.recv().await {
                if !p.is_empty() {
                    let mut f = llm_first.lock().unwrap_or_else(|p| p.into_inner());
                    f.get_or_insert(llm_started.elapsed().as_millis() as u64);
                }
                for s in sp.push(&p) {
                    let _ = sent_tx.send(s);
                }
            }
            for s in sp.finish() {
                let _ = sent_tx.send(s);
            }
            Ok::<(), AgentError>(())
        }
    };
    let speak = {
        let backend = backend.clone();
        let out = out.clone();
        let speaking = speaking.clone();
        async move {
            let mut tts_first: Option<u64> = None;
            let mut said = String::new();
            while let Some(sentence) = sent_rx.recv().await {
                {
                    let mut s = lock(&speaking);
                    if !s.agent_text.is_empty() {
                        s.agent_text.push(' ');
                    }
                    s.agent_text.push_str(&sentence);
                }
                let (atx, mut arx) = mpsc::unbounded_channel::<Vec<i16>>();
                let tts_started = Instant::now();
                let req = backend.tts(sentence.clone(), atx);
                let forward = async {
                    while let Some(a) = arx.recv().await {
                        if a.is_empty() {
                            continue;
                        }
                        let now = Instant::now();
                        let first = {
                            let mut s = lock(&speaking);
                            let start = s.play_until.filter(|&u| u > now).unwrap_or(now);
                            s.play_until = Some(
                                start
                                    + Duration::from_micros(
                                        a.len() as u64 * 1_000_000 / rate as u64,
                                    ),
                            );
                            !std::mem::replace(&mut s.first_audio, true)
                        };
                        if tts_first.is_none() {
                            tts_first = Some(tts_started.elapsed().as_millis() as u64);
                        }
                        if first && !greeting {
                            // Before the audio: the call reports the turn,
                            // then (`own_out_ms`) when its first packet went.
                            let own = own_in + *own_llm.lock().unwrap_or_else(|p| p.into_inner());
                            let l = TurnLatency {
                                total_ms: t0.elapsed().as_millis() as u64,
                                asr_ms,
                                llm_first_token_ms: *llm_first
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner()),
                                tts_first_byte_ms: tts_first,
                                end_of_turn_wait_ms: clock.wait_ms,
                                own_in_ms: Some(own.as_millis() as u64),
                                own_out_ms: None,
                            };
                            let _ = out.send(Output::Event(AgentEvent::Latency(l)));
                            let _ = out.send(Output::ReplyStart(now));
                        }
                        let _ = out.send(Output::Audio(a));
                    }
                };
                let (r, ()) = tokio::join!(req, forward);
                r.map_err(AgentError::stage(Stage::Tts))?;
                if !said.is_empty() {
                    said.push(' ');
                }
                said.push_str(&sentence);
            }
            if !said.is_empty() {
                let _ = out.send(Output::Event(AgentEvent::Transcript {
                    role: "agent".into(),
                    text: said,
                }));
            }
            Ok::<(), AgentError>(())
        }
    };
    tokio::try_join!(llm, split, speak)?;
    Ok(())
}

/// How the agent hears the caller.
pub struct LoopConfig {
    pub rate: u32,
    pub system: Option<String>,
    /// Collect utterances and transcribe them (`openai_compat`); otherwise
    /// transcripts come from `transcripts`.
    pub collect_utterances: bool,
    /// Said first, as soon as the call starts (the route's `greeting`).
    pub greeting: Option<String>,
    /// With `collect_utterances`: audio kept from before the VAD's start.
    pub preroll_ms: u32,
    /// With `collect_utterances`: adaptive end of turn (see
    /// [`super::turn_end`]); `None` ends every turn at the route's VAD.
    /// With streamed transcripts: one ending on a hesitation waits for the
    /// next (joined to it) until `max` of silence after the caller's last
    /// voiced frame.
    pub end_of_turn: Option<Timing>,
}

/// Hands caller audio to a streaming ASR (`avr_pipeline`).
pub type AudioSink = Box<dyn FnMut(&[i16]) + Send>;
/// Transcripts of a streaming ASR: `Ok(text)` per utterance, `Err` when the
/// stream broke.
pub type Transcripts = mpsc::UnboundedReceiver<Result<String, ProviderError>>;
/// Opens a new streaming ASR request.
pub type RestartAsr = Box<dyn FnMut() -> Transcripts + Send>;

/// The conversation loop of one call. `transcripts` (streaming ASR) yields
/// `Ok(text)` per utterance and `Err` when the ASR stream broke (it is
/// `restart`ed; repeated breaks fail the agent).
pub async fn conversation(
    mut io: Io,
    backend: Arc<dyn Backend>,
    cfg: LoopConfig,
    mut audio_sink: Option<AudioSink>,
    mut transcripts: Option<Transcripts>,
    mut restart: Option<RestartAsr>,
) -> Result<(), AgentError> {
    let rate = cfg.rate;
    let mut history: Vec<Msg> = Vec::new();
    if let Some(s) = cfg.system.as_deref().filter(|s| !s.trim().is_empty()) {
        history.push(Msg::new("system", s));
    }
    let speaking = Arc::new(Mutex::new(Speaking::default()));
    let mut evad = EnergyVad::new(500.0, 700);
    let mut route_vad = false;
    // The route VAD reports speech 120-180 ms after its onset, and later at
    // the start of a call (its first 200 ms never count): keep a second of
    // audio from before, trimmed to the sound below.
    let preroll_len = (rate as u64 * cfg.preroll_ms as u64 / 1000) as usize;
    let mut preroll: VecDeque<i16> = VecDeque::with_capacity(preroll_len);
    let mut utterance: Option<Vec<i16>> = None;
    let mut speech_ended: Option<Instant> = None;
    // The last caller frame with sound: the end of speech when a streaming
    // ASR answers before our VAD's end of turn.
    let mut last_loud: Option<Instant> = None;
    let mut turn: Option<Turn> = None;
    // What the turn in flight was started from, while the agent has not
    // said anything yet: if the caller goes on talking (a pause
    // mid-sentence ended the turn too early), the next turn starts from
    // this and what follows, so no word of the question is lost.
    let mut pending: Option<Carry> = None;
    // Text of a turn cut short that way, for the streaming ASR's next
    // transcript.
    let mut resumed_text: Option<String> = None;
    let mut failures = 0u32;
    let mut asr_failures = 0u32;
    let mut eot = EndOfTurn::new(cfg.end_of_turn.filter(|_| cfg.collect_utterances));
    let mut spec: Option<SpecTask> = None;
    // The last speculative transcription: (ASR time, our time before its
    // request, when the request was made).
    let mut spec_done: Option<(Duration, Duration, Instant)> = None;
    // A streamed transcript ending on a hesitation, held until the next
    // one or its deadline: (text, deadline, asr_ms).
    let mut held: Option<(String, Instant, Option<u64>)> = None;
    let hold_max = cfg
        .end_of_turn
        .filter(|_| !cfg.collect_utterances)
        .map(|t| t.max);
    if let Some(text) = cfg.greeting.clone() {
        turn = Some(Turn {
            task: tokio::spawn(run_turn(
                backend.clone(),
                history.clone(),
                TurnInput::Say(text),
                TurnClock::at(Instant::now()),
                rate,
                io.outputs.clone(),
                speaking.clone(),
            )),
        });
    }

    loop {
        enum Ev {
            In(Option<Input>),
            Transcript(Option<Result<String, ProviderError>>),
            TurnDone(Result<(), AgentError>),
            /// A speculative transcript: (id, when its request was made,
            /// the text).
            Spec(u64, Option<Instant>, Option<String>),
            EotTimeout,
            HeldDue,
        }
        let ev = {
            let turn_fut = async {
                match turn.as_mut() {
                    Some(t) => match (&mut t.task).await {
                        Ok(r) => r,
                        Err(e) => Err(AgentError::TaskEnded(format!("turn task: {e}"))),
                    },
                    None => std::future::pending().await,
                }
            };
            let tr_fut = async {
                match transcripts.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let spec_fut = async {
                match spec.as_mut() {
                    Some(s) => match (&mut s.task).await {
                        Ok((called, Ok(text))) => Ev::Spec(s.id, Some(called), Some(text)),
                        Ok((called, Err(e))) => {
                            tracing::debug!(error = %e, "speculative transcription failed");
                            Ev::Spec(s.id, Some(called), None)
                        }
                        Err(_) => Ev::Spec(s.id, None, None),
                    },
                    None => std::future::pending().await,
                }
            };
            let eot_due = eot.next_timeout();
            let held_due = held.as_ref().map(|h| h.1);
            let held_fut = async {
                match held_due {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let eot_fut = async {
                match eot_due {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                i = io.inputs.recv() => Ev::In(i),
                t = tr_fut => Ev::Transcript(t),
                r = turn_fut => Ev::TurnDone(r),
                s = spec_fut => s,
                () = eot_fut => Ev::EotTimeout,
                () = held_fut => Ev::HeldDue,
            }
        };
        let mut turn_event: Option<TurnEvent> = None;
        let mut start: Option<TurnInput> = None;
        let mut step: Option<Step> = None;
        // The clock of a turn started here, and what to carry if the
        // caller goes on (default: the input itself).
        let mut clock: Option<TurnClock> = None;
        let mut carry: Option<Carry> = None;
        match ev {
            Ev::In(None) => {
                if let Some(t) = turn.take() {
                    t.task.abort();
                }
                if let Some(s) = spec.take() {
                    s.task.abort();
                }
                return Ok(());
            }
            Ev::EotTimeout => step = eot.handle_timeout(Instant::now()),
            Ev::HeldDue => {
                if let Some((text, _, asr_ms)) = held.take() {
                    tracing::debug!("hesitation: no more words, the turn ends");
                    start = Some(TurnInput::Text(text, asr_ms));
                }
            }
            Ev::Spec(id, called, text) => {
                let now = Instant::now();
                if let Some(s) = spec.take() {
                    // How long the ASR took; our share is the time before
                    // the request was made.
                    let asked = called.unwrap_or(s.decided);
                    spec_done = Some((
                        now.duration_since(asked),
                        asked.saturating_duration_since(s.decided),
                        asked,
                    ));
                }
                step = eot.transcript(now, id, text);
            }
            Ev::In(Some(Input::Audio(frame))) => {
                if let Some(sink) = audio_sink.as_mut() {
                    sink(&frame);
                }
                if cfg.collect_utterances {
                    match utterance.as_mut() {
                        Some(u) => u.extend_from_slice(&frame),
                        None => {
                            preroll.extend(frame.iter().copied());
                            while preroll.len() > preroll_len {
                                preroll.pop_front();
                            }
                        }
                    }
                }
                let loud = rms(&frame) >= 500.0;
                if loud {
                    last_loud = Some(Instant::now());
                }
                if eot.enabled() {
                    // A lower bar than `loud`: soft consonants inside a
                    // word must not look like a pause.
                    step = eot.frame(Instant::now(), rms(&frame) >= EOT_VOICE_RMS);
                }
                let e = evad.feed(&frame, rate);
                if !route_vad {
                    turn_event = e;
                }
            }
            Ev::In(Some(Input::Turn(e))) => {
                route_vad = true;
                turn_event = Some(e);
            }
            Ev::In(Some(Input::Cleared { dropped_ms })) => {
                tracing::debug!(dropped_ms, "call dropped queued agent audio");
                lock(&speaking).play_until = None;
            }
            Ev::In(Some(_)) => {}
            Ev::Transcript(r @ (None | Some(Err(_)))) => {
                let e = match r {
                    Some(Err(e)) => e,
                    _ => ProviderError::Closed {
                        who: "the ASR",
                        detail: Some("stream ended".into()),
                    },
                };
                let e = AgentError::Stage {
                    stage: Stage::Asr,
                    source: e,
                };
                asr_failures += 1;
                let _ = io.send(Output::Event(AgentEvent::Error {
                    message: e.to_string(),
                }));
                if asr_failures >= MAX_TURN_FAILURES {
                    return Err(AgentError::GaveUp {
                        what: "the ASR stream",
                        failures: asr_failures,
                        last: Box::new(e),
                    });
                }
                transcripts = restart.as_mut().map(|r| r());
            }
            Ev::Transcript(Some(Ok(text))) => {
                asr_failures = 0;
                let now = Instant::now();
                let recent = |t: &Instant| now.duration_since(*t) < Duration::from_secs(3);
                let ended = speech_ended
                    .filter(recent)
                    .or(last_loud.filter(recent))
                    .unwrap_or(now);
                let asr_ms = now.duration_since(ended).as_millis() as u64;
                speech_ended = Some(ended);
                if !text.trim().is_empty() {
                    let unheard = turn.is_some() && !lock(&speaking).first_audio;
                    let before = match (resumed_text.take(), &pending) {
                        (Some(t), _) => Some(t),
                        (None, Some(Carry::Text(t))) if unheard => Some(t.clone()),
                        _ => None,
                    };
                    let text = match before {
                        Some(b) => format!("{} {}", b.trim_end(), text.trim_start()),
                        None => text,
                    };
                    let text = match held.take() {
                        Some((h, _, _)) => format!("{} {}", h.trim_end(), text.trim_start()),
                        None => text,
                    };
                    match hold_max {
                        Some(max) if turn_end::ending(&text) == Ending::Hesitation => {
                            let base = last_loud.filter(recent).unwrap_or(now);
                            tracing::debug!("transcript ends on a hesitation: waiting for more");
                            held = Some((text, base + max, Some(asr_ms)));
                        }
                        _ => start = Some(TurnInput::Text(text, Some(asr_ms))),
                    }
                }
            }
            Ev::TurnDone(r) => {
                turn = None;
                pending = None;
                let (user, agent) = {
                    let mut s = lock(&speaking);
                    (s.user_text.take(), std::mem::take(&mut s.agent_text))
                };
                match user {
                    Some(u) => {
                        history.push(Msg::new("user", &u));
                        if !agent.is_empty() {
                            history.push(Msg::new("assistant", &agent));
                        }
                    }
                    // The greeting: the agent spoke first.
                    None if !agent.is_empty() => history.push(Msg::new("assistant", &agent)),
                    None => {}
                }
                match r {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "pipeline turn failed");
                        let _ = io.send(Output::Event(AgentEvent::Error {
                            message: e.to_string(),
                        }));
                        if failures >= MAX_TURN_FAILURES {
                            return Err(AgentError::GaveUp {
                                what: "turns",
                                failures,
                                last: Box::new(e),
                            });
                        }
                    }
                }
            }
        }

        match turn_event {
            Some(TurnEvent::SpeechStarted) => {
                let now = Instant::now();
                if eot.enabled() {
                    eot.speech_started(now);
                    if let Some(s) = spec.take() {
                        s.task.abort();
                    }
                }
                let (playing, heard) = {
                    let s = lock(&speaking);
                    (s.play_until.is_some_and(|u| u > now), s.first_audio)
                };
                let mut carried: Vec<i16> = Vec::new();
                if turn.is_some() && !heard && !playing {
                    // The caller goes on before the agent said a word: the
                    // last turn ended mid-sentence. Start over from its
                    // input plus what follows.
                    if let Some(t) = turn.take() {
                        t.task.abort();
                    }
                    {
                        let mut s = lock(&speaking);
                        s.user_text = None;
                        s.agent_text.clear();
                    }
                    match pending.take() {
                        Some(Carry::Audio(a)) => carried = a,
                        Some(Carry::Text(t)) => resumed_text = Some(t),
                        None => {}
                    }
                    tracing::debug!("caller went on talking: the turn continues");
                } else if turn.is_some() || playing {
                    pending = None;
                    // Barge-in: stop the turn (its requests are dropped)
                    // and the audio the call still holds.
                    if let Some(t) = turn.take() {
                        t.task.abort();
                        let (user, agent) = {
                            let mut s = lock(&speaking);
                            (s.user_text.take(), std::mem::take(&mut s.agent_text))
                        };
                        if let Some(u) = user {
                            history.push(Msg::new("user", &u));
                            if !agent.is_empty() {
                                history.push(Msg::new("assistant", &agent));
                            }
                        }
                    }
                    lock(&speaking).play_until = None;
                    io.send(Output::Clear);
                }
                if cfg.collect_utterances {
                    match utterance.as_mut() {
                        // Already collecting: the route's VAD confirms
                        // what the energy VAD started at the call's
                        // beginning (before the route's first event).
                        // Keep all of it.
                        Some(u) if carried.is_empty() => {
                            let _ = u;
                        }
                        Some(u) => {
                            carried.append(u);
                            *u = carried;
                        }
                        None => {
                            carried.extend(preroll.drain(..));
                            utterance = Some(carried);
                        }
                    }
                }
            }
            Some(TurnEvent::SpeechEnded) => {
                if cfg.collect_utterances {
                    let was_early = eot.early();
                    step = eot.vad_ended(Instant::now());
                    if was_early {
                        // The turn ended early; what came since is silence.
                        utterance = None;
                    }
                } else {
                    speech_ended = Some(Instant::now());
                }
            }
            None => {}
        }

        match step.take() {
            None => {}
            Some(Step::Speculate(id)) => {
                let decided = Instant::now();
                match utterance
                    .as_ref()
                    .and_then(|u| trim_utterance(u.clone(), rate))
                {
                    Some(u) => {
                        let b = backend.clone();
                        let task = tokio::spawn(async move {
                            let called = Instant::now();
                            (called, b.transcribe(u).await)
                        });
                        spec = Some(SpecTask { id, decided, task });
                    }
                    // Too little sound to transcribe: this pause ends the
                    // usual way.
                    None => {
                        let _ = eot.transcript(decided, id, None);
                    }
                }
            }
            Some(Step::EndWithText { text, early }) => {
                let now = Instant::now();
                let (asr, own, asked) =
                    spec_done
                        .take()
                        .unwrap_or((Duration::ZERO, Duration::ZERO, now));
                // The turn's clock starts where the ASR would have started
                // had it been asked now; the ASR time was spent earlier.
                let t0 = now.checked_sub(asr).unwrap_or(asked).max(asked);
                let audio = utterance.take().unwrap_or_default();
                if early {
                    // Keep listening: the caller may go on (`Resumed`).
                    utterance = Some(Vec::new());
                }
                speech_ended = Some(t0);
                clock = Some(TurnClock {
                    t0,
                    ready: now,
                    own_before: own,
                    wait_ms: last_loud.map(|l| t0.saturating_duration_since(l).as_millis() as u64),
                });
                carry = Some(Carry::Audio(audio));
                start = Some(TurnInput::Text(text, Some(asr.as_millis() as u64)));
            }
            Some(Step::EndWithAudio) => {
                let now = Instant::now();
                speech_ended = Some(now);
                clock = Some(TurnClock {
                    wait_ms: last_loud.map(|l| now.saturating_duration_since(l).as_millis() as u64),
                    ..TurnClock::at(now)
                });
                if let Some(u) = utterance.take() {
                    if let Some(u) = trim_utterance(u, rate) {
                        start = Some(TurnInput::Audio(u));
                    }
                }
            }
            Some(Step::Resumed) => {
                let now = Instant::now();
                let (playing, heard) = {
                    let s = lock(&speaking);
                    (s.play_until.is_some_and(|u| u > now), s.first_audio)
                };
                if turn.is_some() && !heard && !playing {
                    // The early end was wrong: the caller goes on. The
                    // turn starts over from all of the audio.
                    if let Some(t) = turn.take() {
                        t.task.abort();
                    }
                    {
                        let mut s = lock(&speaking);
                        s.user_text = None;
                        s.agent_text.clear();
                    }
                    if let Some(Carry::Audio(mut a)) = pending.take() {
                        a.extend(utterance.take().unwrap_or_default());
                        utterance = Some(a);
                    }
                    tracing::debug!("caller went on after an early end of turn");
                }
                // Otherwise what follows is the caller's next turn (the
                // audio since the early end is its start).
            }
        }

        if let Some(input) = start {
            if let Some(t) = turn.take() {
                t.task.abort();
                io.send(Output::Clear);
            }
            {
                let mut s = lock(&speaking);
                s.first_audio = false;
                s.user_text = None;
                s.agent_text.clear();
            }
            pending = carry.take().or_else(|| match &input {
                TurnInput::Audio(a) => Some(Carry::Audio(a.clone())),
                TurnInput::Text(t, _) => Some(Carry::Text(t.clone())),
                TurnInput::Say(_) => None,
            });
            let clock = clock.unwrap_or_else(|| TurnClock {
                t0: speech_ended.unwrap_or_else(Instant::now),
                ..TurnClock::at(Instant::now())
            });
            let task = tokio::spawn(run_turn(
                backend.clone(),
                history.clone(),
                input,
                clock,
                rate,
                io.outputs.clone(),
                speaking.clone(),
            ));
            turn = Some(Turn { task });
        }
    }
}

/// Drops the silence before and after the speech (keeps 200 ms either side);
/// `None` for an utterance with less than 100 ms of sound.
fn trim_utterance(mut u: Vec<i16>, rate: u32) -> Option<Vec<i16>> {
    let frame = (rate as usize / 50).max(1);
    let loud: Vec<bool> = u.chunks(frame).map(|f| rms(f) >= 300.0).collect();
    let n_loud = loud.iter().filter(|&&l| l).count();
    if n_loud < 5 {
        return None;
    }
    let first = loud.iter().position(|&l| l).unwrap_or(0);
    let last = loud.iter().rposition(|&l| l).unwrap_or(0);
    let keep = ((last + 1 + 10) * frame).min(u.len());
    u.truncate(keep);
    u.drain(..(first.saturating_sub(10) * frame).min(u.len()));
    Some(u)
}

/// How long an idle provider connection is kept for the next turn (a
/// conversation's turns are seconds apart; servers close theirs after
/// 5-75 s, and reqwest opens a new one when they did).
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// The reqwest client of one agent (all its turns share its connection
/// pool): provider timeouts, HTTP keep-alive, TCP_NODELAY (a request's
/// last bytes are not held back by Nagle's algorithm).
pub fn http_client() -> Result<reqwest::Client, AgentError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .pool_idle_timeout(POOL_IDLE)
        .tcp_keepalive(Duration::from_secs(30))
        .build()
        .map_err(AgentError::HttpClient)
}

/// Opens a pooled connection (TCP, and TLS for https) to each distinct
/// origin of `urls` with a `HEAD /`, so the call's first turn does not pay
/// for the set-up. Whatever the answer, the connection stays in the pool;
/// failures only mean the first turn connects itself.
pub async fn warm_up(http: reqwest::Client, urls: Vec<String>) {
    let mut origins: Vec<String> = Vec::new();
    for u in &urls {
        if let Ok(u) = reqwest::Url::parse(u) {
            let o = u.origin().ascii_serialization();
            if !origins.contains(&o) {
                origins.push(o);
            }
        }
    }
    let reqs = origins.into_iter().map(|o| {
        let http = http.clone();
        async move {
            let t = Instant::now();
            let r = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let resp = http.head(format!("{o}/")).send().await?;
                resp.bytes().await
            })
            .await;
            tracing::debug!(origin = %o, ms = t.elapsed().as_millis() as u64,
                ok = matches!(r, Ok(Ok(_))), "provider connection warmed up");
        }
    });
    futures_util::future::join_all(reqs).await;
}

/// Sends a request, waiting at most [`IDLE_TIMEOUT`] for the headers;
/// non-2xx answers are errors with the start of their body.
pub async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, ProviderError> {
    let resp = tokio::time::timeout(IDLE_TIMEOUT, req.send())
        .await
        .map_err(|_| ProviderError::Timeout {
            what: "response headers",
            timeout: IDLE_TIMEOUT,
        })?
        .map_err(ProviderError::Request)?;
    let status = resp.status();
    if !status.is_success() {
        let body = tokio::time::timeout(Duration::from_secs(2), resp.text())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        return Err(ProviderError::Status {
            status,
            body: excerpt(&body),
        });
    }
    Ok(resp)
}

/// The next body chunk, waiting at most [`IDLE_TIMEOUT`].
pub async fn next_chunk(
    resp: &mut reqwest::Response,
) -> Result<Option<bytes::Bytes>, ProviderError> {
    tokio::time::timeout(IDLE_TIMEOUT, resp.chunk())
        .await
        .map_err(|_| ProviderError::Timeout {
            what: "the next response chunk",
            timeout: IDLE_TIMEOUT,
        })?
        .map_err(ProviderError::Request)
}

/// Whether something listens at `url`'s host and port (a dead endpoint
/// fails the agent at once, so a fallback takes over).
pub async fn reachable(url: &str) -> Result<(), ProviderError> {
    let bad = |reason: String| ProviderError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let u = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let host = u
        .host_str()
        .ok_or_else(|| bad("no host".into()))?
        .to_string();
    let port = u
        .port_or_known_default()
        .ok_or_else(|| bad("no port".into()))?;
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(ProviderError::Connect {
            target: url.to_string(),
            source,
        }),
        Err(_) => Err(ProviderError::ConnectTimeout {
            target: url.to_string(),
            timeout: CONNECT_TIMEOUT,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn split_all(pieces: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::default();
        let mut out = Vec::new();
        for p in pieces {
            out.extend(s.push(p));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_complete() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("Hello cal").is_empty());
        assert!(
            s.push("ler.").is_empty(),
            "waits for what follows the period"
        );
        assert_eq!(s.push(" How can"), vec!["Hello caller."]);
        assert_eq!(s.push(" I help?\nBye"), vec!["How can I help?"]);
        assert_eq!(s.finish(), vec!["Bye"]);
        assert_eq!(
            split_all(&["It costs 3.5 euros. Ok!"]),
            vec!["It costs 3.5 euros.", "Ok!"]
        );
    }

    #[test]
    fn a_long_first_sentence_gives_its_first_clause_at_once() {
        let mut s = SentenceSplitter::default();
        // Under the length nothing is cut, even at a comma.
        assert!(s.push("The capital of France, as you").is_empty());
        // Past 60 characters without a sentence end: the first clause goes.
        assert_eq!(
            s.push(" may know, is Paris, which has about two million"),
            vec!["The capital of France,"]
        );
        // The rest of that sentence waits for its end; later sentences are
        // not cut at clauses.
        assert_eq!(
            s.push(" people. Later sentences, however long they are, never cut at a comma. "),
            vec![
                "as you may know, is Paris, which has about two million people.",
                "Later sentences, however long they are, never cut at a comma."
            ]
        );
        // A clause needs four words; numbers and hyphens do not cut; a
        // spaced dash or an em dash does.
        assert_eq!(
            split_all(&[
                "Yes, it costs 1,000 euros for a well-known two-day trip - booked",
                " online. Ok."
            ]),
            vec![
                "Yes, it costs 1,000 euros for a well-known two-day trip -",
                "booked online.",
                "Ok."
            ]
        );
        let mut s = SentenceSplitter::default();
        assert_eq!(
            s.push(
                "Well that depends on the day \u{2014} most trains leave every hour on weekdays"
            ),
            vec!["Well that depends on the day \u{2014}"]
        );
        // A short first sentence is whole, as before.
        assert_eq!(
            split_all(&["Sure, I can help. Bye"]),
            vec!["Sure, I can help.", "Bye"]
        );
    }

    #[test]
    fn think_is_stripped_even_when_split() {
        assert_eq!(
            split_all(&[
                "<thi",
                "nk>secret. stuff</th",
                "ink>Hello caller. How can I help?"
            ]),
            vec!["Hello caller.", "How can I help?"]
        );
        assert_eq!(split_all(&["A. <think>x</think>B."]), vec!["A.", "B."]);
        assert_eq!(
            split_all(&["<think>never closed. no"]),
            Vec::<String>::new()
        );
        assert_eq!(split_all(&["a < b."]), vec!["a < b."]);
    }

    /// A provider double that records what the loop asks of it: each
    /// utterance it is given, and the messages of each LLM request.
    #[derive(Default)]
    struct Recorder {
        utterances: Mutex<Vec<Vec<i16>>>,
        llm_requests: Mutex<Vec<Vec<Msg>>>,
        llm_delay: Duration,
    }

    impl Backend for Recorder {
        fn transcribe(&self, pcm: Vec<i16>) -> BoxFut<'_, Result<String, ProviderError>> {
            Box::pin(async move {
                let mut u = self.utterances.lock().unwrap();
                u.push(pcm);
                Ok(format!("utterance {}", u.len()))
            })
        }
        fn llm(
            &self,
            messages: Vec<Msg>,
            tx: mpsc::UnboundedSender<String>,
        ) -> BoxFut<'_, Result<(), ProviderError>> {
            Box::pin(async move {
                self.llm_requests.lock().unwrap().push(messages);
                tokio::time::sleep(self.llm_delay).await;
                let _ = tx.send("Sure. ".into());
                Ok(())
            })
        }
        fn tts(
            &self,
            _text: String,
            tx: mpsc::UnboundedSender<Vec<i16>>,
        ) -> BoxFut<'_, Result<(), ProviderError>> {
            Box::pin(async move {
                let _ = tx.send(vec![100; 1600]);
                Ok(())
            })
        }
    }

    const FRAME: usize = 160;

    async fn speak(tx: &mpsc::Sender<Input>, level: i16, frames: usize) {
        for _ in 0..frames {
            tx.send(Input::Audio(vec![level; FRAME])).await.unwrap();
        }
    }

    /// One utterance as the route's VAD reports it: speech, the VAD's
    /// late start, more speech, trailing silence, the end.
    async fn utterance(tx: &mpsc::Sender<Input>, level: i16) {
        speak(tx, level, 10).await;
        tx.send(Input::Turn(TurnEvent::SpeechStarted))
            .await
            .unwrap();
        speak(tx, level, 10).await;
        speak(tx, 0, 10).await;
        tx.send(Input::Turn(TurnEvent::SpeechEnded)).await.unwrap();
    }

    /// Runs the loop on `backend`; returns the caller's input channel and
    /// the outputs.
    fn start(backend: Arc<Recorder>) -> (mpsc::Sender<Input>, mpsc::UnboundedReceiver<Output>) {
        let (in_tx, in_rx) = mpsc::channel(1000);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let io = Io {
            inputs: in_rx,
            outputs: out_tx,
        };
        let cfg = LoopConfig {
            rate: 8000,
            system: None,
            collect_utterances: true,
            greeting: None,
            preroll_ms: 1000,
            end_of_turn: None,
        };
        tokio::spawn(conversation(io, backend, cfg, None, None, None));
        (in_tx, out_rx)
    }

    async fn first_audio(out: &mut mpsc::UnboundedReceiver<Output>) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(o) = out.recv().await {
                if matches!(o, Output::Audio(_)) {
                    return;
                }
            }
        })
        .await
        .unwrap();
    }

    /// Where in `u` the frames of `level` are (first, last frame index).
    fn span(u: &[i16], level: i16) -> Option<(usize, usize)> {
        let hits: Vec<usize> = u
            .chunks(FRAME)
            .enumerate()
            .filter(|(_, f)| f.iter().all(|&x| x == level))
            .map(|(i, _)| i)
            .collect();
        Some((*hits.first()?, *hits.last()?))
    }

    #[tokio::test]
    async fn a_pause_mid_question_does_not_lose_its_first_half() {
        let backend = Arc::new(Recorder {
            llm_delay: Duration::from_millis(400),
            ..Default::default()
        });
        let (tx, mut out) = start(backend.clone());
        // The route's VAD drives turns from here on.
        tx.send(Input::Turn(TurnEvent::SpeechEnded)).await.unwrap();
        // "What is the" ... pause long enough to end the turn ...
        utterance(&tx, 3000).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ... "capital of France?", before the agent has said anything.
        utterance(&tx, -3000).await;
        first_audio(&mut out).await;
        let utts = backend.utterances.lock().unwrap().clone();
        assert_eq!(utts.len(), 2, "both ends of turn were transcribed");
        let last = &utts[1];
        let (a0, a1) = span(last, 3000).expect("the first half is in the second upload");
        let (b0, b1) = span(last, -3000).expect("and the second half");
        assert!(a1 < b0, "in order: {a0}-{a1}, {b0}-{b1}");
        assert_eq!(
            a1 - a0 + 1,
            20,
            "every frame of the first half, the pre-roll's too"
        );
        assert_eq!(b1 - b0 + 1, 20);
        // The LLM answers the whole question once; the cut turn's text is
        // not in the history.
        let reqs = backend.llm_requests.lock().unwrap().clone();
        let answered = reqs.last().unwrap();
        let users: Vec<&str> = answered
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(users, ["utterance 2"], "{reqs:?}");
    }

    #[tokio::test]
    async fn the_first_words_of_a_call_are_kept_when_the_route_vad_reports_late() {
        // At the start of a call the route's VAD has said nothing yet, so
        // the loop's own energy VAD starts the utterance on the first loud
        // frame; the route's SpeechStarted comes 200 ms later. Its
        // utterance must not start over there.
        let backend = Arc::new(Recorder::default());
        let (tx, mut out) = start(backend.clone());
        speak(&tx, 0, 25).await;
        utterance(&tx, 3000).await;
        first_audio(&mut out).await;
        let utts = backend.utterances.lock().unwrap().clone();
        assert_eq!(utts.len(), 1);
        let (a0, a1) = span(&utts[0], 3000).expect("speech uploaded");
        assert_eq!(a1 - a0 + 1, 20, "every loud frame, from the first");
        assert!(a0 >= 5, "with silence before it: {a0}");
    }

    #[tokio::test]
    async fn once_the_agent_has_spoken_a_new_utterance_stands_alone() {
        let backend = Arc::new(Recorder::default());
        let (tx, mut out) = start(backend.clone());
        tx.send(Input::Turn(TurnEvent::SpeechEnded)).await.unwrap();
        utterance(&tx, 3000).await;
        first_audio(&mut out).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        utterance(&tx, -3000).await;
        first_audio(&mut out).await;
        let utts = backend.utterances.lock().unwrap().clone();
        assert_eq!(utts.len(), 2);
        assert!(
            span(&utts[1], 3000).is_none(),
            "the answered question is not re-sent"
        );
        assert!(span(&utts[1], -3000).is_some());
    }

    #[tokio::test]
    async fn a_streamed_transcript_ending_on_a_hesitation_waits_for_the_next() {
        let backend = Arc::new(Recorder::default());
        let (_in_tx, in_rx) = mpsc::channel(1000);
        let (out_tx, mut out) = mpsc::unbounded_channel();
        let (tr_tx, tr_rx) = mpsc::unbounded_channel();
        let cfg = LoopConfig {
            rate: 8000,
            system: None,
            collect_utterances: false,
            greeting: None,
            preroll_ms: 0,
            end_of_turn: Some(Timing {
                min: Duration::ZERO,
                max: Duration::from_millis(600),
            }),
        };
        let io = Io {
            inputs: in_rx,
            outputs: out_tx,
        };
        tokio::spawn(conversation(
            io,
            backend.clone(),
            cfg,
            None,
            Some(tr_rx),
            None,
        ));
        let users = || -> Vec<String> {
            backend
                .llm_requests
                .lock()
                .unwrap()
                .iter()
                .map(|r| r.last().unwrap().content.clone())
                .collect()
        };
        tr_tx.send(Ok("I want to, um".into())).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(users().is_empty(), "a hesitation is held");
        tr_tx.send(Ok("book a table for two.".into())).unwrap();
        first_audio(&mut out).await;
        assert_eq!(users(), ["I want to, um book a table for two."]);
        // A hesitation nothing follows is answered after the longest wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        tr_tx.send(Ok("So,".into())).unwrap();
        first_audio(&mut out).await;
        assert!(
            t.elapsed() >= Duration::from_millis(550),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(users().last().map(String::as_str), Some("So,"));
    }

    #[test]
    fn energy_vad_segments_a_burst() {
        let mut v = EnergyVad::new(500.0, 700);
        let loud = vec![3000i16; 320];
        let quiet = vec![0i16; 320];
        let mut evs = Vec::new();
        for _ in 0..10 {
            evs.extend(v.feed(&loud, 16000));
        }
        for _ in 0..40 {
            evs.extend(v.feed(&quiet, 16000));
        }
        assert_eq!(evs, vec![TurnEvent::SpeechStarted, TurnEvent::SpeechEnded]);
    }
}
