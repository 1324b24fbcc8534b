//! The ledger writer: every input a stage processes leaves one entry on the stage's
//! ledger topic (see `quire_core::ledger`), keyed by what the stage read, on the
//! partition the input came from, held with the input's effects so that it commits in
//! their transaction (or, in idempotent mode, is flushed with them before the offsets).

use super::Effect;
use crate::record::{Input, OutputRecord};
use crate::telemetry::EffectEvent;
use crate::{Codec, Result};
use quire_core::ledger::{LedgerEntry, LedgerKey};
use quire_core::records::now_ms;
use std::collections::HashSet;

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
