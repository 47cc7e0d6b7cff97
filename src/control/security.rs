//! `GET /security/bans` (the SIP sources banned now) and
//! `DELETE /security/bans/{ip}` (lift one), behind the API token.

use std::net::IpAddr;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/security/bans", get(bans))
        .route("/security/bans/{ip}", delete(lift))
}

async fn bans(State(s): State<ApiState>) -> impl IntoResponse {
    Json(s.sip.shared.guard.lock().bans(Instant::now()))
}

async fn lift(State(s): State<ApiState>, Path(ip): Path<String>) -> impl IntoResponse {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("expected an IP address, got `{ip}`") })),
        );
    };
    if s.sip.shared.guard.lock().unban(addr, Instant::now()) {
        tracing::info!(ip = %addr, "SIP ban lifted by the API");
        (StatusCode::OK, Json(json!({ "lifted": addr })))
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("{addr} is not banned") })),
        )
    }
}
