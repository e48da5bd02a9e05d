//! Redis lost the namespace (restarted without its data, `FLUSHALL`, `FLUSHDB`): the flush
//! that notices it (see [`crate::store::epoch`]) rewrites the whole in-memory state and
//! progress in one transaction before anything else is written, or, when part of the state
//! lives only in Redis (users evicted from memory, or never loaded since a restore), halts the
//! engine ([`super::Halt`]: nothing more is written, `run` exits with [`EXIT_NAMESPACE_LOST`])
//! so that a restart rebuilds the namespace from the topic.
//! Partial state is never written on top of an empty namespace (issue 9, item 3).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Engine;
use crate::model::{ItemRow, SeenWrite, UserRow};
use crate::store::{FlushBatch, ItemWrite, PoolWrite, StoreError, UserWrite};

/// Exit status of `embedstream run` when Redis lost the namespace and the in-memory state is
/// not the whole state (a restart rebuilds it from the topic, from `--from`).
pub const EXIT_NAMESPACE_LOST: i32 = 4;

impl Engine {
    /// Writes `batch`; when Redis lost the namespace, writes the whole state instead.
    ///
    /// # Errors
    /// [`StoreError`] when neither could be written; the caller keeps the state for the next
    /// attempt.
    pub(super) fn write_checked(&mut self, batch: &FlushBatch) -> Result<(), StoreError> {
        if let Some(halt) = &self.halted {
            return Err(StoreError::Fenced {
                namespace: self.store.keys().namespace().to_owned(),
                reason: halt.reason.clone(),
            });
        }
        if !self.status.namespace_lost.load(Ordering::Relaxed) {
            match self.store.write_flush(batch) {
                Err(error @ StoreError::NamespaceLost { .. }) => self.namespace_lost(&error),
                other => return other,
            }
        }
        self.rewrite_namespace(batch)
    }

    /// Between flushes (nothing to write), checks the epoch once per `ingest.flush_interval_ms`
    /// so that a loss is noticed, and reported, on a quiet stream too.
    pub(super) fn check_namespace_when_idle(&mut self) {
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        if self.store.epoch_checked_within(interval) {
            return;
        }
        let result = self.store.check_epoch();
        self.status.note_redis(result.is_ok());
        match result {
            Ok(()) => {}
            Err(error @ StoreError::NamespaceLost { .. }) => {
                self.namespace_lost(&error);
                // Rewritten at the next tick: the progress counts as dirty.
                self.progress_dirty = true;
            }
            Err(error) => tracing::debug!(%error, "epoch check failed"),
        }
    }

    /// On assign, before the set of stored users is read again and clean users are dropped
    /// from memory: a lost namespace would make an empty set look complete, so the process
    /// stops instead (a rebalance after an eager revoke has already rewritten the namespace).
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails (the caller retries).
    pub(super) fn stop_if_namespace_lost(&mut self) -> Result<(), StoreError> {
        match self.store.check_epoch() {
            Err(error @ StoreError::NamespaceLost { .. }) => {
                let reason = format!(
                    "{error}; found during a rebalance: a restart rebuilds the namespace from \
                     the topic"
                );
                self.halt(EXIT_NAMESPACE_LOST, reason.clone());
                Err(StoreError::Fenced {
                    namespace: self.store.keys().namespace().to_owned(),
                    reason,
                })
            }
            other => other,
        }
    }

    fn namespace_lost(&mut self, error: &StoreError) {
        if self.status.namespace_lost.swap(true, Ordering::Relaxed) {
            return;
        }
        self.metrics.redis_namespace_lost.set(1);
        tracing::error!(
            %error,
            users = self.fold.model().user_count(),
            items = self.fold.model().item_count(),
            events_applied = self.fold.model().events_applied(),
            "redis lost the namespace: rewriting the whole in-memory state and progress"
        );
    }

    fn rewrite_namespace(&mut self, batch: &FlushBatch) -> Result<(), StoreError> {
        if !self.all_users_in_memory {
            let reason = format!(
                "redis lost namespace {} and part of the state was only there ({} users in \
                 memory, others evicted): a restart rebuilds the namespace from the topic",
                self.store.keys().namespace(),
                self.fold.model().user_count()
            );
            self.halt(EXIT_NAMESPACE_LOST, reason.clone());
            return Err(StoreError::Fenced {
                namespace: self.store.keys().namespace().to_owned(),
                reason,
            });
        }
        let whole = {
            let model = self.fold.model();
            FlushBatch {
                users: (0..model.user_count() as u32)
                    .map(|row| UserWrite {
                        state: model.user_state(UserRow(row)),
                        seen: SeenWrite::Whole,
                    })
                    .collect(),
                items: (0..model.item_count() as u32)
                    .map(|row| ItemWrite {
                        state: model.item_state(ItemRow(row)),
                        delta: model.item_delta(ItemRow(row)),
                    })
                    .collect(),
                meta: batch.meta.clone(),
                applied_increment: None,
                seq: batch.seq,
                write_config: true,
                pool: PoolWrite::Whole,
                pool_ids: batch.pool_ids.clone(),
                topic: batch.topic.clone(),
                progress: batch.progress.clone(),
            }
        };
        let epoch = self.store.rewrite_namespace(&whole)?;
        self.status.namespace_lost.store(false, Ordering::Relaxed);
        self.status.namespace_rewrites.fetch_add(1, Ordering::Relaxed);
        self.metrics.redis_namespace_lost.set(0);
        self.metrics.redis_namespace_rewrites.inc();
        tracing::warn!(
            %epoch,
            users = whole.users.len(),
            items = whole.items.len(),
            events_applied = whole.meta.events_applied,
            "namespace rewritten whole: redis holds the in-memory state and progress again"
        );
        Ok(())
    }
}
