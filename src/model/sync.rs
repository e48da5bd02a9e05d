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
//! What Redis held is kept only for items changed since their last sync (copied from the item
//! just before the first change after a sync, dropped when a flush writes the item as it is):
//! an item without a copy holds exactly what Redis held, and its delta is zero. Every mutation
//! of an item's synced fields ([`Model::apply`]: the event's item, its sampled negatives and the
//! context rows of the user's recent items) calls [`Model::preserve_synced`] first. A copy
//! costs `2 x dim x 4` bytes in one slab plus about 50 in a map, between two flushes; the slab
//! is compacted (and the old one freed whole) once it is four times larger than what it holds,
//! so a catch-up that changed every item does not leave its peak resident as small freed
//! blocks. Every item keeps its synced version (8 bytes) and a bit saying whether it has a copy.

use std::collections::HashMap;

use super::state::{ItemDelta, ItemState};
use super::{vector, ItemRow, Model};

/// What Redis held of an item's scalars at its last write or read by this process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scalars {
    bias: f32,
    adagrad: f32,
    context_adagrad: f32,
    events: u64,
    popularity_log: f64,
}

impl Scalars {
    fn of(state: &ItemState) -> Self {
        Self {
            bias: state.bias,
            adagrad: state.adagrad,
            context_adagrad: state.context_adagrad,
            events: state.events,
            popularity_log: state.popularity_log,
        }
    }
}

/// A copy: its scalars and its slot of the slab (q_i then c_i).
#[derive(Debug, Clone, Copy)]
struct Held {
    slot: u32,
    scalars: Scalars,
}

/// Slabs of at most this many slots are never compacted.
const SLAB_MIN_COMPACT: usize = 1024;

/// What Redis held of each item at its last write or read by this process (by item row): the
/// version of every item, the rest of the items changed since.
#[derive(Debug, Clone, Default)]
pub(crate) struct ItemSync {
    version: Vec<u64>,
    held: HashMap<u32, Held, foldhash::fast::RandomState>,
    /// One bit an item: whether `held` has it (checked on every item an event touches, tens
    /// per event, without hashing).
    bits: Vec<u64>,
    /// q_i then c_i of each copy, `2 x dim` floats a slot.
    slab: Vec<f32>,
    free: Vec<u32>,
}

impl ItemSync {
    fn is_held(&self, row: u32) -> bool {
        self.bits.get(row as usize / 64).is_some_and(|word| word & (1 << (row % 64)) != 0)
    }

    fn get(&self, row: u32, dim: usize) -> Option<(&[f32], &[f32], &Scalars)> {
        if !self.is_held(row) {
            return None;
        }
        let held = self.held.get(&row)?;
        let start = held.slot as usize * 2 * dim;
        let (vector, context) = self.slab[start..start + 2 * dim].split_at(dim);
        Some((vector, context, &held.scalars))
    }

    fn hold(&mut self, row: u32, vector: &[f32], context: &[f32], scalars: Scalars) {
        let width = vector.len() + context.len();
        let slot = match self.held.get(&row) {
            Some(held) => held.slot,
            None => match self.free.pop() {
                Some(slot) => slot,
                None => {
                    self.slab.resize(self.slab.len() + width, 0.0);
                    (self.slab.len() / width - 1) as u32
                }
            },
        };
        let start = slot as usize * width;
        self.slab[start..start + vector.len()].copy_from_slice(vector);
        self.slab[start + vector.len()..start + width].copy_from_slice(context);
        self.held.insert(row, Held { slot, scalars });
        let word = row as usize / 64;
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (row % 64);
    }

    fn release(&mut self, row: u32) {
        let Some(held) = self.held.remove(&row) else { return };
        self.free.push(held.slot);
        if let Some(word) = self.bits.get_mut(row as usize / 64) {
            *word &= !(1 << (row % 64));
        }
    }

    /// Whether most of the slab is free slots ([`ItemSync::trim`] would compact it).
    fn is_sparse(&self, dim: usize) -> bool {
        let slots = self.slab.len() / (2 * dim).max(1);
        slots > SLAB_MIN_COMPACT && self.held.len() * 4 < slots
    }

    /// Compacts the slab when most of it is free slots. Not done as copies are released: a
    /// flush under steady ingest releases most of them, and the next window's events hold
    /// as many again, so a slab compacted after every flush grew back through every doubling,
    /// each on memory the allocator had just given back to the OS, under the model's write
    /// lock (page faults and copies of up to the whole slab, 10 to 50 ms of a window's chunk
    /// of 128 events on the 100,000-item catalogue). The engine trims once the stream is
    /// settled (`Model::trim_synced_copies`).
    fn trim(&mut self, dim: usize) -> bool {
        let sparse = self.is_sparse(dim);
        if sparse {
            self.compact(dim);
        }
        sparse
    }

    /// Moves the copies into a slab of their size (the old one is freed whole).
    fn compact(&mut self, dim: usize) {
        let width = 2 * dim;
        let mut slab = Vec::with_capacity(self.held.len() * width);
        for (slot, held) in self.held.values_mut().enumerate() {
            let start = held.slot as usize * width;
            slab.extend_from_slice(&self.slab[start..start + width]);
            held.slot = slot as u32;
        }
        self.slab = slab;
        self.free = Vec::new();
        self.held.shrink_to_fit();
    }

    /// Items with a copy of their synced state.
    #[cfg(test)]
    pub(crate) fn changed_len(&self) -> usize {
        self.held.len()
    }

    /// Slots of the slab (held or free).
    #[cfg(test)]
    pub(crate) fn slab_slots(&self, dim: usize) -> usize {
        self.slab.len() / (2 * dim)
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
    /// The item's synced scalars as they are now.
    fn current_scalars(&self, index: usize) -> Scalars {
        Scalars {
            bias: self.item_bias[index],
            adagrad: self.items.adagrad[index],
            context_adagrad: self.context_adagrad[index],
            events: self.items.events[index],
            popularity_log: self.item_popularity_log[index],
        }
    }

    /// Keeps what Redis holds of `row` before it changes: called before every change of an
    /// item's synced fields (a no-op when it changed since its last sync already).
    pub(crate) fn preserve_synced(&mut self, row: u32) {
        let index = row as usize;
        if !self.synced.is_held(row) && index < self.items.len() {
            let dim = self.config.dim;
            let scalars = self.current_scalars(index);
            // The field, not `context_vector`: `self.synced` is borrowed mutably beside it.
            let context = &self.contexts[index * dim..(index + 1) * dim];
            self.synced.hold(row, self.items.vector(row), context, scalars);
        }
    }

    /// Records `vector`, `context` and `scalars` as what Redis holds of `row` (its version set
    /// by the caller): copied only when the item differs from them now.
    fn settle_synced(&mut self, row: u32, vector: &[f32], context: &[f32], scalars: Scalars) {
        let index = row as usize;
        let unchanged = self.current_scalars(index) == scalars
            && self.items.vector(row) == vector
            && self.context_vector(ItemRow(row)) == context;
        if unchanged {
            self.synced.release(row);
        } else {
            self.synced.hold(row, vector, context, scalars);
        }
    }

    /// Records a new item (created by an event, not yet in Redis) as synced at its initial
    /// state, version 0: its first flush sends the whole state and, should another instance
    /// have created it meanwhile from the same seeded initial vector, the change since then.
    /// The item is created at that state, so it needs no copy until its first change.
    pub(crate) fn sync_new_item(&mut self) {
        self.synced.version.push(0);
    }

    /// Records a restored item as synced at the state Redis holds.
    pub(crate) fn sync_restored_item(&mut self, state: &ItemState) {
        self.synced.version.push(state.version);
    }

    /// The version of the item this process last wrote or read (0: never stored).
    pub fn item_version(&self, row: ItemRow) -> u64 {
        self.synced_version(row.0 as usize)
    }

    pub(crate) fn synced_version(&self, index: usize) -> u64 {
        self.synced.version.get(index).copied().unwrap_or(0)
    }

    /// The item's change since it was last synced with Redis (zero for an item not changed
    /// since).
    pub fn item_delta(&self, row: ItemRow) -> ItemDelta {
        let index = row.0 as usize;
        let dim = self.config.dim;
        let Some((vector_before, context_before, before)) = self.synced.get(row.0, dim) else {
            return ItemDelta::none(dim);
        };
        let difference = |now: &[f32], before: &[f32]| -> Vec<f32> {
            now.iter().zip(before).map(|(now, before)| now - before).collect()
        };
        ItemDelta {
            vector: difference(self.items.vector(row.0), vector_before),
            context: difference(self.context_vector(row), context_before),
            bias: self.item_bias[index] - before.bias,
            adagrad: self.items.adagrad[index] - before.adagrad,
            context_adagrad: self.context_adagrad[index] - before.context_adagrad,
            events: self.items.events[index].saturating_sub(before.events),
            popularity_log: added_log(self.item_popularity_log[index], before.popularity_log),
        }
    }

    /// Gives back the memory of synced copies no longer needed, when most of their slab is
    /// free slots (see `ItemSync::trim`); returns whether it did. For a settled stream: under
    /// ingest the free slots are taken again by the next changes.
    pub fn trim_synced_copies(&mut self) -> bool {
        self.synced.trim(self.config.dim)
    }

    /// Whether [`Model::trim_synced_copies`] would give memory back.
    pub fn synced_copies_sparse(&self) -> bool {
        self.synced.is_sparse(self.config.dim)
    }

    /// After a committed flush that wrote `written` (the state exported then, at the version it
    /// was synced at): Redis now holds that state at the next version, when nobody else wrote
    /// the item in between. When somebody did, Redis added our delta to theirs instead, and the
    /// item's entry in the change feed (a higher version) makes [`Model::merge_item`] fetch it.
    pub fn mark_item_synced(&mut self, written: &ItemState) {
        let Some(row) = self.items.row(&written.id) else { return };
        let dim = self.config.dim;
        if written.vector.len() != dim || written.context.len() != dim {
            return;
        }
        self.synced.version[row as usize] = written.version + 1;
        self.settle_synced(row, &written.vector, &written.context, Scalars::of(written));
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
            self.synced.version.push(stored.version);
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
        self.synced.version[index] = stored.version;
        self.settle_synced(row, &stored.vector, &stored.context, Scalars::of(&stored));
        Some((ItemRow(row), false))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::added_log;
    use crate::model::{ItemDelta, ItemRow, ItemState, Model, ModelConfig};

    /// The delta of `now` over `synced` as the full copy of every item computed it before.
    fn reference_delta(now: &ItemState, synced: &ItemState) -> ItemDelta {
        let difference = |now: &[f32], before: &[f32]| -> Vec<f32> {
            now.iter().zip(before).map(|(now, before)| now - before).collect()
        };
        ItemDelta {
            vector: difference(&now.vector, &synced.vector),
            context: difference(&now.context, &synced.context),
            bias: now.bias - synced.bias,
            adagrad: now.adagrad - synced.adagrad,
            context_adagrad: now.context_adagrad - synced.context_adagrad,
            events: now.events.saturating_sub(synced.events),
            popularity_log: added_log(now.popularity_log, synced.popularity_log),
        }
    }

    /// A model of `items` items restored from Redis at version 2, and what Redis holds of them.
    fn restored(items: u32) -> (Model, HashMap<u32, ItemState>) {
        let config = ModelConfig { dim: 8, negatives: 4, ..ModelConfig::default() };
        let dim = config.dim;
        let mut model = Model::new(config).unwrap();
        let mut synced: HashMap<u32, ItemState> = HashMap::new();
        for row in 0..items {
            let value = |d: usize| ((row as usize * 31 + d * 7) % 17) as f32 / 17.0 - 0.5;
            let state = ItemState {
                id: format!("i{row}"),
                row,
                vector: (0..dim).map(value).collect(),
                context: (0..dim).map(|d| value(d + 3) / 2.0).collect(),
                adagrad: 0.5,
                context_adagrad: 0.25,
                bias: 0.1,
                events: 3,
                last_ts: 0,
                popularity_log: 1.0,
                version: 2,
            };
            model.restore_item(state.clone()).unwrap();
            synced.insert(row, state);
        }
        (model, synced)
    }

    /// Every item's delta against the reference; returns the items changed since their sync.
    fn check_deltas(model: &Model, synced: &HashMap<u32, ItemState>, round: usize) -> usize {
        let dim = model.dim();
        let mut changed = 0;
        for row in 0..model.item_count() as u32 {
            let expected = reference_delta(&model.item_state(ItemRow(row)), &synced[&row]);
            changed += usize::from(expected != ItemDelta::none(dim));
            assert_eq!(model.item_delta(ItemRow(row)), expected, "round {round}, row {row}");
            assert_eq!(model.item_version(ItemRow(row)), synced[&row].version, "row {row}");
        }
        assert!(model.synced.changed_len() <= changed, "{} copies", model.synced.changed_len());
        changed
    }

    /// Synced copies are kept only for items changed since their last sync: every delta must
    /// still equal the item's change since what a full copy of every item would hold, through
    /// events (items, negatives, context rows), flushes marked synced (some with events
    /// applied between the export and the commit) and merges of other instances' writes.
    #[test]
    fn sparse_synced_copies_give_the_deltas_of_full_copies() {
        let items = 120u32;
        let (mut model, mut synced) = restored(items);
        let mut event = 0u64;
        let mut fold = |model: &mut Model, count: u64| {
            for _ in 0..count {
                let item = (event * 7_919 + event / 3) % items as u64;
                model.apply(
                    &format!("e{event}"),
                    &format!("u{}", event % 9),
                    &format!("i{item}"),
                    event as i64,
                    1.0,
                );
                event += 1;
            }
        };
        let check = |model: &Model, synced: &HashMap<u32, ItemState>, round: usize| {
            check_deltas(model, synced, round);
        };
        for round in 0..25 {
            fold(&mut model, 10);
            check(&model, &synced, round);
            // A flush of the items changed so far, a third of them with events folded between
            // the export and the commit.
            let (_, dirty) = model.take_dirty();
            let exported: Vec<ItemState> = dirty.iter().map(|row| model.item_state(*row)).collect();
            if round % 3 == 0 {
                fold(&mut model, 2);
            }
            for state in &exported {
                model.mark_item_synced(state);
                synced.insert(state.row, ItemState { version: state.version + 1, ..state.clone() });
            }
            check(&model, &synced, round);
            // Another instance wrote two items.
            for row in [round as u32 % items, (round as u32 * 37 + 5) % items] {
                let mut stored = synced[&row].clone();
                stored.version += 5;
                stored.events += 2;
                stored.vector.iter_mut().for_each(|x| *x *= 0.9);
                stored.bias += 0.05;
                assert!(model.merge_item(stored.clone()).is_some());
                synced.insert(row, stored);
            }
            check(&model, &synced, round);
        }
        // Caught up and flushed: no copy is left.
        let (_, dirty) = model.take_dirty();
        for row in dirty {
            let state = model.item_state(row);
            model.mark_item_synced(&state);
        }
        assert_eq!(model.synced.changed_len(), 0);
    }

    #[test]
    fn the_added_popularity_mass_is_the_difference_of_the_sums() {
        let before = 2.0_f64.ln();
        let now = 5.0_f64.ln();
        assert!((added_log(now, before) - 3.0_f64.ln()).abs() < 1e-12);
        assert_eq!(added_log(now, f64::NEG_INFINITY), now);
        assert_eq!(added_log(before, before), f64::NEG_INFINITY);
    }

    /// A new item is synced at its initial state, version 0: its first delta is everything
    /// its events did (counts, bias, popularity), and a flush of it leaves no copy behind.
    #[test]
    fn a_new_item_s_delta_is_its_whole_change_since_creation() {
        let mut model = Model::new(ModelConfig { dim: 8, ..ModelConfig::default() }).unwrap();
        model.apply("e0", "u", "old", 0, 1.0);
        model.apply("e1", "u", "new", 1, 1.0);
        let row = model.item_row("new").unwrap();
        let state = model.item_state(row);
        let delta = model.item_delta(row);
        assert_eq!(state.version, 0);
        assert_eq!(delta.events, state.events);
        assert_eq!(delta.bias, state.bias);
        assert_eq!(delta.popularity_log, state.popularity_log);
        assert!(delta.vector.iter().any(|x| *x != 0.0), "the event moved q");
        let (_, dirty) = model.take_dirty();
        for row in dirty {
            let state = model.item_state(row);
            model.mark_item_synced(&state);
        }
        assert_eq!(model.synced.changed_len(), 0);
        assert_eq!(model.item_delta(row), ItemDelta::none(8));
    }

    /// A catch-up changes every item, a flush then syncs most of them: the freed slots are
    /// reused by the next changes (the slab does not shrink and grow back after every flush),
    /// and a trim compacts the slab (the copies still held move to new slots and keep their
    /// deltas).
    #[test]
    fn the_slab_of_copies_is_reused_after_a_flush_and_shrinks_on_a_trim() {
        let items = 3_000u32;
        let (mut model, mut synced) = restored(items);
        for event in 0..4_000u64 {
            let item = (event * 7_919) % items as u64;
            model.apply(
                &format!("e{event}"),
                &format!("u{}", event % 50),
                &format!("i{item}"),
                event as i64,
                1.0,
            );
        }
        let (_, dirty) = model.take_dirty();
        let before = model.synced.slab_slots(model.dim());
        assert!(before > 2_000, "{before} slots");
        // Everything but the items of rows below 200 is written.
        for row in dirty.iter().filter(|row| row.0 >= 200) {
            let state = model.item_state(*row);
            model.mark_item_synced(&state);
            synced.insert(row.0, ItemState { version: state.version + 1, ..state });
        }
        let held = model.synced.changed_len();
        assert!(held > 100 && held <= 200, "{held} copies");
        assert_eq!(model.synced.slab_slots(model.dim()), before, "compacted before a trim");
        // The next round of changes takes freed slots: the slab does not grow.
        for event in 4_000..6_000u64 {
            let item = (event * 7_919) % items as u64;
            let (user, id) = (format!("u{}", event % 50), format!("i{item}"));
            model.apply(&format!("e{event}"), &user, &id, event as i64, 1.0);
        }
        assert_eq!(model.synced.slab_slots(model.dim()), before, "grew past its free slots");
        let (_, dirty) = model.take_dirty();
        for row in dirty.iter().filter(|row| row.0 >= 200) {
            let state = model.item_state(*row);
            model.mark_item_synced(&state);
            synced.insert(row.0, ItemState { version: state.version + 1, ..state });
        }
        assert!(model.trim_synced_copies());
        assert!(model.synced.slab_slots(model.dim()) < before / 4, "not compacted");
        assert!(!model.trim_synced_copies(), "compacted twice");
        check_deltas(&model, &synced, 0);
    }
}
