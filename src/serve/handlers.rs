use std::collections::{HashMap, HashSet};
use std::sync::RwLockReadGuard;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, ErrorCode};
use crate::index::{popular_top_k, similar_items};
use crate::model::{ItemRow, Model, UserState};

type ApiResult = Result<Json<Value>, ApiError>;

const MAX_ID_CHARS: usize = 128;

/// The user a request is about: the verified token's `sub` (the session user). The path's
/// `{user_id}` must equal it, unless the token may name other users (a service client's token
/// with `recs:read`, or `admin`: [`crate::auth::Principal::may_name`]); otherwise 403
/// `forbidden`. Without a verified token (a route outside the authentication layer): 401.
#[derive(Debug, Clone)]
pub struct SubjectUser(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SubjectUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = crate::auth::Principal::from_request_parts(parts, state).await?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|error| ApiError::new(ErrorCode::InvalidParameter, error.body_text()))?;
        let user_id = params.get("user_id").cloned().unwrap_or_default();
        valid_id("user_id", &user_id)?;
        if !principal.may_name(&user_id) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "a user token may only name its own user (the token's sub)",
            ));
        }
        Ok(Self(user_id))
    }
}

fn valid_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("{field} must have 1 to {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(())
}

fn read(state: &AppState) -> RwLockReadGuard<'_, Model> {
    state.model.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn query<T>(parsed: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    parsed
        .map(|Query(value)| value)
        .map_err(|error| ApiError::new(ErrorCode::InvalidParameter, error.body_text()))
}

fn check_k(k: usize, state: &AppState) -> Result<(), ApiError> {
    if k == 0 || k > state.config.max_k {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("k must be in 1..={}, got {k}", state.config.max_k),
        ));
    }
    Ok(())
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let status = state.status.snapshot();
    let index_built = state.index.is_built() || read(&state).item_count() == 0;
    let ready = status.restored && index_built;
    let body = json!({
        "ready": ready,
        "index_built": index_built,
        "index_items": state.index.snapshot_len(),
        "fresh_items": state.index.fresh_len(),
        "ingest": status,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(super) async fn unknown_route() -> ApiError {
    ApiError::new(ErrorCode::UnknownRoute, "no such route")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecommendParams {
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default = "default_true")]
    exclude_seen: bool,
}

fn default_k() -> usize {
    10
}

fn default_true() -> bool {
    true
}

/// A user's vector and seen items from memory, or from Redis when evicted.
async fn user_state(state: &AppState, user_id: &str) -> Result<Option<UserState>, ApiError> {
    {
        let model = read(state);
        if let Some(row) = model.user_row(user_id) {
            return Ok(Some(model.user_state(row)));
        }
    }
    let key = state.keys.user(user_id);
    let fields: HashMap<String, Vec<u8>> = state
        .redis
        .query("load_user", redis::cmd("HGETALL").arg(&key))
        .await
        .map_err(|error| ApiError::new(ErrorCode::Unavailable, error.to_string()))?;
    if fields.is_empty() {
        return Ok(None);
    }
    let dim = read(state).dim();
    crate::store::user_from_fields(&key, user_id, &fields, dim)
        .map(Some)
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))
}

pub(super) async fn recommendations(
    State(state): State<AppState>,
    SubjectUser(user_id): SubjectUser,
    params: Result<Query<RecommendParams>, QueryRejection>,
) -> ApiResult {
    let params = query(params)?;
    check_k(params.k, &state)?;
    let stored = user_state(&state, &user_id).await?;
    let model = read(&state);
    let exclude: HashSet<u32> = match (&stored, params.exclude_seen) {
        (Some(user), true) => {
            user.seen.iter().filter_map(|item| model.item_row(item)).map(|r| r.0).collect()
        }
        _ => HashSet::new(),
    };
    let (source, items, ann, candidates) = match &stored {
        Some(user) if user.events > 0 => {
            let result = state.index.top_k(&model, &user.vector, params.k, &exclude);
            ("model", result.items, result.used_ann, result.candidates)
        }
        _ => ("popularity", popular_top_k(&model, params.k, &exclude), false, model.item_count()),
    };
    Ok(Json(json!({
        "user_id": user_id,
        "source": source,
        "k": params.k,
        "items": items,
        "index": { "ann": ann, "candidates": candidates },
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScoreRequest {
    item_ids: Vec<String>,
}

pub(super) async fn scores(
    State(state): State<AppState>,
    SubjectUser(user_id): SubjectUser,
    body: Result<Json<ScoreRequest>, JsonRejection>,
) -> ApiResult {
    let Json(request) =
        body.map_err(|error| ApiError::new(ErrorCode::InvalidBody, error.body_text()))?;
    if request.item_ids.is_empty() || request.item_ids.len() > state.config.max_score_items {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("item_ids must hold 1 to {} ids", state.config.max_score_items),
        ));
    }
    let stored = user_state(&state, &user_id).await?;
    let model = read(&state);
    let personal = stored.as_ref().filter(|user| user.events > 0);
    let mut scored = Vec::new();
    let mut unknown = Vec::new();
    for item_id in &request.item_ids {
        let Some(row) = model.item_row(item_id) else {
            unknown.push(item_id.clone());
            continue;
        };
        let score = match personal {
            Some(user) => {
                crate::model::dot(&user.vector, model.item_vector(row)) + model.item_bias(row)
            }
            None => model.popularity_log(row) as f32,
        };
        scored.push(json!({ "item_id": item_id, "score": score }));
    }
    Ok(Json(json!({
        "user_id": user_id,
        "source": if personal.is_some() { "model" } else { "popularity" },
        "scores": scored,
        "unknown_items": unknown,
    })))
}

pub(super) async fn user(
    State(state): State<AppState>,
    SubjectUser(user_id): SubjectUser,
) -> ApiResult {
    let Some(user) = user_state(&state, &user_id).await? else {
        return Err(ApiError::new(ErrorCode::NotFound, format!("unknown user {user_id:?}")));
    };
    Ok(Json(json!({
        "user_id": user.id,
        "dim": user.vector.len(),
        "vector": user.vector,
        "events": user.events,
        "last_event_ts": (user.events > 0).then_some(user.last_ts),
        "seen_items": user.seen.len(),
    })))
}

type ItemPath = Result<Path<HashMap<String, String>>, PathRejection>;

fn item_row(model: &Model, path: ItemPath) -> Result<(String, ItemRow), ApiError> {
    let Path(params) =
        path.map_err(|error| ApiError::new(ErrorCode::InvalidParameter, error.body_text()))?;
    let item_id = params.get("item_id").cloned().unwrap_or_default();
    valid_id("item_id", &item_id)?;
    let row = model
        .item_row(&item_id)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("unknown item {item_id:?}")))?;
    Ok((item_id, row))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SimilarParams {
    #[serde(default = "default_k")]
    k: usize,
}

pub(super) async fn similar(
    State(state): State<AppState>,
    path: ItemPath,
    params: Result<Query<SimilarParams>, QueryRejection>,
) -> ApiResult {
    let params = query(params)?;
    check_k(params.k, &state)?;
    let model = read(&state);
    let (item_id, row) = item_row(&model, path)?;
    Ok(Json(
        json!({ "item_id": item_id, "k": params.k, "items": similar_items(&model, row, params.k) }),
    ))
}

pub(super) async fn item(State(state): State<AppState>, path: ItemPath) -> ApiResult {
    let model = read(&state);
    let (item_id, row) = item_row(&model, path)?;
    let item = model.item_state(row);
    Ok(Json(json!({
        "item_id": item_id,
        "dim": item.vector.len(),
        "vector": item.vector,
        "bias": item.bias,
        "events": item.events,
        "last_event_ts": (item.events > 0).then_some(item.last_ts),
        "popularity_log": item.popularity_log,
    })))
}
