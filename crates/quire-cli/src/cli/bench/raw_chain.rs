//! The ceiling Quire is measured against: three consume→produce hops written plainly
//! with rdkafka (no Avro, no dedup, no audit, no state machine) through topics laid out
//! like Quire's, from a publisher to a sink reading the last topic. The first hop splits
//! each document into as many records as Quire splits it into blocks. Run plain, it is
//! what any three-stage pipeline can reach on this broker; run transactional (offsets in
//! the transaction, `read_committed` readers, Quire's commit settings) it is what
//! exactly-once costs before Quire adds anything.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When a transactional hop commits: after `max_records` inputs or `interval`, as
/// Quire's `QUIRE_MAX_BATCH` and `QUIRE_COMMIT_INTERVAL_MS`.
#[derive(Debug, Clone, Copy)]
pub struct CommitSettings {
    pub max_records: usize,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Chain {
    pub bootstrap_servers: String,
    pub partitions: i32,
    pub documents: usize,
    pub records_per_document: usize,
    pub record_bytes: usize,
    /// `None`: plain hops (auto-committed offsets, no transactions).
    pub transactions: Option<CommitSettings>,
}

/// What the sink of one chain run saw.
#[derive(Debug, Clone)]
pub struct ChainRun {
    pub arrivals: Arrivals,
}

impl ChainRun {
    pub fn per_second(&self) -> f64 {
        self.arrivals.per_second()
    }
}

/// Records per second in the middle of a run, between the 10th and the 90th percentile
/// of their arrival times (seconds from any origin), so that neither start-up nor the
/// drain of the last records counts; the whole span if the middle has no width.
pub fn sustained_rate(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    let n = seconds.len();
    if n < 2 {
        return 0.0;
    }
    let (low, high) = (n / 10, n - 1 - n / 10);
    let rate = |from: usize, to: usize| {
        let span = seconds[to] - seconds[from];
        (span > 0.0).then(|| (to - from) as f64 / span)
    };
    rate(low, high).or_else(|| rate(0, n - 1)).unwrap_or(0.0)
}

const HOPS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(30);

impl Chain {
    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("broker.address.family", "v4");
        config
    }

    /// Runs `work` (on a blocking thread) with this chain and topics of its own, named
    /// under a fresh prefix, created before and deleted after.
    async fn on_own_topics<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce(Chain, String, Vec<String>) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let prefix = format!("{name}-{:08x}", rand::random::<u32>());
        let topics: Vec<String> = (0..=HOPS).map(|n| format!("{prefix}.t{n}")).collect();
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let new_topics: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, self.partitions, TopicReplication::Fixed(1))).collect();
        for result in admin.create_topics(&new_topics, &AdminOptions::new().operation_timeout(Some(TIMEOUT))).await? {
            result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
        }
        let (chain, hop_topics) = (self.clone(), topics.clone());
        let outcome = tokio::task::spawn_blocking(move || work(chain, prefix, hop_topics)).await?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
        outcome
    }

    /// Starts hop `hop` (from `topics[hop]` to the next) in a thread of its own.
    fn spawn_hop(&self, prefix: &str, topics: &[String], hop: usize, stop: &Arc<AtomicBool>, ready: &Arc<AtomicUsize>) -> JoinHandle<anyhow::Result<()>> {
        let (chain, stop, ready) = (self.clone(), stop.clone(), ready.clone());
        let (from, to) = (topics[hop].clone(), topics[hop + 1].clone());
        let fan_out = if hop == 0 { self.records_per_document } else { 1 };
        let group = format!("{prefix}-hop{hop}");
        std::thread::spawn(move || chain.hop(&group, &from, &to, fan_out, &stop, &ready))
    }

    /// Runs the chain once on topics of its own and measures it.
    pub async fn run(&self, longest: Duration) -> anyhow::Result<ChainRun> {
        self.on_own_topics("bench-raw", move |chain, prefix, topics| chain.run_on(&prefix, &topics, longest)).await
    }

    fn run_on(&self, prefix: &str, topics: &[String], longest: Duration) -> anyhow::Result<ChainRun> {
        let expected = self.documents * self.records_per_document;
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicUsize::new(0));
        let hops: Vec<JoinHandle<anyhow::Result<()>>> = (0..HOPS).map(|hop| self.spawn_hop(prefix, topics, hop, &stop, &ready)).collect();
        let sink = ArrivalCounter::start(&self.bootstrap_servers, &topics[HOPS], expected, From::Start)?;
        // Timed from the first document, once every hop has its partitions.
        let joined = Instant::now() + TIMEOUT;
        while ready.load(Ordering::SeqCst) < HOPS && Instant::now() < joined && hops.iter().all(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let published = self.publish(&topics[0]);
        let deadline = Instant::now() + longest;
        while !sink.is_done() && Instant::now() < deadline && hops.iter().all(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
        let arrivals = sink.finish();
        for hop in hops {
            hop.join().map_err(|_| anyhow::anyhow!("a hop panicked"))??;
        }
        published?;
        anyhow::ensure!(arrivals.count() >= expected, "the raw chain moved {} of {expected} records within {longest:?}", arrivals.count());
        Ok(ChainRun { arrivals })
    }

    /// Runs the hops one after another on topics of their own, each alone on the backlog
    /// the one before it left, and returns what each wrote.
    pub async fn hops_one_at_a_time(&self, longest: Duration) -> anyhow::Result<Vec<Arrivals>> {
        self.on_own_topics("bench-raw-hops", move |chain, prefix, topics| chain.hops_on(&prefix, &topics, longest)).await
    }

    fn hops_on(&self, prefix: &str, topics: &[String], longest: Duration) -> anyhow::Result<Vec<Arrivals>> {
        self.publish(&topics[0])?;
        let expected = self.documents * self.records_per_document;
        let mut written = Vec::new();
        for hop in 0..HOPS {
            let counter = ArrivalCounter::start(&self.bootstrap_servers, &topics[hop + 1], expected, From::Start)?;
            let stop = Arc::new(AtomicBool::new(false));
            let thread = self.spawn_hop(prefix, topics, hop, &stop, &Arc::new(AtomicUsize::new(0)));
            let deadline = Instant::now() + longest;
            while !counter.is_done() && !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::SeqCst);
            let arrivals = counter.finish();
            thread.join().map_err(|_| anyhow::anyhow!("a hop panicked"))??;
            anyhow::ensure!(arrivals.count() >= expected, "raw hop {hop} alone wrote {} of {expected} records within {longest:?}", arrivals.count());
            written.push(arrivals);
        }
        Ok(written)
    }

    /// Publishes the documents to `topic`, keyed by document, a window of sends in flight.
    fn publish(&self, topic: &str) -> anyhow::Result<()> {
        let producer: BaseProducer = self.config().set("linger.ms", "5").create()?;
        let payload = vec![b'd'; self.record_bytes * self.records_per_document];
        for n in 0..self.documents {
            send(&producer, BaseRecord::to(topic).key(&format!("doc-{n}")).payload(&payload))?;
        }
        producer.flush(TIMEOUT)?;
        Ok(())
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.config();
        config.set("group.id", group).set("auto.offset.reset", "earliest").set("enable.partition.eof", "false");
        if self.transactions.is_some() {
            config.set("isolation.level", "read_committed").set("enable.auto.commit", "false");
        }
        config
    }

    /// One hop: every record of `from` becomes `fan_out` records of `to`. Counts itself
    /// `ready` once it has partitions.
    fn hop(&self, group: &str, from: &str, to: &str, fan_out: usize, stop: &AtomicBool, ready: &AtomicUsize) -> anyhow::Result<()> {
        let consumer: BaseConsumer = self.consumer_config(group).create()?;
        consumer.subscribe(&[from])?;
        let mut producer_config = self.config();
        producer_config.set("linger.ms", "5");
        if self.transactions.is_some() {
            producer_config.set("transactional.id", format!("{group}-txn"));
        }
        let producer: BaseProducer = producer_config.create()?;
        let mut open: Option<(Instant, usize)> = None;
        if self.transactions.is_some() {
            producer.init_transactions(TIMEOUT)?;
        }
        let mut assigned = false;
        while !stop.load(Ordering::SeqCst) {
            if !assigned && consumer.assignment()?.count() > 0 {
                assigned = true;
                ready.fetch_add(1, Ordering::SeqCst);
            }
            if let (Some(settings), Some((began, inputs))) = (self.transactions, open) {
                if inputs >= settings.max_records || began.elapsed() >= settings.interval {
                    let offsets = consumer.position()?;
                    let metadata = consumer.group_metadata().ok_or_else(|| anyhow::anyhow!("no group metadata"))?;
                    producer.send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)?;
                    producer.commit_transaction(TIMEOUT)?;
                    open = None;
                }
            }
            producer.poll(Duration::ZERO);
            let Some(message) = consumer.poll(Duration::from_millis(5)) else { continue };
            let message = message?;
            if self.transactions.is_some() && open.is_none() {
                producer.begin_transaction()?;
                open = Some((Instant::now(), 0));
            }
            let payload = message.payload().unwrap_or_default();
            let part = payload.len() / fan_out;
            for n in 0..fan_out {
                let key = format!("{}-{n}", String::from_utf8_lossy(message.key().unwrap_or_default()));
                send(&producer, BaseRecord::to(to).key(&key).payload(&payload[n * part..(n + 1) * part]))?;
            }
            if let Some((_, inputs)) = &mut open {
                *inputs += 1;
            }
        }
        if open.is_some() {
            producer.abort_transaction(TIMEOUT)?;
        }
        producer.flush(TIMEOUT)?;
        Ok(())
    }
}

/// Sends `record`, waiting while the producer's queue is full.
pub fn send(producer: &BaseProducer, mut record: BaseRecord<'_, String, [u8]>) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Where an [`ArrivalCounter`] starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    Start,
    /// These offsets (partition → offset; partitions not named from their start).
    Offsets(std::collections::HashMap<i32, i64>),
}

/// What an [`ArrivalCounter`] saw: when each record came.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    pub times: Vec<Instant>,
}

impl Arrivals {
    pub fn count(&self) -> usize {
        self.times.len()
    }

    pub fn first(&self) -> Option<Instant> {
        self.times.first().copied()
    }

    /// The sustained rate of the arrivals ([`sustained_rate`]).
    pub fn per_second(&self) -> f64 {
        let Some(first) = self.first() else { return 0.0 };
        sustained_rate(self.times.iter().map(|t| (*t - first).as_secs_f64()).collect())
    }
}

/// Counts the records arriving on a topic, read `read_committed`, in a thread of its own,
/// until `expected` have come or it is finished.
pub struct ArrivalCounter {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Arrivals>,
}

impl ArrivalCounter {
    pub fn start(bootstrap_servers: &str, topic: &str, expected: usize, from: From) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .set("broker.address.family", "v4")
            .set("group.id", format!("bench-counter-{:08x}", rand::random::<u32>()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        anyhow::ensure!(partitions > 0, "topic {topic} has no partitions");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            let offset = match &from {
                From::Offsets(offsets) if offsets.contains_key(&p) => rdkafka::Offset::Offset(offsets[&p]),
                _ => rdkafka::Offset::Beginning,
            };
            assignment.add_partition_offset(topic, p, offset)?;
        }
        consumer.assign(&assignment)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut arrivals = Arrivals { times: Vec::with_capacity(expected) };
            while !stop_flag.load(Ordering::SeqCst) && arrivals.count() < expected {
                if let Some(Ok(_)) = consumer.poll(Duration::from_millis(5)) {
                    arrivals.times.push(Instant::now());
                }
            }
            arrivals
        });
        Ok(ArrivalCounter { stop, thread })
    }

    /// Whether every expected record has come.
    pub fn is_done(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn finish(self) -> Arrivals {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}
