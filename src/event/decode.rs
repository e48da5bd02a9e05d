use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{DecodeError, Event, EventTime, EventTypes, ItemId, UserId};

/// Smallest accepted `ts`: 1973-03-03 in milliseconds. Anything smaller is taken for seconds.
pub const MIN_TS_MS: i64 = 100_000_000_000;
/// Largest accepted `ts`: year 5138 in milliseconds. Anything larger is taken for microseconds.
pub const MAX_TS_MS: i64 = 99_999_999_999_999;

/// Size limits the decoder enforces.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Largest accepted record, in bytes (default 4096).
    pub max_record_bytes: usize,
    /// Longest accepted `event_id`, `user_id`, `item_id` or `session_id`, in Unicode scalar
    /// values (default 128), which is what JSON Schema's `maxLength` counts.
    pub max_id_chars: usize,
    /// Largest accepted `rating` (default 100).
    pub max_rating: f64,
    /// Largest accepted per-event `weight` (default 1000).
    pub max_weight: f64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_record_bytes: 4096, max_id_chars: 128, max_rating: 100.0, max_weight: 1000.0 }
    }
}

/// Decodes one record into a validated event.
///
/// Checks run in a fixed order: size, UTF-8, JSON syntax, trailing characters, object shape,
/// duplicate and unknown keys, then the fields in schema order (`event_id`, `user_id`,
/// `item_id`, `event_type`, `ts`, `session_id`, `rating`, `weight`); the first failure is
/// returned. Never panics, whatever the bytes.
///
/// # Errors
/// A [`DecodeError`] naming the field and the reason.
pub fn decode(
    bytes: &[u8],
    types: &EventTypes,
    limits: &DecodeLimits,
) -> Result<Event, DecodeError> {
    if bytes.len() > limits.max_record_bytes {
        return Err(DecodeError::TooLarge { actual: bytes.len(), max: limits.max_record_bytes });
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|error| DecodeError::InvalidUtf8 { valid_up_to: error.valid_up_to() })?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let top = TopLevel::deserialize(&mut deserializer).map_err(malformed)?;
    deserializer.end().map_err(|error| DecodeError::TrailingCharacters {
        line: error.line(),
        column: error.column(),
    })?;
    let raw = match top {
        TopLevel::Object(raw) => raw,
        TopLevel::Other(found) => return Err(DecodeError::NotAnObject { found }),
    };
    raw.validate(types, limits)
}

fn malformed(error: serde_json::Error) -> DecodeError {
    DecodeError::MalformedJson {
        line: error.line(),
        column: error.column(),
        message: error.to_string(),
    }
}

const FIELDS: [&str; 8] =
    ["event_id", "user_id", "item_id", "event_type", "ts", "session_id", "rating", "weight"];

/// One JSON value, kept only as far as validation needs it.
#[derive(Debug)]
enum Scalar<'de> {
    Str(Cow<'de, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool,
    Null,
    Array,
    Object,
}

impl Scalar<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Self::Str(_) => "a string",
            Self::Int(_) | Self::UInt(_) => "an integer",
            Self::Float(_) => "a number",
            Self::Bool => "a boolean",
            Self::Null => "null",
            Self::Array => "an array",
            Self::Object => "an object",
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Int(value) => Some(value as f64),
            Self::UInt(value) => Some(value as f64),
            Self::Float(value) => Some(value),
            _ => None,
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool)
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(value))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Scalar::UInt(value))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(value))
    }
    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(value)))
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(value.to_owned())))
    }
    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(value)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The top-level JSON value: the fields of an object, or the kind of anything else.
// Lives on the stack for one decode; boxing the large variant would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
enum TopLevel<'de> {
    Object(RawEvent<'de>),
    Other(&'static str),
}

#[derive(Default)]
struct RawEvent<'de> {
    fields: [Option<Scalar<'de>>; 8],
    duplicate: Option<String>,
    unknown: Option<String>,
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEvent::default();
        while let Some(key) = map.next_key::<Scalar<'de>>()? {
            let value = map.next_value::<Scalar<'de>>()?;
            let Scalar::Str(name) = key else { continue };
            match FIELDS.iter().position(|field| *field == name) {
                Some(index) => {
                    if raw.fields[index].is_some() && raw.duplicate.is_none() {
                        raw.duplicate = Some(name.into_owned());
                    }
                    raw.fields[index] = Some(value);
                }
                None if raw.unknown.is_none() => raw.unknown = Some(name.into_owned()),
                None => {}
            }
        }
        Ok(TopLevel::Object(raw))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        ScalarVisitor.visit_seq(seq).map(|_| TopLevel::Other("an array"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(TopLevel::Other("null"))
    }
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

impl<'de> RawEvent<'de> {
    fn take(&mut self, field: &'static str) -> Option<Scalar<'de>> {
        let index = FIELDS.iter().position(|known| *known == field)?;
        self.fields[index].take().filter(|value| !matches!(value, Scalar::Null))
    }

    fn validate(mut self, types: &EventTypes, limits: &DecodeLimits) -> Result<Event, DecodeError> {
        if let Some(field) = self.duplicate.take() {
            return Err(DecodeError::DuplicateField { field });
        }
        if let Some(field) = self.unknown.take() {
            return Err(DecodeError::UnknownField { field });
        }
        let event_id = self.required_id("event_id", limits)?;
        let user_id = self.required_id("user_id", limits)?;
        let item_id = self.required_id("item_id", limits)?;
        let type_name = self.required_id("event_type", limits)?;
        let event_type = types
            .id(&type_name)
            .ok_or(DecodeError::UnknownEventType { value: type_name.clone() })?;
        let ts = self.timestamp()?;
        let session_id = self.optional_id("session_id", limits)?;
        let rating = self.optional_number("rating", limits.max_rating)?;
        let weight = self.optional_number("weight", limits.max_weight)?;
        Ok(Event {
            event_id,
            user_id: UserId(user_id),
            item_id: ItemId(item_id),
            event_type,
            ts,
            session_id,
            rating,
            weight,
        })
    }

    fn required_id(
        &mut self,
        field: &'static str,
        limits: &DecodeLimits,
    ) -> Result<String, DecodeError> {
        let found = self.fields[FIELDS.iter().position(|known| *known == field).unwrap_or(0)]
            .take()
            .ok_or(DecodeError::MissingField { field })?;
        checked_id(field, found, limits)
    }

    fn optional_id(
        &mut self,
        field: &'static str,
        limits: &DecodeLimits,
    ) -> Result<Option<String>, DecodeError> {
        self.take(field).map(|found| checked_id(field, found, limits)).transpose()
    }

    fn timestamp(&mut self) -> Result<EventTime, DecodeError> {
        let field = "ts";
        let found = self.fields[4].take().ok_or(DecodeError::MissingField { field })?;
        let value = match found {
            Scalar::Int(value) => value as f64,
            Scalar::UInt(value) => value as f64,
            Scalar::Float(value) if value.fract() == 0.0 => value,
            Scalar::Float(_) => {
                return Err(DecodeError::WrongType {
                    field,
                    expected: "an integer",
                    found: "a number with a fraction",
                })
            }
            other => {
                return Err(DecodeError::WrongType {
                    field,
                    expected: "an integer",
                    found: other.kind(),
                })
            }
        };
        if value < 0.0 {
            return Err(DecodeError::Negative { field, value });
        }
        if value < MIN_TS_MS as f64 {
            return Err(DecodeError::TimestampInSeconds { ts: value as i64 });
        }
        if value > MAX_TS_MS as f64 {
            return Err(DecodeError::TimestampInMicroseconds { ts: value });
        }
        Ok(EventTime(value as i64))
    }

    fn optional_number(
        &mut self,
        field: &'static str,
        max: f64,
    ) -> Result<Option<f32>, DecodeError> {
        let Some(found) = self.take(field) else { return Ok(None) };
        let value = found.as_f64().ok_or(DecodeError::WrongType {
            field,
            expected: "a number",
            found: found.kind(),
        })?;
        if value < 0.0 {
            return Err(DecodeError::Negative { field, value });
        }
        if !(value.is_finite() && value <= max) {
            return Err(DecodeError::OutOfRange { field, value, min: 0.0, max });
        }
        Ok(Some(value as f32))
    }
}

fn checked_id(
    field: &'static str,
    found: Scalar<'_>,
    limits: &DecodeLimits,
) -> Result<String, DecodeError> {
    let Scalar::Str(text) = found else {
        return Err(DecodeError::WrongType { field, expected: "a string", found: found.kind() });
    };
    if text.is_empty() {
        return Err(DecodeError::EmptyString { field });
    }
    // Byte length bounds the character count: count characters only when it could matter.
    let chars = if text.len() <= limits.max_id_chars { 0 } else { text.chars().count() };
    if chars > limits.max_id_chars {
        return Err(DecodeError::TooLong { field, actual: chars, max: limits.max_id_chars });
    }
    Ok(text.into_owned())
}
