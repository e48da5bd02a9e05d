//! The revocation list: `{ns}:auth:revoked:{jti}` in Redis with a TTL equal to the token's
//! remaining life, indexed by the sorted set `{ns}:auth:revocation_list` (`jti` scored by the
//! token's `exp`), shared by every instance, and an in-process view of it, so that checking a
//! token costs no Redis round trip.
//!
//! - Revoking writes the key, adds the `jti` to the list (dropping entries already expired)
//!   and publishes it on `{ns}:auth:revocations`, in one transaction; the revoking instance
//!   also keeps it in process (refused there at once, even while Redis is unreachable).
//! - A follower task per instance subscribes to the channel first, then reads the whole list,
//!   then applies each published `jti` as it arrives, and re-reads the list every
//!   `auth.revocation_resync_ms` (catching a message lost on a subscription that broke
//!   silently, and entries written by other programs). A re-read is one `ZRANGEBYSCORE` of the
//!   list: its cost follows the revocations, not the keyspace. (It used to be a `SCAN` of the
//!   whole keyspace every period: at 100,000 items and 30,000 users about 160 calls of 1 to 15
//!   ms every 2 s, during which every other client of Redis, the rate limiter's call on each
//!   request among them, waited.) After a lost subscription it reconnects, subscribes and
//!   reads again before the view is trusted again. A re-read that fails or outlasts its
//!   deadline (1 s, or `http.redis_timeout_ms` if longer) leaves the subscription up and is
//!   tried again after 100 ms, backing off (doubling) to a period. (It used to drop the
//!   subscription: behind a flush's transaction, which held a 100,000-item catalogue's Redis
//!   for 2 to 3.5 s under ingest, the view then went untrusted, every token check asked Redis
//!   and waited up to `http.redis_timeout_ms`, and the new subscription scanned the keyspace
//!   again.)
//! - The first read after each subscription also scans the keyspace for `revoked:{jti}` keys
//!   that are not on the list (written by a version before the list, or by a program that
//!   wrote only the key) and adds them to it, with their remaining time to live.
//! - The view is trusted while the subscription is up and the last read is at most two
//!   periods old; otherwise each check asks Redis (`EXISTS`), as before the view existed,
//!   except while the follower's last read failed (Redis unreachable, or busy past the read's
//!   deadline): then the view as last read and this instance's own revocations decide without
//!   a Redis call (a `jti` on neither is [`RevocationCheck::ValidLocalOnly`]), which is what a
//!   failed `EXISTS` would have answered after waiting out `http.redis_timeout_ms`.
//!
//! So a revoked `jti` is refused by an instance that reaches Redis within the pub/sub delivery
//! time (milliseconds) while its subscription is up, and in any case within two periods of
//! the revoke (default 2 x 2,000 ms).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::store::{AsyncRedis, Keys, RedisUnavailable};

/// Keys read per `SCAN` call of a full read.
const SCAN_COUNT: usize = 1_000;
/// Longest wait between two subscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait before reading the list again after a failed read (doubling up to a period).
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The revocation list and this instance's view of it.
#[derive(Debug)]
pub struct Revocations {
    redis: AsyncRedis,
    keys: Keys,
    /// Revoked through this instance: jti to `exp` (s since the epoch), pruned on insert.
    local: Mutex<HashMap<String, u64>>,
    view: Arc<View>,
    resync: Duration,
}

/// The follower's copy of the list in Redis.
#[derive(Debug, Default)]
struct View {
    jtis: RwLock<HashSet<String>>,
    /// Until when the view may answer alone: set by each full read under a live subscription,
    /// cleared when the subscription is lost.
    trusted_until: Mutex<Option<Instant>>,
    /// The follower's last read failed (Redis unreachable, or busy past the deadline) and no
    /// read has succeeded since.
    failing: std::sync::atomic::AtomicBool,
}

impl View {
    fn trusted(&self) -> bool {
        let until = *self.trusted_until.lock().unwrap_or_else(PoisonError::into_inner);
        until.is_some_and(|until| Instant::now() < until)
    }

    fn distrust(&self) {
        *self.trusted_until.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn contains(&self, jti: &str) -> bool {
        self.jtis.read().unwrap_or_else(PoisonError::into_inner).contains(jti)
    }

    fn insert(&self, jti: String) {
        self.jtis.write().unwrap_or_else(PoisonError::into_inner).insert(jti);
    }

    fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_failing(&self, failing: bool) {
        self.failing.store(failing, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a `jti` is revoked, and how sure we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationCheck {
    /// On the list (in the view, in Redis, or revoked through this instance).
    Revoked,
    /// Not on the list (by the trusted view, or by Redis).
    Valid,
    /// The view is not trusted, Redis is unreachable and the token was not revoked through
    /// this instance: accepted, exposure bounded by the token's remaining life.
    ValidLocalOnly,
}

impl Revocations {
    /// The list over `redis`, re-read in full every `resync`. The follower starts with
    /// [`Revocations::spawn_follower`]; until its first full read every check asks Redis.
    pub fn new(redis: AsyncRedis, resync: Duration) -> Self {
        Self {
            keys: redis.keys().clone(),
            redis,
            local: Mutex::new(HashMap::new()),
            view: Arc::new(View::default()),
            resync,
        }
    }

    /// Starts the follower on the current tokio runtime (it ends with the runtime).
    pub fn spawn_follower(&self) {
        let follower = Follower {
            redis: self.redis.with_timeout(self.redis.timeout().max(Duration::from_secs(1))),
            keys: self.keys.clone(),
            view: Arc::clone(&self.view),
            resync: self.resync,
        };
        tokio::spawn(follower.run());
    }

    /// Whether checks are answered by the in-process view alone right now.
    pub fn view_is_trusted(&self) -> bool {
        self.view.trusted()
    }

    /// Puts `jti` (expiring at `exp`) on the list until `exp` and announces it to every
    /// instance. A token already expired needs no entry.
    ///
    /// # Errors
    /// [`RedisUnavailable`]: the token is then revoked on this instance only.
    pub async fn revoke(&self, jti: &str, exp: u64, now_s: u64) -> Result<(), RedisUnavailable> {
        if exp <= now_s {
            return Ok(());
        }
        {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            local.retain(|_, expires| *expires > now_s);
            local.insert(jti.to_owned(), exp);
        }
        let list = self.keys.auth_revocation_list();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.keys.auth_revoked(jti))
            .arg(1)
            .arg("EX")
            .arg(exp - now_s)
            .ignore()
            .cmd("ZADD")
            .arg(&list)
            .arg(exp)
            .arg(jti)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&list)
            .arg("-inf")
            .arg(now_s)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.keys.auth_revocations_channel())
            .arg(jti)
            .ignore();
        self.redis.pipeline::<()>("auth_revoke", &pipe).await
    }

    /// No Redis call while the view is trusted, nor while the follower's last read failed;
    /// one `EXISTS` otherwise.
    pub async fn check(&self, jti: &str) -> RevocationCheck {
        if self.local.lock().unwrap_or_else(PoisonError::into_inner).contains_key(jti) {
            return RevocationCheck::Revoked;
        }
        if self.view.trusted() {
            return if self.view.contains(jti) {
                RevocationCheck::Revoked
            } else {
                RevocationCheck::Valid
            };
        }
        if self.view.failing() {
            // The follower's last read failed: an `EXISTS` now would most likely wait out its
            // deadline and fail too (a Redis busy behind a flush's transaction, or frozen).
            // The view as last read and this instance's list decide at once, as they would
            // after that failure; the follower reads again within a period.
            return if self.view.contains(jti) {
                RevocationCheck::Revoked
            } else {
                RevocationCheck::ValidLocalOnly
            };
        }
        let command = redis::cmd("EXISTS").arg(self.keys.auth_revoked(jti)).to_owned();
        match self.redis.query::<bool>("auth_revoked", &command).await {
            Ok(true) => RevocationCheck::Revoked,
            Ok(false) => RevocationCheck::Valid,
            Err(error) => {
                tracing::debug!(error = %error, "revocation list unreachable, local list only");
                RevocationCheck::ValidLocalOnly
            }
        }
    }
}

struct Follower {
    redis: AsyncRedis,
    keys: Keys,
    view: Arc<View>,
    resync: Duration,
}

impl Follower {
    async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let ended = self.follow().await;
            self.view.distrust();
            // Until the next subscription's first read, checks ask Redis (`EXISTS`), as
            // before the view existed.
            self.view.set_failing(false);
            tracing::debug!(error = %ended, "revocation subscription lost; checks ask redis");
            if started.elapsed() > MAX_BACKOFF {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Subscribes, reads the whole list, then applies messages and periodic full reads until
    /// something fails; returns why.
    async fn follow(&self) -> String {
        let mut pubsub = match self.redis.pubsub().await {
            Ok(pubsub) => pubsub,
            Err(error) => return error.to_string(),
        };
        if let Err(error) = pubsub.subscribe(self.keys.auth_revocations_channel()).await {
            return error.to_string();
        }
        let mut messages = pubsub.into_on_message();
        let mut resync = tokio::time::interval(self.resync);
        // A read that took longer than a period is followed by one read, not a burst.
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scanned = false;
        let mut retry = RETRY_FIRST;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return "subscription closed".to_owned() };
                    if let Ok(jti) = message.get_payload::<String>() {
                        self.view.insert(jti);
                    }
                }
                _ = resync.tick() => {
                    // A read that fails (Redis busy past the deadline, as behind a flush's
                    // transaction, or unreachable) leaves the subscription up: the view stays
                    // trusted until two periods after its last read, as documented, and is
                    // read again soon. Only a lost subscription distrusts it at once.
                    match self.read(&mut scanned).await {
                        Ok(()) => {
                            self.view.set_failing(false);
                            retry = RETRY_FIRST;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "revocation list re-read failed; trying again");
                            self.view.set_failing(true);
                            // Sooner than a period, backing off: trusted again soon after
                            // Redis answers, without a busy loop while it does not.
                            resync.reset_after(retry.min(self.resync));
                            retry = (retry * 2).min(self.resync);
                        }
                    }
                }
            }
        }
    }

    /// The first read of a subscription scans for unlisted keys once (until a scan succeeds),
    /// then every read replaces the view with the list.
    async fn read(&self, scanned: &mut bool) -> Result<(), RedisUnavailable> {
        if !*scanned {
            self.list_unlisted_keys().await?;
            *scanned = true;
        }
        self.read_all().await
    }

    /// Replaces the view with the list in Redis (entries whose token expired are left out),
    /// then trusts it for two periods.
    async fn read_all(&self) -> Result<(), RedisUnavailable> {
        let command = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.auth_revocation_list())
            .arg(format!("({}", super::now_s()))
            .arg("+inf")
            .to_owned();
        let jtis: Vec<String> = self.redis.query("auth_revocations_read", &command).await?;
        // Messages that arrived during the read were for entries already written (ZADD comes
        // before PUBLISH in one transaction), so the read holds them too.
        *self.view.jtis.write().unwrap_or_else(PoisonError::into_inner) =
            jtis.into_iter().collect();
        *self.view.trusted_until.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + 2 * self.resync);
        Ok(())
    }

    /// Adds every `revoked:{jti}` key that is not on the list to it, scored by when the key
    /// expires (`+inf` for a key without a time to live): one `SCAN` of the keyspace, once per
    /// subscription.
    async fn list_unlisted_keys(&self) -> Result<(), RedisUnavailable> {
        let prefix = self.keys.auth_revoked("");
        let pattern = format!("{}*", escape_glob(&prefix));
        let mut jtis = HashSet::new();
        let mut cursor = 0u64;
        loop {
            let command = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .to_owned();
            let (next, keys): (u64, Vec<String>) =
                self.redis.query("auth_revocations_scan", &command).await?;
            jtis.extend(keys.iter().filter_map(|key| key.strip_prefix(&prefix)).map(str::to_owned));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if jtis.is_empty() {
            return Ok(());
        }
        let jtis: Vec<String> = jtis.into_iter().collect();
        let list = self.keys.auth_revocation_list();
        let mut lookup = redis::pipe();
        for jti in &jtis {
            lookup.cmd("ZSCORE").arg(&list).arg(jti);
            lookup.cmd("PTTL").arg(self.keys.auth_revoked(jti));
        }
        let found: Vec<(Option<f64>, i64)> = {
            let flat: Vec<redis::Value> =
                self.redis.pipeline("auth_revocations_scan", &lookup).await?;
            flat.chunks(2)
                .map(|pair| {
                    let score = redis::from_redis_value(pair[0].clone()).ok().flatten();
                    let ttl = redis::from_redis_value(pair[1].clone()).unwrap_or(-2);
                    (score, ttl)
                })
                .collect()
        };
        let now_ms = super::now_s().saturating_mul(1_000);
        let mut add = redis::pipe();
        let mut unlisted = 0;
        for (jti, (score, ttl_ms)) in jtis.iter().zip(found) {
            let expires = match (score, ttl_ms) {
                (Some(_), _) | (None, -2) => continue,
                (None, -1) => "+inf".to_owned(),
                (None, ttl_ms) => (now_ms + ttl_ms.max(0) as u64).div_ceil(1_000).to_string(),
            };
            add.cmd("ZADD").arg(&list).arg("NX").arg(expires).arg(jti).ignore();
            unlisted += 1;
        }
        if unlisted > 0 {
            tracing::info!(unlisted, "revoked tokens' keys added to the revocation list");
            self.redis.pipeline::<()>("auth_revocations_scan", &add).await?;
        }
        Ok(())
    }
}

/// `text` with Redis glob metacharacters escaped, for a `MATCH` pattern.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::escape_glob;

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob("es:auth:revoked:"), "es:auth:revoked:");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
