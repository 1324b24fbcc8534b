//! Which datasets were canceled. `quire cancel` writes the dataset id as the key of a
//! record on the control topic; every stage reads that topic to its end before it
//! starts, then follows it in a thread of its own, and drops the blocks of a canceled
//! dataset where it meets them (recording their `→ CANCELED` transition in the same
//! transaction, so nothing is half-written).

use crate::config::KafkaArgs;
use crate::reader::TopicReader;
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// The canceled datasets, as far as this process has read.
#[derive(Clone, Default, Debug)]
pub struct CanceledDatasets(Arc<RwLock<HashSet<String>>>);

type Set = RwLock<HashSet<String>>;

fn note(set: &Set, next: &Mutex<HashMap<i32, i64>>, message: &rdkafka::message::BorrowedMessage<'_>) {
    next.lock().expect("offsets lock").insert(message.partition(), message.offset() + 1);
    let Some(key) = message.key() else { return };
    let dataset = String::from_utf8_lossy(key).into_owned();
    if set.write().expect("canceled datasets lock").insert(dataset.clone()) {
        tracing::warn!(dataset_id = %dataset, "dataset canceled: its blocks are dropped where they are met");
    }
}

impl CanceledDatasets {
    pub fn contains(&self, dataset: &str) -> bool {
        self.0.read().expect("canceled datasets lock").contains(dataset)
    }

    /// Reads `topic` to its end (an error if it cannot: a stage must not start blind to
    /// cancellations), then follows it in a thread that ends when the last clone is
    /// dropped and starts over after an error.
    pub fn follow(args: &KafkaArgs, topic: &str) -> crate::Result<Self> {
        let canceled = CanceledDatasets::default();
        let next = Arc::new(Mutex::new(HashMap::new()));
        TopicReader::new(args)?.read_to_end(topic, |_| None, Duration::from_secs(60), |m| note(&canceled.0, &next, m))?;
        let shared: Weak<Set> = Arc::downgrade(&canceled.0);
        let (args, topic) = (args.clone(), topic.to_owned());
        std::thread::Builder::new()
            .name("cancel-watch".into())
            .spawn(move || {
                while shared.strong_count() > 0 {
                    let result = TopicReader::follower(&args).and_then(|reader| {
                        let start = |p| next.lock().expect("offsets lock").get(&p).copied();
                        reader.follow(
                            &topic,
                            start,
                            |m| {
                                if let Some(set) = shared.upgrade() {
                                    note(&set, &next, m);
                                }
                            },
                            || shared.strong_count() > 0,
                        )
                    });
                    if let Err(e) = result {
                        tracing::error!(topic, error = %e, "following the control topic failed; starting over");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
            .map_err(|e| crate::Error::Other(format!("cannot start the cancel watch: {e}")))?;
        Ok(canceled)
    }
}
