//! Every stage ledgers each input it read: one entry per input record on the stage's
//! ledger topic, on the input's partition, naming the input's position, the effects it
//! made and the state its block reached, committed with those effects. The oracle is
//! what the test reads on the stages' input and output topics, not Quire's own index.

use integration_tests::*;
use quire_core::ledger::LedgerEntry;
use quire_core::records::{Block, ValidatedResult};
use quire_core::BlockState;
use quire_kafka::config::TopicNames;
use quire_kafka::io::reader::TopicReader;
use quire_kafka::Codec;
use rdkafka::Message;
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
