//! `quire-chaos`: the chaos proof at full size (the suite runs a short one). Starts its
//! own SQLite stack, two or more instances of every stage and a test model server,
//! injects seeded faults while datasets flow, then verifies from what it published and
//! prints one line per figure. Exits non-zero on any loss, duplicate, illegal or
//! post-terminal event; a failing seed is rerun with `--seed`.

use clap::Parser;
use integration_tests::chaos::{self, Config, Fault};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Seed of the faults and datasets (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Blocks to publish in all.
    #[arg(long, default_value_t = 10_000)]
    blocks: usize,
    /// transactional, idempotent or both.
    #[arg(long, default_value = "both")]
    delivery_mode: String,
    /// How long faults are injected, in seconds.
    #[arg(long, default_value_t = 300)]
    fault_seconds: u64,
    /// Faults to inject (default all): kill-instance, stop-instance, add-instance,
    /// remove-instance, restart-broker, kill-broker, restart-registry, engine-fails,
    /// engine-times-out.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Runs in a row (each with the next seed).
    #[arg(long, default_value_t = 1)]
    runs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let faults = if args.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        match args.faults.iter().map(|f| Fault::parse(f).ok_or(f)).collect::<Result<Vec<_>, _>>() {
            Ok(faults) => faults,
            Err(unknown) => {
                eprintln!("quire-chaos: unknown fault {unknown:?}");
                return ExitCode::from(2);
            }
        }
    };
    let modes: Vec<&str> = match args.delivery_mode.as_str() {
        "both" => vec!["transactional", "idempotent"],
        mode => vec![mode],
    };
    let first_seed = args.seed.unwrap_or_else(rand::random);
    let mut passed = 0;
    for run in 0..args.runs {
        for mode in &modes {
            let config = Config {
                seed: first_seed + run,
                blocks: args.blocks,
                delivery_mode: mode.to_string(),
                fault_window: Duration::from_secs(args.fault_seconds),
                faults: faults.clone(),
            };
            let report = chaos::run(&config);
            report.print();
            let problems = report.problems();
            for problem in &problems {
                println!("chaos FAILED: {problem}");
            }
            if !problems.is_empty() {
                println!("chaos: {passed} run(s) in a row passed before seed {} ({mode}) failed", config.seed);
                return ExitCode::FAILURE;
            }
            passed += 1;
        }
    }
    println!("chaos: {passed} run(s) in a row passed, seeds {first_seed}..{}", first_seed + args.runs - 1);
    ExitCode::SUCCESS
}
