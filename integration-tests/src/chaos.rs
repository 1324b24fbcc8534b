//! Chaos: several datasets through a pipeline with two or more instances of every stage,
//! while a seeded driver kills, stops and adds instances, restarts the broker (cleanly
//! and with SIGKILL, on SQLite storage) and the registry, and makes the model engine
//! fail and time out; then a verifier that knows only what it published.
//!
//! Modeled on Apache Kafka's `transactions_test.py` and the Streams EOS system test
//! (bounces of brokers and clients, kill -9 with open transactions, a verifier that
//! prints what was delivered) and on Jepsen's checks (lost writes, duplicates, reads of
//! aborted writes). The verifier reads every topic read_committed and does not use
//! Quire's splitter, ids, state machine or `quire verify`: each published paragraph is
//! one block (each is shorter than a block and longer than half of one), expected as
//! (dataset, document, paragraph), and the legal transitions are written out below from
//! the documented state machine.

use crate::model_server::{Behaviour, ModelServer};
use crate::{eventually, quire, read_decoded, Pipeline, Stack};
use quire_core::records::{Block, InferenceResult, QuarantineRecord, StateChange, ValidatedResult};
use quire_core::BlockState;
use quire_kafka::config::TopicNames;
use quire_kafka::Codec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Blocks published in all (two per document).
    pub blocks: usize,
    pub delivery_mode: String,
    /// How long the driver injects faults.
    pub fault_window: Duration,
    /// Which faults it may inject.
    pub faults: Vec<Fault>,
}

/// What the driver does to the running pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL an instance (mid-transaction, as it comes) and start it again.
    KillInstance,
    /// SIGSTOP an instance past the session timeout, then SIGCONT: a zombie that wakes
    /// after its partitions moved.
    StopInstance,
    /// Start one more instance of a stage (a rebalance under load).
    AddInstance,
    /// SIGTERM an instance beyond the first two of its stage (another rebalance).
    RemoveInstance,
    /// Stop the broker cleanly and start it again on the same storage.
    RestartBroker,
    /// SIGKILL the broker and start it again on the same storage.
    KillBroker,
    /// Stop and start the schema registry.
    RestartRegistry,
    /// The model server answers 500 for a while.
    EngineFails,
    /// The model server answers after the engine's timeout for a while.
    EngineTimesOut,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::KillInstance,
        Fault::StopInstance,
        Fault::AddInstance,
        Fault::RemoveInstance,
        Fault::RestartBroker,
        Fault::KillBroker,
        Fault::RestartRegistry,
        Fault::EngineFails,
        Fault::EngineTimesOut,
    ];

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| format!("{f:?}").eq_ignore_ascii_case(&name.replace(['-', '_'], "")))
    }
}

/// The figures of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub delivery_mode: String,
    pub blocks_in: usize,
    pub completed: usize,
    pub quarantined_by_reason: BTreeMap<String, usize>,
    pub canceled: usize,
    pub lost: Vec<String>,
    /// Lost blocks by the last state their audit events reached: where they stand.
    pub lost_at: BTreeMap<String, usize>,
    pub duplicated: Vec<String>,
    pub illegal_events: Vec<String>,
    pub post_terminal_events: Vec<String>,
    pub completed_and_quarantined: Vec<String>,
    /// Good blocks quarantined as bad data.
    pub wrongly_quarantined: Vec<String>,
    /// Blocks both completed and canceled.
    pub completed_after_cancel: Vec<String>,
    pub faults: BTreeMap<Fault, usize>,
    pub wall: Duration,
    pub drained: bool,
    /// Instances that exited on their own (and were started again).
    pub exits: usize,
    /// Why `quire cancel` never succeeded, if it did not.
    pub cancel_failed: Option<String>,
}

impl Report {
    /// Loss, duplication and illegal or post-terminal events: what makes a run fail.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |what: &str, found: &[String]| {
            if !found.is_empty() {
                problems.push(format!("{} {what}, e.g. {:?}", found.len(), &found[..found.len().min(5)]));
            }
        };
        check("blocks lost", &self.lost);
        check("blocks completed more than once", &self.duplicated);
        check("illegal audited transitions", &self.illegal_events);
        check("audit events after a terminal state", &self.post_terminal_events);
        check("blocks both completed and quarantined", &self.completed_and_quarantined);
        check("blocks both completed and canceled", &self.completed_after_cancel);
        check("good blocks quarantined as bad data", &self.wrongly_quarantined);
        if let Some(error) = &self.cancel_failed {
            problems.push(format!("quire cancel kept failing: {error}"));
        }
        if !self.drained {
            problems.push("the pipeline did not finish within the wait".into());
        }
        problems
    }

    pub fn print(&self) {
        let count = |fault: Fault| self.faults.get(&fault).copied().unwrap_or(0);
        println!("chaos seed:                {}", self.seed);
        println!("chaos delivery mode:       {}", self.delivery_mode);
        println!("chaos blocks in:           {}", self.blocks_in);
        println!("chaos completed:           {}", self.completed);
        for (reason, n) in &self.quarantined_by_reason {
            println!("chaos quarantined:         {n} ({reason})");
        }
        println!("chaos canceled:            {}", self.canceled);
        println!("chaos lost:                {}", self.lost.len());
        for (at, count) in &self.lost_at {
            println!("chaos lost, standing at    {at}: {count}");
        }
        println!("chaos duplicated:          {}", self.duplicated.len());
        println!("chaos illegal events:      {}", self.illegal_events.len());
        println!("chaos post-terminal:       {}", self.post_terminal_events.len());
        println!("chaos completed+quarantined: {}", self.completed_and_quarantined.len());
        println!("chaos wrongly quarantined: {}", self.wrongly_quarantined.len());
        println!("chaos kills:               {}", count(Fault::KillInstance));
        println!("chaos stops:               {}", count(Fault::StopInstance));
        println!("chaos rebalances:          {}", count(Fault::AddInstance) + count(Fault::RemoveInstance));
        println!("chaos broker restarts:     {} clean, {} kill -9", count(Fault::RestartBroker), count(Fault::KillBroker));
        println!("chaos registry restarts:   {}", count(Fault::RestartRegistry));
        println!("chaos engine faults:       {} failing, {} timing out", count(Fault::EngineFails), count(Fault::EngineTimesOut));
        println!("chaos instance exits:      {} (started again)", self.exits);
        println!("chaos wall time:           {:.1} s", self.wall.as_secs_f64());
        println!("chaos verdict:             {}", if self.problems().is_empty() { "ALL-RECORDS-DELIVERED" } else { "FAILED" });
    }
}

/// Causes that say a record itself was bad. Every block the chaos run publishes is
/// good, so quarantining one for these is a fault of Quire's (say, a registry restart
/// taken for bad data); engine failures that outlast the retries are not.
const BAD_DATA_CAUSES: [&str; 8] =
    ["malformed-record", "unencodable-output", "record-too-large", "output-too-large", "invalid-field", "control-characters", "forged-block", "illegal-transition"];

/// Paragraphs of 350 to 590 characters: each is one block under the default limit of
/// 600, and no two fit in one.
fn document_text(rng: &mut StdRng, dataset: &str, document: usize) -> String {
    const WORDS: [&str; 12] = ["river", "council", "budget", "harbour", "library", "garden", "station", "market", "bridge", "school", "festival", "museum"];
    (0..2)
        .map(|paragraph| {
            let mut text = format!("{dataset} {document} {paragraph}:");
            let target = rng.random_range(350..560);
            while text.len() < target {
                text.push(' ');
                text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            }
            text.push('.');
            text
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A running instance of a stage.
struct Instance {
    stage: &'static str,
    id: String,
    service: usize,
}

struct Driver<'a> {
    pipeline: Pipeline<'a>,
    instances: Vec<Instance>,
    next_id: usize,
    stopped: Vec<(u32, Instant)>,
    faults: BTreeMap<Fault, usize>,
}

const STAGES: [&str; 4] = ["quire-claimer", "quire-inference", "quire-validator", "quire-quarantine"];

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").args([name, &pid.to_string()]).status();
}

impl Driver<'_> {
    fn start(&mut self, stage: &'static str, id: String) {
        let service = self.pipeline.start(stage, &id);
        self.instances.push(Instance { stage, id, service });
    }

    fn pid(&self, instance: &Instance) -> u32 {
        self.pipeline.services[instance.service].child.id()
    }

    /// Starts again, under the same id, every instance that exited on its own, as a
    /// supervisor would (a fenced zombie exits by design); returns how many.
    fn restart_exited(&mut self) -> usize {
        let exited: Vec<usize> = (0..self.instances.len()).filter(|&i| !self.pipeline.services[self.instances[i].service].running()).collect();
        for &i in exited.iter().rev() {
            let instance = self.instances.remove(i);
            self.start(instance.stage, instance.id);
        }
        exited.len()
    }

    fn resume_due(&mut self, now: Instant) {
        self.stopped.retain(|(pid, until)| {
            if *until <= now {
                signal(*pid, "-CONT");
                false
            } else {
                true
            }
        });
    }

    fn inject(&mut self, fault: Fault, rng: &mut StdRng, stack: &Stack, model: &ModelServer, engine_ok_at: &mut Option<Instant>) {
        let stack_dir = stack.dir.path().to_string_lossy().into_owned();
        let pick = |rng: &mut StdRng, n: usize| rng.random_range(0..n);
        match fault {
            Fault::KillInstance => {
                let i = pick(rng, self.instances.len());
                let (stage, id) = (self.instances[i].stage, self.instances[i].id.clone());
                let pid = self.pid(&self.instances[i]);
                self.stopped.retain(|(p, _)| *p != pid);
                self.pipeline.services[self.instances[i].service].kill();
                self.instances.remove(i);
                // The same id, so its restart rolls back the open transaction it left.
                self.start(stage, id);
            }
            Fault::StopInstance => {
                let i = pick(rng, self.instances.len());
                let pid = self.pid(&self.instances[i]);
                if self.stopped.iter().all(|(p, _)| *p != pid) {
                    signal(pid, "-STOP");
                    // Past the session timeout (10 s), so its partitions move meanwhile.
                    self.stopped.push((pid, Instant::now() + Duration::from_millis(rng.random_range(11_000..15_000))));
                }
            }
            Fault::AddInstance => {
                let stage = STAGES[pick(rng, STAGES.len())];
                self.next_id += 1;
                self.start(stage, self.next_id.to_string());
            }
            Fault::RemoveInstance => {
                let stage = STAGES[pick(rng, STAGES.len())];
                let of_stage: Vec<usize> = (0..self.instances.len()).filter(|&i| self.instances[i].stage == stage).collect();
                if of_stage.len() <= 2 {
                    return;
                }
                let i = *of_stage.last().expect("an instance");
                let pid = self.pid(&self.instances[i]);
                if self.stopped.iter().any(|(p, _)| *p == pid) {
                    return;
                }
                self.pipeline.services[self.instances[i].service].terminate(Duration::from_secs(30));
                self.instances.remove(i);
            }
            Fault::RestartBroker | Fault::KillBroker => {
                let mut args = vec!["stack", "restart", "--dir", &stack_dir, "broker"];
                if fault == Fault::KillBroker {
                    args.push("--kill");
                }
                quire(&args, &HashMap::new()).expect("broker restart");
            }
            Fault::RestartRegistry => {
                quire(&["stack", "restart", "--dir", &stack_dir, "registry"], &HashMap::new()).expect("registry restart");
            }
            Fault::EngineFails | Fault::EngineTimesOut => {
                model.set(if fault == Fault::EngineFails { Behaviour::Failing } else { Behaviour::Slow(Duration::from_millis(2_500)) });
                *engine_ok_at = Some(Instant::now() + Duration::from_millis(rng.random_range(1_000..4_000)));
            }
        }
        *self.faults.entry(fault).or_default() += 1;
    }
}

/// How long after the faults end `quire cancel` may keep failing.
const CANCEL_PATIENCE: Duration = Duration::from_secs(120);

/// Runs the chaos scenario on a SQLite stack of its own and reports.
pub fn run(config: &Config) -> Report {
    let started = Instant::now();
    let mut stack = Stack::start_with("sqlite");
    let model = ModelServer::start(Behaviour::Healthy);
    let engines = format!(
        "engines:\n  - {{name: model, kind: openai, url: \"{}\", model: chaos, timeout_ms: 1500, breaker: {{failure_threshold: 1000}}}}\ntasks:\n  translate: {{engines: [model]}}\n",
        model.url
    );
    let engines_path = stack.dir.path().join("engines.yaml");
    std::fs::write(&engines_path, engines).expect("engines config");
    let engines_path = engines_path.to_string_lossy().into_owned();
    let pipeline = Pipeline::with_env(
        &stack,
        &config.delivery_mode,
        &[("QUIRE_ENGINES_CONFIG", &engines_path), ("QUIRE_RETRY_DELAYS_MS", "1000,2000,4000,8000"), ("QUIRE_HEARTBEAT_INTERVAL_MS", "1000")],
    );
    let names = TopicNames::new(&pipeline.prefix);
    let env = pipeline.env.clone();
    let mut driver = Driver { pipeline, instances: Vec::new(), next_id: 1, stopped: Vec::new(), faults: BTreeMap::new() };
    for stage in STAGES {
        for id in ["0", "1"] {
            driver.start(stage, id.into());
        }
    }

    // The datasets, published one after another while the faults go on.
    let mut rng = StdRng::seed_from_u64(config.seed);
    let datasets = 5.max(config.blocks / 400);
    let documents_per_dataset = (config.blocks / 2).div_ceil(datasets);
    let mut expected: HashSet<(String, String, i32)> = HashSet::new();
    let mut files = Vec::new();
    for d in 0..datasets {
        let dataset = format!("chaos-{d}");
        let mut lines = Vec::new();
        for n in 0..documents_per_dataset {
            let document = format!("doc-{n:05}");
            lines.push(serde_json::json!({"id": document, "text": document_text(&mut rng, &dataset, n)}).to_string());
            expected.extend((0..2).map(|p| (dataset.clone(), document.clone(), p)));
        }
        let path = stack.dir.path().join(format!("{dataset}.jsonl"));
        std::fs::write(&path, lines.join("\n") + "\n").expect("write dataset");
        files.push((dataset, path));
    }
    let canceled_dataset = files[files.len() - 1].0.clone();

    let fault_deadline = Instant::now() + config.fault_window;
    let publish_gap = config.fault_window / (datasets as u32 + 1);
    let mut engine_ok_at = None;
    let mut next_fault = Instant::now() + Duration::from_millis(rng.random_range(500..2_000));
    let mut next_publish = Instant::now();
    let mut pending_files = files.iter().peekable();
    let mut cancel_at = None;
    let mut canceled = false;
    let mut cancel_error = None;
    let mut exits = 0;
    loop {
        let now = Instant::now();
        driver.resume_due(now);
        exits += driver.restart_exited();
        if engine_ok_at.is_some_and(|t| t <= now) {
            model.set(Behaviour::Healthy);
            engine_ok_at = None;
        }
        if now >= next_publish {
            if let Some((dataset, path)) = pending_files.next() {
                let path = path.to_string_lossy().into_owned();
                // The broker or registry may be restarting: publishing is retried.
                eventually(Duration::from_secs(120), "publish", || {
                    quire(&["publish", "--quiet", "--dataset", dataset, "--task", "translate", "--target-language", "fr", &path], &env).ok()
                })
                .expect("publish a dataset");
                next_publish = Instant::now() + publish_gap;
                if pending_files.peek().is_none() {
                    // The last dataset is canceled while its blocks are in flight.
                    cancel_at = Some(Instant::now() + Duration::from_millis(rng.random_range(500..3_000)));
                }
            }
        }
        if !canceled && cancel_at.is_some_and(|t| now >= t) {
            match quire(&["cancel", &canceled_dataset], &env) {
                Ok(_) => canceled = true,
                Err(e) => cancel_error = Some(format!("{e:#}")),
            }
        }
        // A cancel that keeps failing is a finding, not a reason to wait forever.
        if !canceled && now >= fault_deadline + CANCEL_PATIENCE {
            break;
        }
        if now < fault_deadline && now >= next_fault && !config.faults.is_empty() {
            let fault = config.faults[rng.random_range(0..config.faults.len())];
            driver.inject(fault, &mut rng, &stack, &model, &mut engine_ok_at);
            next_fault = Instant::now() + Duration::from_millis(rng.random_range(1_000..4_000));
        }
        if now >= fault_deadline && canceled {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Faults over: every zombie wakes, the engine heals, and the pipeline drains.
    for (pid, _) in driver.stopped.drain(..) {
        signal(pid, "-CONT");
    }
    model.set(Behaviour::Healthy);
    let runtime = crate::runtime();
    let codec = Codec::new(&stack.schema_registry_url).expect("codec");
    let prefix = driver.pipeline.prefix.clone();
    let outcome = |runtime: &tokio::runtime::Runtime| Outcome::read(&stack, &prefix, &names, &codec, runtime);
    let drained = eventually(Duration::from_secs(900), "every block completed, quarantined or canceled", || {
        std::thread::sleep(Duration::from_secs(2));
        exits += driver.restart_exited();
        outcome(&runtime).judge(&expected, &canceled_dataset).lost.is_empty().then_some(())
    })
    .is_ok();
    std::thread::sleep(Duration::from_secs(3));
    let outcome = outcome(&runtime);
    let mut report = outcome.judge(&expected, &canceled_dataset);
    report.seed = config.seed;
    report.delivery_mode = config.delivery_mode.clone();
    report.faults = std::mem::take(&mut driver.faults);
    report.drained = drained;
    report.exits = exits;
    report.cancel_failed = (!canceled).then(|| cancel_error.unwrap_or_else(|| "never tried".into()));
    report.wall = started.elapsed();
    if !report.problems().is_empty() {
        eprintln!("{}", driver.pipeline.logs());
        drop(driver);
        // The logs and the broker's data stay for a post-mortem.
        stack.dir.disable_cleanup(true);
        eprintln!("chaos: stack directory kept at {}", stack.dir.path().display());
    }
    report
}

/// A block as the verifier names it: (dataset, document, paragraph).
type BlockName = (String, String, i32);

/// What the topics say, read read_committed.
struct Outcome {
    completed: HashMap<BlockName, usize>,
    quarantined: HashMap<BlockName, String>,
    /// Audit events per block id, in order.
    events: HashMap<String, Vec<StateChange>>,
    /// Each block id's name, from the copies of the block on the queued topic.
    names: HashMap<String, BlockName>,
}

impl Outcome {
    fn read(stack: &Stack, prefix: &str, names: &TopicNames, codec: &Codec, runtime: &tokio::runtime::Runtime) -> Outcome {
        let mut block_names = HashMap::new();
        for block in read_decoded::<Block>(stack, prefix, &names.queued(), runtime) {
            block_names.insert(block.block_id, (block.dataset_id, block.document_id, block.sequence));
        }
        let mut completed = HashMap::new();
        for c in read_decoded::<ValidatedResult>(stack, prefix, &names.completed(), runtime) {
            *completed.entry((c.dataset_id, c.document_id, c.sequence)).or_default() += 1;
        }
        let mut quarantined = HashMap::new();
        for q in read_decoded::<QuarantineRecord>(stack, prefix, &names.quarantine(), runtime) {
            // The quarantined payload is the block (inference) or its result (validator).
            let payload = q.payload.as_deref();
            let block = runtime
                .block_on(codec.decode::<Block>(payload))
                .ok()
                .or_else(|| runtime.block_on(codec.decode::<InferenceResult>(payload)).ok().map(|r| r.block));
            if let Some(block) = block {
                let name = (block.dataset_id, block.document_id, block.sequence);
                quarantined.insert(name, format!("{}: {}", q.cause, q.reason.chars().take(60).collect::<String>()));
            }
        }
        let mut events: HashMap<String, Vec<StateChange>> = HashMap::new();
        for change in read_decoded::<StateChange>(stack, prefix, &names.events(), runtime) {
            events.entry(change.block_id.clone()).or_default().push(change);
        }
        Outcome { completed, quarantined, events, names: block_names }
    }

    /// Block ids with a CANCELED event.
    fn canceled_ids(&self) -> impl Iterator<Item = &String> {
        self.events.iter().filter(|(_, events)| events.iter().any(|c| c.to_state == BlockState::Canceled)).map(|(id, _)| id)
    }

    fn judge(&self, expected: &HashSet<BlockName>, canceled_dataset: &str) -> Report {
        let mut report = Report { blocks_in: expected.len(), ..Report::default() };
        let canceled_names: HashSet<&BlockName> = self.canceled_ids().filter_map(|id| self.names.get(id)).collect();
        // Blocks canceled at the claimer were never queued, so have no name: they are
        // counted for their dataset.
        let mut canceled_unnamed = self.canceled_ids().filter(|id| !self.names.contains_key(*id)).count();
        report.canceled = self.canceled_ids().count();
        let ids: HashMap<&BlockName, &String> = self.names.iter().map(|(id, name)| (name, id)).collect();
        let mut sorted: Vec<&BlockName> = expected.iter().collect();
        sorted.sort();
        for block in sorted {
            let times = self.completed.get(block).copied().unwrap_or(0);
            let canceled = canceled_names.contains(block);
            match times {
                0 if self.quarantined.contains_key(block) || canceled => {}
                0 if block.0 == canceled_dataset && canceled_unnamed > 0 => canceled_unnamed -= 1,
                0 => {
                    report.lost.push(format!("{block:?}"));
                    let last = ids.get(block).and_then(|id| self.events.get(*id)).and_then(|events| events.last());
                    let at = last.map_or_else(|| "never queued".to_owned(), |c| format!("{} (by {})", c.to_state, c.stage));
                    *report.lost_at.entry(at).or_default() += 1;
                }
                1 => report.completed += 1,
                n => report.duplicated.push(format!("{block:?} ×{n}")),
            }
            if times > 0 && canceled {
                report.completed_after_cancel.push(format!("{block:?}"));
            }
            if let Some(reason) = self.quarantined.get(block) {
                let cause = reason.split(':').next().unwrap_or_default().to_owned();
                if BAD_DATA_CAUSES.contains(&cause.as_str()) {
                    report.wrongly_quarantined.push(format!("{block:?}: {reason}"));
                }
                *report.quarantined_by_reason.entry(cause).or_default() += 1;
                if times > 0 {
                    report.completed_and_quarantined.push(format!("{block:?}: {reason}"));
                }
            }
        }
        let violations = crate::audit::Violations::of(&self.events);
        report.illegal_events = violations.illegal;
        report.post_terminal_events = violations.post_terminal;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(block: &str, from: BlockState, to: BlockState) -> StateChange {
        StateChange {
            block_id: block.into(),
            dataset_id: "d".into(),
            from_state: from,
            to_state: to,
            stage: "test".into(),
            instance_id: "0".into(),
            reason: None,
            request_id: "r".into(),
            at_ms: 0,
        }
    }

    fn name(document: &str, paragraph: i32) -> BlockName {
        ("d".into(), document.into(), paragraph)
    }

    /// The verifier sees each kind of violation it promises to.
    #[test]
    fn the_verifier_finds_loss_duplicates_and_bad_audits() {
        use BlockState::*;
        let expected: HashSet<BlockName> = [name("a", 0), name("a", 1), name("b", 0), name("b", 1), name("c", 0)].into();
        let outcome = Outcome {
            completed: [(name("a", 0), 1), (name("a", 1), 2), (name("b", 1), 1)].into(),
            quarantined: [(name("b", 1), "no-language: x".into()), (name("c", 0), "malformed-record: y".into())].into(),
            events: [
                ("blk-a0".to_owned(), vec![change("blk-a0", Queued, Processing), change("blk-a0", Processing, Validating), change("blk-a0", Validating, Completed)]),
                ("blk-a1".to_owned(), vec![change("blk-a1", Validating, Completed), change("blk-a1", Completed, Processing)]),
                ("blk-b0".to_owned(), vec![change("blk-b0", Pending, Validating)]),
            ]
            .into(),
            names: [("blk-a0".to_owned(), name("a", 0)), ("blk-a1".to_owned(), name("a", 1))].into(),
        };
        let report = outcome.judge(&expected, "other");
        assert_eq!(report.lost, vec![format!("{:?}", name("b", 0))]);
        assert_eq!(report.duplicated.len(), 1, "{report:?}");
        assert_eq!(report.completed_and_quarantined.len(), 1, "{report:?}");
        assert_eq!(report.illegal_events.len(), 2, "COMPLETED → PROCESSING and PENDING → VALIDATING: {report:?}");
        assert_eq!(report.post_terminal_events.len(), 1, "{report:?}");
        assert_eq!(report.wrongly_quarantined.len(), 1, "{report:?}");
        assert_eq!(report.problems().len(), 7, "{:?}", report.problems());
        // A clean outcome passes.
        let clean = Outcome { completed: [(name("c", 0), 1)].into(), quarantined: HashMap::new(), events: HashMap::new(), names: HashMap::new() };
        let report = Report { drained: true, ..clean.judge(&[name("c", 0)].into(), "other") };
        assert!(report.problems().is_empty(), "{:?}", report.problems());
    }

    #[test]
    fn canceled_blocks_are_accounted_for_by_dataset() {
        use BlockState::*;
        let expected: HashSet<BlockName> = [name("a", 0), name("a", 1)].into();
        // One canceled at the claimer (never queued, so nameless), one completed.
        let outcome = Outcome {
            completed: [(name("a", 0), 1)].into(),
            quarantined: HashMap::new(),
            events: [("blk-x".to_owned(), vec![change("blk-x", Pending, Canceled)])].into(),
            names: HashMap::new(),
        };
        assert!(outcome.judge(&expected, "d").lost.is_empty());
        assert_eq!(outcome.judge(&expected, "other").lost.len(), 1, "only the canceled dataset's blocks may be canceled");
    }
}
