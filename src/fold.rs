//! The fold: decode, window and model wired into one deterministic pipeline.
//!
//! Records enter with their source position (Kafka partition and offset, or a file's line) and
//! processing time; they leave as model updates when their window closes. Both `replay` and the
//! Kafka consumer drive this same code, which is why a replay can verify a live run by digest.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::{RwLockReadGuard, RwLockWriteGuard};

use xxhash_rust::xxh3::xxh3_64;

use crate::config::{Config, ConfigError};
use crate::event::{decode, DecodeLimits, Event, EventTime, EventTypes, RejectReason};
use crate::model::{Model, ModelLock, SeenWrite, UserState};
use crate::window::{Admission, ClosedWindow, Position, Windows};

/// A record the fold refused, with its stable reason and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable reason code (DLQ header, metric label).
    pub reason: RejectReason,
    /// What exactly was wrong, naming the field.
    pub message: String,
}

/// What [`Fold::offer`] checks of a record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKey<'a> {
    /// Nothing (a file replay, which has no keys).
    Unchecked,
    /// The key must be the event's `user_id`, byte for byte (the event contract).
    MustBeUserId(Option<&'a [u8]>),
}

/// Counters of everything the fold has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FoldStats {
    /// Records offered.
    pub received: u64,
    /// Events applied to the model.
    pub applied: u64,
    /// Events that arrived after their window had closed (applied all the same).
    pub late: u64,
    /// Events dropped because their `event_id` was applied within the dedup horizon.
    pub duplicates: u64,
    /// Windows closed.
    pub windows_closed: u64,
    /// Records refused, by reason code.
    pub rejected: BTreeMap<&'static str, u64>,
}

impl FoldStats {
    /// Total records refused.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Events a window applies under one hold of the model's write lock before it lets waiting
/// readers in ([`RwLockWriteGuard::bump`]). A window of a bulk catch-up holds tens of thousands
/// of events (3 to 7 us each at the default model on MovieLens, BENCHMARKS.md), and a ranking
/// request waited for all of them. On the 100,000-item catalogue under live traffic an event
/// took about 30 us of the fold thread (its 33 item rows miss the cache), so 128 events held
/// the lock about 4 ms; 32 hold it about one.
const EVENTS_PER_LOCK_HOLD: usize = 32;

/// Remembers the last `capacity` event ids (by 64-bit hash) to drop retried duplicates.
#[derive(Debug, Default)]
struct DedupHorizon {
    capacity: usize,
    seen: HashSet<u64, foldhash::fast::RandomState>,
    order: VecDeque<u64>,
}

impl DedupHorizon {
    /// True when the id is new (and remembers it).
    fn first_time(&mut self, event_id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let key = xxh3_64(event_id.as_bytes());
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        true
    }
}

/// Where the fold gets a user it does not hold in memory (a bounded user cache backed by
/// Redis). `Ok(None)` means a new user.
pub trait UserSource {
    /// Loads the durable state of users not in memory (one round trip where the store allows):
    /// one answer per id, in order, `None` for a user with no stored state (a new user), else
    /// the state and what the next flush must write of its seen list.
    ///
    /// # Errors
    /// A message when the store cannot answer; the fold then stops applying (the window stays
    /// buffered) and the caller retries later.
    fn load(&mut self, user_ids: &[&str]) -> Result<Vec<Option<(UserState, SeenWrite)>>, String>;
}

/// A source with no users: everything not in memory is new (file replay, tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStoredUsers;

impl UserSource for NoStoredUsers {
    fn load(&mut self, user_ids: &[&str]) -> Result<Vec<Option<(UserState, SeenWrite)>>, String> {
        Ok(vec![None; user_ids.len()])
    }
}

/// Decode, window and apply.
#[derive(Debug)]
pub struct Fold {
    types: EventTypes,
    limits: DecodeLimits,
    windows: Windows<Event>,
    model: Arc<ModelLock>,
    dedup: DedupHorizon,
    stats: FoldStats,
    /// Closed windows not yet applied because a user could not be loaded.
    blocked: VecDeque<ClosedWindow<Event>>,
    /// Event time of the newest applied event, ms (`None` before any).
    newest_applied_ts: Option<i64>,
}

impl Fold {
    /// A fold with an empty model.
    ///
    /// # Errors
    /// [`ConfigError`] when the configuration is invalid.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            types: config.events.event_types()?,
            limits: config.events.limits,
            windows: Windows::new(config.window),
            model: Arc::new(ModelLock::new(Model::new(config.model.clone())?)),
            dedup: DedupHorizon {
                capacity: config.fold.dedup_horizon_events,
                ..DedupHorizon::default()
            },
            stats: FoldStats::default(),
            blocked: VecDeque::new(),
            newest_applied_ts: None,
        })
    }

    /// The model as folded so far (a read lock; a reader may see a window part applied, up to
    /// a multiple of [`EVENTS_PER_LOCK_HOLD`] of its events).
    pub fn model(&self) -> RwLockReadGuard<'_, Model> {
        self.model.read()
    }

    /// The model for writing (restore).
    pub fn model_mut(&self) -> RwLockWriteGuard<'_, Model> {
        self.model.write()
    }

    /// A handle to the shared model, for readers on other threads.
    pub fn shared_model(&self) -> Arc<ModelLock> {
        Arc::clone(&self.model)
    }

    /// The windows (watermarks, closed-until).
    pub fn windows(&self) -> &Windows<Event> {
        &self.windows
    }

    /// The windows, mutable (restore, revoke).
    pub fn windows_mut(&mut self) -> &mut Windows<Event> {
        &mut self.windows
    }

    /// The counters.
    pub fn stats(&self) -> &FoldStats {
        &self.stats
    }

    /// Event time of the newest applied event, ms (`None` before any).
    pub fn newest_applied_ts(&self) -> Option<i64> {
        self.newest_applied_ts
    }

    /// The configured event types.
    pub fn event_types(&self) -> &EventTypes {
        &self.types
    }

    /// Closed windows waiting for user state from Redis.
    pub fn blocked_windows(&self) -> usize {
        self.blocked.len()
    }

    /// Events buffered in open windows or in closed windows waiting for a user load.
    pub fn buffered(&self) -> usize {
        self.windows.buffered() + self.blocked.iter().map(|w| w.events.len()).sum::<usize>()
    }

    /// Removes a revoked partition's buffered events, unapplied; returns their positions.
    pub fn revoke(&mut self, partition: i32) -> Vec<Position> {
        let mut positions: Vec<Position> = self
            .windows
            .remove_partition(partition)
            .into_iter()
            .map(|windowed| windowed.position)
            .collect();
        for window in &mut self.blocked {
            window.events.retain(|windowed| {
                let theirs = windowed.position.partition == partition;
                if theirs {
                    positions.push(windowed.position);
                }
                !theirs
            });
        }
        positions
    }

    /// Decodes one record and admits it to its window. `bound` is the admission bound (ms since
    /// the epoch, from a clock the client does not control; see [`crate::window`]), `now_ms`
    /// processing time on a monotonic clock.
    ///
    /// # Errors
    /// A [`Rejection`] when the record fails validation or is too far in the future; it is
    /// counted, and the caller sends it to the dead-letter queue.
    pub fn offer(
        &mut self,
        bytes: &[u8],
        key: RecordKey<'_>,
        position: Position,
        bound: Option<EventTime>,
        now_ms: i64,
    ) -> Result<Admission, Rejection> {
        self.stats.received += 1;
        let event = match decode(bytes, &self.types, &self.limits) {
            Ok(event) => event,
            Err(error) => return Err(self.reject(error.reason(), error.to_string())),
        };
        if let Err(error) = self.windows.check_bound(event.ts, bound) {
            return Err(self.reject(RejectReason::TooFarInFuture, error.to_string()));
        }
        if let RecordKey::MustBeUserId(key) = key {
            if key != Some(event.user_id.as_str().as_bytes()) {
                let found = key.map_or_else(
                    || "no key".to_owned(),
                    |key| {
                        let text: String = String::from_utf8_lossy(key).chars().take(64).collect();
                        format!("key {text:?}")
                    },
                );
                let message = format!(
                    "the record has {found}, not its user_id {:?}: events are keyed by user_id, \
                     so that one partition, and one consumer-group member, holds each user",
                    event.user_id.as_str()
                );
                return Err(self.reject(RejectReason::KeyNotUserId, message));
            }
        }
        match self.windows.admit(position, event.ts, bound, now_ms, event) {
            Ok(admission) => Ok(admission),
            Err(error) => Err(self.reject(RejectReason::TooFarInFuture, error.to_string())),
        }
    }

    /// Counts a record refused before it reached the fold (e.g. an unreadable input line).
    pub fn reject(&mut self, reason: RejectReason, message: String) -> Rejection {
        *self.stats.rejected.entry(reason.as_str()).or_default() += 1;
        Rejection { reason, message }
    }

    /// Applies every window the watermark lets close at `now_ms`; returns the positions now
    /// done (applied, or dropped as duplicates), one list per closed window.
    pub fn poll(&mut self, now_ms: i64, users: &mut dyn UserSource) -> Vec<Vec<Position>> {
        let closed = self.windows.poll_closed(now_ms);
        self.blocked.extend(closed);
        self.apply_blocked(users)
    }

    /// Closes and applies every open window (end of input); returns the positions done, one
    /// list per window.
    pub fn drain(&mut self, users: &mut dyn UserSource) -> Vec<Vec<Position>> {
        let closed = self.windows.drain();
        self.blocked.extend(closed);
        self.apply_blocked(users)
    }

    fn apply_blocked(&mut self, users: &mut dyn UserSource) -> Vec<Vec<Position>> {
        let mut done = Vec::new();
        while let Some(window) = self.blocked.front() {
            if let Err(error) = self.load_users(window, users) {
                tracing::warn!(%error, "user state unavailable, window kept for retry");
                break;
            }
            let Some(window) = self.blocked.pop_front() else { break };
            let mut positions = Vec::with_capacity(window.events.len());
            self.apply_window(window, &mut positions);
            done.push(positions);
        }
        done
    }

    fn load_users(
        &self,
        window: &ClosedWindow<Event>,
        users: &mut dyn UserSource,
    ) -> Result<(), String> {
        let missing: Vec<&str> = {
            let model = self.model();
            let mut seen = HashSet::new();
            window
                .events
                .iter()
                .map(|windowed| windowed.value.user_id.as_str())
                .filter(|user| model.user_row(user).is_none() && seen.insert(*user))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let loaded = users.load(&missing)?;
        let mut model = self.model_mut();
        for (state, seen_write) in loaded.into_iter().flatten() {
            model.restore_user_with(state, seen_write).map_err(|error| error.to_string())?;
        }
        Ok(())
    }

    fn apply_window(&mut self, window: ClosedWindow<Event>, done: &mut Vec<Position>) {
        self.stats.windows_closed += 1;
        let mut model = self.model.write();
        for (n, windowed) in window.events.into_iter().enumerate() {
            if n > 0 && n % EVENTS_PER_LOCK_HOLD == 0 {
                // Readers (ranking requests) waiting for the lock get it now, fairly, and the
                // window goes on after them: a request waits for at most one chunk of a window,
                // not the whole window.
                RwLockWriteGuard::bump(&mut model);
            }
            done.push(windowed.position);
            let event = windowed.value;
            if !self.dedup.first_time(&event.event_id) {
                self.stats.duplicates += 1;
                continue;
            }
            let weight = self.types.weight(event.event_type) * event.weight.unwrap_or(1.0);
            model.apply(
                &event.event_id,
                event.user_id.as_str(),
                event.item_id.as_str(),
                event.ts.0,
                weight,
            );
            self.newest_applied_ts =
                Some(self.newest_applied_ts.map_or(event.ts.0, |newest| newest.max(event.ts.0)));
            self.stats.late += u64::from(windowed.late);
            self.stats.applied += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::{Fold, NoStoredUsers, RecordKey, EVENTS_PER_LOCK_HOLD};
    use crate::config::Config;
    use crate::event::{EventTime, RejectReason};
    use crate::window::Position;

    /// Issue 9 (attack run of 2026-12-07): records not keyed by `user_id` land on partitions
    /// other members own, and two members then overwrite each other's state of the user. The
    /// fold used to apply them; a key that is not the `user_id` is now refused, with a reason.
    #[test]
    fn a_record_not_keyed_by_its_user_id_is_refused() {
        let mut fold = Fold::new(&Config::default()).unwrap();
        fold.windows_mut().register_partition(0, 0);
        let value = |ts: i64| {
            format!(
                r#"{{"event_id":"e{ts}","user_id":"u1","item_id":"i1","event_type":"view","ts":{ts}}}"#
            )
        };
        let bound = Some(EventTime(1_700_000_000_000));
        let at = |offset| Position { partition: 0, offset };
        let ts = 1_700_000_000_000;
        let offer = |fold: &mut Fold, key, offset, ts| {
            fold.offer(value(ts).as_bytes(), key, at(offset), bound, 0)
        };
        let refused = |key| offer(&mut Fold::new(&Config::default()).unwrap(), key, 0, ts);
        for key in [RecordKey::MustBeUserId(Some(b"u2")), RecordKey::MustBeUserId(None)] {
            let rejection = refused(key).unwrap_err();
            assert_eq!(rejection.reason, RejectReason::KeyNotUserId, "{key:?}");
            assert!(rejection.message.contains("\"u1\""), "{}", rejection.message);
        }
        assert!(offer(&mut fold, RecordKey::MustBeUserId(Some(b"u1")), 0, ts).is_ok());
        assert!(offer(&mut fold, RecordKey::Unchecked, 1, ts).is_ok());
        // An event time past the admission bound keeps its own reason, whatever the key.
        let ahead = offer(&mut fold, RecordKey::MustBeUserId(None), 2, ts + 3_600_000);
        assert_eq!(ahead.unwrap_err().reason, RejectReason::TooFarInFuture);
        assert_eq!(fold.stats().rejected.get("key_not_user_id"), None);
        assert_eq!(fold.stats().rejected.get("too_far_in_future"), Some(&1));
    }

    #[test]
    fn readers_waiting_for_the_model_get_in_during_a_large_window() {
        let mut fold = Fold::new(&Config::default()).unwrap();
        fold.windows_mut().register_partition(0, 0);
        // 200 chunks (a few tenths of a second): the reader is scheduled during one even on a
        // loaded machine.
        let events = EVENTS_PER_LOCK_HOLD * 200;
        for offset in 0..events {
            let record = serde_json::json!({
                "event_id": format!("e{offset}"),
                "user_id": format!("u{}", offset % 97),
                "item_id": format!("i{}", offset % 331),
                "event_type": "view",
                "ts": 1_700_000_000_000i64,
            });
            let position = Position { partition: 0, offset: offset as i64 };
            let bound = Some(EventTime(i64::MAX / 2));
            fold.offer(record.to_string().as_bytes(), RecordKey::Unchecked, position, bound, 0)
                .unwrap();
        }
        let model = fold.shared_model();
        let done = Arc::new(AtomicBool::new(false));
        // A reader asking for the lock again and again, as ranking requests do under load; it
        // records how many events it found applied each time.
        let reader = {
            let (model, done) = (Arc::clone(&model), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !done.load(Ordering::Acquire) {
                    seen.push(model.read().events_applied());
                }
                seen
            })
        };
        // Let the reader start asking before the window is applied.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let closed = fold.drain(&mut NoStoredUsers);
        assert_eq!(closed.len(), 1, "one window");
        done.store(true, Ordering::Release);
        let seen = reader.join().unwrap();
        let total = events as u64;
        assert_eq!(fold.model().events_applied(), total);
        let inside = seen.iter().filter(|applied| **applied > 0 && **applied < total).count();
        assert!(
            inside > 0,
            "the reader waited for the whole window of {total} events (saw only {:?})",
            seen.iter().collect::<std::collections::BTreeSet<_>>()
        );
        for applied in seen.iter().filter(|applied| **applied > 0 && **applied < total) {
            assert_eq!(applied % EVENTS_PER_LOCK_HOLD as u64, 0, "chunks of whole events");
        }
    }
}
