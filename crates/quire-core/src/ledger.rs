//! The ledger: what a stage has done with each input it read, the record its idempotency
//! rests on. A stage writes one entry per input to its own compacted ledger topic
//! (`quire.<stage>.ledger`), on the partition the input came from, in the transaction
//! that writes the input's effects, and an instance keeps the entries of the partitions
//! assigned to it. Because the entry is keyed by what was read, not by what came out, a
//! stage can tell before any work (an engine call, an encoding) that an input was
//! answered already, however long ago and whatever retention removed since.
//!
//! This module is the part that needs neither Kafka nor a disk: which entry an input
//! belongs to ([`LedgerKey`]), what an entry says ([`LedgerEntry`], `LedgerEntry.avsc`)
//! and what a stage does with an input given its entry ([`admit`]).

use crate::records::{Block, DatasetSubmission, InferenceResult};
use crate::{ids, BlockState, Failure};
use serde::{Deserialize, Serialize};

/// An input as its stage's ledger knows it: the entry it belongs to, the generation of
/// the work (a replay is a new generation) and a fingerprint of what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerKey {
    pub key: String,
    pub generation: i32,
    pub fingerprint: String,
}

impl LedgerKey {
    /// A submitted document, at the claimer: one entry per submission key and document.
    /// The fingerprint covers its text and the work asked for, so the same key sent
    /// again with other content is told apart from a resubmission.
    pub fn of_submission(submission: &DatasetSubmission) -> Self {
        let s = submission;
        LedgerKey {
            key: ids::fingerprint(&["document", &s.idempotency_key, &s.document_id]),
            generation: 0,
            fingerprint: ids::fingerprint(&[
                &ids::checksum(&s.text),
                &s.task,
                s.source_language.as_deref().unwrap_or(""),
                s.target_language.as_deref().unwrap_or(""),
            ]),
        }
    }

    /// A queued block, at inference: one entry per attempt of a generation, so a retry is
    /// work of its own while a copy of an attempt already answered is not.
    pub fn of_queued(block: &Block) -> Self {
        LedgerKey {
            key: format!("{}#g{}@a{}", block.block_id, block.generation, block.attempt),
            generation: block.generation,
            fingerprint: work_fingerprint(block),
        }
    }

    /// A result, at the validator: one entry per block, which completes once ever.
    pub fn of_result(result: &InferenceResult) -> Self {
        let block = &result.block;
        LedgerKey {
            key: block.block_id.clone(),
            generation: block.generation,
            fingerprint: ids::fingerprint(&[&work_fingerprint(block), &result.engine, &result.output_checksum]),
        }
    }

    /// A dead letter, at the quarantine: one entry per key its stage filed it under.
    pub fn of_dead_letter(dedup_key: &str, reason: &str) -> Self {
        LedgerKey { key: dedup_key.to_owned(), generation: 0, fingerprint: ids::fingerprint(&[reason]) }
    }

    /// An input its stage could not read: one entry per position (`topic/partition/offset`).
    pub fn unread(position_key: String) -> Self {
        LedgerKey { key: position_key, generation: 0, fingerprint: String::new() }
    }
}

/// What a block asks an engine to do: its text, task and languages.
fn work_fingerprint(block: &Block) -> String {
    ids::fingerprint(&[
        &block.checksum,
        &block.task,
        block.source_language.as_deref().unwrap_or(""),
        block.target_language.as_deref().unwrap_or(""),
    ])
}

/// What a stage did with one input (`LedgerEntry.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub stage: String,
    /// The input's [`LedgerKey::key`], also the record's Kafka key (compaction keeps the
    /// latest entry per input).
    pub key: String,
    pub generation: i32,
    pub fingerprint: String,
    /// Where the input's block went in this stage (for the claimer, its blocks); None
    /// for an input that names no block (unreadable, or a dead letter filed).
    pub state: Option<BlockState>,
    /// The dedup keys of the effects written for the input.
    pub output_keys: Vec<String>,
    pub input_topic: String,
    pub input_partition: i32,
    pub input_offset: i64,
    pub recorded_at_ms: i64,
}

/// What a stage does with an input, given its ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Not answered yet (or a replay of a later generation): do the work.
    New,
    /// Answered already with the same content, or its block is final: do nothing.
    Done,
    /// A copy of an earlier generation than the one ledgered: do nothing.
    Stale { ledgered_generation: i32 },
    /// The same input key with other content (an idempotency key reused for another
    /// document): quarantine it with the reason.
    Conflict(Failure),
}

/// Whether an input (`key`) is new work, given the entry its stage ledgered for it.
pub fn admit(entry: Option<&LedgerEntry>, key: &LedgerKey) -> Admission {
    let Some(entry) = entry else { return Admission::New };
    if entry.state.is_some_and(BlockState::is_terminal) {
        return Admission::Done;
    }
    match key.generation.cmp(&entry.generation) {
        std::cmp::Ordering::Less => Admission::Stale { ledgered_generation: entry.generation },
        std::cmp::Ordering::Greater => Admission::New,
        std::cmp::Ordering::Equal if key.fingerprint == entry.fingerprint => Admission::Done,
        std::cmp::Ordering::Equal => Admission::Conflict(Failure::data(
            "idempotency-key-reused",
            format!(
                "input {} was answered at offset {} of {}/{} with other content ({}, now {}): an idempotency key is reused for other work",
                entry.key, entry.input_offset, entry.input_topic, entry.input_partition, entry.fingerprint, key.fingerprint
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;

    fn submission(key: &str, document: &str, text: &str) -> DatasetSubmission {
        DatasetSubmission {
            dataset_id: "d".into(),
            document_id: document.into(),
            idempotency_key: key.into(),
            document_index: 0,
            document_count: 1,
            text: text.into(),
            source_language: None,
            target_language: Some("fr".into()),
            task: "translate".into(),
            request_id: "r".into(),
            submitted_at_ms: 1,
        }
    }

    fn entry_for(key: &LedgerKey, state: BlockState) -> LedgerEntry {
        LedgerEntry {
            stage: "inference".into(),
            key: key.key.clone(),
            generation: key.generation,
            fingerprint: key.fingerprint.clone(),
            state: Some(state),
            output_keys: vec!["out".into()],
            input_topic: "q.blocks.queued".into(),
            input_partition: 4,
            input_offset: 17,
            recorded_at_ms: 1,
        }
    }

    #[test]
    fn an_input_never_ledgered_is_new_work() {
        let key = LedgerKey::of_queued(&Block::fixture("blk-1", "text", BlockState::Queued));
        assert_eq!(admit(None, &key), Admission::New);
    }

    #[test]
    fn a_resubmitted_document_is_done_and_a_reused_key_with_other_text_conflicts() {
        let first = LedgerKey::of_submission(&submission("k", "doc-1", "hello"));
        let entry = entry_for(&first, BlockState::Queued);
        assert_eq!(admit(Some(&entry), &LedgerKey::of_submission(&submission("k", "doc-1", "hello"))), Admission::Done);
        let reused = LedgerKey::of_submission(&submission("k", "doc-1", "something else"));
        assert_eq!(reused.key, first.key, "the same entry");
        match admit(Some(&entry), &reused) {
            Admission::Conflict(failure) => {
                assert_eq!((failure.class, failure.cause), (ErrorClass::Data, "idempotency-key-reused"));
                assert!(failure.reason.contains("offset 17 of q.blocks.queued/4"), "{}", failure.reason);
            }
            other => panic!("{other:?}"),
        }
        let other_task = LedgerKey::of_submission(&DatasetSubmission { task: "language-id".into(), ..submission("k", "doc-1", "hello") });
        assert_ne!(other_task.fingerprint, first.fingerprint, "other work, other fingerprint");
        assert_ne!(LedgerKey::of_submission(&submission("k", "doc-2", "hello")).key, first.key, "another document, another entry");
    }

    #[test]
    fn each_attempt_of_a_block_is_an_entry_of_its_own() {
        let block = Block::fixture("blk-1", "text", BlockState::Queued);
        let first = LedgerKey::of_queued(&block);
        let retry = LedgerKey::of_queued(&Block { attempt: 1, ..block.clone() });
        assert_ne!(first.key, retry.key);
        assert_eq!(first.fingerprint, retry.fingerprint, "the same work");
        let entry = entry_for(&first, BlockState::Queued);
        assert_eq!(admit(Some(&entry), &first), Admission::Done, "a copy of an answered attempt calls no engine");
    }

    #[test]
    fn a_replay_is_new_work_and_a_copy_of_an_older_generation_is_stale() {
        let block = Block { generation: 1, ..Block::fixture("blk-1", "text", BlockState::Validating) };
        let entry = entry_for(&LedgerKey::of_queued(&block), BlockState::Error);
        let replay = LedgerKey { generation: 2, ..LedgerKey::of_queued(&block) };
        assert_eq!(admit(Some(&entry), &replay), Admission::New);
        let stale = LedgerKey { generation: 0, ..LedgerKey::of_queued(&block) };
        assert_eq!(admit(Some(&entry), &stale), Admission::Stale { ledgered_generation: 1 });
    }

    #[test]
    fn nothing_follows_a_final_state_whatever_the_generation() {
        let block = Block::fixture("blk-1", "text", BlockState::Validating);
        for last in [BlockState::Completed, BlockState::Canceled] {
            let entry = entry_for(&LedgerKey::of_queued(&block), last);
            let later = LedgerKey { generation: 5, ..LedgerKey::of_queued(&block) };
            assert_eq!(admit(Some(&entry), &later), Admission::Done, "{last}");
        }
    }

    #[test]
    fn a_result_is_one_entry_per_block_and_its_fingerprint_covers_the_answer() {
        let block = Block::fixture("blk-1", "text", BlockState::Validating);
        let result = InferenceResult {
            block: block.clone(),
            engine: "lingua".into(),
            label: "en".into(),
            confidence: 1.0,
            output_text: None,
            output_checksum: "sha256:a".into(),
            latency_ms: 1,
            inferred_at_ms: 1,
            alternatives: Vec::new(),
        };
        let key = LedgerKey::of_result(&result);
        assert_eq!(key.key, "blk-1");
        let again = LedgerKey::of_result(&InferenceResult { block: Block { generation: 1, ..block }, ..result.clone() });
        assert_eq!(again.key, key.key, "every generation of a block shares the validator's entry");
        assert_ne!(LedgerKey::of_result(&InferenceResult { output_checksum: "sha256:b".into(), ..result }).fingerprint, key.fingerprint);
    }
}
