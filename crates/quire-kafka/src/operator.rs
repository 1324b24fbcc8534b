//! Operator actions on blocks (`quire dlq replay`, `quire redrive`, `quire cancel`).
//!
//! Each action writes its records and their audit events in one Kafka transaction, so
//! it is visible whole or not at all, and goes through the block state machine like any
//! stage. A re-queued block starts a new generation (see `stages`' dedup keys): the
//! stages process it again, and the validator still lets it into the output only once.

use crate::config::{KafkaArgs, TopicNames};
use crate::headers::{self, Headers};
use crate::processor::OutputRecord;
use crate::{Codec, Error, Result};
use quire_core::records::{now_ms, Block, StateChange};
use quire_core::{state, BlockState};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;
use std::time::Duration;

/// A transactional producer acting for a person.
pub struct Operator {
    producer: BaseProducer,
    codec: Codec,
    names: TopicNames,
    /// Who acts, for the audit trail (`$USER`).
    pub who: String,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl Operator {
    /// An operator for `action` (part of its transactional id).
    pub fn new(args: &KafkaArgs, action: &str) -> Result<Self> {
        let transactional_id = format!("{}-operator-{action}-{:08x}", args.topic_prefix, rand::random::<u32>());
        let producer: BaseProducer = args
            .client_config()
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        producer.init_transactions(TIMEOUT)?;
        let who = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
        Ok(Operator { producer, codec: Codec::new(&args.schema_registry_url)?, names: TopicNames::new(&args.topic_prefix), who })
    }

    pub fn names(&self) -> &TopicNames {
        &self.names
    }

    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// `value` encoded for `topic`, keyed by `key`.
    pub async fn encode<T: Serialize>(&self, topic: &str, key: &str, value: &T, headers: Headers) -> Result<OutputRecord> {
        Ok(OutputRecord { topic: topic.to_owned(), key: key.to_owned(), payload: self.codec.encode(topic, value).await?, headers })
    }

    /// The audit record of `block` going `from → to`, checked by the state machine.
    pub async fn transition(&self, block_id: &str, dataset_id: &str, request_id: &str, from: BlockState, to: BlockState, reason: &str) -> Result<OutputRecord> {
        state::transition(block_id, from, to).map_err(|e| Error::Other(e.to_string()))?;
        let change = StateChange {
            block_id: block_id.to_owned(),
            dataset_id: dataset_id.to_owned(),
            from_state: from,
            to_state: to,
            stage: "operator".into(),
            instance_id: self.who.clone(),
            reason: Some(reason.to_owned()),
            request_id: request_id.to_owned(),
            at_ms: now_ms(),
        };
        let headers = vec![(headers::DATASET_ID.to_owned(), dataset_id.as_bytes().to_vec())];
        self.encode(&self.names.events(), block_id, &change, headers).await
    }

    /// The records that put `block`, now in `from`, back on the queue as its next
    /// generation with fresh attempts.
    pub async fn requeue(&self, block: &Block, from: BlockState, reason: &str) -> Result<Vec<OutputRecord>> {
        let audit = self.transition(&block.block_id, &block.dataset_id, &block.request_id, from, BlockState::Queued, reason).await?;
        let next = Block { attempt: 0, generation: block.generation + 1, state: BlockState::Queued, updated_at_ms: now_ms(), ..block.clone() };
        let headers = vec![
            (headers::IDEMPOTENCY_KEY.to_owned(), block.idempotency_key.as_bytes().to_vec()),
            (headers::REQUEST_ID.to_owned(), block.request_id.as_bytes().to_vec()),
            (headers::DATASET_ID.to_owned(), block.dataset_id.as_bytes().to_vec()),
        ];
        let queued = self.encode(&self.names.queued(), &block.block_id, &next, headers).await?;
        Ok(vec![audit, queued])
    }

    /// Writes `records` in one transaction.
    pub fn commit(&self, records: &[OutputRecord]) -> Result<()> {
        let write = || -> Result<()> {
            self.producer.begin_transaction()?;
            for record in records {
                let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                for (name, value) in &record.headers {
                    headers = headers.insert(Header { key: name, value: Some(value) });
                }
                let base = BaseRecord::to(&record.topic).key(&record.key).payload(&record.payload).headers(headers);
                self.producer.send(base).map_err(|(e, _)| Error::Kafka(e))?;
            }
            self.producer.commit_transaction(TIMEOUT)?;
            Ok(())
        };
        write().inspect_err(|_| {
            let _ = self.producer.abort_transaction(TIMEOUT);
        })
    }
}
