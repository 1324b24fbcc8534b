//! Which datasets were canceled. `quire cancel` writes the dataset id as the key of a
//! record on the control topic; every stage reads that topic to its end before it
//! starts, then follows it in a thread of its own, and drops the blocks of a canceled
//! dataset where it meets them (recording their `→ CANCELED` transition in the same
//! transaction, so nothing is half-written).
//!
//! A cancellation cannot be undone, so only a record that decodes as a `DatasetControl`
//! asking to CANCEL the dataset its key names counts; anything else written there is
//! logged and ignored. The records are decoded on a thread of its own, with a runtime
//! of its own, so following works from inside or outside an async context.

use crate::config::KafkaArgs;
use crate::io::reader::TopicReader;
use crate::{Codec, Error};
use quire_core::records::{DatasetControl, CANCEL};
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::sync::{mpsc, Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// The canceled datasets, as far as this process has read.
#[derive(Clone, Default, Debug)]
pub struct CanceledDatasets(Arc<RwLock<HashSet<String>>>);

type Set = RwLock<HashSet<String>>;

/// What a control record asks for: the dataset to cancel, or why it is ignored.
fn cancellation(key: Option<&[u8]>, control: std::result::Result<DatasetControl, Error>) -> std::result::Result<String, String> {
    let key = key.map(|k| String::from_utf8_lossy(k).into_owned()).ok_or("no key")?;
    let control = control.map_err(|e| e.to_string())?;
    if control.action != CANCEL {
        return Err(format!("unknown action {:?}", control.action));
    }
    if control.dataset_id != key {
        return Err(format!("its key {key:?} is not its dataset {:?}", control.dataset_id));
    }
    Ok(key)
}

/// Reads the control topic's records, decoding each.
struct Noter {
    runtime: tokio::runtime::Runtime,
    codec: Codec,
}

impl Noter {
    /// Decodes `message`, retrying while the registry cannot be reached (a cancellation
    /// must not be missed because the registry was down).
    fn decode(&self, message: &rdkafka::message::BorrowedMessage<'_>) -> crate::Result<DatasetControl> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.runtime.block_on(self.codec.decode::<DatasetControl>(message.payload())) {
                Err(Error::Registry { message: reason, .. }) => {
                    tracing::warn!(error = %reason, "decoding a control record: the registry does not answer; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                decoded => return decoded,
            }
        }
    }

    fn note(&self, set: &Set, next: &Mutex<HashMap<i32, i64>>, message: &rdkafka::message::BorrowedMessage<'_>) {
        next.lock().expect("offsets lock").insert(message.partition(), message.offset() + 1);
        match cancellation(message.key(), self.decode(message)) {
            Ok(dataset) => {
                if set.write().expect("canceled datasets lock").insert(dataset.clone()) {
                    tracing::warn!(dataset_id = %dataset, "dataset canceled: its blocks are dropped where they are met");
                }
            }
            Err(why) => tracing::warn!(partition = message.partition(), offset = message.offset(), why = %why, "control record ignored"),
        }
    }
}

impl CanceledDatasets {
    pub fn contains(&self, dataset: &str) -> bool {
        self.0.read().expect("canceled datasets lock").contains(dataset)
    }

    /// A set of `datasets`, as if their cancellations had been read (unit tests).
    #[cfg(test)]
    pub(crate) fn of(datasets: &[&str]) -> Self {
        CanceledDatasets(Arc::new(RwLock::new(datasets.iter().map(|d| (*d).to_owned()).collect())))
    }

    /// Reads `topic` to its end (an error if it cannot: a stage must not start blind to
    /// cancellations), then follows it in a thread that ends when the last clone is
    /// dropped and starts over after an error.
    pub fn follow(args: &KafkaArgs, topic: &str) -> crate::Result<Self> {
        let canceled = CanceledDatasets::default();
        let next = Arc::new(Mutex::new(HashMap::new()));
        let shared: Weak<Set> = Arc::downgrade(&canceled.0);
        let (first_read, read) = mpsc::channel();
        let (args, topic, set) = (args.clone(), topic.to_owned(), canceled.0.clone());
        std::thread::Builder::new()
            .name("cancel-watch".into())
            .spawn(move || {
                let noter = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => match Codec::new(&args.schema_registry_url) {
                        Ok(codec) => Noter { runtime, codec },
                        Err(e) => return drop(first_read.send(Err(e))),
                    },
                    Err(e) => return drop(first_read.send(Err(Error::Other(format!("cannot start the cancel watch: {e}"))))),
                };
                let initial = TopicReader::new(&args).and_then(|reader| reader.read_to_end(&topic, |_| None, Duration::from_secs(60), |m| noter.note(&set, &next, m)));
                drop(set);
                if first_read.send(initial.map(|_| ())).is_err() {
                    return;
                }
                while shared.strong_count() > 0 {
                    let result = TopicReader::follower(&args).and_then(|reader| {
                        let start = |p| next.lock().expect("offsets lock").get(&p).copied();
                        reader.follow(
                            &topic,
                            start,
                            |m| {
                                if let Some(set) = shared.upgrade() {
                                    noter.note(&set, &next, m);
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
            .map_err(|e| Error::Other(format!("cannot start the cancel watch: {e}")))?;
        read.recv().map_err(|_| Error::Other("the cancel watch ended before reading the control topic".into()))??;
        Ok(canceled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(dataset: &str, action: &str) -> crate::Result<DatasetControl> {
        Ok(DatasetControl { dataset_id: dataset.into(), action: action.into(), requested_by: "me".into(), requested_at_ms: 1, reason: None })
    }

    #[test]
    fn only_a_cancel_of_the_keyed_dataset_counts() {
        assert_eq!(cancellation(Some(b"d1"), control("d1", CANCEL)), Ok("d1".to_owned()));
        assert!(cancellation(Some(b"d1"), control("d2", CANCEL)).unwrap_err().contains("not its dataset"));
        assert!(cancellation(Some(b"d1"), control("d1", "RESUME")).unwrap_err().contains("unknown action"));
        assert!(cancellation(None, control("d1", CANCEL)).is_err());
        assert!(cancellation(Some(b"d1"), Err(Error::Decode("garbage".into()))).unwrap_err().contains("garbage"));
    }
}
