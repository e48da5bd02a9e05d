//! Issue 11, item 4: `embedstream export` writes what a namespace learned in a form notebooks
//! load (`.npy` with `ids.json`, or JSON lines), and a score computed from the files is the
//! score the service serves. Called by the service test, once its namespace holds MovieLens.

use std::path::Path;
use std::process::Command;

use embedstream::config::Config;
use ndarray::{Array1, Array2};
use ndarray_npy::ReadNpyExt;
use serde_json::Value;

fn export(config: &Config, args: &[&str]) -> Vec<u8> {
    let output = Command::new(crate::common::embedstream_bin())
        .args(["export", "--namespace", &config.store.namespace])
        .args(args)
        .env("EMBEDSTREAM_STORE__URL", &config.store.url)
        .output()
        .expect("embedstream runs");
    assert!(
        output.status.success(),
        "export {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn npy2(path: &Path) -> Array2<f32> {
    Array2::<f32>::read_npy(std::fs::File::open(path).unwrap()).unwrap()
}

fn ids(dir: &Path) -> Vec<String> {
    serde_json::from_slice(&std::fs::read(dir.join("ids.json")).unwrap()).unwrap()
}

/// Exports users and items of `config`'s namespace in both formats and checks them against the
/// stored model and against `served`, the score the service answered for (`user`, `item`).
pub fn check_export(config: &Config, user: &str, item: &str, served: f64) {
    let model = embedstream::app::load_stored_model(config).unwrap();
    let dir = std::env::temp_dir().join(format!("{}-export", config.store.namespace));
    let (users_dir, items_dir) = (dir.join("users"), dir.join("items"));
    for (what, out) in [("users", &users_dir), ("items", &items_dir)] {
        export(config, &["--what", what, "--format", "npy", "--output", out.to_str().unwrap()]);
    }
    let (user_ids, item_ids) = (ids(&users_dir), ids(&items_dir));
    assert_eq!(user_ids.len(), model.user_count());
    assert_eq!(item_ids.len(), model.item_count());
    assert!(user_ids.windows(2).all(|pair| pair[0] < pair[1]), "users sorted by id");

    let queries = npy2(&users_dir.join("queries.npy"));
    let vectors = npy2(&items_dir.join("vectors.npy"));
    let bias = Array1::<f32>::read_npy(std::fs::File::open(items_dir.join("bias.npy")).unwrap());
    let bias = bias.unwrap();
    assert_eq!(queries.dim(), (model.user_count(), model.dim()));
    assert_eq!(vectors.dim(), (model.item_count(), model.dim()));
    let events =
        Array1::<u64>::read_npy(std::fs::File::open(items_dir.join("events.npy")).unwrap());
    assert_eq!(events.unwrap().sum(), model.events_applied(), "every event counted once per item");

    let u = user_ids.iter().position(|id| id == user).unwrap();
    let i = item_ids.iter().position(|id| id == item).unwrap();
    let row = model.item_row(item).unwrap();
    assert_eq!(vectors.row(i).to_vec(), model.item_vector(row), "the stored vector, bit for bit");
    let score = queries.row(u).dot(&vectors.row(i)) + bias[i];
    assert!((f64::from(score) - served).abs() < 1e-4, "score from files {score}, served {served}");

    let lines = export(config, &["--what", "items"]);
    let lines: Vec<Value> = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), model.item_count());
    let line = &lines[i];
    assert_eq!(line["id"], item);
    assert_eq!(line["vector"].as_array().unwrap().len(), model.dim());
    assert!((line["bias"].as_f64().unwrap() - f64::from(bias[i])).abs() < 1e-6);
    assert!(line["context"].is_array() && line["events"].is_u64() && line["last_ts"].is_i64());
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = Command::new(crate::common::embedstream_bin())
        .args([
            "export",
            "--namespace",
            &config.store.namespace,
            "--what",
            "users",
            "--format",
            "npy",
        ])
        .env("EMBEDSTREAM_STORE__URL", &config.store.url)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--output"));
}
