use super::*;

const BASE: i64 = 1_000_000_000_000;

fn cfg() -> WindowConfig {
    WindowConfig {
        window_ms: 1000,
        out_of_orderness_ms: 1000,
        idle_timeout_ms: 5000,
        max_future_ms: 60_000,
    }
}

fn at(partition: i32, offset: i64) -> Position {
    Position { partition, offset }
}

fn admit(
    windows: &mut Windows<&'static str>,
    p: i32,
    o: i64,
    ts: i64,
    now: i64,
    v: &'static str,
) -> Admission {
    windows.admit(at(p, o), EventTime(BASE + ts), None, now, v).unwrap()
}

fn values(window: &ClosedWindow<&'static str>) -> Vec<&'static str> {
    window.events.iter().map(|e| e.value).collect()
}

#[test]
fn in_order_events_close_when_watermark_passes_window_end() {
    let mut windows = Windows::new(cfg());
    admit(&mut windows, 0, 0, 100, 0, "a");
    admit(&mut windows, 0, 1, 900, 0, "b");
    admit(&mut windows, 0, 2, 1500, 0, "c");
    // watermark = 1500 - 1000 = 500 < 1000: nothing closes yet
    assert!(windows.poll_closed(0).is_empty());
    admit(&mut windows, 0, 3, 2000, 0, "d");
    // watermark = 1000 = end of [0, 1000)
    let closed = windows.poll_closed(0);
    assert_eq!(closed.len(), 1);
    assert_eq!((closed[0].start, closed[0].end), (BASE, BASE + 1000));
    assert_eq!(values(&closed[0]), ["a", "b"]);
    assert_eq!(windows.buffered(), 2);
    assert_eq!(windows.watermark(0), Some(BASE + 1000));
}

#[test]
fn out_of_order_within_bound_is_on_time_and_sorted_by_event_time() {
    let mut windows = Windows::new(cfg());
    assert_eq!(admit(&mut windows, 0, 0, 1700, 0, "late-in-time"), Admission::OnTime);
    assert_eq!(admit(&mut windows, 0, 1, 1200, 0, "earlier"), Admission::OnTime);
    assert_eq!(admit(&mut windows, 0, 2, 3000, 0, "next"), Admission::OnTime);
    let closed = windows.poll_closed(0);
    assert_eq!(closed.len(), 1);
    assert_eq!(values(&closed[0]), ["earlier", "late-in-time"]);
    assert!(closed[0].events.iter().all(|e| !e.late));
}

#[test]
fn late_event_joins_the_next_closing_window_and_is_flagged() {
    let mut windows = Windows::new(cfg());
    admit(&mut windows, 0, 0, 500, 0, "a");
    admit(&mut windows, 0, 1, 2100, 0, "b");
    assert_eq!(windows.poll_closed(0).len(), 1); // [0, 1000) closed
    assert_eq!(admit(&mut windows, 0, 2, 400, 0, "late"), Admission::Late);
    admit(&mut windows, 0, 3, 4000, 0, "c");
    let closed = windows.poll_closed(0);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].start, BASE + 2000);
    assert_eq!(values(&closed[0]), ["late", "b"]);
    assert!(closed[0].events[0].late && !closed[0].events[1].late);
}

#[test]
fn late_event_is_applied_at_the_next_poll_when_no_window_closes() {
    let mut windows = Windows::new(cfg());
    admit(&mut windows, 0, 0, 500, 0, "a");
    admit(&mut windows, 0, 1, 2100, 0, "b");
    assert_eq!(windows.poll_closed(0).len(), 1); // [0, 1000) closed
    assert_eq!(admit(&mut windows, 0, 2, 400, 0, "late"), Admission::Late);
    // Its own window [0, 1000) is behind the watermark (1100): a late firing of its own, as
    // Flink fires a window again for an element within its allowed lateness.
    let closed = windows.poll_closed(0);
    assert_eq!(closed.len(), 1);
    assert_eq!((closed[0].start, closed[0].end), (BASE, BASE + 1000));
    assert_eq!(values(&closed[0]), ["late"]);
    assert!(closed[0].events[0].late);
    assert_eq!(windows.buffered(), 1, "b's window [2000, 3000) stays open");
}

#[test]
fn far_future_event_is_refused_and_does_not_move_the_watermark() {
    let mut windows: Windows<&str> = Windows::new(cfg());
    let bound = Some(EventTime(BASE));
    windows.admit(at(0, 0), EventTime(BASE), bound, 0, "ok").unwrap();
    let error = windows.admit(at(0, 1), EventTime(BASE + 60_001), bound, 0, "bad").unwrap_err();
    assert_eq!(
        error,
        WindowError::TooFarInFuture {
            ts: BASE + 60_001,
            bound_ms: BASE,
            ahead_ms: 60_001,
            max_future_ms: 60_000
        }
    );
    assert_eq!(windows.partition_watermark(0), Some(BASE - 1000));
    // exactly at the bound is accepted
    assert!(windows.admit(at(0, 2), EventTime(BASE + 60_000), bound, 0, "edge").is_ok());
}

/// The attack of issue 9: one event dated in the year 5000 used to be admitted (its producer
/// set the record timestamp to its `ts`), closed its window by idleness, and from then on every
/// event was late and waited for all partitions to be idle. Against the admission bound it is
/// refused, and the stream behind it keeps closing windows under steady traffic.
#[test]
fn year_5000_event_is_refused_and_steady_traffic_keeps_closing_windows() {
    let mut windows: Windows<&str> = Windows::new(cfg());
    let now = |i: i64| Some(EventTime(BASE + i * 250));
    let year_5000 = EventTime(95_617_584_000_000);
    assert!(windows.admit(at(0, 0), year_5000, now(0), 0, "attack").is_err());
    assert!(windows.poll_closed(10_000).is_empty(), "nothing was admitted");
    let mut applied = 0;
    for i in 0..40 {
        let ts = EventTime(BASE + i * 250);
        let admission = windows.admit(at(0, i + 1), ts, now(i), 10_000 + i * 250, "live").unwrap();
        assert_eq!(admission, Admission::OnTime);
        applied +=
            windows.poll_closed(10_000 + i * 250).iter().map(|w| w.events.len()).sum::<usize>();
    }
    assert!(applied >= 28, "steady traffic is applied as the watermark moves: {applied} of 40");
}

/// Late events are applied once the watermark passes their own window's end, even when no
/// window closes (here `closed_until` is ahead of the stream, as after a restore of a state
/// written by an older version, or an event accepted at the edge of `max_future_ms`).
#[test]
fn late_events_are_applied_under_steady_traffic_without_idleness() {
    let mut windows: Windows<&str> = Windows::new(cfg());
    windows.admit(at(1, 0), EventTime(BASE + 50_000), None, 0, "edge").unwrap();
    let closed = windows.poll_closed(6_000);
    assert_eq!(closed.len(), 1, "idleness closes the edge event's window");
    assert_eq!(windows.closed_until(), BASE + 51_000);
    let mut late_applied = Vec::new();
    for i in 0..12 {
        let now = 6_000 + i * 250;
        let admission = windows.admit(at(0, i + 1), EventTime(BASE + i * 250), None, now, "live");
        assert_eq!(admission, Ok(Admission::Late));
        for window in windows.poll_closed(now) {
            late_applied.extend(window.events.iter().map(|e| e.position.offset));
        }
    }
    // Late events do not make partition 0 active: every partition is idle, and each late
    // event is applied at the poll after it arrived, without moving `closed_until`.
    assert_eq!(late_applied, (1..=12).collect::<Vec<_>>());
    assert_eq!(windows.buffered(), 0);
    assert_eq!(windows.closed_until(), BASE + 51_000, "late batches do not move closed_until");
}

#[test]
fn a_partition_delivering_only_late_events_holds_no_window_back() {
    // The attack: partitions 0 and 1 carry live traffic and close windows; then a client whose
    // clock runs an hour behind starts publishing to partition 2, which was quiet (idle).
    let mut windows: Windows<&str> = Windows::new(cfg());
    for partition in 0..3 {
        windows.register_partition(partition, 0);
    }
    let mut offsets = [0i64; 3];
    let mut admit_at = |windows: &mut Windows<&str>, partition: i32, ts: i64, now: i64| {
        offsets[partition as usize] += 1;
        let position = at(partition, offsets[partition as usize]);
        windows.admit(position, EventTime(BASE + ts), None, now, "e").unwrap()
    };
    let mut applied = 0;
    // Ten seconds of live traffic at 4 events/s on partitions 0 and 1 (event time = now).
    for step in 0..40 {
        let now = 5_000 + step * 250;
        admit_at(&mut windows, 0, now, now);
        admit_at(&mut windows, 1, now, now);
        applied += windows.poll_closed(now).iter().map(|w| w.events.len()).sum::<usize>();
    }
    let closed_before = windows.closed_until();
    assert!(closed_before > BASE + 10_000, "live traffic closes windows");
    // Ten more seconds: live traffic goes on, and partition 2 gets 3 events/s an hour behind.
    for step in 40..80 {
        let now = 5_000 + step * 250;
        admit_at(&mut windows, 0, now, now);
        admit_at(&mut windows, 1, now, now);
        if step % 4 != 0 {
            assert_eq!(admit_at(&mut windows, 2, now - 3_600_000, now), Admission::Late);
        }
        applied += windows.poll_closed(now).iter().map(|w| w.events.len()).sum::<usize>();
    }
    assert!(
        windows.closed_until() >= closed_before + 9_000,
        "windows went on closing: closed until {} then {}",
        closed_before - BASE,
        windows.closed_until() - BASE
    );
    assert!(windows.buffered() < 20, "{} events still buffered", windows.buffered());
    assert!(applied > 150, "{applied} applied");
}

#[test]
fn restore_ignores_a_closed_until_beyond_the_admission_bound() {
    let mut windows: Windows<&str> = Windows::new(cfg());
    let now = EventTime(BASE);
    assert_eq!(windows.restore_closed_until(95_617_584_001_000, now), Some(95_617_584_001_000));
    assert_eq!(windows.closed_until(), i64::MIN, "poisoned value ignored");
    assert_eq!(windows.restore_closed_until(BASE + 60_000, now), None);
    assert_eq!(windows.closed_until(), BASE + 60_000);
    // a live event after a poisoned restore is on time
    let mut fresh: Windows<&str> = Windows::new(cfg());
    let _ = fresh.restore_closed_until(95_617_584_001_000, now);
    assert_eq!(fresh.admit(at(0, 0), now, Some(now), 0, "live"), Ok(Admission::OnTime));
}

#[test]
fn idle_timeout_closes_open_windows_when_the_stream_pauses() {
    let mut windows = Windows::new(cfg());
    admit(&mut windows, 0, 0, 100, 1_000, "a");
    admit(&mut windows, 0, 1, 1100, 1_000, "b");
    assert!(windows.poll_closed(5_999).is_empty(), "not idle yet");
    let closed = windows.poll_closed(6_000);
    assert_eq!(closed.len(), 2);
    assert_eq!(windows.buffered(), 0);
    // an event for a window closed by idleness is late, not lost
    assert_eq!(admit(&mut windows, 0, 2, 1200, 6_001, "straggler"), Admission::Late);
    let closed = windows.poll_closed(11_001);
    assert_eq!(closed.len(), 1);
    assert_eq!(values(&closed[0]), ["straggler"]);
}

#[test]
fn slowest_active_partition_holds_the_watermark_until_it_idles() {
    let mut windows = Windows::new(cfg());
    admit(&mut windows, 0, 0, 500, 0, "p0-a");
    admit(&mut windows, 1, 0, 600, 0, "p1-a");
    admit(&mut windows, 0, 1, 10_000, 0, "p0-far");
    // p1's watermark (600 - 1000) holds everything back
    assert_eq!(windows.watermark(0), Some(BASE - 400));
    assert!(windows.poll_closed(0).is_empty());
    admit(&mut windows, 1, 1, 2_500, 0, "p1-b");
    let closed = windows.poll_closed(0);
    assert_eq!(closed.len(), 1, "only [0, 1000) is behind min(9000, 1500)");
    assert_eq!(values(&closed[0]), ["p0-a", "p1-a"]);
    // p0 keeps delivering, p1 goes quiet: once p1 is idle the watermark follows p0 alone
    admit(&mut windows, 0, 2, 12_000, 6_000, "p0-b");
    let closed = windows.poll_closed(6_000);
    let starts: Vec<i64> = closed.iter().map(|w| w.start - BASE).collect();
    assert_eq!(starts, [2_000, 10_000]);
}

#[test]
fn window_order_is_event_time_then_partition_then_offset() {
    let mut windows = Windows::new(cfg());
    admit(&mut windows, 1, 7, 100, 0, "p1-o7");
    admit(&mut windows, 0, 9, 100, 0, "p0-o9");
    admit(&mut windows, 0, 3, 100, 0, "p0-o3");
    admit(&mut windows, 1, 2, 50, 0, "p1-o2-earlier");
    let closed = windows.drain();
    assert_eq!(values(&closed[0]), ["p1-o2-earlier", "p0-o3", "p0-o9", "p1-o7"]);
}

#[test]
fn removed_partition_stops_holding_the_watermark() {
    let mut windows = Windows::new(cfg());
    admit(&mut windows, 0, 0, 5_000, 0, "p0");
    admit(&mut windows, 1, 0, 100, 0, "p1");
    assert_eq!(windows.watermark(0), Some(BASE - 900));
    let removed = windows.remove_partition(1);
    assert_eq!(removed.iter().map(|e| e.value).collect::<Vec<_>>(), ["p1"]);
    assert_eq!(windows.buffered(), 1);
    assert_eq!(windows.watermark(0), Some(BASE + 4_000));
    let closed = windows.poll_closed(0);
    assert_eq!(closed.len(), 0, "only p0's event at 5000 is left, in an open window");
    assert_eq!(windows.drain().iter().flat_map(values).collect::<Vec<_>>(), ["p0"]);
}

#[test]
fn drain_emits_everything_including_late_only_leftovers() {
    let mut windows = Windows::new(cfg());
    admit(&mut windows, 0, 0, 100, 0, "a");
    admit(&mut windows, 0, 1, 2_500, 0, "b");
    windows.poll_closed(0);
    admit(&mut windows, 0, 2, 200, 0, "late");
    let drained = windows.drain();
    let all: Vec<&str> = drained.iter().flat_map(values).collect();
    assert_eq!(all, ["late", "b"]);
    assert_eq!(windows.buffered(), 0);
    assert!(windows.drain().is_empty());
}

#[test]
fn a_registered_silent_partition_holds_the_watermark_until_idle() {
    let mut windows = Windows::new(cfg());
    windows.register_partition(0, 0);
    windows.register_partition(1, 0);
    admit(&mut windows, 0, 0, 100, 0, "p0-a");
    admit(&mut windows, 0, 1, 50_000, 0, "p0-far");
    assert_eq!(windows.watermark(0), Some(i64::MIN), "p1 has said nothing yet");
    assert!(windows.poll_closed(1_000).is_empty());
    // p1 delivers late in processing time but early in event time: not late
    assert_eq!(admit(&mut windows, 1, 0, 200, 1_000, "p1-a"), Admission::OnTime);
    let closed = windows.poll_closed(1_000);
    assert_eq!(closed.len(), 0, "p1's watermark (200 - 1000) still holds");
    // p1 silent for the idle timeout: the watermark follows p0 alone
    let closed = windows.poll_closed(6_000);
    assert_eq!(values(&closed[0]), ["p0-a", "p1-a"]);
}

#[test]
fn held_idle_clocks_keep_a_paused_stream_from_closing_its_windows() {
    let mut windows = Windows::new(cfg());
    admit(&mut windows, 0, 0, 100, 1000, "a");
    // The consumer pauses at 1000 (a dependency is down) and holds the clocks every tick.
    for now in (2000..=20_000).step_by(1000) {
        windows.hold_idle_clocks(now);
        assert!(windows.poll_closed(now).is_empty(), "closed at {now} while held");
    }
    // Resumed: the idle timeout counts from the last hold, not from the last event.
    assert!(windows.poll_closed(24_999).is_empty());
    assert_eq!(windows.poll_closed(25_000).len(), 1);
}

#[test]
fn the_partitions_holding_the_watermark_back_are_named() {
    let mut windows = Windows::new(cfg());
    windows.register_partition(0, 0);
    windows.register_partition(1, 0);
    windows.register_partition(2, 0);
    // Partition 2 has delivered nothing: it alone holds the watermark at its minimum.
    admit(&mut windows, 0, 0, 50_000, 0, "ahead");
    admit(&mut windows, 1, 0, 3_000, 0, "behind");
    assert_eq!(windows.holding_back(0), vec![2]);
    admit(&mut windows, 2, 0, 3_000, 0, "level");
    assert_eq!(windows.holding_back(0), vec![1, 2], "ties hold it back together");
    admit(&mut windows, 1, 1, 60_000, 0, "ahead too");
    assert_eq!(windows.holding_back(0), vec![2]);
    // Idle partitions hold nothing back.
    assert_eq!(windows.holding_back(5_000), Vec::<i32>::new());
}

#[test]
fn a_full_buffer_keeps_the_slower_half_fetching() {
    let mut windows = Windows::new(cfg());
    for partition in 0..6 {
        windows.register_partition(partition, 0);
    }
    for (offset, (partition, ts)) in
        [(0, 9_000), (1, 4_000), (2, 7_000), (3, 2_000), (4, 8_000)].into_iter().enumerate()
    {
        admit(&mut windows, partition, offset as i64, ts, 0, "event");
    }
    // Partition 5 has delivered nothing (the minimum), then 3 and 1: the slower three.
    assert_eq!(windows.slower_half(0), vec![1, 3, 5]);
    admit(&mut windows, 5, 10, 9_500, 0, "caught up");
    assert_eq!(windows.slower_half(0), vec![1, 2, 3]);
    // It always holds the partitions holding the watermark back.
    let holding = windows.holding_back(0);
    assert!(holding.iter().all(|partition| windows.slower_half(0).contains(partition)));
    // Idle partitions are not fetched on purpose.
    assert_eq!(windows.slower_half(5_000), Vec::<i32>::new());
}

#[test]
fn the_oldest_buffered_event_is_dated_by_its_arrival_not_its_event_time() {
    let mut windows = Windows::new(cfg());
    assert_eq!(windows.oldest_open_since(), None);
    // A backfill from years ago: event times far back, arrivals now.
    admit(&mut windows, 0, 0, -900_000_000, 100, "old");
    admit(&mut windows, 0, 1, -899_990_000, 200, "later window");
    assert_eq!(windows.oldest_open_since(), Some(100));
    // An out-of-order event opens an earlier window later: the age is still the first arrival.
    admit(&mut windows, 0, 2, -900_001_000, 300, "earlier window");
    assert_eq!(windows.oldest_open_since(), Some(100));
    let closed = windows.poll_closed(300);
    assert_eq!(closed.len(), 2, "the two earliest windows close behind the watermark");
    assert_eq!(windows.oldest_open_since(), Some(200), "the window opened at 200 is left");
    // Late events wait from their own arrival.
    let mut idle = Windows::new(cfg());
    admit(&mut idle, 0, 0, 1_000, 0, "a");
    assert_eq!(idle.poll_closed(10_000).len(), 1, "idleness closes it");
    assert_eq!(admit(&mut idle, 0, 1, 500, 10_500, "late"), Admission::Late);
    assert_eq!(idle.oldest_open_since(), Some(10_500));
    assert_eq!(idle.poll_closed(10_600).len(), 1);
    assert_eq!(idle.oldest_open_since(), None);
}
