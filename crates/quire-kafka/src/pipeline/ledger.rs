//! A stage instance's ledger (see `quire_core::ledger`): the entry each input leaves on
//! the stage's ledger topic, keyed by what the stage read, on the partition the input
//! came from, held with the input's effects so that it commits in their transaction (or,
//! in idempotent mode, is flushed after them, before the offsets); and [`Ledger`], what
//! the instance knows of the partitions it holds, read from that topic into its local
//! store before it processes anything.

use super::Effect;
use crate::config::KafkaArgs;
use crate::io::ledger_store::LedgerStore;
use crate::io::reader::TopicReader;
use crate::record::{Input, OutputRecord};
use crate::telemetry::{events, EffectEvent};
use crate::{Codec, Error, Result};
use quire_core::ledger::{LedgerEntry, LedgerKey};
use quire_core::records::now_ms;
use quire_core::StageName;
use rdkafka::Message;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Entries applied to the local store per commit while reading the ledger.
const READ_CHUNK: usize = 2_000;

/// Own entries committed since the last read after which the ledger is read again, to
/// move the checkpoints on: a restart reads at most about this many per partition set.
const CHECKPOINT_EVERY: usize = 20_000;

/// What one stage instance knows of its ledger: the entries of the ledger partitions it
/// holds (its local store), and those of the batch not yet committed.
pub struct Ledger {
    store: LedgerStore,
    topic: String,
    args: KafkaArgs,
    codec: Codec,
    /// The open batch's entries, by ledger partition and key.
    pending: HashMap<(i32, String), LedgerEntry>,
    /// Entries committed by this instance since the ledger was last read.
    own_since_read: usize,
}

impl Ledger {
    /// Opens this instance's local copy of `stage`'s ledger (`KafkaArgs::state_dir`), made
    /// a copy of this cluster's ledger topic.
    pub fn open(args: &KafkaArgs, stage: StageName, topic: String, codec: Codec) -> Result<Self> {
        let store = LedgerStore::open_waiting(&args.ledger_store_path(stage), Duration::from_millis(args.transaction_timeout_ms))?;
        let cluster = TopicReader::new(args)?.cluster_id().unwrap_or_default();
        if store.copy_of(&format!("{cluster}/{topic}"))? {
            tracing::warn!(stage = stage.as_str(), cluster, topic, "local ledger copy was of another cluster or topic; emptied");
        }
        Ok(Self::with_store(store, topic, args, codec))
    }

    /// The ledger of `topic` kept in `store`.
    pub fn with_store(store: LedgerStore, topic: String, args: &KafkaArgs, codec: Codec) -> Self {
        Ledger { store, topic, args: args.clone(), codec, pending: HashMap::new(), own_since_read: 0 }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The entry of the input known as `key` that came from partition `partition`.
    pub fn lookup(&self, partition: i32, key: &str) -> Result<Option<LedgerEntry>> {
        if let Some(entry) = self.pending.get(&(partition, key.to_owned())) {
            return Ok(Some(entry.clone()));
        }
        Ok(self.store.get(partition, key)?)
    }

    /// Holds `entry` with the open batch.
    pub fn hold(&mut self, entry: LedgerEntry) {
        self.pending.insert((entry.input_partition, entry.key.clone()), entry);
    }

    /// The open batch committed: its entries go to the local store.
    pub fn committed(&mut self) -> Result<()> {
        let mut by_partition: HashMap<i32, Vec<LedgerEntry>> = HashMap::new();
        for ((partition, _), entry) in self.pending.drain() {
            by_partition.entry(partition).or_default().push(entry);
        }
        for (partition, entries) in by_partition {
            self.own_since_read += entries.len();
            self.store.put(partition, &entries)?;
        }
        Ok(())
    }

    /// Whether enough was committed since the ledger was last read that reading it again
    /// (this instance's own entries, mostly) should move the checkpoints on.
    pub fn checkpoint_due(&self) -> bool {
        self.own_since_read >= CHECKPOINT_EVERY
    }

    /// The open batch was abandoned: its entries are forgotten (reading the ledger
    /// again finds whatever of them the broker kept).
    pub fn aborted(&mut self) {
        self.pending.clear();
    }

    /// Reads ledger partitions `partitions` from their checkpoints to their end into the
    /// local store, once each has settled: whatever transaction was open on it when
    /// looked at has committed or aborted, so the end read `read_committed` is at least
    /// the log end seen then. A partition never read here is read from its beginning.
    /// Settling must happen within `timeout`; the reading after may take as
    /// long as the history needs, but never `timeout` without a record. Returns how many
    /// entries were read.
    pub fn catch_up(&mut self, partitions: &BTreeSet<i32>, runtime: &tokio::runtime::Handle, timeout: Duration) -> Result<usize> {
        if partitions.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let committed = TopicReader::new(&self.args)?;
        let uncommitted = TopicReader::uncommitted(&self.args)?;
        let mut starts = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let log_end = uncommitted.end(&self.topic, partition)?;
            while committed.end(&self.topic, partition)? < log_end {
                if Instant::now() >= deadline {
                    return Err(Error::Other(format!(
                        "ledger {}/{partition} did not settle in {timeout:?}: a transaction stays open below its log end {log_end}",
                        self.topic
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // (A log end below the checkpoint says nothing: the local broker reports
            // ends a batch short. A ledger topic is never recreated; see README.)
            starts.push((partition, self.store.checkpoint(partition)?));
        }
        let (store, codec) = (&self.store, &self.codec);
        let mut chunks: HashMap<i32, (Vec<LedgerEntry>, i64)> = HashMap::new();
        let mut failed: Option<Error> = None;
        let mut entries = 0;
        // A long history is read whole: only a read that stops making progress fails.
        committed.read_partitions_to_end_while_progressing(&self.topic, &starts, timeout, |message| {
            if failed.is_some() {
                return;
            }
            let partition = message.partition();
            let chunk = chunks.entry(partition).or_insert_with(|| (Vec::new(), 0));
            chunk.1 = message.offset() + 1;
            match runtime.block_on(codec.decode::<LedgerEntry>(message.payload())) {
                Ok(entry) => chunk.0.push(entry),
                Err(e @ Error::Registry { .. }) => failed = Some(e),
                // Not an entry this stage wrote: nothing to know from it.
                Err(e) => tracing::warn!(topic = message.topic(), partition, offset = message.offset(), error = %e, "ledger record skipped"),
            }
            if chunk.0.len() >= READ_CHUNK {
                entries += chunk.0.len();
                if let Err(e) = store.apply(partition, &std::mem::take(&mut chunk.0), chunk.1) {
                    failed = Some(e.into());
                }
            }
        })?;
        if let Some(error) = failed {
            return Err(error);
        }
        for (partition, (chunk, next)) in chunks {
            entries += chunk.len();
            store.apply(partition, &chunk, next)?;
        }
        self.own_since_read = 0;
        events::emit(events::LedgerRead { topic: self.topic.clone(), partitions: partitions.len(), entries, took: started.elapsed() });
        Ok(entries)
    }
}

/// The entry of `input`, known to its stage as `key` (None: it could not be read),
/// whose processing made `effects`: their dedup keys, and the state the last of their
/// transitions reached.
pub fn entry(stage: &str, input: &Input, key: Option<LedgerKey>, effects: &[Effect]) -> LedgerEntry {
    let key = key.unwrap_or_else(|| LedgerKey::unread(input.position_key()));
    let mut seen = HashSet::with_capacity(effects.len());
    let output_keys: Vec<String> = effects.iter().filter(|e| seen.insert(e.dedup_key.as_str())).map(|e| e.dedup_key.clone()).collect();
    let state = effects.iter().flat_map(|e| &e.writes.events).rev().find_map(|event| match event {
        EffectEvent::Transition(transition) => Some(transition.to),
        _ => None,
    });
    LedgerEntry {
        stage: stage.to_owned(),
        key: key.key,
        generation: key.generation,
        fingerprint: key.fingerprint,
        state,
        output_keys,
        input_topic: input.topic.clone(),
        input_partition: input.partition,
        input_offset: input.offset,
        recorded_at_ms: now_ms(),
    }
}

/// `entry` as the record to write on `topic`: keyed by the entry's key (compaction keeps
/// the latest per input), on the partition its input came from.
pub async fn record(codec: &Codec, topic: &str, entry: &LedgerEntry) -> Result<OutputRecord> {
    Ok(OutputRecord {
        topic: topic.to_owned(),
        key: entry.key.clone(),
        payload: codec.encode(topic, entry).await?,
        headers: Vec::new(),
        partition: Some(entry.input_partition),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::letters::{audit, BlockRef};
    use crate::pipeline::Writes;
    use crate::testing::{self, block_on, decoded};
    use quire_core::records::Block;
    use quire_core::BlockState;

    fn moved(block: &Block, from: BlockState, to: BlockState) -> Writes {
        let audited = audit(&BlockRef::from(block), "inference", "0", from, to, None).unwrap();
        Writes { records: Vec::new(), events: vec![audited.event] }
    }

    #[test]
    fn an_entry_names_its_input_its_outputs_and_the_state_reached() {
        let block = Block::fixture("blk-1", "text", BlockState::Queued);
        let input = testing::input("quire.blocks.queued", 9, Some("blk-1"), None, Vec::new());
        let mut first = Effect::new("blk-1".into(), moved(&block, BlockState::Queued, BlockState::Processing));
        first.writes.append(moved(&block, BlockState::Processing, BlockState::Validating));
        let effects = [first, Effect::new("blk-1".into(), Writes::default())];
        let entry = entry("inference", &input, Some(LedgerKey::of_queued(&block)), &effects);
        assert_eq!(entry.key, "blk-1#g0@a0");
        assert_eq!((entry.state, entry.output_keys.as_slice()), (Some(BlockState::Validating), ["blk-1".to_owned()].as_slice()));
        assert_eq!((entry.input_topic.as_str(), entry.input_partition, entry.input_offset), ("quire.blocks.queued", 0, 9));
    }

    #[test]
    fn an_unread_input_is_ledgered_under_its_position_and_lands_on_its_partition() {
        let input = Input { partition: 2, ..testing::input("quire.ingest", 4, None, Some(b"junk".to_vec()), Vec::new()) };
        let entry = entry("claimer", &input, None, &[Effect::new(input.position_key(), Writes::default())]);
        assert_eq!((entry.key.as_str(), entry.state), ("quire.ingest/2/4", None));
        let record = block_on(record(testing::codec(), "quire.claimer.ledger", &entry)).unwrap();
        assert_eq!((record.partition, record.key.as_str()), (Some(2), "quire.ingest/2/4"));
        assert_eq!(decoded::<LedgerEntry>(&record), entry);
    }
}
