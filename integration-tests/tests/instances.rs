//! Instances and stage metrics through the real broker: every stage heartbeats, a
//! SIGKILLed instance is reported dead with the partitions it held (and alive again once
//! restarted), a clean SIGTERM is a stop, not a death; and each stage's `/metrics`
//! carries records out, commit and processing latency, and end-to-end latency.

use integration_tests::*;
use std::time::Duration;

/// The watchdog's `/watchdog/instances` entry of `service`, once `check` holds for it.
fn instance(port: u16, service: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<serde_json::Value> {
    let runtime = runtime();
    eventually(WAIT, what, || {
        let report: serde_json::Value = runtime
            .block_on(async { reqwest::get(format!("http://127.0.0.1:{port}/watchdog/instances")).await.ok()?.json().await.ok() })?;
        report.as_array()?.iter().find(|i| i["service"] == service && check(i)).cloned()
    })
}

#[test]
fn a_killed_instance_is_reported_dead_with_its_partitions_and_a_stopped_one_is_not() {
    let stack = Stack::start();
    let env = [("QUIRE_HEARTBEAT_INTERVAL_MS", "500"), ("QUIRE_INSTANCE_TTL_MS", "3000"), ("QUIRE_WATCHDOG_INTERVAL_MS", "300")];
    let mut pipeline = Pipeline::with_env(&stack, "transactional", &env);
    pipeline.start_all();
    let index = pipeline.start("quire-watchdog", "0");
    let port = pipeline.services[index].metrics_port.expect("metrics port");
    let alive = |i: &serde_json::Value| i["liveness"] == "ALIVE" && i["assigned_partitions"].as_array().is_some_and(|p| !p.is_empty());
    let validator = instance(port, "validator", "the validator alive with partitions", alive).unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    for service in ["claimer", "inference", "quarantine"] {
        instance(port, service, &format!("{service} alive"), alive).unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    }
    assert_eq!(metric(port, "quire_watchdog_instances", &[("service", "validator"), ("liveness", "alive")]), Some(1.0));
    let results = format!("{}.inference.results/", pipeline.prefix);
    let held = validator["assigned_partitions"].as_array().unwrap().clone();
    assert!(held.iter().all(|p| p.as_str().unwrap().starts_with(&results)), "{validator}");

    // Metrics of a stage that did work.
    let data = write_dataset(stack.dir.path(), "measured", 3, 2);
    pipeline.publish(&data, "measured").expect("publish");
    let report = assert_exactly_once(&pipeline, "measured", 6);
    let blocks = report_field(&report, "blocks_expected") as f64;
    let completed = format!("{}.blocks.completed", pipeline.prefix);
    let service = pipeline.service("quire-validator");
    let produced = eventually(WAIT, "records out counted", || {
        service.metric("quire_stage_records_produced_total", &[("stage", "validator"), ("topic", &completed)]).filter(|&n| n >= blocks)
    })
    .unwrap();
    assert_eq!(produced, blocks, "one completed record per block");
    let end_to_end = service.metric("quire_block_end_to_end_duration_seconds_count", &[]).unwrap_or_default();
    assert!(end_to_end >= blocks, "end-to-end latency observed per block: {end_to_end} < {blocks}");
    let slowest = service.metric("quire_block_end_to_end_duration_seconds_sum", &[]).unwrap_or_default();
    assert!(slowest > 0.0 && slowest / end_to_end < 300.0, "plausible end-to-end latency: {slowest} s over {end_to_end} blocks");
    for name in ["quire_stage_commit_duration_seconds", "quire_stage_processing_duration_seconds"] {
        let count = service.metric(&format!("{name}_count"), &[("stage", "validator")]).unwrap_or_default();
        let under_a_minute = service.metric(&format!("{name}_bucket"), &[("stage", "validator"), ("le", "60")]).unwrap_or_default();
        assert!(count >= 1.0 && under_a_minute == count, "{name}: {count} observations, {under_a_minute} under 60 s");
    }

    // Killed: dead after the TTL, with the partitions it held.
    pipeline.service("quire-validator").kill();
    let dead = instance(port, "validator", "the killed validator reported dead", |i| i["liveness"] == "DEAD").unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    assert_eq!(dead["assigned_partitions"].as_array().unwrap(), &held, "{dead}");
    assert!(dead["silent_ms"].as_i64().unwrap() > 3000, "{dead}");
    assert_eq!(metric(port, "quire_watchdog_instances", &[("service", "validator"), ("liveness", "dead")]), Some(1.0));
    let log = pipeline.service("quire-watchdog").log_text();
    assert!(log.contains("\"message\":\"instance dead\"") && log.contains(held[0].as_str().unwrap()), "the death is logged with its partitions:\n{}", tail(&log, 20));

    // SIGTERM: a clean stop, never reported dead.
    let stopped = pipeline.service("quire-claimer").terminate(Duration::from_secs(20));
    assert!(stopped, "claimer stops cleanly\n{}", pipeline.logs());
    instance(port, "claimer", "the claimer reported stopped", |i| i["liveness"] == "STOPPED").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    instance(port, "claimer", "the claimer still stopped, not dead", |i| i["liveness"] == "STOPPED").unwrap();

    // Restarted: alive again, and nothing is dead any more.
    pipeline.start("quire-validator", "0");
    instance(port, "validator", "the restarted validator alive", alive).unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    eventually(WAIT, "no dead instance", || (metric(port, "quire_watchdog_instances", &[("liveness", "dead")]) == Some(0.0)).then_some(())).unwrap();
}
