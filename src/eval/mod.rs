//! Prequential (test-then-learn) evaluation on MovieLens-100k.
//!
//! The protocol of Kitazawa, "Incremental Factorization Machines for Persistently Cold-starting
//! Online Item Recommendation" (arXiv:1607.02858) and CHIIR 2017 "Sketching Dynamic User-Item
//! Interactions for Online Item Recommendation"; reference code github.com/takuti/stream-recommender:
//!
//! 1. keep the 5-star ratings only, sorted stably by (timestamp, line number);
//! 2. the first 20% train in batch (`batch_epochs` passes), the next 10% are applied online;
//! 3. on the last 70%, for each event: rank the candidates (every item seen so far in the
//!    stream, minus the items this user already interacted with, plus the target), count a hit
//!    when the target ranks in the top 10, then learn from the event.
//!
//! Ties are broken by first appearance in the stream (earlier items rank higher), for both
//! recommenders. A target never seen before cannot be ranked by either and counts as a miss.
//!
//! [`Split::Validation`] runs the same protocol on the first 30% only (batch on the first 20%,
//! test-then-learn on the next 10%): the only split hyperparameters may be tuned on.

mod metrics;
mod plot;

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::model::{ItemRow, Model, ModelConfig, ModelConfigError};
use crate::source::Rating;

pub use metrics::{Metrics, RankAccumulator};
pub use plot::{write_recall_plot, PlotError};

/// Which part of the stream is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The published protocol: test the last 70%.
    Test,
    /// Tuning split: test events 20%..30%, never touching the last 70%.
    Validation,
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalConfig {
    /// Which part is tested.
    pub split: Split,
    /// Cut-off of recall and NDCG (default 10).
    pub top_k: usize,
    /// Passes over the batch-training 20% (default 5).
    pub batch_epochs: usize,
    /// Weight each learning event carries (5-star ratings map to `like`, default weight 4).
    pub event_weight: f32,
    /// Window of the moving-average recall curve, in events (default 500).
    pub curve_window: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            split: Split::Test,
            top_k: 10,
            batch_epochs: 1,
            event_weight: 4.0,
            curve_window: 500,
        }
    }
}

/// Everything one evaluation run measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Settings used.
    pub config: EvalConfig,
    /// 5-star events in the stream.
    pub events: usize,
    /// Distinct users among them.
    pub users: usize,
    /// Distinct items among them.
    pub items: usize,
    /// Events trained in batch.
    pub batch_events: usize,
    /// Events applied online before testing.
    pub warmup_events: usize,
    /// Events tested (test-then-learn).
    pub tested_events: usize,
    /// The popularity baseline (all-time count of 5-star events so far).
    pub popularity: Metrics,
    /// The online BPR model.
    pub model: Metrics,
    /// Digest of the model state after the run.
    pub model_digest: String,
}

/// Runs the prequential protocol over `ratings` (all of u.data, already time-sorted).
///
/// # Errors
/// [`ModelConfigError`] for bad hyperparameters.
pub fn evaluate(
    ratings: &[Rating],
    model_config: ModelConfig,
    config: EvalConfig,
) -> Result<EvalReport, ModelConfigError> {
    let stream: Vec<&Rating> = ratings.iter().filter(|rating| rating.rating == 5).collect();
    let total = stream.len();
    let batch_end = total / 5;
    let (test_start, test_end) = match config.split {
        Split::Test => (batch_end + total / 10, total),
        Split::Validation => (batch_end, batch_end + total / 10),
    };
    let mut model = Model::new(model_config)?;
    let mut state = StreamState::default();

    for epoch in 0..config.batch_epochs.max(1) {
        for rating in &stream[..batch_end] {
            let event_id = if epoch == 0 {
                rating.event_id()
            } else {
                format!("{}#{epoch}", rating.event_id())
            };
            model.apply(&event_id, &rating.user, &rating.item, rating.ts_ms(), config.event_weight);
            if epoch == 0 {
                state.observe(rating);
            }
        }
    }
    for rating in &stream[batch_end..test_start] {
        learn(&mut model, &mut state, rating, config.event_weight);
    }
    let mut popularity = RankAccumulator::new(config.top_k, config.curve_window);
    let mut personalised = RankAccumulator::new(config.top_k, config.curve_window);
    let mut scores = Vec::new();
    for rating in &stream[test_start..test_end] {
        let candidates = state.candidates(rating);
        match candidates.target_slot {
            Some(target) => {
                scores.clear();
                scores.extend(candidates.items.iter().map(|item| state.counts[*item] as f32));
                popularity.record_rank(rank_of(&scores, target), scores.len());
                score_with_model(&model, &state, &candidates.items, &mut scores);
                personalised.record_rank(rank_of(&scores, target), scores.len());
            }
            None => {
                popularity.record_miss(candidates.items.len() + 1);
                personalised.record_miss(candidates.items.len() + 1);
            }
        }
        learn(&mut model, &mut state, rating, config.event_weight);
    }
    Ok(EvalReport {
        events: total,
        users: stream.iter().map(|rating| &rating.user).collect::<HashSet<_>>().len(),
        items: stream.iter().map(|rating| &rating.item).collect::<HashSet<_>>().len(),
        batch_events: batch_end,
        warmup_events: test_start - batch_end,
        tested_events: test_end - test_start,
        popularity: popularity.finish(),
        model: personalised.finish(),
        model_digest: model.digest(),
        config,
    })
}

fn learn(model: &mut Model, state: &mut StreamState, rating: &Rating, weight: f32) {
    model.apply(&rating.event_id(), &rating.user, &rating.item, rating.ts_ms(), weight);
    state.observe(rating);
}

fn score_with_model(model: &Model, state: &StreamState, items: &[usize], scores: &mut Vec<f32>) {
    scores.clear();
    let user_row = state.current_user.as_deref().and_then(|user| model.user_row(user));
    for item in items {
        let item_row: Option<ItemRow> = model.item_row(&state.item_ids[*item]);
        let score = match (user_row, item_row) {
            (Some(user), Some(item)) => model.score(user, item),
            (None, Some(item)) => model.item_bias(item),
            _ => f32::NEG_INFINITY,
        };
        scores.push(score);
    }
}

/// 0-based rank of `scores[target]` among `scores`, ties broken by position (candidates are in
/// first-appearance order, so earlier items win ties).
fn rank_of(scores: &[f32], target: usize) -> usize {
    let target_score = scores[target];
    scores
        .iter()
        .enumerate()
        .filter(|(slot, score)| {
            **score > target_score || (**score == target_score && *slot < target)
        })
        .count()
}

/// What the stream has shown so far: items in order of first appearance, their counts and each
/// user's items.
#[derive(Debug, Default)]
struct StreamState {
    item_index: HashMap<String, usize>,
    item_ids: Vec<String>,
    counts: Vec<u64>,
    user_items: HashMap<String, HashSet<usize>>,
    current_user: Option<String>,
}

struct Candidates {
    items: Vec<usize>,
    target_slot: Option<usize>,
}

impl StreamState {
    fn observe(&mut self, rating: &Rating) {
        let next = self.item_ids.len();
        let item = *self.item_index.entry(rating.item.clone()).or_insert(next);
        if item == next {
            self.item_ids.push(rating.item.clone());
            self.counts.push(0);
        }
        self.counts[item] += 1;
        self.user_items.entry(rating.user.clone()).or_default().insert(item);
    }

    /// Seen items minus the user's own, plus the target, in first-appearance order.
    fn candidates(&mut self, rating: &Rating) -> Candidates {
        self.current_user = Some(rating.user.clone());
        let own = self.user_items.get(&rating.user);
        let target = self.item_index.get(&rating.item).copied();
        let mut items = Vec::with_capacity(self.item_ids.len());
        let mut target_slot = None;
        for item in 0..self.item_ids.len() {
            if Some(item) == target {
                target_slot = Some(items.len());
                items.push(item);
            } else if !own.is_some_and(|own| own.contains(&item)) {
                items.push(item);
            }
        }
        Candidates { items, target_slot }
    }
}
