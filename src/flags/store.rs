//! The in-process cache of the flags document, its background refresh and its replacement
//! through the async Redis handle.

use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Decisions, FlagsConfig, FlagsDoc, FlagsError};
use crate::metrics::Metrics;
use crate::store::{AsyncRedis, RedisUnavailable};

/// Where the cached document came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagSource {
    /// Compiled-in defaults (everything on, no experiment): nothing stored, or never loaded.
    Defaults,
    /// The document stored at `{ns}:flags`.
    Redis,
}

/// Why a refresh did not change the cache.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Redis did not answer (the cache keeps the last known document).
    #[error(transparent)]
    Unavailable(#[from] RedisUnavailable),
    /// The stored document is not valid (a foreign writer; the cache keeps the last one).
    #[error(transparent)]
    Invalid(#[from] FlagsError),
}

impl RefreshError {
    /// The `reason` label of the refresh-failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// What `GET /v1/admin/flags` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagsView {
    /// The cached document.
    pub flags: FlagsDoc,
    /// Where it came from.
    pub source: FlagSource,
    /// Time since it was last confirmed by Redis, ms (`None`: never).
    pub age_ms: Option<u64>,
}

#[derive(Debug)]
struct Cached {
    doc: Arc<FlagsDoc>,
    source: FlagSource,
    confirmed_at: Option<Instant>,
    /// Bumped by every install, so that a refresh which read Redis before a `PUT` does not
    /// overwrite the newer document with the older one.
    generation: u64,
}

/// The flags of this instance: a cached document, refreshed from Redis.
#[derive(Debug)]
pub struct FlagStore {
    cached: RwLock<Cached>,
    redis: AsyncRedis,
    key: String,
    metrics: Metrics,
    refresh_every: Duration,
}

impl FlagStore {
    /// A store holding the defaults until the first refresh.
    pub fn new(config: &FlagsConfig, redis: AsyncRedis, metrics: Metrics) -> Self {
        Self {
            cached: RwLock::new(Cached {
                doc: Arc::new(FlagsDoc::default()),
                source: FlagSource::Defaults,
                confirmed_at: None,
                generation: 0,
            }),
            key: redis.keys().flags(),
            redis,
            metrics,
            refresh_every: Duration::from_millis(config.refresh_ms.max(1)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cached> {
        self.cached.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The decisions for `user_id` from the cached document (no I/O).
    pub fn decide(&self, user_id: &str) -> Decisions {
        self.current().decide(user_id)
    }

    /// The cached document.
    pub fn current(&self) -> Arc<FlagsDoc> {
        Arc::clone(&self.read().doc)
    }

    /// Time since Redis last confirmed the cached document, ms; `None` if it never did.
    pub fn age_ms(&self) -> Option<u64> {
        self.read().confirmed_at.map(|at| at.elapsed().as_millis() as u64)
    }

    /// The document with its source and age.
    pub fn view(&self) -> FlagsView {
        let cached = self.read();
        FlagsView {
            flags: FlagsDoc::clone(&cached.doc),
            source: cached.source,
            age_ms: cached.confirmed_at.map(|at| at.elapsed().as_millis() as u64),
        }
    }

    fn install(&self, doc: FlagsDoc, source: FlagSource, read_at_generation: Option<u64>) {
        let mut cached = self.cached.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if read_at_generation.is_some_and(|generation| generation != cached.generation) {
            return;
        }
        *cached = Cached {
            doc: Arc::new(doc),
            source,
            confirmed_at: Some(Instant::now()),
            generation: cached.generation + 1,
        };
    }

    /// Re-reads `{ns}:flags`. No stored document means the defaults.
    ///
    /// # Errors
    /// [`RefreshError`]; the cache then keeps its document.
    pub async fn refresh(&self) -> Result<(), RefreshError> {
        let generation = self.read().generation;
        let stored: Option<String> =
            self.redis.query("flags_get", redis::cmd("GET").arg(&self.key)).await?;
        let (doc, source) = match stored {
            Some(text) => (FlagsDoc::from_json(&text)?, FlagSource::Redis),
            None => (FlagsDoc::default(), FlagSource::Defaults),
        };
        self.install(doc, source, Some(generation));
        Ok(())
    }

    /// Validates `doc`, writes it to Redis (one `SET`, replacing the whole document) and
    /// installs it in this instance's cache at once.
    ///
    /// # Errors
    /// [`RefreshError::Invalid`] before anything is written; [`RefreshError::Unavailable`] when
    /// Redis did not take it (the cache is unchanged).
    pub async fn replace(&self, doc: FlagsDoc) -> Result<(), RefreshError> {
        doc.validate()?;
        let () = self
            .redis
            .query("flags_set", redis::cmd("SET").arg(&self.key).arg(doc.to_json()))
            .await?;
        self.install(doc, FlagSource::Redis, None);
        Ok(())
    }

    /// Refreshes now and then every `flags.refresh_ms` until the last `Arc` of the store is
    /// dropped (the task holds only a weak reference, so it ends with the state that owns the
    /// store). Failures are logged and counted in
    /// `embedstream_flags_refresh_failures_total{reason}`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store: Weak<Self> = Arc::downgrade(self);
        let every = self.refresh_every;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(store) = store.upgrade() else { return };
                if let Err(error) = store.refresh().await {
                    store.metrics.flags_refresh_failures.with_label_values(&[error.reason()]).inc();
                    tracing::warn!(%error, age_ms = ?store.age_ms(), "flags refresh failed, keeping the cached document");
                }
            }
        })
    }
}
