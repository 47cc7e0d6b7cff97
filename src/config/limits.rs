//! `[security]`: the connection and message limits of the SIP listeners
//! (TCP connections per source, how long an unauthenticated TCP flow may
//! stay, the largest message). The section's other keys (rate limits,
//! bans) are read by their own file.

use super::{ConfigError, Ctx};

/// The `[security]` keys of this file (read by `security::RawSecurity`).
#[derive(Debug, Default)]
pub(super) struct RawLimits {
    /// Open SIP TCP connections one source IP may hold.
    pub(super) max_tcp_per_source: Option<u32>,
    /// Seconds a TCP connection may stay without an authenticated request
    /// (a REGISTER that got 200, an INVITE that passed the digest).
    pub(super) tcp_auth_timeout_s: Option<u64>,
    /// Largest SIP message taken (UDP datagram); larger ones are counted.
    pub(super) max_message_bytes: Option<usize>,
}

/// `[security]` connection and message limits, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_tcp_per_source: u32,
    pub tcp_auth_timeout_s: u64,
    pub max_message_bytes: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_tcp_per_source: 32,
            tcp_auth_timeout_s: 10,
            max_message_bytes: 8192,
        }
    }
}

impl RawLimits {
    pub(super) fn validate(self, cx: &Ctx) -> Result<ListenerLimits, ConfigError> {
        let d = ListenerLimits::default();
        let max_tcp_per_source = self.max_tcp_per_source.unwrap_or(d.max_tcp_per_source);
        if max_tcp_per_source == 0 {
            return Err(cx.invalid("security.max_tcp_per_source", "expected at least 1, got 0"));
        }
        let tcp_auth_timeout_s = self.tcp_auth_timeout_s.unwrap_or(d.tcp_auth_timeout_s);
        if !(1..=3600).contains(&tcp_auth_timeout_s) {
            return Err(cx.invalid(
                "security.tcp_auth_timeout_s",
                format!("expected 1-3600, got {tcp_auth_timeout_s}"),
            ));
        }
        let max_message_bytes = self.max_message_bytes.unwrap_or(d.max_message_bytes);
        if !(1500..=65535).contains(&max_message_bytes) {
            return Err(cx.invalid(
                "security.max_message_bytes",
                format!("expected 1500-65535, got {max_message_bytes}"),
            ));
        }
        Ok(ListenerLimits {
            max_tcp_per_source,
            tcp_auth_timeout_s,
            max_message_bytes,
        })
    }
}
