//! `[api]`, `[log]` and `[state]`: the process around the SIP side - the
//! HTTP API's address and its bearer token, the log format, where generated
//! secrets are kept.

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
    /// The environment variable holding the API's bearer token.
    token_env: Option<String>,
    /// A file holding it (read at start, whitespace trimmed).
    token_file: Option<PathBuf>,
}

/// The bearer token every API route but `/health` and `/metrics` needs.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// Whether `presented` is the token, in time that depends on neither
    /// (both are hashed first, so not even the length leaks).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let want = Sha256::digest(self.0.as_bytes());
        let got = Sha256::digest(presented);
        want.ct_eq(&got).into()
    }
}

/// `[api]`, validated.
pub(super) struct Api {
    pub(super) listen: SocketAddr,
    pub(super) token: Option<ApiToken>,
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
    /// Where call recordings go (default `<dir>/recordings`).
    record_dir: Option<PathBuf>,
}

impl RawApi {
    /// The address (the flag's, else the profile's, else 127.0.0.1:8080)
    /// and the token, read now. Refuses an address other hosts can reach
    /// without a token.
    pub(super) fn validate(self, cli: Option<SocketAddr>, cx: &Ctx) -> Result<Api, ConfigError> {
        let listen = match cli {
            Some(a) => a,
            None => {
                let s = self.listen.as_deref().unwrap_or("127.0.0.1:8080");
                s.parse()
                    .map_err(|_| cx.invalid("api.listen", format!("expected IP:PORT, got `{s}`")))?
            }
        };
        let token = match (self.token_env, self.token_file) {
            (Some(_), Some(_)) => {
                return Err(cx.invalid(
                    "api.token_env",
                    "give either token_env or token_file, not both",
                ))
            }
            (Some(var), None) => match std::env::var(&var) {
                Ok(v) if !v.trim().is_empty() => Some(ApiToken(v.trim().to_string())),
                _ => {
                    return Err(cx.invalid(
                        "api.token_env",
                        format!("environment variable `{var}` is not set or empty"),
                    ))
                }
            },
            (None, Some(f)) => {
                let path = cx.path(Some(f), "");
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    cx.invalid("api.token_file", format!("{}: {e}", path.display()))
                })?;
                if text.trim().is_empty() {
                    return Err(
                        cx.invalid("api.token_file", format!("{} is empty", path.display()))
                    );
                }
                Some(ApiToken(text.trim().to_string()))
            }
            (None, None) => None,
        };
        if token.is_none() && !listen.ip().is_loopback() {
            return Err(cx.invalid(
                "api.listen",
                format!(
                    "{listen} is reachable from other hosts and the API has no token: \
                     set api.token_env or api.token_file, or listen on 127.0.0.1"
                ),
            ));
        }
        Ok(Api { listen, token })
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
    /// The second path is the recordings folder: `record_dir`, else
    /// `recordings` in the state folder.
    pub(super) fn resolve(self, cli: Option<PathBuf>) -> (PathBuf, PathBuf) {
        let state = cli
            .or(self.dir)
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("state"));
        let records = self.record_dir.unwrap_or_else(|| state.join("recordings"));
        (state, records)
    }
}
