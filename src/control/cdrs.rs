//! `GET /cdrs` (filtered, paged, newest first) and `GET /cdrs/{id}`: the
//! call records from the store, for calls long over as for calls still up.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;
use crate::store::{CdrFilter, StoreError, MAX_PAGE};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/cdrs", get(list))
        .route("/cdrs/{id}", get(one))
        .route("/cdrs/{id}/recording", get(recording))
}

/// `?from=&to=&route=&limit=&cursor=`; times as Unix ms, a date or RFC 3339.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    from: Option<String>,
    to: Option<String>,
    route: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn error(code: StatusCode, msg: String) -> Response {
    (code, Json(json!({ "error": msg }))).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::BadCursor(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        e => {
            tracing::warn!(error = %e, "call record query failed");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// A time parameter, or the text of a 400 saying what was expected.
fn time_param(name: &str, v: Option<&str>) -> Result<Option<i64>, String> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => crate::clock::parse_time_ms(s).map(Some).ok_or_else(|| {
            format!(
                "`{name}`: expected Unix milliseconds, a date (2026-12-03) or an RFC 3339 \
                     UTC time (2026-12-03T14:05:00Z), got `{}`",
                s.chars().take(40).collect::<String>()
            )
        }),
    }
}

async fn list(
    State(s): State<ApiState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(store) = s.sip.shared.calls.store() else {
        return error(StatusCode::NOT_FOUND, "no call store".into());
    };
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected ?from=&to=&route=&limit=&cursor=: {e}"),
            )
        }
    };
    let filter = match (
        time_param("from", q.from.as_deref()),
        time_param("to", q.to.as_deref()),
    ) {
        (Ok(from_ms), Ok(to_ms)) => CdrFilter {
            from_ms,
            to_ms,
            route: q.route.filter(|r| !r.is_empty()),
            limit: q.limit.map(|l| l.min(MAX_PAGE)),
            cursor: q.cursor.filter(|c| !c.is_empty()),
        },
        (Err(msg), _) | (_, Err(msg)) => return error(StatusCode::BAD_REQUEST, msg),
    };
    match store.list(&filter).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => store_error(e),
    }
}

async fn one(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let Some(store) = s.sip.shared.calls.store() else {
        return error(StatusCode::NOT_FOUND, "no call store".into());
    };
    match store.get(&id).await {
        Ok(Some(c)) => Json(c).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such call record".into()),
        Err(e) => store_error(e),
    }
}

/// The call's recording (`audio/wav`), streamed from the file its record
/// names: the path comes from the store, never from the request.
async fn recording(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let Some(store) = s.sip.shared.calls.store() else {
        return error(StatusCode::NOT_FOUND, "no call store".into());
    };
    let (path, ended) = match store.get(&id).await {
        Ok(Some(c)) => match c.recording {
            Some(p) => (p, c.end_at_unix_ms.is_some()),
            None => return error(StatusCode::NOT_FOUND, "this call was not recorded".into()),
        },
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such call record".into()),
        Err(e) => return store_error(e),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(StatusCode::GONE, "the recording file is gone".into())
        }
        Err(e) => {
            tracing::warn!(file = %path, error = %e, "cannot open a recording");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot open the recording".into(),
            );
        }
    };
    // A call still up is still writing: no length for a growing file.
    let len = match ended {
        true => file.metadata().await.ok().map(|m| m.len()),
        false => None,
    };
    let name = std::path::Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_else(|| "recording.wav".into());
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("audio/wav"),
    );
    if let Some(len) = len {
        h.insert(axum::http::header::CONTENT_LENGTH, len.into());
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    resp
}
