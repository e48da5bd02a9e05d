//! Size limits at the edge of the HTTP contract, answered in the JSON error shape: request
//! targets over `http.max_uri_bytes` (414 `uri_too_long`), header fields over
//! `http.max_header_bytes` (431 `headers_too_large`), and bodies over `http.max_body_bytes`
//! (413 `payload_too_large`, from axum's body limit, whose plain-text answer is rewritten here).
//!
//! These limits sit below the HTTP parser's own (hyper: a request head over `max_buf_size`,
//! about 400 KB, or a target over 64 KiB), so that every request the contract refuses for its
//! size reaches this layer. Past the parser's limits hyper answers a bare 431 or 414 and closes
//! the connection: there is no service to call yet.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ErrorCode, ServeConfig};

/// Bytes of all header fields as sent: name, `: `, value and CRLF of each.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

/// The body length the request declares (`Content-Length`; hyper has refused a malformed or
/// repeated one already).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The outermost middleware: refuses oversized targets, headers and declared bodies before any
/// routing, and
/// rewrites a 413, 414 or 431 from an inner layer that is not JSON into the error shape.
pub(super) async fn enforce(
    State(config): State<ServeConfig>,
    request: Request,
    next: Next,
) -> Response {
    let target = request.uri().path_and_query().map_or(0, |target| target.as_str().len());
    if target > config.max_uri_bytes {
        let message = format!(
            "request target of {target} bytes exceeds http.max_uri_bytes = {}",
            config.max_uri_bytes
        );
        return ApiError::new(ErrorCode::UriTooLong, message).into_response();
    }
    let headers = header_bytes(request.headers());
    if headers > config.max_header_bytes {
        let message = format!(
            "header fields of {headers} bytes exceed http.max_header_bytes = {}",
            config.max_header_bytes
        );
        return ApiError::new(ErrorCode::HeadersTooLarge, message).into_response();
    }
    // A declared length past the limit is refused before routing or authentication, without
    // waiting for the body (a chunked body is cut by the body limit while it is read).
    if let Some(declared) = declared_length(request.headers()) {
        if declared > config.max_body_bytes as u64 {
            let message = format!(
                "Content-Length {declared} exceeds http.max_body_bytes = {}",
                config.max_body_bytes
            );
            return ApiError::new(ErrorCode::PayloadTooLarge, message).into_response();
        }
    }
    let response = next.run(request).await;
    let code = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::URI_TOO_LONG => ErrorCode::UriTooLong,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ErrorCode::HeadersTooLarge,
        _ => return response,
    };
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let message = match code {
        ErrorCode::PayloadTooLarge => {
            format!("request body exceeds http.max_body_bytes = {}", config.max_body_bytes)
        }
        _ => "request too large".to_owned(),
    };
    ApiError::new(code, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_count_what_goes_on_the_wire() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", "12345".parse().expect("valid value"));
        headers.append("x-a", "6".parse().expect("valid value"));
        // "x-a: 12345\r\n" and "x-a: 6\r\n"
        assert_eq!(header_bytes(&headers), 12 + 8);
    }

    #[test]
    fn the_declared_length_is_read_from_content_length() {
        let mut headers = HeaderMap::new();
        assert_eq!(declared_length(&headers), None);
        headers.insert(header::CONTENT_LENGTH, "3000000".parse().expect("valid value"));
        assert_eq!(declared_length(&headers), Some(3_000_000));
    }
}
