//! `[api]`, `[log]` and `[state]`: the process around the SIP side - the
//! HTTP API's address, the log format, where generated secrets are kept.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::{ConfigError, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A `log.format` (or `--log-format`) other than `text` or `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected `text` or `json`, got `{0}`")]
pub struct LogFormatError(pub String);

impl FromStr for LogFormat {
    type Err = LogFormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(LogFormatError(other.to_string())),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    format: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    dir: Option<PathBuf>,
}

impl RawApi {
    /// The flag's address, else the profile's, else 127.0.0.1:8080.
    pub(super) fn validate(
        self,
        cli: Option<SocketAddr>,
        cx: &Ctx,
    ) -> Result<SocketAddr, ConfigError> {
        if let Some(a) = cli {
            return Ok(a);
        }
        let s = self.listen.as_deref().unwrap_or("127.0.0.1:8080");
        s.parse()
            .map_err(|_| cx.invalid("api.listen", format!("expected IP:PORT, got `{s}`")))
    }
}

impl RawLog {
    pub(super) fn validate(
        self,
        cli: Option<LogFormat>,
        cx: &Ctx,
    ) -> Result<LogFormat, ConfigError> {
        match (cli, self.format) {
            (Some(f), _) => Ok(f),
            (None, Some(s)) => s.parse().map_err(|e| cx.invalid("log.format", e)),
            (None, None) => Ok(LogFormat::Text),
        }
    }
}

impl RawState {
    /// The flag's folder, else the profile's, else systemd's
    /// `STATE_DIRECTORY`, else `state` in the working directory.
    pub(super) fn resolve(self, cli: Option<PathBuf>) -> PathBuf {
        cli.or(self.dir)
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("state"))
    }
}
