use std::hash::BuildHasher;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use parking_lot::{RwLock, RwLockReadGuard};

use super::quantized::Quantized;

/// A table's 8-bit mirror, behind a lock of its own: the writer (holding the model for
/// writing) marks rows as changed without locking, readers (holding it for reading)
/// re-quantise them under this lock.
#[derive(Debug, Default)]
pub(crate) struct Mirror(RwLock<Quantized>);

impl Clone for Mirror {
    fn clone(&self) -> Self {
        Self(RwLock::new(self.0.read().clone()))
    }
}

/// Dense storage of one kind of entity (users or items): id to row, and per-row vectors and
/// counters in flat arrays, rows in order of first appearance.
///
/// Each id is held once, in `ids`: the lookup table holds rows only and hashes `ids[row]`
/// (hashbrown's `HashTable`), 4 bytes an entry instead of a second copy of the id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    rows: hashbrown::HashTable<u32>,
    /// foldhash, seeded per process: SipHash (std's default) on every id lookup was a visible
    /// share of the fold.
    hasher: foldhash::fast::RandomState,
    pub(crate) ids: Vec<Box<str>>,
    pub(crate) vectors: Vec<f32>,
    pub(crate) events: Vec<u64>,
    pub(crate) last_ts: Vec<i64>,
    /// Row-wise AdaGrad accumulators (see `Model::adapt`).
    pub(crate) adagrad: Vec<f32>,
    /// The 8-bit mirror of `vectors` (items only: the bounded scan reads it).
    pub(crate) quantized: Option<Mirror>,
    dim: usize,
}

impl Table {
    pub(crate) fn new(dim: usize) -> Self {
        Self { dim, ..Self::default() }
    }

    /// A table whose vectors keep an 8-bit mirror ([`Quantized`]).
    pub(crate) fn with_quantized(dim: usize) -> Self {
        Self { dim, quantized: Some(Mirror(RwLock::new(Quantized::new(dim)))), ..Self::default() }
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn row(&self, id: &str) -> Option<u32> {
        let ids = &self.ids;
        self.rows.find(self.hasher.hash_one(id), |row| &*ids[*row as usize] == id).copied()
    }

    /// Adds `id` as the next row (the caller checked it is absent) and returns the row.
    fn push_id(&mut self, id: &str) -> u32 {
        let row = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.push(id.into());
        let Self { rows, ids, hasher, .. } = self;
        rows.insert_unique(hasher.hash_one(id), row, |row| hasher.hash_one(&*ids[*row as usize]));
        row
    }

    /// The row of `id`, created with a seeded initial vector when new. The second value says
    /// whether it was created.
    pub(crate) fn row_or_insert(&mut self, id: &str, seed: u64, init_scale: f32) -> (u32, bool) {
        if let Some(row) = self.row(id) {
            return (row, false);
        }
        let row = self.push_id(id);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(xxh3_64_with_seed(id.as_bytes(), seed));
        self.vectors.extend((0..self.dim).map(|_| init_scale * symmetric_unit(&mut rng)));
        self.events.push(0);
        self.last_ts.push(i64::MIN);
        self.adagrad.push(0.0);
        if let Some(Mirror(quantized)) = &mut self.quantized {
            quantized.get_mut().push();
        }
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
        let row = self.push_id(id);
        self.vectors.extend_from_slice(vector);
        self.events.push(events);
        self.last_ts.push(last_ts);
        self.adagrad.push(adagrad);
        if let Some(Mirror(quantized)) = &mut self.quantized {
            quantized.get_mut().push();
        }
        row
    }

    /// Removes a row by moving the last row into its place; returns the old index of the row
    /// that moved, if any.
    pub(crate) fn swap_remove(&mut self, row: u32) -> Option<u32> {
        let index = row as usize;
        let last = self.ids.len() - 1;
        let removed_hash = self.hasher.hash_one(&*self.ids[index]);
        if let Ok(entry) = self.rows.find_entry(removed_hash, |r| *r == row) {
            entry.remove();
        }
        self.ids.swap_remove(index);
        self.events.swap_remove(index);
        self.last_ts.swap_remove(index);
        self.adagrad.swap_remove(index);
        if let Some(Mirror(quantized)) = &mut self.quantized {
            quantized.get_mut().swap_remove(row);
        }
        if index != last {
            let (dim, moved_start) = (self.dim, last * self.dim);
            self.vectors.copy_within(moved_start..moved_start + dim, index * dim);
            let moved_hash = self.hasher.hash_one(&*self.ids[index]);
            let last_row = last as u32;
            if let Some(moved) = self.rows.find_mut(moved_hash, |r| *r == last_row) {
                *moved = row;
            }
        }
        self.vectors.truncate(last * self.dim);
        (index != last).then_some(last as u32)
    }

    pub(crate) fn vector(&self, row: u32) -> &[f32] {
        let start = row as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    /// The row's vector for writing: its 8-bit copy, if any, goes stale until a reader asks
    /// for it ([`Table::quantized`]).
    pub(crate) fn vector_mut(&mut self, row: u32) -> &mut [f32] {
        if let Some(Mirror(quantized)) = &mut self.quantized {
            quantized.get_mut().invalidate(row);
        }
        let start = row as usize * self.dim;
        &mut self.vectors[start..start + self.dim]
    }

    /// The 8-bit mirror of the vectors, once the rows changed since it was last brought up to
    /// date are re-quantised, by this reader, when there are at most `budget` of them (the
    /// writer only marks rows as changed, so a stream folded with nobody asking pays nothing,
    /// and a row changed many times between two queries is re-quantised once). `None` when
    /// there are more (the caller scans the floats; [`Table::requantize`] catches up).
    pub(crate) fn quantized(&self, budget: usize) -> Option<RwLockReadGuard<'_, Quantized>> {
        let Mirror(quantized) = self.quantized.as_ref()?;
        let stale = quantized.read().stale_rows();
        if stale > budget {
            return None;
        }
        if stale > 0 {
            quantized.write().refresh(&self.vectors);
        }
        Some(quantized.read())
    }

    /// Re-quantises every row of the mirror changed since it was last brought up to date
    /// (a background thread's catch-up; readers need only the table's read access).
    pub(crate) fn requantize(&self) {
        self.requantize_some(usize::MAX);
    }

    /// Re-quantises at most `max_rows` of the rows changed since the mirror was last brought
    /// up to date, under one hold of the mirror's write lock; returns how many stay stale.
    pub(crate) fn requantize_some(&self, max_rows: usize) -> usize {
        let Some(Mirror(quantized)) = &self.quantized else { return 0 };
        if quantized.read().stale_rows() == 0 {
            return 0;
        }
        quantized.write().refresh_some(&self.vectors, max_rows)
    }

    /// Rows whose 8-bit copy is stale.
    pub(crate) fn unquantized(&self) -> usize {
        self.quantized.as_ref().map_or(0, |Mirror(quantized)| quantized.read().stale_rows())
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

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn swap_remove_keeps_every_id_on_its_row() {
        let mut table = Table::new(2);
        for n in 0..50 {
            table.row_or_insert(&format!("id{n}"), 7, 0.1);
        }
        // Remove from the middle, the end and the start, checking every lookup each time.
        for victim in ["id20", "id49", "id0", "id48", "id31"] {
            let row = table.row(victim).unwrap();
            let moved_id = table.ids.last().unwrap().to_string();
            let moved_vector = table.vector(table.row(&moved_id).unwrap()).to_vec();
            table.swap_remove(row);
            assert_eq!(table.row(victim), None);
            if moved_id != victim {
                assert_eq!(table.row(&moved_id), Some(row));
                assert_eq!(table.vector(row), moved_vector.as_slice());
            }
            for (index, id) in table.ids.iter().enumerate() {
                assert_eq!(table.row(id), Some(index as u32), "{id}");
            }
        }
        assert_eq!(table.len(), 45);
        let (row, created) = table.row_or_insert("id20", 7, 0.1);
        assert!(created);
        assert_eq!(row, 45);
        assert_eq!(table.row_or_insert("id21", 7, 0.1), (table.row("id21").unwrap(), false));
    }
}
