//! Logs and metrics. Logs go to stderr: JSON lines (fields: stage, instance_id, block and
//! dataset ids, request_id where known) unless stderr is a terminal, where people read
//! them as text (`QUIRE_LOG_FORMAT=json|text` decides instead); `http` serves the
//! metrics for Prometheus.
//!
//! [`events`] is the one place that defines what a stage reports: each function writes
//! one structured log line and bumps its metric, so the two never disagree. [`otel`]
//! carries traces through the records' headers; `io::http` serves the metrics.
//! [`EventRecorder`] is the test hook that records which events fired.

pub mod otel;

use std::sync::{Arc, Mutex, Weak};
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber (level from `RUST_LOG`, default `info`).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let json = match std::env::var("QUIRE_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let _ = if json {
        builder.json().with_current_span(false).flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}

/// Metric names, in one place.
pub mod names {
    pub const RECORDS: &str = "quire_stage_records_total";
    pub const DUPLICATES: &str = "quire_stage_duplicates_skipped_total";
    pub const DEAD_LETTERED: &str = "quire_stage_dead_lettered_total";
    pub const BATCHES_COMMITTED: &str = "quire_stage_batches_committed_total";
    pub const BATCHES_ABORTED: &str = "quire_stage_batches_aborted_total";
    /// Producers replaced after librdkafka failed them fatally (not fenced).
    pub const PRODUCERS_REPLACED: &str = "quire_stage_producers_replaced_total";
    pub const ILLEGAL_TRANSITIONS: &str = "quire_illegal_transitions_total";
    pub const QUARANTINED: &str = "quire_quarantined_total";
    pub const RETRIES: &str = "quire_retries_total";
    pub const PAUSED_PARTITIONS: &str = "quire_stage_paused_partitions";
    pub const PAUSES: &str = "quire_stage_pauses_total";
    /// Output records in committed batches, by stage and topic.
    pub const RECORDS_PRODUCED: &str = "quire_stage_records_produced_total";
    /// Time to commit a batch (offsets and transaction).
    pub const COMMIT_DURATION: &str = "quire_stage_commit_duration_seconds";
    /// Time a stage spends on one input record.
    pub const PROCESSING_DURATION: &str = "quire_stage_processing_duration_seconds";
    /// From a document's submission to its block's completion.
    pub const END_TO_END_DURATION: &str = "quire_block_end_to_end_duration_seconds";
}

/// Bucket bounds of every `*_seconds` histogram: from a sub-millisecond validation to a
/// dataset that waited an hour.
pub const SECONDS_BUCKETS: [f64; 21] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0];

/// What a committed effect made true. Built with the effect and reported (its log line
/// and metric) only once the batch holding it has committed: never for an effect
/// skipped as a duplicate or a batch aborted, so replays do not inflate the counts the
/// alerts are built on.
#[derive(Debug, Clone, PartialEq)]
pub enum EffectEvent {
    Transition { stage: String, instance_id: String, block_id: String, dataset_id: String, request_id: String, from: quire_core::BlockState, to: quire_core::BlockState },
    DeadLettered { stage: &'static str, instance_id: String, key: String, failure: quire_core::Failure },
    RetryScheduled { stage: &'static str, instance_id: String, block_id: String, failure: quire_core::Failure, retry: u32, delay: std::time::Duration },
    Quarantined { instance_id: String, key: String, failed_stage: String, class: String, reason: String },
    /// A block reached the output, `age_ms` after its document was submitted.
    BlockCompleted { age_ms: i64 },
}

impl EffectEvent {
    /// Writes the event's log line and bumps its metric.
    pub fn emit(&self) {
        record(|| Fired::Effect(self.clone()));
        match self {
            EffectEvent::Transition { stage, instance_id, block_id, dataset_id, request_id, from, to } => {
                events::block_transition(stage, instance_id, block_id, dataset_id, request_id, *from, *to)
            }
            EffectEvent::DeadLettered { stage, instance_id, key, failure } => events::dead_lettered(stage, instance_id, key, failure),
            EffectEvent::RetryScheduled { stage, instance_id, block_id, failure, retry, delay } => {
                events::retry_scheduled(stage, instance_id, block_id, failure, *retry, *delay)
            }
            EffectEvent::Quarantined { instance_id, key, failed_stage, class, reason } => events::quarantined(instance_id, key, failed_stage, class, reason),
            EffectEvent::BlockCompleted { age_ms } => events::block_completed(*age_ms),
        }
    }
}

/// An event as the test hook ([`EventRecorder`]) records it: a committed effect's
/// event, or what the loop did with a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    Effect(EffectEvent),
    BatchCommitted { stage: &'static str, inputs: usize },
    BatchAborted { stage: &'static str, inputs: usize },
}

type Recording = Mutex<Vec<Fired>>;

/// The recorders alive in this process.
static RECORDERS: Mutex<Vec<Weak<Recording>>> = Mutex::new(Vec::new());

/// A test hook: records every event this process fires while the recorder lives, so
/// tests assert on what fired (and how often) rather than scrape counters that also
/// count what others did in the same process.
#[derive(Clone, Default)]
pub struct EventRecorder(Arc<Recording>);

impl EventRecorder {
    /// Records from now on.
    pub fn start() -> Self {
        let recorder = EventRecorder::default();
        RECORDERS.lock().expect("event recorders").push(Arc::downgrade(&recorder.0));
        recorder
    }

    /// What fired so far, in order.
    pub fn fired(&self) -> Vec<Fired> {
        self.0.lock().expect("recorded events").clone()
    }

    /// The effects' events that fired so far, in order.
    pub fn effects(&self) -> Vec<EffectEvent> {
        self.fired().into_iter().filter_map(|f| if let Fired::Effect(e) = f { Some(e) } else { None }).collect()
    }
}

/// Hands what fired to every live recorder (built only if there is one).
fn record(fired: impl FnOnce() -> Fired) {
    let mut recorders = RECORDERS.lock().expect("event recorders");
    recorders.retain(|r| r.strong_count() > 0);
    if recorders.is_empty() {
        return;
    }
    let fired = fired();
    for recording in recorders.iter().filter_map(Weak::upgrade) {
        recording.lock().expect("recorded events").push(fired.clone());
    }
}

/// Every event a stage reports.
pub mod events {
    use super::names;
    use quire_core::{Failure, IllegalTransition};

    pub fn record_processed(stage: &'static str, duplicates: usize) {
        metrics::counter!(names::RECORDS, "stage" => stage).increment(1);
        if duplicates > 0 {
            metrics::counter!(names::DUPLICATES, "stage" => stage).increment(duplicates as u64);
        }
    }

    pub fn duplicate_skipped(stage: &'static str, instance_id: &str, key: &str) {
        tracing::info!(stage, instance_id, dedup_key = key, "effect already written; skipped");
    }

    pub fn dead_lettered(stage: &'static str, instance_id: &str, key: &str, failure: &Failure) {
        metrics::counter!(names::DEAD_LETTERED, "stage" => stage, "cause" => failure.cause).increment(1);
        tracing::warn!(stage, instance_id, dedup_key = key, class = %failure.class, cause = failure.cause, reason = %failure.reason, "record dead-lettered");
    }

    /// Creates the stage's counters at 0, so that rates over them (and alerts on those
    /// rates) exist before the first commit or abort.
    pub fn stage_started(stage: &'static str) {
        for name in [names::RECORDS, names::BATCHES_COMMITTED, names::BATCHES_ABORTED] {
            metrics::counter!(name, "stage" => stage).increment(0);
        }
    }

    pub fn batch_committed(stage: &'static str, inputs: usize, effects: usize, produced: &std::collections::HashMap<String, u64>, took: std::time::Duration) {
        super::record(|| super::Fired::BatchCommitted { stage, inputs });
        metrics::counter!(names::BATCHES_COMMITTED, "stage" => stage).increment(1);
        metrics::histogram!(names::COMMIT_DURATION, "stage" => stage).record(took.as_secs_f64());
        for (topic, count) in produced {
            metrics::counter!(names::RECORDS_PRODUCED, "stage" => stage, "topic" => topic.clone()).increment(*count);
        }
        tracing::debug!(stage, inputs, effects, took_ms = took.as_millis() as u64, "batch committed");
    }

    pub fn record_took(stage: &'static str, took: std::time::Duration) {
        metrics::histogram!(names::PROCESSING_DURATION, "stage" => stage).record(took.as_secs_f64());
    }

    /// A block reached the output, `age_ms` after its document was submitted.
    pub fn block_completed(age_ms: i64) {
        metrics::histogram!(names::END_TO_END_DURATION).record(age_ms.max(0) as f64 / 1000.0);
    }

    /// librdkafka failed the producer for good (not a fencing); a new one replaced it.
    pub fn producer_replaced(stage: &'static str, instance_id: &str, code: rdkafka::types::RDKafkaErrorCode, reason: &str) {
        metrics::counter!(names::PRODUCERS_REPLACED, "stage" => stage).increment(1);
        tracing::warn!(stage, instance_id, code = ?code, reason, "producer failed fatally; replaced by a new one, batch replayed");
    }

    pub fn batch_aborted(stage: &'static str, inputs: usize, reason: &str) {
        super::record(|| super::Fired::BatchAborted { stage, inputs });
        metrics::counter!(names::BATCHES_ABORTED, "stage" => stage).increment(1);
        tracing::warn!(stage, inputs, reason, "batch aborted");
    }

    pub fn illegal_transition(stage: &'static str, err: &IllegalTransition) {
        metrics::counter!(names::ILLEGAL_TRANSITIONS, "stage" => stage).increment(1);
        tracing::error!(stage, block_id = %err.block_id, from = %err.from, to = %err.to, "illegal transition rejected");
    }

    pub fn block_transition(stage: &str, instance_id: &str, block_id: &str, dataset_id: &str, request_id: &str, from: quire_core::BlockState, to: quire_core::BlockState) {
        tracing::info!(stage, instance_id, block_id, dataset_id, request_id, from = %from, to = %to, "block transition");
    }

    pub fn quarantined(instance_id: &str, key: &str, failed_stage: &str, class: &str, reason: &str) {
        metrics::counter!(names::QUARANTINED, "failed_stage" => failed_stage.to_owned(), "class" => class.to_owned()).increment(1);
        tracing::warn!(instance_id, key, failed_stage, class, reason, "record quarantined");
    }

    pub fn retry_scheduled(stage: &'static str, instance_id: &str, block_id: &str, failure: &Failure, retry: u32, delay: std::time::Duration) {
        metrics::counter!(names::RETRIES, "stage" => stage, "class" => failure.class.as_str()).increment(1);
        tracing::warn!(stage, instance_id, block_id, class = %failure.class, cause = failure.cause, reason = %failure.reason, retry, delay_ms = delay.as_millis() as u64, "block rescheduled for a retry");
    }

    pub fn partitions_paused(stage: &'static str, partitions: usize, for_how_long: std::time::Duration, reason: &str, paused_now: usize) {
        metrics::counter!(names::PAUSES, "stage" => stage).increment(1);
        metrics::gauge!(names::PAUSED_PARTITIONS, "stage" => stage).set(paused_now as f64);
        tracing::info!(stage, partitions, pause_ms = for_how_long.as_millis() as u64, reason, "partitions paused");
    }

    pub fn partitions_resumed(stage: &'static str, partitions: usize, paused_now: usize) {
        metrics::gauge!(names::PAUSED_PARTITIONS, "stage" => stage).set(paused_now as f64);
        tracing::info!(stage, partitions, "partitions resumed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(age_ms: i64) -> EffectEvent {
        EffectEvent::BlockCompleted { age_ms }
    }

    #[test]
    fn a_recorder_sees_what_fired_while_it_lived_and_nothing_else() {
        completed(1).emit();
        let first = EventRecorder::start();
        completed(2).emit();
        let second = EventRecorder::start();
        events::batch_aborted("claimer", 3, "test");
        completed(4).emit();
        // Other tests of this process fire events meanwhile: keep only these ones.
        let ours = |r: &EventRecorder| {
            r.fired()
                .into_iter()
                .filter(|f| matches!(f, Fired::Effect(EffectEvent::BlockCompleted { age_ms: 1..=4 }) | Fired::BatchAborted { inputs: 3, .. }))
                .collect::<Vec<_>>()
        };
        assert_eq!(ours(&first), [Fired::Effect(completed(2)), Fired::BatchAborted { stage: "claimer", inputs: 3 }, Fired::Effect(completed(4))]);
        assert_eq!(ours(&second), [Fired::BatchAborted { stage: "claimer", inputs: 3 }, Fired::Effect(completed(4))]);
        assert_eq!(first.effects().iter().filter(|e| **e == completed(2)).count(), 1);
    }
}
