//! The pipeline every stage runs in: the [`Stage`] API (a stage reads an input record,
//! then turns what it asks into [`Effect`]s), and the machinery around it that makes
//! those effects exactly-once.
//!
//! # Layout
//! - [`letters`]: the one builder each of audit records, dead letters and retry records.
//! - [`ledger`]: the entry each input leaves on its stage's ledger, written with its
//!   effects, and what an instance knows of the ledger partitions it holds.
//! - [`run`]: the consume → process → produce → commit loop (batches, transactions,
//!   pauses, rebalances).
//! - [`dedup`]: the keys a stage already wrote, rebuilt from its own output.
//! - [`cancel`]: the canceled datasets, followed from the control topic.
//! - [`heartbeat`]: every stage instance's heartbeats (alive, partitions held, last commit).
//! - [`service`]: what every stage binary does around its stage (signals, start-up).

pub mod cancel;
pub mod dedup;
pub mod heartbeat;
pub mod ledger;
pub mod letters;
pub mod run;
pub mod service;

use crate::config::{KafkaArgs, TopicNames};
use crate::record::headers::{self, DltOrigin};
use crate::record::{Input, OutputRecord};
use crate::telemetry::{events, EffectEvent};
use crate::io::http::Readiness;
use crate::{Codec, Result};
use cancel::CanceledDatasets;
use letters::DeadLetter;
use heartbeat::InstanceStatus;
use quire_core::ledger::{Admission, LedgerEntry, LedgerKey};
use quire_core::retry::RetrySchedule;
use quire_core::{Failure, StageName};
use std::time::Instant;

pub use run::run;
/// What stops [`run`]: the caller's, cancelled at shutdown.
pub use tokio_util::sync::CancellationToken;

/// The records one input causes under one dedup key. At least one of them must be on
/// one of the stage's output topics; the loop stamps the dedup key on every record
/// (`quire-dedup-key`), so that the dedup index finds it again after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    pub dedup_key: String,
    /// Its records, and what they make true (reported once committed).
    pub writes: Writes,
    /// Skip the effect if this key is done too (a failure of a block that completed).
    pub unless_done: Option<String>,
}

/// Records and the events they make true, as an effect is built up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    pub records: Vec<OutputRecord>,
    pub events: Vec<EffectEvent>,
}

impl Writes {
    pub fn push(&mut self, record: OutputRecord) {
        self.records.push(record);
    }

    pub fn append(&mut self, mut more: Writes) {
        self.records.append(&mut more.records);
        self.events.append(&mut more.events);
    }
}

impl From<Vec<OutputRecord>> for Writes {
    fn from(records: Vec<OutputRecord>) -> Self {
        Writes { records, events: Vec::new() }
    }
}

impl Effect {
    pub fn new(dedup_key: String, writes: impl Into<Writes>) -> Self {
        Effect { dedup_key, writes: writes.into(), unless_done: None }
    }

    /// The same effect, also reporting `event` once committed.
    pub fn with_event(mut self, event: EffectEvent) -> Self {
        self.writes.events.push(event);
        self
    }

    /// The same effect, with `earlier` written before its own records.
    pub fn after(mut self, mut earlier: Writes) -> Self {
        earlier.append(self.writes);
        self.writes = earlier;
        self
    }

    /// The same effect, skipped if `key` is already done.
    pub fn unless_done(self, key: &str) -> Self {
        Effect { unless_done: Some(key.to_owned()), ..self }
    }

    /// The same effect, completing a block `age_ms` after its submission.
    pub fn completing_block_aged(self, age_ms: i64) -> Self {
        self.with_event(EffectEvent::BlockCompleted(events::BlockCompleted { age_ms }))
    }
}

/// Why a stage could not turn a record into effects. Records the stage can read but
/// rejects are not errors: the stage turns them into dead-letter effects itself. The
/// failure's [`Action`](quire_core::Action) says what the loop does: a record to
/// quarantine is dead-lettered under its position so the partition moves on (its output
/// does not fit the schema, say); a pause leaves it unread and pauses every partition
/// until `resume_at` (every engine's breaker is open); a retry aborts the batch and
/// reads it again after a backoff (the registry is unreachable); an exit ends the loop.
#[derive(Debug, thiserror::Error)]
#[error("{failure}")]
pub struct StageError {
    pub failure: Failure,
    /// When a paused stage reads again.
    pub resume_at: Option<Instant>,
}

impl StageError {
    /// Pauses the stage until `until`, the record left unread.
    pub fn pause_until(failure: Failure, until: Instant) -> Self {
        StageError { failure, resume_at: Some(until) }
    }
}

impl From<Failure> for StageError {
    fn from(failure: Failure) -> Self {
        StageError { failure, resume_at: None }
    }
}

/// What a stage knows about where it runs.
#[derive(Debug, Clone)]
pub struct StageContext {
    pub stage: StageName,
    pub group: String,
    pub instance_id: String,
    pub names: TopicNames,
    pub codec: Codec,
    pub canceled: CanceledDatasets,
    /// Set while the stage has partitions assigned (`/health/ready`).
    pub readiness: Readiness,
    /// What this instance holds, for its heartbeats.
    pub instance: InstanceStatus,
    /// Largest input record taken in; larger input bytes are left out of dead letters.
    pub max_record_bytes: usize,
    /// When failed blocks are retried, and on which retry topics.
    pub retries: RetrySchedule,
}

impl StageContext {
    /// The context of a stage that drops the blocks of canceled datasets (it follows
    /// the control topic).
    pub fn new(stage: StageName, args: &KafkaArgs) -> Result<Self> {
        let canceled = CanceledDatasets::follow(args, &TopicNames::new(&args.topic_prefix).control())?;
        Self::with_canceled(stage, args, canceled)
    }

    /// The context of a stage with no use for cancellations (the quarantine files
    /// failures of canceled datasets too).
    pub fn ignoring_cancellations(stage: StageName, args: &KafkaArgs) -> Result<Self> {
        Self::with_canceled(stage, args, CanceledDatasets::default())
    }

    fn with_canceled(stage: StageName, args: &KafkaArgs, canceled: CanceledDatasets) -> Result<Self> {
        let names = TopicNames::new(&args.topic_prefix);
        Ok(StageContext {
            canceled,
            readiness: Readiness::default(),
            instance: InstanceStatus::default(),
            stage,
            group: names.group(stage),
            instance_id: args.instance_id.clone(),
            names,
            codec: Codec::new(&args.schema_registry_url)?,
            max_record_bytes: args.max_record_bytes,
            retries: args.retry_schedule(),
        })
    }

    /// Where `input` came from, as the DLT headers say it.
    pub fn origin(&self, input: &Input) -> DltOrigin {
        DltOrigin {
            topic: input.topic.clone(),
            partition: input.partition,
            offset: input.offset,
            timestamp_ms: input.timestamp_ms,
            timestamp_type: input.timestamp_type,
            consumer_group: self.group.clone(),
        }
    }

    /// The effect of a record that cannot be processed at all: dead-lettered under its
    /// position (`topic/partition/offset`).
    pub fn unreadable(&self, input: &Input, failure: &Failure) -> Effect {
        let key = input.position_key();
        let records = vec![self.dead_letter(input, failure, &key).build()];
        Effect::new(key.clone(), records).with_event(self.dead_lettered(key, failure))
    }

    /// The event of a record dead-lettered under `key`.
    pub fn dead_lettered(&self, key: String, failure: &Failure) -> EffectEvent {
        EffectEvent::DeadLettered(events::DeadLettered { stage: self.stage.as_str(), instance_id: self.instance_id.clone(), key, failure: failure.clone() })
    }

    /// The dead letter of `input`, which failed with `failure`, keyed by `dedup_key`.
    pub fn dead_letter(&self, input: &Input, failure: &Failure, dedup_key: &str) -> DeadLetter {
        let letter = DeadLetter::new(&self.origin(input), failure, dedup_key, input.payload.clone())
            .traced_from(&input.headers)
            .set(headers::IDEMPOTENCY_KEY, dedup_key.as_bytes().to_vec());
        // An oversized record stays where it is; its dead letter says where and how big.
        match input.payload.is_some() && input.size() > self.max_record_bytes {
            true => letter.without_payload(),
            false => letter,
        }
    }
}

/// What a stage made of an input's bytes, before any work: the work it asks for and
/// what the stage's ledger knows it as, or why it cannot be read.
#[derive(Debug)]
pub enum Reading<W> {
    Read { key: LedgerKey, work: W },
    /// Dead-lettered under its position, with the failure's reason.
    Unreadable(Failure),
}

/// A pipeline stage: reads an input record, then (unless its ledger answered it
/// already) turns it into effects.
#[allow(async_fn_in_trait)]
pub trait Stage: Send + 'static {
    /// What a read input asks the stage to do (a decoded submission, block, result).
    type Work;
    fn context(&self) -> &StageContext;
    /// Topics the stage subscribes to.
    fn input_topics(&self) -> Vec<String> {
        let context = self.context();
        context.names.inputs(context.stage, &context.retries)
    }
    /// Topics whose keys are this stage's dedup keys (its outputs and dead letters).
    fn output_topics(&self) -> Vec<String> {
        let context = self.context();
        context.names.outputs(context.stage, &context.retries)
    }
    /// Called once before the first record, e.g. to register schemas.
    async fn on_start(&mut self) -> Result<()> {
        Ok(())
    }
    /// Decodes and screens `input`; no work, no engine call, no encoding.
    async fn read(&mut self, input: &Input) -> std::result::Result<Reading<Self::Work>, StageError>;
    /// Whether a read input is new work, given its ledger entry ([`quire_core::ledger::admit`]
    /// by default).
    fn admit(&self, entry: Option<&LedgerEntry>, key: &LedgerKey) -> Admission {
        quire_core::ledger::admit(entry, key)
    }
    /// The effects of `work`, read from `input` and admitted as new.
    async fn process(&mut self, input: &Input, work: Self::Work) -> std::result::Result<Vec<Effect>, StageError>;
    /// The effect of a record this stage cannot process at all (too large, or its
    /// output would be): dead-lettered under its position by default.
    async fn unprocessable(&mut self, input: &Input, failure: &Failure) -> std::result::Result<Effect, StageError> {
        Ok(self.context().unreadable(input, failure))
    }
    /// Asked after each processed record: `Some(t)` pauses every partition until `t`
    /// (a dependency is overloaded: back off).
    fn backpressure_until(&mut self) -> Option<Instant> {
        None
    }
}

/// A conflict the stage treats as done: for stages whose inputs may differ between
/// copies of the same work (two answers of one model call), the first one ledgered
/// stands.
pub fn first_answer_stands(admission: Admission) -> Admission {
    match admission {
        Admission::Conflict(_) => Admission::Done,
        other => other,
    }
}
