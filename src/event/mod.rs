//! Wire types of one interaction event, and their validation.
//!
//! The contract is `schemas/event.schema.json`; [`decode`] turns bytes into a validated
//! [`Event`] or a [`DecodeError`] that names the field and the reason. The tests hold the decoder
//! and the schema against one corpus (`tests/corpus/`), so the two cannot drift apart.

mod decode;
mod error;
mod types;

pub use decode::{decode, DecodeLimits};
pub use error::{DecodeError, RejectReason};
pub use types::{Event, EventTime, EventTypeId, EventTypes, EventTypesError, ItemId, UserId};
