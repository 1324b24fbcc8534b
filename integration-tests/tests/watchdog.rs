//! The watchdog through the real broker: a stage stopped mid-run shows as growing lag in
//! offsets and seconds and as STALL (and as backlog in `quire status`), and as OK again
//! once it is back.

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
    // Lag grows (WARN) while inference still delivers; once all 12 wait, the group stalls.
    let validator = eventually(WAIT, "the 12 new blocks behind a STALLed validator", || {
        let lag = gauge("kafka_consumergroup_group_sum_lag", &[group]);
        let report: serde_json::Value = runtime().block_on(async {
            reqwest::get(format!("http://127.0.0.1:{port}/watchdog")).await.ok()?.json().await.ok()
        })?;
        let validator = report.as_array()?.iter().find(|g| g["group"] == validator_group.as_str())?.clone();
        (lag >= 12.0 && status_is("STALL") && matches!(validator["status"].as_str(), Some("STALL" | "STOP"))).then_some(validator)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    assert!(gauge("kafka_consumergroup_group_sum_lag", &[group]) >= first_lag);
    assert!(validator["max_lag_seconds"].as_f64().unwrap() >= seconds, "{validator}");

    // `quire status` shows the validator's backlog and a dataset not done.
    let status = quire(&["status", "--json", "second"], &pipeline.env).expect("status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json prints JSON");
    let backlog = status["stages"].as_array().unwrap().iter().find(|s| s["group"] == validator_group.as_str()).cloned().expect("validator backlog");
    assert!(backlog["records_behind"].as_i64().unwrap() >= 12 && backlog["oldest_unprocessed_seconds"].as_f64().unwrap() > 0.0, "{status}");
    assert!(status["progress_percent"].as_f64().unwrap() < 100.0 && status["done"] == 0, "{status}");
    assert!(status["eta_seconds"].is_null(), "no block completed yet, so no ETA: {status}");

    // `quire status --watch` follows the dataset to its end, then exits by itself.
    pipeline.start("quire-validator", "0");
    let watch = std::process::Command::new(bin("quire"))
        .args(["status", "--watch", "1", "second"])
        .envs(&pipeline.env)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("quire status --watch");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(watch.wait_with_output()));
    let output = receiver.recv_timeout(WAIT).unwrap_or_else(|_| panic!("quire status --watch did not finish\n{}", pipeline.logs())).unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("[##############################] 100% (") && shown.contains("eta                        done"), "{shown}");
    assert_exactly_once(&pipeline, "second", 12);
    eventually(WAIT, "recovery to OK", caught_up).unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    assert_eq!(gauge("kafka_consumergroup_group_max_lag_seconds", &[group]), 0.0);
    let log = pipeline.service("quire-watchdog").log_text();
    assert!(log.contains("\"to\":\"STALL\"") && log.contains("\"to\":\"OK\""), "status changes are logged:\n{}", tail(&log, 20));
}
