//! Quarantine: consumes every dead-letter topic and records each failure, with its
//! class and reason, on the quarantine topic. (Retries and replay come later.)

use crate::config::TopicNames;
use crate::headers::{read_dead_letter, text_header, DATASET_ID};
use crate::processor::{Effect, Input, Stage, StageContext, StageError};
use crate::telemetry::events;
use quire_core::records::{now_ms, QuarantineRecord};
use quire_core::ErrorClass;

pub struct Quarantine {
    context: StageContext,
}

impl Quarantine {
    pub fn new(context: StageContext) -> Self {
        Quarantine { context }
    }
}

impl Stage for Quarantine {
    fn context(&self) -> &StageContext {
        &self.context
    }

    fn input_topics(&self) -> Vec<String> {
        let names = &self.context.names;
        [names.ingest(), names.queued(), names.results()].iter().map(|t| TopicNames::dead_letter(t)).collect()
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.context.names.quarantine()]
    }

    async fn process(&mut self, input: &Input) -> Result<Vec<Effect>, StageError> {
        let ctx = &self.context;
        let failed_key = input.key_str().unwrap_or_else(|| input.position_key());
        let record = match read_dead_letter(&input.headers) {
            Ok((origin, failure)) => QuarantineRecord {
                key: failed_key.clone(),
                dataset_id: text_header(&input.headers, DATASET_ID),
                block_id: failed_key.starts_with("blk-").then(|| failed_key.clone()),
                failed_stage: origin.consumer_group.clone(),
                original_topic: origin.topic,
                original_partition: origin.partition,
                original_offset: origin.offset,
                error_class: failure.class.as_str().to_owned(),
                exception_fqcn: failure.class.fqcn().to_owned(),
                reason: failure.reason,
                instance_id: ctx.instance_id.clone(),
                quarantined_at_ms: now_ms(),
            },
            Err(reason) => QuarantineRecord {
                key: failed_key.clone(),
                dataset_id: None,
                block_id: None,
                failed_stage: "unknown".into(),
                original_topic: input.topic.clone(),
                original_partition: input.partition,
                original_offset: input.offset,
                error_class: ErrorClass::Data.as_str().to_owned(),
                exception_fqcn: ErrorClass::Data.fqcn().to_owned(),
                reason: format!("dead-letter record without readable Spring DLT headers: {reason}"),
                instance_id: ctx.instance_id.clone(),
                quarantined_at_ms: now_ms(),
            },
        };
        let dedup_key = format!("{}|{}", record.original_topic, failed_key);
        events::quarantined(&ctx.instance_id, &dedup_key, &record.failed_stage, &record.reason);
        let output = ctx.encode(&ctx.names.quarantine(), &dedup_key, &record, input.headers.clone()).await?;
        Ok(vec![Effect { dedup_key, records: vec![output] }])
    }
}
