//! Quire's domain, free of Kafka types so it can be tested and reasoned about alone.
//!
//! # Layout
//! - [`state`]: the block state machine; every transition in Quire goes through it.
//! - [`records`]: the records Quire exchanges between stages (mirrors `schemas/*.avsc`).
//! - [`ids`]: idempotency keys, deterministic block ids and checksums.
//! - [`split`]: splits a document into blocks, deterministically.
//! - [`failure`]: error classes, decided by the action a failure calls for.
//! - [`engine`]: inference engines (a real offline model, and a noop for benchmarks).
//! - [`rules`]: the validator's output rules.

pub mod engine;
pub mod failure;
pub mod ids;
pub mod records;
pub mod rules;
pub mod split;
pub mod state;

pub use failure::{ErrorClass, Failure};
pub use state::{BlockState, IllegalTransition};
