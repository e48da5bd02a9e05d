//! Users in the order they were last applied, for eviction of the least recent (the ingest's
//! user cache, `ingest.user_cache_capacity`).
//!
//! A doubly linked list threaded through user rows: two `u32` per user (8 bytes), O(1) to move a
//! user to the most recent end, to find the least recent and to follow a row that
//! `Table::swap_remove` moves. It replaced the `lru` crate's `LruCache<Box<str>, ()>`, which held
//! a second copy of every id, a node and a hash-map entry per user: about 70 bytes a user, 70 MB
//! at a million users (BENCHMARKS.md, "Memory per entity").

const NONE: u32 = u32::MAX;

/// The recency list; a row is in it once [`Recency::touch`]ed, until removed.
#[derive(Debug, Clone)]
pub(crate) struct Recency {
    prev: Vec<u32>,
    next: Vec<u32>,
    /// Least recently touched row.
    head: u32,
    /// Most recently touched row.
    tail: u32,
}

impl Default for Recency {
    fn default() -> Self {
        Self { prev: Vec::new(), next: Vec::new(), head: NONE, tail: NONE }
    }
}

impl Recency {
    fn linked(&self, row: u32) -> bool {
        self.prev.get(row as usize).is_some_and(|prev| *prev != NONE) || self.head == row
    }

    fn unlink(&mut self, row: u32) {
        if !self.linked(row) {
            return;
        }
        let (prev, next) = (self.prev[row as usize], self.next[row as usize]);
        match prev {
            NONE => self.head = next,
            prev => self.next[prev as usize] = next,
        }
        match next {
            NONE => self.tail = prev,
            next => self.prev[next as usize] = prev,
        }
        self.prev[row as usize] = NONE;
        self.next[row as usize] = NONE;
    }

    /// Puts `row` between `prev` and `next` (`NONE` for an end of the list).
    fn link(&mut self, row: u32, prev: u32, next: u32) {
        if self.prev.len() <= row as usize {
            self.prev.resize(row as usize + 1, NONE);
            self.next.resize(row as usize + 1, NONE);
        }
        self.prev[row as usize] = prev;
        self.next[row as usize] = next;
        match prev {
            NONE => self.head = row,
            prev => self.next[prev as usize] = row,
        }
        match next {
            NONE => self.tail = row,
            next => self.prev[next as usize] = row,
        }
    }

    /// Makes `row` the most recent.
    pub(crate) fn touch(&mut self, row: u32) {
        if self.tail == row {
            return;
        }
        self.unlink(row);
        self.link(row, self.tail, NONE);
    }

    /// The least recently touched row, if any row is in the list.
    pub(crate) fn least_recent(&self) -> Option<u32> {
        (self.head != NONE).then_some(self.head)
    }

    /// Takes `row` out of the list (it stays in the table).
    pub(crate) fn remove(&mut self, row: u32) {
        self.unlink(row);
    }

    /// Follows `Table::swap_remove(row)`: `row` leaves the list, and `moved_from` (the table's
    /// last row, moved into `row`) keeps its place in the list under its new row number.
    /// `len` is the table's length after the removal.
    pub(crate) fn swap_remove(&mut self, row: u32, moved_from: Option<u32>, len: usize) {
        self.unlink(row);
        if let Some(last) = moved_from.filter(|last| self.linked(*last)) {
            let (prev, next) = (self.prev[last as usize], self.next[last as usize]);
            self.prev[last as usize] = NONE;
            self.next[last as usize] = NONE;
            self.link(row, prev, next);
        }
        self.prev.truncate(len);
        self.next.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::Recency;

    /// The rows from least to most recent, walking the links both ways.
    fn order(recency: &Recency) -> Vec<u32> {
        let mut forward = Vec::new();
        let mut row = recency.head;
        while row != super::NONE {
            forward.push(row);
            row = recency.next[row as usize];
        }
        let mut backward = Vec::new();
        let mut row = recency.tail;
        while row != super::NONE {
            backward.push(row);
            row = recency.prev[row as usize];
        }
        backward.reverse();
        assert_eq!(forward, backward, "links disagree");
        forward
    }

    #[test]
    fn touch_moves_a_row_to_the_most_recent_end() {
        let mut recency = Recency::default();
        assert_eq!(recency.least_recent(), None);
        for row in [3, 0, 5, 1] {
            recency.touch(row);
        }
        assert_eq!(order(&recency), [3, 0, 5, 1]);
        recency.touch(0);
        recency.touch(1);
        recency.touch(3);
        assert_eq!(order(&recency), [5, 0, 1, 3]);
        assert_eq!(recency.least_recent(), Some(5));
        recency.remove(5);
        recency.remove(2); // never touched: nothing happens
        assert_eq!(order(&recency), [0, 1, 3]);
    }

    /// Mirrors `Table::swap_remove` on a table of `len` rows against a reference list of ids.
    #[test]
    fn swap_remove_follows_the_moved_row_like_a_reference_lru() {
        let mut recency = Recency::default();
        // ids[row] = the user on that row; reference = ids least to most recent.
        let mut ids: Vec<u32> = (0..40).collect();
        let mut reference: Vec<u32> = Vec::new();
        let mut state = 7u64;
        let mut random = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for step in 0..2_000 {
            if step % 3 == 2 && ids.len() > 1 {
                let row = random(ids.len());
                let last = ids.len() - 1;
                let removed = ids.swap_remove(row);
                reference.retain(|id| *id != removed);
                let moved = (row != last).then_some(last as u32);
                recency.swap_remove(row as u32, moved, ids.len());
            } else if step % 7 == 6 {
                ids.push(1_000 + step as u32);
            } else {
                let row = random(ids.len());
                reference.retain(|id| *id != ids[row]);
                reference.push(ids[row]);
                recency.touch(row as u32);
            }
            let by_id: Vec<u32> = order(&recency).iter().map(|row| ids[*row as usize]).collect();
            assert_eq!(by_id, reference, "step {step}");
        }
    }
}
