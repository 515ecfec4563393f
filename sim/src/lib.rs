//! Deterministic simulation of pushwire's delivery guarantees.
//!
//! Everything here is driven by one `u64` seed: the same seed replays the same run.
//! A run records every client session's history and the server's journal
//! ([`history`]); the [`oracle`] checks the record against the guarantees G1–G8 of
//! the design brief.

#![warn(missing_docs)]

pub mod backplane;
pub mod engine_level;
pub mod history;
pub mod oracle;
pub mod pipe;
pub mod recorder;
pub mod rng;
pub mod scenario;
pub mod suite;
pub mod turmoil_level;
