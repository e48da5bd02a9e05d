//! The HTTP API (axum): recommendations, scoring, similar items, vectors, health, readiness
//! and metrics. Handlers read the in-process state; Redis is the durable copy and the fallback
//! for users evicted from memory. Contract: `schemas/openapi.json`.
//!
//! Every `/v1` route but `POST /v1/auth/token` needs a bearer token ([`crate::auth`]); the
//! user a request is about comes from the [`SubjectUser`] extractor (the token's `sub`, or the
//! path's `user_id` when the token may name other users).

mod admin;
mod connections;
mod demo;
mod events;
mod handlers;
mod limits;
mod middleware;
mod ranking;
mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

pub use crate::http_error::{body_rejection, ApiError, ErrorCode};
pub use connections::serve;
pub use demo::load_titles;
pub use handlers::SubjectUser;
pub use middleware::{access_log_level, cors_layer, REQUEST_ID_HEADER};
pub use ranking::{NAMESPACE_HEADER, STALE_HEADER};

use crate::auth::Auth;
use crate::config::Config;
use crate::event::{DecodeLimits, EventTypes};
use crate::flags::FlagStore;
use crate::index::Index;
use crate::ingest::Status;
use crate::metrics::Metrics;
use crate::model::{Model, ModelLock};
use crate::ratelimit::{self, RateLimiter};
use crate::resilience::CircuitBreaker;
use crate::session::Sessions;
use crate::store::{AsyncRedis, Keys};

/// HTTP settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Listen address (default `127.0.0.1:8080`).
    pub listen: String,
    /// Largest `k` a request may ask for (default 1000).
    pub max_k: usize,
    /// Largest candidate list of a scoring request (default 10000).
    pub max_score_items: usize,
    /// Requests in flight at once across the `/v1` routes; one more is shed at once with 503
    /// `overloaded` (default 256, >= 1). Health, readiness and metrics are never shed.
    pub max_concurrent_requests: usize,
    /// A `/v1` request still running after this long is cut off with 503 `overloaded`, ms
    /// (default 5000, >= 1).
    pub request_timeout_ms: u64,
    /// Longest request target (path and query), bytes; longer: 414 `uri_too_long` (default
    /// 8192, 1..=65534).
    pub max_uri_bytes: usize,
    /// Largest total of header fields (name, value and 4 bytes of framing each), bytes;
    /// larger: 431 `headers_too_large` (default 16384, 1..=262144).
    pub max_header_bytes: usize,
    /// Largest request body, bytes; larger: 413 `payload_too_large` (default 2 MiB, >= 1).
    pub max_body_bytes: usize,
    /// Budget of each Redis call made while answering a request (revocation check, rate-limit
    /// script, user load, sessions, refresh tokens, flags write), ms: past it the call counts as
    /// failed and the request takes its fallback (default 50, >= 1).
    pub redis_timeout_ms: u64,
    /// A connection must deliver a whole request head within this long of starting to wait
    /// for one, ms, or it is closed (default 10000, >= 1). hyper starts the timer as soon as a
    /// connection waits for its next request, so this also closes idle keep-alive
    /// connections: it bounds slowloris heads and idle connections alike.
    pub header_read_timeout_ms: u64,
    /// A write to a connection that makes no progress for this long fails and the connection
    /// is closed, ms (default 10000, >= 1): a client that stops reading its answers (a full
    /// receive window) cannot hold a connection, and its socket buffers, for ever.
    pub write_timeout_ms: u64,
    /// Connections open at once; one more is closed at accept (default 1024, >= 1).
    pub max_connections: usize,
    /// Level of the access log, one line per request with method, path, status, latency in ms
    /// and request id (target `embedstream::access`): `off`, `error`, `warn`, `info`, `debug`
    /// or `trace` (default `debug`: hidden under the default `RUST_LOG=info`).
    pub access_log_level: String,
    /// Origins allowed to call the API from a browser (CORS): exact origins such as
    /// `https://app.example.com`, or `*` for any. Empty (the default): no CORS headers.
    pub cors_allowed_origins: Vec<String>,
    /// Most events in one `POST /v1/events:batch` (default 500, 1..=10000).
    pub max_batch_events: usize,
    /// Compress responses with gzip when the request's `Accept-Encoding` allows it (default
    /// true).
    pub compression: bool,
    /// Serve the demo page at `/demo` (default false; `embedstream run --demo`). Anyone who
    /// reaches it can sign in as any user: for demonstrations only. With auth on it needs
    /// `auth.signing_key_path`.
    pub demo: bool,
    /// MovieLens-100k item file whose titles the demo page shows: RecBole's `ml-100k.item`
    /// (what `scripts/fetch-movielens.sh` writes) or GroupLens's `u.item` (default
    /// `data/ml-100k/ml-100k.item`; missing: item ids are shown).
    pub demo_titles_path: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            max_k: 1000,
            max_score_items: 10_000,
            max_concurrent_requests: 256,
            request_timeout_ms: 5000,
            max_uri_bytes: 8192,
            max_header_bytes: 16_384,
            max_body_bytes: 2 << 20,
            redis_timeout_ms: 50,
            header_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_connections: 1024,
            access_log_level: "debug".to_owned(),
            cors_allowed_origins: Vec::new(),
            compression: true,
            max_batch_events: 500,
            demo: false,
            demo_titles_path: "data/ml-100k/ml-100k.item".to_owned(),
        }
    }
}

/// The learned state of one namespace as requests read it: its model, index, ingest status
/// and key layout. It is replaced as a whole when the serving alias moves to another
/// namespace (`store.alias`), and a request loads it once ([`AppState::served`]), so no
/// request reads two namespaces.
pub struct Served {
    /// The namespace the state belongs to.
    pub namespace: String,
    /// The live model.
    pub model: Arc<ModelLock>,
    /// The ANN index.
    pub index: Arc<Index>,
    /// Ingest status.
    pub status: Arc<Status>,
    /// Key layout of the namespace (users evicted from memory are read under it).
    pub keys: Keys,
    /// Users Redis did not hold when last asked ([`AbsentUsers`]).
    pub absent_users: AbsentUsers,
}

/// Users not in memory that Redis did not hold either when last asked (users without events:
/// new visitors, mistyped ids), remembered for [`ABSENT_USER_TTL`]: a request for one reads as
/// cold without a Redis round trip meanwhile, so a stream of requests for new visitors costs
/// Redis one lookup per user and second, and none of them waits on a Redis busy behind a
/// flush. A user this instance folds is in memory, found first; one that another instance
/// created is seen at most [`ABSENT_USER_TTL`] after its flush. Bounded to
/// [`ABSENT_USERS_KEPT`] ids (S3-FIFO, `quick_cache`).
pub struct AbsentUsers(quick_cache::sync::Cache<String, std::time::Instant>);

/// How long a user Redis did not hold is read as cold without asking again.
pub const ABSENT_USER_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Ids of absent users remembered at most (each up to 128 bytes).
pub const ABSENT_USERS_KEPT: usize = 65_536;

impl Default for AbsentUsers {
    fn default() -> Self {
        Self(quick_cache::sync::Cache::new(ABSENT_USERS_KEPT))
    }
}

impl std::fmt::Debug for AbsentUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbsentUsers").field("kept", &self.0.len()).finish()
    }
}

impl AbsentUsers {
    /// Whether Redis did not hold `user_id` less than [`ABSENT_USER_TTL`] ago.
    pub fn recently(&self, user_id: &str) -> bool {
        self.0.get(user_id).is_some_and(|asked| asked.elapsed() < ABSENT_USER_TTL)
    }

    /// Notes that Redis did not hold `user_id` just now.
    pub fn note(&self, user_id: &str) {
        self.0.insert(user_id.to_owned(), std::time::Instant::now());
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl Served {
    /// The model, read-locked (a poisoned lock is read as is: the model is never left
    /// half-written by a panic of the fold, which runs to completion or not at all).
    ///
    /// When the fold holds the lock (or waits for it: the lock is fair), the wait happens in
    /// [`tokio::task::block_in_place`] on a multi-threaded runtime, so the worker's other
    /// requests move to another thread instead of waiting behind this one: a handler blocked
    /// on a chunk of a window used to hold up every request queued on its worker, routes that
    /// never read the model included.
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, Model> {
        if let Some(model) = self.model.try_read() {
            return model;
        }
        let multi_threaded = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
            runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if multi_threaded {
            tokio::task::block_in_place(|| self.model.read())
        } else {
            self.model.read()
        }
    }
}

/// Everything the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The served namespace's state, swapped atomically on an alias switch.
    pub served: Arc<arc_swap::ArcSwap<Served>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Redis (guarded by the `redis` circuit breaker): users evicted from memory, and every
    /// other piece of shared state of the HTTP side. Its key layout is the home namespace
    /// (`store.namespace`: sessions, flags, auth, rate limits), which an alias never moves.
    pub redis: AsyncRedis,
    /// Limits.
    pub config: ServeConfig,
    /// Per-subject rate limits of the `/v1` routes (shared through Redis).
    pub rate_limiter: RateLimiter,
    /// Token verification, revocation and issuance.
    pub auth: Arc<Auth>,
    /// Server-side sessions in Redis.
    pub sessions: Arc<Sessions>,
    /// The producer of `POST /v1/events`.
    pub producer: Arc<EventProducer>,
    /// Event types and weights (to validate published events).
    pub event_types: Arc<EventTypes>,
    /// Decoder limits of published events.
    pub decode_limits: DecodeLimits,
    /// Feature flags, cached from `{ns}:flags` and refreshed in the background.
    pub flags: Arc<FlagStore>,
}

/// The producer of HTTP-ingested events: idempotent, Java-compatible murmur2 partitioning of
/// the user-id key, behind the process's `kafka_producer` circuit breaker.
pub struct EventProducer {
    /// The client.
    pub producer: rdkafka::producer::FutureProducer,
    /// The events topic.
    pub topic: String,
    /// Longest wait for the broker's acknowledgement, ms.
    pub timeout_ms: u64,
    /// The `kafka_producer` breaker.
    pub breaker: Arc<CircuitBreaker>,
}

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProducer").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl EventProducer {
    /// The producer for `config.kafka`, guarded by `breaker`.
    ///
    /// # Errors
    /// librdkafka configuration errors.
    pub fn new(config: &Config, breaker: Arc<CircuitBreaker>) -> anyhow::Result<Self> {
        let producer = config
            .kafka
            .client_config(&[
                ("enable.idempotence", "true"),
                ("partitioner", "murmur2_random"),
                ("message.timeout.ms", "5000"),
            ])
            .create()?;
        Ok(Self { producer, topic: config.kafka.topic.clone(), timeout_ms: 5000, breaker })
    }
}

impl AppState {
    /// The state of the HTTP side: everything not passed in is built from `config`.
    ///
    /// # Errors
    /// A component whose configuration cannot be used (named in the message).
    pub fn new(
        model: Arc<ModelLock>,
        index: Arc<Index>,
        status: Arc<Status>,
        metrics: Metrics,
        redis: AsyncRedis,
        config: &Config,
    ) -> anyhow::Result<Self> {
        // Every Redis call of the HTTP side answers within the request-path budget.
        let redis = redis.with_timeout(Duration::from_millis(config.http.redis_timeout_ms));
        let rate_limiter = RateLimiter::new(&config.rate_limit, redis.clone(), metrics.clone());
        let auth = Arc::new(Auth::from_config(&config.auth, redis.clone())?);
        let producer_breaker = Arc::new(CircuitBreaker::new(
            "kafka_producer",
            config.kafka.producer_breaker.clone(),
            Some(metrics.breakers.clone()),
        ));
        let producer = Arc::new(EventProducer::new(config, producer_breaker)?);
        let sessions = Arc::new(Sessions::new(redis.clone(), config.session.clone()));
        let flags = Arc::new(FlagStore::new(&config.flags, redis.clone(), metrics.clone()));
        if tokio::runtime::Handle::try_current().is_ok() {
            // Stops by itself once the last clone of this state is dropped.
            flags.spawn_refresh();
        }
        let served = Served {
            namespace: redis.keys().namespace().to_owned(),
            model,
            index,
            status,
            keys: redis.keys().clone(),
            absent_users: AbsentUsers::default(),
        };
        Ok(Self {
            served: Arc::new(arc_swap::ArcSwap::from_pointee(served)),
            metrics,
            rate_limiter,
            auth,
            sessions,
            producer,
            event_types: Arc::new(config.events.event_types()?),
            decode_limits: config.events.limits,
            flags,
            redis,
            config: config.http.clone(),
        })
    }
}

impl AppState {
    /// The served state, loaded once per request.
    pub fn served(&self) -> Arc<Served> {
        self.served.load_full()
    }
}

impl axum::extract::FromRef<AppState> for Arc<Auth> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.auth)
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Every route as (method, path in OpenAPI form); the router and `schemas/openapi.json` are
/// both held against this list by the tests.
pub const ROUTES: [(&str, &str); 18] = [
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("post", "/v1/auth/token"),
    ("post", "/v1/auth/revoke"),
    ("get", "/v1/whoami"),
    ("get", "/v1/users/{user_id}/recommendations"),
    ("post", "/v1/users/{user_id}/scores"),
    ("get", "/v1/users/{user_id}"),
    ("get", "/v1/items/{item_id}/similar"),
    ("get", "/v1/items/{item_id}"),
    ("post", "/v1/users/{user_id}/sessions"),
    ("get", "/v1/users/{user_id}/sessions/{session_id}"),
    ("delete", "/v1/users/{user_id}/sessions/{session_id}"),
    ("post", "/v1/events"),
    ("post", "/v1/events:batch"),
    ("get", "/v1/admin/flags"),
    ("put", "/v1/admin/flags"),
];

/// The router with every route, JSON fallbacks and the latency middleware.
///
/// The `/v1` routes sit behind, from the outside in: load shedding (a global concurrency
/// limit, [`ratelimit::limit_concurrency`]), then the per-subject rate limit
/// ([`ratelimit::enforce`], which reads the subject authentication puts on the request, so
/// authentication must run between the two). Health, readiness and metrics have neither.
///
/// Authentication ([`crate::auth::http::authenticate`]) is the last `route_layer` of `api`:
/// every `/v1` route added before it needs a token with the scope of its path
/// ([`crate::auth::http::required_scope`]), except `POST /v1/auth/token`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/users/{user_id}/recommendations", get(ranking::recommendations))
        .route("/v1/users/{user_id}/scores", post(ranking::scores))
        .route("/v1/users/{user_id}/sessions", post(sessions::create))
        .route(
            "/v1/users/{user_id}/sessions/{session_id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/v1/events", post(events::publish))
        .route("/v1/events:batch", post(events::publish_batch))
        .route("/v1/admin/flags", get(admin::get_flags).put(admin::put_flags))
        .route("/v1/users/{user_id}", get(handlers::user))
        .route("/v1/items/{item_id}/similar", get(handlers::similar))
        .route("/v1/items/{item_id}", get(handlers::item))
        .route("/v1/auth/token", post(crate::auth::http::token))
        .route("/v1/auth/revoke", post(crate::auth::http::revoke))
        .route("/v1/whoami", get(handlers::whoami))
        .route_layer(axum::middleware::from_fn_with_state(
            state.rate_limiter.clone(),
            ratelimit::enforce,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            crate::auth::http::authenticate,
        ));
    let api = ratelimit::limit_concurrency(
        api,
        state.config.max_concurrent_requests,
        Duration::from_millis(state.config.request_timeout_ms),
        state.metrics.clone(),
    );
    let router = Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .merge(api)
        .merge(demo::routes(&state))
        .fallback(handlers::unknown_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.config.clone(), limits::enforce))
        .layer(axum::middleware::from_fn_with_state(state.clone(), record_latency));
    middleware::wrap(router, &state.config).with_state(state)
}

async fn record_latency(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    // The exact code (a small fixed set), so that dashboards can tell 429 and 503 apart.
    let status = response.status();
    state
        .metrics
        .http_duration
        .with_label_values(&[route.as_str(), status.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Served;
    use crate::index::{Index, IndexConfig};
    use crate::model::{Model, ModelConfig, ModelLock};
    use crate::store::Keys;

    /// A request waiting for the model while the fold holds it must leave its worker to the
    /// other requests: on a runtime of one worker, a task spawned behind it still runs. Before
    /// the wait moved into `block_in_place`, it waited until the fold let go.
    #[test]
    fn a_request_waiting_for_the_model_leaves_its_worker_to_the_others() {
        let model = Arc::new(ModelLock::new(Model::new(ModelConfig::default()).unwrap()));
        let served = Arc::new(Served {
            namespace: "t".to_owned(),
            model: Arc::clone(&model),
            index: Arc::new(Index::new(IndexConfig::default())),
            status: Arc::default(),
            keys: Keys::new("t"),
            absent_users: super::AbsentUsers::default(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fold = model.write();
        let waiting = runtime.spawn(async move { served.read().item_count() });
        std::thread::sleep(Duration::from_millis(200));
        let (ran, other) = std::sync::mpsc::channel();
        runtime.spawn(async move { ran.send(()).unwrap() });
        let other_ran = other.recv_timeout(Duration::from_secs(5));
        drop(fold);
        assert!(other_ran.is_ok(), "the other request waited for the fold");
        assert_eq!(runtime.block_on(waiting).unwrap(), 0);
    }
}
