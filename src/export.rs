//! `embedstream export`: the learned vectors of a Redis namespace, for notebooks.
//!
//! The namespace is loaded whole (as `embedstream digest` does, so it needs memory for every
//! user and item) and written in row order, users sorted by id and items in order of first
//! appearance:
//!
//! - `jsonl`: one object per line. Users: `id`, `vector` (p_u), `query` (the ranking query:
//!   p_u plus the recency-weighted context vectors of the user's recent items), `events`,
//!   `last_ts` (ms). Items: `id`, `vector` (q_i), `context` (c_i), `bias`, `events`,
//!   `last_ts` (ms).
//! - `npy`: a directory holding `ids.json` (a JSON array of the ids, row order) and one NumPy
//!   `.npy` file per field, row i of each belonging to `ids[i]`: `vectors.npy` (float32, n x
//!   dim) and, for users, `queries.npy` (float32, n x dim), for items `contexts.npy` (float32,
//!   n x dim) and `bias.npy` (float32, n); `events.npy` (uint64, n) and `last_ts.npy` (int64,
//!   n) for both.
//!
//! A served score is `queries[u] . vectors[i] + bias[i]` (float32; the HTTP routes compute the
//! same sum in f32).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use ndarray::{Array1, Array2};
use ndarray_npy::WriteNpyExt;
use serde_json::json;

use crate::model::{ItemRow, Model, UserRow};

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// User vectors and queries.
    Users,
    /// Item vectors, context vectors and biases.
    Items,
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line (to a file, or stdout without `--output`).
    Jsonl,
    /// A directory of `.npy` files plus `ids.json`.
    Npy,
}

/// Users sorted by id (the row order of every exported file).
fn user_rows(model: &Model) -> Vec<UserRow> {
    let mut rows: Vec<UserRow> = (0..model.user_count() as u32).map(UserRow).collect();
    rows.sort_by(|a, b| model.user_id(*a).cmp(model.user_id(*b)));
    rows
}

fn item_rows(model: &Model) -> Vec<ItemRow> {
    (0..model.item_count() as u32).map(ItemRow).collect()
}

/// Writes `what` of `model` as JSON lines to `out`; returns how many lines.
///
/// # Errors
/// Write errors.
pub fn write_jsonl(model: &Model, what: What, out: &mut dyn Write) -> anyhow::Result<usize> {
    let mut lines = 0;
    match what {
        What::Users => {
            for row in user_rows(model) {
                let state = model.user_state(row);
                let line = json!({
                    "id": state.id,
                    "vector": state.vector,
                    "query": model.query_vector(row),
                    "events": state.events,
                    "last_ts": state.last_ts,
                });
                writeln!(out, "{line}")?;
                lines += 1;
            }
        }
        What::Items => {
            for row in item_rows(model) {
                let state = model.item_state(row);
                let line = json!({
                    "id": state.id,
                    "vector": state.vector,
                    "context": state.context,
                    "bias": state.bias,
                    "events": state.events,
                    "last_ts": state.last_ts,
                });
                writeln!(out, "{line}")?;
                lines += 1;
            }
        }
    }
    out.flush()?;
    Ok(lines)
}

fn save<A: WriteNpyExt>(array: &A, dir: &Path, name: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    array.write_npy(BufWriter::new(file)).with_context(|| format!("writing {}", path.display()))
}

fn matrix(rows: usize, dim: usize, data: Vec<f32>) -> anyhow::Result<Array2<f32>> {
    Array2::from_shape_vec((rows, dim), data).context("vector lengths differ from dim")
}

/// Writes `what` of `model` as `.npy` files and `ids.json` into the directory `dir` (created
/// if missing); returns how many rows.
///
/// # Errors
/// File-system errors.
pub fn write_npy(model: &Model, what: What, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dim = model.dim();
    let (ids, events, last_ts) = match what {
        What::Users => {
            let rows = user_rows(model);
            let (mut vectors, mut queries) = (Vec::new(), Vec::new());
            let (mut ids, mut events, mut last_ts) = (Vec::new(), Vec::new(), Vec::new());
            for row in &rows {
                let state = model.user_state(*row);
                vectors.extend_from_slice(&state.vector);
                queries.extend(model.query_vector(*row));
                ids.push(state.id);
                events.push(state.events);
                last_ts.push(state.last_ts);
            }
            save(&matrix(rows.len(), dim, vectors)?, dir, "vectors.npy")?;
            save(&matrix(rows.len(), dim, queries)?, dir, "queries.npy")?;
            (ids, events, last_ts)
        }
        What::Items => {
            let rows = item_rows(model);
            let (mut vectors, mut contexts, mut bias) = (Vec::new(), Vec::new(), Vec::new());
            let (mut ids, mut events, mut last_ts) = (Vec::new(), Vec::new(), Vec::new());
            for row in &rows {
                let state = model.item_state(*row);
                vectors.extend_from_slice(&state.vector);
                contexts.extend_from_slice(&state.context);
                bias.push(state.bias);
                ids.push(state.id);
                events.push(state.events);
                last_ts.push(state.last_ts);
            }
            save(&matrix(rows.len(), dim, vectors)?, dir, "vectors.npy")?;
            save(&matrix(rows.len(), dim, contexts)?, dir, "contexts.npy")?;
            save(&Array1::from_vec(bias), dir, "bias.npy")?;
            (ids, events, last_ts)
        }
    };
    save(&Array1::from_vec(events), dir, "events.npy")?;
    save(&Array1::from_vec(last_ts), dir, "last_ts.npy")?;
    let path = dir.join("ids.json");
    std::fs::write(&path, serde_json::to_vec(&ids)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(ids.len())
}
