//! Wiring: the only module that knows every other. Builds the ingest engine, the index and the
//! HTTP server from the configuration and runs them until shutdown.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::index::Index;
use crate::ingest::{run_consumer, DeadLetters, Engine, StartPosition, Status};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::resilience::CircuitBreaker;
use crate::serve::{router, serve, AppState, EventProducer};
use crate::store::{AsyncRedis, SyncStore};

/// How `run` starts and when it stops by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Where partitions without stored progress start.
    pub start: StartPosition,
    /// Stop once every assigned partition is consumed, applied and flushed.
    pub exit_when_caught_up: bool,
}

impl From<StartPosition> for RunOptions {
    fn from(start: StartPosition) -> Self {
        Self { start, exit_when_caught_up: false }
    }
}

/// Runs the service: restores state from Redis, consumes the topic, serves HTTP on
/// `listener` until `shutdown` completes (or, with `exit_when_caught_up`, until caught up),
/// then stops the consumer after a final flush.
///
/// # Errors
/// Configuration, Kafka client or listener errors.
pub async fn run(
    config: Config,
    options: impl Into<RunOptions>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, options.into(), Some(listener), shutdown, |_| {}).await.map(|_| ())
}

/// What a headless rebuild did (`embedstream rebuild`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildSummary {
    /// The namespace rebuilt.
    pub namespace: String,
    /// Digest of the state, as `embedstream digest` and `replay` print it.
    pub digest: String,
    /// Events applied in the namespace (over its whole life).
    pub events_applied: u64,
    /// Users and items in the namespace.
    pub users: usize,
    /// Items in the namespace.
    pub items: usize,
    /// Whether the state read back from Redis has the digest of the state in memory.
    pub verified: bool,
}

/// Rebuilds a namespace headless: consumes the topic from `start` (where the namespace has no
/// stored progress) until every partition is consumed, applied and flushed, with no HTTP
/// server (so no JWKS or keys are needed), calling `progress` with the applied count every
/// 200 ms; then reads the namespace back from Redis and compares its digest with the state in
/// memory.
///
/// # Errors
/// As [`run`]; a read-back that fails is an error, a digest that differs is `verified: false`.
pub async fn rebuild(
    config: Config,
    start: StartPosition,
    progress: impl Fn(u64) + Send + 'static,
) -> anyhow::Result<RebuildSummary> {
    let options = RunOptions { start, exit_when_caught_up: true };
    let model = run_with(config.clone(), options, None, std::future::pending(), progress).await?;
    let (digest, events_applied, users, items) = {
        let model = model.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (model.digest(), model.events_applied(), model.user_count(), model.item_count())
    };
    let read_config = config.clone();
    let stored = tokio::task::spawn_blocking(move || load_stored_model(&read_config))
        .await
        .context("read-back task")??;
    Ok(RebuildSummary {
        namespace: config.store.namespace,
        verified: stored.digest() == digest,
        digest,
        events_applied,
        users,
        items,
    })
}

async fn run_with(
    config: Config,
    options: RunOptions,
    listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    progress: impl Fn(u64) + Send + 'static,
) -> anyhow::Result<Arc<std::sync::RwLock<Model>>> {
    let RunOptions { start, exit_when_caught_up } = options;
    let metrics = Metrics::new().context("registering metrics")?;
    let index = Arc::new(Index::new(config.index.clone()));
    let status = Arc::new(Status::default());
    let redis_breaker = Arc::new(CircuitBreaker::new(
        "redis",
        config.store.breaker.clone(),
        Some(metrics.breakers.clone()),
    ));
    let producer_breaker = Arc::new(CircuitBreaker::new(
        "kafka_producer",
        config.kafka.producer_breaker.clone(),
        Some(metrics.breakers.clone()),
    ));
    let dead_letters = DeadLetters::new(&config.kafka, tokio::runtime::Handle::current())
        .context("creating the dead-letter producer")?
        .with_breaker(Arc::clone(&producer_breaker));
    let mut engine = Engine::new(
        &config,
        config.ingest.clone(),
        start,
        dead_letters,
        metrics.clone(),
        Arc::clone(&index),
        Arc::clone(&status),
        Arc::clone(&redis_breaker),
    )?;
    let cancel = CancellationToken::new();
    let model = engine.shared_model();
    let server = match listener {
        Some(listener) => {
            let redis = AsyncRedis::new(&config.store, Arc::clone(&redis_breaker), metrics.clone())
                .context("redis url")?;
            let mut state = AppState::new(
                Arc::clone(&model),
                Arc::clone(&index),
                Arc::clone(&status),
                metrics.clone(),
                redis,
                &config,
            )?;
            // One `kafka_producer` breaker for the dead-letter and the HTTP ingestion produces.
            state.producer = Arc::new(EventProducer::new(&config, Arc::clone(&producer_breaker))?);
            let app = router(state);
            let server_cancel = cancel.clone();
            let http_config = config.http.clone();
            let server_metrics = metrics.clone();
            Some(tokio::spawn(async move {
                let shutdown = async move { server_cancel.cancelled().await };
                serve(listener, app, &http_config, server_metrics, shutdown).await
            }))
        }
        None => None,
    };

    // Restore and first index build off the runtime threads; HTTP answers /readyz 503 meanwhile.
    let restore_cancel = cancel.clone();
    let (engine, restored) = tokio::task::spawn_blocking(move || {
        // Transient failures (Redis away or loading) are retried until Redis answers or the
        // service is stopped; anything else (an incompatible or corrupt namespace) stops the
        // service at once with the reason.
        let until_stopped = crate::resilience::RetryConfig {
            base_ms: 200,
            cap_ms: 10_000,
            max_attempts: u32::MAX,
            max_elapsed_ms: u64::MAX,
        };
        let restored = crate::resilience::retry_blocking(
            &until_stopped,
            "restore",
            |error: &crate::ingest::EngineError| {
                error.is_transient() && !restore_cancel.is_cancelled()
            },
            || engine.restore(),
        );
        (engine, restored)
    })
    .await
    .context("restore task")?;
    let restored = restored.map_err(|error| {
        tracing::error!(%error, "state could not be restored from redis");
        anyhow::Error::new(error).context("state could not be restored from redis")
    });
    restored?;
    let build_index = Arc::clone(&index);
    let build_model = Arc::clone(&model);
    let build_metrics = metrics.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(seconds) = build_index.rebuild(&build_model) {
            build_metrics.index_rebuild_duration.observe(seconds);
            build_metrics.index_items.set(build_index.snapshot_len() as i64);
        }
    })
    .await
    .context("index build task")?;
    let rebuild_metrics = metrics.clone();
    index
        .keep_converged(Arc::clone(&model), cancel.clone(), move |index, seconds| {
            rebuild_metrics.index_rebuild_duration.observe(seconds);
            rebuild_metrics.index_items.set(index.snapshot_len() as i64);
        })
        .context("starting the index rebuild thread")?;

    let engine = Arc::new(Mutex::new(engine));
    let consumer_cancel = cancel.clone();
    let kafka = config.kafka.clone();
    let ingest = config.ingest.clone();
    let consumer = std::thread::Builder::new()
        .name("ingest".to_owned())
        .spawn(move || run_consumer(engine, &kafka, &ingest, consumer_cancel))
        .context("starting the ingest thread")?;

    let caught_up_status = Arc::clone(&status);
    let caught_up = async move {
        for tick in 0u64.. {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tick % 2 == 1 {
                progress(caught_up_status.applied.load(std::sync::atomic::Ordering::Relaxed));
            }
            if exit_when_caught_up
                && caught_up_status.caught_up.load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
        }
    };
    let consumer_stopped = cancel.clone();
    tokio::select! {
        () = shutdown => tracing::info!("shutdown requested"),
        () = caught_up => tracing::info!("caught up: stopping"),
        () = consumer_stopped.cancelled() => tracing::warn!("the consumer stopped by itself"),
    }
    cancel.cancel();
    let joined = tokio::task::spawn_blocking(move || consumer.join()).await;
    let consumed = match joined {
        Ok(Ok(result)) => result.context("consumer failed"),
        Ok(Err(_)) | Err(_) => Err(anyhow::anyhow!("ingest thread panicked")),
    };
    if let Some(server) = server {
        server.await.context("http server task")?.context("http server")?;
    }
    consumed.map(|()| model)
}

/// Loads a namespace's whole state from Redis into a model (for digests and inspection).
///
/// # Errors
/// Redis failures, incompatible or corrupt state.
pub fn load_stored_model(config: &Config) -> anyhow::Result<Model> {
    let mut store = SyncStore::new(&config.store)?;
    let meta = store.load_meta()?.context("the namespace holds no model")?;
    let mut model = Model::new(meta.model_config.clone())?;
    model.restore_events_applied(meta.events_applied);
    for item in store.load_items(meta.dim)? {
        model.restore_item(item)?;
    }
    let mut users: Vec<String> = store.user_ids()?.into_iter().collect();
    users.sort();
    for id in users {
        if let Some(user) = store.load_user(&id, meta.dim)? {
            model.restore_user(user)?;
        }
    }
    model.restore_negative_pool(meta.negative_pool.0, meta.negative_pool.1);
    Ok(model)
}
