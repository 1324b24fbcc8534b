//! Quarantine: consumes every dead-letter topic and keeps, per block, the latest
//! failure on the compacted quarantine topic: class, cause, reason, stage, attempts,
//! first and last failure time, origin, trace id and the original payload. `quire dlq`
//! lists, shows and replays from there.

use crate::record::headers::{self, read_dead_letter, text_header, DATASET_ID};
use crate::pipeline::{Effect, Stage, StageContext, StageError};
use crate::record::Input;
use crate::telemetry::EffectEvent;
use quire_core::records::{now_ms, QuarantineRecord, QUARANTINED};
use quire_core::{ErrorClass, Failure};

pub struct Quarantine {
    context: StageContext,
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

    async fn process(&mut self, input: &Input) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
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
    EffectEvent::Quarantined {
        instance_id: instance_id.to_owned(),
        key: key.to_owned(),
        failed_stage: record.failed_stage.clone(),
        class: record.error_class.clone(),
        reason: record.reason.clone(),
    }
}
