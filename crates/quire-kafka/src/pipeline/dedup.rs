//! The keys a stage has already written, rebuilt from the stage's own output.
//!
//! Every record of an effect carries the effect's dedup key in its `quire-dedup-key`
//! header (a block id, a block id with its generation and attempt, or topic/partition/
//! offset for a record that could not be read), and at least one is on one of the
//! stage's output topics, or, for an effect that is only audit records (a block
//! canceled where it stood), on the audit topic marked with the stage's group
//! (`quire-effect-owner`). Reading those topics back the way downstream consumers
//! read them (`read_committed`) therefore tells exactly which effects downstream can
//! see: on a broker that leaks records of aborted transactions, a leaked write counts as
//! done and is not written again; on a broker that hides them, it is redone. The index
//! is caught up at start, on every partition assignment and after every abort.
//!
//! Those topics are also other stages' inputs, where anyone may write anything, so a
//! record counts only if this stage could have written it (`effect_key`): a dead letter
//! must carry Spring's DLT headers naming this stage's group, an audit record must name
//! it as its effect's owner, any other record must be in the wire format, and a key
//! naming a position must also be the record's Kafka key, as it is on every record
//! Quire files under a position. Garbage carrying a copied or
//! forged `quire-dedup-key` therefore never makes a stage skip a real effect. (A writer
//! forging all of it on purpose is kept out by ACLs on the topics, not by this index.)

use crate::record::headers;
use crate::record::Input;
use crate::io::reader::TopicReader;
use crate::config::{KafkaArgs, TopicNames};
use crate::Result;
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The dedup keys present on a set of topics.
pub struct DedupIndex {
    args: KafkaArgs,
    group: String,
    topics: Vec<String>,
    audit_topic: String,
    seen: HashSet<String>,
    next_offsets: HashMap<(String, i32), i64>,
}

impl DedupIndex {
    /// The index of the stage whose consumer group is `group`, over its output `topics`
    /// and the `audit_topic` every stage writes its transitions to.
    pub fn new(args: &KafkaArgs, group: &str, mut topics: Vec<String>, audit_topic: String) -> Self {
        topics.push(audit_topic.clone());
        DedupIndex { args: args.clone(), group: group.to_owned(), topics, audit_topic, seen: HashSet::new(), next_offsets: HashMap::new() }
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
            let group = &self.group;
            let audit = *topic == self.audit_topic;
            read += reader.read_to_end(topic, |p| starts.get(&p).copied(), deadline.saturating_duration_since(Instant::now()), |message| {
                let key = if audit { audit_effect_key(message, group) } else { effect_key(&Input::from_message(message), group) };
                if let Some(key) = key {
                    seen.insert(key);
                }
                next_offsets.insert((topic.clone(), message.partition()), message.offset() + 1);
            })?;
        }
        Ok(read)
    }
}

/// The dedup key of `record` if it is an effect the stage of `group` could have written:
/// its `quire-dedup-key` header (else its Kafka key), under the rules in the module doc.
fn effect_key(record: &Input, group: &str) -> Option<String> {
    let kafka_key = record.key_str();
    let key = headers::text_header(&record.headers, headers::DEDUP_KEY).or_else(|| kafka_key.clone())?;
    let position = parse_position(&key);
    if TopicNames::is_dead_letter(&record.topic) {
        let (origin, _) = headers::read_dead_letter(&record.headers).ok()?;
        if origin.consumer_group != group {
            return None;
        }
        if let Some((topic, partition, offset)) = position {
            if (topic, partition, offset) != (origin.topic.as_str(), origin.partition, origin.offset) {
                return None;
            }
        }
    } else if !record.payload.as_deref().is_some_and(crate::io::codec::is_wire_format) {
        return None;
    }
    if position.is_some() && kafka_key.as_deref() != Some(key.as_str()) {
        return None;
    }
    Some(key)
}

/// The dedup key of an audit record that alone makes up an effect of `group`'s stage.
/// Read from the headers first: most audit records belong to no such effect.
fn audit_effect_key(message: &BorrowedMessage<'_>, group: &str) -> Option<String> {
    let header = |name: &str| message.headers()?.iter().find(|h| h.key == name).and_then(|h| h.value);
    if header(headers::EFFECT_OWNER)? != group.as_bytes() || !message.payload().is_some_and(crate::io::codec::is_wire_format) {
        return None;
    }
    String::from_utf8(header(headers::DEDUP_KEY)?.to_vec()).ok()
}

/// `topic/partition/offset`, the key of an effect filed under a record's position.
fn parse_position(key: &str) -> Option<(&str, i32, i64)> {
    let mut parts = key.rsplitn(3, '/');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    Some((parts.next().filter(|t| !t.is_empty())?, partition, offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::letters::DeadLetter;
    use crate::record::headers::DltOrigin;
    use quire_core::{ErrorClass, Failure};

    const GROUP: &str = "q-claimer";

    fn record(topic: &str, key: &str, payload: &[u8], headers: crate::record::headers::Headers) -> Input {
        Input {
            topic: topic.into(),
            partition: 0,
            offset: 9,
            key: Some(key.as_bytes().to_vec()),
            payload: Some(payload.to_vec()),
            headers,
            timestamp_ms: 0,
            timestamp_type: "CreateTime",
        }
    }

    fn dead_letter_of(position: (&str, i32, i64), group: &str, dedup_key: &str) -> crate::record::headers::Headers {
        let origin = DltOrigin { topic: position.0.into(), partition: position.1, offset: position.2, timestamp_ms: 1, timestamp_type: "CreateTime", consumer_group: group.into() };
        let failure = Failure::new(ErrorClass::Data, "malformed-record", "bad");
        DeadLetter::new(&origin, &failure, dedup_key, None).set(headers::DEDUP_KEY, dedup_key.as_bytes().to_vec()).build().headers
    }

    const AVRO: &[u8] = &[0, 0, 0, 0, 1, 2, 3];

    #[test]
    fn the_stages_own_records_count() {
        let block = record("q.blocks.queued", "blk-1", AVRO, vec![(headers::DEDUP_KEY.into(), b"blk-1".to_vec())]);
        assert_eq!(effect_key(&block, GROUP).as_deref(), Some("blk-1"));
        let dead = record("q.ingest-dlt", "q.ingest/2/7", b"garbage", dead_letter_of(("q.ingest", 2, 7), GROUP, "q.ingest/2/7"));
        assert_eq!(effect_key(&dead, GROUP).as_deref(), Some("q.ingest/2/7"));
        let without_header = record("q.blocks.queued", "blk-2", AVRO, Vec::new());
        assert_eq!(effect_key(&without_header, GROUP).as_deref(), Some("blk-2"));
    }

    #[test]
    fn garbage_with_a_forged_dedup_key_does_not_count() {
        let forged = vec![(headers::DEDUP_KEY.into(), b"q.ingest/0/0".to_vec())];
        // On an output topic: not in the wire format, and the key is not the position.
        assert_eq!(effect_key(&record("q.blocks.queued", "hostile-1", b"\x07junk", forged.clone()), GROUP), None);
        assert_eq!(effect_key(&record("q.blocks.queued", "hostile-1", AVRO, forged.clone()), GROUP), None);
        // On a dead-letter topic: without Spring's headers.
        assert_eq!(effect_key(&record("q.ingest-dlt", "q.ingest/0/0", b"junk", forged), GROUP), None);
    }

    #[test]
    fn a_dead_letter_counts_only_for_its_group_and_its_position() {
        let other_group = record("q.ingest-dlt", "q.ingest/0/0", b"x", dead_letter_of(("q.ingest", 0, 0), "q-inference", "q.ingest/0/0"));
        assert_eq!(effect_key(&other_group, GROUP), None);
        let elsewhere = record("q.ingest-dlt", "q.ingest/0/0", b"x", dead_letter_of(("q.ingest", 1, 5), GROUP, "q.ingest/0/0"));
        assert_eq!(effect_key(&elsewhere, GROUP), None);
        let block_keyed = record("q.ingest-dlt", "blk-3", b"x", dead_letter_of(("q.ingest", 1, 5), GROUP, "blk-3"));
        assert_eq!(effect_key(&block_keyed, GROUP).as_deref(), Some("blk-3"));
    }

    #[test]
    fn positions_parse_with_dots_and_slashes_in_the_topic() {
        assert_eq!(parse_position("a.b/c/3/42"), Some(("a.b/c", 3, 42)));
        assert_eq!(parse_position("blk-1#g0@retry1"), None);
        assert_eq!(parse_position("/1/2"), None);
    }
}
