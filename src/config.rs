//! Profiles (`sip-profiles/*.toml`): parsing, validation up front, command-line
//! overrides and the first-start credentials for local users.
//!
//! Everything a running server needs is checked here, before a socket is
//! opened, so `agentline check-config` and `agentline run` fail the same way,
//! with a message that names the key.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

/// The profile shipped in the binary, used when no `--profile` is given.
pub const DEFAULT_PROFILE: &str = include_str!("../sip-profiles/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("profile {origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error("state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Transport of a SIP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    Udp,
    Tcp,
    Tls,
}

impl SipTransport {
    /// rsipstack's name for it.
    pub fn rsip(self) -> rsipstack::sip::Transport {
        match self {
            SipTransport::Udp => rsipstack::sip::Transport::Udp,
            SipTransport::Tcp => rsipstack::sip::Transport::Tcp,
            SipTransport::Tls => rsipstack::sip::Transport::Tls,
        }
    }
    /// The `;transport=` URI parameter (none for UDP, the default).
    pub fn uri_param(self) -> &'static str {
        match self {
            SipTransport::Udp => "",
            SipTransport::Tcp => ";transport=tcp",
            SipTransport::Tls => ";transport=tls",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(SipTransport::Udp),
            "tcp" => Some(SipTransport::Tcp),
            "tls" => Some(SipTransport::Tls),
            _ => None,
        }
    }
}

impl fmt::Display for SipTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
            SipTransport::Tls => "tls",
        })
    }
}

/// Hash algorithm of a SIP Digest exchange (`sip.auth_algorithms`); the
/// hashing itself is `sip::digest`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DigestAlgorithm {
    /// RFC 2617's algorithm and the default when `algorithm=` is absent.
    #[default]
    Md5,
    Sha256,
}

/// An `algorithm=` value other than MD5 or SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected algorithm MD5 or SHA-256, got `{0}`")]
pub struct UnsupportedAlgorithm(pub String);

impl DigestAlgorithm {
    /// Parses an `algorithm=` value, case-insensitively. `SHA256` is accepted
    /// besides the registered `SHA-256` because some SIP stacks send it.
    pub fn parse(s: &str) -> Result<Self, UnsupportedAlgorithm> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("MD5") {
            Ok(Self::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") || s.eq_ignore_ascii_case("SHA256") {
            Ok(Self::Sha256)
        } else {
            Err(UnsupportedAlgorithm(s.to_owned()))
        }
    }

    /// The token as written in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }
}

impl FromStr for DigestAlgorithm {
    type Err = UnsupportedAlgorithm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `udp:0.0.0.0:5060` - a transport and a socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    pub transport: SipTransport,
    pub addr: SocketAddr,
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once(':').ok_or_else(|| {
            format!("expected `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT`, got `{s}`")
        })?;
        let transport = SipTransport::parse(scheme)
            .ok_or_else(|| format!("expected transport udp, tcp or tls, got `{scheme}`"))?;
        let addr = rest
            .parse::<SocketAddr>()
            .map_err(|e| format!("expected IP:PORT after `{scheme}:`, got `{rest}` ({e})"))?;
        Ok(ListenAddr { transport, addr })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// An inclusive RTP port range; RTP uses the even port, RTCP the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("expected `FIRST-LAST` (e.g. 10000-20000), got `{s}`"))?;
        let first: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("expected a port number, got `{a}`"))?;
        let last: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("expected a port number, got `{b}`"))?;
        if first == 0 || last < first.saturating_add(1) {
            return Err(format!(
                "expected 0 < FIRST < LAST with room for one RTP/RTCP pair, got `{s}`"
            ));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected `text` or `json`, got `{other}`")),
        }
    }
}

// ---- raw TOML shape -------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    sip: RawSip,
    #[serde(default)]
    rtp: RawRtp,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    trunks: Vec<RawTrunk>,
    webhooks: Option<RawWebhooks>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    url: String,
    secret: Option<String>,
    secret_env: Option<String>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
}

/// Where call events go (AVR webhook format).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    /// Sent as `X-AVR-WEBHOOK-SECRET`.
    pub secret: Option<PasswordSource>,
    pub timeout_ms: u64,
    pub retries: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrunk {
    name: String,
    host: String,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    transport: Option<String>,
    expires: Option<u32>,
    register: Option<bool>,
    keepalive_s: Option<u32>,
    srtp: Option<bool>,
    outbound_proxy: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSip {
    listen: Option<Vec<String>>,
    domain: Option<String>,
    external_ip: Option<String>,
    #[serde(default)]
    trusted: Vec<String>,
    max_calls: Option<usize>,
    user_agent: Option<String>,
    ring_timeout_s: Option<u64>,
    nonce_lifetime_s: Option<u64>,
    min_expires: Option<u32>,
    max_expires: Option<u32>,
    shutdown_grace_s: Option<u64>,
    auth_algorithms: Option<Vec<String>>,
    session_expires_s: Option<u32>,
    min_se_s: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRtp {
    ports: Option<String>,
    bind: Option<String>,
    timeout_s: Option<u64>,
    jitter_min_ms: Option<u32>,
    jitter_max_ms: Option<u32>,
    send_silence: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: Option<String>,
    password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    dial: Option<String>,
    did: Option<String>,
    agent: AgentConfig,
    #[serde(default)]
    fallback: Vec<AgentConfig>,
    /// Fail over when the agent says nothing this long after the caller's turn.
    response_timeout_ms: Option<u64>,
    /// Caller speech (route VAD) drops the agent's queued audio.
    barge_in: Option<bool>,
    /// Ignore caller speech while the agent talks (AVR INTERRUPT_LISTENING).
    #[serde(default)]
    interrupt_listening: bool,
    /// Background sound (WAV) mixed under the agent, AVR AMBIENT_NOISE_FILE.
    ambient_file: Option<PathBuf>,
    /// Its volume, 0.0-1.0 (AMBIENT_NOISE_LEVEL), default 0.1.
    ambient_level: Option<f32>,
    #[serde(default)]
    answer_delay_ms: u64,
    #[serde(default)]
    dsp: RawDsp,
}

/// `dsp = { denoise = true, vad = true, agc = true }` on a route: caller-side
/// processing before the agent hears the audio. All off by default.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDsp {
    #[serde(default)]
    denoise: bool,
    #[serde(default)]
    vad: bool,
    #[serde(default)]
    agc: bool,
    vad_threshold: Option<f32>,
    end_of_turn_ms: Option<u32>,
    speech_start_ms: Option<u32>,
}

/// What answers a routed call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentConfig {
    /// Returns the caller's audio.
    Echo,
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
    },
}

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
            AgentConfig::Echo => "echo",
            AgentConfig::Demo => "demo",
            AgentConfig::Say { .. } => "say",
            AgentConfig::OpenaiRealtime { .. } => "openai_realtime",
            AgentConfig::AvrSts { .. } => "avr_sts",
            AgentConfig::AvrPipeline { .. } => "avr_pipeline",
            AgentConfig::Audiosocket { .. } => "audiosocket",
            AgentConfig::OpenaiCompat { .. } => "openai_compat",
        }
    }

    /// Checks what can be checked before a call (URLs, files, secrets named).
    pub fn validate(&self) -> Result<(), String> {
        let url = |u: &str, schemes: &[&str]| {
            if schemes.iter().any(|s| u.starts_with(s)) && u.len() > 8 {
                Ok(())
            } else {
                Err(format!(
                    "expected a {} URL, got `{u}`",
                    schemes.join(" or ")
                ))
            }
        };
        match self {
            AgentConfig::Echo | AgentConfig::Demo => Ok(()),
            AgentConfig::Say { text, wav, then } => {
                if text.is_none() == wav.is_none() {
                    return Err("say: give exactly one of text or wav".into());
                }
                match then.as_deref() {
                    None | Some("hangup") | Some("listen") => Ok(()),
                    Some(o) => Err(format!("say: then = \"hangup\" or \"listen\", got `{o}`")),
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
                    return Err("give instructions or instructions_file, not both".into());
                }
                Ok(())
            }
            AgentConfig::AvrSts { url: u } => url(u, &["ws://", "wss://"]),
            AgentConfig::AvrPipeline {
                asr_url,
                llm_url,
                tts_url,
                ..
            } => {
                for u in [asr_url, llm_url, tts_url] {
                    url(u, &["http://", "https://"])?;
                }
                Ok(())
            }
            AgentConfig::Audiosocket { addr } => {
                if addr.contains(':') {
                    Ok(())
                } else {
                    Err(format!("expected host:port, got `{addr}`"))
                }
            }
            AgentConfig::OpenaiCompat {
                base_url,
                asr_url,
                llm_url,
                tts_url,
                ..
            } => {
                for u in [base_url, asr_url, llm_url, tts_url].into_iter().flatten() {
                    url(u, &["http://", "https://"])?;
                }
                if base_url.is_none()
                    && (asr_url.is_none() || llm_url.is_none() || tts_url.is_none())
                {
                    return Err("give base_url, or asr_url, llm_url and tts_url".into());
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

// ---- validated config -----------------------------------------------------

/// Where a local user's password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    Inline(String),
    Env(String),
    /// None given: generated on first start and kept in the state directory.
    Generated,
}

#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    pub password: PasswordSource,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The dialled request-URI user part this route answers (for a `did`
    /// route: the number; it also matches the To user, where trunks put it).
    pub dial: String,
    /// Routed by DID from a trunk.
    pub is_did: bool,
    pub agent: AgentConfig,
    /// Tried in order when the agent fails within a call.
    pub fallback: Vec<AgentConfig>,
    pub response_timeout_ms: u64,
    pub barge_in: bool,
    pub interrupt_listening: bool,
    /// Background sound mixed under the agent and its volume.
    pub ambient: Option<(PathBuf, f32)>,
    pub answer_delay_ms: u64,
    /// Caller-side denoise / VAD / gain.
    pub dsp: crate::media::dsp::DspConfig,
}

impl RouteConfig {
    /// A route that answers with `agent` and nothing else.
    pub fn simple(dial: String, agent: AgentConfig) -> RouteConfig {
        RouteConfig {
            dial,
            is_did: false,
            agent,
            fallback: Vec::new(),
            response_timeout_ms: 8000,
            barge_in: true,
            interrupt_listening: false,
            ambient: None,
            answer_delay_ms: 0,
            dsp: crate::media::dsp::DspConfig::off(),
        }
    }
}

/// A SIP trunk: a provider we register to and take calls from.
#[derive(Debug, Clone)]
pub struct TrunkConfig {
    pub name: String,
    /// Registrar/proxy as `host[:port]`.
    pub host: String,
    pub username: String,
    pub password: PasswordSource,
    pub transport: SipTransport,
    /// Expiry we ask for; the server's grant decides the refresh.
    pub expires: u32,
    /// `false` for IP-authenticated trunks.
    pub register: bool,
    /// UDP NAT keep-alive: a CRLF ping (RFC 5626 section 4.4.1 style) to the
    /// trunk this often while registered, so the NAT binding stays open; 0 = off.
    pub keepalive_s: u32,
    /// Sources whose INVITEs count as this trunk's (default: the host's addresses).
    pub allow: Vec<ipnet::IpNet>,
    /// Offer SRTP (SDES, RTP/SAVP) on outbound calls; only with TLS.
    pub srtp: bool,
    /// `host[:port]` every request to this trunk is sent to (REGISTER,
    /// INVITE, keep-alives), while the request-URIs keep `host`.
    pub outbound_proxy: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub origin: String,
    pub sip_listen: Vec<ListenAddr>,
    pub domain: String,
    pub external_ip: Option<IpAddr>,
    pub trusted: Vec<ipnet::IpNet>,
    pub max_calls: usize,
    pub user_agent: String,
    pub ring_timeout_s: u64,
    pub nonce_lifetime_s: u64,
    pub min_expires: u32,
    pub max_expires: u32,
    pub shutdown_grace_s: u64,
    /// RFC 4028: the longest session interval we grant, and the shortest we accept.
    pub session_expires_s: u32,
    pub min_se_s: u32,
    /// Digest algorithms offered in challenges, in order of preference.
    pub auth_algorithms: Vec<DigestAlgorithm>,
    pub rtp_ports: PortRange,
    pub rtp_bind: IpAddr,
    /// Hang up a call when no RTP arrived for this long (0 = never).
    pub rtp_timeout_s: u64,
    /// Adaptive jitter buffer bounds (target delay follows measured jitter).
    pub jitter_min_ms: u32,
    pub jitter_max_ms: u32,
    /// Keep RTP flowing (silence) while the agent is quiet.
    pub rtp_send_silence: bool,
    pub api_listen: SocketAddr,
    pub log_format: LogFormat,
    pub state_dir: PathBuf,
    /// Certificate chain and key (PEM) for `tls:` listeners.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Trust anchors (PEM) for TLS connections we open (trunks); default
    /// the system bundle.
    pub tls_ca: PathBuf,
    pub users: Vec<UserConfig>,
    pub routes: Vec<RouteConfig>,
    pub trunks: Vec<TrunkConfig>,
    pub webhooks: Option<WebhookConfig>,
}

/// Command-line values that win over the profile.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub sip_listen: Vec<ListenAddr>,
    pub rtp_ports: Option<PortRange>,
    pub api_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub state_dir: Option<PathBuf>,
    /// Where relative paths in the profile (certs/...) start; set by
    /// [`Config::load`] from the profile's location.
    pub config_root: Option<PathBuf>,
}

/// The folder relative profile paths start from: the parent of a
/// `sip-profiles/` folder (so `certs/` sits next to it, as installed in
/// /etc/agentline), else the profile's own folder.
pub fn config_root_of(profile: &Path) -> PathBuf {
    let dir = profile.parent().unwrap_or(Path::new(""));
    if dir.file_name().is_some_and(|n| n == "sip-profiles") {
        dir.parent().unwrap_or(Path::new("")).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

impl Config {
    /// Loads `path`, or the embedded default profile when `path` is `None`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let mut ov = overrides.clone();
                if ov.config_root.is_none() {
                    ov.config_root = Some(config_root_of(p));
                }
                Self::parse(&text, &p.display().to_string(), &ov)
            }
            None => Self::parse(DEFAULT_PROFILE, "(embedded default)", overrides),
        }
    }

    pub fn parse(text: &str, origin: &str, ov: &Overrides) -> Result<Config, ConfigError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let bad = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            message,
        };
        let root = ov.config_root.clone().unwrap_or_default();
        let resolve = |p: Option<PathBuf>, default: &str| {
            let p = p.unwrap_or_else(|| PathBuf::from(default));
            if p.is_absolute() {
                p
            } else {
                root.join(p)
            }
        };

        let sip_listen = if !ov.sip_listen.is_empty() {
            ov.sip_listen.clone()
        } else {
            let list = raw.sip.listen.unwrap_or_else(|| {
                vec![
                    "udp:0.0.0.0:5060".to_string(),
                    "tcp:0.0.0.0:5060".to_string(),
                ]
            });
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                out.push(
                    s.parse::<ListenAddr>()
                        .map_err(|m| bad(&format!("sip.listen[{i}]"), m))?,
                );
            }
            out
        };
        if sip_listen.is_empty() {
            return Err(bad("sip.listen", "expected at least one listener".into()));
        }
        let domain = raw
            .sip
            .domain
            .unwrap_or_else(|| "agentline.local".to_string());
        if domain.is_empty() || domain.contains(['"', ' ', '\\']) {
            return Err(bad(
                "sip.domain",
                format!("expected a host name, got `{domain}`"),
            ));
        }
        let external_ip = match raw.sip.external_ip {
            Some(s) => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| bad("sip.external_ip", format!("expected an IP, got `{s}`")))?,
            ),
            None => None,
        };
        let mut trusted = Vec::new();
        for (i, s) in raw.sip.trusted.iter().enumerate() {
            let net = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    bad(
                        &format!("sip.trusted[{i}]"),
                        format!("expected a network like 192.0.2.0/24 or an IP, got `{s}`"),
                    )
                })?;
            trusted.push(net);
        }
        let max_calls = raw.sip.max_calls.unwrap_or(200);
        if max_calls == 0 {
            return Err(bad("sip.max_calls", "expected at least 1".into()));
        }
        let min_expires = raw.sip.min_expires.unwrap_or(60);
        let max_expires = raw.sip.max_expires.unwrap_or(3600);
        if min_expires == 0 || max_expires < min_expires {
            return Err(bad(
                "sip.max_expires",
                format!("expected 0 < min_expires ({min_expires}) <= max_expires ({max_expires})"),
            ));
        }

        let mut auth_algorithms = Vec::new();
        for (i, a) in raw
            .sip
            .auth_algorithms
            .unwrap_or_else(|| vec!["MD5".to_string()])
            .iter()
            .enumerate()
        {
            let alg = DigestAlgorithm::parse(a).map_err(|_| {
                bad(
                    &format!("sip.auth_algorithms[{i}]"),
                    format!("expected MD5 or SHA-256, got `{a}`"),
                )
            })?;
            auth_algorithms.push(alg);
        }
        if auth_algorithms.is_empty() {
            return Err(bad(
                "sip.auth_algorithms",
                "expected at least one of MD5, SHA-256".into(),
            ));
        }

        let rtp_ports = match ov.rtp_ports {
            Some(r) => r,
            None => raw
                .rtp
                .ports
                .as_deref()
                .unwrap_or("10000-20000")
                .parse()
                .map_err(|m| bad("rtp.ports", m))?,
        };
        let rtp_bind = match raw.rtp.bind {
            Some(s) => s
                .parse()
                .map_err(|_| bad("rtp.bind", format!("expected an IP, got `{s}`")))?,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let jitter_min_ms = raw.rtp.jitter_min_ms.unwrap_or(20);
        let jitter_max_ms = raw.rtp.jitter_max_ms.unwrap_or(200);
        if jitter_max_ms < jitter_min_ms || jitter_max_ms > 2000 {
            return Err(bad(
                "rtp.jitter_max_ms",
                format!(
                    "expected jitter_min_ms ({jitter_min_ms}) <= jitter_max_ms <= 2000, got {jitter_max_ms}"
                ),
            ));
        }
        let api_listen = match ov.api_listen {
            Some(a) => a,
            None => {
                let s = raw.api.listen.as_deref().unwrap_or("127.0.0.1:8080");
                s.parse()
                    .map_err(|_| bad("api.listen", format!("expected IP:PORT, got `{s}`")))?
            }
        };
        let log_format = match ov.log_format {
            Some(f) => f,
            None => match raw.log.format {
                Some(s) => s.parse().map_err(|m| bad("log.format", m))?,
                None => LogFormat::Text,
            },
        };
        let state_dir = ov
            .state_dir
            .clone()
            .or(raw.state.dir)
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("state"));

        let mut users = Vec::new();
        let mut names = HashSet::new();
        for (i, u) in raw.users.into_iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.is_empty()
                || !u
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
            {
                return Err(bad(
                    &format!("{key}.name"),
                    format!("expected letters, digits or ._-+, got `{}`", u.name),
                ));
            }
            if !names.insert(u.name.clone()) {
                return Err(bad(
                    &format!("{key}.name"),
                    format!("user `{}` is defined twice", u.name),
                ));
            }
            let password = match (u.password, u.password_env) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        &format!("{key}.password"),
                        "give either password or password_env, not both".into(),
                    ))
                }
                (Some(p), None) if p.is_empty() => {
                    return Err(bad(
                        &format!("{key}.password"),
                        "an empty password is not allowed; omit it to have one generated".into(),
                    ))
                }
                (Some(p), None) => PasswordSource::Inline(p),
                (None, Some(v)) => PasswordSource::Env(v),
                (None, None) => PasswordSource::Generated,
            };
            users.push(UserConfig {
                name: u.name,
                password,
            });
        }

        let mut routes = Vec::new();
        let mut dials = HashSet::new();
        for (i, r) in raw.routes.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let is_did = r.did.is_some();
            let dial = match (r.dial, r.did) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        &format!("{key}.did"),
                        "give either dial or did, not both".into(),
                    ))
                }
                (Some(d), None) | (None, Some(d)) => d,
                (None, None) => {
                    return Err(bad(
                        &format!("{key}.dial"),
                        "expected the dialled user (dial) or number (did)".into(),
                    ))
                }
            };
            if dial.is_empty() {
                return Err(bad(
                    &format!("{key}.dial"),
                    "expected a non-empty user".into(),
                ));
            }
            if !dials.insert(dial.clone()) {
                return Err(bad(
                    &format!("{key}.dial"),
                    format!("`{dial}` is routed twice"),
                ));
            }
            if r.answer_delay_ms > 120_000 {
                return Err(bad(
                    &format!("{key}.answer_delay_ms"),
                    format!("expected at most 120000, got {}", r.answer_delay_ms),
                ));
            }
            let defaults = crate::media::dsp::DspConfig::default();
            let threshold = r.dsp.vad_threshold.unwrap_or(defaults.vad_threshold);
            if !(0.0..=1.0).contains(&threshold) {
                return Err(bad(
                    &format!("{key}.dsp.vad_threshold"),
                    format!("expected a probability 0.0-1.0, got {threshold}"),
                ));
            }
            let dsp = crate::media::dsp::DspConfig {
                denoise: r.dsp.denoise,
                vad: r.dsp.vad,
                agc: r.dsp.agc,
                vad_threshold: threshold,
                end_of_turn_ms: r.dsp.end_of_turn_ms.unwrap_or(defaults.end_of_turn_ms),
                speech_start_ms: r.dsp.speech_start_ms.unwrap_or(defaults.speech_start_ms),
            };
            for (j, a) in std::iter::once(&r.agent).chain(&r.fallback).enumerate() {
                let k = if j == 0 {
                    format!("{key}.agent")
                } else {
                    format!("{key}.fallback[{}]", j - 1)
                };
                a.validate().map_err(|m| bad(&k, m))?;
            }
            routes.push(RouteConfig {
                dial,
                is_did,
                agent: r.agent,
                fallback: r.fallback,
                response_timeout_ms: r.response_timeout_ms.unwrap_or(8000).clamp(500, 120_000),
                barge_in: r.barge_in.unwrap_or(true),
                interrupt_listening: r.interrupt_listening,
                ambient: match r.ambient_file {
                    None => None,
                    Some(f) => {
                        let level = r.ambient_level.unwrap_or(0.1);
                        if !(0.0..=1.0).contains(&level) {
                            return Err(bad(
                                &format!("{key}.ambient_level"),
                                format!("expected 0.0-1.0, got {level}"),
                            ));
                        }
                        let f = resolve(Some(f), "");
                        let ok = std::fs::read(&f).map_err(|e| e.to_string()).and_then(|b| {
                            crate::media::wav::Wav::parse(&b).map_err(|e| e.to_string())
                        });
                        if let Err(e) = ok {
                            return Err(bad(
                                &format!("{key}.ambient_file"),
                                format!("{}: {e}", f.display()),
                            ));
                        }
                        Some((f, level))
                    }
                },
                answer_delay_ms: r.answer_delay_ms,
                dsp,
            });
        }

        let mut trunks = Vec::new();
        for (i, t) in raw.trunks.into_iter().enumerate() {
            let key = format!("trunks[{i}]");
            if t.name.is_empty() || trunks.iter().any(|x: &TrunkConfig| x.name == t.name) {
                return Err(bad(
                    &format!("{key}.name"),
                    format!("expected a unique non-empty name, got `{}`", t.name),
                ));
            }
            if t.host.is_empty() || t.host.contains(['<', '>', ' ', ';']) {
                return Err(bad(
                    &format!("{key}.host"),
                    format!("expected host[:port], got `{}`", t.host),
                ));
            }
            let register = t.register.unwrap_or(true);
            let password = match (t.password, t.password_env) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        &format!("{key}.password"),
                        "give either password or password_env, not both".into(),
                    ))
                }
                (Some(p), None) => PasswordSource::Inline(p),
                (None, Some(v)) => PasswordSource::Env(v),
                (None, None) if register => {
                    return Err(bad(
                        &format!("{key}.password"),
                        "a registering trunk needs password or password_env".into(),
                    ))
                }
                (None, None) => PasswordSource::Inline(String::new()),
            };
            let username = match t.username {
                Some(u) if !u.is_empty() => u,
                _ if register => {
                    return Err(bad(
                        &format!("{key}.username"),
                        "a registering trunk needs a username".into(),
                    ))
                }
                _ => String::new(),
            };
            let transport_text = t.transport.as_deref().unwrap_or("udp");
            let transport = SipTransport::parse(transport_text).ok_or_else(|| {
                bad(
                    &format!("{key}.transport"),
                    format!("expected udp, tcp or tls, got `{transport_text}`"),
                )
            })?;
            let srtp = t.srtp.unwrap_or(transport == SipTransport::Tls);
            if srtp && transport != SipTransport::Tls {
                return Err(bad(
                    &format!("{key}.srtp"),
                    "SDES keys travel in the SDP: SRTP needs transport = \"tls\"".into(),
                ));
            }
            let mut allow = Vec::new();
            for (j, a) in t.allow.iter().enumerate() {
                allow.push(
                    a.parse::<ipnet::IpNet>()
                        .or_else(|_| a.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            bad(
                                &format!("{key}.allow[{j}]"),
                                format!("expected a network or IP, got `{a}`"),
                            )
                        })?,
                );
            }
            trunks.push(TrunkConfig {
                name: t.name,
                host: t.host,
                username,
                password,
                transport,
                expires: t.expires.unwrap_or(300).max(1),
                register,
                keepalive_s: t.keepalive_s.unwrap_or(30),
                allow,
                srtp,
                outbound_proxy: match t.outbound_proxy {
                    Some(p) if p.is_empty() || p.contains(['<', '>', ' ', ';']) => {
                        return Err(bad(
                            &format!("{key}.outbound_proxy"),
                            format!("expected host[:port], got `{p}`"),
                        ))
                    }
                    other => other,
                },
            });
        }

        let webhooks = match raw.webhooks {
            None => None,
            Some(w) => {
                if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                    return Err(bad(
                        "webhooks.url",
                        format!("expected an http(s) URL, got `{}`", w.url),
                    ));
                }
                let secret = match (w.secret, w.secret_env) {
                    (Some(_), Some(_)) => {
                        return Err(bad(
                            "webhooks.secret",
                            "give either secret or secret_env, not both".into(),
                        ))
                    }
                    (Some(s), None) => Some(PasswordSource::Inline(s)),
                    (None, Some(v)) => Some(PasswordSource::Env(v)),
                    (None, None) => None,
                };
                Some(WebhookConfig {
                    url: w.url,
                    secret,
                    timeout_ms: w.timeout_ms.unwrap_or(2000).clamp(100, 60_000),
                    retries: w.retries.unwrap_or(2).min(10),
                })
            }
        };
        Ok(Config {
            origin: origin.to_string(),
            sip_listen,
            domain,
            external_ip,
            trusted,
            max_calls,
            user_agent: raw
                .sip
                .user_agent
                .unwrap_or_else(|| format!("agentline/{}", env!("CARGO_PKG_VERSION"))),
            ring_timeout_s: raw.sip.ring_timeout_s.unwrap_or(120),
            nonce_lifetime_s: raw.sip.nonce_lifetime_s.unwrap_or(300),
            min_expires,
            max_expires,
            shutdown_grace_s: raw.sip.shutdown_grace_s.unwrap_or(30),
            auth_algorithms,
            session_expires_s: raw.sip.session_expires_s.unwrap_or(1800),
            min_se_s: raw.sip.min_se_s.unwrap_or(90),
            rtp_ports,
            rtp_bind,
            rtp_timeout_s: raw.rtp.timeout_s.unwrap_or(60),
            jitter_min_ms,
            jitter_max_ms,
            rtp_send_silence: raw.rtp.send_silence.unwrap_or(true),
            api_listen,
            log_format,
            state_dir,
            tls_cert: resolve(raw.sip.tls_cert, "certs/agentline.crt"),
            tls_key: resolve(raw.sip.tls_key, "certs/agentline.key"),
            tls_ca: resolve(raw.sip.tls_ca, "/etc/ssl/certs/ca-certificates.crt"),
            users,
            routes,
            trunks,
            webhooks,
        })
    }

    /// The route for a request-URI user, or (trunk calls) a DID in To.
    pub fn route(&self, dialled: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| !r.is_did && r.dial == dialled)
    }

    pub fn did_route(&self, number: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.is_did && r.dial == number)
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

/// A local user with the password it authenticates with.
#[derive(Clone)]
pub struct Credential {
    pub name: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Credential")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Resolves every user's password: inline, from the environment, or from the
/// state directory (generating and storing one on first start). Returns the
/// credentials and the names whose password was generated just now, so the
/// caller can print them once.
pub fn resolve_credentials(
    cfg: &Config,
) -> Result<(Vec<Credential>, Vec<Credential>), ConfigError> {
    let mut out = Vec::new();
    let mut fresh = Vec::new();
    for (i, u) in cfg.users.iter().enumerate() {
        let password = match &u.password {
            PasswordSource::Inline(p) => p.clone(),
            PasswordSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => v,
                _ => {
                    return Err(ConfigError::Invalid {
                        origin: cfg.origin.clone(),
                        key: format!("users[{i}].password_env"),
                        message: format!("environment variable `{var}` is not set or empty"),
                    })
                }
            },
            PasswordSource::Generated => {
                let dir = cfg.state_dir.join("credentials");
                let path = dir.join(&u.name);
                match std::fs::read_to_string(&path) {
                    Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
                    _ => {
                        let p = generate_password();
                        write_secret(&dir, &path, &p)?;
                        fresh.push(Credential {
                            name: u.name.clone(),
                            password: p.clone(),
                        });
                        p
                    }
                }
            }
        };
        out.push(Credential {
            name: u.name.clone(),
            password,
        });
    }
    Ok((out, fresh))
}

/// A trunk's password from the profile or the environment.
pub fn trunk_password(cfg: &Config, i: usize) -> Result<String, ConfigError> {
    let Some(t) = cfg.trunks.get(i) else {
        return Ok(String::new());
    };
    match &t.password {
        PasswordSource::Inline(p) => Ok(p.clone()),
        PasswordSource::Env(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(ConfigError::Invalid {
                origin: cfg.origin.clone(),
                key: format!("trunks[{i}].password_env"),
                message: format!("environment variable `{var}` is not set or empty"),
            }),
        },
        PasswordSource::Generated => Ok(String::new()),
    }
}

fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn write_secret(dir: &Path, path: &Path, secret: &str) -> Result<(), ConfigError> {
    let err = |source| ConfigError::State {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(secret.as_bytes()).map_err(err)?;
    }
    #[cfg(not(unix))]
    std::fs::write(path, secret).map_err(err)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &Overrides::default())
    }

    #[test]
    fn embedded_default_profile_is_valid_and_has_no_fixed_password() {
        let cfg = parse(DEFAULT_PROFILE).unwrap();
        assert!(cfg.route("echo").is_some());
        assert!(cfg.route("demo").is_some());
        assert!(!cfg.users.is_empty());
        for u in &cfg.users {
            assert_eq!(u.password, PasswordSource::Generated, "user {}", u.name);
        }
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let e = parse("[sip]\nlisten_typo = []\n").unwrap_err().to_string();
        assert!(e.contains("listen_typo"), "{e}");
    }

    #[test]
    fn bad_listen_address_names_the_key() {
        let e = parse("[sip]\nlisten = [\"sctp:1.2.3.4:5060\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sip.listen[0]"), "{e}");
    }

    #[test]
    fn bad_rtp_range_names_the_key() {
        let e = parse("[rtp]\nports = \"20000-10000\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rtp.ports"), "{e}");
    }

    #[test]
    fn unknown_agent_kind_is_rejected() {
        let e = parse("[[routes]]\ndial = \"x\"\nagent = { kind = \"telepathy\" }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("telepathy"), "{e}");
    }

    #[test]
    fn flags_override_the_profile() {
        let ov = Overrides {
            sip_listen: vec!["tcp:127.0.0.1:5999".parse().unwrap()],
            rtp_ports: Some("30000-30010".parse().unwrap()),
            api_listen: Some("127.0.0.1:9999".parse().unwrap()),
            ..Default::default()
        };
        let cfg = Config::parse(DEFAULT_PROFILE, "x", &ov).unwrap();
        assert_eq!(cfg.sip_listen, ov.sip_listen);
        assert_eq!(
            cfg.rtp_ports,
            PortRange {
                first: 30000,
                last: 30010
            }
        );
        assert_eq!(cfg.api_listen.port(), 9999);
    }

    #[test]
    fn trusted_networks_match_sources() {
        let cfg = parse("[sip]\ntrusted = [\"10.0.0.0/8\", \"192.0.2.7\"]\n").unwrap();
        assert!(cfg.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(cfg.is_trusted("192.0.2.7".parse().unwrap()));
        assert!(!cfg.is_trusted("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn generated_password_is_stored_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ov = Overrides {
            state_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let cfg = Config::parse("[[users]]\nname = \"1000\"\n", "x", &ov).unwrap();
        let (creds, fresh) = resolve_credentials(&cfg).unwrap();
        assert_eq!(fresh.len(), 1);
        assert!(creds[0].password.len() >= 16);
        let (again, fresh2) = resolve_credentials(&cfg).unwrap();
        assert!(fresh2.is_empty(), "second start must not regenerate");
        assert_eq!(again[0].password, creds[0].password);
    }
}
