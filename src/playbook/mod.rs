//! The contingency playbook (issue 11): faults from every source, graded by the room's
//! context into classes with deadlines, matched against rules with automatic and human steps,
//! and kept as alerts that are acknowledged, resolved, escalated and silenced.
//!
//! The deciding parts are pure (`taxonomy`, `context`, `rules`, `alerts`, `roster`); `service`
//! is the thin task around them. This
//! module must not send anything except through `runtime` handles and alert sinks.

pub mod alerts;
pub mod context;
pub mod dry_run;
pub mod roster;
pub mod rules;
pub mod service;
pub mod settings;
pub mod taxonomy;

pub use context::{room_context, Context, Importance};
pub use service::{start, AlertFilter, PlaybookHandle};
pub use settings::{ChannelRef, PlaybookSettings};
pub use taxonomy::{classify, Change, FaultKind, Observation, Subject};
