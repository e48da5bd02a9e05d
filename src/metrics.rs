//! Every Prometheus metric of the process, in one place. Names follow
//! `embedstream_<subsystem>_<name>_<unit>`; labels come from small fixed sets (reason, route,
//! operation, partition, HTTP status code), never a user or item id.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics. Cloning shares them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Records read from Kafka.
    pub records_consumed: IntCounter,
    /// Events applied to the model.
    pub events_applied: IntCounter,
    /// Records refused, by reason code.
    pub events_rejected: IntCounterVec,
    /// Events applied after their window had closed.
    pub events_late: IntCounter,
    /// Events dropped as retried duplicates.
    pub events_duplicate: IntCounter,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: IntCounter,
    /// Rejected records finished without a dead letter: the broker refused it even without
    /// its value and key.
    pub dead_letters_skipped: IntCounter,
    /// Dead letters handed to the producer, not yet acknowledged.
    pub dead_letters_in_flight: IntGauge,
    /// Events buffered in open windows.
    pub buffered_events: IntGauge,
    /// Events applied in memory, not yet flushed to Redis.
    pub unflushed_events: IntGauge,
    /// 1 while the consumer has paused its partitions (backpressure).
    pub paused: IntGauge,
    /// Times the consumer paused, by reason.
    pub pauses: IntCounterVec,
    /// Processing time from a window's first arrival to its close, seconds.
    pub window_close_lag: Histogram,
    /// Processing time from a record's receipt to its effect being servable, seconds.
    pub freshness: Histogram,
    /// Wall clock minus the start of the oldest open window (event time), seconds; 0 when no
    /// window is open.
    pub window_oldest_open_age: Gauge,
    /// Wall clock minus the event time of the newest applied event, seconds.
    pub newest_applied_event_age: Gauge,
    /// 1 while records are admitted but nothing has been applied for `ingest.stall_timeout_ms`.
    pub stalled: IntGauge,
    /// Stored user records that could not be decoded, moved to `{ns}:quarantine:user:{id}`.
    pub users_quarantined: IntCounter,
    /// Consumers recreated after receiving nothing while their partitions had records.
    pub consumer_restarts: IntCounter,
    /// Flush transactions committed.
    pub flushes: IntCounter,
    /// Redis operation latency, seconds, by operation.
    pub redis_duration: HistogramVec,
    /// Redis operation failures, by operation.
    pub redis_errors: IntCounterVec,
    /// 1 from the moment a flush finds that Redis lost the namespace until the whole state is
    /// rewritten.
    pub redis_namespace_lost: IntGauge,
    /// Whole-state rewrites after Redis lost the namespace.
    pub redis_namespace_rewrites: IntCounter,
    /// Records between the consumer position and the partition end, by partition.
    pub consumer_lag: IntGaugeVec,
    /// Items in the HNSW snapshot.
    pub index_items: IntGauge,
    /// Bytes the HNSW snapshot holds (item vectors and links).
    pub index_bytes: IntGauge,
    /// Items scored exactly because they changed since the snapshot (or cannot be indexed).
    pub index_fresh_items: IntGauge,
    /// Flushes whose outcome was unknown (`EXEC` timed out) found committed by the next flush.
    pub flushes_committed_late: IntCounter,
    /// Item writes of other instances merged from the change feed (`{ns}:item_changes`).
    pub item_feed_merged: IntCounter,
    /// Age of the newest change-feed entry merged when it was read, seconds: how far this
    /// instance's copy of the items is behind Redis (their owner).
    pub item_feed_lag: Histogram,
    /// Full item reloads because the change feed was trimmed past this instance's position.
    pub item_feed_reloads: IntCounter,
    /// Snapshot build time, seconds.
    pub index_rebuild_duration: Histogram,
    /// HTTP request latency, seconds, by route and HTTP status code (`200`, `429`, `503`, ...).
    pub http_duration: HistogramVec,
    /// Rate-limit decisions by route class, backend (redis, local) and decision (allowed,
    /// limited).
    pub ratelimit_decisions: IntCounterVec,
    /// Requests refused by load shedding, by reason (overloaded, timeout).
    pub http_shed: IntCounterVec,
    /// HTTP connections open now.
    pub http_connections_open: IntGauge,
    /// Connections closed at accept because `http.max_connections` were open.
    pub http_connections_refused: IntCounter,
    /// Circuit breaker state by breaker (0 closed, 1 open, 2 half-open) and transitions.
    pub breakers: crate::resilience::BreakerMetrics,
    /// Ranking responses by route, source of the ranking and experiment variant
    /// (`embedstream_rankings_total{route,source,variant}`).
    pub rankings_total: IntCounterVec,
    /// Alias switches of this instance by outcome (`switched`, `failed`)
    /// (`embedstream_namespace_switches_total{outcome}`).
    pub namespace_switches: IntCounterVec,
    /// Failed refreshes of the flags cache, by reason (unavailable, invalid).
    pub flags_refresh_failures: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0,
    ]
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    ///
    /// # Errors
    /// [`prometheus::Error`] only for a duplicate name, which is a bug.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let metric = IntCounter::new(format!("embedstream_{name}"), help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let metric = IntGauge::new(format!("embedstream_{name}"), help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let float_gauge = |name: &str, help: &str| -> Result<Gauge, prometheus::Error> {
            let metric = Gauge::new(format!("embedstream_{name}"), help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let opts =
                HistogramOpts::new(format!("embedstream_{name}"), help).buckets(latency_buckets());
            let metric = Histogram::with_opts(opts)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let events_rejected = IntCounterVec::new(
            Opts::new("embedstream_ingest_events_rejected_total", "Records refused, by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(events_rejected.clone()))?;
        let pauses = IntCounterVec::new(
            Opts::new("embedstream_ingest_pauses_total", "Times the consumer paused, by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(pauses.clone()))?;
        let redis_duration = HistogramVec::new(
            HistogramOpts::new(
                "embedstream_redis_operation_duration_seconds",
                "Redis operation latency by operation",
            )
            .buckets(latency_buckets()),
            &["operation"],
        )?;
        registry.register(Box::new(redis_duration.clone()))?;
        let redis_errors = IntCounterVec::new(
            Opts::new("embedstream_redis_errors_total", "Redis operation failures by operation"),
            &["operation"],
        )?;
        registry.register(Box::new(redis_errors.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "embedstream_ingest_consumer_lag_records",
                "Records between the consumer position and the partition end",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "embedstream_http_request_duration_seconds",
                "HTTP request latency by route and HTTP status code",
            )
            .buckets(latency_buckets()),
            &["route", "status"],
        )?;
        registry.register(Box::new(http_duration.clone()))?;
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "embedstream_ratelimit_decisions_total",
                "Rate-limit decisions by route class, backend and decision",
            ),
            &["class", "backend", "decision"],
        )?;
        registry.register(Box::new(ratelimit_decisions.clone()))?;
        let http_shed = IntCounterVec::new(
            Opts::new(
                "embedstream_http_shed_requests_total",
                "Requests refused by load shedding, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(http_shed.clone()))?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "embedstream_circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            ),
            &["breaker"],
        )?;
        registry.register(Box::new(breaker_state.clone()))?;
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "embedstream_circuit_breaker_transitions_total",
                "Circuit breaker transitions by breaker and new state",
            ),
            &["breaker", "to"],
        )?;
        registry.register(Box::new(breaker_transitions.clone()))?;
        let rankings_total = IntCounterVec::new(
            Opts::new(
                "embedstream_rankings_total",
                "Ranking responses by route, ranking source and experiment variant",
            ),
            &["route", "source", "variant"],
        )?;
        registry.register(Box::new(rankings_total.clone()))?;
        let namespace_switches = IntCounterVec::new(
            Opts::new(
                "embedstream_namespace_switches_total",
                "Switches of the served namespace after its alias moved, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(namespace_switches.clone()))?;
        for outcome in ["switched", "failed"] {
            namespace_switches.with_label_values(&[outcome]);
        }
        let flags_refresh_failures = IntCounterVec::new(
            Opts::new(
                "embedstream_flags_refresh_failures_total",
                "Failed refreshes of the flags cache by reason (the last document is kept)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(flags_refresh_failures.clone()))?;
        // Series with known label values start at 0, so that rates and alerts see them before
        // the first increment (an absent series is not a zero in PromQL).
        for reason in crate::event::RejectReason::ALL {
            events_rejected.with_label_values(&[reason.as_str()]);
        }
        for reason in ["overloaded", "timeout"] {
            http_shed.with_label_values(&[reason]);
        }
        redis_errors.with_label_values(&["flush"]);
        let build_info = IntGaugeVec::new(
            Opts::new("embedstream_build_info", "Always 1; the build's version in a label."),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build_info))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
        // process_open_fds, process_max_fds, process_start_time_seconds, process_threads (Linux,
        // read from /proc; Prometheus's standard process metrics).
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Self {
            breakers: crate::resilience::BreakerMetrics {
                state: breaker_state,
                transitions: breaker_transitions,
            },
            records_consumed: counter("ingest_records_consumed_total", "Records read from Kafka")?,
            events_applied: counter("ingest_events_applied_total", "Events applied to the model")?,
            events_rejected,
            events_late: counter(
                "ingest_events_late_total",
                "Events applied after their window closed",
            )?,
            events_duplicate: counter(
                "ingest_events_duplicate_total",
                "Events dropped as retried duplicates",
            )?,
            dead_lettered: counter(
                "ingest_dead_lettered_total",
                "Records sent to the dead-letter topic (acknowledged by the broker)",
            )?,
            dead_letters_skipped: counter(
                "ingest_dead_letters_skipped_total",
                "Rejected records finished without a dead letter: the broker refused it even without its value and key (logged at error level with their coordinates)",
            )?,
            dead_letters_in_flight: gauge(
                "ingest_dead_letters_in_flight",
                "Dead letters handed to the producer, not yet acknowledged",
            )?,
            buffered_events: gauge("ingest_buffered_events", "Events buffered in open windows")?,
            unflushed_events: gauge(
                "ingest_unflushed_events",
                "Events applied in memory, not yet flushed to Redis",
            )?,
            paused: gauge("ingest_paused", "1 while the consumer has paused its partitions")?,
            pauses,
            window_close_lag: histogram(
                "window_close_lag_seconds",
                "Processing time from a window's first arrival to its close",
            )?,
            freshness: histogram(
                "ingest_freshness_seconds",
                "Processing time from a record's receipt to its effect being servable",
            )?,
            window_oldest_open_age: float_gauge(
                "window_oldest_open_age_seconds",
                "Processing time the oldest buffered event has waited for its window to close, s; 0 when none",
            )?,
            newest_applied_event_age: float_gauge(
                "ingest_newest_applied_event_age_seconds",
                "Wall clock minus the event time of the newest applied event",
            )?,
            stalled: gauge(
                "ingest_stalled",
                "1 while records wait and nothing was applied, or the oldest buffered event has waited, for ingest.stall_timeout_ms",
            )?,
            users_quarantined: counter(
                "store_users_quarantined_total",
                "Stored user records that could not be decoded, moved to the quarantine key",
            )?,
            consumer_restarts: counter(
                "ingest_consumer_restarts_total",
                "Consumers recreated after a stall: nothing received while partitions had records",
            )?,
            flushes: counter("store_flushes_total", "Flush transactions committed to Redis")?,
            redis_duration,
            redis_errors,
            redis_namespace_lost: gauge(
                "store_namespace_lost",
                "1 while Redis has lost the namespace and the whole state is not rewritten yet",
            )?,
            redis_namespace_rewrites: counter(
                "store_namespace_rewrites_total",
                "Whole-state rewrites after Redis lost the namespace (restarted empty, flushed)",
            )?,
            consumer_lag,
            index_items: gauge("index_items", "Items in the HNSW snapshot")?,
            index_bytes: gauge(
                "index_bytes",
                "Bytes the HNSW snapshot holds (item vectors and links, USearch's count)",
            )?,
            index_fresh_items: gauge("index_fresh_items", "Items scored exactly (fresh tier)")?,
            flushes_committed_late: counter(
                "store_flushes_committed_late_total",
                "Flushes whose EXEC timed out, found committed by the next flush",
            )?,
            item_feed_merged: counter(
                "item_feed_merged_total",
                "Item writes of other instances merged from the change feed",
            )?,
            item_feed_lag: histogram(
                "item_feed_lag_seconds",
                "Age of the newest item change-feed entry when this instance read it",
            )?,
            item_feed_reloads: counter(
                "item_feed_reloads_total",
                "Full item reloads after the change feed was trimmed past this instance",
            )?,
            index_rebuild_duration: histogram(
                "index_rebuild_duration_seconds",
                "HNSW snapshot build time",
            )?,
            http_duration,
            ratelimit_decisions,
            http_shed,
            http_connections_open: gauge("http_connections_open", "HTTP connections open now")?,
            http_connections_refused: counter(
                "http_connections_refused_total",
                "Connections closed at accept because http.max_connections were open",
            )?,
            rankings_total,
            namespace_switches,
            flags_refresh_failures,
            registry,
        })
    }

    /// Records an index build of `seconds` and the snapshot it left.
    pub fn index_built(&self, index: &crate::index::Index, seconds: f64) {
        self.index_rebuild_duration.observe(seconds);
        self.index_items.set(index.snapshot_len() as i64);
        self.index_bytes.set(index.snapshot_bytes() as i64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buffer).is_err() {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_build_info_and_the_standard_process_metrics() {
        let text = Metrics::new().unwrap().render();
        let build =
            format!("embedstream_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&build), "{text}");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(text.lines().any(|line| line.starts_with(name)), "{name} missing");
        }
    }
}
