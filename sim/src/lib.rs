//! Deterministic simulation of pushwire's delivery guarantees.
//!
//! Everything here is driven by one `u64` seed: the same seed replays the same run.
//! This first piece is the seeded randomness and the chunking byte pipe that the
//! engine-level simulator builds on.

pub mod pipe;
pub mod rng;
