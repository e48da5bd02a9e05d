use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::dlq::{DeadLetters, SourceRecord};
use super::progress::PartitionProgress;
use super::{IngestConfig, StartPosition};
use crate::config::Config;
use crate::event::EventTime;
use crate::fold::{Fold, UserSource};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::model::{ItemRow, UserRow, UserState};
use crate::resilience::{BreakerState, CircuitBreaker};
use crate::store::{FlushBatch, StoreError, StoredMeta, SyncStore};
use crate::window::Position;

mod lost_namespace;

pub use lost_namespace::EXIT_NAMESPACE_LOST;

/// Why the engine cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Redis failed or holds incompatible state.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Stored state does not fit the model.
    #[error("restoring the model: {0}")]
    Restore(#[from] crate::model::RestoreError),
}

/// Live status shared with the HTTP side.
#[derive(Debug, Default)]
pub struct Status {
    /// State restored from Redis (or the namespace was empty).
    pub restored: AtomicBool,
    /// Every assigned partition is at its end, nothing is buffered and everything is flushed.
    pub caught_up: AtomicBool,
    /// The last Redis operation succeeded.
    pub redis_ok: AtomicBool,
    /// Events applied.
    pub applied: AtomicU64,
    /// Records rejected.
    pub rejected: AtomicU64,
    /// Flushes committed.
    pub flushes: AtomicU64,
    /// Partitions assigned.
    pub assigned: Mutex<Vec<i32>>,
    /// Why consumption is paused (None: consuming).
    pub paused: Mutex<Option<PauseReason>>,
    /// The last flush to Redis failed: applied state is ahead of the durable copy.
    pub flush_failing: AtomicBool,
    /// Events applied in memory but not yet written to Redis.
    pub unflushed: AtomicU64,
    /// Records were admitted but nothing applied for `ingest.stall_timeout_ms`.
    pub stalled: AtomicBool,
    /// Redis lost the namespace and the whole state is not rewritten yet.
    pub namespace_lost: AtomicBool,
    /// Times the whole state was rewritten after Redis lost the namespace.
    pub namespace_rewrites: AtomicU64,
}

/// Why the consumer paused its partitions (backpressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// The open windows hold `ingest.max_buffered_events`.
    BufferFull,
    /// Redis is down and `ingest.max_unflushed_events` are applied but not persisted.
    UnflushedLimit,
    /// The `redis` breaker is open and `ingest.pause_on_redis_outage` is set.
    RedisOutage,
}

impl PauseReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BufferFull => "buffer_full",
            Self::UnflushedLimit => "unflushed_limit",
            Self::RedisOutage => "redis_outage",
        }
    }
}

/// A point-in-time copy of [`Status`] (the `/readyz` detail).
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    /// See [`Status::restored`].
    pub restored: bool,
    /// See [`Status::caught_up`].
    pub caught_up: bool,
    /// See [`Status::redis_ok`].
    pub redis_ok: bool,
    /// Events applied.
    pub applied: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Flushes committed.
    pub flushes: u64,
    /// Partitions assigned.
    pub assigned_partitions: Vec<i32>,
    /// Why consumption is paused, or null.
    pub paused: Option<PauseReason>,
    /// Events applied in memory but not yet written to Redis.
    pub unflushed_events: u64,
    /// See [`Status::stalled`].
    pub stalled: bool,
    /// See [`Status::namespace_lost`].
    pub redis_namespace_lost: bool,
    /// See [`Status::namespace_rewrites`].
    pub redis_namespace_rewrites: u64,
}

impl Status {
    /// A copy of every field.
    pub fn snapshot(&self) -> StatusSnapshot {
        StatusSnapshot {
            restored: self.restored.load(Ordering::Relaxed),
            caught_up: self.caught_up.load(Ordering::Relaxed),
            redis_ok: self.redis_ok.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            assigned_partitions: self.assigned.lock().map(|a| a.clone()).unwrap_or_default(),
            paused: self.paused.lock().map(|p| *p).unwrap_or_default(),
            unflushed_events: self.unflushed.load(Ordering::Relaxed),
            stalled: self.stalled.load(Ordering::Relaxed),
            redis_namespace_lost: self.namespace_lost.load(Ordering::Relaxed),
            redis_namespace_rewrites: self.namespace_rewrites.load(Ordering::Relaxed),
        }
    }
}

/// The fold, the store and the per-partition progress: everything the consumer thread drives.
pub struct Engine {
    fold: Fold,
    store: SyncStore,
    topic: String,
    config: IngestConfig,
    start: StartPosition,
    progress: BTreeMap<i32, PartitionProgress>,
    assigned: BTreeSet<i32>,
    eof: BTreeSet<i32>,
    known_users: HashSet<String>,
    pending_users: BTreeSet<u32>,
    pending_items: BTreeSet<u32>,
    arrivals: HashMap<Position, Instant>,
    last_flush: Instant,
    flushes: u64,
    progress_dirty: bool,
    dead_letters: DeadLetters,
    pub(super) metrics: Metrics,
    index: Arc<Index>,
    status: Arc<Status>,
    redis_breaker: Arc<CircuitBreaker>,
    flushed_applied: u64,
    paused: Option<PauseReason>,
    /// Since when admitted records have waited with nothing applied (`None`: nothing waits).
    waiting_since: Option<Instant>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("topic", &self.topic).finish_non_exhaustive()
    }
}

struct StoredUsers<'a> {
    store: &'a mut SyncStore,
    known: &'a HashSet<String>,
    dim: usize,
}

impl UserSource for StoredUsers<'_> {
    fn load(&mut self, user_id: &str) -> Result<Option<UserState>, String> {
        if !self.known.contains(user_id) {
            return Ok(None);
        }
        self.store.load_user(user_id, self.dim).map_err(|error| error.to_string())
    }
}

impl Engine {
    /// An engine with an empty model; call [`Engine::restore`] next.
    ///
    /// # Errors
    /// [`EngineError`] for a bad configuration or Redis URL.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        ingest: IngestConfig,
        start: StartPosition,
        dead_letters: DeadLetters,
        metrics: Metrics,
        index: Arc<Index>,
        status: Arc<Status>,
        redis_breaker: Arc<CircuitBreaker>,
    ) -> Result<Self, EngineError> {
        Ok(Self {
            fold: Fold::new(config)?,
            store: SyncStore::new(&config.store)?.with_breaker(Arc::clone(&redis_breaker)),
            topic: config.kafka.topic.clone(),
            config: ingest,
            start,
            progress: BTreeMap::new(),
            assigned: BTreeSet::new(),
            eof: BTreeSet::new(),
            known_users: HashSet::new(),
            pending_users: BTreeSet::new(),
            pending_items: BTreeSet::new(),
            arrivals: HashMap::new(),
            last_flush: Instant::now(),
            flushes: 0,
            progress_dirty: false,
            dead_letters,
            metrics,
            index,
            status,
            redis_breaker,
            flushed_applied: 0,
            paused: None,
            waiting_since: None,
        })
    }

    /// Backpressure decision after a tick: `Some(reason)` while the consumer must keep its
    /// partitions paused, `None` when it may consume. Hysteresis: a full buffer pauses until
    /// it is below half; the unflushed bound pauses until a flush succeeds.
    pub fn backpressure(&mut self) -> Option<PauseReason> {
        let buffered = self.fold.buffered();
        let unflushed = self.unflushed_events();
        let breaker_open = self.redis_breaker.state() != BreakerState::Closed;
        let limit = self.config.max_buffered_events;
        let next = if buffered >= limit
            || (self.paused == Some(PauseReason::BufferFull) && buffered >= limit / 2)
        {
            Some(PauseReason::BufferFull)
        } else if unflushed >= self.config.max_unflushed_events {
            Some(PauseReason::UnflushedLimit)
        } else if breaker_open && self.config.pause_on_redis_outage {
            Some(PauseReason::RedisOutage)
        } else {
            None
        };
        if next != self.paused {
            match next {
                Some(reason) => {
                    tracing::warn!(
                        reason = reason.as_str(),
                        buffered,
                        unflushed,
                        "pausing consumption"
                    );
                    self.metrics.pauses.with_label_values(&[reason.as_str()]).inc();
                }
                None => tracing::info!(buffered, unflushed, "resuming consumption"),
            }
            self.paused = next;
            self.metrics.paused.set(i64::from(next.is_some()));
            if let Ok(mut paused) = self.status.paused.lock() {
                *paused = next;
            }
        }
        next
    }

    /// Redis is down (breaker not closed, last flush failed, or windows wait for user state):
    /// a pause is then an outage pause, during which partitions must not count as idle.
    fn dependency_down(&self) -> bool {
        self.redis_breaker.state() != BreakerState::Closed
            || self.status.flush_failing.load(Ordering::Relaxed)
            || self.fold.blocked_windows() > 0
    }

    fn unflushed_events(&self) -> u64 {
        self.fold.model().events_applied().saturating_sub(self.flushed_applied)
    }

    /// The shared model handle.
    pub fn shared_model(&self) -> Arc<std::sync::RwLock<crate::model::Model>> {
        self.fold.shared_model()
    }

    /// Loads the namespace's state: model-wide fields, every item (in row order), the set of
    /// known users (their vectors load on demand), and the window state.
    ///
    /// # Errors
    /// [`EngineError`] when Redis fails or holds a model of another configuration.
    pub fn restore(&mut self) -> Result<(), EngineError> {
        self.store.attach_epoch()?;
        let Some(meta) = self.store.load_meta()? else {
            self.status.redis_ok.store(true, Ordering::Relaxed);
            self.status.restored.store(true, Ordering::Relaxed);
            return Ok(());
        };
        let configured = self.fold.model().config().clone();
        if meta.model_config != configured {
            return Err(StoreError::Incompatible {
                namespace: self.store.keys().namespace().to_owned(),
                field: "model_config",
                stored: serde_json::to_string(&meta.model_config).unwrap_or_default(),
                configured: serde_json::to_string(&configured).unwrap_or_default(),
            }
            .into());
        }
        let items = self.store.load_items(meta.dim)?;
        let known_users = self.store.user_ids()?;
        // Lost while it was being read: start over (the caller retries) before the model
        // holds any of it.
        self.store.check_epoch()?;
        {
            let mut model = self.fold.model_mut();
            model.restore_events_applied(meta.events_applied);
            for item in items {
                model.restore_item(item)?;
            }
            model.restore_negative_pool(meta.negative_pool.0, meta.negative_pool.1);
        }
        self.known_users = known_users;
        let bound = EventTime(super::wall_ms());
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
        self.status.redis_ok.store(true, Ordering::Relaxed);
        self.status.restored.store(true, Ordering::Relaxed);
        tracing::info!(
            events_applied = meta.events_applied,
            items = self.fold.model().item_count(),
            users = self.known_users.len(),
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
        // drop clean users from memory (they reload from Redis on demand) and refresh the set
        // of stored users (never from a namespace Redis lost).
        self.stop_if_namespace_lost()?;
        self.known_users = self.store.user_ids()?;
        self.fold.model_mut().evict_clean_users();
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

    /// Revoke handshake: the partitions' buffered (unapplied) events are given up, and the
    /// applied state plus the progress of every partition is flushed before returning.
    ///
    /// # Errors
    /// [`StoreError`] when the flush fails: the caller must not keep consuming with this
    /// in-memory state (it is ahead of Redis for partitions another member now owns).
    pub fn on_revoke(&mut self, partitions: &[i32]) -> Result<(), StoreError> {
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
        }
        self.set_assigned();
        Ok(())
    }

    fn set_assigned(&self) {
        if let Ok(mut assigned) = self.status.assigned.lock() {
            *assigned = self.assigned.iter().copied().collect();
        }
    }

    /// Handles one record at processing time `now_ms` (monotonic, for idleness) and wall-clock
    /// time `wall_ms` (ms since the epoch). Rejected records go to the dead-letter topic before
    /// they count as done.
    ///
    /// Event times are bounded by a clock the client does not control: the broker's
    /// log-append time when the topic keeps it, else `wall_ms` (a producer-set `CreateTime` is
    /// the client's word, and both our producers used to set it to the event's own `ts`).
    pub fn on_record(&mut self, record: SourceRecord<'_>, now_ms: i64, wall_ms: i64) {
        self.metrics.records_consumed.inc();
        self.eof.remove(&record.partition);
        self.status.caught_up.store(false, Ordering::Relaxed);
        let progress = self
            .progress
            .entry(record.partition)
            .or_insert_with(|| PartitionProgress::starting_at(record.offset));
        if progress.already_done(record.offset) {
            return;
        }
        let position = Position { partition: record.partition, offset: record.offset };
        let bound = match record.timestamp {
            Some(append_ms) if record.log_append_time => append_ms,
            _ => wall_ms,
        };
        match self.fold.offer(record.value, position, Some(EventTime(bound)), now_ms) {
            Ok(_) => {
                progress.admitted(record.offset);
                let arrived = Instant::now();
                self.arrivals.insert(position, arrived);
                self.waiting_since.get_or_insert(arrived);
            }
            Err(rejection) => {
                self.metrics.events_rejected.with_label_values(&[rejection.reason.as_str()]).inc();
                self.status.rejected.fetch_add(1, Ordering::Relaxed);
                // The record only counts as done once the broker has it: retry (the producer is
                // idempotent) with capped exponential backoff and full jitter, without limit.
                let mut attempt = 0u32;
                while let Err(error) = self.dead_letters.send(record, &rejection) {
                    attempt += 1;
                    let delay = crate::resilience::full_jitter(100, 5000, attempt);
                    tracing::warn!(%error, attempt, ?delay, "dead-letter produce failed, retrying");
                    std::thread::sleep(delay);
                }
                self.metrics.dead_lettered.inc();
                progress.finished(record.offset);
                self.progress_dirty = true;
            }
        }
    }

    /// A partition reached its end.
    pub fn on_eof(&mut self, partition: i32) {
        self.eof.insert(partition);
    }

    fn collect_dirty(&mut self) {
        let (users, items): (Vec<UserRow>, Vec<ItemRow>) = self.fold.model_mut().take_dirty();
        self.index.note_changed(items.iter().copied());
        self.pending_users.extend(users.iter().map(|row| row.0));
        self.pending_items.extend(items.iter().map(|row| row.0));
    }

    /// Applies whatever windows can close, flushes when due. Returns the offsets to commit to
    /// the Kafka group (for lag tools) after a successful flush.
    pub fn tick(&mut self, now_ms: i64) -> Option<Vec<(i32, i64)>> {
        if self.paused.is_some() && self.dependency_down() {
            self.fold.windows_mut().hold_idle_clocks(now_ms);
        } else {
            // Idleness means "the source has nothing more": only a partition the consumer has
            // read to its end (partition EOF) may go idle. One with unread records is merely
            // slow to reach (a blocked dead-letter produce, a broker restart, a slow fetch),
            // and idle-closing its windows would change what they hold.
            for partition in &self.assigned {
                if !self.eof.contains(partition) {
                    self.fold.windows_mut().hold_idle_clock(*partition, now_ms);
                }
            }
        }
        let dim = self.fold.model().dim();
        let mut users = StoredUsers { store: &mut self.store, known: &self.known_users, dim };
        let windows = self.fold.poll(now_ms, &mut users);
        for window in &windows {
            let mut first_arrival: Option<Instant> = None;
            for position in window {
                if let Some(progress) = self.progress.get_mut(&position.partition) {
                    progress.finished(position.offset);
                }
                if let Some(arrived) = self.arrivals.remove(position) {
                    self.metrics.freshness.observe(arrived.elapsed().as_secs_f64());
                    first_arrival = Some(first_arrival.map_or(arrived, |first| first.min(arrived)));
                }
            }
            if let Some(first) = first_arrival {
                self.metrics.window_close_lag.observe(first.elapsed().as_secs_f64());
            }
        }
        let done = windows.concat();
        let stats = self.fold.stats();
        self.metrics.events_applied.inc_by(stats.applied - self.metrics.events_applied.get());
        self.metrics.events_late.inc_by(stats.late - self.metrics.events_late.get());
        self.metrics
            .events_duplicate
            .inc_by(stats.duplicates - self.metrics.events_duplicate.get());
        self.metrics.buffered_events.set(self.fold.buffered() as i64);
        self.status.applied.store(self.fold.model().events_applied(), Ordering::Relaxed);
        self.status.unflushed.store(self.unflushed_events(), Ordering::Relaxed);
        self.metrics.unflushed_events.set(self.unflushed_events() as i64);
        if !done.is_empty() {
            self.progress_dirty = true;
            self.collect_dirty();
            self.waiting_since = (self.fold.buffered() > 0).then(Instant::now);
        }
        self.report_liveness();
        let all_at_end = !self.assigned.is_empty()
            && self.assigned.iter().all(|partition| self.eof.contains(partition));
        let settled = all_at_end && self.fold.buffered() == 0;
        let has_work =
            self.progress_dirty || !self.pending_users.is_empty() || !self.pending_items.is_empty();
        let due = self.last_flush.elapsed().as_millis() as u64 >= self.config.flush_interval_ms;
        let mut commit = None;
        if has_work && (due || settled) {
            let was_failing = self.status.flush_failing.load(Ordering::Relaxed);
            match self.flush() {
                Ok(offsets) => {
                    if was_failing {
                        tracing::info!("flush succeeded again: redis is back");
                    }
                    commit = Some(offsets);
                }
                Err(error) if was_failing => {
                    tracing::debug!(%error, "flush failed, state kept in memory");
                }
                Err(error) => tracing::warn!(%error, "flush failed, state kept in memory"),
            }
        } else if !has_work {
            self.check_namespace_when_idle();
        }
        let clean = self.pending_users.is_empty() && self.pending_items.is_empty();
        self.status.caught_up.store(settled && clean, Ordering::Relaxed);
        if self.index.needs_rebuild(self.fold.model().item_count()) {
            let index = Arc::clone(&self.index);
            let model = self.fold.shared_model();
            let metrics = self.metrics.clone();
            std::thread::spawn(move || {
                if let Some(seconds) = index.rebuild(&model) {
                    metrics.index_rebuild_duration.observe(seconds);
                    metrics.index_items.set(index.snapshot_len() as i64);
                }
            });
        }
        self.metrics.index_fresh_items.set(self.index.fresh_len() as i64);
        commit
    }

    /// Stall detection and the event-time ages behind `/readyz` and the dashboards.
    fn report_liveness(&mut self) {
        let stall_after = std::time::Duration::from_millis(self.config.stall_timeout_ms);
        let stalled = self.waiting_since.is_some_and(|since| since.elapsed() >= stall_after);
        if stalled != self.status.stalled.swap(stalled, Ordering::Relaxed) {
            if stalled {
                tracing::warn!(
                    buffered = self.fold.buffered(),
                    "ingest stalled: records wait, nothing applied"
                );
            } else {
                tracing::info!("ingest applies events again");
            }
        }
        self.metrics.stalled.set(i64::from(stalled));
        let wall_s = super::wall_ms() as f64 / 1000.0;
        let oldest = self.fold.windows().oldest_open_start();
        let oldest_age = oldest.map_or(0.0, |start| (wall_s - start as f64 / 1000.0).max(0.0));
        self.metrics.window_oldest_open_age.set(oldest_age);
        if let Some(newest) = self.fold.newest_applied_ts() {
            self.metrics.newest_applied_event_age.set(wall_s - newest as f64 / 1000.0);
        }
    }

    /// Writes pending users, items, meta and progress in one transaction. Returns the offsets
    /// to commit to the group.
    ///
    /// # Errors
    /// [`StoreError`]; pending state is kept for the next attempt.
    pub fn flush(&mut self) -> Result<Vec<(i32, i64)>, StoreError> {
        let batch = {
            let model = self.fold.model();
            let (pool, next) = model.negative_pool();
            FlushBatch {
                users: self
                    .pending_users
                    .iter()
                    .map(|row| model.user_state(UserRow(*row)))
                    .collect(),
                items: self
                    .pending_items
                    .iter()
                    .map(|row| model.item_state(ItemRow(*row)))
                    .collect(),
                meta: StoredMeta {
                    dim: model.dim(),
                    model_config: model.config().clone(),
                    events_applied: model.events_applied(),
                    closed_until: self.fold.windows().closed_until(),
                    negative_pool: (pool.to_vec(), next),
                },
                topic: self.topic.clone(),
                progress: self
                    .progress
                    .iter()
                    .map(|(p, progress)| (*p, progress.stored()))
                    .collect(),
            }
        };
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
            return Err(error);
        }
        self.known_users.extend(batch.users.iter().map(|user| user.id.clone()));
        self.flushed_applied = batch.meta.events_applied;
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

    fn evict_users(&mut self) {
        let mut model = self.fold.model_mut();
        let excess = model.user_count().saturating_sub(self.config.user_cache_capacity);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(i64, String)> = (0..model.user_count() as u32)
            .map(|row| {
                let state = model.user_state(UserRow(row));
                (state.last_ts, state.id)
            })
            .collect();
        by_age.sort();
        for (_, id) in by_age.into_iter().take(excess) {
            model.evict_user(&id);
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
