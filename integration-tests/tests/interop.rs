//! An independent client reads Quire's output: Confluent's Python client with its Avro
//! deserializer (installed by scripts/python-env.sh) reads `quire.blocks.completed`
//! through the registry and sees every block once, with its idempotency key header.

use integration_tests::*;
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn confluent_python_client_reads_completed_blocks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/python-env.sh", python.display());
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, "transactional");
    pipeline.start_all();
    let data = write_dataset(stack.dir.path(), "interop", 8, 2);
    pipeline.publish(&data, "interop").expect("publish");
    let (sound, report) = pipeline.verify("interop", Duration::from_secs(120)).expect("verify");
    assert!(sound, "{report}\n{}", pipeline.logs());

    let topic = format!("{}.blocks.completed", pipeline.prefix);
    let output = Command::new(&python)
        .arg(root.join("integration-tests/interop/read_topic.py"))
        .args(["--bootstrap", &stack.bootstrap_servers, "--registry", &stack.schema_registry_url, "--topic", &topic])
        .output()
        .expect("run python reader");
    assert!(output.status.success(), "python reader failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let read: serde_json::Value = serde_json::from_slice(&output.stdout).expect("reader prints JSON");
    let records = read["records"].as_array().expect("records");
    assert_eq!(records.len() as u64, report["blocks_expected"].as_u64().unwrap(), "{read}");
    let mut keys = HashSet::new();
    for record in records {
        let value = &record["value"];
        assert_eq!(record["key"], value["block_id"], "{record}");
        assert_eq!(value["dataset_id"], "interop");
        assert!(value["label"].as_str().is_some_and(|l| l.len() == 2), "{record}");
        assert_eq!(record["idempotency_key"], value["idempotency_key"], "{record}");
        assert!(keys.insert(record["key"].as_str().unwrap().to_owned()), "block read twice: {record}");
    }
}
