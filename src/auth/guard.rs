//! Admission of client-secret checks at the token endpoint (issue 12.1). An argon2 check holds
//! about 19 MiB and 80 ms of CPU, and anyone can ask for one: without a bound, a flood of
//! wrong secrets grew the process to gigabytes. So:
//!
//! - one global semaphore bounds the checks running at once (`auth.secret_check_concurrency`);
//!   a request waits for a slot at most `auth.secret_check_queue_ms`, then is refused (503);
//! - each slot owns its argon2 memory, allocated on the slot's first use and reused by every
//!   later check ([`crate::auth::clients::Clients::authenticate_with`]), so memory is at most
//!   slots x 19 MiB whatever the load, and no allocator arena keeps freed 19 MiB blocks;
//! - the checks run on threads of their own, one per slot, at a lower scheduling priority
//!   (`auth.secret_check_nice`, default 10): under a flood the kernel gives the serving
//!   threads the CPU first (Linux CFS weighs nice 10 at about a tenth of nice 0), so the
//!   flood slows token issuance, not ranking. Not tokio's blocking pool: its threads also
//!   take over async workers (`block_in_place`), and a thread's nice value cannot be raised
//!   back without privileges;
//! - each presented `client_id` has its own budget of checks (GCRA via governor,
//!   `auth.client_checks_per_second`, `auth.client_checks_burst`), checked before queueing
//!   (429). The key is a hash of the presented id, registered or not, so the answer does not
//!   tell registered ids from unknown ones and random ids cost 8 bytes each (at most
//!   [`MAX_TRACKED_CLIENTS`], the idle ones dropped first).

use std::num::NonZeroU32;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::AuthConfig;

/// Client ids whose budgets are tracked at once; past it, those whose budget is full again
/// are dropped (they are indistinguishable from new ones).
pub const MAX_TRACKED_CLIENTS: usize = 100_000;

type Memory = Vec<argon2::Block>;

/// A secret check handed to a check thread.
type Job = Box<dyn FnOnce() + Send>;

/// Why a secret check was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The presented `client_id` spent its budget of checks (429 `slow_down`).
    #[error("too many secret checks for this client_id; retry in {} s", retry_after.as_secs().max(1))]
    ClientRate { retry_after: Duration },
    /// No check slot came free within the queue deadline (503 `temporarily_unavailable`).
    #[error("secret checks are saturated; retry shortly")]
    Busy,
}

/// The admission state of one instance's token endpoint.
pub struct SecretChecks {
    slots: Arc<Semaphore>,
    queue: Duration,
    memory_blocks: usize,
    pool: Arc<Mutex<Vec<Memory>>>,
    per_client: RateLimiter<u64, HashMapStateStore<u64>, DefaultClock>,
    jobs: SyncSender<Job>,
}

impl std::fmt::Debug for SecretChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretChecks")
            .field("free_slots", &self.slots.available_permits())
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// An admitted check: its slot and its argon2 memory, both given back on drop.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    memory: Option<Memory>,
    pool: Arc<Mutex<Vec<Memory>>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Slot {
    /// The argon2 memory of this slot.
    pub fn memory(&mut self) -> &mut [argon2::Block] {
        self.memory.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(memory) = self.memory.take() {
            self.pool.lock().unwrap_or_else(PoisonError::into_inner).push(memory);
        }
    }
}

impl SecretChecks {
    /// Admission per `config`, each check needing `memory_blocks` argon2 blocks (the clients'
    /// largest `m`, [`crate::auth::clients::Clients::memory_blocks`]).
    pub fn new(config: &AuthConfig, memory_blocks: usize) -> Self {
        let period = Duration::from_secs_f64(1.0 / config.client_checks_per_second)
            .max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(config.client_checks_burst).unwrap_or(NonZeroU32::MIN));
        let threads = config.secret_check_concurrency.max(1);
        // Admission holds a permit per check, so at most `threads` jobs are ever queued.
        let (jobs, queued) = sync_channel::<Job>(threads);
        let queued = Arc::new(Mutex::new(queued));
        for n in 0..threads {
            let (queued, nice) = (Arc::clone(&queued), config.secret_check_nice);
            let spawned = std::thread::Builder::new()
                .name(format!("secret-check-{n}"))
                .spawn(move || check_thread(&queued, nice));
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start a secret-check thread");
            }
        }
        Self {
            slots: Arc::new(Semaphore::new(threads)),
            queue: Duration::from_millis(config.secret_check_queue_ms),
            memory_blocks,
            pool: Arc::new(Mutex::new(Vec::new())),
            per_client: RateLimiter::hashmap(quota),
            jobs,
        }
    }

    /// Runs `check` with the slot's argon2 memory on a secret-check thread; the slot (its
    /// permit and memory) is given back when the check ends. `None` when the check did not run
    /// to its end (its thread is gone or it panicked).
    pub async fn run<R, F>(&self, mut slot: Slot, check: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut [argon2::Block]) -> R + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = check(slot.memory());
            drop(slot);
            let _ = answer.send(result);
        });
        self.jobs.send(job).ok()?;
        answered.await.ok()
    }

    /// Admits one check for the presented `client_id`: its budget first, then a slot within
    /// the queue deadline.
    ///
    /// # Errors
    /// [`Refused`].
    pub async fn admit(&self, client_id: &str) -> Result<Slot, Refused> {
        if self.per_client.len() >= MAX_TRACKED_CLIENTS {
            self.per_client.retain_recent();
        }
        let key = xxhash_rust::xxh3::xxh3_64(client_id.as_bytes());
        if let Err(not_until) = self.per_client.check_key(&key) {
            let retry_after = not_until.wait_time_from(self.per_client.clock().now());
            return Err(Refused::ClientRate { retry_after });
        }
        let acquire = Arc::clone(&self.slots).acquire_owned();
        let permit = match tokio::time::timeout(self.queue, acquire).await {
            Ok(Ok(permit)) => permit,
            // Timed out, or the semaphore closed (it never is).
            _ => return Err(Refused::Busy),
        };
        let reused = self.pool.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let memory = reused.unwrap_or_else(|| vec![argon2::Block::default(); self.memory_blocks]);
        Ok(Slot { _permit: permit, memory: Some(memory), pool: Arc::clone(&self.pool) })
    }
}

/// A secret-check thread: lowers its own priority to `nice` (Linux: the nice value is per
/// thread, `setpriority(2)` on its thread id), then runs checks until the pool is dropped.
fn check_thread(queued: &Mutex<Receiver<Job>>, nice: i32) {
    lower_priority(nice);
    loop {
        let job = queued.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        // A panicking check drops its answer channel (the request sees `None`) and its slot;
        // the thread goes on with the next.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let thread = Some(rustix::thread::gettid());
    if let Err(error) = rustix::process::setpriority_process(thread, nice) {
        tracing::warn!(%error, nice, "secret checks run at normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(nice: i32) {
    if nice != 0 {
        tracing::warn!(nice, "auth.secret_check_nice applies on Linux only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(concurrency: usize, queue_ms: u64, burst: u32) -> SecretChecks {
        let config = AuthConfig {
            secret_check_concurrency: concurrency,
            secret_check_queue_ms: queue_ms,
            client_checks_per_second: 1.0,
            client_checks_burst: burst,
            ..AuthConfig::default()
        };
        SecretChecks::new(&config, 8)
    }

    #[tokio::test(start_paused = true)]
    async fn slots_bound_the_checks_and_the_queue_has_a_deadline() {
        let checks = checks(2, 100, 100);
        let first = checks.admit("a").await.unwrap();
        let _second = checks.admit("b").await.unwrap();
        assert_eq!(checks.admit("c").await.unwrap_err(), Refused::Busy);
        drop(first);
        let mut third = checks.admit("c").await.unwrap();
        assert_eq!(third.memory().len(), 8);
        // Memory is reused, never more buffers than slots.
        drop(third);
        assert_eq!(checks.pool.lock().unwrap().len(), 1);
    }

    /// The nice value of the calling thread.
    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn checks_run_on_their_own_lower_priority_threads_and_give_their_slot_back() {
        let checks = checks(1, 1_000, 100);
        let here = own_nice();
        let slot = checks.admit("a").await.unwrap();
        let (nice, blocks, thread) = checks
            .run(slot, |memory| {
                let thread = std::thread::current().name().map(str::to_owned);
                (own_nice(), memory.len(), thread)
            })
            .await
            .unwrap();
        // setpriority sets the value itself; a runner already above 10 may not lower it.
        if here <= 10 {
            assert_eq!(nice, 10, "the check ran at the default nice of 10 (here {here})");
        }
        assert_eq!(blocks, 8);
        assert_eq!(thread.as_deref(), Some("secret-check-0"));
        // The slot came back with its memory: the next check is admitted at once.
        assert_eq!(checks.pool.lock().unwrap().len(), 1);
        let slot = checks.admit("b").await.unwrap();
        assert_eq!(checks.run(slot, |memory| memory.len()).await, Some(8));
    }

    #[tokio::test]
    async fn a_check_that_panics_answers_none_and_the_thread_goes_on() {
        let checks = checks(1, 1_000, 100);
        let slot = checks.admit("a").await.unwrap();
        let panicked: Option<()> = checks.run(slot, |_| panic!("a check that fails")).await;
        assert_eq!(panicked, None);
        let slot = checks.admit("a").await.unwrap();
        assert_eq!(checks.run(slot, |memory| memory.len()).await, Some(8));
    }

    #[tokio::test(start_paused = true)]
    async fn each_client_id_has_its_own_budget() {
        let checks = checks(4, 100, 2);
        for _ in 0..2 {
            drop(checks.admit("recs").await.unwrap());
        }
        let Err(Refused::ClientRate { retry_after }) = checks.admit("recs").await else {
            panic!("the third check of recs within a second is refused");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        assert!(checks.admit("other").await.is_ok(), "another client id is not affected");
    }
}
