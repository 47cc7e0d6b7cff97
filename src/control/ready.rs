//! `GET /ready`: 200 `{"status":"ready"}` when the server takes calls (every
//! listener up, not draining, every registered check passing), else 503
//! with the reason. Open without the API token, like `/health`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::ApiState;

/// A readiness check: `Err(reason)` makes `/ready` answer 503 with the
/// reason (a fixed text naming what is wrong).
pub type Check = Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync>;

/// Why `/ready` says 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("draining: shutting down, no new calls")]
    Draining,
    #[error("starting: listeners not up yet")]
    Starting,
    #[error("{check}: {reason}")]
    Check {
        check: &'static str,
        reason: &'static str,
    },
}

/// What `/ready` looks at besides draining. Cloned into the API state.
#[derive(Clone, Default)]
pub struct Readiness {
    listeners_up: Arc<AtomicBool>,
    /// Further checks, by name, run on each `/ready` in order (e.g. "the CDR
    /// store is writable": register it with [`Readiness::add_check`] where the
    /// store is opened, in `server::run`).
    checks: Arc<Mutex<Vec<(&'static str, Check)>>>,
}

impl Readiness {
    /// Every listener (SIP, API) is bound and serving.
    pub fn set_listeners_up(&self) {
        self.listeners_up.store(true, Ordering::SeqCst);
    }

    /// Adds a named check; its `Err` text is the 503's reason.
    pub fn add_check(&self, name: &'static str, check: Check) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, check));
    }

    /// `Err(reason)` when not ready.
    pub fn check(&self, draining: bool) -> Result<(), NotReady> {
        if draining {
            return Err(NotReady::Draining);
        }
        if !self.listeners_up.load(Ordering::SeqCst) {
            return Err(NotReady::Starting);
        }
        let checks: Vec<_> = self
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (name, check) in checks {
            check().map_err(|reason| NotReady::Check {
                check: name,
                reason,
            })?;
        }
        Ok(())
    }
}

pub(super) async fn ready(State(s): State<ApiState>) -> impl IntoResponse {
    match s.readiness.check(s.sip.shared.draining.is_cancelled()) {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason.to_string()})),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_listeners_up_not_draining_and_checks_passing() {
        let r = Readiness::default();
        assert_eq!(r.check(false), Err(NotReady::Starting));
        r.set_listeners_up();
        assert_eq!(r.check(false), Ok(()));
        assert_eq!(r.check(true), Err(NotReady::Draining));
        let ok = Arc::new(AtomicBool::new(true));
        let flag = ok.clone();
        r.add_check(
            "store",
            Arc::new(move || {
                if flag.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("not writable")
                }
            }),
        );
        assert_eq!(r.check(false), Ok(()));
        ok.store(false, Ordering::SeqCst);
        let err = r.check(false).unwrap_err();
        assert_eq!(err.to_string(), "store: not writable");
    }
}
