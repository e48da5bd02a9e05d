//! Admission of client-secret checks at the token endpoint (issue 12.1). An argon2 check holds
//! about 19 MiB and 80 ms of CPU, and anyone can ask for one: without a bound, a flood of
//! wrong secrets grew the process to gigabytes. So:
//!
//! - one global semaphore bounds the checks running at once (`auth.secret_check_concurrency`);
//!   a request waits for a slot at most `auth.secret_check_queue_ms`, then is refused (503);
//! - each slot owns its argon2 memory, allocated on the slot's first use and reused by every
//!   later check ([`crate::auth::clients::Clients::authenticate_with`]), so memory is at most
//!   slots x 19 MiB whatever the load, and no allocator arena keeps freed 19 MiB blocks;
//! - each presented `client_id` has its own budget of checks (GCRA via governor,
//!   `auth.client_checks_per_second`, `auth.client_checks_burst`), checked before queueing
//!   (429). The key is a hash of the presented id, registered or not, so the answer does not
//!   tell registered ids from unknown ones and random ids cost 8 bytes each (at most
//!   [`MAX_TRACKED_CLIENTS`], the idle ones dropped first).

use std::num::NonZeroU32;
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
        Self {
            slots: Arc::new(Semaphore::new(config.secret_check_concurrency.max(1))),
            queue: Duration::from_millis(config.secret_check_queue_ms),
            memory_blocks,
            pool: Arc::new(Mutex::new(Vec::new())),
            per_client: RateLimiter::hashmap(quota),
        }
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
