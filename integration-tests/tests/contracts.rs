//! Contracts through the real registry and broker: schemas are registered BACKWARD
//! compatible, breaking changes are refused, the released schemas can be evolved into
//! the current ones, records are in the Confluent wire format, and topics match
//! topics.yaml (apply is idempotent and reports drift). Also: SQLite storage keeps
//! records across a broker restart.

use integration_tests::*;
use quire_kafka::io::codec::{schema_text, value_subject, SCHEMAS};
use quire_kafka::config::TopicNames;
use quire_kafka::io::reader::TopicReader;
use quire_kafka::io::topics::TopicsFile;
use quire_kafka::Codec;
use rdkafka::Message;
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

fn get_json(url: &str) -> serde_json::Value {
    runtime().block_on(async { reqwest::get(url).await.expect("GET").json().await.expect("JSON body") })
}

#[test]
fn schemas_are_backward_compatible_and_breaking_changes_are_refused() {
    let rt = runtime();
    let stack = Stack::start();
    let prefix = unique("c");
    quire(&["topics", "apply"], &stack.env(&prefix)).expect("topics apply");
    let codec = Codec::new(&stack.schema_registry_url).unwrap();
    let names = TopicNames::new(&prefix);
    let queued = names.queued();
    let config = get_json(&format!("{}/config/{}", stack.schema_registry_url, value_subject(&queued)));
    assert_eq!(config["compatibilityLevel"], "BACKWARD", "{config}");

    let block: serde_json::Value = serde_json::from_str(schema_text("Block").unwrap()).unwrap();
    let with_field = |field: serde_json::Value| {
        let mut schema = block.clone();
        schema["fields"].as_array_mut().unwrap().push(field);
        schema.to_string()
    };
    let optional = with_field(serde_json::json!({"name": "priority", "type": ["null", "int"], "default": null}));
    let required = with_field(serde_json::json!({"name": "priority", "type": "int"}));
    assert!(rt.block_on(codec.is_compatible(&queued, schema_text("Block").unwrap())).unwrap());
    assert!(rt.block_on(codec.is_compatible(&queued, &optional)).unwrap(), "adding an optional field is compatible");
    assert!(!rt.block_on(codec.is_compatible(&queued, &required)).unwrap(), "a new field without default must be refused");
    let refused = rt.block_on(codec.register(&queued, &required)).unwrap_err().to_string();
    assert!(refused.contains("409") && refused.contains("priority"), "{refused}");
}

#[test]
fn current_schemas_evolve_from_the_released_ones() {
    let rt = runtime();
    let stack = Stack::start();
    let codec = Codec::new(&stack.schema_registry_url).unwrap();
    let released = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/released");
    // Schemas added since the last release have nothing to evolve from.
    const NEW_SINCE_RELEASE: [&str; 3] = ["DatasetControl", "InstanceHeartbeat", "LedgerEntry"];
    for (name, current) in SCHEMAS {
        if NEW_SINCE_RELEASE.contains(&name) {
            assert!(!released.join(format!("{name}.avsc")).exists(), "{name} was released: remove it from NEW_SINCE_RELEASE");
            continue;
        }
        let subject_topic = unique(&format!("compat-{name}-"));
        let old = std::fs::read_to_string(released.join(format!("{name}.avsc"))).unwrap_or_else(|e| panic!("released {name}: {e}"));
        rt.block_on(codec.register(&subject_topic, &old)).expect("register released schema");
        rt.block_on(codec.register(&subject_topic, current))
            .unwrap_or_else(|e| panic!("schemas/{name}.avsc is not BACKWARD compatible with schemas/released/{name}.avsc: {e}"));
    }
}

#[test]
fn records_are_in_confluent_wire_format() {
    let stack = Stack::start();
    let pipeline = Pipeline::new(&stack, "transactional");
    let data = write_dataset(stack.dir.path(), "wire", 2, 1);
    pipeline.publish(&data, "wire").expect("publish");
    let reader = TopicReader::new(&stack.kafka_args(&pipeline.prefix)).unwrap();
    let mut values = Vec::new();
    reader
        .read_to_end(&TopicNames::new(&pipeline.prefix).ingest(), |_| None, Duration::from_secs(30), |m| values.push(m.payload().unwrap().to_vec()))
        .unwrap();
    assert_eq!(values.len(), 2);
    for value in values {
        assert_eq!(value[0], 0, "magic byte");
        let id = i32::from_be_bytes(value[1..5].try_into().unwrap());
        let registered = get_json(&format!("{}/schemas/ids/{id}", stack.schema_registry_url));
        let schema: serde_json::Value = serde_json::from_str(registered["schema"].as_str().unwrap()).unwrap();
        assert_eq!(schema["name"], "DatasetSubmission", "schema {id}: {registered}");
    }
}

#[test]
fn topics_apply_is_idempotent_and_matches_topics_yaml() {
    let stack = Stack::start();
    let prefix = unique("a");
    let env = stack.env(&prefix);
    let dry = quire(&["topics", "apply", "--dry-run"], &env).unwrap();
    let dry = String::from_utf8_lossy(&dry.stdout).into_owned();
    // Fifteen topics (four of them the stages' ledgers), and one retry topic per default
    // delay of the queued topic.
    assert_eq!(dry.matches("would create: ").count(), 18, "{dry}");
    assert!(dry.contains(&format!("would create: {prefix}.inference.ledger\n")), "{dry}");
    assert!(dry.contains(&format!("would create: {prefix}.blocks.queued-retry-30000\n")), "{dry}");
    let first = String::from_utf8_lossy(&quire(&["topics", "apply"], &env).unwrap().stdout).into_owned();
    assert_eq!(first.matches("created: ").count(), 18, "{first}");
    let second = String::from_utf8_lossy(&quire(&["topics", "apply"], &env).unwrap().stdout).into_owned();
    assert!(!second.contains("created: ") && second.contains("unchanged: 18 topic(s)") && !second.contains("drift"), "{second}");
    // Against the production profile the single broker shows drift, and apply says so.
    let production = String::from_utf8_lossy(&quire(&["topics", "apply", "--profile", "production", "--dry-run"], &env).unwrap().stdout).into_owned();
    assert!(production.contains("drift: ") && production.contains("partitions 3 on the cluster, 12 declared"), "{production}");
    let desired = TopicsFile::load(None).unwrap().desired("local", &prefix, &Default::default()).unwrap();
    let reader = TopicReader::new(&stack.kafka_args(&prefix)).unwrap();
    for topic in desired {
        assert_eq!(reader.partitions(&topic.name).unwrap(), topic.partitions, "{}", topic.name);
    }
}

#[test]
fn sqlite_storage_keeps_records_across_a_broker_restart() {
    let stack = Stack::start_with("sqlite");
    let pipeline = Pipeline::new(&stack, "transactional");
    let data = write_dataset(stack.dir.path(), "durable", 5, 1);
    pipeline.publish(&data, "durable").expect("publish");
    let ingest = TopicNames::new(&pipeline.prefix).ingest();
    let count = || {
        let reader = TopicReader::new(&stack.kafka_args(&pipeline.prefix)).unwrap();
        reader.read_to_end(&ingest, |_| None, Duration::from_secs(30), |_| {}).unwrap()
    };
    assert_eq!(count(), 5);
    stack.restart("sqlite");
    assert_eq!(count(), 5, "records lost across a broker restart with SQLite storage");
}
