//! `agent = { kind = ... }` and `fallback = [...]` on a route: what answers
//! a call, and the checks that can run before one arrives.

use std::path::PathBuf;

use serde::Deserialize;

/// Why an agent table cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentConfigError {
    #[error("expected a {schemes} URL, got `{got}`")]
    Url { schemes: String, got: String },
    #[error("say: give exactly one of text or wav")]
    SayTextOrWav,
    #[error("say: then = \"hangup\" or \"listen\", got `{0}`")]
    SayThen(String),
    #[error("give instructions or instructions_file, not both")]
    InstructionsTwice,
    #[error("expected host:port, got `{0}`")]
    HostPort(String),
    #[error("give base_url, or asr_url, llm_url and tts_url")]
    CompatUrls,
    #[error("preroll_ms: expected 500-5000, got {0}")]
    Preroll(u32),
    #[error("end_of_turn_min_ms: expected 100-1000, got {0}")]
    EndOfTurnMin(u32),
    #[error("end_of_turn_max_ms: expected 500-5000, got {0}")]
    EndOfTurnMaxRange(u32),
    #[error("end_of_turn_max_ms: expected more than end_of_turn_min_ms ({min}), got {got}")]
    EndOfTurnMax { got: u32, min: u32 },
    #[error("end_of_turn_max_ms: needs end_of_turn_min_ms (adaptive end of turn)")]
    EndOfTurnMaxAlone,
    #[error("echo rate: expected 8000, 16000, 24000 or 48000, got {0}")]
    EchoRate(u32),
}

/// What answers a routed call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentConfig {
    /// Returns the caller's audio. `rate` (8000, 16000, 24000 or 48000)
    /// runs it at that rate, as an AI agent at that rate would run, so the
    /// call transcodes (e.g. Opus to an 8 kHz agent and back); without it
    /// the echo takes the codec's own rate.
    Echo {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<u32>,
    },
    /// Plays the embedded greeting, then echoes.
    Demo,
    /// Speaks a text (espeak-ng) or plays a WAV, then hangs up or stays silent.
    Say {
        text: Option<String>,
        wav: Option<PathBuf>,
        /// `hangup` (default) or `listen` (stay on the line, silent).
        then: Option<String>,
    },
    /// OpenAI Realtime over WebSocket (speech to speech).
    OpenaiRealtime {
        #[serde(default = "default_realtime_model")]
        model: String,
        api_key_env: Option<String>,
        api_key_file: Option<PathBuf>,
        /// Default `wss://api.openai.com/v1/realtime`.
        base_url: Option<String>,
        instructions: Option<String>,
        instructions_file: Option<PathBuf>,
        voice: Option<String>,
        /// Speak the beta protocol (`OpenAI-Beta: realtime=v1`, beta event names).
        #[serde(default)]
        beta: bool,
        /// HTTP tools the model may call (POSTed JSON arguments, the answer
        /// goes back to the model).
        #[serde(default)]
        tools: Vec<HttpTool>,
    },
    /// An AVR speech-to-speech container (WebSocket, s16le 8 kHz).
    AvrSts { url: String },
    /// AVR ASR -> LLM -> TTS containers over their HTTP streaming protocols.
    AvrPipeline {
        asr_url: String,
        llm_url: String,
        tts_url: String,
        system: Option<String>,
        /// A streamed transcript ending on a hesitation ("I want to, um")
        /// waits for the next one up to this much silence (500-5000 ms)
        /// before the LLM starts; absent: every transcript starts a turn.
        end_of_turn_max_ms: Option<u32>,
    },
    /// An AudioSocket server (avr-core, or anything that speaks it).
    Audiosocket { addr: String },
    /// OpenAI-compatible local services: transcriptions, chat, speech.
    OpenaiCompat {
        /// Base for all three (e.g. `http://127.0.0.1:8000/v1`), or give each URL.
        base_url: Option<String>,
        asr_url: Option<String>,
        llm_url: Option<String>,
        tts_url: Option<String>,
        #[serde(default = "default_asr_model")]
        asr_model: String,
        #[serde(default = "default_llm_model")]
        llm_model: String,
        #[serde(default = "default_tts_model")]
        tts_model: String,
        voice: Option<String>,
        api_key_env: Option<String>,
        system: Option<String>,
        /// Audio kept from before the VAD reports speech, so an
        /// utterance's first syllable reaches the ASR (500-5000 ms,
        /// default 1000; trimmed to 200 ms before the first sound).
        preroll_ms: Option<u32>,
        /// Adaptive end of turn: after this much silence (100-1000 ms) the
        /// utterance so far is transcribed, and a finished sentence ends
        /// the turn at once. Absent: every turn waits for the route VAD's
        /// `end_of_turn_ms`.
        end_of_turn_min_ms: Option<u32>,
        /// With `end_of_turn_min_ms`: the longest silence a hesitation
        /// ("I want to, um") waits for (500-5000 ms, default 1500).
        end_of_turn_max_ms: Option<u32>,
        /// Open a connection to each endpoint when the call starts, so the
        /// first turn does not pay for TCP/TLS set-up (default true).
        warm_up: Option<bool>,
    },
}

/// Default pre-roll of VAD-cut utterances.
pub const DEFAULT_PREROLL_MS: u32 = 1000;
/// Default longest silence of a hesitation (adaptive end of turn).
pub const DEFAULT_END_OF_TURN_MAX_MS: u32 = 1500;

/// A tool the OpenAI Realtime model may call: its JSON arguments are
/// POSTed to `url`, and the response body is handed back to the model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTool {
    pub name: String,
    pub description: String,
    pub url: String,
    /// JSON Schema of the arguments, as a JSON string (default: an object).
    pub parameters: Option<String>,
}

fn default_realtime_model() -> String {
    "gpt-realtime".into()
}
fn default_asr_model() -> String {
    "whisper-1".into()
}
fn default_llm_model() -> String {
    "gpt-4o-mini".into()
}
fn default_tts_model() -> String {
    "tts-1".into()
}

impl AgentConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            AgentConfig::Echo { .. } => "echo",
            AgentConfig::Demo => "demo",
            AgentConfig::Say { .. } => "say",
            AgentConfig::OpenaiRealtime { .. } => "openai_realtime",
            AgentConfig::AvrSts { .. } => "avr_sts",
            AgentConfig::AvrPipeline { .. } => "avr_pipeline",
            AgentConfig::Audiosocket { .. } => "audiosocket",
            AgentConfig::OpenaiCompat { .. } => "openai_compat",
        }
    }

    /// Whether the agent can speak a text of ours in its own voice (a
    /// route's `greeting`).
    pub fn speaks_text(&self) -> bool {
        matches!(
            self,
            AgentConfig::OpenaiRealtime { .. }
                | AgentConfig::AvrPipeline { .. }
                | AgentConfig::OpenaiCompat { .. }
        )
    }

    /// Checks what can be checked before a call (URLs, files, secrets named).
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let url = |u: &str, schemes: &[&str]| {
            if schemes.iter().any(|s| u.starts_with(s)) && u.len() > 8 {
                Ok(())
            } else {
                Err(AgentConfigError::Url {
                    schemes: schemes.join(" or "),
                    got: u.to_string(),
                })
            }
        };
        match self {
            AgentConfig::Echo { rate: None } | AgentConfig::Demo => Ok(()),
            AgentConfig::Echo { rate: Some(r) } => match r {
                8000 | 16000 | 24000 | 48000 => Ok(()),
                other => Err(AgentConfigError::EchoRate(*other)),
            },
            AgentConfig::Say { text, wav, then } => {
                if text.is_none() == wav.is_none() {
                    return Err(AgentConfigError::SayTextOrWav);
                }
                match then.as_deref() {
                    None | Some("hangup") | Some("listen") => Ok(()),
                    Some(o) => Err(AgentConfigError::SayThen(o.to_string())),
                }
            }
            AgentConfig::OpenaiRealtime {
                base_url,
                instructions,
                instructions_file,
                ..
            } => {
                if let Some(u) = base_url {
                    url(u, &["ws://", "wss://"])?;
                }
                if instructions.is_some() && instructions_file.is_some() {
                    return Err(AgentConfigError::InstructionsTwice);
                }
                Ok(())
            }
            AgentConfig::AvrSts { url: u } => url(u, &["ws://", "wss://"]),
            AgentConfig::AvrPipeline {
                asr_url,
                llm_url,
                tts_url,
                end_of_turn_max_ms,
                ..
            } => {
                if let Some(got) = end_of_turn_max_ms.filter(|m| !(500..=5000).contains(m)) {
                    return Err(AgentConfigError::EndOfTurnMaxRange(got));
                }
                for u in [asr_url, llm_url, tts_url] {
                    url(u, &["http://", "https://"])?;
                }
                Ok(())
            }
            AgentConfig::Audiosocket { addr } => {
                if addr.contains(':') {
                    Ok(())
                } else {
                    Err(AgentConfigError::HostPort(addr.clone()))
                }
            }
            AgentConfig::OpenaiCompat {
                base_url,
                asr_url,
                llm_url,
                tts_url,
                preroll_ms,
                end_of_turn_min_ms,
                end_of_turn_max_ms,
                ..
            } => {
                if let Some(p) = preroll_ms.filter(|p| !(500..=5000).contains(p)) {
                    return Err(AgentConfigError::Preroll(p));
                }
                match (*end_of_turn_min_ms, *end_of_turn_max_ms) {
                    (Some(m), _) if !(100..=1000).contains(&m) => {
                        return Err(AgentConfigError::EndOfTurnMin(m))
                    }
                    (_, Some(got)) if !(500..=5000).contains(&got) => {
                        return Err(AgentConfigError::EndOfTurnMaxRange(got))
                    }
                    (Some(min), Some(got)) if got <= min => {
                        return Err(AgentConfigError::EndOfTurnMax { got, min })
                    }
                    (None, Some(_)) => return Err(AgentConfigError::EndOfTurnMaxAlone),
                    _ => {}
                }
                for u in [base_url, asr_url, llm_url, tts_url].into_iter().flatten() {
                    url(u, &["http://", "https://"])?;
                }
                if base_url.is_none()
                    && (asr_url.is_none() || llm_url.is_none() || tts_url.is_none())
                {
                    return Err(AgentConfigError::CompatUrls);
                }
                Ok(())
            }
        }
    }

    /// Identifies the provider endpoint for circuit breaking.
    pub fn endpoint_key(&self) -> String {
        let where_ = match self {
            AgentConfig::OpenaiRealtime { base_url, .. } => base_url.clone().unwrap_or_default(),
            AgentConfig::AvrSts { url } => url.clone(),
            AgentConfig::AvrPipeline { llm_url, .. } => llm_url.clone(),
            AgentConfig::Audiosocket { addr } => addr.clone(),
            AgentConfig::OpenaiCompat {
                base_url, llm_url, ..
            } => base_url.clone().or(llm_url.clone()).unwrap_or_default(),
            _ => String::new(),
        };
        format!("{}:{where_}", self.kind())
    }
}
