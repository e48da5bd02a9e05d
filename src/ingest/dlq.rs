use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::fold::Rejection;
use crate::resilience::{BreakerOpen, CircuitBreaker, Guarded};

/// Headers of a dead-letter record. The value is the original record value, byte for byte, and
/// the key the original key.
pub const DLQ_HEADERS: [&str; 6] =
    ["reason", "error", "source_topic", "source_partition", "source_offset", "source_timestamp"];

/// The dead-letter producer (idempotent; a record is only marked done once the broker has
/// acknowledged it).
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    runtime: tokio::runtime::Handle,
    breaker: Option<Arc<CircuitBreaker>>,
}

/// Why a dead-letter record was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The `kafka_producer` circuit breaker is open: not tried.
    #[error(transparent)]
    Open(#[from] BreakerOpen),
    /// The broker did not acknowledge the record.
    #[error("dead-letter produce: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").field("topic", &self.topic).finish_non_exhaustive()
    }
}

/// The original record a rejection is about.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp, ms.
    pub timestamp: Option<i64>,
    /// Whether the broker set `timestamp` at append (`LogAppendTime`): only then is it a clock
    /// the producer does not control.
    pub log_append_time: bool,
    /// Key bytes.
    pub key: Option<&'a [u8]>,
    /// Value bytes.
    pub value: &'a [u8],
}

impl DeadLetters {
    /// A producer for the dead-letter topic, idempotent, with the pass-through properties applied.
    ///
    /// # Errors
    /// librdkafka configuration errors.
    pub fn new(
        kafka: &super::KafkaConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let config =
            kafka.client_config(&[("enable.idempotence", "true"), ("message.timeout.ms", "30000")]);
        Ok(Self {
            producer: config.create()?,
            topic: kafka.dead_letter_topic.clone(),
            runtime,
            breaker: None,
        })
    }

    /// Guards every send with `breaker` (the process's `kafka_producer` breaker).
    #[must_use]
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Sends one record to the dead-letter topic and waits for the acknowledgement. Blocking:
    /// call from the ingest thread, never from the async runtime.
    ///
    /// # Errors
    /// [`DeadLetterError`]: the breaker is open, or the broker's error.
    pub fn send(
        &self,
        source: SourceRecord<'_>,
        rejection: &Rejection,
    ) -> Result<(), DeadLetterError> {
        let Some(breaker) = &self.breaker else { return Ok(self.deliver(source, rejection)?) };
        breaker.call_blocking(|_| true, || self.deliver(source, rejection)).map_err(|error| {
            match error {
                Guarded::Open(open) => DeadLetterError::Open(open),
                Guarded::Inner(error) => DeadLetterError::Kafka(error),
            }
        })
    }

    fn deliver(
        &self,
        source: SourceRecord<'_>,
        rejection: &Rejection,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
        let timestamp = source.timestamp.map(|ts| ts.to_string()).unwrap_or_default();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "reason", value: Some(rejection.reason.as_str()) })
            .insert(Header { key: "error", value: Some(rejection.message.as_str()) })
            .insert(Header { key: "source_topic", value: Some(source.topic) })
            .insert(Header { key: "source_partition", value: Some(partition.as_str()) })
            .insert(Header { key: "source_offset", value: Some(offset.as_str()) })
            .insert(Header { key: "source_timestamp", value: Some(timestamp.as_str()) });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).payload(source.value).headers(headers);
        if let Some(key) = source.key {
            record = record.key(key);
        }
        let delivery = self.producer.send(record, Duration::from_secs(30));
        self.runtime.block_on(delivery).map(|_| ()).map_err(|(error, _)| error)
    }
}
