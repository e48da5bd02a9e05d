//! The online embedding model: implicit matrix factorisation learned by SGD on a pairwise
//! (BPR) loss, one event at a time.
//!
//! Score(u, i) = p_u . q_i + b_i, with user vectors p_u and item vectors q_i of dimension
//! `dim` (not normalised; L2 norm at most `max_norm`) and item biases b_i in
//! `[-max_bias, max_bias]`.
//!
//! For each event (u, i, weight) and each of `negatives` sampled items j != i, one SGD step on
//! the BPR loss -ln sigma(x_uij), x_uij = s(u, i) - s(u, j) (Rendle et al. 2009, "BPR: Bayesian
//! Personalized Ranking from Implicit Feedback"), scaled by the confidence log2(1 + w) of the
//! event weight w (log-scaled confidence as in Hu, Koren and Volinsky 2008, "Collaborative
//! Filtering for Implicit Feedback Datasets"). Negatives come partly uniformly from all known
//! items and partly from a pool of recent interactions, i.e. in proportion to recent popularity.
//!
//! Determinism: initial vectors are seeded from (seed, id), negatives from (seed, event_id), and
//! nothing reads a clock, so the same events in the same order give bit-identical state; see
//! [`Model::digest`].

mod config;
mod digest;
pub(crate) mod quantized;
mod query;
mod recency;
mod state;
mod sync;
mod table;
pub(crate) mod vector;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub use config::{Loss, ModelConfig, ModelConfigError, Optimizer};
pub use state::{ItemDelta, ItemState, RestoreError, SeenWrite, UserState};
pub use vector::{dot, dot_rows, log_add_exp, sigmoid};

use table::Table;

/// The lock a shared model lives in (parking_lot's: no poisoning, and a writer can hand the
/// lock to waiting readers mid-batch with `RwLockWriteGuard::bump`).
pub type ModelLock = parking_lot::RwLock<Model>;

/// Which table a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowKind {
    User,
    Item,
    Context,
}

/// Dense row of a user in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserRow(pub u32);

/// Dense row of an item in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemRow(pub u32);

/// The learned state: user and item vectors, item biases, counts and decayed popularity.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    users: Table,
    items: Table,
    item_bias: Vec<f32>,
    /// Context vectors c_i, row-major `item_count() x dim`; see [`Model::query_vector`].
    contexts: Vec<f32>,
    /// `context_weights[n]`: weights of a context of n items, newest first.
    context_weights: Vec<Vec<f32>>,
    /// Row-wise AdaGrad accumulators of the context vectors.
    context_adagrad: Vec<f32>,
    /// Squared norm of the current step's query.
    query_norm_squared: f32,
    /// Context items of the current training step, newest first.
    context_rows: Vec<u32>,
    /// ln of the decayed popularity sum, with weights scaled by exp(lambda * ts); see
    /// [`Model::popularity_log`].
    item_popularity_log: Vec<f64>,
    negative_pool: Vec<u32>,
    negative_pool_next: usize,
    /// Occurrences of each item row in `negative_pool` (for the log-Q correction).
    pool_counts: Vec<u32>,
    /// Per sampled negative: its score, then its loss gradient.
    negative_gradients: Vec<f32>,
    events_applied: u64,
    scratch_user: Vec<f32>,
    scratch_item: Vec<f32>,
    negatives: Vec<u32>,
    /// Items each user interacted with, most recent last, at most `seen_items_per_user`.
    user_seen: Vec<std::collections::VecDeque<u32>>,
    /// Per user: how many of the newest `user_seen` entries changed since the list was last
    /// marked stored ([`Model::mark_seen_stored`]); `u32::MAX` when the whole list must be
    /// written (a user restored from the older whole-JSON layout).
    seen_unstored: Vec<u32>,
    dirty_users: state::DirtySet,
    dirty_items: state::DirtySet,
    /// What Redis held of each item at its last write or read (see [`sync`]).
    synced: sync::ItemSync,
    /// Users by when they were last collected for a flush ([`Model::touch_user`]), for the
    /// ingest's eviction of the least recent.
    user_recency: recency::Recency,
}

impl Model {
    /// An empty model.
    ///
    /// # Errors
    /// [`ModelConfigError`] when a hyperparameter is out of range.
    pub fn new(config: ModelConfig) -> Result<Self, ModelConfigError> {
        config.validate()?;
        let dim = config.dim;
        Ok(Self {
            users: Table::new(dim),
            items: Table::with_quantized(dim),
            item_bias: Vec::new(),
            contexts: Vec::new(),
            context_weights: query::weight_table(&config),
            context_adagrad: Vec::new(),
            query_norm_squared: 0.0,
            context_rows: Vec::with_capacity(config.context_items),
            item_popularity_log: Vec::new(),
            negative_pool: Vec::with_capacity(config.negative_pool_size),
            negative_pool_next: 0,
            pool_counts: Vec::new(),
            negative_gradients: Vec::new(),
            events_applied: 0,
            scratch_user: vec![0.0; dim],
            scratch_item: vec![0.0; dim],
            negatives: Vec::new(),
            user_seen: Vec::new(),
            seen_unstored: Vec::new(),
            dirty_users: state::DirtySet::default(),
            dirty_items: state::DirtySet::default(),
            synced: sync::ItemSync::default(),
            user_recency: recency::Recency::default(),
            config,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// Number of users seen.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Number of items seen.
    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Events applied so far.
    pub fn events_applied(&self) -> u64 {
        self.events_applied
    }

    /// Row of a known user.
    pub fn user_row(&self, user_id: &str) -> Option<UserRow> {
        self.users.row(user_id).map(UserRow)
    }

    /// Row of a known item.
    pub fn item_row(&self, item_id: &str) -> Option<ItemRow> {
        self.items.row(item_id).map(ItemRow)
    }

    /// Id of a user row.
    pub fn user_id(&self, row: UserRow) -> &str {
        &self.users.ids[row.0 as usize]
    }

    /// Id of an item row.
    pub fn item_id(&self, row: ItemRow) -> &str {
        &self.items.ids[row.0 as usize]
    }

    /// User vector p_u (length `dim`).
    pub fn user_vector(&self, row: UserRow) -> &[f32] {
        self.users.vector(row.0)
    }

    /// Item vector q_i (length `dim`).
    pub fn item_vector(&self, row: ItemRow) -> &[f32] {
        self.items.vector(row.0)
    }

    /// All item vectors, row-major, `item_count() x dim`.
    pub fn item_matrix(&self) -> &[f32] {
        &self.items.vectors
    }

    /// The 8-bit copy of the item matrix with its error bounds (see `quantized.rs`), the
    /// rows changed since it was last brought up to date re-quantised first, or `None` when
    /// more than `budget` rows changed (see [`Model::requantize_some`]).
    pub(crate) fn quantized_items(
        &self,
        budget: usize,
    ) -> Option<parking_lot::RwLockReadGuard<'_, quantized::Quantized>> {
        self.items.quantized(budget)
    }

    /// Brings the 8-bit copy of the item matrix up to date in one hold of its lock (tests and
    /// benchmarks; the index thread catches up with [`Model::requantize_some`]).
    pub fn requantize(&self) {
        self.items.requantize();
    }

    /// Re-quantises at most `max_rows` of the item rows changed since the 8-bit copy was last
    /// brought up to date, under one hold of the copy's lock; returns how many stay stale (the
    /// index thread's catch-up, every 20 ms: under ingest more rows change between two queries
    /// than a query should re-quantise itself).
    pub fn requantize_some(&self, max_rows: usize) -> usize {
        self.items.requantize_some(max_rows)
    }

    /// Item rows changed since a reader last asked for the 8-bit copy.
    pub fn unquantized_items(&self) -> usize {
        self.items.unquantized()
    }

    /// All item biases b_i, by row (length `item_count()`).
    pub fn item_biases(&self) -> &[f32] {
        &self.item_bias
    }

    /// Item bias b_i.
    pub fn item_bias(&self, row: ItemRow) -> f32 {
        self.item_bias[row.0 as usize]
    }

    /// Events applied to an item.
    pub fn item_events(&self, row: ItemRow) -> u64 {
        self.items.events[row.0 as usize]
    }

    /// Events applied to a user.
    pub fn user_events(&self, row: UserRow) -> u64 {
        self.users.events[row.0 as usize]
    }

    /// Score(u, i) = query_u . q_i + b_i, with query_u from [`Model::query_vector`] (to score
    /// many items, compute the query once and take dot products).
    pub fn score(&self, user: UserRow, item: ItemRow) -> f32 {
        dot(&self.query_vector(user), self.item_vector(item)) + self.item_bias(item)
    }

    /// ln of the item's decayed popularity plus lambda * t0 (lambda = ln 2 / half-life).
    /// Comparable across items at any one time: a larger value is more popular now. The
    /// decayed popularity at time t is `exp(popularity_log - lambda * t)`.
    pub fn popularity_log(&self, row: ItemRow) -> f64 {
        self.item_popularity_log[row.0 as usize]
    }

    /// Applies one event with effective weight `weight` (type weight x event weight).
    /// Non-finite or non-positive weights are ignored except for counts.
    pub fn apply(&mut self, event_id: &str, user_id: &str, item_id: &str, ts: i64, weight: f32) {
        let seed = self.config.seed;
        let scale = self.config.init_scale;
        let (user, user_created) = self.users.row_or_insert(user_id, seed, scale);
        if user_created {
            self.user_seen.push(std::collections::VecDeque::new());
            self.seen_unstored.push(0);
        }
        let (item, created) = self.items.row_or_insert(item_id, seed.rotate_left(1), scale);
        if created {
            self.item_bias.push(0.0);
            self.contexts.resize(self.contexts.len() + self.config.dim, 0.0);
            self.context_adagrad.push(0.0);
            self.item_popularity_log.push(f64::NEG_INFINITY);
            self.sync_new_item();
        }
        // What Redis holds of the items this event changes is kept before they change: here the
        // event's item, in `bpr_step` its negatives and context rows.
        self.preserve_synced(item);
        let weight = if weight.is_finite() && weight > 0.0 {
            weight.min(self.config.max_event_weight)
        } else {
            0.0
        };
        self.bump_popularity(item, ts, weight);
        self.context_rows.clear();
        if weight > 0.0 && self.items.len() > 1 {
            let confidence = (1.0 + weight).log2();
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(xxh3_64_with_seed(
                event_id.as_bytes(),
                seed.rotate_left(2),
            ));
            self.negatives.clear();
            for _ in 0..self.config.negatives {
                if let Some(negative) = self.sample_negative(&mut rng, item) {
                    self.negatives.push(negative);
                }
            }
            self.bpr_step(user, item, confidence);
        }
        self.remember_positive(item);
        for (table, row) in [(&mut self.users, user), (&mut self.items, item)] {
            table.events[row as usize] += 1;
            table.last_ts[row as usize] = table.last_ts[row as usize].max(ts);
        }
        self.events_applied += 1;
        self.record_changes(user, item);
    }

    fn bump_popularity(&mut self, item: u32, ts: i64, weight: f32) {
        if weight <= 0.0 {
            return;
        }
        let lambda = std::f64::consts::LN_2 / self.config.popularity_half_life_ms as f64;
        let term = f64::from(weight).ln() + lambda * ts as f64;
        let slot = &mut self.item_popularity_log[item as usize];
        *slot = log_add_exp(*slot, term);
    }

    fn sample_negative(&self, rng: &mut Xoshiro256PlusPlus, positive: u32) -> Option<u32> {
        const ATTEMPTS: usize = 4;
        let items = self.items.len() as u64;
        for _ in 0..ATTEMPTS {
            let uniform_draw = table::symmetric_unit(rng) * 0.5 + 0.5;
            let candidate = if self.negative_pool.is_empty()
                || uniform_draw < self.config.uniform_negative_share
            {
                (rng.next_u64() % items) as u32
            } else {
                self.negative_pool[(rng.next_u64() % self.negative_pool.len() as u64) as usize]
            };
            if candidate != positive {
                return Some(candidate);
            }
        }
        None
    }

    fn remember_positive(&mut self, item: u32) {
        if self.pool_counts.len() < self.items.len() {
            self.pool_counts.resize(self.items.len(), 0);
        }
        if self.negative_pool.len() < self.config.negative_pool_size {
            self.negative_pool.push(item);
        } else {
            let replaced = self.negative_pool[self.negative_pool_next];
            self.pool_counts[replaced as usize] -= 1;
            self.negative_pool[self.negative_pool_next] = item;
        }
        self.pool_counts[item as usize] += 1;
        self.negative_pool_next = (self.negative_pool_next + 1) % self.config.negative_pool_size;
    }

    /// One SGD step on sum_j -ln sigma(x_uij) over the sampled negatives j, every gradient
    /// taken at the pre-step values (a mini-batch of negatives sharing one user update).
    /// The user-side gradient G (with respect to the query) moves p_u and, weighted, the context
    /// vectors of the user's recent items.
    fn bpr_step(&mut self, user: u32, positive: u32, confidence: f32) {
        let reg = self.config.regularization;
        let max_norm = self.config.max_norm;

        self.load_query(user);
        for slot in 0..self.negatives.len() {
            self.preserve_synced(self.negatives[slot]);
        }
        for slot in 0..self.context_rows.len() {
            self.preserve_synced(self.context_rows[slot]);
        }
        self.query_norm_squared = vector::norm_squared(&self.scratch_user);
        let positive_score = dot(&self.scratch_user, self.items.vector(positive))
            + self.item_bias[positive as usize];
        self.negative_gradients.clear();
        for slot in 0..self.negatives.len() {
            let negative = self.negatives[slot];
            let score = dot(&self.scratch_user, self.items.vector(negative))
                + self.item_bias[negative as usize];
            self.negative_gradients.push(score);
        }
        let positive_gradient = self.loss_gradients(positive_score, confidence);
        // scratch_item accumulates d/d query = g_i q_i - sum_j g_j q_j.
        self.scratch_item.fill(0.0);
        for slot in 0..self.negatives.len() {
            self.step_negative(self.negatives[slot], self.negative_gradients[slot]);
        }
        vector::axpy(&mut self.scratch_item, positive_gradient, self.items.vector(positive));
        let user_rate = self.adapt(RowKind::User, user, vector::norm_squared(&self.scratch_item));
        let user_vector = self.users.vector_mut(user);
        vector::regularized_step(user_vector, user_rate, 1.0, &self.scratch_item, reg);
        vector::clip_norm(user_vector, max_norm);
        let query_gradient = std::mem::take(&mut self.scratch_item);
        self.step_context(&query_gradient);
        self.scratch_item = query_gradient;
        self.step_item(positive, positive_gradient);
    }

    /// Turns the negatives' scores in `negative_gradients` into the gradients of the loss
    /// (ascent direction, times `confidence`) with respect to each negative's score (as a
    /// positive number g_j: the negative's score moves by -g_j) and returns the positive's g_i.
    ///
    /// BPR: g_j = sigma(s_j - s_i), g_i = sum_j g_j. Sampled softmax over {i} and the negatives
    /// (Bengio and Senecal 2008; Jean et al. 2015), the negatives' logits corrected by
    /// -ln(N Q(j)) for the sampling probability Q (the log-Q correction of Yi et al., RecSys
    /// 2019; zero under uniform sampling): g_j = P_j, g_i = 1 - P_i.
    fn loss_gradients(&mut self, positive_score: f32, confidence: f32) -> f32 {
        match self.config.loss {
            Loss::Bpr => {
                let mut positive_gradient = 0.0;
                for score in &mut self.negative_gradients {
                    *score = sigmoid(*score - positive_score) * confidence;
                    positive_gradient += *score;
                }
                positive_gradient
            }
            Loss::Softmax => {
                for slot in 0..self.negative_gradients.len() {
                    let correction = self.sampling_log_odds(self.negatives[slot]);
                    self.negative_gradients[slot] -= correction;
                }
                let top = self.negative_gradients.iter().copied().fold(positive_score, f32::max);
                let positive_weight = (positive_score - top).exp();
                let mut total = positive_weight;
                for score in &mut self.negative_gradients {
                    *score = (*score - top).exp();
                    total += *score;
                }
                let scale = if total.is_finite() && total > 0.0 { confidence / total } else { 0.0 };
                self.negative_gradients.iter_mut().for_each(|weight| *weight *= scale);
                confidence - positive_weight * scale
            }
        }
    }

    /// ln(N Q(j)): the log-ratio of item j's sampling probability to the uniform 1/N.
    fn sampling_log_odds(&self, item: u32) -> f32 {
        let share = self.config.uniform_negative_share;
        if self.negative_pool.is_empty() || share >= 1.0 {
            return 0.0;
        }
        let items = self.items.len() as f32;
        let in_pool = self.pool_counts.get(item as usize).copied().unwrap_or(0) as f32;
        let ratio = share + (1.0 - share) * items * in_pool / self.negative_pool.len() as f32;
        if ratio > 0.0 {
            ratio.ln()
        } else {
            0.0
        }
    }

    /// The negative item's update fused with the user-gradient accumulation (one pass over
    /// q_j): scratch_item -= g q_j (old q_j), then q_j += lr (-g p_u - reg q_j).
    fn step_negative(&mut self, row: u32, gradient: f32) {
        let lr = self.adapt(RowKind::Item, row, gradient * gradient * self.query_norm_squared);
        let reg = self.config.regularization;
        let item_vector = self.items.vector_mut(row);
        let norm_squared = vector::negative_step(
            item_vector,
            &self.scratch_user,
            &mut self.scratch_item,
            gradient,
            lr,
            reg,
        );
        if norm_squared.is_nan() || norm_squared > self.config.max_norm * self.config.max_norm {
            vector::clip_norm(item_vector, self.config.max_norm);
        }
        self.step_bias(row, -gradient, lr);
    }

    fn step_bias(&mut self, row: u32, gradient: f32, lr: f32) {
        let max_bias = self.config.max_bias;
        let bias = &mut self.item_bias[row as usize];
        let updated = *bias + lr * (gradient - self.config.bias_regularization * *bias);
        *bias = if updated.is_finite() { updated.clamp(-max_bias, max_bias) } else { 0.0 };
    }

    /// q += lr (g query - reg q), b += lr (g - bias_reg b), with the pre-step query in
    /// `scratch_user`; then the norm and bias bounds.
    fn step_item(&mut self, row: u32, gradient: f32) {
        let lr = self.adapt(RowKind::Item, row, gradient * gradient * self.query_norm_squared);
        let reg = self.config.regularization;
        let item_vector = self.items.vector_mut(row);
        vector::regularized_step(item_vector, lr, gradient, &self.scratch_user, reg);
        vector::clip_norm(item_vector, self.config.max_norm);
        self.step_bias(row, gradient, lr);
    }

    /// The step size of one row for a gradient of squared norm `gradient_squared`: the
    /// configured rate under SGD; under row-wise AdaGrad (Duchi, Hazan and Singer 2011, one
    /// accumulator per row as in large-scale embedding training) the accumulator a grows by
    /// the mean squared gradient component and the rate is lr / sqrt(1 + a), so rows start at
    /// lr and slow down as they collect evidence.
    pub(crate) fn adapt(&mut self, kind: RowKind, row: u32, gradient_squared: f32) -> f32 {
        let lr = self.config.learning_rate;
        if self.config.optimizer == Optimizer::Sgd {
            return lr;
        }
        let accumulators = match kind {
            RowKind::User => &mut self.users.adagrad,
            RowKind::Item => &mut self.items.adagrad,
            RowKind::Context => &mut self.context_adagrad,
        };
        let slot = &mut accumulators[row as usize];
        let increment = gradient_squared / self.config.dim as f32;
        if increment.is_finite() {
            *slot = (*slot + increment).min(f32::MAX / 2.0);
        }
        lr / (1.0 + *slot).sqrt()
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "query_tests.rs"]
mod query_tests;
