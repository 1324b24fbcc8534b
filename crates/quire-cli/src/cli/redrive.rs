//! `quire redrive BLOCK…`: puts stuck or failed blocks back on the queue. Each block
//! goes from its latest audited state to QUEUED through the state machine (so a
//! COMPLETED or CANCELED block is refused, with the reason) as its next generation, in
//! one transaction with its audit event.

use super::report::{latest_quarantine, latest_states, read_all, KeyValue};
use quire_core::records::{now_ms, Block, InferenceResult, QuarantineRecord, QUARANTINED, REPLAYED};
use quire_core::BlockState;
use quire_kafka::config::TopicNames;
use quire_kafka::ops::Operator;
use quire_kafka::io::reader::TopicReader;
use quire_kafka::{Codec, KafkaArgs};
use std::collections::{HashMap, HashSet};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Block ids.
    #[arg(required = true)]
    pub blocks: Vec<String>,
    /// Re-drive QUEUED blocks too: only for one whose queued record is known to be
    /// lost (a block waiting in line would then run twice; the output stays once).
    #[arg(long)]
    pub force: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let operator = Operator::new(&args.kafka, "redrive")?;
    let names = operator.names().clone();
    let wanted: HashSet<&str> = args.blocks.iter().map(String::as_str).collect();
    let codec = operator.codec();
    let (events, quarantine) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let reader = TopicReader::new(&args.kafka)?;
        Ok((read_all(&reader, &names.events())?, read_all(&reader, &names.quarantine())?))
    })?;
    let states = latest_states(codec, &events, |id| wanted.contains(id)).await;
    let latest = latest_copies(&args.kafka, codec, &wanted).await?;
    let quarantined = latest_quarantine(codec, &quarantine).await;

    let mut failed = 0;
    for id in &args.blocks {
        let outcome = async {
            let state = *states.get(id).ok_or_else(|| anyhow::anyhow!("no audited state: is {id} a block id?"))?;
            anyhow::ensure!(
                state != BlockState::Queued || args.force,
                "it is QUEUED, maybe waiting in line (see `quire status`, and the watchdog's /watchdog/blocks); --force re-drives it anyway"
            );
            let block = latest.get(id).ok_or_else(|| anyhow::anyhow!("no copy of the block on the queued, retry or results topics"))?;
            let by = format!("re-driven by {}", operator.who);
            let trace_id = quarantined.get(id).and_then(|r| r.trace_id.as_deref());
            let mut records = operator.requeue(block, state, &by, trace_id).await?;
            if let Some(record) = quarantined.get(id).filter(|r| r.status == QUARANTINED) {
                let replayed = QuarantineRecord { status: REPLAYED.into(), replayed_at_ms: Some(now_ms()), replayed_by: Some(by), ..record.clone() };
                records.push(operator.encode(&names.quarantine(), id, &replayed, Vec::new()).await?);
            }
            tokio::task::block_in_place(|| operator.commit(&records))?;
            anyhow::Ok(state)
        }
        .await;
        match outcome {
            Ok(state) => println!("{id}: {state} → QUEUED (generation {})", latest[id].generation + 1),
            Err(e) => {
                failed += 1;
                eprintln!("{id}: not re-driven: {e:#}");
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The newest copy of each `wanted` block on the queued, retry and results topics:
/// highest generation, then attempt, then time. Its generation is the block's latest.
pub async fn latest_copies(kafka: &KafkaArgs, codec: &Codec, wanted: &HashSet<&str>) -> anyhow::Result<HashMap<String, Block>> {
    let names = TopicNames::new(&kafka.topic_prefix);
    let block_topics = names.queued_and_retries(&kafka.retry_schedule());
    let (blocks, results) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let reader = TopicReader::new(kafka)?;
        let mut blocks = Vec::new();
        for topic in &block_topics {
            blocks.extend(read_all(&reader, topic)?);
        }
        Ok((blocks, read_all(&reader, &names.results())?))
    })?;
    let mine = |records: Vec<KeyValue>| records.into_iter().filter(|(k, _)| k.as_deref().is_some_and(|k| wanted.contains(k)));
    let mut latest: HashMap<String, Block> = HashMap::new();
    let mut consider = |block: Block| {
        let rank = |b: &Block| (b.generation, b.attempt, b.updated_at_ms);
        if latest.get(&block.block_id).is_none_or(|seen| rank(&block) >= rank(seen)) {
            latest.insert(block.block_id.clone(), block);
        }
    };
    for (_, value) in mine(blocks) {
        if let Ok(block) = codec.decode::<Block>(value.as_deref()).await {
            consider(block);
        }
    }
    for (_, value) in mine(results) {
        if let Ok(result) = codec.decode::<InferenceResult>(value.as_deref()).await {
            consider(result.block);
        }
    }
    Ok(latest)
}
