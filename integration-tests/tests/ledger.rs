//! Every stage ledgers each input it read: one entry per input record on the stage's
//! ledger topic, on the input's partition, naming the input's position, the effects it
//! made and the state its block reached, committed with those effects; and answers from
//! it, before any work, every input it answered before, whatever is left on its output
//! topics. The oracle is what the test published and reads on the stages' input and
//! output topics, and the model server's count of calls, not Quire's own index.

use integration_tests::model_server::{Behaviour, ModelServer};
use integration_tests::*;
use quire_core::ledger::LedgerEntry;
use quire_core::records::{Block, ValidatedResult};
use quire_core::{BlockState, StageName};
use quire_kafka::config::{KafkaArgs, TopicNames};
use quire_kafka::io::reader::TopicReader;
use quire_kafka::Codec;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

type Position = (String, i32, i64);

/// Every record on `topic`: its position and value.
fn records(stack: &Stack, prefix: &str, topic: &str) -> Vec<(Position, Vec<u8>)> {
    let reader = TopicReader::new(&stack.kafka_args(prefix)).expect("reader");
    let mut found = Vec::new();
    reader
        .read_to_end(topic, |_| None, Duration::from_secs(60), |m| {
            found.push(((m.topic().to_owned(), m.partition(), m.offset()), m.payload().unwrap_or_default().to_vec()))
        })
        .expect("read topic");
    found
}

/// The ledger of `stage`, by the position of the input each entry is about; each entry
/// checked to sit on its input's partition.
fn ledger(stack: &Stack, prefix: &str, stage: &str, codec: &Codec, runtime: &tokio::runtime::Runtime) -> BTreeMap<Position, LedgerEntry> {
    let mut entries = BTreeMap::new();
    for ((_, partition, _), value) in records(stack, prefix, &format!("{prefix}.{stage}.ledger")) {
        let entry: LedgerEntry = runtime.block_on(codec.decode(Some(&value))).expect("ledger entry decodes");
        assert_eq!(entry.input_partition, partition, "{stage}'s entry for {entry:?} is not on its input's partition");
        entries.insert((entry.input_topic.clone(), entry.input_partition, entry.input_offset), entry);
    }
    entries
}

fn every_stage_ledgers_each_input_on_its_partition(mode: &str) {
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, mode);
    pipeline.start_all();
    let data = write_dataset(stack.dir.path(), "ledgered", 4, 2);
    pipeline.publish(&data, "ledgered").expect("publish");
    assert_exactly_once(&pipeline, "ledgered", 8);
    let (prefix, names) = (pipeline.prefix.clone(), TopicNames::new(&pipeline.prefix));
    let runtime = runtime();
    let codec = Codec::new(&stack.schema_registry_url).unwrap();
    let positions = |topic: &str| records(&stack, &prefix, topic).into_iter().map(|(p, _)| p).collect::<BTreeSet<_>>();

    // The claimer: one entry per document published, naming the blocks it queued.
    let claimer = ledger(&stack, &prefix, "claimer", &codec, &runtime);
    assert_eq!(claimer.keys().cloned().collect::<BTreeSet<_>>(), positions(&names.ingest()), "one entry per ingest record");
    assert_eq!(claimer.len(), 4);
    let queued: Vec<Block> = read_decoded(&stack, &prefix, &names.queued(), &runtime);
    let queued_ids: BTreeSet<String> = queued.iter().map(|b| b.block_id.clone()).collect();
    let named: BTreeSet<String> = claimer.values().flat_map(|e| e.output_keys.clone()).collect();
    assert_eq!(named, queued_ids, "the claimer's entries name exactly the blocks queued");
    assert!(claimer.values().all(|e| e.state == Some(BlockState::Queued) && e.generation == 0), "{claimer:?}");
    let keys: BTreeSet<&String> = claimer.values().map(|e| &e.key).collect();
    assert_eq!(keys.len(), 4, "one ledger key per document");

    // Inference: one entry per queued block, answered.
    let inference = ledger(&stack, &prefix, "inference", &codec, &runtime);
    assert_eq!(inference.keys().cloned().collect::<BTreeSet<_>>(), positions(&names.queued()));
    assert!(inference.values().all(|e| e.state == Some(BlockState::Validating)), "{inference:?}");

    // The validator: one entry per result, each block completed once.
    let validator = ledger(&stack, &prefix, "validator", &codec, &runtime);
    assert_eq!(validator.keys().cloned().collect::<BTreeSet<_>>(), positions(&names.results()));
    let completed: Vec<ValidatedResult> = read_decoded(&stack, &prefix, &names.completed(), &runtime);
    let completed_ids: BTreeSet<String> = completed.iter().map(|r| r.block_id.clone()).collect();
    assert_eq!(validator.values().map(|e| e.key.clone()).collect::<BTreeSet<_>>(), completed_ids);
    assert!(validator.values().all(|e| e.state == Some(BlockState::Completed)), "{validator:?}");

    // Nothing failed, so the quarantine read nothing and ledgered nothing.
    assert!(ledger(&stack, &prefix, "quarantine", &codec, &runtime).is_empty());
}

#[test]
fn every_stage_ledgers_each_input_on_its_partition_transactional() {
    every_stage_ledgers_each_input_on_its_partition("transactional");
}

#[test]
fn every_stage_ledgers_each_input_on_its_partition_idempotent() {
    every_stage_ledgers_each_input_on_its_partition("idempotent");
}

/// Deletes every record of `topics` (DeleteRecords up to each partition's end), as
/// retention does once their time is up.
fn empty(stack: &Stack, prefix: &str, topics: &BTreeSet<String>, runtime: &tokio::runtime::Runtime) {
    let admin: AdminClient<DefaultClientContext> = stack.rdkafka_config().create().expect("admin client");
    let reader = TopicReader::new(&stack.kafka_args(prefix)).expect("reader");
    let mut list = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..reader.partitions(topic).expect("topic exists") {
            list.add_partition_offset(topic, partition, Offset::End).unwrap();
        }
    }
    let deleted = runtime.block_on(admin.delete_records(&list, &AdminOptions::new())).expect("delete records");
    for element in deleted.elements() {
        assert!(element.error().is_ok(), "deleting {}/{}: {:?}", element.topic(), element.partition(), element.error());
    }
    for topic in topics {
        assert_eq!(count_records(stack, prefix, topic), 0, "{topic} was emptied");
    }
}

/// An engines config translating with the test model server `server`, written to the
/// stack's directory; its path.
fn engines_config(stack: &Stack, server: &ModelServer) -> String {
    let yaml = format!("engines:\n  - {{name: llm, kind: openai, url: \"{}\", model: test-model}}\ntasks:\n  translate:\n    engines: [llm]\n", server.url);
    stack.write_file("engines", "yaml", &yaml)
}

fn answered(pipeline: &mut Pipeline<'_>, service: &str, stage: &str) -> f64 {
    pipeline.service(service).metric("quire_stage_inputs_answered_total", &[("stage", stage), ("how", "done")]).unwrap_or(0.0)
}

/// With every stage's output topics emptied (as retention empties them) and the stages
/// restarted, inference's local ledger copy lost with its disk, the same dataset
/// published again, and copies of the blocks and results the stages read written to
/// their inputs again: the ledgers answer all of it before any work. No engine call, no
/// new queued block, no audit event, nothing completed again.
#[test]
fn with_the_outputs_emptied_a_resubmission_calls_no_engine_and_completes_nothing() {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Healthy);
    let config = engines_config(&stack, &server);
    let mut pipeline = Pipeline::with_env(&stack, "transactional", &[("QUIRE_ENGINES_CONFIG", &config)]);
    pipeline.start_all();
    pipeline.publish_translation("again", 3, 2);
    let report = assert_exactly_once(&pipeline, "again", 6);
    let blocks = report_field(&report, "blocks_expected") as usize;
    assert_eq!(server.calls(), blocks, "one engine call per block");
    let (prefix, names) = (pipeline.prefix.clone(), TopicNames::new(&pipeline.prefix));
    let (queued, results) = (copies(&stack, &prefix, &names.queued()), copies(&stack, &prefix, &names.results()));
    assert_eq!((queued.len(), results.len()), (blocks, blocks));

    for service in &mut pipeline.services {
        assert!(service.terminate(Duration::from_secs(30)), "{} stops cleanly", service.name);
    }
    let schedule = KafkaArgs::default().retry_schedule();
    let mut outputs: BTreeSet<String> = StageName::ALL.into_iter().flat_map(|stage| names.outputs(stage, &schedule)).collect();
    outputs.insert(names.events());
    empty(&stack, &prefix, &outputs, &runtime);
    let inference_store = stack.dir.path().join("state").join(format!("{prefix}-inference-0.redb"));
    std::fs::remove_file(&inference_store).unwrap_or_else(|e| panic!("{}: {e}", inference_store.display()));

    pipeline.start_all();
    pipeline.publish_translation("again", 3, 2);
    write_again(&stack, &names.queued(), &queued);
    write_again(&stack, &names.results(), &results);
    eventually(WAIT, "every stage to answer what it read", || {
        let claimer = answered(&mut pipeline, "quire-claimer", "claimer");
        let inference = answered(&mut pipeline, "quire-inference", "inference");
        let validator = answered(&mut pipeline, "quire-validator", "validator");
        (claimer >= 3.0 && inference >= blocks as f64 && validator >= blocks as f64).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.calls(), blocks, "no engine call for work the ledger answered");
    assert_eq!(count_records(&stack, &prefix, &names.completed()), 0, "nothing completed again");
    assert_eq!(count_records(&stack, &prefix, &names.queued()), blocks, "no block queued again: only the copies written back");
    assert_eq!(count_records(&stack, &prefix, &names.results()), blocks, "no new result: only the copies written back");
    assert_eq!(count_records(&stack, &prefix, &names.events()), 0, "no state change audited");
}

/// Inference dies between writing a block's retry and committing it (its records reached
/// the broker, its offsets did not), with an engine that failed once and answers from
/// then on. Whatever the broker keeps of the dead batch, the block ends COMPLETED once,
/// never also ERROR or quarantined, and the engine is asked twice in all: the failed
/// call, and one that answers (the replayed attempt's, or the retry's).
fn inference_killed_between_a_retry_and_its_commit_completes_the_block_once(mode: &str) {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Healthy);
    server.fail_first(1);
    let config = engines_config(&stack, &server);
    let mut pipeline = Pipeline::with_env(&stack, mode, &[("QUIRE_ENGINES_CONFIG", &config), ("QUIRE_RETRY_DELAYS_MS", "300,600")]);
    for stage in ["quire-claimer", "quire-validator", "quire-quarantine"] {
        pipeline.start(stage, "0");
    }
    pipeline.env.insert("QUIRE_FAULT_CRASH_BEFORE_COMMIT_WITH".into(), "-retry-".into());
    let crashing = pipeline.start("quire-inference", "0");
    pipeline.env.remove("QUIRE_FAULT_CRASH_BEFORE_COMMIT_WITH");
    pipeline.publish_translation("crash", 1, 1);
    eventually(WAIT, "inference to die before committing the retry", || pipeline.services[crashing].child.try_wait().ok().flatten())
        .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    assert!(pipeline.services[crashing].log_text().contains("injected crash before the commit"), "{}", pipeline.logs());
    assert_eq!(server.calls(), 1, "the failed call");

    pipeline.start("quire-inference", "0");
    let report = assert_exactly_once(&pipeline, "crash", 1);
    assert_eq!(report_field(&report, "blocks_expected"), 1);
    let names = TopicNames::new(&pipeline.prefix);
    let log: Vec<quire_core::records::StateChange> = read_decoded(&stack, &pipeline.prefix, &names.events(), &runtime);
    let changes: Vec<String> = log.iter().map(|c| format!("{}->{}", c.from_state, c.to_state)).collect();
    assert!(log.iter().all(|c| c.to_state != BlockState::Error), "never ERROR: {changes:?}");
    assert_eq!(count_records(&stack, &pipeline.prefix, &names.quarantine()), 0, "never quarantined: {changes:?}");
    assert_eq!(server.calls(), 2, "one failed call, one that answered: {changes:?}");
}

#[test]
fn inference_killed_between_a_retry_and_its_commit_completes_the_block_once_transactional() {
    inference_killed_between_a_retry_and_its_commit_completes_the_block_once("transactional");
}

#[test]
fn inference_killed_between_a_retry_and_its_commit_completes_the_block_once_idempotent() {
    inference_killed_between_a_retry_and_its_commit_completes_the_block_once("idempotent");
}
