//! Where the state comes from and where partitions start: restore from Redis, and the assign
//! and revoke handshakes of the consumer group.

use std::sync::atomic::Ordering;

use super::{Engine, EngineError};
use crate::event::EventTime;
use crate::ingest::progress::PartitionProgress;
use crate::ingest::StartPosition;
use crate::model::ModelConfig;
use crate::store::{StoreError, StoredMeta};

/// Exit status of `embedstream run` when a partition's stored progress is past the end of its
/// log (see [`Engine::progress_past_log_end`]).
pub const EXIT_PROGRESS_PAST_LOG_END: i32 = 5;

impl Engine {
    /// Loads the namespace's state: model-wide fields, every item (in row order), the set of
    /// known users (their vectors load on demand), and the window state.
    ///
    /// # Errors
    /// [`EngineError`] when Redis fails or holds a model of another configuration.
    pub fn restore(&mut self) -> Result<(), EngineError> {
        self.store.attach_epoch()?;
        // Before the items: following the feed from here misses no write made while they load.
        self.item_feed = Some(self.store.item_feed_position()?);
        let configured = self.fold.model().config().clone();
        let Some(meta) = self.store.load_meta()? else {
            // A new namespace: claim it for this configuration before anything is folded, so
            // that an instance with another one, started at the same time, is refused (issue
            // 10: it would write item vectors of another dimension).
            let claim = StoredMeta {
                dim: configured.dim,
                model_config: configured.clone(),
                events_applied: 0,
                closed_until: self.fold.windows().closed_until(),
                negative_pool: (Vec::new(), 0),
                schema_version: crate::store::SCHEMA_VERSION,
            };
            let (existed, stored) = self.store.claim_model(&claim)?;
            if existed {
                // Another instance was first: restore what it holds.
                return self.restore();
            }
            if stored != configured {
                return Err(self.incompatible(&stored, &configured));
            }
            self.config_stored = true;
            // Users written without a model (nothing of ours does; a foreign writer could).
            self.all_users_in_memory = self.store.stored_user_count()? == 0;
            self.status.note_redis(true);
            self.status.restored.store(true, Ordering::Relaxed);
            return Ok(());
        };
        if meta.model_config != configured {
            return Err(self.incompatible(&meta.model_config, &configured));
        }
        let items = self.store.load_items(meta.dim)?;
        let stored_users = self.store.stored_user_count()?;
        // Lost while it was being read: start over (the caller retries) before the model
        // holds any of it.
        self.store.check_epoch()?;
        // Users load on demand: with users in Redis, memory no longer holds all of them.
        self.all_users_in_memory = stored_users == 0;
        {
            let mut model = self.fold.model_mut();
            model.restore_events_applied(meta.events_applied);
            for item in items {
                model.restore_item(item)?;
            }
            model.restore_negative_pool(meta.negative_pool.0, meta.negative_pool.1);
        }
        let bound = EventTime(crate::ingest::wall_ms());
        if let Some(poisoned) =
            self.fold.windows_mut().restore_closed_until(meta.closed_until, bound)
        {
            tracing::warn!(
                closed_until = poisoned,
                "stored closed_until is beyond the admission bound (written by a version that \
                 trusted producer timestamps after a far-future event): ignored"
            );
        }
        self.status.applied.store(meta.events_applied, Ordering::Relaxed);
        self.flushed_applied = meta.events_applied;
        // An older layout gets the configuration (and its schema version) once more.
        self.config_stored = meta.schema_version == crate::store::SCHEMA_VERSION;
        self.status.note_redis(true);
        self.status.restored.store(true, Ordering::Relaxed);
        tracing::info!(
            events_applied = meta.events_applied,
            items = self.fold.model().item_count(),
            "state restored from redis"
        );
        Ok(())
    }

    /// Where each newly assigned partition starts: its stored progress (authoritative), else
    /// the configured start position. `None` for a partition means "earliest".
    ///
    /// # Errors
    /// [`StoreError`] when the progress cannot be read; the caller retries.
    pub fn on_assign(
        &mut self,
        partitions: &[i32],
        now_ms: i64,
    ) -> Result<Vec<(i32, StartAt)>, StoreError> {
        // Another member may have changed users of these partitions since we last saw them:
        // drop clean users from memory (they reload from Redis on demand). Users whose changes
        // are collected but not yet flushed stay: under cooperative (incremental) rebalancing
        // an assignment comes without a revoke, so without a flush before it.
        self.stop_if_namespace_lost()?;
        let pending = &self.pending_users;
        let evicted = self.fold.model_mut().evict_clean_users(|id| pending.contains(id));
        self.all_users_in_memory &= evicted.is_empty();
        let mut starts = Vec::new();
        for partition in partitions {
            self.fold.windows_mut().register_partition(*partition, now_ms);
            self.assigned.insert(*partition);
            let start = match self.store.load_progress(&self.topic, *partition)? {
                Some(stored) => {
                    self.progress.insert(*partition, PartitionProgress::from_stored(&stored));
                    StartAt::Offset(stored.resume)
                }
                None => match &self.start {
                    StartPosition::Earliest => StartAt::Beginning,
                    StartPosition::Latest => StartAt::End,
                    StartPosition::Timestamp(ms) => StartAt::Timestamp(*ms),
                    StartPosition::Offsets(offsets) => {
                        offsets.get(partition).map_or(StartAt::Beginning, |o| StartAt::Offset(*o))
                    }
                },
            };
            starts.push((*partition, start));
        }
        self.set_assigned();
        Ok(starts)
    }

    /// A partition's stored progress lies past the end of its log: the broker lost the
    /// topic's records (a topic deleted and re-created, a broker without persistence
    /// restarted, an unclean leader election). Reading on would skip every new record below
    /// the stored offset as already applied, silently; so the engine halts
    /// ([`EXIT_PROGRESS_PAST_LOG_END`]) and the operator decides (see README, "The broker
    /// lost the topic"). `evidence` says how it showed: a record below the stored progress
    /// (Kafka answered the fetch with `OFFSET_OUT_OF_RANGE` and the consumer reset to the
    /// log start), or the fetch position staying past the high watermark (brokers that
    /// answer such a fetch with an empty batch).
    pub fn progress_past_log_end(&mut self, partition: i32, evidence: &str) {
        let resume = self.progress.get(&partition).map(PartitionProgress::resume);
        self.halt(
            EXIT_PROGRESS_PAST_LOG_END,
            format!(
                "the stored progress of {topic} partition {partition} (resume at {resume}) is \
                 past the end of its log ({evidence}): the broker lost records this namespace \
                 already applied; reading on would skip new records as already applied",
                topic = self.topic,
                resume = resume.map_or_else(|| "unknown".to_owned(), |r| r.to_string()),
            ),
        );
    }

    /// Revoke handshake: the partitions' buffered (unapplied) events are given up, and the
    /// applied state plus the progress of every partition is flushed before returning.
    ///
    /// # Errors
    /// [`StoreError`] when the flush fails: the caller must not keep consuming with this
    /// in-memory state (it is ahead of Redis for partitions another member now owns).
    pub fn on_revoke(&mut self, partitions: &[i32]) -> Result<(), StoreError> {
        self.drain_dead_letters();
        for partition in partitions {
            for position in self.fold.revoke(*partition) {
                self.arrivals.remove(&position);
                if let Some(progress) = self.progress.get_mut(partition) {
                    progress.abandoned(position.offset);
                }
            }
        }
        self.collect_dirty();
        self.flush()?;
        for partition in partitions {
            self.progress.remove(partition);
            self.assigned.remove(partition);
            self.eof.remove(partition);
            self.last_record_ms.remove(partition);
        }
        self.set_assigned();
        Ok(())
    }

    fn incompatible(&self, stored: &ModelConfig, configured: &ModelConfig) -> EngineError {
        StoreError::Incompatible {
            namespace: self.store.keys().namespace().to_owned(),
            field: "model_config",
            stored: serde_json::to_string(stored).unwrap_or_default(),
            configured: serde_json::to_string(configured).unwrap_or_default(),
        }
        .into()
    }

    fn set_assigned(&self) {
        if let Ok(mut assigned) = self.status.assigned.lock() {
            *assigned = self.assigned.iter().copied().collect();
        }
    }
}

/// Where a partition starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// An explicit offset (stored progress or configured).
    Offset(i64),
    /// The earliest offset.
    Beginning,
    /// The end.
    End,
    /// The first record at or after this timestamp, ms.
    Timestamp(i64),
}
