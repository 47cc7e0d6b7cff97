//! AVR's ASR -> LLM -> TTS containers over their HTTP streaming protocols
//! (PROTOCOLS.md section 2), at 8 kHz:
//! - ASR: one POST for the whole call, a chunked `audio/l16` request body
//!   (header `X-UUID`), read full duplex: each response chunk is one final
//!   utterance.
//! - LLM: `{"uuid","message","messages"}` -> concatenated JSON objects
//!   `{"type":"text","content":..}` (or plain text), split anywhere.
//! - TTS: `{"text"}` -> chunked `audio/l16` played as it arrives.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::error::excerpt;
use super::pipeline::{self, AudioSink, Backend, BoxFut, LoopConfig, Msg};
use super::remote::Remote;
use super::{AgentContext, AgentError, ProviderError};
use crate::media::pcm::{self, S16leStream};

pub const RATE: u32 = 8000;
/// Caller audio buffered towards the ASR before frames are dropped (2 s).
const ASR_QUEUE_FRAMES: usize = 100;

#[derive(Clone)]
pub struct Settings {
    pub asr_url: String,
    pub llm_url: String,
    pub tts_url: String,
    pub system: Option<String>,
    /// Hold a hesitation-final transcript (see `pipeline::LoopConfig`).
    pub end_of_turn: Option<super::turn_end::Timing>,
}

struct AvrPipeline {
    s: Settings,
    uuid: String,
    http: reqwest::Client,
}

/// One object of an AVR LLM's streamed answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LlmEvent {
    /// A piece of the answer.
    Text { content: String },
    Error {
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    /// `status`, `audio` and anything newer: not for us.
    #[serde(other)]
    Other,
}

/// Reads the LLM's answer: concatenated JSON objects split at any byte,
/// or plain UTF-8 text.
#[derive(Default)]
pub struct LlmParser {
    buf: Vec<u8>,
    json: Option<bool>,
    /// JSON objects that were not an [`LlmEvent`] (dropped, logged).
    pub dropped: u64,
}

impl LlmParser {
    /// Text pieces found so far; `Err` for an `error` object or junk.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, ProviderError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        if self.json.is_none() {
            match self.buf.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => self.json = Some(true),
                Some(_) => self.json = Some(false),
                None => return Ok(out),
            }
        }
        if self.json == Some(true) {
            let mut consumed = 0;
            // Framing first (objects may be split anywhere), then each
            // object is decoded on its own so one odd object is dropped
            // without losing the stream.
            let mut it =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<serde_json::Value>();
            loop {
                match it.next() {
                    Some(Ok(v)) => {
                        consumed = it.byte_offset();
                        match serde_json::from_value::<LlmEvent>(v) {
                            Ok(LlmEvent::Text { content }) => out.push(content),
                            Ok(LlmEvent::Error { content, message }) => {
                                return Err(ProviderError::Reported {
                                    who: "the LLM",
                                    message: content.or(message).unwrap_or_else(|| "error".into()),
                                });
                            }
                            Ok(LlmEvent::Other) => {}
                            Err(e) => {
                                self.dropped += 1;
                                tracing::debug!(error = %e, dropped = self.dropped,
                                    "LLM stream object dropped: expected {{\"type\":\"text\",\"content\":..}}");
                            }
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        let got = String::from_utf8_lossy(&self.buf[consumed..]);
                        return Err(ProviderError::invalid_json(
                            "concatenated {\"type\":..} objects",
                            &got,
                            &e,
                        ));
                    }
                    None => {
                        consumed = it.byte_offset();
                        break;
                    }
                }
            }
            self.buf.drain(..consumed);
        } else {
            match std::str::from_utf8(&self.buf) {
                Ok(s) => {
                    out.push(s.to_string());
                    self.buf.clear();
                }
                Err(e) if e.error_len().is_none() => {
                    let ok = e.valid_up_to();
                    out.push(String::from_utf8_lossy(&self.buf[..ok]).into_owned());
                    self.buf.drain(..ok);
                }
                Err(e) => {
                    return Err(ProviderError::Unexpected {
                        expected: "JSON objects or UTF-8 text",
                        got: format!("bytes that are neither ({e})"),
                    })
                }
            }
        }
        Ok(out)
    }

    pub fn finish(&self) -> Result<(), ProviderError> {
        if self.buf.iter().any(|b| !b.is_ascii_whitespace()) {
            return Err(ProviderError::Unexpected {
                expected: "the answer to end after a whole object",
                got: excerpt(&String::from_utf8_lossy(&self.buf)),
            });
        }
        Ok(())
    }
}

impl Backend for AvrPipeline {
    fn llm(
        &self,
        messages: Vec<Msg>,
        tx: mpsc::UnboundedSender<String>,
    ) -> BoxFut<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            let last = messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default();
            let body = serde_json::json!({
                "uuid": self.uuid,
                "message": last,
                "messages": messages,
            });
            let mut resp = pipeline::send(self.http.post(&self.s.llm_url).json(&body)).await?;
            let mut p = LlmParser::default();
            while let Some(c) = pipeline::next_chunk(&mut resp).await? {
                for t in p.push(&c)? {
                    let _ = tx.send(t);
                }
            }
            p.finish()
        })
    }

    fn tts(
        &self,
        text: String,
        tx: mpsc::UnboundedSender<Vec<i16>>,
    ) -> BoxFut<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            let body = serde_json::json!({ "text": text });
            let mut resp = pipeline::send(self.http.post(&self.s.tts_url).json(&body)).await?;
            let mut pcm = S16leStream::default();
            while let Some(c) = pipeline::next_chunk(&mut resp).await? {
                let mut a = Vec::new();
                pcm.push(&c, &mut a);
                if !a.is_empty() {
                    let _ = tx.send(a);
                }
            }
            Ok(())
        })
    }
}

/// One streaming ASR request: caller audio goes into the body as it comes,
/// transcripts come out of the response.
fn start_asr(
    http: reqwest::Client,
    url: String,
    uuid: String,
    body: mpsc::Receiver<Bytes>,
) -> pipeline::Transcripts {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let stream = futures_util::stream::unfold(body, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
        });
        let req = http
            .post(&url)
            .header("X-UUID", uuid)
            .header(
                reqwest::header::CONTENT_TYPE,
                "audio/l16; rate=8000; channels=1",
            )
            .body(reqwest::Body::wrap_stream(stream));
        // No header timeout: some ASR containers answer only with the first
        // transcript.
        let mut resp = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                let _ = tx.send(Err(ProviderError::Status {
                    status: r.status(),
                    body: String::new(),
                }));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(ProviderError::Request(e)));
                return;
            }
        };
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => match std::str::from_utf8(&c) {
                    Ok(t) => {
                        let t = t.trim();
                        if !t.is_empty() && tx.send(Ok(t.to_string())).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(ProviderError::Unexpected {
                            expected: "UTF-8 transcript text",
                            got: format!("{} bytes that are not ({e})", c.len()),
                        }));
                        return;
                    }
                },
                Ok(None) => {
                    let _ = tx.send(Err(ProviderError::Closed {
                        who: "the ASR",
                        detail: Some("stream ended".into()),
                    }));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(ProviderError::Request(e)));
                    return;
                }
            }
        }
    });
    rx
}

/// Starts the agent for one call.
pub fn spawn(s: Settings, ctx: &AgentContext) -> Result<Remote, AgentError> {
    let http = pipeline::http_client()?;
    let uuid = if ctx.uuid.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        ctx.uuid.clone()
    };
    let system = s.system.clone();
    let greeting = ctx.greeting.clone();
    let end_of_turn = s.end_of_turn;
    let backend = Arc::new(AvrPipeline {
        s,
        uuid: uuid.clone(),
        http: http.clone(),
    });
    Ok(Remote::spawn("avr_pipeline", RATE, move |io| async move {
        for u in [&backend.s.asr_url, &backend.s.llm_url, &backend.s.tts_url] {
            pipeline::reachable(u).await?;
        }
        let body_tx: Arc<Mutex<Option<mpsc::Sender<Bytes>>>> = Arc::new(Mutex::new(None));
        let restart = {
            let body_tx = body_tx.clone();
            let url = backend.s.asr_url.clone();
            move || {
                let (tx, rx) = mpsc::channel(ASR_QUEUE_FRAMES);
                *body_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
                start_asr(http.clone(), url.clone(), uuid.clone(), rx)
            }
        };
        let first = restart();
        let sink: AudioSink = Box::new(move |frame: &[i16]| {
            let bytes = pcm::i16_to_s16le(frame);
            if let Some(tx) = body_tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                let _ = tx.try_send(Bytes::from(bytes));
            }
        });
        pipeline::conversation(
            io,
            backend,
            LoopConfig {
                rate: RATE,
                system,
                collect_utterances: false,
                greeting,
                preroll_ms: 0,
                end_of_turn,
            },
            Some(sink),
            Some(first),
            Some(Box::new(restart)),
        )
        .await
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Result<String, ProviderError> {
        let mut p = LlmParser::default();
        let mut s = String::new();
        for c in chunks {
            s.extend(p.push(c)?);
        }
        p.finish()?;
        Ok(s)
    }

    #[test]
    fn llm_objects_split_anywhere() {
        let all = br#"{"type":"text","content":"Hel"}{"type":"status","content":"x"}{"type":"text","content":"lo."}"#;
        for cut in 1..all.len() {
            assert_eq!(
                parse(&[&all[..cut], &all[cut..]]).unwrap(),
                "Hello.",
                "cut {cut}"
            );
        }
        assert_eq!(parse(&[b"plain ", b"text"]).unwrap(), "plain text");
        assert_eq!(
            parse(&[
                "caf\u{e9}".as_bytes()[..4].as_ref(),
                &"caf\u{e9}".as_bytes()[4..]
            ])
            .unwrap(),
            "caf\u{e9}"
        );
        assert!(parse(&[br#"{"type":"error","message":"boom"}"#]).is_err());
        assert!(
            parse(&[&[0xff, 0xfe, 0x00, 0x41]]).is_err(),
            "junk is not text"
        );
        assert!(parse(&[br#"{"type":"text","#]).is_err(), "truncated");
    }

    #[test]
    fn llm_stream_objects_decode_to_their_kinds() {
        let cases = [
            (
                r#"{"type": "text", "content": "Hel"}"#,
                LlmEvent::Text {
                    content: "Hel".into(),
                },
            ),
            (
                r#"{"type": "status", "content": "thinking"}"#,
                LlmEvent::Other,
            ),
            (r#"{"type": "audio", "content": "AAAA"}"#, LlmEvent::Other),
            (
                r#"{"type": "error", "message": "Error communicating with OpenAI"}"#,
                LlmEvent::Error {
                    content: None,
                    message: Some("Error communicating with OpenAI".into()),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                serde_json::from_str::<LlmEvent>(text).unwrap(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn odd_llm_objects_are_dropped_and_counted_and_errors_say_what_came() {
        let mut p = LlmParser::default();
        let got = p
            .push(br#"{"type":"text","content":5}{"no_type":1}{"type":"text","content":"ok"}"#)
            .unwrap();
        assert_eq!(got, vec!["ok".to_string()]);
        assert_eq!(p.dropped, 2);
        let e = LlmParser::default()
            .push(br#"{"type":"error","content":"quota"}"#)
            .unwrap_err();
        assert_eq!(e.to_string(), "the LLM reported an error: quota");
        let e = LlmParser::default().push(b"{\"type\":]").unwrap_err();
        assert!(matches!(e, ProviderError::InvalidJson { .. }), "{e}");
    }
}
