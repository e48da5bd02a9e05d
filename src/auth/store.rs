//! The auth state in Redis: the revocation list ([`Revocations`], with its in-process view)
//! and refresh tokens with rotation and reuse detection. Key names: [`crate::store::Keys`].

use sha2::{Digest, Sha256};

use super::issue::random_token;
use super::principal::Scopes;
use crate::store::{AsyncRedis, Keys, RedisUnavailable};

pub use super::revocations::{RevocationCheck, Revocations};

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// Valid and unused: it is now used, `next` replaces it.
    Rotated { scopes: Scopes, next: String },
    /// Unknown, expired, or another client's.
    Unknown,
    /// Already used: the whole family is now revoked.
    Reused,
    /// Valid and unused, but the requested scope exceeds the token's grant or the client's
    /// allowed scopes: refused, and the token left unused (a retry without the scope works).
    ScopeExceeded,
    /// Its family was revoked earlier (by a reuse) or expired.
    FamilyRevoked,
}

/// Rotates atomically. KEYS: presented token, its family, the new token. ARGV: ttl_s, family
/// id, client id, `1` when a scope is requested (else `0`), the requested scopes, the client's
/// allowed scopes (space-separated). Everything is checked before anything is written: a
/// request the answer will refuse (here a scope beyond the grant) never consumes the token.
/// The presented token stays (marked used) until its own expiry, so a second use within its
/// life is detected.
const ROTATE: &str = r"
local used = redis.call('HGET', KEYS[1], 'used')
if not used then return {'unknown'} end
if redis.call('HGET', KEYS[1], 'family') ~= ARGV[2] then return {'unknown'} end
if redis.call('HGET', KEYS[1], 'client_id') ~= ARGV[3] then return {'unknown'} end
if redis.call('GET', KEYS[2]) ~= 'active' then return {'revoked'} end
if used ~= '0' then
  redis.call('SET', KEYS[2], 'revoked', 'KEEPTTL')
  return {'reused'}
end
local scope = redis.call('HGET', KEYS[1], 'scope')
if ARGV[4] == '1' then
  local granted, allowed = {}, {}
  for name in string.gmatch(scope, '%S+') do granted[name] = true end
  for name in string.gmatch(ARGV[6], '%S+') do allowed[name] = true end
  for name in string.gmatch(ARGV[5], '%S+') do
    if not (granted[name] and allowed[name]) then return {'scope_exceeded'} end
  end
end
redis.call('HSET', KEYS[1], 'used', '1')
redis.call('HSET', KEYS[3], 'used', '0', 'client_id', ARGV[3], 'scope', scope, 'family', ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {'ok', scope}
";

/// Refresh tokens: `<family>.<256 random bits>`, stored by SHA-256 so that a Redis dump does
/// not hold usable tokens.
#[derive(Debug)]
pub struct RefreshTokens {
    redis: AsyncRedis,
    keys: Keys,
    ttl_s: u64,
    rotate: redis::Script,
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn new_token(family: &str) -> String {
    format!("{family}.{}", random_token(32))
}

impl RefreshTokens {
    /// Refresh tokens living `ttl_s` seconds.
    pub fn new(redis: AsyncRedis, ttl_s: u64) -> Self {
        Self { keys: redis.keys().clone(), redis, ttl_s, rotate: redis::Script::new(ROTATE) }
    }

    /// Starts a new family for `client_id` with `scopes`; returns its first token.
    ///
    /// # Errors
    /// [`RedisUnavailable`].
    pub async fn issue(&self, client_id: &str, scopes: Scopes) -> Result<String, RedisUnavailable> {
        let family = random_token(12);
        let token = new_token(&family);
        let key = self.keys.auth_refresh(&hash(&token));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.keys.auth_family(&family))
            .arg("active")
            .arg("EX")
            .arg(self.ttl_s)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("used")
            .arg("0")
            .arg("client_id")
            .arg(client_id)
            .arg("scope")
            .arg(scopes.to_claim())
            .arg("family")
            .arg(&family)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(self.ttl_s)
            .ignore();
        self.redis.pipeline::<()>("auth_refresh_issue", &pipe).await?;
        Ok(token)
    }

    /// Presents `token` on behalf of `client_id`, asking for `requested` scopes (`None`: the
    /// original grant) of which the client may still have `allowed`: rotates it, or detects
    /// reuse and revokes its family, or refuses a scope beyond the grant without using the
    /// token, in one Lua script.
    ///
    /// # Errors
    /// [`RedisUnavailable`].
    pub async fn rotate(
        &self,
        token: &str,
        client_id: &str,
        requested: Option<Scopes>,
        allowed: Scopes,
    ) -> Result<Rotation, RedisUnavailable> {
        let Some((family, _)) = token.split_once('.') else {
            return Ok(Rotation::Unknown);
        };
        let next = new_token(family);
        let presented = self.keys.auth_refresh(&hash(token));
        let family_key = self.keys.auth_family(family);
        let next_key = self.keys.auth_refresh(&hash(&next));
        let ttl = self.ttl_s.to_string();
        let scope_requested = if requested.is_some() { "1" } else { "0" };
        let requested = requested.unwrap_or_default().to_claim();
        let allowed = allowed.to_claim();
        let reply: Vec<String> = self
            .redis
            .script(
                "auth_refresh_rotate",
                &self.rotate,
                &[&presented, &family_key, &next_key],
                &[&ttl, family, client_id, scope_requested, &requested, &allowed],
            )
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => Rotation::Rotated {
                scopes: Scopes::parse_lenient(reply.get(1).map_or("", String::as_str)),
                next,
            },
            Some("reused") => Rotation::Reused,
            Some("revoked") => Rotation::FamilyRevoked,
            Some("scope_exceeded") => Rotation::ScopeExceeded,
            _ => Rotation::Unknown,
        })
    }
}
