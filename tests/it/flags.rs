//! Feature flags against the real Redis: the CLI and the admin routes write `{ns}:flags`,
//! instances pick it up on refresh, and a Redis outage keeps the last document.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::infra::{redis_url, test_config, unique};
use embedstream::auth::issue::{keygen, Signer};
use embedstream::auth::{Scope, Scopes};
use embedstream::config::Config;
use embedstream::flags::{FlagSource, FlagsDoc};
use embedstream::index::Index;
use embedstream::ingest::Status;
use embedstream::metrics::Metrics;
use embedstream::model::Model;
use embedstream::resilience::CircuitBreaker;
use embedstream::serve::{router, AppState};
use embedstream::store::AsyncRedis;
use serde_json::{json, Value};
use tower::ServiceExt;

const EXPERIMENT_DOC: &str = r#"{"personalization": {"enabled": true, "rollout_percent": 100},
  "session_blending": {"enabled": true, "rollout_percent": 100},
  "ann": {"enabled": true, "rollout_percent": 100},
  "redis_reads": {"enabled": true, "rollout_percent": 100},
  "experiment": {"name": "blend-weight", "variants": [{"name": "control", "weight": 50},
    {"name": "treatment", "weight": 50, "session_weight": 0.5}]}}"#;

/// A test configuration with auth keys of its own, and a signer for its tokens.
fn config_with_keys(name: &str, refresh_ms: u64) -> (Config, Signer) {
    let mut config = test_config(name);
    let dir = std::env::temp_dir().join(unique("flags-keys"));
    let keys = keygen(&dir, "k1").unwrap();
    config.auth.jwks_path = Some(keys.jwks);
    config.auth.signing_key_path = Some(keys.signing_key);
    config.auth.signing_kid = Some("k1".to_owned());
    config.flags.refresh_ms = refresh_ms;
    let signer = Signer::from_config(&config.auth).unwrap().unwrap();
    (config, signer)
}

fn token(signer: &Signer, scopes: &[Scope]) -> String {
    signer.mint("ops", Scopes::of(scopes), 300, embedstream::auth::now_s()).unwrap().0
}

/// The HTTP-side state on Redis at `redis_url` (must run inside a tokio runtime).
fn state(config: &Config, redis_url: &str) -> AppState {
    let metrics = Metrics::new().unwrap();
    let breaker = Arc::new(CircuitBreaker::new("redis", config.store.breaker.clone(), None));
    let mut store = config.store.clone();
    store.url = redis_url.to_owned();
    store.command_timeout_ms = 500;
    store.connect_timeout_ms = 500;
    let redis = AsyncRedis::new(&store, breaker, metrics.clone()).unwrap();
    let model =
        Arc::new(embedstream::model::ModelLock::new(Model::new(config.model.clone()).unwrap()));
    let index = Arc::new(Index::new(config.index.clone()));
    AppState::new(model, index, Arc::new(Status::default()), metrics, redis, config).unwrap()
}

async fn call(
    state: &AppState,
    method: Method,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri("/v1/admin/flags");
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some(text) => request
            .header("content-type", "application/json")
            .body(Body::from(text.to_owned()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Polls until `done` holds for the store's cached document.
async fn wait_for(state: &AppState, what: &str, done: impl Fn(&FlagsDoc) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&state.flags.current()) {
        assert!(
            Instant::now() < deadline,
            "flags never showed {what}: {:?}",
            state.flags.current()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cli(config: &Config, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .args(["flags"])
        .args(args)
        .env("EMBEDSTREAM_STORE__URL", &config.store.url)
        .env("EMBEDSTREAM_STORE__NAMESPACE", &config.store.namespace)
        .output()
        .unwrap()
}

fn cli_doc(config: &Config, args: &[&str]) -> FlagsDoc {
    let output = cli(config, args);
    assert!(output.status.success(), "flags {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    FlagsDoc::from_json(std::str::from_utf8(&output.stdout).unwrap()).unwrap()
}

fn share_on(state: &AppState, flag: impl Fn(&embedstream::flags::Decisions) -> bool) -> f64 {
    let on = (0..4000).filter(|index| flag(&state.flags.decide(&format!("user-{index}")))).count();
    on as f64 / 4000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_reach_decide_after_a_refresh() {
    let (config, _) = config_with_keys(&unique("flags-cli"), 50);
    let state = state(&config, &redis_url());
    assert_eq!(state.flags.decide("u1").variant, "control");
    assert_eq!(cli_doc(&config, &["get"]), FlagsDoc::default());

    let doc = cli_doc(&config, &["enable", "ann", "--percent", "30"]);
    assert_eq!((doc.ann.enabled, doc.ann.rollout_percent), (true, 30));
    wait_for(&state, "ann at 30 %", |doc| doc.ann.rollout_percent == 30).await;
    let share = share_on(&state, |decisions| decisions.ann);
    assert!((0.27..=0.33).contains(&share), "ann on for {share}");
    assert!(state.flags.age_ms().is_some_and(|age| age < 5000));

    let file = std::env::temp_dir().join(format!("{}.json", unique("flags-doc")));
    std::fs::write(&file, EXPERIMENT_DOC).unwrap();
    let file_arg = file.to_string_lossy().into_owned();
    cli_doc(&config, &["set", "--file", &file_arg]);
    wait_for(&state, "the experiment", |doc| doc.experiment.is_some()).await;
    assert_eq!(state.flags.current().ann.rollout_percent, 100);
    let treatment = share_on(&state, |decisions| decisions.variant == "treatment");
    assert!((0.46..=0.54).contains(&treatment), "treatment share {treatment}");
    let decisions = (0..100)
        .map(|index| state.flags.decide(&format!("user-{index}")))
        .find(|decisions| decisions.variant == "treatment")
        .unwrap();
    assert_eq!(decisions.session_weight, Some(0.5));

    cli_doc(&config, &["disable", "personalization"]);
    wait_for(&state, "personalization off", |doc| !doc.personalization.enabled).await;
    assert_eq!(share_on(&state, |decisions| decisions.personalization), 0.0);
    // The read-modify-write kept the rest of the document.
    assert!(state.flags.current().experiment.is_some());

    // Refused: nothing written.
    std::fs::write(&file, r#"{"ann": {"enabled": true, "rollout_percent": 150}}"#).unwrap();
    let refused = cli(&config, &["set", "--file", &file_arg]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rollout_percent"));
    assert!(!cli(&config, &["enable", "nope"]).status.success());
    assert!(!cli(&config, &["enable", "ann", "--percent", "101"]).status.success());
    let stored = cli_doc(&config, &["get"]);
    assert_eq!(stored, FlagsDoc::clone(&state.flags.current()));
    let _ = std::fs::remove_file(PathBuf::from(file_arg));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_through_the_router_applies_at_once() {
    // A refresh interval far beyond the test: only the PUT itself can update the cache.
    let (mut config, signer) = config_with_keys(&unique("flags-put"), 600_000);
    // More admin requests than the default burst of 10: this test is about validation.
    config.rate_limit.admin.burst = 100;
    let state = state(&config, &redis_url());
    let admin = token(&signer, &[Scope::Admin]);
    let reader = token(&signer, &[Scope::RecsRead]);

    let (status, body) = call(&state, Method::GET, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["flags"]["ann"], json!({"enabled": true, "rollout_percent": 100}));

    let (status, body) = call(&state, Method::PUT, Some(&admin), Some(EXPERIMENT_DOC)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["source"], "redis");
    let expected = FlagsDoc::from_json(EXPERIMENT_DOC).unwrap();
    assert_eq!(*state.flags.current(), expected);
    let mut connection = redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    let stored: String = redis::cmd("GET")
        .arg(format!("{}:flags", config.store.namespace))
        .query(&mut connection)
        .unwrap();
    assert_eq!(FlagsDoc::from_json(&stored).unwrap(), expected);
    let (status, body) = call(&state, Method::GET, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["flags"]["experiment"]["variants"][1]["session_weight"], 0.5);
    assert!(body["age_ms"].as_u64().is_some());

    for bad in [
        r#"{"ann": {"enabled": true, "rollout_percent": 101}}"#,
        r#"{"experiment": {"name": "x", "variants": [{"name": "a", "weight": 0}]}}"#,
        r#"{"ann": {"enabled": true}, "colour": "blue"}"#,
        r#"{"ann": {"enabled": "yes"}}"#,
        "not json",
        // Issue 12.4: serde reads a struct from an array by position; a document is an object.
        "[]",
        r#"[{"enabled": false, "rollout_percent": 0}]"#,
        r#"{"ann": [false, 0]}"#,
        r#"{"experiment": ["x", [{"name": "a", "weight": 1}]]}"#,
        r#"{"experiment": {"name": "x", "variants": [["a", 1]]}}"#,
        // A key given twice is refused, not read as its last value.
        r#"{"ann": {"enabled": false}, "ann": {"enabled": true}}"#,
        r#"{"ann": {"enabled": false, "enabled": true}}"#,
    ] {
        let (status, body) = call(&state, Method::PUT, Some(&admin), Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_body", "{bad}");
    }
    assert_eq!(*state.flags.current(), expected);

    for method in [Method::GET, Method::PUT] {
        let (status, body) = call(&state, method.clone(), Some(&reader), Some("{}")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} without admin: {body}");
        let (status, _) = call(&state, method.clone(), None, Some("{}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} without a token");
    }
    assert_eq!(*state.flags.current(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_see_the_same_flags_after_a_refresh() {
    let (config, _) = config_with_keys(&unique("flags-two"), 50);
    let first = state(&config, &redis_url());
    let second = state(&config, &redis_url());
    let mut doc = FlagsDoc::from_json(EXPERIMENT_DOC).unwrap();
    doc.session_blending.rollout_percent = 40;
    first.flags.replace(doc.clone()).await.unwrap();
    wait_for(&second, "the first instance's document", |seen| *seen == doc).await;
    assert_eq!(second.flags.view().source, FlagSource::Redis);
    for index in 0..2000 {
        let user = format!("user-{index}");
        assert_eq!(first.flags.decide(&user), second.flags.decide(&user), "{user}");
    }
}

/// A TCP proxy to the real Redis that the test can cut, leaving nothing listening.
struct Cuttable {
    port: u16,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Cuttable {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepted = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let copy = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepted.lock().unwrap().push(copy);
            }
        });
        tasks.lock().unwrap().push(accept);
        Self { port, tasks }
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_keeps_the_last_document() {
    let (config, signer) = config_with_keys(&unique("flags-down"), 50);
    let url = url_of(&redis_url());
    let proxy = Cuttable::start(url).await;
    let state = state(&config, &format!("redis://127.0.0.1:{}/", proxy.port));
    let mut doc = FlagsDoc::default();
    doc.ann.enabled = false;
    state.flags.replace(doc.clone()).await.unwrap();
    wait_for(&state, "a refresh", |_| state.flags.age_ms().is_some()).await;

    proxy.cut();
    let failures =
        || state.metrics.flags_refresh_failures.with_label_values(&["unavailable"]).get();
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures() < 3 {
        assert!(Instant::now() < deadline, "refresh never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*state.flags.current(), doc);
    assert!(!state.flags.decide("u1").ann);
    assert_eq!(state.flags.view().source, FlagSource::Redis);
    assert!(state.metrics.render().contains("embedstream_flags_refresh_failures_total"));

    // Writes need Redis: 503, and the cache is unchanged. (The breaker may answer for Redis,
    // and the auth layer may need it too: either way the request must not succeed.)
    let admin = token(&signer, &[Scope::Admin]);
    let (status, body) = call(&state, Method::PUT, Some(&admin), Some("{}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(*state.flags.current(), doc);
}

/// A never-loaded store keeps the defaults when Redis is unreachable from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_from_the_start_means_defaults() {
    let (config, _) = config_with_keys(&unique("flags-none"), 50);
    let state = state(&config, "redis://127.0.0.1:1/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.metrics.flags_refresh_failures.with_label_values(&["unavailable"]).get() < 2 {
        assert!(Instant::now() < deadline, "refresh never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state.flags.age_ms(), None);
    assert_eq!(state.flags.view().source, FlagSource::Defaults);
    assert_eq!(*state.flags.current(), FlagsDoc::default());
}

fn url_of(redis_url: &str) -> std::net::SocketAddr {
    let host_port = redis_url.trim_start_matches("redis://").trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(host_port).unwrap().next().unwrap()
}
