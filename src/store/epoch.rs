//! The namespace epoch: how the ingest side notices that Redis lost the namespace (restarted
//! without persistence, `FLUSHALL`, `FLUSHDB`) instead of writing a partial state on top of
//! an empty one (issue 9, item 3).
//!
//! `{ns}:epoch` holds a random 128-bit id (32 hex digits), created once with `SET NX` when an
//! instance starts and never changed while the namespace lives. Every flush is
//!
//! ```text
//! WATCH {ns}:epoch; GET {ns}:epoch          -- one round trip
//! (value != the epoch this instance knows: UNWATCH, report the namespace lost)
//! MULTI; SET {ns}:epoch <epoch> XX; <users, items, meta, progress>; EXEC
//! ```
//!
//! so a flush never writes into a namespace that lost its data, even when the loss happens
//! between the check and `EXEC` (a restart drops the connection and with it the transaction;
//! `FLUSHALL`/`FLUSHDB` touch every watched key, which aborts `EXEC`). The `SET ... XX`
//! rewrites the watched key in every flush, which fences off a transaction abandoned after a
//! timeout but still buffered in a frozen server's socket: if a later flush commits first, the
//! abandoned one's `EXEC` finds its watched key modified and is discarded, so an older state
//! can never overwrite a newer one when the server wakes up.
//!
//! After a loss the owner of the state rewrites all of it with [`SyncStore::rewrite_namespace`],
//! which adopts the epoch another instance may already have recreated, or creates a new one.

use std::time::Instant;

use redis::aio::MultiplexedConnection;

use super::codec::encode_vector;
use super::{FlushBatch, Keys, StoreError, SyncStore, SCHEMA_VERSION};

/// What the epoch-checked transaction found.
enum Outcome {
    /// Committed; the namespace now has this epoch.
    Written(String),
    /// The stored epoch differs from the expected one (`None`: missing); nothing written.
    Lost(Option<String>),
    /// `EXEC` was discarded: the epoch key changed after the check; nothing written.
    Aborted,
}

/// Which epoch a transaction expects.
enum Expect {
    /// The stored epoch must equal this one.
    Same(String),
    /// Whatever is stored is adopted, and this new one is set when none is (a rewrite after a
    /// loss).
    Adopt(String),
}

impl SyncStore {
    /// Reads the namespace epoch, creating it first when the namespace has none (a new
    /// namespace, or one written by a version without epochs), and remembers it.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails.
    pub fn attach_epoch(&mut self) -> Result<String, StoreError> {
        let key = self.keys.epoch();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(new_epoch()).arg("NX").ignore();
        pipe.cmd("GET").arg(&key);
        let (epoch,): (String,) =
            self.with(
                "epoch",
                |mut connection| async move { pipe.query_async(&mut connection).await },
            )?;
        self.epoch = Some(epoch.clone());
        self.epoch_checked = Some(Instant::now());
        Ok(epoch)
    }

    /// Checks that the namespace still has the epoch this store attached to.
    ///
    /// # Errors
    /// [`StoreError::NamespaceLost`] when it differs or is missing; [`StoreError`] when Redis
    /// fails.
    pub fn check_epoch(&mut self) -> Result<(), StoreError> {
        self.epoch_checked = Some(Instant::now());
        let command = redis::cmd("GET").arg(self.keys.epoch()).to_owned();
        let found: Option<String> = self.with("epoch", |mut connection| async move {
            command.query_async(&mut connection).await
        })?;
        self.lost_unless_same(found)
    }

    /// Writes one flush in a single MULTI/EXEC transaction, checked against the epoch.
    ///
    /// # Errors
    /// [`StoreError::NamespaceLost`] when Redis no longer holds the namespace this store
    /// attached to (nothing written: rewrite everything with [`SyncStore::rewrite_namespace`]);
    /// [`StoreError::FlushAborted`] when the epoch changed during the transaction (nothing
    /// written); [`StoreError::Redis`], [`StoreError::Timeout`]: then the transaction may or
    /// may not have been applied, and a later successful flush supersedes it.
    pub fn write_flush(&mut self, batch: &FlushBatch) -> Result<(), StoreError> {
        let Some(epoch) = self.epoch.clone() else {
            return Err(StoreError::NotAttached { namespace: self.keys.namespace().to_owned() });
        };
        match self.transact(batch, Expect::Same(epoch))? {
            Outcome::Written(_) => {
                self.epoch_checked = Some(Instant::now());
                Ok(())
            }
            Outcome::Lost(found) => self.lost_unless_same(found),
            Outcome::Aborted => Err(self.aborted()),
        }
    }

    /// Writes a whole state (every user and item in memory, meta, progress) after the
    /// namespace was lost, in one transaction, and attaches to the namespace's new epoch:
    /// the one another instance recreated, or a new one.
    ///
    /// # Errors
    /// [`StoreError::FlushAborted`] when the epoch changed during the transaction;
    /// [`StoreError`] when Redis fails (retry with the whole state again).
    pub fn rewrite_namespace(&mut self, batch: &FlushBatch) -> Result<String, StoreError> {
        match self.transact(batch, Expect::Adopt(new_epoch()))? {
            Outcome::Written(epoch) => {
                self.epoch = Some(epoch.clone());
                self.epoch_checked = Some(Instant::now());
                Ok(epoch)
            }
            Outcome::Lost(_) | Outcome::Aborted => Err(self.aborted()),
        }
    }

    fn lost_unless_same(&self, found: Option<String>) -> Result<(), StoreError> {
        if found.is_some() && found == self.epoch {
            return Ok(());
        }
        Err(StoreError::NamespaceLost {
            namespace: self.keys.namespace().to_owned(),
            expected: self.epoch.clone().unwrap_or_default(),
            found,
        })
    }

    fn aborted(&self) -> StoreError {
        StoreError::FlushAborted { namespace: self.keys.namespace().to_owned() }
    }

    fn transact(&mut self, batch: &FlushBatch, expect: Expect) -> Result<Outcome, StoreError> {
        let key = self.keys.epoch();
        let mut body = redis::pipe();
        body.atomic();
        flush_commands(&mut body, &self.keys, batch);
        self.with("flush", |connection| transaction(connection, body, expect, key))
    }
}

/// The check, then the transaction with the epoch write last, on one connection within one
/// deadline.
async fn transaction(
    mut connection: MultiplexedConnection,
    mut body: redis::Pipeline,
    expect: Expect,
    key: String,
) -> redis::RedisResult<Outcome> {
    let mut check = redis::pipe();
    check.cmd("WATCH").arg(&key).ignore();
    check.cmd("GET").arg(&key);
    let (found,): (Option<String>,) = check.query_async(&mut connection).await?;
    let epoch = match expect {
        Expect::Same(epoch) if found.as_deref() == Some(epoch.as_str()) => {
            // XX: never recreate a key that vanished after the check.
            body.cmd("SET").arg(&key).arg(&epoch).arg("XX").ignore();
            epoch
        }
        Expect::Same(_) => {
            redis::cmd("UNWATCH").query_async::<()>(&mut connection).await?;
            return Ok(Outcome::Lost(found));
        }
        Expect::Adopt(fresh) => {
            let epoch = found.unwrap_or(fresh);
            body.cmd("SET").arg(&key).arg(&epoch).ignore();
            epoch
        }
    };
    let committed: Option<()> = body.query_async(&mut connection).await?;
    Ok(if committed.is_some() { Outcome::Written(epoch) } else { Outcome::Aborted })
}

/// 32 random hex digits.
fn new_epoch() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The state-writing commands of one flush: users, items, meta, progress.
fn flush_commands(pipe: &mut redis::Pipeline, keys: &Keys, batch: &FlushBatch) {
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
}
