//! Load shedding of the `/v1` routes (tower): at most `max_concurrent_requests` in flight
//! across all of them; a request arriving when all slots are taken is refused at once with 503
//! `overloaded` and `Retry-After: 1`, instead of queueing until latency collapses. A request
//! running longer than `request_timeout_ms` is cut off with the same answer.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShedLayer;
use tower::timeout::error::Elapsed;
use tower::timeout::TimeoutLayer;
use tower::ServiceBuilder;

use crate::http_error::{ApiError, ErrorCode};
use crate::metrics::Metrics;

/// Wraps every route of `router` (added so far; fallbacks excluded) in one shared concurrency
/// limit of `max_in_flight` with load shedding and a per-request `timeout`.
///
/// The limit is one semaphore for all the routes: axum applies a layer to each route
/// separately, so tower's per-service `ConcurrencyLimitLayer` would give every route its own.
pub fn limit_concurrency<S>(
    router: Router<S>,
    max_in_flight: usize,
    timeout: Duration,
    metrics: Metrics,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let semaphore = Arc::new(Semaphore::new(max_in_flight));
    let refuse = move |error: BoxError| {
        let metrics = metrics.clone();
        async move { refusal(&metrics, &error) }
    };
    router.route_layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(refuse))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(semaphore))
            .layer(TimeoutLayer::new(timeout)),
    )
}

fn refusal(metrics: &Metrics, error: &BoxError) -> Response {
    let (reason, message) = if error.is::<Overloaded>() {
        ("overloaded", "too many requests in flight; retry shortly")
    } else if error.is::<Elapsed>() {
        ("timeout", "the request exceeded http.request_timeout_ms")
    } else {
        tracing::error!(error = %error, "unexpected error from the load-shedding layers");
        return ApiError::new(ErrorCode::Internal, "internal error").into_response();
    };
    metrics.http_shed.with_label_values(&[reason]).inc();
    let mut response = ApiError::new(ErrorCode::Overloaded, message).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
