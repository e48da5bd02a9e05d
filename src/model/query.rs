//! The user's query vector: p_u plus a recency-weighted sum of the context vectors of the
//! user's most recent items (FISM, Kabbur, Ning and Karypis, KDD 2013, "FISM: Factored Item
//! Similarity Models for Top-N Recommender Systems", with recency weights instead of FISM's
//! uniform ones). The same function serves training and ranking, so the index and the HTTP
//! routes score exactly what the model learned.

use super::{vector, ItemRow, Model, ModelConfig, RowKind, UserRow, UserState};

/// `weights[n]` holds the weights of a context of n items, newest first:
/// w_k = decay^k / (sum_m decay^m)^alpha.
pub(super) fn weight_table(config: &ModelConfig) -> Vec<Vec<f32>> {
    (0..=config.context_items)
        .map(|len| {
            let raw: Vec<f32> = (0..len).map(|k| config.context_decay.powi(k as i32)).collect();
            let total: f32 = raw.iter().sum();
            let scale = if total > 0.0 { total.powf(-config.context_exponent) } else { 0.0 };
            raw.iter().map(|weight| weight * scale).collect()
        })
        .collect()
}

impl Model {
    /// The ranking query of a known user from the model's current state; see
    /// [`Model::query_from_parts`].
    pub fn query_vector(&self, user: UserRow) -> Vec<f32> {
        let seen: Vec<ItemRow> = self.user_seen(user).collect();
        self.query_from_parts(self.user_vector(user), &seen)
    }

    /// The ranking query of a user given its stored state (from memory or Redis): `seen` ids
    /// unknown to the model are skipped.
    pub fn query_from_state(&self, user: &UserState) -> Vec<f32> {
        let seen: Vec<ItemRow> = user.seen.iter().filter_map(|id| self.item_row(id)).collect();
        self.query_from_parts(&user.vector, &seen)
    }

    /// query = p_u + sum_k w_k c_(l_k) over the last `context_items` rows of `seen` (oldest
    /// first, as [`Model::user_seen`] returns them; l_0 is the newest), with
    /// w_k = `context_decay`^k / (sum_m `context_decay`^m)^`context_exponent`. Length `dim`;
    /// its L2 norm is at most `max_norm` x (1 + sum_k w_k). Score(u, i) = query . q_i + b_i.
    pub fn query_from_parts(&self, user_vector: &[f32], seen: &[ItemRow]) -> Vec<f32> {
        let mut query = user_vector.to_vec();
        let items = self.items.len() as u32;
        let rows: Vec<u32> = seen
            .iter()
            .rev()
            .map(|row| row.0)
            .filter(|row| *row < items)
            .take(self.config.context_items)
            .collect();
        self.add_context(&mut query, &rows);
        query
    }

    /// Context vector c_i of an item (length `dim`, L2 norm at most `max_norm`): what the item
    /// says about the users who interacted with it recently; zero until it first sits in a
    /// user's recent items while that user has another event.
    pub fn context_vector(&self, row: ItemRow) -> &[f32] {
        let start = row.0 as usize * self.config.dim;
        &self.contexts[start..start + self.config.dim]
    }

    fn add_context(&self, query: &mut [f32], rows_newest_first: &[u32]) {
        let weights = &self.context_weights[rows_newest_first.len()];
        for (row, weight) in rows_newest_first.iter().zip(weights) {
            let context = self.context_vector(ItemRow(*row));
            vector::axpy(query, *weight, context);
        }
    }

    /// Sets `scratch_user` to the query of `user` for a training step and `context_rows` to the
    /// context items it used, newest first.
    pub(super) fn load_query(&mut self, user: u32) {
        let limit = self.config.context_items;
        self.context_rows.clear();
        self.context_rows.extend(self.user_seen[user as usize].iter().rev().take(limit));
        let mut query = std::mem::take(&mut self.scratch_user);
        query.copy_from_slice(self.users.vector(user));
        let rows = std::mem::take(&mut self.context_rows);
        self.add_context(&mut query, &rows);
        self.context_rows = rows;
        self.scratch_user = query;
    }

    /// c_l += lr (w_l G - reg c_l) for each context item of the step, with G the gradient of
    /// the step's objective with respect to the query; then the norm bound.
    pub(super) fn step_context(&mut self, gradient: &[f32]) {
        let (reg, dim) = (self.config.regularization, self.config.dim);
        let max_norm = self.config.max_norm;
        let gradient_squared = vector::norm_squared(gradient);
        let rows = std::mem::take(&mut self.context_rows);
        for (slot, row) in rows.iter().enumerate() {
            let weight = self.context_weights[rows.len()][slot];
            let base = self.adapt(RowKind::Context, *row, weight * weight * gradient_squared);
            let lr = base * self.config.context_learning_rate_scale;
            let start = *row as usize * dim;
            let context = &mut self.contexts[start..start + dim];
            vector::regularized_step(context, lr, weight, gradient, reg);
            vector::clip_norm(context, max_norm);
        }
        self.context_rows = rows;
    }
}
