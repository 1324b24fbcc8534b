//! Every event a stage reports, one struct each (the shape of vector's internal events):
//! [`emit`] writes the event's structured log line and bumps its metric, both defined
//! here so they never disagree, and shows it to the test hook ([`super::EventRecorder`]).
//! Events an effect makes true travel with it as an [`super::EffectEvent`] and are
//! emitted once the batch holding it has committed.

use super::names;
use quire_core::{BlockState, Failure, IllegalTransition};
use std::collections::HashMap;
use std::time::Duration;

/// An event: what emitting it logs and counts.
pub trait InternalEvent: std::fmt::Debug + Clone + Send + Sync + 'static {
    fn emit_logs_and_metrics(&self);
}

/// Reports `event`: its log line and metric, and to every live recorder.
pub fn emit<E: InternalEvent>(event: E) {
    super::record(&event);
    event.emit_logs_and_metrics();
}

/// A stage took in one record (and skipped `duplicates` of its effects as done).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordProcessed {
    pub stage: &'static str,
    pub duplicates: usize,
}

impl InternalEvent for RecordProcessed {
    fn emit_logs_and_metrics(&self) {
        metrics::counter!(names::RECORDS, "stage" => self.stage).increment(1);
        if self.duplicates > 0 {
            metrics::counter!(names::DUPLICATES, "stage" => self.stage).increment(self.duplicates as u64);
        }
    }
}

/// An effect already written (its dedup key is done) was not written again.
#[derive(Debug, Clone, PartialEq)]
pub struct DuplicateSkipped {
    pub stage: &'static str,
    pub instance_id: String,
    pub key: String,
}

impl InternalEvent for DuplicateSkipped {
    fn emit_logs_and_metrics(&self) {
        tracing::info!(stage = self.stage, instance_id = %self.instance_id, dedup_key = %self.key, "effect already written; skipped");
    }
}

/// An input the stage's ledger had answered already was taken in without any work:
/// `how` is `done` (answered, or its block is final) or `stale` (a copy of an older
/// generation than the one ledgered, rejected).
#[derive(Debug, Clone, PartialEq)]
pub struct InputAnswered {
    pub stage: &'static str,
    pub instance_id: String,
    pub key: String,
    pub how: &'static str,
}

impl InternalEvent for InputAnswered {
    fn emit_logs_and_metrics(&self) {
        metrics::counter!(names::INPUTS_ANSWERED, "stage" => self.stage, "how" => self.how).increment(1);
        match self.how {
            "stale" => tracing::warn!(stage = self.stage, instance_id = %self.instance_id, ledger_key = %self.key, "stale copy of an older generation rejected"),
            _ => tracing::info!(stage = self.stage, instance_id = %self.instance_id, ledger_key = %self.key, "input answered already; skipped"),
        }
    }
}

/// A stage read ledger partitions into its local store (at assignment, after an abort).
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRead {
    pub topic: String,
    pub partitions: usize,
    pub entries: usize,
    pub took: Duration,
}

impl InternalEvent for LedgerRead {
    fn emit_logs_and_metrics(&self) {
        metrics::histogram!(names::LEDGER_READ_DURATION, "topic" => self.topic.clone()).record(self.took.as_secs_f64());
        tracing::info!(topic = %self.topic, partitions = self.partitions, entries = self.entries, took_ms = self.took.as_millis() as u64, "ledger read");
    }
}

/// A record went to its dead-letter topic, under dedup key `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLettered {
    pub stage: &'static str,
    pub instance_id: String,
    pub key: String,
    pub failure: Failure,
}

impl InternalEvent for DeadLettered {
    fn emit_logs_and_metrics(&self) {
        let failure = &self.failure;
        metrics::counter!(names::DEAD_LETTERED, "stage" => self.stage, "cause" => failure.cause).increment(1);
        tracing::warn!(stage = self.stage, instance_id = %self.instance_id, dedup_key = %self.key, class = %failure.class, cause = failure.cause, reason = %failure.reason, "record dead-lettered");
    }
}

/// A stage started: its counters exist at 0 from now on, so that rates over them (and
/// alerts on those rates) exist before the first commit or abort.
#[derive(Debug, Clone, PartialEq)]
pub struct StageStarted {
    pub stage: &'static str,
}

impl InternalEvent for StageStarted {
    fn emit_logs_and_metrics(&self) {
        for name in [names::RECORDS, names::BATCHES_COMMITTED, names::BATCHES_ABORTED] {
            metrics::counter!(name, "stage" => self.stage).increment(0);
        }
    }
}

/// A batch of `inputs` records committed `effects` effects, `produced` records by topic.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchCommitted {
    pub stage: &'static str,
    pub inputs: usize,
    pub effects: usize,
    pub produced: HashMap<String, u64>,
    pub took: Duration,
}

impl InternalEvent for BatchCommitted {
    fn emit_logs_and_metrics(&self) {
        let stage = self.stage;
        metrics::counter!(names::BATCHES_COMMITTED, "stage" => stage).increment(1);
        metrics::histogram!(names::COMMIT_DURATION, "stage" => stage).record(self.took.as_secs_f64());
        for (topic, count) in &self.produced {
            metrics::counter!(names::RECORDS_PRODUCED, "stage" => stage, "topic" => topic.clone()).increment(*count);
        }
        tracing::debug!(stage, inputs = self.inputs, effects = self.effects, took_ms = self.took.as_millis() as u64, "batch committed");
    }
}

/// A batch of `inputs` records was abandoned (its transaction aborted) and is replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchAborted {
    pub stage: &'static str,
    pub inputs: usize,
    pub reason: String,
}

impl InternalEvent for BatchAborted {
    fn emit_logs_and_metrics(&self) {
        metrics::counter!(names::BATCHES_ABORTED, "stage" => self.stage).increment(1);
        tracing::warn!(stage = self.stage, inputs = self.inputs, reason = %self.reason, "batch aborted");
    }
}

/// The time a stage spent on one input record.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordTook {
    pub stage: &'static str,
    pub took: Duration,
}

impl InternalEvent for RecordTook {
    fn emit_logs_and_metrics(&self) {
        metrics::histogram!(names::PROCESSING_DURATION, "stage" => self.stage).record(self.took.as_secs_f64());
    }
}

/// A block reached the output, `age_ms` after its document was submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockCompleted {
    pub age_ms: i64,
}

impl InternalEvent for BlockCompleted {
    fn emit_logs_and_metrics(&self) {
        metrics::histogram!(names::END_TO_END_DURATION).record(self.age_ms.max(0) as f64 / 1000.0);
    }
}

/// librdkafka failed the producer for good (not a fencing); a new one replaced it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerReplaced {
    pub stage: &'static str,
    pub instance_id: String,
    pub code: rdkafka::types::RDKafkaErrorCode,
    pub reason: String,
}

impl InternalEvent for ProducerReplaced {
    fn emit_logs_and_metrics(&self) {
        metrics::counter!(names::PRODUCERS_REPLACED, "stage" => self.stage).increment(1);
        tracing::warn!(stage = self.stage, instance_id = %self.instance_id, code = ?self.code, reason = %self.reason, "producer failed fatally; replaced by a new one, batch replayed");
    }
}

/// The state machine refused a transition; nothing of it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct IllegalTransitionRejected {
    pub stage: &'static str,
    pub transition: IllegalTransition,
}

impl InternalEvent for IllegalTransitionRejected {
    fn emit_logs_and_metrics(&self) {
        let refused = &self.transition;
        metrics::counter!(names::ILLEGAL_TRANSITIONS, "stage" => self.stage).increment(1);
        tracing::error!(stage = self.stage, block_id = %refused.block_id, from = %refused.from, to = %refused.to, "illegal transition rejected");
    }
}

/// A block went `from → to`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockTransition {
    pub stage: String,
    pub instance_id: String,
    pub block_id: String,
    pub dataset_id: String,
    pub request_id: String,
    pub from: BlockState,
    pub to: BlockState,
}

impl InternalEvent for BlockTransition {
    fn emit_logs_and_metrics(&self) {
        tracing::info!(
            stage = %self.stage,
            instance_id = %self.instance_id,
            block_id = %self.block_id,
            dataset_id = %self.dataset_id,
            request_id = %self.request_id,
            from = %self.from,
            to = %self.to,
            "block transition"
        );
    }
}

/// A failure was filed on the quarantine topic under `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub instance_id: String,
    pub key: String,
    pub failed_stage: String,
    pub class: String,
    pub reason: String,
}

impl InternalEvent for Quarantined {
    fn emit_logs_and_metrics(&self) {
        metrics::counter!(names::QUARANTINED, "failed_stage" => self.failed_stage.clone(), "class" => self.class.clone()).increment(1);
        tracing::warn!(instance_id = %self.instance_id, key = %self.key, failed_stage = %self.failed_stage, class = %self.class, reason = %self.reason, "record quarantined");
    }
}

/// A failed block was rescheduled as retry number `retry`, due after `delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryScheduled {
    pub stage: &'static str,
    pub instance_id: String,
    pub block_id: String,
    pub failure: Failure,
    pub retry: u32,
    pub delay: Duration,
}

impl InternalEvent for RetryScheduled {
    fn emit_logs_and_metrics(&self) {
        let failure = &self.failure;
        metrics::counter!(names::RETRIES, "stage" => self.stage, "class" => failure.class.as_str()).increment(1);
        tracing::warn!(
            stage = self.stage,
            instance_id = %self.instance_id,
            block_id = %self.block_id,
            class = %failure.class,
            cause = failure.cause,
            reason = %failure.reason,
            retry = self.retry,
            delay_ms = self.delay.as_millis() as u64,
            "block rescheduled for a retry"
        );
    }
}

/// `partitions` partitions were paused for `for_how_long`; `paused_now` are paused.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionsPaused {
    pub stage: &'static str,
    pub partitions: usize,
    pub for_how_long: Duration,
    pub reason: String,
    pub paused_now: usize,
}

impl InternalEvent for PartitionsPaused {
    fn emit_logs_and_metrics(&self) {
        metrics::counter!(names::PAUSES, "stage" => self.stage).increment(1);
        metrics::gauge!(names::PAUSED_PARTITIONS, "stage" => self.stage).set(self.paused_now as f64);
        tracing::info!(stage = self.stage, partitions = self.partitions, pause_ms = self.for_how_long.as_millis() as u64, reason = %self.reason, "partitions paused");
    }
}

/// `partitions` partitions were resumed; `paused_now` are still paused.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionsResumed {
    pub stage: &'static str,
    pub partitions: usize,
    pub paused_now: usize,
}

impl InternalEvent for PartitionsResumed {
    fn emit_logs_and_metrics(&self) {
        metrics::gauge!(names::PAUSED_PARTITIONS, "stage" => self.stage).set(self.paused_now as f64);
        tracing::info!(stage = self.stage, partitions = self.partitions, "partitions resumed");
    }
}
