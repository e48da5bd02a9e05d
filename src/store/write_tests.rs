use super::*;
use crate::ingest::StoredProgress;
use crate::model::ModelConfig;

const DIM: usize = 4;

/// Arguments per item of `ITEM_APPLY`.
const ITEM_APPLY_STRIDE: usize = 17;

fn user(id: usize, seen: usize, write: SeenWrite) -> UserWrite {
    UserWrite {
        state: UserState {
            id: format!("u{id}"),
            vector: vec![0.5; DIM],
            events: 3,
            last_ts: 1_700_000_000_000,
            seen: (0..seen).map(|item| format!("i{item}")).collect(),
            adagrad: 0.25,
        },
        seen: write,
    }
}

fn item(row: u32) -> ItemWrite {
    ItemWrite { state: item_state(row), delta: delta(0.0) }
}

fn delta(change: f32) -> ItemDelta {
    ItemDelta {
        vector: vec![change; DIM],
        context: vec![0.0; DIM],
        bias: change,
        adagrad: 0.0,
        context_adagrad: 0.0,
        events: 1,
        popularity_log: 0.0,
    }
}

fn item_state(row: u32) -> ItemState {
    ItemState {
        id: format!("i{row}"),
        row,
        vector: vec![0.25; DIM],
        context: vec![0.0; DIM],
        adagrad: 0.0,
        context_adagrad: 0.0,
        bias: 0.0,
        events: 1,
        last_ts: 1_700_000_000_000,
        popularity_log: 1.0,
        version: 0,
    }
}

fn batch(users: Vec<UserWrite>, items: Vec<ItemWrite>) -> FlushBatch {
    FlushBatch {
        users,
        items,
        applied_increment: Some(10),
        seq: 1,
        meta: StoredMeta {
            dim: DIM,
            model_config: ModelConfig { dim: DIM, ..ModelConfig::default() },
            events_applied: 10,
            closed_until: 0,
            negative_pool: ((0..4096).map(|slot| slot % 7).collect(), 100),
            schema_version: SCHEMA_VERSION,
        },
        write_config: false,
        pool: PoolWrite::Newest(10),
        pool_ids: (0..4096).map(|slot| format!("i{}", slot % 7)).collect(),
        topic: "events".to_owned(),
        progress: vec![(0, StoredProgress { resume: 42, done: Vec::new() })],
    }
}

/// Each command of a pipeline as its arguments, lossily as text.
fn commands(pipe: &Pipeline) -> Vec<Vec<String>> {
    pipe.cmd_iter()
        .map(|cmd| {
            cmd.args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => "<cursor>".to_owned(),
                })
                .collect()
        })
        .collect()
}

fn build(batch: &FlushBatch, max_entities: usize) -> Vec<Pipeline> {
    transactions(&Keys::new("ns"), batch, 500, max_entities, "t0").collect()
}

#[test]
fn a_flush_writes_only_the_new_seen_entries_not_the_whole_list() {
    let one = batch(vec![user(1, 400, SeenWrite::Newest(2))], Vec::new());
    let pipelines = build(&one, 100);
    assert_eq!(pipelines.len(), 1);
    let all = commands(&pipelines[0]);
    let append: Vec<&Vec<String>> =
        all.iter().filter(|args| args[0] == "EVAL" && args[1] == SEEN_APPEND).collect();
    assert_eq!(append.len(), 1, "{all:?}");
    // script, 1 key, the list, the bound, then the two newest ids only.
    assert_eq!(append[0][2..], ["1", "ns:seen:u1", "500", "i398", "i399"]);
    let hset = all.iter().find(|args| args[0] == "HSET" && args[1] == "ns:user:u1").unwrap();
    assert!(!hset.contains(&"seen".to_owned()), "the hash no longer carries the list: {hset:?}");
    // Against the whole list as JSON before: 400 ids (the pool's ten changed slots add their
    // ids and the script).
    assert!(pipelines[0].get_packed_pipeline().len() < 2_500);
}

#[test]
fn an_unchanged_seen_list_writes_nothing_and_a_legacy_one_is_written_whole() {
    let unchanged = build(&batch(vec![user(1, 50, SeenWrite::Newest(0))], Vec::new()), 100);
    let seen_writes = commands(&unchanged[0])
        .into_iter()
        .filter(|args| (args[0] == "EVAL" && args[1] == SEEN_APPEND) || args[0] == "RPUSH")
        .count();
    assert_eq!(seen_writes, 0);
    let legacy = build(&batch(vec![user(1, 50, SeenWrite::Whole)], Vec::new()), 100);
    let all = commands(&legacy[0]);
    let rpush = all.iter().find(|args| args[0] == "RPUSH").unwrap();
    assert_eq!(rpush.len(), 2 + 50);
    assert!(all.iter().any(|args| args[..] == ["DEL", "ns:seen:u1"]));
    assert!(all.iter().any(|args| args[..] == ["HDEL", "ns:user:u1", "seen"]));
}

#[test]
fn configuration_and_pool_are_written_only_when_needed() {
    let mut plain = batch(Vec::new(), Vec::new());
    let all = commands(&build(&plain, 100)[0]);
    let meta = all.iter().find(|args| args[0] == "HSET" && args[1] == "ns:meta").unwrap();
    assert!(!meta.contains(&"model_config".to_owned()), "{meta:?}");
    assert!(!meta.contains(&"negative_pool".to_owned()), "{meta:?}");
    // Ten pool slots changed, just before position 100: their ids, written at byte 360 as
    // their rows in Redis's catalogue.
    let pool: Vec<&Vec<String>> =
        all.iter().filter(|args| args[0] == "EVAL" && args[1] == POOL_WRITE).collect();
    assert_eq!(pool.len(), 1);
    assert_eq!(pool[0][2..6], ["2", "ns:negative_pool", "ns:items", "360"]);
    let ids: Vec<String> = (90..100).map(|slot| format!("i{}", slot % 7)).collect();
    assert_eq!(pool[0][6..], ids[..]);
    assert!(!all.iter().any(|args| args[0] == "SET" || args[0] == "SETRANGE"));
    let bytes_plain = build(&plain, 100)[0].get_packed_pipeline().len();
    assert!(bytes_plain < 1_000, "meta, pool slots and progress in {bytes_plain} bytes");

    plain.write_config = true;
    plain.pool = PoolWrite::Whole;
    let all = commands(&build(&plain, 100)[0]);
    let meta = all.iter().find(|args| args[0] == "HSET" && args[1] == "ns:meta").unwrap();
    assert!(
        meta.contains(&"model_config".to_owned()) && meta.contains(&"schema_version".to_owned())
    );
    assert!(all.iter().any(|args| args[..] == ["DEL", "ns:negative_pool"]));
    let pool = all.iter().find(|args| args[0] == "EVAL" && args[1] == POOL_WRITE).unwrap();
    assert_eq!(pool[5], "0");
    assert_eq!(pool.len(), 6 + 4096);
}

#[test]
fn pool_ranges_follow_the_ring() {
    assert_eq!(pool_ranges(8, 5, PoolWrite::Newest(3)), Some(vec![(2, 5)]));
    assert_eq!(pool_ranges(8, 2, PoolWrite::Newest(3)), Some(vec![(0, 2), (7, 8)]));
    assert_eq!(pool_ranges(8, 0, PoolWrite::Newest(3)), Some(vec![(5, 8)]));
    // Not yet full: next == len.
    assert_eq!(pool_ranges(5, 5, PoolWrite::Newest(2)), Some(vec![(3, 5)]));
    assert_eq!(pool_ranges(8, 5, PoolWrite::Newest(0)), Some(Vec::new()));
    assert_eq!(pool_ranges(8, 5, PoolWrite::Newest(8)), None);
    assert_eq!(pool_ranges(8, 5, PoolWrite::Whole), None);
}

#[test]
fn items_are_applied_by_script_in_bounded_calls_in_the_last_transaction() {
    let items = batch(Vec::new(), (0..1200).map(item).collect());
    let pipelines = build(&items, 100);
    assert_eq!(pipelines.len(), 1, "items are never staged");
    let all = commands(&pipelines[0]);
    let calls: Vec<&Vec<String>> =
        all.iter().filter(|args| args[0] == "EVAL" && args[1] == ITEM_APPLY).collect();
    assert_eq!(calls.len(), 3, "{ITEM_APPLY_CHUNK} items per call");
    // Script, key count, catalogue, feed, the items' keys, 6 shared values, 17 per item.
    let first = calls[0];
    assert_eq!(first[2], (2 + ITEM_APPLY_CHUNK).to_string());
    assert_eq!(first[3..5], ["ns:items", "ns:item_changes"]);
    assert_eq!(first[5], "ns:item:i0");
    assert_eq!(first.len(), 5 + ITEM_APPLY_CHUNK + 6 + ITEM_APPLY_CHUNK * ITEM_APPLY_STRIDE);
    assert_eq!(first[5 + ITEM_APPLY_CHUNK + 5], "ns:quarantine:item:");
    assert_eq!(calls[2].len(), 5 + 200 + 6 + 200 * ITEM_APPLY_STRIDE);
    // No other per-item command, and no catalogue write outside the script.
    assert!(!all.iter().any(|args| args.len() > 1 && args[1].starts_with("ns:item:")));
    assert!(!all.iter().any(|args| args[0] == "ZADD"));
    // Several instances count into events_applied.
    assert!(all.iter().any(|args| args[..] == ["HINCRBY", "ns:meta", "events_applied", "10"]));
}

#[test]
fn a_large_flush_is_cut_into_bounded_transactions_with_progress_only_in_the_last() {
    let users = (0..25).map(|id| user(id, 3, SeenWrite::Newest(1))).collect();
    let items = (0..30).map(item).collect();
    let large = batch(users, items);
    let pipelines = build(&large, 10);
    assert_eq!(pipelines.len(), 3, "25 users at most 10 per transaction; items never staged");
    let keys = Keys::new("ns");
    for (index, pipe) in pipelines.iter().enumerate() {
        let all = commands(pipe);
        let last = index == pipelines.len() - 1;
        let touches =
            |prefix: &str| all.iter().any(|args| args.len() > 1 && args[1].starts_with(prefix));
        assert_eq!(touches("ns:progress:"), last, "progress only in the last: {index}");
        assert_eq!(touches("ns:meta"), last, "meta only in the last: {index}");
        let applies_items = all.iter().any(|args| args[0] == "EVAL" && args[1] == ITEM_APPLY);
        assert_eq!(applies_items, last, "items only in the last: {index}");
        if !last {
            // Staging transactions write nothing a reader sees.
            for args in &all {
                assert!(args[1].starts_with("ns:staging:t0"), "{index}: {args:?}");
            }
            let hashes = all.iter().filter(|args| args[0] == "HSET").count();
            assert_eq!(hashes, 10, "{index}: at most 10 users");
        } else {
            let in_place = all
                .iter()
                .filter(|args| args[0] == "HSET" && args[1].starts_with("ns:user:"))
                .count();
            assert_eq!(in_place, 5);
            let promote = all.iter().find(|args| args[0] == "EVAL" && args[1] == PROMOTE_STAGED);
            let promote = promote.expect("the last transaction promotes the staged keys");
            assert_eq!(promote[2..], ["1", &keys.staging("t0"), &keys.staging_prefix("t0")]);
        }
    }
    // Every staged user and item, and every user's seen list, is named for promotion.
    let staged: usize = pipelines[..2]
        .iter()
        .flat_map(commands)
        .filter(|args| args[0] == "SADD")
        .map(|args| args.len() - 2)
        .sum();
    assert_eq!(staged, 20 * 2);
}

#[test]
fn a_flush_within_the_bound_is_one_transaction_without_staging() {
    let small = batch(
        (0..5).map(|id| user(id, 3, SeenWrite::Newest(1))).collect(),
        (0..5).map(item).collect(),
    );
    let pipelines = build(&small, 10);
    assert_eq!(pipelines.len(), 1);
    assert!(!commands(&pipelines[0])
        .iter()
        .any(|args| args.len() > 1 && args[1].contains("staging")));
}

#[test]
fn encoded_len_is_the_size_sent() {
    let large = batch(
        (0..30).map(|id| user(id, 3, SeenWrite::Whole)).collect(),
        (0..700).map(item).collect(),
    );
    for pipe in build(&large, 10) {
        // The packed form adds MULTI ("*1\r\n$5\r\nMULTI\r\n") and EXEC ("*1\r\n$4\r\nEXEC\r\n").
        assert_eq!(encoded_len(&pipe) + 15 + 14, pipe.get_packed_pipeline().len());
    }
    let last = build(&large, 10).pop().unwrap();
    assert!(encoded_len(&last) > 700 * 4 * DIM * 4, "every item's state and delta");
}
