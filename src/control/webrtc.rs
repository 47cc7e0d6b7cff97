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
        .route("/calls/{id}/events", get(events))
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

/// How often a call's event stream looks at the registry.
const EVENTS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// `GET /calls/{id}/events`: `state` (`{"state","end_reason"}`), `dtmf`
/// (`{"digits"}`: all so far), `transcript` (`{"role","text","at_unix_ms"}`,
/// one per line) as they change, then `end` once the call is over.
async fn events(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    use axum::response::sse::{KeepAlive, Sse};
    if s.sip.shared.calls.get(&id).is_none() {
        return error(StatusCode::NOT_FOUND, "no such call".into());
    }
    let watch = CallWatch {
        shared: s.sip.shared.clone(),
        id,
        pending: Default::default(),
        state: String::new(),
        dtmf: String::new(),
        last_line: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        let ev = w.next().await?;
        Some((Ok::<_, std::convert::Infallible>(ev), w))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One event stream's view of a call: what it has told so far.
struct CallWatch {
    shared: std::sync::Arc<crate::sip::shared::Shared>,
    id: String,
    pending: std::collections::VecDeque<axum::response::sse::Event>,
    state: String,
    dtmf: String,
    /// The last transcript line sent (time, role, text).
    last_line: Option<(u64, String, String)>,
    done: bool,
}

impl CallWatch {
    async fn next(&mut self) -> Option<axum::response::sse::Event> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            if self.done {
                return None;
            }
            self.look();
            if self.pending.is_empty() {
                tokio::time::sleep(EVENTS_EVERY).await;
            }
        }
    }

    fn push(&mut self, kind: &str, data: serde_json::Value) {
        let ev = axum::response::sse::Event::default()
            .event(kind)
            .data(data.to_string());
        self.pending.push_back(ev);
    }

    /// Queues what changed since the last look.
    fn look(&mut self) {
        let Some(c) = self.shared.calls.get(&self.id) else {
            self.push("end", json!({}));
            self.done = true;
            return;
        };
        let state = serde_json::to_value(c.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if state != self.state {
            self.state = state.clone();
            self.push(
                "state",
                json!({ "state": state, "end_reason": c.end_reason }),
            );
        }
        if c.dtmf != self.dtmf {
            self.dtmf = c.dtmf.clone();
            self.push("dtmf", json!({ "digits": c.dtmf }));
        }
        // The lines after the last one sent (the registry keeps the last 100).
        let start = match &self.last_line {
            None => 0,
            Some((at, role, text)) => c
                .transcript
                .iter()
                .rposition(|l| l.at_unix_ms == *at && &l.role == role && &l.text == text)
                .map_or(0, |i| i + 1),
        };
        for l in c.transcript.iter().skip(start) {
            self.push(
                "transcript",
                json!({ "role": l.role, "text": l.text, "at_unix_ms": l.at_unix_ms }),
            );
        }
        if let Some(l) = c.transcript.last() {
            self.last_line = Some((l.at_unix_ms, l.role.clone(), l.text.clone()));
        }
        if state == "ended" {
            self.push("end", json!({}));
            self.done = true;
        }
    }
}
