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

use crate::event::{DecodeLimits, EventTypes, EventTypesError};
use crate::model::{ModelConfig, ModelConfigError};
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
        Ok(())
    }
}
