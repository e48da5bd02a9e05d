use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, Timestamp};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::dlq::SourceRecord;
use super::engine::{Engine, StartAt};
use super::{IngestConfig, KafkaConfig};

/// Rebalance handshake: runs inside `poll`, on the consumer thread, while the poll loop does
/// not hold the engine lock.
struct IngestContext {
    engine: Arc<Mutex<Engine>>,
    topic: String,
    cancel: CancellationToken,
    /// How long an assignment retries transient Redis failures before the member gives up.
    assign_timeout_ms: u64,
    /// Why the consumer stopped by itself (an assignment it could not resolve).
    fatal: Mutex<Option<String>>,
    /// Records past the consumer's position per assigned partition, from the last statistics.
    lag: Mutex<BTreeMap<i32, i64>>,
    /// Partitions whose fetch position is past the high watermark of the fetch responses, and
    /// since when, from the statistics (see [`PAST_END_AFTER`]).
    past_end: Mutex<BTreeMap<i32, PastEnd>>,
    metrics: crate::metrics::Metrics,
    status: Arc<super::Status>,
}

impl ClientContext for IngestContext {
    /// librdkafka's statistics (every `statistics.interval.ms`, served inside `poll`): the lag
    /// of each assigned partition, `hi_offset - app_offset`, without a broker round trip.
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let mut lags = BTreeMap::new();
        let mut past_end = self.past_end.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = std::mem::take(&mut *past_end);
        for partition in topic.partitions.values() {
            if partition.partition < 0 || !partition.desired {
                continue;
            }
            // A fetch position past the log's end: Kafka answers such a fetch with
            // OFFSET_OUT_OF_RANGE (the consumer then resets to the log start, and the engine
            // sees a record below the stored progress), other brokers (tansu) with an empty
            // batch and the log's high watermark, for as long as the log stays shorter.
            if partition.hi_offset >= 0 && partition.next_offset > partition.hi_offset {
                let seen = PastEnd {
                    next_offset: partition.next_offset,
                    high_watermark: partition.hi_offset,
                    since: Instant::now(),
                };
                let since = before
                    .get(&partition.partition)
                    .filter(|earlier| earlier.next_offset == seen.next_offset)
                    .map_or(seen.since, |earlier| earlier.since);
                past_end.insert(partition.partition, PastEnd { since, ..seen });
            }
            // The position: past the last record handed to us, else the committed offset (a
            // consumer that has received nothing yet).
            let position = if partition.app_offset >= 0 {
                partition.app_offset
            } else {
                partition.committed_offset
            };
            if partition.hi_offset < 0 || position < 0 {
                continue;
            }
            // Some brokers under-report the high watermark: never report negative lag.
            let lag = (partition.hi_offset - position).max(0);
            lags.insert(partition.partition, lag);
            self.metrics
                .consumer_lag
                .with_label_values(&[&partition.partition.to_string()])
                .set(lag);
        }
        let total: i64 = lags.values().sum();
        self.status.lag_records.store(total.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut current) = self.lag.lock() {
            *current = lags;
        }
    }
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A partition's fetch position past the high watermark, first seen at `since`.
#[derive(Debug, Clone, Copy)]
struct PastEnd {
    next_offset: i64,
    high_watermark: i64,
    since: Instant,
}

/// How long a partition's fetch position must stay past the high watermark reported by the
/// fetch responses (five statistics in a row at the same position) before the engine halts:
/// a high watermark read from a `ListOffsets` answer (some brokers under-report it) is
/// replaced by the next fetch response well within this.
const PAST_END_AFTER: Duration = Duration::from_secs(5);

impl IngestContext {
    /// The partitions whose fetch position has stayed past the log's end for [`PAST_END_AFTER`].
    fn past_end(&self) -> Vec<(i32, PastEnd)> {
        let past_end = self.past_end.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        past_end
            .iter()
            .filter(|(_, seen)| seen.since.elapsed() >= PAST_END_AFTER)
            .map(|(partition, seen)| (*partition, *seen))
            .collect()
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic).iter().map(|element| element.partition()).collect()
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let partitions = self.partitions(tpl);
        // Redis is authoritative for where to start: never guess. Transient failures are
        // retried (capped exponential backoff, full jitter) for `ingest.assign_timeout_ms`; a
        // failure that cannot heal (corrupt progress), or one that outlasts the bound, stops
        // the consumer with the reason: `run` exits non-zero, the group moves the partitions.
        let bounded = crate::resilience::RetryConfig {
            base_ms: 100,
            cap_ms: 5000,
            max_attempts: u32::MAX,
            max_elapsed_ms: self.assign_timeout_ms,
        };
        let resolved = crate::resilience::retry_blocking(
            &bounded,
            "assign",
            |error: &crate::store::StoreError| error.is_transient() && !self.cancel.is_cancelled(),
            || lock(&self.engine).on_assign(&partitions, now_ms()),
        );
        let starts = match resolved {
            Ok(starts) => starts,
            Err(error) => {
                tracing::error!(%error, ?partitions, "cannot resolve where assigned partitions start: stopping");
                if let Ok(mut fatal) = self.fatal.lock() {
                    fatal.get_or_insert_with(|| format!("assigning {partitions:?}: {error}"));
                }
                self.cancel.cancel();
                return;
            }
        };
        for (partition, start) in starts {
            let offset = match start {
                StartAt::Offset(offset) => Offset::Offset(offset),
                StartAt::Beginning => Offset::Beginning,
                StartAt::End => Offset::End,
                StartAt::Timestamp(ms) => timestamp_offset(consumer, &self.topic, partition, ms),
            };
            if let Err(error) = tpl.set_partition_offset(&self.topic, partition, offset) {
                tracing::error!(%error, partition, "cannot set start offset");
            }
            tracing::info!(partition, ?offset, "partition assigned");
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(error) = result {
            tracing::error!(%error, "assign failed");
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions = self.partitions(tpl);
        tracing::info!(?partitions, "partitions revoked: flushing before giving them up");
        // Transient failures are retried as on assign, for `ingest.assign_timeout_ms` (not
        // while stopping: the final flush has just failed the same way).
        let bounded = crate::resilience::RetryConfig {
            base_ms: 100,
            cap_ms: 5000,
            max_attempts: u32::MAX,
            max_elapsed_ms: self.assign_timeout_ms,
        };
        let flushed = crate::resilience::retry_blocking(
            &bounded,
            "revoke",
            |error: &crate::store::StoreError| error.is_transient() && !self.cancel.is_cancelled(),
            || lock(&self.engine).on_revoke(&partitions),
        );
        if let Err(error) = flushed {
            let mut engine = lock(&self.engine);
            if self.cancel.is_cancelled() {
                // Stopping: nothing of the revoked partitions is written after this (the
                // consumer is leaving), and what was not flushed is re-read by their next
                // owner from the progress stored with the state.
                tracing::warn!(%error, ?partitions, "flush on revoke failed while stopping; unflushed events will be re-read");
            } else if engine.halted().is_none() {
                // The in-memory state is now ahead of Redis for partitions another member may
                // own: writing any of it later could overwrite that member's work. Stop
                // writing for good; a restart resumes from the durable state.
                engine.halt(
                    super::engine::EXIT_REVOKE_FLUSH_FAILED,
                    format!("the flush on revoking partitions {partitions:?} failed: {error}"),
                );
            }
            drop(engine);
            if !self.cancel.is_cancelled() {
                self.cancel.cancel();
            }
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(error) = result {
            tracing::error!(%error, "unassign failed");
        }
    }
}

fn timestamp_offset(
    consumer: &BaseConsumer<IngestContext>,
    topic: &str,
    partition: i32,
    ms: i64,
) -> Offset {
    let mut query = TopicPartitionList::new();
    if query.add_partition_offset(topic, partition, Offset::Offset(ms)).is_err() {
        return Offset::Beginning;
    }
    match consumer.offsets_for_times(query, Duration::from_secs(10)) {
        Ok(answer) => answer
            .find_partition(topic, partition)
            .map(|element| element.offset())
            .filter(|offset| matches!(offset, Offset::Offset(_) | Offset::End))
            .unwrap_or(Offset::End),
        Err(error) => {
            tracing::warn!(%error, partition, "offsets_for_times failed, starting at the beginning");
            Offset::Beginning
        }
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Processing time for idleness and pacing, ms on a monotonic clock (never steps back with a
/// wall-clock adjustment); its origin is the first call.
fn now_ms() -> i64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as i64
}

/// Wall-clock time, ms since the Unix epoch: the admission bound for event times when the
/// broker does not stamp records itself (see [`crate::window`]).
pub fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Runs the consumer until `cancel` fires: joins the group, polls, feeds the engine, flushes,
/// and commits the group offsets after each successful flush. Blocking: run it on its own
/// thread.
///
/// A watchdog recreates the consumer (final flush, leave the group, join again from the stored
/// progress) when it has received nothing for `ingest.stall_timeout_ms` while an assigned
/// partition had records past its position and consumption was not paused on purpose: a
/// member dropped from the group (`max.poll.interval.ms`) or a fetcher that stopped after a
/// broker restart. Lag comes from librdkafka's statistics callback
/// (`statistics.interval.ms` = 1000: `hi_offset` minus `app_offset` per partition). A
/// partition enters the statistics once it has a position (its first record, or a committed
/// offset), so its `embedstream_ingest_consumer_lag_records` appears within about a second of
/// that, not five.
///
/// # Errors
/// [`ConsumerError`]: librdkafka errors creating or subscribing the consumer, or an
/// assignment that could not be resolved (the consumer then stops by itself and cancels
/// `cancel`).
pub fn run_consumer(
    engine: Arc<Mutex<Engine>>,
    kafka: &KafkaConfig,
    ingest: &IngestConfig,
    cancel: CancellationToken,
) -> Result<(), ConsumerError> {
    loop {
        match run_session(&engine, kafka, ingest, &cancel)? {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::Stalled => {
                let engine = lock(&engine);
                let status = engine.status();
                status.consumer_restarts.fetch_add(1, Ordering::Relaxed);
                engine.metrics.consumer_restarts.inc();
                tracing::warn!("consumer recreated after a stall");
            }
        }
    }
}

enum SessionEnd {
    Stopped,
    Stalled,
}

/// One consumer, from joining the group to leaving it.
fn run_session(
    engine: &Arc<Mutex<Engine>>,
    kafka: &KafkaConfig,
    ingest: &IngestConfig,
    cancel: &CancellationToken,
) -> Result<SessionEnd, ConsumerError> {
    let session_timeout = kafka.session_timeout_ms.to_string();
    let client = kafka.client_config(&[
        ("group.id", &kafka.group_id),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "true"),
        ("auto.offset.reset", "earliest"),
        ("session.timeout.ms", &session_timeout),
        ("statistics.interval.ms", "1000"),
    ]);
    let status = lock(engine).status();
    let context = IngestContext {
        engine: Arc::clone(engine),
        topic: kafka.topic.clone(),
        cancel: cancel.clone(),
        assign_timeout_ms: ingest.assign_timeout_ms,
        fatal: Mutex::new(None),
        lag: Mutex::new(BTreeMap::new()),
        past_end: Mutex::new(BTreeMap::new()),
        metrics: lock(engine).metrics.clone(),
        status: Arc::clone(&status),
    };
    let consumer: BaseConsumer<IngestContext> = client.create_with_context(context)?;
    consumer.subscribe(&[&kafka.topic])?;
    let poll_timeout = Duration::from_millis(ingest.poll_timeout_ms);
    let stall_after = Duration::from_millis(ingest.stall_timeout_ms);
    let mut paused = BTreeSet::new();
    let mut last_assigned = BTreeSet::new();
    let mut last_received = Instant::now();
    let mut records = 0u64;
    let mut end = SessionEnd::Stopped;
    while !cancel.is_cancelled() {
        // Borrowed, not detached: a detached message copies its payload, key and topic name
        // (three allocations a record, a tenth of the ingest thread's time).
        let mut batch = Vec::new();
        let mut next = consumer.poll(poll_timeout);
        while let Some(message) = next {
            batch.push(message);
            if batch.len() >= ingest.max_poll_records {
                break;
            }
            next = consumer.poll(Duration::ZERO);
        }
        let (commit, pause, keep) = {
            let mut engine = lock(engine);
            // One reading of each clock for the batch: its records arrived together.
            let (now, wall, arrived) = (now_ms(), wall_ms(), Instant::now());
            for message in &batch {
                match message {
                    Ok(message) => {
                        last_received = arrived;
                        records += 1;
                        engine.on_record(source_record(message), now, wall, arrived);
                    }
                    Err(KafkaError::PartitionEOF(partition)) => engine.on_eof(*partition),
                    Err(error) => tracing::warn!(%error, "consumer error"),
                }
            }
            for (partition, seen) in consumer.context().past_end() {
                let evidence = format!(
                    "the fetch position {} stayed past the high watermark {} for {} s",
                    seen.next_offset,
                    seen.high_watermark,
                    PAST_END_AFTER.as_secs()
                );
                engine.progress_past_log_end(partition, &evidence);
            }
            let commit = engine.tick(now);
            if engine.halted().is_some() {
                cancel.cancel();
            }
            let pause = engine.backpressure();
            (commit, pause, engine.keep_fetching(now))
        };
        if let Some(offsets) = commit {
            commit_offsets(&consumer, &kafka.topic, &offsets);
        }
        apply_backpressure(
            &consumer,
            &kafka.topic,
            pause.is_some(),
            &keep,
            &mut paused,
            &mut last_assigned,
        );
        if pause.is_some() {
            last_received = Instant::now();
        }
        fault_stall(&consumer, ingest.fault_stall_after_records, records);
        let behind = consumer.context().lag.lock().is_ok_and(|lag| lag.values().any(|l| *l > 0));
        let stalled = behind && last_received.elapsed() >= stall_after;
        if stalled != status.consumer_stalled.swap(stalled, Ordering::Relaxed) && stalled {
            tracing::warn!(
                quiet_ms = last_received.elapsed().as_millis() as u64,
                "consumer stalled: nothing received while partitions have records past the \
                 position; recreating it"
            );
            end = SessionEnd::Stalled;
            break;
        }
    }
    let final_flush = {
        let mut engine = lock(engine);
        engine.drain_dead_letters();
        // A halted engine writes nothing more (see `Halt`).
        engine.halted().is_none().then(|| {
            tracing::info!("consumer stopping: final flush");
            engine.flush()
        })
    };
    match final_flush {
        Some(Ok(offsets)) => commit_offsets(&consumer, &kafka.topic, &offsets),
        Some(Err(error)) => {
            tracing::warn!(%error, "final flush failed; unflushed events will be re-read")
        }
        None => {}
    }
    consumer.unsubscribe();
    // Serve the revoke callback of the unsubscribe before the consumer goes.
    let _ = consumer.poll(Duration::from_millis(100));
    if let Some(halt) = lock(engine).halted() {
        return Err(ConsumerError::Halted(halt.clone()));
    }
    let fatal = consumer.context().fatal.lock().ok().and_then(|mut fatal| fatal.take());
    match fatal {
        Some(reason) => Err(ConsumerError::Assign(reason)),
        None => Ok(end),
    }
}

/// The `ingest.fault_stall_after_records` test hook: pauses every assigned partition inside
/// librdkafka, once per process, without telling the engine.
fn fault_stall(consumer: &BaseConsumer<IngestContext>, after: u64, records: u64) {
    static FIRED: AtomicBool = AtomicBool::new(false);
    if after == 0 || records < after || FIRED.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(assignment) = consumer.assignment() {
        if assignment.count() > 0 && consumer.pause(&assignment).is_ok() {
            FIRED.store(true, Ordering::Relaxed);
            tracing::error!(records, "fault injection: fetching stopped");
        }
    }
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Creating or subscribing the consumer failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// An assignment could not be resolved (stored progress unreadable).
    #[error("{0}")]
    Assign(String),
    /// The engine halted: it stopped writing for good (see [`super::engine::Halt`]).
    #[error("{0}")]
    Halted(super::engine::Halt),
}

impl ConsumerError {
    /// The exit status `embedstream run` ends with: the halt's own (3, 4 or 5), else 1.
    pub fn exit_status(&self) -> i32 {
        match self {
            Self::Halted(halt) => halt.exit_status,
            Self::Kafka(_) | Self::Assign(_) => 1,
        }
    }
}

/// Pauses every assigned partition while `pause` holds, except those in `keep` (the ones holding
/// the watermark back under a full buffer), and resumes them once it no longer does. Only
/// changes are sent, and everything again after the assignment changed (partitions assigned
/// during a pause are paused too). The poll loop
/// goes on while paused, so the member stays in the group (`max.poll.interval.ms`) and keeps
/// its position: librdkafka resumes fetching from the last consumed offset.
fn apply_backpressure(
    consumer: &BaseConsumer<IngestContext>,
    topic: &str,
    pause: bool,
    keep: &[i32],
    paused: &mut BTreeSet<i32>,
    last_assigned: &mut BTreeSet<i32>,
) {
    if !pause && paused.is_empty() {
        return;
    }
    let Ok(assignment) = consumer.assignment() else { return };
    let assigned: BTreeSet<i32> =
        assignment.elements_for_topic(topic).iter().map(|element| element.partition()).collect();
    if assigned != *last_assigned {
        // A new assignment: whatever librdkafka now holds, state it all again.
        paused.clear();
        let all = {
            let mut tpl = TopicPartitionList::new();
            for partition in &assigned {
                tpl.add_partition(topic, *partition);
            }
            tpl
        };
        if let Err(error) = consumer.resume(&all) {
            tracing::warn!(%error, "resume after a new assignment failed");
        }
        last_assigned.clone_from(&assigned);
    }
    // Only changes are sent: librdkafka drops a partition's prefetched records on every pause,
    // so pausing and resuming the same partition each round would starve it.
    let wanted: BTreeSet<i32> = if pause {
        assigned.iter().copied().filter(|partition| !keep.contains(partition)).collect()
    } else {
        BTreeSet::new()
    };
    let list = |partitions: &mut dyn Iterator<Item = &i32>| {
        let mut tpl = TopicPartitionList::new();
        for partition in partitions {
            tpl.add_partition(topic, *partition);
        }
        tpl
    };
    let to_pause = list(&mut wanted.difference(paused));
    let to_resume = list(&mut paused.intersection(&assigned).filter(|p| !wanted.contains(p)));
    if to_pause.count() > 0 {
        if let Err(error) = consumer.pause(&to_pause) {
            tracing::warn!(%error, "pause failed");
            return;
        }
    }
    if to_resume.count() > 0 {
        if let Err(error) = consumer.resume(&to_resume) {
            tracing::warn!(%error, "resume failed");
            return;
        }
    }
    *paused = wanted;
}

fn source_record<'a>(message: &'a BorrowedMessage<'_>) -> SourceRecord<'a> {
    SourceRecord {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message.timestamp().to_millis(),
        log_append_time: matches!(message.timestamp(), Timestamp::LogAppendTime(_)),
        key: message.key(),
        value: message.payload().unwrap_or(&[]),
    }
}

fn commit_offsets(consumer: &BaseConsumer<IngestContext>, topic: &str, offsets: &[(i32, i64)]) {
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in offsets {
        if tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).is_err() {
            return;
        }
    }
    if tpl.count() > 0 {
        if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(%error, "group commit failed (redis progress stays authoritative)");
        }
    }
}
