//! Failure paths through the real broker and registry, with a model server that fails
//! the way each test asks: transient errors are retried on retry topics until they
//! succeed, retries run out into ERROR and quarantine, garbage output falls back to the
//! next engine, an open breaker pauses the stage instead of burning retries, and
//! malformed or wrong-schema records are quarantined with their reason.

use integration_tests::model_server::{Behaviour, ModelServer};
use integration_tests::*;
use quire_core::records::{Block, InferenceResult, QuarantineRecord, StateChange, ValidatedResult};
use quire_core::BlockState;
use quire_kafka::config::TopicNames;
use quire_kafka::Codec;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::HashMap;
use std::time::Duration;

/// A pipeline translating with one `openai` engine per server, chained in that order,
/// retrying after `delays`.
fn pipeline<'a>(stack: &'a Stack, servers: &[(&str, &ModelServer)], breaker: &str, delays: &str) -> Pipeline<'a> {
    let engines: String = servers
        .iter()
        .map(|(name, server)| format!("  - {{name: {name}, kind: openai, url: \"{}\", model: test-model}}\n", server.url))
        .collect();
    let names: Vec<&str> = servers.iter().map(|(name, _)| *name).collect();
    let yaml = format!(
        "defaults:\n  timeout_ms: 2000\n  breaker: {breaker}\nengines:\n{engines}tasks:\n  translate:\n    strategy: first_success\n    engines: [{}]\n",
        names.join(", ")
    );
    Pipeline::with_engines(stack, &yaml, delays)
}

fn metric(pipeline: &mut Pipeline<'_>, service: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    pipeline.service(service).metric(name, labels).unwrap_or(0.0)
}

/// The last state of each block on the audit topic.
fn last_states(pipeline: &Pipeline<'_>, runtime: &tokio::runtime::Runtime) -> (HashMap<String, BlockState>, Vec<StateChange>) {
    let events: Vec<StateChange> = read_decoded(pipeline.stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).events(), runtime);
    let mut last = HashMap::new();
    for change in &events {
        last.insert(change.block_id.clone(), change.to_state);
    }
    (last, events)
}

#[test]
fn transient_failures_are_retried_until_they_succeed() {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Healthy);
    server.fail_first(4);
    let mut pipeline = pipeline(&stack, &[("llm", &server)], "{failure_threshold: 100}", "300,600,1200");
    pipeline.publish_translation("flaky", 3, 2);
    let report = assert_exactly_once(&pipeline, "flaky", 6);

    let completed: Vec<ValidatedResult> = read_decoded(&stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).completed(), &runtime);
    assert_eq!(completed.len() as u64, report_field(&report, "blocks_expected"));
    assert!(completed.iter().all(|r| r.output_text.as_deref().is_some_and(|t| t.starts_with("[fr] ")) && r.label == "fr"), "{completed:?}");
    assert_eq!(metric(&mut pipeline, "quire-inference", "quire_retries_total", &[("class", "TRANSIENT")]), 4.0, "{}", pipeline.logs());
    let (_, events) = last_states(&pipeline, &runtime);
    let requeued: Vec<_> = events.iter().filter(|e| e.from_state == BlockState::Processing && e.to_state == BlockState::Queued).collect();
    assert_eq!(requeued.len(), 4, "each retry is audited as PROCESSING → QUEUED");
    assert!(requeued.iter().all(|e| e.reason.as_deref().is_some_and(|r| r.contains("/3 in ") && r.contains("HTTP 500"))), "{requeued:?}");
    assert_eq!(server.calls(), completed.len() + 4);
}

/// A stale copy of a block whose generation inference already answered (a retry the
/// broker leaked from an aborted batch whose replay then succeeded, as a chaos run
/// found) is met with an engine that now fails: the ledger answers it before any engine
/// call, so no PROCESSING, no new retry and no audit event follows the block's COMPLETED.
#[test]
fn a_stale_retry_of_a_completed_block_writes_nothing() {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Healthy);
    let mut pipeline = pipeline(&stack, &[("llm", &server)], "{failure_threshold: 100}", "300,600");
    pipeline.publish_translation("stale", 1, 2);
    assert_exactly_once(&pipeline, "stale", 2);
    server.set(Behaviour::Failing);
    let names = TopicNames::new(&pipeline.prefix);
    let copy = copies(&stack, &pipeline.prefix, &names.queued()).into_iter().next().expect("a queued block");
    let block_id = String::from_utf8(copy.0.clone().expect("keyed by block id")).unwrap();
    let processed_before = metric(&mut pipeline, "quire-inference", "quire_stage_records_total", &[("stage", "inference")]);
    write_again(&stack, &format!("{}-retry-300", names.queued()), &[copy]);
    eventually(WAIT, "inference to read the stale copy", || {
        (metric(&mut pipeline, "quire-inference", "quire_stage_records_total", &[("stage", "inference")]) > processed_before).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    std::thread::sleep(Duration::from_secs(2));
    let answered = metric(&mut pipeline, "quire-inference", "quire_stage_inputs_answered_total", &[("stage", "inference"), ("how", "done")]);
    assert_eq!((server.calls(), answered), (2, 1.0), "the ledger answered the copy: no engine call");
    let (last, events) = last_states(&pipeline, &runtime);
    let changes: Vec<String> = events.iter().filter(|e| e.block_id == block_id).map(|e| format!("{:?}->{:?}", e.from_state, e.to_state)).collect();
    assert_eq!(last[&block_id], BlockState::Completed, "events of {block_id}: {changes:?}");
    assert_eq!(changes, ["Pending->Claimed", "Claimed->Queued", "Queued->Processing", "Processing->Validating", "Validating->Completed"]);
}

#[test]
fn exhausted_retries_close_the_block_into_error_and_quarantine_it() {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Failing);
    let pipeline = pipeline(&stack, &[("llm", &server)], "{failure_threshold: 100}", "200,400");
    pipeline.publish_translation("doomed", 1, 2);
    let names = TopicNames::new(&pipeline.prefix);
    let blocks = eventually(WAIT, "blocks queued", || {
        let n = count_records(&stack, &pipeline.prefix, &names.queued());
        (n >= 2).then_some(n)
    })
    .unwrap();
    let records = eventually(WAIT, "every block quarantined", || {
        let records: Vec<QuarantineRecord> = read_decoded(&stack, &pipeline.prefix, &names.quarantine(), &runtime);
        (records.len() >= blocks).then_some(records)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    assert_eq!(records.len(), blocks, "one quarantine record per block: {records:?}");
    for record in &records {
        assert_eq!((record.error_class.as_str(), record.failed_stage.as_str(), record.attempts), ("TRANSIENT", "inference", 3), "{record:?}");
        assert!(record.reason.starts_with("gave up after 3 attempts: ") && record.reason.contains("HTTP 500"), "{}", record.reason);
        assert_eq!(record.original_topic, format!("{}-retry-400", names.queued()));
        assert!(record.first_failed_at_ms > 0 && record.first_failed_at_ms <= record.last_failed_at_ms, "{record:?}");
        let codec = Codec::new(&stack.schema_registry_url).unwrap();
        let block: Block = runtime.block_on(codec.decode(record.payload.as_deref())).expect("the payload is the failed block");
        assert_eq!((block.block_id.as_str(), block.attempt), (record.key.as_str(), 2));
    }
    let (last, _) = last_states(&pipeline, &runtime);
    assert!(records.iter().all(|r| last[&r.key] == BlockState::Error), "{last:?}");
    assert_eq!(count_records(&stack, &pipeline.prefix, &names.completed()), 0);
    assert_eq!(server.calls(), 3 * blocks, "each block is tried exactly three times");
}

#[test]
fn garbage_output_falls_back_to_the_next_engine() {
    let runtime = runtime();
    let stack = Stack::start();
    let garbage = ModelServer::start(Behaviour::Garbage);
    let backup = ModelServer::start(Behaviour::Healthy);
    let mut pipeline = pipeline(&stack, &[("primary", &garbage), ("backup", &backup)], "{failure_threshold: 100}", "300,600");
    pipeline.publish_translation("fallback", 2, 2);
    assert_exactly_once(&pipeline, "fallback", 4);
    let completed: Vec<ValidatedResult> = read_decoded(&stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).completed(), &runtime);
    assert!(completed.iter().all(|r| r.engine == "backup"), "{completed:?}");
    assert_eq!(garbage.calls(), completed.len());
    assert_eq!(metric(&mut pipeline, "quire-inference", "quire_retries_total", &[]), 0.0);
    assert_eq!(metric(&mut pipeline, "quire-inference", "quire_engine_calls_total", &[("engine", "primary"), ("outcome", "MODEL")]), completed.len() as f64);
}

#[test]
fn slow_and_unreachable_engines_fall_back_to_a_healthy_one() {
    let runtime = runtime();
    let stack = Stack::start();
    let slow = ModelServer::start(Behaviour::Slow(Duration::from_secs(5)));
    let healthy = ModelServer::start(Behaviour::Healthy);
    let down_url = format!("http://127.0.0.1:{}/v1", free_port());
    let yaml = format!(
        "defaults: {{timeout_ms: 300, breaker: {{failure_threshold: 100}}}}\nengines:\n  - {{name: slow, kind: openai, url: \"{}\", model: m}}\n  - {{name: down, kind: openai, url: \"{down_url}\", model: m}}\n  - {{name: healthy, kind: openai, url: \"{}\", model: m}}\ntasks:\n  translate: {{engines: [slow, down, healthy]}}\n",
        slow.url, healthy.url
    );
    let mut pipeline = Pipeline::with_engines(&stack, &yaml, "300,600");
    pipeline.publish_translation("detour", 2, 2);
    assert_exactly_once(&pipeline, "detour", 4);
    let completed: Vec<ValidatedResult> = read_decoded(&stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).completed(), &runtime);
    assert!(completed.iter().all(|r| r.engine == "healthy"), "{completed:?}");
    let n = completed.len() as f64;
    let mut calls = |engine: &str, outcome: &str| metric(&mut pipeline, "quire-inference", "quire_engine_calls_total", &[("engine", engine), ("outcome", outcome)]);
    assert_eq!((calls("slow", "RESOURCE"), calls("down", "TRANSIENT"), calls("healthy", "success")), (n, n, n));
}

#[test]
fn an_overloaded_engine_slows_the_stage_and_its_blocks_are_rescheduled() {
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Overloaded);
    let mut pipeline = pipeline(&stack, &[("llm", &server)], "{failure_threshold: 100}", "500,1000,2000,4000");
    pipeline.publish_translation("busy", 2, 2);
    let service = pipeline.service("quire-inference");
    let slowed = eventually(WAIT, "inference to back off", || {
        let retried = service.metric("quire_retries_total", &[("class", "RESOURCE")])?;
        let paused = service.metric("quire_stage_pauses_total", &[("stage", "inference")])?;
        (retried >= 1.0 && paused >= 1.0).then_some(())
    });
    if let Err(e) = slowed {
        panic!("{e}\n{}", pipeline.logs());
    }
    assert!(pipeline.service("quire-inference").log_text().contains("\"reason\":\"backpressure\""));
    server.set(Behaviour::Healthy);
    assert_exactly_once(&pipeline, "busy", 4);
}

#[test]
fn all_and_best_effort_strategies_keep_what_they_promise() {
    let runtime = runtime();
    let stack = Stack::start();
    let first = ModelServer::start(Behaviour::Healthy);
    let second = ModelServer::start(Behaviour::Healthy);
    let late = ModelServer::start(Behaviour::Slow(Duration::from_secs(3)));
    let engine = |name: &str, server: &ModelServer| format!("  - {{name: {name}, kind: openai, url: \"{}\", model: m}}\n", server.url);
    let yaml = format!(
        "engines:\n{}{}{}tasks:\n  translate: {{strategy: all, engines: [first, second]}}\n  language-id: {{strategy: best_effort, deadline_ms: 500, engines: [late, first]}}\n",
        engine("first", &first),
        engine("second", &second),
        engine("late", &late)
    );
    let pipeline = Pipeline::with_engines(&stack, &yaml, "300,600");
    pipeline.publish_translation("both", 1, 2);
    let data = write_dataset(stack.dir.path(), "quick", 1, 2);
    pipeline.publish(&data, "quick").expect("publish");
    assert_exactly_once(&pipeline, "both", 2);
    assert_exactly_once(&pipeline, "quick", 2);
    let results: Vec<InferenceResult> = read_decoded(&stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).results(), &runtime);
    for result in &results {
        let alternatives: Vec<&str> = result.alternatives.iter().map(|a| a.engine.as_str()).collect();
        match result.block.dataset_id.as_str() {
            // all: every engine's success, the first in chain order as the result.
            "both" => assert_eq!((result.engine.as_str(), alternatives), ("first", vec!["second"]), "{result:?}"),
            // best_effort: the late engine missed the deadline, the quick one's answer is kept.
            _ => assert_eq!((result.engine.as_str(), result.label.as_str(), alternatives.len()), ("first", "en", 0), "{result:?}"),
        }
    }
    assert_eq!(results.len(), 4);
}

#[test]
fn open_breaker_pauses_partitions_until_the_engine_recovers() {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Failing);
    let breaker = "{failure_threshold: 2, success_threshold: 1, open_ms: 2500, max_open_ms: 2500}";
    let mut pipeline = pipeline(&stack, &[("llm", &server)], breaker, "1000,2000,4000");
    pipeline.publish_translation("outage", 2, 3);
    let port = pipeline.service("quire-inference").metrics_port.unwrap();
    let engines_url = format!("http://127.0.0.1:{port}/health/engines");
    let health = |url: &str| -> serde_json::Value { runtime.block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() }) };
    let service = pipeline.service("quire-inference");
    let paused = eventually(WAIT, "inference to pause its partitions", || {
        (service.metric("quire_stage_pauses_total", &[("stage", "inference")])? >= 1.0).then_some(())
    });
    if let Err(e) = paused {
        panic!("{e}\n{}", pipeline.logs());
    }
    let service = pipeline.service("quire-inference");
    let open = health(&engines_url);
    assert_eq!(open[0]["state"], "open", "{open}");
    assert!(service.metric("quire_stage_paused_partitions", &[("stage", "inference")]).unwrap_or(0.0) >= 1.0);
    assert_eq!(service.metric("quire_engine_breaker_state", &[("engine", "llm")]), Some(2.0));
    server.set(Behaviour::Healthy);

    assert_exactly_once(&pipeline, "outage", 6);
    // Only the two calls that opened the breaker failed; the other blocks waited.
    assert_eq!(metric(&mut pipeline, "quire-inference", "quire_retries_total", &[]), 2.0, "{}", pipeline.logs());
    let closed = health(&engines_url);
    assert_eq!(closed[0]["state"], "closed", "{closed}");
    assert!(closed[0]["stats"]["rejected"].as_u64().unwrap() >= 1, "{closed}");
    let reset = |name: &str| runtime.block_on(async { reqwest::Client::new().post(format!("{engines_url}/{name}/reset")).send().await.unwrap().status().as_u16() });
    assert_eq!((reset("llm"), reset("nope")), (200, 404));
}

#[test]
fn malformed_and_wrong_schema_blocks_are_quarantined_with_their_reason() {
    let runtime = runtime();
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, "transactional");
    pipeline.start_all();
    let names = TopicNames::new(&pipeline.prefix);
    let codec = Codec::new(&stack.schema_registry_url).expect("codec");
    // Valid Confluent framing and Avro, but a StateChange where a Block belongs.
    let change = StateChange {
        block_id: "blk-wrong-schema".into(),
        dataset_id: "d".into(),
        from_state: BlockState::Queued,
        to_state: BlockState::Processing,
        stage: "test".into(),
        instance_id: "0".into(),
        reason: None,
        request_id: "r".into(),
        at_ms: 0,
    };
    let wrong = runtime.block_on(codec.encode(&names.events(), &change)).expect("encode");
    let producer: BaseProducer = stack.rdkafka_config().create().expect("producer");
    producer.send(BaseRecord::to(&names.queued()).partition(0).key("wrong").payload(&wrong)).expect("send");
    producer.send(BaseRecord::to(&names.queued()).partition(0).key("junk").payload(&[0u8, 0, 0][..])).expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");
    let data = write_dataset(stack.dir.path(), "behind", 3, 1);
    pipeline.publish(&data, "behind").expect("publish");
    assert_exactly_once(&pipeline, "behind", 3);

    let records = eventually(WAIT, "both bad blocks quarantined", || {
        let records: Vec<QuarantineRecord> = read_decoded(&stack, &pipeline.prefix, &names.quarantine(), &runtime);
        (records.len() >= 2).then_some(records)
    })
    .unwrap();
    let reason_of = |offset: i64| &records.iter().find(|r| r.original_offset == offset && r.original_topic == names.queued()).expect("record").reason;
    let (first, second) = (reason_of(0), reason_of(1));
    assert!(first.contains("wrong schema: value written with schema id") && first.contains("quire.StateChange") && first.contains("quire.Block"), "{first}");
    assert!(second.contains("Confluent wire format"), "{second}");
    assert!(records.iter().all(|r| r.error_class == "DATA" && r.failed_stage == "inference" && r.payload.is_some()));
}
