//! The Kafka conversation: consumer group, rebalance handshake, dead-letter queue, and the
//! engine that ties the fold to the Redis store with effectively-once progress.
//!
//! - `progress`: which offsets are done, stored with the state ([`StoredProgress`]).
//! - `engine`: fold + store + progress; restore, flush, assign and revoke (no Kafka types).
//! - `consumer`: the poll loop on its own thread and the rebalance callback.
//! - `dlq`: the dead-letter producer.

mod consumer;
mod dlq;
mod engine;
mod progress;
mod status;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use consumer::{run_consumer, wall_ms, ConsumerError};
pub use dlq::{DeadLetterError, DeadLetters, SourceRecord, DLQ_HEADERS};
pub use engine::{
    Engine, EngineError, Halt, StartAt, EXIT_NAMESPACE_LOST, EXIT_PROGRESS_PAST_LOG_END,
    EXIT_REVOKE_FLUSH_FAILED,
};
pub use progress::{PartitionProgress, StoredProgress};
pub use status::{PauseReason, Status, StatusSnapshot};

/// Kafka settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers` (default `127.0.0.1:19092`, the port `scripts/dev-up.sh` uses).
    pub brokers: String,
    /// Events topic (default `events`; records keyed by user id).
    pub topic: String,
    /// Dead-letter topic (default `events-dlq`).
    pub dead_letter_topic: String,
    /// Consumer group id (default `embedstream`).
    pub group_id: String,
    /// `session.timeout.ms` (default 10000).
    pub session_timeout_ms: u64,
    /// Further librdkafka properties, passed through untouched (they override ours).
    pub properties: BTreeMap<String, String>,
    /// The `kafka_producer` circuit breaker (dead-letter and HTTP ingestion produces).
    pub producer_breaker: crate::resilience::BreakerConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:19092".to_owned(),
            topic: "events".to_owned(),
            dead_letter_topic: "events-dlq".to_owned(),
            group_id: "embedstream".to_owned(),
            session_timeout_ms: 10_000,
            properties: BTreeMap::new(),
            producer_breaker: crate::resilience::BreakerConfig::default(),
        }
    }
}

impl KafkaConfig {
    /// A librdkafka client configuration: `bootstrap.servers`, then `ours`, then the
    /// pass-through properties, which therefore override ours.
    pub fn client_config(&self, ours: &[(&str, &str)]) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in ours {
            config.set(*key, *value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Ingest settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Longest time applied state waits before it is written to Redis, ms (default 1000),
    /// while flushes are cheap; see `flush_max_duty_cycle` for when they are not.
    pub flush_interval_ms: u64,
    /// The largest share of wall time flushes may take (default 0.25; in (0, 1], 1 = no
    /// pacing): after a flush that took `d`, the next one starts no sooner than
    /// `d x (1 - c) / c` after it ended, as Flink's minimum pause between checkpoints keeps a
    /// job progressing, here scaled by the last flush's cost. A flush rewrites every item the
    /// fold moved (each event moves its 32 sampled negatives too), so under live traffic on a
    /// large catalogue one flush writes most of the catalogue whatever the interval: without
    /// the pause, flushes back to back kept Redis busy in long transactions and the ingest
    /// thread encoding them. The pause is skipped once `max_unflushed_events / 2` are waiting,
    /// and when every partition is at its end with nothing buffered.
    pub flush_max_duty_cycle: f64,
    /// Most users and items one flush transaction holds; a larger flush (after a Redis
    /// outage) is written as several transactions, the earlier ones to staging keys, the last
    /// one making all of it visible with the progress (default 10000; at least 1).
    pub flush_max_entities: usize,
    /// Longest poll wait, ms (default 100).
    pub poll_timeout_ms: u64,
    /// Records taken per poll round (default 2000).
    pub max_poll_records: usize,
    /// Users kept in memory; beyond it the least recently active clean users are evicted and
    /// reloaded from Redis when they next appear (default 1000000).
    pub user_cache_capacity: usize,
    /// Test hook: abort the process right after this many successful flushes, before the Kafka
    /// commit (default 0: never). For crash-consistency tests only.
    pub fault_crash_after_flushes: u64,
    /// Test hook: after this many records, stop fetching (pause every partition inside
    /// librdkafka behind the engine's back) once per process, as a stuck fetcher would; 0 = off.
    pub fault_stall_after_records: u64,
    /// Backpressure: events buffered in open (or user-blocked) windows at which the consumer
    /// pauses its partitions; it resumes below half of it (default 200000).
    pub max_buffered_events: usize,
    /// Degradation bound: events applied in memory since the last successful flush (Redis
    /// down) at which the consumer pauses; it resumes after the next successful flush
    /// (default 500000).
    pub max_unflushed_events: u64,
    /// Pause consumption as soon as the `redis` circuit breaker opens, instead of folding into
    /// memory up to `max_unflushed_events` (default false).
    pub pause_on_redis_outage: bool,
    /// Readiness: records admitted but nothing applied for this long marks ingest as stalled
    /// (`/readyz` `degraded: ["ingest_stalled"]`, `embedstream_ingest_stalled` 1), ms
    /// (default 30000; at least 1).
    pub stall_timeout_ms: u64,
    /// Dead letters handed to the producer and not yet acknowledged, at most; beyond it the
    /// poll loop waits for the oldest (default 1000; at least 1).
    pub max_dead_letters_in_flight: usize,
    /// How long a partition assignment retries transient Redis failures while reading the
    /// stored progress before the consumer stops with an error, ms (default 60000; at least 1).
    pub assign_timeout_ms: u64,
    /// How often the item change feed (`{ns}:item_changes`) is read for other instances'
    /// item writes, ms (default 200): the bound, plus one flush interval of the writer, on how
    /// far this instance's item copies trail Redis.
    pub item_feed_interval_ms: u64,
    /// Refuse a record whose key is not its event's `user_id` (byte for byte), to the
    /// dead-letter topic with reason `key_not_user_id` (default true). Users are owned by
    /// partition: with more than one instance, a record keyed otherwise lands on a partition
    /// another member may own, and the two members overwrite each other's state of that user.
    /// Turn off only for a single instance reading a topic whose producers cannot key.
    pub require_user_id_key: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 1000,
            flush_max_duty_cycle: 0.25,
            flush_max_entities: 10_000,
            poll_timeout_ms: 100,
            max_poll_records: 2000,
            user_cache_capacity: 1_000_000,
            fault_crash_after_flushes: 0,
            fault_stall_after_records: 0,
            max_buffered_events: 200_000,
            max_unflushed_events: 500_000,
            pause_on_redis_outage: false,
            stall_timeout_ms: 30_000,
            max_dead_letters_in_flight: 1000,
            assign_timeout_ms: 60_000,
            item_feed_interval_ms: 200,
            require_user_id_key: true,
        }
    }
}

/// Where a partition with no stored progress starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// The earliest offset.
    Earliest,
    /// The end (only new records).
    Latest,
    /// The first offset whose record timestamp is at or after this, ms.
    Timestamp(i64),
    /// Explicit offsets per partition; unlisted partitions start at the earliest.
    Offsets(BTreeMap<i32, i64>),
}

impl std::str::FromStr for StartPosition {
    type Err = String;

    /// `earliest`, `latest`, `timestamp:<ms>`, or `offsets:<partition>=<offset>,...`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "earliest" => return Ok(Self::Earliest),
            "latest" => return Ok(Self::Latest),
            _ => {}
        }
        if let Some(ms) = text.strip_prefix("timestamp:") {
            return ms
                .parse()
                .map(Self::Timestamp)
                .map_err(|_| format!("bad timestamp {ms:?}: expected integer ms"));
        }
        if let Some(list) = text.strip_prefix("offsets:") {
            let mut offsets = BTreeMap::new();
            for pair in list.split(',') {
                let (partition, offset) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("bad partition offset {pair:?}: expected P=O"))?;
                let partition: i32 =
                    partition.trim().parse().map_err(|_| format!("bad partition {partition:?}"))?;
                let offset: i64 =
                    offset.trim().parse().map_err(|_| format!("bad offset {offset:?}"))?;
                if partition < 0 || offset < 0 {
                    return Err(format!("negative partition or offset in {pair:?}"));
                }
                offsets.insert(partition, offset);
            }
            return Ok(Self::Offsets(offsets));
        }
        Err(format!(
            "unknown start position {text:?}: use earliest, latest, timestamp:<ms> or offsets:<p>=<o>,..."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!("earliest".parse(), Ok(StartPosition::Earliest));
        assert_eq!(
            "timestamp:1700000000000".parse(),
            Ok(StartPosition::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            "offsets:0=5,2=7".parse(),
            Ok(StartPosition::Offsets(BTreeMap::from([(0, 5), (2, 7)])))
        );
        assert!("offsets:0".parse::<StartPosition>().is_err());
        assert!("offsets:0=-1".parse::<StartPosition>().is_err());
        assert!("yesterday".parse::<StartPosition>().is_err());
    }
}
