//! Feature flags: kill switches, percentage rollouts with stable per-user bucketing, and one
//! A/B experiment.
//!
//! The document lives in Redis as one JSON string at `{ns}:flags` (replaced whole, so a reader
//! never sees half an update). Every instance caches it in a [`FlagStore`] refreshed in the
//! background every `flags.refresh_ms`; ranking handlers ask [`FlagStore::decide`], which does
//! no I/O.
//!
//! Bucketing (issue 4, item 8): a flag is on for a user iff it is enabled and
//! `xxh3_64("{flag}:{user_id}") % 100 < rollout_percent`; the experiment variant is picked by
//! `xxh3_64("{experiment}:{user_id}") % (sum of weights)` over the variants' cumulative
//! weights. xxh3 with seed 0 is a fixed function, so every instance and every restart gives a
//! user the same answer.

mod doc;
mod redis_sync;
mod store;

pub use doc::{Experiment, Flag, FlagName, FlagsDoc, FlagsError, Variant};
pub use redis_sync::{load_sync, run_action, save_sync, update_sync, FlagsAction, SyncFlagsError};
pub use store::{FlagSource, FlagStore, FlagsView, RefreshError};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// The variant of users outside any experiment.
pub const CONTROL: &str = "control";

/// Settings of the flag cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlagsConfig {
    /// How often each instance re-reads `{ns}:flags` from Redis, ms (default 1000, >= 10).
    pub refresh_ms: u64,
}

impl Default for FlagsConfig {
    fn default() -> Self {
        Self { refresh_ms: 1000 }
    }
}

/// What the flags say for one user: the answer of [`FlagStore::decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decisions {
    /// Personalised ranking; off forces popularity ranking.
    pub personalization: bool,
    /// Blending the session vector into the score; off ranks without it.
    pub session_blending: bool,
    /// The ANN index; off forces exact scoring.
    pub ann: bool,
    /// Reading Redis on the HTTP side; off serves from in-process state only (the Redis-down
    /// fallback).
    pub redis_reads: bool,
    /// The experiment variant (`control` when no experiment runs).
    pub variant: String,
    /// The variant's override of the session blending weight, in [0, 1].
    pub session_weight: Option<f32>,
}

/// The bucket of `user_id` for `salt` (a flag or experiment name), in `0..modulus`.
///
/// `modulus` must be >= 1 (callers pass 100 or a positive weight sum).
pub fn bucket(salt: &str, user_id: &str, modulus: u64) -> u64 {
    let key = format!("{salt}:{user_id}");
    xxh3_64(key.as_bytes()) % modulus.max(1)
}

impl FlagsDoc {
    /// Decides every flag and the variant for `user_id`.
    pub fn decide(&self, user_id: &str) -> Decisions {
        let on = |name: FlagName| self.flag(name).is_on_for(name.as_str(), user_id);
        let variant = self.experiment.as_ref().and_then(|experiment| experiment.pick(user_id));
        Decisions {
            personalization: on(FlagName::Personalization),
            session_blending: on(FlagName::SessionBlending),
            ann: on(FlagName::Ann),
            redis_reads: on(FlagName::RedisReads),
            variant: variant.map_or_else(|| CONTROL.to_owned(), |chosen| chosen.name.clone()),
            session_weight: variant.and_then(|chosen| chosen.session_weight),
        }
    }
}

impl Flag {
    /// Whether the flag named `name` is on for `user_id`.
    pub fn is_on_for(&self, name: &str, user_id: &str) -> bool {
        self.enabled
            && (self.rollout_percent >= 100
                || bucket(name, user_id, 100) < u64::from(self.rollout_percent))
    }
}

impl Experiment {
    /// The variant of `user_id`; `None` only when no variant has weight (refused by
    /// validation).
    pub fn pick(&self, user_id: &str) -> Option<&Variant> {
        let total: u64 = self.variants.iter().map(|variant| u64::from(variant.weight)).sum();
        if total == 0 {
            return None;
        }
        let point = bucket(&self.name, user_id, total);
        let mut upper = 0u64;
        self.variants.iter().find(|variant| {
            upper += u64::from(variant.weight);
            point < upper
        })
    }
}

#[cfg(test)]
mod tests;
