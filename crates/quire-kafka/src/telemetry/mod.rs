//! Logs and metrics. Logs go to stderr: JSON lines (fields: stage, instance_id, block and
//! dataset ids, request_id where known) unless stderr is a terminal, where people read
//! them as text (`QUIRE_LOG_FORMAT=json|text` decides instead); `http` serves the
//! metrics for Prometheus.
//!
//! [`events`] is the one place that defines what a stage reports: one struct per event,
//! whose emission writes one structured log line and bumps its metric, so the two never
//! disagree. [`otel`]
//! carries traces through the records' headers; `io::http` serves the metrics.
//! [`EventRecorder`] is the test hook that records which events fired.

pub mod events;
pub mod otel;

use std::any::Any;
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

/// Every metric name of the crate, in one place (the watchdogs' in submodules).
pub mod names {
    pub const RECORDS: &str = "quire_stage_records_total";
    pub const DUPLICATES: &str = "quire_stage_duplicates_skipped_total";
    /// Inputs the stage's ledger had answered already (`how`: done or stale), taken in
    /// without any work.
    pub const INPUTS_ANSWERED: &str = "quire_stage_inputs_answered_total";
    /// Time to read ledger partitions into the local store.
    pub const LEDGER_READ_DURATION: &str = "quire_stage_ledger_read_seconds";
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

    /// kafka-lag-exporter's metric names (labels `cluster_name, group, topic, partition`).
    pub mod lag {
        pub const GROUP_LAG: &str = "kafka_consumergroup_group_lag";
        pub const GROUP_LAG_SECONDS: &str = "kafka_consumergroup_group_lag_seconds";
        pub const GROUP_OFFSET: &str = "kafka_consumergroup_group_offset";
        pub const GROUP_MAX_LAG: &str = "kafka_consumergroup_group_max_lag";
        pub const GROUP_MAX_LAG_SECONDS: &str = "kafka_consumergroup_group_max_lag_seconds";
        pub const GROUP_SUM_LAG: &str = "kafka_consumergroup_group_sum_lag";
        pub const GROUP_TOPIC_SUM_LAG: &str = "kafka_consumergroup_group_topic_sum_lag";
        pub const PARTITION_LATEST_OFFSET: &str = "kafka_partition_latest_offset";
        pub const PARTITION_EARLIEST_OFFSET: &str = "kafka_partition_earliest_offset";
        /// 1 for the group's current Burrow-style status, 0 for the others.
        pub const GROUP_STATUS: &str = "quire_consumergroup_status";
        /// Records the group committed past per second, over the last poll.
        pub const GROUP_THROUGHPUT: &str = "quire_consumergroup_throughput_records_per_second";
        /// When the watchdog last sampled the groups, epoch seconds.
        pub const LAST_POLL: &str = "quire_watchdog_last_poll_timestamp_seconds";
    }

    /// Metric names of the block watchdog.
    pub mod blocks {
        /// Blocks past their state's TTL, by state and verdict.
        pub const STALLED_BLOCKS: &str = "quire_watchdog_stalled_blocks";
        pub const REDRIVEN: &str = "quire_watchdog_blocks_redriven_total";
        pub const QUARANTINED: &str = "quire_watchdog_blocks_quarantined_total";
    }

    /// Metric names of the instance watchdog.
    pub mod instances {
        /// Instances by `service` and `liveness` (alive, stopped, dead).
        pub const INSTANCES: &str = "quire_watchdog_instances";
    }
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
    Transition(events::BlockTransition),
    DeadLettered(events::DeadLettered),
    RetryScheduled(events::RetryScheduled),
    Quarantined(events::Quarantined),
    BlockCompleted(events::BlockCompleted),
}

impl EffectEvent {
    /// Reports the event (see [`events::emit`]).
    pub fn emit(self) {
        match self {
            EffectEvent::Transition(event) => events::emit(event),
            EffectEvent::DeadLettered(event) => events::emit(event),
            EffectEvent::RetryScheduled(event) => events::emit(event),
            EffectEvent::Quarantined(event) => events::emit(event),
            EffectEvent::BlockCompleted(event) => events::emit(event),
        }
    }
}

/// One recorded event: its type's name and the event itself.
type Recorded = (&'static str, Arc<dyn Any + Send + Sync>);
type Recording = Mutex<Vec<Recorded>>;

/// The recorders alive in this process.
static RECORDERS: Mutex<Vec<Weak<Recording>>> = Mutex::new(Vec::new());

/// A test hook: records every event this process emits while the recorder lives, so
/// tests assert on which events fired (and how often) rather than scrape counters that
/// also count what others did in the same process.
#[derive(Clone, Default)]
pub struct EventRecorder(Arc<Recording>);

impl EventRecorder {
    /// Records from now on.
    pub fn start() -> Self {
        let recorder = EventRecorder::default();
        RECORDERS.lock().expect("event recorders").push(Arc::downgrade(&recorder.0));
        recorder
    }

    /// The events of type `E` emitted so far, in order.
    pub fn fired<E: events::InternalEvent>(&self) -> Vec<E> {
        self.0.lock().expect("recorded events").iter().filter_map(|(_, event)| event.downcast_ref::<E>().cloned()).collect()
    }

    /// The names of the events emitted so far (`BatchAborted`), in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.lock().expect("recorded events").iter().map(|(name, _)| *name).collect()
    }
}

/// Shows `event` to every live recorder (copied only if there is one).
fn record<E: events::InternalEvent>(event: &E) {
    let mut recorders = RECORDERS.lock().expect("event recorders");
    recorders.retain(|r| r.strong_count() > 0);
    if recorders.is_empty() {
        return;
    }
    let name = std::any::type_name::<E>().rsplit("::").next().unwrap_or("?");
    let shared: Arc<dyn Any + Send + Sync> = Arc::new(event.clone());
    for recording in recorders.iter().filter_map(Weak::upgrade) {
        recording.lock().expect("recorded events").push((name, shared.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::events::{emit, BatchAborted, BlockCompleted};
    use super::*;

    fn aborted(inputs: usize) -> BatchAborted {
        BatchAborted { stage: "claimer", inputs, reason: "test".into() }
    }

    #[test]
    fn a_recorder_sees_what_fired_while_it_lived_and_nothing_else() {
        // Other tests of this process emit events meanwhile: look for these ones only.
        let ours = |r: &EventRecorder| r.fired::<BatchAborted>().into_iter().filter(|e| (101..=104).contains(&e.inputs)).map(|e| e.inputs).collect::<Vec<_>>();
        emit(aborted(101));
        let first = EventRecorder::start();
        emit(aborted(102));
        let second = EventRecorder::start();
        EffectEvent::BlockCompleted(BlockCompleted { age_ms: 7 }).emit();
        emit(aborted(103));
        emit(aborted(104));
        assert_eq!(ours(&first), [102, 103, 104]);
        assert_eq!(ours(&second), [103, 104]);
        assert!(second.fired::<BlockCompleted>().contains(&BlockCompleted { age_ms: 7 }));
        assert!(second.names().contains(&"BlockCompleted") && second.names().contains(&"BatchAborted"));
    }
}
