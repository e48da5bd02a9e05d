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
use crate::model::{ItemDelta, ItemState, SeenWrite, UserState};

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

/// Writes pool slots from `ARGV[1]` (a byte offset, 4 per slot) on: each of `ARGV[2..]` (item
/// ids) as its row in the catalogue `KEYS[2]`, u32 little-endian, into the string `KEYS[1]`
/// (`SETRANGE`). Rows are those of Redis's catalogue, not of the writing process (several
/// instances number their items differently; one alone numbers them as Redis does); an id the
/// catalogue lacks is written as u32::MAX, which a restore drops.
pub const POOL_WRITE: &str = "\
local parts = {}
for i = 2, #ARGV do
  local row = redis.call('ZSCORE', KEYS[2], ARGV[i])
  parts[#parts + 1] = struct.pack('<i4', row and tonumber(row) or -1)
end
redis.call('SETRANGE', KEYS[1], ARGV[1], table.concat(parts))
return 0";

/// Items per `ITEM_APPLY` call (each call's change-feed entry lists them; Lua's `unpack` of
/// the entry's fields must stay within its C stack).
pub const ITEM_APPLY_CHUNK: usize = 500;

/// Change-feed entries kept (`XADD ... MAXLEN ~`): one per `ITEM_APPLY` call, so about one per
/// flush per instance. A follower further behind reloads every item.
pub const ITEM_CHANGES_MAXLEN: usize = 4096;

/// Applies changed items (issue 10; see [`crate::model::ItemDelta`]). `KEYS[1]` is the
/// catalogue (`{ns}:items`), `KEYS[2]` the change feed (`{ns}:item_changes`), `KEYS[3..]` the
/// items' hashes. `ARGV[1..6]`: dim, max_norm, max_bias, the writer's token, the feed's bound,
/// the quarantine prefix (`{ns}:quarantine:item:`); then per item (17 values): id, the version
/// the writer last saw, the new state (vector and context as ESV1 values; bias, adagrad,
/// context_adagrad, events, last_ts, popularity_log as decimals) and the delta since that
/// version (vector and context as raw little-endian f32s; bias, adagrad, context_adagrad,
/// events, popularity_log).
///
/// - item absent: the new state is stored at version `seen + 1`, and an item new to the
///   catalogue gets the next row (`ZCARD`);
/// - stored version = the one the writer saw (nobody else wrote since): the new state is
///   stored as it is, bit-exact, at the next version;
/// - otherwise (another instance wrote in between): the delta is added to what is stored,
///   with the model's bounds (vector and context norms at most max_norm, bias within
///   +-max_bias, non-finite sums ignored), and events added exactly;
/// - a stored vector that is not an ESV1 value of `dim` components (a foreign or corrupt
///   write) cannot take a delta: the hash is copied to the quarantine key, for inspection, and
///   the new state is stored. Nothing is written before every item was read and checked, so
///   a script error leaves no item half-applied.
///
/// Every changed item's id and new version go to one change-feed entry (`writer`: the token).
pub const ITEM_APPLY: &str = r#"
local dim = tonumber(ARGV[1])
local max_norm = tonumber(ARGV[2])
local max_bias = tonumber(ARGV[3])
local stride = 17
local fmt = '<' .. string.rep('f', dim)
local function number(text)
  if text == 'inf' then return math.huge end
  if text == '-inf' then return -math.huge end
  return tonumber(text) or 0
end
local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end
local function is_vector(value)
  return value and #value == 12 + 4 * dim and string.sub(value, 1, 4) == 'ESV1'
end
local function add_vector(stored, delta)
  local values = {struct.unpack(fmt, stored, 13)}
  local changes = {struct.unpack(fmt, delta)}
  local squares = 0
  for k = 1, dim do
    local sum = values[k] + changes[k]
    if finite(sum) then values[k] = sum end
    squares = squares + values[k] * values[k]
  end
  if squares > max_norm * max_norm then
    local scale = max_norm / math.sqrt(squares)
    for k = 1, dim do values[k] = values[k] * scale end
  end
  return string.sub(stored, 1, 12) .. struct.pack(fmt, unpack(values, 1, dim))
end
local function log_add_exp(a, b)
  if a == -math.huge then return b end
  if b == -math.huge then return a end
  local hi, lo = math.max(a, b), math.min(a, b)
  return hi + math.log(1 + math.exp(lo - hi))
end
local count = (#ARGV - 6) / stride
local found = {}
for i = 0, count - 1 do
  local a = 6 + i * stride
  if #ARGV[a + 11] ~= 4 * dim or #ARGV[a + 12] ~= 4 * dim then
    return redis.error_reply('ITEM_APPLY: delta of another dimension for item ' .. ARGV[a + 1])
  end
  found[i] = redis.call('HMGET', KEYS[3 + i], 'version', 'vector', 'context', 'bias', 'adagrad',
    'context_adagrad', 'last_ts', 'popularity_log')
end
local feed = {'writer', ARGV[4]}
for i = 0, count - 1 do
  local a = 6 + i * stride
  local key = KEYS[3 + i]
  local id = ARGV[a + 1]
  local seen = tonumber(ARGV[a + 2])
  local stored = found[i]
  local version
  local corrupt = stored[2] and not is_vector(stored[2])
  if corrupt then
    redis.call('COPY', key, ARGV[6] .. id, 'REPLACE')
  end
  if not stored[2] or corrupt or tonumber(stored[1] or '0') == seen then
    version = math.max(seen, tonumber(stored[1] or '0')) + 1
    if not stored[2] then
      local row = redis.call('ZSCORE', KEYS[1], id)
      if not row then
        row = redis.call('ZCARD', KEYS[1])
        redis.call('ZADD', KEYS[1], row, id)
      end
      redis.call('HSET', key, 'row', row)
    end
    redis.call('HSET', key, 'vector', ARGV[a + 3], 'context', ARGV[a + 4], 'bias', ARGV[a + 5],
      'adagrad', ARGV[a + 6], 'context_adagrad', ARGV[a + 7], 'events', ARGV[a + 8],
      'last_ts', ARGV[a + 9], 'popularity_log', ARGV[a + 10], 'version', version)
  else
    version = tonumber(stored[1] or '0') + 1
    local vector = add_vector(stored[2], ARGV[a + 11])
    local context = ARGV[a + 4]
    if is_vector(stored[3]) then context = add_vector(stored[3], ARGV[a + 12]) end
    local bias = number(stored[4]) + number(ARGV[a + 13])
    if not finite(bias) then bias = number(stored[4]) end
    bias = math.max(-max_bias, math.min(max_bias, bias))
    local adagrad = number(stored[5]) + number(ARGV[a + 14])
    local context_adagrad = number(stored[6]) + number(ARGV[a + 15])
    local last_ts = math.max(number(stored[7]), number(ARGV[a + 9]))
    local popularity = log_add_exp(number(stored[8]), number(ARGV[a + 17]))
    redis.call('HINCRBY', key, 'events', ARGV[a + 16])
    redis.call('HSET', key, 'vector', vector, 'context', context,
      'bias', string.format('%.9g', bias), 'adagrad', string.format('%.9g', adagrad),
      'context_adagrad', string.format('%.9g', context_adagrad),
      'last_ts', string.format('%d', last_ts), 'popularity_log', string.format('%.17g', popularity),
      'version', version)
  end
  feed[#feed + 1] = id
  feed[#feed + 1] = version
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(feed))
return 0
"#;

/// One changed item: its state now (with the version this process last saw in `state.version`)
/// and its change since then.
#[derive(Debug, Clone)]
pub struct ItemWrite {
    /// The item's state.
    pub state: ItemState,
    /// The change since this process last synced the item.
    pub delta: ItemDelta,
}

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
    /// Changed items, in row order (new items get catalogue rows in this order).
    pub items: Vec<ItemWrite>,
    /// Model-wide fields.
    pub meta: StoredMeta,
    /// Events applied since the last committed flush, added to `events_applied` in Redis
    /// (several instances count into it); `None` writes `meta.events_applied` as it is (a
    /// namespace rewritten whole).
    pub applied_increment: Option<u64>,
    /// Whether to write the model configuration (`schema_version`, `dim`, `seed`,
    /// `model_config`): once per namespace and process, and in every rewrite.
    pub write_config: bool,
    /// What to write of the negative pool.
    pub pool: PoolWrite,
    /// The pool's item ids, slot by slot (`meta.negative_pool.0` holds their rows in this
    /// process); stored as their rows in Redis's catalogue ([`POOL_WRITE`]).
    pub pool_ids: Vec<String>,
    /// Topic the progress belongs to.
    pub topic: String,
    /// Progress of every assigned partition.
    pub progress: Vec<(i32, StoredProgress)>,
    /// This process's number for the attempt (see [`super::epoch`]: a flush whose outcome was
    /// unknown is recognised by it later).
    pub seq: u64,
}

/// The transactions of one flush, in order, each an atomic pipeline without the epoch
/// commands: every one but the last writes staging keys only; the last writes in place,
/// promotes the staged keys, applies the items, and writes meta and progress. One transaction
/// when the batch holds at most `max_entities` users. Built one at a time as the caller takes
/// them, so a large flush (the first after a catch-up writes every new user) holds one
/// transaction's commands in memory, not all of them. Items are never staged: their delta must
/// be applied together with the progress that covers it, exactly once, so the last transaction
/// holds every changed item, `ITEM_APPLY_CHUNK` per script call.
pub fn transactions<'a>(
    keys: &'a Keys,
    batch: &'a FlushBatch,
    seen_bound: usize,
    max_entities: usize,
    stage_token: &'a str,
) -> impl Iterator<Item = Pipeline> + 'a {
    let max_entities = max_entities.max(1);
    let staged_chunks = batch.users.len().saturating_sub(1) / max_entities;
    let staging =
        Staging { prefix: keys.staging_prefix(stage_token), set: keys.staging(stage_token) };
    let mut users = batch.users.iter();
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
            for user in users.by_ref().take(max_entities) {
                stage_user(&mut pipe, keys, &staging, user, &mut staged_names);
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
        for chunk in batch.items.chunks(ITEM_APPLY_CHUNK) {
            item_apply(&mut last, keys, &batch.meta, stage_token, chunk);
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

/// A transaction larger than this, encoded, is sent on a connection that is dropped
/// afterwards ([`super::SyncStore`]): the connection's write buffer keeps the capacity of the
/// largest command it carried, and a flush's last transaction holds every changed item (about
/// 1.2 KB each at dim 64), so one catch-up flush of 100,000 items would otherwise keep about
/// 128 MiB for the life of the process. Below it, the connection is kept.
pub const LARGE_TRANSACTION_BYTES: usize = 1 << 20;

/// The size of `pipe` in RESP, as sent (without the `MULTI`/`EXEC` of an atomic pipeline).
pub fn encoded_len(pipe: &Pipeline) -> usize {
    fn header(length: usize) -> usize {
        // "*<n>\r\n" or "$<n>\r\n"
        3 + length.checked_ilog10().unwrap_or(0) as usize + 1
    }
    pipe.cmd_iter()
        .map(|cmd| {
            header(cmd.args_iter().len())
                + cmd
                    .args_iter()
                    .map(|arg| match arg {
                        redis::Arg::Simple(bytes) => header(bytes.len()) + bytes.len() + 2,
                        // A cursor (unused here) or a future kind: a short number.
                        _ => header(1) + 3,
                    })
                    .sum::<usize>()
        })
        .sum()
}

/// One `ITEM_APPLY` call for a chunk of items.
fn item_apply(
    pipe: &mut Pipeline,
    keys: &Keys,
    meta: &StoredMeta,
    writer: &str,
    items: &[ItemWrite],
) {
    let raw = |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let command = pipe.cmd("EVAL");
    command.arg(ITEM_APPLY).arg(2 + items.len()).arg(keys.items()).arg(keys.item_changes());
    for item in items {
        command.arg(keys.item(&item.state.id));
    }
    command
        .arg(meta.dim)
        .arg(meta.model_config.max_norm.to_string())
        .arg(meta.model_config.max_bias.to_string())
        .arg(writer)
        .arg(ITEM_CHANGES_MAXLEN)
        .arg(keys.quarantined_item(""));
    for ItemWrite { state, delta } in items {
        command
            .arg(&state.id)
            .arg(state.version)
            .arg(encode_vector(&state.vector))
            .arg(encode_vector(&state.context))
            .arg(state.bias.to_string())
            .arg(state.adagrad.to_string())
            .arg(state.context_adagrad.to_string())
            .arg(state.events)
            .arg(state.last_ts)
            .arg(state.popularity_log.to_string())
            .arg(raw(&delta.vector))
            .arg(raw(&delta.context))
            .arg(delta.bias.to_string())
            .arg(delta.adagrad.to_string())
            .arg(delta.context_adagrad.to_string())
            .arg(delta.events)
            .arg(delta.popularity_log.to_string());
    }
    command.ignore();
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

/// `SADD {ns}:users` for the changed users (items enter the catalogue in [`ITEM_APPLY`]).
fn catalogue(pipe: &mut Pipeline, keys: &Keys, batch: &FlushBatch) {
    if !batch.users.is_empty() {
        pipe.cmd("SADD")
            .arg(keys.users())
            .arg(batch.users.iter().map(|user| &user.state.id).collect::<Vec<_>>())
            .ignore();
    }
}

/// The counters of `{ns}:meta`, the model configuration when asked, and the negative pool.
fn meta(pipe: &mut Pipeline, keys: &Keys, batch: &FlushBatch) {
    let meta = &batch.meta;
    if let Some(increment) = batch.applied_increment {
        pipe.cmd("HINCRBY").arg(keys.meta()).arg("events_applied").arg(increment).ignore();
    }
    let mut hset = redis::cmd("HSET");
    if batch.applied_increment.is_none() {
        hset.arg(keys.meta()).arg("events_applied").arg(meta.events_applied);
    } else {
        hset.arg(keys.meta());
    }
    hset.arg("closed_until")
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
    let ids = &batch.pool_ids;
    let key = keys.negative_pool();
    let write = |pipe: &mut Pipeline, start: usize, end: usize| {
        if start < end && end <= ids.len() {
            pipe.cmd("EVAL")
                .arg(POOL_WRITE)
                .arg(2)
                .arg(&key)
                .arg(keys.items())
                .arg(start * 4)
                .arg(&ids[start..end])
                .ignore();
        }
    };
    match pool_ranges(ids.len(), meta.negative_pool.1, batch.pool) {
        None => {
            pipe.cmd("DEL").arg(&key).ignore();
            write(pipe, 0, ids.len());
            // The older layout kept the pool in the meta hash.
            pipe.cmd("HDEL").arg(keys.meta()).arg("negative_pool").ignore();
        }
        Some(ranges) => {
            for (start, end) in ranges {
                write(pipe, start, end);
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
