//! The four stages. Each decodes its input, moves blocks through the state machine in
//! `quire-core`, and returns effects; bad records become dead-letter effects with the
//! reason named, so they never stall a partition.
//!
//! Dedup keys say what may happen once: a block's output at a stage once per generation
//! ([`block_key`]; the validator's once ever), each retry of a generation once
//! ([`retry_key`]), its failure once per generation ([`failure_key`]). A replay or
//! re-drive starts a new generation, so the block may go through the stages again, but
//! never into the output twice.

pub mod claimer;
pub mod inference;
pub mod quarantine;
pub mod validator;

use crate::record::headers::{self, block_headers, Headers};
use crate::pipeline::letters::{self, BlockRef};
use crate::pipeline::{Effect, Reading, StageContext, StageError, Writes};
use crate::record::{Input, OutputRecord};
use crate::telemetry::{events, EffectEvent};
use crate::Error;
use quire_core::records::{now_ms, Block};
use quire_core::retry::RetryDecision;
use quire_core::{BlockState, Failure};
use quire_core::ledger::LedgerKey;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Turns a codec error into what the stage does about it: bad bytes are a data failure
/// of the record, an unreachable registry is retried.
fn decode_failure(error: Error) -> Result<Failure, StageError> {
    match error {
        Error::Registry { .. } => Err(Failure::transient("registry-unreachable", error.to_string()).into()),
        other => Ok(Failure::data("malformed-record", quire_core::screen::bounded_reason(other.to_string()))),
    }
}

/// An unreachable registry is retried; a record that cannot be encoded never will be.
fn encode_failure(error: Error) -> StageError {
    match error {
        Error::Registry { .. } => Failure::transient("registry-unreachable", error.to_string()).into(),
        other => Failure::data("unencodable-output", other.to_string()).into(),
    }
}

/// The dedup key of a block's output at a stage, for its generation.
pub fn block_key(block: &Block) -> String {
    match block.generation {
        0 => block.block_id.clone(),
        g => format!("{}#g{g}", block.block_id),
    }
}

/// The dedup key of retry number `retry` of a block's generation.
pub fn retry_key(block: &Block, retry: u32) -> String {
    format!("{}#g{}@retry{retry}", block.block_id, block.generation)
}

/// The dedup key of a block generation's terminal failure.
pub fn failure_key(block: &Block) -> String {
    format!("{}#g{}@failed", block.block_id, block.generation)
}

impl StageContext {
    /// `input` decoded as a `T` and passed by `screen`, known to the ledger as `key(T)`;
    /// or why it cannot be read.
    async fn read<T: DeserializeOwned>(
        &self,
        input: &Input,
        screen: impl FnOnce(&T) -> Result<(), Failure>,
        key: impl FnOnce(&T) -> LedgerKey,
    ) -> Result<Reading<T>, StageError> {
        let work: T = match self.codec.decode(input.payload.as_deref()).await {
            Ok(work) => work,
            Err(e) => return Ok(Reading::Unreadable(decode_failure(e)?)),
        };
        Ok(match screen(&work) {
            Err(failure) => Reading::Unreadable(failure),
            Ok(()) => Reading::Read { key: key(&work), work },
        })
    }

    async fn encode<T: Serialize>(&self, topic: &str, key: &str, value: &T, headers: Headers) -> Result<OutputRecord, StageError> {
        let payload = self.codec.encode(topic, value).await.map_err(encode_failure)?;
        Ok(OutputRecord { topic: topic.to_owned(), key: key.to_owned(), payload, headers, partition: None })
    }

    /// Audit records for `path` (each consecutive pair a transition), checked by the
    /// state machine. An illegal step is logged and returned as a data failure.
    async fn transitions(
        &self,
        block: &BlockRef<'_>,
        path: &[BlockState],
        reason: Option<&str>,
    ) -> Result<Result<Writes, Failure>, StageError> {
        let mut writes = Writes::default();
        for pair in path.windows(2) {
            let audit = match letters::audit(block, self.stage.as_str(), &self.instance_id, pair[0], pair[1], reason) {
                Ok(audit) => audit,
                Err(illegal) => {
                    events::emit(events::IllegalTransitionRejected { stage: self.stage.as_str(), transition: illegal.clone() });
                    return Ok(Err(Failure::data("illegal-transition", illegal.to_string())));
                }
            };
            writes.push(self.encode(&self.names.events(), block.block_id, &audit.change, audit.headers).await?);
            writes.events.push(audit.event);
        }
        Ok(Ok(writes))
    }

    /// The effect of meeting a block of a canceled dataset: its `from → CANCELED` event
    /// and nothing downstream, under `dedup_key` (the key its output would have had).
    async fn block_canceled(&self, input: &Input, block: &Block, from: BlockState, dedup_key: String) -> Result<Effect, StageError> {
        let reason = format!("dataset {} canceled", block.dataset_id);
        match self.transitions(&BlockRef::from(block), &[from, BlockState::Canceled], Some(&reason)).await? {
            Ok(writes) => Ok(Effect::new(dedup_key, writes)),
            Err(illegal) => self.block_failed(input, block, from, &illegal).await,
        }
    }

    /// The effect of a block that failed in this stage for good: its ERROR transition
    /// (when the machine allows it) and the dead-letter record (Kafka key: the block id),
    /// under the generation's [`failure_key`].
    async fn block_failed(&self, input: &Input, block: &Block, from: BlockState, failure: &Failure) -> Result<Effect, StageError> {
        let block_ref = BlockRef::from(block);
        // A block already in a terminal state cannot fail again; it is only dead-lettered.
        let mut writes = if from.can_become(BlockState::Error) {
            self.transitions(&block_ref, &[from, BlockState::Error], Some(&failure.reason)).await?.unwrap_or_default()
        } else {
            Writes::default()
        };
        let dedup_key = failure_key(block);
        let dead = self
            .dead_letter(input, failure, &dedup_key)
            .of_block(&block_ref, block.attempt + 1)
            .set(headers::FIRST_FAILED_AT, letters::first_failed_at(input, now_ms()).to_be_bytes().to_vec());
        writes.push(dead.build());
        writes.events.push(self.dead_lettered(dedup_key.clone(), failure));
        Ok(Effect::new(dedup_key, writes))
    }

    /// The effect of a block that failed with `failure` while `from`: rescheduled on the
    /// retry topic of its next attempt if the schedule allows, else closed into ERROR
    /// and dead-lettered.
    async fn retry_or_fail(
        &self,
        input: &Input,
        block: &Block,
        from: BlockState,
        failure: &Failure,
    ) -> Result<Effect, StageError> {
        let schedule = &self.retries;
        match schedule.decide(failure, block.attempt.max(0) as u32) {
            RetryDecision::Quarantine => self.block_failed(input, block, from, failure).await,
            RetryDecision::Exhausted { attempts } => {
                let closed = Failure { reason: format!("gave up after {attempts} attempts: {}", failure.reason), ..failure.clone() };
                self.block_failed(input, block, from, &closed).await
            }
            RetryDecision::RetryAfter { retry, delay } => {
                let reason = format!("retry {retry}/{} in {} ms: {}", schedule.max_retries(), delay.as_millis(), failure.reason);
                let mut writes = match self.transitions(&BlockRef::from(block), &[from, BlockState::Queued], Some(&reason)).await? {
                    Ok(writes) => writes,
                    Err(illegal) => return self.block_failed(input, block, from, &illegal).await,
                };
                let retried = letters::retry(&self.origin(input), input, block, failure, retry, delay, now_ms());
                writes.push(self.encode(&retried.topic, &block.block_id, &retried.block, retried.headers).await?);
                writes.events.push(EffectEvent::RetryScheduled(events::RetryScheduled {
                    stage: self.stage.as_str(),
                    instance_id: self.instance_id.clone(),
                    block_id: block.block_id.clone(),
                    failure: failure.clone(),
                    retry,
                    delay,
                }));
                Ok(Effect::new(retry_key(block, retry), writes))
            }
        }
    }
}
