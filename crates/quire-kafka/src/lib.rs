//! Quire's Kafka layer: everything that touches rdkafka or the schema registry.
//!
//! # Layout
//! Each module imports only the ones above it in this list (a unit test,
//! `every_module_imports_only_the_layers_below_it`, checks):
//! - [`record`]: the records a stage consumes and produces, and their headers.
//! - [`config`]: connection and delivery settings shared by every binary, topic names.
//! - [`telemetry`]: JSON logs, every event with its metric, traces (`otel`).
//! - [`io`]: Avro in the Confluent wire format (`codec`), whole-topic reads (`reader`),
//!   `topics.yaml` and its idempotent apply (`topics`), the `/metrics` and `/health/*`
//!   endpoints (`http`).
//! - [`pipeline`]: the `Stage` API and the one consume → process → produce loop every
//!   stage runs in, with its dedup index, cancellations and heartbeats.
//! - [`stages`]: the four pipeline stages (claimer, inference, validator, quarantine).
//! - [`ops`]: operator actions on blocks (replay, re-drive, cancel), one transaction each.
//! - [`watch`]: the watchdogs: consumer-group lag (`lag`), stalled blocks (`blocks`),
//!   dead instances (`instances`).
//! - `testing` (unit tests only, above them all): a schema registry and a model server
//!   on loopback, which the stages' tests run against.

pub mod record;
pub mod config;
pub mod telemetry;
pub mod io;
pub mod pipeline;
pub mod stages;
pub mod ops;
pub mod watch;
#[cfg(test)]
mod testing;

pub use config::{DeliveryMode, KafkaArgs};
pub use io::codec::Codec;
pub use pipeline::{Effect, Stage, StageContext};
pub use record::{Input, OutputRecord};

/// Errors of the Kafka layer, named by what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("schema registry at {url}: {message}")]
    Registry { url: String, message: String },
    #[error("record on {topic} could not be encoded: {message}")]
    Encode { topic: String, message: String },
    #[error("record could not be decoded: {0}")]
    Decode(String),
    #[error("topics file {path}: {message}")]
    Topics { path: String, message: String },
    #[error("HTTP endpoint {addr}: {message}")]
    Endpoint { addr: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::io::ledger_store::StoreError),
    #[error("this instance was fenced by a newer one with the same transactional id: {0}")]
    Fenced(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The modules in dependency order: each may import only those before it.
    const LAYERS: [&str; 8] = ["record", "config", "telemetry", "io", "pipeline", "stages", "ops", "watch"];

    /// The layer of a name imported from the crate root (a module, or a re-export).
    fn layer_of(name: &str) -> Option<usize> {
        let module = match name {
            "Input" | "OutputRecord" => "record",
            "KafkaArgs" | "DeliveryMode" => "config",
            "Codec" => "io",
            "Effect" | "Stage" | "StageContext" => "pipeline",
            other => other,
        };
        LAYERS.iter().position(|layer| *layer == module)
    }

    /// The first path segments of every `crate::` path in `text`, braces opened.
    fn crate_imports(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let items = match rest.strip_prefix('{') {
                Some(braced) => braced[..braced.find('}').unwrap_or(braced.len())].to_owned(),
                None => rest.to_owned(),
            };
            for item in items.split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                names.push(name);
                if !rest.starts_with('{') {
                    break;
                }
            }
        }
        names
    }

    fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                rust_files(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }

    #[test]
    fn every_module_imports_only_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut upward = Vec::new();
        for (rank, layer) in LAYERS.iter().enumerate() {
            let mut files = Vec::new();
            match src.join(layer) {
                dir if dir.is_dir() => rust_files(&dir, &mut files),
                _ => files.push(src.join(format!("{layer}.rs"))),
            }
            for file in files {
                let text = std::fs::read_to_string(&file).expect("source file");
                for name in crate_imports(&text) {
                    if layer_of(&name).is_some_and(|imported| imported > rank) {
                        upward.push(format!("{} imports crate::{name}", file.strip_prefix(&src).unwrap().display()));
                    }
                }
            }
        }
        assert!(upward.is_empty(), "imports against the layering in lib.rs: {upward:#?}");
    }

    #[test]
    fn the_layout_check_sees_braced_and_re_exported_imports() {
        assert_eq!(crate_imports("use crate::{Codec, record::Input};\nlet x = crate::watch::lag::f();"), ["Codec", "record", "watch"]);
        assert_eq!(layer_of("Codec"), Some(3));
        assert_eq!(layer_of("Error"), None);
    }
}
