//! Items shared between instances (issue 10): what Redis held of each item when this process
//! last wrote or read it, so that a flush sends the item's change since then as well as its new
//! state, and a change written by another instance merges into memory without losing this
//! process's unflushed steps.
//!
//! Redis owns item state. A flush asks Redis (the `ITEM_APPLY` script of the store) to store the
//! item's new state when Redis still holds the version this process last saw, and otherwise to
//! add this process's change (its delta) to whatever Redis holds: the parameter-server update
//! of asynchronous SGD (Li et al., OSDI 2014, "Scaling Distributed Machine Learning with the
//! Parameter Server"). One instance alone always finds its own version, so Redis holds exactly
//! its state and a replay's digest holds; several instances add their deltas, so every event's
//! item update reaches the item exactly once (event counts are exact), while the vectors depend
//! on the instances' timing.
//!
//! The synced copy costs one more copy of every item's vectors (`2 x dim x 4` bytes per item).

use super::state::{ItemDelta, ItemState};
use super::{vector, ItemRow, Model};

/// What Redis held of each item at its last write or read by this process (by item row).
#[derive(Debug, Clone, Default)]
pub(crate) struct ItemSync {
    vectors: Vec<f32>,
    contexts: Vec<f32>,
    bias: Vec<f32>,
    adagrad: Vec<f32>,
    context_adagrad: Vec<f32>,
    events: Vec<u64>,
    popularity_log: Vec<f64>,
    version: Vec<u64>,
}

impl ItemSync {
    fn push(&mut self, state: &ItemState) {
        self.vectors.extend_from_slice(&state.vector);
        self.contexts.extend_from_slice(&state.context);
        self.bias.push(state.bias);
        self.adagrad.push(state.adagrad);
        self.context_adagrad.push(state.context_adagrad);
        self.events.push(state.events);
        self.popularity_log.push(state.popularity_log);
        self.version.push(state.version);
    }

    fn set(&mut self, row: usize, dim: usize, state: &ItemState) {
        self.vectors[row * dim..(row + 1) * dim].copy_from_slice(&state.vector);
        self.contexts[row * dim..(row + 1) * dim].copy_from_slice(&state.context);
        self.bias[row] = state.bias;
        self.adagrad[row] = state.adagrad;
        self.context_adagrad[row] = state.context_adagrad;
        self.events[row] = state.events;
        self.popularity_log[row] = state.popularity_log;
        self.version[row] = state.version;
    }
}

/// ln(e^now - e^before): the popularity mass added since `before` (`-inf` for none).
fn added_log(now: f64, before: f64) -> f64 {
    if before == f64::NEG_INFINITY || now.is_nan() {
        return now;
    }
    if now <= before {
        return f64::NEG_INFINITY;
    }
    now + (-(before - now).exp()).ln_1p()
}

impl Model {
    /// Records a new item (created by an event, not yet in Redis) as synced at its initial
    /// state, version 0: its first flush sends the whole state and, should another instance
    /// have created it meanwhile from the same seeded initial vector, the change since then.
    pub(crate) fn sync_new_item(&mut self, row: u32) {
        let state = self.item_state(ItemRow(row));
        self.synced.push(&ItemState {
            vector: state.vector,
            context: state.context,
            bias: 0.0,
            adagrad: 0.0,
            context_adagrad: 0.0,
            events: 0,
            popularity_log: f64::NEG_INFINITY,
            version: 0,
            ..state
        });
    }

    /// Records a restored item as synced at the state Redis holds.
    pub(crate) fn sync_restored_item(&mut self, state: &ItemState) {
        self.synced.push(state);
    }

    /// The version of the item this process last wrote or read (0: never stored).
    pub fn item_version(&self, row: ItemRow) -> u64 {
        self.synced_version(row.0 as usize)
    }

    pub(crate) fn synced_version(&self, index: usize) -> u64 {
        self.synced.version.get(index).copied().unwrap_or(0)
    }

    /// The item's change since it was last synced with Redis.
    pub fn item_delta(&self, row: ItemRow) -> ItemDelta {
        let index = row.0 as usize;
        let dim = self.config.dim;
        let range = index * dim..(index + 1) * dim;
        let difference = |now: &[f32], before: &[f32]| -> Vec<f32> {
            now.iter().zip(before).map(|(now, before)| now - before).collect()
        };
        ItemDelta {
            vector: difference(self.items.vector(row.0), &self.synced.vectors[range.clone()]),
            context: difference(self.context_vector(row), &self.synced.contexts[range]),
            bias: self.item_bias[index] - self.synced.bias[index],
            adagrad: self.items.adagrad[index] - self.synced.adagrad[index],
            context_adagrad: self.context_adagrad[index] - self.synced.context_adagrad[index],
            events: self.items.events[index].saturating_sub(self.synced.events[index]),
            popularity_log: added_log(
                self.item_popularity_log[index],
                self.synced.popularity_log[index],
            ),
        }
    }

    /// After a committed flush that wrote `written` (the state exported then, at the version it
    /// was synced at): Redis now holds that state at the next version, when nobody else wrote
    /// the item in between. When somebody did, Redis added our delta to theirs instead, and the
    /// item's entry in the change feed (a higher version) makes [`Model::merge_item`] fetch it.
    pub fn mark_item_synced(&mut self, written: &ItemState) {
        let Some(row) = self.items.row(&written.id) else { return };
        let dim = self.config.dim;
        self.synced.set(
            row as usize,
            dim,
            &ItemState { version: written.version + 1, ..written.clone() },
        );
    }

    /// Merges an item as another instance left it in Redis: this process's unflushed change
    /// (since its last sync) is added to the stored state, which becomes the synced state. An
    /// unknown item is appended. Returns the row and whether the item is new here. Stored
    /// versions not newer than the synced one are ignored (`None`).
    pub fn merge_item(&mut self, stored: ItemState) -> Option<(ItemRow, bool)> {
        let dim = self.config.dim;
        if stored.vector.len() != dim || stored.context.len() != dim {
            return None;
        }
        let Some(row) = self.items.row(&stored.id) else {
            let row = self.items.insert(
                &stored.id,
                &stored.vector,
                stored.events,
                stored.last_ts,
                stored.adagrad,
            );
            self.context_adagrad.push(stored.context_adagrad);
            self.item_bias.push(stored.bias);
            self.contexts.extend_from_slice(&stored.context);
            self.item_popularity_log.push(stored.popularity_log);
            self.synced.push(&stored);
            return Some((ItemRow(row), true));
        };
        let index = row as usize;
        if stored.version <= self.synced.version[index] {
            return None;
        }
        let delta = self.item_delta(ItemRow(row));
        let max_norm = self.config.max_norm;
        let merged = self.items.vector_mut(row);
        for ((value, stored), change) in merged.iter_mut().zip(&stored.vector).zip(&delta.vector) {
            *value = stored + change;
        }
        vector::clip_norm(merged, max_norm);
        let context = &mut self.contexts[index * dim..(index + 1) * dim];
        for ((value, stored), change) in context.iter_mut().zip(&stored.context).zip(&delta.context)
        {
            *value = stored + change;
        }
        vector::clip_norm(context, max_norm);
        let bias = stored.bias + delta.bias;
        self.item_bias[index] = if bias.is_finite() {
            bias.clamp(-self.config.max_bias, self.config.max_bias)
        } else {
            0.0
        };
        self.items.adagrad[index] = (stored.adagrad + delta.adagrad).min(f32::MAX / 2.0);
        self.context_adagrad[index] =
            (stored.context_adagrad + delta.context_adagrad).min(f32::MAX / 2.0);
        self.items.events[index] = stored.events + delta.events;
        self.items.last_ts[index] = self.items.last_ts[index].max(stored.last_ts);
        self.item_popularity_log[index] =
            vector::log_add_exp(stored.popularity_log, delta.popularity_log);
        self.synced.set(index, dim, &stored);
        Some((ItemRow(row), false))
    }
}

#[cfg(test)]
mod tests {
    use super::added_log;

    #[test]
    fn the_added_popularity_mass_is_the_difference_of_the_sums() {
        let before = 2.0_f64.ln();
        let now = 5.0_f64.ln();
        assert!((added_log(now, before) - 3.0_f64.ln()).abs() < 1e-12);
        assert_eq!(added_log(now, f64::NEG_INFINITY), now);
        assert_eq!(added_log(before, before), f64::NEG_INFINITY);
    }
}
