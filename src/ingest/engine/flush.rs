//! Writing what changed to Redis: one transaction of users, items, meta and progress.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::RwLockWriteGuard;

use super::Engine;
use crate::model::ItemRow;
use crate::store::{
    FlushBatch, ItemWrite, PoolWrite, StoreError, StoredMeta, UserWrite, SCHEMA_VERSION,
};

/// Rows [`Engine::mark_stored`] marks per hold of the model's write lock (about a millisecond).
const ROWS_PER_LOCK_HOLD: usize = 1024;

/// What the tick knows when it decides whether to flush ([`flush_now`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct FlushClock {
    /// Since the last successful flush ended.
    pub since_last: Duration,
    /// How long the last successful flush took (building the batch and writing it).
    pub last_took: Duration,
    /// Events applied and not yet flushed.
    pub unflushed: u64,
    /// Every assigned partition is at its end and nothing is buffered.
    pub settled: bool,
}

/// The pause after a flush that took `took`, so that flushes take at most `duty_cycle` of wall
/// time: `took x (1 - duty_cycle) / duty_cycle` (`ingest.flush_max_duty_cycle`).
pub(super) fn flush_pause(took: Duration, duty_cycle: f64) -> Duration {
    let seconds = took.as_secs_f64() * (1.0 - duty_cycle) / duty_cycle;
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

/// The longest pause, in flush intervals: one slow flush (the first after an outage, a
/// namespace rewrite) does not hold the next back for minutes.
pub(super) const MAX_PAUSE_INTERVALS: u32 = 10;

/// Whether a tick with something to write flushes now: settled, or `flush_interval_ms` and the
/// pause after the last flush ([`flush_pause`], at most [`MAX_PAUSE_INTERVALS`] intervals) have
/// both passed, or half of `max_unflushed_events` wait (the pause never brings on the
/// degradation bound's pause).
pub(super) fn flush_now(config: &crate::ingest::IngestConfig, clock: FlushClock) -> bool {
    let interval = Duration::from_millis(config.flush_interval_ms);
    let pause = flush_pause(clock.last_took, config.flush_max_duty_cycle)
        .min(interval.saturating_mul(MAX_PAUSE_INTERVALS));
    let paced = clock.since_last >= pause;
    clock.settled
        || (clock.since_last >= interval && paced)
        || clock.unflushed >= config.max_unflushed_events / 2
}

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
        self.status.note_redis(result.is_ok());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{flush_now, flush_pause, FlushClock};
    use crate::ingest::IngestConfig;

    fn clock(since_last_ms: u64, last_took_ms: u64) -> FlushClock {
        FlushClock {
            since_last: Duration::from_millis(since_last_ms),
            last_took: Duration::from_millis(last_took_ms),
            unflushed: 1_000,
            settled: false,
        }
    }

    #[test]
    fn a_slow_flush_is_followed_by_a_pause_that_keeps_flushes_to_their_share_of_time() {
        let config = IngestConfig::default();
        assert_eq!(config.flush_max_duty_cycle, 0.25);
        assert_eq!(flush_pause(Duration::from_millis(1_500), 0.25), Duration::from_millis(4_500));
        // A 1.5 s flush (most of a 100,000-item catalogue under live traffic): not again after
        // the 1 s interval, only once it has had three times its length of rest.
        assert!(!flush_now(&config, clock(1_000, 1_500)));
        assert!(!flush_now(&config, clock(4_400, 1_500)));
        assert!(flush_now(&config, clock(4_500, 1_500)));
        // A cheap flush: the interval decides, as before.
        assert!(!flush_now(&config, clock(999, 20)));
        assert!(flush_now(&config, clock(1_000, 20)));
    }

    #[test]
    fn the_pause_gives_way_to_settling_and_to_a_growing_backlog() {
        let config = IngestConfig::default();
        let settled = FlushClock { settled: true, ..clock(10, 1_500) };
        assert!(flush_now(&config, settled));
        let backlog =
            FlushClock { unflushed: config.max_unflushed_events / 2, ..clock(1_000, 1_500) };
        assert!(flush_now(&config, backlog));
        let unpaced = IngestConfig { flush_max_duty_cycle: 1.0, ..IngestConfig::default() };
        assert!(flush_now(&unpaced, clock(1_000, 60_000)));
    }

    #[test]
    fn one_slow_flush_pauses_the_next_for_at_most_ten_intervals() {
        let config = IngestConfig::default();
        // The first flush after an outage took 30 s: 90 s of pause, capped at 10 s.
        assert!(!flush_now(&config, clock(9_999, 30_000)));
        assert!(flush_now(&config, clock(10_000, 30_000)));
    }

    #[test]
    fn a_tiny_duty_cycle_pauses_for_ever_without_overflowing() {
        assert_eq!(flush_pause(Duration::from_secs(3_600), 1e-300), Duration::MAX);
        assert_eq!(flush_pause(Duration::ZERO, 1e-300), Duration::ZERO);
    }
}
