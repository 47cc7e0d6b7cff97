//! Profiles (`sip-profiles/*.toml`): parsing, validation up front, command-line
//! overrides and the first-start credentials for local users.
//!
//! Everything a running server needs is checked here, before a socket is
//! opened, so `agentline check-config` and `agentline run` fail the same way,
//! with a message that names the key. Each section of a profile has its own
//! file: its raw TOML shape, its validated form and the checks between them;
//! [`Config::parse`] runs them in order and assembles the [`Config`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod agents;
mod limits;
mod pem;
mod routes;
mod rtp;
mod security;
mod service;
mod sip;
mod store;
mod trunks;
mod users;
mod webhooks;

pub use agents::{
    AgentConfig, AgentConfigError, HttpTool, DEFAULT_END_OF_TURN_MAX_MS, DEFAULT_PREROLL_MS,
};
pub use limits::ListenerLimits;
pub use pem::{read_pem, PemError, PemKind};
pub use routes::{AmdAction, Prompt, RouteConfig};
pub use rtp::{PortRange, PortRangeError};
pub use security::{BanAction, SecurityConfig, DEFAULT_SCANNER_USER_AGENTS};
pub use service::{ApiToken, LogFormat, LogFormatError};
pub use sip::{DigestAlgorithm, ListenAddr, ListenAddrError, SipTransport, UnsupportedAlgorithm};
pub use store::{redact_url, StoreConfig};
pub use trunks::{trunk_password, TrunkConfig};
pub use users::{
    prepare_credentials, resolve_credentials, store_generated, Credential, PasswordSource,
    UserConfig,
};
pub use webhooks::WebhookConfig;

/// The profile shipped in the binary, used when no `--profile` is given.
pub const DEFAULT_PROFILE: &str = include_str!("../../sip-profiles/default.toml");

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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    sip: sip::RawSip,
    #[serde(default)]
    rtp: rtp::RawRtp,
    #[serde(default)]
    api: service::RawApi,
    #[serde(default)]
    log: service::RawLog,
    #[serde(default)]
    state: service::RawState,
    #[serde(default)]
    users: Vec<users::RawUser>,
    #[serde(default)]
    routes: Vec<routes::RawRoute>,
    #[serde(default)]
    trunks: Vec<trunks::RawTrunk>,
    webhooks: Option<webhooks::RawWebhooks>,
    #[serde(default)]
    store: store::RawStore,
    /// `[security]`: edge protection and listener limits.
    #[serde(default)]
    security: security::RawSecurity,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub origin: String,
    pub sip_listen: Vec<ListenAddr>,
    pub domain: String,
    pub external_ip: Option<IpAddr>,
    pub trusted: Vec<ipnet::IpNet>,
    pub max_calls: usize,
    /// Overload control: new calls get 503 past these (see `sip::overload`).
    pub max_cpu: f64,
    pub max_media_lag_ms: u32,
    pub user_agent: String,
    pub ring_timeout_s: u64,
    pub nonce_lifetime_s: u64,
    pub min_expires: u32,
    pub max_expires: u32,
    pub shutdown_grace_s: u64,
    /// `[sip] drain = "wait"`: SIGTERM lets calls end on their own first.
    pub drain_waits: bool,
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
    /// `[rtp] relatch_after_ms`: silence after which a call's RTP may move
    /// to a new port of the same IP (NAT rebinding) or a new SSRC; `None`
    /// (0 in the profile): never, only a re-INVITE moves it.
    pub rtp_relatch_after: Option<std::time::Duration>,
    pub api_listen: SocketAddr,
    /// `Authorization: Bearer` token the API asks for (required when
    /// `api_listen` is not a loopback address).
    pub api_token: Option<ApiToken>,
    pub log_format: LogFormat,
    pub state_dir: PathBuf,
    /// Call recordings (`[state] record_dir`, default `<state_dir>/recordings`).
    pub record_dir: PathBuf,
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
    /// Where call records go, and for how long.
    pub store: StoreConfig,
    /// SIP edge protection (`[security]`).
    pub security: SecurityConfig,
    /// `[security]` TCP connection and message-size limits.
    pub limits: ListenerLimits,
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

/// What every section's checks need: the profile's name for error messages
/// and the folder its relative paths start from.
struct Ctx<'a> {
    origin: &'a str,
    root: PathBuf,
}

impl Ctx<'_> {
    /// The error for a bad value at `key`.
    fn invalid(&self, key: impl Into<String>, message: impl ToString) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            key: key.into(),
            message: message.to_string(),
        }
    }

    /// `p` (or `default`), relative paths taken from the profile's root.
    fn path(&self, p: Option<PathBuf>, default: &str) -> PathBuf {
        let p = p.unwrap_or_else(|| PathBuf::from(default));
        if p.is_absolute() {
            p
        } else {
            self.root.join(p)
        }
    }
}

/// The PEM files the listeners and trunks will load: a `tls:` listener needs
/// `sip.tls_cert` and `sip.tls_key`, a TLS trunk `sip.tls_ca`. Read now so
/// `check-config` fails where `run` would.
fn check_tls_files(
    sip: &sip::SipSection,
    trunks: &[TrunkConfig],
    cx: &Ctx,
) -> Result<(), ConfigError> {
    let mut files = Vec::new();
    if sip.listen.iter().any(|l| l.transport == SipTransport::Tls) {
        files.push(("sip.tls_cert", &sip.tls_cert, PemKind::Certificate));
        files.push(("sip.tls_key", &sip.tls_key, PemKind::PrivateKey));
    }
    if trunks.iter().any(|t| t.transport == SipTransport::Tls) {
        files.push(("sip.tls_ca", &sip.tls_ca, PemKind::Certificate));
    }
    for (key, path, kind) in files {
        read_pem(path, kind).map_err(|e| cx.invalid(key, e))?;
    }
    Ok(())
}

/// A network (`192.0.2.0/24`) or a single address, as one network.
fn ip_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .ok()
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

    /// Parses and validates a profile's text; `origin` names it in errors,
    /// and `ov` (command-line flags) wins over what the profile says.
    pub fn parse(text: &str, origin: &str, ov: &Overrides) -> Result<Config, ConfigError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let cx = Ctx {
            origin,
            root: ov.config_root.clone().unwrap_or_default(),
        };
        let sip = raw.sip.validate(&ov.sip_listen, &cx)?;
        let rtp = raw.rtp.validate(ov.rtp_ports, &cx)?;
        let api = raw.api.validate(ov.api_listen, &cx)?;
        let log_format = raw.log.validate(ov.log_format, &cx)?;
        let (state_dir, record_dir) = raw.state.resolve(ov.state_dir.clone());
        let users = users::validate(raw.users, &cx)?;
        let routes = routes::validate(raw.routes, &cx)?;
        let trunks = trunks::validate(raw.trunks, &cx)?;
        let webhooks = raw.webhooks.map(|w| w.validate(&cx)).transpose()?;
        let store = raw.store.validate(&cx)?;
        let mut raw_security = raw.security;
        let limits = raw_security.take_limits().validate(&cx)?;
        let security = raw_security.validate(&cx)?;
        check_tls_files(&sip, &trunks, &cx)?;
        Ok(Config {
            origin: origin.to_string(),
            sip_listen: sip.listen,
            domain: sip.domain,
            external_ip: sip.external_ip,
            trusted: sip.trusted,
            max_calls: sip.max_calls,
            max_cpu: sip.max_cpu,
            max_media_lag_ms: sip.max_media_lag_ms,
            user_agent: sip.user_agent,
            ring_timeout_s: sip.ring_timeout_s,
            nonce_lifetime_s: sip.nonce_lifetime_s,
            min_expires: sip.min_expires,
            max_expires: sip.max_expires,
            shutdown_grace_s: sip.shutdown_grace_s,
            drain_waits: sip.drain_waits,
            auth_algorithms: sip.auth_algorithms,
            session_expires_s: sip.session_expires_s,
            min_se_s: sip.min_se_s,
            rtp_ports: rtp.ports,
            rtp_bind: rtp.bind,
            rtp_timeout_s: rtp.timeout_s,
            jitter_min_ms: rtp.jitter_min_ms,
            jitter_max_ms: rtp.jitter_max_ms,
            rtp_send_silence: rtp.send_silence,
            rtp_relatch_after: (rtp.relatch_after_ms > 0)
                .then(|| std::time::Duration::from_millis(rtp.relatch_after_ms)),
            api_listen: api.listen,
            api_token: api.token,
            log_format,
            state_dir,
            record_dir,
            tls_cert: sip.tls_cert,
            tls_key: sip.tls_key,
            tls_ca: sip.tls_ca,
            users,
            routes,
            trunks,
            webhooks,
            store,
            security,
            limits,
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
    fn bad_values_name_the_key_what_was_expected_and_what_came() {
        let cases = [
            (
                "[sip]\nlisten = [\"sctp:1.2.3.4:5060\"]\n",
                "key `sip.listen[0]`: expected transport udp, tcp or tls, got `sctp`",
            ),
            (
                "[sip]\nlisten = [\"udp\"]\n",
                "key `sip.listen[0]`: expected `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT`, got `udp`",
            ),
            (
                "[sip]\nauth_algorithms = [\"SHA-512\"]\n",
                "key `sip.auth_algorithms[0]`: expected MD5 or SHA-256, got `SHA-512`",
            ),
            (
                "[rtp]\nports = \"20000-10000\"\n",
                "key `rtp.ports`: expected 0 < FIRST < LAST with room for one RTP/RTCP pair, got `20000-10000`",
            ),
            (
                "[rtp]\nports = \"x-10\"\n",
                "key `rtp.ports`: expected a port number, got `x`",
            ),
            (
                "[log]\nformat = \"xml\"\n",
                "key `log.format`: expected `text` or `json`, got `xml`",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"say\" }\n",
                "key `routes[0].agent`: say: give exactly one of text or wav",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"avr_sts\", url = \"http://host\" }\n",
                "key `routes[0].agent`: expected a ws:// or wss:// URL, got `http://host`",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"echo\" }\n\
                 fallback = [{ kind = \"audiosocket\", addr = \"nohost\" }]\n",
                "key `routes[0].fallback[0]`: expected host:port, got `nohost`",
            ),
            (
                "[[trunks]]\nname = \"t\"\nhost = \"h\"\nregister = false\nsrtp = true\n",
                "key `trunks[0].srtp`: SDES keys travel in the SDP: SRTP needs transport = \"tls\"",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"openai_compat\", \
                 base_url = \"http://h/v1\", preroll_ms = 100 }\n",
                "key `routes[0].agent`: preroll_ms: expected 500-5000, got 100",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"openai_compat\", \
                 base_url = \"http://h/v1\", end_of_turn_min_ms = 50 }\n",
                "key `routes[0].agent`: end_of_turn_min_ms: expected 100-1000, got 50",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"openai_compat\", \
                 base_url = \"http://h/v1\", end_of_turn_min_ms = 800, end_of_turn_max_ms = 700 }\n",
                "key `routes[0].agent`: end_of_turn_max_ms: expected more than \
                 end_of_turn_min_ms (800), got 700",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"openai_compat\", \
                 base_url = \"http://h/v1\", end_of_turn_max_ms = 2000 }\n",
                "key `routes[0].agent`: end_of_turn_max_ms: needs end_of_turn_min_ms \
                 (adaptive end of turn)",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"avr_pipeline\", asr_url = \"http://a\", \
                 llm_url = \"http://l\", tts_url = \"http://t\", end_of_turn_max_ms = 9000 }\n",
                "key `routes[0].agent`: end_of_turn_max_ms: expected 500-5000, got 9000",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"echo\" }\nbarge_in_min_ms = 9000\n",
                "key `routes[0].barge_in_min_ms`: expected at most 5000, got 9000",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"audiosocket\", addr = \"h:1\" }\n\
                 greeting = \"Hi\"\n",
                "key `routes[0].greeting`: a `audiosocket` agent has no voice of its own to speak a text greeting: use greeting_file",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"echo\" }\nearly_media = \"183\"\n",
                "key `routes[0].early_media`: expected \"none\" or \"ringback\", got \"183\"",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"echo\" }\nearly_media = \"ringback\"\n\
                 ringback_tone = \"fr\"\n",
                "key `routes[0].ringback_tone`: expected \"us\", \"eu\" or \"uk\", got \"fr\"",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"echo\" }\nringback_file = \"r.wav\"\n",
                "key `routes[0].ringback_file`: only played with early_media = \"ringback\"",
            ),
            (
                "[[routes]]\ndial = \"x\"\nagent = { kind = \"echo\", rate = 11025 }\n",
                "key `routes[0].agent`: echo rate: expected 8000, 16000, 24000 or 48000, got 11025",
            ),
            (
                "[sip]\ndrain = \"later\"\n",
                "key `sip.drain`: expected \"hangup\" or \"wait\", got \"later\"",
            ),
            (
                "[sip]\nmax_cpu = 1.5\n",
                "key `sip.max_cpu`: expected a share of all cores 0.05-1.0, got 1.5",
            ),
            (
                "[webhooks]\nurl = \"ftp://x\"\n",
                "key `webhooks.url`: expected an http(s) URL, got `ftp://x`",
            ),
        ];
        for (profile, want) in cases {
            let e = parse(profile).unwrap_err().to_string();
            assert_eq!(e, format!("profile test.toml: {want}"), "{profile}");
        }
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
    fn api_token_is_read_trimmed_and_compared_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "  abc123\n").unwrap();
        let ov = Overrides {
            config_root: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let cfg = Config::parse(
            "[api]\nlisten = \"0.0.0.0:8080\"\ntoken_file = \"token\"\n",
            "x",
            &ov,
        )
        .unwrap();
        let t = cfg.api_token.unwrap();
        assert!(t.matches(b"abc123"));
        for wrong in [&b"abc12"[..], b"abc1234", b" abc123", b"", b"ABC123"] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{t:?}"), "ApiToken(..)", "never printed");
    }

    #[test]
    fn api_beyond_loopback_needs_a_token() {
        let e = parse("[api]\nlisten = \"0.0.0.0:8080\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `api.listen`: 0.0.0.0:8080 is reachable from other hosts"),
            "{e}"
        );
        let ov = Overrides {
            api_listen: Some("192.0.2.1:8080".parse().unwrap()),
            ..Default::default()
        };
        assert!(Config::parse("", "x", &ov).is_err(), "the flag too");
        for local in ["127.0.0.1:8080", "[::1]:8080"] {
            let cfg = parse(&format!("[api]\nlisten = \"{local}\"\n")).unwrap();
            assert!(cfg.api_token.is_none());
        }
        let e = parse("[api]\ntoken_env = \"A\"\ntoken_file = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn trusted_networks_match_sources() {
        let cfg = parse("[sip]\ntrusted = [\"10.0.0.0/8\", \"192.0.2.7\"]\n").unwrap();
        assert!(cfg.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(cfg.is_trusted("192.0.2.7".parse().unwrap()));
        assert!(!cfg.is_trusted("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn recordings_go_under_the_state_dir_unless_record_dir_says() {
        let ov = Overrides {
            state_dir: Some(PathBuf::from("/var/lib/x")),
            ..Default::default()
        };
        let cfg = Config::parse(
            "[[routes]]\ndial = \"1\"\nagent = { kind = \"echo\" }\nrecord = true\n",
            "x",
            &ov,
        )
        .unwrap();
        assert_eq!(cfg.record_dir, Path::new("/var/lib/x/recordings"));
        assert!(cfg.routes[0].record);
        let cfg = Config::parse("[state]\nrecord_dir = \"/srv/rec\"\n", "x", &ov).unwrap();
        assert_eq!(cfg.record_dir, Path::new("/srv/rec"));
        assert_eq!(cfg.state_dir, Path::new("/var/lib/x"));
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
