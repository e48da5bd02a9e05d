//! The prequential evaluation on MovieLens-100k reproduces the published popularity baseline
//! and the model beats it and the item co-occurrence kNN.

#![allow(clippy::unwrap_used)]

use crate::common;

#[test]
fn prequential_eval_reproduces_popularity_and_model_beats_it() {
    let data = common::movielens();
    let plot = std::env::temp_dir().join(format!("embedstream-eval-{}.svg", std::process::id()));
    let report = common::run_json(
        &["eval", "--json", "--input", data.to_str().unwrap(), "--plot", plot.to_str().unwrap()],
        &[],
    );
    assert_eq!(report["events"], 21_201);
    assert_eq!(report["users"], 928);
    assert_eq!(report["items"], 1_172);
    assert_eq!(report["batch_events"], 4_240);
    assert_eq!(report["warmup_events"], 2_120);
    assert_eq!(report["tested_events"], 14_841);

    let popularity = report["popularity"]["recall_at_10"].as_f64().unwrap();
    assert!(
        (0.1046..=0.1059).contains(&popularity),
        "popularity recall@10 {popularity} outside the published 0.1046..0.1059"
    );
    // The model's figure with the defaults chosen on the validation split is 0.1852 (README,
    // "Model quality"); the bar leaves a small margin and stays above the kNN's 0.168 of the
    // issue.
    let model = report["model"]["recall_at_10"].as_f64().unwrap();
    assert!(model >= 0.180, "model recall@10 {model} below the 0.180 bar");
    // The kNN baseline with its documented defaults measures 0.1468.
    let knn = report["knn"]["recall_at_10"].as_f64().unwrap();
    assert!(knn >= 0.140, "kNN recall@10 {knn} below the 0.140 bar");
    assert!(model > knn && knn > popularity, "model {model}, kNN {knn}, popularity {popularity}");
    assert!(report["knn"]["mpr"].as_f64().unwrap() < 0.5);
    assert!(report["knn"]["ndcg_at_10"].as_f64().unwrap() > 0.0);
    let model_mpr = report["model"]["mpr"].as_f64().unwrap();
    assert!((0.0..0.5).contains(&model_mpr), "MPR {model_mpr} no better than random");
    assert!(report["model"]["ndcg_at_10"].as_f64().unwrap() > 0.0);

    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("popularity"));
    assert!(svg.contains("kNN") && svg.contains("embedstream model"), "three curves");
    std::fs::remove_file(plot).ok();
}

#[test]
fn validation_split_never_reaches_the_test_events() {
    let data = common::movielens();
    let report = common::run_json(
        &[
            "eval",
            "--json",
            "--split",
            "validation",
            "--input",
            data.to_str().unwrap(),
            "--plot",
            "/dev/null",
        ],
        &[],
    );
    assert_eq!(report["tested_events"], 2_120);
    assert_eq!(report["batch_events"], 4_240);
    assert_eq!(report["warmup_events"], 0);
}
