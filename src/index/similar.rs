//! Similar items kept ready: each asked-for item's list of its most similar items (cosine of
//! the item vectors), kept after the exact scan that made it and brought up to date on the
//! next request by scoring only the items changed since, instead of scanning every item again.
//!
//! A list made when the fresh tier's notes stood at sequence s holds the exact top `len` of
//! every item then. An item not noted after s still has the vector it had then (every change
//! of an item vector is noted: the fold's, and the merge of other instances' item deltas), so
//! while the target is unchanged its cosine is the same: the list's unchanged items are the top
//! of all unchanged items, and the answer is the top k of those and of the items noted since
//! s, every one re-scored with the current vectors (a change not noted yet costs recall for a
//! moment, never a wrong score). The list cannot answer, and a scan replaces it, when the
//! target itself changed, when a rebuild took rows out of the tier (the generation moved: what
//! changed since s is no longer known), or when fewer than k of its items are unchanged.

use super::exact::{cosine, scan_similar, Excluded, ScoredItem, TopK};
use super::fresh::FreshView;
use crate::model::{dot, ItemRow, Model};

/// Items a ready list holds at least (more when a request asks for more).
pub const SIMILAR_CACHED: usize = 100;

/// How a similar-items answer was made.
#[derive(Debug, Clone, PartialEq)]
pub struct SimilarAnswer {
    /// Best first, ties by lower row.
    pub items: Vec<ScoredItem>,
    /// Whether the item's ready list answered (false: a scan of every item).
    pub ready_list: bool,
    /// Items whose cosine was computed.
    pub candidates: usize,
}

/// Weighs a list by the [`SIMILAR_CACHED`]-row units it holds (at least one), so that lists
/// kept for a large k count for more: `index.similar_lists` bounds the units, not the lists.
#[derive(Debug, Clone, Copy)]
pub(super) struct ListWeight;

impl quick_cache::Weighter<u32, std::sync::Arc<SimilarList>> for ListWeight {
    fn weight(&self, _row: &u32, list: &std::sync::Arc<SimilarList>) -> u64 {
        list.rows.len().div_ceil(SIMILAR_CACHED).max(1) as u64
    }
}

/// One item's most similar items when the tier's notes stood at `sequence`.
#[derive(Debug)]
pub(super) struct SimilarList {
    generation: u64,
    sequence: u64,
    /// The item's vector the list was scored against.
    target: Box<[f32]>,
    item_count: usize,
    /// Best first.
    rows: Vec<u32>,
    /// Whether `rows` held every item with a finite cosine (fewer than asked for).
    complete: bool,
}

impl SimilarList {
    /// The exact list of `len` items for `item` in `model` as it is, with the answer for `k`
    /// (k <= len); `view` is the tier as read under the same model lock.
    pub(super) fn scan(
        model: &Model,
        item: ItemRow,
        k: usize,
        len: usize,
        view: &FreshView,
    ) -> (Self, SimilarAnswer) {
        let mut top = TopK::new(len);
        scan_similar(model, item, &mut top);
        let rows = top.into_rows();
        let target_norm = norm(model.item_vector(item));
        let items = rows
            .iter()
            .take(k)
            .map(|row| ScoredItem {
                item_id: model.item_id(ItemRow(*row)).to_owned(),
                score: cosine(
                    model.item_vector(item),
                    target_norm,
                    model.item_vector(ItemRow(*row)),
                ),
                row: *row,
            })
            .collect();
        let list = Self {
            generation: view.generation,
            sequence: view.sequence,
            target: model.item_vector(item).into(),
            item_count: model.item_count(),
            complete: rows.len() < len,
            rows,
        };
        let answer = SimilarAnswer {
            items,
            ready_list: false,
            candidates: model.item_count().saturating_sub(1),
        };
        (list, answer)
    }

    /// The top `k` now, from the list and the items noted since it was made; `None` when the
    /// list cannot answer (see the module's documentation).
    pub(super) fn answer(
        &self,
        model: &Model,
        item: ItemRow,
        k: usize,
        view: &FreshView,
    ) -> Option<SimilarAnswer> {
        let target = model.item_vector(item);
        if view.generation != self.generation
            || model.item_count() < self.item_count
            || *target != *self.target
        {
            return None;
        }
        let target_norm = norm(target);
        let itself = Excluded::from_rows([item.0]);
        let mut top = TopK::new(k);
        let offer = |row: u32, top: &mut TopK| {
            top.offer(cosine(target, target_norm, model.item_vector(ItemRow(row))), row, &itself);
        };
        let mut unchanged = 0;
        for row in &self.rows {
            if !view.noted_after(*row, self.sequence) {
                offer(*row, &mut top);
                unchanged += 1;
            }
        }
        if unchanged < k && !self.complete {
            return None;
        }
        let mut candidates = unchanged;
        for row in view.rows_noted_after(self.sequence) {
            if (row as usize) < model.item_count() {
                offer(row, &mut top);
                candidates += 1;
            }
        }
        // Items added since are noted with their first event; one not noted yet still counts.
        for row in self.item_count as u32..model.item_count() as u32 {
            if !view.noted_after(row, self.sequence) {
                offer(row, &mut top);
                candidates += 1;
            }
        }
        Some(SimilarAnswer { items: top.into_items(model), ready_list: true, candidates })
    }
}

fn norm(vector: &[f32]) -> f32 {
    dot(vector, vector).sqrt()
}
