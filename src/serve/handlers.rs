use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, ErrorCode};
use crate::model::{ItemRow, Model};

/// Longest user, item or session id, characters (the event contract's limit).
pub(super) const MAX_ID_CHARS: usize = 128;

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

pub(super) fn valid_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("{field} must have 1 to {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(())
}

pub(super) fn query<T>(parsed: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    parsed
        .map(|Query(value)| value)
        .map_err(|error| ApiError::new(ErrorCode::InvalidParameter, error.body_text()))
}

pub(super) fn check_k(k: usize, state: &AppState) -> Result<(), ApiError> {
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

/// `GET /v1/whoami`: the verified token's subject, scopes and kind. It passes the same layers
/// as the ranking routes (token check, revocation, scope `recs:read`, the `recs` or
/// `service_recs` rate limit) and does no work of its own: the authenticated no-op that the
/// ranking benchmarks compare against (BENCHMARKS.md, "Ranking").
pub(super) async fn whoami(principal: crate::auth::Principal) -> Json<Value> {
    Json(json!({
        "sub": principal.sub,
        "scopes": principal.scopes.to_claim(),
        "service": principal.service,
    }))
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let served = state.served();
    let status = served.status.snapshot();
    let item_count = served.read().item_count();
    let index_built = served.index.is_built();
    let index_serves = served.index.serves(item_count);
    let ready = status.restored && index_serves;
    let redis_breaker = state.redis.breaker().state();
    let producer_breaker = state.producer.breaker.state();
    // Ready means "can answer": a degraded instance (Redis down, serving stale in-process
    // state) stays ready and says why in `degraded`.
    let mut degraded = Vec::new();
    if super::ranking::redis_degraded(&state, &served) {
        degraded.push("redis_unavailable");
    }
    if producer_breaker != crate::resilience::BreakerState::Closed {
        degraded.push("kafka_producer_unavailable");
    }
    if status.paused.is_some() {
        degraded.push("ingest_paused");
    }
    if status.stalled {
        degraded.push("ingest_stalled");
    }
    if status.consumer_stalled {
        degraded.push("consumer_stalled");
    }
    if status.redis_namespace_lost {
        degraded.push("redis_namespace_lost");
    }
    if !index_serves {
        degraded.push("exact_scoring");
    }
    let body = json!({
        "ready": ready,
        "degraded": degraded,
        "index_built": index_built,
        "index_items": served.index.snapshot_len(),
        "fresh_items": served.index.fresh_len(),
        "namespace": served.namespace,
        "breakers": {
            "redis": redis_breaker,
            "kafka_producer": producer_breaker,
        },
        "flags_age_ms": state.flags.age_ms(),
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

pub(super) async fn user(
    State(state): State<AppState>,
    SubjectUser(user_id): SubjectUser,
) -> Result<Response, ApiError> {
    let served = state.served();
    let lookup = super::ranking::lookup_user(&state, &served, &user_id, true).await?;
    let Some(user) = lookup.user else {
        if lookup.stale {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("user {user_id:?} is not in memory and redis is unavailable"),
            ));
        }
        return Err(ApiError::new(ErrorCode::NotFound, format!("unknown user {user_id:?}")));
    };
    let body = json!({
        "user_id": user.id,
        "dim": user.vector.len(),
        "vector": user.vector,
        "events": user.events,
        "last_event_ts": (user.events > 0).then_some(user.last_ts),
        "seen_items": user.seen.len(),
        "stale": lookup.stale,
    });
    Ok(super::ranking::respond(body, lookup.stale, &served.namespace))
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
    #[serde(default = "super::ranking::default_k")]
    k: usize,
}

/// Item answers come from the in-process model: stale, as rankings are, while Redis is
/// unavailable (other instances' updates to the item do not arrive, and this one's are not
/// stored).
pub(super) async fn similar(
    State(state): State<AppState>,
    path: ItemPath,
    params: Result<Query<SimilarParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    check_k(params.k, &state)?;
    let served = state.served();
    let stale = super::ranking::redis_degraded(&state, &served);
    let body = {
        let model = served.read();
        let (item_id, row) = item_row(&model, path)?;
        let answer = served.index.similar_items(&model, row, params.k);
        json!({
            "item_id": item_id,
            "k": params.k,
            "items": answer.items,
            "index": { "ready_list": answer.ready_list, "candidates": answer.candidates },
            "stale": stale,
        })
    };
    Ok(super::ranking::respond(body, stale, &served.namespace))
}

pub(super) async fn item(
    State(state): State<AppState>,
    path: ItemPath,
) -> Result<Response, ApiError> {
    let served = state.served();
    let stale = super::ranking::redis_degraded(&state, &served);
    let body = {
        let model = served.read();
        let (item_id, row) = item_row(&model, path)?;
        let item = model.item_state(row);
        json!({
            "item_id": item_id,
            "dim": item.vector.len(),
            "vector": item.vector,
            "bias": item.bias,
            "events": item.events,
            "last_event_ts": (item.events > 0).then_some(item.last_ts),
            "popularity_log": item.popularity_log,
            "stale": stale,
        })
    };
    Ok(super::ranking::respond(body, stale, &served.namespace))
}
