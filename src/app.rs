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
use crate::model::{Model, ModelConfig};
use crate::resilience::CircuitBreaker;
use crate::serve::{router, serve, AppState, EventProducer, Served};
use crate::store::{AsyncRedis, Keys, SyncStore};

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
    run_with(config, options.into(), Some(listener), shutdown, |_, _| {}).await.map(|_| ())
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
/// server (so no JWKS or keys are needed), calling `progress` with the events applied and the
/// records still to consume (from librdkafka's statistics, every 5 s) every 200 ms; then reads the namespace back from Redis and compares its digest with the state in
/// memory.
///
/// # Errors
/// As [`run`]; a read-back that fails is an error, a digest that differs is `verified: false`.
pub async fn rebuild(
    config: Config,
    start: StartPosition,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> anyhow::Result<RebuildSummary> {
    let options = RunOptions { start, exit_when_caught_up: true };
    let model = run_with(config.clone(), options, None, std::future::pending(), progress).await?;
    let (digest, events_applied, users, items) = {
        let model = model.read();
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

/// What every generation of the service shares: the configuration (its `store.namespace` is
/// the home namespace), metrics and the process's breakers.
struct Shared {
    config: Config,
    start: StartPosition,
    /// `exit_when_caught_up`: the engine closes every open window once all its partitions are
    /// at their end ([`Engine::drain_at_end`]).
    drain_at_end: bool,
    metrics: Metrics,
    redis_breaker: Arc<CircuitBreaker>,
    producer_breaker: Arc<CircuitBreaker>,
}

/// One namespace ingested and served: the state requests read, the engine until its consumer
/// starts, then the consumer thread; `cancel` (a child of the process's token) stops its
/// consumer and index rebuild thread.
struct Generation {
    served: Arc<Served>,
    cancel: CancellationToken,
    engine: Option<Engine>,
    consumer: Option<std::thread::JoinHandle<Result<(), crate::ingest::ConsumerError>>>,
}

impl Shared {
    /// The configuration of `namespace`'s engine: the learned state and progress in
    /// `namespace`, with the model configuration `model` when given (the one stored in the
    /// namespace a switch moves to: a rebuild may have chosen another), everything else as
    /// configured.
    fn config_of(&self, namespace: &str, model: Option<ModelConfig>) -> Config {
        let mut config = self.config.clone();
        config.store.namespace = namespace.to_owned();
        if let Some(model) = model {
            config.model = model;
        }
        config
    }

    /// An engine for `namespace` and the state requests will read of it (empty until
    /// restored).
    fn prepare(
        &self,
        namespace: &str,
        model: Option<ModelConfig>,
        parent: &CancellationToken,
    ) -> anyhow::Result<Generation> {
        let config = self.config_of(namespace, model);
        let index = Arc::new(Index::new(config.index.clone()));
        let status = Arc::new(Status::default());
        let dead_letters = DeadLetters::new(&config.kafka, tokio::runtime::Handle::current())
            .context("creating the dead-letter producer")?
            .with_breaker(Arc::clone(&self.producer_breaker));
        let mut engine = Engine::new(
            &config,
            config.ingest.clone(),
            self.start.clone(),
            dead_letters,
            self.metrics.clone(),
            Arc::clone(&index),
            Arc::clone(&status),
            Arc::clone(&self.redis_breaker),
        )?;
        engine.drain_at_end(self.drain_at_end);
        let served = Arc::new(Served {
            namespace: namespace.to_owned(),
            model: engine.shared_model(),
            index,
            status,
            keys: Keys::of(&config.store, namespace),
            absent_users: crate::serve::AbsentUsers::default(),
        });
        Ok(Generation {
            served,
            cancel: parent.child_token(),
            engine: Some(engine),
            consumer: None,
        })
    }

    /// Restores the generation's state from Redis (retrying transient failures with `retry`
    /// until the generation is cancelled), builds its first index snapshot and starts its
    /// index rebuild thread.
    async fn restore(
        &self,
        generation: &mut Generation,
        retry: crate::resilience::RetryConfig,
    ) -> anyhow::Result<()> {
        let mut engine = generation.engine.take().context("the engine is already running")?;
        let restore_cancel = generation.cancel.clone();
        let (engine, restored) = tokio::task::spawn_blocking(move || {
            // Transient failures (Redis away or loading) are retried; anything else (an
            // incompatible or corrupt namespace) fails at once with the reason.
            let restored = crate::resilience::retry_blocking(
                &retry,
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
        generation.engine = Some(engine);
        restored.map_err(|error| {
            tracing::error!(%error, namespace = %generation.served.namespace, "state could not be restored from redis");
            anyhow::Error::new(error).context(format!(
                "state of namespace {} could not be restored from redis",
                generation.served.namespace
            ))
        })?;
        let served = Arc::clone(&generation.served);
        let build_metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            // At or below the full-scan threshold queries scan exactly and readiness needs no
            // snapshot: the rebuild thread builds the first one in the background, so a busy
            // rayon pool never holds the restore up.
            let item_count = served.read().item_count();
            if item_count <= served.index.config().full_scan_threshold {
                return;
            }
            if let Some(seconds) = served.index.rebuild(&served.model) {
                build_metrics.index_built(&served.index, seconds);
            }
        })
        .await
        .context("index build task")?;
        let rebuild_metrics = self.metrics.clone();
        generation
            .served
            .index
            .keep_converged(
                Arc::clone(&generation.served.model),
                generation.cancel.clone(),
                move |index, seconds| rebuild_metrics.index_built(index, seconds),
            )
            .context("starting the index rebuild thread")?;
        Ok(())
    }

    /// Starts the generation's consumer thread.
    fn start_consumer(&self, generation: &mut Generation) -> anyhow::Result<()> {
        let engine = generation.engine.take().context("the engine is already running")?;
        let engine = Arc::new(Mutex::new(engine));
        let consumer_cancel = generation.cancel.clone();
        let kafka = self.config.kafka.clone();
        let ingest = self.config.ingest.clone();
        generation.consumer = Some(
            std::thread::Builder::new()
                .name("ingest".to_owned())
                .spawn(move || run_consumer(engine, &kafka, &ingest, consumer_cancel))
                .context("starting the ingest thread")?,
        );
        Ok(())
    }
}

impl Generation {
    /// Stops the consumer (after its final flush) and the index rebuild thread.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let Some(consumer) = self.consumer.take() else { return Ok(()) };
        match tokio::task::spawn_blocking(move || consumer.join()).await {
            Ok(Ok(result)) => result.context("consumer failed"),
            Ok(Err(_)) | Err(_) => Err(anyhow::anyhow!("ingest thread panicked")),
        }
    }
}

/// Retries until Redis answers or the service is stopped (the restore at start).
const UNTIL_STOPPED: crate::resilience::RetryConfig = crate::resilience::RetryConfig {
    base_ms: 200,
    cap_ms: 10_000,
    max_attempts: u32::MAX,
    max_elapsed_ms: u64::MAX,
};

/// A switch whose target cannot be restored within this long is given up (the instance goes
/// on serving the namespace it has) and tried again after [`SWITCH_RETRY_AFTER`].
const SWITCH_RESTORE: crate::resilience::RetryConfig = crate::resilience::RetryConfig {
    base_ms: 200,
    cap_ms: 5_000,
    max_attempts: u32::MAX,
    max_elapsed_ms: 30_000,
};

/// How long a failed switch waits before the same target is tried again.
const SWITCH_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The namespace `alias` points at, created pointing at `home` when absent; transient Redis
/// failures are retried until `cancel`.
async fn resolve_alias(
    store: &crate::store::StoreConfig,
    alias: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<String> {
    let (store, name, cancel) = (store.clone(), alias.to_owned(), cancel.clone());
    tokio::task::spawn_blocking(move || {
        let mut redis = SyncStore::new(&store)?;
        crate::resilience::retry_blocking(
            &UNTIL_STOPPED,
            "resolve_alias",
            |error: &crate::store::StoreError| error.is_transient() && !cancel.is_cancelled(),
            || redis.ensure_alias(&name, &store.namespace),
        )
        .map_err(anyhow::Error::from)
    })
    .await
    .context("alias task")?
    .with_context(|| format!("resolving alias {alias}"))
}

/// Where `alias` points now (read with `redis`, one connection kept across polls) and, when
/// that is not `current`, the model configuration stored there (`None`: it holds no model);
/// `None` when Redis cannot say (the next poll asks again).
async fn read_alias(
    redis: &Arc<Mutex<SyncStore>>,
    store: &crate::store::StoreConfig,
    alias: &str,
    current: &str,
) -> Option<(String, Option<ModelConfig>)> {
    let (redis, store, alias, current) =
        (Arc::clone(redis), store.clone(), alias.to_owned(), current.to_owned());
    tokio::task::spawn_blocking(move || {
        let target = redis.lock().ok()?.alias_target(&alias).ok()??;
        if target == current {
            return Some((target, None));
        }
        let mut target_store =
            SyncStore::new(&crate::store::StoreConfig { namespace: target.clone(), ..store })
                .ok()?;
        let model = target_store.load_meta().ok()?.map(|meta| meta.model_config);
        Some((target, model))
    })
    .await
    .ok()?
}

async fn run_with(
    config: Config,
    options: RunOptions,
    listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> anyhow::Result<Arc<crate::model::ModelLock>> {
    let RunOptions { start, exit_when_caught_up } = options;
    let metrics = Metrics::new().context("registering metrics")?;
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
    let cancel = CancellationToken::new();
    let alias = (!config.store.alias.is_empty()).then(|| config.store.alias.clone());
    let namespace = match &alias {
        Some(alias) => {
            let namespace = resolve_alias(&config.store, alias, &cancel).await?;
            tracing::info!(%alias, %namespace, "serving the namespace of the alias");
            namespace
        }
        None => config.store.namespace.clone(),
    };
    let shared = Shared {
        config: config.clone(),
        start,
        drain_at_end: exit_when_caught_up,
        metrics: metrics.clone(),
        redis_breaker: Arc::clone(&redis_breaker),
        producer_breaker: Arc::clone(&producer_breaker),
    };
    let mut current = shared.prepare(&namespace, None, &cancel)?;
    let served = Arc::new(arc_swap::ArcSwap::new(Arc::clone(&current.served)));
    let server = match listener {
        Some(listener) => {
            let redis = AsyncRedis::new(&config.store, Arc::clone(&redis_breaker), metrics.clone())
                .context("redis url")?;
            let mut state = AppState::new(
                Arc::clone(&current.served.model),
                Arc::clone(&current.served.index),
                Arc::clone(&current.served.status),
                metrics.clone(),
                redis,
                &config,
            )?;
            state.served = Arc::clone(&served);
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
    shared.restore(&mut current, UNTIL_STOPPED).await?;
    shared.start_consumer(&mut current)?;

    let caught_up_served = Arc::clone(&served);
    let caught_up = async move {
        for tick in 0u64.. {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let status = Arc::clone(&caught_up_served.load().status);
            if tick % 2 == 1 {
                progress(
                    status.applied.load(std::sync::atomic::Ordering::Relaxed),
                    status.lag_records.load(std::sync::atomic::Ordering::Relaxed),
                );
            }
            if exit_when_caught_up && status.caught_up.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
        }
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut caught_up = std::pin::pin!(caught_up);
    let poll = Duration::from_millis(config.store.alias_poll_ms.max(1));
    let alias_redis = Arc::new(Mutex::new(SyncStore::new(&config.store)?));
    let mut failed: Option<(String, std::time::Instant)> = None;
    loop {
        let alias_moved = async {
            let Some(alias) = &alias else { return std::future::pending().await };
            tokio::time::sleep(poll).await;
            read_alias(&alias_redis, &config.store, alias, &current.served.namespace).await
        };
        let current_cancel = current.cancel.clone();
        tokio::select! {
            () = &mut shutdown => { tracing::info!("shutdown requested"); break }
            () = &mut caught_up => { tracing::info!("caught up: stopping"); break }
            () = current_cancel.cancelled() => {
                tracing::warn!("the consumer stopped by itself");
                break
            }
            moved = alias_moved => {
                let Some((target, model)) = moved else { continue };
                if target == current.served.namespace
                    || failed.as_ref().is_some_and(|(namespace, at)| {
                        *namespace == target && at.elapsed() < SWITCH_RETRY_AFTER
                    })
                {
                    continue;
                }
                let from = current.served.namespace.clone();
                let Some(model) = model else {
                    tracing::error!(%from, to = %target, "alias points at a namespace without a model: not switching");
                    metrics.namespace_switches.with_label_values(&["failed"]).inc();
                    failed = Some((target, std::time::Instant::now()));
                    continue;
                };
                tracing::info!(%from, to = %target, "alias switched: restoring the new namespace");
                let mut next = shared.prepare(&target, Some(model), &cancel)?;
                if let Err(error) = shared.restore(&mut next, SWITCH_RESTORE).await {
                    tracing::error!(error = %format!("{error:#}"), %from, to = %target, "switch failed: serving the old namespace");
                    metrics.namespace_switches.with_label_values(&["failed"]).inc();
                    next.cancel.cancel();
                    failed = Some((target, std::time::Instant::now()));
                    continue;
                }
                // One store: every request from here on reads the new namespace whole.
                served.store(Arc::clone(&next.served));
                let old = std::mem::replace(&mut current, next);
                if let Err(error) = old.stop().await {
                    tracing::error!(error = %format!("{error:#}"), namespace = %from, "the old namespace's consumer failed while stopping");
                }
                shared.start_consumer(&mut current)?;
                metrics.namespace_switches.with_label_values(&["switched"]).inc();
                failed = None;
                tracing::info!(%from, to = %target, "now serving and ingesting the new namespace");
            }
        }
    }
    cancel.cancel();
    let model = Arc::clone(&current.served.model);
    let consumed = current.stop().await;
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
