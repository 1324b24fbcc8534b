//! Settings every Quire binary shares: where the broker and the registry are, how
//! records are delivered and how often the processing loop commits. Each field is a flag
//! with an environment variable and a default, so `--help` documents them all.

use clap::{Args, ValueEnum};
use quire_core::retry::{self, RetrySchedule};
use quire_core::StageName;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a stage makes its effects exactly-once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Output and input offsets in one Kafka transaction (plus dedup by key).
    Transactional,
    /// Idempotent producer, offsets committed after outputs are acknowledged; dedup by key
    /// turns the resulting at-least-once delivery into exactly-once effects.
    Idempotent,
}

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Transactional => "transactional",
            DeliveryMode::Idempotent => "idempotent",
        }
    }
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "QUIRE_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092")]
    pub bootstrap_servers: String,

    /// Confluent-compatible schema registry URL.
    #[arg(long, env = "QUIRE_SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    pub schema_registry_url: String,

    /// transactional: one Kafka transaction per batch; idempotent: no transactions.
    #[arg(long, env = "QUIRE_DELIVERY_MODE", value_enum, default_value = "transactional")]
    pub delivery_mode: DeliveryMode,

    /// Stable id of this instance; the transactional id is `quire-<stage>-<instance id>`,
    /// so a restarted instance fences its predecessor.
    #[arg(long, env = "QUIRE_INSTANCE_ID", default_value = "0")]
    pub instance_id: String,

    /// Prefix of every topic and consumer group name (tests use a random one).
    #[arg(long, env = "QUIRE_TOPIC_PREFIX", default_value = "quire")]
    pub topic_prefix: String,

    /// Commit the open batch after this many milliseconds. (Chosen with `quire bench`: a
    /// transaction costs the broker about the same whatever it holds, so the interval
    /// bounds latency and a large batch lets throughput grow under load.)
    #[arg(long, env = "QUIRE_COMMIT_INTERVAL_MS", default_value_t = 100)]
    pub commit_interval_ms: u64,

    /// Commit the open batch after this many input records.
    #[arg(long, env = "QUIRE_MAX_BATCH", default_value_t = 2_000)]
    pub max_batch: usize,

    /// Transaction timeout; must exceed the producer's message timeout.
    #[arg(long, env = "QUIRE_TRANSACTION_TIMEOUT_MS", default_value_t = 60_000)]
    pub transaction_timeout_ms: u64,

    /// Address of the HTTP endpoint serving /metrics and /health/* (empty: none).
    #[arg(long, env = "QUIRE_METRICS_ADDR", default_value = "")]
    pub metrics_addr: String,

    /// How often every stage instance heartbeats on the instances topic.
    #[arg(long, env = "QUIRE_HEARTBEAT_INTERVAL_MS", default_value_t = 5_000)]
    pub heartbeat_interval_ms: u64,

    /// Largest record (key and value) a stage takes in, in bytes; a larger one is
    /// quarantined as `record-too-large` without being read (Kafka's default
    /// `max.message.bytes` is 1 MiB). Dead letters and the quarantine may carry up to
    /// this much of a record's bytes.
    #[arg(long, env = "QUIRE_MAX_RECORD_BYTES", default_value_t = 1_048_576)]
    pub max_record_bytes: usize,

    /// Delays of successive retries of a failed block, in ms, comma-separated; each has
    /// its own retry topic `<topic>-retry-<ms>`. Their count bounds the retries.
    #[arg(long, env = "QUIRE_RETRY_DELAYS_MS", default_value = quire_core::retry::DEFAULT_RETRY_DELAYS_MS)]
    pub retry_delays_ms: String,

    /// Where each stage instance keeps the local copy of its ledger partitions, one file
    /// per instance (`<dir>/<topic prefix>-<stage>-<instance id>.redb`). Losing it costs
    /// a rebuild from the ledger topic, nothing else; on Kubernetes, a volume per pod.
    #[arg(long, env = "QUIRE_STATE_DIR", default_value = "quire-state")]
    pub state_dir: std::path::PathBuf,

    /// Fault injection for tests: after this many committed batches, the stage's producer
    /// is made to fail fatally once (librdkafka's `rd_kafka_test_fatal_error`), as a
    /// broker that loses its sequence bookkeeping makes it fail. 0: never.
    #[arg(long, env = "QUIRE_FAULT_FATAL_PRODUCER_AFTER_BATCHES", default_value_t = 0, hide = true)]
    pub fault_fatal_producer_after_batches: u64,

    /// Fault injection for tests: the process dies (abort, like a SIGKILL) while it
    /// commits the first batch holding a record on a topic whose name contains this,
    /// after the batch's records reached the broker and before its commit. Empty: never.
    #[arg(long, env = "QUIRE_FAULT_CRASH_BEFORE_COMMIT_WITH", default_value = "", hide = true)]
    pub fault_crash_before_commit_with: String,
}

impl KafkaArgs {
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    /// Producer message timeout, kept below the transaction timeout as librdkafka requires.
    /// Without transactions nothing fences an instance that was paused past its session
    /// timeout (a zombie), so its unsent writes must expire before its partitions can be
    /// given to another instance: librdkafka times out queued records before it sends
    /// them when the process wakes up, and a successor is assigned no sooner than a
    /// session timeout after the zombie's last heartbeat.
    pub fn message_timeout_ms(&self) -> u64 {
        let within_transaction = (self.transaction_timeout_ms / 2).max(1_000);
        match self.delivery_mode {
            DeliveryMode::Transactional => within_transaction,
            DeliveryMode::Idempotent => within_transaction.min(SESSION_TIMEOUT_MS - 3 * CONSUMER_HEARTBEAT_INTERVAL_MS),
        }
    }

    /// The largest record a stage produces: an input's bytes in a dead letter or a
    /// quarantine record, plus room for their headers and fields.
    pub fn max_output_bytes(&self) -> usize {
        self.max_record_bytes + 64 * 1024
    }

    /// The file of `stage`'s local ledger copy for this instance.
    pub fn ledger_store_path(&self, stage: StageName) -> std::path::PathBuf {
        self.state_dir.join(format!("{}-{}-{}.redb", self.topic_prefix, stage.as_str(), self.instance_id))
    }

    /// The retry schedule (checked by [`KafkaArgs::validate`]).
    pub fn retry_schedule(&self) -> RetrySchedule {
        RetrySchedule::parse(&self.retry_delays_ms).unwrap_or_default()
    }

    /// Checks rules that involve more than one field.
    pub fn validate(&self) -> Result<(), String> {
        RetrySchedule::parse(&self.retry_delays_ms).map_err(|e| format!("retry_delays_ms: {e}"))?;
        if self.max_batch == 0 {
            return Err("max_batch must be at least 1".into());
        }
        if self.heartbeat_interval_ms == 0 {
            return Err("heartbeat_interval_ms must be at least 1".into());
        }
        if self.transaction_timeout_ms < 2_000 {
            return Err(format!("transaction_timeout_ms {} is below 2000", self.transaction_timeout_ms));
        }
        if self.commit_interval_ms >= self.transaction_timeout_ms {
            return Err(format!(
                "commit_interval_ms {} must be below transaction_timeout_ms {}",
                self.commit_interval_ms, self.transaction_timeout_ms
            ));
        }
        if !(1_024..=crate::record::MAX_VALUE_BYTES).contains(&self.max_record_bytes) {
            return Err(format!("max_record_bytes {} must be between 1024 and {}", self.max_record_bytes, crate::record::MAX_VALUE_BYTES));
        }
        if self.instance_id.is_empty() || self.topic_prefix.is_empty() {
            return Err("instance_id and topic_prefix must not be empty".into());
        }
        Ok(())
    }

    /// librdkafka settings common to all clients.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config.set("broker.address.family", "v4");
        config
    }
}

impl Default for KafkaArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: KafkaArgs,
        }
        Wrapper::parse_from(["quire"]).args
    }
}

const DEAD_LETTER_SUFFIX: &str = "-dlt";

/// The stages' consumer session timeout: how long a silent instance keeps its partitions.
pub const SESSION_TIMEOUT_MS: u64 = 10_000;
/// How often a stage's consumer heartbeats to its group.
pub const CONSUMER_HEARTBEAT_INTERVAL_MS: u64 = 1_000;

/// The topic names of one deployment, all under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    pub prefix: String,
}

impl TopicNames {
    pub fn new(prefix: &str) -> Self {
        TopicNames { prefix: prefix.to_owned() }
    }
    /// The full name of a topic declared in `topics.yaml` as `quire.<suffix>`.
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}.{}", self.prefix, suffix)
    }
    pub fn ingest(&self) -> String {
        self.topic("ingest")
    }
    pub fn queued(&self) -> String {
        self.topic("blocks.queued")
    }
    pub fn results(&self) -> String {
        self.topic("inference.results")
    }
    pub fn completed(&self) -> String {
        self.topic("blocks.completed")
    }
    pub fn events(&self) -> String {
        self.topic("block-events")
    }
    pub fn quarantine(&self) -> String {
        self.topic("quarantine")
    }
    pub fn control(&self) -> String {
        self.topic("dataset-control")
    }
    pub fn instances(&self) -> String {
        self.topic("instances")
    }
    /// The dead-letter topic of `topic` (Spring ≥ 3.3 naming); a retry topic's records
    /// go to its main topic's.
    pub fn dead_letter(topic: &str) -> String {
        format!("{}{DEAD_LETTER_SUFFIX}", retry::base_topic(topic))
    }
    pub fn is_dead_letter(topic: &str) -> bool {
        topic.ends_with(DEAD_LETTER_SUFFIX)
    }
    /// The queued topic and its retry topics: where a block waits for inference.
    pub fn queued_and_retries(&self, schedule: &RetrySchedule) -> Vec<String> {
        let queued = self.queued();
        let mut topics = TopicNames::retries(&queued, schedule);
        topics.insert(0, queued);
        topics
    }
    /// The dead-letter topics of the three stages that dead-letter.
    pub fn dead_letters(&self) -> Vec<String> {
        [self.ingest(), self.queued(), self.results()].iter().map(|t| TopicNames::dead_letter(t)).collect()
    }
    /// The retry topics of `topic`, one per delay of `schedule`.
    pub fn retries(topic: &str, schedule: &RetrySchedule) -> Vec<String> {
        schedule.delays().iter().map(|d| retry::retry_topic(topic, *d)).collect()
    }
    /// Every topic Quire reads or writes under this prefix (retry topics those of
    /// `schedule`): what `topics.yaml` must declare.
    pub fn all(&self, schedule: &RetrySchedule) -> std::collections::BTreeSet<String> {
        let mut topics: std::collections::BTreeSet<String> = [self.events(), self.control(), self.instances()].into();
        for stage in StageName::ALL {
            topics.extend(self.inputs(stage, schedule));
            topics.extend(self.outputs(stage, schedule));
            topics.insert(self.ledger(stage));
        }
        topics
    }
    /// The ledger of a stage: what it did with each input it read, on the partition the
    /// input came from.
    pub fn ledger(&self, stage: StageName) -> String {
        self.topic(&format!("{}.ledger", stage.as_str()))
    }
    /// The consumer group of a stage.
    pub fn group(&self, stage: StageName) -> String {
        format!("{}-{}", self.prefix, stage.as_str())
    }
    /// The topics `stage` consumes (inference's retry topics those of `schedule`).
    pub fn inputs(&self, stage: StageName, schedule: &RetrySchedule) -> Vec<String> {
        match stage {
            StageName::Claimer => vec![self.ingest()],
            StageName::Inference => self.queued_and_retries(schedule),
            StageName::Validator => vec![self.results()],
            StageName::Quarantine => self.dead_letters(),
        }
    }
    /// The topics whose records carry `stage`'s dedup keys: its outputs and dead
    /// letters (not the queued topic for inference: its keys are the claimer's).
    pub fn outputs(&self, stage: StageName, schedule: &RetrySchedule) -> Vec<String> {
        match stage {
            StageName::Claimer => vec![self.queued(), TopicNames::dead_letter(&self.ingest())],
            StageName::Inference => {
                let queued = self.queued();
                let mut topics = TopicNames::retries(&queued, schedule);
                topics.extend([self.results(), TopicNames::dead_letter(&queued)]);
                topics
            }
            StageName::Validator => vec![self.completed(), TopicNames::dead_letter(&self.results())],
            StageName::Quarantine => vec![self.quarantine()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_cross_field_rules_hold() {
        let mut args = KafkaArgs::default();
        assert_eq!(args.validate(), Ok(()));
        assert!(args.message_timeout_ms() < args.transaction_timeout_ms);
        let idempotent = KafkaArgs { delivery_mode: DeliveryMode::Idempotent, ..KafkaArgs::default() };
        assert!(idempotent.message_timeout_ms() + CONSUMER_HEARTBEAT_INTERVAL_MS < SESSION_TIMEOUT_MS, "a zombie's writes expire before a successor is assigned");
        args.commit_interval_ms = args.transaction_timeout_ms;
        assert!(args.validate().unwrap_err().contains("commit_interval_ms"));
        let args = KafkaArgs { retry_delays_ms: "30000,5000".into(), ..KafkaArgs::default() };
        assert!(args.validate().unwrap_err().contains("retry_delays_ms"));
    }

    #[test]
    fn names_follow_the_prefix() {
        let names = TopicNames::new("t1");
        assert_eq!(names.queued(), "t1.blocks.queued");
        assert_eq!(TopicNames::dead_letter(&names.queued()), "t1.blocks.queued-dlt");
        assert_eq!(names.group(StageName::Claimer), "t1-claimer");
        let retries = TopicNames::retries(&names.queued(), &RetrySchedule::parse("100,2000").unwrap());
        assert_eq!(retries, ["t1.blocks.queued-retry-100", "t1.blocks.queued-retry-2000"]);
        assert_eq!(TopicNames::dead_letter(&retries[1]), "t1.blocks.queued-dlt");
    }
}
