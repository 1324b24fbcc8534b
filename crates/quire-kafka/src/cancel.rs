//! Which datasets were canceled. `quire cancel` writes the dataset id as the key of a
//! record on the control topic; every stage follows that topic in a thread of its own
//! and drops the blocks of a canceled dataset where it meets them (recording their
//! `→ CANCELED` transition in the same transaction, so nothing is half-written).

use crate::config::KafkaArgs;
use crate::reader::TopicReader;
use rdkafka::Message;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// The canceled datasets, as far as this process has read.
#[derive(Clone, Default, Debug)]
pub struct CanceledDatasets(Arc<RwLock<HashSet<String>>>);

impl CanceledDatasets {
    pub fn contains(&self, dataset: &str) -> bool {
        self.0.read().expect("canceled datasets lock").contains(dataset)
    }

    /// Starts following `topic`; the thread ends when the last clone is dropped.
    pub fn follow(args: &KafkaArgs, topic: &str) -> crate::Result<Self> {
        let canceled = CanceledDatasets::default();
        let shared = Arc::downgrade(&canceled.0);
        let reader = TopicReader::new(args)?;
        let topic = topic.to_owned();
        std::thread::Builder::new()
            .name("cancel-watch".into())
            .spawn(move || {
                let keep_going = || shared.strong_count() > 0;
                let result = reader.follow(
                    &topic,
                    |message| {
                        let (Some(key), Some(set)) = (message.key(), shared.upgrade()) else { return };
                        let dataset = String::from_utf8_lossy(key).into_owned();
                        if set.write().expect("canceled datasets lock").insert(dataset.clone()) {
                            tracing::warn!(dataset_id = %dataset, "dataset canceled: its blocks are dropped where they are met");
                        }
                    },
                    keep_going,
                );
                if let Err(e) = result {
                    tracing::error!(topic, error = %e, "cannot follow the control topic: cancellations are not seen");
                }
            })
            .map_err(|e| crate::Error::Other(format!("cannot start the cancel watch: {e}")))?;
        Ok(canceled)
    }
}
