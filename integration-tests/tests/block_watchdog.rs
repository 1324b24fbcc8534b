//! The block watchdog through the real broker. A lost hand-off is staged the way it
//! happens: the stage's group commits past a block's record while the block's last
//! audited state says it is still there (a PROCESSING event from an instance that then
//! vanished, or nothing at all). The watchdog re-drives such a block past its TTL, at
//! most `QUIRE_STALL_MAX_REDRIVES` times, then quarantines it as `stalled`.

use integration_tests::*;
use quire_core::records::{QuarantineRecord, StateChange};
use quire_core::BlockState;
use quire_kafka::config::TopicNames;
use quire_kafka::ops::Operator;
use quire_kafka::pipeline::letters::BlockRef;
use quire_kafka::record::Input;
use quire_kafka::io::reader::TopicReader;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::Duration;

/// Short TTLs, retries short enough for them, and a fast watchdog.
const ENV: [(&str, &str); 6] = [
    ("QUIRE_RETRY_DELAYS_MS", "500,1000"),
    ("QUIRE_WATCHDOG_INTERVAL_MS", "300"),
    ("QUIRE_STALL_QUEUED_TTL_MS", "3000"),
    ("QUIRE_STALL_PROCESSING_TTL_MS", "2000"),
    ("QUIRE_STALL_VALIDATING_TTL_MS", "2000"),
    ("QUIRE_STALL_MAX_REDRIVES", "1"),
];

/// Every stage but inference, and the watchdog (its metrics port returned), with `extra`
/// environment.
fn pipeline_without_inference<'a>(stack: &'a Stack, extra: &[(&str, &str)]) -> (Pipeline<'a>, u16) {
    let env: Vec<(&str, &str)> = ENV.iter().copied().chain(extra.iter().copied()).collect();
    let mut pipeline = Pipeline::with_env(stack, "transactional", &env);
    for name in ["quire-claimer", "quire-validator", "quire-quarantine"] {
        pipeline.start(name, "0");
    }
    let index = pipeline.start("quire-watchdog", "0");
    let port = pipeline.services[index].metrics_port.expect("metrics port");
    (pipeline, port)
}

/// The queued topic's records from `positions` on, once there are `at_least` new ones.
fn queued_records(pipeline: &Pipeline<'_>, positions: &mut HashMap<i32, i64>, at_least: usize) -> Vec<Input> {
    let reader = TopicReader::new(&pipeline.stack.kafka_args(&pipeline.prefix)).expect("reader");
    let topic = TopicNames::new(&pipeline.prefix).queued();
    let mut seen = Vec::new();
    eventually(WAIT, "blocks on the queued topic", || {
        seen.extend(reader.read_new(&topic, positions, Duration::from_secs(30)).expect("read queued"));
        (seen.len() >= at_least).then(|| seen.clone())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()))
}

/// Publishes `dataset`, a single block; returns its queued record(s), its id and the
/// queued topic's read positions after it.
fn publish_one_block(pipeline: &Pipeline<'_>, dataset: &str) -> (Vec<Input>, String, HashMap<i32, i64>) {
    let data = write_dataset(pipeline.stack.dir.path(), dataset, 1, 1);
    pipeline.publish(&data, dataset).expect("publish");
    let mut positions = HashMap::new();
    let queued = queued_records(pipeline, &mut positions, 1);
    let block = block_id(&queued[0]);
    (queued, block, positions)
}

/// Commits inference's group past `record`, as if an instance had read it and its work
/// were lost.
fn lose(pipeline: &Pipeline<'_>, record: &Input) {
    let consumer: BaseConsumer = pipeline
        .stack
        .rdkafka_config()
        .set("group.id", format!("{}-inference", pipeline.prefix))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&record.topic, record.partition, Offset::Offset(record.offset + 1)).expect("offset");
    consumer.commit(&offsets, CommitMode::Sync).expect("commit inference's offsets");
}

fn block_id(record: &Input) -> String {
    String::from_utf8(record.key.clone().expect("queued records are keyed")).expect("utf-8 key")
}

/// The audit events of `block`, in order.
fn events_of(pipeline: &Pipeline<'_>, block: &str) -> Vec<StateChange> {
    let events: Vec<StateChange> = read_decoded(pipeline.stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).events(), &runtime());
    events.into_iter().filter(|e| e.block_id == block).collect()
}

fn counter(port: u16, name: &str, state: &str) -> f64 {
    metric(port, name, &[("state", state)]).unwrap_or(f64::NAN)
}

#[test]
fn a_block_held_in_processing_past_its_ttl_is_redriven_and_completes_once() {
    let collector = integration_tests::otlp_collector::OtlpCollector::start();
    let stack = Stack::start();
    let (mut pipeline, port) = pipeline_without_inference(&stack, &collector.env());
    let (queued, block, mut positions) = publish_one_block(&pipeline, "held");

    // An inference instance took the block, wrote PROCESSING, and vanished.
    lose(&pipeline, &queued[0]);
    let mut args = stack.kafka_args(&pipeline.prefix);
    args.instance_id = "lost-instance".into();
    let lost = Operator::service(&args, "inference").expect("operator");
    let runtime = runtime();
    let held = BlockRef { block_id: &block, dataset_id: "held", request_id: "request", idempotency_key: None };
    let processing = runtime
        .block_on(lost.transition(&held, BlockState::Queued, BlockState::Processing, "taken by an instance that died"))
        .expect("audit record");
    lost.commit(&[processing]).expect("write PROCESSING");

    eventually(WAIT, "the watchdog to re-drive the PROCESSING block", || (counter(port, "quire_watchdog_blocks_redriven_total", "PROCESSING") == 1.0).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    let redrive = events_of(&pipeline, &block).into_iter().find(|e| e.stage == "watchdog").expect("the re-drive is audited");
    assert_eq!((redrive.from_state, redrive.to_state), (BlockState::Processing, BlockState::Queued), "{redrive:?}");
    assert!(redrive.reason.as_deref().unwrap_or_default().starts_with("stalled: in PROCESSING for"), "{redrive:?}");
    let requeued = queued_records(&pipeline, &mut positions, 1);
    assert_eq!((block_id(&requeued[0]), requeued.len()), (block.clone(), 1), "one new generation on the queue");
    let trace = |record: &Input| quire_kafka::record::headers::trace_id(&record.headers);
    assert!(trace(&requeued[0]).is_some() && trace(&requeued[0]) == trace(&queued[0]), "the re-drive continues the block's trace");

    pipeline.start("quire-inference", "0");
    assert_exactly_once(&pipeline, "held", 1);
    // Completed: it is judged no more, and was re-driven once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(counter(port, "quire_watchdog_blocks_redriven_total", "PROCESSING"), 1.0);
    assert_eq!(counter(port, "quire_watchdog_blocks_redriven_total", "QUEUED"), 0.0);
    assert_eq!(counter(port, "quire_watchdog_blocks_quarantined_total", "PROCESSING"), 0.0);
    let last = events_of(&pipeline, &block).pop().expect("events");
    assert_eq!(last.to_state, BlockState::Completed, "{last:?}");

    // The re-drive is a span of the block's trace, and inference's span its child.
    let requeue_span = &quire_kafka::record::headers::text_header(&requeued[0].headers, quire_kafka::record::headers::TRACEPARENT).expect("traceparent")[36..52];
    let names = TopicNames::new(&pipeline.prefix);
    let spans = eventually(WAIT, "the watchdog's and inference's spans exported", || {
        let spans = collector.spans();
        let redrive = spans.iter().find(|s| s.span_id == requeue_span)?.clone();
        let processed = spans.iter().find(|s| s.parent_span_id == requeue_span)?.clone();
        Some((redrive, processed))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", collector.spans()));
    let (redrive, processed) = spans;
    assert_eq!((redrive.service.as_str(), redrive.name.as_str(), redrive.kind), ("quire-watchdog", format!("send {}", names.queued()).as_str(), 4), "{redrive:?}");
    assert_eq!(Some(redrive.trace_id.clone()), trace(&queued[0]), "{redrive:?}");
    assert_eq!((processed.service.as_str(), processed.name.as_str()), ("quire-inference", format!("process {}", names.queued()).as_str()), "{processed:?}");
}

#[test]
fn a_block_lost_again_after_its_redrives_is_quarantined_as_stalled_and_can_be_replayed() {
    let stack = Stack::start();
    let (mut pipeline, port) = pipeline_without_inference(&stack, &[]);
    let (first, block, mut positions) = publish_one_block(&pipeline, "lost");

    // Read and lost while QUEUED: re-driven once (the budget), as generation 1.
    lose(&pipeline, &first[0]);
    eventually(WAIT, "a re-drive of the QUEUED block", || (counter(port, "quire_watchdog_blocks_redriven_total", "QUEUED") == 1.0).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    let second = queued_records(&pipeline, &mut positions, 1);
    // Waiting in line is not stalling: while inference has not read generation 1, it stays.
    let report = || -> serde_json::Value {
        runtime().block_on(async { reqwest::get(format!("http://127.0.0.1:{port}/watchdog/blocks")).await.unwrap().json().await.unwrap() })
    };
    eventually(WAIT, "the re-driven block reported as waiting", || {
        let blocks = report();
        (blocks[0]["verdict"] == "waiting" && blocks[0]["redrives"] == 1 && blocks[0]["copy"]["generation"] == 1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", report(), pipeline.logs()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(counter(port, "quire_watchdog_blocks_redriven_total", "QUEUED"), 1.0);
    assert_eq!(counter(port, "quire_watchdog_blocks_quarantined_total", "QUEUED"), 0.0);

    // Lost again: the budget is spent, so it is quarantined as stalled.
    lose(&pipeline, &second[0]);
    eventually(WAIT, "the stalled block in quarantine", || {
        let records: Vec<QuarantineRecord> = read_decoded(&stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).quarantine(), &runtime());
        records.into_iter().find(|r| r.key == block)
    })
    .map(|record| {
        assert_eq!((record.cause.as_str(), record.error_class.as_str(), record.failed_stage.as_str()), ("stalled", "TRANSIENT", "inference"), "{record:?}");
        assert!(record.reason.contains("re-driven 1 times"), "{record:?}");
        assert_eq!(record.original_offset, second[0].offset, "{record:?}");
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    assert_eq!(counter(port, "quire_watchdog_blocks_quarantined_total", "QUEUED"), 1.0);
    let last = events_of(&pipeline, &block).pop().expect("events");
    assert_eq!((last.to_state, last.stage.as_str()), (BlockState::Error, "watchdog"), "{last:?}");

    // A person replays it once inference is back: it completes, once.
    pipeline.start("quire-inference", "0");
    quire(&["dlq", "replay", "--dataset", "lost", "--quiet"], &pipeline.env).expect("dlq replay");
    assert_exactly_once(&pipeline, "lost", 1);
}
