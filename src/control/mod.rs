//! HTTP control API: `GET /health`, `GET /ready`, `GET /calls`, `GET /calls/{id}`,
//! `GET /cdrs`, browser calls (`POST /webrtc/{route}`, `GET /phone`) and the
//! rest (README, "API").

pub mod ami;
mod auth;
mod cdrs;
pub mod metrics;
pub mod ready;
mod reload;
mod security;
mod webrtc;

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::sip::server::SipHandle;

#[derive(Clone)]
pub struct ApiState {
    pub sip: SipHandle,
    /// What `GET /ready` checks (add the lead's store check here).
    pub readiness: ready::Readiness,
    /// `POST /reload` (and SIGHUP) re-read the profile through this.
    pub reloader: std::sync::Arc<crate::sip::reload::Reloader>,
}

pub fn router(state: ApiState) -> Router {
    // Installs the metrics recorder before the first call is counted.
    metrics::handle();
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready::ready))
        .route("/metrics", get(metrics::scrape))
        .route("/calls", get(calls).post(originate))
        .route("/trunks", get(trunks))
        .route("/reload", post(reload::reload))
        .route("/calls/{id}", get(call))
        .route("/calls/{id}/hangup", post(hangup))
        .route("/calls/{id}/dtmf", post(dtmf))
        .route("/calls/{id}/transfer", post(transfer))
        .merge(ami::routes())
        .merge(cdrs::routes())
        .merge(security::routes())
        .merge(webrtc::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state)
}

async fn health(State(s): State<ApiState>) -> impl IntoResponse {
    let shared = &s.sip.shared;
    let draining = shared.draining.is_cancelled();
    let overloaded = shared.overload.overloaded();
    let load = shared.overload.last();
    Json(json!({
        "status": if draining { "draining" } else if overloaded { "overloaded" } else { "ok" },
        "overloaded": overloaded,
        "cpu_share": (load.cpu * 1000.0).round() / 1000.0,
        "media_lag_ms": (load.media_lag_ms * 10.0).round() / 10.0,
        "version": env!("CARGO_PKG_VERSION"),
        "active_calls": shared.calls.len(),
        "rtp_ports_in_use": shared.ports.in_use(),
        "dialogs": s.sip.dialog_count(),
        "registrations": s.sip.registration_count(),
        "sip_transactions": s.sip.transaction_stats(),
        "tokio_tasks": tokio::runtime::Handle::current().metrics().num_alive_tasks(),
        "trunks_registered": shared.trunks.snapshot().iter()
            .filter(|t| t.state == crate::sip::trunk::TrunkState::Registered).count(),
    }))
}

async fn trunks(State(s): State<ApiState>) -> impl IntoResponse {
    Json(s.sip.shared.trunks.snapshot())
}

async fn calls(State(s): State<ApiState>) -> impl IntoResponse {
    Json(s.sip.shared.calls.list())
}

async fn call(State(s): State<ApiState>, Path(id): Path<String>) -> impl IntoResponse {
    match s.sip.shared.calls.get(&id) {
        Some(c) => Json(c).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such call"})),
        )
            .into_response(),
    }
}

/// `POST /calls`: the call to place. The agent is the profile's, named by
/// its route: a request never describes one (URLs, environment variables and
/// files stay the profile's).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginateBody {
    trunk: String,
    to: String,
    /// A route's `dial` (or `did`): its agent, fallbacks and options answer.
    route: String,
    from: Option<String>,
    ring_timeout_s: Option<u64>,
    /// Answering-machine detection for this call (the route's `amd_action`
    /// says what a machine gets).
    amd: Option<bool>,
}

const ORIGINATE_SHAPE: &str = r#"expected {"trunk", "to", "route": "<a route's dial from the profile>", "from"?, "ring_timeout_s"?, "amd"?}"#;

fn bad_request(error: String) -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error })))
}

/// Places an outbound call through a trunk: 202 with the call's id.
async fn originate(
    State(s): State<ApiState>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> impl IntoResponse {
    use crate::sip::call::OriginateError as E;
    let v = match body {
        Ok(Json(v)) => v,
        Err(e) => return bad_request(format!("{ORIGINATE_SHAPE}: {e}")),
    };
    if v.get("agent").is_some() {
        return bad_request(
            "`agent` is not accepted: name a route from the profile with \"route\": \"<dial>\" \
             (its agent, fallbacks and options take the call)"
                .into(),
        );
    }
    let req: OriginateBody = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("{ORIGINATE_SHAPE}: {e}")),
    };
    let cfg = s.sip.shared.cfg();
    let Some(route) = cfg.route(&req.route).or_else(|| cfg.did_route(&req.route)) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no route `{}` in the profile", req.route)})),
        );
    };
    let call = crate::sip::call::Originate {
        trunk: req.trunk,
        to: req.to,
        from: req.from,
        route: crate::config::RouteConfig {
            amd: req.amd.unwrap_or(route.amd),
            ..route.clone()
        },
        ring_timeout_s: req.ring_timeout_s,
    };
    match crate::sip::call::originate(s.sip.shared.clone(), call) {
        Ok(id) => (StatusCode::ACCEPTED, Json(json!({"id": id}))),
        Err(e) => {
            let code = match e {
                E::UnknownTrunk(_) => StatusCode::NOT_FOUND,
                E::BadTarget(_) => StatusCode::BAD_REQUEST,
                E::Draining | E::Full | E::Overloaded | E::Ports(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                E::Invite(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(json!({"error": e.to_string()})))
        }
    }
}

async fn hangup(State(s): State<ApiState>, Path(id): Path<String>) -> impl IntoResponse {
    if s.sip.shared.calls.hangup(&id) {
        (StatusCode::OK, Json(json!({"status": "hanging up"})))
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such call"})),
        )
    }
}

#[derive(serde::Deserialize)]
struct DtmfRequest {
    digits: String,
}

/// Queues RFC 4733 digits on a call (IVR navigation, transfers).
async fn dtmf(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<DtmfRequest>, axum::extract::rejection::JsonRejection>,
) -> impl IntoResponse {
    let Ok(Json(req)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expected JSON {\"digits\": \"123#\"}"})),
        );
    };
    let valid = !req.digits.is_empty()
        && req.digits.len() <= 64
        && req
            .digits
            .chars()
            .all(|c| "0123456789*#ABCDabcd".contains(c));
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "digits: expected 1-64 of 0-9 * # A-D", "got": req.digits})),
        );
    }
    let cmd = crate::calls::CallCommand::SendDtmf(req.digits.clone());
    if s.sip.shared.calls.command(&id, cmd) {
        (
            StatusCode::ACCEPTED,
            Json(json!({"status": "queued", "digits": req.digits})),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such call"})),
        )
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    /// A `sip:` URI, or a number/user (called through `trunk`, else the
    /// call's own trunk).
    to: String,
    trunk: Option<String>,
    #[serde(default)]
    mode: crate::calls::TransferMode,
}

/// Blind transfer: REFER to the caller's side, or a bridged leg through a
/// trunk when REFER is refused (mode `auto`) or asked for (`bridge`).
/// 202 at once; progress shows in `GET /calls/{id}` under `transfer`.
async fn transfer(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<TransferBody>, axum::extract::rejection::JsonRejection>,
) -> impl IntoResponse {
    use crate::calls::{CallCommand, TransferMode};
    use crate::sip::call::TransferTargetError;
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"error": format!("expected {{\"to\", \"trunk\"?, \"mode\"?: auto|refer|bridge}}: {e}")}),
                ),
            )
        }
    };
    let shared = &s.sip.shared;
    let Some(call) = shared
        .calls
        .get(&id)
        .filter(|c| c.ended_at_unix_ms.is_none())
    else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such call"})),
        );
    };
    let trunk = req.trunk.clone().or(call.trunk.clone());
    let mut target = match crate::sip::call::transfer_target(shared, trunk.as_deref(), &req.to) {
        Ok(t) => t,
        Err(e @ TransferTargetError::UnknownTrunk(_)) => {
            return (StatusCode::NOT_FOUND, Json(json!({"error": e.to_string()})))
        }
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("to: {e}"), "got": req.to})),
            )
        }
    };
    if req.mode == TransferMode::Bridge && target.bridge.is_none() {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": "mode bridge needs a trunk (the call's or `trunk`) and a number"}),
            ),
        );
    }
    target.mode = req.mode;
    let refer_to = target.refer_to.clone();
    let cmd = CallCommand::Transfer(target);
    if shared.calls.command(&id, cmd) {
        (
            StatusCode::ACCEPTED,
            Json(json!({"status": "transferring", "refer_to": refer_to, "mode": req.mode})),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such call"})),
        )
    }
}

/// Binds the API listener; the returned future serves until `stop`.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = bind(addr).await?;
    Ok(serve_on(listener, state, stop))
}

/// Binds the API's address (before the SIP side starts, so a busy port
/// stops the start before anything registers or is announced).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "HTTP API listening");
    Ok(listener)
}

/// Serves the API on a bound listener until `stop`.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: ApiState,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    // The peer's address: a browser call's `from` (POST /webrtc/{route}).
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
