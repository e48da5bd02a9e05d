//! Popular items kept ready: the rows of the [`POPULAR_CACHED`] most popular items, in order,
//! recomputed by the index's maintenance thread whenever the model moved, so that a cold user's
//! ranking reads a short list instead of scanning every item.

use super::exact::{Excluded, ScoredItem, TopK};
use crate::model::{ItemRow, Model};

/// Items held in the popular list. A request for k items skips the user's excluded rows, so the
/// list answers while k plus the excluded rows found in it fit; otherwise the request scans.
pub const POPULAR_CACHED: usize = 1000;

/// The most popular rows when the model had applied `events_applied` events.
#[derive(Debug, Default)]
pub(super) struct PopularList {
    pub(super) rows: Vec<u32>,
    pub(super) events_applied: u64,
    pub(super) item_count: usize,
}

impl PopularList {
    /// The list of `model` now: one pass over every item's decayed popularity.
    pub(super) fn of(model: &Model) -> Self {
        let mut top = TopK::new(POPULAR_CACHED);
        for row in 0..model.item_count() as u32 {
            top.offer(model.popularity_log(ItemRow(row)) as f32, row, &Excluded::none());
        }
        Self {
            rows: top.into_rows(),
            events_applied: model.events_applied(),
            item_count: model.item_count(),
        }
    }

    /// Whether `model` moved since the list was made.
    pub(super) fn is_stale(&self, model: &Model) -> bool {
        self.events_applied != model.events_applied() || self.item_count != model.item_count()
    }

    /// Top `k` of the list by the items' current popularity, skipping `excluded`; `None` when
    /// the list cannot answer (not made yet, or too short for k after the exclusions: then
    /// items outside it could belong in the answer).
    pub(super) fn top_k(
        &self,
        model: &Model,
        k: usize,
        excluded: &Excluded,
    ) -> Option<Vec<ScoredItem>> {
        let mut top = TopK::new(k);
        let mut kept = 0;
        for row in &self.rows {
            if (*row as usize) >= model.item_count() || excluded.contains(*row) {
                continue;
            }
            top.offer(model.popularity_log(ItemRow(*row)) as f32, *row, &Excluded::none());
            kept += 1;
        }
        // The list answers when it held k rows beyond the exclusions, or when it holds every
        // item of the model as it is now (never true of a list not made yet, unless the model
        // is empty).
        (kept >= k || self.rows.len() == model.item_count()).then(|| top.into_items(model))
    }
}
