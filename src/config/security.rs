//! `[security]`: SIP edge protection - per-source request rate limit,
//! failed-authentication limit and temporary bans, scanner User-Agents,
//! concurrent calls per source and per user, and the networks never
//! limited. All on by default (an internet-facing SIP port is scanned
//! within minutes); `enabled = false` turns the whole section off.

use std::net::IpAddr;

use serde::Deserialize;

use super::{ip_net, ConfigError, Ctx};

/// User-Agent fragments of SIP scanners and password crackers (matched
/// case-insensitively anywhere in the header), as in Kamailio's and
/// fail2ban's usual lists.
pub const DEFAULT_SCANNER_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sundayddr",
    "iwar",
    "sip-scan",
    "sipscan",
    "sipbomber",
    "smap",
    "sivus",
    "siparmyknife",
    "pplsip",
    "sipptk",
    "voiper",
    "gulp",
];

/// What a banned source gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanAction {
    /// Nothing: its datagrams are dropped before they are parsed (cheapest,
    /// and tells a scanner nothing).
    Drop,
    /// `403 Forbidden`, sent statelessly.
    Forbidden,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    enabled: Option<bool>,
    /// Token bucket per source IP: sustained requests per second ...
    rate: Option<f64>,
    /// ... and the burst above it. A source that empties its bucket is banned.
    burst: Option<u32>,
    /// Failed digest authentications per source within `auth_window_s`
    /// that ban it.
    auth_failures: Option<u32>,
    auth_window_s: Option<u64>,
    /// How long a ban lasts.
    ban_s: Option<u64>,
    /// "drop" (default) or "403".
    ban_action: Option<String>,
    /// Replaces the built-in scanner list; `[]` refuses none.
    scanner_user_agents: Option<Vec<String>>,
    /// 0 = no limit.
    max_calls_per_source: Option<u32>,
    max_calls_per_user: Option<u32>,
    /// Networks never limited or banned (besides `[sip] trusted` and the
    /// trunks' sources).
    trusted: Option<Vec<String>>,
    /// Listener limits (validated by `limits`).
    max_tcp_per_source: Option<u32>,
    tcp_auth_timeout_s: Option<u64>,
    max_message_bytes: Option<usize>,
}

/// `[security]`, validated, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityConfig {
    pub enabled: bool,
    pub rate: f64,
    pub burst: u32,
    pub auth_failures: u32,
    pub auth_window_s: u64,
    pub ban_s: u64,
    pub ban_action: BanAction,
    /// Lower-cased.
    pub scanner_user_agents: Vec<String>,
    pub max_calls_per_source: u32,
    pub max_calls_per_user: u32,
    pub trusted: Vec<ipnet::IpNet>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        // The defaults have no error path.
        RawSecurity::default()
            .validate_with(&Ctx {
                origin: "(defaults)",
                root: Default::default(),
            })
            .unwrap_or_else(|_| SecurityConfig::off())
    }
}

impl SecurityConfig {
    /// Everything off.
    pub fn off() -> Self {
        SecurityConfig {
            enabled: false,
            rate: 0.0,
            burst: 0,
            auth_failures: 0,
            auth_window_s: 0,
            ban_s: 0,
            ban_action: BanAction::Drop,
            scanner_user_agents: Vec::new(),
            max_calls_per_source: 0,
            max_calls_per_user: 0,
            trusted: Vec::new(),
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The scanner fragment `user_agent` contains, if any.
    pub fn scanner(&self, user_agent: &str) -> Option<&str> {
        if !self.enabled {
            return None;
        }
        let ua = user_agent.to_ascii_lowercase();
        self.scanner_user_agents
            .iter()
            .find(|s| ua.contains(s.as_str()))
            .map(String::as_str)
    }
}

impl RawSecurity {
    /// The listener-limit keys of the section, taken out for `limits`.
    pub(super) fn take_limits(&mut self) -> super::limits::RawLimits {
        super::limits::RawLimits {
            max_tcp_per_source: self.max_tcp_per_source.take(),
            tcp_auth_timeout_s: self.tcp_auth_timeout_s.take(),
            max_message_bytes: self.max_message_bytes.take(),
        }
    }

    pub(super) fn validate(self, cx: &Ctx) -> Result<SecurityConfig, ConfigError> {
        self.validate_with(cx)
    }

    fn validate_with(self, cx: &Ctx) -> Result<SecurityConfig, ConfigError> {
        let rate = self.rate.unwrap_or(30.0);
        if !(rate.is_finite() && rate > 0.0) {
            return Err(cx.invalid(
                "security.rate",
                format!("expected requests per second > 0, got {rate}"),
            ));
        }
        let burst = self.burst.unwrap_or(100);
        if burst == 0 {
            return Err(cx.invalid("security.burst", "expected at least 1"));
        }
        let auth_failures = self.auth_failures.unwrap_or(5);
        if auth_failures == 0 {
            return Err(cx.invalid("security.auth_failures", "expected at least 1"));
        }
        let auth_window_s = self.auth_window_s.unwrap_or(60);
        if auth_window_s == 0 {
            return Err(cx.invalid("security.auth_window_s", "expected at least 1"));
        }
        let ban_s = self.ban_s.unwrap_or(600);
        if ban_s == 0 {
            return Err(cx.invalid("security.ban_s", "expected at least 1"));
        }
        let ban_action = match self.ban_action.as_deref().unwrap_or("drop") {
            "drop" => BanAction::Drop,
            "403" => BanAction::Forbidden,
            other => {
                return Err(cx.invalid(
                    "security.ban_action",
                    format!("expected \"drop\" or \"403\", got {other:?}"),
                ))
            }
        };
        let scanner_user_agents = match self.scanner_user_agents {
            Some(list) => {
                let mut out = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    if s.trim().is_empty() {
                        return Err(cx.invalid(
                            format!("security.scanner_user_agents[{i}]"),
                            "expected a User-Agent fragment, got an empty string",
                        ));
                    }
                    out.push(s.trim().to_ascii_lowercase());
                }
                out
            }
            None => DEFAULT_SCANNER_USER_AGENTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let mut trusted = Vec::new();
        for (i, s) in self
            .trusted
            .unwrap_or_else(|| vec!["127.0.0.1/32".into(), "::1/128".into()])
            .iter()
            .enumerate()
        {
            trusted.push(ip_net(s).ok_or_else(|| {
                cx.invalid(
                    format!("security.trusted[{i}]"),
                    format!("expected a network like 10.0.0.0/8 or an IP, got `{s}`"),
                )
            })?);
        }
        Ok(SecurityConfig {
            enabled: self.enabled.unwrap_or(true),
            rate,
            burst,
            auth_failures,
            auth_window_s,
            ban_s,
            ban_action,
            scanner_user_agents,
            max_calls_per_source: self.max_calls_per_source.unwrap_or(10),
            max_calls_per_user: self.max_calls_per_user.unwrap_or(5),
            trusted,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &Overrides::default())
    }

    #[test]
    fn defaults_are_on() {
        let s = parse("").unwrap().security;
        assert!(s.enabled);
        assert_eq!((s.auth_failures, s.auth_window_s, s.ban_s), (5, 60, 600));
        assert_eq!(s.ban_action, BanAction::Drop);
        assert!(s.scanner("friendly-scanner").is_some());
        assert!(s.scanner("SIPVicious 0.3").is_some());
        assert!(s.scanner("baresip v1.0").is_none());
        assert!(s.is_trusted("127.0.0.1".parse().unwrap()));
        assert!(!s.is_trusted("127.0.0.2".parse().unwrap()));
        assert_eq!(s, SecurityConfig::default());
    }

    #[test]
    fn keys_are_read_and_checked() {
        let s = parse(
            "[security]\nrate = 5\nburst = 10\nban_s = 3\nban_action = \"403\"\n\
             trusted = [\"10.0.0.0/8\"]\nscanner_user_agents = [\"EvilBot\"]\n",
        )
        .unwrap()
        .security;
        assert_eq!((s.rate, s.burst, s.ban_s), (5.0, 10, 3));
        assert_eq!(s.ban_action, BanAction::Forbidden);
        assert!(s.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(!s.is_trusted("127.0.0.1".parse().unwrap()));
        assert!(s.scanner("evilbot/2").is_some());
        assert!(s.scanner("friendly-scanner").is_none());
        let e = parse("[security]\nban_action = \"reject\"\n").unwrap_err();
        assert!(e.to_string().contains("security.ban_action"), "{e}");
        let e = parse("[security]\ntrusted = [\"nope\"]\n").unwrap_err();
        assert!(e.to_string().contains("security.trusted[0]"), "{e}");
        let e = parse("[security]\nrate = 0\n").unwrap_err();
        assert!(e.to_string().contains("security.rate"), "{e}");
        let e = parse("[security]\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(
            !parse("[security]\nenabled = false\n")
                .unwrap()
                .security
                .enabled
        );
    }
}
