//! Writing what changed to Redis: one transaction of users, items, meta and progress.

use std::sync::atomic::Ordering;
use std::time::Instant;

use parking_lot::RwLockWriteGuard;

use super::Engine;
use crate::model::ItemRow;
use crate::store::{
    FlushBatch, ItemWrite, PoolWrite, StoreError, StoredMeta, UserWrite, SCHEMA_VERSION,
};

/// Rows [`Engine::mark_stored`] marks per hold of the model's write lock (about a millisecond).
const ROWS_PER_LOCK_HOLD: usize = 1024;

impl Engine {
    /// Writes pending users, items, meta and progress in one transaction. Returns the offsets
    /// to commit to the group.
    ///
    /// # Errors
    /// [`StoreError`]; pending state is kept for the next attempt.
    pub fn flush(&mut self) -> Result<Vec<(i32, i64)>, StoreError> {
        match self.flush_once() {
            Err(StoreError::EarlierFlushCommitted { seq }) => {
                self.earlier_flush_committed(seq);
                self.flush_once()
            }
            other => other,
        }
    }

    /// A flush whose outcome was unknown committed after all: what it wrote is synced (its
    /// items' new base, the applied counter); users and the pool are rewritten idempotently by
    /// the next flush.
    fn earlier_flush_committed(&mut self, seq: u64) {
        let Some(batch) = self.in_doubt.take().filter(|batch| batch.seq == seq) else {
            tracing::error!(
                seq,
                "a flush committed late but is no longer known: item deltas may be missing or \
                 doubled"
            );
            return;
        };
        tracing::warn!(seq, "a flush whose outcome was unknown committed late: counted as stored");
        self.metrics.flushes_committed_late.inc();
        let mut model = self.fold.model_mut();
        for item in &batch.items {
            model.mark_item_synced(&item.state);
        }
        drop(model);
        self.flushed_applied = batch.meta.events_applied;
        self.config_stored |= batch.write_config;
    }

    fn flush_once(&mut self) -> Result<Vec<(i32, i64)>, StoreError> {
        self.flush_seq += 1;
        let batch = self.changed_batch();
        let started = Instant::now();
        let result = self.write_checked(&batch);
        self.metrics
            .redis_duration
            .with_label_values(&["flush"])
            .observe(started.elapsed().as_secs_f64());
        self.status.redis_ok.store(result.is_ok(), Ordering::Relaxed);
        self.status.flush_failing.store(result.is_err(), Ordering::Relaxed);
        if let Err(error) = result {
            self.metrics.redis_errors.with_label_values(&["flush"]).inc();
            // A flush that passed the marker check proves every earlier one of this process
            // executed or discarded, none committed (see store::epoch): they are no longer in
            // doubt. One that sent EXEC and then failed is, until a later flush finds out; so
            // at most one flush is in doubt at a time.
            if self.store.last_flush_checked() {
                self.in_doubt = None;
            }
            if self.store.last_flush_sent()
                && matches!(error, StoreError::Timeout { .. } | StoreError::Redis(_))
            {
                self.in_doubt = Some(batch);
            }
            return Err(error);
        }
        self.in_doubt = None;
        self.flushed_applied = batch.meta.events_applied;
        self.mark_stored(&batch);
        self.status.unflushed.store(0, Ordering::Relaxed);
        self.pending_users.clear();
        self.pending_items.clear();
        self.progress_dirty = false;
        self.last_flush = Instant::now();
        self.flushes += 1;
        self.metrics.flushes.inc();
        self.status.flushes.store(self.flushes, Ordering::Relaxed);
        if self.config.fault_crash_after_flushes > 0
            && self.flushes >= self.config.fault_crash_after_flushes
        {
            tracing::error!(
                flushes = self.flushes,
                "fault injection: aborting after flush, before commit"
            );
            std::process::abort();
        }
        self.evict_users();
        Ok(batch.progress.iter().map(|(partition, stored)| (*partition, stored.resume)).collect())
    }

    /// What changed since the last committed flush: the pending users (with the changed tail
    /// of their seen lists) and items, the catalogue entries of new items, the model
    /// configuration only while Redis does not hold it, the negative pool's changed slots,
    /// meta counters and progress.
    fn changed_batch(&self) -> FlushBatch {
        let model = self.fold.model();
        let (pool, next) = model.negative_pool();
        let events_applied = model.events_applied();
        FlushBatch {
            users: self
                .pending_users
                .iter()
                .filter_map(|id| model.user_row(id))
                .map(|row| UserWrite { state: model.user_state(row), seen: model.seen_write(row) })
                .collect(),
            items: self
                .pending_items
                .iter()
                .map(|row| ItemWrite {
                    state: model.item_state(ItemRow(*row)),
                    delta: model.item_delta(ItemRow(*row)),
                })
                .collect(),
            applied_increment: Some(events_applied.saturating_sub(self.flushed_applied)),
            meta: StoredMeta {
                dim: model.dim(),
                model_config: model.config().clone(),
                events_applied,
                closed_until: self.fold.windows().closed_until(),
                negative_pool: (pool.to_vec(), next),
                schema_version: SCHEMA_VERSION,
            },
            write_config: !self.config_stored,
            pool: match self.pool_stored_at {
                Some(stored_at) => {
                    PoolWrite::Newest(events_applied.saturating_sub(stored_at) as usize)
                }
                None => PoolWrite::Whole,
            },
            pool_ids: pool.iter().map(|row| model.item_id(ItemRow(*row)).to_owned()).collect(),
            topic: self.topic.clone(),
            progress: self.progress.iter().map(|(p, progress)| (*p, progress.stored())).collect(),
            seq: self.flush_seq,
        }
    }

    /// After a committed flush: what Redis now holds needs no writing again. The write lock is
    /// handed to waiting readers every [`ROWS_PER_LOCK_HOLD`] rows: under ingest a flush holds
    /// most of the catalogue (95,000 items of 100,000 seen), and marking them in one hold kept
    /// ranking requests waiting 23 to 85 ms. Only this thread writes the model, so a reader in
    /// between sees some rows marked and others not, which changes nothing it reads.
    fn mark_stored(&mut self, batch: &FlushBatch) {
        let mut model = self.fold.model_mut();
        for (n, user) in batch.users.iter().enumerate() {
            if n > 0 && n % ROWS_PER_LOCK_HOLD == 0 {
                RwLockWriteGuard::bump(&mut model);
            }
            if let Some(row) = model.user_row(&user.state.id) {
                model.mark_seen_stored(row);
            }
        }
        for (n, item) in batch.items.iter().enumerate() {
            if n > 0 && n % ROWS_PER_LOCK_HOLD == 0 {
                RwLockWriteGuard::bump(&mut model);
            }
            model.mark_item_synced(&item.state);
        }
        self.config_stored = true;
        self.pool_stored_at = Some(batch.meta.events_applied);
    }
}
