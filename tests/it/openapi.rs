//! `schemas/openapi.json` against the router: the same routes, and real responses (success and
//! error) valid against the documented schemas.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request};
use embedstream::config::Config;
use embedstream::serve::{router, AppState, ROUTES};
use serde_json::Value;
use tower::ServiceExt;

use crate::common;

fn spec() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn state() -> AppState {
    let mut config = Config::default();
    common::auth::shared_keys().configure(&mut config);
    // Nothing listens on port 1: a user missing from memory is a 503, never a hang.
    config.store.url = "redis://127.0.0.1:1/".to_owned();
    config.store.namespace = "test".to_owned();
    common::auth::app_state(&config)
}

#[test]
fn spec_and_router_list_the_same_routes() {
    let spec = spec();
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| {
            operations.as_object().unwrap().keys().map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(method, path)| ((*method).to_owned(), (*path).to_owned())).collect();
    assert_eq!(documented, routed);
}

/// Sends a request with the tests' service token; returns the status and the body as JSON (or
/// text wrapped in a string).
async fn call(app: &axum::Router, method: Method, uri: &str, body: Option<&str>) -> (u16, Value) {
    call_as(app, method, uri, body, Some(common::auth::bearer())).await
}

/// Sends a request with the given `Authorization` header (none: anonymous).
async fn call_as(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<&str>,
    authorization: Option<String>,
) -> (u16, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let request = request.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn schema_for(spec: &Value, method: &str, path: &str, status: u16) -> Value {
    let response = &spec["paths"][path][method]["responses"][status.to_string()];
    assert!(!response.is_null(), "{method} {path} may not answer {status} per the spec");
    let schema = &response["content"]["application/json"]["schema"];
    let reference =
        schema["$ref"].as_str().unwrap_or_else(|| panic!("no $ref for {method} {path} {status}"));
    let name = reference.trim_start_matches("#/components/schemas/");
    spec["components"]["schemas"][name].clone()
}

#[tokio::test]
async fn real_responses_match_the_documented_schemas() {
    let spec = spec();
    let app = router(state());
    let cases: Vec<(Method, &str, &str, Option<&str>, u16)> = vec![
        (Method::GET, "/healthz", "/healthz", None, 200),
        (Method::GET, "/readyz", "/readyz", None, 200),
        (Method::GET, "/v1/whoami", "/v1/whoami", None, 200),
        (
            Method::GET,
            "/v1/users/{user_id}/recommendations",
            "/v1/users/u1/recommendations?k=5",
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/users/{user_id}/recommendations",
            "/v1/users/stranger/recommendations",
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/users/{user_id}/recommendations",
            "/v1/users/u1/recommendations?k=0",
            None,
            400,
        ),
        (
            Method::GET,
            "/v1/users/{user_id}/recommendations",
            "/v1/users/u1/recommendations?k=ten",
            None,
            400,
        ),
        (
            Method::GET,
            "/v1/users/{user_id}/recommendations",
            "/v1/users/u1/recommendations?color=red",
            None,
            400,
        ),
        (
            Method::POST,
            "/v1/users/{user_id}/scores",
            "/v1/users/u1/scores",
            Some(r#"{"item_ids":["i1","nope"]}"#),
            200,
        ),
        (
            Method::POST,
            "/v1/users/{user_id}/scores",
            "/v1/users/u1/scores",
            Some(r#"{"item_ids":[]}"#),
            400,
        ),
        (Method::POST, "/v1/users/{user_id}/scores", "/v1/users/u1/scores", Some("not json"), 400),
        (Method::GET, "/v1/users/{user_id}", "/v1/users/u1", None, 200),
        // Not in memory and Redis unreachable: unknown and evicted cannot be told apart.
        (Method::GET, "/v1/users/{user_id}", "/v1/users/nobody", None, 503),
        (Method::GET, "/v1/items/{item_id}/similar", "/v1/items/i1/similar?k=3", None, 200),
        (Method::GET, "/v1/items/{item_id}/similar", "/v1/items/none/similar", None, 404),
        (Method::GET, "/v1/items/{item_id}", "/v1/items/i1", None, 200),
        (Method::GET, "/v1/items/{item_id}", "/v1/items/none", None, 404),
    ];
    for (method, path, uri, body, expected) in cases {
        let method_name = method.as_str().to_lowercase();
        let (status, value) = call(&app, method, uri, body).await;
        assert_eq!(status, expected, "{uri}: {value}");
        let schema = schema_for(&spec, &method_name, path, status);
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{uri} -> {status} {value}: {errors:?}");
    }
    // Unknown routes and methods are JSON errors too, never 500s.
    let (status, value) = call(&app, Method::GET, "/v2/nothing", None).await;
    assert_eq!(status, 404);
    assert_eq!(value["error"]["code"], "unknown_route");
    let (status, value) = call(&app, Method::DELETE, "/v1/users/u1", None).await;
    assert_eq!(status, 405);
    assert_eq!(value["error"]["code"], "method_not_allowed");
    let (status, metrics) = call(&app, Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.as_str().unwrap().contains("embedstream_http_request_duration_seconds"));
}

/// Method, documented path, URI, JSON body, `Authorization` header, expected status.
type AuthCase<'a> = (Method, &'a str, &'a str, Option<&'a str>, Option<String>, u16);

#[tokio::test]
async fn auth_responses_match_the_documented_schemas() {
    let spec = spec();
    let state = state();
    let mut config = Config::default();
    common::auth::shared_keys().configure(&mut config);
    let user_u2 = format!("Bearer {}", common::auth::token(&config, "u2", "recs:read"));
    let writer = format!("Bearer {}", common::auth::token(&config, "client:w", "events:write"));
    let fresh_u2 = format!("Bearer {}", common::auth::token(&config, "u2", "recs:read"));
    let app = router(state);
    let recs = "/v1/users/{user_id}/recommendations";
    let cases: Vec<AuthCase<'_>> = vec![
        (Method::GET, recs, "/v1/users/u1/recommendations", None, None, 401),
        (Method::GET, recs, "/v1/users/u1/recommendations", None, Some("Bearer x.y.z".into()), 401),
        (Method::GET, recs, "/v1/users/u1/recommendations", None, Some(user_u2.clone()), 403),
        (Method::GET, recs, "/v1/users/u2/recommendations", None, Some(writer), 403),
        (Method::GET, "/v1/items/{item_id}", "/v1/items/i1", None, None, 401),
        (Method::POST, "/v1/auth/revoke", "/v1/auth/revoke", None, None, 401),
        (
            Method::POST,
            "/v1/auth/revoke",
            "/v1/auth/revoke",
            Some(r#"{"token":"not.a.token"}"#),
            Some(user_u2.clone()),
            200,
        ),
        (
            Method::POST,
            "/v1/auth/revoke",
            "/v1/auth/revoke",
            Some("[]"),
            Some(user_u2.clone()),
            400,
        ),
        // Nothing listens on the state's Redis: revoked on this instance only, 503.
        (Method::POST, "/v1/auth/revoke", "/v1/auth/revoke", None, Some(user_u2), 503),
        // No clients configured: the grant is refused, in RFC 6749 format.
        (
            Method::POST,
            "/v1/auth/token",
            "/v1/auth/token",
            Some(r#"{"grant_type":"client_credentials","client_id":"a","client_secret":"b"}"#),
            None,
            400,
        ),
        // A fresh token: user_u2's was revoked above.
        (Method::GET, recs, "/v1/users/u2/recommendations", None, Some(fresh_u2), 200),
    ];
    for (method, path, uri, body, authorization, expected) in cases {
        let method_name = method.as_str().to_lowercase();
        let (status, value) = call_as(&app, method, uri, body, authorization).await;
        assert_eq!(status, expected, "{uri}: {value}");
        let schema = schema_for(&spec, &method_name, path, status);
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{uri} -> {status} {value}: {errors:?}");
    }
}
