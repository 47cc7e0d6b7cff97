//! The agent layer's errors: [`AgentError`] when an agent cannot be set up
//! or gives up, [`ProviderError`] when the transport to a provider (TCP,
//! HTTP, WebSocket) or what came over it is wrong. Both say what was
//! expected and what came; the fallback chain and the circuit breakers look
//! at the variant (a missing API key is not a provider outage).

use std::path::PathBuf;
use std::time::Duration;

use crate::media::wav::WavError;

/// How much of a provider's answer an error quotes.
const EXCERPT_CHARS: usize = 200;

/// The start of `text`, for an error message (never the whole body).
pub fn excerpt(text: &str) -> String {
    let mut s: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        s.push_str("...");
    }
    s
}

/// A provider transport or protocol failure.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("bad provider URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("connect to {target}: no answer within {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    /// TCP connect refused or failed (`Connection refused`, no route ...).
    #[error("connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    /// The WebSocket handshake failed (refused, HTTP status, bad upgrade).
    #[error("connect to {target}: {source}")]
    WsConnect {
        target: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// An HTTP request could not be sent or its answer not read.
    #[error("request failed: {0}")]
    Request(#[source] reqwest::Error),
    /// `what` (response headers, the next chunk, a send) took longer than
    /// `timeout`.
    #[error("{what}: nothing within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    /// A non-2xx answer, with the start of its body (if it was read).
    #[error("HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        status: reqwest::StatusCode,
        body: String,
    },
    /// The provider closed the connection (a WebSocket close frame, EOF).
    #[error("{who} closed the connection{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Closed {
        who: &'static str,
        detail: Option<String>,
    },
    /// The connection broke (reset, protocol violation).
    #[error("connection lost: {0}")]
    Lost(String),
    /// Sending to the provider failed.
    #[error("send: {0}")]
    Send(String),
    /// A message or body is not the JSON that was expected.
    #[error("invalid JSON: expected {expected}, got `{got}` ({reason})")]
    InvalidJson {
        expected: &'static str,
        got: String,
        reason: String,
    },
    /// A message or body is well formed but lacks what was expected.
    #[error("unexpected answer: expected {expected}, got `{got}`")]
    Unexpected { expected: &'static str, got: String },
    /// Audio that is not in the format agreed.
    #[error("wrong audio format: expected {expected}, got {got}")]
    AudioFormat { expected: &'static str, got: String },
    /// The provider reported an error itself (an `error` object or frame).
    #[error("{who} reported an error: {message}")]
    Reported { who: &'static str, message: String },
    /// AudioSocket bytes that cannot be frames.
    #[error(transparent)]
    AudioSocket(#[from] super::audiosocket::ParseError),
}

impl ProviderError {
    pub(crate) fn invalid_json(expected: &'static str, got: &str, e: &serde_json::Error) -> Self {
        ProviderError::InvalidJson {
            expected,
            got: excerpt(got),
            reason: e.to_string(),
        }
    }

    pub(crate) fn ws_connect(target: &str, e: tokio_tungstenite::tungstenite::Error) -> Self {
        ProviderError::WsConnect {
            target: target.to_string(),
            source: Box::new(e),
        }
    }

    /// A failed write on a TCP connection: a reset or broken pipe means the
    /// peer went away (the same loss a read would have seen first if the
    /// timing had been different), anything else is a send failure.
    pub(crate) fn tcp_send(e: std::io::Error) -> Self {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        match e.kind() {
            BrokenPipe | ConnectionAborted | ConnectionReset => {
                ProviderError::Lost(format!("send: {e}"))
            }
            _ => ProviderError::Send(e.to_string()),
        }
    }

    /// Whether the provider itself looks unhealthy (down, slow, broken),
    /// as opposed to an error in what we asked (a bad URL).
    pub fn is_outage(&self) -> bool {
        !matches!(self, ProviderError::BadUrl { .. })
    }
}

/// One stage of a pipeline agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Asr,
    Llm,
    Tts,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Asr => "ASR",
            Stage::Llm => "LLM",
            Stage::Tts => "TTS",
        })
    }
}

/// An agent cannot start or gives up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("greeting audio: {0}")]
    Greeting(#[from] WavError),
    /// The agent's configuration cannot work (missing URL, wrong kind).
    #[error("{agent}: {problem}")]
    Config {
        agent: &'static str,
        problem: String,
    },
    #[error("{agent}: the environment variable `{var}` is not set")]
    EnvUnset { agent: &'static str, var: String },
    #[error("{what} {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    BadWav {
        what: &'static str,
        path: PathBuf,
        source: WavError,
    },
    #[error("HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("rate adapter {from} Hz <-> {to} Hz: {reason}")]
    Rate { from: u32, to: u32, reason: String },
    #[error("speech synthesis: {0}")]
    Synthesis(String),
    #[error("no agent in the chain could start")]
    NoAgentStarted,
    /// The provider's task ended without saying why (panicked, aborted).
    #[error("provider task ended: {0}")]
    TaskEnded(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A pipeline stage failed.
    #[error("{stage}: {source}")]
    Stage { stage: Stage, source: ProviderError },
    /// A pipeline gave up after `what` failed again and again.
    #[error("{what} failed {failures} times in a row, last: {last}")]
    GaveUp {
        what: &'static str,
        failures: u32,
        last: Box<AgentError>,
    },
}

impl AgentError {
    pub(crate) fn config(agent: &'static str, problem: impl Into<String>) -> Self {
        AgentError::Config {
            agent,
            problem: problem.into(),
        }
    }

    pub(crate) fn stage(stage: Stage) -> impl FnOnce(ProviderError) -> AgentError {
        move |source| AgentError::Stage { stage, source }
    }

    /// Whether this failure says the provider is unhealthy, so its circuit
    /// breaker counts it; a configuration problem fails every call the same
    /// way and says nothing about the provider.
    pub fn is_outage(&self) -> bool {
        match self {
            AgentError::Provider(e) | AgentError::Stage { source: e, .. } => e.is_outage(),
            AgentError::GaveUp { last, .. } => last.is_outage(),
            AgentError::TaskEnded(_) | AgentError::Synthesis(_) => true,
            AgentError::Greeting(_)
            | AgentError::Config { .. }
            | AgentError::EnvUnset { .. }
            | AgentError::ReadFile { .. }
            | AgentError::BadWav { .. }
            | AgentError::HttpClient(_)
            | AgentError::Rate { .. }
            | AgentError::NoAgentStarted => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_was_expected_and_what_came() {
        let e = serde_json::from_str::<serde_json::Value>("{\"a\":").unwrap_err();
        let m = ProviderError::invalid_json("a chat.completion.chunk", "{\"a\":", &e).to_string();
        assert!(m.contains("expected a chat.completion.chunk"), "{m}");
        assert!(m.contains("got `{\"a\":`"), "{m}");
        let m = AgentError::Stage {
            stage: Stage::Tts,
            source: ProviderError::Status {
                status: reqwest::StatusCode::INTERNAL_SERVER_ERROR,
                body: "boom".into(),
            },
        }
        .to_string();
        assert_eq!(m, "TTS: HTTP 500 Internal Server Error: boom");
    }

    #[test]
    fn excerpts_are_bounded() {
        let long = "x".repeat(1000);
        assert_eq!(excerpt(&long).len(), EXCERPT_CHARS + 3);
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn configuration_problems_do_not_count_as_outages() {
        assert!(!AgentError::config("avr_sts", "no url").is_outage());
        assert!(AgentError::from(ProviderError::Closed {
            who: "provider",
            detail: None
        })
        .is_outage());
    }

    #[test]
    fn a_reset_on_send_is_a_lost_connection_like_a_reset_on_read() {
        use std::io::{Error, ErrorKind};
        let lost = ProviderError::tcp_send(Error::from(ErrorKind::ConnectionReset));
        assert!(matches!(lost, ProviderError::Lost(_)), "{lost:?}");
        assert!(
            lost.to_string().starts_with("connection lost: send:"),
            "{lost}"
        );
        let pipe = ProviderError::tcp_send(Error::from(ErrorKind::BrokenPipe));
        assert!(matches!(pipe, ProviderError::Lost(_)), "{pipe:?}");
        let other = ProviderError::tcp_send(Error::from(ErrorKind::OutOfMemory));
        assert!(matches!(other, ProviderError::Send(_)), "{other:?}");
    }
}
