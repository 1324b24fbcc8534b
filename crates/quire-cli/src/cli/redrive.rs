//! `quire redrive BLOCK…`: puts stuck or failed blocks back on the queue, one
//! transaction each (the rules are `quire_kafka::ops::redrive`'s; this prints).

use quire_kafka::ops::redrive::Redrive;
use quire_kafka::ops::Operator;
use quire_kafka::KafkaArgs;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Block ids.
    #[arg(required = true)]
    pub blocks: Vec<String>,
    /// Re-drive QUEUED blocks too: only for one whose queued record is known to be
    /// lost (a block waiting in line would then run twice; the output stays once).
    #[arg(long)]
    pub force: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let operator = Operator::new(&args.kafka, "redrive")?;
    let redrive = Redrive::read(&operator, &args.blocks, args.force).await?;
    let mut failed = 0;
    for id in &args.blocks {
        match redrive.redrive(&operator, id).await {
            Ok(done) => println!("{id}: {} → QUEUED (generation {})", done.from, done.generation),
            Err(e) => {
                failed += 1;
                eprintln!("{id}: not re-driven: {e}");
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
