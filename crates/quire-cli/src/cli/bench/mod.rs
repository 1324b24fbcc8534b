//! `quire bench`: measures the production line against the broker's own ceiling, in one
//! run on one local broker. It times a raw three-hop rdkafka chain (plain, then
//! transactional at Quire's commit settings), then Quire in both delivery modes (inference
//! on the `noop` engine unless told otherwise, so the figures are Quire's own cost, not a
//! model's), each `--runs` times, and prints medians and ratios; then end-to-end latency
//! at half the measured rate, each stage alone against one raw hop, the watchdog's CPU
//! and memory, how long a stage takes to start with many records on its outputs, and
//! with many entries in its ledger, on a fresh disk and on the disk it left.
//! Speed is measured here, never asserted by tests; `scripts/bench.sh` runs it on a
//! release build and writes the figures to `docs/benchmark.txt`.

mod raw_chain;

use super::demo::{read_values, LocalPipeline, SERVICES};
use super::publish::{publish, publish_paced, submissions, Document};
use quire_kafka::ops::report::wait_for_dataset;
use quire_core::records::{DatasetSubmission, ValidatedResult};
use quire_kafka::config::TopicNames;
use quire_kafka::io::topics::{apply, TopicsFile};
use quire_kafka::KafkaArgs;
use raw_chain::{ArrivalCounter, Arrivals, Chain, ChainRun, CommitSettings, From};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Documents in the synthetic dataset.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub documents: u32,
    /// Paragraphs per document (one block each).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub paragraphs: u32,
    /// Inference engine: `noop` measures Quire alone, `language-id` adds lingua.
    #[arg(long, default_value = "noop")]
    pub engine: String,
    /// Times each throughput figure is measured (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Inputs per transaction (QUIRE_MAX_BATCH), for Quire and the raw transactional chain.
    #[arg(long, default_value_t = KafkaArgs::default().max_batch)]
    pub max_batch: usize,
    /// Longest a transaction stays open, in ms (QUIRE_COMMIT_INTERVAL_MS), likewise.
    #[arg(long, default_value_t = KafkaArgs::default().commit_interval_ms)]
    pub commit_interval_ms: u64,
    /// Records already on a stage's output topics when it starts, one restart figure each.
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    pub restart_records: Vec<usize>,
    /// Entries already in a stage's ledger when it starts, one pair of restart figures
    /// each (a fresh disk, then the disk it left).
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    pub ledger_entries: Vec<usize>,
    /// File the figures are also written to.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Directory for the stack and the services' logs.
    #[arg(long, default_value = ".stack/bench")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 9092)]
    pub broker_port: u16,
    #[arg(long, default_value_t = 8081)]
    pub registry_port: u16,
    /// Longest to wait for the dataset, in seconds.
    #[arg(long, default_value_t = 1_800)]
    pub timeout: u64,
}

const SENTENCES: [&str; 4] = [
    "The production line splits every document into blocks and runs each through its engines.",
    "La chaîne de production découpe chaque document en blocs et les confie à ses moteurs.",
    "Die Fertigungsstraße zerlegt jedes Dokument in Blöcke und schickt sie durch ihre Engines.",
    "La línea de producción divide cada documento en bloques y los pasa por sus motores.",
];

/// A synthetic dataset: `documents` documents of `paragraphs` paragraphs each, every
/// paragraph more than half a block long, so that each is a block of its own.
fn documents(documents: usize, paragraphs: usize) -> Vec<Document> {
    let paragraph = |d: usize, p: usize| {
        let sentence = SENTENCES[(d + p) % SENTENCES.len()];
        format!("{} ({d}.{p})", [sentence; 4].join(" "))
    };
    (0..documents)
        .map(|d| Document {
            id: format!("bench-{d:06}"),
            text: (0..paragraphs).map(|p| paragraph(d, p)).collect::<Vec<_>>().join("\n\n"),
            source_language: None,
        })
        .collect()
}

/// The `q` quantile (0..=1) of `sorted`, nearest rank.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    match sorted.len() {
        0 => 0,
        n => sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}


/// Bytes of a block in the raw chain: about what one synthetic paragraph is.
const RAW_RECORD_BYTES: usize = 400;
/// How many times Quire's documents the plain chain moves: it is so fast that with as
/// few it would be over before it had a middle to measure.
const PLAIN_SCALE: usize = 25;
/// How many times Quire's documents a stage or a hop alone, and the transactional chain,
/// work through: enough transactions (of up to `--max-batch` inputs each) for the middle
/// of a run to be measured.
const LAYER_SCALE: usize = 5;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut pipeline = LocalPipeline::start_stack(&args.dir, args.broker_port, args.registry_port).await?;
    let outcome = measure(&args, &mut pipeline).await;
    pipeline.stop();
    let figures = outcome?;
    let text = figures.render(&args);
    println!();
    print!("{text}");
    if let Some(path) = &args.results {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &text)?;
        println!("figures written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Everything one `quire bench` measured.
#[derive(Default)]
struct Figures {
    raw_plain: Vec<ChainRun>,
    raw_transactional: Vec<ChainRun>,
    quire: Vec<(String, Vec<QuireRun>)>,
    paced: Option<(f64, QuireRun)>,
    /// (stage, its blocks/s alone, the matching raw hop's records/s alone: transactional, plain).
    layers: Vec<(&'static str, f64, f64, f64)>,
    watchdog: Option<ProcessFigures>,
    /// (records on the outputs, start → first output).
    restarts: Vec<(usize, Duration)>,
    /// (entries in the ledger, on a fresh disk, on the disk it left).
    ledger_restarts: Vec<(usize, LedgerStart, LedgerStart)>,
}

/// One start of a stage with a ledger behind it: start → first output, peak memory.
#[derive(Clone, Copy)]
struct LedgerStart {
    took: Duration,
    peak_rss_bytes: u64,
}

/// One dataset through Quire: blocks, first submitted → last completed, latencies.
#[derive(Clone)]
struct QuireRun {
    published: Duration,
    /// When each block completed, by the validator's clock.
    completed_at_ms: Vec<i64>,
    latencies_ms: Vec<i64>,
}

impl QuireRun {
    fn per_second(&self) -> f64 {
        raw_chain::sustained_rate(self.completed_at_ms.iter().map(|&ms| ms as f64 / 1000.0).collect())
    }
    fn latency(&self, q: f64) -> i64 {
        quantile(&self.latencies_ms, q)
    }
}

/// The median of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

async fn measure(args: &Args, pipeline: &mut LocalPipeline) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    let settings = CommitSettings { max_records: args.max_batch, interval: Duration::from_millis(args.commit_interval_ms) };
    let chain = Chain {
        bootstrap_servers: pipeline.kafka.bootstrap_servers.clone(),
        partitions: local_partitions()?,
        documents: args.documents as usize,
        records_per_document: args.paragraphs as usize,
        record_bytes: RAW_RECORD_BYTES,
        transactions: None,
    };
    let longest = Duration::from_secs(args.timeout);
    // Enough transactions (of up to --max-batch inputs) for the middle of a run to be measured.
    let transactional_chain = Chain { transactions: Some(settings), documents: chain.documents * LAYER_SCALE, ..chain.clone() };
    let chain = Chain { documents: chain.documents * PLAIN_SCALE, ..chain };
    for run in 1..=args.runs {
        println!("raw chain, plain, run {run}");
        figures.raw_plain.push(chain.run(longest).await?);
    }
    for run in 1..=args.runs {
        println!("raw chain, transactional, run {run}");
        figures.raw_transactional.push(transactional_chain.run(longest).await?);
    }

    let (max_batch, interval) = (args.max_batch.to_string(), args.commit_interval_ms.to_string());
    for mode in ["transactional", "idempotent"] {
        let env = [("QUIRE_ENGINE", args.engine.as_str()), ("QUIRE_DELIVERY_MODE", mode), ("QUIRE_MAX_BATCH", &max_batch), ("QUIRE_COMMIT_INTERVAL_MS", &interval)];
        pipeline.start_services(&SERVICES, &env)?;
        // The watchdog watches every group while the first mode runs.
        let watchdog = if mode == "transactional" {
            pipeline.start_services(&["quire-watchdog"], &[("QUIRE_METRICS_ADDR", "127.0.0.1:0")])?;
            pipeline.service_ids().last().copied().map(ProcessUse::start)
        } else {
            None
        };
        // A small dataset first, so the timed runs start with every stage assigned.
        quire_run(&Args { documents: 10, ..args.clone() }, &pipeline.kafka, None).await?;
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            println!("quire, {mode}, run {run}");
            runs.push(quire_run(args, &pipeline.kafka, None).await?);
        }
        if mode == "transactional" {
            // Latency at half the measured rate, paced rather than in a burst.
            let rate = median(runs.iter().map(QuireRun::per_second).collect()) / 2.0;
            println!("quire, {mode}, paced at {rate:.0} blocks/s");
            figures.paced = Some((rate, quire_run(args, &pipeline.kafka, Some(rate / args.paragraphs as f64)).await?));
        }
        figures.watchdog = figures.watchdog.take().or_else(|| watchdog.and_then(ProcessUse::finish));
        figures.quire.push((mode.to_owned(), runs));
        pipeline.stop_services();
    }

    println!("each stage alone, then each raw hop alone, on a backlog");
    let plain_layer = Chain { documents: args.documents as usize * LAYER_SCALE, ..chain.clone() };
    figures.layers = layers(args, pipeline, &plain_layer, &transactional_chain, longest).await?;
    for &records in &args.restart_records {
        println!("claimer restart with {records} records on its output topics");
        figures.restarts.push((records, restart(args, pipeline, records).await?));
    }
    for &entries in &args.ledger_entries {
        println!("claimer start with {entries} entries in its ledger, on a fresh disk, then on the disk it left");
        let (fresh, kept) = ledger_restart(args, pipeline, entries).await?;
        figures.ledger_restarts.push((entries, fresh, kept));
    }
    Ok(figures)
}

/// The partition count of the local profile's topics, which the raw chain copies.
fn local_partitions() -> anyhow::Result<i32> {
    let file = TopicsFile::load(None)?;
    let desired = file.desired("local", "quire", &KafkaArgs::default().retry_schedule())?;
    desired.iter().map(|t| t.partitions).max().ok_or_else(|| anyhow::anyhow!("topics.yaml declares no topics"))
}

/// Publishes a fresh synthetic dataset (at `documents_per_second`, or in a burst) and
/// waits for every block.
async fn quire_run(args: &Args, kafka: &KafkaArgs, documents_per_second: Option<f64>) -> anyhow::Result<QuireRun> {
    let dataset = format!("bench-{:08x}", rand::random::<u32>());
    let mut records = bench_submissions(args, kafka, &dataset, args.documents as usize, args.paragraphs as usize)?;
    let started = Instant::now();
    match documents_per_second {
        Some(rate) => publish_paced(kafka, &mut records, rate).await?,
        None => publish(kafka, &records, true).await.map(|_| ())?,
    };
    let published = started.elapsed();
    let report = wait_for_dataset(kafka, &dataset, quire_core::split::DEFAULT_MAX_BLOCK_CHARS, Duration::from_secs(args.timeout)).await?;
    anyhow::ensure!(report.is_sound() && report.quarantined == 0, "the benchmark dataset did not complete cleanly: {report:?}");

    let submitted: HashMap<&str, i64> = records.iter().map(|r| (r.document_id.as_str(), r.submitted_at_ms)).collect();
    let completed: Vec<ValidatedResult> = read_values(kafka, &TopicNames::new(&kafka.topic_prefix).completed()).await?;
    let completed: Vec<&ValidatedResult> = completed.iter().filter(|r| r.dataset_id == dataset).collect();
    let mut latencies_ms: Vec<i64> = completed.iter().filter_map(|r| Some(r.completed_at_ms - submitted.get(r.document_id.as_str())?)).collect();
    latencies_ms.sort_unstable();
    Ok(QuireRun { published, completed_at_ms: completed.iter().map(|r| r.completed_at_ms).collect(), latencies_ms })
}

fn bench_submissions(args: &Args, kafka: &KafkaArgs, dataset: &str, count: usize, paragraphs: usize) -> anyhow::Result<Vec<DatasetSubmission>> {
    let publish_args = super::publish::Args {
        kafka: kafka.clone(),
        path: args.dir.join("bench.jsonl"),
        dataset: Some(dataset.to_owned()),
        idempotency_key: None,
        task: "language-id".into(),
        target_language: None,
        quiet: true,
    };
    submissions(&publish_args, &documents(count, paragraphs))
}

/// `kafka` under a topic prefix of its own, its topics created.
async fn fresh_deployment(kafka: &KafkaArgs, name: &str) -> anyhow::Result<KafkaArgs> {
    let kafka = KafkaArgs { topic_prefix: format!("bench-{name}-{:08x}", rand::random::<u32>()), ..kafka.clone() };
    let desired = TopicsFile::load(None)?.desired("local", &kafka.topic_prefix, &kafka.retry_schedule())?;
    apply(&kafka, &desired, false).await?;
    Ok(kafka)
}

/// Each stage alone on a backlog of its input, against one raw hop alone on the same.
async fn layers(args: &Args, pipeline: &mut LocalPipeline, plain: &Chain, transactional: &Chain, longest: Duration) -> anyhow::Result<Vec<(&'static str, f64, f64, f64)>> {
    let kafka = fresh_deployment(&pipeline.kafka, "layers").await?;
    let names = TopicNames::new(&kafka.topic_prefix);
    let dataset = format!("bench-layers-{:08x}", rand::random::<u32>());
    let records = bench_submissions(args, &kafka, &dataset, args.documents as usize * LAYER_SCALE, args.paragraphs as usize)?;
    publish(&kafka, &records, true).await?;
    let blocks = records.len() * args.paragraphs as usize;
    let env = [("QUIRE_ENGINE", args.engine.as_str()), ("QUIRE_TOPIC_PREFIX", kafka.topic_prefix.as_str())];
    let stages: [(&'static str, String); 3] = [("claimer", names.queued()), ("inference", names.results()), ("validator", names.completed())];
    let mut alone = Vec::new();
    for (stage, output) in &stages {
        let counter = ArrivalCounter::start(&kafka.bootstrap_servers, output, blocks, From::Start)?;
        pipeline.start_services(&[&format!("quire-{stage}")], &env)?;
        let arrivals = wait_for(counter, longest).await;
        pipeline.stop_services();
        anyhow::ensure!(arrivals.count() >= blocks, "{stage} alone wrote {} of {blocks} records within {longest:?}", arrivals.count());
        alone.push(arrivals.per_second());
    }
    let mut hops = Vec::new();
    for chain in [transactional, plain] {
        hops.push(chain.hops_one_at_a_time(longest).await?);
    }
    Ok(stages
        .iter()
        .zip(alone)
        .enumerate()
        .map(|(hop, ((stage, _), quire))| (*stage, quire, hops[0][hop].per_second(), hops[1][hop].per_second()))
        .collect())
}

/// Waits until `counter` has every record or `longest` passed.
async fn wait_for(counter: ArrivalCounter, longest: Duration) -> Arrivals {
    let deadline = Instant::now() + longest;
    while !counter.is_done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counter.finish()
}

/// Starts the claimer with `records` already on its output topic and times how long it
/// takes to write the block of a document published before it started.
async fn restart(args: &Args, pipeline: &mut LocalPipeline, records: usize) -> anyhow::Result<Duration> {
    let kafka = fresh_deployment(&pipeline.kafka, "restart").await?;
    let queued = TopicNames::new(&kafka.topic_prefix).queued();
    let filled = {
        let (kafka, queued) = (kafka.clone(), queued.clone());
        tokio::task::spawn_blocking(move || fill(&kafka, &queued, records)).await??
    };
    let probe = bench_submissions(args, &kafka, &format!("bench-restart-{records}"), 1, 1)?;
    publish(&kafka, &probe, true).await?;
    let counter = ArrivalCounter::start(&kafka.bootstrap_servers, &queued, 1, From::Offsets(filled))?;
    let started = Instant::now();
    pipeline.start_services(&["quire-claimer"], &[("QUIRE_TOPIC_PREFIX", kafka.topic_prefix.as_str())])?;
    let arrivals = wait_for(counter, Duration::from_secs(args.timeout)).await;
    pipeline.stop_services();
    let first = arrivals.first().ok_or_else(|| anyhow::anyhow!("the claimer wrote nothing within {}s of starting", args.timeout))?;
    Ok(first - started)
}

/// Starts the claimer with `entries` already on its ledger, twice: on an empty state
/// directory (it rebuilds its copy from the ledger topic), then on the one it left (it
/// reads only what came after its checkpoint). Each time, how long until it writes the
/// block of a document published before it started, and its peak resident memory.
async fn ledger_restart(args: &Args, pipeline: &mut LocalPipeline, entries: usize) -> anyhow::Result<(LedgerStart, LedgerStart)> {
    let kafka = fresh_deployment(&pipeline.kafka, "ledger").await?;
    let names = TopicNames::new(&kafka.topic_prefix);
    let queued = names.queued();
    fill_ledger(&kafka, &names.ledger(quire_core::StageName::Claimer), &names.ingest(), entries).await?;
    let state = pipeline.dir.join(format!("state-{}", kafka.topic_prefix));
    let state = state.to_string_lossy().into_owned();
    let mut starts = Vec::new();
    for disk in ["fresh", "kept"] {
        let probe = bench_submissions(args, &kafka, &format!("bench-ledger-{entries}-{disk}"), 1, 1)?;
        publish(&kafka, &probe, true).await?;
        let ends = quire_kafka::io::reader::TopicReader::uncommitted(&kafka)?.ends(&queued)?;
        let counter = ArrivalCounter::start(&kafka.bootstrap_servers, &queued, 1, From::Offsets(ends))?;
        let started = Instant::now();
        pipeline.start_services(&["quire-claimer"], &[("QUIRE_TOPIC_PREFIX", kafka.topic_prefix.as_str()), ("QUIRE_STATE_DIR", &state)])?;
        let usage = ProcessUse::start(*pipeline.service_ids().last().expect("the claimer started"));
        let arrivals = wait_for(counter, Duration::from_secs(args.timeout)).await;
        let used = usage.finish();
        pipeline.stop_services();
        let first = arrivals.first().ok_or_else(|| anyhow::anyhow!("the claimer wrote nothing within {}s of starting ({disk} disk)", args.timeout))?;
        starts.push(LedgerStart { took: first - started, peak_rss_bytes: used.map_or(0, |u| u.peak_rss_bytes) });
    }
    Ok((starts[0], starts[1]))
}

/// Writes `entries` ledger entries to `ledger`, as a claimer leaves them after a long
/// run: one per document read, each on its input's partition.
async fn fill_ledger(kafka: &KafkaArgs, ledger: &str, input: &str, entries: usize) -> anyhow::Result<()> {
    let codec = quire_kafka::Codec::new(&kafka.schema_registry_url)?;
    quire_kafka::io::topics::register_all_schemas(&codec, kafka).await?;
    let partitions = quire_kafka::io::reader::TopicReader::new(kafka)?.partitions(ledger)?;
    let producer: BaseProducer = kafka.client_config().set("linger.ms", "20").set("batch.size", "1000000").create()?;
    for n in 0..entries {
        let partition = (n % partitions as usize) as i32;
        let entry = quire_core::ledger::LedgerEntry {
            stage: "claimer".into(),
            key: quire_core::ids::fingerprint(&["document", "bench-filler", &n.to_string()]),
            generation: 0,
            fingerprint: quire_core::ids::fingerprint(&[&n.to_string()]),
            state: Some(quire_core::BlockState::Queued),
            output_keys: vec![format!("blk-filler-{n:08}")],
            input_topic: input.to_owned(),
            input_partition: partition,
            input_offset: (n / partitions as usize) as i64,
            recorded_at_ms: quire_core::records::now_ms(),
        };
        let payload = codec.encode(ledger, &entry).await?;
        raw_chain::send(&producer, BaseRecord::to(ledger).partition(partition).key(&entry.key).payload(&payload))?;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Writes `records` earlier effects to `topic`: wire-format values, each with a dedup key
/// of its own, as a stage's output topic holds after a long run. Returns the offset after
/// the last one in each partition (partitions are chosen here, so that is known without
/// asking the broker for its watermarks, which the local one reports per batch).
fn fill(kafka: &KafkaArgs, topic: &str, records: usize) -> anyhow::Result<HashMap<i32, i64>> {
    let partitions = quire_kafka::io::reader::TopicReader::new(kafka)?.partitions(topic)?;
    let mut ends: HashMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    let producer: BaseProducer = kafka.client_config().set("linger.ms", "20").set("batch.size", "1000000").create()?;
    let mut payload = vec![0u8, 0, 0, 0, 1];
    payload.resize(RAW_RECORD_BYTES, b'f');
    for n in 0..records {
        let key = format!("blk-filler-{n:08}");
        let headers = OwnedHeaders::new().insert(Header { key: quire_kafka::record::headers::DEDUP_KEY, value: Some(key.as_bytes()) });
        let partition = (n % partitions as usize) as i32;
        *ends.entry(partition).or_default() += 1;
        raw_chain::send(&producer, BaseRecord::to(topic).partition(partition).key(&key).payload(&payload[..]).headers(headers))?;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(ends)
}

/// CPU time and peak memory of a process over a span, from `/proc`.
struct ProcessUse {
    pid: u32,
    started: Instant,
    cpu_at_start: Duration,
}

/// What [`ProcessUse`] measured: share of one core, peak resident memory.
#[derive(Clone, Copy)]
struct ProcessFigures {
    core_share: f64,
    peak_rss_bytes: u64,
}

impl ProcessUse {
    fn start(pid: u32) -> Self {
        ProcessUse { pid, started: Instant::now(), cpu_at_start: cpu_time(pid).unwrap_or_default() }
    }

    fn finish(self) -> Option<ProcessFigures> {
        let cpu = cpu_time(self.pid)?.saturating_sub(self.cpu_at_start);
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let peak_kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(ProcessFigures { core_share: cpu.as_secs_f64() / self.started.elapsed().as_secs_f64(), peak_rss_bytes: peak_kib * 1024 })
    }
}

/// User + system CPU time of `pid` (`/proc/PID/stat` counts in USER_HZ, 100 on Linux).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The machine, as the figures file names it.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()));
    format!("{}, {cores} cores, {:.1} GiB", model.unwrap_or_else(|| "unknown CPU".into()), memory.unwrap_or_default() as f64 / 1024.0 / 1024.0)
}

impl Figures {
    fn render(&self, args: &Args) -> String {
        let mut out = String::new();
        let plain = median(self.raw_plain.iter().map(ChainRun::per_second).collect());
        let transactional = median(self.raw_transactional.iter().map(ChainRun::per_second).collect());
        let runs = |rates: Vec<f64>| rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "quire bench on {} (a local nisshi broker, memory storage)", machine());
        let _ = writeln!(
            out,
            "{} documents × {} blocks of ~{RAW_RECORD_BYTES} bytes, engine {}, transactions of up to {} inputs / {} ms; rates are medians of {} runs, each over its middle 80 % of records",
            args.documents, args.paragraphs, args.engine, args.max_batch, args.commit_interval_ms, args.runs
        );
        let _ = writeln!(
            out,
            "raw chain, plain              {plain:>9.0} blocks/s   ({}; {} documents, {PLAIN_SCALE}× as many)",
            runs(self.raw_plain.iter().map(ChainRun::per_second).collect()),
            args.documents as usize * PLAIN_SCALE
        );
        let _ = writeln!(
            out,
            "raw chain, transactional      {transactional:>9.0} blocks/s   ({}; {} documents, {LAYER_SCALE}× as many)",
            runs(self.raw_transactional.iter().map(ChainRun::per_second).collect()),
            args.documents as usize * LAYER_SCALE
        );
        for (mode, quire_runs) in &self.quire {
            let rate = median(quire_runs.iter().map(QuireRun::per_second).collect());
            let _ = writeln!(
                out,
                "quire, {mode:<22} {rate:>9.0} blocks/s   ({}) = {:.0} % of raw transactional, {:.0} % of raw plain",
                runs(quire_runs.iter().map(QuireRun::per_second).collect()),
                100.0 * rate / transactional,
                100.0 * rate / plain
            );
            let middle = &quire_runs[quire_runs.len() / 2];
            let _ = writeln!(
                out,
                "quire, {mode:<22} burst latency p50 {} ms, p95 {} ms, p99 {} ms; publish {:.0} documents/s",
                middle.latency(0.5),
                middle.latency(0.95),
                middle.latency(0.99),
                args.documents as f64 / middle.published.as_secs_f64()
            );
        }
        if let Some((rate, paced)) = &self.paced {
            let _ = writeln!(
                out,
                "quire, transactional, paced at {rate:.0} blocks/s (half the rate): latency p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
                paced.latency(0.5),
                paced.latency(0.95),
                paced.latency(0.99),
                paced.latency(1.0)
            );
        }
        for (stage, quire, transactional, plain) in &self.layers {
            let _ = writeln!(
                out,
                "{stage:<9} alone {quire:>9.0} blocks/s on a backlog of {}; one raw hop alone: transactional {transactional:.0} records/s ({:.0} %), plain {plain:.0} ({:.1} %)",
                args.documents as usize * LAYER_SCALE * args.paragraphs as usize,
                100.0 * quire / transactional,
                100.0 * quire / plain
            );
        }
        if let Some(watchdog) = &self.watchdog {
            let _ = writeln!(
                out,
                "watchdog while Quire ran       {:.2} % of a core, peak resident memory {:.1} MB",
                100.0 * watchdog.core_share,
                watchdog.peak_rss_bytes as f64 / 1e6
            );
        }
        for (records, took) in &self.restarts {
            let _ = writeln!(out, "claimer start with {records:>8} records on its outputs: {:.2} s to its first block", took.as_secs_f64());
        }
        for (entries, fresh, kept) in &self.ledger_restarts {
            for (disk, start) in [("a fresh disk", fresh), ("the disk it left", kept)] {
                let _ = writeln!(
                    out,
                    "claimer start with {entries:>8} ledger entries, {disk:<16}: {:.2} s to its first block, peak resident memory {:.1} MB",
                    start.took.as_secs_f64(),
                    start.peak_rss_bytes as f64 / 1e6
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sustained_rate_leaves_out_start_up_and_drain() {
        // 100 records one per 10 ms, after a 5 s start-up and before a 5 s drain.
        let mut times: Vec<f64> = (0..100).map(|n| 5.0 + n as f64 * 0.01).collect();
        times[0] = 0.0;
        times[99] = 15.0;
        let rate = raw_chain::sustained_rate(times);
        assert!((rate - 100.0).abs() < 1.0, "{rate}");
        assert_eq!(raw_chain::sustained_rate(vec![1.0, 1.0, 1.0]), 0.0);
        assert_eq!(raw_chain::sustained_rate(vec![0.0, 1.0]), 1.0);
    }

    #[test]
    fn medians_take_the_middle_run() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
    }

    #[test]
    fn process_cpu_time_is_read_from_proc() {
        let pid = std::process::id();
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64.wrapping_add(1));
        }
        assert!(cpu_time(pid).is_some_and(|t| t > Duration::ZERO));
        assert!(ProcessUse::start(pid).finish().is_some_and(|f| f.peak_rss_bytes > 0));
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let sorted: Vec<i64> = (1..=100).collect();
        assert_eq!((quantile(&sorted, 0.5), quantile(&sorted, 0.95), quantile(&sorted, 1.0)), (50, 95, 100));
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn synthetic_documents_are_distinct_and_one_block_per_paragraph() {
        let docs = documents(3, 2);
        assert_eq!(docs.len(), 3);
        for doc in &docs {
            assert_eq!(quire_core::split::split_blocks(&doc.text, quire_core::split::DEFAULT_MAX_BLOCK_CHARS).len(), 2, "{}", doc.text);
        }
        assert_ne!(docs[0].text, docs[1].text);
    }
}
