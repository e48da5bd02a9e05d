//! Publishing a dataset to Kafka, the way event producers do: keyed by user id, in event-time
//! order, the event time as the record timestamp, partitioned by Kafka's default keyed
//! partitioner (murmur2), so that `replay --partitions N` reproduces the topic exactly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::Serialize;

use crate::ingest::KafkaConfig;
use crate::source::{kafka_partition, Record};

/// How fast to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the broker takes them.
    Unlimited,
    /// At most this many records per second.
    Rate(f64),
    /// Event-time gaps divided by this factor (1 = real time).
    Speedup(f64),
}

/// What a produce run did.
#[derive(Debug, Clone, Serialize)]
pub struct ProduceSummary {
    /// Topic written.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Records acknowledged.
    pub produced: u64,
    /// Records the broker refused.
    pub failed: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Why producing failed before any record went out.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Client creation or metadata failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The topic does not exist.
    #[error("topic {0} not found (create it first, e.g. scripts/dev-up.sh)")]
    NoTopic(String),
}

/// Creates the idempotent producer.
///
/// # Errors
/// librdkafka configuration errors.
pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let config = kafka.client_config(&[
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("message.timeout.ms", "60000"),
    ]);
    config.create()
}

/// Number of partitions of `topic`.
///
/// # Errors
/// [`ProduceError::NoTopic`] when the broker does not know it.
pub fn partition_count(producer: &FutureProducer, topic: &str) -> Result<i32, ProduceError> {
    let metadata = producer.client().fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let count = metadata
        .topics()
        .iter()
        .find(|candidate| candidate.name() == topic && candidate.error().is_none())
        .map_or(0, |found| found.partitions().len() as i32);
    if count == 0 {
        return Err(ProduceError::NoTopic(topic.to_owned()));
    }
    Ok(count)
}

/// Publishes `records` in order and waits for every acknowledgement.
///
/// # Errors
/// [`ProduceError`] when the topic is missing or the client cannot be created.
pub async fn produce(
    records: &[Record],
    kafka: &KafkaConfig,
    topic: &str,
    pace: Pace,
    progress: &ProgressBar,
) -> Result<ProduceSummary, ProduceError> {
    let producer = producer(kafka)?;
    let partitions = partition_count(&producer, topic)?;
    let started = Instant::now();
    let first_ts = records.iter().find_map(|record| record.ts);
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::new();
    let (mut produced, mut failed) = (0u64, 0u64);
    for (index, record) in records.iter().enumerate() {
        pace_until(pace, index, record.ts, first_ts, started).await;
        let partition = record.key.as_deref().map_or(0, |key| kafka_partition(key, partitions));
        let mut future_record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).payload(record.value.as_slice()).partition(partition);
        if let Some(key) = record.key.as_deref() {
            future_record = future_record.key(key);
        }
        if let Some(ts) = record.ts {
            future_record = future_record.timestamp(ts);
        }
        match producer.send_result(future_record) {
            Ok(delivery) => in_flight.push_back(delivery),
            Err((error, _)) => {
                tracing::warn!(%error, line = record.line, "produce refused");
                failed += 1;
            }
        }
        while in_flight.len() >= 10_000 {
            settle(in_flight.pop_front(), &mut produced, &mut failed).await;
        }
        progress.set_position(index as u64 + 1);
    }
    while let Some(delivery) = in_flight.pop_front() {
        settle(Some(delivery), &mut produced, &mut failed).await;
    }
    let _ = producer.flush(Duration::from_secs(30));
    Ok(ProduceSummary {
        topic: topic.to_owned(),
        partitions,
        produced,
        failed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn settle(delivery: Option<DeliveryFuture>, produced: &mut u64, failed: &mut u64) {
    let Some(delivery) = delivery else { return };
    match delivery.await {
        Ok(Ok(_)) => *produced += 1,
        Ok(Err((error, _))) => {
            tracing::warn!(%error, "delivery failed");
            *failed += 1;
        }
        Err(_) => *failed += 1,
    }
}

async fn pace_until(
    pace: Pace,
    index: usize,
    ts: Option<i64>,
    first_ts: Option<i64>,
    started: Instant,
) {
    let due = match (pace, ts, first_ts) {
        (Pace::Rate(rate), _, _) if rate > 0.0 => Duration::from_secs_f64(index as f64 / rate),
        (Pace::Speedup(factor), Some(ts), Some(first)) if factor > 0.0 => {
            Duration::from_secs_f64(((ts - first).max(0) as f64 / 1000.0) / factor)
        }
        _ => return,
    };
    let elapsed = started.elapsed();
    if due > elapsed {
        tokio::time::sleep(due - elapsed).await;
    }
}
