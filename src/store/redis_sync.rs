use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::StoreConnection;
use serde::{Deserialize, Serialize};

use super::blocking::BlockingConnection;
use super::codec::decode_vector;
use super::{Keys, StoreError};
use crate::ingest::StoredProgress;
use crate::model::{ItemState, ModelConfig, SeenWrite, UserState};
use crate::resilience::{CircuitBreaker, Guarded};

/// Where and how to reach Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Redis URL (default `redis://127.0.0.1:16379/`, the port `scripts/dev-up.sh` uses).
    /// With `cluster`, one or more seed nodes of the cluster separated by commas
    /// (`redis://10.0.0.1:7000/,redis://10.0.0.2:7000/`); the others are discovered.
    pub url: String,
    /// Talk to a Redis Cluster (default false: a single server). Every key of a namespace
    /// then starts with the hash tag `{namespace}` instead of `namespace`, so the namespace
    /// lives in one hash slot and each flush stays one transaction; `MOVED`, `ASK` and
    /// `TRYAGAIN` are followed (see `store/connection.rs`). A namespace written to a single
    /// server is not read by a cluster configuration, nor the reverse (the key names differ).
    pub cluster: bool,
    /// Key namespace (default `es`): the home of sessions, flags, auth and rate limits, and
    /// of the learned state unless `alias` is set.
    pub namespace: String,
    /// Serve and ingest the namespace this alias points at (`embedstream:aliases`, see
    /// [`super::aliases`]) instead of `namespace`, and follow it when it is switched, without
    /// a restart. Empty (the default): no alias. An alias that does not exist yet is created
    /// pointing at `namespace`.
    pub alias: String,
    /// How often a running instance reads its alias, ms (default 1000, >= 1): a switch takes
    /// effect within this, plus the restore of the new namespace.
    pub alias_poll_ms: u64,
    /// Deadline to open a connection, ms (default 2000; at least 1).
    pub connect_timeout_ms: u64,
    /// Deadline of one call (a command, a pipeline, or a whole flush), ms, held against a
    /// server that never answers (default 5000; at least 1).
    pub command_timeout_ms: u64,
    /// The `redis` circuit breaker (shared by ingest and HTTP calls).
    pub breaker: crate::resilience::BreakerConfig,
}

impl StoreConfig {
    /// The seed nodes of a cluster: `url` split at commas, blanks dropped.
    pub fn seeds(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|seed| !seed.is_empty()).collect()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:16379/".to_owned(),
            cluster: false,
            namespace: "es".to_owned(),
            alias: String::new(),
            alias_poll_ms: 1000,
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
    /// The layout version the namespace was written with (as read; a flush that writes the
    /// configuration writes [`super::SCHEMA_VERSION`]).
    pub schema_version: u32,
}

/// A blocking Redis store for the ingest thread: every call under a deadline (see
/// `store/blocking.rs`), guarded by the `redis` breaker, and every flush checked against the
/// namespace epoch (see [`super::epoch`]).
///
/// # Panics
/// Its calls block on a private runtime: call them from a plain thread or `spawn_blocking`,
/// never from async code running on a tokio runtime (tokio refuses to block a runtime thread).
pub struct SyncStore {
    connection: BlockingConnection,
    pub(super) keys: Keys,
    breaker: Option<Arc<CircuitBreaker>>,
    /// The namespace epoch this store has seen (`None` until [`SyncStore::attach_epoch`]).
    pub(super) epoch: Option<String>,
    /// When the epoch was last checked (an attempt, whatever its outcome) or confirmed by a
    /// committed flush.
    pub(super) epoch_checked: Option<Instant>,
    /// Names this process's staging keys apart from other writers' (see [`super::write`]).
    pub(super) stage_token: String,
    /// The bound of a seen list (`model.seen_items_per_user`).
    pub(super) seen_bound: usize,
    /// At most this many users and items per flush transaction (`ingest.flush_max_entities`).
    pub(super) max_entities: usize,
    /// The number of the last flush known to have committed (see [`super::epoch`]).
    pub(super) committed_seq: Option<u64>,
    /// The last flush's final transaction passed the marker check (see [`super::epoch`]).
    pub(super) final_checked: bool,
    /// The last flush's final transaction sent `EXEC`.
    pub(super) final_sent: bool,
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
            connection: BlockingConnection::new(config)?,
            keys: Keys::of(config, &config.namespace),
            breaker: None,
            epoch: None,
            epoch_checked: None,
            stage_token: format!("{:016x}", rand::random::<u64>()),
            seen_bound: ModelConfig::default().seen_items_per_user,
            max_entities: 10_000,
            committed_seq: None,
            final_checked: false,
            final_sent: false,
        })
    }

    /// Sets the bound of a seen list (`model.seen_items_per_user`) and the most users and
    /// items one flush transaction holds (`ingest.flush_max_entities`; see [`super::write`]).
    #[must_use]
    pub fn with_flush_limits(mut self, seen_bound: usize, max_entities: usize) -> Self {
        self.seen_bound = seen_bound;
        self.max_entities = max_entities.max(1);
        self
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

    /// Whether the namespace epoch was checked (or confirmed by a flush) less than `interval`
    /// ago.
    pub fn epoch_checked_within(&self, interval: Duration) -> bool {
        self.epoch_checked.is_some_and(|at| at.elapsed() < interval)
    }

    /// Drops the connection after a large command, giving its buffers back (see
    /// [`BlockingConnection::release`]).
    pub(super) fn release_connection(&mut self) {
        self.connection.release();
    }

    /// The `redis` breaker the calls go through, if any.
    pub(super) fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.breaker.as_ref()
    }

    /// Runs `call` under the deadline and the breaker.
    pub(super) fn with<T, F, Fut>(
        &mut self,
        operation: &'static str,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(StoreConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Some(breaker) = self.breaker.clone() else {
            return self.connection.call(operation, call);
        };
        breaker
            .call_blocking(StoreError::is_outage, || self.connection.call(operation, call))
            .map_err(|error| match error {
                Guarded::Open(open) => StoreError::Unavailable(open),
                Guarded::Inner(error) => error,
            })
    }

    /// PING.
    ///
    /// # Errors
    /// [`StoreError::Redis`] when Redis does not answer.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.with("ping", |mut connection| async move {
            redis::cmd("PING").query_async::<String>(&mut connection).await.map(|_| ())
        })
    }

    /// Reads `{ns}:meta`; `None` for an empty namespace.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures or malformed fields.
    pub fn load_meta(&mut self) -> Result<Option<StoredMeta>, StoreError> {
        let key = self.keys.meta();
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(&key);
        pipe.cmd("GET").arg(self.keys.negative_pool());
        let (fields, pool_key): (HashMap<String, Vec<u8>>, Option<Vec<u8>>) = self
            .with("load_meta", |mut connection| async move {
                pipe.query_async(&mut connection).await
            })?;
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
        // Schema 1 kept the pool in the meta hash.
        let pool_bytes =
            pool_key.or_else(|| fields.get("negative_pool").cloned()).unwrap_or_default();
        let schema_version = match fields.get("schema_version") {
            Some(_) => parse(&key, "schema_version", &text("schema_version")?)?,
            None => 1,
        };
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
            schema_version,
        }))
    }

    /// Every item in row order.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures or malformed values.
    pub fn load_items(&mut self, dim: usize) -> Result<Vec<ItemState>, StoreError> {
        let command = redis::cmd("ZRANGE").arg(self.keys.items()).arg(0).arg(-1).to_owned();
        let ids: Vec<String> = self.with("load_items", |mut connection| async move {
            command.query_async(&mut connection).await
        })?;
        let keys: Vec<String> = ids.iter().map(|id| self.keys.item(id)).collect();
        let rows = self.hashes("load_items", &keys)?;
        ids.iter()
            .zip(&keys)
            .zip(rows)
            .map(|((id, key), fields)| item_from_fields(key, id, &fields, dim))
            .collect()
    }

    /// Claims an empty namespace for a model: writes `meta` (configuration, zero counters) to
    /// `{ns}:meta` unless it exists, in one script, so that two instances starting together
    /// on a new namespace cannot both fold with different configurations. Returns whether the
    /// namespace already had a model, and the configuration it now holds.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures or a malformed stored configuration.
    pub fn claim_model(&mut self, meta: &StoredMeta) -> Result<(bool, ModelConfig), StoreError> {
        const CLAIM: &str = "\
local existed = redis.call('EXISTS', KEYS[1])
if existed == 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return {existed, redis.call('HGET', KEYS[1], 'model_config')}";
        let key = self.keys.meta();
        let command = redis::cmd("EVAL")
            .arg(CLAIM)
            .arg(1)
            .arg(&key)
            .arg("schema_version")
            .arg(super::SCHEMA_VERSION)
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
            .arg("negative_pool_next")
            .arg(meta.negative_pool.1)
            .to_owned();
        let (existed, stored): (i64, Option<String>) = self
            .with("claim_model", |mut connection| async move {
                command.query_async(&mut connection).await
            })?;
        let stored = stored.ok_or_else(|| StoreError::Corrupt {
            key: key.clone(),
            field: "model_config",
            reason: "missing".to_owned(),
        })?;
        let config =
            serde_json::from_str(&stored).map_err(|error| corrupt(&key, "model_config", error))?;
        Ok((existed == 1, config))
    }

    /// The newest entry of the item change feed (`{ns}:item_changes`), `0-0` when empty: read
    /// before the items, so that following from it misses no write.
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub fn item_feed_position(&mut self) -> Result<String, StoreError> {
        let command = redis::cmd("XREVRANGE")
            .arg(self.keys.item_changes())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .to_owned();
        let newest: Vec<(String, Vec<Vec<u8>>)> = self
            .with("item_feed", |mut connection| async move {
                command.query_async(&mut connection).await
            })?;
        Ok(newest.into_iter().next().map_or_else(|| "0-0".to_owned(), |(id, _)| id))
    }

    /// Item writes after feed entry `after`, at most `count` entries: the newest entry read and,
    /// per entry, its writer and the items with their new versions. `Gap` when entries after
    /// `after` may have been trimmed away (the follower must reload every item).
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub fn item_changes_after(
        &mut self,
        after: &str,
        count: usize,
    ) -> Result<ItemFeed, StoreError> {
        let key = self.keys.item_changes();
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE").arg(&key).arg("-").arg("+").arg("COUNT").arg(1);
        pipe.cmd("XRANGE").arg(&key).arg(format!("({after}")).arg("+").arg("COUNT").arg(count);
        type Entries = Vec<(String, Vec<Vec<u8>>)>;
        let (oldest, entries): (Entries, Entries) = self
            .with("item_feed", |mut connection| async move {
                pipe.query_async(&mut connection).await
            })?;
        if let Some((oldest, _)) = oldest.first() {
            if stream_id(oldest) > stream_id(after) && after != "0-0" {
                let newest = self.item_feed_position()?;
                return Ok(ItemFeed::Gap { newest });
            }
        }
        let newest = entries.last().map_or_else(|| after.to_owned(), |(id, _)| id.clone());
        let mut changes = Vec::new();
        for (_, fields) in entries {
            let mut pairs = fields.chunks_exact(2);
            let writer = match pairs.next() {
                Some([name, value]) if name == b"writer" => {
                    String::from_utf8_lossy(value).into_owned()
                }
                _ => String::new(),
            };
            for pair in pairs {
                let id = String::from_utf8_lossy(&pair[0]).into_owned();
                let version =
                    std::str::from_utf8(&pair[1]).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
                changes.push(ItemChange { writer: writer.clone(), id, version });
            }
        }
        Ok(ItemFeed::Changes { newest, changes })
    }

    /// The stored state of each of `ids` (`None`: absent or malformed, logged).
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub fn load_items_by_id(
        &mut self,
        ids: &[String],
        dim: usize,
    ) -> Result<Vec<Option<ItemState>>, StoreError> {
        let keys: Vec<String> = ids.iter().map(|id| self.keys.item(id)).collect();
        let rows = self.hashes("load_items", &keys)?;
        Ok(ids
            .iter()
            .zip(&keys)
            .zip(rows)
            .map(|((id, key), fields)| {
                if fields.is_empty() {
                    return None;
                }
                item_from_fields(key, id, &fields, dim)
                    .map_err(|error| tracing::warn!(%error, key = %key, "stored item unreadable, skipped"))
                    .ok()
            })
            .collect())
    }

    /// Ids of every stored user.
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub fn user_ids(&mut self) -> Result<HashSet<String>, StoreError> {
        let command = redis::cmd("SMEMBERS").arg(self.keys.users()).to_owned();
        self.with(
            "user_ids",
            |mut connection| async move { command.query_async(&mut connection).await },
        )
    }

    /// One user, if stored.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures or malformed values.
    pub fn load_user(&mut self, id: &str, dim: usize) -> Result<Option<UserState>, StoreError> {
        let mut loaded = self.load_users(&[id], dim)?;
        loaded.pop().unwrap_or(Ok(None)).map(|user| user.map(|(state, _)| state))
    }

    /// `HGETALL` of every key, pipelined 512 keys per round trip, in order (an empty map for a
    /// missing key).
    fn hashes(
        &mut self,
        operation: &'static str,
        keys: &[String],
    ) -> Result<Vec<HashMap<String, Vec<u8>>>, StoreError> {
        let mut rows = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(512) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HGETALL").arg(key);
            }
            let chunk_rows: Vec<HashMap<String, Vec<u8>>> = self
                .with(operation, |mut connection| async move {
                    pipe.query_async(&mut connection).await
                })?;
            rows.extend(chunk_rows);
        }
        Ok(rows)
    }

    /// Several users in one pipelined round trip per 256 ids (`HGETALL` of the hash and
    /// `LRANGE` of the seen list): for each id, `Ok(None)` when not stored (a new user),
    /// `Err(Corrupt)` when its record cannot be decoded, else the state and what the next flush
    /// must write of its seen list (all of it when it was stored in the older layout).
    ///
    /// # Errors
    /// [`StoreError::Redis`] when Redis does not answer (the outer error: retrying can help).
    #[allow(clippy::type_complexity)]
    pub fn load_users(
        &mut self,
        ids: &[&str],
        dim: usize,
    ) -> Result<Vec<Result<Option<(UserState, SeenWrite)>, StoreError>>, StoreError> {
        let mut users = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(256) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGETALL").arg(self.keys.user(id));
                pipe.cmd("LRANGE").arg(self.keys.seen(id)).arg(0).arg(-1);
            }
            let rows: Vec<(HashMap<String, Vec<u8>>, Vec<String>)> = self
                .with("load_users", |mut connection| async move {
                    pipe.query_async(&mut connection).await
                })?;
            for (id, (fields, seen)) in chunk.iter().zip(rows) {
                users.push(if fields.is_empty() {
                    Ok(None)
                } else {
                    user_with_seen(&self.keys.user(id), id, &fields, seen, dim).map(Some)
                });
            }
        }
        Ok(users)
    }

    /// Moves a user record that cannot be decoded to `{ns}:quarantine:user:{id}` (kept for
    /// inspection, replacing an older quarantined copy), so that the user starts over.
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub fn quarantine_user(&mut self, id: &str) -> Result<(), StoreError> {
        let (from, to) = (self.keys.user(id), self.keys.quarantined_user(id));
        // COPY + DEL in one transaction (not RENAME, which fails when the key is already gone).
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("COPY").arg(&from).arg(&to).arg("REPLACE").ignore();
        pipe.cmd("DEL").arg(&from).ignore();
        self.with("quarantine_user", |mut connection| async move {
            pipe.query_async::<()>(&mut connection).await
        })
    }

    /// How many users the namespace holds (`SCARD`, O(1)).
    ///
    /// # Errors
    /// [`StoreError::Redis`].
    pub fn stored_user_count(&mut self) -> Result<u64, StoreError> {
        let command = redis::cmd("SCARD").arg(self.keys.users()).to_owned();
        self.with("stored_user_count", |mut connection| async move {
            command.query_async(&mut connection).await
        })
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
        let command = redis::cmd("HGET").arg(&key).arg(partition).to_owned();
        let value: Option<String> = self.with("load_progress", |mut connection| async move {
            command.query_async(&mut connection).await
        })?;
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

/// Parses a user hash and its seen list (`{ns}:seen:{id}`, oldest first); a user stored in
/// the older layout has no list but a `seen` field (JSON), which the next flush rewrites.
pub fn user_with_seen(
    key: &str,
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
    seen: Vec<String>,
    dim: usize,
) -> Result<(UserState, SeenWrite), StoreError> {
    let mut user = user_from_fields(key, id, fields, dim)?;
    if seen.is_empty() && !user.seen.is_empty() {
        return Ok((user, SeenWrite::Whole));
    }
    user.seen = seen;
    Ok((user, SeenWrite::Newest(0)))
}

/// Parses a user hash (its `seen` field, JSON, is the older layout's seen list; see
/// [`user_with_seen`]).
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

/// One item written, from the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemChange {
    /// The writing process's token.
    pub writer: String,
    /// Item id.
    pub id: String,
    /// The item's version after the write.
    pub version: u64,
}

/// What [`SyncStore::item_changes_after`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemFeed {
    /// The writes after the position, and the newest entry read.
    Changes { newest: String, changes: Vec<ItemChange> },
    /// Entries after the position may be gone: reload everything, then follow from `newest`.
    Gap { newest: String },
}

/// A stream entry id as (ms, seq) for ordering.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
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
        version: match fields.get("version") {
            Some(_) => parse(key, "version", field_text(key, fields, "version")?)?,
            None => 0,
        },
    })
}
