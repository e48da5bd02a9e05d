//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The MovieLens-100k `u.data` that `scripts/fetch-movielens.sh` writes (the test command runs
/// it first). Missing data is a failure, not a skip.
pub fn movielens() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/ml-100k/u.data");
    assert!(path.exists(), "{} is missing: run scripts/fetch-movielens.sh", path.display());
    path
}

/// The `embedstream` binary: `EMBEDSTREAM_TEST_BIN` when set (a copy of one's own build, when
/// several worktrees share one target directory and another build may replace
/// `target/it/embedstream` while tests run), else the one cargo built with this test binary.
pub fn embedstream_bin() -> PathBuf {
    std::env::var_os("EMBEDSTREAM_TEST_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_embedstream")), PathBuf::from)
}

/// Runs the `embedstream` binary and returns its stdout parsed as JSON.
pub fn run_json(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let output = std::process::Command::new(embedstream_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("embedstream runs");
    assert!(
        output.status.success(),
        "embedstream {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

pub mod auth;
pub mod faults;
pub mod http;
pub mod infra;
pub mod poison;
