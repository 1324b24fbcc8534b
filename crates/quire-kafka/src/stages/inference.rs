//! Inference: runs each queued block through the engine, with a timeout. A block the
//! engine cannot process is dead-lettered with the engine's reason.

use super::{block_headers, decode_failure, BlockRef};
use crate::processor::{Effect, Input, Stage, StageContext, StageError};
use quire_core::engine::Engine;
use quire_core::records::{now_ms, output_checksum, Block, InferenceResult};
use quire_core::{BlockState, Failure};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Inference {
    context: StageContext,
    engine: Arc<dyn Engine>,
    timeout: Duration,
}

impl Inference {
    pub fn new(context: StageContext, engine: Arc<dyn Engine>, timeout: Duration) -> Self {
        Inference { context, engine, timeout }
    }

    async fn infer(&self, block: &Block) -> Result<quire_core::engine::Inference, Failure> {
        let engine = self.engine.clone();
        let owned = block.clone();
        let job = tokio::task::spawn_blocking(move || engine.infer(&owned));
        match tokio::time::timeout(self.timeout, job).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(Failure::transient("engine-panicked", format!("engine {} panicked: {panic}", self.engine.name()))),
            Err(_) => Err(Failure::transient(
                "engine-timeout",
                format!("engine {} took longer than {:?} on block {}", self.engine.name(), self.timeout, block.block_id),
            )),
        }
    }
}

impl Stage for Inference {
    fn context(&self) -> &StageContext {
        &self.context
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.context.names.queued()]
    }

    fn output_topics(&self) -> Vec<String> {
        let queued = self.context.names.queued();
        vec![self.context.names.results(), crate::config::TopicNames::dead_letter(&queued)]
    }

    async fn process(&mut self, input: &Input) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
        let block: Block = match ctx.codec.decode(input.payload.as_deref()).await {
            Ok(block) => block,
            Err(e) => return Ok(vec![ctx.unreadable(input, &decode_failure(e)?)]),
        };
        let block_ref = BlockRef::from(&block);
        let mut records = match ctx.transitions(&block_ref, &[block.state, BlockState::Processing], None).await? {
            Ok(records) => records,
            Err(failure) => return Ok(vec![ctx.block_failed(input, &block_ref, block.state, &failure).await?]),
        };
        let started = Instant::now();
        let inference = match self.infer(&block).await {
            Ok(inference) => inference,
            Err(failure) => {
                let mut effect = ctx.block_failed(input, &block_ref, BlockState::Processing, &failure).await?;
                records.append(&mut effect.records);
                effect.records = records;
                return Ok(vec![effect]);
            }
        };
        match ctx.transitions(&block_ref, &[BlockState::Processing, BlockState::Validating], None).await? {
            Ok(mut more) => records.append(&mut more),
            Err(failure) => return Ok(vec![ctx.block_failed(input, &block_ref, BlockState::Processing, &failure).await?]),
        }
        let now = now_ms();
        let result = InferenceResult {
            output_checksum: output_checksum(&block.checksum, &inference.label, inference.confidence),
            engine: self.engine.name().to_owned(),
            label: inference.label,
            confidence: inference.confidence,
            latency_ms: started.elapsed().as_millis() as i64,
            inferred_at_ms: now,
            block: Block { state: BlockState::Validating, updated_at_ms: now, ..block.clone() },
        };
        let headers = block_headers(&block.idempotency_key, &block.request_id, &block.dataset_id);
        records.push(ctx.encode(&ctx.names.results(), &block.block_id, &result, headers).await?);
        Ok(vec![Effect { dedup_key: block.block_id.clone(), records }])
    }
}
