//! Session routes (`/v1/users/{user_id}/sessions…`).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::handlers::SubjectUser;
use super::{ApiError, AppState, ErrorCode};
use crate::session::{valid_session_id, Created, Session};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, error.to_string())
}

/// `POST /v1/users/{user_id}/sessions`: 201 with the new session id.
pub(super) async fn create(
    State(state): State<AppState>,
    SubjectUser(user_id): SubjectUser,
) -> Result<Response, ApiError> {
    match state.sessions.create(&user_id, now_ms()).await.map_err(unavailable)? {
        Created::Created { session_id, evicted } => Ok((
            StatusCode::CREATED,
            Json(json!({
                "session_id": session_id,
                "user_id": user_id,
                "ttl_s": state.sessions.config().ttl_s,
                "evicted_sessions": evicted,
            })),
        )
            .into_response()),
        Created::LimitReached { live } => Err(ApiError::new(
            ErrorCode::SessionLimit,
            format!(
                "user {user_id:?} has {live} live sessions (limit {}): delete one first",
                state.sessions.config().max_per_user
            ),
        )),
    }
}

async fn session_of(
    state: &AppState,
    user_id: &str,
    params: &HashMap<String, String>,
) -> Result<Session, ApiError> {
    let session_id = params.get("session_id").map(String::as_str).unwrap_or_default();
    if !valid_session_id(session_id) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "session_id must be 32 lower-case hex digits",
        ));
    }
    match state.sessions.get(session_id).await.map_err(unavailable)? {
        Some(session) if session.user_id == user_id => Ok(session),
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no live session {session_id:?} of user {user_id:?}"),
        )),
    }
}

/// `GET /v1/users/{user_id}/sessions/{session_id}`.
pub(super) async fn get(
    State(state): State<AppState>,
    SubjectUser(user_id): SubjectUser,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let session = session_of(&state, &user_id, &params).await?;
    Ok(Json(json!({
        "session_id": session.session_id,
        "user_id": session.user_id,
        "created_ms": session.created_ms,
        "events": session.events.len(),
        "recent_items": session.events.iter().rev().map(|(item, _)| item).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `DELETE /v1/users/{user_id}/sessions/{session_id}`: 204.
pub(super) async fn delete(
    State(state): State<AppState>,
    SubjectUser(user_id): SubjectUser,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let session = session_of(&state, &user_id, &params).await?;
    state.sessions.delete(&session).await.map_err(unavailable)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
