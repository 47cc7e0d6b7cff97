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
use super::{AgentContext, AgentError, AgentEvent, TurnLatency};
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
}

fn api_key(env: &Option<String>, file: &Option<std::path::PathBuf>) -> Result<String, String> {
    if let Some(f) = file {
        return std::fs::read_to_string(f)
            .map(|k| k.trim().to_string())
            .map_err(|e| format!("api_key_file {}: {e}", f.display()));
    }
    let var = env.clone().unwrap_or_else(|| "OPENAI_API_KEY".into());
    std::env::var(&var)
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| format!("the API key variable `{var}` is not set"))
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
        return Err(AgentError::Config("not an openai_realtime agent".into()));
    };
    let key = api_key(api_key_env, api_key_file).map_err(AgentError::Config)?;
    let instructions =
        match instructions_file {
            Some(f) => Some(std::fs::read_to_string(f).map_err(|e| {
                AgentError::Config(format!("instructions_file {}: {e}", f.display()))
            })?),
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
    };
    Ok(Remote::spawn("openai_realtime", format.rate(), move |io| {
        run(settings, io)
    }))
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

/// The assistant item being spoken and how much of it arrived.
#[derive(Default)]
struct Speaking {
    item_id: Option<String>,
    received_ms: u64,
}

async fn run(s: Settings, mut io: Io) -> Result<(), String> {
    let mut req = s
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad URL {}: {e}", s.url))?;
    let auth = format!("Bearer {}", s.key)
        .parse()
        .map_err(|_| "the API key is not a valid header value".to_string())?;
    req.headers_mut().insert("Authorization", auth);
    if s.beta {
        req.headers_mut()
            .insert("OpenAI-Beta", "realtime=v1".parse().map_err(|_| "header")?);
    }
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| format!("no connection to {} within 5 s", s.url))?
        .map_err(|e| format!("cannot connect to {}: {e}", s.url))?;
    let (mut tx, mut rx) = ws.split();
    let send = |v: Value| Message::Text(v.to_string().into());
    tx.send(send(session_update(&s)))
        .await
        .map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut speaking = Speaking::default();
    let mut speech_stopped_at: Option<Instant> = None;
    let mut bad_messages = 0u64;
    let mut end_after_reply = false;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
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
                        .map_err(|e| format!("send failed: {e}"))?;
                }
                Some(Input::Dtmf(d)) => {
                    let item = json!({"type": "conversation.item.create", "item": {
                        "type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": format!("(The caller pressed the key {d}.)")}]}});
                    tx.send(send(item)).await.map_err(|e| e.to_string())?;
                }
                Some(Input::Cleared { dropped_ms }) => {
                    if let (Some(id), true) = (&speaking.item_id, dropped_ms > 0) {
                        let end = speaking.received_ms.saturating_sub(dropped_ms);
                        tx.send(send(json!({"type": "conversation.item.truncate",
                            "item_id": id, "content_index": 0, "audio_end_ms": end})))
                            .await
                            .map_err(|e| e.to_string())?;
                        speaking.received_ms = end;
                    }
                }
                Some(Input::Turn(_) | Input::Hold(_)) => {}
            },
            msg = rx.next() => {
                let text = match msg {
                    None => return Err("the provider closed the connection".into()),
                    Some(Err(e)) => return Err(format!("connection lost: {e}")),
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) => return Err("the provider closed the session".into()),
                    Some(Ok(_)) => continue,
                };
                let Ok(ev) = serde_json::from_str::<Value>(&text) else {
                    bad_messages += 1;
                    tracing::debug!(bad_messages, "ignoring a non-JSON message from the provider");
                    continue;
                };
                let kind = ev["type"].as_str().unwrap_or_default();
                match kind {
                    "response.output_audio.delta" | "response.audio.delta" => {
                        let Some(bytes) = ev["delta"].as_str().and_then(|d| b64.decode(d).ok()) else {
                            bad_messages += 1;
                            continue;
                        };
                        let item = ev["item_id"].as_str().map(str::to_string);
                        if item != speaking.item_id {
                            speaking = Speaking { item_id: item, received_ms: 0 };
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
                    "input_audio_buffer.speech_started" if speaking.item_id.is_some() => {
                        io.send(Output::Clear);
                        io.send(Output::Event(AgentEvent::Interruption));
                    }
                    "input_audio_buffer.speech_stopped" => speech_stopped_at = Some(Instant::now()),
                    "conversation.item.input_audio_transcription.completed" => {
                        if let Some(t) = ev["transcript"].as_str() {
                            io.send(Output::Event(AgentEvent::Transcript { role: "user".into(), text: t.into() }));
                        }
                    }
                    "response.output_audio_transcript.done" | "response.audio_transcript.done" => {
                        if let Some(t) = ev["transcript"].as_str() {
                            io.send(Output::Event(AgentEvent::Transcript { role: "agent".into(), text: t.into() }));
                        }
                    }
                    "response.done" if end_after_reply => {
                        io.send(Output::HangupAfterPlayout);
                    }
                    "response.function_call_arguments.done" => {
                        let name = ev["name"].as_str().unwrap_or_default().to_string();
                        let call_id = ev["call_id"].as_str().unwrap_or_default().to_string();
                        let args = ev["arguments"].as_str().unwrap_or("{}").to_string();
                        io.send(Output::Event(AgentEvent::ToolCall { name: name.clone(), arguments: args.clone() }));
                        let parsed: Value = serde_json::from_str(&args).unwrap_or(Value::Null);
                        let output = match name.as_str() {
                            "transfer_call" => match parsed["to"].as_str() {
                                Some(to) => {
                                    io.send(Output::Event(AgentEvent::Transfer { to: to.into() }));
                                    json!({"status": "transferring", "to": to}).to_string()
                                }
                                None => json!({"error": "missing `to`"}).to_string(),
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
                            .map_err(|e| e.to_string())?;
                        tx.send(send(json!({"type": "response.create"})))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    "error" => {
                        let m = ev["error"]["message"].as_str().unwrap_or("unknown error").to_string();
                        io.send(Output::Event(AgentEvent::Error { message: m }));
                    }
                    _ => {}
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

#[cfg(test)]
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
}
