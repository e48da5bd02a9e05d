//! GCRA, the generic cell rate algorithm (ATM Forum TM 4.1; as a rate limiter: Brandur Leach,
//! "Rate limiting, cells, and GCRA", 2015, <https://brandur.org/rate-limiting>, implemented in
//! his `throttled` and `redis-cell` <https://github.com/brandur/redis-cell>).
//!
//! One number per bucket: the theoretical arrival time `tat` of the next request. With
//! emission interval `T = 1 / rate` and tolerance `tau = T * burst`, a request at `now` is
//! allowed when `max(tat, now) + T - tau <= now`, and then `tat` becomes `max(tat, now) + T`.
//! A subject idle long enough may send `burst` requests at once, then one every `T`.
//!
//! [`SCRIPT`] runs that step atomically in Redis on Redis's own clock (`TIME`), so instances
//! whose clocks disagree still share one budget; [`step`] is the same arithmetic in Rust, the
//! reference the unit tests hold the formulas to.

use std::time::Duration;

/// The Lua script: `KEYS[1]` = bucket, `ARGV[1]` = emission interval (microseconds, may be
/// fractional), `ARGV[2]` = burst, `ARGV[3]` = cells wanted (a lease, [`super::lease`];
/// default 1), `ARGV[4]` = cells given back (an earlier lease's unused cells; default 0),
/// `ARGV[5]` = the charge end of the cells given back (µs on Redis's clock, as this script
/// returned it when it granted them; default 0). Returns `{granted, remaining,
/// retry_after_ms, reset_after_ms, charge_end_us}`: `granted` is the number of cells taken, at
/// most the ones wanted and as many as fit now, 0 when the request is refused; `charge_end_us`
/// is the bucket's `tat` right after the grant, where this grant's charge ends (0 when
/// refused). With one cell wanted and none given back it is the plain GCRA step. The key
/// expires (`PX`) when the bucket is full again, so idle subjects cost no memory. Needs Redis
/// >= 5 (effects replication of a script that reads `TIME`).
///
/// Giving back m cells moves `tat` back by m intervals, the inverse of taking them, but never
/// by more than what is left of their charge (`charge_end - now`: a charge decays as time
/// passes, and once it has the bucket holds no trace of those cells to take back; moving
/// `tat` further would free other cells' charges, and the bucket would admit more than its
/// budget), and never below now (a bucket is never fuller than full).
///
/// `tat` is written with `%.0f`: Lua's default number format keeps 14 digits, fewer than a
/// microsecond timestamp has.
pub const SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = math.max(1, tonumber(ARGV[3] or '1'))
local given_back = tonumber(ARGV[4] or '0')
local charge_end = tonumber(ARGV[5] or '0')
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local stored = tonumber(redis.call('GET', KEYS[1]))
local tat = stored
if tat and given_back > 0 then
  tat = tat - math.min(given_back * interval, math.max(0, charge_end - now))
end
if not tat or tat < now then
  tat = now
end
local diff = now - (tat + interval - interval * burst)
if diff < 0 then
  if stored and given_back > 0 then
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
  end
  return {0, 0, math.ceil(-diff / 1000), math.ceil((tat - now) / 1000), 0}
end
local granted = math.min(wanted, math.floor(diff / interval) + 1)
local new_tat = tat + granted * interval
local reset_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', reset_ms)
return {granted, math.floor((now - (new_tat - interval * burst)) / interval), 0, reset_ms,
  math.floor(new_tat)}
";

/// The outcome of one request against one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Further requests the bucket would allow right now.
    pub remaining: u32,
    /// When refused: how long until a request would be allowed.
    pub retry_after: Duration,
    /// How long until the bucket is full again (all of `burst` available).
    pub reset_after: Duration,
}

/// Unused cells returned to the bucket ([`SCRIPT`]'s `given_back`), with where their charge
/// ends on Redis's clock (µs; as [`Grant::charge_end_us`] gave it; several grants' cells carry
/// the earliest of their ends, which can only return fewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GiveBack {
    /// Cells returned.
    pub cells: u32,
    /// Where their charge ends, µs on Redis's clock.
    pub charge_end_us: i64,
}

impl GiveBack {
    /// Nothing given back.
    pub const NONE: Self = Self { cells: 0, charge_end_us: 0 };

    /// Adds `cells` charged until `charge_end_us`.
    pub fn add(&mut self, cells: u32, charge_end_us: i64) {
        if cells == 0 {
            return;
        }
        self.charge_end_us =
            if self.cells == 0 { charge_end_us } else { self.charge_end_us.min(charge_end_us) };
        self.cells = self.cells.saturating_add(cells);
    }
}

/// The script's answer to a fetch of cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The bucket's outcome for the request that asked.
    pub outcome: Outcome,
    /// Cells taken (0: refused).
    pub granted: u32,
    /// Where the charge of these cells ends on Redis's clock (µs): what giving them back
    /// names ([`GiveBack`]).
    pub charge_end_us: i64,
}

impl Grant {
    /// Reads the script's reply.
    pub fn from_reply(reply: (i64, i64, i64, i64, i64)) -> Self {
        let (granted, remaining, retry_after_ms, reset_after_ms, charge_end_us) = reply;
        Self {
            outcome: Outcome::from_reply((granted, remaining, retry_after_ms, reset_after_ms)),
            granted: u32::try_from(granted.max(0)).unwrap_or(0),
            charge_end_us,
        }
    }
}

impl Outcome {
    /// Reads the first four values of the script's reply.
    pub fn from_reply(reply: (i64, i64, i64, i64)) -> Self {
        let (granted, remaining, retry_after_ms, reset_after_ms) = reply;
        let millis = |value: i64| Duration::from_millis(u64::try_from(value).unwrap_or(0));
        Self {
            allowed: granted >= 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: millis(retry_after_ms),
            reset_after: millis(reset_after_ms),
        }
    }
}

/// The emission interval `T` of `rate_per_second`, microseconds.
pub fn interval_us(rate_per_second: f64) -> f64 {
    1_000_000.0 / rate_per_second
}

/// One GCRA step at `now_us` on a bucket whose stored `tat` (µs) is `tat_us` (`None` when the
/// key is absent): the outcome and the `tat` to store (`None`: leave the bucket unchanged).
/// The same arithmetic as [`SCRIPT`] with one cell wanted and none given back.
pub fn step(
    now_us: f64,
    tat_us: Option<f64>,
    interval_us: f64,
    burst: u32,
) -> (Outcome, Option<f64>) {
    let (outcome, _, stored) = step_cells(now_us, tat_us, interval_us, burst, 1, GiveBack::NONE);
    (outcome, stored)
}

/// [`SCRIPT`] in full: `wanted` cells asked for and `given_back` returned at `now_us`. Returns
/// the outcome, the cells granted (0 when refused) and the `tat` to store (`None`: unchanged;
/// when cells are granted, also where their charge ends).
pub fn step_cells(
    now_us: f64,
    tat_us: Option<f64>,
    interval_us: f64,
    burst: u32,
    wanted: u32,
    given_back: GiveBack,
) -> (Outcome, u32, Option<f64>) {
    let left_of_charge = (given_back.charge_end_us as f64 - now_us).max(0.0);
    let refund = (f64::from(given_back.cells) * interval_us).min(left_of_charge);
    let returned = tat_us.map(|stored| stored - refund);
    let tat = returned.map_or(now_us, |stored| stored.max(now_us));
    let tau = interval_us * f64::from(burst);
    let diff = now_us - (tat + interval_us - tau);
    let millis = |micros: f64| Duration::from_millis((micros / 1000.0).ceil().max(0.0) as u64);
    if diff < 0.0 {
        let outcome = Outcome {
            allowed: false,
            remaining: 0,
            retry_after: millis(-diff),
            reset_after: millis(tat - now_us),
        };
        let stored = (given_back.cells > 0).then_some(returned).flatten().map(|_| tat.round());
        return (outcome, 0, stored);
    }
    let fit = (diff / interval_us).floor() + 1.0;
    let granted = f64::from(wanted.max(1)).min(fit) as u32;
    let new_tat = tat + f64::from(granted) * interval_us;
    let outcome = Outcome {
        allowed: true,
        remaining: ((now_us - (new_tat - tau)) / interval_us).floor() as u32,
        retry_after: Duration::ZERO,
        reset_after: millis(new_tat - now_us),
    };
    (outcome, granted, Some(new_tat.round()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `count` requests at `now_us`, carrying `tat` along.
    fn burst_at(
        now_us: f64,
        tat: &mut Option<f64>,
        interval: f64,
        burst: u32,
        count: u32,
    ) -> Vec<Outcome> {
        (0..count)
            .map(|_| {
                let (outcome, stored) = step(now_us, *tat, interval, burst);
                if stored.is_some() {
                    *tat = stored;
                }
                outcome
            })
            .collect()
    }

    #[test]
    fn an_idle_bucket_allows_exactly_burst_then_refuses() {
        // 10/s (T = 100 ms), burst 3.
        let interval = interval_us(10.0);
        let mut tat = None;
        let outcomes = burst_at(1e15, &mut tat, interval, 3, 4);
        let remaining: Vec<u32> = outcomes.iter().map(|o| o.remaining).collect();
        assert_eq!(remaining, [2, 1, 0, 0]);
        assert!(outcomes[..3].iter().all(|o| o.allowed));
        assert!(!outcomes[3].allowed);
        // One interval until the next request fits; three until the bucket is full.
        assert_eq!(outcomes[3].retry_after, Duration::from_millis(100));
        assert_eq!(outcomes[3].reset_after, Duration::from_millis(300));
        assert_eq!(outcomes[2].reset_after, Duration::from_millis(300));
    }

    #[test]
    fn a_refused_request_consumes_nothing() {
        let interval = interval_us(10.0);
        let mut tat = None;
        burst_at(0.0, &mut tat, interval, 2, 2);
        let before = tat;
        let refused = burst_at(0.0, &mut tat, interval, 2, 5);
        assert!(refused.iter().all(|o| !o.allowed));
        assert_eq!(tat, before);
    }

    #[test]
    fn the_budget_refills_at_the_rate() {
        let interval = interval_us(10.0);
        let mut tat = None;
        burst_at(0.0, &mut tat, interval, 3, 3);
        // 150 ms later one and a half intervals have passed: one request fits, not two.
        let later = burst_at(150_000.0, &mut tat, interval, 3, 2);
        assert!(later[0].allowed);
        assert_eq!(later[0].remaining, 0);
        assert!(!later[1].allowed);
        assert_eq!(later[1].retry_after, Duration::from_millis(50));
        // After a long idle time the whole burst is back.
        let idle = burst_at(10_000_000.0, &mut tat, interval, 3, 1);
        assert_eq!(idle[0].remaining, 2);
    }

    #[test]
    fn sustained_traffic_at_the_rate_is_never_refused() {
        let interval = interval_us(100.0);
        let mut tat = None;
        for request in 0..1000 {
            let now = f64::from(request) * interval;
            assert!(burst_at(now, &mut tat, interval, 1, 1)[0].allowed, "request {request}");
        }
    }

    #[test]
    fn fractional_intervals_keep_the_rate() {
        // 3/s: T = 333333.3 µs. Over 10 s at most 30 + burst requests pass.
        let interval = interval_us(3.0);
        let mut tat = None;
        let mut allowed = 0;
        for tick in 0..10_000 {
            let now = f64::from(tick) * 1000.0;
            allowed += burst_at(now, &mut tat, interval, 2, 1).iter().filter(|o| o.allowed).count();
        }
        assert!((30..=32).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_lease_takes_as_many_cells_as_fit_and_gives_back_exactly() {
        // 10/s, burst 5: an idle bucket grants a lease of 3, then the 2 left of 4 wanted.
        let interval = interval_us(10.0);
        let none = GiveBack::NONE;
        let (first, granted, tat) = step_cells(0.0, None, interval, 5, 3, none);
        assert_eq!((first.allowed, granted, first.remaining), (true, 3, 2));
        let (second, granted, tat) = step_cells(0.0, tat, interval, 5, 4, none);
        assert_eq!((second.allowed, granted, second.remaining), (true, 2, 0));
        let (empty, granted, unchanged) = step_cells(0.0, tat, interval, 5, 4, none);
        assert_eq!((empty.allowed, granted, unchanged), (false, 0, None));
        // Giving back 2 unused cells of the second grant (its charge ends at `tat`) makes them
        // available again, and is stored even when the request that carries them is refused.
        let two = GiveBack { cells: 2, charge_end_us: tat.unwrap() as i64 };
        let (refused, _, kept) = step_cells(0.0, tat, interval, 1, 1, two);
        assert!(!refused.allowed);
        assert_eq!(kept, Some(tat.unwrap() - 2.0 * interval));
        let (again, granted, _) = step_cells(0.0, tat, interval, 5, 4, two);
        assert_eq!((again.allowed, granted), (true, 2));
        // One cell wanted and none given back: the plain step.
        for now in [0.0, 50_000.0, 1e9] {
            let (plain, stored) = step(now, tat, interval, 5);
            let (cells, granted, stored_cells) = step_cells(now, tat, interval, 5, 1, none);
            assert_eq!((plain, stored), (cells, stored_cells));
            assert_eq!(granted, u32::from(plain.allowed));
        }
    }

    /// An attack on the leases (two instances, 2026-12-07): instance A held 12 unused cells
    /// of a lease while the bucket refilled; B then took the whole burst, and A's give-back
    /// moved `tat` back 12 intervals, so the subject got 112 requests against a burst of 100.
    /// Cells whose charge has decayed give nothing back; a partly decayed charge gives back
    /// what is left of it.
    #[test]
    fn cells_given_back_after_their_charge_decayed_free_nothing() {
        // 50/s (T = 20 ms), burst 100.
        let interval = interval_us(50.0);
        let none = GiveBack::NONE;
        let (_, granted, lease_tat) = step_cells(0.0, None, interval, 100, 12, none);
        assert_eq!(granted, 12);
        let lease = GiveBack { cells: 12, charge_end_us: lease_tat.unwrap() as i64 };
        // One second later the bucket is full again; B takes all of it.
        let (_, granted, tat) = step_cells(1e6, None, interval, 100, 100, none);
        assert_eq!(granted, 100);
        let (outcome, granted, stored) = step_cells(1.021e6, tat, interval, 100, 12, lease);
        assert_eq!((outcome.allowed, granted), (true, 1), "one interval passed, nothing else");
        assert_eq!(stored, Some(tat.unwrap() + interval));
        // Given back while 100 ms of its 240 ms charge are left: 5 intervals come back, beside
        // the 7 that 140 ms refilled (12 cells, not 7 + 12).
        let (_, _, tat) = step_cells(0.0, None, interval, 100, 100, none);
        let lease = GiveBack { cells: 12, charge_end_us: 240_000 };
        let (_, granted, _) = step_cells(140_000.0, tat, interval, 100, 100, lease);
        assert_eq!(granted, 12);
    }

    #[test]
    fn script_reply_is_read_without_panics() {
        let outcome = Outcome::from_reply((0, -1, 250, 1000));
        assert!(!outcome.allowed);
        assert_eq!(outcome.remaining, 0);
        assert_eq!(outcome.retry_after, Duration::from_millis(250));
    }
}
