//! The fold: decode, window and model wired into one deterministic pipeline.
//!
//! Records enter with their source position (Kafka partition and offset, or a file's line) and
//! processing time; they leave as model updates when their window closes. Both `replay` and the
//! Kafka consumer drive this same code, which is why a replay can verify a live run by digest.

use std::collections::{BTreeMap, HashSet, VecDeque};

use xxhash_rust::xxh3::xxh3_64;

use crate::config::{Config, ConfigError};
use crate::event::{decode, DecodeLimits, Event, EventTime, EventTypes, RejectReason};
use crate::model::Model;
use crate::window::{Admission, ClosedWindow, Position, Windows};

/// A record the fold refused, with its stable reason and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable reason code (DLQ header, metric label).
    pub reason: RejectReason,
    /// What exactly was wrong, naming the field.
    pub message: String,
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

/// Remembers the last `capacity` event ids (by 64-bit hash) to drop retried duplicates.
#[derive(Debug, Default)]
struct DedupHorizon {
    capacity: usize,
    seen: HashSet<u64>,
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

/// Decode, window and apply.
#[derive(Debug)]
pub struct Fold {
    types: EventTypes,
    limits: DecodeLimits,
    windows: Windows<Event>,
    model: Model,
    dedup: DedupHorizon,
    stats: FoldStats,
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
            model: Model::new(config.model.clone())?,
            dedup: DedupHorizon {
                capacity: config.fold.dedup_horizon_events,
                ..DedupHorizon::default()
            },
            stats: FoldStats::default(),
        })
    }

    /// The model as folded so far.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The counters.
    pub fn stats(&self) -> &FoldStats {
        &self.stats
    }

    /// The configured event types.
    pub fn event_types(&self) -> &EventTypes {
        &self.types
    }

    /// Events buffered in open windows.
    pub fn buffered(&self) -> usize {
        self.windows.buffered()
    }

    /// Decodes one record and admits it to its window.
    ///
    /// # Errors
    /// A [`Rejection`] when the record fails validation or is too far in the future; it is
    /// counted, and the caller sends it to the dead-letter queue.
    pub fn offer(
        &mut self,
        bytes: &[u8],
        position: Position,
        record_ts: Option<EventTime>,
        now_ms: i64,
    ) -> Result<Admission, Rejection> {
        self.stats.received += 1;
        let event = match decode(bytes, &self.types, &self.limits) {
            Ok(event) => event,
            Err(error) => return Err(self.reject(error.reason(), error.to_string())),
        };
        match self.windows.admit(position, event.ts, record_ts, now_ms, event) {
            Ok(admission) => Ok(admission),
            Err(error) => Err(self.reject(RejectReason::TooFarInFuture, error.to_string())),
        }
    }

    /// Counts a record refused before it reached the fold (e.g. an unreadable input line).
    pub fn reject(&mut self, reason: RejectReason, message: String) -> Rejection {
        *self.stats.rejected.entry(reason.as_str()).or_default() += 1;
        Rejection { reason, message }
    }

    /// Applies every window the watermark lets close at `now_ms`; returns events applied.
    pub fn poll(&mut self, now_ms: i64) -> usize {
        let closed = self.windows.poll_closed(now_ms);
        self.apply_windows(closed)
    }

    /// Closes and applies every open window (end of input); returns events applied.
    pub fn drain(&mut self) -> usize {
        let closed = self.windows.drain();
        self.apply_windows(closed)
    }

    fn apply_windows(&mut self, closed: Vec<ClosedWindow<Event>>) -> usize {
        let mut applied = 0;
        for window in closed {
            self.stats.windows_closed += 1;
            for windowed in window.events {
                let event = windowed.value;
                if !self.dedup.first_time(&event.event_id) {
                    self.stats.duplicates += 1;
                    continue;
                }
                let weight = self.types.weight(event.event_type) * event.weight.unwrap_or(1.0);
                self.model.apply(
                    &event.event_id,
                    event.user_id.as_str(),
                    event.item_id.as_str(),
                    event.ts.0,
                    weight,
                );
                self.stats.late += u64::from(windowed.late);
                applied += 1;
            }
        }
        self.stats.applied += applied as u64;
        applied
    }
}
