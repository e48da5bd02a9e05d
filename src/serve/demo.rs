//! The demo page (`/demo`, on with `http.demo` or `embedstream run --demo`): a person signs in
//! as a user, sees that user's top 10 with MovieLens titles and scores, likes or views items,
//! and watches the list change as the events go through HTTP ingestion, Kafka, the fold and
//! back.
//!
//! The split is the seed's client/server one. The client (`demo/index.html`, `demo/app.js`, no
//! framework) validates input, caches titles in `localStorage` and marks a clicked item at
//! once (optimistic update). The server keeps everything else: sign-in sets the access token
//! as an HTTP-only cookie (`auth.cookie_name`, `SameSite=Strict`, `Path=/v1`), and the page
//! calls the ordinary `/v1` routes with it, so token checks, scopes, validation, rate limits
//! and all ranking are the API's own. Routes (outside `/v1`, none needs a token):
//!
//! - `GET /demo`, `GET /demo/app.js`: the page and its script (`Content-Security-Policy:
//!   default-src 'self'`).
//! - `GET /demo/titles`: `{"titles": {"<item_id>": "<title>", ...}}` from
//!   `http.demo_titles_path` (see [`load_titles`]), cacheable for a day.
//! - `POST /demo/session` `{"user_id": "196"}`: signs in (200 `{"user_id", "expires_in"}`, the
//!   token only in `Set-Cookie`); `DELETE /demo/session` signs out (clears the cookie).
//!
//! Anyone who can reach `/demo` can sign in as any user with scopes `recs:read` and
//! `events:write`: it is off by default, for demonstrations only.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, ErrorCode};
use crate::auth::{Scope, Scopes};

const PAGE: &str = include_str!("demo/index.html");
const SCRIPT: &str = include_str!("demo/app.js");
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";

/// Item titles (id to title) from either MovieLens-100k item file:
///
/// - RecBole's atomic file `ml-100k.item` (what `scripts/fetch-movielens.sh` writes): UTF-8,
///   tab-separated, a header line naming `item_id:token` and `movie_title:token_seq` (and
///   `release_year:token`, added to the title as "Title (year)");
/// - GroupLens's `u.item`: ISO-8859-1, `id|title (year)|release date|...`, no header.
///
/// Lines without an id and a title are skipped.
///
/// # Errors
/// The file cannot be read.
pub fn load_titles(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let bytes = std::fs::read(path)?;
    let header_end = bytes.iter().position(|byte| *byte == b'\n').unwrap_or(bytes.len());
    if bytes[..header_end].starts_with(b"item_id:") {
        return Ok(recbole_titles(&String::from_utf8_lossy(&bytes)));
    }
    // ISO-8859-1 maps each byte to the code point of the same value.
    let text: String = bytes.iter().map(|byte| char::from(*byte)).collect();
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('|');
            let id = fields.next()?.trim();
            let title = fields.next()?.trim();
            (!id.is_empty() && !title.is_empty()).then(|| (id.to_owned(), title.to_owned()))
        })
        .collect())
}

fn recbole_titles(text: &str) -> BTreeMap<String, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let column = |name: &str| header.iter().position(|field| field.split(':').next() == Some(name));
    let (Some(id), Some(title)) = (column("item_id"), column("movie_title")) else {
        return BTreeMap::new();
    };
    let year = column("release_year");
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let item = fields.get(id)?.trim();
            let name = fields.get(title)?.trim();
            if item.is_empty() || name.is_empty() {
                return None;
            }
            let name = match year.and_then(|year| fields.get(year)).map(|year| year.trim()) {
                Some(year) if !year.is_empty() => format!("{name} ({year})"),
                _ => name.to_owned(),
            };
            Some((item.to_owned(), name))
        })
        .collect()
}

/// The demo routes, or none when `http.demo` is off. Titles are read once, here; a missing
/// file leaves the page showing item ids (logged).
pub(super) fn routes(state: &AppState) -> Router<AppState> {
    if !state.config.demo {
        return Router::new();
    }
    let path = Path::new(&state.config.demo_titles_path);
    let titles = load_titles(path).unwrap_or_else(|error| {
        tracing::warn!(%error, path = %path.display(), "demo titles unavailable: showing item ids");
        BTreeMap::new()
    });
    tracing::info!(titles = titles.len(), "demo page on at /demo");
    let titles = Arc::new(json!({ "titles": titles }).to_string());
    Router::new()
        .route("/demo", get(page))
        .route("/demo/app.js", get(script))
        .route(
            "/demo/titles",
            get(move || {
                let titles = Arc::clone(&titles);
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, "public, max-age=86400"),
                        ],
                        titles.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/demo/session", axum::routing::post(sign_in).delete(sign_out))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignIn {
    user_id: String,
}

fn cookie(name: &str, value: &str, max_age_s: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; Secure; SameSite=Strict; Path=/v1; Max-Age={max_age_s}"
    ))
    .ok()
}

async fn sign_in(
    State(state): State<AppState>,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(SignIn { user_id }) = body.map_err(super::body_rejection)?;
    super::handlers::valid_id("user_id", &user_id)?;
    if user_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "user_id must not contain spaces or control characters",
        ));
    }
    let config = state.auth.config();
    if !config.enabled {
        // No tokens to carry: every /v1 route is open.
        return Ok(Json(json!({ "user_id": user_id, "expires_in": null })).into_response());
    }
    let signer = state.auth.signer().ok_or_else(|| {
        ApiError::new(ErrorCode::Unavailable, "demo sign-in needs auth.signing_key_path")
    })?;
    let ttl_s = config.access_ttl_s;
    let scopes = Scopes::of(&[Scope::RecsRead, Scope::EventsWrite]);
    let (token, _) = signer
        .mint(&user_id, scopes, ttl_s, crate::auth::now_s())
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))?;
    let mut response = Json(json!({ "user_id": user_id, "expires_in": ttl_s })).into_response();
    let value = cookie(&config.cookie_name, &token, ttl_s)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "cookie value"))?;
    response.headers_mut().insert(header::SET_COOKIE, value);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn sign_out(State(state): State<AppState>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(value) = cookie(&state.auth.config().cookie_name, "", 0) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::load_titles;

    #[test]
    fn recbole_item_files_are_read_with_the_year() {
        let dir = std::env::temp_dir().join(format!("embedstream-recbole-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ml-100k.item");
        let text = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n\
                    1\tToy Story\t1995\tAnimation Comedy\n\
                    267\tunknown\t\tunknown\n\
                    \t\t\t\n";
        std::fs::write(&path, text).unwrap();
        let titles = load_titles(&path).unwrap();
        assert_eq!(titles.len(), 2);
        assert_eq!(titles["1"], "Toy Story (1995)");
        assert_eq!(titles["267"], "unknown");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn titles_are_read_as_latin_1() {
        let dir = std::env::temp_dir().join(format!("embedstream-titles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.item");
        let mut bytes = b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n".to_vec();
        bytes.extend_from_slice(b"2|Cit\xe9 des enfants perdus, La (1995)|01-Jan-1995\n");
        bytes.extend_from_slice(b"broken line without fields\n");
        std::fs::write(&path, bytes).unwrap();
        let titles = load_titles(&path).unwrap();
        assert_eq!(titles.len(), 2);
        assert_eq!(titles["1"], "Toy Story (1995)");
        assert_eq!(titles["2"], "Cité des enfants perdus, La (1995)");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
