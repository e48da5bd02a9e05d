//! The ANN index against exact search: recall@10 floors on MovieLens-trained items while
//! updates keep arriving, and on 100,000 synthetic items.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashSet;
use std::sync::RwLock;

use embedstream::config::Config;
use embedstream::index::{exact_top_k, Index, IndexConfig};
use embedstream::model::{ItemState, Model, ModelConfig, UserRow, UserState};

fn recall_at_10(
    index: &Index,
    model: &Model,
    users: impl Iterator<Item = UserRow>,
) -> (f64, usize) {
    let (mut hits, mut total, mut max_candidates) = (0usize, 0usize, 0usize);
    let none = HashSet::new();
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
fn keep_updating(model: &RwLock<Model>, index: &Index, events: usize, round: usize) {
    let mut model = model.write().unwrap();
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
        let mut guard = model.write().unwrap();
        let _ = guard.take_dirty();
    }
    let index = Index::new(IndexConfig { rebuild_interval_ms: 0, ..IndexConfig::default() });
    index.rebuild(&model).unwrap();
    assert_eq!(index.snapshot_len(), 1_682);

    let users = model.read().unwrap().user_count() as u32;
    let (fresh_recall, _) = recall_at_10(&index, &model.read().unwrap(), (0..users).map(UserRow));
    assert!(fresh_recall >= 0.95, "recall@10 on a fresh snapshot {fresh_recall}");

    // Updates keep arriving after the snapshot: the graph goes stale, the fresh tier grows,
    // and the engine's rebuild policy swaps in new snapshots, as in a live service.
    for round in 0..10 {
        keep_updating(&model, &index, 50, round);
        if index.needs_rebuild(model.read().unwrap().item_count()) {
            index.rebuild(&model).unwrap();
        }
        let guard = model.read().unwrap();
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
    let model = RwLock::new(Model::new(ModelConfig { dim, ..ModelConfig::default() }).unwrap());
    {
        let mut model = model.write().unwrap();
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
    let index_config =
        IndexConfig { ef_construction: 100, rebuild_interval_ms: 0, ..IndexConfig::default() };
    let index = Index::new(index_config);
    let seconds = index.rebuild(&model).unwrap();
    assert_eq!(index.snapshot_len(), items as usize);
    eprintln!("built a {items}-item snapshot in {seconds:.1} s");

    let (recall, candidates) = recall_at_10(&index, &model.read().unwrap(), (0..200).map(UserRow));
    eprintln!("recall@10 {recall}, at most {candidates} candidates");
    assert!(recall >= 0.95, "recall@10 on {items} items {recall}");
    assert!(candidates < 1_000, "queries stay sub-linear: {candidates} candidates");

    // Updates keep arriving; the engine's policy rebuilds once the fresh tier passes its share.
    let mut rebuilds = 0;
    for round in 0..10 {
        keep_updating(&model, &index, 100, round);
        if index.needs_rebuild(model.read().unwrap().item_count()) {
            index.rebuild(&model).unwrap();
            rebuilds += 1;
        }
        let (recall, candidates) =
            recall_at_10(&index, &model.read().unwrap(), (0..200).map(UserRow));
        eprintln!(
            "round {round}: recall@10 {recall}, fresh {}, at most {candidates} candidates",
            index.fresh_len()
        );
        assert!(recall >= 0.95, "round {round}: recall@10 on {items} items under updates {recall}");
    }
    eprintln!("{rebuilds} rebuilds during 1,000 updates");
}
