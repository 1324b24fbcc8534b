//! The alert rules in `docker/prometheus/rules` and the Grafana dashboard in
//! `docker/grafana`: promtool accepts their PromQL, the rules' unit tests fire and
//! resolve every alert on synthetic series, and every metric either uses is one Quire's
//! code exports.

use std::path::{Path, PathBuf};
use std::process::Command;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/prometheus/rules")
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| panic!("promtool is missing ({e}): run `scripts/install-tools.sh promtool`"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    assert!(promtool(&["check", "rules", "quire.rules.yml"]).contains("SUCCESS: 9 rules found"));
    assert!(promtool(&["test", "rules", "quire.rules.test.yml"]).contains("SUCCESS"));
}

/// Every `.rs` file under `dir`, concatenated.
fn sources(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            text += &sources(&path);
        } else if path.extension().is_some_and(|e| e == "rs") {
            text += &std::fs::read_to_string(&path).unwrap();
        }
    }
    text
}

/// The Rust sources of the crates and services.
fn code() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    sources(&root.join("crates")) + &sources(&root.join("services"))
}

/// Asserts that every metric named in `expr` is exported by `code` (a histogram's
/// `_bucket`, `_sum` and `_count` series by its name); returns how many it checked.
fn assert_exported(expr: &str, code: &str, used_by: &str) -> usize {
    let mut checked = 0;
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("quire_") || word.starts_with("kafka_") {
            let name = ["_bucket", "_sum", "_count"].iter().find_map(|s| word.strip_suffix(s)).unwrap_or(word);
            assert!(code.contains(&format!("\"{name}\"")), "{used_by} uses {word}, which no code exports");
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_metric_the_rules_use_is_exported() {
    let rules: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(rules_dir().join("quire.rules.yml")).unwrap()).unwrap();
    let code = code();
    let mut checked = 0;
    for rule in rules["groups"][0]["rules"].as_sequence().unwrap() {
        checked += assert_exported(rule["expr"].as_str().unwrap(), &code, &format!("rule {:?}", rule["alert"].as_str()));
    }
    assert!(checked >= 5);
}

#[test]
fn grafana_dashboard_parses_is_provisioned_and_uses_only_exported_metrics() {
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(docker.join("grafana/dashboards/quire.json")).unwrap())
        .expect("docker/grafana/dashboards/quire.json is JSON");
    let datasources: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(docker.join("grafana/provisioning/datasources/prometheus.yaml")).unwrap()).unwrap();
    let uid = datasources["datasources"][0]["uid"].as_str().expect("the datasource has a uid");
    let provider: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(docker.join("grafana/provisioning/dashboards/quire.yaml")).unwrap()).unwrap();
    let path = provider["providers"][0]["options"]["path"].as_str().unwrap();
    let compose = std::fs::read_to_string(docker.join("compose.yaml")).unwrap();
    assert!(compose.contains(&format!("./grafana/dashboards:{path}")), "compose mounts the dashboards where the provider looks ({path})");

    let code = code();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        titles.push(title.to_lowercase());
        assert_eq!(panel["datasource"]["uid"], uid, "panel {title:?} uses another datasource");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert!(assert_exported(expr, &code, &format!("panel {title:?}")) > 0, "panel {title:?} queries no Quire metric");
            rules += &format!("      - record: dashboard:panel_{}\n        expr: {}\n", rules.matches("record:").count(), serde_json::to_string(expr).unwrap());
        }
    }
    for topic in ["lag", "records", "latency", "quarantine", "breaker", "stalled", "instances"] {
        assert!(titles.iter().any(|t| t.contains(topic)), "no panel about {topic}: {titles:?}");
    }
    // promtool parses every panel query, as recording rules.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.rules.yml"), &rules).unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    assert!(promtool(&["check", "rules", file.to_str().unwrap()]).contains("SUCCESS"), "{rules}");
}
