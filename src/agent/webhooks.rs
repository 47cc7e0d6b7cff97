//! Call events to the customer's backend in AVR's webhook format:
//! `POST url` with `{"uuid","type","timestamp","payload"}` and the
//! `X-AVR-WEBHOOK-SECRET` header. Delivery runs in its own task with a
//! timeout and retries with back-off, so the media path never waits;
//! only `call_initiated` is awaited (bounded by the timeout), because its
//! answer may override the call's agent settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{PasswordSource, WebhookConfig};

/// Why webhooks cannot be set up or an event was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhooks.secret_env: `{0}` is not set")]
    SecretEnvUnset(String),
    #[error("webhooks HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("webhook request failed: {0}")]
    Request(#[source] reqwest::Error),
    #[error("webhook answered {status}, expected a 2xx")]
    Status { status: reqwest::StatusCode },
}

#[derive(Clone)]
pub struct Webhooks {
    url: String,
    secret: Option<String>,
    timeout: Duration,
    retries: u32,
    client: reqwest::Client,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn timestamp() -> String {
    crate::clock::rfc3339_ms(crate::clock::unix_ms() as i64)
}

/// One call's webhook deliveries: sent, and known to have failed (after
/// the retries).
#[derive(Debug, Default)]
pub struct DeliveryTally {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
}

impl DeliveryTally {
    /// (sent, failed) now.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Webhooks {
    pub fn new(cfg: &WebhookConfig) -> Result<Webhooks, WebhookError> {
        let secret = match &cfg.secret {
            None => None,
            Some(PasswordSource::Inline(s)) => Some(s.clone()),
            Some(PasswordSource::Env(v)) => {
                Some(std::env::var(v).map_err(|_| WebhookError::SecretEnvUnset(v.clone()))?)
            }
            Some(PasswordSource::Generated) => None,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Webhooks {
            url: cfg.url.clone(),
            secret,
            timeout: Duration::from_millis(cfg.timeout_ms),
            retries: cfg.retries,
            client,
        })
    }

    fn body(uuid: &str, kind: &str, payload: Value) -> Value {
        json!({"uuid": uuid, "type": kind, "timestamp": timestamp(), "payload": payload})
    }

    async fn post_once(&self, body: &Value) -> Result<Value, WebhookError> {
        let mut req = self.client.post(&self.url).json(body);
        if let Some(s) = &self.secret {
            req = req.header("X-AVR-WEBHOOK-SECRET", s);
        }
        let resp = req.send().await.map_err(WebhookError::Request)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(WebhookError::Status { status });
        }
        let text = resp.text().await.map_err(WebhookError::Request)?;
        // Only `call_initiated` answers are read; any other body is fine.
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, body: Value) -> Result<Value, WebhookError> {
        let mut wait = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            match self.post_once(&body).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt >= self.retries => return Err(e),
                Err(e) => tracing::debug!(attempt, error = %e, "webhook delivery failed"),
            }
            attempt += 1;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Fire and forget (with retries in the background); `tally` counts
    /// the call's deliveries and failures.
    pub fn send(&self, uuid: &str, kind: &str, payload: Value, tally: &Arc<DeliveryTally>) {
        let this = self.clone();
        let body = Self::body(uuid, kind, payload);
        let kind = kind.to_string();
        let tally = tally.clone();
        tally.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = this.post(body).await {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event = %kind, error = %e, "webhook not delivered");
                metrics::counter!("agentline_webhook_failures_total").increment(1);
            }
        });
    }

    /// `call_initiated`: waits (at most the timeout, no retries) for the
    /// answer, whose JSON object may carry per-call overrides.
    pub async fn call_initiated(&self, uuid: &str, payload: Value) -> Option<Value> {
        let body = Self::body(uuid, "call_initiated", payload);
        match tokio::time::timeout(self.timeout, self.post_once(&body)).await {
            Ok(Ok(v)) if v.is_object() => Some(v),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "call_initiated webhook failed");
                metrics::counter!("agentline_webhook_failures_total").increment(1);
                None
            }
            Err(_) => {
                tracing::warn!("call_initiated webhook timed out");
                metrics::counter!("agentline_webhook_failures_total").increment(1);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_is_iso8601_utc() {
        let t = super::timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
