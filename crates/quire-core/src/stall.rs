//! The block watchdog's judgement: which live blocks sit in one state past its TTL, and
//! what to do about each.
//!
//! A block's state comes from its audit events; where its work waits comes from the
//! latest copy of the block on the stage's input (the queued or a retry topic for QUEUED
//! and PROCESSING, the results topic for VALIDATING). A block past its TTL is only acted
//! on once the stage's consumer group has committed past that copy: the stage read it
//! and wrote nothing, so the hand-off was lost. Before that the block is waiting in line,
//! which is lag (the lag watchdog's business): re-driving it would only add load to a
//! stage that is already behind. A lost block is re-driven (a new generation on the
//! queue) a bounded number of times, then quarantined with reason `stalled`.
//!
//! Acting takes more than one look: the Kafka side acts only on blocks whose partitions
//! it has read to a settled point ([`BlockWatch::to_act`]), and only when two rounds in a
//! row reach the same verdict on the same copy. A block with no copy is only waited on
//! for one TTL more before it is quarantined. After acting, the block is not judged
//! again until its own event is read back or a TTL has passed (the write may have failed).
//!
//! Everything is rebuilt from the topics, so a restarted watchdog judges alike: re-drives
//! are counted from the audit events the watchdog itself wrote.

use crate::latest::{self, CopyRank};
use crate::records::StateChange;
use crate::BlockState;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// The stage name on the audit events the block watchdog writes.
pub const WATCHDOG_STAGE: &str = "watchdog";
/// The stage name on the audit events of operator commands.
pub const OPERATOR_STAGE: &str = "operator";
/// The cause of a block quarantined for staying too long.
pub const STALLED: &str = "stalled";

/// How long a block may stay in each watched state, and how often it is re-driven
/// before it is quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallPolicy {
    pub queued: Duration,
    pub processing: Duration,
    pub validating: Duration,
    pub max_redrives: u32,
}

impl Default for StallPolicy {
    fn default() -> Self {
        StallPolicy {
            queued: Duration::from_secs(600),
            processing: Duration::from_secs(600),
            validating: Duration::from_secs(300),
            max_redrives: 2,
        }
    }
}

impl StallPolicy {
    /// The TTL of `state`; None for states that are not watched (PENDING and CLAIMED are
    /// written together with QUEUED, ERROR waits for a person, the rest are final).
    pub fn ttl(&self, state: BlockState) -> Option<Duration> {
        match state {
            BlockState::Queued => Some(self.queued),
            BlockState::Processing => Some(self.processing),
            BlockState::Validating => Some(self.validating),
            _ => None,
        }
    }

    /// A QUEUED block on a retry topic waits its delay by design: the QUEUED TTL must
    /// exceed the longest retry delay.
    pub fn validate(&self, longest_retry_delay: Duration) -> Result<(), String> {
        if self.queued <= longest_retry_delay {
            return Err(format!(
                "the QUEUED TTL ({} ms) must exceed the longest retry delay ({} ms)",
                self.queued.as_millis(),
                longest_retry_delay.as_millis()
            ));
        }
        if [self.processing, self.validating].iter().any(Duration::is_zero) {
            return Err("state TTLs must be above zero".into());
        }
        Ok(())
    }
}

/// Which stage input a copy of a block lies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyKind {
    /// The queued topic or one of its retry topics (inference's input).
    Queued,
    /// The results topic (the validator's input).
    Result,
}

impl CopyKind {
    /// The copy a block in `state` waits on.
    pub fn for_state(state: BlockState) -> Option<CopyKind> {
        match state {
            BlockState::Queued | BlockState::Processing => Some(CopyKind::Queued),
            BlockState::Validating => Some(CopyKind::Result),
            _ => None,
        }
    }
}

/// Where a copy of a block lies, and how recent it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(flatten)]
    pub rank: CopyRank,
}

/// What the watchdog knows of one live block.
#[derive(Debug, Clone, Default)]
struct Watched {
    state: Option<BlockState>,
    since_ms: i64,
    dataset_id: String,
    request_id: String,
    copies: HashMap<CopyKind, CopyRef>,
    redrives: u32,
    /// When an action was last taken, until its audit event is read back.
    acted_at_ms: Option<i64>,
    /// When the watchdog first heard of the block (copies may come before events).
    seen_ms: i64,
    /// The audit topic's partition the block's events are on.
    events_partition: Option<i32>,
}

/// What to do about a stalled block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The stage has not reached the block's record yet: lag, not a lost block.
    Waiting,
    /// Put it back on the queue as its next generation.
    Redrive,
    /// Re-drives are spent (or no copy is left): quarantine it as `stalled`.
    Quarantine,
}

/// A block past its state's TTL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stalled {
    pub block_id: String,
    pub dataset_id: String,
    pub request_id: String,
    pub state: BlockState,
    /// When it entered the state (the audit event's time).
    pub since_ms: i64,
    pub in_state_ms: i64,
    pub ttl_ms: i64,
    pub redrives: u32,
    pub copy: Option<CopyRef>,
    /// The audit topic's partition the block's events are on.
    pub events_partition: Option<i32>,
    pub verdict: Verdict,
}

impl Stalled {
    /// The audit reason of acting on this block.
    pub fn reason(&self, max_redrives: u32) -> String {
        let held = format!("{STALLED}: in {} for {} s, past its {} s TTL", self.state, self.in_state_ms / 1000, self.ttl_ms / 1000);
        match (self.verdict, &self.copy) {
            (Verdict::Redrive, _) => format!("{held}; re-drive {} of {max_redrives}", self.redrives + 1),
            (_, None) => format!("{held}; no copy of the block is left to re-drive"),
            _ => format!("{held}; re-driven {} times", self.redrives),
        }
    }
}

/// Live blocks, their states and copies, fed from the topics in any order.
#[derive(Debug, Default)]
pub struct BlockWatch {
    policy: StallPolicy,
    blocks: HashMap<String, Watched>,
    /// Blocks that completed or were canceled, their end and when the watchdog learnt
    /// it: later events of a stale generation must not bring them back to life.
    finished: HashMap<String, (BlockState, i64)>,
    /// Last round's candidates for action: block → (verdict, copy offset).
    candidates: HashMap<String, (Verdict, Option<i64>)>,
}

impl BlockWatch {
    pub fn new(policy: StallPolicy) -> Self {
        BlockWatch { policy, ..BlockWatch::default() }
    }

    pub fn policy(&self) -> &StallPolicy {
        &self.policy
    }

    /// Number of live blocks known.
    pub fn live(&self) -> usize {
        self.blocks.values().filter(|w| w.state.is_some()).count()
    }

    /// Applies one audit event read at `now_ms` from `partition` of the audit topic
    /// (events of one block arrive in the order written).
    pub fn on_event(&mut self, change: &StateChange, partition: i32, now_ms: i64) {
        if !latest::applies_after(self.finished.get(&change.block_id).map(|&(end, _)| end)) {
            return;
        }
        if change.to_state.is_terminal() {
            self.blocks.remove(&change.block_id);
            self.finished.insert(change.block_id.clone(), (change.to_state, now_ms));
            return;
        }
        let watched = self.blocks.entry(change.block_id.clone()).or_insert_with(|| Watched { seen_ms: now_ms, ..Watched::default() });
        watched.state = Some(change.to_state);
        watched.since_ms = change.at_ms;
        watched.dataset_id.clone_from(&change.dataset_id);
        watched.request_id.clone_from(&change.request_id);
        watched.events_partition = Some(partition);
        watched.acted_at_ms = None;
        match change.stage.as_str() {
            WATCHDOG_STAGE if change.to_state == BlockState::Queued => watched.redrives += 1,
            // A person stepped in: the block gets a fresh budget.
            OPERATOR_STAGE => watched.redrives = 0,
            _ => {}
        }
    }

    /// Notes a copy of `block_id` at `copy`; the newest ([`latest::replaces`]) wins.
    pub fn on_copy(&mut self, block_id: &str, kind: CopyKind, copy: CopyRef, now_ms: i64) {
        if self.finished.contains_key(block_id) {
            return;
        }
        let watched = self.blocks.entry(block_id.to_owned()).or_insert_with(|| Watched { seen_ms: now_ms, ..Watched::default() });
        if latest::replaces(copy.rank, watched.copies.get(&kind).map(|seen| seen.rank)) {
            watched.copies.insert(kind, copy);
        }
    }

    /// Notes that an action on `block_id` was attempted at `now_ms`: it is not judged
    /// again until its audit event is read back, or its state's TTL has passed (the
    /// write may have failed, or succeeded without the watchdog hearing so).
    pub fn acted(&mut self, block_id: &str, now_ms: i64) {
        if let Some(watched) = self.blocks.get_mut(block_id) {
            watched.acted_at_ms = Some(now_ms);
        }
        self.candidates.remove(block_id);
    }

    /// Of `stalled`, the blocks to act on now: a verdict other than waiting, reached on
    /// a block whose partitions are `settled` (read far enough to be sure), the same as
    /// last round on the same copy. Remembers this round's candidates for the next.
    pub fn to_act(&mut self, stalled: &[Stalled], settled: impl Fn(&Stalled) -> bool) -> Vec<Stalled> {
        let mut candidates = HashMap::new();
        let mut confirmed = Vec::new();
        for block in stalled.iter().filter(|b| b.verdict != Verdict::Waiting && settled(b)) {
            let seen = (block.verdict, block.copy.as_ref().map(|c| c.offset));
            if self.candidates.get(&block.block_id) == Some(&seen) {
                confirmed.push(block.clone());
            }
            candidates.insert(block.block_id.clone(), seen);
        }
        self.candidates = candidates;
        confirmed
    }

    /// Blocks past their state's TTL at `now_ms`. `passed(kind, copy)` says whether the
    /// consuming group committed past the copy (None: unknown, taken as no).
    pub fn stalled(&self, now_ms: i64, passed: impl Fn(CopyKind, &CopyRef) -> Option<bool>) -> Vec<Stalled> {
        let mut stalled: Vec<Stalled> = self
            .blocks
            .iter()
            .filter_map(|(id, w)| {
                let state = w.state?;
                let ttl = self.policy.ttl(state)?.as_millis() as i64;
                let in_state_ms = now_ms - w.since_ms;
                if in_state_ms <= ttl || w.acted_at_ms.is_some_and(|at| now_ms - at <= ttl) {
                    return None;
                }
                let kind = CopyKind::for_state(state)?;
                let copy = w.copies.get(&kind).cloned();
                let verdict = match &copy {
                    // Its copy may still be on its way: one TTL more, then it is lost.
                    None if in_state_ms <= 2 * ttl => Verdict::Waiting,
                    None => Verdict::Quarantine,
                    Some(c) if passed(kind, c) != Some(true) => Verdict::Waiting,
                    Some(_) if w.redrives < self.policy.max_redrives => Verdict::Redrive,
                    Some(_) => Verdict::Quarantine,
                };
                Some(Stalled {
                    block_id: id.clone(),
                    dataset_id: w.dataset_id.clone(),
                    request_id: w.request_id.clone(),
                    state,
                    since_ms: w.since_ms,
                    in_state_ms,
                    ttl_ms: ttl,
                    redrives: w.redrives,
                    copy,
                    events_partition: w.events_partition,
                    verdict,
                })
            })
            .collect();
        stalled.sort_by(|a, b| a.block_id.cmp(&b.block_id));
        stalled
    }

    /// Forgets blocks finished longer than `horizon` ago, and copies of blocks never
    /// audited within it (their events are gone, or they belong to no block).
    pub fn prune(&mut self, now_ms: i64, horizon: Duration) {
        let oldest = now_ms - horizon.as_millis() as i64;
        self.finished.retain(|_, (_, at)| *at >= oldest);
        self.blocks.retain(|_, w| w.state.is_some() || w.seen_ms >= oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BlockState::*;

    fn policy() -> StallPolicy {
        StallPolicy { queued: Duration::from_secs(10), processing: Duration::from_secs(5), validating: Duration::from_secs(5), max_redrives: 1 }
    }

    fn event(block: &str, from: BlockState, to: BlockState, stage: &str, at_ms: i64) -> StateChange {
        StateChange {
            block_id: block.into(),
            dataset_id: "ds".into(),
            from_state: from,
            to_state: to,
            stage: stage.into(),
            instance_id: "i".into(),
            reason: None,
            request_id: "r".into(),
            at_ms,
        }
    }

    fn copy(offset: i64, generation: i32) -> CopyRef {
        CopyRef { topic: "q".into(), partition: 0, offset, rank: CopyRank { generation, attempt: 0, updated_at_ms: offset } }
    }

    fn verdicts(watch: &BlockWatch, now: i64, passed: bool) -> Vec<(String, Verdict)> {
        watch.stalled(now, |_, _| Some(passed)).into_iter().map(|s| (s.block_id, s.verdict)).collect()
    }

    #[test]
    fn a_block_within_its_ttl_is_not_stalled() {
        let mut watch = BlockWatch::new(policy());
        watch.on_copy("b", CopyKind::Queued, copy(3, 0), 0);
        watch.on_event(&event("b", Claimed, Queued, "claimer", 1_000), 0, 1_000);
        assert!(verdicts(&watch, 11_000, true).is_empty());
        assert_eq!(verdicts(&watch, 11_001, true), [("b".to_owned(), Verdict::Redrive)]);
    }

    #[test]
    fn a_block_the_stage_has_not_reached_is_waiting_not_redriven() {
        let mut watch = BlockWatch::new(policy());
        watch.on_copy("b", CopyKind::Queued, copy(3, 0), 0);
        watch.on_event(&event("b", Claimed, Queued, "claimer", 0), 0, 0);
        assert_eq!(verdicts(&watch, 60_000, false), [("b".to_owned(), Verdict::Waiting)]);
        assert_eq!(watch.stalled(60_000, |_, _| None)[0].verdict, Verdict::Waiting);
    }

    #[test]
    fn redrives_are_bounded_then_the_block_is_quarantined() {
        let mut watch = BlockWatch::new(policy());
        watch.on_copy("b", CopyKind::Queued, copy(3, 0), 0);
        watch.on_event(&event("b", Queued, Processing, "inference", 0), 0, 0);
        let stalled = watch.stalled(6_000, |_, _| Some(true));
        assert_eq!(stalled[0].verdict, Verdict::Redrive);
        assert_eq!(stalled[0].reason(1), "stalled: in PROCESSING for 6 s, past its 5 s TTL; re-drive 1 of 1");
        watch.acted("b", 6_000);
        assert!(verdicts(&watch, 7_000, true).is_empty(), "not judged again before its event is read back");
        watch.on_event(&event("b", Processing, Queued, WATCHDOG_STAGE, 7_000), 0, 7_000);
        watch.on_copy("b", CopyKind::Queued, copy(9, 1), 7_000);
        assert!(verdicts(&watch, 17_000, true).is_empty(), "QUEUED has its own TTL");
        let stalled = watch.stalled(17_001, |_, c| Some(c.rank.generation == 1));
        assert_eq!((stalled[0].verdict, stalled[0].redrives), (Verdict::Quarantine, 1));
        assert_eq!(stalled[0].reason(1), "stalled: in QUEUED for 10 s, past its 10 s TTL; re-driven 1 times");
    }

    #[test]
    fn an_operator_action_restores_the_budget() {
        let mut watch = BlockWatch::new(policy());
        watch.on_copy("b", CopyKind::Result, copy(1, 2), 0);
        watch.on_event(&event("b", Processing, Queued, WATCHDOG_STAGE, 0), 0, 0);
        watch.on_event(&event("b", Queued, Error, WATCHDOG_STAGE, 0), 0, 0);
        watch.on_event(&event("b", Error, Queued, OPERATOR_STAGE, 0), 0, 0);
        watch.on_event(&event("b", Processing, Validating, "inference", 0), 0, 0);
        assert_eq!(verdicts(&watch, 10_000, true), [("b".to_owned(), Verdict::Redrive)]);
    }

    #[test]
    fn a_validating_block_is_judged_by_its_result_copy() {
        let mut watch = BlockWatch::new(policy());
        watch.on_copy("b", CopyKind::Queued, copy(1, 0), 0);
        watch.on_copy("b", CopyKind::Result, CopyRef { topic: "r".into(), ..copy(7, 0) }, 0);
        watch.on_event(&event("b", Processing, Validating, "inference", 0), 0, 0);
        let stalled = watch.stalled(6_000, |kind, c| Some(kind == CopyKind::Result && c.topic == "r"));
        assert_eq!(stalled[0].verdict, Verdict::Redrive);
        assert_eq!(stalled[0].copy.as_ref().map(|c| c.offset), Some(7));
    }

    #[test]
    fn without_a_copy_the_block_waits_one_ttl_more_then_is_quarantined() {
        let mut watch = BlockWatch::new(policy());
        watch.on_event(&event("b", Claimed, Queued, "claimer", 0), 0, 0);
        assert_eq!(verdicts(&watch, 20_000, true), [("b".to_owned(), Verdict::Waiting)]);
        let stalled = watch.stalled(20_001, |_, _| Some(true));
        assert_eq!(stalled[0].verdict, Verdict::Quarantine);
        assert!(stalled[0].reason(1).ends_with("no copy of the block is left to re-drive"));
    }

    #[test]
    fn a_failed_action_is_tried_again_after_a_ttl() {
        let mut watch = BlockWatch::new(policy());
        watch.on_copy("b", CopyKind::Queued, copy(3, 0), 0);
        watch.on_event(&event("b", Queued, Processing, "inference", 0), 0, 0);
        watch.acted("b", 6_000);
        assert!(verdicts(&watch, 11_000, true).is_empty());
        assert_eq!(verdicts(&watch, 11_001, true), [("b".to_owned(), Verdict::Redrive)]);
    }

    #[test]
    fn only_settled_verdicts_confirmed_by_a_second_round_are_acted_on() {
        let mut watch = BlockWatch::new(policy());
        for (block, offset) in [("a", 1), ("b", 2), ("c", 3)] {
            watch.on_copy(block, CopyKind::Queued, copy(offset, 0), 0);
            watch.on_event(&event(block, Queued, Processing, "inference", 0), 0, 0);
        }
        let settled = |s: &Stalled| s.block_id != "c";
        let first = watch.stalled(6_000, |_, _| Some(true));
        assert!(watch.to_act(&first, settled).is_empty(), "a first sighting is not enough");
        // b's copy changed between the rounds: a new sighting.
        watch.on_copy("b", CopyKind::Queued, copy(9, 1), 6_500);
        let second = watch.stalled(7_000, |_, _| Some(true));
        let acted: Vec<String> = watch.to_act(&second, settled).into_iter().map(|s| s.block_id).collect();
        assert_eq!(acted, ["a"], "c is never settled, b was seen once on its new copy");
        let third = watch.stalled(8_000, |_, _| Some(true));
        let acted: Vec<String> = watch.to_act(&third, settled).into_iter().map(|s| s.block_id).collect();
        assert_eq!(acted, ["a", "b"]);
    }

    #[test]
    fn the_newest_copy_wins_whatever_the_order_read() {
        let mut watch = BlockWatch::new(policy());
        watch.on_copy("b", CopyKind::Queued, copy(9, 1), 0);
        watch.on_copy("b", CopyKind::Queued, copy(3, 0), 0);
        watch.on_event(&event("b", Claimed, Queued, "claimer", 0), 0, 0);
        assert_eq!(watch.stalled(20_000, |_, _| Some(true))[0].copy.as_ref().map(|c| c.rank.generation), Some(1));
    }

    #[test]
    fn finished_blocks_stay_finished_and_are_forgotten_later() {
        let mut watch = BlockWatch::new(policy());
        watch.on_event(&event("b", Validating, Completed, "validator", 1_000), 0, 1_000);
        // A stale generation's events after completion do not revive the block.
        watch.on_event(&event("b", Queued, Processing, "inference", 2_000), 0, 2_000);
        watch.on_copy("b", CopyKind::Queued, copy(3, 0), 2_000);
        assert_eq!(watch.live(), 0);
        assert!(watch.stalled(60_000, |_, _| Some(true)).is_empty());
        watch.on_copy("orphan", CopyKind::Queued, copy(4, 0), 2_000);
        watch.prune(100_000, Duration::from_secs(60));
        assert!(watch.finished.is_empty() && watch.blocks.is_empty());
    }

    #[test]
    fn the_queued_ttl_must_exceed_the_longest_retry_delay() {
        assert!(StallPolicy::default().validate(Duration::from_secs(300)).is_ok());
        let err = policy().validate(Duration::from_secs(30)).unwrap_err();
        assert!(err.contains("QUEUED TTL (10000 ms) must exceed the longest retry delay (30000 ms)"), "{err}");
    }
}
