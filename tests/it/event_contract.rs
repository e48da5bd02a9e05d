//! The event contract: the decoder and `schemas/event.schema.json` agree on one corpus of valid
//! and invalid events, and every invalid event gets its expected reason and field.

#![allow(clippy::unwrap_used)]

use embedstream::event::{decode, DecodeLimits, EventTypes, RejectReason};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    input: Option<String>,
    input_hex: Option<String>,
    pad_to_bytes: Option<usize>,
    reason: String,
    field: Option<String>,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = match (&self.input, &self.input_hex) {
            (Some(text), None) => text.as_bytes().to_vec(),
            (None, Some(hex)) => (0..hex.len())
                .step_by(2)
                .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex"))
                .collect(),
            _ => panic!("case {:?} needs exactly one of input, input_hex", self.name),
        };
        if let Some(size) = self.pad_to_bytes {
            bytes.resize(size, b' ');
        }
        bytes
    }
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn invalid_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(root().join("tests/corpus/invalid.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn valid_lines() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("tests/corpus/valid.jsonl")).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn schema() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("schemas/event.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the schema compiles")
}

#[test]
fn corpus_is_big_enough_and_covers_every_decoder_reason() {
    let cases = invalid_cases();
    assert!(cases.len() >= 30, "only {} invalid cases", cases.len());
    let covered: std::collections::BTreeSet<String> =
        cases.iter().map(|case| case.reason.clone()).collect();
    for reason in RejectReason::ALL {
        if reason == RejectReason::TooFarInFuture || reason == RejectReason::KeyNotUserId {
            // Decisions about the record, not its value: the admission clock (window.rs) and
            // the record key (fold.rs, tests/it/ingest.rs).
            continue;
        }
        assert!(covered.contains(reason.as_str()), "no corpus case for {reason}");
    }
}

#[test]
fn every_invalid_event_gets_its_reason_and_field() {
    let types = EventTypes::default();
    let limits = DecodeLimits::default();
    let mut failures = Vec::new();
    for case in invalid_cases() {
        match decode(&case.bytes(), &types, &limits) {
            Ok(event) => failures.push(format!("{}: accepted as {event:?}", case.name)),
            Err(error) => {
                let reason = error.reason().as_str();
                let field = error.field().map(str::to_owned);
                if reason != case.reason || field != case.field {
                    failures.push(format!(
                        "{}: got {reason}/{field:?} ({error}), expected {}/{:?}",
                        case.name, case.reason, case.field
                    ));
                }
                let message = error.to_string();
                if let Some(field) = &case.field {
                    let names_it =
                        message.contains(field.as_str()) || reason == "unknown_event_type";
                    if !names_it {
                        failures.push(format!(
                            "{}: message {message:?} does not name {field}",
                            case.name
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn schema_rejects_every_invalid_event_it_can_see() {
    let validator = validator();
    let mut failures = Vec::new();
    for case in invalid_cases() {
        let bytes = case.bytes();
        let parsed = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
        let document_level = RejectReason::ALL
            .iter()
            .find(|reason| reason.as_str() == case.reason)
            .is_some_and(|reason| reason.is_document_level());
        match parsed {
            // Unparseable bytes never reach a schema: the decoder must call them document-level.
            None if document_level => {}
            None => failures.push(format!("{}: not JSON but reason {}", case.name, case.reason)),
            // Duplicate keys and size are invisible to JSON Schema; only those may pass it.
            Some(value) if validator.is_valid(&value) && !document_level => {
                failures.push(format!("{}: the schema accepts it", case.name));
            }
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_examples_pass_both_the_decoder_and_the_schema() {
    let validator = validator();
    let types = EventTypes::default();
    let limits = DecodeLimits::default();
    let lines = valid_lines();
    assert!(lines.len() >= 8);
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "schema refuses {line}: {errors:?}");
        decode(line.as_bytes(), &types, &limits)
            .unwrap_or_else(|error| panic!("decoder refuses {line}: {error}"));
    }
}

#[test]
fn schema_constants_match_the_default_configuration() {
    let schema = schema();
    let properties = &schema["properties"];
    let mut enum_names: Vec<String> = properties["event_type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap().to_owned())
        .collect();
    enum_names.sort();
    let mut configured: Vec<String> = EventTypes::default().names().map(str::to_owned).collect();
    configured.sort();
    assert_eq!(enum_names, configured);
    let limits = DecodeLimits::default();
    assert_eq!(schema["$defs"]["id"]["maxLength"], limits.max_id_chars);
    assert_eq!(properties["session_id"]["maxLength"], limits.max_id_chars);
    assert_eq!(properties["rating"]["maximum"].as_f64(), Some(limits.max_rating));
    assert_eq!(properties["weight"]["maximum"].as_f64(), Some(limits.max_weight));
    assert_eq!(properties["ts"]["minimum"], 100_000_000_000i64);
    assert_eq!(properties["ts"]["maximum"], 99_999_999_999_999i64);
}

#[test]
fn decoder_survives_arbitrary_bytes_and_truncations() {
    let types = EventTypes::default();
    let limits = DecodeLimits::default();
    // Every prefix and every single-byte corruption of every valid example: never a panic,
    // and whatever is accepted is a complete event.
    for line in valid_lines() {
        let bytes = line.as_bytes();
        for end in 0..bytes.len() {
            let _ = decode(&bytes[..end], &types, &limits);
        }
        for at in 0..bytes.len() {
            for replacement in [0u8, b'"', b'{', b'}', b'\\', 0xff, b'9', b','] {
                let mut corrupted = bytes.to_vec();
                corrupted[at] = replacement;
                if let Ok(event) = decode(&corrupted, &types, &limits) {
                    assert!(
                        !event.user_id.as_str().is_empty() && !event.item_id.as_str().is_empty()
                    );
                }
            }
        }
    }
}
