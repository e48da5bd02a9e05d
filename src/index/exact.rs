use std::cmp::Ordering;
use std::collections::HashSet;

use serde::Serialize;

use crate::model::{dot, ItemRow, Model};

/// One ranked item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredItem {
    /// Item id.
    pub item_id: String,
    /// The score (model: p.q + b; popularity: ln of the decayed count plus a constant; similar
    /// items: cosine similarity).
    pub score: f32,
    #[serde(skip)]
    pub(crate) row: u32,
}

fn by_score_then_row(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1))
}

fn top(model: &Model, mut scored: Vec<(f32, u32)>, k: usize) -> Vec<ScoredItem> {
    scored.retain(|(score, _)| score.is_finite());
    if scored.len() > k && k > 0 {
        scored.select_nth_unstable_by(k - 1, by_score_then_row);
        scored.truncate(k);
    }
    scored.sort_by(by_score_then_row);
    scored.truncate(k);
    scored
        .into_iter()
        .map(|(score, row)| ScoredItem {
            item_id: model.item_id(ItemRow(row)).to_owned(),
            score,
            row,
        })
        .collect()
}

/// Scores `rows` exactly against `user` and returns the top k (ties: lower row first).
pub(crate) fn rescore(
    model: &Model,
    user: &[f32],
    rows: impl Iterator<Item = u32>,
    k: usize,
) -> Vec<ScoredItem> {
    let scored = rows
        .filter(|row| (*row as usize) < model.item_count())
        .map(|row| {
            let item = ItemRow(row);
            (dot(user, model.item_vector(item)) + model.item_bias(item), row)
        })
        .collect();
    top(model, scored, k)
}

/// Exact top k over every item: the ground truth of recall tests and the fallback when no
/// snapshot exists.
pub fn exact_top_k(
    model: &Model,
    user: &[f32],
    k: usize,
    exclude: &HashSet<u32>,
) -> Vec<ScoredItem> {
    let rows = (0..model.item_count() as u32).filter(|row| !exclude.contains(row));
    rescore(model, user, rows, k)
}

/// Top k by decayed popularity (the cold-start fallback).
pub fn popular_top_k(model: &Model, k: usize, exclude: &HashSet<u32>) -> Vec<ScoredItem> {
    let scored = (0..model.item_count() as u32)
        .filter(|row| !exclude.contains(row))
        .map(|row| (model.popularity_log(ItemRow(row)) as f32, row))
        .collect();
    top(model, scored, k)
}

/// Top k items by cosine similarity of item vectors to `item` (itself excluded).
pub fn similar_items(model: &Model, item: ItemRow, k: usize) -> Vec<ScoredItem> {
    let target = model.item_vector(item);
    let target_norm = dot(target, target).sqrt();
    let scored = (0..model.item_count() as u32)
        .filter(|row| *row != item.0)
        .map(|row| {
            let vector = model.item_vector(ItemRow(row));
            let norm = dot(vector, vector).sqrt() * target_norm;
            let cosine = if norm > 0.0 { dot(target, vector) / norm } else { f32::NAN };
            (cosine, row)
        })
        .collect();
    top(model, scored, k)
}
