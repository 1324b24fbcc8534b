//! Trace context through the pipeline: the W3C `traceparent` that `quire publish` puts on
//! a dataset's records reaches every completed block and audit event of that dataset,
//! as a child span of the same trace.

use integration_tests::*;
use quire_kafka::config::TopicNames;
use quire_kafka::reader::TopicReader;
use rdkafka::message::Headers;
use rdkafka::Message;
use std::time::Duration;

/// The `traceparent` of every record on `topic`.
fn traceparents(stack: &Stack, prefix: &str, topic: &str) -> Vec<Option<String>> {
    let reader = TopicReader::new(&stack.kafka_args(prefix)).expect("reader");
    let mut found = Vec::new();
    reader
        .read_to_end(topic, |_| None, Duration::from_secs(60), |m| {
            let header = m.headers().and_then(|hs| hs.iter().find(|h| h.key == "traceparent").and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned())));
            found.push(header);
        })
        .expect("read topic");
    found
}

#[test]
fn the_trace_id_published_with_a_dataset_reaches_its_completed_records() {
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, "transactional");
    pipeline.start_all();
    let data = write_dataset(stack.dir.path(), "traced", 3, 2);
    let out = quire(&["publish", "--quiet", "--dataset", "traced", &data.to_string_lossy()], &pipeline.env).expect("publish");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let trace_id = out.lines().find_map(|l| l.strip_prefix("trace id:")).map(str::trim).expect("publish prints the trace id").to_owned();
    assert_eq!(trace_id.len(), 32, "{out}");
    let report = assert_exactly_once(&pipeline, "traced", 6);

    let names = TopicNames::new(&pipeline.prefix);
    let ingest = traceparents(&stack, &pipeline.prefix, &names.ingest());
    let published_span = ingest[0].as_deref().expect("ingest records carry traceparent")[36..52].to_owned();
    for topic in [names.queued(), names.results(), names.completed(), names.events()] {
        let found = traceparents(&stack, &pipeline.prefix, &topic);
        assert!(!found.is_empty(), "{topic} is empty");
        for header in &found {
            let header = header.as_deref().unwrap_or_else(|| panic!("a record on {topic} has no traceparent"));
            assert_eq!(&header[3..35], trace_id, "{topic}: {header}");
            assert_ne!(&header[36..52], published_span, "{topic}: each stage is a child span");
        }
    }
    assert_eq!(traceparents(&stack, &pipeline.prefix, &names.completed()).len() as u64, report_field(&report, "blocks_expected"));
}
