//! What a flush writes (issue 9, items 2 and 6): bounded transactions that still give the
//! replay digest, the seen list written incrementally, and namespaces of the older layout
//! (whole seen lists as JSON in the user hash, the negative pool in the meta hash) loaded and
//! migrated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::faults::{stored_applied, wait_for_ghost_to_leave, OwnRedis, ServiceProcess};
use common::infra;
use embedstream::ingest::StoredProgress;
use embedstream::model::{ModelConfig, SeenWrite, UserState};
use embedstream::store::codec::encode_vector;
use embedstream::store::{
    FlushBatch, PoolWrite, StoreConfig, StoredMeta, SyncStore, UserWrite, SCHEMA_VERSION,
};

fn connection(redis: &OwnRedis) -> redis::Connection {
    redis::Client::open(redis.url()).unwrap().get_connection().unwrap()
}

fn keys_matching(redis: &OwnRedis, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS").arg(pattern).query(&mut connection(redis)).unwrap()
}

/// Bounded transactions (50 users and items each, so every flush of this stream is many of
/// them), a user cache far below the 943 users (users reload from Redis with their seen
/// lists, which the model's context query reads), and a Redis frozen for 3 s mid-ingest (a
/// backlog): the stored state still equals the replay, bit for bit, and no staging key is left.
#[test]
fn bounded_flush_transactions_with_evicted_users_give_the_replay_digest() {
    let (redis, config, records) = common::faults::movielens_on_own_redis("flush-bounded");
    let settings = [
        ("EMBEDSTREAM_INGEST__FLUSH_MAX_ENTITIES", "50"),
        ("EMBEDSTREAM_INGEST__USER_CACHE_CAPACITY", "100"),
        ("EMBEDSTREAM_INGEST__MAX_POLL_RECORDS", "200"),
        ("EMBEDSTREAM_STORE__COMMAND_TIMEOUT_MS", "1000"),
        ("EMBEDSTREAM_STORE__BREAKER__OPEN_MS", "1000"),
    ];
    let mut service = ServiceProcess::spawn(&config, &settings);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while stored_applied(&config) < 20_000 {
        assert!(std::time::Instant::now() < deadline, "never reached 20000 applied events");
        service.assert_running();
        std::thread::sleep(Duration::from_millis(5));
    }
    redis.freeze();
    std::thread::sleep(Duration::from_secs(3));
    redis.thaw();
    service.wait_caught_up(records.len() as u64, Duration::from_secs(120));
    assert!(service.terminate(Duration::from_secs(30)), "clean shutdown");

    let stored = embedstream::app::load_stored_model(&config).unwrap();
    let (replay, _) =
        embedstream::replay::replay(&records, &config, 4, &indicatif::ProgressBar::hidden())
            .unwrap();
    assert_eq!(stored.events_applied(), records.len() as u64);
    assert_eq!(stored.user_count(), replay.users);
    assert_eq!(stored.digest(), replay.digest, "digest differs from the replay");
    let namespace = &config.store.namespace;
    assert_eq!(keys_matching(&redis, &format!("{namespace}:staging:*")), Vec::<String>::new());
    // The seen list lives in its own key, in the order the model holds it.
    let mut store = SyncStore::new(&config.store).unwrap();
    let user = store.load_user("196", 64).unwrap().unwrap();
    let hash_seen: bool = redis::cmd("HEXISTS")
        .arg(format!("{namespace}:user:196"))
        .arg("seen")
        .query(&mut connection(&redis))
        .unwrap();
    assert!(!hash_seen, "the user hash no longer carries the seen list");
    let row = stored.user_row("196").unwrap();
    let in_model: Vec<&str> = stored.user_seen(row).map(|item| stored.item_id(item)).collect();
    assert_eq!(user.seen, in_model);
}

/// SIGKILL while flushes are chains of transactions (at most 5 users and items each, a flush
/// at every poll): the kills land between the transactions of a flush, and the restarted
/// service still ends with the uninterrupted digest. Writing the earlier transactions' state in
/// place (progress only in the last) fails this: a restart re-applies, on top of that state,
/// the events its progress does not cover.
#[test]
fn kill_minus_nine_between_the_transactions_of_a_flush_gives_the_uninterrupted_digest() {
    let name = infra::unique("flush-kill");
    let config = infra::test_config(&name);
    infra::create_topics(&[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)]);
    let records = infra::movielens_records();
    infra::produce(&config, &records);
    let settings = [
        ("EMBEDSTREAM_INGEST__FLUSH_MAX_ENTITIES", "5"),
        ("EMBEDSTREAM_INGEST__FLUSH_INTERVAL_MS", "1"),
        ("EMBEDSTREAM_INGEST__MAX_POLL_RECORDS", "200"),
    ];
    for (threshold, pause_ms) in [(5_000u64, 150u64), (25_000, 400), (45_000, 700)] {
        let mut service = ServiceProcess::spawn(&config, &settings);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while stored_applied(&config) < threshold {
            assert!(std::time::Instant::now() < deadline, "never reached {threshold} applied");
            service.assert_running();
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(pause_ms));
        service.kill();
        wait_for_ghost_to_leave(&config);
    }
    assert!(stored_applied(&config) < records.len() as u64, "the last kill was mid-ingest");
    let mut service = ServiceProcess::spawn(&config, &settings);
    service.wait_caught_up(records.len() as u64, Duration::from_secs(180));
    service.kill();
    let stored = embedstream::app::load_stored_model(&config).unwrap();
    assert_eq!(stored.digest(), infra::replay_digest(&config, &records, 4), "digest differs");
}

fn store_config(redis: &OwnRedis, namespace: &str) -> StoreConfig {
    StoreConfig { url: redis.url(), namespace: namespace.to_owned(), ..StoreConfig::default() }
}

fn user_write(id: &str, seen: &[&str], write: SeenWrite) -> UserWrite {
    UserWrite {
        state: UserState {
            id: id.to_owned(),
            vector: vec![0.5; 64],
            events: seen.len() as u64,
            last_ts: 1_700_000_000_000,
            seen: seen.iter().map(|item| (*item).to_owned()).collect(),
            adagrad: 0.0,
        },
        seen: write,
    }
}

/// The ids the test catalogue gives rows (see [`catalogue`]).
fn pool_ids(rows: &[u32]) -> Vec<String> {
    rows.iter().map(|row| format!("i{row}")).collect()
}

/// Items `i0` to `i9` at rows 0 to 9 of the catalogue: the pool is stored as catalogue rows.
fn catalogue(redis: &OwnRedis, namespace: &str) {
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(format!("{namespace}:items"));
    for row in 0..10 {
        zadd.arg(row).arg(format!("i{row}"));
    }
    zadd.query::<()>(&mut connection(redis)).unwrap();
}

fn batch(users: Vec<UserWrite>, pool: (Vec<u32>, usize), write: PoolWrite) -> FlushBatch {
    let ids = pool_ids(&pool.0);
    FlushBatch {
        users,
        items: Vec::new(),
        applied_increment: None,
        seq: 1,
        meta: StoredMeta {
            dim: 64,
            model_config: ModelConfig::default(),
            events_applied: 7,
            closed_until: 0,
            negative_pool: pool,
            schema_version: SCHEMA_VERSION,
        },
        write_config: true,
        pool_ids: ids,
        pool: write,
        topic: "events".to_owned(),
        progress: vec![(0, StoredProgress { resume: 7, done: Vec::new() })],
    }
}

fn seen_list(redis: &OwnRedis, namespace: &str, user: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(format!("{namespace}:seen:{user}"))
        .arg(0)
        .arg(-1)
        .query(&mut connection(redis))
        .unwrap()
}

/// A namespace written by schema 1 (seen list as JSON in the user hash, negative pool in the
/// meta hash) loads, and the first flush moves both to their own keys; later flushes append.
#[test]
fn an_older_layout_loads_and_is_migrated_by_the_next_flush() {
    let name = infra::unique("flush-layout");
    let redis = OwnRedis::start(&name);
    let mut raw = connection(&redis);
    catalogue(&redis, &name);
    let pool: Vec<u8> = [3u32, 1, 2].iter().flat_map(|row| row.to_le_bytes()).collect();
    redis::cmd("HSET")
        .arg(format!("{name}:meta"))
        .arg(&[("schema_version", "1"), ("dim", "64"), ("seed", "42"), ("events_applied", "5")])
        .arg(&[("closed_until", "0"), ("negative_pool_next", "3")])
        .arg("model_config")
        .arg(serde_json::to_string(&ModelConfig::default()).unwrap())
        .arg("negative_pool")
        .arg(pool)
        .query::<()>(&mut raw)
        .unwrap();
    redis::cmd("HSET")
        .arg(format!("{name}:user:u1"))
        .arg("vector")
        .arg(encode_vector(&[0.5; 64]))
        .arg(&[("events", "2"), ("last_ts", "1700000000000"), ("seen", r#"["a","b"]"#)])
        .query::<()>(&mut raw)
        .unwrap();

    let mut store = SyncStore::new(&store_config(&redis, &name)).unwrap();
    store.attach_epoch().unwrap();
    let meta = store.load_meta().unwrap().unwrap();
    assert_eq!((meta.schema_version, meta.negative_pool), (1, (vec![3, 1, 2], 3)));
    let loaded = store.load_users(&["u1"], 64).unwrap().pop().unwrap().unwrap().unwrap();
    assert_eq!(loaded.0.seen, ["a", "b"]);
    assert_eq!(loaded.1, SeenWrite::Whole, "an older layout's list is written whole next");

    // The engine's next flush: the list whole (it learned more items meanwhile), the pool whole.
    let migrate = batch(
        vec![user_write("u1", &["a", "b", "c", "d", "e", "f", "g", "h"], SeenWrite::Whole)],
        (vec![3, 1, 2, 9], 4),
        PoolWrite::Whole,
    );
    store.write_flush(&migrate).unwrap();
    assert_eq!(seen_list(&redis, &name, "u1"), ["a", "b", "c", "d", "e", "f", "g", "h"]);
    let fields: HashMap<String, Vec<u8>> =
        redis::cmd("HGETALL").arg(format!("{name}:user:u1")).query(&mut raw).unwrap();
    assert!(!fields.contains_key("seen"), "the JSON list is gone from the hash");
    let meta = store.load_meta().unwrap().unwrap();
    assert_eq!((meta.schema_version, meta.negative_pool), (SCHEMA_VERSION, (vec![3, 1, 2, 9], 4)));
    let old_pool: bool = redis::cmd("HEXISTS")
        .arg(format!("{name}:meta"))
        .arg("negative_pool")
        .query(&mut raw)
        .unwrap();
    assert!(!old_pool);
    let (user, write) = store.load_users(&["u1"], 64).unwrap().pop().unwrap().unwrap().unwrap();
    assert_eq!((user.seen.len(), write), (8, SeenWrite::Newest(0)));

    // "a" seen again, one pool slot written: only that is sent, and applying it twice (a
    // retried flush) gives the same list.
    let append = batch(
        vec![user_write("u1", &["b", "c", "d", "e", "f", "g", "h", "a"], SeenWrite::Newest(1))],
        (vec![3, 1, 2, 9, 5], 5),
        PoolWrite::Newest(1),
    );
    store.write_flush(&append).unwrap();
    store.write_flush(&append).unwrap();
    assert_eq!(seen_list(&redis, &name, "u1"), ["b", "c", "d", "e", "f", "g", "h", "a"]);
    assert_eq!(store.load_meta().unwrap().unwrap().negative_pool, (vec![3, 1, 2, 9, 5], 5));
}

/// A flush of more users than one transaction may hold is staged and promoted: every user
/// lands, with its seen list, and no staging key stays behind.
#[test]
fn a_flush_larger_than_the_bound_lands_whole_and_leaves_no_staging_keys() {
    let name = infra::unique("flush-staged");
    let redis = OwnRedis::start(&name);
    let mut store = SyncStore::new(&store_config(&redis, &name)).unwrap().with_flush_limits(500, 3);
    store.attach_epoch().unwrap();
    let users: Vec<UserWrite> = (0..10)
        .map(|user| {
            let seen = if user == 0 { Vec::new() } else { vec!["x", "y"] };
            user_write(&format!("u{user}"), &seen, SeenWrite::Whole)
        })
        .collect();
    store.write_flush(&batch(users, (Vec::new(), 0), PoolWrite::Whole)).unwrap();
    assert_eq!(store.user_ids().unwrap().len(), 10);
    for user in 1..10 {
        assert_eq!(seen_list(&redis, &name, &format!("u{user}")), ["x", "y"]);
        assert!(store.load_user(&format!("u{user}"), 64).unwrap().is_some());
    }
    // Staged with an empty list: promotion leaves no list.
    assert!(seen_list(&redis, &name, "u0").is_empty());
    assert!(store.load_user("u0", 64).unwrap().is_some());
    assert_eq!(store.load_meta().unwrap().unwrap().events_applied, 7);
    assert_eq!(keys_matching(&redis, &format!("{name}:staging*")), Vec::<String>::new());
}

/// The pool is stored as rows of Redis's catalogue, not of the writing process: an instance
/// whose items came in another order (several instances share the catalogue) stores the
/// items it sampled, and an id the catalogue lacks is dropped at restore.
#[test]
fn the_pool_is_stored_in_the_catalogue_rows_whatever_the_writer_numbers_its_items() {
    let name = infra::unique("flush-pool");
    let redis = OwnRedis::start(&name);
    catalogue(&redis, &name);
    let mut store = SyncStore::new(&store_config(&redis, &name)).unwrap();
    store.attach_epoch().unwrap();
    // This process holds i7 at its row 0, i3 at its row 1, and an item not yet stored at 2.
    let mut whole = batch(Vec::new(), (vec![0, 1, 2], 3), PoolWrite::Whole);
    whole.pool_ids = vec!["i7".to_owned(), "i3".to_owned(), "new".to_owned()];
    store.write_flush(&whole).unwrap();
    assert_eq!(store.load_meta().unwrap().unwrap().negative_pool, (vec![7, 3, u32::MAX], 3));
    // One slot more, the newest only.
    let mut newest = batch(Vec::new(), (vec![0, 1, 2, 0], 4), PoolWrite::Newest(1));
    newest.pool_ids = vec!["i7".to_owned(), "i3".to_owned(), "new".to_owned(), "i7".to_owned()];
    newest.seq = 2;
    store.write_flush(&newest).unwrap();
    assert_eq!(store.load_meta().unwrap().unwrap().negative_pool, (vec![7, 3, u32::MAX, 7], 4));
}

/// A stored item whose vector is not an ESV1 value of the model's dimension (a foreign or
/// corrupt write) cannot take another instance's delta: it is copied to the quarantine key and
/// the new state is stored, and the flush goes through (before, the script failed inside the
/// transaction, whose other writes Redis does not roll back).
#[test]
fn a_corrupt_stored_item_is_quarantined_and_the_flush_goes_through() {
    use embedstream::model::{ItemDelta, ItemState};
    use embedstream::store::ItemWrite;
    let name = infra::unique("flush-corrupt-item");
    let redis = OwnRedis::start(&name);
    redis::cmd("HSET")
        .arg(format!("{name}:item:x"))
        .arg(&[("vector", "garbage"), ("version", "3"), ("row", "0"), ("events", "9")])
        .query::<()>(&mut connection(&redis))
        .unwrap();
    let mut store = SyncStore::new(&store_config(&redis, &name)).unwrap();
    store.attach_epoch().unwrap();
    let mut flush = batch(Vec::new(), (Vec::new(), 0), PoolWrite::Whole);
    let state = ItemState {
        id: "x".to_owned(),
        row: 0,
        vector: vec![0.5; 64],
        context: vec![0.25; 64],
        adagrad: 0.0,
        context_adagrad: 0.0,
        bias: 0.125,
        events: 2,
        last_ts: 1_700_000_000_000,
        popularity_log: 1.0,
        version: 0,
    };
    let delta = ItemDelta {
        vector: vec![0.1; 64],
        context: vec![0.0; 64],
        bias: 0.0,
        adagrad: 0.0,
        context_adagrad: 0.0,
        events: 2,
        popularity_log: 1.0,
    };
    flush.items = vec![ItemWrite { state: state.clone(), delta }];
    store.write_flush(&flush).unwrap();
    let stored = store.load_items_by_id(&["x".to_owned()], 64).unwrap().pop().unwrap().unwrap();
    assert_eq!((stored.vector, stored.events, stored.version), (state.vector, 2, 4));
    let kept: Vec<u8> = redis::cmd("HGET")
        .arg(format!("{name}:quarantine:item:x"))
        .arg("vector")
        .query(&mut connection(&redis))
        .unwrap();
    assert_eq!(kept, b"garbage");
}
