//! Admin routes (scope `admin`): reading and replacing the feature-flags document.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;

use super::{ApiError, AppState, ErrorCode};
use crate::auth::{Principal, Scope};
use crate::flags::{FlagsDoc, FlagsView, RefreshError};

/// `GET /v1/admin/flags`: the cached document, where it came from and its age.
pub(super) async fn get_flags(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<FlagsView>, ApiError> {
    principal.require(Scope::Admin)?;
    Ok(Json(state.flags.view()))
}

/// `PUT /v1/admin/flags`: replaces the whole document (validated), in Redis first, then in
/// this instance's cache; other instances see it within `flags.refresh_ms`.
pub(super) async fn put_flags(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Json<Box<serde_json::value::RawValue>>, JsonRejection>,
) -> Result<Json<FlagsView>, ApiError> {
    principal.require(Scope::Admin)?;
    let Json(text) = body.map_err(super::body_rejection)?;
    let doc = FlagsDoc::from_json(text.get())
        .map_err(|error| ApiError::new(ErrorCode::InvalidBody, error.to_string()))?;
    match state.flags.replace(doc).await {
        Ok(()) => Ok(Json(state.flags.view())),
        Err(RefreshError::Invalid(error)) => {
            Err(ApiError::new(ErrorCode::InvalidBody, error.to_string()))
        }
        Err(RefreshError::Unavailable(error)) => {
            tracing::warn!(%error, "flags not written");
            Err(ApiError::new(ErrorCode::Unavailable, format!("flags not written: {error}")))
        }
    }
}
