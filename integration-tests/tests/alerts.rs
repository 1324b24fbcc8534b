//! The alert rules in `docker/prometheus/rules`: promtool accepts them, their unit tests
//! fire and resolve every alert on synthetic series, and every metric they use is one
//! Quire's code exports.

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
    assert!(promtool(&["check", "rules", "quire.rules.yml"]).contains("SUCCESS: 6 rules found"));
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

#[test]
fn every_metric_the_rules_use_is_exported() {
    let rules: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(rules_dir().join("quire.rules.yml")).unwrap()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let code = sources(&root.join("crates")) + &sources(&root.join("services"));
    let mut checked = 0;
    for rule in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("quire_") || word.starts_with("kafka_") {
                assert!(code.contains(&format!("\"{word}\"")), "rule {:?} uses {word}, which no code exports", rule["alert"].as_str());
                checked += 1;
            }
        }
    }
    assert!(checked >= 5);
}
