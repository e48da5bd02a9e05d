//! Change tracking, export and restore of the model state: what the Redis sink writes after
//! each window and reads back on start.

use std::collections::VecDeque;

use super::{ItemRow, Model, ModelConfigError, UserRow};

/// Rows changed since the last [`Model::take_dirty`]: a flag per row plus the list, so marking
/// is O(1) on the fold's hot path.
#[derive(Debug, Clone, Default)]
pub(crate) struct DirtySet {
    flags: Vec<bool>,
    rows: Vec<u32>,
}

impl DirtySet {
    fn mark(&mut self, row: u32) {
        let index = row as usize;
        if index >= self.flags.len() {
            self.flags.resize(index + 1, false);
        }
        if !self.flags[index] {
            self.flags[index] = true;
            self.rows.push(row);
        }
    }

    fn take(&mut self) -> Vec<u32> {
        for row in &self.rows {
            self.flags[*row as usize] = false;
        }
        let mut rows = std::mem::take(&mut self.rows);
        rows.sort_unstable();
        rows
    }
}

/// What a flush writes of a user's seen list (`{ns}:seen:{user_id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeenWrite {
    /// The whole list (replacing what is stored).
    Whole,
    /// Only the newest `n` entries changed since the list was stored: each is removed from the
    /// stored list and appended at its end, then the list is trimmed to its bound. Applying it
    /// twice gives the same list.
    Newest(usize),
}

/// Everything stored about one user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserState {
    /// User id.
    pub id: String,
    /// p_u, length `dim`.
    pub vector: Vec<f32>,
    /// Events applied.
    pub events: u64,
    /// Latest event time applied, ms (`i64::MIN` before any).
    pub last_ts: i64,
    /// Items interacted with, oldest first, at most `seen_items_per_user`; the last
    /// `context_items` form the query's context.
    pub seen: Vec<String>,
    /// Row-wise AdaGrad accumulator of p_u (0 under SGD).
    pub adagrad: f32,
}

/// Everything stored about one item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemState {
    /// Item id.
    pub id: String,
    /// Order of first appearance (0-based): restoring items in this order reproduces the
    /// uniform negative sampling exactly.
    pub row: u32,
    /// q_i, length `dim`.
    pub vector: Vec<f32>,
    /// c_i, the context vector, length `dim`; see [`Model::context_vector`].
    pub context: Vec<f32>,
    /// Row-wise AdaGrad accumulator of q_i and b_i (0 under SGD).
    pub adagrad: f32,
    /// Row-wise AdaGrad accumulator of c_i (0 under SGD).
    pub context_adagrad: f32,
    /// b_i.
    pub bias: f32,
    /// Events applied.
    pub events: u64,
    /// Latest event time applied, ms.
    pub last_ts: i64,
    /// See [`Model::popularity_log`].
    pub popularity_log: f64,
    /// Writes of the item to Redis so far (0: never written), see [`Model::merge_item`].
    pub version: u64,
}

/// An item's change since this process last synced it with Redis (what a flush adds to the
/// stored item when another instance wrote it in between; see [`Model::item_delta`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemDelta {
    /// Change of q_i.
    pub vector: Vec<f32>,
    /// Change of c_i.
    pub context: Vec<f32>,
    /// Change of b_i.
    pub bias: f32,
    /// Change of the AdaGrad accumulator of q_i and b_i.
    pub adagrad: f32,
    /// Change of the AdaGrad accumulator of c_i.
    pub context_adagrad: f32,
    /// Events applied.
    pub events: u64,
    /// ln of the popularity mass added (`-inf` for none).
    pub popularity_log: f64,
}

impl ItemDelta {
    /// No change (of an item of dimension `dim`).
    pub fn none(dim: usize) -> Self {
        Self {
            vector: vec![0.0; dim],
            context: vec![0.0; dim],
            bias: 0.0,
            adagrad: 0.0,
            context_adagrad: 0.0,
            events: 0,
            popularity_log: f64::NEG_INFINITY,
        }
    }
}

/// A restore that does not fit the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestoreError {
    /// Stored vector of another dimension.
    #[error("{kind} {id:?} has a vector of dimension {actual}, the model has {expected}")]
    DimensionMismatch { kind: &'static str, id: String, expected: usize, actual: usize },
    /// Items must be restored in row order without gaps.
    #[error("item {id:?} has row {row}, expected {expected}")]
    RowOutOfOrder { id: String, row: u32, expected: u32 },
    /// The stored model had another configuration.
    #[error(transparent)]
    Config(#[from] ModelConfigError),
}

impl Model {
    pub(crate) fn record_changes(&mut self, user: u32, item: u32) {
        let limit = self.config.seen_items_per_user;
        let seen = &mut self.user_seen[user as usize];
        let unstored = &mut self.seen_unstored[user as usize];
        if limit > 0 {
            // Most recent last: an item seen again moves to the back (the query's recency).
            // The entries changed since the last store are always the newest ones, so a flush
            // writes that tail only (see `SeenWrite`).
            let already_in_tail = match seen.iter().position(|row| *row == item) {
                Some(position) => {
                    let in_tail = seen.len() - position <= *unstored as usize;
                    seen.remove(position);
                    in_tail
                }
                None => {
                    if seen.len() >= limit {
                        seen.pop_front();
                    }
                    false
                }
            };
            if !already_in_tail {
                *unstored = unstored.saturating_add(1);
            }
            seen.push_back(item);
        }
        self.dirty_users.mark(user);
        let touched = self.negatives.iter().chain(&self.context_rows).copied();
        for row in std::iter::once(item).chain(touched) {
            self.dirty_items.mark(row);
        }
    }

    /// Rows of users and items changed since the previous call, ascending.
    pub fn take_dirty(&mut self) -> (Vec<UserRow>, Vec<ItemRow>) {
        let users = self.dirty_users.take().into_iter().map(UserRow).collect();
        let items = self.dirty_items.take().into_iter().map(ItemRow).collect();
        (users, items)
    }

    /// What a flush must write of the user's seen list: the newest entries changed since
    /// [`Model::mark_seen_stored`], or all of it.
    pub fn seen_write(&self, row: UserRow) -> SeenWrite {
        let index = row.0 as usize;
        let changed = self.seen_unstored[index] as usize;
        if changed >= self.user_seen[index].len() {
            SeenWrite::Whole
        } else {
            SeenWrite::Newest(changed)
        }
    }

    /// Records that the user's seen list as it is now is stored (after a committed flush).
    pub fn mark_seen_stored(&mut self, row: UserRow) {
        self.seen_unstored[row.0 as usize] = 0;
    }

    /// Item rows the user interacted with, oldest first (bounded by `seen_items_per_user`).
    pub fn user_seen(&self, row: UserRow) -> impl Iterator<Item = ItemRow> + '_ {
        self.user_seen[row.0 as usize].iter().map(|item| ItemRow(*item))
    }

    /// Exports one user.
    pub fn user_state(&self, row: UserRow) -> UserState {
        let index = row.0 as usize;
        UserState {
            id: self.users.ids[index].to_string(),
            vector: self.users.vector(row.0).to_vec(),
            events: self.users.events[index],
            last_ts: self.users.last_ts[index],
            seen: self.user_seen[index]
                .iter()
                .map(|item| self.items.ids[*item as usize].to_string())
                .collect(),
            adagrad: self.users.adagrad[index],
        }
    }

    /// Exports one item.
    pub fn item_state(&self, row: ItemRow) -> ItemState {
        let index = row.0 as usize;
        ItemState {
            id: self.items.ids[index].to_string(),
            row: row.0,
            vector: self.items.vector(row.0).to_vec(),
            context: self.context_vector(row).to_vec(),
            adagrad: self.items.adagrad[index],
            context_adagrad: self.context_adagrad[index],
            bias: self.item_bias[index],
            events: self.items.events[index],
            last_ts: self.items.last_ts[index],
            popularity_log: self.item_popularity_log[index],
            version: self.synced_version(index),
        }
    }

    /// The negative-sampling pool (item rows) and its next write position.
    pub fn negative_pool(&self) -> (&[u32], usize) {
        (&self.negative_pool, self.negative_pool_next)
    }

    /// Restores the pool written by [`Model::negative_pool`]; rows beyond the known items are
    /// dropped.
    pub fn restore_negative_pool(&mut self, pool: Vec<u32>, next: usize) {
        let items = self.items.len() as u32;
        self.negative_pool = pool.into_iter().filter(|row| *row < items).collect();
        self.negative_pool.truncate(self.config.negative_pool_size);
        self.negative_pool_next = next % self.config.negative_pool_size;
        self.pool_counts = vec![0; self.items.len()];
        for row in &self.negative_pool {
            self.pool_counts[*row as usize] += 1;
        }
    }

    /// Sets the applied-event counter (restore).
    pub fn restore_events_applied(&mut self, events_applied: u64) {
        self.events_applied = events_applied;
    }

    /// Restores one item; items must come in row order 0, 1, 2, ...
    ///
    /// # Errors
    /// [`RestoreError`] for a wrong dimension or a row out of order.
    pub fn restore_item(&mut self, item: ItemState) -> Result<ItemRow, RestoreError> {
        let expected = self.items.len() as u32;
        if item.row != expected {
            return Err(RestoreError::RowOutOfOrder { id: item.id, row: item.row, expected });
        }
        self.check_dim("item", &item.id, &item.vector)?;
        self.check_dim("item context", &item.id, &item.context)?;
        let row =
            self.items.insert(&item.id, &item.vector, item.events, item.last_ts, item.adagrad);
        self.context_adagrad.push(item.context_adagrad);
        self.item_bias.push(item.bias);
        self.contexts.extend_from_slice(&item.context);
        self.item_popularity_log.push(item.popularity_log);
        self.sync_restored_item(&item);
        Ok(ItemRow(row))
    }

    /// Restores one user (items must be restored first, so that `seen` resolves; unknown seen
    /// items are skipped). Replaces the user when already present. `seen` says whether the
    /// stored seen list is in the current layout (later flushes append to it) or must be
    /// written whole by the next flush.
    ///
    /// # Errors
    /// [`RestoreError::DimensionMismatch`] for a wrong dimension.
    pub fn restore_user(&mut self, user: UserState) -> Result<UserRow, RestoreError> {
        self.restore_user_with(user, SeenWrite::Newest(0))
    }

    /// [`Model::restore_user`], saying what the next flush must write of the seen list.
    ///
    /// # Errors
    /// [`RestoreError::DimensionMismatch`] for a wrong dimension.
    pub fn restore_user_with(
        &mut self,
        user: UserState,
        seen_write: SeenWrite,
    ) -> Result<UserRow, RestoreError> {
        self.check_dim("user", &user.id, &user.vector)?;
        let seen: VecDeque<u32> =
            user.seen.iter().filter_map(|item| self.items.row(item)).collect();
        let unstored = match seen_write {
            SeenWrite::Whole => u32::MAX,
            // Ids that no longer resolve were dropped: the stored list differs, write it whole.
            SeenWrite::Newest(_) if seen.len() != user.seen.len() => u32::MAX,
            SeenWrite::Newest(changed) => changed as u32,
        };
        if let Some(row) = self.users.row(&user.id) {
            self.users.vector_mut(row).copy_from_slice(&user.vector);
            self.users.events[row as usize] = user.events;
            self.users.last_ts[row as usize] = user.last_ts;
            self.users.adagrad[row as usize] = user.adagrad;
            self.user_seen[row as usize] = seen;
            self.seen_unstored[row as usize] = unstored;
            return Ok(UserRow(row));
        }
        let row =
            self.users.insert(&user.id, &user.vector, user.events, user.last_ts, user.adagrad);
        self.user_seen.push(seen);
        self.seen_unstored.push(unstored);
        Ok(UserRow(row))
    }

    /// Drops a user from memory (a bounded user cache). Only call for users whose state is
    /// durable; returns false when the user is unknown or has unsaved changes.
    pub fn evict_user(&mut self, user_id: &str) -> bool {
        let Some(row) = self.users.row(user_id) else { return false };
        if self.dirty_users.flags.get(row as usize).copied().unwrap_or(false) {
            return false;
        }
        let moved = self.users.swap_remove(row);
        self.user_recency.swap_remove(row, moved, self.users.len());
        self.user_seen.swap_remove(row as usize);
        self.seen_unstored.swap_remove(row as usize);
        if let Some(moved_from) = moved {
            // The row that moved into `row` keeps its dirty flag.
            let was_dirty =
                self.dirty_users.flags.get(moved_from as usize).copied().unwrap_or(false);
            if was_dirty {
                self.dirty_users.flags[moved_from as usize] = false;
                self.dirty_users.rows.retain(|dirty| *dirty != moved_from);
                self.dirty_users.mark(row);
            }
        }
        true
    }

    /// Marks the user as the most recently applied (O(1)); [`Model::least_recent_user`] then
    /// finds it last.
    pub fn touch_user(&mut self, row: UserRow) {
        self.user_recency.touch(row.0);
    }

    /// The user touched least recently ([`Model::touch_user`]) and still in memory.
    pub fn least_recent_user(&self) -> Option<UserRow> {
        self.user_recency.least_recent().map(UserRow)
    }

    /// Takes the user out of the recency order: [`Model::least_recent_user`] skips it until it
    /// is touched again.
    pub fn forget_user_recency(&mut self, row: UserRow) {
        self.user_recency.remove(row.0);
    }

    /// Drops every user without unsaved changes from memory, except those `keep` names (users
    /// whose changes were collected but not yet persisted). Returns the ids dropped.
    pub fn evict_clean_users(&mut self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let clean: Vec<String> = (0..self.users.len())
            .filter(|row| !self.dirty_users.flags.get(*row).copied().unwrap_or(false))
            .map(|row| &*self.users.ids[row])
            .filter(|id| !keep(id))
            .map(str::to_owned)
            .collect();
        clean.into_iter().filter(|id| self.evict_user(id)).collect()
    }

    fn check_dim(&self, kind: &'static str, id: &str, vector: &[f32]) -> Result<(), RestoreError> {
        if vector.len() != self.config.dim {
            return Err(RestoreError::DimensionMismatch {
                kind,
                id: id.to_owned(),
                expected: self.config.dim,
                actual: vector.len(),
            });
        }
        Ok(())
    }
}
