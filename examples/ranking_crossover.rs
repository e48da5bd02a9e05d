//! Where the exact scan stops being cheaper than the HNSW index (BENCHMARKS.md, "Ranking"):
//! for catalogues of several sizes (synthetic clustered item vectors, dim 64, the default
//! index settings), the mean time of one top-10 query by `exact_top_k` (every item), by
//! `bounded_top_k` (the same answer from the 8-bit copy, with the rows it re-scored) and by
//! `Index::top_k` on a fresh snapshot (`full_scan_threshold = 0`), 50 seen items excluded.
//!
//! Usage: `ranking_crossover [--exact-only] [--exact-head=N] [--similar] [sizes...]` (default
//! 1682 5000 10000 20000 50000 100000); `--exact-only` times the exact scan alone, without
//! building the index; `--exact-head=N` sets `index.exact_head` (default 512); `--similar`
//! times similar items instead (k = 10, 500 items asked for): the scan of every item, the
//! index's answer from a ready list, and the same after 1% of the items were noted as changed;
//! `--fresh-shares=0.1,0.2,...` then times the graph path with those shares of the items in the
//! fresh tier (noted as changed, so scored row by row), `exact_scan_share` lifted to 1 so that
//! the graph answers throughout: where it meets the exact scan is the break-even share.
//! `--events-between=N` (with `--exact-only`) then times the bounded scan with N events folded
//! before each of 200 queries (the items they moved are re-quantised by the query).

use std::time::Instant;

use embedstream::index::{bounded_top_k, exact_top_k, similar_items, Excluded, Index, IndexConfig};
use embedstream::model::{ItemRow, ItemState, Model, ModelConfig};

fn noise(seed: u64) -> f32 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x2545_F491_4F6C_DD1D);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

fn clustered(dim: usize, id: u64, spread: f32) -> Vec<f32> {
    let cluster = id % 1_000;
    (0..dim as u64)
        .map(|d| noise(cluster * 1_000 + d) * 0.5 + spread * noise(id * 7_919 + d + 1_000_000))
        .collect()
}

fn main() {
    let sizes: Vec<u64> = std::env::args().skip(1).filter_map(|arg| arg.parse().ok()).collect();
    // `--exact-only`: time the exact scan alone (no HNSW build, which dominates at 100,000).
    let exact_only = std::env::args().any(|arg| arg == "--exact-only");
    // `--exact-head=N`: `index.exact_head` (default: the configuration's).
    let exact_head = std::env::args()
        .find_map(|arg| arg.strip_prefix("--exact-head=").and_then(|n| n.parse().ok()))
        .unwrap_or(IndexConfig::default().exact_head);
    // `--events-between=N`: also time the bounded scan with N events folded before each query.
    let events_between: u64 = std::env::args()
        .find_map(|arg| arg.strip_prefix("--events-between=").and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let fresh_shares: Vec<f64> = std::env::args()
        .find_map(|arg| {
            arg.strip_prefix("--fresh-shares=")
                .map(|list| list.split(',').filter_map(|share| share.parse().ok()).collect())
        })
        .unwrap_or_default();
    let sizes =
        if sizes.is_empty() { vec![1_682, 5_000, 10_000, 20_000, 50_000, 100_000] } else { sizes };
    let dim = 64;
    let queries = 2_000u64;
    if std::env::args().any(|arg| arg == "--similar") {
        println!("items,scan_us,ready_us,ready_candidates,ready_after_1pct_us,after_candidates");
    } else {
        println!("items,build_s,exact_us,bounded_us,bounded_rescored,index_us,index_candidates");
    }
    for items in sizes {
        let mut model = Model::new(ModelConfig { dim, ..ModelConfig::default() }).expect("model");
        for item in 0..items {
            model
                .restore_item(ItemState {
                    id: format!("i{item}"),
                    row: item as u32,
                    vector: clustered(dim, item, 0.25),
                    context: vec![0.0; dim],
                    adagrad: 0.0,
                    context_adagrad: 0.0,
                    bias: 0.1 * noise(item + 77),
                    events: 1,
                    last_ts: 0,
                    popularity_log: 0.0,
                    version: 0,
                })
                .expect("restore");
        }
        model.requantize();
        let model = embedstream::model::ModelLock::new(model);
        let index = Index::new(IndexConfig {
            full_scan_threshold: 0,
            exact_head,
            exact_scan_share: if fresh_shares.is_empty() {
                IndexConfig::default().exact_scan_share
            } else {
                1.0
            },
            ..IndexConfig::default()
        });
        if std::env::args().any(|arg| arg == "--similar") {
            time_similar(&index, &model.read(), items);
            continue;
        }
        let build = if exact_only { 0.0 } else { index.rebuild(&model).unwrap_or(0.0) };
        let lock = model;
        let model = lock.read();
        let users: Vec<Vec<f32>> =
            (0..queries).map(|user| clustered(dim, user * 13 + 5, 0.3)).collect();
        let excluded: Vec<Excluded> = (0..queries)
            .map(|user| {
                Excluded::from_rows((0..50).map(|n| ((user * 7_919 + n * 104_729) % items) as u32))
            })
            .collect();
        let started = Instant::now();
        let mut sink = 0usize;
        for (user, excluded) in users.iter().zip(&excluded) {
            sink += exact_top_k(&model, user, 10, excluded).len();
        }
        let exact_us = started.elapsed().as_secs_f64() * 1e6 / queries as f64;
        let started = Instant::now();
        let mut rescored = 0usize;
        for (user, excluded) in users.iter().zip(&excluded) {
            let (items, scored) = bounded_top_k(&model, user, 10, excluded);
            sink += items.len();
            rescored += scored;
        }
        let bounded_us = started.elapsed().as_secs_f64() * 1e6 / queries as f64;
        let started = Instant::now();
        let mut candidates = 0usize;
        for (user, excluded) in users.iter().zip(&excluded).filter(|_| !exact_only) {
            let result = index.top_k(&model, user, 10, excluded);
            sink += result.items.len();
            candidates += result.candidates;
        }
        let index_us = started.elapsed().as_secs_f64() * 1e6 / queries as f64;
        println!(
            "{items},{build:.1},{exact_us:.1},{bounded_us:.1},{},{index_us:.1},{}",
            rescored / queries as usize,
            candidates / queries as usize
        );
        assert!(sink > 0);
        if events_between > 0 {
            // Under ingest: events folded between two queries (untimed) move 17 or more items
            // each, and the next query re-quantises them before it scans.
            drop(model);
            let (mut elapsed, mut again) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
            let (mut stale, mut rescored) = (0, 0);
            for (query, (user, excluded)) in users.iter().zip(&excluded).enumerate().take(200) {
                {
                    let mut writer = lock.write();
                    for n in 0..events_between {
                        let event = query as u64 * events_between + n;
                        writer.apply(
                            &format!("x{event}"),
                            &format!("u{}", event % 5_000),
                            &format!("i{}", (event * 7_919) % items),
                            1,
                            1.0,
                        );
                    }
                }
                let reader = lock.read();
                stale += reader.unquantized_items();
                let started = Instant::now();
                let (items, scored) = bounded_top_k(&reader, user, 10, excluded);
                elapsed += started.elapsed();
                sink += items.len();
                rescored += scored;
                let started = Instant::now();
                sink += bounded_top_k(&reader, user, 10, excluded).0.len();
                again += started.elapsed();
            }
            println!(
                "{events_between} events between queries: bounded {:.1} us ({} rows re-quantised, \
                 {} re-scored), the same query again {:.1} us",
                elapsed.as_secs_f64() * 1e6 / 200.0,
                stale / 200,
                rescored / 200,
                again.as_secs_f64() * 1e6 / 200.0
            );
            assert!(sink > 0);
            continue;
        }
        let mut noted = 0u64;
        for share in &fresh_shares {
            let target = ((share * items as f64) as u64).min(items);
            index.note_changed((noted..target).map(|n| ItemRow(((n * 7_919 + 13) % items) as u32)));
            noted = noted.max(target);
            let started = Instant::now();
            let mut candidates = 0usize;
            for (user, excluded) in users.iter().zip(&excluded) {
                let result = index.top_k(&model, user, 10, excluded);
                assert!(result.used_ann);
                candidates += result.candidates;
            }
            let index_us = started.elapsed().as_secs_f64() * 1e6 / queries as f64;
            println!(
                "fresh share {share}: index {index_us:.1} us, {} candidates",
                candidates / queries as usize
            );
        }
    }
}

/// Similar items for 500 items, k = 10: mean µs of the scan, of the ready list's answer, and of
/// that answer after 1% of the items were noted as changed (each then scored too).
fn time_similar(index: &Index, model: &Model, items: u64) {
    let asked: Vec<ItemRow> = (0..500).map(|n| ItemRow(((n * 104_729) % items) as u32)).collect();
    let mean_us = |run: &mut dyn FnMut(ItemRow) -> usize| {
        let started = Instant::now();
        let candidates: usize = asked.iter().map(|item| run(*item)).sum();
        (started.elapsed().as_secs_f64() * 1e6 / asked.len() as f64, candidates / asked.len())
    };
    let (scan_us, _) = mean_us(&mut |item| similar_items(model, item, 10).len());
    for item in &asked {
        index.similar_items(model, *item, 10);
    }
    let (ready_us, ready_candidates) =
        mean_us(&mut |item| index.similar_items(model, item, 10).candidates);
    index.note_changed((0..items / 100).map(|n| ItemRow(((n * 7_919 + 13) % items) as u32)));
    let (after_us, after_candidates) =
        mean_us(&mut |item| index.similar_items(model, item, 10).candidates);
    println!(
        "{items},{scan_us:.1},{ready_us:.1},{ready_candidates},{after_us:.1},{after_candidates}"
    );
}
