//! The watchdog through the real broker: a stage stopped mid-run shows as growing lag in
//! offsets and seconds and as STALL, and as OK again once it is back.

use integration_tests::*;

#[test]
fn a_stopped_stage_shows_growing_lag_and_stall_then_recovers() {
    let stack = Stack::start();
    let mut pipeline = Pipeline::with_env(&stack, "transactional", &[("QUIRE_WATCHDOG_INTERVAL_MS", "300"), ("QUIRE_WATCHDOG_WINDOW_MS", "3000")]);
    pipeline.start_all();
    let index = pipeline.start("quire-watchdog", "0");
    let port = pipeline.services[index].metrics_port.expect("metrics port");
    let validator_group = format!("{}-validator", pipeline.prefix);
    let group = ("group", validator_group.as_str());
    // The watchdog's gauge `name{labels…}`, NaN if absent.
    let gauge = |name: &str, labels: &[(&str, &str)]| metric(port, name, labels).unwrap_or(f64::NAN);
    let status_is = |status: &str| gauge("quire_consumergroup_status", &[group, ("status", status)]) == 1.0;
    let caught_up = || (status_is("OK") && gauge("kafka_consumergroup_group_sum_lag", &[group]) == 0.0).then_some(());

    let data = write_dataset(stack.dir.path(), "first", 4, 1);
    pipeline.publish(&data, "first").expect("publish");
    assert_exactly_once(&pipeline, "first", 4);
    eventually(WAIT, "the validator caught up and OK", caught_up).unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));

    pipeline.service("quire-validator").kill();
    let data = write_dataset(stack.dir.path(), "second", 12, 1);
    pipeline.publish(&data, "second").expect("publish");
    let first_lag = eventually(WAIT, "lag behind the stopped validator", || {
        let lag = gauge("kafka_consumergroup_group_sum_lag", &[group]);
        (lag > 0.0).then_some(lag)
    })
    .unwrap();
    let seconds = eventually(WAIT, "lag in seconds to grow", || {
        let s = gauge("kafka_consumergroup_group_max_lag_seconds", &[group]);
        (s >= 2.0).then_some(s)
    })
    .unwrap();
    eventually(WAIT, "STALL", || status_is("STALL").then_some(())).unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    let lag = gauge("kafka_consumergroup_group_sum_lag", &[group]);
    assert!(lag >= first_lag && lag >= 12.0, "lag {lag} (first seen {first_lag}) should cover the 12 new blocks");
    let report: serde_json::Value = runtime().block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/watchdog")).await.unwrap().json().await.unwrap()
    });
    let validator = report.as_array().unwrap().iter().find(|g| g["group"] == validator_group.as_str()).expect("validator in the report");
    assert!(matches!(validator["status"].as_str(), Some("STALL" | "STOP")), "{validator}");
    assert!(validator["max_lag_seconds"].as_f64().unwrap() >= seconds, "{validator}");

    pipeline.start("quire-validator", "0");
    assert_exactly_once(&pipeline, "second", 12);
    eventually(WAIT, "recovery to OK", caught_up).unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    assert_eq!(gauge("kafka_consumergroup_group_max_lag_seconds", &[group]), 0.0);
    let log = pipeline.service("quire-watchdog").log_text();
    assert!(log.contains("\"to\":\"STALL\"") && log.contains("\"to\":\"OK\""), "status changes are logged:\n{}", tail(&log, 20));
}
