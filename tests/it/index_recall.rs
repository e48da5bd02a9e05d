//! The ANN index against exact search: recall@10 floors on MovieLens-trained items while
//! updates keep arriving, on 100,000 synthetic items, and on a catalogue whose few large
//! norms dwarf the rest.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashSet;

use embedstream::config::Config;
use embedstream::index::{exact_top_k, Excluded, Index, IndexConfig};
use embedstream::model::{ItemState, Model, ModelConfig, ModelLock, UserRow, UserState};

fn recall_at_10(
    index: &Index,
    model: &Model,
    users: impl Iterator<Item = UserRow>,
) -> (f64, usize) {
    let (mut hits, mut total, mut max_candidates) = (0usize, 0usize, 0usize);
    let none = Excluded::none();
    for user in users {
        // The ranking query (user vector plus the recent items' context), as served.
        let vector = model.query_vector(user);
        let exact: HashSet<String> =
            exact_top_k(model, &vector, 10, &none).into_iter().map(|item| item.item_id).collect();
        let result = index.top_k(model, &vector, 10, &none);
        assert!(result.used_ann, "the snapshot must be used");
        max_candidates = max_candidates.max(result.candidates);
        hits += result.items.iter().filter(|item| exact.contains(&item.item_id)).count();
        total += exact.len();
    }
    (hits as f64 / total as f64, max_candidates)
}

/// Applies `events` new interactions and tells the index, as the ingest engine does.
fn keep_updating(model: &ModelLock, index: &Index, events: usize, round: usize) {
    let mut model = model.write();
    let (users, items) = (model.user_count(), model.item_count());
    for step in 0..events {
        let user = format!("u{}", (step * 7919 + round) % users);
        let item_row = embedstream::model::ItemRow(((step * 104_729 + round * 31) % items) as u32);
        let item = model.item_id(item_row).to_owned();
        model.apply(&format!("update-{round}-{step}"), &user, &item, 2_000_000_000_000, 4.0);
    }
    let (_, changed) = model.take_dirty();
    index.note_changed(changed);
}

#[test]
fn recall_on_movielens_items_while_updates_arrive() {
    let records = common::infra::movielens_records();
    let (_, fold) = embedstream::replay::replay(
        &records,
        &Config::default(),
        1,
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    let model = fold.shared_model();
    {
        // What the engine has already handed over before the first snapshot.
        let mut guard = model.write();
        let _ = guard.take_dirty();
    }
    let index = Index::new(IndexConfig {
        rebuild_interval_ms: 0,
        full_scan_threshold: 0,
        // Every core: a test of the graph alone, with no fold to spare a core for.
        build_threads: 0,
        // The graph path is under test: it answers however much of the catalogue changed, and
        // the updates below, back to back in memory, hold no rebuild back as landing stale.
        exact_scan_share: 1.0,
        ..IndexConfig::default()
    });
    index.rebuild(&model).unwrap();
    assert_eq!(index.snapshot_len(), 1_682);

    let users = model.read().user_count() as u32;
    let (fresh_recall, _) = recall_at_10(&index, &model.read(), (0..users).map(UserRow));
    assert!(fresh_recall >= 0.95, "recall@10 on a fresh snapshot {fresh_recall}");

    // Updates keep arriving after the snapshot: the graph goes stale, the fresh tier grows,
    // and the engine's rebuild policy swaps in new snapshots, as in a live service.
    for round in 0..10 {
        keep_updating(&model, &index, 50, round);
        if index.needs_rebuild(model.read().item_count()) {
            index.rebuild(&model).unwrap();
        }
        let guard = model.read();
        let (recall, candidates) = recall_at_10(&index, &guard, (0..users).map(UserRow));
        assert!(
            recall >= 0.95,
            "round {round}: recall@10 {recall} with a stale snapshot (fresh tier {}, candidates {candidates})",
            index.fresh_len()
        );
    }
}

/// Deterministic pseudo-random numbers in [-1, 1) (no RNG dependency in the tests).
fn noise(seed: u64) -> f32 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x2545_F491_4F6C_DD1D);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

/// A vector near one of `clusters` centroids: embeddings of real catalogues are clustered,
/// unlike isotropic noise (on which every ANN method degrades to a scan).
fn clustered(dim: usize, clusters: u64, id: u64, spread: f32) -> Vec<f32> {
    let cluster = id % clusters;
    (0..dim as u64)
        .map(|d| noise(cluster * 1_000 + d) * 0.5 + spread * noise(id * 7_919 + d + 1_000_000))
        .collect()
}

#[test]
fn recall_on_100000_synthetic_items() {
    let items: u64 =
        std::env::var("RECALL_ITEMS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let dim = 64;
    let model = ModelLock::new(Model::new(ModelConfig { dim, ..ModelConfig::default() }).unwrap());
    {
        let mut model = model.write();
        for item in 0..items {
            model
                .restore_item(ItemState {
                    id: format!("i{item}"),
                    row: item as u32,
                    vector: clustered(dim, 1_000, item, 0.25),
                    context: vec![0.0; dim],
                    adagrad: 0.0,
                    context_adagrad: 0.0,
                    bias: 0.1 * noise(item + 77),
                    events: 1,
                    last_ts: 1_000_000_000_000,
                    popularity_log: 0.0,
                    version: 0,
                })
                .unwrap();
        }
        for user in 0..200u64 {
            model
                .restore_user(UserState {
                    id: format!("u{user}"),
                    vector: clustered(dim, 1_000, user * 13 + 5, 0.3),
                    events: 1,
                    last_ts: 1_000_000_000_000,
                    seen: Vec::new(),
                    adagrad: 0.0,
                })
                .unwrap();
        }
    }
    let index_config = IndexConfig {
        ef_construction: 100,
        rebuild_interval_ms: 0,
        full_scan_threshold: 0,
        // Every core: a test of the graph alone, with no fold to spare a core for.
        build_threads: 0,
        // The graph path is under test: it answers however much of the catalogue changed, and
        // the updates below, back to back in memory, hold no rebuild back as landing stale.
        exact_scan_share: 1.0,
        ..IndexConfig::default()
    };
    let index = Index::new(index_config);
    let seconds = index.rebuild(&model).unwrap();
    assert_eq!(index.snapshot_len(), items as usize);
    eprintln!("built a {items}-item snapshot in {seconds:.1} s");

    let (recall, candidates) = recall_at_10(&index, &model.read(), (0..200).map(UserRow));
    eprintln!("recall@10 {recall}, at most {candidates} candidates");
    assert!(recall >= 0.95, "recall@10 on {items} items {recall}");
    assert!(candidates < 1_000, "queries stay sub-linear: {candidates} candidates");

    // Updates keep arriving; the engine's policy rebuilds once the fresh tier passes its share.
    let mut rebuilds = 0;
    for round in 0..10 {
        keep_updating(&model, &index, 100, round);
        if index.needs_rebuild(model.read().item_count()) {
            index.rebuild(&model).unwrap();
            rebuilds += 1;
        }
        let (recall, candidates) = recall_at_10(&index, &model.read(), (0..200).map(UserRow));
        eprintln!(
            "round {round}: recall@10 {recall}, fresh {}, at most {candidates} candidates",
            index.fresh_len()
        );
        assert!(recall >= 0.95, "round {round}: recall@10 on {items} items under updates {recall}");
    }
    eprintln!("{rebuilds} rebuilds during 1,000 updates");
}

/// The attack run's case: a popular head whose norms dwarf the rest, as learned embeddings
/// of real streams have (norms fall as a zipf-like law here, 4.3 down to 0.32). The
/// augmentation puts every item far below the largest norm near one pole, and without the
/// exact head the greedy search missed the large-norm items that hold most top-10 lists
/// (mean recall@10 0.40 on this catalogue, most users with none of their exact top 10).
#[test]
fn recall_when_a_few_items_norms_dwarf_the_rest() {
    let (items, users, dim) = (30_000u64, 300u64, 64usize);
    let shared: Vec<f32> = (0..dim as u64).map(|d| noise(d + 5_000_000)).collect();
    let model = ModelLock::new(Model::new(ModelConfig { dim, ..ModelConfig::default() }).unwrap());
    {
        let mut model = model.write();
        for item in 0..items {
            // Rank in the popularity order, scattered over the rows.
            let rank = (item * 7_919) % items;
            let norm = 0.3 + 4.0 / (1.0 + rank as f32 / 20.0).sqrt();
            let mut vector: Vec<f32> = (0..dim as u64)
                .map(|d| noise(item * 131 + d + 1) + 0.5 * shared[d as usize])
                .collect();
            let length = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            vector.iter_mut().for_each(|x| *x *= norm / length);
            model
                .restore_item(ItemState {
                    id: format!("i{item}"),
                    row: item as u32,
                    vector,
                    context: vec![0.0; dim],
                    adagrad: 0.0,
                    context_adagrad: 0.0,
                    bias: 0.1 * norm * noise(item + 77),
                    events: 1,
                    last_ts: 1_000_000_000_000,
                    popularity_log: 0.0,
                    version: 0,
                })
                .unwrap();
        }
        for user in 0..users {
            let weight = (noise(user + 9_000_000) + 1.0) / 2.0;
            model
                .restore_user(UserState {
                    id: format!("u{user}"),
                    vector: (0..dim as u64)
                        .map(|d| {
                            0.05 * (noise(user * 977 + d + 3_000_000) + weight * shared[d as usize])
                        })
                        .collect(),
                    events: 1,
                    last_ts: 1_000_000_000_000,
                    seen: Vec::new(),
                    adagrad: 0.0,
                })
                .unwrap();
        }
    }
    let index = Index::new(IndexConfig {
        ef_construction: 100,
        rebuild_interval_ms: 0,
        full_scan_threshold: 0,
        // Every core: a test of the graph alone, with no fold to spare a core for.
        build_threads: 0,
        ..IndexConfig::default()
    });
    index.rebuild(&model).unwrap();
    let guard = model.read();
    let none = Excluded::none();
    let (mut hits, mut missed_all, mut max_candidates) = (0usize, 0usize, 0usize);
    for user in 0..users as u32 {
        let vector = guard.query_vector(UserRow(user));
        let exact: HashSet<String> =
            exact_top_k(&guard, &vector, 10, &none).into_iter().map(|item| item.item_id).collect();
        let result = index.top_k(&guard, &vector, 10, &none);
        assert!(result.used_ann, "the snapshot must be used");
        max_candidates = max_candidates.max(result.candidates);
        let found = result.items.iter().filter(|item| exact.contains(&item.item_id)).count();
        hits += found;
        missed_all += usize::from(found == 0);
    }
    let recall = hits as f64 / (10 * users) as f64;
    eprintln!(
        "recall@10 {recall}, {missed_all} users with none, at most {max_candidates} candidates"
    );
    assert!(recall >= 0.95, "recall@10 {recall} when a few norms dwarf the rest");
    assert_eq!(missed_all, 0, "users with none of their exact top 10");
    assert!(max_candidates < 2_000, "queries stay sub-linear: {max_candidates} candidates");
}

/// Appends `count` synthetic items (rows continue from the model's item count).
fn add_items(model: &mut Model, count: u64) {
    let dim = model.dim();
    let first = model.item_count() as u64;
    for item in first..first + count {
        model
            .restore_item(ItemState {
                id: format!("i{item}"),
                row: item as u32,
                vector: clustered(dim, 100, item, 0.25),
                context: vec![0.0; dim],
                adagrad: 0.0,
                context_adagrad: 0.0,
                bias: 0.1 * noise(item + 77),
                events: 1,
                last_ts: 1_000_000_000_000,
                popularity_log: 0.0,
                version: 0,
            })
            .unwrap();
    }
}

/// The issue 12 case: a snapshot built while the catalogue was small, then the catalogue
/// grows and the stream goes quiet. Nothing calls the index any more (no ingest tick), and
/// items restored or added after the copy need not be noted as changed: the rebuild thread
/// alone must bring a snapshot that covers the catalogue.
#[test]
fn a_quiet_index_converges_to_a_snapshot_covering_the_catalogue() {
    let dim = 16;
    let model = std::sync::Arc::new(ModelLock::new(
        Model::new(ModelConfig { dim, ..ModelConfig::default() }).unwrap(),
    ));
    add_items(&mut model.write(), 500);
    let config = IndexConfig {
        rebuild_interval_ms: 0,
        full_scan_threshold: 0,
        ef_construction: 50,
        // Every core: a test of the graph alone, with no fold to spare a core for.
        build_threads: 0,
        ..IndexConfig::default()
    };
    let index = std::sync::Arc::new(Index::new(config));
    index.rebuild(&model).unwrap();
    assert_eq!(index.snapshot_len(), 500);
    add_items(&mut model.write(), 4_500);
    assert_eq!(index.stale_len(5_000), 4_500, "items added after the copy are scored outside");
    assert!(index.needs_rebuild(5_000), "an unnoted growth of the catalogue asks for a rebuild");

    let cancel = tokio_util::sync::CancellationToken::new();
    let builds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&builds);
    let thread = index
        .keep_converged(std::sync::Arc::clone(&model), cancel.clone(), move |_, _| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while index.snapshot_len() < 5_000 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cancel.cancel();
    thread.join().unwrap();
    assert_eq!(index.snapshot_len(), 5_000, "the snapshot covers the catalogue");
    assert_eq!(index.stale_len(5_000), 0, "nothing is left outside the graph");
    assert!(builds.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let guard = model.read();
    let query = clustered(dim, 100, 12_345, 0.3);
    let result = index.top_k(&guard, &query, 10, &Excluded::none());
    assert!(result.used_ann);
    assert!(result.candidates < 1_000, "{} candidates: the graph answers", result.candidates);
}

/// Below `full_scan_threshold` items the ranking is the exact scan, with the snapshot built;
/// above it the graph answers, and excluded rows never come back on either path.
#[test]
fn exact_scan_below_the_threshold_and_exclusions_on_both_paths() {
    let dim = 16;
    let model = ModelLock::new(Model::new(ModelConfig { dim, ..ModelConfig::default() }).unwrap());
    add_items(&mut model.write(), 3_000);
    let query = clustered(dim, 100, 777, 0.3);
    let guard_exact = {
        let guard = model.read();
        exact_top_k(&guard, &query, 20, &Excluded::none())
    };
    // Exclude the exact top 5: the answer must be the exact top 6..15 on the scan path.
    let excluded = Excluded::from_rows(
        guard_exact.iter().take(5).map(|item| model.read().item_row(&item.item_id).unwrap().0),
    );
    let expected: Vec<String> =
        guard_exact[5..15].iter().map(|item| item.item_id.clone()).collect();
    for (threshold, ann) in [(3_000, false), (2_999, true)] {
        let config = IndexConfig {
            full_scan_threshold: threshold,
            ef_construction: 50,
            // Every core: a test of the graph alone, with no fold to spare a core for.
            build_threads: 0,
            ..IndexConfig::default()
        };
        let index = Index::new(config);
        index.rebuild(&model).unwrap();
        let guard = model.read();
        let result = index.top_k(&guard, &query, 10, &excluded);
        assert_eq!(result.used_ann, ann, "threshold {threshold}");
        let ids: Vec<String> = result.items.iter().map(|item| item.item_id.clone()).collect();
        for item in &ids {
            let row = guard.item_row(item).unwrap().0;
            assert!(!excluded.contains(row), "excluded row {row} returned (threshold {threshold})");
        }
        if !ann {
            assert_eq!(ids, expected, "the scan is exact");
            assert_eq!(result.candidates, 3_000);
        }
    }
    // A user whose seen items crowd the top (the exact top 100 excluded, more than the
    // k x oversampling = 40 candidates of a first search): the graph search widens, and the
    // answer is still the exact top 10 of what is left, or nearly.
    let crowded = {
        let guard = model.read();
        exact_top_k(&guard, &query, 110, &Excluded::none())
    };
    let guard = model.read();
    let excluded = Excluded::from_rows(
        crowded[..100].iter().map(|item| guard.item_row(&item.item_id).unwrap().0),
    );
    let expected: HashSet<&str> = crowded[100..].iter().map(|item| item.item_id.as_str()).collect();
    let index = Index::new(IndexConfig {
        full_scan_threshold: 0,
        ef_construction: 50,
        // Every core: a test of the graph alone, with no fold to spare a core for.
        build_threads: 0,
        ..IndexConfig::default()
    });
    drop(guard);
    index.rebuild(&model).unwrap();
    let guard = model.read();
    let result = index.top_k(&guard, &query, 10, &excluded);
    assert!(result.used_ann);
    assert_eq!(result.items.len(), 10);
    let hits = result.items.iter().filter(|item| expected.contains(item.item_id.as_str())).count();
    // One query on a graph built by a parallel (nondeterministic) insert: 8 to 10 seen in
    // runs, so the floor leaves room; the recall floors over many users are the tests above.
    assert!(hits >= 7, "{hits} of the exact top 10 past 100 seen items");
}
