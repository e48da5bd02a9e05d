//! The fresh tier: item rows changed since the snapshot's copy, each with the note sequence
//! number of its latest change, and a read-only view of it that queries share.

use std::collections::HashMap;

/// The writers' side: rows with the sequence number of their latest note.
#[derive(Debug, Default)]
pub(super) struct Fresh {
    pub(super) rows: HashMap<u32, u64>,
    pub(super) sequence: u64,
}

impl Fresh {
    /// The view queries read: built by the writer after each change, so that a query neither
    /// locks the writers out nor hashes the tier.
    pub(super) fn view(&self) -> FreshView {
        let mut rows: Vec<u32> = self.rows.keys().copied().collect();
        rows.sort_unstable();
        let words = rows.last().map_or(0, |last| *last as usize / 64 + 1);
        let mut bits = vec![0u64; words];
        for row in &rows {
            bits[*row as usize / 64] |= 1 << (row % 64);
        }
        FreshView { rows, bits }
    }
}

/// An immutable copy of the fresh rows: ascending, with a bitset for membership.
#[derive(Debug, Default)]
pub(super) struct FreshView {
    rows: Vec<u32>,
    bits: Vec<u64>,
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
}
