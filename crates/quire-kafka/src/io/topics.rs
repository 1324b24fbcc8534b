//! `topics.yaml`: the declaration of every topic, and `apply`, which makes a cluster
//! match it. Apply only creates: a topic that exists with other settings is reported as
//! drift for a person to decide on, because shrinking or recreating a topic loses data.

use crate::io::codec::{schema_text, Codec};
use crate::config::{KafkaArgs, TopicNames};
use crate::{Error, Result};
use quire_core::retry::RetrySchedule;
use quire_core::StageName;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The whole topics file, compiled in as a default.
pub const DEFAULT_TOPICS_YAML: &str = include_str!("../../../../topics.yaml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    pub profiles: BTreeMap<String, Profile>,
    pub topics: Vec<TopicSpec>,
}

/// Cluster-wide settings of a deployment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    /// Overrides every topic's partition count (small clusters).
    #[serde(default)]
    pub partitions: Option<i32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Record name of the value schema in `schemas/`, if the topic holds Avro values.
    #[serde(default)]
    pub value_schema: Option<String>,
    pub partitions: i32,
    pub cleanup_policy: String,
    pub retention_ms: i64,
    /// Whether the topic has retry topics, one per delay of the retry schedule
    /// (`QUIRE_RETRY_DELAYS_MS`), declared like the topic itself.
    #[serde(default)]
    pub retry_topics: bool,
}

/// A topic as it should be on one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: BTreeMap<&'static str, String>,
    pub value_schema: Option<String>,
}

impl TopicsFile {
    pub fn parse(text: &str, path: &str) -> Result<Self> {
        let file: TopicsFile =
            serde_yaml::from_str(text).map_err(|e| Error::Topics { path: path.into(), message: e.to_string() })?;
        for topic in &file.topics {
            if !topic.name.starts_with("quire.") {
                return Err(Error::Topics { path: path.into(), message: format!("topic {} must start with `quire.`", topic.name) });
            }
            if let Some(schema) = &topic.value_schema {
                schema_text(schema).map_err(|e| Error::Topics { path: path.into(), message: e.to_string() })?;
            }
        }
        Ok(file)
    }

    pub fn load(path: Option<&str>) -> Result<Self> {
        match path {
            None => Self::parse(DEFAULT_TOPICS_YAML, "topics.yaml (built in)"),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::Topics { path: path.into(), message: e.to_string() })?;
                Self::parse(&text, path)
            }
        }
    }

    /// The topics for `profile`, named under `prefix`, with the retry topics `retries`
    /// calls for.
    pub fn desired(&self, profile: &str, prefix: &str, retries: &RetrySchedule) -> Result<Vec<DesiredTopic>> {
        let settings = self.profiles.get(profile).ok_or_else(|| Error::Topics {
            path: "topics.yaml".into(),
            message: format!("no profile {profile:?} (have: {:?})", self.profiles.keys().collect::<Vec<_>>()),
        })?;
        let mut desired = Vec::new();
        for t in &self.topics {
            let name = format!("{prefix}{}", &t.name["quire".len()..]);
            let names = if t.retry_topics { TopicNames::retries(&name, retries) } else { Vec::new() };
            for name in std::iter::once(name).chain(names) {
                desired.push(DesiredTopic {
                    name,
                    partitions: settings.partitions.unwrap_or(t.partitions),
                    replication_factor: settings.replication_factor,
                    configs: BTreeMap::from([
                        ("cleanup.policy", t.cleanup_policy.clone()),
                        ("retention.ms", t.retention_ms.to_string()),
                        ("min.insync.replicas", settings.min_insync_replicas.to_string()),
                    ]),
                    value_schema: t.value_schema.clone(),
                });
            }
        }
        check_co_partitioning(&desired, prefix, retries)?;
        Ok(desired)
    }
}

/// Refuses a layout in which a stage's ledger and its inputs have different partition
/// counts: an input's ledger entry goes to the partition the input came from, and the
/// instance that owns an input partition reads that ledger partition alone.
fn check_co_partitioning(desired: &[DesiredTopic], prefix: &str, retries: &RetrySchedule) -> Result<()> {
    let names = TopicNames::new(prefix);
    let partitions = |name: &str| desired.iter().find(|t| t.name == name).map(|t| t.partitions);
    for stage in StageName::ALL {
        let ledger = names.ledger(stage);
        let Some(ledger_partitions) = partitions(&ledger) else { continue };
        for input in names.inputs(stage, retries) {
            if let Some(input_partitions) = partitions(&input).filter(|p| *p != ledger_partitions) {
                return Err(Error::Topics {
                    path: "topics.yaml".into(),
                    message: format!(
                        "{ledger} has {ledger_partitions} partitions but the {stage} reads {input}, which has {input_partitions}: \
                         a stage's ledger needs the partition count of its inputs (each entry goes to its input's partition)"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// What `apply` found and did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
    /// Human-readable differences between the file and the cluster.
    pub drift: Vec<String>,
}

fn admin(args: &KafkaArgs) -> Result<AdminClient<DefaultClientContext>> {
    Ok(args.client_config().create()?)
}

/// Creates the missing topics (unless `dry_run`) and reports drift on the others.
pub async fn apply(args: &KafkaArgs, topics: &[DesiredTopic], dry_run: bool) -> Result<ApplyReport> {
    let admin = admin(args)?;
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10))?;
    let existing: HashMap<String, i32> =
        metadata.topics().iter().filter(|t| t.error().is_none()).map(|t| (t.name().to_owned(), t.partitions().len() as i32)).collect();
    let mut report = ApplyReport::default();
    let mut to_create = Vec::new();
    for topic in topics {
        match existing.get(&topic.name) {
            None => to_create.push(topic),
            Some(&partitions) => {
                if partitions != topic.partitions {
                    report.drift.push(format!("{}: partitions {} on the cluster, {} declared", topic.name, partitions, topic.partitions));
                }
                report.drift.extend(config_drift(&admin, topic).await?);
                report.unchanged.push(topic.name.clone());
            }
        }
    }
    if !dry_run && !to_create.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = to_create
            .iter()
            .map(|t| {
                t.configs.iter().fold(
                    NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication_factor)),
                    |nt, (k, v)| nt.set(k, v),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(_) => {}
                Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => report.unchanged.push(name),
                Err((name, code)) => return Err(Error::Other(format!("creating topic {name}: {code}"))),
            }
        }
    }
    report.created = to_create.iter().map(|t| t.name.clone()).collect();
    Ok(report)
}

/// Differences between the declared configs and the cluster's, for one topic.
async fn config_drift(admin: &AdminClient<DefaultClientContext>, topic: &DesiredTopic) -> Result<Vec<String>> {
    let results = admin.describe_configs(&[ResourceSpecifier::Topic(&topic.name)], &AdminOptions::new()).await?;
    let mut drift = Vec::new();
    for result in results {
        let resource = match result {
            Ok(resource) => resource,
            Err(code) => {
                drift.push(format!("{}: configs could not be described ({code})", topic.name));
                continue;
            }
        };
        for (key, want) in &topic.configs {
            match resource.get(key).and_then(|entry| entry.value.as_deref()) {
                Some(have) if have == want => {}
                Some(have) => drift.push(format!("{}: {key}={have} on the cluster, {want} declared", topic.name)),
                None => drift.push(format!("{}: {key} not reported by the cluster, {want} declared", topic.name)),
            }
        }
    }
    Ok(drift)
}

/// Registers the value schema of every topic that has one; returns (topic, id) pairs.
pub async fn register_schemas(codec: &Codec, topics: &[DesiredTopic]) -> Result<Vec<(String, u32)>> {
    let mut ids = Vec::new();
    for topic in topics {
        if let Some(schema) = &topic.value_schema {
            ids.push((topic.name.clone(), codec.register(&topic.name, schema_text(schema)?).await?));
        }
    }
    Ok(ids)
}

/// Registers every topic's value schema under `args.topic_prefix` through `codec`, which
/// registers them again if the registry loses them.
pub async fn register_all_schemas(codec: &crate::Codec, args: &crate::KafkaArgs) -> Result<()> {
    let file = TopicsFile::load(None)?;
    // Schemas do not depend on the profile; any profile names the same topics.
    let profile = file.profiles.keys().next().cloned().unwrap_or_default();
    let topics = file.desired(&profile, &args.topic_prefix, &args.retry_schedule())?;
    let ids = register_schemas(codec, &topics).await?;
    tracing::info!(schemas = ids.len(), registry = codec.url(), "schemas registered");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_yaml_declares_exactly_the_topics_the_code_uses() {
        let file = TopicsFile::load(None).unwrap();
        for schedule in [RetrySchedule::default(), RetrySchedule::parse("100,200").unwrap()] {
            let used = crate::config::TopicNames::new("quire").all(&schedule);
            for profile in file.profiles.keys() {
                let declared: std::collections::BTreeSet<String> = file.desired(profile, "quire", &schedule).unwrap().into_iter().map(|t| t.name).collect();
                assert_eq!(declared, used, "profile {profile}: declared (left) and used (right) differ");
            }
        }
    }

    #[test]
    fn the_shipped_file_parses_and_names_follow_the_prefix() {
        let file = TopicsFile::load(None).unwrap();
        let local = file.desired("local", "t9", &RetrySchedule::parse("100,200").unwrap()).unwrap();
        assert!(local.iter().all(|t| t.partitions == 3 && t.replication_factor == 1));
        assert!(local.iter().any(|t| t.name == "t9.blocks.completed" && t.value_schema.as_deref() == Some("ValidatedResult")));
        let retry = local.iter().find(|t| t.name == "t9.blocks.queued-retry-200").expect("retry topics are declared");
        assert_eq!(retry.value_schema.as_deref(), Some("Block"));
        let production = file.desired("production", "quire", &RetrySchedule::default()).unwrap();
        assert!(production.iter().all(|t| t.replication_factor == 3 && t.configs["min.insync.replicas"] == "2"));
    }

    #[test]
    fn schemas_are_listed_in_the_order_topics_register_them() {
        let file = TopicsFile::load(None).unwrap();
        let mut first_named: Vec<&str> = Vec::new();
        for schema in file.topics.iter().filter_map(|t| t.value_schema.as_deref()) {
            if !first_named.contains(&schema) {
                first_named.push(schema);
            }
        }
        let listed: Vec<&str> = crate::io::codec::SCHEMAS.iter().map(|(name, _)| *name).collect();
        assert_eq!(first_named, listed, "codec::SCHEMAS must follow topics.yaml, or the local registry numbers them differently after a restart");
    }

    #[test]
    fn a_ledger_out_of_step_with_its_stage_inputs_is_refused_with_both_named() {
        let file = TopicsFile::load(None).unwrap();
        for profile in file.profiles.keys() {
            file.desired(profile, "quire", &RetrySchedule::default()).expect("topics.yaml is co-partitioned");
        }
        let mut broken = file.clone();
        broken.topics.iter_mut().find(|t| t.name == "quire.inference.ledger").unwrap().partitions = 6;
        let err = broken.desired("production", "quire", &RetrySchedule::default()).unwrap_err().to_string();
        assert!(err.contains("quire.inference.ledger has 6 partitions") && err.contains("quire.blocks.queued, which has 12"), "{err}");
        // A profile that sets every count alike keeps them aligned.
        broken.desired("local", "quire", &RetrySchedule::default()).expect("local profile: 3 partitions everywhere");
    }

    #[test]
    fn unknown_fields_and_schemas_are_named() {
        let err = TopicsFile::parse("profiles: {}\ntopics: []\nextra: 1\n", "x.yaml").unwrap_err().to_string();
        assert!(err.contains("extra"), "{err}");
        let bad = "profiles: {}\ntopics:\n- {name: quire.a, value_schema: Nope, partitions: 1, cleanup_policy: delete, retention_ms: 1}\n";
        assert!(TopicsFile::parse(bad, "x.yaml").unwrap_err().to_string().contains("Nope"));
        assert!(TopicsFile::load(None).unwrap().desired("staging", "quire", &RetrySchedule::default()).is_err());
    }
}
