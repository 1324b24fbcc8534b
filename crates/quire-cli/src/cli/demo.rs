//! `quire demo`: the whole production line on a fresh machine. Starts the stack, applies
//! the topics, starts the four services, publishes the bundled multilingual sample,
//! waits for every block to complete or be quarantined, prints a summary, and stops it
//! all again.

use super::publish::{publish, read_dataset, submissions};
use super::stack::{self, DirArgs, Storage, UpArgs};
use super::topics::{apply_topics, ApplyArgs};
use anyhow::{bail, Context};
use quire_core::records::{QuarantineRecord, ValidatedResult};
use quire_kafka::config::TopicNames;
use quire_kafka::ops::report::{wait_for_dataset, DatasetReport};
use quire_kafka::ops::view::read_topics;
use quire_kafka::{Codec, KafkaArgs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

/// The services, in pipeline order.
pub const SERVICES: [&str; 4] = ["quire-claimer", "quire-inference", "quire-validator", "quire-quarantine"];

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Dataset to run (default: the bundled samples/multilingual.jsonl).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Directory for the stack and the services' logs.
    #[arg(long, default_value = ".stack/demo")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 9092)]
    pub broker_port: u16,
    #[arg(long, default_value_t = 8081)]
    pub registry_port: u16,
    /// Longest to wait for the dataset, in seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Leave the stack and services running afterwards.
    #[arg(long)]
    pub keep: bool,
}

const SAMPLE: &str = include_str!("../../../../samples/multilingual.jsonl");

/// Starts a service binary that sits beside this one with `env`, logging to
/// `<dir>/<name>.log`.
fn start_service(name: &str, kafka: &KafkaArgs, dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?.parent().context("binary directory")?.join(name);
    if !exe.is_file() {
        bail!("{} is missing: build the workspace first (cargo build --workspace)", exe.display());
    }
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Command::new(&exe)
        .env("QUIRE_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env("QUIRE_SCHEMA_REGISTRY_URL", &kafka.schema_registry_url)
        .env("QUIRE_TOPIC_PREFIX", &kafka.topic_prefix)
        .env("QUIRE_STATE_DIR", dir.join("state"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// A local stack with the four services, started in `dir`.
pub struct LocalPipeline {
    pub kafka: KafkaArgs,
    pub dir: PathBuf,
    children: Vec<Child>,
}

impl LocalPipeline {
    /// Starts the stack, applies the topics and starts the services with `env`.
    pub async fn start(dir: &Path, broker_port: u16, registry_port: u16, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut pipeline = Self::start_stack(dir, broker_port, registry_port).await?;
        match pipeline.start_services(&SERVICES, env) {
            Ok(()) => Ok(pipeline),
            Err(e) => {
                pipeline.stop();
                Err(e)
            }
        }
    }

    /// Starts the stack and applies the topics, with no service running yet.
    pub async fn start_stack(dir: &Path, broker_port: u16, registry_port: u16) -> anyhow::Result<Self> {
        let up = UpArgs { dir: DirArgs { dir: dir.to_owned() }, storage: Storage::Memory, broker_port, registry_port };
        println!("starting the local stack (broker + schema registry) in {}", dir.display());
        let state = stack::up(&up).await?;
        let kafka = KafkaArgs {
            bootstrap_servers: state.bootstrap_servers.clone(),
            schema_registry_url: state.schema_registry_url.clone(),
            ..KafkaArgs::default()
        };
        let mut pipeline = LocalPipeline { kafka, dir: dir.canonicalize()?, children: Vec::new() };
        if let Err(e) = apply_topics(&ApplyArgs { kafka: pipeline.kafka.clone(), profile: "local".into(), file: None, dry_run: false }).await {
            pipeline.stop();
            return Err(e);
        }
        Ok(pipeline)
    }

    /// Starts the services `names` with `env`.
    pub fn start_services(&mut self, names: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
        for name in names {
            self.children.push(start_service(name, &self.kafka, &self.dir, env)?);
            println!("started {name} (log: {})", self.dir.join(format!("{name}.log")).display());
        }
        Ok(())
    }

    /// The process ids of the running services, in the order they were started.
    pub fn service_ids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Stops the services (SIGTERM, then SIGKILL), leaving the stack up.
    pub fn stop_services(&mut self) {
        for child in &mut self.children {
            stack::stop_process(child.id(), Duration::from_secs(15));
            let _ = child.wait();
        }
        self.children.clear();
    }

    /// Stops the services and the stack.
    pub fn stop(&mut self) {
        self.stop_services();
        if let Err(e) = stack::down(&self.dir) {
            eprintln!("stopping the stack: {e:#}");
        }
    }
}

/// Decoded values of every record on `topic`.
pub async fn read_values<T: serde::de::DeserializeOwned>(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<Vec<T>> {
    let codec = Codec::new(&kafka.schema_registry_url)?;
    let records = read_topics(kafka, &[topic.to_owned()])?.remove(0);
    let mut values = Vec::with_capacity(records.len());
    for (_, payload) in records {
        values.push(codec.decode(payload.as_deref()).await?);
    }
    Ok(values)
}

async fn labels(kafka: &KafkaArgs, dataset: &str) -> anyhow::Result<BTreeMap<String, usize>> {
    let completed: Vec<ValidatedResult> = read_values(kafka, &TopicNames::new(&kafka.topic_prefix).completed()).await?;
    let mut labels = BTreeMap::new();
    for result in completed.into_iter().filter(|r| r.dataset_id == dataset) {
        *labels.entry(result.label).or_default() += 1;
    }
    Ok(labels)
}

async fn quarantined(kafka: &KafkaArgs, dataset: &str) -> anyhow::Result<Vec<QuarantineRecord>> {
    let records: Vec<QuarantineRecord> = read_values(kafka, &TopicNames::new(&kafka.topic_prefix).quarantine()).await?;
    Ok(records.into_iter().filter(|r| r.dataset_id.as_deref() == Some(dataset)).collect())
}

fn print_summary(report: &DatasetReport, labels: &BTreeMap<String, usize>) {
    println!();
    println!("┌──────────────────────────────┬────────┐");
    println!("│ {:<28} │ {:>6} │", format!("dataset {}", report.dataset), "");
    println!("├──────────────────────────────┼────────┤");
    let rows = [
        ("documents", report.documents),
        ("blocks expected", report.blocks_expected),
        ("completed once", report.completed_once),
        ("completed more than once", report.completed_more_than_once),
        ("quarantined", report.quarantined),
        ("missing", report.missing),
    ];
    for (name, value) in rows {
        println!("│ {name:<28} │ {value:>6} │");
    }
    println!("├──────────────────────────────┼────────┤");
    for (label, count) in labels {
        println!("│ {:<28} │ {count:>6} │", format!("language {label}"));
    }
    println!("└──────────────────────────────┴────────┘");
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut pipeline = LocalPipeline::start(&args.dir, args.broker_port, args.registry_port, &[]).await?;
    let kafka = pipeline.kafka.clone();
    let outcome = async {
        let (path, dataset_name) = match &args.dataset {
            Some(path) => (path.clone(), None),
            None => {
                let path = pipeline.dir.join("multilingual.jsonl");
                std::fs::write(&path, SAMPLE)?;
                (path, Some("multilingual-sample".to_owned()))
            }
        };
        let documents = read_dataset(&path)?;
        let publish_args = super::publish::Args {
            kafka: kafka.clone(),
            path,
            dataset: dataset_name,
            idempotency_key: None,
            task: "language-id".into(),
            target_language: None,
            quiet: false,
        };
        let records = submissions(&publish_args, &documents)?;
        let dataset = records[0].dataset_id.clone();
        publish(&kafka, &records, false).await?;
        println!("published {} documents as dataset {dataset}; waiting for the pipeline…", records.len());
        let report = wait_for_dataset(&kafka, &dataset, quire_core::split::DEFAULT_MAX_BLOCK_CHARS, Duration::from_secs(args.timeout)).await?;
        print_summary(&report, &labels(&kafka, &dataset).await?);
        for record in quarantined(&kafka, &dataset).await? {
            println!("quarantined {} ({} in {}): {}", record.key, record.error_class, record.failed_stage, record.reason);
        }
        anyhow::Ok(report)
    }
    .await;
    if !args.keep {
        pipeline.stop();
    }
    let report = outcome?;
    Ok(if report.is_sound() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
