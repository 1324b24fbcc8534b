//! Quire's domain, free of Kafka types so it can be tested and reasoned about alone.
//!
//! # Layout
//! - [`state`]: the block state machine; every transition in Quire goes through it.
//! - [`records`]: the records Quire exchanges between stages (mirrors `schemas/*.avsc`).
//! - [`ids`]: idempotency keys, deterministic block ids and checksums.
//! - [`latest`]: a block's latest state and its newest copy, folded from the topics.
//! - [`ledger`]: what a stage did with each input it read, and whether an input is new
//!   work, before any work is done on it.
//! - [`split`]: splits a document into blocks, deterministically.
//! - [`screen`]: checks of records from outside (bounded fields, no control characters,
//!   block ids that match their keys) before any work is done on them.
//! - [`failure`]: error classes, decided by the action a failure calls for.
//! - [`retry`]: the retry schedule and retry-topic names.
//! - [`lag`]: consumer lag in offsets and seconds, and Burrow-style status, from samples.
//! - [`stall`]: which blocks sit in one state too long, and whether to re-drive them.
//! - [`instances`]: which service instances are alive, stopped or dead, from heartbeats.
//! - [`progress`]: a dataset's progress bar and ETA, from its completion times.
//! - [`breaker`]: the circuit breaker state machine engines run behind.
//! - [`rules`]: the validator's output rules.
//! - [`stage`]: the pipeline's stages by name.

pub mod breaker;
pub mod failure;
pub mod ids;
pub mod instances;
pub mod lag;
pub mod latest;
pub mod ledger;
pub mod progress;
pub mod records;
pub mod retry;
pub mod rules;
pub mod screen;
pub mod split;
pub mod stage;
pub mod stall;
pub mod state;

pub use failure::{Action, ErrorClass, Failure};
pub use stage::StageName;
pub use state::{BlockState, IllegalTransition};
