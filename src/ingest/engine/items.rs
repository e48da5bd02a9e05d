//! Following the other instances' item writes (issue 10): Redis owns item state, every
//! flush's `ITEM_APPLY` lists the items it wrote in the change feed `{ns}:item_changes`, and
//! each instance merges the writes it did not make itself (a version above its own) into its
//! model and index, keeping its own unflushed steps (see [`crate::model::Model::merge_item`]).

use std::time::{Duration, Instant};

use super::Engine;
use crate::store::{ItemFeed, StoreError};

/// Change-feed entries read per round.
const FEED_ENTRIES_PER_READ: usize = 256;

impl Engine {
    /// Merges item writes of other instances, once per `ingest.item_feed_interval_ms`.
    pub(super) fn follow_items(&mut self) {
        let interval = Duration::from_millis(self.config.item_feed_interval_ms);
        if self.item_feed_read.elapsed() < interval {
            return;
        }
        self.item_feed_read = Instant::now();
        if let Err(error) = self.merge_item_feed() {
            tracing::debug!(%error, "reading the item change feed failed; tried again later");
        }
    }

    /// Reads the feed after this instance's position until it is at its end (at most a few
    /// rounds), merging what changed.
    ///
    /// # Errors
    /// [`StoreError`] when Redis fails; the position stays where it was.
    pub fn merge_item_feed(&mut self) -> Result<usize, StoreError> {
        let Some(mut position) = self.item_feed.clone() else { return Ok(0) };
        let dim = self.fold.model().dim();
        let mut merged = 0;
        for _ in 0..16 {
            let (newest, stored) = match self
                .store
                .item_changes_after(&position, FEED_ENTRIES_PER_READ)?
            {
                ItemFeed::Gap { newest } => {
                    tracing::warn!(
                        position = %position,
                        "item change feed trimmed past this instance's position: reloading every item"
                    );
                    self.metrics.item_feed_reloads.inc();
                    (newest, self.store.load_items(dim)?)
                }
                ItemFeed::Changes { newest, changes } => {
                    if changes.is_empty() {
                        break;
                    }
                    let model = self.fold.model();
                    let mut ids: Vec<String> = changes
                        .into_iter()
                        .filter(|change| {
                            model.item_row(&change.id).map_or(0, |row| model.item_version(row))
                                < change.version
                        })
                        .map(|change| change.id)
                        .collect();
                    drop(model);
                    ids.sort_unstable();
                    ids.dedup();
                    let stored =
                        self.store.load_items_by_id(&ids, dim)?.into_iter().flatten().collect();
                    (newest, stored)
                }
            };
            let mut changed = Vec::new();
            {
                let mut model = self.fold.model_mut();
                for item in stored {
                    if let Some((row, _)) = model.merge_item(item) {
                        changed.push(row);
                    }
                }
            }
            merged += changed.len();
            self.metrics.item_feed_merged.inc_by(changed.len() as u64);
            self.index.note_changed(changed);
            if let Some(ms) = newest.split('-').next().and_then(|ms| ms.parse::<i64>().ok()) {
                let age_ms = (crate::ingest::wall_ms() - ms).max(0);
                self.metrics.item_feed_lag.observe(age_ms as f64 / 1000.0);
            }
            position = newest;
            self.item_feed = Some(position.clone());
        }
        Ok(merged)
    }
}
