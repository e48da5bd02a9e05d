//! Event-time tumbling windows with per-partition watermarks.
//!
//! Pure code: no clock is read, processing time (`now_ms`) is passed in by the caller.
//!
//! - A window covers `[start, start + window_ms)` of event time, `start` a multiple of
//!   `window_ms`.
//! - Each partition's watermark is the highest event time it has delivered minus
//!   `out_of_orderness_ms` (the bounded-out-of-orderness strategy of Flink's
//!   `WatermarkStrategy.forBoundedOutOfOrderness`).
//! - The combined watermark is the minimum over active partitions; a window closes once the
//!   combined watermark reaches its end. A partition that has delivered nothing for
//!   `idle_timeout_ms` of processing time stops holding the watermark back (Flink's
//!   `withIdleness`), and once every partition is idle all open windows close.
//! - An event whose window has already closed is late: it is applied with the next window to
//!   close, or on its own as soon as the watermark passes its own window's end (so late events
//!   never wait for idleness under steady traffic), counted, never dropped. A late event does
//!   not count as its partition's activity (idleness) nor move its watermark: a partition that
//!   delivers only late events goes idle and holds no window back.
//! - An event more than `max_future_ms` ahead of the *admission bound* is refused, so that no
//!   client can drag the watermark forward: the bound is a clock the client does not control
//!   (the broker's log-append time when the topic keeps it, otherwise processing time at
//!   admission), never the event's own `ts` nor a producer-set record timestamp. Hence no
//!   watermark ever passes `bound + max_future_ms - out_of_orderness_ms`.
//!
//! Within a closed window, events are ordered by (event time, partition, offset): a total order
//! that does not depend on arrival interleaving, which is what makes the fold deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::EventTime;

/// Window settings. All durations are milliseconds.
///
/// The idle timeout sets how fast a lone event on a quiet stream is applied (about
/// `idle_timeout_ms` plus one poll): only a partition read to its end may go idle, so a backlog
/// never idle-closes a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Tumbling window length (default 1000 ms; at least 1).
    pub window_ms: i64,
    /// Out-of-orderness bound subtracted from the highest event time (default 1000 ms; >= 0).
    pub out_of_orderness_ms: i64,
    /// Processing time without events after which a partition counts as idle (default
    /// 1000 ms; at least 1).
    pub idle_timeout_ms: i64,
    /// How far an event may be ahead of the admission bound, a clock the client does not
    /// control (default 60000 ms; >= 0).
    pub max_future_ms: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            window_ms: 1000,
            out_of_orderness_ms: 1000,
            idle_timeout_ms: 1000,
            max_future_ms: 60_000,
        }
    }
}

/// Where a record came from: Kafka partition and offset (or a file's line number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Kafka partition (0 for a file).
    pub partition: i32,
    /// Kafka offset of the record (line index for a file).
    pub offset: i64,
}

/// An event waiting in a window, with its ordering key.
#[derive(Debug, Clone, PartialEq)]
pub struct Windowed<T> {
    /// Event time.
    pub ts: EventTime,
    /// Source position.
    pub position: Position,
    /// The payload.
    pub value: T,
    /// Whether it arrived after its own window had closed.
    pub late: bool,
}

/// A closed window: its bounds and its events in application order.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedWindow<T> {
    /// Inclusive start, ms.
    pub start: i64,
    /// Exclusive end, ms.
    pub end: i64,
    /// Events sorted by (event time, partition, offset), late arrivals included.
    pub events: Vec<Windowed<T>>,
}

/// How an event was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Its window is still open.
    OnTime,
    /// Its window had closed; it will be applied with the next window to close.
    Late,
}

/// Why an event was refused by the windowing stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Event time too far ahead of the admission bound (log-append or processing time).
    #[error("event time {ts} ms is {ahead_ms} ms ahead of the admission clock {bound_ms} ms (limit {max_future_ms} ms)")]
    TooFarInFuture { ts: i64, bound_ms: i64, ahead_ms: i64, max_future_ms: i64 },
}

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    /// Highest event time delivered; `None` for a partition assigned but silent so far, which
    /// holds the watermark at its minimum until it delivers or idles.
    max_ts: Option<i64>,
    last_event_at_ms: i64,
}

/// Tumbling windows over several partitions.
#[derive(Debug)]
pub struct Windows<T> {
    config: WindowConfig,
    partitions: BTreeMap<i32, PartitionClock>,
    open: BTreeMap<i64, Vec<Windowed<T>>>,
    /// Processing time (ms) each open window received its first event, by window start.
    opened_at: BTreeMap<i64, i64>,
    late: Vec<Windowed<T>>,
    /// Processing time (ms) the oldest buffered late event arrived (an upper bound on its age
    /// once some late events were applied and others wait).
    late_since: Option<i64>,
    closed_until: i64,
    buffered: usize,
}

impl<T> Windows<T> {
    /// Empty windows with the given settings.
    pub fn new(config: WindowConfig) -> Self {
        Self {
            config,
            partitions: BTreeMap::new(),
            open: BTreeMap::new(),
            opened_at: BTreeMap::new(),
            late: Vec::new(),
            late_since: None,
            closed_until: i64::MIN,
            buffered: 0,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    /// Events buffered and not yet emitted.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Start of the window that holds `ts`.
    pub fn window_start(&self, ts: EventTime) -> i64 {
        ts.0 - ts.0.rem_euclid(self.config.window_ms)
    }

    /// Refuses an event time more than `max_future_ms` ahead of `bound` (the admission clock:
    /// the broker's log-append time, else the wall clock at admission); nothing is admitted.
    ///
    /// # Errors
    /// [`WindowError::TooFarInFuture`].
    pub fn check_bound(&self, ts: EventTime, bound: Option<EventTime>) -> Result<(), WindowError> {
        if let Some(bound) = bound {
            let ahead_ms = ts.0.saturating_sub(bound.0);
            if ahead_ms > self.config.max_future_ms {
                return Err(WindowError::TooFarInFuture {
                    ts: ts.0,
                    bound_ms: bound.0,
                    ahead_ms,
                    max_future_ms: self.config.max_future_ms,
                });
            }
        }
        Ok(())
    }

    /// Admits one event at processing time `now_ms` (a monotonic clock, ms, used for
    /// idleness only). `bound` is the admission bound in event-time units (ms since the Unix
    /// epoch) from a clock the client does not control; `None` admits any event time (pure
    /// tests only).
    ///
    /// # Errors
    /// [`WindowError::TooFarInFuture`] when `ts` is more than `max_future_ms` ahead of
    /// `bound`; the event is not buffered and the watermark does not move.
    pub fn admit(
        &mut self,
        position: Position,
        ts: EventTime,
        bound: Option<EventTime>,
        now_ms: i64,
        value: T,
    ) -> Result<Admission, WindowError> {
        self.check_bound(ts, bound)?;
        let start = self.window_start(ts);
        let late = start.saturating_add(self.config.window_ms) <= self.closed_until;
        // A late event neither moves its partition's watermark nor keeps the partition active:
        // every window it could hold back is closed already. Otherwise one client whose clock
        // runs behind, alone on a partition, would keep that partition active at a watermark
        // below everything closed, and no window of any partition would close again.
        if !late {
            let clock = self
                .partitions
                .entry(position.partition)
                .or_insert(PartitionClock { max_ts: None, last_event_at_ms: now_ms });
            clock.max_ts = Some(clock.max_ts.map_or(ts.0, |max_ts| max_ts.max(ts.0)));
            clock.last_event_at_ms = clock.last_event_at_ms.max(now_ms);
        }
        let windowed = Windowed { ts, position, value, late };
        self.buffered += 1;
        if late {
            self.late.push(windowed);
            self.late_since.get_or_insert(now_ms);
            return Ok(Admission::Late);
        }
        self.open.entry(start).or_default().push(windowed);
        self.opened_at.entry(start).or_insert(now_ms);
        Ok(Admission::OnTime)
    }

    /// Registers an assigned partition before its first event, so that it holds the watermark
    /// back until it delivers or goes idle (otherwise a partition fetched later than its
    /// siblings would find its windows already closed). `now_ms` starts its idle clock.
    pub fn register_partition(&mut self, partition: i32, now_ms: i64) {
        self.partitions
            .entry(partition)
            .or_insert(PartitionClock { max_ts: None, last_event_at_ms: now_ms });
    }

    /// Restarts every partition's idle clock at `now_ms`. Called while the consumer has paused
    /// its partitions because a dependency is down: a partition we chose not to read is not
    /// idle, and letting it idle-close windows would change what the windows hold (and so the
    /// state) compared with an uninterrupted run.
    pub fn hold_idle_clocks(&mut self, now_ms: i64) {
        for clock in self.partitions.values_mut() {
            clock.last_event_at_ms = clock.last_event_at_ms.max(now_ms);
        }
    }

    /// Restarts one partition's idle clock at `now_ms` (see [`Windows::hold_idle_clocks`]).
    pub fn hold_idle_clock(&mut self, partition: i32, now_ms: i64) {
        if let Some(clock) = self.partitions.get_mut(&partition) {
            clock.last_event_at_ms = clock.last_event_at_ms.max(now_ms);
        }
    }

    /// The watermark of one partition, if it has delivered anything.
    pub fn partition_watermark(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .and_then(|clock| clock.max_ts)
            .map(|max_ts| max_ts.saturating_sub(self.config.out_of_orderness_ms))
    }

    /// The combined watermark at `now_ms`: the minimum over partitions that are not idle
    /// (`i64::MIN` while an active partition has delivered nothing). `None` when there are no
    /// partitions or every partition is idle.
    pub fn watermark(&self, now_ms: i64) -> Option<i64> {
        self.partitions
            .iter()
            .filter(|(_, clock)| !self.is_idle(clock, now_ms))
            .map(|(_, clock)| {
                clock.max_ts.map_or(i64::MIN, |max_ts| {
                    max_ts.saturating_sub(self.config.out_of_orderness_ms)
                })
            })
            .min()
    }

    /// The partitions holding the combined watermark back at `now_ms`: those, not idle, whose
    /// watermark is the minimum (a silent one counts as `i64::MIN`). A consumer that stops
    /// fetching because its buffer is full must keep fetching these, or no window can close
    /// and the buffer never drains.
    pub fn holding_back(&self, now_ms: i64) -> Vec<i32> {
        let Some(minimum) = self.watermark(now_ms) else { return Vec::new() };
        self.partitions
            .iter()
            .filter(|(_, clock)| !self.is_idle(clock, now_ms))
            .filter(|(_, clock)| {
                clock.max_ts.map_or(i64::MIN, |max_ts| {
                    max_ts.saturating_sub(self.config.out_of_orderness_ms)
                }) == minimum
            })
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// The slower half of the partitions by watermark at `now_ms` (not idle; ties at the cut
    /// included, so the ones [`Windows::holding_back`] names always are). What a consumer whose
    /// buffer is full keeps fetching, while the faster half waits: the partitions that close
    /// windows keep coming and the ones running ahead stop adding to the buffer, as Flink's
    /// watermark alignment pauses the splits whose watermark drifts ahead. Keeping only the
    /// slowest partition was measured to drain a full buffer at a fraction of the fold's speed:
    /// the slowest changes every few events, and each change pauses one partition and resumes
    /// another, which drops librdkafka's prefetched records and costs a fetch round trip.
    pub fn slower_half(&self, now_ms: i64) -> Vec<i32> {
        let mut marks: Vec<(i64, i32)> = self
            .partitions
            .iter()
            .filter(|(_, clock)| !self.is_idle(clock, now_ms))
            .map(|(partition, clock)| {
                let mark = clock.max_ts.map_or(i64::MIN, |max_ts| {
                    max_ts.saturating_sub(self.config.out_of_orderness_ms)
                });
                (mark, *partition)
            })
            .collect();
        if marks.is_empty() {
            return Vec::new();
        }
        marks.sort_unstable();
        let cut = marks[marks.len().div_ceil(2) - 1].0;
        let mut slower: Vec<i32> = marks
            .into_iter()
            .filter(|(mark, _)| *mark <= cut)
            .map(|(_, partition)| partition)
            .collect();
        slower.sort_unstable();
        slower
    }

    fn is_idle(&self, clock: &PartitionClock, now_ms: i64) -> bool {
        now_ms.saturating_sub(clock.last_event_at_ms) >= self.config.idle_timeout_ms
    }

    /// Closes every window the watermark (or idleness) allows at `now_ms`, oldest first.
    pub fn poll_closed(&mut self, now_ms: i64) -> Vec<ClosedWindow<T>> {
        if self.partitions.is_empty() {
            return Vec::new();
        }
        match self.watermark(now_ms) {
            Some(watermark) => self.close_through(watermark),
            None => self.close_through(i64::MAX),
        }
    }

    /// Closes every open window (end of input, or a partition revoke that must flush).
    pub fn drain(&mut self) -> Vec<ClosedWindow<T>> {
        self.close_through(i64::MAX)
    }

    /// Forgets a partition (after a revoke): its clock no longer holds the watermark back, and
    /// its buffered events are removed and returned unapplied, for the next owner to re-read.
    pub fn remove_partition(&mut self, partition: i32) -> Vec<Windowed<T>> {
        self.partitions.remove(&partition);
        let mut removed = Vec::new();
        let mut keep = |events: &mut Vec<Windowed<T>>| {
            let (theirs, ours): (Vec<_>, Vec<_>) =
                events.drain(..).partition(|windowed| windowed.position.partition == partition);
            *events = ours;
            removed.extend(theirs);
        };
        for events in self.open.values_mut() {
            keep(events);
        }
        keep(&mut self.late);
        self.open.retain(|_, events| !events.is_empty());
        let open = &self.open;
        self.opened_at.retain(|start, _| open.contains_key(start));
        if self.late.is_empty() {
            self.late_since = None;
        }
        self.buffered -= removed.len();
        removed
    }

    /// End of the last closed window, ms (`i64::MIN` before any): events of earlier windows
    /// are late. Part of the durable state, so a restart classifies re-read events the same way.
    pub fn closed_until(&self) -> i64 {
        self.closed_until
    }

    /// Restores [`Windows::closed_until`] after a restart. `bound` is the admission bound now
    /// (see [`Windows::admit`]): a stored value past `bound + max_future_ms` cannot have come
    /// from an admitted event. It was written by a version that trusted producer timestamps,
    /// after a far-future event closed its window, and would make every later event late: it is
    /// ignored, and the function returns it so the caller can say so.
    #[must_use = "a poisoned value was ignored: log it"]
    pub fn restore_closed_until(&mut self, closed_until: i64, bound: EventTime) -> Option<i64> {
        let limit = bound.0.saturating_add(self.config.max_future_ms);
        if closed_until > limit {
            return Some(closed_until);
        }
        self.closed_until = self.closed_until.max(closed_until);
        None
    }

    /// Processing time (ms, the `now_ms` clock of [`Windows::admit`]) since which the oldest
    /// buffered event has waited: the first arrival in the oldest open window, or the oldest
    /// late event's. `None` when nothing is buffered. Its age is how long windows have not
    /// closed, whatever the event times (a backfill of old events closes windows quickly).
    pub fn oldest_open_since(&self) -> Option<i64> {
        let open = self.opened_at.values().min().copied();
        match (open, self.late_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn close_through(&mut self, watermark: i64) -> Vec<ClosedWindow<T>> {
        let window_ms = self.config.window_ms;
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            let end = start.saturating_add(window_ms);
            if end > watermark {
                break;
            }
            let mut events = entry.remove();
            self.opened_at.remove(&start);
            events.append(&mut self.late);
            closed.push(self.finish(start, end, events));
        }
        if !self.late.is_empty() && watermark == i64::MAX {
            // Late events alone (every partition idle): applied now, as a batch spanning their
            // own windows, all closed already, so `closed_until` does not move (it used to
            // advance one window per batch, and late events then made later events late).
            let events = std::mem::take(&mut self.late);
            let first = events.iter().map(|e| self.window_start(e.ts)).min().unwrap_or(0);
            let last = events.iter().map(|e| self.window_start(e.ts)).max().unwrap_or(first);
            closed.push(self.finish(first, last.saturating_add(window_ms), events));
        } else if !self.late.is_empty() {
            // No window closed, yet the watermark has passed the end of some late events' own
            // windows: apply those now. Waiting for the next window to close could take as long
            // as `closed_until` is ahead of the stream (up to `max_future_ms`), and waiting for
            // idleness would never end under steady traffic.
            let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.late)
                .into_iter()
                .partition(|e| self.window_start(e.ts).saturating_add(window_ms) <= watermark);
            self.late = waiting;
            if let Some(first) = due.iter().map(|e| e.ts).min() {
                let start = self.window_start(first);
                let end = due.iter().map(|e| self.window_start(e.ts)).max().unwrap_or(start);
                closed.push(self.finish(start, end.saturating_add(window_ms), due));
            }
        }
        if self.late.is_empty() {
            self.late_since = None;
        }
        closed
    }

    fn finish(&mut self, start: i64, end: i64, mut events: Vec<Windowed<T>>) -> ClosedWindow<T> {
        events.sort_by_key(|windowed| (windowed.ts, windowed.position));
        self.buffered -= events.len();
        self.closed_until = self.closed_until.max(end);
        ClosedWindow { start, end, events }
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
