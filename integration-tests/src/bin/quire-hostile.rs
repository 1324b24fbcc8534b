//! `quire-hostile`: the hostile-input proof at full size (the suite runs a smaller one).
//! Starts its own stack and pipeline, writes a generated corpus of bad records between
//! good documents, prints the figures and exits non-zero if any bad record was misfiled,
//! any good document was lost or duplicated, a service exited or a partition stalled
//! past `--max-stall-ms`. A failing seed is rerun with `--seed`.

use clap::Parser;
use integration_tests::hostile::{self, Config};
use integration_tests::Stack;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Seed of the corpus (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Bad records to write.
    #[arg(long, default_value_t = 5_000)]
    bad_records: usize,
    /// Documents in the dataset of tiny documents.
    #[arg(long, default_value_t = 100_000)]
    tiny_documents: usize,
    /// transactional or idempotent.
    #[arg(long, default_value = "transactional")]
    delivery_mode: String,
    /// Longest a partition may stand still with records to read.
    #[arg(long, default_value_t = 5_000)]
    max_stall_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = Config {
        seed: args.seed.unwrap_or_else(rand::random),
        bad_records: args.bad_records,
        tiny_documents: args.tiny_documents,
        delivery_mode: args.delivery_mode,
    };
    let stack = Stack::start();
    let report = hostile::run(&stack, &config);
    report.print();
    let problems = report.problems(Duration::from_millis(args.max_stall_ms));
    for problem in &problems {
        println!("hostile FAILED: {problem}");
    }
    if problems.is_empty() {
        println!("hostile: every bad record quarantined, every good document completed once");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
