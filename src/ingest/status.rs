//! Live ingest status shared with the HTTP side (`/readyz`), and why consumption pauses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Live status shared with the HTTP side.
#[derive(Debug, Default)]
pub struct Status {
    /// State restored from Redis (or the namespace was empty).
    pub restored: AtomicBool,
    /// Every assigned partition is at its end, nothing is buffered and everything is flushed.
    pub caught_up: AtomicBool,
    /// The last Redis operation succeeded (set with [`Status::note_redis`]).
    pub redis_ok: AtomicBool,
    /// When the ingest side's Redis operations last succeeded and failed (set with
    /// [`Status::note_redis`]): the HTTP side orders its own failures against them.
    pub redis_evidence: crate::store::evidence::Evidence,
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
    /// The consumer received nothing for `ingest.stall_timeout_ms` while its partitions had
    /// records past its position (a poll loop out of the group or a fetcher that stopped);
    /// it is being recreated.
    pub consumer_stalled: AtomicBool,
    /// Times the consumer was recreated after such a stall.
    pub consumer_restarts: AtomicU64,
    /// Redis lost the namespace and the whole state is not rewritten yet.
    pub namespace_lost: AtomicBool,
    /// Times the whole state was rewritten after Redis lost the namespace.
    pub namespace_rewrites: AtomicU64,
    /// Records past the consumer's position over its assigned partitions, from librdkafka's
    /// statistics (every 5 s; 0 until the first).
    pub lag_records: AtomicU64,
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
    /// See [`Status::consumer_stalled`].
    pub consumer_stalled: bool,
    /// See [`Status::consumer_restarts`].
    pub consumer_restarts: u64,
    /// See [`Status::namespace_lost`].
    pub redis_namespace_lost: bool,
    /// See [`Status::namespace_rewrites`].
    pub redis_namespace_rewrites: u64,
}

impl Status {
    /// Records the outcome of an ingest-side Redis operation that ended now.
    pub fn note_redis(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
        self.redis_evidence.record(ok);
    }

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
            consumer_stalled: self.consumer_stalled.load(Ordering::Relaxed),
            consumer_restarts: self.consumer_restarts.load(Ordering::Relaxed),
            redis_namespace_lost: self.namespace_lost.load(Ordering::Relaxed),
            redis_namespace_rewrites: self.namespace_rewrites.load(Ordering::Relaxed),
        }
    }
}
