//! `quire topics apply [--profile] [--dry-run]`.

use clap::Subcommand;
use quire_kafka::io::topics::{apply, register_schemas, TopicsFile};
use quire_kafka::{Codec, KafkaArgs};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Create missing topics, register schemas, report drift. Idempotent.
    Apply(ApplyArgs),
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Profile of topics.yaml to apply.
    #[arg(long, default_value = "local")]
    pub profile: String,
    /// Topics file (default: the topics.yaml built into this binary).
    #[arg(long)]
    pub file: Option<String>,
    /// Only report what would change.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(command: TopicsCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopicsCommand::Apply(args) => apply_topics(&args).await.map(|_| ExitCode::SUCCESS),
    }
}

/// Applies the topics file and registers the schemas; prints what it did.
pub async fn apply_topics(args: &ApplyArgs) -> anyhow::Result<()> {
    let file = TopicsFile::load(args.file.as_deref())?;
    let desired = file.desired(&args.profile, &args.kafka.topic_prefix, &args.kafka.retry_schedule())?;
    let report = apply(&args.kafka, &desired, args.dry_run).await?;
    let verb = if args.dry_run { "would create" } else { "created" };
    for name in &report.created {
        println!("{verb}: {name}");
    }
    println!("unchanged: {} topic(s)", report.unchanged.len());
    for drift in &report.drift {
        println!("drift: {drift}");
    }
    if !args.dry_run {
        let codec = Codec::new(&args.kafka.schema_registry_url)?;
        let ids = register_schemas(&codec, &desired).await?;
        println!("schemas registered: {}", ids.len());
    }
    Ok(())
}
