//! Thirty kinds of poison record, each with the reason the service must give it in the
//! dead-letter topic. A poison record's Kafka key is `poison-KK-N` (KK the kind's index), so a
//! dead letter names its kind even when the value is not text.

use embedstream::source::Record;

/// One kind: a name, the expected `reason` header and how to make the value of instance `n`
/// whose record timestamp is `ts` (ms).
pub struct Kind {
    pub name: &'static str,
    pub reason: &'static str,
    pub make: fn(u64, i64) -> Vec<u8>,
}

/// A well-formed event but for `fields`, which replace the tail after the ids.
fn event(n: u64, tail: &str) -> Vec<u8> {
    format!(r#"{{"event_id":"poison-{n}","user_id":"pu-{n}","item_id":"pi-{n}",{tail}}}"#)
        .into_bytes()
}

fn view(n: u64, ts: i64, extra: &str) -> Vec<u8> {
    event(n, &format!(r#""event_type":"view","ts":{ts}{extra}"#))
}

/// Every kind, in a fixed order (the index is part of the key).
pub const KINDS: [Kind; 30] = [
    Kind {
        name: "not utf-8 at all",
        reason: "invalid_utf8",
        make: |n, _| {
            let mut bytes = vec![0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1];
            bytes.extend_from_slice(&n.to_le_bytes());
            bytes
        },
    },
    Kind {
        name: "invalid utf-8 inside a string",
        reason: "invalid_utf8",
        make: |n, ts| {
            let mut bytes = view(n, ts, "");
            bytes[15] = 0xc0; // inside "poison-…" of event_id: an overlong lead byte
            bytes
        },
    },
    Kind { name: "empty value", reason: "malformed_json", make: |_, _| Vec::new() },
    Kind {
        name: "truncated json",
        reason: "malformed_json",
        make: |n, ts| {
            let mut bytes = view(n, ts, "");
            bytes.truncate(bytes.len() - 7);
            bytes
        },
    },
    Kind {
        name: "nul bytes",
        reason: "malformed_json",
        make: |n, ts| {
            let mut bytes = view(n, ts, "");
            bytes[10] = 0; // a raw control character inside a string
            bytes.insert(0, 0);
            bytes
        },
    },
    Kind {
        name: "plain text",
        reason: "malformed_json",
        make: |n, _| format!("user {n} bought something").into_bytes(),
    },
    Kind {
        name: "single quotes",
        reason: "malformed_json",
        make: |n, ts| String::from_utf8(view(n, ts, "")).unwrap().replace('"', "'").into_bytes(),
    },
    Kind { name: "trailing comma", reason: "malformed_json", make: |n, ts| view(n, ts, ",") },
    Kind {
        name: "NaN literal",
        reason: "malformed_json",
        make: |n, ts| view(n, ts, r#","weight":NaN"#),
    },
    Kind {
        name: "byte order mark",
        reason: "malformed_json",
        make: |n, ts| {
            let mut bytes = "\u{feff}".as_bytes().to_vec();
            bytes.extend(view(n, ts, ""));
            bytes
        },
    },
    Kind {
        name: "huge value over the size limit",
        reason: "too_large",
        make: |n, ts| view(n, ts, &format!(r#","session_id":"{}""#, "s".repeat(5000))),
    },
    Kind {
        name: "garbage after the object",
        reason: "trailing_characters",
        make: |n, ts| {
            let mut bytes = view(n, ts, "");
            bytes.extend_from_slice(b" trailing");
            bytes
        },
    },
    Kind {
        name: "two concatenated objects",
        reason: "trailing_characters",
        make: |n, ts| {
            let mut bytes = view(n, ts, "");
            bytes.extend(view(n + 1, ts, ""));
            bytes
        },
    },
    Kind {
        name: "json array",
        reason: "not_an_object",
        make: |n, ts| {
            let mut bytes = b"[".to_vec();
            bytes.extend(view(n, ts, ""));
            bytes.push(b']');
            bytes
        },
    },
    Kind {
        name: "json number",
        reason: "not_an_object",
        make: |_, ts| ts.to_string().into_bytes(),
    },
    Kind { name: "json null", reason: "not_an_object", make: |_, _| b"null".to_vec() },
    Kind {
        name: "duplicate field",
        reason: "duplicate_field",
        make: |n, ts| view(n, ts, r#","user_id":"someone-else""#),
    },
    Kind {
        name: "wrong key (misspelled field)",
        reason: "unknown_field",
        make: |n, ts| {
            String::from_utf8(view(n, ts, "")).unwrap().replace("item_id", "itemId").into_bytes()
        },
    },
    Kind {
        name: "missing ts",
        reason: "missing_field",
        make: |n, _| event(n, r#""event_type":"view""#),
    },
    Kind {
        name: "nested object",
        reason: "wrong_type",
        make: |n, ts| {
            format!(
            r#"{{"event_id":"poison-{n}","user_id":{{"id":"pu-{n}"}},"item_id":"pi","event_type":"view","ts":{ts}}}"#
        )
        .into_bytes()
        },
    },
    Kind {
        name: "number as string",
        reason: "wrong_type",
        make: |n, ts| event(n, &format!(r#""event_type":"view","ts":"{ts}""#)),
    },
    Kind {
        name: "fractional ts",
        reason: "wrong_type",
        make: |n, ts| event(n, &format!(r#""event_type":"view","ts":{ts}.5"#)),
    },
    Kind {
        name: "empty user id",
        reason: "empty_string",
        make: |n, ts| {
            format!(r#"{{"event_id":"poison-{n}","user_id":"","item_id":"pi","event_type":"view","ts":{ts}}}"#)
            .into_bytes()
        },
    },
    Kind {
        name: "id over 128 characters",
        reason: "too_long",
        make: |n, ts| {
            let long = "x".repeat(129);
            format!(r#"{{"event_id":"poison-{n}","user_id":"pu","item_id":"{long}","event_type":"view","ts":{ts}}}"#)
            .into_bytes()
        },
    },
    Kind {
        name: "unknown event type",
        reason: "unknown_event_type",
        make: |n, ts| event(n, &format!(r#""event_type":"purchase","ts":{ts}"#)),
    },
    Kind {
        name: "ts in seconds",
        reason: "timestamp_in_seconds",
        make: |n, ts| event(n, &format!(r#""event_type":"view","ts":{}"#, ts / 1000)),
    },
    Kind {
        name: "ts in microseconds",
        reason: "timestamp_in_microseconds",
        make: |n, ts| event(n, &format!(r#""event_type":"view","ts":{}"#, ts * 1000)),
    },
    Kind {
        name: "negative weight",
        reason: "negative",
        make: |n, ts| view(n, ts, r#","weight":-2.5"#),
    },
    Kind {
        name: "rating above 100",
        reason: "out_of_range",
        make: |n, ts| view(n, ts, r#","rating":101"#),
    },
    Kind {
        // The admission bound is the wall clock (or the broker's log-append time), not the
        // record timestamp the producer sets: a year ahead of now.
        name: "event time a year after the admission clock",
        reason: "too_far_in_future",
        make: |n, _| view(n, embedstream::ingest::wall_ms() + 365 * 86_400_000, ""),
    },
];

/// The poison record `n` of kind `kind`, timestamped `ts` (ms).
pub fn record(kind: usize, n: u64, ts: i64) -> Record {
    Record {
        key: Some(format!("poison-{kind:02}-{n}").into_bytes()),
        value: (KINDS[kind].make)(n, ts),
        line: 0,
        ts: Some(ts),
    }
}

/// The kind a dead letter's key names.
pub fn kind_of_key(key: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(key).ok()?;
    let index = text.strip_prefix("poison-")?.split('-').next()?;
    index.parse().ok().filter(|kind| *kind < KINDS.len())
}

/// `valid` with one poison record after every `every`-th valid one, kinds in turn. Returns the
/// stream and how many poison records of each kind it holds.
pub fn interleave(valid: &[Record], every: usize) -> (Vec<Record>, [u64; 30]) {
    let mut stream = Vec::with_capacity(valid.len() + valid.len() / every + 1);
    let mut counts = [0u64; 30];
    for (index, record) in valid.iter().enumerate() {
        stream.push(record.clone());
        if (index + 1) % every == 0 {
            let n = (index / every) as u64;
            let kind = (n % KINDS.len() as u64) as usize;
            stream.push(self::record(kind, n, record.ts.unwrap_or(1_700_000_000_000)));
            counts[kind] += 1;
        }
    }
    (stream, counts)
}
