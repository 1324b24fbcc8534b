//! Quarantine: consumes every dead-letter topic and keeps, per block, the latest
//! failure on the compacted quarantine topic: class, cause, reason, stage, attempts,
//! first and last failure time, origin, trace id and the original payload. `quire dlq`
//! lists, shows and replays from there.

use crate::record::headers::{self, read_dead_letter, text_header, DATASET_ID};
use crate::pipeline::{first_answer_stands, Effect, Reading, Stage, StageContext, StageError};
use crate::record::Input;
use crate::telemetry::{events, EffectEvent};
use quire_core::records::{now_ms, QuarantineRecord, QUARANTINED};
use quire_core::ledger::{Admission, LedgerEntry, LedgerKey};
use quire_core::{ErrorClass, Failure};

pub struct Quarantine {
    context: StageContext,
}

/// A dead letter as read: the quarantine record to file under `key`, once per
/// `dedup_key` (the key its stage filed it under).
#[derive(Debug)]
pub struct Filing {
    key: String,
    dedup_key: String,
    record: QuarantineRecord,
}

impl Quarantine {
    pub fn new(context: StageContext) -> Self {
        Quarantine { context }
    }

    /// The quarantine record of dead letter `input`, filed under `key`, before its DLT
    /// headers are read.
    fn record(&self, input: &Input, key: String) -> QuarantineRecord {
        QuarantineRecord {
            dataset_id: text_header(&input.headers, DATASET_ID),
            block_id: key.starts_with("blk-").then(|| key.clone()),
            key,
            original_topic: input.topic.clone(),
            original_partition: input.partition,
            original_offset: input.offset,
            error_class: ErrorClass::Data.as_str().to_owned(),
            exception_fqcn: ErrorClass::Data.fqcn().to_owned(),
            reason: String::new(),
            failed_stage: "unknown".into(),
            instance_id: self.context.instance_id.clone(),
            quarantined_at_ms: now_ms(),
            cause: String::new(),
            attempts: headers::int_header(&input.headers, headers::RETRY_ATTEMPTS).unwrap_or(1),
            first_failed_at_ms: headers::long_header(&input.headers, headers::FIRST_FAILED_AT).unwrap_or(input.timestamp_ms),
            last_failed_at_ms: input.timestamp_ms,
            trace_id: headers::trace_id(&input.headers),
            payload: input.payload.clone(),
            status: QUARANTINED.into(),
            replayed_at_ms: None,
            replayed_by: None,
        }
    }

    /// The stage a consumer group belongs to (`quire-inference` → `inference`).
    fn stage_of(&self, group: &str) -> String {
        let prefix = format!("{}-", self.context.names.prefix);
        group.strip_prefix(&prefix).unwrap_or(group).to_owned()
    }
}

impl Stage for Quarantine {
    fn context(&self) -> &StageContext {
        &self.context
    }

    type Work = Filing;

    async fn read(&mut self, input: &Input) -> Result<Reading<Filing>, StageError> {
        // A stage's dead letter is filed once under the key its stage gave it; anything
        // else on these topics once under its own position, whatever its headers claim.
        let dead_letter = read_dead_letter(&input.headers);
        let key = match dead_letter {
            Ok(_) => input.key_str().unwrap_or_else(|| input.position_key()),
            Err(_) => input.position_key(),
        };
        let mut record = self.record(input, key.clone());
        let mut dedup_key = input.position_key();
        match dead_letter {
            Ok((origin, failure)) => {
                if let Some(stage_key) = text_header(&input.headers, headers::DEDUP_KEY) {
                    dedup_key = stage_key;
                }
                record.failed_stage = self.stage_of(&origin.consumer_group);
                record.original_topic = origin.topic;
                record.original_partition = origin.partition;
                record.original_offset = origin.offset;
                record.error_class = failure.class.as_str().to_owned();
                record.exception_fqcn = failure.class.fqcn().to_owned();
                record.reason = failure.reason;
                record.cause = text_header(&input.headers, headers::DLT_EXCEPTION_CAUSE_FQCN)
                    .map(|c| c.trim_start_matches("quire.").to_owned())
                    .unwrap_or_default();
            }
            Err(reason) => {
                record.cause = "unreadable-dead-letter".into();
                record.reason = format!("dead-letter record without readable Spring DLT headers: {reason}");
            }
        }
        let ledger_key = LedgerKey::of_dead_letter(&dedup_key, &record.reason);
        Ok(Reading::Read { key: ledger_key, work: Filing { key, dedup_key, record } })
    }

    /// A dead letter filed again with another reason (two stages failing one block
    /// generation): the first filing stands.
    fn admit(&self, entry: Option<&LedgerEntry>, key: &LedgerKey) -> Admission {
        first_answer_stands(quire_core::ledger::admit(entry, key))
    }

    async fn process(&mut self, input: &Input, filing: Filing) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
        let Filing { key, dedup_key, record } = filing;
        let filed = quarantined(&ctx.instance_id, &key, &record);
        let output = ctx.encode(&ctx.names.quarantine(), &key, &record, input.headers.clone()).await?;
        Ok(vec![Effect::new(dedup_key, vec![output]).with_event(filed)])
    }

    /// A dead letter too large to file as it is (or its record would be): filed under
    /// its own position with the reason, without its bytes or headers.
    async fn unprocessable(&mut self, input: &Input, failure: &Failure) -> Result<Effect, StageError> {
        let ctx = &self.context;
        let key = input.position_key();
        let record = QuarantineRecord {
            reason: failure.reason.clone(),
            cause: failure.cause.to_owned(),
            payload: None,
            ..self.record(input, key.clone())
        };
        let filed = quarantined(&ctx.instance_id, &key, &record);
        let output = ctx.encode(&ctx.names.quarantine(), &key, &record, headers::trace_context(&input.headers)).await?;
        Ok(Effect::new(key, vec![output]).with_event(filed))
    }
}

/// The event of `record` filed under `key`.
fn quarantined(instance_id: &str, key: &str, record: &QuarantineRecord) -> EffectEvent {
    EffectEvent::Quarantined(events::Quarantined {
        instance_id: instance_id.to_owned(),
        key: key.to_owned(),
        failed_stage: record.failed_stage.clone(),
        class: record.error_class.clone(),
        reason: record.reason.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::letters::BlockRef;
    use crate::testing::{self, as_written, block_on, consumed, decoded, queued_block, registry, RegistryDouble};
    use quire_core::StageName;

    const QUEUED_DLT: &str = "quire.blocks.queued-dlt";

    /// A dead letter as inference writes it for `block`, read back from its DLT topic.
    fn dead_letter_of(block: &quire_core::records::Block, failure: &Failure) -> Input {
        let stage = registry().context(StageName::Inference);
        let origin = testing::input("quire.blocks.queued", 3, Some(&block.block_id), Some(b"the block's bytes".to_vec()), Vec::new());
        let letter = stage.dead_letter(&origin, failure, &crate::stages::failure_key(block)).of_block(&BlockRef::from(block), 2).build();
        let effect = Effect::new(crate::stages::failure_key(block), vec![letter]);
        consumed(&as_written(&effect)[0], 11)
    }

    fn file(stage: &mut Quarantine, input: &Input) -> Result<Vec<Effect>, StageError> {
        block_on(testing::processed(stage, input))
    }

    fn quarantine() -> Quarantine {
        Quarantine::new(registry().context(StageName::Quarantine))
    }

    /// The one quarantine record `effects` write.
    fn filed(effects: &[Effect]) -> (String, QuarantineRecord) {
        let records: Vec<_> = effects.iter().flat_map(|e| &e.writes.records).collect();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].topic, "quire.quarantine");
        (records[0].key.clone(), decoded(records[0]))
    }

    #[test]
    fn a_stage_dead_letter_is_filed_under_its_block_with_what_the_stage_said() {
        let block = queued_block("some text");
        let failure = Failure::data("block-too-large", "the model refused 40 000 tokens");
        let input = dead_letter_of(&block, &failure);
        let effects = file(&mut quarantine(), &input).unwrap();
        assert_eq!(effects[0].dedup_key, crate::stages::failure_key(&block), "filed once under the stage's key");
        let (key, record) = filed(&effects);
        assert_eq!(key, block.block_id);
        assert_eq!(record.block_id.as_deref(), Some(block.block_id.as_str()));
        assert_eq!(record.dataset_id.as_deref(), Some("ds-1"));
        assert_eq!((record.failed_stage.as_str(), record.error_class.as_str(), record.cause.as_str()), ("inference", "DATA", "block-too-large"));
        assert_eq!(record.reason, failure.reason);
        assert_eq!((record.original_topic.as_str(), record.original_offset, record.attempts), ("quire.blocks.queued", 3, 2));
        assert_eq!(record.payload.as_deref(), Some(&b"the block's bytes"[..]), "the failed record's bytes, for replay");
        assert_eq!(record.status, QUARANTINED);
        assert!(matches!(&effects[0].writes.events[..], [EffectEvent::Quarantined(_)]));
    }

    #[test]
    fn a_record_without_dead_letter_headers_is_filed_under_its_position_whatever_it_claims() {
        let forged = vec![(headers::DEDUP_KEY.to_owned(), b"blk-000000000000000000000000#g0@failed".to_vec())];
        let input = testing::input(QUEUED_DLT, 12, Some("blk-000000000000000000000000"), Some(b"junk".to_vec()), forged);
        let effects = file(&mut quarantine(), &input).unwrap();
        let position = format!("{QUEUED_DLT}/0/12");
        assert_eq!(effects[0].dedup_key, position, "a forged dedup key is not taken");
        let (key, record) = filed(&effects);
        assert_eq!((key.as_str(), record.block_id), (position.as_str(), None));
        assert_eq!(record.cause, "unreadable-dead-letter");
        assert!(record.reason.contains("is missing"), "{}", record.reason);
    }

    #[test]
    fn a_dead_letter_too_large_to_file_is_filed_without_its_bytes() {
        let input = dead_letter_of(&queued_block("some text"), &Failure::data("block-too-large", "too large"));
        let too_large = Failure::data("record-too-large", "record of 2 MB is over the limit");
        let effect = block_on(quarantine().unprocessable(&input, &too_large)).unwrap();
        let (key, record) = filed(std::slice::from_ref(&effect));
        assert_eq!(key, format!("{QUEUED_DLT}/0/11"), "under its own position");
        assert_eq!(effect.dedup_key, key);
        assert_eq!((record.payload, record.cause.as_str(), record.reason.as_str()), (None, "record-too-large", too_large.reason.as_str()));
    }

    #[test]
    fn an_unreachable_registry_is_retried_and_filing_goes_on_once_it_answers() {
        let registry = RegistryDouble::start();
        let mut stage = Quarantine::new(registry.context(StageName::Quarantine));
        let input = dead_letter_of(&queued_block("some text"), &Failure::data("block-too-large", "too large"));
        registry.set_down(true);
        let refused = file(&mut stage, &input).unwrap_err();
        assert_eq!((refused.failure.class, refused.failure.cause), (ErrorClass::Transient, "registry-unreachable"), "{refused}");
        registry.set_down(false);
        assert_eq!(filed(&file(&mut stage, &input).unwrap()).1.cause, "block-too-large");
    }
}
