//! Reads whole topics to their end, the way a `read_committed` downstream consumer sees
//! them. Used to rebuild dedup state and by `quire verify` / `quire status`.

use crate::{config::KafkaArgs, Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use crate::record::Input;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Logs a client error, except reaching the end of a partition, which is normal.
pub(crate) fn log_client_error(error: &KafkaError, reason: &str) {
    if !matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::PartitionEOF)) {
        tracing::error!(%error, reason, "kafka client error");
    }
}

/// Whether a consumer error is one librdkafka recovers from by itself (the broker is
/// restarting, a connection dropped, leadership moved): a reader waits it out until its
/// deadline instead of failing, so a broker restart never stops a stage.
pub(crate) fn recovers_by_itself(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            AllBrokersDown
                | BrokerTransportFailure
                | Resolve
                | NetworkException
                | RequestTimedOut
                | OperationTimedOut
                | NotCoordinator
                | CoordinatorNotAvailable
                | CoordinatorLoadInProgress
                | LeaderNotAvailable
                | NotLeaderForPartition
                | FencedLeaderEpoch
                | UnknownLeaderEpoch
                | BrokerNotAvailable
        )
    )
}

/// A consumer context that keeps end-of-partition events out of the error log.
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ConsumerContext for QuietContext {}

/// A group-less consumer that assigns itself whole topics.
pub struct TopicReader {
    consumer: BaseConsumer<QuietContext>,
}

/// How long the broker holds a fetch at the end of a partition for a reader: short, so
/// that reading to the end takes milliseconds, not half a second per call.
const READER_FETCH_WAIT_MS: &str = "20";

impl TopicReader {
    /// A reader for reading to the end ([`TopicReader::read_to_end`] and the like).
    pub fn new(args: &KafkaArgs) -> Result<Self> {
        Self::build(args, READER_FETCH_WAIT_MS, "read_committed")
    }

    /// A reader for [`TopicReader::follow`]ing a topic for long (librdkafka's fetch wait,
    /// so an idle topic costs two fetches a second).
    pub fn follower(args: &KafkaArgs) -> Result<Self> {
        Self::build(args, "500", "read_committed")
    }

    /// A reader that sees open transactions' records too: its [`TopicReader::ends`]
    /// are the log ends, where a `read_committed` reader's are the last stable offsets.
    pub fn uncommitted(args: &KafkaArgs) -> Result<Self> {
        Self::build(args, READER_FETCH_WAIT_MS, "read_uncommitted")
    }

    fn build(args: &KafkaArgs, fetch_wait_ms: &str, isolation_level: &str) -> Result<Self> {
        let consumer = args
            .client_config()
            .set("group.id", format!("quire-reader-{:016x}", rand::random::<u64>()))
            .set("fetch.wait.max.ms", fetch_wait_ms)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", isolation_level)
            .set("auto.offset.reset", "earliest")
            .create_with_context(QuietContext)?;
        Ok(TopicReader { consumer })
    }

    /// The id of the cluster this reader talks to, if the broker gives one.
    pub fn cluster_id(&self) -> Option<String> {
        self.consumer.client().fetch_cluster_id(Duration::from_secs(10))
    }

    /// Number of partitions of `topic`; an error names a topic that does not exist.
    pub fn partitions(&self, topic: &str) -> Result<i32> {
        let metadata = self.consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::Other(format!("topic {topic} does not exist: run `quire topics apply`")))
    }

    /// Reads `topic` from `start(partition)` (None: the beginning) to the end of every
    /// partition, calling `on_record` for each record. Returns how many were read.
    pub fn read_to_end(
        &self,
        topic: &str,
        start: impl Fn(i32) -> Option<i64>,
        timeout: Duration,
        on_record: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<usize> {
        self.read_partitions_to_end(topic, &self.every_partition(topic, start)?, timeout, on_record)
    }

    /// Reads the partitions `starts` names of `topic`, each from its offset (None: the
    /// beginning), to their end, calling `on_record` for each record.
    pub fn read_partitions_to_end(
        &self,
        topic: &str,
        starts: &[(i32, Option<i64>)],
        timeout: Duration,
        on_record: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<usize> {
        self.read_to_ends(topic, starts, timeout, false, on_record)
    }

    /// [`TopicReader::read_partitions_to_end`] for as long as it takes while records
    /// keep coming: it fails only when `stall` passes with none read and an end not
    /// reached (a long history is read whole, a broker that stopped answering is not
    /// waited for forever).
    pub fn read_partitions_to_end_while_progressing(
        &self,
        topic: &str,
        starts: &[(i32, Option<i64>)],
        stall: Duration,
        on_record: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<usize> {
        self.read_to_ends(topic, starts, stall, true, on_record)
    }

    /// Reads partitions `starts` of `topic` to their end within `limit`: in all, or
    /// (`while_progressing`) between two records.
    fn read_to_ends(
        &self,
        topic: &str,
        starts: &[(i32, Option<i64>)],
        limit: Duration,
        while_progressing: bool,
        on_record: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<usize> {
        let (read, pending) = self.read_until(topic, starts, Instant::now() + limit, while_progressing.then_some(limit), on_record)?;
        if pending.is_empty() {
            return Ok(read);
        }
        let how = match while_progressing {
            true => format!("gave no record for {limit:?} before their end"),
            false => format!("did not reach their end in {limit:?}"),
        };
        Err(Error::Other(format!("reading {topic}: partitions {pending:?} {how}")))
    }

    /// Assigns partitions `starts` of `topic`, each from its offset (None: the beginning).
    fn assign(&self, topic: &str, starts: &[(i32, Option<i64>)]) -> Result<()> {
        let mut assignment = TopicPartitionList::new();
        for (partition, start) in starts {
            assignment.add_partition_offset(topic, *partition, start.map(Offset::Offset).unwrap_or(Offset::Beginning))?;
        }
        Ok(self.consumer.assign(&assignment)?)
    }

    /// Every partition of `topic`, each from `start(partition)` (None: the beginning).
    fn every_partition(&self, topic: &str, start: impl Fn(i32) -> Option<i64>) -> Result<Vec<(i32, Option<i64>)>> {
        Ok((0..self.partitions(topic)?).map(|p| (p, start(p))).collect())
    }

    /// Reads partitions `starts` of `topic` from their offsets until every one reached
    /// its end or `deadline` passed; returns how many records were read and the
    /// partitions left.
    fn read_until(
        &self,
        topic: &str,
        starts: &[(i32, Option<i64>)],
        mut deadline: Instant,
        stall: Option<Duration>,
        mut on_record: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(usize, HashSet<i32>)> {
        self.assign(topic, starts)?;
        // One topic at a time: an end-of-partition event names the partition only.
        let mut pending: HashSet<i32> = starts.iter().map(|(p, _)| *p).collect();
        let mut read = 0;
        while !pending.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match self.consumer.poll(remaining.min(Duration::from_millis(200))) {
                None => {}
                Some(Ok(message)) => {
                    on_record(&message);
                    read += 1;
                    if let Some(stall) = stall {
                        deadline = Instant::now() + stall;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    pending.remove(&partition);
                }
                Some(Err(e)) if recovers_by_itself(&e) => tracing::debug!(topic, error = %e, "reading on through a broker hiccup"),
                Some(Err(e)) => {
                    let _ = self.consumer.unassign();
                    return Err(e.into());
                }
            }
        }
        self.consumer.unassign()?;
        Ok((read, pending))
    }

    /// The records of `topic` written since the last call with the same `positions`
    /// (partition → next offset; all of it at first), which it moves forward, reading
    /// for at most `budget`; the flag says whether every partition reached its end.
    pub fn read_new_within(&self, topic: &str, positions: &mut HashMap<i32, i64>, budget: Duration) -> Result<(Vec<Input>, bool)> {
        let mut records = Vec::new();
        let starts = self.every_partition(topic, |p| positions.get(&p).copied())?;
        let (_, pending) = self.read_until(topic, &starts, Instant::now() + budget, None, |m| records.push(Input::from_message(m)))?;
        for record in &records {
            positions.insert(record.partition, record.offset + 1);
        }
        Ok((records, pending.is_empty()))
    }

    /// The end of every partition of `topic` as this reader sees it: with
    /// `read_committed`, the last stable offset; else the log end.
    pub fn ends(&self, topic: &str) -> Result<HashMap<i32, i64>> {
        (0..self.partitions(topic)?).map(|p| Ok((p, self.end(topic, p)?))).collect()
    }

    /// The end of partition `partition` of `topic`, as in [`TopicReader::ends`].
    pub fn end(&self, topic: &str, partition: i32) -> Result<i64> {
        Ok(self.consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?.1)
    }

    /// Names of the topics whose name `matches`.
    pub fn topics_matching(&self, matches: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let metadata = self.consumer.fetch_metadata(None, Duration::from_secs(10))?;
        let mut names: Vec<String> = metadata.topics().iter().map(|t| t.name()).filter(|n| matches(n)).map(str::to_owned).collect();
        names.sort();
        Ok(names)
    }

    /// [`TopicReader::read_new_within`], without saying whether it reached the end.
    pub fn read_new(&self, topic: &str, positions: &mut HashMap<i32, i64>, budget: Duration) -> Result<Vec<Input>> {
        Ok(self.read_new_within(topic, positions, budget)?.0)
    }

    /// The record at `topic/partition/offset`, if a `read_committed` consumer can see it.
    pub fn read_at(&self, topic: &str, partition: i32, offset: i64, timeout: Duration) -> Result<Option<Input>> {
        Ok(self.first_from(topic, partition, offset, timeout)?.filter(|record| record.offset == offset))
    }

    /// The first record a `read_committed` consumer sees at or after `offset` (None at
    /// the end of the partition).
    pub fn first_from(&self, topic: &str, partition: i32, offset: i64, timeout: Duration) -> Result<Option<Input>> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        self.consumer.assign(&assignment)?;
        let deadline = Instant::now() + timeout;
        let found = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let _ = self.consumer.unassign();
                return Err(Error::Other(format!("reading {topic}/{partition} from {offset}: nothing came in {timeout:?}")));
            }
            match self.consumer.poll(remaining.min(Duration::from_millis(200))) {
                Some(Ok(message)) => break Some(Input::from_message(&message)),
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break None,
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) if recovers_by_itself(&e) => tracing::debug!(topic, error = %e, "reading on through a broker hiccup"),
                Some(Err(e)) => {
                    let _ = self.consumer.unassign();
                    return Err(e.into());
                }
                None => {}
            }
        };
        self.consumer.unassign()?;
        Ok(found)
    }

    /// Follows `topic` from `start(partition)` (None: the beginning), calling
    /// `on_record` for each record, for as long as `keep_going` says.
    pub fn follow(
        &self,
        topic: &str,
        start: impl Fn(i32) -> Option<i64>,
        mut on_record: impl FnMut(&BorrowedMessage<'_>),
        keep_going: impl Fn() -> bool,
    ) -> Result<()> {
        self.assign(topic, &self.every_partition(topic, start)?)?;
        while keep_going() {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => on_record(&message),
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => tracing::warn!(topic, error = %e, "following a topic"),
            }
        }
        Ok(())
    }
}
