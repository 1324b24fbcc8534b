//! `quire redrive`'s rules: a stuck or failed block goes from its latest audited state
//! back to QUEUED through the state machine (a COMPLETED or CANCELED block is refused,
//! with the reason) as its next generation, after the newest copy of it anywhere, in
//! one transaction with its audit event and, if it waits in quarantine, its record
//! marked `REPLAYED`.

use super::view::{latest_quarantine, latest_states, newest_copies, read_topics};
use super::Operator;
use crate::Error;
use quire_core::latest::{LatestStates, NewestCopies};
use quire_core::records::{QuarantineRecord, QUARANTINED};
use quire_core::BlockState;
use std::collections::{HashMap, HashSet};

/// Why a block was not re-driven.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("no audited state: is {0} a block id?")]
    Unknown(String),
    #[error("it is QUEUED, maybe waiting in line (see `quire status`, and the watchdog's /watchdog/blocks); --force re-drives it anyway")]
    Queued,
    #[error("no copy of the block on the queued, retry or results topics")]
    NoCopy,
    #[error(transparent)]
    Kafka(#[from] Error),
}

/// A block re-driven: the state it left, and the generation it starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Redriven {
    pub from: BlockState,
    pub generation: i32,
}

/// What the topics say about the blocks to re-drive, read once.
#[derive(Debug, Default)]
pub struct Redrive {
    states: LatestStates,
    copies: NewestCopies,
    quarantined: HashMap<String, QuarantineRecord>,
    /// Re-drive QUEUED blocks too.
    pub force: bool,
}

impl Redrive {
    pub async fn read(operator: &Operator, blocks: &[String], force: bool) -> crate::Result<Self> {
        let names = operator.names();
        let wanted: HashSet<&str> = blocks.iter().map(String::as_str).collect();
        let codec = operator.codec();
        let read = read_topics(operator.args(), &[names.events(), names.quarantine()])?;
        let [events, quarantine] = <[_; 2]>::try_from(read).expect("two topics read");
        Ok(Redrive {
            states: latest_states(codec, &events, |id| wanted.contains(id), |_| true).await,
            copies: newest_copies(operator.args(), codec, &wanted).await?,
            quarantined: latest_quarantine(codec, &quarantine).await,
            force,
        })
    }

    /// The state `block_id` would be re-driven from: any the state machine lets go to
    /// QUEUED, QUEUED itself only when forced (the block may be waiting in line).
    pub fn check(&self, block_id: &str) -> Result<BlockState, RedriveError> {
        let state = self.states.state(block_id).ok_or_else(|| RedriveError::Unknown(block_id.to_owned()))?;
        if state == BlockState::Queued && !self.force {
            return Err(RedriveError::Queued);
        }
        Ok(state)
    }

    /// Re-drives `block_id` in one transaction of `operator`'s.
    pub async fn redrive(&self, operator: &Operator, block_id: &str) -> Result<Redriven, RedriveError> {
        let from = self.check(block_id)?;
        let block = self.copies.get(block_id).ok_or(RedriveError::NoCopy)?;
        let by = format!("re-driven by {}", operator.who);
        let quarantined = self.quarantined.get(block_id);
        let mut records = operator.requeue(block, from, &by, quarantined.and_then(|r| r.trace_id.as_deref())).await?;
        if let Some(record) = quarantined.filter(|r| r.status == QUARANTINED) {
            records.push(operator.replayed(record, by).await?);
        }
        tokio::task::block_in_place(|| operator.commit(&records))?;
        Ok(Redriven { from, generation: block.generation + 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::report::tests::change;
    use BlockState::*;

    #[test]
    fn a_queued_block_is_re_driven_only_when_forced() {
        let states = LatestStates::of([change("stuck", Queued, Processing), change("waiting", Claimed, Queued)]);
        let redrive = Redrive { states, ..Redrive::default() };
        assert_eq!(redrive.check("stuck").unwrap(), Processing);
        assert!(matches!(redrive.check("waiting"), Err(RedriveError::Queued)));
        assert!(matches!(redrive.check("nowhere"), Err(RedriveError::Unknown(id)) if id == "nowhere"));
        let forced = Redrive { force: true, ..redrive };
        assert_eq!(forced.check("waiting").unwrap(), Queued);
    }
}
