//! `[webhooks]`: where call events are POSTed (AVR webhook format).

use serde::Deserialize;

use super::{ConfigError, Ctx, PasswordSource};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
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

impl RawWebhooks {
    pub(super) fn validate(self, cx: &Ctx) -> Result<WebhookConfig, ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(cx.invalid(
                "webhooks.url",
                format!("expected an http(s) URL, got `{}`", self.url),
            ));
        }
        let secret = match (self.secret, self.secret_env) {
            (Some(_), Some(_)) => {
                return Err(cx.invalid(
                    "webhooks.secret",
                    "give either secret or secret_env, not both",
                ))
            }
            (Some(s), None) => Some(PasswordSource::Inline(s)),
            (None, Some(v)) => Some(PasswordSource::Env(v)),
            (None, None) => None,
        };
        Ok(WebhookConfig {
            url: self.url,
            secret,
            timeout_ms: self.timeout_ms.unwrap_or(2000).clamp(100, 60_000),
            retries: self.retries.unwrap_or(2).min(10),
        })
    }
}
