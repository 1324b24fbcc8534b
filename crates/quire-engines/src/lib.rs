//! Quire's inference engines, free of Kafka types.
//!
//! # Layout
//! - [`engine`]: the [`Engine`] trait, the offline language-id engine and the noop engine.
//! - [`http`]: an engine behind any OpenAI-compatible chat completions server.
//! - [`config`]: engines, timeouts, breakers and chains, from YAML.
//! - [`chain`]: runs a block through its task's chain (`first_success`, `all`,
//!   `best_effort`), each engine behind its timeout and circuit breaker
//!   ([`quire_core::breaker`]), and classifies what came out.

pub mod chain;
pub mod config;
pub mod engine;
pub mod http;

pub use chain::{ChainFailure, ChainOutput, EngineHealth, Engines, Produced};
pub use config::{ConfigError, EngineKind, EnginesConfig, Strategy};
pub use engine::{Engine, Inference};
