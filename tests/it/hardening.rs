//! Issue 12, the serving side hardened: answers at the edges of the HTTP contract (oversized
//! bodies, URIs and headers in the JSON error shape, over-long ids), a frozen Redis answered
//! within the request-path budget, and connection hygiene, against a real socket and the real
//! Redis of the test command (or a redis-server of the test's own where it is frozen).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request};
use embedstream::config::Config;
use embedstream::serve::router;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::common;
use common::auth::{app_state, bearer};
use common::infra::{test_config, unique};

/// The router of `config` served on a loopback port of its own until dropped.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    async fn start(config: &Config) -> Self {
        let app = router(app_state(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(embedstream::serve::serve(listener, app, async move {
            let _ = stopped.await;
        }));
        Self { addr, stop: Some(stop) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One answer read off the socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Value,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    }
}

/// Sends `request` verbatim on a new connection and reads the answer until the server closes.
async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything: ignore write errors.
    let _ = stream.write_all(request).await;
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Raw { status, head: head.to_owned(), body: serde_json::from_str(body).unwrap_or(Value::Null) }
}

fn assert_json_error(answer: &Raw, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}\n{}", answer.head, answer.body);
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{}", answer.head);
    assert_eq!(answer.body["error"]["code"], code, "{}", answer.body);
    assert!(answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_uris_and_headers_answer_in_the_json_error_shape() {
    let config = test_config(&unique("edge-sizes"));
    let server = Server::start(&config).await;
    // 413: a 3 MiB body, on the token route (read as bytes) and on a JSON route.
    let big = "a".repeat(3 << 20);
    let token_route = format!(
        "POST /v1/auth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{big}",
        big.len()
    );
    assert_json_error(&raw(server.addr, token_route.as_bytes()).await, 413, "payload_too_large");
    let scores = format!(
        "POST /v1/users/u1/scores HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{big}",
        bearer(),
        big.len()
    );
    assert_json_error(&raw(server.addr, scores.as_bytes()).await, 413, "payload_too_large");
    // 414: a 20 KB request target.
    let long_uri = format!(
        "GET /v1/users/u1/recommendations?k=3&pad={} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        "p".repeat(20_000)
    );
    assert_json_error(&raw(server.addr, long_uri.as_bytes()).await, 414, "uri_too_long");
    // 431: 40 KB of headers.
    let long_headers = format!(
        "GET /v1/users/u1/recommendations HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\nconnection: close\r\n\r\n",
        "h".repeat(40_000)
    );
    assert_json_error(&raw(server.addr, long_headers.as_bytes()).await, 431, "headers_too_large");
    // Within the limits the same routes answer as usual.
    let fine = format!(
        "GET /v1/users/u1/recommendations?k=3 HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\nconnection: close\r\n\r\n",
        bearer()
    );
    let answer = raw(server.addr, fine.as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

async fn post_scores(app: &axum::Router, body: &Value) -> (u16, Value) {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/users/u1/scores")
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn scores_refuse_item_ids_beyond_128_characters() {
    let app = router(app_state(&test_config(&unique("edge-ids"))));
    let longest = "x".repeat(128);
    let (status, body) = post_scores(&app, &json!({ "item_ids": ["i1", longest] })).await;
    assert_eq!(status, 200, "128 characters is within the contract: {body}");
    assert_eq!(body["unknown_items"], json!([longest]));
    for bad in ["x".repeat(129), "y".repeat(10_000), String::new()] {
        let (status, body) = post_scores(&app, &json!({ "item_ids": ["i1", bad] })).await;
        assert_eq!(status, 400, "{} characters: {body}", bad.len());
        assert_eq!(body["error"]["code"], "invalid_body");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("item_ids[1]") && message.contains("128"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_the_request_budget_not_the_command_timeout() {
    let redis = common::faults::OwnRedis::start(&unique("frozen"));
    let mut config = test_config(&unique("edge-frozen"));
    config.store.url = redis.url();
    // The defaults of everything else: command timeout 5 s, request timeout 5 s.
    config.http = embedstream::serve::ServeConfig {
        listen: config.http.listen.clone(),
        ..Default::default()
    };
    let app = router(app_state(&config));
    let get = |app: axum::Router| async move {
        let request = Request::builder()
            .uri("/v1/users/u1/recommendations?k=3")
            .header("authorization", bearer())
            .body(Body::empty())
            .unwrap();
        let started = Instant::now();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap(), started.elapsed())
    };
    let (status, body, _) = get(app.clone()).await;
    assert_eq!((status, body["stale"].as_bool()), (200, Some(false)), "{body}");
    common::faults::signal(redis.pid(), "STOP");
    // Before the breaker opens, each request pays at most the budget per Redis call.
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(app.clone()).await);
    }
    common::faults::signal(redis.pid(), "CONT");
    for (status, body, elapsed) in answers {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["stale"], true, "{body}");
        // A bound, not a benchmark: the default budget is 50 ms per call, the command timeout
        // it replaces 5 s.
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    }
}
