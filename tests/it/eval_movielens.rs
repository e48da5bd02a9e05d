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
    // The kNN baseline with its documented defaults measures 0.1610 (the bar: 0.160).
    let knn = report["knn"]["recall_at_10"].as_f64().unwrap();
    assert!(knn >= 0.160, "kNN recall@10 {knn} below the 0.160 bar");
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

/// The same 5-star stream as JSON lines (the event contract) and as CSV (with a column
/// mapping) gives exactly the report of `u.data`: same events, same order, same model digest.
#[test]
fn jsonl_and_csv_inputs_give_the_movielens_report() {
    let data = common::movielens();
    let ratings = embedstream::source::read_movielens(&std::fs::read(&data).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("embedstream-eval-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("events.jsonl");
    let csv = dir.join("ratings.csv");
    let mut jsonl_text = String::new();
    let mut csv_text = String::from("userId;movieId;stars;when;id\n");
    for rating in &ratings {
        jsonl_text.push_str(std::str::from_utf8(&rating.to_record().value).unwrap());
        jsonl_text.push('\n');
        csv_text.push_str(&format!(
            "{};{};{};{};{}\n",
            rating.user,
            rating.item,
            rating.rating,
            rating.timestamp_s,
            rating.event_id()
        ));
    }
    std::fs::write(&jsonl, jsonl_text).unwrap();
    std::fs::write(&csv, csv_text).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["eval", "--json", "--split", "validation", "--plot", "/dev/null"];
        args.extend_from_slice(extra);
        common::run_json(&args, &[])
    };
    let movielens = run(&["--input", data.to_str().unwrap()]);
    let from_jsonl =
        run(&["--format", "jsonl", "--positive", "rating>=5", "--input", jsonl.to_str().unwrap()]);
    let from_csv = run(&[
        "--format",
        "csv",
        "--csv-columns",
        "user_id=userId,item_id=movieId,rating=stars,ts=when,event_id=id",
        "--csv-ts-unit",
        "seconds",
        "--csv-delimiter",
        ";",
        "--positive",
        "rating>=5",
        "--input",
        csv.to_str().unwrap(),
    ]);
    for report in [&from_jsonl, &from_csv] {
        for field in ["events", "users", "items", "tested_events", "model_digest"] {
            assert_eq!(report[field], movielens[field], "{field}");
        }
        for ranker in ["popularity", "knn", "model"] {
            assert_eq!(report[ranker]["hits"], movielens[ranker]["hits"], "{ranker}");
        }
    }
    // --positive selects: every like (4 and 5 stars) is a bigger stream than 5 stars only.
    let likes =
        run(&["--format", "jsonl", "--positive", "like", "--input", jsonl.to_str().unwrap()]);
    assert!(likes["events"].as_u64().unwrap() > movielens["events"].as_u64().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

/// Bad input is an error that names what is wrong, never a panic.
#[test]
fn bad_eval_input_is_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("embedstream-eval-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("bad.jsonl");
    std::fs::write(&jsonl, "{\"event_id\":\"e1\",\"user_id\":\"u\",\"item_id\":\"i\",\"event_type\":\"like\",\"ts\":1700000000000}\n{\"oops\":1}\n").unwrap();
    let csv = dir.join("bad.csv");
    std::fs::write(&csv, "u,i,t\nalice,x,notanumber\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--format", "jsonl", "--input", jsonl.to_str().unwrap()], "line 2"),
        (
            vec![
                "--format",
                "csv",
                "--csv-columns",
                "user_id=u,item_id=i,ts=t",
                "--input",
                csv.to_str().unwrap(),
            ],
            "csv line 2",
        ),
        (vec!["--format", "csv", "--input", csv.to_str().unwrap()], "--csv-columns"),
        (
            vec![
                "--format",
                "csv",
                "--csv-columns",
                "user_id=u,item_id=nope,ts=t",
                "--input",
                csv.to_str().unwrap(),
            ],
            "\"nope\"",
        ),
        (vec!["--positive", "purchase"], "--positive"),
        (vec!["--batch-fraction", "0.95"], "batch_fraction"),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["eval", "--json", "--plot", "/dev/null"];
        args.extend_from_slice(&extra);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_embedstream"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
    std::fs::remove_dir_all(dir).ok();
}
