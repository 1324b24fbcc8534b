//! Trace context through the pipeline: the W3C `traceparent` that `quire publish` puts on
//! a dataset's records reaches every completed block and audit event of that dataset,
//! as a child span of the same trace.

use integration_tests::*;
use quire_kafka::config::TopicNames;

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

#[test]
fn spans_exported_over_otlp_chain_each_completed_block_back_to_its_publish() {
    let collector = integration_tests::otlp_collector::OtlpCollector::start();
    let stack = Stack::start();
    let mut pipeline = Pipeline::with_env(&stack, "transactional", &collector.env());
    pipeline.start_all();
    let data = write_dataset(stack.dir.path(), "spanned", 2, 2);
    let out = quire(&["publish", "--quiet", "--dataset", "spanned", &data.to_string_lossy()], &pipeline.env).expect("publish");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let trace_id = out.lines().find_map(|l| l.strip_prefix("trace id:")).map(str::trim).expect("publish prints the trace id").to_owned();
    let report = assert_exactly_once(&pipeline, "spanned", 4);
    let names = TopicNames::new(&pipeline.prefix);
    let completed: Vec<String> = traceparents(&stack, &pipeline.prefix, &names.completed()).into_iter().map(|t| t.expect("traceparent")).collect();
    assert_eq!(completed.len() as u64, report_field(&report, "blocks_expected"));

    // Each completed record's span leads back, parent by parent, to the publish.
    let chains = eventually(WAIT, "every span of the dataset exported", || {
        let spans: std::collections::HashMap<String, integration_tests::otlp_collector::CollectedSpan> =
            collector.spans().into_iter().filter(|s| s.trace_id == trace_id).map(|s| (s.span_id.clone(), s)).collect();
        completed
            .iter()
            .map(|traceparent| {
                let mut chain = Vec::new();
                let mut id = traceparent[36..52].to_owned();
                while let Some(span) = spans.get(&id) {
                    chain.push(span.clone());
                    if span.parent_span_id.is_empty() {
                        return Some(chain);
                    }
                    id = span.parent_span_id.clone();
                }
                None
            })
            .collect::<Option<Vec<_>>>()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", collector.spans(), pipeline.logs()));
    for chain in chains {
        let path: Vec<(&str, &str)> = chain.iter().map(|s| (s.service.as_str(), s.name.as_str())).collect();
        assert_eq!(
            path,
            [
                ("quire-validator", format!("process {}", names.results()).as_str()),
                ("quire-inference", format!("process {}", names.queued()).as_str()),
                ("quire-claimer", format!("process {}", names.ingest()).as_str()),
                ("quire-cli", format!("send {}", names.ingest()).as_str()),
            ],
            "{chain:?}"
        );
        let validator = &chain[0];
        assert_eq!(validator.kind, 5, "CONSUMER: {validator:?}");
        assert_eq!(chain[3].kind, 4, "PRODUCER: {:?}", chain[3]);
        assert_eq!(validator.attribute("messaging.system"), Some("kafka"));
        assert_eq!(validator.attribute("messaging.consumer.group.name"), Some(format!("{}-validator", pipeline.prefix).as_str()));
        assert_eq!(validator.attribute("messaging.destination.name"), Some(names.results().as_str()));
        assert!(validator.attribute("messaging.kafka.offset").is_some() && validator.attribute("messaging.kafka.message.key").is_some(), "{validator:?}");
    }
}
