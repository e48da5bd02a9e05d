//! HTTP side of auth: the authentication layer, the [`Principal`] extractor, a scope layer,
//! and `POST /v1/auth/token` and `POST /v1/auth/revoke`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::principal::{MissingScope, Principal, Scope};
use super::{now_s, Auth, TokenError};
use crate::http_error::{ApiError, ErrorCode};

/// The one `/v1` route that needs no token.
pub const TOKEN_PATH: &str = "/v1/auth/token";

impl From<MissingScope> for ApiError {
    fn from(error: MissingScope) -> Self {
        ApiError::new(ErrorCode::Forbidden, error.to_string())
    }
}

fn unauthorized(error: &TokenError) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, error.to_string())
}

/// The bearer token of a request: the `Authorization: Bearer` header, else the access cookie.
/// A present `Authorization` header of another scheme is an error, not a fall-through.
fn bearer<'a>(headers: &'a HeaderMap, cookie_name: &str) -> Result<&'a str, TokenError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().map_err(|_| TokenError::Malformed("header".to_owned()))?;
        let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(TokenError::Malformed("expected Authorization: Bearer".to_owned()));
        }
        return Ok(token.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie_name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
        .ok_or(TokenError::Missing)
}

/// Authentication layer of the `/v1` routes (all but [`TOKEN_PATH`]): verifies the token
/// and stores the [`Principal`] in the request extensions, or answers 401 `unauthorized`.
pub async fn authenticate(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == TOKEN_PATH {
        return next.run(request).await;
    }
    let principal = match bearer(request.headers(), &auth.config().cookie_name) {
        Ok(token) => auth.authenticate(token).await,
        Err(_) if auth.verifier().is_none() => auth.authenticate("").await,
        Err(error) => Err(error),
    };
    let principal = match principal {
        Ok(principal) => principal,
        Err(error) => return unauthorized(&error).into_response(),
    };
    if let Some(scope) = required_scope(request.uri().path()) {
        if let Err(error) = principal.require(scope) {
            return ApiError::from(error).into_response();
        }
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The scope a `/v1` path needs, by route class: `/v1/events*` (and `/v1/events:batch`) `events:write`, `/v1/admin*`
/// `admin`, `/v1/auth/*` none (any valid token), every other `/v1` route `recs:read`.
/// One table, so that a route added later cannot forget its scope.
pub fn required_scope(path: &str) -> Option<Scope> {
    let class_of = |prefix: &str| {
        // `/v1/events:batch` is of `/v1/events`'s class: a custom method (`:verb`, as in
        // Google's API design guide) belongs to the resource it acts on.
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with(':'))
    };
    if class_of("/v1/auth") {
        None
    } else if class_of("/v1/events") {
        Some(Scope::EventsWrite)
    } else if class_of("/v1/admin") {
        Some(Scope::Admin)
    } else {
        Some(Scope::RecsRead)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| unauthorized(&TokenError::Missing))
    }
}

/// `POST /v1/auth/revoke`: body `{"token": "<access token>"}`, or no body (or `{}`) to revoke
/// the caller's own token. A token of another subject needs `admin`. An invalid or expired
/// token is answered 200 with `revoked: false` (RFC 7009 §2.2): there is nothing to revoke.
pub async fn revoke(State(auth): State<Arc<Auth>>, principal: Principal, body: Bytes) -> Response {
    let target = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(fields)) => match fields.get("token") {
                None => None,
                Some(Value::String(token)) => Some(token.clone()),
                Some(_) => return bad_body("token must be a string"),
            },
            _ => return bad_body("expected a JSON object {\"token\": \"...\"}"),
        }
    };
    let now = now_s();
    let (jti, exp) = match (target, auth.verifier()) {
        (None, _) => (principal.jti.clone(), principal.exp),
        (Some(_), None) => return Json(json!({ "revoked": false })).into_response(),
        (Some(token), Some(verifier)) => match verifier.verify(&token, now) {
            Ok(claims) if claims.sub == principal.sub || principal.has(Scope::Admin) => {
                (claims.jti, claims.exp)
            }
            Ok(_) => {
                return ApiError::new(
                    ErrorCode::Forbidden,
                    "revoking another subject's token needs scope admin",
                )
                .into_response()
            }
            Err(_) => return Json(json!({ "revoked": false })).into_response(),
        },
    };
    if jti.is_empty() {
        return Json(json!({ "revoked": false })).into_response();
    }
    if let Err(error) = auth.revocations().revoke(&jti, exp, now).await {
        return ApiError::new(
            ErrorCode::Unavailable,
            format!("revoked on this instance only, retry for every instance: {error}"),
        )
        .into_response();
    }
    Json(json!({ "revoked": true, "jti": jti, "expires_in": exp.saturating_sub(now) }))
        .into_response()
}

fn bad_body(message: &str) -> Response {
    ApiError::new(ErrorCode::InvalidBody, message).into_response()
}

/// A `Cache-Control: no-store` JSON response (RFC 6749 §5.1).
pub(super) fn no_store(status: axum::http::StatusCode, body: Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

pub use super::token::token;

#[cfg(test)]
mod scope_tests {
    use super::*;

    #[test]
    fn custom_methods_take_their_resource_scope() {
        for (path, scope) in [
            ("/v1/events", Some(Scope::EventsWrite)),
            ("/v1/events:batch", Some(Scope::EventsWrite)),
            ("/v1/eventsx", Some(Scope::RecsRead)),
            ("/v1/admin/flags", Some(Scope::Admin)),
            ("/v1/auth/token", None),
            ("/v1/users/1/recommendations", Some(Scope::RecsRead)),
        ] {
            assert_eq!(required_scope(path), scope, "{path}");
        }
    }
}
