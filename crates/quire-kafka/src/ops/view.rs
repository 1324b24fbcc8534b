//! What the topics say, read whole as a downstream consumer does: each topic's records,
//! decoded and folded by `quire_core::latest` into the latest state of blocks, the
//! newest copy of each and the quarantine's latest record per key. Every operator
//! action and report starts here.

use crate::config::{KafkaArgs, TopicNames};
use crate::io::reader::TopicReader;
use crate::{Codec, Result};
use quire_core::latest::{LatestStates, NewestCopies};
use quire_core::records::{Block, InferenceResult, QuarantineRecord, StateChange};
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long a whole-topic read may take before it is an error.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A record as (key, value).
pub type KeyValue = (Option<String>, Option<Vec<u8>>);

/// Reads all of `topic`, as read_committed sees it, as (key, value) pairs.
pub fn read_all(reader: &TopicReader, topic: &str) -> Result<Vec<KeyValue>> {
    let mut records = Vec::new();
    reader.read_to_end(topic, |_| None, READ_TIMEOUT, |m| {
        records.push((m.key().map(|k| String::from_utf8_lossy(k).into_owned()), m.payload().map(<[u8]>::to_vec)));
    })?;
    Ok(records)
}

/// Reads each of `topics` whole (see [`read_all`]), in order, through one reader.
pub fn read_topics(kafka: &KafkaArgs, topics: &[String]) -> Result<Vec<Vec<KeyValue>>> {
    tokio::task::block_in_place(|| {
        let reader = TopicReader::new(kafka)?;
        topics.iter().map(|topic| read_all(&reader, topic)).collect()
    })
}

/// The latest state of each block whose id is `wanted`, from the audit topic's `events`
/// (in the order read), of the events `keep` accepts. Undecodable events are left out.
pub async fn latest_states(
    codec: &Codec,
    events: &[KeyValue],
    wanted: impl Fn(&str) -> bool,
    keep: impl Fn(&StateChange) -> bool,
) -> LatestStates {
    let mut latest = LatestStates::default();
    for (_, value) in events.iter().filter(|(key, _)| key.as_deref().is_some_and(&wanted)) {
        if let Ok(change) = codec.decode::<StateChange>(value.as_deref()).await {
            if keep(&change) {
                latest.apply(change);
            }
        }
    }
    latest
}

/// The latest quarantine record per key (the compacted topic's view).
pub async fn latest_quarantine(codec: &Codec, records: &[KeyValue]) -> HashMap<String, QuarantineRecord> {
    let mut latest = HashMap::new();
    for (_, value) in records {
        if let Ok(record) = codec.decode::<QuarantineRecord>(value.as_deref()).await {
            latest.insert(record.key.clone(), record);
        }
    }
    latest
}

/// The block a quarantined payload holds (a queued block or an inference result's).
pub async fn quarantined_block(codec: &Codec, record: &QuarantineRecord) -> Option<Block> {
    let payload = record.payload.as_deref()?;
    if let Ok(block) = codec.decode::<Block>(Some(payload)).await {
        return Some(block);
    }
    codec.decode::<InferenceResult>(Some(payload)).await.ok().map(|r| r.block)
}

/// The newest copy of each `wanted` block on the queued, retry and results topics. Its
/// generation is the block's latest.
pub async fn newest_copies(kafka: &KafkaArgs, codec: &Codec, wanted: &HashSet<&str>) -> Result<NewestCopies> {
    let names = TopicNames::new(&kafka.topic_prefix);
    let mut topics = names.queued_and_retries(&kafka.retry_schedule());
    topics.push(names.results());
    let mut read = read_topics(kafka, &topics)?;
    let results = read.pop().unwrap_or_default();
    let mine = |records: Vec<KeyValue>| records.into_iter().filter(|(k, _)| k.as_deref().is_some_and(|k| wanted.contains(k)));
    let mut newest = NewestCopies::default();
    for (_, value) in read.into_iter().flat_map(mine) {
        if let Ok(block) = codec.decode::<Block>(value.as_deref()).await {
            newest.offer(block);
        }
    }
    for (_, value) in mine(results) {
        if let Ok(result) = codec.decode::<InferenceResult>(value.as_deref()).await {
            newest.offer(result.block);
        }
    }
    Ok(newest)
}
