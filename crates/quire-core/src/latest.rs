//! The two questions every reader of Quire's topics asks, answered in one place: which
//! state a block is in now (its audit events folded in the order written) and which of
//! its copies is the newest (on the queued, retry and results topics). The CLI's
//! reports and actions and the block watchdog ask both.

use crate::records::{Block, StateChange};
use crate::BlockState;
use serde::Serialize;
use std::collections::HashMap;

/// Whether an event applies to a block last known in `seen`: COMPLETED and CANCELED are
/// final, so a stale generation's later events do not undo them.
pub fn applies_after(seen: Option<BlockState>) -> bool {
    !seen.is_some_and(BlockState::is_terminal)
}

/// Each block's latest audit event, folded from the audit topic in the order written
/// (one block's events share a partition, so that order is the order they happened).
#[derive(Debug, Clone, Default)]
pub struct LatestStates {
    latest: HashMap<String, StateChange>,
}

impl LatestStates {
    /// Folds `changes`, in the order written.
    pub fn of(changes: impl IntoIterator<Item = StateChange>) -> Self {
        let mut latest = LatestStates::default();
        changes.into_iter().for_each(|change| latest.apply(change));
        latest
    }

    /// Takes one more event; ignored if its block already ended.
    pub fn apply(&mut self, change: StateChange) {
        if applies_after(self.state(&change.block_id)) {
            self.latest.insert(change.block_id.clone(), change);
        }
    }

    pub fn change(&self, block_id: &str) -> Option<&StateChange> {
        self.latest.get(block_id)
    }

    pub fn state(&self, block_id: &str) -> Option<BlockState> {
        self.latest.get(block_id).map(|change| change.to_state)
    }

    pub fn changes(&self) -> impl Iterator<Item = &StateChange> {
        self.latest.values()
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// How recent a copy of a block is: a later generation first, then a later attempt, then
/// the one updated last (comparable across topics, unlike offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct CopyRank {
    pub generation: i32,
    pub attempt: i32,
    pub updated_at_ms: i64,
}

impl Block {
    /// How recent this copy of the block is.
    pub fn rank(&self) -> CopyRank {
        CopyRank { generation: self.generation, attempt: self.attempt, updated_at_ms: self.updated_at_ms }
    }
}

/// Whether a copy ranked `offered` replaces one ranked `seen`: it is as new or newer
/// (of two equal copies, the one read last).
pub fn replaces(offered: CopyRank, seen: Option<CopyRank>) -> bool {
    seen.is_none_or(|seen| offered >= seen)
}

/// The newest copy of each block among those offered, in any order.
#[derive(Debug, Clone, Default)]
pub struct NewestCopies {
    newest: HashMap<String, Block>,
}

impl NewestCopies {
    pub fn offer(&mut self, block: Block) {
        if replaces(block.rank(), self.newest.get(&block.block_id).map(Block::rank)) {
            self.newest.insert(block.block_id.clone(), block);
        }
    }

    pub fn get(&self, block_id: &str) -> Option<&Block> {
        self.newest.get(block_id)
    }

    pub fn len(&self) -> usize {
        self.newest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BlockState::*;

    fn change(block_id: &str, from: BlockState, to: BlockState) -> StateChange {
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

    #[test]
    fn the_last_event_written_is_the_state() {
        let latest = LatestStates::of([change("a", Pending, Claimed), change("b", Pending, Claimed), change("a", Claimed, Queued)]);
        assert_eq!(latest.state("a"), Some(Queued));
        assert_eq!(latest.state("b"), Some(Claimed));
        assert_eq!(latest.state("c"), None);
        assert_eq!(latest.len(), 2);
    }

    #[test]
    fn an_ended_block_stays_ended() {
        for end in [Completed, Canceled] {
            // A stale generation's events, read after the block ended.
            let latest = LatestStates::of([change("a", Validating, end), change("a", Queued, Processing), change("a", Processing, Error)]);
            assert_eq!(latest.state("a"), Some(end));
        }
        // ERROR is not an end: a replay moves the block on.
        assert_eq!(LatestStates::of([change("a", Processing, Error), change("a", Error, Queued)]).state("a"), Some(Queued));
    }

    fn copy(generation: i32, attempt: i32, updated_at_ms: i64) -> Block {
        Block { generation, attempt, updated_at_ms, ..Block::fixture("a", "text", Queued) }
    }

    #[test]
    fn the_newest_copy_is_the_latest_generation_then_attempt_then_update() {
        let copies = [copy(0, 3, 50), copy(1, 0, 10), copy(1, 1, 5), copy(1, 1, 7), copy(0, 0, 99)];
        // Whatever order they are read in.
        for rotation in 0..copies.len() {
            let mut newest = NewestCopies::default();
            copies.iter().cycle().skip(rotation).take(copies.len()).for_each(|c| newest.offer(c.clone()));
            assert_eq!(newest.get("a").map(Block::rank), Some(CopyRank { generation: 1, attempt: 1, updated_at_ms: 7 }));
        }
        assert!(replaces(CopyRank::default(), Some(CopyRank::default())), "of equal copies the one read last");
        assert!(replaces(CopyRank::default(), None));
    }
}
