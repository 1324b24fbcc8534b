//! Harness for tests against the real local stack.
//!
//! Each test starts its own broker and registry on free loopback ports (through
//! `quire stack up`, the same path users take) and stops them when the [`Stack`] drops;
//! topics, groups and transactional ids get a random prefix. A test never skips: if a
//! program is missing, it fails and says which and how to install it.

pub mod audit;
pub mod chaos;
pub mod hostile;
pub mod model_server;
pub mod otlp_collector;

use anyhow::{bail, Context};
use quire_kafka::KafkaArgs;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the workspace's binaries (`target/debug`): beside this
/// executable, or one up from a test's `deps` folder.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target directory");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().expect("target directory").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Path of one workspace binary; panics with the fix if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --workspace` before the tests", path.display());
    path
}

/// A TCP port on 127.0.0.1 free now and never handed out before by this process: the kernel may offer a
/// just-released port again, and a service started with it may not have bound it yet
/// (two services once got the same metrics port).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        if HANDED_OUT.lock().expect("ports lock").insert(port) {
            return port;
        }
    }
}

/// A random name part, so tests never share topics or groups.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// Runs `quire ARGS`, returning its output; fails with stderr if it exits non-zero.
pub fn quire(args: &[&str], env: &HashMap<String, String>) -> anyhow::Result<Output> {
    let output = quire_status(args, env)?;
    if !output.status.success() {
        bail!(
            "quire {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Runs `quire ARGS` whatever its exit code.
pub fn quire_status(args: &[&str], env: &HashMap<String, String>) -> anyhow::Result<Output> {
    Command::new(bin("quire")).args(args).envs(env).stdin(Stdio::null()).output().context("running quire")
}

/// A broker and a registry of this test's own.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub bootstrap_servers: String,
    pub schema_registry_url: String,
    pub broker_port: u16,
    pub registry_port: u16,
}

impl Stack {
    /// Starts an in-memory stack.
    pub fn start() -> Self {
        Self::start_with("memory")
    }

    /// Starts a stack with `storage` (`memory` or `sqlite`).
    pub fn start_with(storage: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("quire-stack-").tempdir().expect("temp dir");
        let (broker_port, registry_port) = (free_port(), free_port());
        let stack = Stack {
            bootstrap_servers: format!("127.0.0.1:{broker_port}"),
            schema_registry_url: format!("http://127.0.0.1:{registry_port}"),
            dir,
            broker_port,
            registry_port,
        };
        stack.up(storage);
        stack
    }

    fn up(&self, storage: &str) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let (bp, rp) = (self.broker_port.to_string(), self.registry_port.to_string());
        quire(
            &["stack", "up", "--dir", &dir, "--storage", storage, "--broker-port", &bp, "--registry-port", &rp],
            &HashMap::new(),
        )
        .expect("the local stack must start (scripts/install-tools.sh installs it)");
    }

    /// Stops and starts the stack again (same ports, same data directory).
    pub fn restart(&self, storage: &str) {
        self.down();
        self.up(storage);
    }

    pub fn down(&self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let _ = quire(&["stack", "down", "--dir", &dir], &HashMap::new());
    }

    /// Writes `text` to a new file `<name>-<random>.<ext>` in the stack's directory;
    /// returns its path.
    pub fn write_file(&self, name: &str, ext: &str, text: &str) -> String {
        let path = self.dir.path().join(format!("{name}-{}.{ext}", rand::random::<u32>()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }

    /// Environment for Quire binaries pointed at this stack, under `prefix`.
    pub fn env(&self, prefix: &str) -> HashMap<String, String> {
        HashMap::from([
            ("QUIRE_BOOTSTRAP_SERVERS".to_owned(), self.bootstrap_servers.clone()),
            ("QUIRE_SCHEMA_REGISTRY_URL".to_owned(), self.schema_registry_url.clone()),
            ("QUIRE_TOPIC_PREFIX".to_owned(), prefix.to_owned()),
            ("QUIRE_STATE_DIR".to_owned(), self.dir.path().join("state").to_string_lossy().into_owned()),
        ])
    }

    /// Kafka settings pointed at this stack, under `prefix`.
    pub fn kafka_args(&self, prefix: &str) -> KafkaArgs {
        KafkaArgs {
            bootstrap_servers: self.bootstrap_servers.clone(),
            schema_registry_url: self.schema_registry_url.clone(),
            topic_prefix: prefix.to_owned(),
            ..KafkaArgs::default()
        }
    }

    pub fn rdkafka_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("broker.address.family", "v4");
        config
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.down();
    }
}

/// A running service process, SIGKILLed if still running on drop.
pub struct Service {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub metrics_port: Option<u16>,
}

impl Service {
    /// Starts service binary `name` (e.g. `quire-claimer`) with `env`, logging to `log_dir`.
    pub fn start(name: &str, env: &HashMap<String, String>, log_dir: &Path, instance: &str) -> Self {
        let log = log_dir.join(format!("{name}-{instance}-{}.log", rand::random::<u16>()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin(name))
            .envs(env)
            .env("QUIRE_INSTANCE_ID", instance)
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Service { name: name.to_owned(), child, log, metrics_port: None }
    }

    /// SIGKILL: the process gets no chance to commit or abort.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status's success.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The service's `/metrics` page.
    pub fn scrape(&self) -> anyhow::Result<String> {
        scrape(self.metrics_port.context("service has no metrics endpoint")?)
    }

    /// Sum of the samples of metric `name` whose labels contain every `labels` pair.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(self.metrics_port?, name, labels)
    }

    /// Why the process ended, if it has: its exit status and the last error it logged.
    pub fn exit_reason(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        let log = self.log_text();
        let last_error = log.lines().rev().find(|l| l.contains("ERROR") || l.contains("panicked")).unwrap_or("(no error logged)").to_owned();
        Some(format!("{} exited ({status}): {last_error}", self.name))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The `/metrics` page served on `port`.
pub fn scrape(port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut page = String::new();
    stream.read_to_string(&mut page)?;
    Ok(page)
}

/// Sum of the samples of metric `name` served on `port` whose labels contain every
/// `labels` pair.
pub fn metric(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let page = scrape(port).ok()?;
    let samples: Vec<f64> = page
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.running() {
            self.kill();
        }
    }
}

/// The four stages, in pipeline order.
pub const STAGES: [&str; 4] = ["quire-claimer", "quire-inference", "quire-validator", "quire-quarantine"];

/// A pipeline under one topic prefix on one stack.
pub struct Pipeline<'a> {
    pub stack: &'a Stack,
    pub prefix: String,
    pub env: HashMap<String, String>,
    pub services: Vec<Service>,
}

impl<'a> Pipeline<'a> {
    /// Applies the topics under a fresh prefix with `delivery_mode`.
    pub fn new(stack: &'a Stack, delivery_mode: &str) -> Self {
        Self::with_env(stack, delivery_mode, &[])
    }

    /// [`Pipeline::new`] with more environment for every command and service.
    pub fn with_env(stack: &'a Stack, delivery_mode: &str, extra: &[(&str, &str)]) -> Self {
        let prefix = unique("t");
        let mut env = stack.env(&prefix);
        env.insert("QUIRE_DELIVERY_MODE".into(), delivery_mode.into());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        quire(&["topics", "apply", "--profile", "local"], &env).expect("topics apply");
        Pipeline { stack, prefix, env, services: Vec::new() }
    }

    /// A pipeline whose inference runs the engines of `engines_yaml` (written to the
    /// stack's directory), retrying after `retry_delays_ms`; every stage started.
    pub fn with_engines(stack: &'a Stack, engines_yaml: &str, retry_delays_ms: &str) -> Self {
        let path = stack.write_file("engines", "yaml", engines_yaml);
        let mut pipeline = Self::with_env(stack, "transactional", &[("QUIRE_ENGINES_CONFIG", &path), ("QUIRE_RETRY_DELAYS_MS", retry_delays_ms)]);
        pipeline.start_all();
        pipeline
    }

    /// Publishes a dataset (see [`write_dataset`]) for translation into French.
    pub fn publish_translation(&self, name: &str, documents: usize, paragraphs: usize) {
        let data = write_dataset(self.stack.dir.path(), name, documents, paragraphs);
        let path = data.to_string_lossy().into_owned();
        quire(&["publish", "--quiet", "--dataset", name, "--task", "translate", "--target-language", "fr", &path], &self.env).expect("publish");
    }

    /// Starts every stage (instance 0).
    pub fn start_all(&mut self) {
        for name in STAGES {
            self.start(name, "0");
        }
    }

    /// Starts service `name` as `instance`, with a Prometheus endpoint on a free port.
    pub fn start(&mut self, name: &str, instance: &str) -> usize {
        let mut env = self.env.clone();
        let port = free_port();
        env.insert("QUIRE_METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
        let mut service = Service::start(name, &env, self.stack.dir.path(), instance);
        service.metrics_port = Some(port);
        self.services.push(service);
        self.services.len() - 1
    }

    pub fn service(&mut self, name: &str) -> &mut Service {
        let index = self.services.iter_mut().rposition(|s| s.name == name && s.running());
        &mut self.services[index.unwrap_or_else(|| panic!("{name} is not running"))]
    }

    /// Every service log, for failure messages.
    /// Log lines of a service that say something (no backtrace frames, no end-of-partition noise).
    pub fn logs(&self) -> String {
        let telling = |text: String| {
            let lines: Vec<&str> =
                text.lines().filter(|l| l.starts_with('{') && !l.contains("PartitionEOF") || l.starts_with("Error")).collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        self.services.iter().map(|s| format!("==== {} ====\n{}", s.log.display(), telling(s.log_text()))).collect::<Vec<_>>().join("\n")
    }

    /// `quire publish` of `path` as `dataset`.
    pub fn publish(&self, path: &Path, dataset: &str) -> anyhow::Result<()> {
        quire(&["publish", "--quiet", "--dataset", dataset, &path.to_string_lossy()], &self.env).map(|_| ())
    }

    /// `quire verify --json`, waiting up to `wait` for missing blocks.
    pub fn verify(&self, dataset: &str, wait: Duration) -> anyhow::Result<(bool, serde_json::Value)> {
        let secs = wait.as_secs().to_string();
        let output = quire_status(&["verify", "--json", "--wait", &secs, dataset], &self.env)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("verify printed no JSON: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)))?;
        Ok((output.status.success(), report))
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes a JSONL dataset of `documents` documents that split into at least
/// `documents * paragraphs` blocks (each paragraph fills a block), in several languages.
pub fn write_dataset(dir: &Path, name: &str, documents: usize, paragraphs: usize) -> PathBuf {
    const SENTENCES: [&str; 6] = [
        "The committee met on Tuesday to discuss the budget for the coming year and agreed to fund the new library wing.",
        "Le conseil municipal a voté hier soir le nouveau plan de circulation, qui entrera en vigueur au début du mois prochain.",
        "Die Forscher haben in den letzten Jahren viele neue Arten im Regenwald entdeckt und ihre Lebensweise genau beschrieben.",
        "El ayuntamiento ha anunciado que las obras de la plaza terminarán antes del verano y que habrá nuevos árboles.",
        "Il museo della città ha aperto una nuova sala dedicata alla storia del porto e delle famiglie dei pescatori.",
        "De nieuwe brug over de rivier wordt volgend jaar geopend en moet de files in het centrum van de stad verminderen.",
    ];
    let path = dir.join(format!("{name}.jsonl"));
    let mut lines = Vec::new();
    for d in 0..documents {
        let language = SENTENCES[d % SENTENCES.len()];
        // ~5 sentences of ~115 chars exceed one 600-char block: one block per paragraph.
        let paragraph = |p: usize| format!("{} ({d}-{p}) {}", language.repeat(4), language);
        let text = (0..paragraphs).map(paragraph).collect::<Vec<_>>().join("\n\n");
        lines.push(serde_json::json!({"id": format!("doc-{d:04}"), "text": text}).to_string());
    }
    std::fs::write(&path, lines.join("\n") + "\n").expect("write dataset");
    path
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long a test waits for the pipeline.
pub const WAIT: Duration = Duration::from_secs(300);

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

/// Longest a test reads one topic to its end: a full chaos run's audit topic holds
/// 100 000 records and more on a broker storing them in SQLite.
const READ_TOPIC_TIMEOUT: Duration = Duration::from_secs(600);

/// A record as read: key, value and headers, to write again as it was.
pub type Copied = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

/// Every record on `topic`, copied.
pub fn copies(stack: &Stack, prefix: &str, topic: &str) -> Vec<Copied> {
    use rdkafka::message::Headers as _;
    use rdkafka::Message as _;
    let reader = quire_kafka::io::reader::TopicReader::new(&stack.kafka_args(prefix)).expect("reader");
    let mut found = Vec::new();
    reader
        .read_to_end(topic, |_| None, Duration::from_secs(60), |m| {
            let headers = m.headers().map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect()).unwrap_or_default();
            found.push((m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec(), headers));
        })
        .expect("read topic");
    found
}

/// Writes `records` to `topic` again, as they were.
pub fn write_again(stack: &Stack, topic: &str, records: &[Copied]) {
    let producer: rdkafka::producer::BaseProducer = stack.rdkafka_config().create().expect("producer");
    for (key, value, copied) in records {
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for (name, value) in copied {
            headers = headers.insert(rdkafka::message::Header { key: name, value: Some(value) });
        }
        let mut record = rdkafka::producer::BaseRecord::to(topic).payload(value).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).expect("flush");
}

/// Number of records on a topic as a read_committed consumer sees them.
pub fn count_records(stack: &Stack, prefix: &str, topic: &str) -> usize {
    let reader = quire_kafka::io::reader::TopicReader::new(&stack.kafka_args(prefix)).expect("reader");
    reader.read_to_end(topic, |_| None, READ_TOPIC_TIMEOUT, |_| {}).expect("read topic")
}

/// The `traceparent` header of every record on `topic`, as a read_committed consumer sees them.
pub fn traceparents(stack: &Stack, prefix: &str, topic: &str) -> Vec<Option<String>> {
    let reader = quire_kafka::io::reader::TopicReader::new(&stack.kafka_args(prefix)).expect("reader");
    let mut found = Vec::new();
    reader
        .read_to_end(topic, |_| None, READ_TOPIC_TIMEOUT, |m| {
            use rdkafka::message::{Headers, Message};
            let header = m.headers().and_then(|hs| hs.iter().find(|h| h.key == "traceparent").and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned())));
            found.push(header);
        })
        .expect("read topic");
    found
}

/// Every record of an Avro topic, decoded, as a read_committed consumer sees them.
pub fn read_decoded<T: serde::de::DeserializeOwned>(stack: &Stack, prefix: &str, topic: &str, runtime: &tokio::runtime::Runtime) -> Vec<T> {
    use rdkafka::Message;
    let args = stack.kafka_args(prefix);
    let reader = quire_kafka::io::reader::TopicReader::new(&args).expect("reader");
    let mut payloads = Vec::new();
    reader.read_to_end(topic, |_| None, READ_TOPIC_TIMEOUT, |m| payloads.push(m.payload().map(<[u8]>::to_vec))).expect("read topic");
    let codec = quire_kafka::Codec::new(&args.schema_registry_url).expect("codec");
    payloads
        .iter()
        .map(|p| runtime.block_on(codec.decode::<T>(p.as_deref())).unwrap_or_else(|e| panic!("record on {topic} does not decode: {e}")))
        .collect()
}

/// The offsets consumer `group` has committed on the topics under `prefix`.
pub fn committed_offsets(stack: &Stack, prefix: &str, group: &str) -> HashMap<(String, i32), i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = stack.rdkafka_config().set("group.id", group).create().expect("consumer");
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let mut partitions = TopicPartitionList::new();
    for topic in metadata.topics().iter().filter(|t| t.name().starts_with(prefix)) {
        for partition in topic.partitions() {
            partitions.add_partition(topic.name(), partition.id());
        }
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(next) => Some(((e.topic().to_owned(), e.partition()), next)),
            _ => None,
        })
        .collect()
}

/// Moves consumer `group`'s committed offsets on `partitions` back to 0, as an operator
/// replaying a stage's input would (the group must have no running member).
pub fn rewind_group(stack: &Stack, group: &str, partitions: impl IntoIterator<Item = (String, i32)>) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = stack.rdkafka_config().set("group.id", group).create().expect("consumer");
    let mut offsets = TopicPartitionList::new();
    for (topic, partition) in partitions {
        offsets.add_partition_offset(&topic, partition, Offset::Offset(0)).expect("offset");
    }
    consumer.commit(&offsets, CommitMode::Sync).expect("rewinding the group's offsets");
}

/// A numeric field of a `quire verify --json` report.
pub fn report_field(report: &serde_json::Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or_else(|| panic!("report has no {field}: {report}"))
}

/// Asserts that `quire verify` finds every block of `dataset` completed exactly once,
/// and that the pipeline's whole audit log keeps the state machine's rules (see
/// [`audit`]).
pub fn assert_exactly_once(pipeline: &Pipeline<'_>, dataset: &str, min_blocks: u64) -> serde_json::Value {
    let (sound, report) = pipeline.verify(dataset, WAIT).expect("verify runs");
    let log: Vec<quire_core::records::StateChange> =
        read_decoded(pipeline.stack, &pipeline.prefix, &quire_kafka::config::TopicNames::new(&pipeline.prefix).events(), &runtime());
    let violations = audit::Violations::of_log(&log);
    assert!(violations.is_empty(), "the audit log breaks the state machine's rules: {violations:?}\n{}", pipeline.logs());
    assert!(sound, "verify found loss or duplication: {report}\n{}", pipeline.logs());
    assert!(report_field(&report, "blocks_expected") >= min_blocks, "{report}");
    assert_eq!(report_field(&report, "missing"), 0, "{report}");
    assert_eq!(report_field(&report, "completed_more_than_once"), 0, "{report}");
    assert_eq!(report_field(&report, "completed_once"), report_field(&report, "blocks_expected"), "{report}\n{}", pipeline.logs());
    report
}
