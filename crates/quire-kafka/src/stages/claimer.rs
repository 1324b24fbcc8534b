//! The claimer: splits each submitted document into blocks with deterministic ids and
//! queues them. A resubmission (same idempotency key) yields the same block ids, which
//! the processing loop's dedup drops.

use super::{block_headers, decode_failure, BlockRef};
use crate::pipeline::{Effect, Stage, StageContext, StageError};
use crate::record::Input;
use quire_core::records::{now_ms, Block, DatasetSubmission};
use quire_core::split::split_blocks;
use quire_core::{ids, BlockState, Failure};

pub struct Claimer {
    context: StageContext,
    max_block_chars: usize,
}

impl Claimer {
    pub fn new(context: StageContext, max_block_chars: usize) -> Self {
        Claimer { context, max_block_chars }
    }
}

/// The blocks of one submitted document, in order, as the claimer emits them (state
/// QUEUED). `quire verify` calls this too, to know which blocks to expect.
pub fn blocks_of(submission: &DatasetSubmission, max_block_chars: usize, now: i64) -> Vec<Block> {
    let texts = split_blocks(&submission.text, max_block_chars);
    let count = texts.len() as i32;
    texts
        .into_iter()
        .enumerate()
        .map(|(sequence, text)| {
            let key = ids::block_idempotency_key(&submission.idempotency_key, &submission.document_id, sequence as u32);
            Block {
                block_id: ids::block_id(&key),
                dataset_id: submission.dataset_id.clone(),
                document_id: submission.document_id.clone(),
                sequence: sequence as i32,
                block_count: count,
                checksum: ids::checksum(&text),
                text,
                source_language: submission.source_language.clone(),
                target_language: submission.target_language.clone(),
                task: submission.task.clone(),
                attempt: 0,
                generation: 0,
                idempotency_key: key,
                state: BlockState::Queued,
                request_id: submission.request_id.clone(),
                submitted_at_ms: submission.submitted_at_ms,
                updated_at_ms: now,
            }
        })
        .collect()
}

impl Stage for Claimer {
    fn context(&self) -> &StageContext {
        &self.context
    }

    async fn process(&mut self, input: &Input) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
        let submission: DatasetSubmission = match ctx.codec.decode(input.payload.as_deref()).await {
            Ok(submission) => submission,
            Err(e) => return Ok(vec![ctx.unreadable(input, &decode_failure(e)?)]),
        };
        if let Err(failure) = quire_core::screen::submission(&submission) {
            return Ok(vec![ctx.unreadable(input, &failure)]);
        }
        let blocks = blocks_of(&submission, self.max_block_chars, now_ms());
        if blocks.is_empty() {
            let failure = Failure::data(
                "empty-document",
                format!("document {} of dataset {} has no text", submission.document_id, submission.dataset_id),
            );
            return Ok(vec![ctx.unreadable(input, &failure)]);
        }
        let mut effects = Vec::with_capacity(blocks.len());
        if ctx.canceled.contains(&submission.dataset_id) {
            for block in &blocks {
                effects.push(ctx.block_canceled(input, block, BlockState::Pending, block.block_id.clone()).await?);
            }
            return Ok(effects);
        }
        for block in blocks {
            let block_ref = BlockRef::from(&block);
            let path = [BlockState::Pending, BlockState::Claimed, BlockState::Queued];
            let mut writes = match ctx.transitions(&block_ref, &path, None).await? {
                Ok(writes) => writes,
                Err(failure) => return Ok(vec![ctx.unreadable(input, &failure)]),
            };
            let headers = block_headers(&block.idempotency_key, &block.request_id, &block.dataset_id);
            writes.push(ctx.encode(&ctx.names.queued(), &block.block_id, &block, headers).await?);
            effects.push(Effect::new(block.block_id.clone(), writes));
        }
        Ok(effects)
    }
}
