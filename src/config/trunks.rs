//! `[[trunks]]`: SIP providers we register to and take calls from.

use serde::Deserialize;

use super::{ip_net, Config, ConfigError, Ctx, PasswordSource, SipTransport};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrunk {
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

/// `[[trunks]]`, validated: unique names, each trunk complete for what it
/// does (registering needs credentials, SRTP needs TLS).
pub(super) fn validate(raw: Vec<RawTrunk>, cx: &Ctx) -> Result<Vec<TrunkConfig>, ConfigError> {
    let mut trunks: Vec<TrunkConfig> = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let key = format!("trunks[{i}]");
        if t.name.is_empty() || trunks.iter().any(|x| x.name == t.name) {
            return Err(cx.invalid(
                format!("{key}.name"),
                format!("expected a unique non-empty name, got `{}`", t.name),
            ));
        }
        trunks.push(t.validate(&key, cx)?);
    }
    Ok(trunks)
}

/// A host part as it goes into a URI: `host[:port]`, nothing that would
/// break the header it is written into.
fn is_host_port(s: &str) -> bool {
    !s.is_empty() && !s.contains(['<', '>', ' ', ';'])
}

impl RawTrunk {
    fn validate(self, key: &str, cx: &Ctx) -> Result<TrunkConfig, ConfigError> {
        if !is_host_port(&self.host) {
            return Err(cx.invalid(
                format!("{key}.host"),
                format!("expected host[:port], got `{}`", self.host),
            ));
        }
        let register = self.register.unwrap_or(true);
        let password = match (self.password, self.password_env) {
            (Some(_), Some(_)) => {
                return Err(cx.invalid(
                    format!("{key}.password"),
                    "give either password or password_env, not both",
                ))
            }
            (Some(p), None) => PasswordSource::Inline(p),
            (None, Some(v)) => PasswordSource::Env(v),
            (None, None) if register => {
                return Err(cx.invalid(
                    format!("{key}.password"),
                    "a registering trunk needs password or password_env",
                ))
            }
            (None, None) => PasswordSource::Inline(String::new()),
        };
        let username = match self.username {
            Some(u) if !u.is_empty() => u,
            _ if register => {
                return Err(cx.invalid(
                    format!("{key}.username"),
                    "a registering trunk needs a username",
                ))
            }
            _ => String::new(),
        };
        let transport_text = self.transport.as_deref().unwrap_or("udp");
        let transport = SipTransport::parse(transport_text).ok_or_else(|| {
            cx.invalid(
                format!("{key}.transport"),
                format!("expected udp, tcp or tls, got `{transport_text}`"),
            )
        })?;
        let srtp = self.srtp.unwrap_or(transport == SipTransport::Tls);
        if srtp && transport != SipTransport::Tls {
            return Err(cx.invalid(
                format!("{key}.srtp"),
                "SDES keys travel in the SDP: SRTP needs transport = \"tls\"",
            ));
        }
        let mut allow = Vec::new();
        for (j, a) in self.allow.iter().enumerate() {
            allow.push(ip_net(a).ok_or_else(|| {
                cx.invalid(
                    format!("{key}.allow[{j}]"),
                    format!("expected a network or IP, got `{a}`"),
                )
            })?);
        }
        let outbound_proxy = match self.outbound_proxy {
            Some(p) if !is_host_port(&p) => {
                return Err(cx.invalid(
                    format!("{key}.outbound_proxy"),
                    format!("expected host[:port], got `{p}`"),
                ))
            }
            other => other,
        };
        Ok(TrunkConfig {
            name: self.name,
            host: self.host,
            username,
            password,
            transport,
            expires: self.expires.unwrap_or(300).max(1),
            register,
            keepalive_s: self.keepalive_s.unwrap_or(30),
            allow,
            srtp,
            outbound_proxy,
        })
    }
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
