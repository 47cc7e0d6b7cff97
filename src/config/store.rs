//! `[store]`: where call records (CDRs) are kept - SQLite in the state
//! directory unless a PostgreSQL URL is given - and for how long.

use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, Ctx};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    /// `sqlite:///path/to/file.db` or `postgres://user@host/db`.
    url: Option<String>,
    /// The environment variable holding the URL (one with a password).
    url_env: Option<String>,
    /// Records older than this are deleted (with their recordings); 0 keeps
    /// them for ever.
    keep_days: Option<u32>,
    /// This node's name in the records (several nodes may share one
    /// PostgreSQL); default the host name.
    node: Option<String>,
}

/// The validated `[store]` section.
#[derive(Clone)]
pub struct StoreConfig {
    /// The database URL; `None` means SQLite at `<state_dir>/agentline.db`.
    pub url: Option<String>,
    pub keep_days: u32,
    pub node: String,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("StoreConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("keep_days", &self.keep_days)
            .field("node", &self.node)
            .finish()
    }
}

impl StoreConfig {
    /// The URL to open: the profile's, else SQLite in `state_dir`.
    pub fn url_for(&self, state_dir: &Path) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                state_dir.join("agentline.db").display()
            ),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.url.as_deref().is_some_and(is_postgres_url)
    }
}

fn is_postgres_url(u: &str) -> bool {
    u.starts_with("postgres://") || u.starts_with("postgresql://")
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.split_once('@') {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Days kept when the profile does not say.
const DEFAULT_KEEP_DAYS: u32 = 90;

impl RawStore {
    pub(super) fn validate(self, cx: &Ctx) -> Result<StoreConfig, ConfigError> {
        let url = match (self.url, self.url_env) {
            (Some(_), Some(_)) => {
                return Err(cx.invalid("store.url", "give either url or url_env, not both"))
            }
            (Some(u), None) => Some(u),
            (None, Some(var)) => match std::env::var(&var) {
                Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
                _ => {
                    return Err(cx.invalid(
                        "store.url_env",
                        format!("the environment variable `{var}` is not set"),
                    ))
                }
            },
            (None, None) => None,
        };
        if let Some(u) = &url {
            if !(u.starts_with("sqlite:") || is_postgres_url(u)) {
                return Err(cx.invalid(
                    "store.url",
                    format!(
                        "expected sqlite://PATH or postgres://..., got `{}`",
                        redact_url(u)
                    ),
                ));
            }
        }
        let node = match self.node {
            Some(n) if n.is_empty() || n.len() > 64 => {
                return Err(cx.invalid("store.node", "expected 1 to 64 characters"))
            }
            Some(n) => n,
            None => host_name(),
        };
        Ok(StoreConfig {
            url,
            keep_days: self.keep_days.unwrap_or(DEFAULT_KEEP_DAYS),
            node,
        })
    }
}

/// The machine's host name (`/etc/hostname`, `HOSTNAME`), else `agentline`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agentline".to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://cdr:s3cret@db.example:5432/agentline"),
            "postgres://cdr:***@db.example:5432/agentline"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/a.db"),
            "sqlite:///var/lib/a.db"
        );
        let c = StoreConfig {
            url: Some("postgres://u:pw@h/db".into()),
            keep_days: 1,
            node: "n".into(),
        };
        assert!(!format!("{c:?}").contains("pw"));
    }
}
