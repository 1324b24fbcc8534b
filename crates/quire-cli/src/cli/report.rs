//! `quire status DATASET` and `quire verify DATASET`: print where every block the dataset
//! should have produced is (`quire_kafka::ops::report`). Status adds a progress bar, the
//! ETA at the recent completion rate and each stage's backlog (records behind, age of the
//! oldest unprocessed), once or `--watch`ing until done.

use quire_core::progress::{human_duration, Progress};
use quire_core::records::now_ms;
use quire_kafka::ops::report::{dataset_report, wait_for_dataset, DatasetReport};
use quire_kafka::watch::lag::{stage_backlogs, StageBacklog};
use quire_kafka::KafkaArgs;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;

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

fn print_table(report: &DatasetReport) {
    println!("dataset                    {}", report.dataset);
    println!("documents                  {}", report.documents);
    println!("blocks expected            {}", report.blocks_expected);
    println!("completed once             {}", report.completed_once);
    println!("completed more than once   {}", report.completed_more_than_once);
    println!("quarantined                {}", report.quarantined);
    println!("canceled                   {}", report.canceled);
    println!("documents quarantined      {}", report.documents_quarantined);
    println!("missing                    {}", report.missing);
    for (state, count) in &report.states {
        println!("  latest state {state:<12} {count}");
    }
}

fn print(report: &DatasetReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print_table(report);
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
        let done = report.done();
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
        print_table(&self.report);
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
