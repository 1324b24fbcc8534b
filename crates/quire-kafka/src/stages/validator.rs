//! The validator: re-checks each result against the output rules; valid results
//! complete their block, invalid ones are dead-lettered with the broken rule named.
//! Its dedup key is the bare block id whatever the generation: a block reaches the
//! completed topic once, however often it was replayed, and a later generation of a
//! completed block is neither failed nor canceled here.

use super::{block_headers, decode_failure, BlockRef};
use crate::pipeline::{Effect, Stage, StageContext, StageError};
use crate::record::Input;
use quire_core::records::{now_ms, InferenceResult, ValidatedResult};
use quire_core::{rules, BlockState};

pub struct Validator {
    context: StageContext,
}

impl Validator {
    pub fn new(context: StageContext) -> Self {
        Validator { context }
    }
}

impl Stage for Validator {
    fn context(&self) -> &StageContext {
        &self.context
    }

    async fn process(&mut self, input: &Input) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
        let result: InferenceResult = match ctx.codec.decode(input.payload.as_deref()).await {
            Ok(result) => result,
            Err(e) => return Ok(vec![ctx.unreadable(input, &decode_failure(e)?)]),
        };
        let block = &result.block;
        if let Err(failure) = quire_core::screen::block(block) {
            return Ok(vec![ctx.unreadable(input, &failure)]);
        }
        if ctx.canceled.contains(&block.dataset_id) {
            let canceled = ctx.block_canceled(input, block, block.state, block.block_id.clone()).await?;
            return Ok(vec![canceled.unless_done(&block.block_id)]);
        }
        let block_ref = BlockRef::from(block);
        if let Err(failure) = rules::validate(&result) {
            return Ok(vec![ctx.block_failed(input, block, block.state, &failure).await?.unless_done(&block.block_id)]);
        }
        let mut writes = match ctx.transitions(&block_ref, &[block.state, BlockState::Completed], None).await? {
            Ok(writes) => writes,
            Err(failure) => return Ok(vec![ctx.block_failed(input, block, block.state, &failure).await?.unless_done(&block.block_id)]),
        };
        let validated = ValidatedResult {
            block_id: block.block_id.clone(),
            dataset_id: block.dataset_id.clone(),
            document_id: block.document_id.clone(),
            sequence: block.sequence,
            idempotency_key: block.idempotency_key.clone(),
            text_checksum: block.checksum.clone(),
            engine: result.engine.clone(),
            label: result.label.clone(),
            confidence: result.confidence,
            output_text: result.output_text.clone(),
            request_id: block.request_id.clone(),
            completed_at_ms: now_ms(),
        };
        let headers = block_headers(&block.idempotency_key, &block.request_id, &block.dataset_id);
        writes.push(ctx.encode(&ctx.names.completed(), &block.block_id, &validated, headers).await?);
        let age_ms = validated.completed_at_ms - block.submitted_at_ms;
        Ok(vec![Effect::new(block.block_id.clone(), writes).completing_block_aged(age_ms)])
    }
}
