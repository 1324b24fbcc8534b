//! Heartbeats: every stage instance says, every interval, that it is alive and what it
//! holds (partitions, last commit) on the compacted instances topic, and says goodbye
//! (`STOPPED`) when it shuts down cleanly. The watchdog reports the silent ones dead.
//!
//! Heartbeats go through a plain idempotent producer of their own, outside the stage's
//! transactions: they must keep flowing while a batch is open, and losing one is harmless.

use crate::config::{KafkaArgs, TopicNames};
use crate::{Codec, Result};
use quire_core::records::{now_ms, InstanceHeartbeat, RUNNING, STOPPED};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What an instance holds, kept up to date by the processing loop.
#[derive(Debug, Clone, Default)]
pub struct InstanceStatus {
    inner: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    partitions: Vec<String>,
    last_commit_at_ms: Option<i64>,
}

impl InstanceStatus {
    /// Notes the consumer's whole assignment.
    pub fn set_assignment(&self, assignment: &TopicPartitionList) {
        let mut partitions: Vec<String> = assignment.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
        partitions.sort();
        self.inner.lock().expect("instance status lock").partitions = partitions;
    }

    /// Notes a committed batch.
    pub fn committed(&self) {
        self.inner.lock().expect("instance status lock").last_commit_at_ms = Some(now_ms());
    }

    fn snapshot(&self) -> (Vec<String>, Option<i64>) {
        let held = self.inner.lock().expect("instance status lock");
        (held.partitions.clone(), held.last_commit_at_ms)
    }
}

/// Sends one instance's heartbeats.
pub struct Heartbeats {
    producer: BaseProducer,
    codec: Codec,
    topic: String,
    template: InstanceHeartbeat,
    status: InstanceStatus,
}

const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl Heartbeats {
    pub fn new(args: &KafkaArgs, service: &str, status: InstanceStatus) -> Result<Self> {
        let producer: BaseProducer = args.client_config().set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "0").create()?;
        let template = InstanceHeartbeat {
            instance_id: args.instance_id.clone(),
            service: service.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            host: host_name(),
            pid: std::process::id() as i32,
            started_at_ms: now_ms(),
            sent_at_ms: 0,
            interval_ms: args.heartbeat_interval_ms as i64,
            assigned_partitions: Vec::new(),
            last_commit_at_ms: None,
            status: RUNNING.into(),
        };
        Ok(Heartbeats { producer, codec: Codec::new(&args.schema_registry_url)?, topic: TopicNames::new(&args.topic_prefix).instances(), template, status })
    }

    /// Sends one heartbeat with `status`.
    async fn send(&self, status: &str) -> Result<()> {
        let (assigned_partitions, last_commit_at_ms) = self.status.snapshot();
        let heartbeat = InstanceHeartbeat { sent_at_ms: now_ms(), assigned_partitions, last_commit_at_ms, status: status.to_owned(), ..self.template.clone() };
        let payload = self.codec.encode(&self.topic, &heartbeat).await?;
        let key = heartbeat.key();
        self.producer.send(BaseRecord::to(&self.topic).key(&key).payload(&payload)).map_err(|(e, _)| crate::Error::Kafka(e))?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Heartbeats every `interval` until `until` is cancelled.
    pub fn spawn(self: Arc<Self>, interval: Duration, until: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = until.cancelled() => break,
                    _ = ticker.tick() => {
                        if let Err(e) = self.send(RUNNING).await {
                            tracing::warn!(error = %e, "could not send a heartbeat");
                        }
                    }
                }
            }
        })
    }

    /// The last heartbeat of a clean shutdown (`STOPPED`), delivered before returning.
    pub async fn goodbye(&self) {
        if let Err(e) = self.send(STOPPED).await {
            tracing::warn!(error = %e, "could not send the last heartbeat");
        }
        if let Err(e) = tokio::task::block_in_place(|| self.producer.flush(FLUSH_TIMEOUT)) {
            tracing::warn!(error = %e, "the last heartbeat was not delivered");
        }
    }
}

/// This machine's (or container's) host name.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}
