//! File replay: the records of a file through the same fold the Kafka consumer runs.

use std::collections::BTreeMap;
use std::time::Instant;

use indicatif::ProgressBar;
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::event::EventTime;
use crate::fold::{Fold, NoStoredUsers, RecordKey};
use crate::source::{kafka_partition, Record};
use crate::window::Position;

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    /// Records read.
    pub received: u64,
    /// Events applied to the model.
    pub applied: u64,
    /// Records refused (sum of `rejected_by_reason`).
    pub rejected: u64,
    /// Records refused, by stable reason code.
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// Events applied after their window had closed.
    pub late: u64,
    /// Events dropped as retried duplicates of an `event_id`.
    pub duplicates: u64,
    /// Windows closed.
    pub windows_closed: u64,
    /// Users in the model.
    pub users: usize,
    /// Items in the model.
    pub items: usize,
    /// Model state digest (SHA-256, hex).
    pub digest: String,
    /// Partitions the records were spread over (Kafka's murmur2 partitioner on the key).
    pub partitions: i32,
    /// Seconds spent folding (decode, window, model), file reading excluded.
    pub fold_seconds: f64,
    /// `received / fold_seconds`.
    pub events_per_second: f64,
}

/// Folds `records` in order, spreading them over `partitions` exactly as a Kafka topic with
/// that many partitions and the default keyed partitioner would (so a replay reproduces a live
/// run's per-partition order and its digest). Processing time is held at 0: replays never
/// idle-close a window, and the end of input closes all of them.
///
/// The far-future guard (`window.max_future_ms`) measures event times against the wall clock
/// read once when the replay starts, the same bound a live consumer uses for records without
/// log-append time: a file whose events are all in the past replays identically whenever it
/// runs, and a far-future event is refused here as it is by the service.
///
/// # Errors
/// [`ConfigError`] when the configuration is invalid.
pub fn replay(
    records: &[Record],
    config: &Config,
    partitions: i32,
    progress: &ProgressBar,
) -> Result<(ReplaySummary, Fold), ConfigError> {
    let mut fold = Fold::new(config)?;
    let partitions = partitions.max(1);
    let mut next_offsets = vec![0i64; partitions as usize];
    for partition in 0..partitions {
        fold.windows_mut().register_partition(partition, 0);
    }
    let bound = EventTime(crate::ingest::wall_ms());
    let started = Instant::now();
    for (index, record) in records.iter().enumerate() {
        // An unkeyed record cannot be a valid event (no string user_id): the decoder will say
        // why; where it lands does not matter.
        let partition = record.key.as_deref().map_or(0, |key| kafka_partition(key, partitions));
        let offset = &mut next_offsets[partition as usize];
        let position = Position { partition, offset: *offset };
        *offset += 1;
        // Rejections are counted by the fold; a file replay has no dead-letter topic.
        // The key check of the live path (a file's keys are the lines' user_id, so it only
        // refuses what the service would refuse too).
        let key = if config.ingest.require_user_id_key {
            RecordKey::MustBeUserId(record.key.as_deref())
        } else {
            RecordKey::Unchecked
        };
        let _ = fold.offer(&record.value, key, position, Some(bound), 0);
        if index % 4096 == 4095 {
            fold.poll(0, &mut NoStoredUsers);
            progress.set_position(index as u64 + 1);
        }
    }
    fold.drain(&mut NoStoredUsers);
    progress.set_position(records.len() as u64);
    let fold_seconds = started.elapsed().as_secs_f64();
    let stats = fold.stats().clone();
    let model = fold.model();
    let summary = ReplaySummary {
        received: stats.received,
        applied: stats.applied,
        rejected: stats.rejected_total(),
        rejected_by_reason: stats.rejected,
        late: stats.late,
        duplicates: stats.duplicates,
        windows_closed: stats.windows_closed,
        users: model.user_count(),
        items: model.item_count(),
        digest: model.digest(),
        partitions,
        fold_seconds,
        events_per_second: stats.received as f64 / fold_seconds.max(1e-9),
    };
    drop(model);
    Ok((summary, fold))
}
