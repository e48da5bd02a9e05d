//! What a flush writes, and how it is cut into transactions of bounded size.
//!
//! A flush writes only what changed: each changed user's hash, the newest entries of its seen
//! list (an idempotent remove-append-trim, [`SEEN_APPEND`]), each changed item's hash (one
//! `HSET` with every field), `ZADD` for items new to the catalogue, the changed slots of the
//! negative pool (`SETRANGE`), the counters of `{ns}:meta`, and the progress. The model
//! configuration is written once (the first flush of a process that found no model, and every
//! rewrite), not with every flush.
//!
//! **Bounded transactions** (issue 9, item 2). A flush of more than `max_entities` users and
//! items (after a long Redis outage) is cut into chunks. Every chunk but the last is written,
//! in its own epoch-checked transaction, to *staging* keys private to this process
//! (`{ns}:staging:{token}:{key}`, with a one-day TTL, their names in the set
//! `{ns}:staging:{token}`), which no reader looks at. The last transaction writes its own chunk
//! in place, moves every staged key onto its real name ([`PROMOTE_STAGED`], server side), and
//! writes meta, progress and the epoch. So the state becomes visible together with the progress
//! that covers it, in one `MULTI`/`EXEC`, whose size is bounded by `max_entities` whatever the
//! backlog: a crash between the transactions leaves only staging keys (they expire, and a later
//! flush stages under another token), never new state under old progress.

use redis::Pipeline;

use super::codec::encode_vector;
use super::{Keys, StoredMeta, SCHEMA_VERSION};
use crate::ingest::StoredProgress;
use crate::model::{ItemState, SeenWrite, UserState};

/// Seconds a staging key lives when the flush that staged it never finishes.
const STAGING_TTL_S: u64 = 86_400;

/// Appends the newest seen entries (ARGV[2..], oldest first) to the list `KEYS[1]`, removing
/// their earlier occurrences first, then trims the list to its bound (ARGV[1]). Applying it
/// twice gives the same list.
pub const SEEN_APPEND: &str = "\
for i = 2, #ARGV do redis.call('LREM', KEYS[1], 0, ARGV[i]) end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
return 0";

/// Moves every key named in the set `KEYS[1]` from its staging name (ARGV[1] .. name) onto
/// its name, clearing the staging TTL; a name without a staged key is deleted (an empty seen
/// list). Then deletes the set.
pub const PROMOTE_STAGED: &str = "\
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local staged = ARGV[1] .. key
  if redis.call('EXISTS', staged) == 1 then
    redis.call('RENAME', staged, key)
    redis.call('PERSIST', key)
  else
    redis.call('DEL', key)
  end
end
redis.call('DEL', KEYS[1])
return 0";

/// One changed user: its state and what to write of its seen list.
#[derive(Debug, Clone)]
pub struct UserWrite {
    /// The user's state.
    pub state: UserState,
    /// What to write of `state.seen`.
    pub seen: SeenWrite,
}

/// What a flush writes of the negative-sampling pool (`{ns}:negative_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolWrite {
    /// The whole pool.
    Whole,
    /// The `n` slots written last (before the pool's next write position, circularly).
    Newest(usize),
}

/// One flush: everything changed since the previous one, written atomically.
#[derive(Debug, Clone)]
pub struct FlushBatch {
    /// Changed users.
    pub users: Vec<UserWrite>,
    /// Changed items.
    pub items: Vec<ItemState>,
    /// Items with a row at or above this one are new to the catalogue (`ZADD {ns}:items`).
    pub new_items_from: u32,
    /// Model-wide fields.
    pub meta: StoredMeta,
    /// Whether to write the model configuration (`schema_version`, `dim`, `seed`,
    /// `model_config`): once per namespace and process, and in every rewrite.
    pub write_config: bool,
    /// What to write of the negative pool.
    pub pool: PoolWrite,
    /// Topic the progress belongs to.
    pub topic: String,
    /// Progress of every assigned partition.
    pub progress: Vec<(i32, StoredProgress)>,
}

/// The transactions of one flush, in order, each an atomic pipeline without the epoch
/// commands: every one but the last writes staging keys only; the last writes in place,
/// promotes the staged keys, and writes meta and progress. One transaction when the batch holds
/// at most `max_entities` users and items. Built one at a time as the caller takes them, so a
/// large flush (the first after a catch-up writes every new user) holds one transaction's
/// commands in memory, not all of them.
pub fn transactions<'a>(
    keys: &'a Keys,
    batch: &'a FlushBatch,
    seen_bound: usize,
    max_entities: usize,
    stage_token: &str,
) -> impl Iterator<Item = Pipeline> + 'a {
    let max_entities = max_entities.max(1);
    let entities = batch.users.len() + batch.items.len();
    let staged_chunks = entities.saturating_sub(1) / max_entities;
    let staging =
        Staging { prefix: keys.staging_prefix(stage_token), set: keys.staging(stage_token) };
    let mut users = batch.users.iter();
    let mut items = batch.items.iter();
    let mut built = 0;
    std::iter::from_fn(move || {
        if built > staged_chunks {
            return None;
        }
        built += 1;
        if built <= staged_chunks {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let mut staged_names = Vec::new();
            for _ in 0..max_entities {
                if let Some(user) = users.next() {
                    stage_user(&mut pipe, keys, &staging, user, &mut staged_names);
                } else if let Some(item) = items.next() {
                    let name = keys.item(&item.id);
                    let staged = staging.name(&name);
                    pipe.cmd("DEL").arg(&staged).ignore();
                    item_hset(&mut pipe, &staged, item);
                    pipe.cmd("EXPIRE").arg(&staged).arg(STAGING_TTL_S).ignore();
                    staged_names.push(name);
                }
            }
            pipe.cmd("SADD").arg(&staging.set).arg(&staged_names).ignore();
            pipe.cmd("EXPIRE").arg(&staging.set).arg(STAGING_TTL_S).ignore();
            return Some(pipe);
        }
        let mut last = redis::pipe();
        last.atomic();
        for user in users.by_ref() {
            user_in_place(&mut last, keys, user, seen_bound);
        }
        for item in items.by_ref() {
            item_hset(&mut last, &keys.item(&item.id), item);
        }
        if staged_chunks > 0 {
            last.cmd("EVAL")
                .arg(PROMOTE_STAGED)
                .arg(1)
                .arg(&staging.set)
                .arg(&staging.prefix)
                .ignore();
        }
        catalogue(&mut last, keys, batch);
        meta(&mut last, keys, batch);
        if !batch.progress.is_empty() {
            let mut progress = redis::cmd("HSET");
            progress.arg(keys.progress(&batch.topic));
            for (partition, stored) in &batch.progress {
                progress.arg(partition).arg(serde_json::to_string(stored).unwrap_or_default());
            }
            last.add_command(progress).ignore();
        }
        Some(last)
    })
}

struct Staging {
    prefix: String,
    set: String,
}

impl Staging {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn user_hset(pipe: &mut Pipeline, key: &str, user: &UserState) {
    pipe.cmd("HSET")
        .arg(key)
        .arg("vector")
        .arg(encode_vector(&user.vector))
        .arg("events")
        .arg(user.events)
        .arg("last_ts")
        .arg(user.last_ts)
        .arg("adagrad")
        .arg(user.adagrad.to_string())
        .ignore();
}

/// A user written where readers see it: the hash, and the seen list's changed tail (or all of
/// it, then dropping the older layout's `seen` field).
fn user_in_place(pipe: &mut Pipeline, keys: &Keys, user: &UserWrite, seen_bound: usize) {
    let key = keys.user(&user.state.id);
    user_hset(pipe, &key, &user.state);
    let seen_key = keys.seen(&user.state.id);
    let seen = &user.state.seen;
    match user.seen {
        SeenWrite::Newest(0) => {}
        // Each appended entry costs the server one scan of the list (LREM): past a quarter
        // of the list, sending it whole is cheaper for both sides (bulk ingest).
        SeenWrite::Newest(changed) if changed * 4 <= seen.len() => {
            pipe.cmd("EVAL")
                .arg(SEEN_APPEND)
                .arg(1)
                .arg(&seen_key)
                .arg(seen_bound.max(1))
                .arg(&seen[seen.len() - changed..])
                .ignore();
        }
        SeenWrite::Newest(_) | SeenWrite::Whole => {
            pipe.cmd("DEL").arg(&seen_key).ignore();
            if !seen.is_empty() {
                pipe.cmd("RPUSH").arg(&seen_key).arg(seen).ignore();
            }
            pipe.cmd("HDEL").arg(&key).arg("seen").ignore();
        }
    }
}

/// A user written under staging names: the whole hash and the whole seen list.
fn stage_user(
    pipe: &mut Pipeline,
    keys: &Keys,
    staging: &Staging,
    user: &UserWrite,
    staged_names: &mut Vec<String>,
) {
    let name = keys.user(&user.state.id);
    let staged = staging.name(&name);
    pipe.cmd("DEL").arg(&staged).ignore();
    user_hset(pipe, &staged, &user.state);
    pipe.cmd("EXPIRE").arg(&staged).arg(STAGING_TTL_S).ignore();
    staged_names.push(name);
    let seen_name = keys.seen(&user.state.id);
    let staged_seen = staging.name(&seen_name);
    pipe.cmd("DEL").arg(&staged_seen).ignore();
    if !user.state.seen.is_empty() {
        pipe.cmd("RPUSH").arg(&staged_seen).arg(&user.state.seen).ignore();
        pipe.cmd("EXPIRE").arg(&staged_seen).arg(STAGING_TTL_S).ignore();
    }
    // Named even when empty: promotion then deletes the stored list.
    staged_names.push(seen_name);
}

fn item_hset(pipe: &mut Pipeline, key: &str, item: &ItemState) {
    pipe.cmd("HSET")
        .arg(key)
        .arg("vector")
        .arg(encode_vector(&item.vector))
        .arg("context")
        .arg(encode_vector(&item.context))
        .arg("bias")
        .arg(item.bias.to_string())
        .arg("row")
        .arg(item.row)
        .arg("events")
        .arg(item.events)
        .arg("last_ts")
        .arg(item.last_ts)
        .arg("popularity_log")
        .arg(item.popularity_log.to_string())
        .arg("adagrad")
        .arg(item.adagrad.to_string())
        .arg("context_adagrad")
        .arg(item.context_adagrad.to_string())
        .ignore();
}

/// `SADD {ns}:users` for the changed users, `ZADD {ns}:items` for items new to the catalogue.
fn catalogue(pipe: &mut Pipeline, keys: &Keys, batch: &FlushBatch) {
    if !batch.users.is_empty() {
        pipe.cmd("SADD")
            .arg(keys.users())
            .arg(batch.users.iter().map(|user| &user.state.id).collect::<Vec<_>>())
            .ignore();
    }
    let mut new_items = batch.items.iter().filter(|item| item.row >= batch.new_items_from);
    if let Some(first) = new_items.next() {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(keys.items()).arg(first.row).arg(&first.id);
        for item in new_items {
            zadd.arg(item.row).arg(&item.id);
        }
        pipe.add_command(zadd).ignore();
    }
}

/// The counters of `{ns}:meta`, the model configuration when asked, and the negative pool.
fn meta(pipe: &mut Pipeline, keys: &Keys, batch: &FlushBatch) {
    let meta = &batch.meta;
    let mut hset = redis::cmd("HSET");
    hset.arg(keys.meta())
        .arg("events_applied")
        .arg(meta.events_applied)
        .arg("closed_until")
        .arg(meta.closed_until)
        .arg("negative_pool_next")
        .arg(meta.negative_pool.1);
    if batch.write_config {
        hset.arg("schema_version")
            .arg(SCHEMA_VERSION)
            .arg("dim")
            .arg(meta.dim)
            .arg("seed")
            .arg(meta.model_config.seed)
            .arg("model_config")
            .arg(serde_json::to_string(&meta.model_config).unwrap_or_default());
    }
    pipe.add_command(hset).ignore();
    let pool = &meta.negative_pool.0;
    let key = keys.negative_pool();
    match pool_ranges(pool.len(), meta.negative_pool.1, batch.pool) {
        None => {
            let bytes: Vec<u8> = pool.iter().flat_map(|row| row.to_le_bytes()).collect();
            pipe.cmd("DEL").arg(&key).ignore();
            if !bytes.is_empty() {
                pipe.cmd("SET").arg(&key).arg(bytes).ignore();
            }
            // The older layout kept the pool in the meta hash.
            pipe.cmd("HDEL").arg(keys.meta()).arg("negative_pool").ignore();
        }
        Some(ranges) => {
            for (start, end) in ranges {
                let bytes: Vec<u8> =
                    pool[start..end].iter().flat_map(|row| row.to_le_bytes()).collect();
                pipe.cmd("SETRANGE").arg(&key).arg(start * 4).arg(bytes).ignore();
            }
        }
    }
}

/// The slot ranges of the pool a [`PoolWrite::Newest`] covers (at most two: the pool is a ring
/// written at `next`), or `None` for a whole write.
fn pool_ranges(len: usize, next: usize, write: PoolWrite) -> Option<Vec<(usize, usize)>> {
    let PoolWrite::Newest(changed) = write else { return None };
    if changed >= len {
        return None;
    }
    // The last slot written is just before `next`; a full ring wraps to 0.
    let end = if next == 0 || next > len { len } else { next };
    Some(if changed == 0 {
        Vec::new()
    } else if changed <= end {
        vec![(end - changed, end)]
    } else {
        vec![(0, end), (len - (changed - end), len)]
    })
}

#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;
