//! Bearer-token access control for the HTTP API (`[api] token_env` /
//! `token_file`): with a token configured, every route but `/health`, `/ready`
//! and `/metrics` (probes and scrapers) and the web phone's static `/phone`
//! page needs `Authorization: Bearer <token>`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiState;

/// Paths open without a token. `/phone` is the web phone's static page: it
/// holds nothing and asks for the token before it calls anything else.
const OPEN_PATHS: &[&str] = &["/health", "/ready", "/metrics", "/phone"];

/// Lets the request through when no token is configured, the path is open,
/// or it carries the right token; else 401 with `WWW-Authenticate: Bearer`.
pub(super) async fn require_token(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let cfg = s.sip.shared.cfg();
    let Some(token) = &cfg.api_token else {
        return next.run(req).await;
    };
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let error = match presented {
        Some(t) if token.matches(t.as_bytes()) => return next.run(req).await,
        Some(_) => "wrong bearer token",
        None => "this API needs `Authorization: Bearer <token>` (api.token_env / api.token_file)",
    };
    let mut res = (StatusCode::UNAUTHORIZED, Json(json!({ "error": error }))).into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"agentline\""),
    );
    res
}
