//! The records Quire writes about blocks, each built in one place: the audit record of a
//! transition ([`audit`]), the dead letter of a record that failed ([`DeadLetter`]) and
//! the retry record of a block rescheduled after a failure ([`retry`]). Stages, operator
//! actions and the block watchdog all use them, so a transition or a failure reads the
//! same whoever wrote it.

use crate::config::TopicNames;
use crate::record::headers::{self, DltOrigin, Headers};
use crate::record::{Input, OutputRecord};
use crate::telemetry::events::BlockTransition;
use crate::telemetry::EffectEvent;
use quire_core::records::{now_ms, Block, StateChange};
use quire_core::{retry as schedule, state, BlockState, Failure, IllegalTransition};
use std::time::Duration;

/// The identity of a block, as its audit records and dead letters carry it.
#[derive(Debug, Clone, Copy)]
pub struct BlockRef<'a> {
    pub block_id: &'a str,
    pub dataset_id: &'a str,
    pub request_id: &'a str,
    /// Its submission's idempotency key, where the writer knows it.
    pub idempotency_key: Option<&'a str>,
}

impl<'a> From<&'a Block> for BlockRef<'a> {
    fn from(block: &'a Block) -> Self {
        BlockRef {
            block_id: &block.block_id,
            dataset_id: &block.dataset_id,
            request_id: &block.request_id,
            idempotency_key: Some(&block.idempotency_key),
        }
    }
}

impl<'a> From<&'a StateChange> for BlockRef<'a> {
    fn from(change: &'a StateChange) -> Self {
        BlockRef { block_id: &change.block_id, dataset_id: &change.dataset_id, request_id: &change.request_id, idempotency_key: None }
    }
}

impl BlockRef<'_> {
    /// The headers naming the block's submission, request and dataset.
    pub fn headers(&self) -> Headers {
        let mut headers = Vec::with_capacity(3);
        if let Some(key) = self.idempotency_key {
            headers.push((headers::IDEMPOTENCY_KEY.into(), key.as_bytes().to_vec()));
        }
        headers.push((headers::REQUEST_ID.into(), self.request_id.as_bytes().to_vec()));
        headers.push((headers::DATASET_ID.into(), self.dataset_id.as_bytes().to_vec()));
        headers
    }
}

/// One audited transition: the audit record's value and headers (to encode onto the
/// audit topic, keyed by the block id) and the event it makes true once committed.
#[derive(Debug, Clone)]
pub struct Audit {
    pub change: StateChange,
    pub headers: Headers,
    pub event: EffectEvent,
}

/// The audit of `block` going `from → to`, written by `stage`'s `instance_id`, if the
/// state machine allows the step.
pub fn audit(
    block: &BlockRef<'_>,
    stage: &str,
    instance_id: &str,
    from: BlockState,
    to: BlockState,
    reason: Option<&str>,
) -> Result<Audit, IllegalTransition> {
    state::transition(block.block_id, from, to)?;
    let change = StateChange {
        block_id: block.block_id.to_owned(),
        dataset_id: block.dataset_id.to_owned(),
        from_state: from,
        to_state: to,
        stage: stage.to_owned(),
        instance_id: instance_id.to_owned(),
        reason: reason.map(str::to_owned),
        request_id: block.request_id.to_owned(),
        at_ms: now_ms(),
    };
    let event = EffectEvent::Transition(BlockTransition {
        stage: stage.to_owned(),
        instance_id: instance_id.to_owned(),
        block_id: block.block_id.to_owned(),
        dataset_id: block.dataset_id.to_owned(),
        request_id: block.request_id.to_owned(),
        from,
        to,
    });
    Ok(Audit { change, headers: block.headers(), event })
}

/// A block rescheduled after a failure: the block at its next attempt (to encode onto
/// `topic`, keyed by its id) and its headers.
#[derive(Debug, Clone)]
pub struct Retry {
    pub topic: String,
    pub block: Block,
    pub headers: Headers,
}

/// The retry record of `block`, read as `input` from `origin`, which failed with
/// `failure`: retry number `retry` on the retry topic of `delay`, due `delay` after
/// `now_ms`. It carries Spring's retry-topic headers (attempts counted from the first
/// delivery, backoff and original timestamps), the DLT headers of this failure, when the
/// block first failed and the input's trace.
pub fn retry(origin: &DltOrigin, input: &Input, block: &Block, failure: &Failure, retry: u32, delay: Duration, now_ms: i64) -> Retry {
    let mut headers = BlockRef::from(block).headers();
    headers.extend(headers::dead_letter_headers(origin, failure));
    headers::set_header(&mut headers, headers::RETRY_ATTEMPTS, (retry as i32 + 1).to_be_bytes().to_vec());
    headers::set_header(&mut headers, headers::RETRY_BACKOFF_TIMESTAMP, headers::big_integer_bytes(now_ms + delay.as_millis() as i64));
    let original = headers::big_integer_header(&input.headers, headers::RETRY_ORIGINAL_TIMESTAMP).unwrap_or(input.timestamp_ms);
    headers::set_header(&mut headers, headers::RETRY_ORIGINAL_TIMESTAMP, headers::big_integer_bytes(original));
    headers::set_header(&mut headers, headers::FIRST_FAILED_AT, first_failed_at(input, now_ms).to_be_bytes().to_vec());
    if let Some(trace) = headers::header(&input.headers, headers::TRACEPARENT) {
        headers::set_header(&mut headers, headers::TRACEPARENT, trace.to_vec());
    }
    Retry {
        topic: schedule::retry_topic(schedule::base_topic(&input.topic), delay),
        block: Block { attempt: retry as i32, state: BlockState::Queued, updated_at_ms: now_ms, ..block.clone() },
        headers,
    }
}

/// When the block of `input` first failed: carried by retry records, else `now_ms`.
pub fn first_failed_at(input: &Input, now_ms: i64) -> i64 {
    headers::long_header(&input.headers, headers::FIRST_FAILED_AT).unwrap_or(now_ms)
}

/// A dead letter being built: the failed record's value unchanged (or left out, with
/// its size, when too large), Spring's DLT headers naming where it came from and why it
/// failed, on the dead-letter topic of the topic it came from.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    record: OutputRecord,
}

impl DeadLetter {
    /// The dead letter of a record from `origin` that failed with `failure`, keyed `key`.
    pub fn new(origin: &DltOrigin, failure: &Failure, key: &str, payload: Option<Vec<u8>>) -> Self {
        let record = OutputRecord {
            topic: TopicNames::dead_letter(&origin.topic),
            key: key.to_owned(),
            payload: payload.unwrap_or_default(),
            headers: headers::dead_letter_headers(origin, failure),
            partition: None,
        };
        DeadLetter { record }
    }

    /// Leaves the value out (a record too large to copy), saying how big it was.
    pub fn without_payload(mut self) -> Self {
        let size = std::mem::take(&mut self.record.payload).len();
        self.set(headers::PAYLOAD_OMITTED_BYTES, size.to_string().into_bytes())
    }

    /// Sets header `name` (replacing one of that name).
    pub fn set(mut self, name: &str, value: Vec<u8>) -> Self {
        headers::set_header(&mut self.record.headers, name, value);
        self
    }

    /// Carries the trace context of the failed record's `headers`.
    pub fn traced_from(mut self, headers: &Headers) -> Self {
        for (name, value) in headers::trace_context(headers) {
            headers::set_header(&mut self.record.headers, &name, value);
        }
        self
    }

    /// Names the failed block, and the deliveries it had (Spring counts the first
    /// delivery as attempt 1): the quarantine files it under the block's id.
    pub fn of_block(self, block: &BlockRef<'_>, deliveries: i32) -> Self {
        DeadLetter { record: OutputRecord { key: block.block_id.to_owned(), ..self.record } }
            .set(headers::DATASET_ID, block.dataset_id.as_bytes().to_vec())
            .set(headers::REQUEST_ID, block.request_id.as_bytes().to_vec())
            .set(headers::RETRY_ATTEMPTS, deliveries.to_be_bytes().to_vec())
    }

    pub fn build(self) -> OutputRecord {
        self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_core::ErrorClass;

    fn origin() -> DltOrigin {
        DltOrigin { topic: "q.blocks.queued".into(), partition: 2, offset: 7, timestamp_ms: 1, timestamp_type: "CreateTime", consumer_group: "g".into() }
    }

    #[test]
    fn a_block_dead_letter_reads_back_with_its_origin_and_failure() {
        let failure = Failure::new(ErrorClass::Model, "empty-output", "the model said nothing");
        let block = Block::fixture("b-1", "text", BlockState::Processing);
        let letter = DeadLetter::new(&origin(), &failure, "b-1#g0@failed", Some(b"value".to_vec()))
            .traced_from(&vec![(headers::TRACEPARENT.into(), b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec())])
            .of_block(&BlockRef::from(&block), 3)
            .build();
        assert_eq!((letter.topic.as_str(), letter.key.as_str(), letter.payload.as_slice()), ("q.blocks.queued-dlt", "b-1", b"value".as_slice()));
        let (read_origin, read_failure) = headers::read_dead_letter(&letter.headers).unwrap();
        assert_eq!((read_origin.partition, read_origin.offset), (2, 7));
        assert_eq!((read_failure.class, read_failure.reason.as_str()), (ErrorClass::Model, "the model said nothing"));
        assert_eq!(headers::int_header(&letter.headers, headers::RETRY_ATTEMPTS), Some(3));
        assert_eq!(headers::text_header(&letter.headers, headers::DATASET_ID).as_deref(), Some("dataset"));
        assert!(headers::header(&letter.headers, headers::TRACEPARENT).is_some());
    }

    #[test]
    fn an_oversized_value_is_left_out_with_its_size() {
        let failure = Failure::data("too-large", "big");
        let letter = DeadLetter::new(&origin(), &failure, "k", Some(vec![1; 10])).without_payload().build();
        assert!(letter.payload.is_empty());
        assert_eq!(headers::text_header(&letter.headers, headers::PAYLOAD_OMITTED_BYTES).as_deref(), Some("10"));
    }

    #[test]
    fn an_audit_is_checked_by_the_state_machine_and_names_who_wrote_it() {
        let block = Block::fixture("b-1", "text", BlockState::Queued);
        let audit = audit(&BlockRef::from(&block), "inference", "i-1", BlockState::Queued, BlockState::Processing, None).unwrap();
        assert_eq!((audit.change.stage.as_str(), audit.change.to_state), ("inference", BlockState::Processing));
        assert_eq!(headers::text_header(&audit.headers, headers::IDEMPOTENCY_KEY).as_deref(), Some("key-b-1"));
        assert!(super::audit(&BlockRef::from(&block), "inference", "i-1", BlockState::Completed, BlockState::Queued, None).is_err());
        // Who knows only the audit trail writes no idempotency key.
        assert!(headers::header(&BlockRef::from(&audit.change).headers(), headers::IDEMPOTENCY_KEY).is_none());
    }

    /// A record of retry topic `topic` read at offset 7, carrying `headers`.
    fn consumed(topic: &str, headers: Headers) -> Input {
        Input { topic: topic.into(), partition: 2, offset: 7, key: None, payload: None, headers, timestamp_ms: 1_000, timestamp_type: "CreateTime" }
    }

    #[test]
    fn a_first_retry_is_due_after_its_delay_on_the_retry_topic_of_the_main_topic() {
        let block = Block::fixture("b-1", "text", BlockState::Processing);
        let failure = Failure::transient("engine-unreachable", "connection refused");
        let trace = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec();
        let input = consumed("q.blocks.queued", vec![(headers::TRACEPARENT.into(), trace.clone())]);
        let retried = retry(&origin(), &input, &block, &failure, 1, Duration::from_millis(5_000), 50_000);
        assert_eq!(retried.topic, "q.blocks.queued-retry-5000");
        assert_eq!((retried.block.attempt, retried.block.state, retried.block.updated_at_ms), (1, BlockState::Queued, 50_000));
        let h = &retried.headers;
        assert_eq!(headers::int_header(h, headers::RETRY_ATTEMPTS), Some(2), "Spring counts the first delivery as attempt 1");
        assert_eq!(headers::big_integer_header(h, headers::RETRY_BACKOFF_TIMESTAMP), Some(55_000));
        assert_eq!(headers::big_integer_header(h, headers::RETRY_ORIGINAL_TIMESTAMP), Some(1_000), "the first delivery's timestamp");
        assert_eq!(headers::long_header(h, headers::FIRST_FAILED_AT), Some(50_000));
        assert_eq!(headers::header(h, headers::TRACEPARENT), Some(trace.as_slice()));
        assert_eq!(headers::read_dead_letter(h).unwrap().1.class, ErrorClass::Transient);
        assert_eq!(headers::text_header(h, headers::IDEMPOTENCY_KEY).as_deref(), Some("key-b-1"));
    }

    #[test]
    fn a_later_retry_keeps_the_first_delivery_and_first_failure_it_carries() {
        let block = Block { attempt: 1, ..Block::fixture("b-1", "text", BlockState::Processing) };
        let carried = vec![
            (headers::RETRY_ORIGINAL_TIMESTAMP.into(), headers::big_integer_bytes(1_000)),
            (headers::FIRST_FAILED_AT.into(), 40_000i64.to_be_bytes().to_vec()),
        ];
        let input = consumed("q.blocks.queued-retry-5000", carried);
        let retried = retry(&origin(), &input, &block, &Failure::transient("engine-error", "500"), 2, Duration::from_millis(30_000), 90_000);
        assert_eq!(retried.topic, "q.blocks.queued-retry-30000", "retry topics hang off the main topic, not each other");
        assert_eq!(headers::big_integer_header(&retried.headers, headers::RETRY_ORIGINAL_TIMESTAMP), Some(1_000));
        assert_eq!(headers::long_header(&retried.headers, headers::FIRST_FAILED_AT), Some(40_000));
        assert_eq!(headers::int_header(&retried.headers, headers::RETRY_ATTEMPTS), Some(3));
    }
}
