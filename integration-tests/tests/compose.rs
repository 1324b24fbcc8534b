//! The production compose (docker/compose.yaml) cannot run here (no Docker engine), so
//! this checks what can be checked without one: Kafka UI gets the environment names it
//! reads, every stage reaches all three brokers and serves metrics, every Quire setting
//! it gives is one the code reads, Prometheus scrapes every stage, and the topics job
//! applies a profile topics.yaml has.

use quire_kafka::io::topics::TopicsFile;
use serde_yaml::Value;
use std::path::Path;

fn compose() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/compose.yaml");
    let mut value: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    value.apply_merge().unwrap();
    // Merges nested inside service environments.
    for (_, service) in value["services"].as_mapping_mut().unwrap().iter_mut() {
        service.apply_merge().unwrap();
    }
    value
}

fn env<'a>(service: &'a Value, name: &str) -> Option<&'a str> {
    service["environment"][name].as_str()
}

const SERVICES: [&str; 5] = ["claimer", "inference", "validator", "quarantine", "watchdog"];

#[test]
fn production_compose_wires_brokers_ui_stages_and_prometheus() {
    let compose = compose();
    let services = &compose["services"];
    for broker in ["kafka-1", "kafka-2", "kafka-3"] {
        assert!(services[broker]["image"].as_str().unwrap().starts_with("apache/kafka"), "{broker}");
    }
    let ui = &services["kafka-ui"];
    assert_eq!(env(ui, "KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"), Some("kafka-1:9092,kafka-2:9092,kafka-3:9092"));
    assert_eq!(env(ui, "KAFKA_CLUSTERS_0_SCHEMAREGISTRY"), Some("http://schema-registry:8081"));
    assert!(env(ui, "KAFKA_CLUSTERS_0_NAME").is_some() && env(ui, "DYNAMIC_CONFIG_ENABLED").is_some());

    let mut instances = std::collections::HashSet::new();
    for name in SERVICES {
        let service = &services[name];
        assert_eq!(service["command"][0].as_str(), Some(format!("quire-{name}").as_str()));
        assert_eq!(env(service, "QUIRE_BOOTSTRAP_SERVERS"), Some("kafka-1:9092,kafka-2:9092,kafka-3:9092"), "{name}");
        assert_eq!(env(service, "QUIRE_METRICS_ADDR"), Some("0.0.0.0:9100"), "{name}");
        assert!(instances.insert(env(service, "QUIRE_INSTANCE_ID").expect("instance id").to_owned()), "{name}: instance ids must differ");
    }

    // Every QUIRE_* setting the compose file gives a service is one the code reads.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fn sources(dir: &Path, code: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, code);
            } else if path.extension().is_some_and(|e| e == "rs") {
                code.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut code = String::new();
    sources(&root.join("crates"), &mut code);
    sources(&root.join("services"), &mut code);
    let mut checked = 0;
    for (name, service) in services.as_mapping().unwrap() {
        for (key, _) in service["environment"].as_mapping().into_iter().flatten() {
            let key = key.as_str().unwrap();
            if key.starts_with("QUIRE_") {
                assert!(code.contains(&format!("env = \"{key}\"")), "{} sets {key}, which no Quire binary reads", name.as_str().unwrap());
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "{checked} settings checked");

    let topics = &services["topics"]["command"];
    let profile = topics.as_sequence().unwrap().iter().skip_while(|a| a.as_str() != Some("--profile")).nth(1).unwrap();
    let file = TopicsFile::load(None).unwrap();
    let desired = file.desired(profile.as_str().unwrap(), "quire", &Default::default()).unwrap();
    assert!(desired.iter().all(|t| t.replication_factor == 3), "three brokers, replication 3");

    let prometheus: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let targets: Vec<&str> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in SERVICES {
        assert!(targets.contains(&format!("{name}:9100").as_str()), "prometheus does not scrape {name}");
    }
}
