//! The keys a stage has already written, rebuilt from the stage's own output.
//!
//! Every record of an effect carries the effect's dedup key in its `quire-dedup-key`
//! header (a block id, a block id with its generation and attempt, or topic/partition/
//! offset for a record that could not be read), and at least one is on one of the
//! stage's output topics. Reading those topics back the way downstream consumers
//! read them (`read_committed`) therefore tells exactly which effects downstream can
//! see: on a broker that leaks records of aborted transactions, a leaked write counts as
//! done and is not written again; on a broker that hides them, it is redone. The index
//! is caught up at start, on every partition assignment and after every abort.

use crate::reader::TopicReader;
use crate::{config::KafkaArgs, Result};
use rdkafka::message::Headers as _;
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The dedup keys present on a set of topics.
pub struct DedupIndex {
    args: KafkaArgs,
    topics: Vec<String>,
    seen: HashSet<String>,
    next_offsets: HashMap<(String, i32), i64>,
}

impl DedupIndex {
    pub fn new(args: &KafkaArgs, topics: Vec<String>) -> Self {
        DedupIndex { args: args.clone(), topics, seen: HashSet::new(), next_offsets: HashMap::new() }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.seen.contains(key)
    }

    /// Records a key this process wrote and saw committed.
    pub fn insert(&mut self, key: String) {
        self.seen.insert(key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Reads every record written to the topics since the last catch-up, up to the end
    /// of each partition as a `read_committed` consumer sees it. A fresh reader each
    /// time, so no end-of-partition event from before the new writes can be mistaken
    /// for the end. Returns how many records were read.
    pub fn catch_up(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let reader = TopicReader::new(&self.args)?;
        let mut read = 0;
        for topic in &self.topics {
            // Where this topic was left, copied so the callback below can move it on.
            let starts: HashMap<i32, i64> =
                self.next_offsets.iter().filter(|((t, _), _)| t == topic).map(|((_, p), next)| (*p, *next)).collect();
            let next_offsets = &mut self.next_offsets;
            let seen = &mut self.seen;
            read += reader.read_to_end(topic, |p| starts.get(&p).copied(), deadline.saturating_duration_since(Instant::now()), |message| {
                if let Some(key) = dedup_key(message) {
                    seen.insert(key);
                }
                next_offsets.insert((topic.clone(), message.partition()), message.offset() + 1);
            })?;
        }
        Ok(read)
    }
}

/// A record's dedup key: its `quire-dedup-key` header, else its Kafka key.
fn dedup_key<M: Message>(message: &M) -> Option<String> {
    let header = message.headers().and_then(|headers| {
        headers.iter().find(|h| h.key == crate::headers::DEDUP_KEY).and_then(|h| h.value.map(<[u8]>::to_vec))
    });
    header.or_else(|| message.key().map(<[u8]>::to_vec)).map(|k| String::from_utf8_lossy(&k).into_owned())
}
