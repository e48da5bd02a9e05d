use std::fmt;

use serde::{Deserialize, Serialize};

/// Event time: integer milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventTime(pub i64);

impl EventTime {
    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub String);

        impl $name {
            /// The id as the producer sent it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }
    };
}

string_id!(
    /// A user id: non-empty UTF-8, at most [`crate::event::DecodeLimits::max_id_chars`] characters.
    UserId
);
string_id!(
    /// An item id: non-empty UTF-8, at most [`crate::event::DecodeLimits::max_id_chars`] characters.
    ItemId
);

/// Index of an event type in the configured [`EventTypes`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTypeId(pub u8);

/// One validated interaction event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Producer-chosen unique id, used for deduplication and to seed negative sampling.
    pub event_id: String,
    /// Who interacted; also the Kafka record key.
    pub user_id: UserId,
    /// What was interacted with.
    pub item_id: ItemId,
    /// Which configured event type (view, click, like, cart, buy by default).
    pub event_type: EventTypeId,
    /// When it happened (event time).
    pub ts: EventTime,
    /// Optional client session id.
    pub session_id: Option<String>,
    /// Optional explicit rating, finite, in `[0, max_rating]`; kept for evaluation and audit.
    pub rating: Option<f32>,
    /// Optional per-event weight, finite, in `[0, max_weight]`; multiplies the type weight.
    pub weight: Option<f32>,
}

/// Why an event-type table from configuration is unusable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventTypesError {
    /// The table is empty.
    #[error("at least one event type must be configured")]
    Empty,
    /// More than 255 types.
    #[error("at most 255 event types are supported, got {count}")]
    TooMany { count: usize },
    /// A name is empty or not lowercase ASCII letters, digits and underscores.
    #[error("event type name {name:?} must match [a-z0-9_]{{1,32}}")]
    BadName { name: String },
    /// The same name twice.
    #[error("event type {name:?} is configured twice")]
    Duplicate { name: String },
    /// A weight that is negative, zero, non-finite or above the bound.
    #[error("weight of event type {name:?} must be finite and in (0, {max}], got {weight}")]
    BadWeight { name: String, weight: f64, max: f64 },
}

/// The configured event types and their weights (default: view 1, click 2, like 4, cart 6, buy 8).
#[derive(Debug, Clone, PartialEq)]
pub struct EventTypes {
    names: Vec<String>,
    weights: Vec<f32>,
}

impl EventTypes {
    /// Largest weight a type may carry.
    pub const MAX_WEIGHT: f64 = 1000.0;

    /// Builds the table from `(name, weight)` pairs, in the given order.
    ///
    /// # Errors
    /// [`EventTypesError`] when the table is empty, too long, has a bad or duplicate name, or a
    /// weight outside `(0, 1000]`.
    pub fn new<'a>(
        pairs: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Result<Self, EventTypesError> {
        let mut names = Vec::new();
        let mut weights = Vec::new();
        for (name, weight) in pairs {
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid_name {
                return Err(EventTypesError::BadName { name: name.to_owned() });
            }
            if names.iter().any(|known: &String| known == name) {
                return Err(EventTypesError::Duplicate { name: name.to_owned() });
            }
            if !(weight.is_finite() && weight > 0.0 && weight <= Self::MAX_WEIGHT) {
                return Err(EventTypesError::BadWeight {
                    name: name.to_owned(),
                    weight,
                    max: Self::MAX_WEIGHT,
                });
            }
            names.push(name.to_owned());
            weights.push(weight as f32);
        }
        if names.is_empty() {
            return Err(EventTypesError::Empty);
        }
        if names.len() > usize::from(u8::MAX) {
            return Err(EventTypesError::TooMany { count: names.len() });
        }
        Ok(Self { names, weights })
    }

    /// Looks a type up by its wire name.
    pub fn id(&self, name: &str) -> Option<EventTypeId> {
        let index = self.names.iter().position(|known| known == name)?;
        u8::try_from(index).ok().map(EventTypeId)
    }

    /// The wire name of a type.
    pub fn name(&self, id: EventTypeId) -> &str {
        self.names.get(usize::from(id.0)).map_or("unknown", String::as_str)
    }

    /// The configured weight of a type (0 for an id not in the table).
    pub fn weight(&self, id: EventTypeId) -> f32 {
        self.weights.get(usize::from(id.0)).copied().unwrap_or(0.0)
    }

    /// All wire names, in table order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
}

impl Default for EventTypes {
    fn default() -> Self {
        Self {
            names: ["view", "click", "like", "cart", "buy"].map(str::to_owned).to_vec(),
            weights: vec![1.0, 2.0, 4.0, 6.0, 8.0],
        }
    }
}
