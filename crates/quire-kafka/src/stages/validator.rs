//! The validator: re-checks each result against the output rules; valid results
//! complete their block, invalid ones are dead-lettered with the broken rule named.
//! Its dedup key is the bare block id whatever the generation: a block reaches the
//! completed topic once, however often it was replayed, and a later generation of a
//! completed block is neither failed nor canceled here.

use super::{block_headers, BlockRef};
use crate::pipeline::{first_answer_stands, Effect, Reading, Stage, StageContext, StageError};
use crate::record::Input;
use quire_core::records::{now_ms, InferenceResult, ValidatedResult};
use quire_core::ledger::{Admission, LedgerEntry, LedgerKey};
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

    type Work = InferenceResult;

    async fn read(&mut self, input: &Input) -> Result<Reading<InferenceResult>, StageError> {
        self.context.read(input, |result: &InferenceResult| quire_core::screen::block(&result.block), LedgerKey::of_result).await
    }

    /// Two results of one block generation may differ (a model answers a replayed
    /// call otherwise): the first one ledgered stands, the other is a stale copy.
    fn admit(&self, entry: Option<&LedgerEntry>, key: &LedgerKey) -> Admission {
        first_answer_stands(quire_core::ledger::admit(entry, key))
    }

    async fn process(&mut self, input: &Input, result: InferenceResult) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
        let block = &result.block;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::cancel::CanceledDatasets;
    use crate::record::headers::{self, text_header};
    use crate::stages::failure_key;
    use crate::telemetry::EffectEvent;
    use crate::testing::{self, block_on, decoded, encoded, queued_block, registry, transitions, written};
    use quire_core::records::{output_checksum, Block};
    use quire_core::StageName;
    use BlockState::*;

    const RESULTS: &str = "quire.inference.results";
    const COMPLETED: &str = "quire.blocks.completed";

    /// What inference writes for a block of `text` it labelled `label`.
    fn result(text: &str, label: &str) -> InferenceResult {
        let block = Block { state: Validating, ..queued_block(text) };
        InferenceResult {
            output_checksum: output_checksum(&block.checksum, label, 0.9, None),
            engine: "model".into(),
            label: label.into(),
            confidence: 0.9,
            output_text: None,
            latency_ms: 5,
            inferred_at_ms: 2,
            alternatives: Vec::new(),
            block,
        }
    }

    fn validate(context: StageContext, result: &InferenceResult) -> Vec<Effect> {
        let input = testing::input(RESULTS, 4, Some(&result.block.block_id), Some(encoded(RESULTS, result)), Vec::new());
        block_on(testing::processed(&mut Validator::new(context), &input)).unwrap()
    }

    fn context() -> StageContext {
        registry().context(StageName::Validator)
    }

    #[test]
    fn a_valid_result_completes_its_block_once_whatever_its_generation() {
        let result = result("hello there", "en");
        let id = result.block.block_id.clone();
        let effects = validate(context(), &result);
        assert_eq!(effects.len(), 1);
        assert_eq!(effects[0].dedup_key, id);
        assert_eq!(transitions(&effects), [(id.clone(), Validating, Completed)]);
        let completed = written(&effects, COMPLETED);
        assert_eq!(completed.len(), 1);
        assert_eq!(completed[0].key, id);
        let validated: ValidatedResult = decoded(completed[0]);
        assert_eq!((validated.block_id.as_str(), validated.label.as_str(), validated.engine.as_str()), (id.as_str(), "en", "model"));
        assert_eq!(validated.text_checksum, result.block.checksum);
        assert!(effects[0].writes.events.iter().any(|e| matches!(e, EffectEvent::BlockCompleted(_))));

        let replayed = InferenceResult { block: Block { generation: 3, ..result.block.clone() }, ..result };
        assert_eq!(validate(context(), &replayed)[0].dedup_key, id, "a block reaches the output once, however often replayed");
    }

    #[test]
    fn a_result_that_breaks_a_rule_fails_its_block_unless_it_completed() {
        let tampered = InferenceResult { label: "fr".into(), ..result("hello there", "en") };
        let block = tampered.block.clone();
        let effects = validate(context(), &tampered);
        assert_eq!(effects[0].dedup_key, failure_key(&block));
        assert_eq!(effects[0].unless_done.as_deref(), Some(block.block_id.as_str()), "a completed block is not failed by a stale copy");
        assert_eq!(transitions(&effects), [(block.block_id.clone(), Validating, Error)]);
        assert!(written(&effects, COMPLETED).is_empty());
        let letters = written(&effects, "quire.inference.results-dlt");
        assert_eq!(text_header(&letters[0].headers, headers::DLT_EXCEPTION_CAUSE_FQCN).as_deref(), Some("quire.output-checksum-mismatch"));
    }

    #[test]
    fn a_result_whose_block_cannot_complete_is_refused_as_an_illegal_transition() {
        let early = InferenceResult { block: Block { state: Queued, ..result("hello there", "en").block }, ..result("hello there", "en") };
        let effects = validate(context(), &early);
        assert!(written(&effects, COMPLETED).is_empty(), "QUEUED → COMPLETED is never applied");
        let letters = written(&effects, "quire.inference.results-dlt");
        assert_eq!(text_header(&letters[0].headers, headers::DLT_EXCEPTION_CAUSE_FQCN).as_deref(), Some("quire.illegal-transition"));
        assert_eq!(transitions(&effects), [(early.block.block_id.clone(), Queued, Error)]);
    }

    #[test]
    fn a_result_of_a_canceled_dataset_cancels_its_block_unless_it_completed() {
        let result = result("hello there", "en");
        let effects = validate(StageContext { canceled: CanceledDatasets::of(&["ds-1"]), ..context() }, &result);
        assert!(written(&effects, COMPLETED).is_empty());
        assert_eq!(transitions(&effects), [(result.block.block_id.clone(), Validating, Canceled)]);
        assert_eq!(effects[0].unless_done.as_deref(), Some(result.block.block_id.as_str()));
    }
}
