//! Hostile inputs through the real pipeline: a generated corpus of over a thousand bad
//! records on the ingest topic and every stage's inputs, between good documents, never
//! stops a partition, crashes a service or loses a good document, in either delivery
//! mode (see `integration_tests::hostile`; `quire-hostile` runs a bigger one).

use integration_tests::hostile::{self, Config};
use integration_tests::Stack;
use std::time::Duration;

fn hostile_inputs_never_stall_a_partition(delivery_mode: &str) {
    let seed = std::env::var("QUIRE_HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let stack = Stack::start();
    let config = Config { seed, bad_records: 1_000, tiny_documents: 1_000, delivery_mode: delivery_mode.into() };
    let report = hostile::run(&stack, &config);
    report.print();
    let problems = report.problems(Duration::from_secs(5));
    assert!(problems.is_empty(), "seed {seed} (rerun with QUIRE_HOSTILE_SEED={seed}): {problems:#?}");
    assert!(report.bad_records >= 1_000 && report.quarantined_by_cause.len() >= 6, "{report:?}");
}

#[test]
fn hostile_inputs_never_stall_a_partition_transactional() {
    hostile_inputs_never_stall_a_partition("transactional");
}

#[test]
fn hostile_inputs_never_stall_a_partition_idempotent() {
    hostile_inputs_never_stall_a_partition("idempotent");
}
