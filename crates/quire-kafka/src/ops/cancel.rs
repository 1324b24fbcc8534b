//! `quire cancel`'s rules: every block of a dataset not yet completed ends CANCELED.
//! Blocks at rest in quarantine (ERROR) are canceled in the command's transaction, their
//! quarantine records marked `CANCELED`; blocks in flight are canceled where the next
//! stage meets them, since every stage follows the control topic this writes to.

use super::view::{latest_quarantine, latest_states, read_topics};
use super::Operator;
use crate::Result;
use quire_core::records::{now_ms, DatasetControl, QuarantineRecord, CANCEL, CANCELED, QUARANTINED};
use quire_core::BlockState;
use serde::Serialize;

/// What canceling a dataset did.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct CancelReport {
    /// Blocks in ERROR, canceled in this transaction.
    pub canceled_at_rest: usize,
    /// Blocks that had completed already (they stay completed).
    pub already_completed: usize,
}

/// Cancels `dataset` in one transaction of `operator`'s, for `reason`.
pub async fn cancel(operator: &Operator, dataset: &str, reason: Option<&str>) -> Result<CancelReport> {
    let names = operator.names();
    let read = read_topics(operator.args(), &[names.events(), names.quarantine()])?;
    let [events, quarantine] = <[_; 2]>::try_from(read).expect("two topics read");
    let codec = operator.codec();
    let latest = latest_states(codec, &events, |_| true, |change| change.dataset_id == dataset).await;
    let audit_reason = format!("dataset {dataset} canceled by {}: {}", operator.who, reason.unwrap_or("no reason given"));
    let control = DatasetControl {
        dataset_id: dataset.to_owned(),
        action: CANCEL.into(),
        requested_by: operator.who.clone(),
        requested_at_ms: now_ms(),
        reason: reason.map(str::to_owned),
    };
    let mut records = vec![operator.encode(&names.control(), dataset, &control, Vec::new()).await?];
    let mut report = CancelReport::default();
    for change in latest.changes() {
        match change.to_state {
            BlockState::Error => {
                records.push(operator.transition(&change.into(), BlockState::Error, BlockState::Canceled, &audit_reason).await?);
                report.canceled_at_rest += 1;
            }
            BlockState::Completed => report.already_completed += 1,
            _ => {}
        }
    }
    for record in latest_quarantine(codec, &quarantine).await.into_values() {
        if record.dataset_id.as_deref() == Some(dataset) && record.status == QUARANTINED {
            let canceled = QuarantineRecord { status: CANCELED.into(), ..record };
            records.push(operator.encode(&names.quarantine(), &canceled.key, &canceled, Vec::new()).await?);
        }
    }
    tokio::task::block_in_place(|| operator.commit(&records))?;
    Ok(report)
}
