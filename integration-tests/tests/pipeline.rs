//! The production line end to end, through the real broker and registry: datasets
//! complete exactly once in both delivery modes, resubmissions add nothing, a stage
//! SIGKILLed mid-run loses and duplicates nothing, and bad records are quarantined with
//! their reason without stalling their partition.

use integration_tests::*;
use quire_core::records::{Block, QuarantineRecord};
use quire_core::BlockState;
use quire_kafka::config::TopicNames;
use quire_kafka::io::reader::TopicReader;
use quire_kafka::Codec;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use std::time::Duration;

/// Waits until `stage` reports having processed `records` input records.
fn wait_processed(pipeline: &mut Pipeline<'_>, stage: &str, records: usize) {
    let short = stage.trim_start_matches("quire-").to_owned();
    let service = pipeline.service(stage);
    let done = eventually(WAIT, &format!("{stage} to process {records} records"), || {
        let processed = service.metric("quire_stage_records_total", &[("stage", &short)])?;
        (processed as usize >= records).then_some(())
    });
    if let Err(e) = done {
        panic!("{e}\n{}", pipeline.logs());
    }
}

fn completes_exactly_once_and_ignores_resubmission(mode: &str) {
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, mode);
    pipeline.start_all();
    let data = write_dataset(stack.dir.path(), "reports", 50, 4);
    pipeline.publish(&data, "reports").expect("publish");
    let report = assert_exactly_once(&pipeline, "reports", 200);
    let names = TopicNames::new(&pipeline.prefix);
    let blocks = report_field(&report, "blocks_expected") as usize;
    assert_eq!(count_records(&stack, &pipeline.prefix, &names.queued()), blocks);
    assert_eq!(count_records(&stack, &pipeline.prefix, &names.completed()), blocks);

    // The same content again: same idempotency key, so nothing new anywhere.
    pipeline.publish(&data, "reports").expect("publish again");
    wait_processed(&mut pipeline, "quire-claimer", 100);
    // Give any (wrongly) queued block the time to travel the whole pipeline.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count_records(&stack, &pipeline.prefix, &names.queued()), blocks, "resubmission queued blocks again");
    assert_eq!(count_records(&stack, &pipeline.prefix, &names.completed()), blocks, "resubmission completed blocks again");
    let again = assert_exactly_once(&pipeline, "reports", 200);
    assert_eq!(again["completed_once"], report["completed_once"]);

    for service in &mut pipeline.services {
        assert!(service.terminate(Duration::from_secs(20)), "{} did not stop cleanly on SIGTERM:\n{}", service.name, tail(&service.log_text(), 30));
    }
}

#[test]
fn completes_dataset_exactly_once_transactional() {
    completes_exactly_once_and_ignores_resubmission("transactional");
}

#[test]
fn completes_dataset_exactly_once_idempotent() {
    completes_exactly_once_and_ignores_resubmission("idempotent");
}

fn survives_sigkill(mode: &str) {
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, mode);
    // Long batches, so that a kill lands between writing outputs and committing offsets.
    pipeline.env.insert("QUIRE_COMMIT_INTERVAL_MS".into(), "1500".into());
    pipeline.env.insert("QUIRE_MAX_BATCH".into(), "100000".into());
    pipeline.start_all();
    let data = write_dataset(stack.dir.path(), "kill", 100, 4);
    pipeline.publish(&data, "kill").expect("publish");
    // As soon as inference has done part of the work, SIGKILL every processing stage
    // and restart each with the same instance id (so it fences its predecessor).
    let stages = ["quire-claimer", "quire-inference", "quire-validator"];
    let deadline = std::time::Instant::now() + WAIT;
    let processed_at_kill = loop {
        let processed = pipeline.service("quire-inference").metric("quire_stage_records_total", &[("stage", "inference")]);
        if processed.is_some_and(|n| n >= 30.0) {
            for stage in stages {
                pipeline.service(stage).kill();
            }
            break processed.unwrap_or_default();
        }
        assert!(std::time::Instant::now() < deadline, "inference made no progress\n{}", pipeline.logs());
        std::thread::sleep(Duration::from_millis(10));
    };
    let completed_at_kill = count_records(&stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).completed());
    eprintln!("killed at {processed_at_kill} blocks inferred, {completed_at_kill} completed");
    for stage in stages {
        pipeline.start(stage, "0");
    }
    let report = assert_exactly_once(&pipeline, "kill", 400);
    assert!(
        (completed_at_kill as u64) < report_field(&report, "blocks_expected"),
        "the kill came after the work was done ({completed_at_kill} completed): the test proved nothing"
    );
}

#[test]
fn stage_killed_mid_run_loses_and_duplicates_nothing_transactional() {
    survives_sigkill("transactional");
}

#[test]
fn stage_killed_mid_run_loses_and_duplicates_nothing_idempotent() {
    survives_sigkill("idempotent");
}

/// librdkafka fails a producer for good on some broker errors that are not a fencing
/// (a local broker once answered OUT_OF_ORDER_SEQUENCE_NUMBER under load, and the stage
/// retried a dead producer forever). Each stage's producer is made to fail that way
/// after its first committed batch: the stage replaces it, replays the batch and goes
/// on, without exiting, losing or duplicating anything.
fn replaces_a_failed_producer(mode: &str) {
    let stack = Stack::start();
    let mut pipeline = Pipeline::with_env(&stack, mode, &[("QUIRE_FAULT_FATAL_PRODUCER_AFTER_BATCHES", "1")]);
    pipeline.start_all();
    for (dataset, documents) in [("before-fault", 4), ("after-fault", 40)] {
        let data = write_dataset(stack.dir.path(), dataset, documents, 4);
        pipeline.publish(&data, dataset).expect("publish");
        assert_exactly_once(&pipeline, dataset, documents as u64 * 4);
    }
    for stage in ["quire-claimer", "quire-inference", "quire-validator"] {
        let short = stage.trim_start_matches("quire-");
        let service = pipeline.service(stage);
        let replaced = service.metric("quire_stage_producers_replaced_total", &[("stage", short)]).unwrap_or_default();
        assert_eq!(replaced, 1.0, "{stage} replaced its producer {replaced} times:\n{}", tail(&service.log_text(), 30));
    }
    let exited: Vec<String> = pipeline.services.iter_mut().filter_map(Service::exit_reason).collect();
    assert!(exited.is_empty(), "{exited:?}");
}

#[test]
fn a_producer_failed_for_good_is_replaced_transactional() {
    replaces_a_failed_producer("transactional");
}

#[test]
fn a_producer_failed_for_good_is_replaced_idempotent() {
    replaces_a_failed_producer("idempotent");
}

#[test]
fn advances_past_poison_message_and_rejects_illegal_transition() {
    let runtime = runtime();
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, "transactional");
    pipeline.start_all();
    let names = TopicNames::new(&pipeline.prefix);
    let producer: BaseProducer = stack.rdkafka_config().create().expect("producer");
    // Not Avro at all, on every ingest partition.
    for partition in 0..3 {
        producer
            .send(BaseRecord::to(&names.ingest()).partition(partition).key("poison").payload("{not avro"))
            .expect("send poison");
    }
    // A well-formed block that claims to be COMPLETED already: QUEUED is the only state
    // inference accepts, so COMPLETED → PROCESSING must be rejected.
    let codec = Codec::new(&stack.schema_registry_url).expect("codec");
    let text = "A block that skipped its pipeline.";
    // Its id is the one its key gives, so only its state is wrong.
    let key = quire_core::ids::block_idempotency_key("forged", "illegal-transition", 600, 0);
    let block = Block {
        dataset_id: "forged".into(),
        block_id: quire_core::ids::block_id(&key),
        idempotency_key: key,
        ..Block::fixture("", text, BlockState::Completed)
    };
    let payload = runtime.block_on(codec.encode(&names.queued(), &block)).expect("encode block");
    producer.send(BaseRecord::to(&names.queued()).key(&block.block_id).payload(&payload)).expect("send block");
    producer.flush(Duration::from_secs(10)).expect("flush");

    // Good data behind the poison still completes.
    let data = write_dataset(stack.dir.path(), "after-poison", 6, 2);
    pipeline.publish(&data, "after-poison").expect("publish");
    assert_exactly_once(&pipeline, "after-poison", 12);

    let records = eventually(WAIT, "poison and illegal block in quarantine", || {
        let records: Vec<QuarantineRecord> = read_decoded(&stack, &pipeline.prefix, &names.quarantine(), &runtime);
        (records.len() >= 4).then_some(records)
    })
    .expect("quarantined");
    let poison: Vec<_> = records.iter().filter(|r| r.original_topic == names.ingest()).collect();
    assert_eq!(poison.len(), 3, "{records:?}");
    for record in poison {
        assert_eq!(record.error_class, "DATA");
        assert!(record.reason.contains("Confluent wire format"), "reason should name what was wrong: {}", record.reason);
        assert_eq!(record.failed_stage, "claimer");
        assert!(record.payload.as_deref() == Some(b"{not avro".as_slice()), "the original bytes are kept");
    }
    let illegal = records.iter().find(|r| r.block_id.as_deref() == Some(block.block_id.as_str())).expect("illegal block quarantined");
    assert_eq!(illegal.reason, format!("illegal transition for block {}: COMPLETED → PROCESSING", block.block_id));
    assert_eq!(illegal.dataset_id.as_deref(), Some("forged"));
    let inference_log = pipeline.service("quire-inference").log_text();
    assert!(
        inference_log.contains("illegal transition rejected") && inference_log.contains(&block.block_id),
        "inference must log the rejected transition:\n{}",
        tail(&inference_log, 30)
    );
    // Nothing of the forged block went downstream.
    assert!(count_records(&stack, &pipeline.prefix, &names.results()) >= 12);
    let reader = TopicReader::new(&stack.kafka_args(&pipeline.prefix)).expect("reader");
    let mut forged_downstream = 0;
    reader
        .read_to_end(&names.results(), |_| None, Duration::from_secs(30), |m| {
            forged_downstream += usize::from(m.key() == Some(block.block_id.as_bytes()));
        })
        .expect("read results");
    assert_eq!(forged_downstream, 0);
}

#[test]
fn zombie_is_fenced_and_exits() {
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, "transactional");
    pipeline.start_all();
    let zombie = pipeline.services.iter().position(|s| s.name == "quire-inference").expect("inference started");
    // Once the first instance holds the transactional id, a second instance with the same
    // id takes it over: the first is now a zombie and must stop at its next write.
    eventually(WAIT, "the first inference instance to start", || {
        pipeline.services[zombie].log_text().contains("stage started").then_some(())
    })
    .expect("first instance started");
    pipeline.start("quire-inference", "0");
    let data = write_dataset(stack.dir.path(), "zombie", 30, 2);
    pipeline.publish(&data, "zombie").expect("publish");
    assert_exactly_once(&pipeline, "zombie", 60);
    let exited = eventually(WAIT, "the zombie to exit", || pipeline.services[zombie].child.try_wait().ok().flatten());
    let status = exited.unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    let log = pipeline.services[zombie].log_text();
    assert!(!status.success(), "a fenced instance must exit non-zero");
    let said: Vec<&str> = log.lines().filter(|l| !l.starts_with(' ')).collect();
    assert!(log.contains("fenced"), "the zombie must say it was fenced:\n{}", said[said.len().saturating_sub(30)..].join("\n"));
    assert!(pipeline.service("quire-inference").running(), "the successor keeps running");
}

/// An instance paused past its session timeout that wakes holding a batch it never
/// committed must write none of it once its partitions have moved on: without
/// transactions nothing else fences it, and the local broker commits a transaction's
/// offsets whatever their group generation.
#[test]
fn an_idempotent_zombie_that_wakes_holding_a_batch_writes_none_of_it() {
    a_zombie_that_wakes_holding_a_batch_writes_none_of_it("idempotent");
}

#[test]
fn a_transactional_zombie_that_wakes_holding_a_batch_writes_none_of_it() {
    a_zombie_that_wakes_holding_a_batch_writes_none_of_it("transactional");
}

fn a_zombie_that_wakes_holding_a_batch_writes_none_of_it(mode: &str) {
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, mode);
    pipeline.start("quire-claimer", "0");
    pipeline.start("quire-inference", "0");
    // The validators hold each batch for 15 s, so the first is paused while it holds one.
    pipeline.env.insert("QUIRE_COMMIT_INTERVAL_MS".into(), "15000".into());
    let zombie = pipeline.start("quire-validator", "0");
    let data = write_dataset(stack.dir.path(), "held", 10, 2);
    pipeline.publish(&data, "held").expect("publish");
    let held = eventually(WAIT, "the validator to take in results", || {
        pipeline.services[zombie].metric("quire_stage_records_total", &[("stage", "validator")]).filter(|n| *n >= 1.0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    let pid = pipeline.services[zombie].child.id().to_string();
    let signal = |which: &str| assert!(std::process::Command::new("kill").args([which, &pid]).status().unwrap().success());
    signal("-STOP");
    // Its successor takes the partitions once the session times out, and completes them.
    pipeline.start("quire-validator", "1");
    let report = assert_exactly_once(&pipeline, "held", 20);
    let blocks = report_field(&report, "blocks_expected") as usize;
    signal("-CONT");
    let log = eventually(WAIT, "the woken validator to give its batch up", || {
        let log = pipeline.services[zombie].log_text();
        log.contains("\"message\":\"batch aborted\"").then_some(log)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    let completed = count_records(&stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).completed());
    assert_eq!(completed, blocks, "the zombie held {held} record(s) and must write none of them:\n{}", tail(&log, 20));
    assert!(log.contains("membership check before writing the batch"), "{}", tail(&log, 20));
}

/// Two instances of every stage at once; in the claimer, inference and the validator,
/// one instance SIGSTOPped once it has taken records in, past the session timeout, so
/// its partitions move to the other, then resumed: nothing lost, nothing duplicated,
/// and the audit log keeps the rules, in both modes. (A dataset's documents share its
/// key, so one claimer holds them all: that one is paused. Inference and the validator
/// pause their first instance, which holds each batch for 5 s, so it is paused holding
/// one.)
fn two_instances_of_every_stage_with_one_paused_lose_and_duplicate_nothing(mode: &str) {
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, mode);
    pipeline.env.insert("QUIRE_COMMIT_INTERVAL_MS".into(), "5000".into());
    let claimers = vec![pipeline.start("quire-claimer", "0")];
    let firsts: Vec<usize> = ["quire-inference", "quire-validator"].into_iter().map(|stage| pipeline.start(stage, "0")).collect();
    pipeline.start("quire-quarantine", "0");
    pipeline.env.remove("QUIRE_COMMIT_INTERVAL_MS");
    let claimers = [claimers[0], pipeline.start("quire-claimer", "1")];
    for stage in ["quire-inference", "quire-validator", "quire-quarantine"] {
        pipeline.start(stage, "1");
    }
    // Whichever instance of each group takes records in first is paused.
    let groups: [(&[usize], &str); 3] = [(&claimers, "claimer"), (&firsts[..1], "inference"), (&firsts[1..], "validator")];
    let data = write_dataset(stack.dir.path(), "pairs", 40, 2);
    pipeline.publish(&data, "pairs").expect("publish");
    let mut stopped: Vec<Option<usize>> = vec![None; groups.len()];
    eventually(WAIT, "an instance of each stage to take in records, then be paused", || {
        for (group, (candidates, stage)) in groups.iter().enumerate() {
            if stopped[group].is_some() {
                continue;
            }
            let took = |index: usize| pipeline.services[index].metric("quire_stage_records_total", &[("stage", stage)]).unwrap_or(0.0) >= 1.0;
            if let Some(&index) = candidates.iter().find(|&&index| took(index)) {
                signal(&pipeline.services[index], "-STOP");
                stopped[group] = Some(index);
            }
        }
        stopped.iter().all(Option::is_some).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    // The other instances take the partitions once the sessions time out, and finish.
    let report = assert_exactly_once(&pipeline, "pairs", 80);
    let blocks = report_field(&report, "blocks_expected") as usize;
    for index in stopped.into_iter().flatten() {
        signal(&pipeline.services[index], "-CONT");
    }
    std::thread::sleep(Duration::from_secs(8));
    let report = assert_exactly_once(&pipeline, "pairs", 80);
    let names = TopicNames::new(&pipeline.prefix);
    assert_eq!(report_field(&report, "completed_once") as usize, blocks);
    assert_eq!(count_records(&stack, &pipeline.prefix, &names.completed()), blocks, "the woken instances wrote nothing of what they held");
    assert_eq!(count_records(&stack, &pipeline.prefix, &names.queued()), blocks, "no block queued twice");
}

fn signal(service: &Service, which: &str) {
    let pid = service.child.id().to_string();
    assert!(std::process::Command::new("kill").args([which, &pid]).status().unwrap().success(), "kill {which} {pid}");
}

#[test]
fn two_instances_of_every_stage_with_one_paused_lose_and_duplicate_nothing_transactional() {
    two_instances_of_every_stage_with_one_paused_lose_and_duplicate_nothing("transactional");
}

#[test]
fn two_instances_of_every_stage_with_one_paused_lose_and_duplicate_nothing_idempotent() {
    two_instances_of_every_stage_with_one_paused_lose_and_duplicate_nothing("idempotent");
}

#[test]
fn demo_runs_the_sample_through_the_pipeline() {
    let dir = tempfile::Builder::new().prefix("quire-demo-").tempdir().unwrap();
    let (broker, registry) = (free_port().to_string(), free_port().to_string());
    let output = quire(
        &["demo", "--dir", &dir.path().to_string_lossy(), "--broker-port", &broker, "--registry-port", &registry, "--timeout", "120"],
        &Default::default(),
    )
    .expect("quire demo succeeds");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for row in ["│ blocks expected              │     17 │", "│ completed once               │     16 │", "│ quarantined                  │      1 │", "│ missing                      │      0 │", "│ language ru                  │      2 │"] {
        assert!(stdout.contains(row), "demo summary lacks {row:?}:\n{stdout}");
    }
    assert!(stdout.contains("no text in a language the model knows"), "the quarantined block's reason is shown:\n{stdout}");
    assert!(!dir.path().join("stack.json").exists(), "the demo stops its stack");
}

/// The short version of `scripts/bench.sh`: the benchmark runs end to end and prints its
/// figures (their values are for people, not for assertions).
#[test]
fn bench_runs_a_small_dataset_and_prints_its_figures() {
    let dir = tempfile::Builder::new().prefix("quire-bench-").tempdir().unwrap();
    let (broker, registry) = (free_port().to_string(), free_port().to_string());
    let results = dir.path().join("figures.txt");
    let output = quire(
        &[
            "bench", "--documents", "30", "--runs", "1", "--restart-records", "500", "--ledger-entries", "500", "--dir", &dir.path().to_string_lossy(), "--broker-port", &broker,
            "--registry-port", &registry, "--timeout", "120", "--results", &results.to_string_lossy(),
        ],
        &Default::default(),
    )
    .expect("quire bench succeeds");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let figures = std::fs::read_to_string(&results).expect("the figures file");
    assert!(stdout.contains(&figures), "the file holds what was printed:\n{stdout}");
    assert!(figures.contains("30 documents × 2 blocks"), "{figures}");
    let figure_lines = [
        "raw chain, plain",
        "raw chain, transactional",
        "quire, transactional ",
        "quire, idempotent ",
        "quire, transactional, paced at",
        "claimer   alone",
        "inference alone",
        "validator alone",
        "watchdog while Quire ran",
        "claimer start with      500 records",
        "claimer start with      500 ledger entries, a fresh disk",
        "claimer start with      500 ledger entries, the disk it left",
    ];
    for figure in figure_lines {
        let line = figures.lines().find(|l| l.starts_with(figure)).unwrap_or_else(|| panic!("no {figure:?} figure:\n{figures}"));
        // The first number after the figure's name is its value.
        let value: f64 = line[figure.len()..]
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find(|v| !v.is_empty() && *v != ".")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(value > 0.0, "{line}");
    }
    assert!(!dir.path().join("stack.json").exists(), "the benchmark stops its stack");
}
