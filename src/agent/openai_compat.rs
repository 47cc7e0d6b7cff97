//! OpenAI-compatible local services (faster-whisper-server, speaches, vLLM,
//! Ollama, llama.cpp, Kokoro-FastAPI, ...): each caller utterance is POSTed
//! to `/audio/transcriptions` as a 16 kHz WAV, the transcript goes to
//! `/chat/completions` with `"stream": true` (SSE), and each sentence of the
//! answer to `/audio/speech` (`pcm`: s16le 24 kHz, or a WAV at any rate).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::error::excerpt;
use super::pipeline::{self, Backend, BoxFut, LoopConfig, Msg};
use super::remote::Remote;
use super::{AgentContext, AgentError, ProviderError};
use crate::media::pcm::S16leStream;
use crate::media::resample::StreamResampler;
use crate::media::wav::{self, HeaderStatus};

const KIND: &str = "openai_compat";

/// The agent's PCM rate (what Whisper-style ASR wants).
pub const RATE: u32 = 16000;
/// OpenAI's `pcm` speech format rate.
const PCM_RATE: u32 = 24000;
/// Longest a whole transcription request may take.
const ASR_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Settings {
    pub asr_url: String,
    pub llm_url: String,
    pub tts_url: String,
    pub asr_model: String,
    pub llm_model: String,
    pub tts_model: String,
    pub voice: String,
    pub api_key: Option<String>,
    pub system: Option<String>,
    /// Audio kept from before speech starts (ms).
    pub preroll_ms: u32,
    /// Adaptive end of turn (`None`: the route VAD's end of turn).
    pub end_of_turn: Option<crate::agent::turn_end::Timing>,
    /// Open the connections when the call starts.
    pub warm_up: bool,
}

impl Settings {
    pub fn with_preroll(mut self, ms: u32) -> Settings {
        self.preroll_ms = ms;
        self
    }

    pub fn with_end_of_turn(mut self, t: Option<crate::agent::turn_end::Timing>) -> Settings {
        self.end_of_turn = t;
        self
    }

    pub fn with_warm_up(mut self, on: bool) -> Settings {
        self.warm_up = on;
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn from_config(
        base_url: Option<&str>,
        asr_url: Option<&str>,
        llm_url: Option<&str>,
        tts_url: Option<&str>,
        asr_model: &str,
        llm_model: &str,
        tts_model: &str,
        voice: Option<&str>,
        api_key_env: Option<&str>,
        system: Option<&str>,
    ) -> Result<Settings, AgentError> {
        let base = base_url.map(|b| b.trim_end_matches('/').to_string());
        let pick = |explicit: Option<&str>, path: &str, what: &str| {
            explicit
                .map(str::to_string)
                .or_else(|| base.as_ref().map(|b| format!("{b}{path}")))
                .ok_or_else(|| {
                    AgentError::config(
                        KIND,
                        format!("expected `base_url` or `{what}`, got neither"),
                    )
                })
        };
        let api_key = match api_key_env {
            Some(name) => Some(std::env::var(name).map_err(|_| AgentError::EnvUnset {
                agent: KIND,
                var: name.to_string(),
            })?),
            None => None,
        };
        Ok(Settings {
            asr_url: pick(asr_url, "/audio/transcriptions", "asr_url")?,
            llm_url: pick(llm_url, "/chat/completions", "llm_url")?,
            tts_url: pick(tts_url, "/audio/speech", "tts_url")?,
            asr_model: asr_model.into(),
            llm_model: llm_model.into(),
            tts_model: tts_model.into(),
            voice: voice.unwrap_or("alloy").into(),
            api_key,
            system: system.map(str::to_string),
            preroll_ms: crate::config::DEFAULT_PREROLL_MS,
            end_of_turn: None,
            warm_up: true,
        })
    }
}

struct OpenaiCompat {
    s: Settings,
    http: reqwest::Client,
}

impl OpenaiCompat {
    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.s.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }
}

/// Streamed speech: raw s16le at 24 kHz, or a WAV (header parsed as it
/// comes, sizes may be unknown), resampled to the agent rate.
struct SpeechDecoder {
    head: Vec<u8>,
    decided: bool,
    /// The rate of raw `pcm` answers: OpenAI's 24 kHz unless the server
    /// says otherwise (`X-Sample-Rate`, e.g. Piper voices at 22050 Hz).
    pcm_rate: u32,
    pcm: S16leStream,
    rs: Option<StreamResampler>,
    channels: usize,
}

impl SpeechDecoder {
    fn with_pcm_rate(pcm_rate: u32) -> Self {
        SpeechDecoder {
            pcm_rate,
            head: Vec::new(),
            decided: false,
            pcm: S16leStream::default(),
            rs: None,
            channels: 1,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Result<Vec<i16>, ProviderError> {
        let mut out = Vec::new();
        if self.decided {
            self.decode(bytes, &mut out);
            return Ok(out);
        }
        self.head.extend_from_slice(bytes);
        if self.head.len() < 12 {
            return Ok(out);
        }
        if &self.head[0..4] != b"RIFF" {
            self.decided = true;
            self.rs = Some(StreamResampler::new(self.pcm_rate, RATE));
            let head = std::mem::take(&mut self.head);
            self.decode(&head, &mut out);
            return Ok(out);
        }
        // Wait for the chunks up to `data`.
        let header = wav::header(&self.head).map_err(|e| ProviderError::AudioFormat {
            expected: "raw s16le or a 16-bit PCM WAV",
            got: format!("a WAV answer that does not parse: {e}"),
        })?;
        match header {
            HeaderStatus::Incomplete => Ok(out),
            HeaderStatus::Complete(h) => {
                self.channels = usize::from(h.channels);
                self.rs = Some(StreamResampler::new(h.sample_rate, RATE));
                self.decided = true;
                let rest = self.head.split_off(h.data_start);
                self.head.clear();
                self.decode(&rest, &mut out);
                Ok(out)
            }
        }
    }

    fn decode(&mut self, bytes: &[u8], out: &mut Vec<i16>) {
        let mut s = Vec::new();
        self.pcm.push(bytes, &mut s);
        if self.channels > 1 {
            // Interleaved: keep the first channel (odd leftovers are rare
            // enough to ignore across chunk edges).
            s = s.into_iter().step_by(self.channels).collect();
        }
        if let Some(rs) = self.rs.as_mut() {
            rs.process(&s, out);
        }
    }

    fn finish(&mut self) -> Result<Vec<i16>, ProviderError> {
        let mut out = Vec::new();
        if !self.decided {
            if self.head.is_empty() {
                return Ok(out);
            }
            if self.head.starts_with(b"RIFF") {
                return Err(ProviderError::AudioFormat {
                    expected: "WAV audio data",
                    got: format!("the answer ended in the header ({} bytes)", self.head.len()),
                });
            }
            let head = std::mem::take(&mut self.head);
            self.rs = Some(StreamResampler::new(self.pcm_rate, RATE));
            self.decided = true;
            self.decode(&head, &mut out);
        }
        if let Some(rs) = self.rs.as_mut() {
            rs.flush(&mut out);
        }
        Ok(out)
    }
}

/// An OpenAI-style error object (`{"error": {"message": ..}}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

impl ApiError {
    fn into_provider_error(self, who: &'static str) -> ProviderError {
        let message = match (self.message, self.code) {
            (Some(m), Some(c)) => format!("{m} ({c})"),
            (Some(m), None) => m,
            (None, Some(c)) => c,
            (None, None) => "an error without a message".into(),
        };
        ProviderError::Reported { who, message }
    }
}

/// One `chat.completion.chunk` of a streamed answer (or an error object).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct ChatChunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Delta,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
struct Delta {
    /// `null` or absent in role-only and final chunks.
    #[serde(default)]
    content: Option<String>,
}

/// A whole `chat.completion` (a server that ignores `stream`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct ChatCompletion {
    #[serde(default)]
    choices: Vec<CompletionChoice>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct CompletionChoice {
    message: CompletionMessage,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct CompletionMessage {
    #[serde(default)]
    content: Option<String>,
}

/// A `response_format=json` transcription.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Transcription {
    text: String,
}

/// The content of one SSE `data:` payload; `None` for `[DONE]`.
fn sse_content(data: &str) -> Result<Option<String>, ProviderError> {
    if data == "[DONE]" {
        return Ok(None);
    }
    let chunk: ChatChunk = serde_json::from_str(data)
        .map_err(|e| ProviderError::invalid_json("a chat.completion.chunk", data, &e))?;
    if let Some(err) = chunk.error {
        return Err(err.into_provider_error("the LLM"));
    }
    Ok(Some(
        chunk
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.delta.content)
            .unwrap_or_default(),
    ))
}

/// The next complete `data:` payload in `buf` (consumed with the lines
/// before it: comments, `event:`, `id:`, blank lines).
fn next_sse_data(buf: &mut Vec<u8>) -> Option<String> {
    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        let line = String::from_utf8_lossy(&line);
        if let Some(data) = line.trim().strip_prefix("data:") {
            return Some(data.trim().to_string());
        }
    }
    None
}

/// The text of a `chat.completion`.
fn completion_text(body: &[u8]) -> Result<String, ProviderError> {
    let text = String::from_utf8_lossy(body);
    let c: ChatCompletion = serde_json::from_slice(body)
        .map_err(|e| ProviderError::invalid_json("a chat.completion", &text, &e))?;
    c.choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .ok_or_else(|| ProviderError::Unexpected {
            expected: "choices[0].message.content",
            got: excerpt(&text),
        })
}

/// The text of a transcription answer.
fn transcription_text(body: &[u8]) -> Result<String, ProviderError> {
    serde_json::from_slice::<Transcription>(body)
        .map(|t| t.text)
        .map_err(|e| {
            ProviderError::invalid_json(
                "a transcription {\"text\": ..}",
                &String::from_utf8_lossy(body),
                &e,
            )
        })
}

impl Backend for OpenaiCompat {
    fn transcribe(&self, pcm: Vec<i16>) -> BoxFut<'_, Result<String, ProviderError>> {
        Box::pin(async move {
            let part = reqwest::multipart::Part::bytes(wav::mono_bytes(&pcm, RATE))
                .file_name("utterance.wav")
                .mime_str("audio/wav")
                .map_err(ProviderError::Request)?;
            let form = reqwest::multipart::Form::new()
                .part("file", part)
                .text("model", self.s.asr_model.clone())
                .text("response_format", "json");
            let req = self
                .auth(self.http.post(&self.s.asr_url))
                .timeout(ASR_TIMEOUT)
                .multipart(form);
            let resp = pipeline::send(req).await?;
            let body = resp.bytes().await.map_err(ProviderError::Request)?;
            transcription_text(&body)
        })
    }

    fn llm(
        &self,
        messages: Vec<Msg>,
        tx: mpsc::UnboundedSender<String>,
    ) -> BoxFut<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            let body = serde_json::json!({
                "model": self.s.llm_model,
                "stream": true,
                "messages": messages,
            });
            let mut resp =
                pipeline::send(self.auth(self.http.post(&self.s.llm_url)).json(&body)).await?;
            let is_json = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let mut buf: Vec<u8> = Vec::new();
            if is_json {
                // A server that ignores `stream`: one chat.completion.
                while let Some(c) = pipeline::next_chunk(&mut resp).await? {
                    buf.extend_from_slice(&c);
                }
                let _ = tx.send(completion_text(&buf)?);
                return Ok(());
            }
            let mut got_data = false;
            loop {
                let chunk = pipeline::next_chunk(&mut resp).await?;
                let ended = chunk.is_none();
                if let Some(c) = chunk {
                    buf.extend_from_slice(&c);
                }
                while let Some(data) = next_sse_data(&mut buf) {
                    got_data = true;
                    match sse_content(&data)? {
                        Some(t) => {
                            let _ = tx.send(t);
                        }
                        None => {
                            // Read the rest so the connection can be reused.
                            while let Ok(Some(_)) = pipeline::next_chunk(&mut resp).await {}
                            return Ok(());
                        }
                    }
                }
                if ended {
                    return if got_data {
                        Ok(()) // no [DONE], but the stream ended normally
                    } else {
                        Err(ProviderError::Unexpected {
                            expected: "SSE `data:` lines",
                            got: "an answer without any".into(),
                        })
                    };
                }
            }
        })
    }

    fn tts(
        &self,
        text: String,
        tx: mpsc::UnboundedSender<Vec<i16>>,
    ) -> BoxFut<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            let body = serde_json::json!({
                "model": self.s.tts_model,
                "input": text,
                "voice": self.s.voice,
                "response_format": "pcm",
            });
            let mut resp =
                pipeline::send(self.auth(self.http.post(&self.s.tts_url)).json(&body)).await?;
            let pcm_rate = resp
                .headers()
                .get("x-sample-rate")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
                .filter(|r| (4000..=192_000).contains(r))
                .unwrap_or(PCM_RATE);
            let mut dec = SpeechDecoder::with_pcm_rate(pcm_rate);
            while let Some(c) = pipeline::next_chunk(&mut resp).await? {
                let a = dec.push(&c)?;
                if !a.is_empty() {
                    let _ = tx.send(a);
                }
            }
            let a = dec.finish()?;
            if !a.is_empty() {
                let _ = tx.send(a);
            }
            Ok(())
        })
    }
}

/// Starts the agent for one call.
pub fn spawn(s: Settings, ctx: &AgentContext) -> Result<Remote, AgentError> {
    let http = pipeline::http_client()?;
    let system = s.system.clone();
    let greeting = ctx.greeting.clone();
    let preroll_ms = s.preroll_ms;
    let end_of_turn = s.end_of_turn;
    let backend = Arc::new(OpenaiCompat { s, http });
    Ok(Remote::spawn(KIND, RATE, move |io| async move {
        // A dead endpoint fails at once (a fallback takes over).
        for u in [&backend.s.asr_url, &backend.s.llm_url, &backend.s.tts_url] {
            pipeline::reachable(u).await?;
        }
        if backend.s.warm_up {
            let urls =
                [&backend.s.asr_url, &backend.s.llm_url, &backend.s.tts_url].map(|u| u.to_string());
            tokio::spawn(pipeline::warm_up(backend.http.clone(), urls.to_vec()));
        }
        pipeline::conversation(
            io,
            backend,
            LoopConfig {
                rate: RATE,
                system,
                collect_utterances: true,
                greeting,
                preroll_ms,
                end_of_turn,
            },
            None,
            None,
            None,
        )
        .await
    }))
}

/// For the fuzz tests (`tests/fuzz.rs`), not an API: a streamed speech
/// answer (raw or WAV) cut into pieces at `cuts`, as `tts` reads it.
#[doc(hidden)]
pub fn fuzz_speech(bytes: &[u8], cuts: &[usize], pcm_rate: u32) {
    let mut dec = SpeechDecoder::with_pcm_rate(pcm_rate);
    let mut at = 0;
    for &c in cuts {
        let end = c.clamp(at, bytes.len());
        if dec.push(&bytes[at..end]).is_err() {
            return;
        }
        at = end;
    }
    if dec.push(&bytes[at..]).is_ok() {
        let _ = dec.finish();
    }
}

/// For the fuzz tests, not an API: a streamed chat answer (SSE lines) as
/// `llm` reads it, a whole `chat.completion`, a transcription.
#[doc(hidden)]
pub fn fuzz_llm_answer(bytes: &[u8]) {
    let mut buf = bytes.to_vec();
    while let Some(data) = next_sse_data(&mut buf) {
        if !matches!(sse_content(&data), Ok(Some(_))) {
            break;
        }
    }
    let _ = completion_text(bytes);
    let _ = transcription_text(bytes);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn speech_decoder_reads_wav_with_unknown_sizes_in_pieces() {
        let pcm: Vec<i16> = (0..22050).map(|i| ((i % 50) * 100) as i16).collect();
        let mut wav = wav::mono_bytes(&pcm, 22050);
        wav[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        wav[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut d = SpeechDecoder::with_pcm_rate(PCM_RATE);
        let mut out = Vec::new();
        for c in wav.chunks(7) {
            out.extend(d.push(c).unwrap());
        }
        out.extend(d.finish().unwrap());
        assert!((out.len() as i64 - 16000).abs() <= 2, "{}", out.len());
    }

    #[test]
    fn speech_decoder_takes_the_servers_pcm_rate() {
        // 0.5 s at 22050 Hz (Piper behind local-tts-studio) is 0.5 s at 16 kHz.
        let pcm: Vec<i16> = (0..11025).map(|i| ((i % 40) * 200) as i16).collect();
        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut d = SpeechDecoder::with_pcm_rate(22050);
        let mut out = d.push(&bytes).unwrap();
        out.extend(d.finish().unwrap());
        assert!((out.len() as i64 - 8000).abs() <= 40, "{}", out.len());
    }

    #[test]
    fn speech_decoder_reads_raw_pcm_at_24k() {
        let mut d = SpeechDecoder::with_pcm_rate(PCM_RATE);
        let bytes: Vec<u8> = std::iter::repeat_n([0x10u8, 0x00], 24000)
            .flatten()
            .collect();
        let mut out = Vec::new();
        for c in bytes.chunks(4801) {
            out.extend(d.push(c).unwrap());
        }
        out.extend(d.finish().unwrap());
        assert!((out.len() as i64 - 16000).abs() <= 2, "{}", out.len());
    }

    #[test]
    fn urls_come_from_base_or_explicit() {
        let s = Settings::from_config(
            Some("http://h:1/v1/"),
            None,
            Some("http://x/chat"),
            None,
            "a",
            "b",
            "c",
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.asr_url, "http://h:1/v1/audio/transcriptions");
        assert_eq!(s.llm_url, "http://x/chat");
        assert_eq!(s.tts_url, "http://h:1/v1/audio/speech");
    }

    /// Chunks as tests/fakes/fake_openai_compat.py (and vLLM, Ollama) send them.
    #[test]
    fn chat_chunks_decode_and_errors_are_typed() {
        let chunk = |delta: &str, finish: &str| {
            format!(
                r#"{{"id": "chatcmpl-fake1", "object": "chat.completion.chunk", "created": 1764763200, "model": "m", "choices": [{{"index": 0, "delta": {delta}, "finish_reason": {finish}}}]}}"#
            )
        };
        assert_eq!(
            sse_content(&chunk(r#"{"role": "assistant", "content": ""}"#, "null")).unwrap(),
            Some(String::new())
        );
        assert_eq!(
            sse_content(&chunk(r#"{"content": "Hel"}"#, "null")).unwrap(),
            Some("Hel".into())
        );
        assert_eq!(
            sse_content(&chunk(r#"{"content": null}"#, "null")).unwrap(),
            Some(String::new())
        );
        assert_eq!(
            sse_content(&chunk("{}", r#""stop""#)).unwrap(),
            Some(String::new())
        );
        assert_eq!(sse_content("[DONE]").unwrap(), None);
        let e = sse_content(r#"{"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}"#).unwrap_err();
        assert!(matches!(e, ProviderError::Reported { .. }), "{e}");
        assert!(e.to_string().contains("The server had an error"), "{e}");
        for junk in ["\u{0}\u{1}garbage", r#"{"choices": "#, r#"{"choices": 5}"#] {
            let e = sse_content(junk).unwrap_err();
            assert!(
                e.to_string().contains("expected a chat.completion.chunk"),
                "{e}"
            );
        }
    }

    #[test]
    fn whole_completions_and_transcriptions_decode() {
        let completion = br#"{"id": "chatcmpl-fake1", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello caller."}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}}"#;
        assert_eq!(completion_text(completion).unwrap(), "Hello caller.");
        let e = completion_text(br#"{"choices": []}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("expected choices[0].message.content"),
            "{e}"
        );
        assert_eq!(
            transcription_text(br#"{"text": "hello agent"}"#).unwrap(),
            "hello agent"
        );
        let verbose = br#"{"task": "transcribe", "language": "english", "duration": 1.2, "text": "hello agent", "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 1.2, "text": "hello agent"}]}"#;
        assert_eq!(transcription_text(verbose).unwrap(), "hello agent");
        for junk in [
            &b"\xff\xfe\x00garbage"[..],
            b"{\"txt\": \"x\"}",
            b"hello agent\n",
        ] {
            let e = transcription_text(junk).unwrap_err();
            assert!(e.to_string().contains("expected a transcription"), "{e}");
        }
    }
}
