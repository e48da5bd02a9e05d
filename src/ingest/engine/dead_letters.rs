//! The dead-letter policy of the engine: a rejected record's dead letter is handed to the
//! producer at once and the record finishes when the broker acknowledges it; at most
//! `ingest.max_dead_letters_in_flight` wait, beyond that the oldest is waited for.

use super::Engine;
use crate::fold::Rejection;
use crate::ingest::dlq::SourceRecord;

impl Engine {
    /// Sends the dead letter of a rejected record (already marked pending in its progress).
    pub(super) fn dead_letter(&mut self, record: SourceRecord<'_>, rejection: &Rejection) {
        match self.dead_letters.enqueue(record, rejection) {
            Ok(in_flight) => {
                self.dead_letters_in_flight.push_back(in_flight);
                let excess = self
                    .dead_letters_in_flight
                    .len()
                    .saturating_sub(self.config.max_dead_letters_in_flight);
                self.settle_dead_letters(excess);
            }
            Err(error) => {
                // The breaker is open or the producer's queue is full: the blocking way, which
                // retries transient failures until the broker has it.
                tracing::debug!(%error, "dead letter not queued: sending it and waiting");
                let delivered = self.dead_letters.send_until_delivered(record, rejection);
                self.dead_letter_finished(record.partition, record.offset, delivered);
            }
        }
        self.metrics.dead_letters_in_flight.set(self.dead_letters_in_flight.len() as i64);
    }

    /// Finishes the dead letters the broker has acknowledged, oldest first, waiting for the
    /// oldest `wait_for` of them.
    pub(super) fn settle_dead_letters(&mut self, mut wait_for: usize) {
        while let Some(oldest) = self.dead_letters_in_flight.front_mut() {
            let Some(delivered) = self.dead_letters.settle(oldest, wait_for > 0) else {
                break;
            };
            wait_for = wait_for.saturating_sub(1);
            if let Some(done) = self.dead_letters_in_flight.pop_front() {
                self.dead_letter_finished(done.source.partition(), done.source.offset(), delivered);
            }
        }
        self.metrics.dead_letters_in_flight.set(self.dead_letters_in_flight.len() as i64);
    }

    /// Waits until every dead letter in flight is acknowledged (before a revoke's flush and
    /// the final flush).
    pub fn drain_dead_letters(&mut self) {
        self.settle_dead_letters(usize::MAX);
    }

    /// A rejected record is done: its dead letter `delivered`, or refused by the broker even
    /// stripped (counted apart, logged at error level by the sender): the stream goes on.
    fn dead_letter_finished(&mut self, partition: i32, offset: i64, delivered: bool) {
        if let Some(progress) = self.progress.get_mut(&partition) {
            progress.finished(offset);
        }
        if delivered {
            self.metrics.dead_lettered.inc();
        } else {
            self.metrics.dead_letters_skipped.inc();
        }
        self.progress_dirty = true;
    }
}
