//! `quire dlq list|show|replay`: what is in quarantine, and sending it back.
//!
//! Reads the compacted quarantine topic (the latest record per block). Replay re-queues
//! each selected block as its next generation, in one transaction with its audit event
//! (`ERROR → QUEUED`, who and with which filter) and the quarantine record's new status
//! `REPLAYED`. A block that completed since is skipped; a record already replayed is not
//! selected again, and even if it were, the validator lets a block into the output once.

use super::redrive::latest_copies;
use super::report::{latest_quarantine, latest_states, read_all};
use indicatif::{ProgressBar, ProgressStyle};
use quire_core::records::{now_ms, Block, InferenceResult, QuarantineRecord, QUARANTINED, REPLAYED};
use quire_core::{BlockState, ErrorClass};
use quire_kafka::ops::Operator;
use quire_kafka::record::OutputRecord;
use quire_kafka::io::reader::TopicReader;
use quire_kafka::{Codec, KafkaArgs};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
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

/// Which quarantine records a command takes.
#[derive(clap::Args, Clone, Default)]
pub struct Filter {
    /// Only this dataset.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Only this error class (transient, resource, model, data, systemic, fatal).
    #[arg(long = "class")]
    pub error_class: Option<String>,
    /// Only failures in this stage (claimer, inference, validator).
    #[arg(long)]
    pub stage: Option<String>,
    /// Only failures at or after this time: epoch ms, or an age such as 30m, 2h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Only failures before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Include records already replayed.
    #[arg(long)]
    pub all: bool,
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

/// A time bound: epoch ms, or an age (`30s`, `30m`, `2h`, `7d`) before now.
fn parse_time(text: &str, now: i64) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = number.parse().map_err(|_| anyhow::anyhow!("{text:?} is neither epoch ms nor an age like 30m"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("{text:?}: unknown unit {unit:?} (use s, m, h or d)"),
    };
    Ok(now - n * unit_ms)
}

impl Filter {
    /// Checks the filter and returns a predicate over quarantine records.
    fn predicate(&self) -> anyhow::Result<impl Fn(&QuarantineRecord) -> bool + '_> {
        let now = now_ms();
        let class = match &self.error_class {
            Some(name) => Some(ErrorClass::parse(name).ok_or_else(|| anyhow::anyhow!("unknown error class {name:?}"))?),
            None => None,
        };
        let since = self.since.as_deref().map(|t| parse_time(t, now)).transpose()?;
        let until = self.until.as_deref().map(|t| parse_time(t, now)).transpose()?;
        Ok(move |r: &QuarantineRecord| {
            (self.all || r.status == QUARANTINED)
                && self.dataset.as_ref().is_none_or(|d| r.dataset_id.as_ref() == Some(d))
                && class.is_none_or(|c| r.error_class == c.as_str())
                && self.stage.as_ref().is_none_or(|s| &r.failed_stage == s)
                && since.is_none_or(|t| r.last_failed_at_ms >= t)
                && until.is_none_or(|t| r.last_failed_at_ms < t)
        })
    }

    /// How the filter reads in the audit trail.
    fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("dataset", &self.dataset),
            ("class", &self.error_class),
            ("stage", &self.stage),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
        .collect();
        if parts.is_empty() {
            "everything".into()
        } else {
            parts.join(" ")
        }
    }
}

/// The selected records, oldest failure first.
async fn select(kafka: &KafkaArgs, codec: &Codec, filter: &Filter) -> anyhow::Result<Vec<QuarantineRecord>> {
    let names = quire_kafka::config::TopicNames::new(&kafka.topic_prefix);
    let records = tokio::task::block_in_place(|| read_all(&TopicReader::new(kafka)?, &names.quarantine()))?;
    let keep = filter.predicate()?;
    let mut selected: Vec<_> = latest_quarantine(codec, &records).await.into_values().filter(|r| keep(r)).collect();
    selected.sort_by_key(|r| (r.last_failed_at_ms, r.key.clone()));
    Ok(selected)
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
    let payload = match decode_block(&codec, &record).await {
        Some(block) => serde_json::to_value(&block)?,
        None => serde_json::Value::String(String::from_utf8_lossy(record.payload.as_deref().unwrap_or_default()).into_owned()),
    };
    value["payload"] = payload;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}

/// The block a quarantined payload holds (a queued block or an inference result's).
async fn decode_block(codec: &Codec, record: &QuarantineRecord) -> Option<Block> {
    let payload = record.payload.as_deref()?;
    if let Ok(block) = codec.decode::<Block>(Some(payload)).await {
        return Some(block);
    }
    codec.decode::<InferenceResult>(Some(payload)).await.ok().map(|r| r.block)
}

/// What replay did with the selected records.
#[derive(Debug, Default, Serialize)]
struct ReplaySummary {
    selected: usize,
    replayed: usize,
    already_completed: usize,
    failed: usize,
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    let codec = Codec::new(&args.kafka.schema_registry_url)?;
    let selected = select(&args.kafka, &codec, &args.filter).await?;
    let names = quire_kafka::config::TopicNames::new(&args.kafka.topic_prefix);
    let (completed, events) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let reader = TopicReader::new(&args.kafka)?;
        Ok((read_all(&reader, &names.completed())?, read_all(&reader, &names.events())?))
    })?;
    let completed: HashSet<String> = completed.into_iter().filter_map(|(k, _)| k).collect();
    let wanted: HashSet<&str> = selected.iter().filter_map(|r| r.block_id.as_deref()).collect();
    let states = latest_states(&codec, &events, |id| wanted.contains(id)).await;
    let copies = if args.dry_run { HashMap::new() } else { latest_copies(&args.kafka, &codec, &wanted).await? };

    let mut summary = ReplaySummary { selected: selected.len(), ..ReplaySummary::default() };
    let operator = if args.dry_run { None } else { Some(Operator::new(&args.kafka, "dlq-replay")?) };
    let progress = if args.quiet || args.dry_run { ProgressBar::hidden() } else { ProgressBar::new(selected.len() as u64) };
    progress.set_style(ProgressStyle::with_template("replaying [{bar:30}] {pos}/{len} {msg}").expect("template").progress_chars("=> "));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let filter = args.filter.describe();
    for record in &selected {
        let started = Instant::now();
        progress.inc(1);
        if record.block_id.as_ref().is_some_and(|id| completed.contains(id)) {
            summary.already_completed += 1;
            println!("skip {}: completed since", record.key);
            continue;
        }
        let Some(operator) = &operator else {
            println!("would replay {} ({} in {}): {}", record.key, record.error_class, record.failed_stage, record.reason);
            summary.replayed += 1;
            continue;
        };
        match replay_one(operator, &codec, record, &states, &copies, &filter).await {
            Ok(()) => summary.replayed += 1,
            Err(e) => {
                summary.failed += 1;
                progress.suspend(|| eprintln!("cannot replay {}: {e:#}", record.key));
            }
        }
        if let Some(rest) = interval.checked_sub(started.elapsed()) {
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

/// Replays one record in one transaction: the block re-queued from ERROR as its next
/// generation (after the newest copy of it anywhere), or, for a record that never became
/// a block, its bytes re-published where they came from; and the quarantine record
/// marked REPLAYED.
async fn replay_one(
    operator: &Operator,
    codec: &Codec,
    record: &QuarantineRecord,
    states: &HashMap<String, BlockState>,
    copies: &HashMap<String, Block>,
    filter: &str,
) -> anyhow::Result<()> {
    let by = format!("{} (filter: {filter})", operator.who);
    let mut records: Vec<OutputRecord> = match &record.block_id {
        Some(id) => {
            let from = states.get(id).copied().unwrap_or(BlockState::Error);
            anyhow::ensure!(from == BlockState::Error, "block {id} is {from}, not ERROR: `quire redrive` moves blocks in other states");
            let block = match copies.get(id) {
                Some(copy) => copy.clone(),
                None => decode_block(codec, record).await.ok_or_else(|| anyhow::anyhow!("its payload is not a block"))?,
            };
            operator.requeue(&block, from, &format!("replayed from quarantine by {by}"), record.trace_id.as_deref()).await?
        }
        None => {
            let payload = record.payload.clone().ok_or_else(|| anyhow::anyhow!("the quarantine record keeps no payload"))?;
            let topic = quire_core::retry::base_topic(&record.original_topic).to_owned();
            vec![OutputRecord { topic, key: record.key.clone(), payload, headers: Vec::new() }]
        }
    };
    let replayed = QuarantineRecord { status: REPLAYED.into(), replayed_at_ms: Some(now_ms()), replayed_by: Some(by), ..record.clone() };
    let names = operator.names();
    records.push(operator.encode(&names.quarantine(), &record.key, &replayed, Vec::new()).await?);
    tokio::task::block_in_place(|| operator.commit(&records))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_epoch_ms_or_ages() {
        assert_eq!(parse_time("1700000000000", 0).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("2h", 10_000_000).unwrap(), 10_000_000 - 7_200_000);
        assert!(parse_time("2 weeks", 0).unwrap_err().to_string().contains("2 weeks"));
        assert!(parse_time("3y", 0).unwrap_err().to_string().contains("unknown unit"));
    }

    #[test]
    fn filters_describe_themselves_and_check_the_class() {
        let filter = Filter { dataset: Some("d1".into()), error_class: Some("transient".into()), ..Filter::default() };
        assert_eq!(filter.describe(), "dataset=d1 class=transient");
        assert_eq!(Filter::default().describe(), "everything");
        let bad = Filter { error_class: Some("oops".into()), ..Filter::default() };
        assert!(bad.predicate().is_err());
    }
}
