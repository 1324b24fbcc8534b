//! `quire dlq list|show|replay`: what is in quarantine, and sending it back (the rules
//! and the transaction are `quire_kafka::ops::replay`'s; this prints and paces).

use indicatif::{ProgressBar, ProgressStyle};
use quire_core::records::QuarantineRecord;
use quire_kafka::ops::replay::{select, Filter, Refusal, Replay, ReplayError, ReplaySummary};
use quire_kafka::ops::view::quarantined_block;
use quire_kafka::ops::Operator;
use quire_kafka::{Codec, KafkaArgs};
use serde::Serialize;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// List quarantined records (newest failure last).
    List(ListArgs),
    /// Show one quarantined record, its payload decoded.
    Show(ShowArgs),
    /// Send quarantined blocks back through the pipeline (idempotent).
    Replay(ReplayArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub filter: Filter,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Block id (or topic/partition/offset of an unreadable record).
    pub key: String,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub filter: Filter,
    /// Say what would be replayed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replay at most this many records per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// A quarantine record as `list --json` and `show` print it (payload summarized).
#[derive(Serialize)]
struct View<'a> {
    #[serde(flatten)]
    record: &'a QuarantineRecord,
    payload_bytes: usize,
}

fn view(record: &QuarantineRecord) -> serde_json::Value {
    let mut value = serde_json::to_value(View { record, payload_bytes: record.payload.as_ref().map_or(0, Vec::len) }).expect("JSON");
    value.as_object_mut().expect("object").remove("payload");
    value
}

pub async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Show(args) => show(args).await,
        DlqCommand::Replay(args) => replay(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let codec = Codec::new(&args.kafka.schema_registry_url)?;
    let selected = select(&args.kafka, &codec, &args.filter).await?;
    if args.json {
        for record in &selected {
            println!("{}", view(record));
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<30} {:<14} {:<10} {:<9} {:>3} {:<11} REASON", "KEY", "DATASET", "STAGE", "CLASS", "ATT", "STATUS");
    for r in &selected {
        let reason: String = r.reason.chars().take(80).collect();
        println!(
            "{:<30} {:<14} {:<10} {:<9} {:>3} {:<11} {reason}",
            r.key,
            r.dataset_id.as_deref().unwrap_or("-"),
            r.failed_stage,
            r.error_class,
            r.attempts,
            r.status
        );
    }
    println!("{} record(s)", selected.len());
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let codec = Codec::new(&args.kafka.schema_registry_url)?;
    let all = select(&args.kafka, &codec, &Filter { all: true, ..Filter::default() }).await?;
    let Some(record) = all.into_iter().find(|r| r.key == args.key) else {
        eprintln!("no quarantine record for {:?}", args.key);
        return Ok(ExitCode::from(1));
    };
    let mut value = view(&record);
    let payload = match quarantined_block(&codec, &record).await {
        Some(block) => serde_json::to_value(&block)?,
        None => serde_json::Value::String(String::from_utf8_lossy(record.payload.as_deref().unwrap_or_default()).into_owned()),
    };
    value["payload"] = payload;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    let codec = Codec::new(&args.kafka.schema_registry_url)?;
    let selected = select(&args.kafka, &codec, &args.filter).await?;
    let replay = Replay::read(&args.kafka, &codec, &selected, &args.filter, !args.dry_run).await?;
    let mut summary = ReplaySummary { selected: selected.len(), ..ReplaySummary::default() };
    let operator = if args.dry_run { None } else { Some(Operator::new(&args.kafka, "dlq-replay")?) };
    let progress = if args.quiet || args.dry_run { ProgressBar::hidden() } else { ProgressBar::new(selected.len() as u64) };
    progress.set_style(ProgressStyle::with_template("replaying [{bar:30}] {pos}/{len} {msg}").expect("template").progress_chars("=> "));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    for record in &selected {
        let started = Instant::now();
        progress.inc(1);
        let outcome = match &operator {
            Some(operator) => replay.send_back(operator, record).await,
            None => replay.check(record).map_err(ReplayError::from),
        };
        match outcome {
            Ok(()) if operator.is_none() => {
                println!("would replay {} ({} in {}): {}", record.key, record.error_class, record.failed_stage, record.reason);
                summary.replayed += 1;
            }
            Ok(()) => summary.replayed += 1,
            Err(ReplayError::Refused(Refusal::CompletedSince)) => {
                summary.already_completed += 1;
                progress.suspend(|| println!("skip {}: completed since", record.key));
                continue;
            }
            Err(e) => {
                summary.failed += 1;
                progress.suspend(|| eprintln!("cannot replay {}: {e}", record.key));
            }
        }
        if let Some(rest) = interval.checked_sub(started.elapsed()).filter(|_| operator.is_some()) {
            tokio::time::sleep(rest).await;
        }
    }
    progress.finish_and_clear();
    let verb = if args.dry_run { "would replay" } else { "replayed" };
    println!(
        "{} selected, {verb} {}, {} already completed, {} failed",
        summary.selected, summary.replayed, summary.already_completed, summary.failed
    );
    Ok(if summary.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
