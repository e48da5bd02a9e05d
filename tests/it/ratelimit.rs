//! Rate limiting against the real Redis (`EMBEDSTREAM_TEST_REDIS`) through the real router and
//! real tokens, the in-process fallback when Redis is unreachable, and load shedding.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use common::auth::{shared_keys, token};
use common::infra::{test_config, unique};
use embedstream::config::Config;
use embedstream::index::Index;
use embedstream::ingest::Status;
use embedstream::metrics::Metrics;
use embedstream::model::{Model, ModelLock};
use embedstream::ratelimit::{limit_concurrency, ClassLimit};
use embedstream::resilience::CircuitBreaker;
use embedstream::serve::{router, AppState};
use embedstream::store::AsyncRedis;
use serde_json::Value;
use tower::ServiceExt;

/// A config of its own namespace with real token verification and small budgets:
/// recs burst 4 at 0.1/s (one request back every 10 s, so nothing refills during a test),
/// admin burst 2.
fn config(name: &str) -> Config {
    let mut config = test_config(&unique(name));
    shared_keys().configure(&mut config);
    config.rate_limit.recs = ClassLimit { rate_per_second: 0.1, burst: 4 };
    config.rate_limit.admin = ClassLimit { rate_per_second: 0.1, burst: 2 };
    config
}

fn state(config: &Config) -> AppState {
    let model = Arc::new(ModelLock::new(Model::new(config.model.clone()).unwrap()));
    let index = Arc::new(Index::new(config.index.clone()));
    let status = Arc::new(Status::default());
    status.restored.store(true, Ordering::Relaxed);
    let metrics = Metrics::new().unwrap();
    let breaker = Arc::new(CircuitBreaker::new(
        "redis",
        config.store.breaker.clone(),
        Some(metrics.breakers.clone()),
    ));
    let redis = AsyncRedis::new(&config.store, breaker, metrics.clone()).unwrap();
    AppState::new(model, index, status, metrics, redis, config).unwrap()
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }
}

async fn call(app: &Router, method: Method, uri: &str, bearer: Option<&str>) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    Reply { status, headers, json: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
}

/// The value of `name` (e.g. `r`) in a `RateLimit` field.
fn parameter(field: &str, name: &str) -> u64 {
    field
        .split(';')
        .find_map(|part| part.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {field}"))
        .parse()
        .unwrap()
}

/// The count of `embedstream_ratelimit_decisions_total` for these labels.
fn decisions(metrics: &Metrics, class: &str, backend: &str, decision: &str) -> u64 {
    metrics
        .render()
        .lines()
        .filter(|line| line.starts_with("embedstream_ratelimit_decisions_total{"))
        .filter(|line| {
            line.contains(&format!("class=\"{class}\""))
                && line.contains(&format!("backend=\"{backend}\""))
                && line.contains(&format!("decision=\"{decision}\""))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn burst_is_allowed_then_429_with_retry_after_and_ratelimit_headers() {
    let config = config("rl-burst");
    let state = state(&config);
    let metrics = state.metrics.clone();
    let app = router(state);
    let alice = token(&config, "alice", "recs:read");
    let uri = "/v1/users/alice/recommendations?k=5";
    for expected_remaining in [3, 2, 1, 0] {
        let reply = call(&app, Method::GET, uri, Some(&alice)).await;
        assert!(reply.status.is_success(), "{}: {}", reply.status, reply.json);
        assert_eq!(reply.header("ratelimit-policy"), Some("\"recs\";q=4;w=40"));
        let limit = reply.header("ratelimit").unwrap();
        assert!(limit.starts_with("\"recs\";"), "{limit}");
        assert_eq!(parameter(limit, "r"), expected_remaining);
        // The bucket is full again (4 - remaining) intervals of 10 s from now.
        assert_eq!(parameter(limit, "t"), (4 - expected_remaining) * 10);
        assert!(reply.header("retry-after").is_none());
    }
    let refused = call(&app, Method::GET, uri, Some(&alice)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json["error"]["code"], "rate_limited");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry_after, 10, "one emission interval, rounded up to whole seconds");
    assert_eq!(parameter(refused.header("ratelimit").unwrap(), "r"), 0);
    assert_eq!(refused.header("ratelimit-policy"), Some("\"recs\";q=4;w=40"));
    // Unlimited routes carry no RateLimit headers and are never refused.
    let health = call(&app, Method::GET, "/healthz", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(health.header("ratelimit").is_none());
    assert_eq!(decisions(&metrics, "recs", "redis", "allowed"), 4);
    assert_eq!(decisions(&metrics, "recs", "redis", "limited"), 1);
    // The bucket lives in Redis under the documented key, expiring when full again.
    let mut redis =
        redis::Client::open(config.store.url.as_str()).unwrap().get_connection().unwrap();
    let key = format!("{}:rl:recs:sub:alice", config.store.namespace);
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query(&mut redis).unwrap();
    assert!((39_000..=40_000).contains(&ttl_ms), "PTTL {key} = {ttl_ms}");
}

#[tokio::test]
async fn two_instances_on_one_redis_share_one_budget() {
    let config = config("rl-shared");
    let first = router(state(&config));
    let second = router(state(&config));
    let bob = token(&config, "bob", "recs:read");
    let mut allowed = 0;
    for round in 0..4 {
        for app in [&first, &second] {
            let reply = call(app, Method::GET, "/v1/items/i1", Some(&bob)).await;
            assert_ne!(reply.status.as_u16() / 100, 5, "round {round}: {}", reply.json);
            if reply.status != StatusCode::TOO_MANY_REQUESTS {
                allowed += 1;
            }
        }
    }
    assert_eq!(allowed, 4, "8 requests over two instances, one budget of 4");
}

#[tokio::test]
async fn subjects_and_route_classes_have_independent_budgets() {
    let config = config("rl-independent");
    let app = router(state(&config));
    let carol = token(&config, "carol", "recs:read admin");
    let dave = token(&config, "dave", "recs:read");
    for _ in 0..4 {
        let reply = call(&app, Method::GET, "/v1/items/i1", Some(&carol)).await;
        assert_ne!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    }
    let spent = call(&app, Method::GET, "/v1/items/i1", Some(&carol)).await;
    assert_eq!(spent.status, StatusCode::TOO_MANY_REQUESTS);
    // Another subject, same class: a budget of its own.
    let other = call(&app, Method::GET, "/v1/items/i1", Some(&dave)).await;
    assert_ne!(other.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(parameter(other.header("ratelimit").unwrap(), "r"), 3);
    // Same subject, another class: a budget of its own, with its own policy.
    let admin = call(&app, Method::GET, "/v1/admin/flags", Some(&carol)).await;
    assert_ne!(admin.status, StatusCode::TOO_MANY_REQUESTS, "{}", admin.json);
    assert_eq!(admin.header("ratelimit-policy"), Some("\"admin\";q=2;w=20"));
    assert_eq!(parameter(admin.header("ratelimit").unwrap(), "r"), 1);
}

#[tokio::test]
async fn unreachable_redis_hands_over_to_the_stricter_local_limiter_never_500() {
    let mut config = config("rl-fallback");
    // Nothing listens on port 1.
    config.store.url = "redis://127.0.0.1:1/".to_owned();
    config.rate_limit.fallback_factor = 0.5;
    let state = state(&config);
    let metrics = state.metrics.clone();
    let app = router(state);
    let erin = token(&config, "erin", "recs:read");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let reply = call(&app, Method::GET, "/v1/items/i1", Some(&erin)).await;
        assert_ne!(reply.status.as_u16() / 100, 5, "{}: {}", reply.status, reply.json);
        // The headers describe the budget enforced: half of burst 4 and of 0.1/s.
        assert_eq!(reply.header("ratelimit-policy"), Some("\"recs\";q=2;w=40"));
        statuses.push(reply.status);
    }
    let limited = statuses.iter().filter(|status| **status == StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.count(), 4, "burst 2 of 6 allowed: {statuses:?}");
    assert_eq!(decisions(&metrics, "recs", "local", "allowed"), 2);
    assert_eq!(decisions(&metrics, "recs", "local", "limited"), 4);
    assert_eq!(decisions(&metrics, "recs", "redis", "allowed"), 0);
    // Another subject still gets its own (local) budget.
    let frank = token(&config, "frank", "recs:read");
    let reply = call(&app, Method::GET, "/v1/items/i1", Some(&frank)).await;
    assert_ne!(reply.status, StatusCode::TOO_MANY_REQUESTS);
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(400)).await;
    "done"
}

#[tokio::test]
async fn saturated_concurrency_sheds_with_503_overloaded_and_spares_health() {
    let metrics = Metrics::new().unwrap();
    let api = Router::new().route("/v1/slow", get(slow));
    let app = limit_concurrency(api, 2, Duration::from_secs(5), metrics.clone())
        .route("/healthz", get(slow));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { call(&app, Method::GET, "/v1/slow", None).await })
        })
        .collect();
    // Give the eight requests time to arrive while the first two are still running.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let health = call(&app, Method::GET, "/healthz", None).await;
    assert_eq!(health.status, StatusCode::OK, "health is never shed");
    let mut ok = 0;
    for handle in calls {
        let reply = handle.await.unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.json["error"]["code"], "overloaded");
                assert_eq!(reply.header("retry-after"), Some("1"));
            }
            other => panic!("unexpected {other}: {}", reply.json),
        }
    }
    assert_eq!(ok, 2, "two slots, the other six shed at once");
    assert!(metrics
        .render()
        .contains("embedstream_http_shed_requests_total{reason=\"overloaded\"} 6"));
    // With the slots free again, requests pass.
    assert_eq!(call(&app, Method::GET, "/v1/slow", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_request_past_the_timeout_is_cut_off_with_503_overloaded() {
    let metrics = Metrics::new().unwrap();
    let api = Router::new().route("/v1/slow", get(slow));
    let app = limit_concurrency(api, 4, Duration::from_millis(50), metrics.clone());
    let reply = call(&app, Method::GET, "/v1/slow", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json["error"]["code"], "overloaded");
    assert!(metrics
        .render()
        .contains("embedstream_http_shed_requests_total{reason=\"timeout\"} 1"));
}

/// Issue 12.7: a recommendation service is one client asking for many users; its service token
/// (`sub` = `client:<id>`) spends the `service_recs` budget (default 5000/s, burst 10000), not
/// one user's `recs` budget, while user tokens keep theirs.
#[tokio::test]
async fn a_service_token_has_the_service_budget_and_users_keep_theirs() {
    let config = config("rl-service");
    let state = state(&config);
    let metrics = state.metrics.clone();
    let app = router(state);
    let service = token(&config, "client:recs-service", "recs:read");
    for user in 0..12 {
        let uri = format!("/v1/users/u{user}/recommendations?k=5");
        let reply = call(&app, Method::GET, &uri, Some(&service)).await;
        assert!(reply.status.is_success(), "request {user}: {}: {}", reply.status, reply.json);
        assert_eq!(reply.header("ratelimit-policy"), Some("\"service_recs\";q=10000;w=2"));
    }
    assert_eq!(decisions(&metrics, "service_recs", "redis", "allowed"), 12);
    // A user token on the same routes still has the recs budget of this config (burst 4).
    let bob = token(&config, "bob", "recs:read");
    for _ in 0..4 {
        let reply = call(&app, Method::GET, "/v1/users/bob/recommendations", Some(&bob)).await;
        assert!(reply.status.is_success(), "{}", reply.json);
    }
    let refused = call(&app, Method::GET, "/v1/users/bob/recommendations", Some(&bob)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
}

/// Redis calls the limiter made (`embedstream_redis_operation_duration_seconds_count` of the
/// `rate_limit` operation).
fn rate_limit_calls(metrics: &Metrics) -> u64 {
    metrics
        .render()
        .lines()
        .find(|line| {
            line.starts_with("embedstream_redis_operation_duration_seconds_count{")
                && line.contains("operation=\"rate_limit\"")
        })
        .map_or(0, |line| line.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Issue 12.7: every request of a busy subject waited on one Redis round trip (and on whatever
/// Redis was doing meanwhile: a flush's transaction held it for about a second under ingest).
/// A busy subject now takes its budget in leases: 64 requests of a service token cost a
/// handful of calls, every one of them still a decision of the shared budget.
#[tokio::test]
async fn a_busy_subject_spends_leases_not_a_round_trip_per_request() {
    let mut config = config("rl-lease");
    config.rate_limit.lease_ms = 5_000;
    let state = state(&config);
    let metrics = state.metrics.clone();
    let app = router(state);
    let service = token(&config, "client:recs-service", "recs:read");
    for request in 0..64 {
        let reply = call(&app, Method::GET, "/v1/items/i1", Some(&service)).await;
        assert_ne!(reply.status, StatusCode::TOO_MANY_REQUESTS, "request {request}");
        assert_ne!(reply.status.as_u16() / 100, 5, "request {request}: {}", reply.json);
    }
    assert_eq!(decisions(&metrics, "service_recs", "redis", "allowed"), 64);
    // Before: 64. Now a first cell, then leases sized by the pace and topped up in the
    // background at half use (6 calls when written; a request that finds the lease empty while
    // a top-up is in flight asks for its own cell, so a few more are possible).
    let calls = rate_limit_calls(&metrics);
    assert!((3..=12).contains(&calls), "{calls} Redis calls for 64 requests");
}

/// Leases never let instances sharing a budget admit more than the bucket: two instances
/// alternating 100 requests of one subject (burst 40, 2/s, leases of up to 20 cells) admit the
/// burst plus what refilled meanwhile, and no fewer than the burst.
#[tokio::test]
async fn leases_on_two_instances_admit_exactly_the_shared_budget() {
    let mut config = config("rl-lease-shared");
    config.rate_limit.recs = ClassLimit { rate_per_second: 2.0, burst: 40 };
    config.rate_limit.lease_ms = 10_000;
    let first = router(state(&config));
    let second = router(state(&config));
    let bob = token(&config, "bob", "recs:read");
    let started = std::time::Instant::now();
    let mut allowed = 0u64;
    for round in 0..50 {
        for app in [&first, &second] {
            let reply = call(app, Method::GET, "/v1/items/i1", Some(&bob)).await;
            assert_ne!(reply.status.as_u16() / 100, 5, "round {round}: {}", reply.json);
            if reply.status != StatusCode::TOO_MANY_REQUESTS {
                allowed += 1;
            }
        }
    }
    let refilled = (started.elapsed().as_secs_f64() * 2.0).floor() as u64;
    assert!(allowed <= 40 + refilled + 1, "{allowed} admitted, budget 40 + {refilled} refilled");
    assert!(allowed >= 40, "{allowed} admitted of a budget of 40");
}

/// The leases' give-back end to end (found by a review): instance A holds unused cells of a
/// lease and goes quiet until its lease has ended and the bucket has refilled; instance B
/// spends the whole burst; A's next fetch gives its cells back. Their charge has decayed, so
/// they free nothing: A is refused like B, apart from what refilled meanwhile (one cell per
/// 20 ms). Before, the give-back moved the bucket back by all of them and A was admitted 9
/// more times than the budget allows.
#[tokio::test]
async fn a_lease_given_back_after_the_bucket_refilled_frees_nothing() {
    let mut config = config("rl-lease-decayed");
    // 50/s, burst 20: leases of up to 10 cells in 200 ms.
    config.rate_limit.recs = ClassLimit { rate_per_second: 50.0, burst: 20 };
    config.rate_limit.lease_ms = 200;
    let first = router(state(&config));
    let second = router(state(&config));
    let bob = token(&config, "bob", "recs:read");
    // A: one cell, then a lease of 10 of which one is spent.
    for _ in 0..2 {
        let reply = call(&first, Method::GET, "/v1/items/i1", Some(&bob)).await;
        assert_ne!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.json);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // B spends the whole burst (and what refills while it does).
    let mut refused = false;
    for _ in 0..100 {
        let reply = call(&second, Method::GET, "/v1/items/i1", Some(&bob)).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            refused = true;
            break;
        }
    }
    assert!(refused, "B spent the burst");
    let started = std::time::Instant::now();
    let mut admitted = 0u64;
    for _ in 0..8 {
        let reply = call(&first, Method::GET, "/v1/items/i1", Some(&bob)).await;
        if reply.status != StatusCode::TOO_MANY_REQUESTS {
            admitted += 1;
        }
    }
    let refilled = (started.elapsed().as_secs_f64() * 50.0).ceil() as u64;
    assert!(admitted <= refilled + 1, "A admitted {admitted} with {refilled} cells refilled");
}

/// The GCRA script on the real Redis, on a bucket of its own (`rate_per_second`, `burst`): a
/// call with `(wanted, given_back, charge_end_us)` returns the script's reply
/// `(granted, remaining, retry_after_ms, reset_after_ms, charge_end_us)`.
fn script_bucket(
    namespace: &str,
    rate_per_second: f64,
    burst: u32,
) -> impl FnMut(u32, u32, i64) -> (i64, i64, i64, i64, i64) {
    let config = config(namespace);
    let mut redis =
        redis::Client::open(config.store.url.as_str()).unwrap().get_connection().unwrap();
    let key = format!("{}:rl:test", config.store.namespace);
    let script = redis::Script::new(embedstream::ratelimit::gcra::SCRIPT);
    let interval = embedstream::ratelimit::gcra::interval_us(rate_per_second).to_string();
    move |wanted, given_back, charge_end| {
        script
            .key(&key)
            .arg(&interval)
            .arg(burst)
            .arg(wanted)
            .arg(given_back)
            .arg(charge_end)
            .invoke(&mut redis)
            .unwrap()
    }
}

/// The GCRA script's lease arithmetic on the real Redis (the same as `gcra::step_cells`): an
/// idle bucket of burst 5 grants 3 wanted cells, then the 2 left of 4 wanted, then none; 2 cells
/// given back are granted again.
#[test]
fn the_script_grants_leases_and_takes_cells_back() {
    // 0.001/s: nothing refills during the test.
    let mut call = script_bucket("rl-script", 0.001, 5);
    let mut step = |wanted, given_back, charge_end| {
        let reply = call(wanted, given_back, charge_end);
        (reply.0, reply.1, reply.4)
    };
    let (granted, remaining, _) = step(3, 0, 0);
    assert_eq!((granted, remaining), (3, 2), "granted, remaining");
    let (granted, remaining, charge_end) = step(4, 0, 0);
    assert_eq!((granted, remaining), (2, 0));
    assert!(charge_end > 0, "where the charge of the 2 cells ends");
    assert_eq!(step(1, 0, 0), (0, 0, 0), "refused");
    let (granted, remaining, _) = step(4, 2, charge_end);
    assert_eq!((granted, remaining), (2, 0), "the two given back are granted again");
    let (granted, _, charge_end) = step(1, 0, 0);
    assert_eq!(granted, 0);
    assert_eq!(step(1, 1, charge_end).0, 0, "a refusal has no charge to give back");
}

/// Cells given back after their charge has decayed free nothing (found by a review of the
/// leases: instance A held unused cells while the bucket refilled, instance B took the whole
/// burst, and A's give-back moved the bucket back, admitting more than the budget).
#[test]
fn cells_given_back_after_the_bucket_refilled_free_nothing() {
    // 50/s (20 ms an interval), burst 10.
    let mut call = script_bucket("rl-script-decayed", 50.0, 10);
    let mut step = |wanted, given_back, charge_end| {
        let reply = call(wanted, given_back, charge_end);
        (reply.0, reply.4)
    };
    let (granted, lease_end) = step(5, 0, 0);
    assert_eq!(granted, 5, "instance A's lease");
    // The lease's 100 ms charge decays and the bucket is full again: B takes all of it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(step(10, 0, 0).0, 10, "instance B takes the burst");
    let (granted, _) = step(10, 5, lease_end);
    assert!(granted <= 1, "A gave back 5 decayed cells and got {granted} (at most 1 refilled)");
}
