//! The pipeline watchdog's eyes on Kafka: every group's committed offsets against its
//! topics' last stable offsets (what a `read_committed` consumer can reach), turned into
//! lag in offsets and seconds and a Burrow-style status per group (`quire_core::lag`).
//! Exported under kafka-lag-exporter's metric names, so existing dashboards read them.
//!
//! Lag counts records, not offsets: each transaction's commit marker takes an offset
//! that no consumer ever receives, so a consumer that read everything a transactional
//! producer wrote commits one offset short of the end. Where the gap is small the
//! watchdog looks whether any record is really there (and remembers the answer until
//! the offsets move), so an idle transactional pipeline reads lag 0, not 1.

use crate::config::{KafkaArgs, TopicNames};
use crate::io::reader::{QuietContext, TopicReader};
use crate::Result;
use quire_core::StageName;
use quire_core::lag::{group_status, LagTable, OffsetSample, PartitionStatus, Window, GROUP_STATUSES};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

use crate::telemetry::names::lag as names;

/// One partition of one group, as last polled.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub earliest_offset: i64,
    pub latest_offset: i64,
    /// None until the group commits on this partition (lag then counts from the start).
    pub committed: Option<i64>,
    /// Records between the committed offset and the last stable offset (a small gap of
    /// commit markers only counts 0).
    pub lag: i64,
    /// NaN while there are too few samples to tell (serialized as null).
    pub lag_seconds: f64,
    pub status: PartitionStatus,
}

/// One group, as last polled.
#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub status: &'static str,
    pub max_lag: i64,
    pub max_lag_seconds: f64,
    pub sum_lag: i64,
    pub throughput_per_second: f64,
    pub partitions: Vec<PartitionLag>,
}

/// Samples groups' lag, keeping the history lag seconds and statuses need.
pub struct LagWatch {
    cluster: String,
    /// Group → the topics it consumes.
    groups: Vec<(String, Vec<String>)>,
    watermarks: BaseConsumer<QuietContext>,
    offsets: HashMap<String, BaseConsumer<QuietContext>>,
    tables: HashMap<(String, i32), LagTable>,
    windows: HashMap<(String, String, i32), Window>,
    window_ms: i64,
    previous_committed: HashMap<String, (i64, i64)>,
    /// Looks whether records lie in a gap (or only commit markers).
    probe: TopicReader,
    /// (topic, partition) → (from, to, whether a record lies in between).
    probed: HashMap<(String, i32), (i64, i64, bool)>,
    /// Topic → (partition count, when fetched).
    partition_counts: HashMap<String, (i32, i64)>,
    /// When the last poll succeeded, epoch seconds (0: never).
    last_success_s: std::cell::Cell<f64>,
}

/// How long a topic's partition count is trusted before its metadata is fetched again.
const METADATA_MAX_AGE_MS: i64 = 60_000;

/// Every stage's consumer group and the topics it consumes.
pub fn pipeline_groups(args: &KafkaArgs) -> Vec<(String, Vec<String>)> {
    let (names, schedule) = (TopicNames::new(&args.topic_prefix), args.retry_schedule());
    StageName::ALL.into_iter().map(|stage| (names.group(stage), names.inputs(stage, &schedule))).collect()
}

/// How far behind a stage is right now, as `quire status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StageBacklog {
    pub group: String,
    /// Records the group has yet to process (the lag, see [`PartitionLag::lag`]).
    pub records_behind: i64,
    /// Age of the oldest record the group has not processed (None: caught up).
    pub oldest_unprocessed_seconds: Option<f64>,
}

/// Each stage's backlog from one lag sample of its group and its oldest unprocessed
/// record. Retry topics are left out: their records wait by design.
pub fn stage_backlogs(args: &KafkaArgs, now_ms: i64) -> Result<Vec<StageBacklog>> {
    let mut watch = LagWatch::new(args, "", pipeline_groups(args), Duration::from_secs(60))?;
    let mut backlogs = Vec::new();
    for group in watch.poll(now_ms)? {
        let mut backlog = StageBacklog { group: group.group, records_behind: 0, oldest_unprocessed_seconds: None };
        for p in group.partitions.iter().filter(|p| p.lag > 0 && quire_core::retry::retry_delay(&p.topic).is_none()) {
            let position = p.committed.unwrap_or(p.earliest_offset).max(p.earliest_offset);
            let Some(oldest) = watch.probe.first_from(&p.topic, p.partition, position, TIMEOUT)? else { continue };
            backlog.records_behind += p.lag;
            let age = (now_ms - oldest.timestamp_ms).max(0) as f64 / 1000.0;
            backlog.oldest_unprocessed_seconds = Some(backlog.oldest_unprocessed_seconds.map_or(age, |a| a.max(age)));
        }
        backlogs.push(backlog);
    }
    Ok(backlogs)
}

/// Gaps up to this many offsets are checked for records (markers only).
const MARKER_SLACK: i64 = 16;

const TIMEOUT: Duration = Duration::from_secs(10);

impl LagWatch {
    pub fn new(args: &KafkaArgs, cluster: &str, groups: Vec<(String, Vec<String>)>, window: Duration) -> Result<Self> {
        let consumer = |group: &str| -> Result<BaseConsumer<QuietContext>> {
            Ok(args
                .client_config()
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .create_with_context(QuietContext)?)
        };
        let watermarks = consumer(&format!("quire-watchdog-{:08x}", rand::random::<u32>()))?;
        let probe = TopicReader::new(args)?;
        // A consumer per group only reads the group's offsets: it never joins the group.
        let offsets = groups.iter().map(|(g, _)| Ok((g.clone(), consumer(g)?))).collect::<Result<_>>()?;
        Ok(LagWatch {
            cluster: cluster.to_owned(),
            groups,
            watermarks,
            offsets,
            tables: HashMap::new(),
            windows: HashMap::new(),
            window_ms: window.as_millis() as i64,
            previous_committed: HashMap::new(),
            probe,
            probed: HashMap::new(),
            partition_counts: HashMap::new(),
            last_success_s: std::cell::Cell::new(0.0),
        })
    }

    /// Whether a `read_committed` consumer would receive any record of `topic/partition`
    /// in `[from, to)`; unsure (a timeout) counts as yes.
    fn has_records(&mut self, topic: &str, partition: i32, from: i64, to: i64) -> Result<bool> {
        let key = (topic.to_owned(), partition);
        if let Some(&(f, t, answer)) = self.probed.get(&key) {
            if (f, t) == (from, to) {
                return Ok(answer);
            }
        }
        // Some(answer) when sure; None (an error, a timeout) is asked again next time.
        let answer = match self.probe.first_from(topic, partition, from, Duration::from_secs(5)) {
            Ok(first) => Some(first.is_some_and(|record| record.offset < to)),
            Err(_) => None,
        };
        if let Some(answer) = answer {
            self.probed.insert(key, (from, to, answer));
        }
        Ok(answer.unwrap_or(true))
    }

    /// How many partitions `topic` has, from metadata fetched at most a minute ago.
    fn partition_count(&mut self, topic: &str, now_ms: i64) -> Result<i32> {
        if let Some(&(count, at)) = self.partition_counts.get(topic) {
            if now_ms - at < METADATA_MAX_AGE_MS {
                return Ok(count);
            }
        }
        let metadata = self.watermarks.fetch_metadata(Some(topic), TIMEOUT)?;
        let count = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len() as i32);
        if count > 0 {
            self.partition_counts.insert(topic.to_owned(), (count, now_ms));
        }
        Ok(count)
    }

    /// Samples every group once at `now_ms`.
    pub fn poll(&mut self, now_ms: i64) -> Result<Vec<GroupLag>> {
        let mut reports = Vec::new();
        for (group, topics) in self.groups.clone() {
            // One group's trouble (a partition without a leader, say) hides no other.
            match self.poll_group(group.clone(), &topics, now_ms) {
                Ok(report) => reports.push(report),
                Err(e) => tracing::error!(group = %group, error = %e, "could not sample this group's lag"),
            }
        }
        if reports.is_empty() && !self.groups.is_empty() {
            return Err(crate::Error::Other("no group could be sampled".into()));
        }
        Ok(reports)
    }

    fn poll_group(&mut self, group: String, topics: &[String], now_ms: i64) -> Result<GroupLag> {
        let mut wanted = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for topic in topics {
            for partition in 0..self.partition_count(topic, now_ms)? {
                let (low, high) = self.watermarks.fetch_watermarks(topic, partition, TIMEOUT)?;
                ends.insert((topic.clone(), partition), (low, high));
                self.tables.entry((topic.clone(), partition)).or_insert_with(|| LagTable::new(120)).record(high, now_ms);
                wanted.add_partition(topic, partition);
            }
        }
        let committed = self.offsets[&group].committed_offsets(wanted, TIMEOUT)?;
        let mut partitions = Vec::new();
        for element in committed.elements() {
            let key = (element.topic().to_owned(), element.partition());
            let (earliest, latest) = ends[&key];
            let committed = match element.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            // A group that never committed reads from the start (auto.offset.reset).
            let position = committed.unwrap_or(earliest);
            let mut lag = (latest - position).max(0);
            if (1..=MARKER_SLACK).contains(&lag) && !self.has_records(&key.0, key.1, position, latest)? {
                lag = 0;
            }
            // A retry topic's records wait their delay by design: only overdue counts.
            let delay = quire_core::retry::retry_delay(&key.0);
            let lag_seconds = match lag {
                0 => 0.0,
                _ => {
                    let behind = self.tables[&key].lag_seconds(position, now_ms);
                    delay.map_or(behind, |d| (behind - d.as_secs_f64()).max(0.0))
                }
            };
            let window = self.windows.entry((group.clone(), key.0.clone(), key.1)).or_insert_with(|| Window::new(self.window_ms));
            if delay.is_none() {
                window.record(OffsetSample { committed: position, lag, at_ms: now_ms });
            }
            partitions.push(PartitionLag {
                topic: key.0,
                partition: key.1,
                earliest_offset: earliest,
                latest_offset: latest,
                committed,
                lag,
                lag_seconds,
                status: window.status(),
            });
        }
        let total_committed: i64 = partitions.iter().filter_map(|p| p.committed).sum();
        let throughput = match self.previous_committed.insert(group.clone(), (total_committed, now_ms)) {
            Some((before, at)) if now_ms > at => ((total_committed - before).max(0) as f64) * 1000.0 / (now_ms - at) as f64,
            _ => 0.0,
        };
        let seconds: Vec<f64> = partitions.iter().map(|p| p.lag_seconds).filter(|s| !s.is_nan()).collect();
        Ok(GroupLag {
            status: group_status(partitions.iter().map(|p| p.status)),
            max_lag: partitions.iter().map(|p| p.lag).max().unwrap_or(0),
            // NaN while no partition with lag can tell its age yet.
            max_lag_seconds: if seconds.is_empty() && partitions.iter().any(|p| p.lag > 0) { f64::NAN } else { seconds.into_iter().fold(0.0, f64::max) },
            sum_lag: partitions.iter().map(|p| p.lag).sum(),
            throughput_per_second: throughput,
            group,
            partitions,
        })
    }

    /// Sets the last-poll gauge again, to the last successful poll: every round, so that
    /// the gauge outlives failing polls (idle gauges are dropped) and the alert can fire.
    pub fn refresh_last_poll(&self) {
        if self.last_success_s.get() > 0.0 {
            metrics::gauge!(names::LAST_POLL, "cluster_name" => self.cluster.clone()).set(self.last_success_s.get());
        }
    }

    /// Sets the metrics of `reports`.
    pub fn export(&self, reports: &[GroupLag]) {
        let cluster = self.cluster.clone();
        self.last_success_s.set(quire_core::records::now_ms() as f64 / 1000.0);
        self.refresh_last_poll();
        for report in reports {
            let group = report.group.clone();
            let labels = [("cluster_name", cluster.clone()), ("group", group.clone())];
            metrics::gauge!(names::GROUP_MAX_LAG, &labels).set(report.max_lag as f64);
            metrics::gauge!(names::GROUP_MAX_LAG_SECONDS, &labels).set(report.max_lag_seconds);
            metrics::gauge!(names::GROUP_SUM_LAG, &labels).set(report.sum_lag as f64);
            metrics::gauge!(names::GROUP_THROUGHPUT, &labels).set(report.throughput_per_second);
            for status in GROUP_STATUSES {
                let value = if status == report.status { 1.0 } else { 0.0 };
                metrics::gauge!(names::GROUP_STATUS, "cluster_name" => cluster.clone(), "group" => group.clone(), "status" => status).set(value);
            }
            let mut topic_sums: HashMap<&str, i64> = HashMap::new();
            for p in &report.partitions {
                *topic_sums.entry(&p.topic).or_default() += p.lag;
                let partition = p.partition.to_string();
                let topic_labels = [("cluster_name", cluster.clone()), ("topic", p.topic.clone()), ("partition", partition.clone())];
                metrics::gauge!(names::PARTITION_LATEST_OFFSET, &topic_labels).set(p.latest_offset as f64);
                metrics::gauge!(names::PARTITION_EARLIEST_OFFSET, &topic_labels).set(p.earliest_offset as f64);
                let Some(committed) = p.committed else { continue };
                let labels = [
                    ("cluster_name", cluster.clone()),
                    ("group", group.clone()),
                    ("topic", p.topic.clone()),
                    ("partition", partition),
                ];
                metrics::gauge!(names::GROUP_LAG, &labels).set(p.lag as f64);
                metrics::gauge!(names::GROUP_LAG_SECONDS, &labels).set(p.lag_seconds);
                metrics::gauge!(names::GROUP_OFFSET, &labels).set(committed as f64);
            }
            for (topic, sum) in topic_sums {
                let labels = [("cluster_name", cluster.clone()), ("group", group.clone()), ("topic", topic.to_owned())];
                metrics::gauge!(names::GROUP_TOPIC_SUM_LAG, &labels).set(sum as f64);
            }
        }
    }
}
