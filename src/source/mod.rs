//! Readers of input files, and the Kafka-compatible partitioner that lets a file replay see
//! the same per-partition order as a topic.
//!
//! - MovieLens `u.data` (tab-separated user, item, rating, unix seconds): one event per rating,
//!   `like` for a rating of 4 or 5, otherwise `view`, the rating kept, `ts` in milliseconds,
//!   `event_id` = `ml-<user>-<item>` (each user rates an item once). Rows are sorted stably by
//!   (timestamp, line number), as the file itself is not in time order. MovieLens has no
//!   clicks, and none are invented.
//! - JSON lines: one event per line, exactly the bytes a producer would publish.

mod movielens;
mod partition;

use std::io;
use std::path::Path;

pub use movielens::{read_movielens, Rating, RatingsError};
pub use partition::{kafka_partition, murmur2};

/// One record as it would sit in a topic: key, value and event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Kafka key (the user id); `None` when the line could not be read far enough to know it.
    pub key: Option<Vec<u8>>,
    /// Kafka value: the JSON event.
    pub value: Vec<u8>,
    /// 1-based line number in the input file.
    pub line: u64,
    /// Event time (ms) when the line has a valid integer `ts`; used as the Kafka record
    /// timestamp by `produce`.
    pub ts: Option<i64>,
}

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// GroupLens MovieLens `u.data`.
    Movielens,
    /// One JSON event per line.
    Jsonl,
}

/// Why an input file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io { path: String, source: io::Error },
    /// A MovieLens row is malformed.
    #[error(transparent)]
    Ratings(#[from] RatingsError),
}

/// Reads a whole file into records in publication order (MovieLens: sorted by time).
///
/// For JSON lines, the key is the `user_id` when the line is a JSON object with a string
/// `user_id`, and `None` otherwise (the record is still published, for the consumer to
/// dead-letter).
///
/// # Errors
/// [`SourceError`] when the file cannot be read or a MovieLens row is malformed.
pub fn read_records(path: &Path, format: Format) -> Result<Vec<Record>, SourceError> {
    let bytes = std::fs::read(path)
        .map_err(|source| SourceError::Io { path: path.display().to_string(), source })?;
    match format {
        Format::Movielens => Ok(read_movielens(&bytes)?.iter().map(Rating::to_record).collect()),
        Format::Jsonl => Ok(jsonl_records(&bytes)),
    }
}

fn jsonl_records(bytes: &[u8]) -> Vec<Record> {
    bytes
        .split(|byte| *byte == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (key, ts) = key_and_ts(line);
            Record { key, value: line.to_vec(), line: index as u64 + 1, ts }
        })
        .collect()
}

fn key_and_ts(line: &[u8]) -> (Option<Vec<u8>>, Option<i64>) {
    #[derive(serde::Deserialize)]
    struct KeyAndTs<'a> {
        #[serde(borrow)]
        user_id: Option<std::borrow::Cow<'a, str>>,
        ts: Option<i64>,
    }
    match serde_json::from_slice::<KeyAndTs<'_>>(line) {
        Ok(parsed) => (parsed.user_id.map(|user| user.as_bytes().to_vec()), parsed.ts),
        Err(_) => (None, None),
    }
}
