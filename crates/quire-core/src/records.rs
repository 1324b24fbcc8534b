//! The records stages exchange. Each struct mirrors one schema in `schemas/` field for
//! field (serde names = Avro names); the Kafka layer encodes them in the Confluent wire
//! format. Timestamps are epoch milliseconds.

use crate::ids;
use crate::state::BlockState;
use serde::{Deserialize, Serialize};

/// One document of a dataset as published to the ingest topic (`DatasetSubmission.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSubmission {
    pub dataset_id: String,
    pub document_id: String,
    /// The submission's idempotency key; resubmitting the same key adds nothing.
    pub idempotency_key: String,
    pub document_index: i32,
    pub document_count: i32,
    pub text: String,
    pub source_language: Option<String>,
    pub target_language: Option<String>,
    pub task: String,
    pub request_id: String,
    pub submitted_at_ms: i64,
}

/// A unit of work (`Block.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub block_id: String,
    pub dataset_id: String,
    pub document_id: String,
    pub sequence: i32,
    pub block_count: i32,
    pub text: String,
    pub source_language: Option<String>,
    pub target_language: Option<String>,
    pub task: String,
    pub attempt: i32,
    /// How often the block was replayed or re-driven (0 at first). Each stage processes
    /// each generation of a block at most once.
    #[serde(default)]
    pub generation: i32,
    /// Checksum of `text`, set by the claimer and re-checked by the validator.
    pub checksum: String,
    pub idempotency_key: String,
    pub state: BlockState,
    pub request_id: String,
    pub submitted_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Block {
    /// A block with `text` in `state` and placeholder ids: for tests and examples.
    pub fn fixture(block_id: &str, text: &str, state: BlockState) -> Block {
        Block {
            block_id: block_id.into(),
            dataset_id: "dataset".into(),
            document_id: "document".into(),
            sequence: 0,
            block_count: 1,
            text: text.into(),
            source_language: None,
            target_language: None,
            task: "language-id".into(),
            attempt: 0,
            generation: 0,
            checksum: ids::checksum(text),
            idempotency_key: format!("key-{block_id}"),
            state,
            request_id: "request".into(),
            submitted_at_ms: 0,
            updated_at_ms: 0,
        }
    }
}

/// What an engine said about a block (`InferenceResult.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceResult {
    pub block: Block,
    pub engine: String,
    pub label: String,
    pub confidence: f64,
    /// Text the engine produced (translate).
    #[serde(default)]
    pub output_text: Option<String>,
    /// Checksum of the output, see [`output_checksum`].
    pub output_checksum: String,
    pub latency_ms: i64,
    pub inferred_at_ms: i64,
    /// Successes of the chain's other engines, in chain order.
    #[serde(default)]
    pub alternatives: Vec<EngineOutput>,
}

/// What one more engine of a chain produced (`EngineOutput` in `InferenceResult.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineOutput {
    pub engine: String,
    pub label: String,
    pub confidence: f64,
    #[serde(default)]
    pub output_text: Option<String>,
}

/// A block that passed validation (`ValidatedResult.avsc`): the pipeline's product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidatedResult {
    pub block_id: String,
    pub dataset_id: String,
    pub document_id: String,
    pub sequence: i32,
    pub idempotency_key: String,
    pub text_checksum: String,
    pub engine: String,
    pub label: String,
    pub confidence: f64,
    #[serde(default)]
    pub output_text: Option<String>,
    pub request_id: String,
    pub completed_at_ms: i64,
}

/// One audited state change of a block (`StateChange.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub block_id: String,
    pub dataset_id: String,
    pub from_state: BlockState,
    pub to_state: BlockState,
    pub stage: String,
    pub instance_id: String,
    pub reason: Option<String>,
    pub request_id: String,
    pub at_ms: i64,
}

/// A failure put aside with its reason (`QuarantineRecord.avsc`); the quarantine
/// topic keeps the latest per key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// A block id, or topic/partition/offset for a record that could not be read.
    pub key: String,
    pub dataset_id: Option<String>,
    pub block_id: Option<String>,
    pub original_topic: String,
    pub original_partition: i32,
    pub original_offset: i64,
    pub error_class: String,
    pub exception_fqcn: String,
    pub reason: String,
    pub failed_stage: String,
    pub instance_id: String,
    pub quarantined_at_ms: i64,
    #[serde(default)]
    pub cause: String,
    #[serde(default = "one")]
    pub attempts: i32,
    #[serde(default)]
    pub first_failed_at_ms: i64,
    #[serde(default)]
    pub last_failed_at_ms: i64,
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The failed record's value, byte for byte.
    #[serde(default, with = "serde_bytes")]
    pub payload: Option<Vec<u8>>,
    /// [`QUARANTINED`] or [`REPLAYED`].
    #[serde(default = "quarantined")]
    pub status: String,
    #[serde(default)]
    pub replayed_at_ms: Option<i64>,
    #[serde(default)]
    pub replayed_by: Option<String>,
}

/// Status of a quarantine record waiting for a person.
pub const QUARANTINED: &str = "QUARANTINED";
/// Status of a quarantine record sent back by `quire dlq replay` or `quire redrive`.
pub const REPLAYED: &str = "REPLAYED";
/// Status of a quarantine record whose dataset was canceled.
pub const CANCELED: &str = "CANCELED";

/// An operator's decision about a whole dataset (`DatasetControl.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetControl {
    pub dataset_id: String,
    /// [`CANCEL`].
    pub action: String,
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub reason: Option<String>,
}

/// A service instance saying it is alive (`InstanceHeartbeat.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceHeartbeat {
    pub instance_id: String,
    pub service: String,
    pub version: String,
    pub host: String,
    pub pid: i32,
    pub started_at_ms: i64,
    pub sent_at_ms: i64,
    pub interval_ms: i64,
    /// `topic/partition` of each partition held.
    pub assigned_partitions: Vec<String>,
    #[serde(default)]
    pub last_commit_at_ms: Option<i64>,
    /// [`RUNNING`] or [`STOPPED`].
    pub status: String,
}

impl InstanceHeartbeat {
    /// Its key on the compacted instances topic.
    pub fn key(&self) -> String {
        instance_key(&self.service, &self.instance_id)
    }
}

/// The key of an instance: `service/instance id`.
pub fn instance_key(service: &str, instance_id: &str) -> String {
    format!("{service}/{instance_id}")
}

/// Status of a heartbeat of a live instance.
pub const RUNNING: &str = "RUNNING";
/// Status of the last heartbeat of a clean shutdown.
pub const STOPPED: &str = "STOPPED";

/// The action of `quire cancel`.
pub const CANCEL: &str = "CANCEL";

fn one() -> i32 {
    1
}

fn quarantined() -> String {
    QUARANTINED.into()
}

/// The checksum an engine stamps on its output and the validator recomputes.
pub fn output_checksum(block_checksum: &str, label: &str, confidence: f64, text: Option<&str>) -> String {
    match text {
        None => ids::checksum(&format!("{block_checksum}|{label}|{confidence:.6}")),
        Some(text) => ids::checksum(&format!("{block_checksum}|{label}|{confidence:.6}|{text}")),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
