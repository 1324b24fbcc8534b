//! Where every block a dataset should have produced is (`quire verify`, `quire status`,
//! the demo's summary): read as a downstream consumer reads the topics, counted by
//! [`DatasetReport::count`], a pure function of what was read.
//!
//! Expected blocks are recomputed from the ingest topic with the claimer's own splitting,
//! so the count does not trust any stage's output (the chaos and hostile verifiers go
//! further and derive them from what they published).

use super::view::{latest_quarantine, latest_states, read_topics};
use crate::config::{KafkaArgs, TopicNames};
use crate::stages::claimer::blocks_of;
use crate::{Codec, Result};
use quire_core::latest::LatestStates;
use quire_core::records::{DatasetSubmission, QuarantineRecord, ValidatedResult, QUARANTINED};
use quire_core::BlockState;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Where every expected block of a dataset is.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DatasetReport {
    pub dataset: String,
    pub documents: usize,
    pub blocks_expected: usize,
    pub completed_once: usize,
    pub completed_more_than_once: usize,
    /// Blocks waiting in quarantine (not those replayed since).
    pub quarantined: usize,
    /// Blocks whose dataset was canceled before they completed.
    pub canceled: usize,
    /// Records of the dataset quarantined before they became blocks (unreadable, empty).
    pub documents_quarantined: usize,
    pub missing: usize,
    /// Latest audited state of each block, counted by state.
    pub states: BTreeMap<String, usize>,
    /// When each completed block completed, epoch ms (for the rate).
    #[serde(skip)]
    pub completed_at_ms: Vec<i64>,
}

/// What was read about one dataset, decoded: the input of [`DatasetReport::count`].
#[derive(Debug, Default)]
pub struct DatasetRecords {
    /// Distinct documents submitted (submission key, document id).
    pub documents: usize,
    pub expected: HashSet<String>,
    /// Every record on the completed topic keyed by an expected block, with its
    /// completion time if it decodes.
    pub completed: Vec<(String, Option<i64>)>,
    /// The quarantine's latest record per key.
    pub quarantine: Vec<QuarantineRecord>,
    /// The latest state of each expected block.
    pub latest: LatestStates,
}

impl DatasetReport {
    /// Sound: no block missing, none completed twice.
    pub fn is_sound(&self) -> bool {
        self.missing == 0 && self.completed_more_than_once == 0
    }

    /// Blocks that reached an end: completed, quarantined or canceled (a block both
    /// completed and quarantined counts once).
    pub fn done(&self) -> usize {
        self.blocks_expected - self.missing
    }

    /// Accounts for every expected block of `dataset`: completed (once or more), waiting
    /// in quarantine, canceled before it completed, or missing.
    pub fn count(dataset: &str, records: &DatasetRecords) -> DatasetReport {
        let expected = &records.expected;
        let mut completions: HashMap<&str, usize> = HashMap::new();
        for (block_id, _) in records.completed.iter().filter(|(id, _)| expected.contains(id)) {
            *completions.entry(block_id).or_default() += 1;
        }
        let mut quarantined = HashSet::new();
        let mut documents_quarantined = 0;
        for record in records.quarantine.iter().filter(|r| r.status == QUARANTINED) {
            match &record.block_id {
                Some(block_id) if expected.contains(block_id) => {
                    quarantined.insert(block_id.as_str());
                }
                None if record.dataset_id.as_deref() == Some(dataset) => documents_quarantined += 1,
                _ => {}
            }
        }
        let mut states = BTreeMap::new();
        let mut canceled = 0;
        for change in records.latest.changes().filter(|c| expected.contains(&c.block_id)) {
            *states.entry(change.to_state.to_string()).or_default() += 1;
            // A completed block counts as completed, whatever a later generation did.
            if change.to_state == BlockState::Canceled && !completions.contains_key(change.block_id.as_str()) {
                canceled += 1;
            }
        }
        let ended = |id: &str| {
            completions.contains_key(id) || quarantined.contains(id) || records.latest.state(id) == Some(BlockState::Canceled)
        };
        DatasetReport {
            dataset: dataset.to_owned(),
            documents: records.documents,
            blocks_expected: expected.len(),
            completed_once: completions.values().filter(|&&n| n == 1).count(),
            completed_more_than_once: completions.values().filter(|&&n| n > 1).count(),
            quarantined: quarantined.len(),
            canceled,
            documents_quarantined,
            missing: expected.iter().filter(|id| !ended(id)).count(),
            states,
            completed_at_ms: records.completed.iter().filter(|(id, _)| expected.contains(id)).filter_map(|(_, at)| *at).collect(),
        }
    }
}

/// Reads the topics and builds the report for one dataset.
pub async fn dataset_report(kafka: &KafkaArgs, dataset: &str, max_block_chars: usize) -> Result<DatasetReport> {
    let names = TopicNames::new(&kafka.topic_prefix);
    let codec = Codec::new(&kafka.schema_registry_url)?;
    let read = read_topics(kafka, &[names.ingest(), names.completed(), names.quarantine(), names.events()])?;
    let [ingest, completed, quarantine, events] = <[_; 4]>::try_from(read).expect("four topics read");

    let mut documents = HashSet::new();
    let mut expected = HashSet::new();
    for (_, value) in &ingest {
        // Unreadable ingest records are accounted for by the quarantine.
        let Ok(submission) = codec.decode::<DatasetSubmission>(value.as_deref()).await else { continue };
        if submission.dataset_id == dataset && documents.insert((submission.idempotency_key.clone(), submission.document_id.clone())) {
            expected.extend(blocks_of(&submission, max_block_chars, 0).into_iter().map(|b| b.block_id));
        }
    }
    let mut completions = Vec::new();
    for (key, value) in completed {
        if let Some(key) = key.filter(|k| expected.contains(k)) {
            let at = codec.decode::<ValidatedResult>(value.as_deref()).await.ok().map(|r| r.completed_at_ms);
            completions.push((key, at));
        }
    }
    let records = DatasetRecords {
        documents: documents.len(),
        latest: latest_states(&codec, &events, |id| expected.contains(id), |_| true).await,
        quarantine: latest_quarantine(&codec, &quarantine).await.into_values().collect(),
        completed: completions,
        expected,
    };
    Ok(DatasetReport::count(dataset, &records))
}

/// Waits up to `wait` for the dataset to have blocks and none missing, then reports.
pub async fn wait_for_dataset(kafka: &KafkaArgs, dataset: &str, max_block_chars: usize, wait: Duration) -> Result<DatasetReport> {
    let deadline = Instant::now() + wait;
    loop {
        let report = dataset_report(kafka, dataset, max_block_chars).await?;
        if (report.missing == 0 && report.blocks_expected > 0) || Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use quire_core::records::{StateChange, REPLAYED};
    use BlockState::*;

    pub(crate) fn change(block_id: &str, from: BlockState, to: BlockState) -> StateChange {
        StateChange {
            block_id: block_id.into(),
            dataset_id: "d".into(),
            from_state: from,
            to_state: to,
            stage: "test".into(),
            instance_id: "i".into(),
            reason: None,
            request_id: "r".into(),
            at_ms: 0,
        }
    }

    pub(crate) fn quarantined(key: &str, block_id: Option<&str>, status: &str) -> QuarantineRecord {
        QuarantineRecord {
            key: key.into(),
            dataset_id: Some("d".into()),
            block_id: block_id.map(Into::into),
            original_topic: "quire.blocks.queued".into(),
            original_partition: 0,
            original_offset: 0,
            error_class: "DATA".into(),
            exception_fqcn: String::new(),
            reason: "test".into(),
            failed_stage: "inference".into(),
            instance_id: "i".into(),
            quarantined_at_ms: 0,
            cause: String::new(),
            attempts: 1,
            first_failed_at_ms: 0,
            last_failed_at_ms: 0,
            trace_id: None,
            payload: None,
            status: status.into(),
            replayed_at_ms: None,
            replayed_by: None,
        }
    }

    fn records(expected: &[&str]) -> DatasetRecords {
        DatasetRecords { documents: 1, expected: expected.iter().map(|id| id.to_string()).collect(), ..DatasetRecords::default() }
    }

    #[test]
    fn every_expected_block_is_completed_quarantined_canceled_or_missing() {
        let mut read = records(&["a", "b", "c", "d", "e"]);
        read.completed = vec![("a".into(), Some(10)), ("b".into(), Some(11)), ("b".into(), None), ("other".into(), Some(12))];
        read.quarantine = vec![quarantined("c", Some("c"), QUARANTINED), quarantined("e", Some("e"), REPLAYED), quarantined("0/1/2", None, QUARANTINED)];
        read.latest = LatestStates::of([change("d", Error, Canceled), change("e", Error, Queued), change("a", Validating, Completed)]);
        let report = DatasetReport::count("d", &read);
        assert_eq!((report.completed_once, report.completed_more_than_once), (1, 1));
        assert_eq!((report.quarantined, report.canceled, report.documents_quarantined), (1, 1, 1));
        // e was replayed from quarantine and is queued again: not done yet.
        assert_eq!(report.missing, 1);
        assert_eq!(report.done(), 4);
        assert_eq!(report.completed_at_ms, [10, 11]);
        assert_eq!(report.states, BTreeMap::from([("CANCELED".into(), 1), ("COMPLETED".into(), 1), ("QUEUED".into(), 1)]));
        assert!(!report.is_sound());
    }

    #[test]
    fn a_completed_block_is_not_canceled_and_a_clean_dataset_is_sound() {
        let mut read = records(&["a"]);
        read.completed = vec![("a".into(), Some(1))];
        // Canceled by a later generation after it completed once.
        read.latest = LatestStates::of([change("a", Error, Canceled)]);
        let report = DatasetReport::count("d", &read);
        assert_eq!((report.canceled, report.missing), (0, 0));
        assert!(report.is_sound());
        assert!(!DatasetReport::count("d", &records(&["a"])).is_sound(), "a block nowhere is missing");
    }
}
