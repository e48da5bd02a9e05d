//! Redis layout and codec: the durable copy of the learned state.
//!
//! Every key starts with the namespace (default `es`), so a rebuild can fill a new namespace and
//! readers switch by configuration; with `store.cluster` the prefix is the hash tag `{es}`, so
//! that a namespace is one slot of a Redis Cluster (see [`connection`]). Key layout (`{ns}` =
//! the prefix):
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `{ns}:meta` | hash | `schema_version` (2), `dim`, `seed`, `model_config` (JSON), `events_applied`, `closed_until` (ms, window state), `negative_pool_next` |
//! | `{ns}:negative_pool` | string | the negative-sampling pool, u32 LE item rows (a ring; flushes write the changed slots) |
//! | `{ns}:user:{user_id}` | hash | `vector` (ESV1 value, see [`codec`]), `events`, `last_ts` (ms), `adagrad` |
//! | `{ns}:seen:{user_id}` | list | seen item ids, oldest first, at most `seen_items_per_user`; an item seen again moves to the end; the last `context_items` form the query's context (schema 1 kept them as JSON in the user hash's `seen` field, which still loads) |
//! | `{ns}:staging:{token}[:{key}]` | set, copies | a flush larger than `ingest.flush_max_entities` in flight (see [`write`]) |
//! | `{ns}:users` | set | every user id |
//! | `{ns}:item:{item_id}` | hash | `vector` (ESV1), `context` (ESV1, the context vector c_i of the query; absent in namespaces written before it, read as zero), `bias` (decimal f32), `row` (first-appearance order), `events`, `last_ts` (ms), `popularity_log` (decimal f64) |
//! | `{ns}:items` | sorted set | item id scored by `row` |
//! | `{ns}:progress:{topic}` | hash | partition number to JSON `{"resume": offset, "done": [[first, last], ...]}` |
//! | `{ns}:epoch` | string | the namespace epoch: 32 random hex digits, set once; every flush checks it (see [`epoch`]) |
//! | `{ns}:flags` | string | the feature-flags document as JSON (see [`crate::flags`]), replaced whole |
//! | `{ns}:auth:revoked:{jti}` | string | `1`; TTL = the revoked access token's remaining life |
//! | `{ns}:auth:revocation_list` | sorted set | every revoked `jti` scored by its token's `exp` (s since the epoch); what instances re-read (see [`crate::auth::revocations`]) |
//! | `{ns}:auth:refresh:{sha256}` | hash | `used` (0/1), `client_id`, `scope`, `family`; key = hex SHA-256 of the refresh token; TTL `auth.refresh_ttl_s` |
//! | `{ns}:auth:family:{id}` | string | `active` or `revoked`; TTL `auth.refresh_ttl_s`, renewed on each rotation |
//! | `embedstream:aliases` | hash | alias to namespace, outside every namespace (see [`aliases`]) |
//!
//! One flush is one `MULTI`/`EXEC` transaction holding the changed users and items, the meta
//! fields and the progress of every assigned partition: state and offsets move together (a
//! flush beyond `ingest.flush_max_entities` stages its excess first; see [`write`]). It
//! is committed only while `{ns}:epoch` holds the epoch the writer attached to, so a namespace
//! that Redis lost (restarted empty, flushed) is noticed, never silently refilled in part.
//! Every ingest-side call has a deadline that holds against a server that never answers
//! (`store/blocking.rs`).
//! Floats are written with Rust's shortest round-trip formatting, so they read back bit-exact.

pub mod aliases;
mod blocking;
pub mod codec;
mod connection;
pub mod epoch;
pub mod evidence;
mod redis_async;
mod redis_sync;
pub mod write;

pub(crate) use connection::slot_ranges;
pub use connection::StoreConnection;
pub use redis_async::{is_outage, AsyncRedis, RedisUnavailable};

pub use redis_sync::{
    item_from_fields, user_from_fields, user_with_seen, ItemChange, ItemFeed, StoreConfig,
    StoredMeta, SyncStore,
};
pub use write::{FlushBatch, ItemWrite, PoolWrite, UserWrite};

/// Schema version written to `{ns}:meta`: 2 since seen lists and the negative pool have keys
/// of their own (1 kept them in the user hash and the meta hash; both still load).
pub const SCHEMA_VERSION: u32 = 2;

/// Key names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    namespace: String,
    /// What every key starts with: the namespace, or `{namespace}` (a hash tag) for a cluster.
    prefix: String,
}

impl Keys {
    /// Keys under `namespace`, for a single Redis: `{ns}:...` is `namespace:...`.
    pub fn new(namespace: &str) -> Self {
        Self { namespace: namespace.to_owned(), prefix: namespace.to_owned() }
    }
    /// Keys under `namespace` for a Redis Cluster: every key starts with the hash tag
    /// `{namespace}`, so that all of them hash to one slot and a flush stays one transaction.
    pub fn hash_tagged(namespace: &str) -> Self {
        Self { namespace: namespace.to_owned(), prefix: format!("{{{namespace}}}") }
    }
    /// Keys of `namespace` in the layout `config` asks for (hash-tagged when `store.cluster`).
    pub fn of(config: &StoreConfig, namespace: &str) -> Self {
        if config.cluster {
            Self::hash_tagged(namespace)
        } else {
            Self::new(namespace)
        }
    }
    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// What every key of the namespace starts with, before its `:`: the namespace, or
    /// `{namespace}` with a cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `{ns}:meta`.
    pub fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }
    /// `{ns}:user:{id}`.
    pub fn user(&self, id: &str) -> String {
        format!("{}:user:{id}", self.prefix)
    }
    /// `{ns}:quarantine:user:{id}`: where a stored user record that cannot be decoded is moved
    /// (kept for inspection) before the user starts over.
    pub fn quarantined_user(&self, id: &str) -> String {
        format!("{}:quarantine:user:{id}", self.prefix)
    }
    /// `{ns}:quarantine:item:{id}`: a copy of a stored item whose vector could not take a
    /// delta (not an ESV1 value of the model's dimension), kept for inspection.
    pub fn quarantined_item(&self, id: &str) -> String {
        format!("{}:quarantine:item:{id}", self.prefix)
    }
    /// `{ns}:seen:{id}`: the user's seen list, oldest first.
    pub fn seen(&self, id: &str) -> String {
        format!("{}:seen:{id}", self.prefix)
    }
    /// `{ns}:negative_pool`: the negative-sampling pool, u32 LE item rows.
    pub fn negative_pool(&self) -> String {
        format!("{}:negative_pool", self.prefix)
    }
    /// `{ns}:staging:{token}`: the names of the keys a flush of process `token` staged.
    pub fn staging(&self, token: &str) -> String {
        format!("{}:staging:{token}", self.prefix)
    }
    /// `{ns}:staging:{token}:`: the prefix of a staged key's name.
    pub fn staging_prefix(&self, token: &str) -> String {
        format!("{}:staging:{token}:", self.prefix)
    }
    /// `{ns}:users`.
    pub fn users(&self) -> String {
        format!("{}:users", self.prefix)
    }
    /// `{ns}:item:{id}`.
    pub fn item(&self, id: &str) -> String {
        format!("{}:item:{id}", self.prefix)
    }
    /// `{ns}:items`.
    pub fn items(&self) -> String {
        format!("{}:items", self.prefix)
    }
    /// `{ns}:item_changes`: the stream of item writes every instance follows (issue 10).
    pub fn item_changes(&self) -> String {
        format!("{}:item_changes", self.prefix)
    }
    /// `{ns}:flush:{token}`: the number of the last flush process `token` committed.
    pub fn flush_marker(&self, token: &str) -> String {
        format!("{}:flush:{token}", self.prefix)
    }
    /// `{ns}:progress:{topic}`.
    pub fn progress(&self, topic: &str) -> String {
        format!("{}:progress:{topic}", self.prefix)
    }
    /// `{ns}:epoch`: the namespace epoch (see [`epoch`]).
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
    /// `{ns}:flags`: the feature-flags document (JSON string).
    pub fn flags(&self) -> String {
        format!("{}:flags", self.prefix)
    }
    /// `{ns}:auth:revocations`: the pub/sub channel announcing each revoked `jti`.
    pub fn auth_revocations_channel(&self) -> String {
        format!("{}:auth:revocations", self.prefix)
    }
    /// `{ns}:auth:revoked:{jti}`: a revoked access token.
    pub fn auth_revoked(&self, jti: &str) -> String {
        format!("{}:auth:revoked:{jti}", self.prefix)
    }
    /// `{ns}:auth:revocation_list`: every revoked `jti`, scored by its token's `exp`.
    pub fn auth_revocation_list(&self) -> String {
        format!("{}:auth:revocation_list", self.prefix)
    }
    /// `{ns}:auth:refresh:{sha256_hex}`: a refresh token, by the hash of its value.
    pub fn auth_refresh(&self, token_hash: &str) -> String {
        format!("{}:auth:refresh:{token_hash}", self.prefix)
    }
    /// `{ns}:auth:family:{id}`: the state of a refresh-token family.
    pub fn auth_family(&self, family: &str) -> String {
        format!("{}:auth:family:{family}", self.prefix)
    }
}

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection, timeout or command error (an external dependency: retrying can help).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The `redis` circuit breaker is open: not tried.
    #[error(transparent)]
    Unavailable(#[from] crate::resilience::BreakerOpen),
    /// A stored value is malformed (a bug or a foreign writer: retrying cannot help).
    #[error("redis key {key} field {field}: {reason}")]
    Corrupt { key: String, field: &'static str, reason: String },
    /// No answer within the deadline (an external dependency: retrying can help).
    #[error("redis {operation} timed out after {ms} ms")]
    Timeout { operation: &'static str, ms: u64 },
    /// The private runtime that drives the connection could not be built.
    #[error("redis client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Redis no longer holds the namespace this writer attached to: it was restarted without
    /// its data or flushed (`found` is `None`), or another writer recreated it after such a
    /// loss. Nothing of the flush was written.
    #[error(
        "redis lost namespace {namespace} (restarted without its data, or flushed): \
         epoch {found:?}, expected {expected}"
    )]
    NamespaceLost { namespace: String, expected: String, found: Option<String> },
    /// The flush transaction was discarded because the epoch key changed between the check and
    /// `EXEC`; nothing was written (the next flush checks again).
    #[error("flush to namespace {namespace} discarded: its epoch changed during the transaction")]
    FlushAborted { namespace: String },
    /// A flush of this process whose outcome was unknown (its `EXEC` timed out) committed
    /// after all; the flush that found it was not tried (the caller marks flush `seq` stored,
    /// then flushes what is left).
    #[error("an earlier flush ({seq}) committed late; the current one was not tried")]
    EarlierFlushCommitted { seq: u64 },
    /// A flush was attempted before [`SyncStore::attach_epoch`].
    #[error("flush to namespace {namespace} before its epoch was read")]
    NotAttached { namespace: String },
    /// This writer was fenced off for good (the ingest engine halted: a failed flush on revoke,
    /// or state Redis lost that lived only there); nothing was written.
    #[error("writes to namespace {namespace} are fenced off: {reason}")]
    Fenced { namespace: String, reason: String },
    /// The namespace holds a model of another shape.
    #[error(
        "namespace {namespace} holds a model with {field} = {stored}, configured {configured}"
    )]
    Incompatible { namespace: String, field: &'static str, stored: String, configured: String },
    /// A namespace cannot be dropped while aliases point at it.
    #[error("namespace {namespace} is the target of alias(es) {aliases:?}: switch them first")]
    AliasedNamespace { namespace: String, aliases: Vec<String> },
}

impl StoreError {
    /// Whether retrying can help: Redis unreachable, slow, still loading its data set, or the
    /// breaker open. A malformed or incompatible stored value, or a command Redis refuses, stays
    /// as it is however often it is retried.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Redis(error) => {
                is_outage(error)
                    || connection::is_cluster_redirect(error)
                    || matches!(
                        error.code(),
                        Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN")
                    )
            }
            Self::Unavailable(_)
            | Self::Timeout { .. }
            | Self::NamespaceLost { .. }
            | Self::FlushAborted { .. }
            | Self::EarlierFlushCommitted { .. } => true,
            Self::Corrupt { .. }
            | Self::Incompatible { .. }
            | Self::Runtime(_)
            | Self::NotAttached { .. }
            | Self::Fenced { .. }
            | Self::AliasedNamespace { .. } => false,
        }
    }
}
