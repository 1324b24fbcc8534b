//! Inference: runs each queued block through its task's engine chain.
//!
//! What a failed block calls for follows its class (see `quire_core::failure`): bad data
//! is dead-lettered at once; transient, overload and model failures are rescheduled on
//! the retry topic of the next attempt (overload also slows the stage down for a while)
//! until the schedule is spent, then the block is closed into ERROR; when every engine's
//! breaker is open the block is left where it is and the stage pauses until the first
//! breaker half-opens. Retry topics are inputs too: the loop holds each of their
//! records back until it is due.

use super::{block_headers, block_key, BlockRef};
use crate::pipeline::{Effect, Reading, Stage, StageContext, StageError};
use crate::record::Input;
use quire_core::records::{now_ms, output_checksum, Block, EngineOutput, InferenceResult};
use quire_core::ledger::LedgerKey;
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

    type Work = Block;

    async fn read(&mut self, input: &Input) -> Result<Reading<Block>, StageError> {
        self.context.read(input, quire_core::screen::block, LedgerKey::of_queued).await
    }

    async fn process(&mut self, input: &Input, block: Block) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::cancel::CanceledDatasets;
    use crate::record::headers::{self, read_dead_letter, text_header};
    use crate::stages::{failure_key, retry_key};
    use crate::telemetry::{events, EffectEvent};
    use crate::testing::{self, block_on, decoded, encoded, model_server, queued_block, registry, transitions, written};
    use quire_core::{ErrorClass, StageName};
    use quire_engines::EnginesConfig;
    use BlockState::*;

    const QUEUED: &str = "quire.blocks.queued";
    const RESULTS: &str = "quire.inference.results";

    /// The engines: one on the test model server, whose breaker opens after `failures`.
    fn engines(failures: u32) -> Arc<Engines> {
        let yaml = format!(
            "engines:\n  - name: model\n    kind: openai\n    url: {}/v1\n    model: test\n    timeout_ms: 5000\n    breaker: {{failure_threshold: {failures}, open_ms: 60000, max_open_ms: 60000}}\ntasks:\n  language-id:\n    engines: [model]\n",
            model_server()
        );
        Arc::new(Engines::build(&EnginesConfig::parse(&yaml, "test engines").unwrap()).unwrap())
    }

    fn inference() -> Inference {
        Inference::new(registry().context(StageName::Inference), engines(100))
    }

    /// What `stage` makes of `block` read from `topic`.
    fn infer(stage: &mut Inference, topic: &str, block: &Block) -> Result<Vec<Effect>, StageError> {
        block_on(testing::processed(stage, &testing::input(topic, 3, Some(&block.block_id), Some(encoded(topic, block)), Vec::new())))
    }

    fn ids(block: &Block, path: &[BlockState]) -> Vec<(String, BlockState, BlockState)> {
        path.windows(2).map(|p| (block.block_id.clone(), p[0], p[1])).collect()
    }

    #[test]
    fn a_block_the_model_answers_goes_on_to_validation_with_its_result() {
        let block = queued_block("say fr");
        let effects = infer(&mut inference(), QUEUED, &block).unwrap();
        assert_eq!(effects.len(), 1);
        assert_eq!(effects[0].dedup_key, block.block_id, "generation 0 is keyed by the bare id");
        assert_eq!(transitions(&effects), ids(&block, &[Queued, Processing, Validating]));
        let results = written(&effects, RESULTS);
        assert_eq!(results.len(), 1);
        let result: InferenceResult = decoded(results[0]);
        assert_eq!((result.engine.as_str(), result.label.as_str(), result.block.state), ("model", "fr", Validating));
        assert_eq!(result.block.block_id, block.block_id);
        quire_core::rules::validate(&result).expect("the validator's rules accept what inference wrote");

        let replayed = Block { generation: 2, ..block.clone() };
        let effects = infer(&mut inference(), QUEUED, &replayed).unwrap();
        assert_eq!(effects[0].dedup_key, format!("{}#g2", block.block_id), "a replay is keyed by its generation");
    }

    #[test]
    fn a_failed_call_is_rescheduled_on_the_retry_topic_of_the_next_attempt() {
        let block = queued_block("status 500");
        let effects = infer(&mut inference(), QUEUED, &block).unwrap();
        assert_eq!(effects.len(), 1);
        let effect = &effects[0];
        assert_eq!(effect.dedup_key, retry_key(&block, 1));
        assert_eq!(effect.unless_done.as_deref(), Some(block.block_id.as_str()), "not if this generation was answered meanwhile");
        assert_eq!(transitions(&effects), ids(&block, &[Queued, Processing, Queued]));
        let retried = written(&effects, "quire.blocks.queued-retry-5000");
        assert_eq!((retried.len(), effect.writes.records.len()), (1, 3));
        let again: Block = decoded(retried[0]);
        assert_eq!((again.attempt, again.state, again.block_id.as_str()), (1, Queued, block.block_id.as_str()));
        assert_eq!(headers::int_header(&retried[0].headers, headers::RETRY_ATTEMPTS), Some(2), "Spring counts the first delivery");
        let (origin, failure) = read_dead_letter(&retried[0].headers).unwrap();
        assert_eq!((origin.topic.as_str(), failure.class), (QUEUED, ErrorClass::Transient));
        assert!(failure.reason.contains("500"), "{}", failure.reason);
        assert!(effect.writes.events.iter().any(|e| matches!(e, EffectEvent::RetryScheduled(events::RetryScheduled { retry: 1, .. }))));
    }

    #[test]
    fn the_last_retry_closes_the_block_into_error_and_dead_letters_it() {
        let block = Block { attempt: 3, ..queued_block("status 500") };
        let effects = infer(&mut inference(), "quire.blocks.queued-retry-300000", &block).unwrap();
        let effect = &effects[0];
        assert_eq!(effect.dedup_key, failure_key(&block));
        assert_eq!(transitions(&effects), ids(&block, &[Queued, Processing, Error]));
        let letters = written(&effects, "quire.blocks.queued-dlt");
        assert_eq!(letters.len(), 1, "a retry topic's records go to its main topic's dead letters");
        assert_eq!(letters[0].key, block.block_id);
        let (_, failure) = read_dead_letter(&letters[0].headers).unwrap();
        assert!(failure.reason.contains("gave up after 4 attempts"), "{}", failure.reason);
        assert_eq!(headers::int_header(&letters[0].headers, headers::RETRY_ATTEMPTS), Some(4));
        assert!(effect.writes.events.iter().any(|e| matches!(e, EffectEvent::DeadLettered(_))));
    }

    #[test]
    fn a_block_the_model_refuses_as_bad_data_is_dead_lettered_at_once() {
        let block = queued_block("status 413");
        let effects = infer(&mut inference(), QUEUED, &block).unwrap();
        assert_eq!(transitions(&effects), ids(&block, &[Queued, Processing, Error]));
        assert!(written(&effects, "quire.blocks.queued-retry-5000").is_empty(), "bad data is not retried");
        let letters = written(&effects, "quire.blocks.queued-dlt");
        assert_eq!(text_header(&letters[0].headers, headers::DLT_EXCEPTION_CAUSE_FQCN).as_deref(), Some("quire.block-too-large"));
    }

    #[test]
    fn an_overloaded_engine_is_retried_and_slows_the_stage_down() {
        let mut stage = inference();
        assert_eq!(stage.backpressure_until(), None);
        let effects = infer(&mut stage, QUEUED, &queued_block("status 429")).unwrap();
        assert_eq!(written(&effects, "quire.blocks.queued-retry-5000").len(), 1);
        assert!(stage.backpressure_until().is_some_and(|t| t > Instant::now()), "the stage pauses a while");
        assert_eq!(stage.backpressure_until(), None, "once per overload");
    }

    #[test]
    fn with_every_breaker_open_the_block_is_left_unread_and_the_stage_pauses() {
        let mut stage = Inference::new(registry().context(StageName::Inference), engines(1));
        infer(&mut stage, QUEUED, &queued_block("status 500")).unwrap();
        let paused = infer(&mut stage, QUEUED, &queued_block("say en")).unwrap_err();
        assert_eq!(paused.failure.action(), Action::Pause, "{paused}");
        assert!(paused.resume_at.is_some_and(|t| t > Instant::now() + Duration::from_secs(30)), "until the breaker half-opens");
    }

    #[test]
    fn a_block_of_a_canceled_dataset_is_canceled_without_an_engine_call() {
        let context = StageContext { canceled: CanceledDatasets::of(&["ds-1"]), ..registry().context(StageName::Inference) };
        let block = queued_block("status 500");
        let effects = infer(&mut Inference::new(context, engines(100)), QUEUED, &block).unwrap();
        assert_eq!(transitions(&effects), ids(&block, &[Queued, Canceled]));
        assert_eq!(effects[0].writes.records.len(), 1, "only the audit record: no retry, so no call");
        assert_eq!(effects[0].dedup_key, block.block_id);
    }

    #[test]
    fn a_block_the_claimer_did_not_make_is_dead_lettered_under_its_position() {
        let forged = Block::fixture("blk-1", "say en", Queued);
        let effects = infer(&mut inference(), QUEUED, &forged).unwrap();
        assert_eq!(effects[0].dedup_key, format!("{QUEUED}/0/3"));
        let letters = written(&effects, "quire.blocks.queued-dlt");
        assert_eq!(text_header(&letters[0].headers, headers::DLT_EXCEPTION_CAUSE_FQCN).as_deref(), Some("quire.forged-block"));
        assert!(transitions(&effects).is_empty(), "nothing is said about a block nobody made");
    }
}
