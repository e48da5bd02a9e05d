//! The JSON error of the HTTP API, `{"error": {"code": "...", "message": "..."}}`, with its
//! stable codes and their statuses. A leaf: it knows axum and nothing of ours, so the domain
//! modules whose HTTP middleware answers errors (`auth`, `ratelimit`) use it without importing
//! the HTTP layer (`serve`), and no import cycle appears.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Stable error codes of the HTTP API. Renaming one is a breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A query or path parameter is malformed or out of range (400).
    InvalidParameter,
    /// The request body is not the expected JSON (400).
    InvalidBody,
    /// A published event fails validation; the message starts with the reason code of
    /// `schemas/event.schema.json` (400).
    InvalidEvent,
    /// The user already has `session.max_per_user` live sessions and `session.on_limit` is
    /// `refuse` (409).
    SessionLimit,
    /// No valid access token (401, `WWW-Authenticate: Bearer error="invalid_token"`, RFC 6750).
    Unauthorized,
    /// The token lacks the scope, or names another user (403, `insufficient_scope`).
    Forbidden,
    /// The user or item is unknown (404).
    NotFound,
    /// No such route (404).
    UnknownRoute,
    /// The route exists with another method (405).
    MethodNotAllowed,
    /// State not restored yet (503).
    NotReady,
    /// A dependency failed (503).
    Unavailable,
    /// The subject's rate limit for this route class is spent (429, with `Retry-After`).
    RateLimited,
    /// Too many requests in flight: shed before latency collapses (503, `Retry-After: 1`).
    Overloaded,
    /// The request body is larger than `http.max_body_bytes` (413).
    PayloadTooLarge,
    /// A JSON route's body was sent without `Content-Type: application/json` (or another
    /// `application/*+json`) (415).
    UnsupportedMediaType,
    /// The request target is longer than `http.max_uri_bytes` (414).
    UriTooLong,
    /// The request's header fields are larger than `http.max_header_bytes` (431).
    HeadersTooLarge,
    /// A bug (500).
    Internal,
}

impl ErrorCode {
    /// The wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidParameter => "invalid_parameter",
            Self::InvalidBody => "invalid_body",
            Self::InvalidEvent => "invalid_event",
            Self::SessionLimit => "session_limit",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::UnknownRoute => "unknown_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotReady => "not_ready",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidParameter | Self::InvalidBody | Self::InvalidEvent => {
                StatusCode::BAD_REQUEST
            }
            Self::SessionLimit => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::UnknownRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::NotReady | Self::Unavailable | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An API error: `{"error": {"code": "...", "message": "..."}}` with the code's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl ApiError {
    /// The inner object of the error body, `{"code": ..., "message": ...}` (per-item errors of
    /// a batch answer use it as they are).
    pub fn body(&self) -> serde_json::Value {
        json!({ "code": self.code.as_str(), "message": self.message })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.body() });
        let challenge = match self.code {
            ErrorCode::Unauthorized => Some(r#"Bearer realm="embedstream", error="invalid_token""#),
            ErrorCode::Forbidden => {
                Some(r#"Bearer realm="embedstream", error="insufficient_scope""#)
            }
            _ => None,
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        if let Some(challenge) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static(challenge));
        }
        response
    }
}

/// The error of a JSON body that could not be read: 413 `payload_too_large` past
/// `http.max_body_bytes`, 415 `unsupported_media_type` without a JSON `Content-Type`, else 400
/// `invalid_body` with axum's description.
pub fn body_rejection(rejection: JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorCode::PayloadTooLarge, rejection.body_text())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::new(ErrorCode::UnsupportedMediaType, rejection.body_text())
        }
        _ => ApiError::new(ErrorCode::InvalidBody, rejection.body_text()),
    }
}

/// Whether `headers` declare a JSON body as axum's `Json` extractor requires it (the same
/// test, on the `mime` crate's parse): `application/json` or `application/<anything>+json`,
/// parameters (`charset`) allowed.
pub fn declares_json(headers: &header::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == mime::APPLICATION
                && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
        })
}

/// 415 `unsupported_media_type` unless `headers` declare a JSON body ([`declares_json`]), for
/// the routes that read their body as bytes.
///
/// # Errors
/// The 415 error.
pub fn require_json(headers: &header::HeaderMap) -> Result<(), ApiError> {
    if declares_json(headers) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::UnsupportedMediaType,
        "Expected request with `Content-Type: application/json`",
    ))
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    use super::declares_json;

    #[test]
    fn json_content_types_are_those_axum_accepts() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            declares_json(&headers)
        };
        for accepted in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/cloudevents+json",
        ] {
            assert!(with(accepted), "{accepted}");
        }
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/x-ndjson",
            "application/+json",
            "json",
            "",
        ] {
            assert!(!with(refused), "{refused}");
        }
        assert!(!declares_json(&HeaderMap::new()), "no Content-Type");
    }
}
