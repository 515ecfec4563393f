//! Sans-I/O state machines of pushwire.
//!
//! Nothing in this crate reads a clock, the OS random number generator or a socket,
//! and nothing spawns threads: time and randomness are arguments, bytes go in and out
//! through caller-owned buffers.

pub mod credentials;
