use sha2::{Digest, Sha256};

use super::Model;

impl Model {
    /// SHA-256 (lower-case hex) over the whole learned state in a canonical order: dim, events
    /// applied, then users by ascending id (id, events, last event time, AdaGrad accumulator,
    /// vector), then items by
    /// ascending id (id, events, last event time, AdaGrad accumulator, bias, decayed
    /// popularity, vector, context accumulator, context vector). Numbers are
    /// little-endian, floats by their bit patterns, strings length-prefixed. Two models have the
    /// same digest exactly when their states are bit-identical. The negative-sampling pool is
    /// not included: it is derived from the applied events.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update((self.config.dim as u64).to_le_bytes());
        hasher.update(self.events_applied.to_le_bytes());
        for (table, is_items) in [(&self.users, false), (&self.items, true)] {
            hasher.update((table.len() as u64).to_le_bytes());
            for row in table.rows_by_id() {
                let index = row as usize;
                let id = table.ids[index].as_bytes();
                hasher.update((id.len() as u64).to_le_bytes());
                hasher.update(id);
                hasher.update(table.events[index].to_le_bytes());
                hasher.update(table.last_ts[index].to_le_bytes());
                hasher.update(table.adagrad[index].to_bits().to_le_bytes());
                if is_items {
                    hasher.update(self.item_bias[index].to_bits().to_le_bytes());
                    hasher.update(self.item_popularity_log[index].to_bits().to_le_bytes());
                }
                for value in table.vector(row) {
                    hasher.update(value.to_bits().to_le_bytes());
                }
                if is_items {
                    hasher.update(self.context_adagrad[index].to_bits().to_le_bytes());
                    for value in self.context_vector(super::ItemRow(row)) {
                        hasher.update(value.to_bits().to_le_bytes());
                    }
                }
            }
        }
        hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
    }
}
