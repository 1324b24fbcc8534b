//! `quire cancel DATASET`: stops a dataset. Every block not yet completed ends CANCELED:
//! blocks at rest in quarantine (ERROR) right now, in this command's transaction; blocks
//! in flight where the next stage meets them, since every stage follows the control
//! topic this command writes to. A canceled block never reaches the completed topic.

use super::report::{latest_changes, latest_quarantine, read_all};
use quire_core::records::{now_ms, DatasetControl, CANCEL, CANCELED, QUARANTINED};
use quire_core::BlockState;
use quire_kafka::ops::Operator;
use quire_kafka::io::reader::TopicReader;
use quire_kafka::KafkaArgs;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Dataset to cancel.
    pub dataset: String,
    /// Why, for the audit trail.
    #[arg(long)]
    pub reason: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let operator = Operator::new(&args.kafka, "cancel")?;
    let names = operator.names().clone();
    let (events, quarantine) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let reader = TopicReader::new(&args.kafka)?;
        Ok((read_all(&reader, &names.events())?, read_all(&reader, &names.quarantine())?))
    })?;
    let codec = operator.codec();
    let latest = latest_changes(codec, &events, |_| true, |change| change.dataset_id == args.dataset).await;
    let why = args.reason.clone().unwrap_or_else(|| "no reason given".into());
    let reason = format!("dataset {} canceled by {}: {why}", args.dataset, operator.who);
    let control = DatasetControl {
        dataset_id: args.dataset.clone(),
        action: CANCEL.into(),
        requested_by: operator.who.clone(),
        requested_at_ms: now_ms(),
        reason: args.reason.clone(),
    };
    let mut records = vec![operator.encode(&names.control(), &args.dataset, &control, Vec::new()).await?];
    let mut at_rest = 0;
    for (block_id, change) in &latest {
        if change.to_state == BlockState::Error {
            records.push(operator.transition(block_id, &args.dataset, &change.request_id, BlockState::Error, BlockState::Canceled, &reason).await?);
            at_rest += 1;
        }
    }
    for record in latest_quarantine(codec, &quarantine).await.into_values() {
        if record.dataset_id.as_deref() == Some(args.dataset.as_str()) && record.status == QUARANTINED {
            let canceled = quire_core::records::QuarantineRecord { status: CANCELED.into(), ..record };
            records.push(operator.encode(&names.quarantine(), &canceled.key, &canceled, Vec::new()).await?);
        }
    }
    tokio::task::block_in_place(|| operator.commit(&records))?;
    let completed = latest.values().filter(|change| change.to_state == BlockState::Completed).count();
    println!(
        "dataset {} canceled: {at_rest} block(s) in ERROR canceled now, {completed} already completed; blocks in flight are canceled where the stages meet them",
        args.dataset
    );
    Ok(ExitCode::SUCCESS)
}
