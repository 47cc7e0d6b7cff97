//! Browser calling: `POST /webrtc/{route}` (WHIP-style: the SDP offer in,
//! 201 with the answer and `Location: /webrtc/{id}` out), `DELETE
//! /webrtc/{id}` (the browser hangs up), `GET /routes` (what the page can
//! call) and `GET /phone` (the built-in web phone, one static page).
//!
//! The page itself is open (it is the same static file for everyone and
//! holds nothing); everything it does goes through the routes above and
//! `/calls`, `/cdrs`, which need the API token like the rest of the API.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;

/// The web phone (plain HTML and JavaScript, no external resources).
const PHONE_HTML: &str = include_str!("phone.html");

/// The largest SDP offer taken (a browser's audio offer is ~4 KB).
const MAX_OFFER_BYTES: usize = 64 * 1024;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/phone", get(phone))
        .route("/routes", get(list_routes))
        .route("/webrtc/{route}", post(offer).delete(hang_up))
}

async fn phone() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PHONE_HTML,
    )
}

/// The routes a browser can call: `dial`, agent kind, whether it records.
async fn list_routes(State(s): State<ApiState>) -> impl IntoResponse {
    let cfg = s.sip.shared.cfg();
    let routes: Vec<_> = cfg
        .routes
        .iter()
        .filter(|r| !r.is_did)
        .map(|r| json!({ "dial": r.dial, "agent": r.agent.kind(), "record": r.record }))
        .collect();
    Json(routes)
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

/// Takes the browser's offer for `route`: 201 with the SDP answer.
async fn offer(State(s): State<ApiState>, Path(route): Path<String>, req: Request) -> Response {
    let sdp_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/sdp"));
    if !sdp_type {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/sdp with the SDP offer as the body".into(),
        );
    }
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let body = match axum::body::to_bytes(req.into_body(), MAX_OFFER_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("expected an SDP offer of at most {MAX_OFFER_BYTES} bytes: {e}"),
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected UTF-8 SDP".into());
    };
    let shared = s.sip.shared.clone();
    match crate::sip::webrtc::offer(shared, &route, text, client) {
        Ok(answer) => {
            let mut res = Response::new(Body::from(answer.sdp));
            *res.status_mut() = StatusCode::CREATED;
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("/webrtc/{}", answer.id)) {
                h.insert(header::LOCATION, v);
            }
            res
        }
        Err(e) => {
            let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            tracing::info!(%route, error = %e, "browser offer refused");
            error(code, e.to_string())
        }
    }
}

/// `DELETE /webrtc/{id}`: the browser hangs up.
async fn hang_up(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    if s.sip.shared.webrtc.hang_up(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no browser call `{id}`"))
    }
}
