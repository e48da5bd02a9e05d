//! Session routes (`/v1/users/{user_id}/sessions…`) and HTTP event ingestion
//! (`POST /v1/events`).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::json;

use super::handlers::SubjectUser;
use super::{ApiError, AppState, ErrorCode};
use crate::auth::{Principal, Scope};
use crate::event::decode;
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

/// `POST /v1/events` (scope `events:write`): one event in the wire format
/// (`schemas/event.schema.json`), validated by the same decoder as the stream, then published
/// to the events topic keyed by `user_id` (librdkafka's murmur2 partitioner, the Java
/// client's) and acknowledged by the broker before the 202. A user token may only publish its
/// own events. An event with a `session_id` of a live session of its user is also appended to
/// that session. The produce goes through the `kafka_producer` circuit breaker; the producer
/// is idempotent, so librdkafka's own retries never duplicate, and we add none.
pub(super) async fn publish(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    let event = decode(&body, &state.event_types, &state.decode_limits).map_err(|error| {
        ApiError::new(ErrorCode::InvalidEvent, format!("{}: {error}", error.reason().as_str()))
    })?;
    if !principal.may_name(event.user_id.as_str()) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a user token may only publish events of its own user",
        ));
    }
    let producer = &state.producer;
    let permit = producer.breaker.acquire().map_err(unavailable)?;
    let headers = OwnedHeaders::new().insert(Header { key: "source", value: Some("http") });
    let record = FutureRecord::to(&producer.topic)
        .key(event.user_id.as_str())
        .payload(body.as_ref())
        // No `.timestamp(event.ts)`: the record keeps the producer's own clock (CreateTime at
        // send), so the client's `ts` never becomes the record timestamp.
        .headers(headers);
    let delivered =
        producer.producer.send(record, Duration::from_millis(producer.timeout_ms)).await;
    producer.breaker.record(permit, delivered.is_ok());
    let delivery = delivered.map_err(|(error, _)| unavailable(format!("produce: {error}")))?;
    let mut session_recorded = false;
    if let Some(session_id) = &event.session_id {
        if let Ok(Some(session)) = state.sessions.get(session_id).await {
            if session.user_id == event.user_id.as_str() {
                let weight =
                    state.event_types.weight(event.event_type) * event.weight.unwrap_or(1.0);
                session_recorded =
                    state.sessions.record(&session, event.item_id.as_str(), weight).await.is_ok();
            }
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "event_id": event.event_id,
            "topic": producer.topic,
            "partition": delivery.partition,
            "offset": delivery.offset,
            "session_recorded": session_recorded,
        })),
    )
        .into_response())
}
