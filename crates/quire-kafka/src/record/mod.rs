//! The records a stage consumes and produces, and the headers Quire writes on them:
//! the bottom of the crate, imported by every other module and importing none of them.

pub mod headers;

use headers::Headers;
use quire_core::Failure;
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{Message, Timestamp};

/// Largest allocation a decoded value may ask for. A hostile length prefix of a few
/// bytes could otherwise make the decoder allocate hundreds of MB; no record Quire takes
/// in is larger than this (`max_record_bytes` is capped by it).
pub const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// One consumed record, owned.
#[derive(Debug, Clone)]
pub struct Input {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Headers,
    pub timestamp_ms: i64,
    pub timestamp_type: &'static str,
}

impl Input {
    pub(crate) fn from_message<M: Message>(message: &M) -> Self {
        let (timestamp_ms, timestamp_type) = match message.timestamp() {
            Timestamp::CreateTime(t) => (t, "CreateTime"),
            Timestamp::LogAppendTime(t) => (t, "LogAppendTime"),
            Timestamp::NotAvailable => (0, "CreateTime"),
        };
        let headers = message
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
            .unwrap_or_default();
        Input {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms,
            timestamp_type,
        }
    }

    /// `topic/partition/offset`: the dedup key of a record that could not be read.
    pub fn position_key(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }

    /// Bytes of key and value, as the record-size limit counts them.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
    }

    /// The failure of a record over `max_bytes`: it is quarantined without being read.
    pub fn too_large(&self, max_bytes: usize) -> Option<Failure> {
        let size = self.size();
        (size > max_bytes).then(|| {
            Failure::data(
                "record-too-large",
                format!(
                    "record of {size} bytes (key {} bytes) is over the limit of {max_bytes} bytes (QUIRE_MAX_RECORD_BYTES); it stays at {}",
                    self.key.as_ref().map_or(0, Vec::len),
                    self.position_key()
                ),
            )
        })
    }

    pub fn key_str(&self) -> Option<String> {
        self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Headers,
    /// The partition to write to; None: the one the key hashes to.
    pub partition: Option<i32>,
}

impl OutputRecord {
    /// Bytes of key, value and headers: what the broker's size limit counts.
    pub fn size(&self) -> usize {
        self.key.len() + self.payload.len() + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
    }

    /// The record as librdkafka sends it.
    pub fn base_record(&self) -> BaseRecord<'_, String, Vec<u8>> {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            headers = headers.insert(Header { key: name, value: Some(value) });
        }
        let record = BaseRecord::to(&self.topic).key(&self.key).payload(&self.payload).headers(headers);
        match self.partition {
            Some(partition) => record.partition(partition),
            None => record,
        }
    }
}

