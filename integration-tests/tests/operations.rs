//! What an operator does after a failure, through the real broker and registry: list
//! and replay the quarantine once the cause is fixed (every block completes exactly
//! once, replaying again changes nothing), re-drive single blocks through the state
//! machine, and cancel a dataset mid-run without any half-written block.

use integration_tests::model_server::{Behaviour, ModelServer};
use integration_tests::*;
use quire_core::records::{StateChange, ValidatedResult};
use quire_core::{BlockState, StageName};
use quire_kafka::config::TopicNames;
use std::collections::HashMap;
use std::time::Duration;

/// A pipeline translating with one model server, retrying after 200 and 400 ms.
fn pipeline<'a>(stack: &'a Stack, server: &ModelServer) -> Pipeline<'a> {
    let yaml = format!(
        "defaults: {{timeout_ms: 5000, breaker: {{failure_threshold: 1000}}}}\nengines:\n  - {{name: llm, kind: openai, url: \"{}\", model: m}}\ntasks:\n  translate: {{engines: [llm]}}\n",
        server.url
    );
    Pipeline::with_engines(stack, &yaml, "200,400")
}

fn stdout(pipeline: &Pipeline<'_>, args: &[&str]) -> String {
    String::from_utf8_lossy(&quire(args, &pipeline.env).unwrap().stdout).into_owned()
}

/// Waits until `blocks` blocks of the pipeline sit in quarantine; returns their ids.
fn wait_quarantined(pipeline: &Pipeline<'_>, dataset: &str, blocks: usize) -> Vec<String> {
    let listed = eventually(WAIT, "blocks in quarantine", || {
        let out = stdout(pipeline, &["dlq", "list", "--json", "--dataset", dataset]);
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        (lines.len() >= blocks).then_some(lines)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    listed.iter().map(|r| r["key"].as_str().unwrap().to_owned()).collect()
}

fn completed(pipeline: &Pipeline<'_>, runtime: &tokio::runtime::Runtime) -> Vec<ValidatedResult> {
    read_decoded(pipeline.stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).completed(), runtime)
}

fn events(pipeline: &Pipeline<'_>, runtime: &tokio::runtime::Runtime) -> Vec<StateChange> {
    read_decoded(pipeline.stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).events(), runtime)
}

#[test]
fn dlq_replay_after_the_fix_completes_every_block_exactly_once() {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Failing);
    let pipeline = pipeline(&stack, &server);
    pipeline.publish_translation("doomed", 1, 3);
    let keys = wait_quarantined(&pipeline, "doomed", 3);
    assert_eq!(keys.len(), 3);

    let table = stdout(&pipeline, &["dlq", "list"]);
    assert!(table.contains("TRANSIENT") && table.contains("gave up after 3 attempts") && table.contains("3 record(s)"), "{table}");
    assert!(stdout(&pipeline, &["dlq", "list", "--class", "data"]).contains("0 record(s)"));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&pipeline, &["dlq", "show", &keys[0]])).expect("show prints JSON");
    assert_eq!((shown["status"].as_str(), shown["payload"]["block_id"].as_str()), (Some("QUARANTINED"), Some(keys[0].as_str())));
    assert_eq!(shown["attempts"], 3);

    let dry = stdout(&pipeline, &["dlq", "replay", "--dry-run", "--dataset", "doomed"]);
    assert!(dry.contains("3 selected, would replay 3"), "{dry}");
    assert_eq!(wait_quarantined(&pipeline, "doomed", 3).len(), 3, "a dry run changes nothing");

    server.set(Behaviour::Healthy);
    let replay = stdout(&pipeline, &["dlq", "replay", "--dataset", "doomed", "--rate", "20", "--quiet"]);
    assert!(replay.contains("3 selected, replayed 3, 0 already completed, 0 failed"), "{replay}");
    assert_exactly_once(&pipeline, "doomed", 3);
    assert!(stdout(&pipeline, &["dlq", "list", "--dataset", "doomed"]).contains("0 record(s)"));
    // The replayed blocks went on in the trace they were quarantined with.
    let trace_id = shown["trace_id"].as_str().expect("quarantine keeps the trace id").to_owned();
    for traceparent in traceparents(&stack, &pipeline.prefix, &TopicNames::new(&pipeline.prefix).completed()) {
        assert_eq!(traceparent.as_deref().map(|t| &t[3..35]), Some(trace_id.as_str()));
    }

    // Replaying again, even records already replayed, writes nothing new.
    let again = stdout(&pipeline, &["dlq", "replay", "--dataset", "doomed", "--all", "--quiet"]);
    assert!(again.contains("3 selected, replayed 0, 3 already completed"), "{again}");
    std::thread::sleep(Duration::from_secs(2));
    let done = completed(&pipeline, &runtime);
    assert_eq!(done.len(), 3, "{done:?}");
    let replays: Vec<_> = events(&pipeline, &runtime)
        .into_iter()
        .filter(|e| e.from_state == BlockState::Error && e.to_state == BlockState::Queued)
        .collect();
    assert_eq!(replays.len(), 3, "every replay is audited once");
    assert!(replays.iter().all(|e| e.stage == "operator" && e.reason.as_deref().unwrap().contains("(filter: dataset=doomed)")), "{replays:?}");
}

#[test]
fn redrive_requeues_a_failed_block_and_refuses_a_completed_one() {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Failing);
    let pipeline = pipeline(&stack, &server);
    pipeline.publish_translation("stuck", 1, 2);
    let keys = wait_quarantined(&pipeline, "stuck", 2);
    server.set(Behaviour::Healthy);
    let out = stdout(&pipeline, &["redrive", &keys[0]]);
    assert!(out.contains(&format!("{}: ERROR → QUEUED (generation 1)", keys[0])), "{out}");
    eventually(WAIT, "the re-driven block to complete", || (completed(&pipeline, &runtime).len() == 1).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    assert_eq!(completed(&pipeline, &runtime)[0].block_id, keys[0]);

    let refused = quire_status(&["redrive", &keys[0], "blk-000000000000000000000000"], &pipeline.env).unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr.contains("COMPLETED → QUEUED") && stderr.contains("no audited state"), "{stderr}");
    // The other block still waits in quarantine.
    let left = stdout(&pipeline, &["dlq", "list", "--dataset", "stuck", "--json"]);
    assert_eq!(left.lines().count(), 1, "{left}");
    assert!(left.contains(&keys[1]));
}

#[test]
fn cancel_leaves_no_completed_output_for_canceled_blocks() {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Slow(Duration::from_millis(300)));
    let pipeline = pipeline(&stack, &server);
    pipeline.publish_translation("cancel-me", 2, 8);
    eventually(WAIT, "some blocks to complete", || (completed(&pipeline, &runtime).len() >= 2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    let out = stdout(&pipeline, &["cancel", "cancel-me", "--reason", "wrong target language"]);
    assert!(out.contains("dataset cancel-me canceled"), "{out}");

    let (sound, report) = pipeline.verify("cancel-me", WAIT).expect("verify");
    assert!(sound, "{report}\n{}", pipeline.logs());
    let canceled = report_field(&report, "canceled");
    let completed_once = report_field(&report, "completed_once");
    assert!(canceled >= 1, "the cancel came too late to prove anything: {report}");
    assert_eq!(canceled + completed_once, report_field(&report, "blocks_expected"), "{report}");

    std::thread::sleep(Duration::from_secs(2));
    let mut last: HashMap<String, BlockState> = HashMap::new();
    for change in events(&pipeline, &runtime) {
        last.insert(change.block_id, change.to_state);
    }
    let done = completed(&pipeline, &runtime);
    assert_eq!(done.len() as u64, completed_once, "nothing completed after its block was canceled");
    for result in &done {
        assert_eq!(last[&result.block_id], BlockState::Completed, "{} completed but its last state is not COMPLETED", result.block_id);
    }
    assert_eq!(last.values().filter(|s| **s == BlockState::Canceled).count() as u64, canceled);
    let status = stdout(&pipeline, &["status", "cancel-me"]);
    assert!(status.contains(&format!("canceled                   {canceled}")), "{status}");
}

/// A stage that reads its input again from the start (its offsets lost, or rewound by an
/// operator) writes nothing a second time: each effect, a canceled block's too, is
/// found in what the stage already wrote. (The chaos run once found a block canceled
/// twice: a cancel was only audit records, which no stage's dedup index read.)
#[test]
fn stages_replaying_their_input_from_the_start_write_nothing_again() {
    let runtime = runtime();
    let stack = Stack::start();
    let server = ModelServer::start(Behaviour::Slow(Duration::from_millis(300)));
    let mut pipeline = pipeline(&stack, &server);
    // Canceled before its submission: the claimer cancels every block.
    stdout(&pipeline, &["cancel", "canceled-early", "--reason", "never wanted"]);
    pipeline.publish_translation("canceled-early", 2, 3);
    // Canceled mid-run: blocks are canceled further down.
    pipeline.publish_translation("canceled-late", 2, 8);
    eventually(WAIT, "some blocks to complete", || (completed(&pipeline, &runtime).len() >= 2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    stdout(&pipeline, &["cancel", "canceled-late", "--reason", "wrong target language"]);
    for dataset in ["canceled-early", "canceled-late"] {
        let (sound, report) = pipeline.verify(dataset, WAIT).expect("verify");
        assert!(sound, "{report}\n{}", pipeline.logs());
        assert!(report_field(&report, "canceled") >= 1, "{dataset}: nothing was canceled: {report}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let events_before = events(&pipeline, &runtime).len();
    let completed_before = completed(&pipeline, &runtime).len();

    let names = TopicNames::new(&pipeline.prefix);
    // Not the quarantine: nothing failed, so it read nothing.
    let groups: Vec<String> = [StageName::Claimer, StageName::Inference, StageName::Validator].map(|stage| names.group(stage)).to_vec();
    for service in &mut pipeline.services {
        assert!(service.terminate(Duration::from_secs(30)), "{} did not stop cleanly", service.name);
    }
    let mut ends = Vec::new();
    for group in &groups {
        let committed = committed_offsets(&stack, &pipeline.prefix, group);
        assert!(!committed.is_empty(), "{group} committed nothing");
        rewind_group(&stack, group, committed.keys().cloned());
        assert!(committed_offsets(&stack, &pipeline.prefix, group).values().all(|next| *next == 0), "{group} was not rewound");
        ends.push((group.clone(), committed));
    }
    pipeline.start_all();
    for (group, end) in &ends {
        eventually(WAIT, &format!("{group} to read its input again"), || {
            let now = committed_offsets(&stack, &pipeline.prefix, group);
            end.iter().all(|(partition, next)| now.get(partition).is_some_and(|n| n >= next)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(completed(&pipeline, &runtime).len(), completed_before, "the replay completed blocks again");
    let mut written: HashMap<String, usize> = HashMap::new();
    for change in events(&pipeline, &runtime) {
        *written.entry(format!("{} {:?}->{:?} by {}", change.block_id, change.from_state, change.to_state, change.stage)).or_default() += 1;
    }
    let twice: Vec<&String> = written.iter().filter(|(_, n)| **n > 1).map(|(change, _)| change).collect();
    assert!(twice.is_empty(), "the replay wrote {} audit events again, e.g. {:?}", twice.len(), &twice[..twice.len().min(5)]);
    assert_eq!(written.values().sum::<usize>(), events_before, "the replay wrote new audit events");
}

/// A registry that restarted empty knows no subject: an operator command registers the
/// schemas it writes with before its first record, so it still works (the chaos run
/// once waited forever on a `quire cancel` failing with "subject not found").
#[test]
fn operator_commands_work_after_the_registry_restarted_empty() {
    let stack = Stack::start();
    let pipeline = Pipeline::new(&stack, "transactional");
    quire(&["stack", "restart", "--dir", &stack.dir.path().to_string_lossy(), "registry"], &Default::default()).expect("registry restart");
    let out = stdout(&pipeline, &["cancel", "never-published", "--reason", "after a registry restart"]);
    assert!(out.contains("dataset never-published canceled"), "{out}");
}

/// A cancellation cannot be undone, so a record on the control topic that is not a
/// `DatasetControl` asking to cancel its key's dataset cancels nothing: garbage, an
/// empty value and another dataset's cancel under this key are ignored (and logged).
#[test]
fn malformed_control_records_cancel_nothing() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, "transactional");
    let control = TopicNames::new(&pipeline.prefix).control();
    let producer: BaseProducer = stack.rdkafka_config().create().expect("producer");
    for value in [&b"\x00\x00\x00\x00\x01garbage"[..], b"", b"not even the wire format"] {
        producer.send(BaseRecord::to(&control).key("victim").payload(value)).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    pipeline.start_all();
    let data = write_dataset(stack.dir.path(), "victim", 4, 2);
    pipeline.publish(&data, "victim").expect("publish");
    let (sound, report) = pipeline.verify("victim", WAIT).expect("verify");
    assert!(sound, "{report}\n{}", pipeline.logs());
    assert_eq!(report_field(&report, "canceled"), 0, "{report}");
    assert_eq!(report_field(&report, "completed_once"), report_field(&report, "blocks_expected"), "{report}");
    let claimer_log = pipeline.service("quire-claimer").log_text();
    assert!(claimer_log.contains("control record ignored"), "the claimer says why it ignored them");
}
