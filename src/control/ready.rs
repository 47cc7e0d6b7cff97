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

/// A readiness check: `Err(reason)` makes `/ready` answer 503.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

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
    pub fn check(&self, draining: bool) -> Result<(), String> {
        if draining {
            return Err("draining: shutting down, no new calls".into());
        }
        if !self.listeners_up.load(Ordering::SeqCst) {
            return Err("starting: listeners not up yet".into());
        }
        let checks: Vec<_> = self
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (name, check) in checks {
            check().map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }
}

pub(super) async fn ready(State(s): State<ApiState>) -> impl IntoResponse {
    match s.readiness.check(s.sip.shared.draining.is_cancelled()) {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
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
        assert!(r.check(false).unwrap_err().starts_with("starting"));
        r.set_listeners_up();
        assert_eq!(r.check(false), Ok(()));
        assert!(r.check(true).unwrap_err().starts_with("draining"));
        let ok = Arc::new(AtomicBool::new(true));
        let flag = ok.clone();
        r.add_check(
            "store",
            Arc::new(move || {
                if flag.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("not writable".into())
                }
            }),
        );
        assert_eq!(r.check(false), Ok(()));
        ok.store(false, Ordering::SeqCst);
        assert_eq!(r.check(false), Err("store: not writable".into()));
    }
}
