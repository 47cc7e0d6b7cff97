//! `[rtp]`: the media port range and bind address, the no-RTP timeout,
//! the jitter buffer's bounds and the re-latch window.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

use super::{ConfigError, Ctx};

/// An inclusive RTP port range; RTP uses the even port, RTCP the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// An `rtp.ports` value (or `--rtp-ports` flag) that is not `FIRST-LAST`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error("expected `FIRST-LAST` (e.g. 10000-20000), got `{0}`")]
    Shape(String),
    #[error("expected a port number, got `{0}`")]
    Port(String),
    #[error("expected 0 < FIRST < LAST with room for one RTP/RTCP pair, got `{0}`")]
    Order(String),
}

impl FromStr for PortRange {
    type Err = PortRangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| PortRangeError::Shape(s.to_string()))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| PortRangeError::Port(p.to_string()))
        };
        let (first, last) = (port(a)?, port(b)?);
        if first == 0 || last < first.saturating_add(1) {
            return Err(PortRangeError::Order(s.to_string()));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRtp {
    ports: Option<String>,
    bind: Option<String>,
    timeout_s: Option<u64>,
    jitter_min_ms: Option<u32>,
    jitter_max_ms: Option<u32>,
    send_silence: Option<bool>,
    relatch_after_ms: Option<u64>,
}

/// `[rtp]`, validated, with defaults filled in.
pub(super) struct RtpSection {
    pub ports: PortRange,
    pub bind: IpAddr,
    pub timeout_s: u64,
    pub jitter_min_ms: u32,
    pub jitter_max_ms: u32,
    pub send_silence: bool,
    /// 0: never re-latch.
    pub relatch_after_ms: u64,
}

impl RawRtp {
    /// `cli_ports` (the `--rtp-ports` flag) replaces `rtp.ports` when given.
    pub(super) fn validate(
        self,
        cli_ports: Option<PortRange>,
        cx: &Ctx,
    ) -> Result<RtpSection, ConfigError> {
        let ports = match cli_ports {
            Some(r) => r,
            None => self
                .ports
                .as_deref()
                .unwrap_or("10000-20000")
                .parse()
                .map_err(|e| cx.invalid("rtp.ports", e))?,
        };
        let bind = match self.bind {
            Some(s) => s
                .parse()
                .map_err(|_| cx.invalid("rtp.bind", format!("expected an IP, got `{s}`")))?,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let jitter_min_ms = self.jitter_min_ms.unwrap_or(20);
        let jitter_max_ms = self.jitter_max_ms.unwrap_or(200);
        if jitter_max_ms < jitter_min_ms || jitter_max_ms > 2000 {
            return Err(cx.invalid(
                "rtp.jitter_max_ms",
                format!(
                    "expected jitter_min_ms ({jitter_min_ms}) <= jitter_max_ms <= 2000, got {jitter_max_ms}"
                ),
            ));
        }
        Ok(RtpSection {
            ports,
            bind,
            timeout_s: self.timeout_s.unwrap_or(60),
            jitter_min_ms,
            jitter_max_ms,
            send_silence: self.send_silence.unwrap_or(true),
            relatch_after_ms: self.relatch_after_ms.unwrap_or(3000),
        })
    }
}
