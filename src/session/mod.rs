//! Stateful sessions: server-side session state in Redis with a TTL, keyed by session id.
//!
//! A session belongs to one user. Its recent events (item id and weight, newest last, at most
//! `session.max_events`) are kept in Redis; at ranking time they fold into a short-term
//! **session vector**
//!
//! ```text
//! s = normalise( Σ_j decay^(n-1-j) · w_j · v̂_{item_j} )      (j = 0 oldest … n-1 newest)
//! ```
//!
//! (`v̂` the unit item vector, items unknown to the model skipped), which is blended into the
//! user's query: `q = u + λ·‖u‖·s`, with `λ` = `session.blend_weight` (or the A/B variant's
//! `session_weight`). The index answers `q` like any user vector.
//!
//! Concurrency limit: at most `session.max_per_user` live sessions per user; creating one more
//! either evicts the oldest (`on_limit = "evict_oldest"`, default) or is refused
//! (`"refuse"`). Creation and eviction are one Lua script, so concurrent creations on several
//! instances cannot exceed the limit.
//!
//! Keys: `{ns}:session:{id}` (hash: `user_id`, `created_ms`), `{ns}:session:{id}:events`
//! (list of `item_id\tweight`), `{ns}:user_sessions:{user_id}` (sorted set of session ids by
//! creation time, ms). Every key carries the session TTL, refreshed on each event.

use std::collections::HashMap;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::model::{dot, Model};
use crate::store::{AsyncRedis, RedisUnavailable};

/// What to do when a user already has `max_per_user` sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Delete the oldest session to make room.
    EvictOldest,
    /// Refuse the new session (409 `session_limit`).
    Refuse,
}

/// Session settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Session lifetime after its last event, seconds (default 1800).
    pub ttl_s: u64,
    /// Live sessions per user (default 5, >= 1).
    pub max_per_user: u32,
    /// At the limit: `evict_oldest` (default) or `refuse`.
    pub on_limit: OnLimit,
    /// Recent events kept per session (default 50, >= 1).
    pub max_events: usize,
    /// Weight of each older event relative to the next newer one, in (0, 1] (default 0.8).
    pub decay: f32,
    /// λ: weight of the session vector in the blended query, in [0, 1] (default 0.3).
    pub blend_weight: f32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ttl_s: 1800,
            max_per_user: 5,
            on_limit: OnLimit::EvictOldest,
            max_events: 50,
            decay: 0.8,
            blend_weight: 0.3,
        }
    }
}

/// A session's stored fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    /// Session id (32 hex digits, 128 random bits).
    pub session_id: String,
    /// Its user.
    pub user_id: String,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Recent events, oldest first: (item id, weight).
    pub events: Vec<(String, f32)>,
}

/// Result of a creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Created; sessions evicted to make room.
    Created { session_id: String, evicted: Vec<String> },
    /// Refused: the user has this many live sessions.
    LimitReached { live: u64 },
}

/// Why a session call failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Redis is unavailable.
    #[error(transparent)]
    Redis(#[from] RedisUnavailable),
    /// A stored value is malformed.
    #[error("session {0}: malformed stored state")]
    Corrupt(String),
}

// KEYS[1] user's session set, KEYS[2] the new session hash.
// ARGV: 1 session id, 2 now ms, 3 ttl s, 4 max per user, 5 policy, 6 user id, 7 session key
// prefix ("{ns}:session:").
// The set is scored by creation ms, made strictly increasing per user: two sessions created in
// the same millisecond would otherwise tie, and ZPOPMIN would break the tie by the random id.
const CREATE: &str = r"
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(live) do
  if redis.call('EXISTS', ARGV[7] .. id) == 0 then redis.call('ZREM', KEYS[1], id) end
end
local score = tonumber(ARGV[2])
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 1 end
local count = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[4])
local evicted = {}
if count >= limit then
  if ARGV[5] == 'refuse' then return {0, count} end
  while count >= limit do
    local oldest = redis.call('ZPOPMIN', KEYS[1])
    redis.call('DEL', ARGV[7] .. oldest[1], ARGV[7] .. oldest[1] .. ':events')
    table.insert(evicted, oldest[1])
    count = count - 1
  end
end
redis.call('HSET', KEYS[2], 'user_id', ARGV[6], 'created_ms', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local reply = {1, count + 1}
for _, id in ipairs(evicted) do table.insert(reply, id) end
return reply
";

/// Session operations on Redis.
#[derive(Debug)]
pub struct Sessions {
    redis: AsyncRedis,
    config: SessionConfig,
    create: redis::Script,
}

/// A new random session id: 128 bits from the OS-seeded CSPRNG, as 32 hex digits.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` has the shape of a session id (so it is safe inside a key).
pub fn valid_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Sessions {
    /// Sessions on `redis`.
    pub fn new(redis: AsyncRedis, config: SessionConfig) -> Self {
        Self { redis, config, create: redis::Script::new(CREATE) }
    }

    /// The settings.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    fn key(&self, id: &str) -> String {
        format!("{}:session:{id}", self.redis.keys().prefix())
    }

    fn events_key(&self, id: &str) -> String {
        format!("{}:session:{id}:events", self.redis.keys().prefix())
    }

    fn user_key(&self, user_id: &str) -> String {
        format!("{}:user_sessions:{user_id}", self.redis.keys().prefix())
    }

    /// Creates a session for `user_id`, enforcing the per-user limit atomically.
    ///
    /// # Errors
    /// [`SessionError`] when Redis is unavailable (no session is created then).
    pub async fn create(&self, user_id: &str, now_ms: i64) -> Result<Created, SessionError> {
        let id = new_session_id();
        let policy = match self.config.on_limit {
            OnLimit::EvictOldest => "evict_oldest",
            OnLimit::Refuse => "refuse",
        };
        let prefix = format!("{}:session:", self.redis.keys().prefix());
        let (user_key, key) = (self.user_key(user_id), self.key(&id));
        let (now, ttl, max) = (
            now_ms.to_string(),
            self.config.ttl_s.to_string(),
            self.config.max_per_user.to_string(),
        );
        let reply: Vec<redis::Value> = self
            .redis
            .script(
                "session_create",
                &self.create,
                &[&user_key, &key],
                &[&id, &now, &ttl, &max, policy, user_id, &prefix],
            )
            .await?;
        let int = |value: Option<&redis::Value>| match value {
            Some(redis::Value::Int(n)) => Some(*n),
            _ => None,
        };
        let (Some(created), Some(count)) = (int(reply.first()), int(reply.get(1))) else {
            return Err(SessionError::Corrupt(id));
        };
        if created == 0 {
            return Ok(Created::LimitReached { live: count.max(0) as u64 });
        }
        let evicted = reply
            .iter()
            .skip(2)
            .filter_map(|value| match value {
                redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
                _ => None,
            })
            .collect();
        Ok(Created::Created { session_id: id, evicted })
    }

    /// The session, or `None` when it does not exist (never created, expired, evicted or
    /// deleted).
    ///
    /// # Errors
    /// [`SessionError`].
    pub async fn get(&self, id: &str) -> Result<Option<Session>, SessionError> {
        if !valid_session_id(id) {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(self.key(id)).cmd("LRANGE").arg(self.events_key(id)).arg(0).arg(-1);
        let (fields, events): (HashMap<String, String>, Vec<String>) =
            self.redis.pipeline("session_get", &pipe).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let user_id =
            fields.get("user_id").cloned().ok_or_else(|| SessionError::Corrupt(id.to_owned()))?;
        let created_ms = fields
            .get("created_ms")
            .and_then(|ms| ms.parse().ok())
            .ok_or_else(|| SessionError::Corrupt(id.to_owned()))?;
        let events = events
            .iter()
            .filter_map(|entry| {
                let (item, weight) = entry.split_once('\t')?;
                Some((item.to_owned(), weight.parse().ok()?))
            })
            .collect();
        Ok(Some(Session { session_id: id.to_owned(), user_id, created_ms, events }))
    }

    /// Appends an event to a live session (keeping the newest `max_events`) and refreshes the
    /// TTL of its keys. Returns false when the session does not exist.
    ///
    /// # Errors
    /// [`SessionError`].
    pub async fn record(
        &self,
        session: &Session,
        item_id: &str,
        weight: f32,
    ) -> Result<(), SessionError> {
        let ttl = self.config.ttl_s;
        let keep = self.config.max_events as i64;
        let events_key = self.events_key(&session.session_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("RPUSH")
            .arg(&events_key)
            .arg(format!("{item_id}\t{weight}"))
            .ignore()
            .cmd("LTRIM")
            .arg(&events_key)
            .arg(-keep)
            .arg(-1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&events_key)
            .arg(ttl)
            .ignore()
            .cmd("EXPIRE")
            .arg(self.key(&session.session_id))
            .arg(ttl)
            .ignore()
            .cmd("EXPIRE")
            .arg(self.user_key(&session.user_id))
            .arg(ttl)
            .ignore();
        self.redis.pipeline::<()>("session_record", &pipe).await?;
        Ok(())
    }

    /// Deletes a session. Returns whether it existed.
    ///
    /// # Errors
    /// [`SessionError`].
    pub async fn delete(&self, session: &Session) -> Result<bool, SessionError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.key(&session.session_id))
            .arg(self.events_key(&session.session_id))
            .cmd("ZREM")
            .arg(self.user_key(&session.user_id))
            .arg(&session.session_id)
            .ignore();
        let (deleted,): (u64,) = self.redis.pipeline("session_delete", &pipe).await?;
        Ok(deleted > 0)
    }

    /// Live session ids of a user, oldest first.
    ///
    /// # Errors
    /// [`SessionError`].
    pub async fn list(&self, user_id: &str) -> Result<Vec<String>, SessionError> {
        let ids: Vec<String> = self
            .redis
            .query("session_list", redis::cmd("ZRANGE").arg(self.user_key(user_id)).arg(0).arg(-1))
            .await?;
        Ok(ids)
    }
}

/// The session vector (unit length) of `events`, oldest first, or `None` when no event names
/// an item the model knows.
pub fn session_vector(model: &Model, events: &[(String, f32)], decay: f32) -> Option<Vec<f32>> {
    let mut sum = vec![0.0f32; model.dim()];
    let mut factor = 1.0f32;
    let mut any = false;
    for (item, weight) in events.iter().rev() {
        if let Some(row) = model.item_row(item) {
            let vector = model.item_vector(row);
            let norm = dot(vector, vector).sqrt();
            if norm > 0.0 {
                for (acc, x) in sum.iter_mut().zip(vector) {
                    *acc += factor * weight * x / norm;
                }
                any = true;
            }
        }
        factor *= decay;
    }
    let norm = dot(&sum, &sum).sqrt();
    (any && norm > 0.0).then(|| sum.iter().map(|x| x / norm).collect())
}

/// The blended query `u + λ·‖u‖·s` (`s` unit length).
pub fn blend(user: &[f32], session: &[f32], lambda: f32) -> Vec<f32> {
    let scale = lambda * dot(user, user).sqrt();
    user.iter().zip(session).map(|(u, s)| u + scale * s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_random_lowercase_hex() {
        let (a, b) = (new_session_id(), new_session_id());
        assert!(valid_session_id(&a) && valid_session_id(&b));
        assert_ne!(a, b);
        assert!(!valid_session_id("ABCDEF0123456789abcdef0123456789"));
        assert!(!valid_session_id("x:y"));
    }

    #[test]
    fn blend_keeps_the_user_direction_and_adds_lambda_times_its_norm() {
        let user = [3.0, 4.0];
        let session = [0.0, 1.0];
        assert_eq!(blend(&user, &session, 0.0), vec![3.0, 4.0]);
        assert_eq!(blend(&user, &session, 0.2), vec![3.0, 5.0]);
    }
}
