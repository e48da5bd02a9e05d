use serde::{Deserialize, Serialize};

/// Hyperparameters of the online model. How the defaults were chosen: README, "Model quality".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Embedding dimension d of user and item vectors (default 64; 1..=1024).
    pub dim: usize,
    /// Seed of every random draw: initial vectors are seeded from (seed, id), negative samples
    /// from (seed, event_id).
    pub seed: u64,
    /// SGD step size, or AdaGrad's initial step size (default 0.1; > 0).
    pub learning_rate: f32,
    /// Step-size rule (default `adagrad`).
    pub optimizer: Optimizer,
    /// Context vectors step at `context_learning_rate_scale` x the rate of their row
    /// (default 1; > 0).
    pub context_learning_rate_scale: f32,
    /// L2 regularisation of user and item vectors (default 0.03; >= 0).
    pub regularization: f32,
    /// L2 regularisation of item biases (default 0.1; >= 0).
    pub bias_regularization: f32,
    /// Training objective per event (default `softmax`).
    pub loss: Loss,
    /// Sampled negatives per event (default 32; 1..=64).
    pub negatives: usize,
    /// Share of negatives drawn uniformly from all known items; the rest come from the
    /// recent-interaction pool, i.e. in proportion to recent popularity (default 1.0; [0, 1]).
    pub uniform_negative_share: f32,
    /// Recent item interactions kept for popularity-proportional negative sampling
    /// (default 4096; >= 1).
    pub negative_pool_size: usize,
    /// Scale of initial vector components: uniform in [-init_scale, init_scale]
    /// (default 0.1; > 0).
    pub init_scale: f32,
    /// Vectors are rescaled to this L2 norm when an update would exceed it (default 4; > 0).
    pub max_norm: f32,
    /// Item biases are clamped to [-max_bias, max_bias] (default 8; > 0).
    pub max_bias: f32,
    /// Largest effective event weight (type weight x event weight) before the confidence
    /// transform (default 1000; > 0).
    pub max_event_weight: f32,
    /// Half-life of the decayed item popularity, in ms of event time (default 7 days).
    pub popularity_half_life_ms: i64,
    /// Most recent distinct items remembered per user, excluded by `exclude_seen`
    /// (default 500; 0 disables).
    pub seen_items_per_user: usize,
    /// Most recent items of the user whose context vectors join the query, L (default 10;
    /// 0 gives plain matrix factorisation; at most `seen_items_per_user`). See
    /// [`crate::model::Model::query_vector`].
    pub context_items: usize,
    /// Weight ratio between one recent item and the next more recent one: the k-th most recent
    /// item (k = 0 newest) has raw weight `context_decay^k` (default 0.9; (0, 1]).
    pub context_decay: f32,
    /// FISM's normalisation exponent alpha: the raw weights are divided by
    /// `(sum of raw weights)^alpha` (0: plain sum, 1: weighted mean; default 0.5; [0, 1]).
    pub context_exponent: f32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dim: 64,
            seed: 42,
            learning_rate: 0.1,
            optimizer: Optimizer::Adagrad,
            context_learning_rate_scale: 1.0,
            regularization: 0.03,
            bias_regularization: 0.1,
            loss: Loss::Softmax,
            negatives: 32,
            uniform_negative_share: 1.0,
            negative_pool_size: 4096,
            init_scale: 0.1,
            max_norm: 4.0,
            max_bias: 8.0,
            max_event_weight: 1000.0,
            popularity_half_life_ms: 7 * 24 * 3600 * 1000,
            seen_items_per_user: 500,
            context_items: 10,
            context_decay: 0.9,
            context_exponent: 0.5,
        }
    }
}

/// The step-size rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// A constant step size.
    Sgd,
    /// Row-wise AdaGrad: each row's step is lr / sqrt(1 + accumulated mean squared gradient).
    Adagrad,
}

/// The per-event objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Pairwise BPR, -sum_j ln sigma(s_i - s_j) (Rendle et al. 2009).
    Bpr,
    /// Sampled softmax, -ln(e^s_i / (e^s_i + sum_j e^(s_j - ln N Q(j)))), with the log-Q
    /// correction for non-uniform negatives (Yi et al., RecSys 2019).
    Softmax,
}

/// A [`ModelConfig`] field outside its documented range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model.{field} = {value} is invalid: {rule}")]
pub struct ModelConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Its value, printed.
    pub value: String,
    /// The constraint it breaks.
    pub rule: &'static str,
}

impl ModelConfig {
    /// Checks every field against its documented range.
    ///
    /// # Errors
    /// The first [`ModelConfigError`] found.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        fn fail(field: &'static str, value: impl ToString, rule: &'static str) -> ModelConfigError {
            ModelConfigError { field, value: value.to_string(), rule }
        }
        let positive = |value: f32| value.is_finite() && value > 0.0;
        let non_negative = |value: f32| value.is_finite() && value >= 0.0;
        if !(1..=1024).contains(&self.dim) {
            return Err(fail("dim", self.dim, "must be in 1..=1024"));
        }
        if !positive(self.learning_rate) {
            return Err(fail("learning_rate", self.learning_rate, "must be finite and > 0"));
        }
        if !non_negative(self.regularization) {
            return Err(fail("regularization", self.regularization, "must be finite and >= 0"));
        }
        if !non_negative(self.bias_regularization) {
            return Err(fail(
                "bias_regularization",
                self.bias_regularization,
                "must be finite and >= 0",
            ));
        }
        if !(1..=64).contains(&self.negatives) {
            return Err(fail("negatives", self.negatives, "must be in 1..=64"));
        }
        if !(0.0..=1.0).contains(&self.uniform_negative_share) {
            return Err(fail(
                "uniform_negative_share",
                self.uniform_negative_share,
                "must be in [0, 1]",
            ));
        }
        if self.negative_pool_size == 0 {
            return Err(fail("negative_pool_size", 0, "must be >= 1"));
        }
        for (field, value) in [
            ("init_scale", self.init_scale),
            ("max_norm", self.max_norm),
            ("max_bias", self.max_bias),
            ("max_event_weight", self.max_event_weight),
            ("context_learning_rate_scale", self.context_learning_rate_scale),
        ] {
            if !positive(value) {
                return Err(fail(field, value, "must be finite and > 0"));
            }
        }
        if self.context_items > self.seen_items_per_user {
            return Err(fail(
                "context_items",
                self.context_items,
                "must be <= seen_items_per_user (the context is read from the seen list)",
            ));
        }
        if !(self.context_decay > 0.0 && self.context_decay <= 1.0) {
            return Err(fail("context_decay", self.context_decay, "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.context_exponent) {
            return Err(fail("context_exponent", self.context_exponent, "must be in [0, 1]"));
        }
        if self.popularity_half_life_ms <= 0 {
            return Err(fail(
                "popularity_half_life_ms",
                self.popularity_half_life_ms,
                "must be > 0",
            ));
        }
        Ok(())
    }
}
