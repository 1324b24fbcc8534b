//! `quire publish FILE|DIR`: reads a dataset (JSONL, one document per line, or a folder
//! of `.txt` files), checks all of it, then publishes one record per document to the
//! ingest topic, keyed by the submission's idempotency key.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use quire_core::ids;
use quire_core::records::{now_ms, DatasetSubmission};
use quire_kafka::io::codec::schema_text;
use quire_kafka::config::TopicNames;
use quire_kafka::{Codec, KafkaArgs};
use quire_kafka::record::headers;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::collections::VecDeque;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// A JSONL file (`{"id": ..., "text": ..., "source_language"?: ...}` per line) or a
    /// folder of `.txt` files.
    pub path: PathBuf,
    /// Dataset name (default: the file or folder name without extension).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Idempotency key (default: a hash of the documents' ids and texts).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Task to run on the blocks.
    #[arg(long, default_value = "language-id")]
    pub task: String,
    /// Target language, for tasks that produce one.
    #[arg(long)]
    pub target_language: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// One document of a dataset file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub source_language: Option<String>,
}

/// Reads a dataset; an error names the file and line of the first bad document.
pub fn read_dataset(path: &Path) -> anyhow::Result<Vec<Document>> {
    let mut documents = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("reading folder {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|file| {
                let text = std::fs::read_to_string(&file).with_context(|| format!("{} is not UTF-8 text", file.display()))?;
                let id = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                Ok(Document { id, text, source_language: None })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str::<Document>(line).with_context(|| format!("{} line {}: not a document", path.display(), n + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if documents.is_empty() {
        bail!("{} holds no documents", path.display());
    }
    documents.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(pair) = documents.windows(2).find(|w| w[0].id == w[1].id) {
        bail!("{}: document id {:?} appears more than once", path.display(), pair[0].id);
    }
    Ok(documents)
}

/// The records `publish` sends for a dataset.
pub fn submissions(args: &Args, documents: &[Document]) -> anyhow::Result<Vec<DatasetSubmission>> {
    let dataset_id = match &args.dataset {
        Some(name) => name.clone(),
        None => args.path.file_stem().map(|s| s.to_string_lossy().into_owned()).context("cannot name the dataset: pass --dataset")?,
    };
    let key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(|| {
            let scope = format!("{dataset_id}|{}|{}", args.task, args.target_language.as_deref().unwrap_or_default());
            ids::content_key(&scope, documents.iter().map(|d| (d.id.as_str(), d.text.as_str())))
        });
    let request_id = format!("req-{:016x}", rand::random::<u64>());
    let now = now_ms();
    Ok(documents
        .iter()
        .enumerate()
        .map(|(index, doc)| DatasetSubmission {
            dataset_id: dataset_id.clone(),
            document_id: doc.id.clone(),
            idempotency_key: key.clone(),
            document_index: index as i32,
            document_count: documents.len() as i32,
            text: doc.text.clone(),
            source_language: doc.source_language.clone(),
            target_language: args.target_language.clone(),
            task: args.task.clone(),
            request_id: request_id.clone(),
            submitted_at_ms: now,
        })
        .collect())
}

/// Publishes the records as one trace (W3C `traceparent` on every record); returns how
/// many were acknowledged and the trace id.
pub async fn publish(kafka: &KafkaArgs, records: &[DatasetSubmission], quiet: bool) -> anyhow::Result<(usize, String)> {
    send_all(kafka, records, quiet, None).await.map(|(sent, trace_id, _)| (sent, trace_id))
}

/// Publishes the records at `per_second`, each stamped `submitted_at_ms` as it is sent
/// (a benchmark's paced load).
pub async fn publish_paced(kafka: &KafkaArgs, records: &mut [DatasetSubmission], per_second: f64) -> anyhow::Result<()> {
    let (_, _, stamps) = send_all(kafka, records, true, Some(per_second)).await?;
    for (record, stamp) in records.iter_mut().zip(stamps) {
        record.submitted_at_ms = stamp;
    }
    Ok(())
}

/// Sends `records` (at `per_second`, else as fast as the window allows); returns how
/// many were acknowledged, the trace id and when each was submitted.
async fn send_all(kafka: &KafkaArgs, records: &[DatasetSubmission], quiet: bool, per_second: Option<f64>) -> anyhow::Result<(usize, String, Vec<i64>)> {
    let topic = TopicNames::new(&kafka.topic_prefix).ingest();
    let (traceparent, _span) = quire_kafka::telemetry::otel::publish_span(&topic);
    let codec = Codec::new(&kafka.schema_registry_url)?;
    codec.register(&topic, schema_text("DatasetSubmission")?).await?;
    let producer: FutureProducer = kafka.client_config().set("enable.idempotence", "true").set("acks", "all").create()?;
    let progress = if quiet { ProgressBar::hidden() } else { ProgressBar::new(records.len() as u64) };
    progress.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} documents").expect("template").progress_chars("=> "));
    progress.set_message(format!("publishing to {topic}"));
    let mut window = SendWindow { in_flight: VecDeque::with_capacity(PUBLISH_WINDOW), acknowledged: 0, progress: &progress };
    let started = tokio::time::Instant::now();
    let mut stamps = Vec::with_capacity(records.len());
    for (n, record) in records.iter().enumerate() {
        let stamped;
        let record = match per_second {
            Some(rate) => {
                tokio::time::sleep_until(started + Duration::from_secs_f64(n as f64 / rate)).await;
                stamped = DatasetSubmission { submitted_at_ms: quire_core::records::now_ms(), ..record.clone() };
                &stamped
            }
            None => record,
        };
        stamps.push(record.submitted_at_ms);
        let payload = codec.encode(&topic, record).await?;
        let trace = OwnedHeaders::new().insert(Header { key: headers::TRACEPARENT, value: Some(&traceparent) });
        let mut outgoing = FutureRecord::to(&topic).key(&record.idempotency_key).payload(&payload).headers(trace);
        loop {
            if window.in_flight.len() >= PUBLISH_WINDOW {
                window.settle_oldest().await?;
            }
            match producer.send_result(outgoing) {
                Ok(delivery) => {
                    window.in_flight.push_back((records[n].document_id.as_str(), delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    outgoing = returned;
                    if window.in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    window.settle_oldest().await?;
                }
                Err((e, _)) => bail!("publishing document {}: {e}", record.document_id),
            }
        }
    }
    while !window.in_flight.is_empty() {
        window.settle_oldest().await?;
    }
    let sent = window.acknowledged;
    producer.flush(Duration::from_secs(30))?;
    progress.finish_and_clear();
    let trace_id = traceparent.split('-').nth(1).unwrap_or_default().to_owned();
    Ok((sent, trace_id, stamps))
}

/// How many documents `publish` keeps in flight before it waits for the oldest.
const PUBLISH_WINDOW: usize = 1_000;

/// Sends in flight, oldest first. Waiting for each acknowledgement before the next send
/// would cost one round trip per document; the idempotent producer keeps their order
/// per partition either way.
struct SendWindow<'a> {
    in_flight: VecDeque<(&'a str, DeliveryFuture)>,
    acknowledged: usize,
    progress: &'a ProgressBar,
}

impl SendWindow<'_> {
    /// Waits for the oldest send, if any; an error names its document.
    async fn settle_oldest(&mut self) -> anyhow::Result<()> {
        let Some((document_id, delivery)) = self.in_flight.pop_front() else { return Ok(()) };
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => bail!("publishing document {document_id}: {e}"),
            Err(_) => bail!("publishing document {document_id}: the producer dropped it unacknowledged"),
        }
        self.acknowledged += 1;
        self.progress.inc(1);
        Ok(())
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let documents = read_dataset(&args.path)?;
    let records = submissions(&args, &documents)?;
    let (sent, trace_id) = publish(&args.kafka, &records, args.quiet).await?;
    let first = &records[0];
    println!("dataset:         {}", first.dataset_id);
    println!("documents:       {sent}");
    println!("idempotency key: {}", first.idempotency_key);
    println!("request id:      {}", first.request_id);
    println!("trace id:        {trace_id}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("quire-publish-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("d.jsonl");
        std::fs::write(&file, "{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"b\"}\n").unwrap();
        let err = format!("{:#}", read_dataset(&file).unwrap_err());
        assert!(err.contains("line 2") && err.contains("text"), "{err}");
        std::fs::write(&file, "{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"a\",\"text\":\"y\"}\n").unwrap();
        assert!(format!("{:#}", read_dataset(&file).unwrap_err()).contains("more than once"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
