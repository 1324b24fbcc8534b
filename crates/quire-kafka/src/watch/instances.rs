//! The instance watchdog on Kafka: follows the instances topic, judges every instance
//! (`quire_core::instances`), counts them per service and liveness at `/metrics`, and
//! logs an instance going dead with the partitions it held, and coming back.

use crate::config::{KafkaArgs, TopicNames};
use crate::io::reader::TopicReader;
use crate::{Codec, Result};
use quire_core::instances::{InstanceReport, InstanceTable, Liveness};
use quire_core::records::InstanceHeartbeat;
use quire_core::StageName;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::telemetry::names::instances as names;

const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct InstanceWatch {
    table: InstanceTable,
    reader: TopicReader,
    codec: Codec,
    topic: String,
    positions: HashMap<i32, i64>,
    ttl: Duration,
    forget_after: Duration,
    /// Liveness last reported per instance key, to log changes only.
    last: HashMap<String, Liveness>,
    /// Whether the first read (the heartbeats from before the watchdog started) is done.
    caught_up: bool,
}

impl InstanceWatch {
    pub fn new(args: &KafkaArgs, ttl: Duration, forget_after: Duration) -> Result<Self> {
        Ok(InstanceWatch {
            table: InstanceTable::default(),
            reader: TopicReader::new(args)?,
            codec: Codec::new(&args.schema_registry_url)?,
            topic: TopicNames::new(&args.topic_prefix).instances(),
            positions: HashMap::new(),
            ttl,
            forget_after,
            last: HashMap::new(),
            caught_up: false,
        })
    }

    /// Reads the heartbeats sent since the last call and judges every instance.
    pub async fn poll(&mut self, now_ms: i64) -> Result<Vec<InstanceReport>> {
        let records = tokio::task::block_in_place(|| self.reader.read_new(&self.topic, &mut self.positions, READ_TIMEOUT))?;
        for record in records {
            match self.codec.decode::<InstanceHeartbeat>(record.payload.as_deref()).await {
                // What the first read finds was heard before the watchdog started: at
                // the latest when sent.
                Ok(heartbeat) => {
                    let heard_at = if self.caught_up { now_ms } else { heartbeat.sent_at_ms.min(now_ms) };
                    self.table.on_heartbeat(heartbeat, heard_at);
                }
                Err(e) => tracing::warn!(topic = %record.topic, offset = record.offset, error = %e, "unreadable heartbeat skipped"),
            }
        }
        self.caught_up = true;
        let reports = self.table.judge(now_ms, self.ttl, self.forget_after);
        for report in &reports {
            let before = self.last.insert(report.key(), report.liveness);
            if before == Some(report.liveness) {
                continue;
            }
            match report.liveness {
                Liveness::Dead => tracing::error!(
                    service = %report.service, instance_id = %report.instance_id, host = %report.host, silent_ms = report.silent_ms,
                    partitions = ?report.assigned_partitions, last_commit_at_ms = report.last_commit_at_ms, "instance dead"
                ),
                liveness => tracing::info!(service = %report.service, instance_id = %report.instance_id, host = %report.host, liveness = liveness.as_str(), "instance liveness changed"),
            }
        }
        let reported: HashSet<String> = reports.iter().map(InstanceReport::key).collect();
        self.last.retain(|key, _| reported.contains(key));
        export(&reports);
        Ok(reports)
    }
}

/// Sets the instance counts, 0 where none, by service (a name no Quire service has
/// counts as `other`: heartbeats are anyone's to write, label values are not).
fn export(reports: &[InstanceReport]) {
    // The services that heartbeat: the stages.
    let service_of = |r: &InstanceReport| StageName::parse(&r.service).map_or("other", StageName::as_str);
    for service in StageName::ALL.map(StageName::as_str).into_iter().chain(["other"]) {
        for liveness in Liveness::ALL {
            let count = reports.iter().filter(|r| service_of(r) == service && r.liveness == liveness).count();
            metrics::gauge!(names::INSTANCES, "service" => service, "liveness" => liveness.as_str()).set(count as f64);
        }
    }
}
