use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::fold::Rejection;
use crate::resilience::{
    retry_blocking, BreakerOpen, CircuitBreaker, Guarded, Permit, RetryConfig,
};

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

/// A rejected record kept until the broker has its dead letter (owned: the consumer's buffer
/// is gone by then).
#[derive(Debug, Clone)]
pub struct OwnedSource {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    log_append_time: bool,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl OwnedSource {
    /// Copies a borrowed record.
    pub fn of(source: SourceRecord<'_>) -> Self {
        Self {
            topic: source.topic.to_owned(),
            partition: source.partition,
            offset: source.offset,
            timestamp: source.timestamp,
            log_append_time: source.log_append_time,
            key: source.key.map(<[u8]>::to_vec),
            value: source.value.to_vec(),
        }
    }

    /// Partition of the record.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Offset of the record.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record, borrowed again.
    pub fn as_source(&self) -> SourceRecord<'_> {
        SourceRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            log_append_time: self.log_append_time,
            key: self.key.as_deref(),
            value: &self.value,
        }
    }
}

/// A dead letter handed to the producer, not yet acknowledged.
pub struct InFlight {
    /// The rejected record (its partition and offset are what the acknowledgement finishes).
    pub source: OwnedSource,
    rejection: Rejection,
    delivery: DeliveryFuture,
    permit: Option<Permit>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("partition", &self.source.partition)
            .field("offset", &self.source.offset)
            .finish_non_exhaustive()
    }
}

impl DeadLetterError {
    /// Whether retrying can help: the breaker is open, the broker is away or slow. A record the
    /// broker refuses as such (too large, invalid) or a topic the producer may not write to is
    /// refused again on every retry.
    pub fn is_transient(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match self {
            Self::Open(_) => true,
            Self::Kafka(error) => !matches!(
                error.rdkafka_error_code(),
                Some(
                    Code::MessageSizeTooLarge
                        | Code::InvalidMessageSize
                        | Code::InvalidMessage
                        | Code::InvalidRecord
                        | Code::InvalidTopic
                        | Code::TopicAuthorizationFailed
                        | Code::ClusterAuthorizationFailed
                )
            ),
        }
    }
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

/// What a dead letter is sent without, and why (the header's text: size and broker error).
#[derive(Debug, Clone, Default)]
struct Dropped {
    value: Option<String>,
    key: Option<String>,
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

    /// Hands one dead letter to the producer without waiting for the broker: the caller keeps
    /// the [`InFlight`] and settles it with [`DeadLetters::settle`].
    ///
    /// # Errors
    /// The breaker is open or the producer's queue is full: the caller falls back to
    /// [`DeadLetters::send_until_delivered`].
    pub fn enqueue(
        &self,
        source: SourceRecord<'_>,
        rejection: &Rejection,
    ) -> Result<InFlight, DeadLetterError> {
        let permit = self.breaker.as_ref().map(|breaker| breaker.acquire()).transpose()?;
        let owned = OwnedSource::of(source);
        let (headers, value, key) = self.record(source, rejection, &Dropped::default());
        let mut future: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).payload(value).headers(headers);
        if let Some(key) = key {
            future = future.key(key);
        }
        match self.producer.send_result(future) {
            Ok(delivery) => {
                Ok(InFlight { source: owned, rejection: rejection.clone(), delivery, permit })
            }
            Err((error, _)) => {
                if let (Some(breaker), Some(permit)) = (&self.breaker, permit) {
                    breaker.release(permit);
                }
                Err(DeadLetterError::Kafka(error))
            }
        }
    }

    /// Settles a dead letter in flight: `None` while the broker has not answered (when `wait`
    /// is false), else whether the broker has it ([`DeadLetters::send_until_delivered`]'s
    /// answer after a failed delivery, which is sent again the blocking way).
    pub fn settle(&self, in_flight: &mut InFlight, wait: bool) -> Option<bool> {
        let answer = if wait {
            self.runtime.block_on(&mut in_flight.delivery)
        } else {
            (&mut in_flight.delivery).now_or_never()?
        };
        let delivered = matches!(answer, Ok(Ok(_)));
        if let (Some(breaker), Some(permit)) = (&self.breaker, in_flight.permit.take()) {
            breaker.record(permit, delivered);
        }
        if !delivered {
            tracing::warn!(
                partition = in_flight.source.partition,
                offset = in_flight.source.offset,
                "dead letter not acknowledged: sending it again"
            );
            return Some(
                self.send_until_delivered(in_flight.source.as_source(), &in_flight.rejection),
            );
        }
        Some(true)
    }

    /// Sends one dead letter until the broker has it: the record only counts as done then.
    /// Transient failures (the breaker open, the broker away) are retried without limit, with
    /// capped exponential backoff and full jitter (base 100 ms, cap 5 s; the consumer is paused
    /// by the breaker meanwhile). A record the broker refuses as such (for example larger than
    /// the dead-letter topic's `max.message.bytes`) is sent once more without its value, with
    /// the header `value_dropped` giving the value's size and the broker's error; if that is
    /// refused too (a key past the limit), once more without the key either (header
    /// `key_dropped`); if that is refused too, the failure is logged at error level with the
    /// record's coordinates and the stream goes on. Returns whether the broker has a dead
    /// letter of the record.
    pub fn send_until_delivered(&self, source: SourceRecord<'_>, rejection: &Rejection) -> bool {
        let forever = RetryConfig {
            base_ms: 100,
            cap_ms: 5000,
            max_attempts: u32::MAX,
            max_elapsed_ms: u64::MAX,
        };
        let send = |dropped: &Dropped| {
            retry_blocking(&forever, "dead_letter", DeadLetterError::is_transient, || {
                self.send_with(source, rejection, dropped)
            })
        };
        let Err(error) = send(&Dropped::default()) else { return true };
        let value = format!("{} bytes: {error}", source.value.len());
        tracing::warn!(
            %error,
            partition = source.partition,
            offset = source.offset,
            "the broker refuses this dead letter: sending it without its value"
        );
        let without_value = Dropped { value: Some(value), key: None };
        let Err(mut error) = send(&without_value) else { return true };
        let mut stripped = "its value";
        if let Some(key) = source.key {
            tracing::warn!(
                %error,
                partition = source.partition,
                offset = source.offset,
                "the broker refuses this dead letter without its value: sending it without its key"
            );
            let key = format!("{} bytes: {error}", key.len());
            let Err(last) = send(&Dropped { key: Some(key), ..without_value }) else { return true };
            (error, stripped) = (last, "its value and key");
        }
        tracing::error!(
            %error,
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            reason = rejection.reason.as_str(),
            "dead letter refused by the broker even without {stripped}: skipped"
        );
        false
    }

    /// One send, waiting for the acknowledgement. Blocking: call from the ingest thread, never
    /// from the async runtime.
    fn send_with(
        &self,
        source: SourceRecord<'_>,
        rejection: &Rejection,
        dropped: &Dropped,
    ) -> Result<(), DeadLetterError> {
        let Some(breaker) = &self.breaker else {
            return Ok(self.deliver(source, rejection, dropped)?);
        };
        breaker.call_blocking(|_| true, || self.deliver(source, rejection, dropped)).map_err(
            |error| match error {
                Guarded::Open(open) => DeadLetterError::Open(open),
                Guarded::Inner(error) => DeadLetterError::Kafka(error),
            },
        )
    }

    /// Headers, value and key of a dead letter.
    fn record<'a>(
        &self,
        source: SourceRecord<'a>,
        rejection: &Rejection,
        dropped: &Dropped,
    ) -> (OwnedHeaders, &'a [u8], Option<&'a [u8]>) {
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
        let (headers, value) = match &dropped.value {
            Some(why) => (
                headers.insert(Header { key: "value_dropped", value: Some(why.as_str()) }),
                &[][..],
            ),
            None => (headers, source.value),
        };
        match &dropped.key {
            Some(why) => (
                headers.insert(Header { key: "key_dropped", value: Some(why.as_str()) }),
                value,
                None,
            ),
            None => (headers, value, source.key),
        }
    }

    fn deliver(
        &self,
        source: SourceRecord<'_>,
        rejection: &Rejection,
        dropped: &Dropped,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let (headers, value, key) = self.record(source, rejection, dropped);
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).payload(value).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        let delivery = self.producer.send(record, Duration::from_secs(30));
        self.runtime.block_on(delivery).map(|_| ()).map_err(|(error, _)| error)
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    use super::DeadLetterError;

    #[test]
    fn a_dead_letter_sent_stripped_keeps_its_coordinates_and_says_what_was_dropped() {
        use rdkafka::message::Headers;

        use super::{DeadLetters, Dropped, SourceRecord};
        use crate::event::RejectReason;
        use crate::fold::Rejection;

        let runtime = tokio::runtime::Runtime::new().unwrap();
        let letters =
            DeadLetters::new(&crate::ingest::KafkaConfig::default(), runtime.handle().clone())
                .unwrap();
        let key = vec![b'k'; 1 << 20];
        let source = SourceRecord {
            topic: "events",
            partition: 2,
            offset: 41,
            timestamp: Some(7),
            log_append_time: false,
            key: Some(&key),
            value: b"{not json",
        };
        let rejection =
            Rejection { reason: RejectReason::MalformedJson, message: "bad".to_owned() };
        let header = |headers: &rdkafka::message::OwnedHeaders, name: &str| {
            headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(<[u8]>::to_vec)
        };
        let (headers, value, kept) = letters.record(source, &rejection, &Dropped::default());
        assert_eq!((value, kept.map(<[u8]>::len)), (&b"{not json"[..], Some(1 << 20)));
        assert_eq!(header(&headers, "key_dropped"), None);
        let stripped = Dropped {
            value: Some("9 bytes: x".to_owned()),
            key: Some("1048576 bytes: y".to_owned()),
        };
        let (headers, value, kept) = letters.record(source, &rejection, &stripped);
        assert!(value.is_empty() && kept.is_none(), "neither value nor key is sent");
        assert_eq!(header(&headers, "value_dropped"), Some(b"9 bytes: x".to_vec()));
        assert_eq!(header(&headers, "key_dropped"), Some(b"1048576 bytes: y".to_vec()));
        assert_eq!(header(&headers, "source_partition"), Some(b"2".to_vec()));
        assert_eq!(header(&headers, "source_offset"), Some(b"41".to_vec()));
        assert_eq!(header(&headers, "reason"), Some(b"malformed_json".to_vec()));
    }

    #[test]
    fn a_record_the_broker_refuses_is_not_retried_but_an_absent_broker_is() {
        let refused = DeadLetterError::Kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        ));
        assert!(!refused.is_transient());
        for code in [RDKafkaErrorCode::MessageTimedOut, RDKafkaErrorCode::BrokerTransportFailure] {
            assert!(DeadLetterError::Kafka(KafkaError::MessageProduction(code)).is_transient());
        }
    }
}
