//! `quire bench`: measures the production line. Starts the local stack and the four
//! services (inference on the `noop` engine unless told otherwise, so the figures are
//! Quire's own cost, not a model's), publishes a synthetic dataset, waits for every
//! block, and prints throughput and end-to-end latency percentiles. Speed is measured
//! here, never asserted by tests; `scripts/bench.sh` runs it on a release build.

use super::demo::{read_values, LocalPipeline};
use super::publish::{publish, submissions, Document};
use super::report::wait_for_dataset;
use quire_core::records::ValidatedResult;
use quire_kafka::config::TopicNames;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Documents in the synthetic dataset.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub documents: u32,
    /// Paragraphs per document (one block each).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub paragraphs: u32,
    /// Inference engine: `noop` measures Quire alone, `language-id` adds lingua.
    #[arg(long, default_value = "noop")]
    pub engine: String,
    /// `transactional` or `idempotent`.
    #[arg(long, default_value = "transactional")]
    pub delivery_mode: String,
    /// Directory for the stack and the services' logs.
    #[arg(long, default_value = ".stack/bench")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 9092)]
    pub broker_port: u16,
    #[arg(long, default_value_t = 8081)]
    pub registry_port: u16,
    /// Longest to wait for the dataset, in seconds.
    #[arg(long, default_value_t = 1_800)]
    pub timeout: u64,
}

const SENTENCES: [&str; 4] = [
    "The production line splits every document into blocks and runs each through its engines.",
    "La chaîne de production découpe chaque document en blocs et les confie à ses moteurs.",
    "Die Fertigungsstraße zerlegt jedes Dokument in Blöcke und schickt sie durch ihre Engines.",
    "La línea de producción divide cada documento en bloques y los pasa por sus motores.",
];

/// A synthetic dataset: `documents` documents of `paragraphs` paragraphs each, every
/// paragraph more than half a block long, so that each is a block of its own.
fn documents(documents: usize, paragraphs: usize) -> Vec<Document> {
    let paragraph = |d: usize, p: usize| {
        let sentence = SENTENCES[(d + p) % SENTENCES.len()];
        format!("{} ({d}.{p})", [sentence; 4].join(" "))
    };
    (0..documents)
        .map(|d| Document {
            id: format!("bench-{d:06}"),
            text: (0..paragraphs).map(|p| paragraph(d, p)).collect::<Vec<_>>().join("\n\n"),
            source_language: None,
        })
        .collect()
}

/// The `q` quantile (0..=1) of `sorted`, nearest rank.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    match sorted.len() {
        0 => 0,
        n => sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = [("QUIRE_ENGINE", args.engine.as_str()), ("QUIRE_DELIVERY_MODE", args.delivery_mode.as_str())];
    let mut pipeline = LocalPipeline::start(&args.dir, args.broker_port, args.registry_port, &env).await?;
    let kafka = pipeline.kafka.clone();
    let outcome = async {
        let publish_args = super::publish::Args {
            kafka: kafka.clone(),
            path: pipeline.dir.join("bench.jsonl"),
            dataset: Some(format!("bench-{:08x}", rand::random::<u32>())),
            idempotency_key: None,
            task: "language-id".into(),
            target_language: None,
            quiet: true,
        };
        let records = submissions(&publish_args, &documents(args.documents as usize, args.paragraphs as usize))?;
        let dataset = records[0].dataset_id.clone();
        let started = Instant::now();
        publish(&kafka, &records, true).await?;
        let published = started.elapsed();
        let report = wait_for_dataset(&kafka, &dataset, quire_core::split::DEFAULT_MAX_BLOCK_CHARS, Duration::from_secs(args.timeout)).await?;
        let waited = started.elapsed();
        anyhow::ensure!(report.is_sound() && report.quarantined == 0, "the benchmark dataset did not complete cleanly: {report:?}");

        let submitted: HashMap<&str, i64> = records.iter().map(|r| (r.document_id.as_str(), r.submitted_at_ms)).collect();
        let completed: Vec<ValidatedResult> = read_values(&kafka, &TopicNames::new(&kafka.topic_prefix).completed()).await?;
        let mut latencies: Vec<i64> = completed
            .iter()
            .filter(|r| r.dataset_id == dataset)
            .filter_map(|r| Some(r.completed_at_ms - submitted.get(r.document_id.as_str())?))
            .collect();
        latencies.sort_unstable();
        let first = records.iter().map(|r| r.submitted_at_ms).min().unwrap_or_default();
        let last = completed.iter().filter(|r| r.dataset_id == dataset).map(|r| r.completed_at_ms).max().unwrap_or(first);
        let span = Duration::from_millis((last - first).max(1) as u64);
        let blocks = report.blocks_expected;
        println!();
        println!("quire bench: {} documents, {blocks} blocks, engine {}, {} delivery", records.len(), args.engine, args.delivery_mode);
        println!("publish              {:>10.0} documents/s ({:.2} s)", records.len() as f64 / published.as_secs_f64(), published.as_secs_f64());
        println!("pipeline             {:>10.0} blocks/s (first submitted → last completed: {:.2} s)", blocks as f64 / span.as_secs_f64(), span.as_secs_f64());
        println!("wall clock           {:>10.2} s (publish → verified)", waited.as_secs_f64());
        for (name, q) in [("latency p50", 0.5), ("latency p95", 0.95), ("latency p99", 0.99), ("latency max", 1.0)] {
            println!("{name:<20} {:>10} ms (document submitted → block completed)", quantile(&latencies, q));
        }
        anyhow::Ok(())
    }
    .await;
    pipeline.stop();
    outcome?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let sorted: Vec<i64> = (1..=100).collect();
        assert_eq!((quantile(&sorted, 0.5), quantile(&sorted, 0.95), quantile(&sorted, 1.0)), (50, 95, 100));
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn synthetic_documents_are_distinct_and_one_block_per_paragraph() {
        let docs = documents(3, 2);
        assert_eq!(docs.len(), 3);
        for doc in &docs {
            assert_eq!(quire_core::split::split_blocks(&doc.text, quire_core::split::DEFAULT_MAX_BLOCK_CHARS).len(), 2, "{}", doc.text);
        }
        assert_ne!(docs[0].text, docs[1].text);
    }
}
