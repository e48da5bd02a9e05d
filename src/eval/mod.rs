//! Prequential (test-then-learn) evaluation of three rankers side by side: popularity, a
//! streaming item co-occurrence kNN ([`ItemKnn`]) and the model.
//!
//! The protocol of Kitazawa, "Incremental Factorization Machines for Persistently Cold-starting
//! Online Item Recommendation" (arXiv:1607.02858) and CHIIR 2017 "Sketching Dynamic User-Item
//! Interactions for Online Item Recommendation"; reference code github.com/takuti/stream-recommender:
//!
//! 1. keep the positive events only (MovieLens: 5-star ratings), sorted stably by (time, line);
//! 2. the first `batch_fraction` (20%) train in batch (`batch_epochs` passes; the kNN and the
//!    popularity counts see them once), the next `warmup_fraction` (10%) are applied online;
//! 3. on the rest (70%), for each event: rank the candidates (every item seen so far in the
//!    stream, minus the items this user already interacted with, plus the target), count a hit
//!    when the target ranks in the top 10, then learn from the event.
//!
//! Ties are broken by first appearance in the stream (earlier items rank higher), for every
//! recommender. A target never seen before cannot be ranked and counts as a miss.
//!
//! [`Split::Validation`] runs the same protocol on the first `batch_fraction + warmup_fraction`
//! only (batch on the first 20%, test-then-learn on the next 10%): the only split
//! hyperparameters may be tuned on.

mod csv_input;
mod input;
mod knn;
mod metrics;
mod plot;

use std::collections::{HashMap, HashSet};

use indicatif::ProgressBar;
use serde::Serialize;

use crate::model::{dot, ItemRow, Model, ModelConfig, ModelConfigError};

pub use csv_input::parse_csv_columns;
pub use input::{
    read_eval_events, CsvMapping, EvalEvent, InputError, InputFormat, InputSpec, Positive, TsUnit,
};
pub use knn::{ItemKnn, KnnConfig};
pub use metrics::{Metrics, RankAccumulator};
pub use plot::{write_recall_plot, PlotError};

/// Which part of the stream is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The published protocol: test everything after batch and warm-up (the last 70%).
    Test,
    /// Tuning split: test the warm-up events (20%..30%), never touching the rest.
    Validation,
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalConfig {
    /// Which part is tested.
    pub split: Split,
    /// Cut-off of recall and NDCG (default 10).
    pub top_k: usize,
    /// Passes of the model over the batch-training part (default 1; the CLI's default is 5).
    pub batch_epochs: usize,
    /// Share of the stream trained in batch (default 0.2; in [0, 1)).
    pub batch_fraction: f64,
    /// Share applied online before testing, the validation split's test part (default 0.1).
    pub warmup_fraction: f64,
    /// Window of the moving-average recall curve, in events (default 500).
    pub curve_window: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            split: Split::Test,
            top_k: 10,
            batch_epochs: 1,
            batch_fraction: 0.2,
            warmup_fraction: 0.1,
            curve_window: 500,
        }
    }
}

/// Settings that cannot describe a split.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// Split fractions out of range.
    #[error("batch_fraction {batch} and warmup_fraction {warmup} must be >= 0 with a sum below 1")]
    Fractions { batch: f64, warmup: f64 },
    /// Bad model hyperparameters.
    #[error(transparent)]
    Model(#[from] ModelConfigError),
}

/// Everything one evaluation run measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Settings used.
    pub config: EvalConfig,
    /// kNN settings used.
    pub knn_config: KnnConfig,
    /// Positive events in the stream.
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
    /// The popularity baseline (all-time count of positive events so far).
    pub popularity: Metrics,
    /// The streaming item co-occurrence kNN baseline.
    pub knn: Metrics,
    /// The online model.
    pub model: Metrics,
    /// Digest of the model state after the run.
    pub model_digest: String,
}

/// Runs the prequential protocol over `events` (positive events in time order). `progress`
/// advances by one per event (its length is set here).
///
/// # Errors
/// [`EvalError`] for bad fractions or hyperparameters.
pub fn evaluate(
    events: &[EvalEvent],
    model_config: ModelConfig,
    knn_config: KnnConfig,
    config: EvalConfig,
    progress: &ProgressBar,
) -> Result<EvalReport, EvalError> {
    let (batch, warmup) = (config.batch_fraction, config.warmup_fraction);
    if !(batch >= 0.0 && warmup >= 0.0 && batch + warmup < 1.0) {
        return Err(EvalError::Fractions { batch, warmup });
    }
    let total = events.len();
    let batch_end = (total as f64 * batch) as usize;
    let warmup_end = batch_end + (total as f64 * warmup) as usize;
    let (test_start, test_end) = match config.split {
        Split::Test => (warmup_end, total),
        Split::Validation => (batch_end, warmup_end),
    };
    progress.set_length(test_end as u64);
    let mut model = Model::new(model_config)?;
    let mut knn = ItemKnn::new(knn_config.clone());
    let mut state = StreamState::default();

    for epoch in 0..config.batch_epochs.max(1) {
        for event in &events[..batch_end] {
            let event_id = if epoch == 0 {
                event.event_id.clone()
            } else {
                format!("{}#{epoch}", event.event_id)
            };
            model.apply(&event_id, &event.user, &event.item, event.ts_ms, event.weight);
            if epoch == 0 {
                let item = state.observe(event);
                knn.learn(&event.user, item);
                progress.inc(1);
            }
        }
    }
    for event in &events[batch_end..test_start] {
        learn(&mut model, &mut knn, &mut state, event);
        progress.inc(1);
    }
    let mut popularity = RankAccumulator::new(config.top_k, config.curve_window);
    let mut neighbours = RankAccumulator::new(config.top_k, config.curve_window);
    let mut personalised = RankAccumulator::new(config.top_k, config.curve_window);
    let mut scores = Vec::new();
    for event in &events[test_start..test_end] {
        let candidates = state.candidates(event);
        match candidates.target_slot {
            Some(target) => {
                scores.clear();
                scores.extend(candidates.items.iter().map(|item| state.counts[*item] as f32));
                popularity.record_rank(rank_of(&scores, target), scores.len());
                knn.score(&event.user, &candidates.items, &mut scores);
                neighbours.record_rank(rank_of(&scores, target), scores.len());
                score_with_model(&model, &state, &candidates.items, &mut scores);
                personalised.record_rank(rank_of(&scores, target), scores.len());
            }
            None => {
                for accumulator in [&mut popularity, &mut neighbours, &mut personalised] {
                    accumulator.record_miss(candidates.items.len() + 1);
                }
            }
        }
        learn(&mut model, &mut knn, &mut state, event);
        progress.inc(1);
    }
    Ok(EvalReport {
        events: total,
        users: events.iter().map(|event| &event.user).collect::<HashSet<_>>().len(),
        items: events.iter().map(|event| &event.item).collect::<HashSet<_>>().len(),
        batch_events: batch_end,
        warmup_events: test_start - batch_end,
        tested_events: test_end - test_start,
        popularity: popularity.finish(),
        knn: neighbours.finish(),
        model: personalised.finish(),
        model_digest: model.digest(),
        knn_config,
        config,
    })
}

fn learn(model: &mut Model, knn: &mut ItemKnn, state: &mut StreamState, event: &EvalEvent) {
    model.apply(&event.event_id, &event.user, &event.item, event.ts_ms, event.weight);
    let item = state.observe(event);
    knn.learn(&event.user, item);
}

fn score_with_model(model: &Model, state: &StreamState, items: &[usize], scores: &mut Vec<f32>) {
    scores.clear();
    let user_row = state.current_user.as_deref().and_then(|user| model.user_row(user));
    let query = user_row.map(|user| model.query_vector(user));
    for item in items {
        let item_row: Option<ItemRow> = model.item_row(&state.item_ids[*item]);
        let score = match (&query, item_row) {
            (Some(query), Some(item)) => {
                dot(query, model.item_vector(item)) + model.item_bias(item)
            }
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
    /// Counts the event; returns the item's dense index.
    fn observe(&mut self, event: &EvalEvent) -> usize {
        let next = self.item_ids.len();
        let item = *self.item_index.entry(event.item.clone()).or_insert(next);
        if item == next {
            self.item_ids.push(event.item.clone());
            self.counts.push(0);
        }
        self.counts[item] += 1;
        self.user_items.entry(event.user.clone()).or_default().insert(item);
        item
    }

    /// Seen items minus the user's own, plus the target, in first-appearance order.
    fn candidates(&mut self, event: &EvalEvent) -> Candidates {
        self.current_user = Some(event.user.clone());
        let own = self.user_items.get(&event.user);
        let target = self.item_index.get(&event.item).copied();
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
