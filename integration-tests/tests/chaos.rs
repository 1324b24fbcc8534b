//! A short chaos run in each delivery mode (`quire-chaos` runs the full one): about a
//! thousand blocks through two or more instances of every stage while instances are
//! killed, stopped past their session and added, the broker restarts (cleanly and with
//! SIGKILL) and the model engine fails and times out. Nothing may be lost, completed
//! twice, or audited illegally (see `integration_tests::chaos`).

use integration_tests::chaos::{self, Config, Fault};
use std::time::Duration;

fn survives_chaos(delivery_mode: &str) {
    let seed = std::env::var("QUIRE_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let config = Config { seed, blocks: 1_000, delivery_mode: delivery_mode.into(), fault_window: Duration::from_secs(60), faults: Fault::ALL.to_vec() };
    let report = chaos::run(&config);
    report.print();
    let problems = report.problems();
    assert!(problems.is_empty(), "seed {seed} ({delivery_mode}; rerun with QUIRE_CHAOS_SEED={seed}): {problems:#?}");
    assert!(report.faults.values().sum::<usize>() >= 10, "too few faults to prove anything: {:?}", report.faults);
}

#[test]
fn chaos_loses_and_duplicates_nothing_transactional() {
    survives_chaos("transactional");
}

#[test]
fn chaos_loses_and_duplicates_nothing_idempotent() {
    survives_chaos("idempotent");
}
