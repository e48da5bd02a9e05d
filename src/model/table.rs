use std::collections::HashMap;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Dense storage of one kind of entity (users or items): id to row, and per-row vectors and
/// counters in flat arrays, rows in order of first appearance.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    rows: HashMap<String, u32>,
    pub(crate) ids: Vec<String>,
    pub(crate) vectors: Vec<f32>,
    pub(crate) events: Vec<u64>,
    pub(crate) last_ts: Vec<i64>,
    /// Row-wise AdaGrad accumulators (see `Model::adapt`).
    pub(crate) adagrad: Vec<f32>,
    dim: usize,
}

impl Table {
    pub(crate) fn new(dim: usize) -> Self {
        Self { dim, ..Self::default() }
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn row(&self, id: &str) -> Option<u32> {
        self.rows.get(id).copied()
    }

    /// The row of `id`, created with a seeded initial vector when new. The second value says
    /// whether it was created.
    pub(crate) fn row_or_insert(&mut self, id: &str, seed: u64, init_scale: f32) -> (u32, bool) {
        if let Some(row) = self.rows.get(id) {
            return (*row, false);
        }
        let row = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.rows.insert(id.to_owned(), row);
        self.ids.push(id.to_owned());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(xxh3_64_with_seed(id.as_bytes(), seed));
        self.vectors.extend((0..self.dim).map(|_| init_scale * symmetric_unit(&mut rng)));
        self.events.push(0);
        self.last_ts.push(i64::MIN);
        self.adagrad.push(0.0);
        (row, true)
    }

    /// Appends a row with given values (restore); replaces nothing.
    pub(crate) fn insert(
        &mut self,
        id: &str,
        vector: &[f32],
        events: u64,
        last_ts: i64,
        adagrad: f32,
    ) -> u32 {
        let row = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.rows.insert(id.to_owned(), row);
        self.ids.push(id.to_owned());
        self.vectors.extend_from_slice(vector);
        self.events.push(events);
        self.last_ts.push(last_ts);
        self.adagrad.push(adagrad);
        row
    }

    /// Removes a row by moving the last row into its place; returns the old index of the row
    /// that moved, if any.
    pub(crate) fn swap_remove(&mut self, row: u32) -> Option<u32> {
        let index = row as usize;
        let last = self.ids.len() - 1;
        let removed = self.ids.swap_remove(index);
        self.rows.remove(&removed);
        self.events.swap_remove(index);
        self.last_ts.swap_remove(index);
        self.adagrad.swap_remove(index);
        if index != last {
            let (dim, moved_start) = (self.dim, last * self.dim);
            self.vectors.copy_within(moved_start..moved_start + dim, index * dim);
            self.rows.insert(self.ids[index].clone(), row);
        }
        self.vectors.truncate(last * self.dim);
        (index != last).then_some(last as u32)
    }

    pub(crate) fn vector(&self, row: u32) -> &[f32] {
        let start = row as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    pub(crate) fn vector_mut(&mut self, row: u32) -> &mut [f32] {
        let start = row as usize * self.dim;
        &mut self.vectors[start..start + self.dim]
    }

    /// Rows in ascending id order: the canonical order of digests and snapshots.
    pub(crate) fn rows_by_id(&self) -> Vec<u32> {
        let mut rows: Vec<u32> = (0..self.ids.len() as u32).collect();
        rows.sort_unstable_by(|a, b| self.ids[*a as usize].cmp(&self.ids[*b as usize]));
        rows
    }
}

/// A uniform draw in [-1, 1) from the top 24 bits of one 64-bit output (exact in f32).
pub(crate) fn symmetric_unit(rng: &mut impl RngCore) -> f32 {
    let bits = (rng.next_u64() >> 40) as u32;
    (bits as f32 / (1u32 << 23) as f32) - 1.0
}
