//! The claimer: splits each submitted document into blocks with deterministic ids and
//! queues them. A resubmission (same idempotency key) yields the same block ids, which
//! the processing loop's dedup drops.

use super::{block_headers, BlockRef};
use crate::pipeline::{Effect, Reading, Stage, StageContext, StageError};
use crate::record::Input;
use quire_core::records::{now_ms, Block, DatasetSubmission};
use quire_core::split::split_blocks;
use quire_core::ledger::LedgerKey;
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
            let key = ids::block_idempotency_key(&submission.idempotency_key, &submission.document_id, max_block_chars, sequence as u32);
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

    type Work = DatasetSubmission;

    async fn read(&mut self, input: &Input) -> Result<Reading<DatasetSubmission>, StageError> {
        self.context.read(input, quire_core::screen::submission, LedgerKey::of_submission).await
    }

    async fn process(&mut self, input: &Input, submission: DatasetSubmission) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaArgs;
    use crate::pipeline::cancel::CanceledDatasets;
    use crate::pipeline::ledger::Ledger;
    use crate::pipeline::run::{handle, Handled};
    use crate::record::headers::{self, read_dead_letter, text_header};
    use crate::telemetry::EffectEvent;
    use crate::testing::{self, block_on, decoded, encoded, registry, submission, transitions, written, RegistryDouble};
    use quire_core::{ErrorClass, StageName};

    const INGEST: &str = "quire.ingest";
    const DLT: &str = "quire.ingest-dlt";

    /// A claimer cutting blocks of at most 10 characters.
    fn claimer() -> Claimer {
        Claimer::new(registry().context(StageName::Claimer), 10)
    }

    /// What `claimer` makes of `value` read from the ingest topic at `offset`.
    fn claim(claimer: &mut Claimer, offset: i64, value: Option<Vec<u8>>) -> Result<Vec<Effect>, StageError> {
        block_on(testing::processed(claimer, &testing::input(INGEST, offset, Some("ds-1"), value, Vec::new())))
    }

    /// What the ledger knows `value` as, once read (None: it cannot be read).
    fn ledger_key(claimer: &mut Claimer, offset: i64, value: Option<Vec<u8>>) -> Option<LedgerKey> {
        match block_on(claimer.read(&testing::input(INGEST, offset, Some("ds-1"), value, Vec::new()))).unwrap() {
            Reading::Read { key, .. } => Some(key),
            Reading::Unreadable(_) => None,
        }
    }

    const THREE_PARAGRAPHS: &str = "alpha one\n\nbeta two\n\ngamma 3";

    #[test]
    fn each_paragraph_is_queued_as_a_block_claimed_on_the_way() {
        let mut claimer = claimer();
        let effects = claim(&mut claimer, 7, Some(encoded(INGEST, &submission("sub-1", THREE_PARAGRAPHS)))).unwrap();
        let ledgered = ledger_key(&mut claimer, 7, Some(encoded(INGEST, &submission("sub-1", THREE_PARAGRAPHS))));
        assert_eq!(ledgered, Some(LedgerKey::of_submission(&submission("sub-1", THREE_PARAGRAPHS))), "ledgered as the document read");
        let queued: Vec<Block> = written(&effects, "quire.blocks.queued").into_iter().map(decoded).collect();
        assert_eq!(queued.iter().map(|b| b.text.as_str()).collect::<Vec<_>>(), ["alpha one", "beta two", "gamma 3"]);
        assert_eq!(effects.len(), 3, "one effect per block");
        for (sequence, (effect, block)) in effects.iter().zip(&queued).enumerate() {
            assert_eq!((block.sequence, block.block_count, block.state), (sequence as i32, 3, BlockState::Queued));
            assert_eq!(effect.dedup_key, block.block_id, "a block is queued once");
            let record = &effect.writes.records.last().unwrap();
            assert_eq!(record.key, block.block_id);
            assert_eq!(text_header(&record.headers, headers::IDEMPOTENCY_KEY).as_deref(), Some(block.idempotency_key.as_str()));
            assert_eq!(text_header(&record.headers, headers::DATASET_ID).as_deref(), Some("ds-1"));
            assert_eq!(
                transitions(std::slice::from_ref(effect)),
                [(block.block_id.clone(), BlockState::Pending, BlockState::Claimed), (block.block_id.clone(), BlockState::Claimed, BlockState::Queued)]
            );
            assert_eq!(effect.writes.events.iter().filter(|e| matches!(e, EffectEvent::Transition(_))).count(), 2);
        }
        let ids: std::collections::HashSet<_> = queued.iter().map(|b| &b.block_id).collect();
        assert_eq!(ids.len(), 3, "every block has an id of its own");
    }

    #[test]
    fn a_resubmission_gives_the_same_blocks_and_another_key_other_ones() {
        let mut claimer = claimer();
        let keys = |effects: Vec<Effect>| effects.into_iter().map(|e| e.dedup_key).collect::<Vec<_>>();
        let first = keys(claim(&mut claimer, 1, Some(encoded(INGEST, &submission("sub-1", THREE_PARAGRAPHS)))).unwrap());
        let again = keys(claim(&mut claimer, 2, Some(encoded(INGEST, &submission("sub-1", THREE_PARAGRAPHS)))).unwrap());
        let other = keys(claim(&mut claimer, 3, Some(encoded(INGEST, &submission("sub-2", THREE_PARAGRAPHS)))).unwrap());
        assert_eq!(first, again, "the loop's dedup drops a resubmission by these keys");
        assert!(other.iter().all(|k| !first.contains(k)), "{other:?} vs {first:?}");
    }

    #[test]
    fn a_resubmission_split_otherwise_shares_no_block_id_with_the_first_split() {
        let fine = blocks_of(&submission("sub-1", THREE_PARAGRAPHS), 10, 1);
        let coarse = blocks_of(&submission("sub-1", THREE_PARAGRAPHS), 600, 1);
        assert_eq!((fine.len(), coarse.len()), (3, 1));
        assert!(fine.iter().all(|f| coarse.iter().all(|c| c.block_id != f.block_id)), "{fine:?} vs {coarse:?}");
        assert_eq!(blocks_of(&submission("sub-1", THREE_PARAGRAPHS), 10, 2)[0].block_id, fine[0].block_id, "the same split, the same ids");
    }

    #[test]
    fn unreadable_records_are_dead_lettered_under_their_position_with_the_reason() {
        let good = encoded(INGEST, &submission("sub-1", THREE_PARAGRAPHS));
        let mut unknown_id = good.clone();
        unknown_id[1..5].copy_from_slice(&9_999u32.to_be_bytes());
        let block = encoded("quire.blocks.queued", &Block::fixture("blk-1", "text", BlockState::Queued));
        let values: [(Option<Vec<u8>>, &str); 6] = [
            (None, "no value"),
            (Some(b"plain text".to_vec()), "not in the Confluent wire format"),
            (Some(unknown_id), "unknown schema id 9999"),
            (Some(good[..good.len() - 3].to_vec()), "could not be decoded"),
            (Some(block), "wrong schema"),
            (Some(encoded(INGEST, &DatasetSubmission { dataset_id: String::new(), ..submission("sub-1", "text") })), "dataset_id"),
        ];
        let mut claimer = claimer();
        for (offset, (value, why)) in values.into_iter().enumerate() {
            let offset = 100 + offset as i64;
            let effects = claim(&mut claimer, offset, value.clone()).unwrap();
            assert_eq!(effects.len(), 1, "{why}");
            assert_eq!(ledger_key(&mut claimer, offset, value.clone()), None, "{why}: unreadable, so ledgered under its position");
            let effect = &effects[0];
            assert_eq!(effect.dedup_key, format!("{INGEST}/0/{offset}"), "{why}");
            let letters = written(&effects, DLT);
            assert_eq!((letters.len(), effect.writes.records.len()), (1, 1), "{why}: only the dead letter");
            let (origin, failure) = read_dead_letter(&letters[0].headers).unwrap();
            assert_eq!((origin.topic.as_str(), origin.offset, origin.consumer_group.as_str()), (INGEST, offset, "quire-claimer"));
            assert_eq!(failure.class, ErrorClass::Data, "{why}");
            assert!(failure.reason.contains(why), "{why}: {}", failure.reason);
            assert_eq!(letters[0].payload, value.unwrap_or_default(), "{why}: the record's bytes are kept");
            assert!(matches!(&effect.writes.events[..], [EffectEvent::DeadLettered(_)]), "{why}");
        }
    }

    #[test]
    fn a_document_without_text_is_dead_lettered_as_empty() {
        let effects = claim(&mut claimer(), 5, Some(encoded(INGEST, &submission("sub-1", " \n\n \n")))).unwrap();
        let letters = written(&effects, DLT);
        assert_eq!(letters.len(), 1);
        assert_eq!(text_header(&letters[0].headers, headers::DLT_EXCEPTION_CAUSE_FQCN).as_deref(), Some("quire.empty-document"));
    }

    #[test]
    fn a_canceled_dataset_is_canceled_block_by_block_and_queues_nothing() {
        let context = StageContext { canceled: CanceledDatasets::of(&["ds-1"]), ..registry().context(StageName::Claimer) };
        let effects = claim(&mut Claimer::new(context, 10), 1, Some(encoded(INGEST, &submission("sub-1", THREE_PARAGRAPHS)))).unwrap();
        assert!(written(&effects, "quire.blocks.queued").is_empty());
        let changes = transitions(&effects);
        assert_eq!(changes.len(), 3);
        assert!(changes.iter().all(|(_, from, to)| (*from, *to) == (BlockState::Pending, BlockState::Canceled)), "{changes:?}");
    }

    #[test]
    fn an_unreachable_registry_is_retried_and_the_record_goes_through_once_it_answers() {
        let registry = RegistryDouble::start();
        let mut claimer = Claimer::new(registry.context(StageName::Claimer), 10);
        let value = block_on(registry.codec().encode(INGEST, &submission("sub-1", THREE_PARAGRAPHS))).unwrap();
        registry.set_down(true);
        let refused = claim(&mut claimer, 1, Some(value.clone())).unwrap_err();
        assert_eq!((refused.failure.class, refused.failure.cause), (ErrorClass::Transient, "registry-unreachable"), "{refused}");
        registry.set_down(false);
        let effects = claim(&mut claimer, 1, Some(value)).unwrap();
        assert_eq!(written(&effects, "quire.blocks.queued").len(), 3, "a good record is not quarantined after an outage");
    }

    /// A claimer beside a ledger kept in a temporary directory, as the loop runs it.
    fn claimer_with_ledger() -> (tempfile::TempDir, Claimer, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::io::ledger_store::LedgerStore::open(&dir.path().join("ledger.redb")).unwrap();
        let ledger = Ledger::with_store(store, "quire.claimer.ledger".into(), &KafkaArgs::default(), testing::codec().clone());
        let claimer = Claimer::new(testing::registry().context(StageName::Claimer), 10);
        (dir, claimer, ledger)
    }

    fn handled(claimer: &mut Claimer, ledger: &Ledger, input: &Input) -> Handled {
        testing::block_on(handle(claimer, ledger, input, 1 << 20, 1 << 20)).unwrap()
    }

    /// Holds `input`'s entry as the loop does once it is processed.
    fn ledgered(ledger: &mut Ledger, input: &Input, handled: Handled) {
        let Handled::Effects(key, effects) = handled else { panic!("not processed") };
        ledger.hold(crate::pipeline::ledger::entry("claimer", input, key, &effects));
    }

    #[test]
    fn an_input_the_ledger_answered_costs_no_work_and_a_reused_key_is_quarantined() {
        let (_dir, mut claimer, mut ledger) = claimer_with_ledger();
        let submission = testing::submission("sub-1", "alpha one\n\nbeta two");
        let value = testing::encoded("quire.ingest", &submission);
        let first = testing::input("quire.ingest", 1, Some("sub-1"), Some(value.clone()), Vec::new());
        let processed = handled(&mut claimer, &ledger, &first);
        assert!(matches!(&processed, Handled::Effects(Some(_), effects) if effects.len() == 2), "two blocks queued");
        ledgered(&mut ledger, &first, processed);
        ledger.committed().unwrap();

        let again = testing::input("quire.ingest", 2, Some("sub-1"), Some(value), Vec::new());
        assert!(matches!(handled(&mut claimer, &ledger, &again), Handled::Answered { how: "done", .. }), "a resubmission is answered");

        let other_text = testing::encoded("quire.ingest", &quire_core::records::DatasetSubmission { text: "gamma".into(), ..submission });
        let reused = testing::input("quire.ingest", 3, Some("sub-1"), Some(other_text), Vec::new());
        let Handled::Effects(None, effects) = handled(&mut claimer, &ledger, &reused) else { panic!("a reused key is dead-lettered") };
        assert_eq!(effects[0].dedup_key, "quire.ingest/0/3", "under its position");
        let letters = testing::written(&effects, "quire.ingest-dlt");
        let cause = headers::text_header(&letters[0].headers, headers::DLT_EXCEPTION_CAUSE_FQCN);
        assert_eq!(cause.as_deref(), Some("quire.idempotency-key-reused"));
        assert!(testing::written(&effects, "quire.blocks.queued").is_empty());
    }

    #[test]
    fn an_unreadable_input_is_dead_lettered_once_per_position_even_before_its_batch_commits() {
        let (_dir, mut claimer, mut ledger) = claimer_with_ledger();
        let junk = testing::input("quire.ingest", 5, None, Some(b"junk".to_vec()), Vec::new());
        let processed = handled(&mut claimer, &ledger, &junk);
        assert!(matches!(&processed, Handled::Effects(None, effects) if effects.len() == 1));
        ledgered(&mut ledger, &junk, processed);
        assert!(matches!(handled(&mut claimer, &ledger, &junk), Handled::Answered { how: "done", .. }), "seen in the open batch");
        ledger.aborted();
        assert!(matches!(handled(&mut claimer, &ledger, &junk), Handled::Effects(None, _)), "an aborted batch's entries are forgotten");
    }

}
