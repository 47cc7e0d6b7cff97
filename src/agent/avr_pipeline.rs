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

use super::pipeline::{self, AudioSink, Backend, BoxFut, LoopConfig, Msg};
use super::remote::Remote;
use super::{AgentContext, AgentError};
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
}

struct AvrPipeline {
    s: Settings,
    uuid: String,
    http: reqwest::Client,
}

/// Reads the LLM's answer: concatenated JSON objects split at any byte,
/// or plain UTF-8 text.
#[derive(Default)]
pub struct LlmParser {
    buf: Vec<u8>,
    json: Option<bool>,
}

impl LlmParser {
    /// Text pieces found so far; `Err` for an `error` object or junk.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
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
            let mut it =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<serde_json::Value>();
            loop {
                match it.next() {
                    Some(Ok(v)) => {
                        consumed = it.byte_offset();
                        match v["type"].as_str() {
                            Some("text") => {
                                if let Some(c) = v["content"].as_str() {
                                    out.push(c.to_string());
                                }
                            }
                            Some("error") => {
                                let m = v["content"]
                                    .as_str()
                                    .or(v["message"].as_str())
                                    .unwrap_or("error")
                                    .to_string();
                                return Err(format!("LLM error: {m}"));
                            }
                            _ => {} // status, audio, ...
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(format!("bad JSON in the answer: {e}")),
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
                Err(_) => return Err("answer is neither JSON objects nor text".into()),
            }
        }
        Ok(out)
    }

    pub fn finish(&self) -> Result<(), String> {
        if self.buf.iter().any(|b| !b.is_ascii_whitespace()) {
            return Err("answer ended in the middle of an object".into());
        }
        Ok(())
    }
}

impl Backend for AvrPipeline {
    fn llm(
        &self,
        messages: Vec<Msg>,
        tx: mpsc::UnboundedSender<String>,
    ) -> BoxFut<'_, Result<(), String>> {
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
    ) -> BoxFut<'_, Result<(), String>> {
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
) -> mpsc::UnboundedReceiver<Result<String, String>> {
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
                let _ = tx.send(Err(format!("HTTP {}", r.status())));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(format!("request failed: {e}")));
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
                    Err(_) => {
                        let _ = tx.send(Err("ASR sent something that is not text".into()));
                        return;
                    }
                },
                Ok(None) => {
                    let _ = tx.send(Err("ASR stream ended".into()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("ASR stream broken: {e}")));
                    return;
                }
            }
        }
    });
    rx
}

/// Starts the agent for one call.
pub fn spawn(s: Settings, ctx: &AgentContext) -> Result<Remote, AgentError> {
    let http = pipeline::http_client().map_err(AgentError::Config)?;
    let uuid = if ctx.uuid.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        ctx.uuid.clone()
    };
    let system = s.system.clone();
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

    fn parse(chunks: &[&[u8]]) -> Result<String, String> {
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
}
