use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::dlq::{DeadLetters, SourceRecord};
use super::progress::PartitionProgress;
use super::{IngestConfig, StartPosition};
use crate::config::Config;
use crate::event::EventTime;
use crate::fold::Fold;
use crate::index::Index;
use crate::metrics::Metrics;
use crate::resilience::CircuitBreaker;
use crate::store::{StoreError, SyncStore};
use crate::window::Position;

mod backpressure;
mod dead_letters;
mod flush;
mod items;
mod liveness;
mod lost_namespace;
mod rebalance;
mod users;

use super::status::{PauseReason, Status};
pub use lost_namespace::EXIT_NAMESPACE_LOST;
pub use rebalance::{StartAt, EXIT_PROGRESS_PAST_LOG_END};
use users::StoredUsers;

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

impl EngineError {
    /// Whether retrying can help (a Redis outage), as opposed to a configuration or stored
    /// state that stays wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(error) => error.is_transient(),
            Self::Config(_) | Self::Restore(_) => false,
        }
    }
}

/// Exit status of `embedstream run` when the flush on a partition revoke failed while the
/// service was running: the in-memory state is ahead of Redis for partitions another member
/// may now own, so this one stops writing (see [`Halt`]) and a restart resumes from Redis.
pub const EXIT_REVOKE_FLUSH_FAILED: i32 = 3;

/// Why the engine stopped writing for good: from then on every flush is refused (nothing it
/// holds may reach Redis), the consumer stops, and `embedstream run` exits with `exit_status`
/// ([`EXIT_REVOKE_FLUSH_FAILED`] or [`EXIT_NAMESPACE_LOST`]). Library code never ends the
/// process itself: an engine embedded in another program (or a test) reports the halt the
/// same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    /// The process exit status that tells an operator what happened.
    pub exit_status: i32,
    /// What happened, for the log and the error.
    pub reason: String,
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ingest halted (exit status {}): {}", self.exit_status, self.reason)
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
    /// When each partition last delivered a record of any kind (processing time, ms): a
    /// partition not at its end and silent longer than the idle timeout is starved (a slow
    /// fetch, a broker restart), not idle.
    last_record_ms: BTreeMap<i32, i64>,
    /// Users whose changes were collected from the model but are not yet in Redis, by id:
    /// rows move when users are evicted, ids do not. Never evicted while pending.
    pending_users: BTreeSet<String>,
    pending_items: BTreeSet<u32>,
    /// The model configuration is in Redis in the current layout (written once, not per flush).
    config_stored: bool,
    /// Flush attempts so far (each flush's number, see `store::epoch`).
    flush_seq: u64,
    /// The flush whose outcome is unknown, if any: at most one at a time (see `flush.rs`).
    in_doubt: Option<crate::store::FlushBatch>,
    /// The item change feed's entry this process has merged up to (`None` before restore).
    item_feed: Option<String>,
    /// When the change feed was last read.
    item_feed_read: Instant,
    /// Events applied when the negative pool was last written (`None`: write it whole).
    pool_stored_at: Option<u64>,
    arrivals: HashMap<Position, Instant, foldhash::fast::RandomState>,
    last_flush: Instant,
    /// How long the last successful flush of the tick took (see `flush::flush_now`).
    last_flush_took: std::time::Duration,
    flushes: u64,
    progress_dirty: bool,
    dead_letters: DeadLetters,
    pub(super) metrics: Metrics,
    index: Arc<Index>,
    status: Arc<Status>,
    redis_breaker: Arc<CircuitBreaker>,
    flushed_applied: u64,
    paused: Option<PauseReason>,
    /// Every user of the namespace is in memory (none was evicted, and the namespace held no
    /// users at restore): only then can a namespace Redis lost be rewritten from memory.
    all_users_in_memory: bool,
    /// Close every open window as soon as all assigned partitions are at their end.
    drain_at_end: bool,
    /// Dead letters handed to the producer, oldest first, not yet acknowledged.
    dead_letters_in_flight: std::collections::VecDeque<super::dlq::InFlight>,
    /// Since when admitted records have waited with nothing applied (`None`: nothing waits).
    waiting_since: Option<Instant>,
    /// Set once the engine must never write again (see [`Halt`]).
    halted: Option<Halt>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("topic", &self.topic).finish_non_exhaustive()
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
            store: SyncStore::new(&config.store)?
                .with_breaker(Arc::clone(&redis_breaker))
                .with_flush_limits(config.model.seen_items_per_user, ingest.flush_max_entities),
            topic: config.kafka.topic.clone(),
            config: ingest,
            start,
            progress: BTreeMap::new(),
            assigned: BTreeSet::new(),
            eof: BTreeSet::new(),
            last_record_ms: BTreeMap::new(),
            pending_users: BTreeSet::new(),
            pending_items: BTreeSet::new(),
            config_stored: false,
            flush_seq: 0,
            in_doubt: None,
            item_feed: None,
            item_feed_read: Instant::now(),
            pool_stored_at: None,
            arrivals: HashMap::default(),
            last_flush: Instant::now(),
            last_flush_took: std::time::Duration::ZERO,
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
            dead_letters_in_flight: std::collections::VecDeque::new(),
            all_users_in_memory: true,
            drain_at_end: false,
            halted: None,
        })
    }

    /// The shared model handle.
    pub fn shared_model(&self) -> Arc<crate::model::ModelLock> {
        self.fold.shared_model()
    }

    /// Handles one record at processing time `now_ms` (monotonic, for idleness) and wall-clock
    /// time `wall_ms` (ms since the epoch). Rejected records go to the dead-letter topic before
    /// they count as done.
    ///
    /// Event times are bounded by a clock the client does not control: the broker's
    /// log-append time when the topic keeps it, else `wall_ms` (a producer-set `CreateTime` is
    /// the client's word, and both our producers used to set it to the event's own `ts`).
    pub fn on_record(
        &mut self,
        record: SourceRecord<'_>,
        now_ms: i64,
        wall_ms: i64,
        arrived: Instant,
    ) {
        self.metrics.records_consumed.inc();
        self.eof.remove(&record.partition);
        self.status.caught_up.store(false, Ordering::Relaxed);
        let progress = self
            .progress
            .entry(record.partition)
            .or_insert_with(|| PartitionProgress::starting_at(record.offset));
        if progress.before_resume(record.offset) {
            // Never delivered after a seek to the stored progress, unless the consumer reset
            // to the log's start because the stored offset is past the log's end.
            let evidence = format!(
                "a record at offset {} arrived below it: the fetch was out of range",
                record.offset
            );
            self.progress_past_log_end(record.partition, &evidence);
            return;
        }
        if progress.already_done(record.offset) {
            return;
        }
        self.last_record_ms.insert(record.partition, now_ms);
        let position = Position { partition: record.partition, offset: record.offset };
        let bound = match record.timestamp {
            Some(append_ms) if record.log_append_time => append_ms,
            _ => wall_ms,
        };
        let key = if self.config.require_user_id_key {
            crate::fold::RecordKey::MustBeUserId(record.key)
        } else {
            crate::fold::RecordKey::Unchecked
        };
        match self.fold.offer(record.value, key, position, Some(EventTime(bound)), now_ms) {
            Ok(_) => {
                progress.admitted(record.offset);
                self.arrivals.insert(position, arrived);
                self.waiting_since.get_or_insert(arrived);
            }
            Err(rejection) => {
                self.metrics.events_rejected.with_label_values(&[rejection.reason.as_str()]).inc();
                self.status.rejected.fetch_add(1, Ordering::Relaxed);
                // The record counts as done only once the broker has its dead letter: pending
                // until then, without holding the poll loop for a broker round trip.
                progress.admitted(record.offset);
                self.dead_letter(record, &rejection);
            }
        }
    }

    /// A partition reached its end.
    pub fn on_eof(&mut self, partition: i32) {
        self.eof.insert(partition);
    }

    /// With `yes`, every open window is closed and applied as soon as all assigned partitions
    /// are at their end (partition EOF), as a file replay does at the end of its input, instead
    /// of after the idle timeout: `run --exit-when-caught-up` and `rebuild`, which stop there
    /// anyway, then stop an idle timeout sooner. A service that keeps running must not: a
    /// partition at its end now may receive the rest of a window a moment later.
    pub fn drain_at_end(&mut self, yes: bool) {
        self.drain_at_end = yes;
    }

    /// Applies whatever windows can close, flushes when due. Returns the offsets to commit to
    /// the Kafka group (for lag tools) after a successful flush.
    pub fn tick(&mut self, now_ms: i64) -> Option<Vec<(i32, i64)>> {
        self.settle_dead_letters(0);
        if self.paused.is_some() && self.dependency_down() {
            self.fold.windows_mut().hold_idle_clocks(now_ms);
        } else {
            // Idleness means "the source has nothing more": a partition not read to its end
            // (no partition EOF) that has delivered nothing for the idle timeout is merely
            // slow to reach (a blocked dead-letter produce, a broker restart, a slow fetch),
            // and idle-closing its windows would change what they hold: its clock is held.
            // One that keeps delivering records but no events on time (dead letters, a client
            // whose clock runs behind) is not held: it goes idle by its events like any other,
            // or it would hold every partition's windows open for as long as it trickles (an
            // attack run froze ingest with three malformed records a second; librdkafka never
            // reports EOF while records keep arriving within its fetch wait).
            let idle_timeout_ms = self.fold.windows().config().idle_timeout_ms;
            for partition in &self.assigned {
                let silent = self
                    .last_record_ms
                    .get(partition)
                    .is_none_or(|last| now_ms.saturating_sub(*last) >= idle_timeout_ms);
                if !self.eof.contains(partition) && silent {
                    self.fold.windows_mut().hold_idle_clock(*partition, now_ms);
                }
            }
        }
        let dim = self.fold.model().dim();
        let mut users = StoredUsers {
            store: &mut self.store,
            metrics: &self.metrics,
            dim,
            all_in_memory: self.all_users_in_memory,
        };
        let at_end = !self.assigned.is_empty()
            && self.assigned.iter().all(|partition| self.eof.contains(partition));
        let windows = if self.drain_at_end && at_end {
            self.fold.drain(&mut users)
        } else {
            self.fold.poll(now_ms, &mut users)
        };
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
        self.report_liveness(now_ms);
        let settled = at_end && self.fold.buffered() == 0;
        let has_work =
            self.progress_dirty || !self.pending_users.is_empty() || !self.pending_items.is_empty();
        let clock = flush::FlushClock {
            since_last: self.last_flush.elapsed(),
            last_took: self.last_flush_took,
            unflushed: self.unflushed_events(),
            settled,
        };
        let mut commit = None;
        if has_work && flush::flush_now(&self.config, clock) {
            let was_failing = self.status.flush_failing.load(Ordering::Relaxed);
            let started = Instant::now();
            match self.flush() {
                Ok(offsets) => {
                    self.last_flush_took = started.elapsed();
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
        if !self.dependency_down() {
            self.follow_items();
        }
        let clean = self.pending_users.is_empty() && self.pending_items.is_empty();
        self.status.caught_up.store(settled && clean, Ordering::Relaxed);
        if settled && clean && self.fold.model().synced_copies_sparse() {
            // The slab of synced copies is kept through flushes while events flow (the next
            // window takes its free slots again) and given back once the stream is settled.
            self.fold.model_mut().trim_synced_copies();
        }
        // Rebuilds are the index's own thread's business (`Index::keep_converged`, started by
        // `app`): busy or quiet alike.
        self.metrics.index_fresh_items.set(self.index.fresh_len() as i64);
        commit
    }

    /// The status shared with the HTTP side.
    pub fn status(&self) -> Arc<Status> {
        Arc::clone(&self.status)
    }

    /// Why the engine stopped writing, once it has (the consumer then stops).
    pub fn halted(&self) -> Option<&Halt> {
        self.halted.as_ref()
    }

    /// Stops every later write (the first halt's reason stands) and logs why.
    pub fn halt(&mut self, exit_status: i32, reason: impl Into<String>) {
        if self.halted.is_some() {
            return;
        }
        let reason = reason.into();
        tracing::error!(exit_status, %reason, "ingest halted: nothing more is written to redis");
        self.halted = Some(Halt { exit_status, reason });
    }
}
