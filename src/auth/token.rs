//! `POST /v1/auth/token`: the client-credentials grant (RFC 6749 §4.4) and the refresh grant
//! (§6), answering in RFC 6749 format (§5.1 success, §5.2 errors).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::guard::Refused;
use super::http::no_store;
use super::principal::{Scopes, SERVICE_SUBJECT_PREFIX};
use super::store::Rotation;
use super::{now_s, Auth};

/// An RFC 6749 §5.2 error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OAuthError {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    UnsupportedGrantType,
    TemporarilyUnavailable,
    ServerError,
}

impl OAuthError {
    fn respond(self, description: &str) -> Response {
        let (code, status) = match self {
            Self::InvalidRequest => ("invalid_request", StatusCode::BAD_REQUEST),
            Self::InvalidClient => ("invalid_client", StatusCode::UNAUTHORIZED),
            Self::InvalidGrant => ("invalid_grant", StatusCode::BAD_REQUEST),
            Self::InvalidScope => ("invalid_scope", StatusCode::BAD_REQUEST),
            Self::UnsupportedGrantType => ("unsupported_grant_type", StatusCode::BAD_REQUEST),
            Self::TemporarilyUnavailable => {
                ("temporarily_unavailable", StatusCode::SERVICE_UNAVAILABLE)
            }
            Self::ServerError => ("server_error", StatusCode::INTERNAL_SERVER_ERROR),
        };
        let mut response =
            no_store(status, json!({ "error": code, "error_description": description }));
        if self == Self::InvalidClient {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="embedstream""#),
            );
        }
        response
    }
}

/// The answer to a secret check that was not admitted: 429 `slow_down` (RFC 8628 §3.5's code
/// for a client asking too often) or 503 `temporarily_unavailable`, both with `Retry-After`.
fn refusal(refused: Refused) -> Response {
    let (status, code, retry_after_s) = match refused {
        Refused::ClientRate { retry_after } => {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            (StatusCode::TOO_MANY_REQUESTS, "slow_down", seconds.max(1))
        }
        Refused::Busy => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", 1),
    };
    let mut response =
        no_store(status, json!({ "error": code, "error_description": refused.to_string() }));
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    response
}

/// Query of the token endpoint.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// Also set the access token as an HTTP-only cookie.
    #[serde(default)]
    cookie: bool,
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).ok()
}

/// Parses an `application/x-www-form-urlencoded` body. A repeated parameter is an error
/// (RFC 6749 §3.2).
fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut fields = HashMap::new();
    for pair in text.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if fields.insert(percent_decode(name)?, percent_decode(value)?).is_some() {
            return None;
        }
    }
    Some(fields)
}

/// Parses a JSON object of strings (booleans allowed for `cookie`).
fn parse_json(body: &[u8]) -> Option<HashMap<String, String>> {
    let Value::Object(object) = serde_json::from_slice(body).ok()? else { return None };
    object
        .into_iter()
        .map(|(name, value)| match value {
            Value::String(text) => Some((name, text)),
            Value::Bool(flag) => Some((name, flag.to_string())),
            _ => None,
        })
        .collect()
}

/// Client credentials from HTTP Basic (RFC 6749 §2.3.1) or from the body; `None` when
/// missing or unreadable.
fn credentials(headers: &HeaderMap, fields: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        return Some((percent_decode(id)?, percent_decode(secret)?));
    }
    Some((fields.get("client_id")?.clone(), fields.get("client_secret")?.clone()))
}

/// Why a request that authenticates with HTTP Basic also names a client in its body is
/// refused: "the client MUST NOT use more than one authentication method in each request"
/// (RFC 6749 §2.3), and a `client_id` that differs from the Basic one leaves open which client
/// asks (an attack run was issued a token for the Basic client). A body `client_id` equal to
/// the Basic one is allowed (§3.2.1 lets a client name itself).
fn mixed_authentication(
    headers: &HeaderMap,
    fields: &HashMap<String, String>,
) -> Option<&'static str> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"));
    if !basic {
        return None;
    }
    if fields.contains_key("client_secret") {
        return Some("HTTP Basic and client_secret in the body: one client authentication method per request (RFC 6749 section 2.3)");
    }
    let (id, _) = credentials(headers, &HashMap::new())?;
    fields
        .get("client_id")
        .is_some_and(|named| *named != id)
        .then_some("client_id in the body differs from the HTTP Basic client")
}

/// `POST /v1/auth/token`.
pub async fn token(
    State(auth): State<Arc<Auth>>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Query(query)) = query else {
        return OAuthError::InvalidRequest.respond("unknown query parameter");
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let fields = match content_type {
        Some(kind) if kind.starts_with("application/json") => parse_json(&body),
        _ => parse_form(&body),
    };
    let Some(fields) = fields else {
        return OAuthError::InvalidRequest
            .respond("body must be a form or a JSON object of strings");
    };
    let Some(signer) = auth.signer().filter(|_| auth.clients().is_some()) else {
        return OAuthError::UnsupportedGrantType.respond("token issuance is not configured");
    };
    if let Some(reason) = mixed_authentication(&headers, &fields) {
        return OAuthError::InvalidRequest.respond(reason);
    }
    let Some((client_id, secret)) = credentials(&headers, &fields) else {
        return OAuthError::InvalidClient.respond("client_id and client_secret are required");
    };
    let grant = fields.get("grant_type").map(String::as_str).unwrap_or_default();
    if !matches!(grant, "client_credentials" | "refresh_token") {
        return OAuthError::UnsupportedGrantType.respond("client_credentials or refresh_token");
    }
    // argon2 costs 19 MiB and tens of ms of CPU: admitted first (bounded, per client), then
    // on a low-priority secret-check thread with the slot's own memory.
    let Some(checks) = auth.secret_checks() else {
        return OAuthError::UnsupportedGrantType.respond("token issuance is not configured");
    };
    let slot = match checks.admit(&client_id).await {
        Ok(slot) => slot,
        Err(refused) => return refusal(refused),
    };
    let authenticating = Arc::clone(&auth);
    let id = client_id.clone();
    let allowed = checks
        .run(slot, move |memory| {
            let clients = authenticating.clients()?;
            clients.authenticate_with(&id, &secret, memory).map(|client| client.allowed)
        })
        .await;
    let allowed = match allowed {
        Some(Some(allowed)) => allowed,
        Some(None) => return OAuthError::InvalidClient.respond("unknown client or wrong secret"),
        None => return OAuthError::ServerError.respond("client authentication failed"),
    };
    let requested = match fields.get("scope").map(|text| Scopes::parse_strict(text)) {
        None => None,
        // RFC 6749 §3.3: a scope is one or more scope tokens; an empty one would be a token
        // no route accepts.
        Some(Ok(scopes)) if scopes == Scopes::default() => {
            return OAuthError::InvalidScope
                .respond("scope is empty; omit it to be granted the client's scopes")
        }
        Some(Ok(scopes)) => Some(scopes),
        Some(Err(name)) => {
            return OAuthError::InvalidScope.respond(&format!("unknown scope {name}"))
        }
    };
    let granted = if grant == "client_credentials" {
        client_credentials(&auth, &client_id, allowed, requested).await
    } else {
        refresh(&auth, &client_id, allowed, requested, fields.get("refresh_token")).await
    };
    let (scopes, refresh_token) = match granted {
        Ok(granted) => granted,
        Err(response) => return response,
    };
    let ttl_s = auth.config().access_ttl_s;
    let subject = format!("{SERVICE_SUBJECT_PREFIX}{client_id}");
    let Ok((access_token, _)) = signer.mint(&subject, scopes, ttl_s, now_s()) else {
        return OAuthError::ServerError.respond("signing failed");
    };
    let mut response = no_store(
        StatusCode::OK,
        json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ttl_s,
            "refresh_token": refresh_token,
            "scope": scopes.to_claim(),
        }),
    );
    if query.cookie || fields.get("cookie").is_some_and(|value| value == "true") {
        let value = format!(
            "{}={access_token}; HttpOnly; Secure; SameSite=Strict; Path=/v1; Max-Age={ttl_s}",
            auth.config().cookie_name
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    response
}

type Granted = Result<(Scopes, String), Response>;

/// RFC 6749 §4.4: the requested scopes (default: all the client may have) and a new refresh
/// token family.
async fn client_credentials(
    auth: &Auth,
    client_id: &str,
    allowed: Scopes,
    requested: Option<Scopes>,
) -> Granted {
    let scopes = requested.unwrap_or(allowed);
    if !scopes.is_subset(allowed) {
        return Err(OAuthError::InvalidScope.respond("scope exceeds the client's allowed scopes"));
    }
    match auth.refresh().issue(client_id, scopes).await {
        Ok(refresh_token) => Ok((scopes, refresh_token)),
        Err(_) => Err(OAuthError::TemporarilyUnavailable.respond("token store unavailable")),
    }
}

/// RFC 6749 §6: rotate the refresh token; a reuse revokes its family (`invalid_grant`). The
/// scope is checked inside the rotation, before the token is used: a refused request leaves it
/// valid.
async fn refresh(
    auth: &Auth,
    client_id: &str,
    allowed: Scopes,
    requested: Option<Scopes>,
    presented: Option<&String>,
) -> Granted {
    let Some(presented) = presented else {
        return Err(OAuthError::InvalidRequest.respond("refresh_token is required"));
    };
    let rotated = auth.refresh().rotate(presented, client_id, requested, allowed).await;
    let (original, next) = match rotated {
        Ok(Rotation::Rotated { scopes, next }) => (scopes, next),
        Ok(Rotation::ScopeExceeded) => {
            let message = "scope exceeds the original grant; the refresh token is still valid";
            return Err(OAuthError::InvalidScope.respond(message));
        }
        Ok(Rotation::Reused) => {
            tracing::warn!(client_id, "refresh token reused: family revoked");
            let message = "refresh token already used; its family is revoked";
            return Err(OAuthError::InvalidGrant.respond(message));
        }
        Ok(Rotation::FamilyRevoked) => {
            return Err(OAuthError::InvalidGrant.respond("refresh token family revoked or expired"))
        }
        Ok(Rotation::Unknown) => {
            return Err(OAuthError::InvalidGrant.respond("unknown or expired refresh token"))
        }
        Err(_) => return Err(OAuthError::TemporarilyUnavailable.respond("token store unavailable")),
    };
    // The client's allowed scopes may have shrunk since the family began; the script has
    // already checked that `requested` lies within both.
    Ok((requested.unwrap_or(original.intersection(allowed)), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_and_refuse_repeats() {
        let fields = parse_form(b"grant_type=client_credentials&scope=recs%3Aread+admin").unwrap();
        assert_eq!(fields["grant_type"], "client_credentials");
        assert_eq!(fields["scope"], "recs:read admin");
        assert!(parse_form(b"a=1&a=2").is_none());
        assert!(parse_form(b"a=%zz").is_none());
        assert!(parse_form(b"a=%4").is_none());
    }

    #[test]
    fn basic_with_a_body_secret_or_another_client_id_is_refused() {
        let mut headers = HeaderMap::new();
        // "recs:s3cret"
        headers.insert(header::AUTHORIZATION, "Basic cmVjczpzM2NyZXQ=".parse().unwrap());
        let fields = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        assert_eq!(mixed_authentication(&headers, &fields(&[])), None);
        assert_eq!(mixed_authentication(&headers, &fields(&[("client_id", "recs")])), None);
        assert!(mixed_authentication(&headers, &fields(&[("client_id", "admin")])).is_some());
        assert!(mixed_authentication(&headers, &fields(&[("client_secret", "x")])).is_some());
        let body_only = fields(&[("client_id", "admin"), ("client_secret", "x")]);
        assert_eq!(mixed_authentication(&HeaderMap::new(), &body_only), None);
    }

    #[test]
    fn json_bodies_are_objects_of_strings() {
        let fields = parse_json(br#"{"grant_type":"refresh_token","cookie":true}"#).unwrap();
        assert_eq!(fields["cookie"], "true");
        assert!(parse_json(br#"{"scope":3}"#).is_none());
        assert!(parse_json(b"[]").is_none());
    }
}
