//! The block watchdog on Kafka: feeds `quire_core::stall::BlockWatch` from the audit
//! topic and the stages' inputs, judges against the groups' committed offsets (from the
//! lag watchdog's poll, taken first in each round), and acts through an [`Operator`]
//! under the watchdog's own transactional id: a re-drive is the block's next generation
//! on the queue with its audit event; a quarantine is the block's `→ ERROR` event and a
//! dead letter of its latest copy (cause `stalled`), which the quarantine stage files
//! like any other failure.
//!
//! **Settled partitions.** A `read_committed` reader stops at the last stable offset:
//! behind a transaction still open, a later committed one is invisible, although its
//! consumer offsets may already be. So each round, after the groups' offsets, the
//! watchdog notes every partition's log end (read uncommitted), then its last stable
//! offset, then reads. A partition whose stable offset had reached that end is
//! *settled*: whatever a stage had committed when its offsets were read is in what was
//! read. Only blocks whose audit and copy partitions are settled are acted on.

use crate::config::{KafkaArgs, TopicNames};
use crate::record::headers::{self, DltOrigin};
use crate::ops::Operator;
use crate::pipeline::letters::{BlockRef, DeadLetter};
use crate::record::{Input, OutputRecord};
use crate::io::reader::TopicReader;
use crate::watch::lag::GroupLag;
use crate::{Error, Result};
use quire_core::records::{Block, InferenceResult, StateChange};
use quire_core::stall::{BlockWatch, CopyKind, CopyRef, StallPolicy, Stalled, Verdict, STALLED, WATCHDOG_STAGE};
use quire_core::{BlockState, ErrorClass, Failure, StageName};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::telemetry::names::blocks as names;

/// How long one round may spend reading one topic; the rest is read next round.
const READ_BUDGET: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(10);
/// Finished blocks are remembered this long, so that a stale generation's late events
/// do not revive them.
const FINISHED_HORIZON: Duration = Duration::from_secs(24 * 3_600);
/// How often the retry topics are listed again.
const TOPICS_MAX_AGE_MS: i64 = 60_000;

pub struct StallWatch {
    args: KafkaArgs,
    names: TopicNames,
    watch: BlockWatch,
    reader: TopicReader,
    /// Sees log ends as they are, open transactions included.
    uncommitted: TopicReader,
    operator: Operator,
    /// Queued and retry topics (found by inference's own pattern), then results.
    sources: Vec<String>,
    sources_listed_at_ms: Option<i64>,
    positions: HashMap<String, HashMap<i32, i64>>,
    /// Partitions settled in the last catch-up.
    settled: HashSet<(String, i32)>,
}

impl StallWatch {
    /// Connects; the first [`StallWatch::catch_up`] reads every topic from its start.
    pub fn new(args: &KafkaArgs, policy: StallPolicy) -> Result<Self> {
        let longest_delay = args.retry_schedule().delays().iter().copied().max().unwrap_or_default();
        policy.validate(longest_delay).map_err(Error::Other)?;
        Ok(StallWatch {
            args: args.clone(),
            names: TopicNames::new(&args.topic_prefix),
            watch: BlockWatch::new(policy),
            reader: TopicReader::new(args)?,
            uncommitted: TopicReader::uncommitted(args)?,
            operator: Operator::service(args, WATCHDOG_STAGE)?,
            sources: Vec::new(),
            sources_listed_at_ms: None,
            positions: HashMap::new(),
            settled: HashSet::new(),
        })
    }

    /// The consumer group reading `topic`, and the kind of copy it holds.
    fn source_of(&self, topic: &str) -> (String, CopyKind) {
        match topic == self.names.results() {
            true => (self.names.group(StageName::Validator), CopyKind::Result),
            false => (self.names.group(StageName::Inference), CopyKind::Queued),
        }
    }

    /// The topics copies lie on, listed again every minute: the queued topic, every
    /// retry topic inference's pattern matches (also those of a former schedule), results.
    fn refresh_sources(&mut self, now_ms: i64) -> Result<()> {
        if self.sources_listed_at_ms.is_some_and(|at| now_ms - at < TOPICS_MAX_AGE_MS) {
            return Ok(());
        }
        let queued = self.names.queued();
        let mut sources = vec![queued.clone()];
        sources.extend(self.reader.topics_matching(|t| quire_core::retry::base_topic(t) == queued && quire_core::retry::retry_delay(t).is_some())?);
        sources.push(self.names.results());
        self.sources = sources;
        self.sources_listed_at_ms = Some(now_ms);
        Ok(())
    }

    /// Reads what was written since the last round: audit events, then copies. Call it
    /// right after the groups' offsets were read; it notes which partitions are settled.
    pub async fn catch_up(&mut self, now_ms: i64) -> Result<()> {
        self.refresh_sources(now_ms)?;
        let topics: Vec<String> = std::iter::once(self.names.events()).chain(self.sources.iter().cloned()).collect();
        // Log ends first, then stable offsets: a partition whose stable offset reached
        // its earlier log end has nothing pending from before.
        let mut log_ends = HashMap::new();
        for topic in &topics {
            log_ends.insert(topic.clone(), tokio::task::block_in_place(|| self.uncommitted.ends(topic))?);
        }
        let mut settled = HashSet::new();
        for topic in &topics {
            for (partition, stable) in tokio::task::block_in_place(|| self.reader.ends(topic))? {
                if log_ends[topic].get(&partition).is_some_and(|&end| stable >= end) {
                    settled.insert((topic.clone(), partition));
                }
            }
        }
        for topic in &topics {
            let complete = self.read_topic(topic, now_ms).await?;
            if !complete {
                settled.retain(|(t, _)| t != topic);
            }
        }
        self.settled = settled;
        self.watch.prune(now_ms, FINISHED_HORIZON);
        Ok(())
    }

    /// Reads `topic` from where the last round stopped; whether it reached the end.
    /// A registry that cannot be reached leaves the position where it was (read again
    /// next round); a record that can never be decoded is logged and skipped.
    async fn read_topic(&mut self, topic: &str, now_ms: i64) -> Result<bool> {
        let mut applied = self.positions.get(topic).cloned().unwrap_or_default();
        let mut scratch = applied.clone();
        let (records, complete) = tokio::task::block_in_place(|| self.reader.read_new_within(topic, &mut scratch, READ_BUDGET))?;
        let codec = self.operator.codec().clone();
        let (_, kind) = self.source_of(topic);
        let events = topic == self.names.events();
        for record in records {
            let payload = record.payload.as_deref();
            let decoded = if events {
                codec.decode::<StateChange>(payload).await.map(|change| self.watch.on_event(&change, record.partition, now_ms))
            } else {
                let block = match kind {
                    CopyKind::Queued => codec.decode::<Block>(payload).await,
                    CopyKind::Result => codec.decode::<InferenceResult>(payload).await.map(|r| r.block),
                };
                block.map(|block| {
                    let copy = CopyRef { topic: record.topic.clone(), partition: record.partition, offset: record.offset, rank: block.rank() };
                    self.watch.on_copy(&block.block_id, kind, copy, now_ms);
                })
            };
            match decoded {
                Ok(()) => {}
                Err(e @ Error::Registry { .. }) => {
                    // Read again from the first record not applied, next round.
                    self.positions.insert(topic.to_owned(), applied);
                    return Err(e);
                }
                Err(e) => tracing::warn!(topic, partition = record.partition, offset = record.offset, error = %e, "undecodable record skipped by the block watchdog"),
            }
            applied.insert(record.partition, record.offset + 1);
        }
        self.positions.insert(topic.to_owned(), applied);
        Ok(complete)
    }

    /// Judges every live block at `now_ms` against the groups' committed offsets in
    /// `lags` (read before the last [`StallWatch::catch_up`]), acts on the lost ones
    /// that are settled and confirmed, and returns all blocks past their TTL.
    pub async fn check(&mut self, lags: &[GroupLag], now_ms: i64) -> Result<Vec<Stalled>> {
        let committed: HashMap<(&str, &str, i32), i64> = lags
            .iter()
            .flat_map(|g| g.partitions.iter().filter_map(move |p| Some(((g.group.as_str(), p.topic.as_str(), p.partition), p.committed?))))
            .collect();
        let stalled = self.watch.stalled(now_ms, |_, copy| {
            let (group, _) = self.source_of(&copy.topic);
            committed.get(&(group.as_str(), copy.topic.as_str(), copy.partition)).map(|&c| c > copy.offset)
        });
        let events = self.names.events();
        let settled = |block: &Stalled| {
            let partition_settled = |topic: &str, partition: i32| self.settled.contains(&(topic.to_owned(), partition));
            block.events_partition.is_some_and(|p| partition_settled(&events, p)) && block.copy.as_ref().is_none_or(|c| partition_settled(&c.topic, c.partition))
        };
        let to_act = self.watch.to_act(&stalled, settled);
        for block in &to_act {
            let outcome = self.act(block).await;
            self.watch.acted(&block.block_id, now_ms);
            if let Err(e) = outcome {
                tracing::error!(block_id = %block.block_id, error = %e, "could not act on a stalled block; the watchdog's producer is renewed");
                // A failed or timed-out transaction may leave the producer unusable.
                self.operator = tokio::task::block_in_place(|| Operator::service(&self.args, WATCHDOG_STAGE))?;
            }
        }
        export(&stalled);
        Ok(stalled)
    }

    /// Re-drives or quarantines `block`, in one transaction.
    async fn act(&self, block: &Stalled) -> Result<()> {
        let reason = block.reason(self.watch.policy().max_redrives);
        let copy = match &block.copy {
            Some(at) => match tokio::task::block_in_place(|| self.reader.read_at(&at.topic, at.partition, at.offset, TIMEOUT))? {
                Some(copy) => Some(copy),
                None => {
                    tracing::warn!(block_id = %block.block_id, topic = %at.topic, partition = at.partition, offset = at.offset, "the stalled block's copy cannot be read; tried again later");
                    return Ok(());
                }
            },
            None => None,
        };
        let state = block.state.as_str();
        match (block.verdict, copy) {
            (Verdict::Redrive, Some(copy)) => {
                let latest = self.block_of(&copy).await?;
                let trace = headers::text_header(&copy.headers, headers::TRACEPARENT);
                let records = self.operator.requeue(&latest, block.state, &reason, trace.as_deref()).await?;
                tokio::task::block_in_place(|| self.operator.commit(&records))?;
                metrics::counter!(names::REDRIVEN, "state" => state).increment(1);
                tracing::warn!(block_id = %block.block_id, dataset_id = %block.dataset_id, request_id = %block.request_id, state, generation = latest.generation + 1, reason, "stalled block re-driven");
            }
            (_, copy) => {
                let audit = self.operator.transition(&block.into(), block.state, BlockState::Error, &reason).await?;
                let records = vec![audit, self.dead_letter(block, copy, reason.clone())];
                tokio::task::block_in_place(|| self.operator.commit(&records))?;
                metrics::counter!(names::QUARANTINED, "state" => state).increment(1);
                tracing::error!(block_id = %block.block_id, dataset_id = %block.dataset_id, request_id = %block.request_id, state, reason, "stalled block quarantined");
            }
        }
        Ok(())
    }

    /// The block a copy holds (a queued block, or the block of a result).
    async fn block_of(&self, copy: &Input) -> Result<Block> {
        let codec = self.operator.codec();
        match self.source_of(&copy.topic).1 {
            CopyKind::Queued => codec.decode::<Block>(copy.payload.as_deref()).await,
            CopyKind::Result => Ok(codec.decode::<InferenceResult>(copy.payload.as_deref()).await?.block),
        }
    }

    /// The dead letter of a stalled block: its latest copy unchanged (so `quire dlq
    /// replay` can send it back), Spring's DLT headers naming where it lay and which
    /// stage's group had it. Keyed for dedup by the stall (block and time in state).
    fn dead_letter(&self, block: &Stalled, copy: Option<Input>, reason: String) -> OutputRecord {
        // Its re-drives were its retries: spent, the block goes to ERROR and quarantine as
        // a transient failure does once its retry schedule is spent.
        let failure = Failure::new(ErrorClass::Transient, STALLED, reason);
        let kind = CopyKind::for_state(block.state).unwrap_or(CopyKind::Queued);
        let waiting_on = match kind {
            CopyKind::Queued => self.names.queued(),
            CopyKind::Result => self.names.results(),
        };
        let (group, _) = self.source_of(&waiting_on);
        let origin = match &copy {
            Some(c) => DltOrigin { topic: c.topic.clone(), partition: c.partition, offset: c.offset, timestamp_ms: c.timestamp_ms, timestamp_type: c.timestamp_type, consumer_group: group },
            None => DltOrigin { topic: waiting_on, partition: -1, offset: -1, timestamp_ms: block.since_ms, timestamp_type: "CreateTime", consumer_group: group },
        };
        let payload = copy.as_ref().and_then(|c| c.payload.clone());
        let trace = copy.map(|c| c.headers).unwrap_or_default();
        DeadLetter::new(&origin, &failure, &block.block_id, payload)
            .traced_from(&trace)
            .of_block(&block.into(), block.redrives as i32 + 1)
            .set(headers::DEDUP_KEY, format!("{}@{STALLED}-{}", block.block_id, block.since_ms).into_bytes())
            .build()
    }
}

impl<'a> From<&'a Stalled> for BlockRef<'a> {
    fn from(block: &'a Stalled) -> Self {
        BlockRef { block_id: &block.block_id, dataset_id: &block.dataset_id, request_id: &block.request_id, idempotency_key: None }
    }
}

/// Sets the stalled-blocks gauge, by state and verdict (0 where none).
fn export(stalled: &[Stalled]) {
    for state in [BlockState::Queued, BlockState::Processing, BlockState::Validating] {
        for (verdict, label) in [(Verdict::Waiting, "waiting"), (Verdict::Redrive, "redrive"), (Verdict::Quarantine, "quarantine")] {
            let count = stalled.iter().filter(|s| s.state == state && s.verdict == verdict).count();
            metrics::gauge!(names::STALLED_BLOCKS, "state" => state.as_str(), "verdict" => label).set(count as f64);
        }
        metrics::counter!(names::REDRIVEN, "state" => state.as_str()).increment(0);
        metrics::counter!(names::QUARANTINED, "state" => state.as_str()).increment(0);
    }
}
