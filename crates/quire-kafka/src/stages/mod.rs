//! The four stages. Each decodes its input, moves blocks through the state machine in
//! `quire-core`, and returns effects; bad records become dead-letter effects with the
//! reason named, so they never stall a partition.

pub mod claimer;
pub mod inference;
pub mod quarantine;
pub mod validator;

use crate::headers::{self, Headers};
use crate::processor::{Effect, Input, OutputRecord, StageContext, StageError};
use crate::telemetry::events;
use crate::Error;
use quire_core::records::{now_ms, StateChange};
use quire_core::{state, BlockState, Failure};
use serde::Serialize;

/// Turns a codec error into what the stage does about it: bad bytes are a data failure
/// of the record, an unreachable registry is retried.
fn decode_failure(error: Error) -> Result<Failure, StageError> {
    match error {
        Error::Registry { .. } => Err(StageError::Retry(error.to_string())),
        other => Ok(Failure::data("malformed-record", other.to_string())),
    }
}

/// An unreachable registry is retried; a record that cannot be encoded never will be.
fn encode_failure(error: Error) -> StageError {
    match error {
        Error::Registry { .. } => StageError::Retry(error.to_string()),
        other => StageError::Poison(Failure::data("unencodable-output", other.to_string())),
    }
}

/// The headers every block output carries.
fn block_headers(idempotency_key: &str, request_id: &str, dataset_id: &str) -> Headers {
    vec![
        (headers::IDEMPOTENCY_KEY.into(), idempotency_key.as_bytes().to_vec()),
        (headers::REQUEST_ID.into(), request_id.as_bytes().to_vec()),
        (headers::DATASET_ID.into(), dataset_id.as_bytes().to_vec()),
    ]
}

/// Identity of the block whose transitions a stage records.
struct BlockRef<'a> {
    block_id: &'a str,
    dataset_id: &'a str,
    request_id: &'a str,
    idempotency_key: &'a str,
}

impl<'a> From<&'a quire_core::records::Block> for BlockRef<'a> {
    fn from(block: &'a quire_core::records::Block) -> Self {
        BlockRef {
            block_id: &block.block_id,
            dataset_id: &block.dataset_id,
            request_id: &block.request_id,
            idempotency_key: &block.idempotency_key,
        }
    }
}

impl StageContext {
    async fn encode<T: Serialize>(&self, topic: &str, key: &str, value: &T, headers: Headers) -> Result<OutputRecord, StageError> {
        let payload = self.codec.encode(topic, value).await.map_err(encode_failure)?;
        Ok(OutputRecord { topic: topic.to_owned(), key: key.to_owned(), payload, headers })
    }

    /// Audit records for `path` (each consecutive pair a transition), checked by the
    /// state machine. An illegal step is logged and returned as a data failure.
    async fn transitions(
        &self,
        block: &BlockRef<'_>,
        path: &[BlockState],
        reason: Option<&str>,
    ) -> Result<Result<Vec<OutputRecord>, Failure>, StageError> {
        let mut records = Vec::new();
        for pair in path.windows(2) {
            if let Err(illegal) = state::transition(block.block_id, pair[0], pair[1]) {
                events::illegal_transition(self.stage, &illegal);
                return Ok(Err(Failure::data("illegal-transition", illegal.to_string())));
            }
            events::block_transition(self.stage, &self.instance_id, block.block_id, block.dataset_id, block.request_id, pair[1]);
            let change = StateChange {
                block_id: block.block_id.to_owned(),
                dataset_id: block.dataset_id.to_owned(),
                from_state: pair[0],
                to_state: pair[1],
                stage: self.stage.to_owned(),
                instance_id: self.instance_id.clone(),
                reason: reason.map(str::to_owned),
                request_id: block.request_id.to_owned(),
                at_ms: now_ms(),
            };
            let headers = block_headers(block.idempotency_key, block.request_id, block.dataset_id);
            records.push(self.encode(&self.names.events(), block.block_id, &change, headers).await?);
        }
        Ok(Ok(records))
    }

    /// The effect of a block that failed in this stage: its ERROR transition (when the
    /// machine allows it) and the dead-letter record, keyed by the block id.
    async fn block_failed(
        &self,
        input: &Input,
        block: &BlockRef<'_>,
        from: BlockState,
        failure: &Failure,
    ) -> Result<Effect, StageError> {
        // A block already in a terminal state cannot fail again; it is only dead-lettered.
        let mut records = if from.can_become(BlockState::Error) {
            self.transitions(block, &[from, BlockState::Error], Some(&failure.reason)).await?.unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut dead = self.dead_letter(input, failure, block.block_id);
        dead.headers.push((headers::DATASET_ID.into(), block.dataset_id.as_bytes().to_vec()));
        records.push(dead);
        Ok(Effect { dedup_key: block.block_id.to_owned(), records })
    }

}
