//! The evaluation stream from anyone's data: MovieLens `u.data`, JSON lines in the event
//! contract's format, or CSV with a column mapping; a `--positive` filter; time order.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::event::{decode, DecodeLimits, EventTypes};
use crate::source::read_movielens;

/// One positive event of the evaluation stream.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalEvent {
    /// Stable id (seeds the model's negative sampling).
    pub event_id: String,
    /// User id.
    pub user: String,
    /// Item id.
    pub item: String,
    /// Event time, ms.
    pub ts_ms: i64,
    /// Weight the model learns with: the type's configured weight x the event's `weight`.
    pub weight: f32,
}

/// Input file formats of `eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// GroupLens MovieLens `u.data`: user, item, rating, unix seconds, tab-separated. Ratings
    /// of 4 or 5 are `like` events, others `view` (as `replay` maps them).
    Movielens,
    /// One event per line, the event contract (schemas/event.schema.json).
    Jsonl,
    /// Comma-separated values with a header row, read through [`CsvMapping`].
    Csv,
}

/// Which header columns of a CSV file hold the event fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CsvMapping {
    /// Header names by field: `user_id`, `item_id` and `ts` are required; `event_type`,
    /// `rating`, `weight` and `event_id` are optional.
    pub columns: HashMap<String, String>,
    /// Unit of the `ts` column.
    pub ts_unit: TsUnit,
    /// Event type of rows without an `event_type` column (default `like`).
    pub event_type: String,
    /// Field delimiter (default `,`).
    pub delimiter: u8,
}

/// Unit of a timestamp column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TsUnit {
    /// Unix seconds.
    Seconds,
    /// Unix milliseconds.
    Millis,
}

/// What counts as a positive event: all listed conditions hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Positive {
    /// Event types that count (empty: every type).
    pub event_types: Vec<String>,
    /// Smallest rating that counts (events without a rating fail it).
    pub min_rating: Option<f32>,
}

/// Why the input could not be turned into an evaluation stream.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A MovieLens row is malformed.
    #[error(transparent)]
    Movielens(#[from] crate::source::RatingsError),
    /// A JSON line is not a valid event.
    #[error("line {line}: invalid event ({code}): {message}")]
    Event { line: u64, code: &'static str, message: String },
    /// A CSV row could not be read or a field is malformed.
    #[error("csv line {line}: {message}")]
    Csv { line: u64, message: String },
    /// The CSV mapping names a column the header lacks, or lacks a required field.
    #[error("csv mapping: {message}")]
    Mapping { message: String },
    /// The `--positive` expression is malformed or names an unknown event type.
    #[error("--positive {term:?}: {message}")]
    Positive { term: String, message: String },
}

impl Positive {
    /// Parses a comma-separated list of event-type names and at most one `rating>=X`.
    ///
    /// # Errors
    /// [`InputError::Positive`] for an unknown type or a malformed rating bound.
    pub fn parse(spec: &str, types: &EventTypes) -> Result<Self, InputError> {
        let mut positive = Self::default();
        for term in spec.split(',').map(str::trim).filter(|term| !term.is_empty()) {
            let fail = |message: &str| InputError::Positive {
                term: term.to_owned(),
                message: message.to_owned(),
            };
            if let Some(bound) = term.strip_prefix("rating>=") {
                let value: f32 = bound.trim().parse().map_err(|_| fail("not a number"))?;
                if !value.is_finite() || positive.min_rating.is_some() {
                    return Err(fail("one finite rating bound at most"));
                }
                positive.min_rating = Some(value);
            } else if types.id(term).is_some() {
                positive.event_types.push(term.to_owned());
            } else {
                let known: Vec<&str> = types.names().collect();
                return Err(InputError::Positive {
                    term: term.to_owned(),
                    message: format!("not rating>=X nor a configured event type {known:?}"),
                });
            }
        }
        Ok(positive)
    }

    fn accepts(&self, event_type: &str, rating: Option<f32>) -> bool {
        let type_ok =
            self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type);
        let rating_ok = self.min_rating.is_none_or(|min| rating.is_some_and(|r| r >= min));
        type_ok && rating_ok
    }
}

/// What a reader needs besides the file.
#[derive(Debug, Clone)]
pub struct InputSpec<'a> {
    /// File format.
    pub format: InputFormat,
    /// Event types and weights (from the configuration).
    pub types: &'a EventTypes,
    /// Decoder limits for JSON lines.
    pub limits: &'a DecodeLimits,
    /// Positive filter.
    pub positive: &'a Positive,
    /// Column mapping, for CSV.
    pub csv: Option<&'a CsvMapping>,
}

/// Reads the positive events of a file, sorted stably by (event time, line).
///
/// # Errors
/// [`InputError`] for an unreadable file or the first malformed row, with its line.
pub fn read_eval_events(path: &Path, spec: &InputSpec<'_>) -> Result<Vec<EvalEvent>, InputError> {
    let bytes = std::fs::read(path)
        .map_err(|source| InputError::Io { path: path.display().to_string(), source })?;
    let mut rows = match spec.format {
        InputFormat::Movielens => movielens_rows(&bytes)?,
        InputFormat::Jsonl => jsonl_rows(&bytes, spec)?,
        InputFormat::Csv => super::csv_input::csv_rows(&bytes, spec.csv)?,
    };
    rows.sort_by_key(|row| (row.event.ts_ms, row.line));
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(type_id) = spec.types.id(&row.event_type) else {
            return Err(InputError::Csv {
                line: row.line,
                message: format!("event type {:?} is not configured", row.event_type),
            });
        };
        if spec.positive.accepts(&row.event_type, row.rating) {
            let weight = spec.types.weight(type_id) * row.event.weight;
            events.push(EvalEvent { weight, ..row.event });
        }
    }
    Ok(events)
}

/// One row before filtering: `event.weight` holds the event's own weight (default 1).
pub(super) struct Row {
    pub line: u64,
    pub event_type: String,
    pub rating: Option<f32>,
    pub event: EvalEvent,
}

fn movielens_rows(bytes: &[u8]) -> Result<Vec<Row>, InputError> {
    Ok(read_movielens(bytes)?
        .into_iter()
        .map(|rating| Row {
            line: rating.line,
            event_type: rating.event_type().to_owned(),
            rating: Some(f32::from(rating.rating)),
            event: EvalEvent {
                event_id: rating.event_id(),
                ts_ms: rating.ts_ms(),
                user: rating.user,
                item: rating.item,
                weight: 1.0,
            },
        })
        .collect())
}

fn jsonl_rows(bytes: &[u8], spec: &InputSpec<'_>) -> Result<Vec<Row>, InputError> {
    let mut rows = Vec::new();
    for (index, line) in bytes.split(|byte| *byte == b'\n').enumerate() {
        let line_number = index as u64 + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let event = decode(line, spec.types, spec.limits).map_err(|error| InputError::Event {
            line: line_number,
            code: error.reason().as_str(),
            message: error.to_string(),
        })?;
        rows.push(Row {
            line: line_number,
            event_type: spec.types.name(event.event_type).to_owned(),
            rating: event.rating,
            event: EvalEvent {
                event_id: event.event_id,
                user: event.user_id.0,
                item: event.item_id.0,
                ts_ms: event.ts.0,
                weight: event.weight.unwrap_or(1.0),
            },
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_combines_types_and_a_rating_bound() {
        let types = EventTypes::default();
        let positive = Positive::parse("cart, buy,rating>=4", &types).unwrap();
        assert_eq!(positive.event_types, ["cart", "buy"]);
        assert_eq!(positive.min_rating, Some(4.0));
        assert!(positive.accepts("buy", Some(4.0)));
        assert!(!positive.accepts("buy", Some(3.5)));
        assert!(!positive.accepts("buy", None), "no rating fails a rating bound");
        assert!(!positive.accepts("view", Some(5.0)));
        let everything = Positive::parse("", &types).unwrap();
        assert!(everything.accepts("view", None));
    }

    #[test]
    fn malformed_positive_terms_are_refused() {
        let types = EventTypes::default();
        for spec in ["purchase", "rating>=x", "rating>=1,rating>=2", "rating>=inf"] {
            assert!(
                matches!(Positive::parse(spec, &types), Err(InputError::Positive { .. })),
                "{spec}"
            );
        }
    }
}
