//! Which offsets of a partition are done, in a form that survives a crash exactly.
//!
//! A window can close while events of a later window with *lower* offsets are still buffered,
//! so "next offset" alone cannot describe what was applied. Per partition we keep:
//!
//! - `resume`: the lowest offset not yet done (the smallest buffered offset, or the next offset
//!   to read when nothing is buffered). Everything below it is done. This is where a restart
//!   seeks, and what the Kafka group commit reports for lag tools.
//! - `done_ahead`: offsets at or above `resume` that are already done (applied, dead-lettered or
//!   dropped as duplicates). A restart re-reads them and skips them.
//!
//! Both are written in the same Redis transaction as the state they describe, so after a crash
//! at any instant every offset is either in the durable state and skipped, or not and re-read:
//! never skipped, never applied twice. `done_ahead` is bounded by the events in flight across
//! open windows and is stored as inclusive ranges.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The durable form of a partition's progress (JSON in the Redis progress hash).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredProgress {
    /// Lowest offset not yet done; a restart seeks here.
    pub resume: i64,
    /// Inclusive ranges `[first, last]` of done offsets at or above `resume`, ascending.
    #[serde(default)]
    pub done: Vec<[i64; 2]>,
}

/// Progress of one partition in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    next_offset: i64,
    pending: BTreeSet<i64>,
    done_ahead: BTreeSet<i64>,
    /// Lowest offset given up unapplied (revoke): resume can never pass it.
    lowest_abandoned: Option<i64>,
}

impl PartitionProgress {
    /// Progress starting at `offset` with nothing done beyond it.
    pub fn starting_at(offset: i64) -> Self {
        Self { next_offset: offset, ..Self::default() }
    }

    /// Progress restored from its durable form.
    pub fn from_stored(stored: &StoredProgress) -> Self {
        let done_ahead = stored
            .done
            .iter()
            .flat_map(|[first, last]| *first..=*last)
            .filter(|offset| *offset >= stored.resume)
            .collect();
        Self {
            next_offset: stored.resume,
            pending: BTreeSet::new(),
            done_ahead,
            lowest_abandoned: None,
        }
    }

    /// True when `offset` is below the lowest offset not yet done: a consumer positioned at
    /// the stored progress never delivers such a record (offsets only grow within a session).
    pub fn before_resume(&self, offset: i64) -> bool {
        offset < self.resume_floor()
    }

    /// True when a record at `offset` was already handled (before `resume`, or done ahead): a
    /// re-read after restart skips it. Also advances the read position past it.
    pub fn already_done(&mut self, offset: i64) -> bool {
        let done = offset < self.resume_floor() || self.done_ahead.contains(&offset);
        if done {
            self.next_offset = self.next_offset.max(offset + 1);
        }
        done
    }

    /// A record at `offset` entered the fold's buffer.
    pub fn admitted(&mut self, offset: i64) {
        self.pending.insert(offset);
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// A record at `offset` is done (applied, dead-lettered, or dropped as a duplicate).
    pub fn finished(&mut self, offset: i64) {
        self.pending.remove(&offset);
        self.next_offset = self.next_offset.max(offset + 1);
        self.done_ahead.insert(offset);
        let resume = self.resume();
        // Everything below `resume` is implied; keep the set small.
        while let Some(first) = self.done_ahead.first().copied() {
            if first >= resume {
                break;
            }
            self.done_ahead.pop_first();
        }
    }

    /// A buffered record at `offset` is given up without being done (partition revoked): it
    /// must be re-read by whoever owns the partition next.
    pub fn abandoned(&mut self, offset: i64) {
        self.pending.remove(&offset);
        self.lowest_abandoned = Some(self.lowest_abandoned.map_or(offset, |low| low.min(offset)));
    }

    fn resume_floor(&self) -> i64 {
        let pending = self.pending.first().copied().unwrap_or(self.next_offset);
        let abandoned = self.lowest_abandoned.unwrap_or(self.next_offset);
        pending.min(abandoned).min(self.next_offset)
    }

    /// Lowest offset not yet done (Kafka's "next offset to read" convention).
    pub fn resume(&self) -> i64 {
        let mut resume = self.resume_floor();
        // Done offsets directly at the floor extend it (nothing pending or abandoned there).
        while self.done_ahead.contains(&resume) && !self.pending.contains(&resume) {
            resume += 1;
        }
        let ceiling = self.pending.first().copied().unwrap_or(i64::MAX);
        resume.min(ceiling).min(self.lowest_abandoned.unwrap_or(i64::MAX))
    }

    /// Offsets admitted and not yet done.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The durable form.
    pub fn stored(&self) -> StoredProgress {
        let resume = self.resume();
        let mut done: Vec<[i64; 2]> = Vec::new();
        for offset in self.done_ahead.iter().copied().filter(|offset| *offset >= resume) {
            match done.last_mut() {
                Some(range) if range[1] + 1 == offset => range[1] = offset,
                _ => done.push([offset, offset]),
            }
        }
        StoredProgress { resume, done }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_application_moves_resume_past_everything() {
        let mut progress = PartitionProgress::starting_at(0);
        for offset in 0..5 {
            progress.admitted(offset);
        }
        for offset in 0..5 {
            progress.finished(offset);
        }
        assert_eq!(progress.stored(), StoredProgress { resume: 5, done: vec![] });
    }

    #[test]
    fn a_later_window_applied_first_leaves_resume_at_the_buffered_offset() {
        // offsets 10 (window B), 11 (window A), 12 (window A): A closes first.
        let mut progress = PartitionProgress::starting_at(10);
        progress.admitted(10);
        progress.admitted(11);
        progress.admitted(12);
        progress.finished(11);
        progress.finished(12);
        let stored = progress.stored();
        assert_eq!(stored, StoredProgress { resume: 10, done: vec![[11, 12]] });

        // After a crash: seek to 10, re-read 10 (apply), skip 11 and 12, continue at 13.
        let mut restored = PartitionProgress::from_stored(&stored);
        assert!(!restored.already_done(10));
        restored.admitted(10);
        assert!(restored.already_done(11));
        assert!(restored.already_done(12));
        assert!(!restored.already_done(13));
        restored.admitted(13);
        restored.finished(10);
        assert_eq!(restored.stored(), StoredProgress { resume: 13, done: vec![] });
    }

    #[test]
    fn nothing_pending_means_resume_is_the_next_offset() {
        let mut progress = PartitionProgress::starting_at(100);
        assert_eq!(progress.resume(), 100);
        assert!(!progress.already_done(100));
        progress.admitted(100);
        assert_eq!(progress.resume(), 100);
        progress.finished(100);
        assert_eq!(progress.resume(), 101);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        // Compacted topics and transaction markers leave holes.
        let mut progress = PartitionProgress::starting_at(0);
        progress.admitted(0);
        progress.admitted(5);
        progress.finished(5);
        assert_eq!(progress.stored(), StoredProgress { resume: 0, done: vec![[5, 5]] });
        progress.finished(0);
        assert_eq!(progress.stored(), StoredProgress { resume: 6, done: vec![] });
    }

    #[test]
    fn abandoned_records_are_re_read_next_time() {
        let mut progress = PartitionProgress::starting_at(0);
        progress.admitted(0);
        progress.admitted(1);
        progress.finished(1);
        progress.abandoned(0);
        let stored = progress.stored();
        assert_eq!(stored.resume, 0, "offset 0 was never applied");
        let mut restored = PartitionProgress::from_stored(&stored);
        assert!(!restored.already_done(0));
        assert!(restored.already_done(1));
    }

    #[test]
    fn only_offsets_below_the_lowest_not_done_one_come_before_resume() {
        let stored = StoredProgress { resume: 10, done: vec![[12, 13]] };
        let mut progress = PartitionProgress::from_stored(&stored);
        assert!(progress.before_resume(0) && progress.before_resume(9));
        // Re-read in order after a restart: the resume offset, then one done ahead of it.
        assert!(!progress.before_resume(10) && !progress.already_done(10));
        // A buffered record holds the floor: the offsets after it are still to come.
        progress.admitted(10);
        assert!(!progress.before_resume(11) && !progress.already_done(11));
        progress.admitted(11);
        assert!(!progress.before_resume(12) && progress.already_done(12));
        assert!(progress.before_resume(9));
    }

    #[test]
    fn stored_form_is_stable_json() {
        let stored = StoredProgress { resume: 7, done: vec![[9, 11]] };
        let json = serde_json::to_string(&stored).unwrap();
        assert_eq!(json, r#"{"resume":7,"done":[[9,11]]}"#);
        assert_eq!(serde_json::from_str::<StoredProgress>(&json).unwrap(), stored);
    }
}
