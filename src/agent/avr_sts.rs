//! AVR speech-to-speech providers over WebSocket (PROTOCOLS.md section 3):
//! the avr-sts-* containers (openai, ultravox, deepgram, elevenlabs, gemini,
//! xai) all speak this JSON protocol with s16le 8 kHz base64 audio.
//!
//! The protocol handling ([`Session`]) is sans-IO and unit tested; [`run`]
//! only moves messages between the socket and the call's channels.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::error::excerpt;
use super::remote::{Input, Io, Output, Remote};
use super::{AgentContext, AgentError, AgentEvent, ProviderError, TurnLatency};
use crate::media::dsp::TurnEvent;
use crate::media::pcm::S16leStream;

/// AVR STS audio is s16le 8 kHz mono both ways.
pub const RATE: u32 = 8000;
/// How long the TCP + WebSocket handshake may take before failing over.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A provider that does not take a message this long is treated as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the server's close frame after ours.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

/// Starts the STS client for one call.
pub fn spawn(url: &str, ctx: &AgentContext) -> Remote {
    let url = url.to_string();
    let uuid = ctx.uuid.clone();
    Remote::spawn("avr_sts", RATE, move |io| run(url, uuid, io))
}

/// Per-turn latency: from the end of the caller's turn to the first agent
/// audio after it. The end of the turn is our VAD's `SpeechEnded` when the
/// route has a VAD; without one it is the provider's user transcript (the
/// provider decided the turn was over then), which leaves the provider's
/// own end-pointing delay out of the number.
#[derive(Debug, Default)]
pub(crate) struct LatencyClock {
    vad: bool,
    turn_end: Option<Instant>,
}

impl LatencyClock {
    pub(crate) fn speech_ended(&mut self, now: Instant) {
        self.vad = true;
        self.turn_end = Some(now);
    }
    pub(crate) fn user_transcript(&mut self, now: Instant) {
        if !self.vad && self.turn_end.is_none() {
            self.turn_end = Some(now);
        }
    }
    /// Agent audio arrived: the latency of the turn it answers, once.
    pub(crate) fn agent_audio(&mut self, now: Instant) -> Option<AgentEvent> {
        let t = self.turn_end.take()?;
        Some(AgentEvent::Latency(TurnLatency {
            total_ms: now.saturating_duration_since(t).as_millis() as u64,
            ..Default::default()
        }))
    }
}

/// A talk spurt's first audio is held until [`PREBUFFER`] of it is there
/// (or that long has passed), then everything goes through at once: a
/// provider that streams in real time (AudioSocket's paced 20 ms frames, a
/// slow STS) keeps that cushion in the call's queue, so a frame arriving a
/// little late does not leave a gap on the phone.
#[derive(Debug, Default)]
pub(crate) struct Prebuffer {
    pending: Vec<i16>,
    flush_at: Option<Instant>,
    /// When the audio handed to the call so far will have played.
    playing_until: Option<Instant>,
}

/// The cushion against arrival jitter (and the latency it adds once per
/// talk spurt).
pub(crate) const PREBUFFER: Duration = Duration::from_millis(60);

impl Prebuffer {
    /// Provider audio at `RATE`: what to hand to the call now.
    pub(crate) fn push(&mut self, pcm: Vec<i16>, now: Instant) -> Option<Vec<i16>> {
        let in_spurt = self.playing_until.is_some_and(|t| t > now);
        if in_spurt && self.pending.is_empty() {
            self.handed(pcm.len(), now);
            return Some(pcm);
        }
        if self.pending.is_empty() {
            self.flush_at = Some(now + PREBUFFER);
        }
        self.pending.extend(pcm);
        if self.pending.len() as u64 * 1000 >= PREBUFFER.as_millis() as u64 * RATE as u64 {
            return self.flush(now);
        }
        None
    }

    /// When held audio must go out even if no more comes.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.flush_at
    }

    pub(crate) fn flush(&mut self, now: Instant) -> Option<Vec<i16>> {
        self.flush_at = None;
        if self.pending.is_empty() {
            return None;
        }
        let pcm = std::mem::take(&mut self.pending);
        self.handed(pcm.len(), now);
        Some(pcm)
    }

    /// The call dropped its queue (barge-in): held audio goes too.
    pub(crate) fn cleared(&mut self) {
        self.pending.clear();
        self.flush_at = None;
        self.playing_until = None;
    }

    fn handed(&mut self, samples: usize, now: Instant) {
        let start = self.playing_until.filter(|t| *t > now).unwrap_or(now);
        self.playing_until =
            Some(start + Duration::from_micros(samples as u64 * 1_000_000 / RATE as u64));
    }
}

/// A message from an STS provider (PROTOCOLS.md section 3).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StsEvent {
    /// Base64 s16le 8 kHz audio of any length.
    Audio { audio: String },
    /// The caller barged in: drop queued audio.
    Interruption,
    Transcript {
        /// `user` or `agent` (the default).
        #[serde(default)]
        role: Option<String>,
        #[serde(default)]
        text: String,
    },
    Error {
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        error: Option<String>,
    },
    ToolInvocation {
        #[serde(rename = "toolName", alias = "name", default)]
        tool_name: Option<String>,
        #[serde(alias = "arguments", default)]
        parameters: Option<serde_json::Value>,
    },
    ToolResult {
        #[serde(rename = "toolName", alias = "name", default)]
        tool_name: Option<String>,
        #[serde(alias = "output", default)]
        result: Option<serde_json::Value>,
    },
    /// A type this client does not know (ignored, as the AVR core does).
    #[serde(other)]
    Unknown,
}

impl StsEvent {
    pub fn decode(text: &str) -> Result<StsEvent, ProviderError> {
        serde_json::from_str(text)
            .map_err(|e| ProviderError::invalid_json("an AVR STS message object", text, &e))
    }
}

/// A tool call's arguments or result as the text webhooks get.
fn json_text(v: Option<serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// The protocol state of one STS connection, without any IO.
#[derive(Debug, Default)]
pub struct Session {
    /// A trailing odd byte of agent audio, completed by the next message.
    carry: S16leStream,
    latency: LatencyClock,
    /// Messages that were not valid JSON objects, had an unknown type or
    /// bad fields (ignored, as the AVR core does).
    pub ignored: u64,
}

impl Session {
    /// The first message of a connection.
    pub fn init(uuid: &str) -> String {
        serde_json::json!({"type": "init", "uuid": uuid}).to_string()
    }

    /// One frame of caller audio.
    pub fn audio(pcm: &[i16]) -> String {
        let bytes = crate::media::pcm::i16_to_s16le(pcm);
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        serde_json::json!({"type": "audio", "audio": b64}).to_string()
    }

    pub fn dtmf(digit: char) -> String {
        serde_json::json!({"type": "dtmf_digit", "digit": digit.to_string()}).to_string()
    }

    pub fn on_turn(&mut self, ev: TurnEvent, now: Instant) {
        if ev == TurnEvent::SpeechEnded {
            self.latency.speech_ended(now);
        }
    }

    /// One text message from the provider: what to hand to the call.
    /// Undecodable messages, unknown types and bad audio are counted in
    /// [`Session::ignored`] and dropped.
    pub fn on_text(&mut self, text: &str, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        let ev = match StsEvent::decode(text) {
            Ok(ev) => ev,
            Err(e) => {
                self.drop_message(&e);
                return out;
            }
        };
        match ev {
            StsEvent::Audio { audio } => {
                let bytes = match base64::engine::general_purpose::STANDARD.decode(&audio) {
                    Ok(b) => b,
                    Err(e) => {
                        self.drop_message(&ProviderError::AudioFormat {
                            expected: "base64 s16le audio",
                            got: format!("`{}` ({e})", excerpt(&audio)),
                        });
                        return out;
                    }
                };
                let pcm = self.pcm(&bytes);
                if !pcm.is_empty() {
                    if let Some(l) = self.latency.agent_audio(now) {
                        out.push(Output::Event(l));
                    }
                    out.push(Output::Audio(pcm));
                }
            }
            StsEvent::Interruption => {
                self.carry = S16leStream::default();
                out.push(Output::Clear);
                out.push(Output::Event(AgentEvent::Interruption));
            }
            StsEvent::Transcript { role, text } => {
                let role = role.unwrap_or_else(|| "agent".into());
                if role == "user" {
                    self.latency.user_transcript(now);
                }
                out.push(Output::Event(AgentEvent::Transcript { role, text }));
            }
            StsEvent::Error { message, error } => {
                let message = message.or(error).unwrap_or_else(|| "provider error".into());
                out.push(Output::Event(AgentEvent::Error { message }));
            }
            StsEvent::ToolInvocation {
                tool_name,
                parameters,
            } => out.push(Output::Event(AgentEvent::ToolCall {
                name: tool_name.unwrap_or_else(|| "tool_invocation".into()),
                arguments: json_text(parameters),
            })),
            StsEvent::ToolResult { tool_name, result } => {
                out.push(Output::Event(AgentEvent::ToolCall {
                    name: tool_name.unwrap_or_else(|| "tool_result".into()),
                    arguments: json_text(result),
                }))
            }
            StsEvent::Unknown => {
                self.ignored += 1;
                tracing::trace!(message = %excerpt(text), "AVR STS: unknown message type ignored");
            }
        }
        out
    }

    fn drop_message(&mut self, e: &ProviderError) {
        self.ignored += 1;
        tracing::debug!(error = %e, ignored = self.ignored, "AVR STS message dropped");
    }

    /// s16le bytes to samples, keeping an odd trailing byte for next time.
    fn pcm(&mut self, bytes: &[u8]) -> Vec<i16> {
        let mut pcm = Vec::with_capacity(bytes.len() / 2 + 1);
        self.carry.push(bytes, &mut pcm);
        pcm
    }
}

/// Sleeps until `at`, or forever without one (a `select!` timer).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Sends one message, failing when the provider does not take it in time.
async fn send<S>(sink: &mut S, m: Message) -> Result<(), ProviderError>
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(m)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ProviderError::Send(e.to_string())),
        Err(_) => Err(ProviderError::Timeout {
            what: "send to the STS provider",
            timeout: SEND_TIMEOUT,
        }),
    }
}

/// The connection task: `Err` (fail over) when the provider cannot be
/// reached or goes away; `Ok` when the call ended.
pub async fn run(url: String, uuid: String, io: Io) -> Result<(), AgentError> {
    Ok(connection(url, uuid, io).await?)
}

async fn connection(url: String, uuid: String, mut io: Io) -> Result<(), ProviderError> {
    // `true`: TCP_NODELAY, so a 20 ms audio frame is not held back by Nagle.
    let connect = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true);
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| ProviderError::ConnectTimeout {
            target: url.clone(),
            timeout: CONNECT_TIMEOUT,
        })?
        .map_err(|e| ProviderError::ws_connect(&url, e))?;
    let (mut sink, mut stream) = ws.split();
    let mut session = Session::default();
    let mut prebuffer = Prebuffer::default();
    send(&mut sink, Message::Text(Session::init(&uuid).into())).await?;
    tracing::info!(%url, "AVR STS connected");
    loop {
        tokio::select! {
            input = io.inputs.recv() => match input {
                Some(Input::Audio(pcm)) => {
                    send(&mut sink, Message::Text(Session::audio(&pcm).into())).await?;
                }
                Some(Input::Dtmf(d)) => {
                    send(&mut sink, Message::Text(Session::dtmf(d).into())).await?;
                }
                Some(Input::Turn(ev)) => session.on_turn(ev, Instant::now()),
                Some(Input::Cleared { .. }) => prebuffer.cleared(),
                Some(Input::Hold(_)) => {}
                None => {
                    // The call ended: close the socket cleanly.
                    let _ = send(&mut sink, Message::Close(None)).await;
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                        while let Some(Ok(_)) = stream.next().await {}
                    })
                    .await;
                    if session.ignored > 0 {
                        tracing::info!(ignored = session.ignored, "AVR STS messages ignored");
                    }
                    return Ok(());
                }
            },
            _ = sleep_until(prebuffer.deadline()) => {
                if let Some(pcm) = prebuffer.flush(Instant::now()) {
                    io.send(Output::Audio(pcm));
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let now = Instant::now();
                    for o in session.on_text(t.as_str(), now) {
                        let o = match o {
                            Output::Audio(pcm) => match prebuffer.push(pcm, now) {
                                Some(pcm) => Output::Audio(pcm),
                                None => continue,
                            },
                            Output::Clear => {
                                prebuffer.cleared();
                                Output::Clear
                            }
                            other => other,
                        };
                        if !io.send(o) {
                            return Ok(());
                        }
                    }
                }
                Some(Ok(Message::Binary(_) | Message::Frame(_))) => {
                    session.ignored += 1;
                    tracing::debug!("AVR STS: binary message ignored");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    return Err(ProviderError::Closed {
                        who: "the STS provider",
                        detail: frame.map(|f| format!("close code {}: {}", f.code, f.reason)),
                    });
                }
                Some(Err(e)) => return Err(ProviderError::Lost(e.to_string())),
                None => {
                    return Err(ProviderError::Closed {
                        who: "the STS provider",
                        detail: None,
                    })
                }
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn caller_audio_and_dtmf_messages() {
        let m: serde_json::Value = serde_json::from_str(&Session::audio(&[1, -2])).unwrap();
        assert_eq!(m["type"], "audio");
        assert_eq!(m["audio"], b64(&[1, 0, 0xfe, 0xff]));
        let m: serde_json::Value = serde_json::from_str(&Session::dtmf('5')).unwrap();
        assert_eq!(m, serde_json::json!({"type": "dtmf_digit", "digit": "5"}));
        let m: serde_json::Value = serde_json::from_str(&Session::init("u-1")).unwrap();
        assert_eq!(m, serde_json::json!({"type": "init", "uuid": "u-1"}));
    }

    #[test]
    fn agent_audio_of_any_length_with_odd_bytes_across_messages() {
        let mut s = Session::default();
        let now = Instant::now();
        let msg = |b: &[u8]| format!(r#"{{"type":"audio","audio":"{}"}}"#, b64(b));
        assert_eq!(
            s.on_text(&msg(&[1, 0, 2]), now),
            vec![Output::Audio(vec![1])]
        );
        assert_eq!(
            s.on_text(&msg(&[0, 3, 0]), now),
            vec![Output::Audio(vec![2, 3])]
        );
        assert_eq!(s.ignored, 0);
    }

    #[test]
    fn interruption_transcript_error_and_tools() {
        let mut s = Session::default();
        let now = Instant::now();
        assert_eq!(
            s.on_text(r#"{"type":"interruption"}"#, now),
            vec![Output::Clear, Output::Event(AgentEvent::Interruption)]
        );
        assert_eq!(
            s.on_text(r#"{"type":"transcript","role":"user","text":"hi"}"#, now),
            vec![Output::Event(AgentEvent::Transcript {
                role: "user".into(),
                text: "hi".into()
            })]
        );
        assert_eq!(
            s.on_text(r#"{"type":"error","message":"quota"}"#, now),
            vec![Output::Event(AgentEvent::Error {
                message: "quota".into()
            })]
        );
        assert_eq!(
            s.on_text(
                r#"{"type":"tool_invocation","toolName":"transfer","invocationId":"1","parameters":{"to":"100"}}"#,
                now
            ),
            vec![Output::Event(AgentEvent::ToolCall {
                name: "transfer".into(),
                arguments: r#"{"to":"100"}"#.into()
            })]
        );
    }

    #[test]
    fn garbage_is_counted_and_ignored() {
        let mut s = Session::default();
        let now = Instant::now();
        for junk in [
            "{\"type\": \"audio\", \"audio\": ",
            "\u{0}\u{1}not json at all",
            "[1,2",
            "[1,2]",
            r#"{"type":"audio","audio":"!!not base64!!"}"#,
            r#"{"type":"audio"}"#,
            r#"{"type":"something_new"}"#,
            r#"{"no_type":1}"#,
        ] {
            assert!(s.on_text(junk, now).is_empty(), "{junk}");
        }
        assert_eq!(s.ignored, 8);
    }

    #[test]
    fn latency_from_vad_end_of_turn_to_first_agent_audio() {
        let mut s = Session::default();
        let t0 = Instant::now();
        let audio = format!(r#"{{"type":"audio","audio":"{}"}}"#, b64(&[0; 4]));
        // No turn yet: no latency.
        assert_eq!(s.on_text(&audio, t0).len(), 1);
        s.on_turn(TurnEvent::SpeechEnded, t0);
        // The user transcript does not move the VAD's mark.
        s.on_text(
            r#"{"type":"transcript","role":"user","text":"x"}"#,
            t0 + Duration::from_millis(300),
        );
        let out = s.on_text(&audio, t0 + Duration::from_millis(450));
        assert_eq!(
            out[0],
            Output::Event(AgentEvent::Latency(TurnLatency {
                total_ms: 450,
                ..Default::default()
            }))
        );
        // Once per turn.
        assert_eq!(s.on_text(&audio, t0 + Duration::from_millis(500)).len(), 1);
    }

    #[test]
    fn latency_without_vad_starts_at_the_user_transcript() {
        let mut s = Session::default();
        let t0 = Instant::now();
        s.on_text(r#"{"type":"transcript","role":"user","text":"x"}"#, t0);
        let audio = format!(r#"{{"type":"audio","audio":"{}"}}"#, b64(&[0; 4]));
        let out = s.on_text(&audio, t0 + Duration::from_millis(120));
        assert_eq!(
            out[0],
            Output::Event(AgentEvent::Latency(TurnLatency {
                total_ms: 120,
                ..Default::default()
            }))
        );
    }

    #[test]
    fn prebuffer_holds_a_spurts_start_then_passes_audio_through() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut p = Prebuffer::default();
        // Paced 20 ms frames: the first two are held, the third releases 60 ms.
        assert_eq!(p.push(vec![1; 160], ms(0)), None);
        assert_eq!(p.deadline(), Some(ms(60)));
        assert_eq!(p.push(vec![2; 160], ms(20)), None);
        assert_eq!(p.push(vec![3; 160], ms(40)).map(|v| v.len()), Some(480));
        // In the spurt, a frame 30 ms late still goes straight through.
        assert_eq!(p.push(vec![4; 160], ms(90)).map(|v| v.len()), Some(160));
        assert_eq!(p.deadline(), None);
        // A burst bigger than the cushion is not held at all.
        let mut p = Prebuffer::default();
        assert_eq!(p.push(vec![0; 8000], ms(0)).map(|v| v.len()), Some(8000));
        // A short sound is released at the deadline.
        let mut p = Prebuffer::default();
        assert_eq!(p.push(vec![0; 80], ms(0)), None);
        assert_eq!(p.flush(ms(60)).map(|v| v.len()), Some(80));
        // After the queue has played out, the next spurt is cushioned again.
        assert_eq!(p.push(vec![0; 160], ms(500)), None);
        p.cleared();
        assert_eq!(p.flush(ms(600)), None);
    }

    #[tokio::test]
    async fn unreachable_provider_fails_fast() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (_tx, inputs) = tokio::sync::mpsc::channel(1);
        let (outputs, _rx) = tokio::sync::mpsc::unbounded_channel();
        let r = run(
            format!("ws://127.0.0.1:{port}"),
            "u".into(),
            Io { inputs, outputs },
        )
        .await;
        assert!(r.unwrap_err().to_string().contains("connect"));
    }

    /// What the fake STS (tests/fakes/fake_avr_sts.py) and the AVR
    /// containers send.
    #[test]
    fn sts_messages_decode_to_their_kinds() {
        let cases = [
            (
                r#"{"type": "audio", "audio": "AQACAA=="}"#,
                StsEvent::Audio {
                    audio: "AQACAA==".into(),
                },
            ),
            (r#"{"type": "interruption"}"#, StsEvent::Interruption),
            (
                r#"{"type": "transcript", "role": "user", "text": "hello agent"}"#,
                StsEvent::Transcript {
                    role: Some("user".into()),
                    text: "hello agent".into(),
                },
            ),
            (
                r#"{"type": "error", "message": "invalid JSON: Expecting value"}"#,
                StsEvent::Error {
                    message: Some("invalid JSON: Expecting value".into()),
                    error: None,
                },
            ),
            (
                r#"{"type": "tool_invocation", "toolName": "transfer", "invocationId": "inv_1_1", "parameters": {"to": "100"}}"#,
                StsEvent::ToolInvocation {
                    tool_name: Some("transfer".into()),
                    parameters: Some(serde_json::json!({"to": "100"})),
                },
            ),
            (
                r#"{"type": "tool_result", "name": "lookup", "output": "42"}"#,
                StsEvent::ToolResult {
                    tool_name: Some("lookup".into()),
                    result: Some(serde_json::json!("42")),
                },
            ),
            (r#"{"type": "listening"}"#, StsEvent::Unknown),
        ];
        for (text, want) in cases {
            assert_eq!(StsEvent::decode(text).unwrap(), want, "{text}");
        }
        for junk in [
            r#"{"type": "audio", "audio": "#,
            "\u{0}\u{1}not json at all",
            "[1,2",
            r#"{"type": "audio"}"#,
            r#"{"type": "audio", "audio": 5}"#,
        ] {
            let e = StsEvent::decode(junk).unwrap_err();
            assert!(e.to_string().contains("expected an AVR STS message"), "{e}");
        }
    }
}
