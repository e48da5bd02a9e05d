//! The user cache: users load from Redis on demand (a miss is a new user, a corrupt record is
//! quarantined), changes wait by id for the flush, and the least recently applied users are
//! evicted in O(1).

use super::Engine;
use crate::fold::UserSource;
use crate::metrics::Metrics;
use crate::model::{ItemRow, SeenWrite, UserRow, UserState};
use crate::store::{StoreError, SyncStore};

pub(super) struct StoredUsers<'a> {
    pub(super) store: &'a mut SyncStore,
    pub(super) metrics: &'a Metrics,
    pub(super) dim: usize,
    /// Every user of the namespace is in memory: a user not in memory is new, no lookup.
    pub(super) all_in_memory: bool,
}

impl UserSource for StoredUsers<'_> {
    /// A miss on the user's hash is a new user. A stored record that cannot be decoded is
    /// quarantined (moved aside, counted, logged with its key) and the user starts over, so one
    /// corrupt record never blocks the windows behind it.
    fn load(&mut self, user_ids: &[&str]) -> Result<Vec<Option<(UserState, SeenWrite)>>, String> {
        if self.all_in_memory {
            return Ok(vec![None; user_ids.len()]);
        }
        let loaded =
            self.store.load_users(user_ids, self.dim).map_err(|error| error.to_string())?;
        let mut users = Vec::with_capacity(loaded.len());
        for (id, result) in user_ids.iter().zip(loaded) {
            users.push(match result {
                Ok(state) => state,
                Err(error @ StoreError::Corrupt { .. }) => {
                    self.store.quarantine_user(id).map_err(|error| error.to_string())?;
                    self.metrics.users_quarantined.inc();
                    tracing::error!(
                        %error,
                        quarantined_to = %self.store.keys().quarantined_user(id),
                        "stored user record cannot be decoded: quarantined, the user starts over"
                    );
                    None
                }
                Err(error) => return Err(error.to_string()),
            });
        }
        Ok(users)
    }
}

impl Engine {
    pub(super) fn collect_dirty(&mut self) {
        let items = {
            let mut model = self.fold.model_mut();
            let (users, items): (Vec<UserRow>, Vec<ItemRow>) = model.take_dirty();
            for row in users {
                model.touch_user(row);
                let id = model.user_id(row);
                if !self.pending_users.contains(id) {
                    self.pending_users.insert(id.to_owned());
                }
            }
            items
        };
        // Outside the model's write lock: the index's fresh tier has a lock of its own, and
        // republishing its view takes time in proportion to the tier (the whole catalogue under
        // ingest: 9 to 28 ms at 100,000 items), which every ranking request waiting for the
        // model's read lock used to wait out.
        self.index.note_changed(items.iter().copied());
        self.pending_items.extend(items.iter().map(|row| row.0));
    }

    /// Keeps at most `ingest.user_cache_capacity` users in memory by dropping the least
    /// recently applied ones (their state is in Redis: called after a successful flush).
    pub(super) fn evict_users(&mut self) {
        let capacity = self.config.user_cache_capacity;
        let mut model = self.fold.model_mut();
        while model.user_count() > capacity {
            let Some(row) = model.least_recent_user() else { break };
            let id = model.user_id(row).to_owned();
            if self.pending_users.contains(&id) {
                break;
            }
            if !model.evict_user(&id) {
                // Changed since its collection: it is touched again at the next one.
                model.forget_user_recency(row);
                continue;
            }
            self.all_users_in_memory = false;
        }
    }
}
