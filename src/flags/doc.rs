//! The flags document: its wire shape and its validation.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Longest experiment or variant name, in characters.
const MAX_NAME_CHARS: usize = 64;
/// Most variants of one experiment.
const MAX_VARIANTS: usize = 16;

/// Why a flags document or a flag name was refused (user input: retrying cannot help).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlagsError {
    /// Not JSON of the document's shape (unknown field, wrong type).
    #[error("flags document: {0}")]
    Shape(String),
    /// A rollout above 100 %.
    #[error("flags document: {flag}.rollout_percent = {value} must be in 0..=100")]
    Percent { flag: &'static str, value: u32 },
    /// A name empty, too long or with characters outside `[A-Za-z0-9_.-]`.
    #[error("flags document: {field} {name:?} must be 1 to 64 characters of [A-Za-z0-9_.-]")]
    Name { field: &'static str, name: String },
    /// No variants, too many, or weights summing to 0.
    #[error("flags document: experiment.variants must hold 1 to 16 variants with a weight sum > 0, got {count} variants summing to {sum}")]
    Weights { count: usize, sum: u64 },
    /// Two variants with the same name.
    #[error("flags document: experiment variant {0:?} appears twice")]
    DuplicateVariant(String),
    /// A `session_weight` outside [0, 1].
    #[error("flags document: variant {variant:?} session_weight = {value} must be in [0, 1]")]
    SessionWeight { variant: String, value: f32 },
    /// A JSON array (or another non-object) where an object belongs: serde would read a
    /// struct from an array by position, so `[]` or `{"ann": [false, 0]}` must be refused here.
    #[error("flags document: {path} must be a JSON object")]
    NotAnObject { path: String },
    /// No such flag (CLI).
    #[error("unknown flag {0:?}: expected personalization, session_blending, ann or redis_reads")]
    UnknownFlag(String),
}

/// One switch with its rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    /// Off for everyone when false.
    pub enabled: bool,
    /// Share of users (by stable bucket) for whom an enabled flag is on, 0..=100 (default 100).
    #[serde(default = "full_rollout")]
    pub rollout_percent: u32,
}

fn full_rollout() -> u32 {
    100
}

impl Default for Flag {
    fn default() -> Self {
        Self { enabled: true, rollout_percent: 100 }
    }
}

/// One arm of the experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Reported in ranking responses and as the `variant` metric label.
    pub name: String,
    /// Relative share of users (any non-negative integer; shares are weight / sum).
    pub weight: u32,
    /// Session blending weight for this arm, in [0, 1]; absent keeps the configured weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_weight: Option<f32>,
}

/// The A/B experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Salt of the variant bucketing: renaming the experiment reshuffles users.
    pub name: String,
    /// Arms, picked by cumulative weight in this order.
    pub variants: Vec<Variant>,
}

/// The whole document stored at `{ns}:flags`. A missing flag is on at 100 %; a missing
/// experiment puts everyone in `control`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlagsDoc {
    /// Kill switch of personalised ranking (off: popularity).
    pub personalization: Flag,
    /// Kill switch of session blending (off: no session vector).
    pub session_blending: Flag,
    /// Kill switch of the ANN index (off: exact scoring).
    pub ann: Flag,
    /// Kill switch of Redis reads on the HTTP side (off: in-process state only).
    pub redis_reads: Flag,
    /// The running experiment, if any.
    pub experiment: Option<Experiment>,
}

/// The four switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagName {
    /// `personalization`.
    Personalization,
    /// `session_blending`.
    SessionBlending,
    /// `ann`.
    Ann,
    /// `redis_reads`.
    RedisReads,
}

impl FlagName {
    /// Every flag.
    pub const ALL: [FlagName; 4] =
        [Self::Personalization, Self::SessionBlending, Self::Ann, Self::RedisReads];

    /// The wire name (also the bucketing salt).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Personalization => "personalization",
            Self::SessionBlending => "session_blending",
            Self::Ann => "ann",
            Self::RedisReads => "redis_reads",
        }
    }
}

impl std::str::FromStr for FlagName {
    type Err = FlagsError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|flag| flag.as_str() == name)
            .ok_or_else(|| FlagsError::UnknownFlag(name.to_owned()))
    }
}

/// Every struct of the document is an object: the document, each switch, the experiment (or
/// `null`) and each variant. Other type errors are left to serde, which names the field.
fn require_objects(doc: &serde_json::Value) -> Result<(), FlagsError> {
    use serde_json::Value;
    let not_object = |path: String| Err(FlagsError::NotAnObject { path });
    let Value::Object(fields) = doc else { return not_object("the document".to_owned()) };
    for flag in FlagName::ALL {
        if fields.get(flag.as_str()).is_some_and(|value| !value.is_object()) {
            return not_object(flag.as_str().to_owned());
        }
    }
    match fields.get("experiment") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(experiment)) => match experiment.get("variants") {
            Some(Value::Array(variants)) => {
                match variants.iter().position(|variant| !variant.is_object()) {
                    Some(index) => not_object(format!("experiment.variants[{index}]")),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        },
        Some(_) => not_object("experiment".to_owned()),
    }
}

fn valid_name(field: &'static str, name: &str) -> Result<(), FlagsError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || !name.chars().all(allowed) {
        return Err(FlagsError::Name { field, name: name.to_owned() });
    }
    Ok(())
}

impl FlagsDoc {
    /// Parses and validates a document.
    ///
    /// Every level that is a struct must be a JSON object (an array is refused, never read by
    /// position); a key given twice in one object is refused (`duplicate field`), not read as
    /// its last value: the document is read from the text itself, never from a parsed
    /// `serde_json::Value`, whose maps keep only the last of two equal keys.
    ///
    /// # Errors
    /// [`FlagsError`] for a bad shape or a value out of range.
    pub fn from_json(text: &str) -> Result<Self, FlagsError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| FlagsError::Shape(error.to_string()))?;
        require_objects(&value)?;
        let doc: Self =
            serde_json::from_str(text).map_err(|error| FlagsError::Shape(error.to_string()))?;
        doc.validate()?;
        Ok(doc)
    }

    /// The document as compact JSON (what is stored).
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings, numbers and bools cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The switch `name`.
    pub fn flag(&self, name: FlagName) -> &Flag {
        match name {
            FlagName::Personalization => &self.personalization,
            FlagName::SessionBlending => &self.session_blending,
            FlagName::Ann => &self.ann,
            FlagName::RedisReads => &self.redis_reads,
        }
    }

    /// The switch `name`, to change.
    pub fn flag_mut(&mut self, name: FlagName) -> &mut Flag {
        match name {
            FlagName::Personalization => &mut self.personalization,
            FlagName::SessionBlending => &mut self.session_blending,
            FlagName::Ann => &mut self.ann,
            FlagName::RedisReads => &mut self.redis_reads,
        }
    }

    /// Checks percentages, names, weights and session weights.
    ///
    /// # Errors
    /// The first [`FlagsError`] found.
    pub fn validate(&self) -> Result<(), FlagsError> {
        for name in FlagName::ALL {
            let value = self.flag(name).rollout_percent;
            if value > 100 {
                return Err(FlagsError::Percent { flag: name.as_str(), value });
            }
        }
        let Some(experiment) = &self.experiment else {
            return Ok(());
        };
        valid_name("experiment.name", &experiment.name)?;
        let count = experiment.variants.len();
        let sum: u64 = experiment.variants.iter().map(|variant| u64::from(variant.weight)).sum();
        if count == 0 || count > MAX_VARIANTS || sum == 0 {
            return Err(FlagsError::Weights { count, sum });
        }
        let mut seen = HashSet::new();
        for variant in &experiment.variants {
            valid_name("variant name", &variant.name)?;
            if !seen.insert(variant.name.as_str()) {
                return Err(FlagsError::DuplicateVariant(variant.name.clone()));
            }
            if let Some(value) = variant.session_weight {
                if !(0.0..=1.0).contains(&value) {
                    return Err(FlagsError::SessionWeight { variant: variant.name.clone(), value });
                }
            }
        }
        Ok(())
    }
}
