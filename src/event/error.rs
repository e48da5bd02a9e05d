use std::fmt;

/// Stable, machine-readable reason an event was rejected.
///
/// Its [`as_str`](Self::as_str) is the `reason` header of a dead-letter record, the `reason`
/// label of the rejected-events metric and the key of the replay summary: renaming one is a
/// breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    TooLarge,
    InvalidUtf8,
    MalformedJson,
    TrailingCharacters,
    NotAnObject,
    DuplicateField,
    UnknownField,
    MissingField,
    WrongType,
    EmptyString,
    TooLong,
    UnknownEventType,
    TimestampInSeconds,
    TimestampInMicroseconds,
    Negative,
    OutOfRange,
    TooFarInFuture,
    KeyNotUserId,
}

impl RejectReason {
    /// Every reason, in a fixed order (for summaries and metric pre-registration).
    pub const ALL: [RejectReason; 18] = [
        Self::TooLarge,
        Self::InvalidUtf8,
        Self::MalformedJson,
        Self::TrailingCharacters,
        Self::NotAnObject,
        Self::DuplicateField,
        Self::UnknownField,
        Self::MissingField,
        Self::WrongType,
        Self::EmptyString,
        Self::TooLong,
        Self::UnknownEventType,
        Self::TimestampInSeconds,
        Self::TimestampInMicroseconds,
        Self::Negative,
        Self::OutOfRange,
        Self::TooFarInFuture,
        Self::KeyNotUserId,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::MalformedJson => "malformed_json",
            Self::TrailingCharacters => "trailing_characters",
            Self::NotAnObject => "not_an_object",
            Self::DuplicateField => "duplicate_field",
            Self::UnknownField => "unknown_field",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::EmptyString => "empty_string",
            Self::TooLong => "too_long",
            Self::UnknownEventType => "unknown_event_type",
            Self::TimestampInSeconds => "timestamp_in_seconds",
            Self::TimestampInMicroseconds => "timestamp_in_microseconds",
            Self::Negative => "negative",
            Self::OutOfRange => "out_of_range",
            Self::TooFarInFuture => "too_far_in_future",
            Self::KeyNotUserId => "key_not_user_id",
        }
    }

    /// True for reasons found before any field is looked at: the bytes are not one JSON object
    /// that a JSON Schema validator could even see (size, encoding, syntax, duplicate keys).
    pub fn is_document_level(self) -> bool {
        matches!(
            self,
            Self::TooLarge
                | Self::InvalidUtf8
                | Self::MalformedJson
                | Self::TrailingCharacters
                | Self::DuplicateField
        )
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes are not a valid event. Every variant names the field (where there is one) and
/// what was wrong with it. Always the producer's fault; retrying the same bytes cannot help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {actual} bytes, the limit is {max} bytes")]
    TooLarge { actual: usize, max: usize },
    #[error("record is not valid UTF-8 (first bad byte at offset {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    #[error("malformed JSON at line {line} column {column}: {message}")]
    MalformedJson { line: usize, column: usize, message: String },
    #[error("trailing characters after the JSON object at line {line} column {column}")]
    TrailingCharacters { line: usize, column: usize },
    #[error("an event must be a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("field `{field}` appears more than once")]
    DuplicateField { field: String },
    #[error("unknown field `{field}`")]
    UnknownField { field: String },
    #[error("missing required field `{field}`")]
    MissingField { field: &'static str },
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType { field: &'static str, expected: &'static str, found: &'static str },
    #[error("field `{field}` must not be empty")]
    EmptyString { field: &'static str },
    #[error("field `{field}` has {actual} characters, the limit is {max}")]
    TooLong { field: &'static str, actual: usize, max: usize },
    #[error("unknown event_type {value:?}")]
    UnknownEventType { value: String },
    #[error(
        "field `ts` = {ts} looks like seconds; event time is milliseconds since the Unix epoch"
    )]
    TimestampInSeconds { ts: i64 },
    #[error(
        "field `ts` = {ts} looks like microseconds; event time is milliseconds since the Unix epoch"
    )]
    TimestampInMicroseconds { ts: f64 },
    #[error("field `{field}` must not be negative, found {value}")]
    Negative { field: &'static str, value: f64 },
    #[error("field `{field}` = {value} is outside [{min}, {max}]")]
    OutOfRange { field: &'static str, value: f64, min: f64, max: f64 },
}

impl DecodeError {
    /// The stable reason code.
    pub fn reason(&self) -> RejectReason {
        match self {
            Self::TooLarge { .. } => RejectReason::TooLarge,
            Self::InvalidUtf8 { .. } => RejectReason::InvalidUtf8,
            Self::MalformedJson { .. } => RejectReason::MalformedJson,
            Self::TrailingCharacters { .. } => RejectReason::TrailingCharacters,
            Self::NotAnObject { .. } => RejectReason::NotAnObject,
            Self::DuplicateField { .. } => RejectReason::DuplicateField,
            Self::UnknownField { .. } => RejectReason::UnknownField,
            Self::MissingField { .. } => RejectReason::MissingField,
            Self::WrongType { .. } => RejectReason::WrongType,
            Self::EmptyString { .. } => RejectReason::EmptyString,
            Self::TooLong { .. } => RejectReason::TooLong,
            Self::UnknownEventType { .. } => RejectReason::UnknownEventType,
            Self::TimestampInSeconds { .. } => RejectReason::TimestampInSeconds,
            Self::TimestampInMicroseconds { .. } => RejectReason::TimestampInMicroseconds,
            Self::Negative { .. } => RejectReason::Negative,
            Self::OutOfRange { .. } => RejectReason::OutOfRange,
        }
    }

    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::DuplicateField { field } | Self::UnknownField { field } => Some(field),
            Self::MissingField { field }
            | Self::WrongType { field, .. }
            | Self::EmptyString { field }
            | Self::TooLong { field, .. }
            | Self::Negative { field, .. }
            | Self::OutOfRange { field, .. } => Some(field),
            Self::UnknownEventType { .. } => Some("event_type"),
            Self::TimestampInSeconds { .. } | Self::TimestampInMicroseconds { .. } => Some("ts"),
            _ => None,
        }
    }
}
