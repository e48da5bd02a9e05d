//! Layered configuration.
//!
//! Precedence, lowest first: compiled-in defaults, then a TOML file (`--config FILE`), then
//! environment variables `EMBEDSTREAM_<SECTION>__<KEY>` (e.g. `EMBEDSTREAM_MODEL__DIM=32`),
//! then CLI flags of the command. Unknown keys are errors. Every field, its unit, default and
//! constraint: `docs/configuration.md`.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::event::{DecodeLimits, EventTypes, EventTypesError};
use crate::flags::FlagsConfig;
use crate::index::IndexConfig;
use crate::ingest::{IngestConfig, KafkaConfig};
use crate::model::{ModelConfig, ModelConfigError};
use crate::ratelimit::RateLimitConfig;
use crate::serve::ServeConfig;
use crate::store::StoreConfig;
use crate::window::WindowConfig;

/// Event types and their weights, keyed by wire name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Wire name to weight (finite, in (0, 1000]). Default: view 1, click 2, like 4, cart 6,
    /// buy 8.
    pub types: BTreeMap<String, f64>,
    /// Decoder size limits.
    pub limits: DecodeLimits,
}

impl Default for EventsConfig {
    fn default() -> Self {
        let defaults = EventTypes::default();
        let types = defaults
            .names()
            .map(|name| {
                let id = defaults.id(name).unwrap_or(crate::event::EventTypeId(0));
                (name.to_owned(), f64::from(defaults.weight(id)))
            })
            .collect();
        Self { types, limits: DecodeLimits::default() }
    }
}

impl EventsConfig {
    /// The event-type table.
    ///
    /// # Errors
    /// [`EventTypesError`] for an empty table, a bad name or a bad weight.
    pub fn event_types(&self) -> Result<EventTypes, EventTypesError> {
        EventTypes::new(self.types.iter().map(|(name, weight)| (name.as_str(), *weight)))
    }
}

/// Settings of the fold pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FoldConfig {
    /// How many recent event ids are remembered to drop producer retries (default 100000;
    /// 0 disables deduplication).
    pub dedup_horizon_events: usize,
}

impl Default for FoldConfig {
    fn default() -> Self {
        Self { dedup_horizon_events: 100_000 }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Event types, weights and decoder limits.
    pub events: EventsConfig,
    /// Event-time windows.
    pub window: WindowConfig,
    /// Model hyperparameters.
    pub model: ModelConfig,
    /// Fold pipeline.
    pub fold: FoldConfig,
    /// Kafka brokers, topics, group and pass-through librdkafka properties.
    pub kafka: KafkaConfig,
    /// Ingest loop: flush cadence, user cache.
    pub ingest: IngestConfig,
    /// Redis URL and namespace.
    pub store: StoreConfig,
    /// ANN index.
    pub index: IndexConfig,
    /// HTTP API.
    pub http: ServeConfig,
    /// Rate limits of the `/v1` routes per subject and route class.
    pub rate_limit: RateLimitConfig,
    /// Feature-flags cache.
    pub flags: FlagsConfig,
    /// Authentication: token verification and issuance.
    pub auth: AuthConfig,
    /// Server-side sessions.
    pub session: crate::session::SessionConfig,
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// File unreadable, bad TOML, unknown key or wrong type (figment names the key and source).
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// Bad event types.
    #[error("configuration: events.types: {0}")]
    EventTypes(#[from] EventTypesError),
    /// Bad model hyperparameter.
    #[error("configuration: {0}")]
    Model(#[from] ModelConfigError),
    /// A window duration out of range.
    #[error("configuration: window.{field} = {value} is invalid: {rule}")]
    Window { field: &'static str, value: i64, rule: &'static str },
    /// Any other field out of range.
    #[error("configuration: {field} = {value} is invalid: {rule}")]
    Invalid { field: &'static str, value: String, rule: &'static str },
}

impl Config {
    /// Loads defaults, then `file` (when given), then `EMBEDSTREAM_*` environment variables.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and what is wrong with it.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only `SECTION__KEY` variables are configuration; the scripts' own single-level
        // variables (EMBEDSTREAM_REDIS_PORT and the like) are not.
        figment = figment.merge(
            Env::prefixed("EMBEDSTREAM_").filter(|key| key.as_str().contains("__")).split("__"),
        );
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section, including cross-field rules.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.events.event_types()?;
        self.model.validate()?;
        let window = &self.window;
        for (field, value, minimum) in [
            ("window_ms", window.window_ms, 1),
            ("out_of_orderness_ms", window.out_of_orderness_ms, 0),
            ("idle_timeout_ms", window.idle_timeout_ms, 1),
            ("max_future_ms", window.max_future_ms, 0),
        ] {
            if value < minimum {
                let rule = if minimum == 0 { "must be >= 0" } else { "must be >= 1" };
                return Err(ConfigError::Window { field, value, rule });
            }
        }
        let invalid = |field: &'static str, value: &dyn std::fmt::Display, rule: &'static str| {
            ConfigError::Invalid { field, value: value.to_string(), rule }
        };
        if self.kafka.topic.is_empty() || self.kafka.topic == self.kafka.dead_letter_topic {
            return Err(invalid(
                "kafka.topic",
                &self.kafka.topic,
                "must be non-empty and differ from kafka.dead_letter_topic",
            ));
        }
        if self.store.namespace.is_empty() || self.store.namespace.contains(char::is_whitespace) {
            return Err(invalid(
                "store.namespace",
                &self.store.namespace,
                "must be non-empty without spaces",
            ));
        }
        if self.store.cluster && self.store.namespace.contains(['{', '}']) {
            // Keys start with the hash tag `{namespace}`: a brace inside would change the tag
            // and spread the namespace over several slots.
            return Err(invalid(
                "store.namespace",
                &self.store.namespace,
                "must not contain '{' or '}' with store.cluster",
            ));
        }
        if self.store.alias.contains(char::is_whitespace) {
            return Err(invalid("store.alias", &self.store.alias, "must have no spaces"));
        }
        for (field, value) in [
            ("store.connect_timeout_ms", self.store.connect_timeout_ms),
            ("store.command_timeout_ms", self.store.command_timeout_ms),
            ("store.alias_poll_ms", self.store.alias_poll_ms),
        ] {
            if value == 0 {
                // A zero deadline would fail every Redis call.
                return Err(invalid(field, &0, "must be >= 1"));
            }
        }
        if self.ingest.flush_interval_ms == 0 {
            return Err(invalid("ingest.flush_interval_ms", &0, "must be >= 1"));
        }
        let duty = self.ingest.flush_max_duty_cycle;
        if !(duty > 0.0 && duty <= 1.0) {
            return Err(invalid("ingest.flush_max_duty_cycle", &duty, "must be in (0, 1]"));
        }
        if self.ingest.flush_max_entities == 0 {
            return Err(invalid("ingest.flush_max_entities", &0, "must be >= 1"));
        }
        if self.ingest.user_cache_capacity == 0 {
            return Err(invalid("ingest.user_cache_capacity", &0, "must be >= 1"));
        }
        if self.ingest.stall_timeout_ms == 0 {
            return Err(invalid("ingest.stall_timeout_ms", &0, "must be >= 1"));
        }
        if self.ingest.max_dead_letters_in_flight == 0 {
            return Err(invalid("ingest.max_dead_letters_in_flight", &0, "must be >= 1"));
        }
        if self.ingest.item_feed_interval_ms == 0 {
            return Err(invalid("ingest.item_feed_interval_ms", &0, "must be >= 1"));
        }
        if self.ingest.assign_timeout_ms == 0 {
            return Err(invalid("ingest.assign_timeout_ms", &0, "must be >= 1"));
        }
        if self.index.oversampling == 0 || !(2..=255).contains(&self.index.max_connections) {
            return Err(invalid(
                "index.oversampling / index.max_connections",
                &format!("{} / {}", self.index.oversampling, self.index.max_connections),
                "oversampling >= 1, max_connections in 2..=255",
            ));
        }
        let session = &self.session;
        if session.ttl_s == 0
            || session.max_per_user == 0
            || session.max_events == 0
            || !(session.decay > 0.0 && session.decay <= 1.0)
            || !(0.0..=1.0).contains(&session.blend_weight)
        {
            return Err(invalid(
                "session",
                &format!("{session:?}"),
                "ttl_s, max_per_user, max_events >= 1; decay in (0, 1]; blend_weight in [0, 1]",
            ));
        }
        for (field, breaker) in [
            ("store.breaker", &self.store.breaker),
            ("kafka.producer_breaker", &self.kafka.producer_breaker),
        ] {
            if breaker.failure_threshold == 0
                || breaker.half_open_max_calls == 0
                || breaker.success_threshold == 0
            {
                return Err(invalid(
                    field,
                    &format!("{breaker:?}"),
                    "thresholds and trial calls must be >= 1",
                ));
            }
        }
        if self.ingest.max_buffered_events == 0 || self.ingest.max_unflushed_events == 0 {
            return Err(invalid(
                "ingest.max_buffered_events / ingest.max_unflushed_events",
                &0,
                "must be >= 1",
            ));
        }
        if self.http.max_k == 0 {
            return Err(invalid("http.max_k", &0, "must be >= 1"));
        }
        if self.http.max_concurrent_requests == 0 || self.http.request_timeout_ms == 0 {
            return Err(invalid(
                "http.max_concurrent_requests / http.request_timeout_ms",
                &format!(
                    "{} / {}",
                    self.http.max_concurrent_requests, self.http.request_timeout_ms
                ),
                "both must be >= 1",
            ));
        }
        let http = &self.http;
        if !(1..=65_534).contains(&http.max_uri_bytes) {
            return Err(invalid("http.max_uri_bytes", &http.max_uri_bytes, "must be in 1..=65534"));
        }
        if !(1..=262_144).contains(&http.max_header_bytes) {
            return Err(invalid(
                "http.max_header_bytes",
                &http.max_header_bytes,
                "must be in 1..=262144",
            ));
        }
        if http.max_body_bytes == 0
            || http.redis_timeout_ms == 0
            || http.header_read_timeout_ms == 0
            || http.write_timeout_ms == 0
            || http.max_connections == 0
        {
            return Err(invalid(
                "http.max_body_bytes / redis_timeout_ms / header_read_timeout_ms / \
                 write_timeout_ms / max_connections",
                &format!(
                    "{} / {} / {} / {} / {}",
                    http.max_body_bytes,
                    http.redis_timeout_ms,
                    http.header_read_timeout_ms,
                    http.write_timeout_ms,
                    http.max_connections
                ),
                "all must be >= 1",
            ));
        }
        if !(1..=10_000).contains(&http.max_batch_events) {
            return Err(invalid(
                "http.max_batch_events",
                &http.max_batch_events,
                "must be in 1..=10000",
            ));
        }
        if http.demo && self.auth.enabled && self.auth.signing_key_path.is_none() {
            return Err(invalid(
                "http.demo",
                &http.demo,
                "the demo signs users in with tokens it issues: set auth.signing_key_path",
            ));
        }
        if let Err(rule) = crate::serve::access_log_level(&http.access_log_level) {
            return Err(invalid("http.access_log_level", &http.access_log_level, rule));
        }
        if let Err(origin) = crate::serve::cors_layer(&http.cors_allowed_origins) {
            return Err(invalid(
                "http.cors_allowed_origins",
                &origin,
                "each an origin such as https://app.example.com, or *",
            ));
        }
        if let Err(error) = self.auth.validate() {
            return Err(ConfigError::Invalid {
                field: error.field,
                value: error.value,
                rule: error.rule,
            });
        }
        if let Err(error) = self.rate_limit.validate() {
            return Err(ConfigError::Invalid {
                field: error.field,
                value: error.value,
                rule: error.rule,
            });
        }
        if self.flags.refresh_ms < 10 {
            return Err(invalid("flags.refresh_ms", &self.flags.refresh_ms, "must be >= 10"));
        }
        if self.window.idle_timeout_ms as u64 <= self.ingest.poll_timeout_ms {
            return Err(invalid(
                "window.idle_timeout_ms",
                &self.window.idle_timeout_ms,
                "must exceed ingest.poll_timeout_ms, or every poll would idle-close the windows",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_redis_deadlines_are_refused_by_name() {
        for field in ["store.connect_timeout_ms", "store.command_timeout_ms"] {
            let mut config = Config::default();
            if field == "store.connect_timeout_ms" {
                config.store.connect_timeout_ms = 0;
            } else {
                config.store.command_timeout_ms = 0;
            }
            let error = config.validate().unwrap_err();
            assert!(
                matches!(error, ConfigError::Invalid { field: named, .. } if named == field),
                "{field}: {error}"
            );
        }
    }

    #[test]
    fn a_cluster_namespace_with_a_brace_is_refused_and_its_keys_share_one_hash_tag() {
        let mut config = Config::default();
        config.store.cluster = true;
        config.store.namespace = "a}b".to_owned();
        let error = config.validate().unwrap_err();
        assert!(matches!(error, ConfigError::Invalid { field: "store.namespace", .. }), "{error}");
        config.store.cluster = false;
        config.validate().unwrap();

        let keys =
            crate::store::Keys::of(&StoreConfig { cluster: true, ..StoreConfig::default() }, "es");
        assert_eq!(keys.user("u:1"), "{es}:user:u:1");
        assert_eq!(keys.item("{x}"), "{es}:item:{x}");
        assert_eq!(keys.meta(), "{es}:meta");
        assert_eq!(crate::store::Keys::of(&StoreConfig::default(), "es").meta(), "es:meta");
    }
}
