//! `quire dlq replay`'s rules: which quarantine records a filter selects, which of them
//! may go back, and the one transaction that sends one back.
//!
//! A selected block goes back only from ERROR (a block that completed since is skipped,
//! one in another state is `quire redrive`'s), re-queued as its next generation after
//! the newest copy of it anywhere, with its audit event and the quarantine record marked
//! `REPLAYED`. A record that never became a block goes back, byte for byte, to the topic
//! it came from. Even a block replayed twice reaches the output once (the validator).

use super::view::{latest_quarantine, latest_states, newest_copies, quarantined_block, read_all, read_topics};
use super::Operator;
use crate::config::{KafkaArgs, TopicNames};
use crate::io::reader::TopicReader;
use crate::record::OutputRecord;
use crate::{Codec, Error, Result};
use quire_core::latest::{LatestStates, NewestCopies};
use quire_core::records::{now_ms, QuarantineRecord, QUARANTINED};
use quire_core::{BlockState, ErrorClass};
use serde::Serialize;
use std::collections::HashSet;

/// Which quarantine records a command takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Filter {
    /// Only this dataset.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Only this error class (transient, resource, model, data, systemic, fatal).
    #[arg(long = "class")]
    pub error_class: Option<String>,
    /// Only failures in this stage (claimer, inference, validator).
    #[arg(long)]
    pub stage: Option<String>,
    /// Only failures at or after this time: epoch ms, or an age such as 30m, 2h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Only failures before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Include records already replayed.
    #[arg(long)]
    pub all: bool,
}

/// A filter that cannot be applied, named by what is wrong with it.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown error class {0:?}")]
    UnknownClass(String),
    #[error("{0:?} is neither epoch ms nor an age like 30m")]
    NotATime(String),
    #[error("{text:?}: unknown unit {unit:?} (use s, m, h or d)")]
    UnknownUnit { text: String, unit: String },
}

/// A time bound: epoch ms, or an age (`30s`, `30m`, `2h`, `7d`) before `now`.
pub fn parse_time(text: &str, now: i64) -> Result<i64, FilterError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = number.parse().map_err(|_| FilterError::NotATime(text.to_owned()))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(FilterError::UnknownUnit { text: text.to_owned(), unit: unit.to_owned() }),
    };
    Ok(now - n * unit_ms)
}

impl Filter {
    /// Checks the filter and returns a predicate over quarantine records.
    pub fn predicate(&self) -> Result<impl Fn(&QuarantineRecord) -> bool + '_, FilterError> {
        let now = now_ms();
        let class = match &self.error_class {
            Some(name) => Some(ErrorClass::parse(name).ok_or_else(|| FilterError::UnknownClass(name.clone()))?),
            None => None,
        };
        let since = self.since.as_deref().map(|t| parse_time(t, now)).transpose()?;
        let until = self.until.as_deref().map(|t| parse_time(t, now)).transpose()?;
        Ok(move |r: &QuarantineRecord| {
            (self.all || r.status == QUARANTINED)
                && self.dataset.as_ref().is_none_or(|d| r.dataset_id.as_ref() == Some(d))
                && class.is_none_or(|c| r.error_class == c.as_str())
                && self.stage.as_ref().is_none_or(|s| &r.failed_stage == s)
                && since.is_none_or(|t| r.last_failed_at_ms >= t)
                && until.is_none_or(|t| r.last_failed_at_ms < t)
        })
    }

    /// How the filter reads in the audit trail.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("dataset", &self.dataset),
            ("class", &self.error_class),
            ("stage", &self.stage),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
        .collect();
        if parts.is_empty() {
            "everything".into()
        } else {
            parts.join(" ")
        }
    }
}

/// The quarantine records `filter` selects (the latest per key), oldest failure first.
pub async fn select(kafka: &KafkaArgs, codec: &Codec, filter: &Filter) -> Result<Vec<QuarantineRecord>> {
    let keep = filter.predicate().map_err(|e| Error::Other(e.to_string()))?;
    let names = TopicNames::new(&kafka.topic_prefix);
    let records = tokio::task::block_in_place(|| read_all(&TopicReader::new(kafka)?, &names.quarantine()))?;
    let mut selected: Vec<_> = latest_quarantine(codec, &records).await.into_values().filter(|r| keep(r)).collect();
    selected.sort_by_key(|r| (r.last_failed_at_ms, r.key.clone()));
    Ok(selected)
}

/// Why a selected record is not sent back.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("completed since")]
    CompletedSince,
    #[error("block {block_id} is {state}, not ERROR: `quire redrive` moves blocks in other states")]
    NotInError { block_id: String, state: BlockState },
}

/// Why a record could not be sent back.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("its payload is not a block")]
    NotABlock,
    #[error("the quarantine record keeps no payload")]
    NoPayload,
    #[error(transparent)]
    Kafka(#[from] Error),
}

/// What a replay did with the records selected.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct ReplaySummary {
    pub selected: usize,
    pub replayed: usize,
    pub already_completed: usize,
    pub failed: usize,
}

/// What the topics say about the selected records' blocks, read once before replaying.
#[derive(Debug, Default)]
pub struct Replay {
    completed: HashSet<String>,
    states: LatestStates,
    copies: NewestCopies,
    /// The filter, as the audit trail says it.
    filter: String,
}

impl Replay {
    /// Reads what replaying `selected` needs; `with_copies: false` (a dry run) skips the
    /// blocks' copies, which only the records written need.
    pub async fn read(kafka: &KafkaArgs, codec: &Codec, selected: &[QuarantineRecord], filter: &Filter, with_copies: bool) -> Result<Self> {
        let names = TopicNames::new(&kafka.topic_prefix);
        let read = read_topics(kafka, &[names.completed(), names.events()])?;
        let [completed, events] = <[_; 2]>::try_from(read).expect("two topics read");
        let wanted: HashSet<&str> = selected.iter().filter_map(|r| r.block_id.as_deref()).collect();
        Ok(Replay {
            completed: completed.into_iter().filter_map(|(key, _)| key).collect(),
            states: latest_states(codec, &events, |id| wanted.contains(id), |_| true).await,
            copies: if with_copies { newest_copies(kafka, codec, &wanted).await? } else { NewestCopies::default() },
            filter: filter.describe(),
        })
    }

    /// Whether `record` may go back: a block only from ERROR (a block never audited is
    /// taken as ERROR: its failure is what quarantined it) and not completed since.
    pub fn check(&self, record: &QuarantineRecord) -> Result<(), Refusal> {
        let Some(block_id) = &record.block_id else { return Ok(()) };
        if self.completed.contains(block_id) {
            return Err(Refusal::CompletedSince);
        }
        match self.states.state(block_id).unwrap_or(BlockState::Error) {
            BlockState::Error => Ok(()),
            state => Err(Refusal::NotInError { block_id: block_id.clone(), state }),
        }
    }

    /// Sends `record` back in one transaction of `operator`'s, if [`Replay::check`] allows.
    pub async fn send_back(&self, operator: &Operator, record: &QuarantineRecord) -> Result<(), ReplayError> {
        self.check(record)?;
        let codec = operator.codec();
        let by = format!("{} (filter: {})", operator.who, self.filter);
        let mut records: Vec<OutputRecord> = match &record.block_id {
            Some(id) => {
                let block = match self.copies.get(id) {
                    Some(copy) => copy.clone(),
                    None => quarantined_block(codec, record).await.ok_or(ReplayError::NotABlock)?,
                };
                operator.requeue(&block, BlockState::Error, &format!("replayed from quarantine by {by}"), record.trace_id.as_deref()).await?
            }
            None => {
                let payload = record.payload.clone().ok_or(ReplayError::NoPayload)?;
                let topic = quire_core::retry::base_topic(&record.original_topic).to_owned();
                vec![OutputRecord { topic, key: record.key.clone(), payload, headers: Vec::new(), partition: None }]
            }
        };
        records.push(operator.replayed(record, by).await?);
        tokio::task::block_in_place(|| operator.commit(&records))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_core::records::StateChange;

    #[test]
    fn times_are_epoch_ms_or_ages() {
        assert_eq!(parse_time("1700000000000", 0).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("2h", 10_000_000).unwrap(), 10_000_000 - 7_200_000);
        assert_eq!(parse_time("weeks", 0).unwrap_err(), FilterError::NotATime("weeks".into()));
        assert!(parse_time("2 weeks", 0).unwrap_err().to_string().contains("2 weeks"));
        assert!(parse_time("3y", 0).unwrap_err().to_string().contains("unknown unit"));
    }

    #[test]
    fn filters_describe_themselves_and_check_the_class() {
        let filter = Filter { dataset: Some("d1".into()), error_class: Some("transient".into()), ..Filter::default() };
        assert_eq!(filter.describe(), "dataset=d1 class=transient");
        assert_eq!(Filter::default().describe(), "everything");
        let bad = Filter { error_class: Some("oops".into()), ..Filter::default() };
        assert_eq!(bad.predicate().err(), Some(FilterError::UnknownClass("oops".into())));
    }

    fn record(block_id: Option<&str>) -> QuarantineRecord {
        QuarantineRecord { block_id: block_id.map(Into::into), ..super::super::report::tests::quarantined("k", None, QUARANTINED) }
    }

    fn change(block_id: &str, to: BlockState) -> StateChange {
        super::super::report::tests::change(block_id, BlockState::Processing, to)
    }

    #[test]
    fn only_blocks_in_error_and_not_completed_go_back() {
        let replay = Replay {
            completed: HashSet::from(["done".to_owned()]),
            states: LatestStates::of([change("failed", BlockState::Error), change("moving", BlockState::Validating)]),
            ..Replay::default()
        };
        assert_eq!(replay.check(&record(Some("failed"))), Ok(()));
        assert_eq!(replay.check(&record(Some("never-audited"))), Ok(()));
        assert_eq!(replay.check(&record(None)), Ok(()), "a record that never became a block");
        assert_eq!(replay.check(&record(Some("done"))), Err(Refusal::CompletedSince));
        assert_eq!(
            replay.check(&record(Some("moving"))),
            Err(Refusal::NotInError { block_id: "moving".into(), state: BlockState::Validating })
        );
    }
}
