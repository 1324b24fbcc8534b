//! Inference: runs each queued block through its task's engine chain.
//!
//! What a failed block calls for follows its class (see `quire_core::failure`): bad data
//! is dead-lettered at once; transient, overload and model failures are rescheduled on
//! the retry topic of the next attempt (overload also slows the stage down for a while)
//! until the schedule is spent, then the block is closed into ERROR; when every engine's
//! breaker is open the block is left where it is and the stage pauses until the first
//! breaker half-opens. Retry topics are inputs too: the loop holds each of their
//! records back until it is due.

use super::{block_headers, block_key, decode_failure, BlockRef};
use crate::pipeline::{Effect, Stage, StageContext, StageError};
use crate::record::Input;
use quire_core::records::{now_ms, output_checksum, Block, EngineOutput, InferenceResult};
use quire_core::{Action, BlockState};
use quire_engines::Engines;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the stage pauses after an overloaded engine, at first and at most.
const BACKPRESSURE_FIRST: Duration = Duration::from_millis(500);
const BACKPRESSURE_MAX: Duration = Duration::from_secs(30);

pub struct Inference {
    context: StageContext,
    engines: Arc<Engines>,
    /// Current backpressure pause (doubles while overload lasts) and when it ends.
    backpressure: Option<(Duration, Instant)>,
    pending_backpressure: Option<Instant>,
}

impl Inference {
    pub fn new(context: StageContext, engines: Arc<Engines>) -> Self {
        Inference { context, engines, backpressure: None, pending_backpressure: None }
    }

    /// Notes an overloaded dependency: the next pause is twice the last, capped.
    fn overloaded(&mut self) {
        let pause = match self.backpressure {
            Some((last, _)) => (last * 2).min(BACKPRESSURE_MAX),
            None => BACKPRESSURE_FIRST,
        };
        let until = Instant::now() + pause;
        self.backpressure = Some((pause, until));
        self.pending_backpressure = Some(until);
    }
}

impl Stage for Inference {
    fn context(&self) -> &StageContext {
        &self.context
    }

    fn input_topics(&self) -> Vec<String> {
        let queued = self.context.names.queued();
        let pattern = quire_core::retry::retry_topics_pattern(&queued);
        vec![queued, pattern]
    }

    fn backpressure_until(&mut self) -> Option<Instant> {
        self.pending_backpressure.take()
    }

    async fn process(&mut self, input: &Input) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
        let block: Block = match ctx.codec.decode(input.payload.as_deref()).await {
            Ok(block) => block,
            Err(e) => return Ok(vec![ctx.unreadable(input, &decode_failure(e)?)]),
        };
        if let Err(failure) = quire_core::screen::block(&block) {
            return Ok(vec![ctx.unreadable(input, &failure)]);
        }
        if ctx.canceled.contains(&block.dataset_id) {
            return Ok(vec![ctx.block_canceled(input, &block, block.state, block_key(&block)).await?]);
        }
        let block_ref = BlockRef::from(&block);
        let mut writes = match ctx.transitions(&block_ref, &[block.state, BlockState::Processing], None).await? {
            Ok(writes) => writes,
            Err(failure) => return Ok(vec![ctx.block_failed(input, &block, block.state, &failure).await?]),
        };
        let started = Instant::now();
        let output = match self.engines.run(&block).await {
            Ok(output) => {
                if self.backpressure.is_some_and(|(_, until)| Instant::now() >= until) {
                    self.backpressure = None;
                }
                output
            }
            Err(chain) if chain.failure.action() == Action::Pause => {
                // Every engine refused: nothing was written, the record is read again
                // once the first breaker half-opens (soon, if one was reset meanwhile).
                let until = chain.resume_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                return Err(StageError::pause_until(chain.failure, until));
            }
            Err(chain) => {
                if chain.failure.action() == Action::SlowDownAndRetryAfter {
                    self.overloaded();
                }
                let ctx = &self.context;
                let effect = ctx.retry_or_fail(input, &block, BlockState::Processing, &chain.failure).await?;
                // QUEUED → PROCESSING first, then what the failure did. A stale copy of a
                // block this generation already answered (a retry left by an aborted
                // batch whose replay succeeded) writes nothing.
                return Ok(vec![effect.after(writes).unless_done(&block_key(&block))]);
            }
        };
        let ctx = &self.context;
        match ctx.transitions(&block_ref, &[BlockState::Processing, BlockState::Validating], None).await? {
            Ok(more) => writes.append(more),
            Err(failure) => return Ok(vec![ctx.block_failed(input, &block, BlockState::Processing, &failure).await?]),
        }
        let now = now_ms();
        let primary = output.primary.inference;
        let result = InferenceResult {
            output_checksum: output_checksum(&block.checksum, &primary.label, primary.confidence, primary.text.as_deref()),
            engine: output.primary.engine,
            label: primary.label,
            confidence: primary.confidence,
            output_text: primary.text,
            latency_ms: started.elapsed().as_millis() as i64,
            inferred_at_ms: now,
            alternatives: output
                .alternatives
                .into_iter()
                .map(|p| EngineOutput {
                    engine: p.engine,
                    label: p.inference.label,
                    confidence: p.inference.confidence,
                    output_text: p.inference.text,
                })
                .collect(),
            block: Block { state: BlockState::Validating, updated_at_ms: now, ..block.clone() },
        };
        let headers = block_headers(&block.idempotency_key, &block.request_id, &block.dataset_id);
        writes.push(ctx.encode(&ctx.names.results(), &block.block_id, &result, headers).await?);
        Ok(vec![Effect::new(block_key(&block), writes)])
    }
}
