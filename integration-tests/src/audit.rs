//! The audit log's own rules, written out again from the README so the tests' check
//! does not share the code it checks: every transition legal, and nothing after a
//! block's terminal state (COMPLETED, CANCELED).

use quire_core::records::StateChange;
use quire_core::BlockState;
use std::collections::HashMap;

/// Whether the state machine allows `from → to`.
pub fn legal(from: BlockState, to: BlockState) -> bool {
    use BlockState::*;
    let terminal = |s: BlockState| matches!(s, Completed | Canceled);
    match (from, to) {
        (Pending, Claimed) | (Claimed, Queued) | (Queued, Processing) | (Processing, Validating) | (Validating, Completed) => true,
        // Rescheduled for a retry, re-driven, replayed, or a lost queued record re-driven.
        (Processing | Validating | Error | Queued, Queued) => true,
        (from, Error) => !terminal(from) && from != Error,
        (from, Canceled) => !terminal(from),
        _ => false,
    }
}

/// What breaks the rules in `events` (each block's changes in the order written): the
/// illegal transitions, and the events after a terminal state.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Violations {
    pub illegal: Vec<String>,
    pub post_terminal: Vec<String>,
}

impl Violations {
    pub fn of<'a>(events: impl IntoIterator<Item = (&'a String, &'a Vec<StateChange>)>) -> Self {
        let mut found = Violations::default();
        for (block_id, changes) in events {
            let mut terminal: Option<BlockState> = None;
            for change in changes {
                if !legal(change.from_state, change.to_state) {
                    found.illegal.push(format!("{block_id}: {} → {} by {}", change.from_state, change.to_state, change.stage));
                }
                if let Some(state) = terminal {
                    found.post_terminal.push(format!("{block_id}: {} → {} by {} after {state}", change.from_state, change.to_state, change.stage));
                }
                if matches!(change.to_state, BlockState::Completed | BlockState::Canceled) {
                    terminal = Some(change.to_state);
                }
            }
        }
        found
    }

    /// The rules applied to a whole audit topic as read, in order.
    pub fn of_log(log: &[StateChange]) -> Self {
        let mut by_block: HashMap<String, Vec<StateChange>> = HashMap::new();
        for change in log {
            by_block.entry(change.block_id.clone()).or_default().push(change.clone());
        }
        Self::of(&by_block)
    }

    pub fn is_empty(&self) -> bool {
        self.illegal.is_empty() && self.post_terminal.is_empty()
    }
}
