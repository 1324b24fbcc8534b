//! The block watchdog on Kafka: feeds `quire_core::stall::BlockWatch` from the audit
//! topic and the stages' inputs, judges against the groups' committed offsets (from the
//! lag watchdog's last poll), and acts through an [`Operator`] under the watchdog's own
//! transactional id: a re-drive is the block's next generation on the queue with its
//! audit event; a quarantine is the block's `→ ERROR` event and a dead letter of its
//! latest copy (cause `stalled`), which the quarantine stage files like any other.

use crate::config::{KafkaArgs, TopicNames};
use crate::headers::{self, DltOrigin};
use crate::operator::Operator;
use crate::processor::{Input, OutputRecord};
use crate::reader::TopicReader;
use crate::watchdog::GroupLag;
use crate::{Error, Result};
use quire_core::records::{Block, InferenceResult, StateChange};
use quire_core::stall::{BlockWatch, CopyKind, CopyRef, StallPolicy, Stalled, Verdict, STALLED, WATCHDOG_STAGE};
use quire_core::{BlockState, ErrorClass, Failure};
use std::collections::HashMap;
use std::time::Duration;

/// Metric names of the block watchdog.
pub mod names {
    /// Blocks past their state's TTL, by state and verdict.
    pub const STALLED_BLOCKS: &str = "quire_watchdog_stalled_blocks";
    pub const REDRIVES: &str = "quire_watchdog_block_redrives_total";
    pub const QUARANTINED: &str = "quire_watchdog_blocks_quarantined_total";
}

const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Finished blocks are remembered this long, so that a stale generation's late events
/// do not revive them.
const FINISHED_HORIZON: Duration = Duration::from_secs(3_600);

/// Where one topic's copies lie and which group consumes them.
struct CopySource {
    topic: String,
    kind: CopyKind,
    group: String,
}

pub struct StallWatch {
    watch: BlockWatch,
    reader: TopicReader,
    operator: Operator,
    events_topic: String,
    sources: Vec<CopySource>,
    positions: HashMap<String, HashMap<i32, i64>>,
}

impl StallWatch {
    /// Connects; the first [`StallWatch::catch_up`] reads every topic from its start.
    pub fn new(args: &KafkaArgs, policy: StallPolicy) -> Result<Self> {
        let longest_delay = args.retry_schedule().delays().iter().copied().max().unwrap_or_default();
        policy.validate(longest_delay).map_err(Error::Other)?;
        let names = TopicNames::new(&args.topic_prefix);
        let mut sources: Vec<CopySource> = names
            .queued_and_retries(&args.retry_schedule())
            .into_iter()
            .map(|topic| CopySource { topic, kind: CopyKind::Queued, group: names.group("inference") })
            .collect();
        sources.push(CopySource { topic: names.results(), kind: CopyKind::Result, group: names.group("validator") });
        Ok(StallWatch {
            watch: BlockWatch::new(policy),
            reader: TopicReader::new(args)?,
            operator: Operator::service(args, WATCHDOG_STAGE)?,
            events_topic: names.events(),
            sources,
            positions: HashMap::new(),
        })
    }

    /// Reads what was written since the last call: audit events first, then copies.
    /// With the groups' offsets read before both (see [`StallWatch::check`]), a block
    /// judged as passed by its stage has that stage's events read, and every event read
    /// has its copy read (a copy is written with or before its event).
    pub async fn catch_up(&mut self, now_ms: i64) -> Result<()> {
        let positions = self.positions.entry(self.events_topic.clone()).or_default();
        let events = tokio::task::block_in_place(|| self.reader.read_new(&self.events_topic, positions, READ_TIMEOUT))?;
        for record in events {
            if let Ok(change) = self.operator.codec().decode::<StateChange>(record.payload.as_deref()).await {
                self.watch.on_event(&change);
            }
        }
        for source in &self.sources {
            let positions = self.positions.entry(source.topic.clone()).or_default();
            let records = tokio::task::block_in_place(|| self.reader.read_new(&source.topic, positions, READ_TIMEOUT))?;
            for record in records {
                let codec = self.operator.codec();
                let block = match source.kind {
                    CopyKind::Queued => codec.decode::<Block>(record.payload.as_deref()).await.ok(),
                    CopyKind::Result => codec.decode::<InferenceResult>(record.payload.as_deref()).await.ok().map(|r| r.block),
                };
                let Some(block) = block else { continue };
                let copy = CopyRef { topic: record.topic, partition: record.partition, offset: record.offset, generation: block.generation, attempt: block.attempt };
                self.watch.on_copy(&block.block_id, source.kind, copy, now_ms);
            }
        }
        self.watch.prune(now_ms, FINISHED_HORIZON);
        Ok(())
    }

    /// Judges every live block at `now_ms` against the groups' committed offsets in
    /// `lags` (polled before the last [`StallWatch::catch_up`]), acts on the lost ones,
    /// and returns all blocks past their TTL.
    pub async fn check(&mut self, lags: &[GroupLag], now_ms: i64) -> Result<Vec<Stalled>> {
        let committed: HashMap<(&str, &str, i32), i64> = lags
            .iter()
            .flat_map(|g| g.partitions.iter().filter_map(move |p| Some(((g.group.as_str(), p.topic.as_str(), p.partition), p.committed?))))
            .collect();
        let group_of = |topic: &str| self.sources.iter().find(|s| s.topic == topic).map(|s| s.group.as_str());
        let stalled = self.watch.stalled(now_ms, |_, copy| {
            let group = group_of(&copy.topic)?;
            committed.get(&(group, copy.topic.as_str(), copy.partition)).map(|&c| c > copy.offset)
        });
        for block in &stalled {
            if block.verdict == Verdict::Waiting {
                continue;
            }
            let group = block.copy.as_ref().and_then(|c| group_of(&c.topic)).unwrap_or_default().to_owned();
            match self.act(block, &group).await {
                Ok(()) => self.watch.acted(&block.block_id),
                Err(e) => tracing::error!(block_id = %block.block_id, error = %e, "could not act on a stalled block"),
            }
        }
        export(&stalled);
        Ok(stalled)
    }

    /// Re-drives or quarantines `block`, in one transaction.
    async fn act(&self, block: &Stalled, group: &str) -> Result<()> {
        let policy = self.watch.policy();
        let reason = block.reason(policy.max_redrives);
        let copy = match &block.copy {
            Some(at) => tokio::task::block_in_place(|| self.reader.read_at(&at.topic, at.partition, at.offset, READ_TIMEOUT))?,
            None => None,
        };
        let records = match (block.verdict, copy) {
            (Verdict::Redrive, Some(copy)) => {
                let latest = self.block_of(&copy).await?;
                tracing::warn!(block_id = %block.block_id, dataset_id = %block.dataset_id, request_id = %block.request_id, state = %block.state, generation = latest.generation + 1, reason, "stalled block re-driven");
                metrics::counter!(names::REDRIVES, "state" => block.state.as_str()).increment(1);
                self.operator.requeue(&latest, block.state, &reason, headers::trace_id(&copy.headers).as_deref()).await?
            }
            (_, copy) => {
                tracing::error!(block_id = %block.block_id, dataset_id = %block.dataset_id, request_id = %block.request_id, state = %block.state, reason, "stalled block quarantined");
                metrics::counter!(names::QUARANTINED, "state" => block.state.as_str()).increment(1);
                let audit = self.operator.transition(&block.block_id, &block.dataset_id, &block.request_id, block.state, BlockState::Error, &reason).await?;
                vec![audit, self.dead_letter(block, copy, group, reason)]
            }
        };
        tokio::task::block_in_place(|| self.operator.commit(&records))
    }

    /// The block a copy holds (a queued block, or the block of a result).
    async fn block_of(&self, copy: &Input) -> Result<Block> {
        let codec = self.operator.codec();
        match codec.decode::<Block>(copy.payload.as_deref()).await {
            Ok(block) => Ok(block),
            Err(_) => Ok(codec.decode::<InferenceResult>(copy.payload.as_deref()).await?.block),
        }
    }

    /// The dead letter of a stalled block: its latest copy unchanged (so `quire dlq
    /// replay` can send it back), Spring's DLT headers naming where it lay.
    fn dead_letter(&self, block: &Stalled, copy: Option<Input>, group: &str, reason: String) -> OutputRecord {
        let failure = Failure::new(ErrorClass::Systemic, STALLED, reason);
        let queued = self.operator.names().queued();
        let origin = match &copy {
            Some(c) => DltOrigin { topic: c.topic.clone(), partition: c.partition, offset: c.offset, timestamp_ms: c.timestamp_ms, timestamp_type: c.timestamp_type, consumer_group: group.to_owned() },
            None => DltOrigin { topic: queued.clone(), partition: -1, offset: -1, timestamp_ms: 0, timestamp_type: "CreateTime", consumer_group: group.to_owned() },
        };
        let mut headers = headers::dead_letter_headers(&origin, &failure);
        let generation = block.copy.as_ref().map_or(0, |c| c.generation);
        let dedup_key = format!("{}#g{generation}@{STALLED}", block.block_id);
        headers.push((headers::DEDUP_KEY.into(), dedup_key.into_bytes()));
        headers.push((headers::DATASET_ID.into(), block.dataset_id.as_bytes().to_vec()));
        headers.push((headers::REQUEST_ID.into(), block.request_id.as_bytes().to_vec()));
        headers.push((headers::RETRY_ATTEMPTS.into(), (block.redrives as i32 + 1).to_be_bytes().to_vec()));
        if let Some(trace) = copy.as_ref().and_then(|c| headers::header(&c.headers, headers::TRACEPARENT)) {
            headers.push((headers::TRACEPARENT.into(), trace.to_vec()));
        }
        OutputRecord {
            topic: TopicNames::dead_letter(&origin.topic),
            key: block.block_id.clone(),
            payload: copy.and_then(|c| c.payload).unwrap_or_default(),
            headers,
        }
    }
}

/// Sets the stalled-blocks gauge, by state and verdict (0 where none).
fn export(stalled: &[Stalled]) {
    for state in [BlockState::Queued, BlockState::Processing, BlockState::Validating] {
        for (verdict, label) in [(Verdict::Waiting, "waiting"), (Verdict::Redrive, "redrive"), (Verdict::Quarantine, "quarantine")] {
            let count = stalled.iter().filter(|s| s.state == state && s.verdict == verdict).count();
            metrics::gauge!(names::STALLED_BLOCKS, "state" => state.as_str(), "verdict" => label).set(count as f64);
        }
        metrics::counter!(names::REDRIVES, "state" => state.as_str()).increment(0);
        metrics::counter!(names::QUARANTINED, "state" => state.as_str()).increment(0);
    }
}
