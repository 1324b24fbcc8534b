//! The block state machine.
//!
//! PENDING → CLAIMED → QUEUED → PROCESSING → VALIDATING → COMPLETED, with ERROR and
//! CANCELED as exits from any live state. A block goes back to QUEUED from PROCESSING
//! (rescheduled for a retry), from VALIDATING (re-driven), from ERROR (replayed) and
//! from QUEUED itself (a queued record that was lost, re-driven).
//! Events read from topics can carry any pair, so the check is a runtime function whose
//! error names the block, the from and the to; callers log it and apply nothing.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a block is in its life. The order of the variants is the order of the Avro
/// enum symbols in `schemas/block_state.avsc`: do not reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BlockState {
    Pending,
    Claimed,
    Queued,
    Processing,
    Validating,
    Completed,
    Error,
    Canceled,
}

impl BlockState {
    pub const ALL: [BlockState; 8] = [
        BlockState::Pending,
        BlockState::Claimed,
        BlockState::Queued,
        BlockState::Processing,
        BlockState::Validating,
        BlockState::Completed,
        BlockState::Error,
        BlockState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockState::Pending => "PENDING",
            BlockState::Claimed => "CLAIMED",
            BlockState::Queued => "QUEUED",
            BlockState::Processing => "PROCESSING",
            BlockState::Validating => "VALIDATING",
            BlockState::Completed => "COMPLETED",
            BlockState::Error => "ERROR",
            BlockState::Canceled => "CANCELED",
        }
    }

    /// Terminal states accept no further transition.
    pub fn is_terminal(self) -> bool {
        matches!(self, BlockState::Completed | BlockState::Canceled)
    }

    /// Whether `self → to` is a legal transition.
    pub fn can_become(self, to: BlockState) -> bool {
        use BlockState::*;
        match (self, to) {
            (Pending, Claimed)
            | (Claimed, Queued)
            | (Queued, Processing)
            | (Processing, Validating)
            | (Validating, Completed)
            | (Queued | Processing | Validating | Error, Queued) => true,
            (from, Error | Canceled) => !from.is_terminal() && from != to,
            _ => false,
        }
    }
}

impl fmt::Display for BlockState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition the state machine refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition for block {block_id}: {from} → {to}")]
pub struct IllegalTransition {
    pub block_id: String,
    pub from: BlockState,
    pub to: BlockState,
}

/// Checks `from → to` for one block; on refusal logs it (block id, from, to) and returns
/// the error so the caller applies nothing.
pub fn transition(
    block_id: &str,
    from: BlockState,
    to: BlockState,
) -> Result<BlockState, IllegalTransition> {
    if from.can_become(to) {
        Ok(to)
    } else {
        let err = IllegalTransition { block_id: block_id.to_owned(), from, to };
        tracing::warn!(block_id, from = %from, to = %to, "illegal block transition rejected");
        Err(err)
    }
}

/// The states a block walks through on the happy path, in order.
pub const HAPPY_PATH: [BlockState; 6] = [
    BlockState::Pending,
    BlockState::Claimed,
    BlockState::Queued,
    BlockState::Processing,
    BlockState::Validating,
    BlockState::Completed,
];

#[cfg(test)]
mod tests {
    use super::*;
    use BlockState::*;

    #[test]
    fn happy_path_is_legal() {
        for pair in HAPPY_PATH.windows(2) {
            assert!(transition("b", pair[0], pair[1]).is_ok(), "{} → {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn skipping_a_state_is_rejected_with_its_names() {
        let err = transition("block-7", Queued, Completed).unwrap_err();
        assert_eq!(err, IllegalTransition { block_id: "block-7".into(), from: Queued, to: Completed });
        assert_eq!(err.to_string(), "illegal transition for block block-7: QUEUED → COMPLETED");
    }

    #[test]
    fn terminal_states_are_final() {
        for to in BlockState::ALL {
            assert!(!Completed.can_become(to), "COMPLETED → {to}");
            assert!(!Canceled.can_become(to), "CANCELED → {to}");
        }
    }

    #[test]
    fn every_live_state_can_fail_or_be_canceled() {
        for from in BlockState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            assert!(from.can_become(Canceled), "{from} → CANCELED");
            assert_eq!(from.can_become(Error), from != Error, "{from} → ERROR");
        }
    }

    #[test]
    fn backwards_moves_are_rejected_except_requeueing() {
        assert!(Processing.can_become(Queued));
        assert!(Validating.can_become(Queued));
        assert!(Error.can_become(Queued));
        assert!(Queued.can_become(Queued));
        assert!(!Processing.can_become(Processing));
        assert!(!Completed.can_become(Queued));
        assert!(!Canceled.can_become(Queued));
        assert!(!Validating.can_become(Processing));
        assert!(!Queued.can_become(Claimed));
    }

    #[test]
    fn serde_uses_avro_symbols() {
        assert_eq!(serde_json::to_string(&Validating).unwrap(), "\"VALIDATING\"");
    }
}
