use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::codec::{decode_vector, encode_vector};
use super::{is_outage, Keys, StoreError, SCHEMA_VERSION};
use crate::ingest::StoredProgress;
use crate::model::{ItemState, ModelConfig, UserState};
use crate::resilience::{CircuitBreaker, Guarded};

/// Where and how to reach Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Redis URL (default `redis://127.0.0.1:16379/`, the port `scripts/dev-up.sh` uses).
    pub url: String,
    /// Key namespace (default `es`).
    pub namespace: String,
    /// Connect timeout, ms (default 2000).
    pub connect_timeout_ms: u64,
    /// Timeout of one command or transaction, ms (default 5000).
    pub command_timeout_ms: u64,
    /// The `redis` circuit breaker (shared by ingest and HTTP calls).
    pub breaker: crate::resilience::BreakerConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:16379/".to_owned(),
            namespace: "es".to_owned(),
            connect_timeout_ms: 2000,
            command_timeout_ms: 5000,
            breaker: crate::resilience::BreakerConfig::default(),
        }
    }
}

/// Model-wide fields of `{ns}:meta`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMeta {
    /// Embedding dimension.
    pub dim: usize,
    /// Model configuration the state was built with.
    pub model_config: ModelConfig,
    /// Events applied.
    pub events_applied: u64,
    /// End of the last closed window, ms.
    pub closed_until: i64,
    /// Negative-sampling pool (item rows) and next write position.
    pub negative_pool: (Vec<u32>, usize),
}

/// One flush: everything changed since the previous one, written atomically.
#[derive(Debug, Clone)]
pub struct FlushBatch {
    /// Changed users.
    pub users: Vec<UserState>,
    /// Changed items.
    pub items: Vec<ItemState>,
    /// Model-wide fields.
    pub meta: StoredMeta,
    /// Topic the progress belongs to.
    pub topic: String,
    /// Progress of every assigned partition.
    pub progress: Vec<(i32, StoredProgress)>,
}

/// A blocking Redis connection with timeouts, for the ingest thread.
pub struct SyncStore {
    client: redis::Client,
    connection: Option<redis::Connection>,
    keys: Keys,
    config: StoreConfig,
    breaker: Option<Arc<CircuitBreaker>>,
}

impl std::fmt::Debug for SyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncStore").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl SyncStore {
    /// A store for `config`; connects lazily.
    ///
    /// # Errors
    /// [`StoreError::Redis`] for an unparseable URL.
    pub fn new(config: &StoreConfig) -> Result<Self, StoreError> {
        Ok(Self {
            client: redis::Client::open(config.url.as_str())?,
            connection: None,
            keys: Keys::new(&config.namespace),
            config: config.clone(),
            breaker: None,
        })
    }

    /// Guards every call with `breaker`: refused at once while it is open, outages (IO
    /// errors, timeouts) counted against it.
    #[must_use]
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, StoreError> {
        if self.connection.is_none() {
            let timeout = Duration::from_millis(self.config.connect_timeout_ms);
            let connection = self.client.get_connection_with_timeout(timeout)?;
            let command_timeout = Some(Duration::from_millis(self.config.command_timeout_ms));
            connection.set_read_timeout(command_timeout)?;
            connection.set_write_timeout(command_timeout)?;
            self.connection = Some(connection);
        }
        self.connection.as_mut().ok_or_else(|| StoreError::Corrupt {
            key: String::new(),
            field: "connection",
            reason: "no connection".to_owned(),
        })
    }

    /// Runs `f` on the connection; drops the connection after an IO-level failure so the next
    /// call reconnects.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection, &Keys) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let Some(breaker) = self.breaker.clone() else { return self.attempt(f) };
        let outage = |error: &StoreError| matches!(error, StoreError::Redis(e) if is_outage(e));
        breaker.call_blocking(outage, || self.attempt(f)).map_err(|error| match error {
            Guarded::Open(open) => StoreError::Unavailable(open),
            Guarded::Inner(error) => error,
        })
    }

    fn attempt<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection, &Keys) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let keys = self.keys.clone();
        let connection = match self.connection() {
            Ok(connection) => connection,
            Err(error) => {
                self.connection = None;
                return Err(error);
            }
        };
        let result = f(connection, &keys);
        if let Err(error) = &result {
            if is_outage(error) {
                self.connection = None;
            }
        }
        Ok(result?)
    }

    /// PING.
    ///
    /// # Errors
    /// [`StoreError::Redis`] when Redis does not answer.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.with(|connection, _| redis::cmd("PING").query::<String>(connection).map(|_| ()))
    }

    /// Writes one flush in a single MULTI/EXEC transaction.
    ///
    /// # Errors
    /// [`StoreError::Redis`]; then nothing of the batch was applied.
    pub fn write_flush(&mut self, batch: &FlushBatch) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let keys = self.keys.clone();
        for user in &batch.users {
            pipe.cmd("HSET")
                .arg(keys.user(&user.id))
                .arg("vector")
                .arg(encode_vector(&user.vector))
                .arg("events")
                .arg(user.events)
                .arg("last_ts")
                .arg(user.last_ts)
                .arg("seen")
                .arg(serde_json::to_string(&user.seen).unwrap_or_else(|_| "[]".to_owned()))
                .arg("adagrad")
                .arg(user.adagrad.to_string())
                .ignore();
        }
        if !batch.users.is_empty() {
            pipe.cmd("SADD")
                .arg(keys.users())
                .arg(batch.users.iter().map(|u| &u.id).collect::<Vec<_>>())
                .ignore();
        }
        for item in &batch.items {
            pipe.cmd("HSET")
                .arg(keys.item(&item.id))
                .arg("vector")
                .arg(encode_vector(&item.vector))
                .arg("context")
                .arg(encode_vector(&item.context))
                .arg("bias")
                .arg(item.bias.to_string())
                .arg("row")
                .arg(item.row)
                .arg("events")
                .arg(item.events)
                .arg("last_ts")
                .arg(item.last_ts)
                .arg("popularity_log")
                .arg(item.popularity_log.to_string())
                .arg("adagrad")
                .arg(item.adagrad.to_string())
                .arg("context_adagrad")
                .arg(item.context_adagrad.to_string())
                .ignore();
            pipe.cmd("ZADD").arg(keys.items()).arg(item.row).arg(&item.id).ignore();
        }
        let meta = &batch.meta;
        let pool: Vec<u8> = meta.negative_pool.0.iter().flat_map(|row| row.to_le_bytes()).collect();
        pipe.cmd("HSET")
            .arg(keys.meta())
            .arg("schema_version")
            .arg(SCHEMA_VERSION)
            .arg("dim")
            .arg(meta.dim)
            .arg("seed")
            .arg(meta.model_config.seed)
            .arg("model_config")
            .arg(serde_json::to_string(&meta.model_config).unwrap_or_default())
            .arg("events_applied")
            .arg(meta.events_applied)
            .arg("closed_until")
            .arg(meta.closed_until)
            .arg("negative_pool")
            .arg(pool)
            .arg("negative_pool_next")
            .arg(meta.negative_pool.1)
            .ignore();
        if !batch.progress.is_empty() {
            let mut progress = redis::cmd("HSET");
            progress.arg(keys.progress(&batch.topic));
            for (partition, stored) in &batch.progress {
                progress.arg(partition).arg(serde_json::to_string(stored).unwrap_or_default());
            }
            pipe.add_command(progress).ignore();
        }
        self.with(|connection, _| pipe.query::<()>(connection))
    }

    /// Reads `{ns}:meta`; `None` for an empty namespace.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures or malformed fields.
    pub fn load_meta(&mut self) -> Result<Option<StoredMeta>, StoreError> {
        let key = self.keys.meta();
        let fields: HashMap<String, Vec<u8>> =
            self.with(|connection, keys| redis::cmd("HGETALL").arg(keys.meta()).query(connection))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let text = |field: &'static str| -> Result<String, StoreError> {
            let bytes = fields.get(field).ok_or_else(|| StoreError::Corrupt {
                key: key.clone(),
                field,
                reason: "missing".to_owned(),
            })?;
            String::from_utf8(bytes.clone()).map_err(|error| StoreError::Corrupt {
                key: key.clone(),
                field,
                reason: error.to_string(),
            })
        };
        let model_config: ModelConfig = serde_json::from_str(&text("model_config")?)
            .map_err(|error| corrupt(&key, "model_config", error))?;
        let pool_bytes = fields.get("negative_pool").cloned().unwrap_or_default();
        let pool = pool_bytes
            .chunks_exact(4)
            .map(|chunk| u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        Ok(Some(StoredMeta {
            dim: parse(&key, "dim", &text("dim")?)?,
            model_config,
            events_applied: parse(&key, "events_applied", &text("events_applied")?)?,
            closed_until: parse(&key, "closed_until", &text("closed_until")?)?,
            negative_pool: (pool, parse(&key, "negative_pool_next", &text("negative_pool_next")?)?),
        }))
    }

    /// Every item in row order.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures or malformed values.
    pub fn load_items(&mut self, dim: usize) -> Result<Vec<ItemState>, StoreError> {
        let ids: Vec<String> = self.with(|connection, keys| {
            redis::cmd("ZRANGE").arg(keys.items()).arg(0).arg(-1).query(connection)
        })?;
        let mut items = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(512) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGETALL").arg(self.keys.item(id));
            }
            let rows: Vec<HashMap<String, Vec<u8>>> =
                self.with(|connection, _| pipe.query(connection))?;
            for (id, fields) in chunk.iter().zip(rows) {
                items.push(item_from_fields(&self.keys.item(id), id, &fields, dim)?);
            }
        }
        Ok(items)
    }

    /// Ids of every stored user.
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub fn user_ids(&mut self) -> Result<HashSet<String>, StoreError> {
        self.with(|connection, keys| redis::cmd("SMEMBERS").arg(keys.users()).query(connection))
    }

    /// One user, if stored.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures or malformed values.
    pub fn load_user(&mut self, id: &str, dim: usize) -> Result<Option<UserState>, StoreError> {
        let key = self.keys.user(id);
        let fields: HashMap<String, Vec<u8>> =
            self.with(|connection, _| redis::cmd("HGETALL").arg(&key).query(connection))?;
        if fields.is_empty() {
            return Ok(None);
        }
        user_from_fields(&key, id, &fields, dim).map(Some)
    }

    /// Stored progress of one partition.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures or a malformed value.
    pub fn load_progress(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<StoredProgress>, StoreError> {
        let key = self.keys.progress(topic);
        let value: Option<String> = self
            .with(|connection, _| redis::cmd("HGET").arg(&key).arg(partition).query(connection))?;
        value
            .map(|text| {
                serde_json::from_str(&text).map_err(|error| corrupt(&key, "partition", error))
            })
            .transpose()
    }
}

fn corrupt(key: &str, field: &'static str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { key: key.to_owned(), field, reason: error.to_string() }
}

fn parse<T: std::str::FromStr>(key: &str, field: &'static str, text: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|error| corrupt(key, field, error))
}

fn field_text<'a>(
    key: &str,
    fields: &'a HashMap<String, Vec<u8>>,
    field: &'static str,
) -> Result<&'a str, StoreError> {
    let bytes = fields.get(field).ok_or_else(|| corrupt(key, field, "missing"))?;
    std::str::from_utf8(bytes).map_err(|error| corrupt(key, field, error))
}

fn vector_field(
    key: &str,
    fields: &HashMap<String, Vec<u8>>,
    dim: usize,
) -> Result<Vec<f32>, StoreError> {
    let bytes = fields.get("vector").ok_or_else(|| corrupt(key, "vector", "missing"))?;
    decode_vector(bytes, Some(dim)).map_err(|error| corrupt(key, "vector", error))
}

/// An accumulator field; absent (written before it existed) reads as 0, the fresh value.
fn optional_number(
    key: &str,
    fields: &HashMap<String, Vec<u8>>,
    field: &'static str,
) -> Result<f32, StoreError> {
    if !fields.contains_key(field) {
        return Ok(0.0);
    }
    let value: f32 = parse(key, field, field_text(key, fields, field)?)?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(corrupt(key, field, "must be a finite number >= 0"))
    }
}

/// The item's context vector; an item written before context vectors existed has none and
/// restores with the zero vector, which is what a fresh model holds for it.
fn context_field(
    key: &str,
    fields: &HashMap<String, Vec<u8>>,
    dim: usize,
) -> Result<Vec<f32>, StoreError> {
    match fields.get("context") {
        None => Ok(vec![0.0; dim]),
        Some(bytes) => {
            decode_vector(bytes, Some(dim)).map_err(|error| corrupt(key, "context", error))
        }
    }
}

/// Parses a user hash.
pub fn user_from_fields(
    key: &str,
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
    dim: usize,
) -> Result<UserState, StoreError> {
    let seen: Vec<String> = match fields.get("seen") {
        Some(bytes) => {
            serde_json::from_slice(bytes).map_err(|error| corrupt(key, "seen", error))?
        }
        None => Vec::new(),
    };
    Ok(UserState {
        id: id.to_owned(),
        vector: vector_field(key, fields, dim)?,
        events: parse(key, "events", field_text(key, fields, "events")?)?,
        last_ts: parse(key, "last_ts", field_text(key, fields, "last_ts")?)?,
        seen,
        adagrad: optional_number(key, fields, "adagrad")?,
    })
}

/// Parses an item hash.
pub fn item_from_fields(
    key: &str,
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
    dim: usize,
) -> Result<ItemState, StoreError> {
    Ok(ItemState {
        id: id.to_owned(),
        row: parse(key, "row", field_text(key, fields, "row")?)?,
        vector: vector_field(key, fields, dim)?,
        context: context_field(key, fields, dim)?,
        adagrad: optional_number(key, fields, "adagrad")?,
        context_adagrad: optional_number(key, fields, "context_adagrad")?,
        bias: parse(key, "bias", field_text(key, fields, "bias")?)?,
        events: parse(key, "events", field_text(key, fields, "events")?)?,
        last_ts: parse(key, "last_ts", field_text(key, fields, "last_ts")?)?,
        popularity_log: parse(key, "popularity_log", field_text(key, fields, "popularity_log")?)?,
    })
}
