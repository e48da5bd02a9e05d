//! The exact scan on learned vectors: replays an event file through the fold (as `embedstream
//! replay` does, 4 partitions, default configuration), then times `bounded_top_k` (the ranking
//! below `index.full_scan_threshold` items and while too much of the catalogue is outside the
//! graph) against `exact_top_k` over 2,000 users' queries, each with the user's seen items
//! excluded, after checking on 200 of them that both give the same answer; then builds the
//! HNSW snapshot with the default index configuration and times `Index::top_k` on the same
//! queries with the whole catalogue in the graph (the idle path above the threshold).
//!
//! Usage: `cargo build --profile it --example bounded_scan_learned &&
//! target/it/examples/bounded_scan_learned FILE [jsonl|movielens] [REPEATS]`; prints one CSV line:
//! items, exact µs a query, bounded µs a query, rows the bounded scan scored in float, graph
//! path µs a query (empty below the threshold, where no graph is used), its recall@10 against
//! the exact answer, and the share of its queries that searched the graph (the others were
//! answered by the exact head and the fresh tier, `Index::top_k`).

use std::path::Path;
use std::time::Instant;

use embedstream::config::Config;
use embedstream::index::{bounded_top_k, exact_top_k, Excluded, Index};
use embedstream::model::UserRow;
use embedstream::replay::replay;
use embedstream::source::{read_records, Format};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: bounded_scan_learned FILE [jsonl|movielens] [REPEATS]");
        std::process::exit(2);
    };
    let format = match args.get(2).map(String::as_str) {
        Some("movielens") => Format::Movielens,
        _ => Format::Jsonl,
    };
    let repeats: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(3);
    let records = read_records(Path::new(path), format).expect("reading the event file");
    let config = Config::load(None).expect("default configuration");
    let (_, fold) =
        replay(&records, &config, 4, &indicatif::ProgressBar::hidden()).expect("replay");
    let index = Index::new(config.index.clone());
    let graph_built =
        model_above_threshold(&fold, &config) && index.rebuild(&fold.shared_model()).is_some();
    let model = fold.model();
    let users = model.user_count().max(1);
    let queries: Vec<(Vec<f32>, Excluded)> = (0..2_000)
        .map(|n| {
            let user = UserRow(((n * 7_919) % users) as u32);
            (model.query_vector(user), Excluded::from_rows(model.user_seen(user).map(|row| row.0)))
        })
        .collect();
    model.requantize();
    for (query, excluded) in queries.iter().take(200) {
        assert_eq!(
            bounded_top_k(&model, query, 10, excluded).0,
            exact_top_k(&model, query, 10, excluded),
            "the bounded scan must give the float scan's answer"
        );
    }
    let per_query =
        |started: Instant| started.elapsed().as_secs_f64() * 1e6 / (repeats * queries.len()) as f64;
    let started = Instant::now();
    let mut sink = 0;
    for _ in 0..repeats {
        for (query, excluded) in &queries {
            sink += exact_top_k(&model, query, 10, excluded).len();
        }
    }
    let exact_us = per_query(started);
    let started = Instant::now();
    let mut rescored = 0;
    for _ in 0..repeats {
        for (query, excluded) in &queries {
            let (items, scored) = bounded_top_k(&model, query, 10, excluded);
            sink += items.len();
            rescored += scored;
        }
    }
    let bounded_us = per_query(started);
    let (mut graph_us, mut recall, mut graph_searched) =
        (String::new(), String::new(), String::new());
    if graph_built {
        let (mut found, mut wanted) = (0, 0);
        for (query, excluded) in queries.iter().take(200) {
            let exact = exact_top_k(&model, query, 10, excluded);
            let answer = index.top_k(&model, query, 10, excluded);
            assert!(answer.used_ann, "a fresh snapshot of the whole catalogue answers");
            wanted += exact.len();
            found += answer.items.iter().filter(|item| exact.contains(item)).count();
        }
        recall = format!("{:.4}", found as f64 / wanted.max(1) as f64);
        let started = Instant::now();
        let mut searched = 0;
        for _ in 0..repeats {
            for (query, excluded) in &queries {
                let answer = index.top_k(&model, query, 10, excluded);
                sink += answer.items.len();
                searched += usize::from(answer.searched_graph);
            }
        }
        graph_us = format!("{:.1}", per_query(started));
        graph_searched = format!("{:.3}", searched as f64 / (repeats * queries.len()) as f64);
    }
    println!(
        "items,exact_us,bounded_us,bounded_rescored,graph_us,graph_recall_at_10,graph_searched"
    );
    println!(
        "{},{exact_us:.1},{bounded_us:.1},{},{graph_us},{recall},{graph_searched}",
        model.item_count(),
        rescored / (repeats * queries.len())
    );
    assert!(sink > 0);
}

fn model_above_threshold(fold: &embedstream::fold::Fold, config: &Config) -> bool {
    fold.model().item_count() > config.index.full_scan_threshold
}
