//! `embedstream replay` on real data: deterministic digests, complete counts, and bad lines
//! rejected by reason without stopping the fold.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::Write;

#[test]
fn two_replays_of_movielens_print_the_same_digest() {
    let data = common::movielens();
    let args = ["replay", "--json", "--format", "movielens", "--input", data.to_str().unwrap()];
    let first = common::run_json(&args, &[]);
    let second = common::run_json(&args, &[]);
    assert_eq!(first["received"], 100_000);
    assert_eq!(first["applied"], 100_000);
    assert_eq!(first["rejected"], 0);
    assert_eq!(first["users"], 943);
    assert_eq!(first["items"], 1_682);
    let digest = first["digest"].as_str().unwrap();
    assert_eq!(digest.len(), 64);
    assert_eq!(first["digest"], second["digest"]);

    let reseeded = common::run_json(&args, &[("EMBEDSTREAM_MODEL__SEED", "7")]);
    assert_ne!(reseeded["digest"], first["digest"], "the model seed must reach the state");
}

#[test]
fn partitioned_replay_is_deterministic_too() {
    let data = common::movielens();
    let args = [
        "replay",
        "--json",
        "--format",
        "movielens",
        "--partitions",
        "4",
        "--input",
        data.to_str().unwrap(),
    ];
    let first = common::run_json(&args, &[]);
    let second = common::run_json(&args, &[]);
    assert_eq!(first["applied"], 100_000);
    assert_eq!(first["partitions"], 4);
    assert_eq!(first["digest"], second["digest"]);
}

#[test]
fn bad_lines_are_counted_by_reason_and_the_rest_applied() {
    let path =
        std::env::temp_dir().join(format!("embedstream-replay-{}.jsonl", std::process::id()));
    let mut file = std::fs::File::create(&path).unwrap();
    let good = |n: u32| {
        format!(
            r#"{{"event_id":"e{n}","user_id":"u{}","item_id":"i{}","event_type":"click","ts":{}}}"#,
            n % 3,
            n % 5,
            1_700_000_000_000u64 + u64::from(n) * 100
        )
    };
    for n in 0..50 {
        writeln!(file, "{}", good(n)).unwrap();
    }
    writeln!(file, "not json").unwrap();
    writeln!(
        file,
        r#"{{"event_id":"x","user_id":"u","item_id":"i","event_type":"click","ts":1700000000}}"#
    )
    .unwrap();
    writeln!(file, r#"{{"event_id":"y","user_id":"u","item_id":"i","event_type":"purchase","ts":1700000000000}}"#).unwrap();
    writeln!(file, "{}", good(3)).unwrap(); // a producer retry: same event_id
    drop(file);
    let summary = common::run_json(&["replay", "--json", "--input", path.to_str().unwrap()], &[]);
    std::fs::remove_file(&path).ok();
    assert_eq!(summary["received"], 54);
    assert_eq!(summary["applied"], 50);
    assert_eq!(summary["duplicates"], 1);
    assert_eq!(summary["rejected"], 3);
    assert_eq!(summary["rejected_by_reason"]["malformed_json"], 1);
    assert_eq!(summary["rejected_by_reason"]["timestamp_in_seconds"], 1);
    assert_eq!(summary["rejected_by_reason"]["unknown_event_type"], 1);
    assert_eq!(summary["users"], 3);
    assert_eq!(summary["items"], 5);
}

#[test]
fn unknown_config_keys_are_errors() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .args(["replay", "--input", "/dev/null"])
        .env("EMBEDSTREAM_MODEL__DIMM", "3")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dimm"), "error should name the unknown key: {stderr}");
}
