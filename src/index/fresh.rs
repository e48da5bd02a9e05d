//! The fresh tier: item rows changed since the snapshot's copy, each with the note sequence
//! number of its latest change, and a read-only view of it that queries share.

use std::collections::HashMap;

/// The writers' side: rows with the sequence number of their latest note.
#[derive(Debug, Default)]
pub(super) struct Fresh {
    pub(super) rows: HashMap<u32, u64>,
    pub(super) sequence: u64,
    /// Bumped whenever rows leave the tier (a rebuild took them into its graph): a reader that
    /// remembered the tier at an older generation can no longer tell from it what changed.
    pub(super) generation: u64,
}

impl Fresh {
    /// The view queries read: built by the writer after each change, so that a query neither
    /// locks the writers out nor hashes the tier.
    pub(super) fn view(&self) -> FreshView {
        // No sort: the bitset orders the rows. Each row's place is the number of fresh rows
        // below it (a prefix count of the words before its own plus a popcount inside it).
        let words = self.rows.keys().max().map_or(0, |last| *last as usize / 64 + 1);
        let mut bits = vec![0u64; words];
        for row in self.rows.keys() {
            bits[*row as usize / 64] |= 1 << (row % 64);
        }
        let mut below = Vec::with_capacity(words);
        let mut count = 0u32;
        for word in &bits {
            below.push(count);
            count += word.count_ones();
        }
        let mut rows = vec![0u32; self.rows.len()];
        let mut sequences = vec![0u64; self.rows.len()];
        for (row, sequence) in &self.rows {
            let (word, bit) = (*row as usize / 64, row % 64);
            let place = below[word] + (bits[word] & ((1u64 << bit) - 1)).count_ones();
            rows[place as usize] = *row;
            sequences[place as usize] = *sequence;
        }
        FreshView { rows, sequences, bits, sequence: self.sequence, generation: self.generation }
    }
}

/// An immutable copy of the fresh rows: ascending, with a bitset for membership and the
/// sequence number of each row's latest note.
#[derive(Debug, Default)]
pub(super) struct FreshView {
    rows: Vec<u32>,
    /// `sequences[i]`: the latest note of `rows[i]`.
    sequences: Vec<u64>,
    bits: Vec<u64>,
    /// The last note made before this view was published.
    pub(super) sequence: u64,
    /// [`Fresh::generation`] when this view was published.
    pub(super) generation: u64,
}

impl FreshView {
    /// Whether `row` is fresh.
    #[inline]
    pub(super) fn contains(&self, row: u32) -> bool {
        self.bits.get(row as usize / 64).is_some_and(|word| word & (1 << (row % 64)) != 0)
    }

    /// Fresh rows below `len` (the rows a snapshot of `len` items holds stale positions of).
    pub(super) fn below(&self, len: usize) -> &[u32] {
        let end = self.rows.partition_point(|row| (*row as usize) < len);
        &self.rows[..end]
    }

    /// Whether `row` was noted after note `sequence` (a view of the same generation tells;
    /// a row not in the tier was not).
    #[inline]
    pub(super) fn noted_after(&self, row: u32, sequence: u64) -> bool {
        self.contains(row)
            && self.rows.binary_search(&row).is_ok_and(|at| self.sequences[at] > sequence)
    }

    /// Rows noted after note `sequence`, ascending.
    pub(super) fn rows_noted_after(&self, sequence: u64) -> impl Iterator<Item = u32> + '_ {
        self.rows
            .iter()
            .zip(&self.sequences)
            .filter(move |(_, noted)| **noted > sequence)
            .map(|(row, _)| *row)
    }

    /// Fresh rows.
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Fresh;

    #[test]
    fn the_view_holds_exactly_the_fresh_rows() {
        let mut fresh = Fresh::default();
        for row in [5u32, 64, 0, 130, 63] {
            fresh.rows.insert(row, 1);
        }
        let view = fresh.view();
        assert_eq!(view.len(), 5);
        for row in 0..200 {
            assert_eq!(view.contains(row), [5, 64, 0, 130, 63].contains(&row), "row {row}");
        }
        assert_eq!(view.below(64), &[0, 5, 63]);
        assert_eq!(view.below(1_000).len(), 5);
        assert!(!Fresh::default().view().contains(0));
    }

    #[test]
    fn the_view_tells_which_rows_were_noted_after_a_sequence() {
        let mut fresh = Fresh::default();
        for (row, sequence) in [(7u32, 1u64), (3, 4), (200, 2), (64, 4)] {
            fresh.rows.insert(row, sequence);
        }
        fresh.sequence = 4;
        let view = fresh.view();
        assert_eq!(view.sequence, 4);
        assert_eq!(view.rows_noted_after(0).collect::<Vec<_>>(), [3, 7, 64, 200]);
        assert_eq!(view.rows_noted_after(1).collect::<Vec<_>>(), [3, 64, 200]);
        assert_eq!(view.rows_noted_after(3).collect::<Vec<_>>(), [3, 64]);
        assert_eq!(view.rows_noted_after(4).count(), 0);
        assert!(view.noted_after(200, 1) && !view.noted_after(200, 2));
        assert!(!view.noted_after(5, 0), "a row outside the tier was not noted");
    }
}
