//! `POST /reload`: re-reads the profile (as SIGHUP does) and applies users,
//! routes, trunks and webhooks without touching calls in progress. 200 with
//! what changed; 400 with the error when the profile does not load (the
//! running one stays).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::ApiState;
use crate::sip::reload::ReloadError;

pub(super) async fn reload(State(s): State<ApiState>) -> impl IntoResponse {
    match s.reloader.reload().await {
        Ok(summary) => {
            let mut v = json!({"status": "reloaded"});
            if let (Some(obj), Ok(serde_json::Value::Object(more))) =
                (v.as_object_mut(), serde_json::to_value(&summary))
            {
                obj.extend(more);
            }
            (StatusCode::OK, Json(v))
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running profile stays");
            let code = match e {
                ReloadError::NoLoader => StatusCode::CONFLICT,
                ReloadError::Config(_) | ReloadError::Webhooks(_) => StatusCode::BAD_REQUEST,
            };
            (code, Json(json!({"error": e.to_string()})))
        }
    }
}
