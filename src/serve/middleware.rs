//! What wraps every route, from tower-http: a request id on every request and response
//! (`X-Request-Id`, taken from the request when the client sent a usable one, else a new UUID
//! v4), one
//! access-log line per request at `http.access_log_level` carrying that id, CORS for the origins
//! in `http.cors_allowed_origins`, and gzip compression of responses when the client accepts
//! it (`http.compression`).

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response};
use axum::Router;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::{Level, Span};

use super::ServeConfig;

/// The request id header.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id taken from a client, bytes. A longer one, or one with other than
/// visible ASCII, is replaced by a new UUID: a client's id is echoed and written into every
/// access-log line of the request, and an attack run had 8 KB ids logged and echoed as sent.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Removes a client's `X-Request-Id` that is too long or not visible ASCII, so that
/// tower-http's `SetRequestIdLayer` makes a new one.
async fn drop_unusable_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let usable = request.headers().get(REQUEST_ID_HEADER).is_none_or(|id| {
        id.len() <= MAX_REQUEST_ID_BYTES && id.as_bytes().iter().all(u8::is_ascii_graphic)
    });
    if !usable {
        request.headers_mut().remove(REQUEST_ID_HEADER);
    }
    request
}

/// The level of the access log, from `http.access_log_level`: `off`, `error`, `warn`, `info`,
/// `debug` or `trace` (case-insensitive). `None`: off.
///
/// # Errors
/// The rule, for a value that names no level.
pub fn access_log_level(name: &str) -> Result<Option<Level>, &'static str> {
    match name.to_ascii_lowercase().as_str() {
        "off" => Ok(None),
        "error" => Ok(Some(Level::ERROR)),
        "warn" => Ok(Some(Level::WARN)),
        "info" => Ok(Some(Level::INFO)),
        "debug" => Ok(Some(Level::DEBUG)),
        "trace" => Ok(Some(Level::TRACE)),
        _ => Err("one of off, error, warn, info, debug, trace"),
    }
}

/// The CORS policy of `http.cors_allowed_origins`: `None` when the list is empty (no CORS
/// headers at all, browsers then refuse cross-origin reads); `["*"]` allows any origin.
///
/// # Errors
/// The first entry that is not a valid header value.
pub fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| HeaderValue::from_str(origin).map_err(|_| origin.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, request_id.clone()])
            .expose_headers([request_id, header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    ))
}

/// Wraps `router` in the layers above (outermost first: request id, CORS, access log,
/// compression).
pub fn wrap<S>(router: Router<S>, config: &ServeConfig) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut router = router;
    if config.compression {
        router = router.layer(CompressionLayer::new().gzip(true));
    }
    // Validated with the configuration: a bad level or origin never gets here.
    if let Ok(Some(level)) = access_log_level(&config.access_log_level) {
        router = router.layer(
            TraceLayer::new_for_http()
                .make_span_with(AccessSpan(level))
                .on_request(())
                .on_response(AccessLine(level))
                .on_failure(()),
        );
    }
    if let Ok(Some(cors)) = cors_layer(&config.cors_allowed_origins) {
        router = router.layer(cors);
    }
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    router
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unusable_request_id))
}

/// The span of one request: method, path (no query: it may carry ids a log should not) and
/// request id.
#[derive(Debug, Clone, Copy)]
struct AccessSpan(Level);

impl<B> MakeSpan<B> for AccessSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let (method, path) = (request.method().as_str(), request.uri().path());
        macro_rules! span {
            ($level:expr) => {
                tracing::span!($level, "request", method, path, request_id = id)
            };
        }
        match self.0 {
            Level::ERROR => span!(Level::ERROR),
            Level::WARN => span!(Level::WARN),
            Level::INFO => span!(Level::INFO),
            Level::DEBUG => span!(Level::DEBUG),
            _ => span!(Level::TRACE),
        }
    }
}

/// The access-log line: status and latency in ms, inside the request's span.
#[derive(Debug, Clone, Copy)]
struct AccessLine(Level);

impl<B> OnResponse<B> for AccessLine {
    fn on_response(self, response: &Response<B>, latency: Duration, _span: &Span) {
        let status = response.status().as_u16();
        let latency_ms = latency.as_secs_f64() * 1000.0;
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(target: "embedstream::access", $level, status, latency_ms, "request")
            };
        }
        match self.0 {
            Level::ERROR => line!(Level::ERROR),
            Level::WARN => line!(Level::WARN),
            Level::INFO => line!(Level::INFO),
            Level::DEBUG => line!(Level::DEBUG),
            _ => line!(Level::TRACE),
        }
    }
}
