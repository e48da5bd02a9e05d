//! HTTP event ingestion: `POST /v1/events` (one event) and `POST /v1/events:batch` (many, one
//! broker round trip). Both validate with the stream's own decoder and publish to the events
//! topic keyed by `user_id` (librdkafka's murmur2 partitioner, the Java client's), through the
//! `kafka_producer` circuit breaker and an idempotent producer (librdkafka's own retries never
//! duplicate, and we add none).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{ApiError, AppState, ErrorCode};
use crate::auth::{Principal, Scope};
use crate::event::{decode, Event};
use crate::http_error::require_json;

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, error.to_string())
}

/// Decodes one event and checks the caller may publish it.
fn validate(state: &AppState, principal: &Principal, body: &[u8]) -> Result<Event, ApiError> {
    let event = decode(body, &state.event_types, &state.decode_limits).map_err(|error| {
        ApiError::new(ErrorCode::InvalidEvent, format!("{}: {error}", error.reason().as_str()))
    })?;
    if !principal.may_name(event.user_id.as_str()) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a user token may only publish events of its own user",
        ));
    }
    Ok(event)
}

/// The record of `event`, its payload the client's bytes. No `.timestamp(event.ts)`: the
/// record keeps the producer's own clock (CreateTime at send), so the client's `ts` never
/// becomes the record timestamp.
fn record<'a>(topic: &'a str, event: &'a Event, payload: &'a [u8]) -> FutureRecord<'a, str, [u8]> {
    let headers = OwnedHeaders::new().insert(Header { key: "source", value: Some("http") });
    FutureRecord::to(topic).key(event.user_id.as_str()).payload(payload).headers(headers)
}

/// Appends `event` to its session when it names a live session of its own user.
async fn record_in_session(state: &AppState, event: &Event) -> bool {
    let Some(session_id) = &event.session_id else {
        return false;
    };
    match state.sessions.get(session_id).await {
        Ok(Some(session)) if session.user_id == event.user_id.as_str() => {
            let weight = state.event_types.weight(event.event_type) * event.weight.unwrap_or(1.0);
            state.sessions.record(&session, event.item_id.as_str(), weight).await.is_ok()
        }
        _ => false,
    }
}

/// `POST /v1/events` (scope `events:write`): one event in the wire format
/// (`schemas/event.schema.json`), acknowledged by the broker before the 202. A user token may
/// only publish its own events. An event with a `session_id` of a live session of its user is
/// also appended to that session.
pub(super) async fn publish(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    require_json(&headers)?;
    let event = validate(&state, &principal, &body)?;
    let producer = &state.producer;
    let permit = producer.breaker.acquire().map_err(unavailable)?;
    let delivered = producer
        .producer
        .send(record(&producer.topic, &event, &body), Duration::from_millis(producer.timeout_ms))
        .await;
    producer.breaker.record(permit, delivered.is_ok());
    let delivery = delivered.map_err(|(error, _)| unavailable(format!("produce: {error}")))?;
    let session_recorded = record_in_session(&state, &event).await;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    /// Each event as the client wrote it: validated and published byte for byte, as a single
    /// event is (a `Value` would drop the first of two equal keys, which the decoder refuses).
    events: Vec<Box<RawValue>>,
}

/// `POST /v1/events:batch` (scope `events:write`): `{"events": [event, ...]}`, 1 to
/// `http.max_batch_events` events. Each event is validated on its own; the valid ones are
/// handed to the producer together (librdkafka sends them in one produce request per partition
/// leader) and the answer, 200 once every delivery is settled, holds one result per event in
/// request order: `{"index", "status": "accepted", "event_id", "partition", "offset",
/// "session_recorded"}`, `{"index", "status": "rejected", "error": {"code", "message"}}` for an
/// invalid or forbidden event (nothing published for it), or `"status": "failed"` with code
/// `unavailable` when the broker did not acknowledge it (safe to resend: the producer is
/// idempotent and the stream deduplicates by `event_id`). The whole request fails with 400
/// `invalid_body` for a body that is not such an object or a count out of range, and 503 while
/// the `kafka_producer` breaker is open.
pub(super) async fn publish_batch(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsWrite)?;
    require_json(&headers)?;
    let batch: Batch = serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(ErrorCode::InvalidBody, format!("expected {{\"events\": [...]}}: {error}"))
    })?;
    let limit = state.config.max_batch_events;
    if batch.events.is_empty() || batch.events.len() > limit {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("a batch holds 1 to {limit} events, not {}", batch.events.len()),
        ));
    }
    let payloads: Vec<&[u8]> = batch.events.iter().map(|event| event.get().as_bytes()).collect();
    let checked: Vec<Result<Event, ApiError>> =
        payloads.iter().map(|payload| validate(&state, &principal, payload)).collect();
    let producer = &state.producer;
    let permit = producer.breaker.acquire().map_err(unavailable)?;
    let timeout = Duration::from_millis(producer.timeout_ms);
    let sends = checked.iter().zip(&payloads).filter_map(|(checked, payload)| {
        let event = checked.as_ref().ok()?;
        Some(producer.producer.send(record(&producer.topic, event, payload), timeout))
    });
    let mut deliveries = futures_util::future::join_all(sends).await.into_iter();
    let mut all_delivered = true;
    let (mut accepted, mut rejected, mut failed) = (0usize, 0usize, 0usize);
    let mut results = Vec::with_capacity(checked.len());
    for (index, checked) in checked.iter().enumerate() {
        let result = match checked {
            Err(error) => {
                rejected += 1;
                json!({"index": index, "status": "rejected", "error": error.body()})
            }
            Ok(event) => match deliveries.next() {
                Some(Ok(delivery)) => {
                    accepted += 1;
                    json!({
                        "index": index,
                        "status": "accepted",
                        "event_id": event.event_id,
                        "partition": delivery.partition,
                        "offset": delivery.offset,
                        "session_recorded": record_in_session(&state, event).await,
                    })
                }
                Some(Err((error, _))) => {
                    all_delivered = false;
                    failed += 1;
                    let error = unavailable(format!("produce: {error}"));
                    json!({"index": index, "status": "failed", "error": error.body()})
                }
                None => unreachable_delivery(index),
            },
        };
        results.push(result);
    }
    producer.breaker.record(permit, all_delivered);
    Ok(Json(json!({
        "topic": producer.topic,
        "accepted": accepted,
        "rejected": rejected,
        "failed": failed,
        "results": results,
    }))
    .into_response())
}

/// One delivery per valid event is awaited above; a missing one would be a bug in this file.
fn unreachable_delivery(index: usize) -> Value {
    tracing::error!(index, "no delivery result for a valid batch event");
    json!({"index": index, "status": "failed", "error": {"code": "internal", "message": "no delivery result"}})
}
