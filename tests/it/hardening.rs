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
        let state = app_state(config);
        let metrics = state.metrics.clone();
        let app = router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let http = config.http.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            embedstream::serve::serve(listener, app, &http, metrics, shutdown).await
        });
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
    // 413 for a declared length, before authentication and without waiting for the body (an
    // attack run got 401 here, and no answer at all on the token route, which waited for the
    // 3 MB that never came).
    for route in ["/v1/events", "/v1/auth/token"] {
        let head_only = format!(
            "POST {route} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 3000000\r\nconnection: close\r\n\r\n"
        );
        assert_json_error(&raw(server.addr, head_only.as_bytes()).await, 413, "payload_too_large");
    }
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

/// A token-checked GET of `uri`: status, JSON body, time taken.
async fn get_json(app: axum::Router, uri: &str) -> (u16, Value, Duration) {
    let request =
        Request::builder().uri(uri).header("authorization", bearer()).body(Body::empty()).unwrap();
    let started = Instant::now();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice::<Value>(&bytes).unwrap(), started.elapsed())
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
    let get = |app| get_json(app, "/v1/users/u1/recommendations?k=3");
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

/// Found under the ranking benchmark: every request for a user without events (196 of its
/// 30,000 users) looked the user up in Redis, and behind a flush's transaction (Redis busy for
/// seconds) waited out `http.redis_timeout_ms`. Redis's answer that it holds no such user is
/// now remembered for `ABSENT_USER_TTL`: one lookup per user and second, and the answer is
/// still the popularity fallback.
#[tokio::test]
async fn a_user_redis_does_not_hold_is_looked_up_once_a_second() {
    let state = app_state(&test_config(&unique("edge-absent")));
    let metrics = state.metrics.clone();
    let app = router(state);
    let lookups = || metrics.redis_duration.with_label_values(&["load_user"]).get_sample_count();
    let get = |app| get_json(app, "/v1/users/new-visitor/recommendations?k=3");
    for _ in 0..5 {
        let (status, body, _) = get(app.clone()).await;
        assert_eq!((status, &body["source"]), (200, &json!("popularity")), "{body}");
    }
    assert_eq!(lookups(), 1, "one lookup for five requests");
    tokio::time::sleep(embedstream::serve::ABSENT_USER_TTL + Duration::from_millis(100)).await;
    let (status, body, _) = get(app.clone()).await;
    assert_eq!((status, &body["source"]), (200, &json!("popularity")), "{body}");
    assert_eq!(lookups(), 2, "asked again once the answer is a second old");
}

const SECRET: &str = "flood-test-secret-0123456789";

/// One token request with `client_id` and a wrong secret: status, `error`, `Retry-After`.
fn wrong_secret(base: &str, client_id: &str) -> (u16, String, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", "wrong"),
    ];
    let mut response = agent.post(&format!("{base}/v1/auth/token")).send_form(form).unwrap();
    let status = response.status().as_u16();
    let retry_after =
        response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or_default().to_owned(), retry_after)
}

/// Issue 12.1: 320 wrong-secret requests at concurrency 64 (each argon2 check holds 19 MiB),
/// with the per-address rate limit off so that only the secret-check bounds stand, and the
/// default bounds except a 100 ms queue (one check at a time, 5 checks then 1/s per client id): the
/// spawned service's RSS stays under 200 MiB, every answer is one the README documents, and a
/// right secret still gets a token afterwards.
#[test]
fn a_flood_of_wrong_secrets_keeps_memory_flat_and_gets_the_documented_answers() {
    use common::faults::{rss_kib, ServiceProcess};
    let config = test_config(&unique("flood"));
    common::infra::create_topics(&[(&config.kafka.topic, 1), (&config.kafka.dead_letter_topic, 1)]);
    let dir = std::env::temp_dir().join(unique("flood-clients"));
    std::fs::create_dir_all(&dir).unwrap();
    let clients = dir.join("clients.toml");
    let hash = embedstream::auth::issue::hash_secret(SECRET).unwrap();
    std::fs::write(
        &clients,
        format!(
            "[[clients]]\nclient_id = \"recs\"\nsecret_hash = '{hash}'\nscopes = [\"recs:read\"]\n"
        ),
    )
    .unwrap();
    let clients_path = clients.display().to_string();
    let mut service = ServiceProcess::spawn(
        &config,
        &[
            ("EMBEDSTREAM_AUTH__CLIENTS_PATH", &clients_path),
            ("EMBEDSTREAM_RATE_LIMIT__ENABLED", "false"),
            // A queue that overflows on any machine: 64 waiting requests need 100 ms only if a
            // check takes under 1.6 ms (argon2 over 19 MiB takes several); with the default 1 s,
            // a CPU that checks a secret in under 15 ms serves them all without a 503.
            ("EMBEDSTREAM_AUTH__SECRET_CHECK_QUEUE_MS", "100"),
        ],
    );
    service.wait_listening(Duration::from_secs(60));
    let pid = service.pid();
    let base = service.base();

    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let flooding = std::sync::Arc::clone(&flooding);
        std::thread::spawn(move || {
            let mut peak = 0;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let workers: Vec<_> = (0..64)
        .map(|worker| {
            let base = base.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|n| {
                        // An eighth of the flood names the registered client, the rest random
                        // unknown ids (each with a budget of its own).
                        let client_id = if worker % 8 == 0 {
                            "recs".to_owned()
                        } else {
                            format!("ghost-{worker}-{n}")
                        };
                        wrong_secret(&base, &client_id)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<_> = workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect();
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak_kib = sampler.join().unwrap();
    let after_kib = rss_kib(pid);

    let mut counts = std::collections::BTreeMap::new();
    for (status, error, _) in &answers {
        *counts.entry((*status, error.clone())).or_insert(0) += 1;
    }
    eprintln!("flood answers {counts:?}, peak RSS {peak_kib} KiB, after {after_kib} KiB");
    assert!(peak_kib < 200 * 1024, "peak RSS {peak_kib} KiB during the flood: {counts:?}");
    assert!(after_kib < 200 * 1024, "RSS {after_kib} KiB after the flood");
    for (status, error, retry_after) in &answers {
        match (status, error.as_str()) {
            (401, "invalid_client") => {}
            (429, "slow_down") | (503, "temporarily_unavailable") => {
                let seconds: u64 = retry_after.as_deref().unwrap().parse().unwrap();
                assert!(seconds >= 1, "{status} {error}: Retry-After {seconds}");
            }
            other => panic!("undocumented answer {other:?}"),
        }
    }
    assert!(counts.contains_key(&(503, "temporarily_unavailable".to_owned())), "{counts:?}");
    assert!(counts.contains_key(&(429, "slow_down".to_owned())), "{counts:?}");
    assert!(counts.contains_key(&(401, "invalid_client".to_owned())), "{counts:?}");

    // The right secret still works once the client's budget has refilled.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", "recs"),
            ("client_secret", SECRET),
        ];
        let status = agent.post(&format!("{base}/v1/auth/token")).send_form(form).unwrap().status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the right secret never got a token: {status}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the server has closed `stream` (EOF or reset); `false` while it is open and silent.
fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => {
                return !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

fn connect(port: u16) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    stream
}

fn spawn_service(name: &str, extra: &[(&str, &str)]) -> common::faults::ServiceProcess {
    let config = test_config(&unique(name));
    common::infra::create_topics(&[(&config.kafka.topic, 1), (&config.kafka.dead_letter_topic, 1)]);
    let mut service = common::faults::ServiceProcess::spawn(&config, extra);
    service.wait_listening(Duration::from_secs(60));
    service
}

/// Issue 12.5, with the default configuration: a slowloris connection (one header byte per
/// second, never finished) and an idle keep-alive connection are both closed by the server
/// once `http.header_read_timeout_ms` (10 s) has passed, while a normal request still works.
#[test]
fn slowloris_and_idle_connections_are_closed_after_the_header_read_timeout() {
    use std::io::Write;
    let service = spawn_service("slowloris", &[]);
    let mut slow = connect(service.port);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ").unwrap();
    let mut idle = connect(service.port);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let started = Instant::now();
    let mut slow_closed = None;
    let mut idle_closed = None;
    while started.elapsed() < Duration::from_secs(25)
        && (slow_closed.is_none() || idle_closed.is_none())
    {
        if slow_closed.is_none() {
            // One more byte a second; a write may fail once the server has closed.
            let _ = slow.write_all(b"a");
            if closed_by_server(&mut slow) {
                slow_closed = Some(started.elapsed());
            }
        }
        if idle_closed.is_none() && closed_by_server(&mut idle) {
            idle_closed = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(900));
    }
    let slow_closed = slow_closed.expect("the slowloris connection is still open after 25 s");
    let idle_closed = idle_closed.expect("the idle keep-alive connection is still open after 25 s");
    // Not before the timeout: an honest client has the whole of it.
    assert!(slow_closed >= Duration::from_secs(9), "slowloris closed after {slow_closed:?}");
    assert!(idle_closed >= Duration::from_secs(9), "idle closed after {idle_closed:?}");
    let reply = common::http::get(&service.url("/healthz"), Duration::from_secs(5)).unwrap();
    assert_eq!(reply.status, 200);
}

/// Found by an attack run after issue 12.5: a client that pipelines requests and never reads
/// the answers (a full receive window) kept its connection past every timeout, since hyper's
/// timers only run while a request head is awaited, not while the server is blocked writing.
/// 300 such connections held about 1.1 GiB of kernel memory; 1,024 would have filled the
/// connection cap. A write that makes no progress for `http.write_timeout_ms` now closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_closed_after_the_write_timeout() {
    let mut config = test_config(&unique("slow-read"));
    config.http.write_timeout_ms = 1_000;
    let state = app_state(&config);
    let metrics = state.metrics.clone();
    let app = router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (http, served_metrics) = (config.http.clone(), metrics.clone());
    tokio::spawn(async move {
        embedstream::serve::serve(listener, app, &http, served_metrics, std::future::pending())
            .await
    });
    // Tens of megabytes of answers (the metrics page, tens of KB each), never read.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let pipelined = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n".repeat(2_000);
    let writer = tokio::spawn(async move {
        let _ = stream.write_all(&pipelined).await;
        stream
    });
    let open = || metrics.http_connections_open.get();
    let started = Instant::now();
    while open() == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the connection never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while open() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a connection whose answers are never read is still open after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(writer);
}

/// Issue 12.5: connections beyond `http.max_connections` are closed at once; one closing makes
/// room for the next.
#[test]
fn connections_beyond_the_cap_are_closed_at_once() {
    use std::io::Write;
    let service = spawn_service("conncap", &[("EMBEDSTREAM_HTTP__MAX_CONNECTIONS", "8")]);
    // The readiness probe's connection must be gone from the server's count first.
    std::thread::sleep(Duration::from_secs(1));
    let mut held: Vec<_> = (0..8).map(|_| connect(service.port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    for stream in &mut held {
        assert!(!closed_by_server(stream), "a connection within the cap was closed");
    }
    let mut beyond = connect(service.port);
    let _ = beyond.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    let started = Instant::now();
    while !closed_by_server(&mut beyond) {
        assert!(started.elapsed() < Duration::from_secs(5), "the ninth connection stays open");
    }
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(300));
    let reply = common::http::get(&service.url("/healthz"), Duration::from_secs(5)).unwrap();
    assert_eq!(reply.status, 200, "room for one connection again");
}
