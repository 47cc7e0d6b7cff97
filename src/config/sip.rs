//! `[sip]`: listeners, domain, trusted networks, limits, authentication,
//! session timers and the TLS material.

use std::fmt;
use std::net::{AddrParseError, IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::{ip_net, ConfigError, Ctx};

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

/// A `sip.listen` entry (or `--sip-listen` flag) that is not `udp:IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddrError {
    #[error("expected `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT`, got `{0}`")]
    Shape(String),
    #[error("expected transport udp, tcp or tls, got `{0}`")]
    Transport(String),
    #[error("expected IP:PORT after `{scheme}:`, got `{rest}` ({source})")]
    Addr {
        scheme: String,
        rest: String,
        source: AddrParseError,
    },
}

/// `udp:0.0.0.0:5060` - a transport and a socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    pub transport: SipTransport,
    pub addr: SocketAddr,
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| ListenAddrError::Shape(s.to_string()))?;
        let transport = SipTransport::parse(scheme)
            .ok_or_else(|| ListenAddrError::Transport(scheme.to_string()))?;
        let addr = rest
            .parse::<SocketAddr>()
            .map_err(|source| ListenAddrError::Addr {
                scheme: scheme.to_string(),
                rest: rest.to_string(),
                source,
            })?;
        Ok(ListenAddr { transport, addr })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSip {
    listen: Option<Vec<String>>,
    domain: Option<String>,
    external_ip: Option<String>,
    #[serde(default)]
    trusted: Vec<String>,
    max_calls: Option<usize>,
    /// Refuse new calls (503) while this process uses more than this share
    /// of all cores, 0.05-1.0 (default 0.85).
    max_cpu: Option<f64>,
    /// ... or while the calls' media ticks run this late on average (ms,
    /// 5-1000, default 40).
    max_media_lag_ms: Option<u32>,
    user_agent: Option<String>,
    ring_timeout_s: Option<u64>,
    nonce_lifetime_s: Option<u64>,
    min_expires: Option<u32>,
    max_expires: Option<u32>,
    shutdown_grace_s: Option<u64>,
    /// SIGTERM: "hangup" (default: BYE every call at once, then wait up to
    /// the grace for the ends) or "wait" (calls end on their own within the
    /// grace, the rest are hung up then; for nodes behind a dispatcher).
    drain: Option<String>,
    auth_algorithms: Option<Vec<String>>,
    session_expires_s: Option<u32>,
    min_se_s: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
}

/// `[sip]`, validated, with defaults filled in.
pub(super) struct SipSection {
    pub listen: Vec<ListenAddr>,
    pub domain: String,
    pub external_ip: Option<IpAddr>,
    pub trusted: Vec<ipnet::IpNet>,
    pub max_calls: usize,
    pub max_cpu: f64,
    pub max_media_lag_ms: u32,
    pub user_agent: String,
    pub ring_timeout_s: u64,
    pub nonce_lifetime_s: u64,
    pub min_expires: u32,
    pub max_expires: u32,
    pub shutdown_grace_s: u64,
    /// SIGTERM lets calls end on their own (within the grace) first.
    pub drain_waits: bool,
    pub auth_algorithms: Vec<DigestAlgorithm>,
    pub session_expires_s: u32,
    pub min_se_s: u32,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub tls_ca: PathBuf,
}

impl RawSip {
    /// `cli_listen` (the `--sip-listen` flags) replaces `sip.listen` when given.
    pub(super) fn validate(
        self,
        cli_listen: &[ListenAddr],
        cx: &Ctx,
    ) -> Result<SipSection, ConfigError> {
        let listen = listeners(self.listen, cli_listen, cx)?;
        let domain = self.domain.unwrap_or_else(|| "agentline.local".to_string());
        if domain.is_empty() || domain.contains(['"', ' ', '\\']) {
            return Err(cx.invalid(
                "sip.domain",
                format!("expected a host name, got `{domain}`"),
            ));
        }
        let external_ip = match self.external_ip {
            Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                cx.invalid("sip.external_ip", format!("expected an IP, got `{s}`"))
            })?),
            None => None,
        };
        let mut trusted = Vec::new();
        for (i, s) in self.trusted.iter().enumerate() {
            trusted.push(ip_net(s).ok_or_else(|| {
                cx.invalid(
                    format!("sip.trusted[{i}]"),
                    format!("expected a network like 192.0.2.0/24 or an IP, got `{s}`"),
                )
            })?);
        }
        let max_calls = self.max_calls.unwrap_or(200);
        if max_calls == 0 {
            return Err(cx.invalid("sip.max_calls", "expected at least 1"));
        }
        let max_cpu = self.max_cpu.unwrap_or(0.85);
        if !(0.05..=1.0).contains(&max_cpu) {
            return Err(cx.invalid(
                "sip.max_cpu",
                format!("expected a share of all cores 0.05-1.0, got {max_cpu}"),
            ));
        }
        let max_media_lag_ms = self.max_media_lag_ms.unwrap_or(40);
        if !(5..=1000).contains(&max_media_lag_ms) {
            return Err(cx.invalid(
                "sip.max_media_lag_ms",
                format!("expected 5-1000, got {max_media_lag_ms}"),
            ));
        }
        let min_expires = self.min_expires.unwrap_or(60);
        let max_expires = self.max_expires.unwrap_or(3600);
        if min_expires == 0 || max_expires < min_expires {
            return Err(cx.invalid(
                "sip.max_expires",
                format!("expected 0 < min_expires ({min_expires}) <= max_expires ({max_expires})"),
            ));
        }
        let auth_algorithms = auth_algorithms(self.auth_algorithms, cx)?;
        let drain_waits = match self.drain.as_deref().unwrap_or("hangup") {
            "hangup" => false,
            "wait" => true,
            other => {
                return Err(cx.invalid(
                    "sip.drain",
                    format!("expected \"hangup\" or \"wait\", got {other:?}"),
                ))
            }
        };
        Ok(SipSection {
            listen,
            domain,
            external_ip,
            trusted,
            max_calls,
            max_cpu,
            max_media_lag_ms,
            user_agent: self
                .user_agent
                .unwrap_or_else(|| format!("agentline/{}", env!("CARGO_PKG_VERSION"))),
            ring_timeout_s: self.ring_timeout_s.unwrap_or(120),
            nonce_lifetime_s: self.nonce_lifetime_s.unwrap_or(300),
            min_expires,
            max_expires,
            shutdown_grace_s: self.shutdown_grace_s.unwrap_or(30),
            drain_waits,
            auth_algorithms,
            session_expires_s: self.session_expires_s.unwrap_or(1800),
            min_se_s: self.min_se_s.unwrap_or(90),
            tls_cert: cx.path(self.tls_cert, "certs/agentline.crt"),
            tls_key: cx.path(self.tls_key, "certs/agentline.key"),
            tls_ca: cx.path(self.tls_ca, "/etc/ssl/certs/ca-certificates.crt"),
        })
    }
}

/// The flags' listeners, else the profile's, else UDP and TCP on 5060.
fn listeners(
    profile: Option<Vec<String>>,
    cli: &[ListenAddr],
    cx: &Ctx,
) -> Result<Vec<ListenAddr>, ConfigError> {
    let listen = if !cli.is_empty() {
        cli.to_vec()
    } else {
        let list = profile.unwrap_or_else(|| {
            vec![
                "udp:0.0.0.0:5060".to_string(),
                "tcp:0.0.0.0:5060".to_string(),
            ]
        });
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            out.push(
                s.parse::<ListenAddr>()
                    .map_err(|e| cx.invalid(format!("sip.listen[{i}]"), e))?,
            );
        }
        out
    };
    if listen.is_empty() {
        return Err(cx.invalid("sip.listen", "expected at least one listener"));
    }
    Ok(listen)
}

/// `sip.auth_algorithms`, MD5 alone by default.
fn auth_algorithms(
    names: Option<Vec<String>>,
    cx: &Ctx,
) -> Result<Vec<DigestAlgorithm>, ConfigError> {
    let names = names.unwrap_or_else(|| vec!["MD5".to_string()]);
    let mut out = Vec::new();
    for (i, a) in names.iter().enumerate() {
        out.push(DigestAlgorithm::parse(a).map_err(|_| {
            cx.invalid(
                format!("sip.auth_algorithms[{i}]"),
                format!("expected MD5 or SHA-256, got `{a}`"),
            )
        })?);
    }
    if out.is_empty() {
        return Err(cx.invalid(
            "sip.auth_algorithms",
            "expected at least one of MD5, SHA-256",
        ));
    }
    Ok(out)
}
