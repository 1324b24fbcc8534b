//! The one processing loop every stage runs in: consume → process → produce → send
//! offsets → commit.
//!
//! A stage only turns an input record into [`Effect`]s; this loop owns the clients.
//! Batches follow Kafka Streams' shape: one transaction every `max_batch` records or
//! `commit_interval`, holding the batch's outputs and its offsets (last processed + 1);
//! the outputs are held until the batch commits, so the transaction is open only while
//! it commits (the local broker needs that, see [`Core::commit`]). What goes wrong is
//! met by its class's [`Action`]: a failed batch is aborted, the consumer rewound to
//! its start and the dedup index caught up, then read again after a backoff; a fenced
//! producer ends the loop with [`Error::Fenced`] so the process exits and restarts,
//! while a producer librdkafka failed for good for another reason is replaced by a new
//! one in the same abort. On
//! revocation the open batch is committed (or aborted if that fails) before the
//! partitions go; each input record's effects are held whole before the next record is
//! read, so a commit never covers half a record.
//!
//! Before any work, each input is admitted against the stage's [`Ledger`] (see
//! [`handle`]): one it answered already costs nothing. What the stage does is held with
//! the input's ledger entry, which commits after its effects; nothing is processed on a
//! partition before its ledger has been read ([`Ledger::catch_up`]). Every effect is
//! also deduplicated by its key against [`DedupIndex`], for what the ledger cannot
//! tell: the effects of a batch that crashed or aborted before its entries, which a
//! broker that leaks aborted writes shows, and which `idempotent` mode, without
//! transactions, may have delivered before the crash. Before a batch's records go out
//! the instance checks that the group still counts it a member
//! ([`Core::check_membership`]): one paused past its session timeout writes nothing of
//! the batch it held.
//!
//! A record may also wait: a record on a retry topic is not read before its
//! `retry_topic-backoff-timestamp` (its partition is paused until then, Spring's way,
//! so fresh records on other topics flow past it), and a stage that finds every
//! engine's breaker open defers the record and pauses all its partitions until the first
//! breaker half-opens. A paused partition resumes at the offset it stopped at.
//!
//! librdkafka's transactional calls block, so the loop runs on its own thread and enters
//! the async runtime only to call [`Stage::process`].

use super::dedup::DedupIndex;
use super::heartbeat::InstanceStatus;
use super::ledger::{self, Ledger};
use super::{Effect, Reading, Stage, StageError};
use crate::config::{DeliveryMode, KafkaArgs};
use crate::record::headers;
use crate::record::{Input, OutputRecord};
use crate::telemetry::{events, EffectEvent};
use crate::io::http::Readiness;
use crate::{Error, Result};
use quire_core::ledger::{Admission, LedgerKey};
use quire_core::{Action, ErrorClass, Failure};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Longest a stage's fetch waits at the broker when there is nothing to read.
const FETCH_WAIT_MAX_MS: u64 = 50;

/// Counts deliveries the broker refused, for the idempotent mode's commit decision.
#[derive(Default)]
struct DeliveryContext {
    failures: AtomicU64,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            self.failures.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(topic = message.topic(), %error, "delivery failed");
        }
    }
}

/// The records read since the last commit.
#[derive(Default)]
struct Batch {
    txn_open: bool,
    inputs: usize,
    started: Option<Instant>,
    /// Next offset to read, per partition: what the commit sends.
    next_offsets: HashMap<(String, i32), i64>,
    /// First offset of the batch, per partition: where an abort rewinds to.
    rewind_to: HashMap<(String, i32), i64>,
    pending_keys: HashSet<String>,
    /// Records produced in the batch, per topic (counted once committed).
    produced: HashMap<String, u64>,
    /// What the batch's effects make true, reported once it commits.
    events: Vec<EffectEvent>,
    delivery_failures_at_start: u64,
    /// The batch's records, produced when it commits (see [`Core::commit`]).
    held: Vec<OutputRecord>,
}

impl Batch {
    /// Holds `record` for the batch's commit, counted by topic.
    fn hold(&mut self, record: OutputRecord) {
        *self.produced.entry(record.topic.clone()).or_default() += 1;
        self.held.push(record);
    }

    fn note_input(&mut self, input: &Input) {
        let tp = (input.topic.clone(), input.partition);
        self.rewind_to.entry(tp.clone()).or_insert(input.offset);
        self.next_offsets.insert(tp, input.offset + 1);
        self.inputs += 1;
        self.started.get_or_insert_with(Instant::now);
    }
}

/// What a commit attempt ended in.
enum CommitOutcome {
    /// Nothing was open.
    Empty,
    Committed,
    /// The batch was aborted; rewind to these offsets and catch the dedup index up.
    Aborted(HashMap<(String, i32), i64>),
}

/// Everything the loop and the rebalance callbacks share (they run on one thread).
struct Core {
    stage: &'static str,
    group: String,
    /// Where the stage's audit events go.
    audit_topic: String,
    instance_id: String,
    mode: DeliveryMode,
    producer: ThreadedProducer<DeliveryContext>,
    /// Makes the producer again when librdkafka declares it failed for good.
    producers: ProducerFactory,
    /// Committed batches, counted for `fault_fatal_producer_after_batches`.
    batches_committed: u64,
    fault_fatal_producer_after_batches: u64,
    /// Test fault: die while committing a batch with a record on a topic naming this.
    fault_crash_before_commit_with: Option<String>,
    batch: Batch,
    dedup: DedupIndex,
    /// What the stage's ledger says of the partitions held, and the batch's entries.
    ledger: Ledger,
    needs_catch_up: bool,
    /// What a rebalance callback failed with (it cannot return it): the loop ends so.
    callback_error: Option<Error>,
    txn_timeout: Duration,
    pauses: Pauses,
    readiness: Readiness,
    instance: InstanceStatus,
}

/// Partitions the loop paused: where each resumes reading (`None`: where the consumer
/// is) and when.
#[derive(Default)]
struct Pauses {
    partitions: HashMap<(String, i32), (Option<i64>, Instant)>,
}

impl Pauses {
    /// Adds a pause; a partition paused twice resumes at the earlier offset, later.
    fn add(&mut self, tp: (String, i32), offset: Option<i64>, until: Instant) {
        let entry = self.partitions.entry(tp).or_insert((offset, until));
        entry.0 = match (entry.0, offset) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        entry.1 = entry.1.max(until);
    }

    /// If `tp` is paused, makes it resume at `offset` or earlier and returns true.
    fn resume_no_later_than(&mut self, tp: &(String, i32), offset: i64) -> bool {
        match self.partitions.get_mut(tp) {
            Some(paused) => {
                paused.0 = Some(paused.0.map_or(offset, |o| o.min(offset)));
                true
            }
            None => false,
        }
    }

    /// Of an aborted batch's rewind offsets, keeps those of running partitions; paused
    /// ones will resume at the rewind offset instead.
    fn rewind(&mut self, to: HashMap<(String, i32), i64>) -> Vec<((String, i32), i64)> {
        to.into_iter().filter(|(tp, offset)| !self.resume_no_later_than(tp, *offset)).collect()
    }

    /// Takes the pauses that are due at `now`.
    fn take_due(&mut self, now: Instant) -> Vec<((String, i32), Option<i64>)> {
        let due: Vec<_> = self.partitions.iter().filter(|(_, (_, until))| *until <= now).map(|(tp, (o, _))| (tp.clone(), *o)).collect();
        for (tp, _) in &due {
            self.partitions.remove(tp);
        }
        due
    }
}

const FENCED_CODES: [RDKafkaErrorCode; 3] =
    [RDKafkaErrorCode::ProducerFenced, RDKafkaErrorCode::InvalidProducerEpoch, RDKafkaErrorCode::Fenced];

/// How a transactional call failed, decided by flags and by code: the local broker
/// flags a fenced producer as abortable, so the code must be checked too.
#[derive(Debug, thiserror::Error)]
enum TxnFailure {
    #[error("{0}")]
    Fenced(String),
    /// Retried in place (see [`Core::retry`]); never leaves it.
    #[error("retriable")]
    Retriable,
    #[error("{0}")]
    Abortable(String),
    /// librdkafka's transaction state cannot be trusted any more (a call kept timing
    /// out, an abort failed): exit, and the restart's init rolls the transaction back.
    #[error("transaction state unrecoverable, restarting: {0}")]
    Stuck(String),
}

fn classify(error: &KafkaError) -> TxnFailure {
    let code = error.rdkafka_error_code();
    if code.is_some_and(|c| FENCED_CODES.contains(&c)) {
        return TxnFailure::Fenced(error.to_string());
    }
    match error {
        // Fatal but not a fencing (a broker lost the producer's sequence state, say): the
        // abort that follows replaces the producer.
        KafkaError::Transaction(e) if e.is_fatal() => TxnFailure::Abortable(error.to_string()),
        KafkaError::Transaction(e) if e.is_retriable() => TxnFailure::Retriable,
        _ => TxnFailure::Abortable(error.to_string()),
    }
}

/// The loop's producer settings, to make it again: librdkafka's answer to a fatal
/// error that is not a fencing is a new producer instance. In transactional mode the
/// new one's `init_transactions` (same transactional id) aborts what the old left open.
struct ProducerFactory {
    config: rdkafka::ClientConfig,
    transactional: bool,
    txn_timeout: Duration,
}

impl ProducerFactory {
    fn create(&self) -> Result<ThreadedProducer<DeliveryContext>> {
        let producer: ThreadedProducer<DeliveryContext> = self.config.create_with_context(DeliveryContext::default())?;
        if self.transactional {
            producer.init_transactions(self.txn_timeout).map_err(|e| match classify(&e) {
                TxnFailure::Fenced(m) => Error::Fenced(m),
                _ => Error::Kafka(e),
            })?;
        }
        Ok(producer)
    }
}

impl TxnFailure {
    /// Its class: a fenced or stuck producer cannot go on; anything else may succeed
    /// when the batch is tried again.
    fn class(&self) -> ErrorClass {
        match self {
            TxnFailure::Retriable | TxnFailure::Abortable(_) => ErrorClass::Transient,
            TxnFailure::Fenced(_) | TxnFailure::Stuck(_) => ErrorClass::Fatal,
        }
    }

    /// What the loop does about it: abort the batch and read it again after a backoff,
    /// or end the process.
    fn action(&self) -> Action {
        self.class().action()
    }

    /// The error the loop ends with.
    fn into_error(self) -> Error {
        match self {
            TxnFailure::Fenced(m) => Error::Fenced(m),
            other => Error::Other(other.to_string()),
        }
    }
}

impl Core {
    /// Time limit of one blocking librdkafka call; retries stay well inside the
    /// consumer's max.poll.interval.ms.
    fn timeout(&self) -> Duration {
        self.txn_timeout.min(Duration::from_secs(10))
    }

    /// librdkafka's fatal error, if the producer has had one: it refuses every call after.
    fn producer_failed(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.producer.client().fatal_error()
    }

    /// Replaces a producer that failed fatally, unless it was fenced (a newer instance
    /// owns the transactional id: the loop must end). Whatever of the batch the broker
    /// took is found by the catch-up that follows any abort.
    fn replace_failed_producer(&mut self, code: RDKafkaErrorCode, message: &str) -> Result<()> {
        if FENCED_CODES.contains(&code) {
            return Err(Error::Fenced(message.to_owned()));
        }
        let producer = self
            .producers
            .create()
            .map_err(|e| Error::Other(format!("the producer failed ({message}) and could not be made again: {e}")))?;
        events::emit(events::ProducerReplaced { stage: self.stage, instance_id: self.instance_id.clone(), code, reason: message.to_owned() });
        self.producer = producer;
        self.batch.txn_open = false;
        Ok(())
    }

    /// Test fault: once the batch's records reached the broker, the process dies before
    /// it commits (`QUIRE_FAULT_CRASH_BEFORE_COMMIT_WITH`).
    fn crash_if(&self, crash: bool) -> std::result::Result<(), TxnFailure> {
        if crash {
            self.flush_delivered("the batch, before the injected crash")?;
            tracing::error!(stage = self.stage, "injected crash before the commit (QUIRE_FAULT_CRASH_BEFORE_COMMIT_WITH)");
            std::process::abort();
        }
        Ok(())
    }

    /// Test fault: the producer fails fatally after the configured number of batches.
    #[allow(unsafe_code)]
    fn inject_fault(&mut self) {
        if self.fault_fatal_producer_after_batches > 0 && self.batches_committed == self.fault_fatal_producer_after_batches {
            self.fault_fatal_producer_after_batches = 0;
            let reason = std::ffi::CString::new("injected by QUIRE_FAULT_FATAL_PRODUCER_AFTER_BATCHES").expect("no NUL");
            // SAFETY: the client pointer is valid for the producer's lifetime; the call
            // only raises librdkafka's fatal-error state (its documented test hook).
            unsafe {
                rdkafka::bindings::rd_kafka_test_fatal_error(
                    self.producer.client().native_ptr(),
                    rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                    reason.as_ptr(),
                );
            }
        }
    }

    fn begin(&mut self) -> std::result::Result<(), TxnFailure> {
        if let Err(e) = self.producer.begin_transaction() {
            if self.producer_failed().is_some() {
                // The abort that follows replaces the producer.
                return Err(TxnFailure::Abortable(format!("begin_transaction: {e}")));
            }
            // begin only fails when the producer's state is broken: never go on.
            return Err(match classify(&e) {
                TxnFailure::Fenced(m) => TxnFailure::Fenced(m),
                _ => TxnFailure::Stuck(format!("begin_transaction: {e}")),
            });
        }
        self.batch.txn_open = true;
        Ok(())
    }

    /// Produces the held records, or those of them `which` selects.
    fn produce_held(&mut self, which: impl Fn(&OutputRecord) -> bool) -> std::result::Result<(), TxnFailure> {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.batch.held).into_iter().partition(|r| which(r));
        self.batch.held = later;
        now.iter().try_for_each(|record| self.produce(record)).map_err(|e| TxnFailure::Abortable(format!("produce: {e}")))
    }

    fn produce(&mut self, record: &OutputRecord) -> Result<()> {
        let mut base = record.base_record();
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    base = returned;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(Error::Kafka(e)),
            }
        }
    }

    /// Holds the effects of `input` (processed since `started`) not already done for the
    /// batch's commit; returns how many were skipped as duplicates. Records carry
    /// `input`'s trace on as a child span, or start one (W3C `traceparent`, see `otel`).
    fn apply(&mut self, input: &Input, effects: Vec<Effect>, started: SystemTime) -> usize {
        let trace = crate::telemetry::otel::process_span(self.stage, &self.group, input, started);
        let tracestate = headers::trace_context(&input.headers).into_iter().find(|(n, _)| n == headers::TRACESTATE).map(|(_, v)| v);
        let mut duplicates = 0;
        for effect in effects {
            let done = |key: &str| self.dedup.contains(key) || self.batch.pending_keys.contains(key);
            if done(&effect.dedup_key) || effect.unless_done.as_deref().is_some_and(done) {
                events::emit(events::DuplicateSkipped { stage: self.stage, instance_id: self.instance_id.clone(), key: effect.dedup_key.clone() });
                duplicates += 1;
                continue;
            }
            let audit_only = effect.writes.records.iter().all(|record| record.topic == self.audit_topic);
            for record in &effect.writes.records {
                let mut record = record.clone();
                headers::set_header(&mut record.headers, headers::DEDUP_KEY, effect.dedup_key.as_bytes().to_vec());
                if audit_only {
                    headers::set_header(&mut record.headers, headers::EFFECT_OWNER, self.group.as_bytes().to_vec());
                }
                headers::set_header(&mut record.headers, headers::TRACEPARENT, trace.as_bytes().to_vec());
                if let Some(state) = &tracestate {
                    headers::set_header(&mut record.headers, headers::TRACESTATE, state.clone());
                }
                self.batch.hold(record);
            }
            self.batch.events.extend(effect.writes.events);
            self.batch.pending_keys.insert(effect.dedup_key);
        }
        duplicates
    }

    /// Commits the batch: its held records, then its offsets. Records are held until now
    /// so that a transaction is open only while it commits: the local broker leaves a
    /// commit invisible while another producer's transaction is open on a partition both
    /// wrote (the audit topic, which every stage writes), so stages whose transactions
    /// stayed open for a whole batch took turns keeping each other's output unreadable
    /// (see the deviations table in README.md).
    fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<CommitOutcome> {
        if self.batch.inputs == 0 && self.batch.held.is_empty() {
            return Ok(CommitOutcome::Empty);
        }
        let committing = Instant::now();
        let offsets = offsets_list(&self.batch.next_offsets)?;
        let crash = self.fault_crash_before_commit_with.as_deref().is_some_and(|t| self.batch.held.iter().any(|r| r.topic.contains(t)));
        let result = match self.mode {
            DeliveryMode::Transactional if !self.batch.held.is_empty() => self.commit_transaction(consumer, &offsets, crash),
            // Nothing was produced, so there is nothing to make atomic with the offsets: a
            // plain commit (fenced by the group generation) is enough, and the local broker
            // drops the offsets of a transaction that holds no records.
            DeliveryMode::Transactional => consumer
                .commit(&offsets, CommitMode::Sync)
                .map_err(|e| TxnFailure::Abortable(format!("offset commit: {e}"))),
            DeliveryMode::Idempotent => self.commit_idempotent(consumer, &offsets, crash),
        };
        match result {
            Ok(()) => {
                let batch = std::mem::take(&mut self.batch);
                events::emit(events::BatchCommitted {
                    stage: self.stage,
                    inputs: batch.inputs,
                    effects: batch.pending_keys.len(),
                    produced: batch.produced,
                    took: committing.elapsed(),
                });
                batch.events.into_iter().for_each(EffectEvent::emit);
                self.instance.committed();
                for key in batch.pending_keys {
                    self.dedup.insert(key);
                }
                self.ledger.committed()?;
                self.batch.delivery_failures_at_start = self.producer.context().failures.load(Ordering::SeqCst);
                self.batches_committed += 1;
                self.inject_fault();
                Ok(CommitOutcome::Committed)
            }
            Err(failure) if failure.action() == Action::Exit => Err(failure.into_error()),
            Err(failure) => self.abort(&failure.to_string()).map(CommitOutcome::Aborted),
        }
    }

    fn commit_transaction<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
        crash: bool,
    ) -> std::result::Result<(), TxnFailure> {
        let metadata = consumer
            .group_metadata()
            .ok_or_else(|| TxnFailure::Abortable("consumer has no group metadata".into()))?;
        // Kafka refuses the offsets of a stale group generation (KIP-447); the local
        // broker takes them, so a zombie is stopped here (see the deviations table).
        self.check_membership(consumer)?;
        self.begin()?;
        // The outputs delivered before the ledger entries saying they are written: a
        // broker that leaks an aborted transaction's records never shows an entry
        // without its effects.
        let ledger_topic = self.ledger.topic().to_owned();
        self.produce_held(|record| record.topic != ledger_topic)?;
        self.flush_delivered("outputs")?;
        self.produce_held(|_| true)?;
        self.crash_if(crash)?;
        self.retry(|p, t| p.send_offsets_to_transaction(offsets, &metadata, t))?;
        self.retry(|p, t| p.commit_transaction(t))?;
        self.batch.txn_open = false;
        Ok(())
    }

    /// Runs a transactional call, retrying it while librdkafka says it is retriable.
    fn retry(
        &self,
        call: impl Fn(&ThreadedProducer<DeliveryContext>, Duration) -> rdkafka::error::KafkaResult<()>,
    ) -> std::result::Result<(), TxnFailure> {
        let mut attempts = 0;
        loop {
            match call(&self.producer, self.timeout()) {
                Ok(()) => return Ok(()),
                Err(e) => match classify(&e) {
                    TxnFailure::Retriable if attempts < 5 => {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(100 << attempts));
                    }
                    // librdkafka keeps a timed-out call as the current one: no abort is
                    // possible now, only a restart.
                    TxnFailure::Retriable => return Err(TxnFailure::Stuck(e.to_string())),
                    other => return Err(other),
                },
            }
        }
    }

    /// Writes the batch's audit events, then its outputs, then its ledger entries, each
    /// flushed and every record delivered, then commits the offsets. Without a
    /// transaction nothing makes a batch's records visible at once: its audit events go
    /// first, so no stage downstream can act on a block before the change that sent it
    /// there is in the audit log, and its entries last, so none says an effect is
    /// written before it is.
    fn commit_idempotent<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
        crash: bool,
    ) -> std::result::Result<(), TxnFailure> {
        self.check_membership(consumer)?;
        let audit_topic = self.audit_topic.clone();
        let ledger_topic = self.ledger.topic().to_owned();
        self.produce_held(|record| record.topic == audit_topic)?;
        self.flush_delivered("audit events")?;
        self.produce_held(|record| record.topic != ledger_topic)?;
        self.flush_delivered("outputs")?;
        self.produce_held(|_| true)?;
        self.flush_delivered("ledger entries")?;
        self.crash_if(crash)?;
        consumer.commit(offsets, CommitMode::Sync).map_err(|e| TxnFailure::Abortable(format!("offset commit: {e}")))
    }

    /// An instance paused past its session timeout (a zombie) may wake with a batch
    /// held: before the batch's records go out, the group must still count it a member.
    /// Without transactions nothing else fences it, and the local broker commits a
    /// transaction's offsets whatever their group generation. Committing the batch's
    /// start offsets (where its partitions stand committed already, so a no-op for the
    /// group) fails for a zombie whose partitions moved. A pause after the check is left
    /// to the producer's message timeout (see `KafkaArgs::message_timeout_ms`).
    fn check_membership<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> std::result::Result<(), TxnFailure> {
        if self.batch.rewind_to.is_empty() {
            return Ok(());
        }
        let start = offsets_list(&self.batch.rewind_to).map_err(|e| TxnFailure::Abortable(format!("membership check: {e}")))?;
        consumer
            .commit(&start, CommitMode::Sync)
            .map_err(|e| TxnFailure::Abortable(format!("membership check before writing the batch (this instance may have been paused past its session timeout): {e}")))
    }

    /// Waits for every record sent so far; fails if any of the batch's was not delivered.
    fn flush_delivered(&self, what: &str) -> std::result::Result<(), TxnFailure> {
        self.producer.flush(self.timeout()).map_err(|e| TxnFailure::Abortable(format!("flush of {what}: {e}")))?;
        let failures = self.producer.context().failures.load(Ordering::SeqCst);
        if failures > self.batch.delivery_failures_at_start {
            return Err(TxnFailure::Abortable(format!("{} record(s) were not delivered", failures - self.batch.delivery_failures_at_start)));
        }
        Ok(())
    }

    /// Pauses `partitions` until `until`, each to resume at its offset.
    fn pause<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: Vec<((String, i32), Option<i64>)>,
        until: Instant,
        reason: &str,
    ) -> Result<()> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in partitions {
            list.add_partition(&topic, partition);
            self.pauses.add((topic, partition), offset, until);
        }
        consumer.pause(&list)?;
        events::emit(events::PartitionsPaused {
            stage: self.stage,
            partitions: list.count(),
            for_how_long: until.saturating_duration_since(Instant::now()),
            reason: reason.to_owned(),
            paused_now: self.pauses.partitions.len(),
        });
        Ok(())
    }

    /// Leaves `input` unread and pauses its partition until `until`.
    fn defer<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, input: &Input, until: Instant, reason: &str) -> Result<()> {
        self.pause(consumer, vec![((input.topic.clone(), input.partition), Some(input.offset))], until, reason)
    }

    /// Pauses every assigned partition until `until`; `input`, if any, is left unread.
    fn pause_all<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        input: Option<&Input>,
        until: Instant,
        reason: &str,
    ) -> Result<()> {
        let positions = consumer.position()?;
        let mut partitions = Vec::new();
        for element in consumer.assignment()?.elements() {
            let tp = (element.topic().to_owned(), element.partition());
            let offset = match input {
                Some(input) if input.topic == tp.0 && input.partition == tp.1 => Some(input.offset),
                _ => positions.find_partition(&tp.0, tp.1).and_then(|p| match p.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                }),
            };
            partitions.push((tp, offset));
        }
        self.pause(consumer, partitions, until, reason)
    }

    /// Resumes the partitions whose pause is over, each at its offset.
    fn resume_due<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<()> {
        let due = self.pauses.take_due(Instant::now());
        if due.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), _) in &due {
            list.add_partition(topic, *partition);
        }
        consumer.resume(&list)?;
        for ((topic, partition), offset) in &due {
            if let Some(offset) = offset {
                consumer
                    .seek(topic, *partition, Offset::Offset(*offset), Duration::from_secs(10))
                    .map_err(|e| Error::Other(format!("resume of {topic}/{partition} at {offset} failed: {e}")))?;
            }
        }
        events::emit(events::PartitionsResumed { stage: self.stage, partitions: due.len(), paused_now: self.pauses.partitions.len() });
        Ok(())
    }

    /// Keeps the first error a rebalance callback met, for the loop to end with.
    fn keep_callback_error(&mut self, result: Result<()>) {
        if let Err(e) = result {
            self.callback_error.get_or_insert(e);
        }
    }

    /// Abandons the batch: aborts its transaction, if any, and says where to rewind. An
    /// abort that fails, or a failed producer that cannot be replaced, ends the loop.
    fn abort(&mut self, reason: &str) -> Result<HashMap<(String, i32), i64>> {
        let ended = if let Some((code, message)) = self.producer_failed() {
            self.replace_failed_producer(code, &message)
        } else if self.batch.txn_open {
            self.producer.abort_transaction(self.timeout()).map_err(|e| {
                tracing::error!(stage = self.stage, error = %e, "abort_transaction failed");
                match classify(&e) {
                    failure if failure.action() == Action::Exit => failure.into_error(),
                    _ => Error::Other(format!("abort_transaction failed: {e}")),
                }
            })
        } else if self.mode == DeliveryMode::Idempotent {
            // Let the abandoned batch's writes land before the dedup index is caught up,
            // so the replay finds them instead of writing them again.
            self.producer.flush(self.timeout()).map_err(|e| Error::Other(format!("could not flush an abandoned batch: {e}")))
        } else {
            Ok(())
        };
        let batch = std::mem::take(&mut self.batch);
        self.ledger.aborted();
        self.batch.delivery_failures_at_start = self.producer.context().failures.load(Ordering::SeqCst);
        events::emit(events::BatchAborted { stage: self.stage, inputs: batch.inputs, reason: reason.to_owned() });
        // Some of the batch's writes may be visible anyway (leaked by the broker, or
        // delivered before the failure in idempotent mode): re-read them before going on.
        self.needs_catch_up = true;
        ended.map(|()| batch.rewind_to)
    }
}

/// `offsets` (per topic and partition) as librdkafka takes them.
fn offsets_list(offsets: &HashMap<(String, i32), i64>) -> rdkafka::error::KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(list)
}

/// The consumer's context: gives the rebalance callbacks the loop's state.
struct LoopContext {
    core: Arc<Mutex<Core>>,
}

impl ClientContext for LoopContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::io::reader::log_client_error(&error, reason);
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = self.core.lock().expect("loop state lock");
        match rebalance {
            // Partitions already given to another instance: its dedup index cannot see
            // this batch, so it must not be committed.
            Rebalance::Revoke(_) if consumer.assignment_lost() => {
                let aborted = core.abort("assignment lost").map(|_| ());
                core.keep_callback_error(aborted);
            }
            Rebalance::Revoke(_) => {
                let committed = core.commit(consumer).map(|_| ());
                core.keep_callback_error(committed);
            }
            Rebalance::Error(reason) => {
                let aborted = core.abort(&format!("rebalance error: {reason}")).map(|_| ());
                core.keep_callback_error(aborted);
            }
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = self.core.lock().expect("loop state lock");
        // Revoked partitions are read again from their committed offsets, where a
        // deferred record is met (and deferred) again: no pause outlives a rebalance.
        core.pauses = Pauses::default();
        if let Ok(assignment) = consumer.assignment() {
            core.instance.set_assignment(&assignment);
        }
        if let Rebalance::Revoke(_) = rebalance {
            core.readiness.set(false);
        }
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions assigned");
            // Ready once the dedup index has caught up (in the loop), even with no
            // partitions: an instance beyond the partition count is a healthy spare.
            if let Err(e) = consumer.resume(partitions) {
                tracing::warn!(error = %e, "could not resume newly assigned partitions");
            }
            core.needs_catch_up = true;
        }
    }
}

const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The partition numbers the consumer holds, of any input topic: the ledger partitions
/// it owns.
fn assigned_partitions<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Result<BTreeSet<i32>> {
    Ok(consumer.assignment()?.elements().iter().map(|e| e.partition()).collect())
}

/// When a record read from a retry topic is due, if that is still ahead. The due time
/// is at most the record's time plus its topic's delay, so a skewed or garbled header
/// cannot hold a partition back for longer.
fn not_before(input: &Input) -> Option<Instant> {
    let delay_ms = quire_core::retry::retry_delay(&input.topic)?.as_millis() as i64;
    let latest_due = input.timestamp_ms.saturating_add(delay_ms);
    let due_ms = headers::big_integer_header(&input.headers, headers::RETRY_BACKOFF_TIMESTAMP).map_or(latest_due, |due| due.min(latest_due));
    let wait_ms = due_ms - quire_core::records::now_ms();
    (wait_ms > 0).then(|| Instant::now() + Duration::from_millis(wait_ms as u64))
}

/// What the loop does with one input.
pub(crate) enum Handled {
    /// Effects to hold, with the key the input's ledger entry goes under (None: under
    /// its position, as an input the stage could not read or process).
    Effects(Option<LedgerKey>, Vec<Effect>),
    /// The ledger answered it already (`how`: done or stale): nothing is written.
    Answered { key: String, how: &'static str },
}

/// Takes `input` through `stage`, its ledger first: an input the ledger answered
/// already costs no work at all. Size limits apply: a record over `max_input` is not
/// read, and one whose effects hold a record over `max_output` (which the broker would
/// refuse, failing the whole batch again and again) is unprocessable instead; so is a
/// poison record, and one reusing an idempotency key for other content. Nothing of
/// such a record is produced but its dead letter, ledgered under its position.
pub(crate) async fn handle<S: Stage>(
    stage: &mut S,
    ledger: &Ledger,
    input: &Input,
    max_input: usize,
    max_output: usize,
) -> std::result::Result<Handled, StageError> {
    let failure = match input.too_large(max_input) {
        Some(failure) => failure,
        None => match stage.read(input).await? {
            Reading::Unreadable(failure) => {
                return match answered_at_position(ledger, input)? {
                    Some(answered) => Ok(answered),
                    None => Ok(Handled::Effects(None, vec![stage.context().unreadable(input, &failure)])),
                };
            }
            Reading::Read { key, work } => match stage.admit(lookup(ledger, input.partition, &key.key)?.as_ref(), &key) {
                Admission::New => match within_output_limit(stage.process(input, work).await, max_output)? {
                    Ok(effects) => return Ok(Handled::Effects(Some(key), effects)),
                    Err(failure) => failure,
                },
                Admission::Done => return Ok(Handled::Answered { key: key.key, how: "done" }),
                Admission::Stale { .. } => return Ok(Handled::Answered { key: key.key, how: "stale" }),
                Admission::Conflict(failure) => failure,
            },
        },
    };
    if let Some(answered) = answered_at_position(ledger, input)? {
        return Ok(answered);
    }
    stage.unprocessable(input, &failure).await.map(|effect| Handled::Effects(None, vec![effect]))
}

/// The effects of a processed input, or the failure that makes it unprocessable (a
/// record to quarantine, an output over `max_output`).
fn within_output_limit(
    processed: std::result::Result<Vec<Effect>, StageError>,
    max_output: usize,
) -> std::result::Result<std::result::Result<Vec<Effect>, Failure>, StageError> {
    match processed {
        Err(error) if error.failure.action() == Action::Quarantine => Ok(Err(error.failure)),
        Err(error) => Err(error),
        Ok(effects) => Ok(match effects.iter().flat_map(|e| &e.writes.records).find(|r| r.size() > max_output) {
            None => Ok(effects),
            Some(record) => Err(Failure::data(
                "output-too-large",
                format!(
                    "its output to {} would be {} bytes, over the limit of {max_output} bytes (QUIRE_MAX_RECORD_BYTES + 64 KiB)",
                    record.topic,
                    record.size()
                ),
            )),
        }),
    }
}

/// The ledger's entry of `key` from `partition`; a store that cannot answer stops the stage.
fn lookup(ledger: &Ledger, partition: i32, key: &str) -> std::result::Result<Option<quire_core::ledger::LedgerEntry>, StageError> {
    ledger.lookup(partition, key).map_err(|e| Failure::new(ErrorClass::Fatal, "ledger-store", e.to_string()).into())
}

/// An input already ledgered under its position (dead-lettered before) is answered.
fn answered_at_position(ledger: &Ledger, input: &Input) -> std::result::Result<Option<Handled>, StageError> {
    let position = input.position_key();
    Ok(lookup(ledger, input.partition, &position)?.map(|_| Handled::Answered { key: position, how: "done" }))
}

/// Runs `stage` until `shutdown` is cancelled (then commits the open batch and returns
/// `Ok`) or a fatal error (returned: the process should exit).
pub async fn run<S: Stage>(mut stage: S, args: KafkaArgs, shutdown: CancellationToken) -> Result<()> {
    args.validate().map_err(Error::Other)?;
    stage.on_start().await?;
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || run_blocking(stage, args, shutdown, runtime))
        .await
        .map_err(|e| Error::Other(format!("processing thread panicked: {e}")))?
}

fn run_blocking<S: Stage>(
    mut stage: S,
    args: KafkaArgs,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
) -> Result<()> {
    let context = stage.context().clone();
    let stage_name = context.stage.as_str();
    let ledger_topic = context.names.ledger(context.stage);
    let transactional_id = format!("{}-{}-{}", args.topic_prefix, stage_name, args.instance_id);
    let mut producer_config = args.client_config();
    producer_config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", (args.max_output_bytes() + 4096).to_string())
        .set("message.timeout.ms", args.message_timeout_ms().to_string());
    if args.delivery_mode == DeliveryMode::Transactional {
        producer_config
            .set("transactional.id", &transactional_id)
            .set("transaction.timeout.ms", args.transaction_timeout_ms.to_string());
    }
    let txn_timeout = Duration::from_millis(args.transaction_timeout_ms);
    let producers = ProducerFactory {
        config: producer_config,
        transactional: args.delivery_mode == DeliveryMode::Transactional,
        txn_timeout,
    };
    let producer = producers.create()?;
    let ledger = Ledger::open(&args, context.stage, ledger_topic.clone(), context.codec.clone())?;
    let mut dedup = DedupIndex::new(&args, &context.group, stage.output_topics(), context.names.events());
    let read = dedup.catch_up(CATCH_UP_TIMEOUT)?;
    tracing::info!(stage = stage_name, keys = dedup.len(), records = read, "dedup index built from output topics");

    let core = Arc::new(Mutex::new(Core {
        stage: stage_name,
        group: context.group.clone(),
        audit_topic: context.names.events(),
        instance_id: args.instance_id.clone(),
        mode: args.delivery_mode,
        producer,
        producers,
        batches_committed: 0,
        fault_fatal_producer_after_batches: args.fault_fatal_producer_after_batches,
        fault_crash_before_commit_with: Some(args.fault_crash_before_commit_with.clone()).filter(|t| !t.is_empty()),
        batch: Batch::default(),
        dedup,
        ledger,
        needs_catch_up: false,
        callback_error: None,
        txn_timeout,
        pauses: Pauses::default(),
        readiness: context.readiness.clone(),
        instance: context.instance.clone(),
    }));
    let consumer: BaseConsumer<LoopContext> = args
        .client_config()
        .set("group.id", &context.group)
        .set("client.id", format!("{transactional_id}-consumer"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // How long a fetch that finds nothing may wait at the broker. The local broker
        // answers when this runs out rather than when records arrive, so librdkafka's
        // 500 ms default delayed each stage's pickup (measured at low load: a block
        // reached the next stage 115 ms after the last instead of 135-215 ms).
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        // Range gives partition p of every input topic (they have one partition count)
        // to the same instance, the owner of ledger partition p: pinned, so that no
        // other strategy a member offers can split a ledger partition between two.
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", crate::config::SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", crate::config::CONSUMER_HEARTBEAT_INTERVAL_MS.to_string())
        .create_with_context(LoopContext { core: core.clone() })?;
    events::emit(events::StageStarted { stage: stage_name });
    let inputs = stage.input_topics();
    consumer.subscribe(&inputs.iter().map(String::as_str).collect::<Vec<_>>())?;
    tracing::info!(
        stage = stage_name,
        instance_id = %args.instance_id,
        group = %context.group,
        transactional_id,
        mode = args.delivery_mode.as_str(),
        ?inputs,
        "stage started"
    );

    let mut backoff = Duration::from_millis(100);
    let result = loop {
        if shutdown.is_cancelled() {
            let mut core = core.lock().expect("loop state lock");
            break match core.commit(&consumer) {
                Ok(CommitOutcome::Aborted(_)) => Err(Error::Other("final commit at shutdown was aborted".into())),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let message = consumer.poll(Duration::from_millis(100));
        let mut core = core.lock().expect("loop state lock");
        if let Some(error) = core.callback_error.take() {
            break Err(error);
        }
        if let Err(e) = core.resume_due(&consumer) {
            break Err(e);
        }
        if core.needs_catch_up {
            // Nothing is processed before the ledger of every partition held is read.
            let caught_up = assigned_partitions(&consumer).and_then(|partitions| {
                let read = core.dedup.catch_up(CATCH_UP_TIMEOUT)?;
                Ok((read, core.ledger.catch_up(&partitions, &runtime, CATCH_UP_TIMEOUT)?))
            });
            match caught_up {
                Ok((read, entries)) => {
                    core.needs_catch_up = false;
                    core.readiness.set(true);
                    tracing::debug!(stage = stage_name, records = read, entries, "dedup index and ledger caught up");
                }
                Err(e) => break Err(e),
            }
        } else if core.batch.inputs == 0 && core.ledger.checkpoint_due() {
            if let Err(e) = assigned_partitions(&consumer).and_then(|partitions| core.ledger.catch_up(&partitions, &runtime, CATCH_UP_TIMEOUT)) {
                break Err(e);
            }
        }
        let input = match message {
            None => None,
            Some(Ok(message)) => Some(Input::from_message(&message)),
            Some(Err(e)) => {
                tracing::warn!(stage = stage_name, error = %e, "consumer error");
                None
            }
        };
        let mut rewind = None;
        let mut input = input;
        if let Some(waiting) = input.as_ref() {
            let tp = (waiting.topic.clone(), waiting.partition);
            let wait = if core.pauses.resume_no_later_than(&tp, waiting.offset) {
                // Fetched before the pause: read again when the partition resumes.
                Ok(true)
            } else if let Some(until) = not_before(waiting) {
                core.defer(&consumer, waiting, until, "retry not due yet").map(|_| true)
            } else {
                Ok(false)
            };
            match wait {
                Ok(true) => input = None,
                Ok(false) => {}
                Err(e) => break Err(e),
            }
        }
        if let Some(input) = input {
            let (processing, processing_since) = (Instant::now(), SystemTime::now());
            let processed = runtime.block_on(handle(&mut stage, &core.ledger, &input, args.max_record_bytes, args.max_output_bytes()));
            events::emit(events::RecordTook { stage: stage_name, took: processing.elapsed() });
            // What the stage could not do: pause or exit here; a retry aborts the batch
            // below (the record was quarantined already, see `handle`).
            let processed = match processed {
                Err(error) if error.failure.action() == Action::Pause => {
                    let until = error.resume_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                    if let Err(e) = core.pause_all(&consumer, Some(&input), until, &error.failure.reason) {
                        break Err(e);
                    }
                    continue;
                }
                Err(error) if error.failure.action() == Action::Exit => break Err(Error::Other(error.to_string())),
                other => other,
            };
            if let Some(until) = stage.backpressure_until() {
                if let Err(e) = core.pause_all(&consumer, None, until, "backpressure") {
                    break Err(e);
                }
            }
            core.batch.note_input(&input);
            let applied = processed.map_err(|e| e.to_string()).and_then(|handled| match handled {
                Handled::Answered { key, how } => {
                    events::emit(events::InputAnswered { stage: stage_name, instance_id: args.instance_id.clone(), key, how });
                    Ok(0)
                }
                Handled::Effects(ledger_key, effects) => {
                    // The input's ledger entry goes with its effects: encoded first, so a
                    // registry that cannot answer retries the batch before anything is held.
                    let entry = ledger::entry(stage_name, &input, ledger_key, &effects);
                    let record = runtime.block_on(ledger::record(&context.codec, &ledger_topic, &entry)).map_err(|e| e.to_string())?;
                    let duplicates = core.apply(&input, effects, processing_since);
                    core.batch.hold(record);
                    core.ledger.hold(entry);
                    Ok(duplicates)
                }
            });
            match applied {
                Ok(duplicates) => {
                    events::emit(events::RecordProcessed { stage: stage_name, duplicates });
                    backoff = Duration::from_millis(100);
                }
                Err(reason) => {
                    tracing::warn!(stage = stage_name, reason, backoff_ms = backoff.as_millis() as u64, "record failed; retrying batch");
                    match core.abort(&reason) {
                        Ok(to) => rewind = Some(to),
                        Err(e) => break Err(e),
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let due = core.batch.inputs >= args.max_batch
            || core.batch.started.is_some_and(|s| s.elapsed() >= args.commit_interval());
        if rewind.is_none() && due {
            match core.commit(&consumer) {
                Ok(CommitOutcome::Aborted(to)) => rewind = Some(to),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        }
        // A paused partition is not sought now: it resumes at the batch start instead.
        let rewind = rewind.map(|to| core.pauses.rewind(to));
        drop(core);
        if let Some(to) = rewind {
            // Going on past an aborted batch would commit offsets of lost effects.
            let failed = to.into_iter().find_map(|((topic, partition), offset)| {
                consumer
                    .seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(10))
                    .err()
                    .map(|e| Error::Other(format!("rewind of {topic}/{partition} to {offset} failed: {e}")))
            });
            if let Some(error) = failed {
                break Err(error);
            }
        }
    };
    if result.is_err() {
        // Nothing of an unfinished batch may be committed by the revocation on the way out.
        core.lock().expect("loop state lock").batch = Batch::default();
    }
    consumer.unsubscribe();
    match &result {
        Ok(()) => tracing::info!(stage = stage_name, "stage stopped cleanly"),
        Err(e) => tracing::error!(stage = stage_name, error = %e, "stage stopped"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_is_decided_by_code_even_when_flagged_abortable() {
        for code in FENCED_CODES {
            let error = KafkaError::MessageProduction(code);
            assert!(matches!(classify(&error), TxnFailure::Fenced(_)), "{code:?}");
            assert_eq!(classify(&error).action(), Action::Exit);
            assert!(matches!(classify(&error).into_error(), Error::Fenced(_)));
        }
        let other = KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut);
        assert!(matches!(classify(&other), TxnFailure::Abortable(_)));
        assert_eq!(classify(&other).action(), Action::RetryAfter);
        assert_eq!(TxnFailure::Stuck("x".into()).action(), Action::Exit);
    }

    #[test]
    fn pauses_resume_at_the_earliest_offset_and_latest_time() {
        let t0 = Instant::now();
        let tp = |p: i32| ("t".to_owned(), p);
        let mut pauses = Pauses::default();
        pauses.add(tp(0), Some(7), t0 + Duration::from_secs(1));
        pauses.add(tp(0), Some(9), t0 + Duration::from_secs(3));
        pauses.add(tp(1), None, t0 + Duration::from_secs(1));
        assert_eq!(pauses.partitions[&tp(0)], (Some(7), t0 + Duration::from_secs(3)));
        // A record fetched before the pause, dropped: the partition resumes there.
        assert!(pauses.resume_no_later_than(&tp(1), 4));
        assert!(!pauses.resume_no_later_than(&tp(2), 4));
        // An abort rewinds running partitions now, paused ones at resume.
        let rewind = pauses.rewind(HashMap::from([(tp(0), 5), (tp(2), 1)]));
        assert_eq!(rewind, vec![(tp(2), 1)]);
        assert_eq!(pauses.partitions[&tp(0)].0, Some(5));
        let mut due = pauses.take_due(t0 + Duration::from_secs(2));
        due.sort();
        assert_eq!(due, vec![(tp(1), Some(4))]);
        assert_eq!(pauses.take_due(t0 + Duration::from_secs(3)), vec![(tp(0), Some(5))]);
        assert!(pauses.partitions.is_empty());
    }

    #[test]
    fn an_aborted_batch_rewinds_to_its_first_offset_per_partition() {
        let input = |partition, offset| Input {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            payload: None,
            headers: Vec::new(),
            timestamp_ms: 0,
            timestamp_type: "CreateTime",
        };
        let mut batch = Batch::default();
        for (partition, offset) in [(0, 5), (1, 9), (0, 6), (0, 7)] {
            batch.note_input(&input(partition, offset));
        }
        assert_eq!(batch.inputs, 4);
        assert_eq!(batch.rewind_to[&("t".into(), 0)], 5);
        assert_eq!(batch.rewind_to[&("t".into(), 1)], 9);
        assert_eq!(batch.next_offsets[&("t".into(), 0)], 8);
        assert_eq!(batch.next_offsets[&("t".into(), 1)], 10);
    }
}
