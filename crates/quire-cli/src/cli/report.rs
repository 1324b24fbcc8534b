//! `quire status DATASET` and `quire verify DATASET`: read the topics as a downstream
//! consumer does and account for every block the dataset should have produced. Status
//! adds a progress bar, the ETA at the recent completion rate and each stage's backlog
//! (records behind, age of the oldest unprocessed), once or `--watch`ing until done.
//!
//! Expected blocks are recomputed from the ingest topic with the claimer's own
//! splitting, so the count does not trust any stage's output.

use quire_core::progress::{human_duration, Progress};
use quire_core::records::{now_ms, DatasetSubmission, QuarantineRecord, StateChange, ValidatedResult, QUARANTINED};
use quire_core::BlockState;
use quire_kafka::config::TopicNames;
use quire_kafka::io::reader::TopicReader;
use quire_kafka::stages::claimer::blocks_of;
use quire_kafka::watch::lag::{stage_backlogs, StageBacklog};
use quire_kafka::{Codec, KafkaArgs};
use rdkafka::Message;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Dataset name.
    pub dataset: String,
    /// The claimer's largest block, in characters (to recompute the expected blocks).
    #[arg(long, env = "QUIRE_MAX_BLOCK_CHARS", default_value_t = quire_core::split::DEFAULT_MAX_BLOCK_CHARS)]
    pub max_block_chars: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub report: Args,
    /// Refresh every this many seconds until every block is done.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
}

#[derive(clap::Args, Clone)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub report: Args,
    /// Keep checking for up to this many seconds while blocks are missing.
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
}

/// Where every expected block of a dataset is.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DatasetReport {
    pub dataset: String,
    pub documents: usize,
    pub blocks_expected: usize,
    pub completed_once: usize,
    pub completed_more_than_once: usize,
    /// Blocks waiting in quarantine (not those replayed since).
    pub quarantined: usize,
    /// Blocks whose dataset was canceled before they completed.
    pub canceled: usize,
    /// Records of the dataset quarantined before they became blocks (unreadable, empty).
    pub documents_quarantined: usize,
    pub missing: usize,
    /// Latest audited state of each block, counted by state.
    pub states: BTreeMap<String, usize>,
    /// When each completed block completed, epoch ms (for the rate).
    #[serde(skip)]
    pub completed_at_ms: Vec<i64>,
}

impl DatasetReport {
    pub fn is_sound(&self) -> bool {
        self.missing == 0 && self.completed_more_than_once == 0
    }

    fn print_table(&self) {
        println!("dataset                    {}", self.dataset);
        println!("documents                  {}", self.documents);
        println!("blocks expected            {}", self.blocks_expected);
        println!("completed once             {}", self.completed_once);
        println!("completed more than once   {}", self.completed_more_than_once);
        println!("quarantined                {}", self.quarantined);
        println!("canceled                   {}", self.canceled);
        println!("documents quarantined      {}", self.documents_quarantined);
        println!("missing                    {}", self.missing);
        for (state, count) in &self.states {
            println!("  latest state {state:<12} {count}");
        }
    }
}

const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A record as (key, value).
pub type KeyValue = (Option<String>, Option<Vec<u8>>);

/// Reads all of `topic` as (key, value) pairs.
pub fn read_all(reader: &TopicReader, topic: &str) -> anyhow::Result<Vec<KeyValue>> {
    let mut records = Vec::new();
    reader.read_to_end(topic, |_| None, READ_TIMEOUT, |m| {
        records.push((m.key().map(|k| String::from_utf8_lossy(k).into_owned()), m.payload().map(<[u8]>::to_vec)));
    })?;
    Ok(records)
}

/// The latest audit event of each block whose id is `wanted`, among the events `keep`
/// accepts, from the audit topic's records in order (one block's events share a
/// partition, so their order is the order written). COMPLETED and CANCELED are final:
/// a stale generation's later events do not undo them.
pub async fn latest_changes(
    codec: &Codec,
    events: &[KeyValue],
    wanted: impl Fn(&str) -> bool,
    keep: impl Fn(&StateChange) -> bool,
) -> HashMap<String, StateChange> {
    let mut latest: HashMap<String, StateChange> = HashMap::new();
    for (key, value) in events {
        if !key.as_deref().is_some_and(&wanted) {
            continue;
        }
        let Ok(change) = codec.decode::<StateChange>(value.as_deref()).await else { continue };
        if keep(&change) && !latest.get(&change.block_id).is_some_and(|seen| seen.to_state.is_terminal()) {
            latest.insert(change.block_id.clone(), change);
        }
    }
    latest
}

/// The latest state of each block whose id is `wanted` (see [`latest_changes`]).
pub async fn latest_states(codec: &Codec, events: &[KeyValue], wanted: impl Fn(&str) -> bool) -> HashMap<String, BlockState> {
    latest_changes(codec, events, wanted, |_| true).await.into_iter().map(|(id, change)| (id, change.to_state)).collect()
}

/// The latest quarantine record per key (the compacted topic's view).
pub async fn latest_quarantine(codec: &Codec, records: &[KeyValue]) -> HashMap<String, QuarantineRecord> {
    let mut latest = HashMap::new();
    for (_, value) in records {
        if let Ok(record) = codec.decode::<QuarantineRecord>(value.as_deref()).await {
            latest.insert(record.key.clone(), record);
        }
    }
    latest
}

/// Builds the report for one dataset.
pub async fn dataset_report(kafka: &KafkaArgs, dataset: &str, max_block_chars: usize) -> anyhow::Result<DatasetReport> {
    let names = TopicNames::new(&kafka.topic_prefix);
    let codec = Codec::new(&kafka.schema_registry_url)?;
    let (ingest, completed, quarantine, events) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let reader = TopicReader::new(kafka)?;
        Ok((
            read_all(&reader, &names.ingest())?,
            read_all(&reader, &names.completed())?,
            read_all(&reader, &names.quarantine())?,
            read_all(&reader, &names.events())?,
        ))
    })?;

    let mut documents = HashSet::new();
    let mut expected = HashSet::new();
    for (_, value) in &ingest {
        // Unreadable ingest records are accounted for by the quarantine below.
        let Ok(submission) = codec.decode::<DatasetSubmission>(value.as_deref()).await else { continue };
        if submission.dataset_id != dataset {
            continue;
        }
        if documents.insert((submission.idempotency_key.clone(), submission.document_id.clone())) {
            expected.extend(blocks_of(&submission, max_block_chars, 0).into_iter().map(|b| b.block_id));
        }
    }

    let mut completions: HashMap<&str, usize> = HashMap::new();
    let mut completed_at_ms = Vec::new();
    for (key, value) in &completed {
        if let Some(key) = key.as_deref().filter(|k| expected.contains(*k)) {
            *completions.entry(key).or_default() += 1;
            if let Ok(result) = codec.decode::<ValidatedResult>(value.as_deref()).await {
                completed_at_ms.push(result.completed_at_ms);
            }
        }
    }

    let mut quarantined = HashSet::new();
    let mut documents_quarantined = 0;
    for record in latest_quarantine(&codec, &quarantine).await.into_values() {
        if record.status != QUARANTINED {
            continue;
        }
        match record.block_id {
            Some(block_id) if expected.contains(&block_id) => {
                quarantined.insert(block_id);
            }
            None if record.dataset_id.as_deref() == Some(dataset) => documents_quarantined += 1,
            _ => {}
        }
    }

    let latest = latest_states(&codec, &events, |id| expected.contains(id)).await;
    let mut states = BTreeMap::new();
    for state in latest.values() {
        *states.entry(state.to_string()).or_default() += 1;
    }
    // A completed block counts as completed, whatever a later generation went through.
    let completed_ids: HashSet<&str> = completions.keys().copied().collect();
    let canceled: HashSet<&str> = latest
        .iter()
        .filter(|(id, s)| **s == BlockState::Canceled && !completed_ids.contains(id.as_str()))
        .map(|(id, _)| id.as_str())
        .collect();

    let missing = expected
        .iter()
        .filter(|id| !completed_ids.contains(id.as_str()) && !quarantined.contains(*id) && !canceled.contains(id.as_str()))
        .count();
    Ok(DatasetReport {
        dataset: dataset.to_owned(),
        documents: documents.len(),
        blocks_expected: expected.len(),
        completed_once: completions.values().filter(|&&n| n == 1).count(),
        completed_more_than_once: completions.values().filter(|&&n| n > 1).count(),
        quarantined: quarantined.len(),
        canceled: canceled.len(),
        documents_quarantined,
        missing,
        states,
        completed_at_ms,
    })
}

fn print(report: &DatasetReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        report.print_table();
    }
    Ok(())
}

/// `quire status`: a dataset's report with its progress and the stages' backlogs.
#[derive(Debug, Serialize)]
struct StatusView {
    #[serde(flatten)]
    report: DatasetReport,
    /// Blocks that reached an end: completed, quarantined or canceled.
    done: usize,
    progress_percent: f64,
    rate_per_second: f64,
    eta_seconds: Option<f64>,
    stages: Vec<StageBacklog>,
}

/// Completions within this window before now make the rate.
const RATE_WINDOW: Duration = Duration::from_secs(60);

impl StatusView {
    async fn build(args: &Args) -> anyhow::Result<Self> {
        let report = dataset_report(&args.kafka, &args.dataset, args.max_block_chars).await?;
        let now = now_ms();
        let stages = tokio::task::block_in_place(|| stage_backlogs(&args.kafka, now))?;
        // Completed, quarantined or canceled: every block not missing (a block can be
        // both completed and quarantined, it counts once).
        let done = report.blocks_expected - report.missing;
        let progress = Progress::new(done, report.blocks_expected, &report.completed_at_ms, now, RATE_WINDOW);
        Ok(StatusView {
            done,
            progress_percent: (progress.fraction() * 1000.0).round() / 10.0,
            rate_per_second: progress.rate_per_second,
            eta_seconds: progress.eta.map(|d| d.as_secs_f64()),
            stages,
            report,
        })
    }

    fn is_finished(&self) -> bool {
        self.report.blocks_expected > 0 && self.done >= self.report.blocks_expected
    }

    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        self.report.print_table();
        if self.report.blocks_expected == 0 {
            println!("no blocks expected for dataset {:?} (yet): was it published, under this name?", self.report.dataset);
        }
        let progress = Progress::new(self.done, self.report.blocks_expected, &self.report.completed_at_ms, now_ms(), RATE_WINDOW);
        println!("progress                   {}", progress.bar(30));
        println!("rate                       {:.1} blocks/s", self.rate_per_second);
        let eta = match progress.eta {
            Some(eta) if eta.is_zero() => "done".to_owned(),
            Some(eta) => human_duration(eta),
            None => format!("unknown: no block completed in the last {} s", RATE_WINDOW.as_secs()),
        };
        println!("eta                        {eta}");
        println!("stage backlogs (all datasets)");
        for stage in &self.stages {
            let name = stage.group.rsplit('-').next().unwrap_or(&stage.group);
            match stage.oldest_unprocessed_seconds {
                Some(age) => println!("  {name:<24} {} records behind, oldest {age:.1} s old", stage.records_behind),
                None => println!("  {name:<24} caught up"),
            }
        }
        Ok(())
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let r = &args.report;
    let redraw = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !r.json;
    loop {
        let view = StatusView::build(r).await?;
        if redraw && args.watch.is_some() {
            print!("\x1b[2J\x1b[H");
        }
        view.print(r.json)?;
        match args.watch {
            Some(secs) if !view.is_finished() => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
            _ => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Waits up to `wait` for the dataset to have no missing block, then reports.
pub async fn wait_for_dataset(kafka: &KafkaArgs, dataset: &str, max_block_chars: usize, wait: Duration) -> anyhow::Result<DatasetReport> {
    let deadline = Instant::now() + wait;
    loop {
        let report = dataset_report(kafka, dataset, max_block_chars).await?;
        if (report.missing == 0 && report.blocks_expected > 0) || Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let r = &args.report;
    let report = wait_for_dataset(&r.kafka, &r.dataset, r.max_block_chars, Duration::from_secs(args.wait)).await?;
    print(&report, r.json)?;
    if report.blocks_expected == 0 {
        eprintln!("verify: no blocks expected for dataset {:?}: was it published?", r.dataset);
        return Ok(ExitCode::from(1));
    }
    Ok(if report.is_sound() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
