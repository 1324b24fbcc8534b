//! What a stage reports is what it committed: the events of a batch that was aborted
//! after its effects were built never fire, and its replay fires each of them once.
//! The claimer runs in this process, so the test hook (`EventRecorder`) sees its
//! events; a fault injected into its producer aborts its second batch.

use integration_tests::{committed_offsets, eventually, read_decoded, runtime, Pipeline, Stack, WAIT};
use quire_core::records::Block;
use quire_core::{BlockState, StageName};
use quire_kafka::pipeline::CancellationToken;
use quire_kafka::stages::claimer::Claimer;
use quire_kafka::telemetry::events::{BatchAborted, BlockTransition, DeadLettered, RetryScheduled};
use quire_kafka::telemetry::EventRecorder;
use quire_kafka::{KafkaArgs, StageContext};
use std::collections::{BTreeSet, HashMap};

const DOCUMENTS: i64 = 12;

#[test]
fn an_aborted_batch_fires_no_events_and_its_replay_fires_each_once() {
    let stack = Stack::start();
    let pipeline = Pipeline::new(&stack, "transactional");
    pipeline.publish_translation("events", DOCUMENTS as usize, 1);
    // Batches of 3 documents; the producer fails fatally after the first commit.
    let args = KafkaArgs { max_batch: 3, fault_fatal_producer_after_batches: 1, ..stack.kafka_args(&pipeline.prefix) };
    let group = format!("{}-claimer", pipeline.prefix);
    let ingest = format!("{}.ingest", pipeline.prefix);

    let recorder = EventRecorder::start();
    let runtime = runtime();
    let shutdown = CancellationToken::new();
    let running = runtime.block_on(async {
        let context = StageContext::new(StageName::Claimer, &args).expect("claimer context");
        quire_kafka::io::topics::register_all_schemas(&context.codec, &args).await.expect("schemas register");
        tokio::spawn(quire_kafka::pipeline::run(Claimer::new(context, 600), args.clone(), shutdown.clone()))
    });
    let consumed = || committed_offsets(&stack, &pipeline.prefix, &group).iter().filter(|((t, _), _)| *t == ingest).map(|(_, o)| *o).sum::<i64>();
    eventually(WAIT, "the claimer to commit every document", || (consumed() == DOCUMENTS).then_some(())).unwrap();
    shutdown.cancel();
    runtime.block_on(running).expect("claimer task").expect("claimer stops cleanly");

    let aborted: usize = recorder.fired::<BatchAborted>().iter().filter(|e| e.stage == "claimer").map(|e| e.inputs).sum();
    assert!(aborted > 0, "no batch holding effects was aborted: {:?}", recorder.names());

    // The oracle: what a read_committed reader finds on the queued topic.
    let queued: Vec<Block> = read_decoded(&stack, &pipeline.prefix, &format!("{}.blocks.queued", pipeline.prefix), &runtime);
    let committed: BTreeSet<String> = queued.iter().map(|b| b.block_id.clone()).collect();
    assert_eq!(queued.len(), committed.len(), "each block queued once");
    assert!(committed.len() >= DOCUMENTS as usize);

    let mut reported: HashMap<(String, BlockState, BlockState), usize> = HashMap::new();
    for transition in recorder.fired::<BlockTransition>() {
        *reported.entry((transition.block_id, transition.from, transition.to)).or_default() += 1;
    }
    assert!(recorder.fired::<DeadLettered>().is_empty() && recorder.fired::<RetryScheduled>().is_empty(), "a well-formed dataset");
    for step in [(BlockState::Pending, BlockState::Claimed), (BlockState::Claimed, BlockState::Queued)] {
        let blocks: BTreeSet<String> = reported.keys().filter(|(_, f, t)| (*f, *t) == step).map(|(b, _, _)| b.clone()).collect();
        assert_eq!(blocks, committed, "{step:?} reported for exactly the committed blocks");
    }
    let twice: Vec<_> = reported.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "reported more than once despite the abort and replay: {twice:?}");
}
