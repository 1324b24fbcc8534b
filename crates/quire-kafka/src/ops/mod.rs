//! Actions on blocks taken outside the stages: by a person (`quire dlq replay`, `quire
//! redrive`, `quire cancel`) or by the block watchdog (re-drive, quarantine as stalled).
//!
//! Each action writes its records and their audit events in one Kafka transaction, so
//! it is visible whole or not at all, and goes through the block state machine like any
//! stage. A re-queued block starts a new generation (see `stages`' dedup keys): the
//! stages process it again, and the validator still lets it into the output only once.
//!
//! # Layout
//! - [`view`]: whole-topic reads folded into blocks' latest states and newest copies.
//! - [`report`]: where every block of a dataset is (`quire verify`, `quire status`).
//! - [`replay`], [`redrive`], [`cancel`]: the rules of each action, and its transaction.
//! - [`Operator`]: the transactional producer every action writes through.

pub mod cancel;
pub mod redrive;
pub mod replay;
pub mod report;
pub mod view;

use crate::config::{KafkaArgs, TopicNames};
use crate::record::headers::{self, Headers};
use crate::record::OutputRecord;
use crate::telemetry::EffectEvent;
use crate::{Codec, Error, Result};
use crate::pipeline::letters::{self, BlockRef};
use quire_core::records::{now_ms, Block, QuarantineRecord, REPLAYED};
use quire_core::stall::OPERATOR_STAGE;
use quire_core::BlockState;
use crate::record::headers::block_headers;
use rdkafka::producer::{BaseProducer, Producer};
use serde::Serialize;
use std::time::Duration;

/// A transactional producer acting for a person or a service.
pub struct Operator {
    producer: BaseProducer,
    codec: Codec,
    args: KafkaArgs,
    /// Set once every topic's schema is registered through `codec`, before the first
    /// record is encoded: a registry that restarted empty knows no subject, and only
    /// schemas the codec registered can be registered again by it.
    schemas: tokio::sync::OnceCell<()>,
    names: TopicNames,
    /// The `stage` of the audit events written.
    stage: String,
    /// Who acts, for the audit trail (`$USER`, or the service's instance id).
    pub who: String,
    /// What the records built since the last commit make true, reported once committed.
    pending: std::sync::Mutex<Vec<EffectEvent>>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl Operator {
    /// A person running `action` (part of a transactional id of its own).
    pub fn new(args: &KafkaArgs, action: &str) -> Result<Self> {
        let transactional_id = format!("{}-{OPERATOR_STAGE}-{action}-{:08x}", args.topic_prefix, rand::random::<u32>());
        let who = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
        Operator::acting_as(args, &transactional_id, OPERATOR_STAGE, who)
    }

    /// A service (`stage`) acting under its stable transactional id, so that a restarted
    /// instance fences its predecessor.
    pub fn service(args: &KafkaArgs, stage: &str) -> Result<Self> {
        let transactional_id = format!("{}-{stage}-{}", args.topic_prefix, args.instance_id);
        Operator::acting_as(args, &transactional_id, stage, args.instance_id.clone())
    }

    fn acting_as(args: &KafkaArgs, transactional_id: &str, stage: &str, who: String) -> Result<Self> {
        let producer: BaseProducer = args
            .client_config()
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        producer.init_transactions(TIMEOUT)?;
        Ok(Operator {
            producer,
            codec: Codec::new(&args.schema_registry_url)?,
            args: args.clone(),
            schemas: tokio::sync::OnceCell::new(),
            names: TopicNames::new(&args.topic_prefix),
            stage: stage.to_owned(),
            who,
            pending: Default::default(),
        })
    }

    pub fn args(&self) -> &KafkaArgs {
        &self.args
    }

    pub fn names(&self) -> &TopicNames {
        &self.names
    }

    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// `value` encoded for `topic`, keyed by `key`.
    pub async fn encode<T: Serialize>(&self, topic: &str, key: &str, value: &T, headers: Headers) -> Result<OutputRecord> {
        self.schemas
            .get_or_try_init(|| async {
                crate::io::topics::register_all_schemas(&self.codec, &self.args).await
            })
            .await?;
        Ok(OutputRecord { topic: topic.to_owned(), key: key.to_owned(), payload: self.codec.encode(topic, value).await?, headers, partition: None })
    }

    /// The audit record of `block` going `from → to`, checked by the state machine.
    pub async fn transition(&self, block: &BlockRef<'_>, from: BlockState, to: BlockState, reason: &str) -> Result<OutputRecord> {
        let audit = letters::audit(block, &self.stage, &self.who, from, to, Some(reason)).map_err(|e| Error::Other(e.to_string()))?;
        let record = self.encode(&self.names.events(), block.block_id, &audit.change, audit.headers).await?;
        self.pending.lock().expect("pending events lock").push(audit.event);
        Ok(record)
    }

    /// The records that put `block`, now in `from`, back on the queue as its next
    /// generation with fresh attempts, continuing `trace` (a `traceparent`, or only a
    /// trace id) if known.
    pub async fn requeue(&self, block: &Block, from: BlockState, reason: &str, trace: Option<&str>) -> Result<Vec<OutputRecord>> {
        let mut audit = self.transition(&BlockRef::from(block), from, BlockState::Queued, reason).await?;
        let next = Block { attempt: 0, generation: block.generation + 1, state: BlockState::Queued, updated_at_ms: now_ms(), ..block.clone() };
        let mut headers = block_headers(&block.idempotency_key, &block.request_id, &block.dataset_id);
        let queued = self.names.queued();
        if let Some(traceparent) = trace.and_then(|t| crate::telemetry::otel::action_span(&queued, &format!("{} requeue", self.stage), t)) {
            headers.push((headers::TRACEPARENT.into(), traceparent.clone().into_bytes()));
            audit.headers.push((headers::TRACEPARENT.into(), traceparent.into_bytes()));
        }
        let requeued = self.encode(&queued, &block.block_id, &next, headers).await?;
        Ok(vec![audit, requeued])
    }

    /// The quarantine record `record` sent back by `by`: marked `REPLAYED`.
    pub async fn replayed(&self, record: &QuarantineRecord, by: String) -> Result<OutputRecord> {
        let replayed = QuarantineRecord { status: REPLAYED.into(), replayed_at_ms: Some(now_ms()), replayed_by: Some(by), ..record.clone() };
        self.encode(&self.names.quarantine(), &record.key, &replayed, Vec::new()).await
    }

    /// Writes `records` in one transaction, then reports the transitions they make.
    pub fn commit(&self, records: &[OutputRecord]) -> Result<()> {
        let write = || -> Result<()> {
            self.producer.begin_transaction()?;
            for record in records {
                self.producer.send(record.base_record()).map_err(|(e, _)| Error::Kafka(e))?;
            }
            self.producer.commit_transaction(TIMEOUT)?;
            Ok(())
        };
        let written = write().inspect_err(|_| {
            let _ = self.producer.abort_transaction(TIMEOUT);
        });
        let events = std::mem::take(&mut *self.pending.lock().expect("pending events lock"));
        if written.is_ok() {
            events.into_iter().for_each(EffectEvent::emit);
        }
        written
    }
}
