//! Quire's Kafka layer: everything that touches rdkafka or the schema registry.
//!
//! # Layout
//! - [`cancel`]: the canceled datasets, followed from the control topic.
//! - [`config`]: connection and delivery settings shared by every binary.
//! - [`codec`]: Avro in the Confluent wire format, and schema registration.
//! - [`topics`]: `topics.yaml` and the idempotent `topics apply`.
//! - [`headers`]: the record headers Quire writes (idempotency key, Spring DLT headers).
//! - [`dedup`]: the set of keys a stage already wrote, rebuilt from its own output.
//! - [`reader`]: reads whole topics to their end (dedup rebuild, verify, status).
//! - [`operator`]: operator actions on blocks (replay, re-drive, cancel), one transaction each.
//! - [`processor`]: the one consume → process → produce loop every stage runs in.
//! - [`stages`]: the four pipeline stages (claimer, inference, validator, quarantine).
//! - [`service`]: what every stage binary does around its stage (signals, start-up).
//! - [`watchdog`]: consumer-group lag in offsets and seconds, and group status, for `quire-watchdog`.
//! - [`stalls`]: the block watchdog: blocks stuck in one state, re-driven or quarantined.
//! - [`otel`]: span ids for the records' `traceparent`, and span export over OTLP when configured.
//! - [`telemetry`]: JSON logs, and every event a stage reports with its metric.
//! - [`heartbeat`]: every stage instance's heartbeats (alive, partitions held, last commit).
//! - [`instances`]: the instance watchdog: instances silent past their TTL reported dead.
//! - [`http`]: `/metrics` and `/health/*` on every service.

pub mod cancel;
pub mod codec;
pub mod config;
pub mod dedup;
pub mod headers;
pub mod heartbeat;
pub mod http;
pub mod instances;
pub mod operator;
pub mod otel;
pub mod processor;
pub mod reader;
pub mod service;
pub mod stages;
pub mod stalls;
pub mod telemetry;
pub mod topics;
pub mod watchdog;

pub use codec::Codec;
pub use config::{DeliveryMode, KafkaArgs};
pub use processor::{Effect, Input, OutputRecord, Stage, StageContext};

/// Errors of the Kafka layer, named by what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("schema registry at {url}: {message}")]
    Registry { url: String, message: String },
    #[error("record on {topic} could not be encoded: {message}")]
    Encode { topic: String, message: String },
    #[error("record could not be decoded: {0}")]
    Decode(String),
    #[error("topics file {path}: {message}")]
    Topics { path: String, message: String },
    #[error("this instance was fenced by a newer one with the same transactional id: {0}")]
    Fenced(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
