//! The event and call types, parsing and normalisation of an Alohub body, and the merge rule.
//!
//! Pure: no I/O, no HTTP, no database. Everything here is deterministic and unit-tested.

pub mod change;
pub mod event;
pub mod json;
pub mod merge;
pub mod phone;
pub mod time;
pub mod view;

pub use event::{BodyError, EventFields, ParsedEvent, parse_body};
pub use merge::{CallRecord, FinalStatuses, Phase, SourceKey};
