//! OpenAI Realtime (speech to speech) over WebSocket, straight from the
//! media server: `session.update` (instructions, voice, server VAD, audio
//! formats, tools), caller audio as `input_audio_buffer.append`, agent audio
//! from `response.output_audio.delta` (beta: `response.audio.delta`).
//!
//! G.711 calls talk G.711 to the API (`audio/pcmu`/`audio/pcma`, 8 kHz: no
//! resampling anywhere); other codecs use PCM16 at 24 kHz. Barge-in: the
//! server's `input_audio_buffer.speech_started` flushes our playout, and
//! `conversation.item.truncate` tells the model how much of its answer the
//! caller actually heard. Tools: `transfer_call`, `end_call`, and HTTP tools
//! from the profile.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::remote::{Input, Io, Output, Remote};
use super::{AgentContext, AgentError, AgentEvent, ProviderError, TurnLatency};
use crate::config::{AgentConfig, HttpTool};
use crate::media::{g711, pcm};
use crate::sdp::Codec;

const DEFAULT_BASE_URL: &str = "wss://api.openai.com/v1/realtime";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The audio format spoken with the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pcmu,
    Pcma,
    Pcm16,
}

impl Format {
    fn for_codec(codec: Option<Codec>) -> Format {
        match codec {
            Some(Codec::Pcmu) => Format::Pcmu,
            Some(Codec::Pcma) => Format::Pcma,
            _ => Format::Pcm16,
        }
    }
    fn rate(self) -> u32 {
        match self {
            Format::Pcm16 => 24000,
            _ => 8000,
        }
    }
    fn ga(self) -> Value {
        match self {
            Format::Pcmu => json!({"type": "audio/pcmu"}),
            Format::Pcma => json!({"type": "audio/pcma"}),
            Format::Pcm16 => json!({"type": "audio/pcm", "rate": 24000}),
        }
    }
    fn beta(self) -> &'static str {
        match self {
            Format::Pcmu => "g711_ulaw",
            Format::Pcma => "g711_alaw",
            Format::Pcm16 => "pcm16",
        }
    }
    fn encode(self, pcm: &[i16]) -> Vec<u8> {
        match self {
            Format::Pcmu => pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect(),
            Format::Pcma => pcm.iter().map(|&s| g711::linear_to_alaw(s)).collect(),
            Format::Pcm16 => pcm::i16_to_s16le(pcm),
        }
    }
    fn decode(self, bytes: &[u8]) -> Vec<i16> {
        match self {
            Format::Pcmu => bytes.iter().map(|&b| g711::ulaw_to_linear(b)).collect(),
            Format::Pcma => bytes.iter().map(|&b| g711::alaw_to_linear(b)).collect(),
            Format::Pcm16 => pcm::s16le_to_i16(bytes),
        }
    }
    /// Milliseconds of audio in `bytes` of this format.
    fn ms(self, bytes: usize) -> u64 {
        match self {
            Format::Pcm16 => bytes as u64 / 48,
            _ => bytes as u64 / 8,
        }
    }
}

/// Everything the session needs, resolved before the task starts.
struct Settings {
    url: String,
    key: String,
    beta: bool,
    model: String,
    instructions: Option<String>,
    voice: Option<String>,
    tools: Vec<HttpTool>,
    format: Format,
    /// Said first, in the model's voice (the route's `greeting`).
    greeting: Option<String>,
}

const KIND: &str = "openai_realtime";

fn api_key(env: &Option<String>, file: &Option<std::path::PathBuf>) -> Result<String, AgentError> {
    if let Some(f) = file {
        return std::fs::read_to_string(f)
            .map(|k| k.trim().to_string())
            .map_err(|source| AgentError::ReadFile {
                what: "api_key_file",
                path: f.clone(),
                source,
            });
    }
    let var = env.clone().unwrap_or_else(|| "OPENAI_API_KEY".into());
    std::env::var(&var)
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or(AgentError::EnvUnset { agent: KIND, var })
}

pub fn spawn(cfg: &AgentConfig, ctx: &AgentContext) -> Result<Remote, AgentError> {
    let AgentConfig::OpenaiRealtime {
        model,
        api_key_env,
        api_key_file,
        base_url,
        instructions,
        instructions_file,
        voice,
        beta,
        tools,
    } = cfg
    else {
        return Err(AgentError::config(
            KIND,
            format!("expected an openai_realtime agent, got `{}`", cfg.kind()),
        ));
    };
    let key = api_key(api_key_env, api_key_file)?;
    let instructions = match instructions_file {
        Some(f) => Some(
            std::fs::read_to_string(f).map_err(|source| AgentError::ReadFile {
                what: "instructions_file",
                path: f.clone(),
                source,
            })?,
        ),
        None => instructions.clone(),
    };
    let base = base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.into());
    let sep = if base.contains('?') { '&' } else { '?' };
    let format = Format::for_codec(ctx.codec);
    let settings = Settings {
        url: format!("{base}{sep}model={model}"),
        key,
        beta: *beta,
        model: model.clone(),
        instructions,
        voice: voice.clone(),
        tools: tools.clone(),
        format,
        greeting: ctx.greeting.clone(),
    };
    Ok(Remote::spawn(KIND, format.rate(), move |io| {
        run(settings, io)
    }))
}

/// A response that makes the model speak the route's greeting first (the
/// same event in the GA and beta protocols).
fn greeting_request(text: &str) -> Value {
    json!({"type": "response.create", "response": {
        "instructions": format!("Greet the caller by saying exactly this, and nothing else: {text}")
    }})
}

fn tool_defs(tools: &[HttpTool]) -> Vec<Value> {
    let mut defs = vec![
        json!({"type": "function", "name": "transfer_call",
               "description": "Transfer the caller to a human or another number.",
               "parameters": {"type": "object", "properties": {
                   "to": {"type": "string", "description": "SIP URI or phone number"}},
                   "required": ["to"]}}),
        json!({"type": "function", "name": "end_call",
               "description": "End the call after saying goodbye.",
               "parameters": {"type": "object", "properties": {}}}),
    ];
    for t in tools {
        let params = t
            .parameters
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        defs.push(json!({"type": "function", "name": t.name,
                         "description": t.description, "parameters": params}));
    }
    defs
}

fn session_update(s: &Settings) -> Value {
    let tools = tool_defs(&s.tools);
    if s.beta {
        let mut session = json!({
            "modalities": ["audio", "text"],
            "input_audio_format": s.format.beta(),
            "output_audio_format": s.format.beta(),
            "turn_detection": {"type": "server_vad"},
            "input_audio_transcription": {"model": "whisper-1"},
            "tools": tools,
        });
        if let Some(i) = &s.instructions {
            session["instructions"] = json!(i);
        }
        if let Some(v) = &s.voice {
            session["voice"] = json!(v);
        }
        json!({"type": "session.update", "session": session})
    } else {
        let mut output = json!({"format": s.format.ga()});
        if let Some(v) = &s.voice {
            output["voice"] = json!(v);
        }
        let mut session = json!({
            "type": "realtime",
            "model": s.model,
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": s.format.ga(), "turn_detection": {"type": "server_vad"},
                          "transcription": {"model": "whisper-1"}},
                "output": output,
            },
            "tools": tools,
        });
        if let Some(i) = &s.instructions {
            session["instructions"] = json!(i);
        }
        json!({"type": "session.update", "session": session})
    }
}

/// The server events this client acts on, GA names with their beta aliases;
/// every other type decodes to [`ServerEvent::Unknown`] and is ignored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "type")]
enum ServerEvent {
    /// Base64 agent audio in the session's format.
    #[serde(rename = "response.output_audio.delta", alias = "response.audio.delta")]
    AudioDelta {
        delta: String,
        #[serde(default)]
        item_id: Option<String>,
    },
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted,
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped,
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    InputTranscript { transcript: String },
    #[serde(
        rename = "response.output_audio_transcript.done",
        alias = "response.audio_transcript.done"
    )]
    OutputTranscript { transcript: String },
    #[serde(rename = "response.done")]
    ResponseDone,
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCall {
        name: String,
        call_id: String,
        #[serde(default = "empty_arguments")]
        arguments: String,
    },
    #[serde(rename = "error")]
    Error { error: ErrorDetail },
    #[serde(other)]
    Unknown,
}

fn empty_arguments() -> String {
    "{}".into()
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

impl ServerEvent {
    fn decode(text: &str) -> Result<ServerEvent, ProviderError> {
        serde_json::from_str(text)
            .map_err(|e| ProviderError::invalid_json("an OpenAI Realtime server event", text, &e))
    }
}

/// The arguments of the `transfer_call` tool.
#[derive(Debug, serde::Deserialize)]
struct TransferArgs {
    to: String,
}

/// The assistant item being spoken and how much of it arrived.
#[derive(Default)]
struct Speaking {
    item_id: Option<String>,
    received_ms: u64,
}

async fn run(s: Settings, mut io: Io) -> Result<(), AgentError> {
    let mut req = s
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ProviderError::BadUrl {
            url: s.url.clone(),
            reason: e.to_string(),
        })?;
    let auth = format!("Bearer {}", s.key)
        .parse()
        .map_err(|_| AgentError::config(KIND, "the API key is not a valid header value"))?;
    req.headers_mut().insert("Authorization", auth);
    if s.beta {
        req.headers_mut().insert(
            "OpenAI-Beta",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static("realtime=v1"),
        );
    }
    // `true`: TCP_NODELAY, so a 20 ms audio frame is not held back by Nagle.
    let (ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    .map_err(|_| ProviderError::ConnectTimeout {
        target: s.url.clone(),
        timeout: CONNECT_TIMEOUT,
    })?
    .map_err(|e| ProviderError::ws_connect(&s.url, e))?;
    let (mut tx, mut rx) = ws.split();
    let send = |v: Value| Message::Text(v.to_string().into());
    let sent = |e: tokio_tungstenite::tungstenite::Error| ProviderError::Send(e.to_string());
    tx.send(send(session_update(&s))).await.map_err(sent)?;
    if let Some(g) = &s.greeting {
        tx.send(send(greeting_request(g))).await.map_err(sent)?;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut speaking = Speaking::default();
    let mut speech_stopped_at: Option<Instant> = None;
    let mut bad_messages = 0u64;
    let mut end_after_reply = false;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(AgentError::HttpClient)?;
    loop {
        tokio::select! {
            input = io.inputs.recv() => match input {
                None => {
                    // The call ended.
                    let _ = tx.send(Message::Close(None)).await;
                    return Ok(());
                }
                Some(Input::Audio(pcm)) => {
                    let audio = b64.encode(s.format.encode(&pcm));
                    tx.send(send(json!({"type": "input_audio_buffer.append", "audio": audio})))
                        .await
                        .map_err(sent)?;
                }
                Some(Input::Dtmf(d)) => {
                    let item = json!({"type": "conversation.item.create", "item": {
                        "type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": format!("(The caller pressed the key {d}.)")}]}});
                    tx.send(send(item)).await.map_err(sent)?;
                }
                Some(Input::Cleared { dropped_ms }) => {
                    if let (Some(id), true) = (&speaking.item_id, dropped_ms > 0) {
                        let end = speaking.received_ms.saturating_sub(dropped_ms);
                        tx.send(send(json!({"type": "conversation.item.truncate",
                            "item_id": id, "content_index": 0, "audio_end_ms": end})))
                            .await
                            .map_err(sent)?;
                        speaking.received_ms = end;
                    }
                }
                Some(Input::Turn(_) | Input::Hold(_)) => {}
            },
            msg = rx.next() => {
                let text = match msg {
                    None => {
                        return Err(ProviderError::Closed { who: "OpenAI Realtime", detail: None }.into())
                    }
                    Some(Err(e)) => return Err(ProviderError::Lost(e.to_string()).into()),
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(frame))) => {
                        return Err(ProviderError::Closed {
                            who: "OpenAI Realtime",
                            detail: frame.map(|f| format!("close code {}: {}", f.code, f.reason)),
                        }
                        .into())
                    }
                    Some(Ok(_)) => continue,
                };
                let ev = match ServerEvent::decode(&text) {
                    Ok(ev) => ev,
                    Err(e) => {
                        bad_messages += 1;
                        tracing::debug!(bad_messages, error = %e, "provider message dropped");
                        continue;
                    }
                };
                match ev {
                    ServerEvent::AudioDelta { delta, item_id } => {
                        let bytes = match b64.decode(&delta) {
                            Ok(b) => b,
                            Err(e) => {
                                bad_messages += 1;
                                let e = ProviderError::AudioFormat {
                                    expected: "base64 audio in `delta`",
                                    got: format!("`{}` ({e})", super::error::excerpt(&delta)),
                                };
                                tracing::debug!(bad_messages, error = %e, "provider message dropped");
                                continue;
                            }
                        };
                        if item_id != speaking.item_id {
                            speaking = Speaking { item_id, received_ms: 0 };
                        }
                        speaking.received_ms += s.format.ms(bytes.len());
                        if let Some(t) = speech_stopped_at.take() {
                            io.send(Output::Event(AgentEvent::Latency(TurnLatency {
                                total_ms: t.elapsed().as_millis() as u64,
                                ..Default::default()
                            })));
                        }
                        io.send(Output::Audio(s.format.decode(&bytes)));
                    }
                    ServerEvent::SpeechStarted if speaking.item_id.is_some() => {
                        io.send(Output::Clear);
                        io.send(Output::Event(AgentEvent::Interruption));
                    }
                    ServerEvent::SpeechStopped => speech_stopped_at = Some(Instant::now()),
                    ServerEvent::InputTranscript { transcript } => {
                        io.send(Output::Event(AgentEvent::Transcript { role: "user".into(), text: transcript }));
                    }
                    ServerEvent::OutputTranscript { transcript } => {
                        io.send(Output::Event(AgentEvent::Transcript { role: "agent".into(), text: transcript }));
                    }
                    ServerEvent::ResponseDone if end_after_reply => {
                        io.send(Output::HangupAfterPlayout);
                    }
                    ServerEvent::FunctionCall { name, call_id, arguments: args } => {
                        io.send(Output::Event(AgentEvent::ToolCall { name: name.clone(), arguments: args.clone() }));
                        let output = match name.as_str() {
                            "transfer_call" => match serde_json::from_str::<TransferArgs>(&args) {
                                Ok(TransferArgs { to }) => {
                                    io.send(Output::Event(AgentEvent::Transfer { to: to.clone() }));
                                    json!({"status": "transferring", "to": to}).to_string()
                                }
                                Err(e) => json!({"error": format!("expected {{\"to\": string}}: {e}")}).to_string(),
                            },
                            "end_call" => {
                                end_after_reply = true;
                                json!({"status": "ending the call after this reply"}).to_string()
                            }
                            other => match s.tools.iter().find(|t| t.name == other) {
                                Some(t) => call_http_tool(&http, t, &args).await,
                                None => json!({"error": format!("unknown tool `{other}`")}).to_string(),
                            },
                        };
                        tx.send(send(json!({"type": "conversation.item.create", "item": {
                            "type": "function_call_output", "call_id": call_id, "output": output}})))
                            .await
                            .map_err(sent)?;
                        tx.send(send(json!({"type": "response.create"})))
                            .await
                            .map_err(sent)?;
                    }
                    ServerEvent::Error { error } => {
                        let message = match (error.message, error.code) {
                            (Some(m), Some(c)) => format!("{m} ({c})"),
                            (Some(m), None) => m,
                            (None, Some(c)) => c,
                            (None, None) => "unknown error".into(),
                        };
                        io.send(Output::Event(AgentEvent::Error { message }));
                    }
                    ServerEvent::SpeechStarted | ServerEvent::ResponseDone | ServerEvent::Unknown => {}
                }
            }
        }
    }
}

/// POSTs the model's arguments to a profile tool; its body goes back to the
/// model (errors too, so it can tell the caller).
async fn call_http_tool(http: &reqwest::Client, t: &HttpTool, args: &str) -> String {
    let resp = http
        .post(&t.url)
        .header("Content-Type", "application/json")
        .body(args.to_string())
        .send()
        .await;
    match resp {
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            if status.is_success() {
                body
            } else {
                json!({"error": format!("tool answered {status}"), "body": body}).to_string()
            }
        }
        Err(e) => json!({"error": e.to_string()}).to_string(),
    }
}

/// For the fuzz tests (`tests/fuzz.rs`), not an API: one server event as
/// the session loop takes it (decode, base64 audio in each format, the
/// `transfer_call` arguments).
#[doc(hidden)]
pub fn fuzz_server_event(text: &str) {
    match ServerEvent::decode(text) {
        Ok(ServerEvent::AudioDelta { delta, .. }) => {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&delta) {
                for f in [Format::Pcmu, Format::Pcma, Format::Pcm16] {
                    let _ = (f.ms(bytes.len()), f.decode(&bytes));
                }
            }
        }
        Ok(ServerEvent::FunctionCall { arguments, .. }) => {
            let _ = serde_json::from_str::<TransferArgs>(&arguments);
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn g711_calls_talk_g711_and_others_pcm16_at_24k() {
        assert_eq!(Format::for_codec(Some(Codec::Pcmu)), Format::Pcmu);
        assert_eq!(Format::for_codec(Some(Codec::Opus)).rate(), 24000);
        let pcm = vec![1000i16, -2000, 3000];
        for f in [Format::Pcmu, Format::Pcma, Format::Pcm16] {
            let back = f.decode(&f.encode(&pcm));
            for (a, b) in pcm.iter().zip(&back) {
                assert!((a - b).abs() < 150, "{f:?}: {a} vs {b}");
            }
        }
        assert_eq!(Format::Pcm16.ms(48_000), 1000);
        assert_eq!(Format::Pcmu.ms(8_000), 1000);
    }

    #[test]
    fn session_update_shapes() {
        let s = Settings {
            url: String::new(),
            key: String::new(),
            beta: false,
            model: "m".into(),
            instructions: Some("be nice".into()),
            voice: Some("alloy".into()),
            tools: vec![],
            format: Format::Pcmu,
            greeting: None,
        };
        let ga = session_update(&s);
        assert_eq!(ga["session"]["type"], "realtime");
        assert_eq!(
            ga["session"]["audio"]["input"]["format"]["type"],
            "audio/pcmu"
        );
        assert_eq!(ga["session"]["audio"]["output"]["voice"], "alloy");
        assert_eq!(ga["session"]["tools"][0]["name"], "transfer_call");
        let beta = session_update(&Settings { beta: true, ..s });
        assert_eq!(beta["session"]["input_audio_format"], "g711_ulaw");
        assert_eq!(beta["session"]["turn_detection"]["type"], "server_vad");
    }

    /// What the fake server (tests/fakes/fake_openai_realtime.py) sends,
    /// with its event ids and extra fields.
    #[test]
    fn server_events_decode_with_ga_and_beta_names() {
        let base = r#""event_id":"event_1_7","response_id":"resp_1_1","item_id":"item_1_2","output_index":0,"content_index":0"#;
        for name in ["response.output_audio.delta", "response.audio.delta"] {
            let t = format!(r#"{{"type":"{name}",{base},"delta":"AAAA"}}"#);
            assert_eq!(
                ServerEvent::decode(&t).unwrap(),
                ServerEvent::AudioDelta {
                    delta: "AAAA".into(),
                    item_id: Some("item_1_2".into())
                },
                "{name}"
            );
        }
        for name in [
            "response.output_audio_transcript.done",
            "response.audio_transcript.done",
        ] {
            let t = format!(r#"{{"type":"{name}",{base},"transcript":"hello caller"}}"#);
            assert_eq!(
                ServerEvent::decode(&t).unwrap(),
                ServerEvent::OutputTranscript {
                    transcript: "hello caller".into()
                },
                "{name}"
            );
        }
        let cases = [
            (
                r#"{"type":"input_audio_buffer.speech_started","event_id":"event_1_3","audio_start_ms":1200,"item_id":"item_1_1"}"#,
                ServerEvent::SpeechStarted,
            ),
            (
                r#"{"type":"input_audio_buffer.speech_stopped","event_id":"event_1_4","audio_end_ms":2400,"item_id":"item_1_1"}"#,
                ServerEvent::SpeechStopped,
            ),
            (
                r#"{"type":"conversation.item.input_audio_transcription.completed","event_id":"event_1_6","item_id":"item_1_1","content_index":0,"transcript":"hello agent"}"#,
                ServerEvent::InputTranscript {
                    transcript: "hello agent".into(),
                },
            ),
            (
                r#"{"type":"response.done","event_id":"event_1_9","response":{"object":"realtime.response","id":"resp_1_1","status":"completed","output":[],"usage":{"total_tokens":10}}}"#,
                ServerEvent::ResponseDone,
            ),
            (
                r#"{"type":"response.function_call_arguments.done","event_id":"event_1_5","response_id":"resp_1_1","item_id":"item_1_2","output_index":0,"call_id":"call_1","name":"transfer_call","arguments":"{\"to\": \"sip:operator@127.0.0.1:9\"}"}"#,
                ServerEvent::FunctionCall {
                    name: "transfer_call".into(),
                    call_id: "call_1".into(),
                    arguments: r#"{"to": "sip:operator@127.0.0.1:9"}"#.into(),
                },
            ),
            (
                r#"{"type":"error","event_id":"event_1_2","error":{"type":"server_error","code":null,"message":"boom","param":null,"event_id":null}}"#,
                ServerEvent::Error {
                    error: ErrorDetail {
                        message: Some("boom".into()),
                        code: None,
                    },
                },
            ),
            (
                r#"{"type":"session.created","event_id":"event_1_1","session":{"id":"sess_1"}}"#,
                ServerEvent::Unknown,
            ),
            (
                r#"{"type":"rate_limits.updated","event_id":"event_1_10","rate_limits":[]}"#,
                ServerEvent::Unknown,
            ),
            (
                r#"{"type":"response.output_audio_transcript.delta","delta":"hel"}"#,
                ServerEvent::Unknown,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(ServerEvent::decode(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn garbage_server_events_are_typed_errors() {
        for junk in [
            r#"{"type": "session.updated", "session": {"id": "#,
            "\u{0}\u{1}not json at all",
            "}{",
            "[1,2]",
            r#"{"no_type":1}"#,
            r#"{"type":"response.output_audio.delta","item_id":"i"}"#,
            r#"{"type":"conversation.item.input_audio_transcription.completed","transcript":7}"#,
        ] {
            let e = ServerEvent::decode(junk).unwrap_err();
            assert!(
                matches!(e, ProviderError::InvalidJson { .. }),
                "{junk}: {e}"
            );
            assert!(
                e.to_string()
                    .contains("expected an OpenAI Realtime server event"),
                "{e}"
            );
        }
    }
}
