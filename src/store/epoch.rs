//! The namespace epoch: how the ingest side notices that Redis lost the namespace (restarted
//! without persistence, `FLUSHALL`, `FLUSHDB`) instead of writing a partial state on top of
//! an empty one (issue 9, item 3).
//!
//! `{ns}:epoch` holds a random 128-bit id (32 hex digits), created once with `SET NX` when an
//! instance starts and never changed while the namespace lives. Every flush is
//!
//! ```text
//! WATCH {ns}:epoch {ns}:flush:{token}; GET {ns}:epoch; GET {ns}:flush:{token}   -- one round trip
//! (epoch != the epoch this instance knows: UNWATCH, report the namespace lost)
//! MULTI; <users, items, meta, progress>; SET {ns}:flush:{token} <flush number>; EXEC
//! ```
//!
//! A flush larger than `ingest.flush_max_entities` users is several such transactions: the
//! earlier ones write staging keys only, the last one makes everything visible with the
//! progress and the marker (see [`super::write`]).
//!
//! so a flush never writes into a namespace that lost its data, even when the loss happens
//! between the check and `EXEC` (a restart drops the connection and with it the transaction;
//! `FLUSHALL`/`FLUSHDB` touch every watched key, which aborts `EXEC`). The flush marker
//! `{ns}:flush:{token}` is private to the process (`token`) and rewritten by each of its
//! flushes, which fences off a transaction abandoned after a timeout but still buffered in a
//! frozen server's socket: if a later flush commits first, the abandoned one's `EXEC` finds its
//! watched marker modified and is discarded, so an older state can never overwrite a newer one
//! when the server wakes up; if the abandoned one commits first, the later flush finds its
//! number in the marker and reports it ([`StoreError::EarlierFlushCommitted`]) instead of adding
//! its item deltas a second time. The epoch itself is only read: several instances flush into
//! one namespace without aborting each other's transactions.
//!
//! After a loss the owner of the state rewrites all of it with [`SyncStore::rewrite_namespace`],
//! which adopts the epoch another instance may already have recreated, or creates a new one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::connection::StoreConnection;

use super::write::{encoded_len, transactions, LARGE_TRANSACTION_BYTES};
use super::{FlushBatch, StoreError, SyncStore};

/// What the epoch-checked transaction found.
enum Outcome {
    /// Committed; the namespace now has this epoch.
    Written(String),
    /// The stored epoch differs from the expected one (`None`: missing); nothing written.
    Lost(Option<String>),
    /// `EXEC` was discarded: the epoch key changed after the check; nothing written.
    Aborted,
    /// An earlier flush of this process, whose outcome was unknown (a timeout after its
    /// `EXEC` was sent), has committed since: this one was not tried.
    EarlierCommitted(u64),
}

/// Which epoch a transaction expects.
#[derive(Clone)]
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
                self.committed_seq = Some(batch.seq);
                Ok(())
            }
            Outcome::Lost(found) => self.lost_unless_same(found),
            Outcome::Aborted => Err(self.aborted()),
            Outcome::EarlierCommitted(seq) => {
                self.committed_seq = Some(seq);
                Err(StoreError::EarlierFlushCommitted { seq })
            }
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
                self.committed_seq = Some(batch.seq);
                Ok(epoch)
            }
            Outcome::Lost(_) | Outcome::Aborted | Outcome::EarlierCommitted(_) => {
                Err(self.aborted())
            }
        }
    }

    /// Whether the last flush's final transaction found the flush marker as expected: no
    /// earlier flush of this process committed, and none can any more (see [`Marker`]).
    pub fn last_flush_checked(&self) -> bool {
        self.final_checked
    }

    /// Whether the last flush got as far as sending `EXEC`: when it then failed (a timeout, a
    /// dropped connection, an error reply), it may have committed.
    pub fn last_flush_sent(&self) -> bool {
        self.final_sent
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

    /// Runs the flush's transactions in order (more than one when it holds more than
    /// `max_entities` users and items; see [`super::write`]), each checked against the epoch
    /// and under its own deadline; only the last writes the epoch (and, with it, the state
    /// where readers see it, meta and progress).
    fn transact(&mut self, batch: &FlushBatch, expect: Expect) -> Result<Outcome, StoreError> {
        let key = self.keys.epoch();
        let keys = self.keys.clone();
        let stage_token = self.stage_token.clone();
        let marker = Marker {
            key: keys.flush_marker(&stage_token),
            expected: self.committed_seq,
            seq: batch.seq,
            checked: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicBool::new(false)),
        };
        self.final_checked = false;
        self.final_sent = false;
        let (checked, sent) = (Arc::clone(&marker.checked), Arc::clone(&marker.sent));
        let breaker = self.breaker().cloned();
        let mut bodies =
            transactions(&keys, batch, self.seen_bound, self.max_entities, &stage_token).peekable();
        while let Some(body) = bodies.next() {
            let large = encoded_len(&body) > LARGE_TRANSACTION_BYTES;
            if bodies.peek().is_none() {
                let outcome = self.with("flush", |connection| {
                    transaction(connection, body, expect, key, Role::Final(marker), breaker)
                });
                if large {
                    self.release_connection();
                }
                self.final_checked = checked.load(Ordering::SeqCst);
                self.final_sent = sent.load(Ordering::SeqCst);
                return outcome;
            }
            let staged = self.with("flush", |connection| {
                transaction(
                    connection,
                    body,
                    expect.clone(),
                    key.clone(),
                    Role::Staging,
                    breaker.clone(),
                )
            });
            if large {
                self.release_connection();
            }
            let staged = staged?;
            if !matches!(staged, Outcome::Written(_)) {
                return Ok(staged);
            }
        }
        // transactions() always yields a final transaction; were it not to, nothing was made
        // visible, which is what an aborted flush means (the next flush tries again).
        Ok(Outcome::Aborted)
    }
}

/// Seconds a flush marker lives after the last flush of its process.
const MARKER_TTL_S: u64 = 86_400;

/// `{ns}:flush:{token}`: the number of the last flush this process committed. A flush whose
/// `EXEC` timed out may still commit later (a frozen server wakes up); the next final
/// transaction watches the marker and goes ahead only while it holds the number of the last
/// flush known to have committed, so a late commit is noticed
/// ([`StoreError::EarlierFlushCommitted`]) instead of having its item deltas and counters
/// added twice.
#[derive(Debug, Clone)]
struct Marker {
    key: String,
    expected: Option<u64>,
    seq: u64,
    /// Set once the marker held `expected`: every earlier flush of this process has then been
    /// executed or discarded by Redis (one connection, in order), none committed.
    checked: Arc<AtomicBool>,
    /// Set when `EXEC` is about to be sent: from here on a failure leaves the outcome unknown.
    sent: Arc<AtomicBool>,
}

/// Whether a transaction is the one that makes a flush visible.
#[derive(Debug, Clone)]
enum Role {
    /// Writes staging keys only: checked against the epoch, writes no epoch.
    Staging,
    /// Writes the epoch and the flush marker, last.
    Final(Marker),
}

/// The check, then the transaction with the epoch write last (final transactions only), on one
/// connection within one deadline. From the check's answer (Redis is alive) until the
/// transaction's answer, or its deadline, `breaker` counts Redis as occupied by this process:
/// Redis runs a transaction alone, and other calls of this process (the HTTP side's, with
/// budgets of tens of milliseconds) time out behind it, which is no outage
/// ([`crate::resilience::CircuitBreaker::occupy`]). A Redis frozen before the check is not
/// covered, so its timeouts count; one frozen during the transaction, for one deadline at most.
async fn transaction(
    mut connection: StoreConnection,
    mut body: redis::Pipeline,
    expect: Expect,
    key: String,
    role: Role,
    breaker: Option<Arc<crate::resilience::CircuitBreaker>>,
) -> redis::RedisResult<Outcome> {
    let mut check = redis::pipe();
    check.cmd("WATCH").arg(&key).ignore();
    if let Role::Final(marker) = &role {
        check.cmd("WATCH").arg(&marker.key).ignore();
    }
    check.cmd("GET").arg(&key);
    check.cmd("GET").arg(match &role {
        Role::Final(marker) => marker.key.as_str(),
        Role::Staging => key.as_str(),
    });
    let (found, marker_found): (Option<String>, Option<String>) =
        check.query_async(&mut connection).await?;
    if let Role::Final(marker) = &role {
        let committed = marker_found.and_then(|text| text.parse::<u64>().ok());
        if matches!(expect, Expect::Same(_)) && committed.is_some() && committed != marker.expected
        {
            redis::cmd("UNWATCH").query_async::<()>(&mut connection).await?;
            return Ok(Outcome::EarlierCommitted(committed.unwrap_or_default()));
        }
        body.cmd("SET").arg(&marker.key).arg(marker.seq).arg("EX").arg(MARKER_TTL_S).ignore();
        marker.checked.store(true, Ordering::SeqCst);
    }
    let epoch = match expect {
        Expect::Same(epoch) if found.as_deref() == Some(epoch.as_str()) => epoch,
        Expect::Same(_) => {
            redis::cmd("UNWATCH").query_async::<()>(&mut connection).await?;
            return Ok(Outcome::Lost(found));
        }
        Expect::Adopt(fresh) => {
            let epoch = found.unwrap_or(fresh);
            if matches!(role, Role::Final(_)) {
                body.cmd("SET").arg(&key).arg(&epoch).ignore();
            }
            epoch
        }
    };
    if let Role::Final(marker) = &role {
        marker.sent.store(true, Ordering::SeqCst);
    }
    let _occupied = breaker.as_ref().map(|breaker| breaker.occupy());
    let committed: Option<()> = body.query_async(&mut connection).await?;
    Ok(if committed.is_some() { Outcome::Written(epoch) } else { Outcome::Aborted })
}

/// 32 random hex digits.
fn new_epoch() -> String {
    format!("{:032x}", rand::random::<u128>())
}
