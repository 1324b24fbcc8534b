//! The headers Quire writes on records.
//!
//! Every output carries `quire-idempotency-key` (so downstream systems can dedup) and
//! `quire-request-id`. Dead-lettered records carry Spring Kafka's DLT headers with their
//! exact encodings, so Spring-era DLQ tools read them as their own.

use quire_core::Failure;

pub const IDEMPOTENCY_KEY: &str = "quire-idempotency-key";
pub const REQUEST_ID: &str = "quire-request-id";
pub const DATASET_ID: &str = "quire-dataset-id";

pub const DLT_ORIGINAL_TOPIC: &str = "kafka_dlt-original-topic";
pub const DLT_ORIGINAL_PARTITION: &str = "kafka_dlt-original-partition";
pub const DLT_ORIGINAL_OFFSET: &str = "kafka_dlt-original-offset";
pub const DLT_ORIGINAL_TIMESTAMP: &str = "kafka_dlt-original-timestamp";
pub const DLT_ORIGINAL_TIMESTAMP_TYPE: &str = "kafka_dlt-original-timestamp-type";
pub const DLT_ORIGINAL_CONSUMER_GROUP: &str = "kafka_dlt-original-consumer-group";
pub const DLT_EXCEPTION_FQCN: &str = "kafka_dlt-exception-fqcn";
pub const DLT_EXCEPTION_CAUSE_FQCN: &str = "kafka_dlt-exception-cause-fqcn";
pub const DLT_EXCEPTION_MESSAGE: &str = "kafka_dlt-exception-message";

/// A record's headers as owned name/value pairs, in order.
pub type Headers = Vec<(String, Vec<u8>)>;

/// Where a dead-lettered record came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DltOrigin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub timestamp_type: &'static str,
    pub consumer_group: String,
}

/// The Spring DLT headers for a record that failed with `failure`.
pub fn dead_letter_headers(origin: &DltOrigin, failure: &Failure) -> Headers {
    vec![
        (DLT_ORIGINAL_TOPIC.into(), origin.topic.as_bytes().to_vec()),
        (DLT_ORIGINAL_PARTITION.into(), origin.partition.to_be_bytes().to_vec()),
        (DLT_ORIGINAL_OFFSET.into(), origin.offset.to_be_bytes().to_vec()),
        (DLT_ORIGINAL_TIMESTAMP.into(), origin.timestamp_ms.to_be_bytes().to_vec()),
        (DLT_ORIGINAL_TIMESTAMP_TYPE.into(), origin.timestamp_type.as_bytes().to_vec()),
        (DLT_ORIGINAL_CONSUMER_GROUP.into(), origin.consumer_group.as_bytes().to_vec()),
        (DLT_EXCEPTION_FQCN.into(), failure.class.fqcn().as_bytes().to_vec()),
        (DLT_EXCEPTION_CAUSE_FQCN.into(), format!("quire.{}", failure.cause).into_bytes()),
        (DLT_EXCEPTION_MESSAGE.into(), failure.reason.as_bytes().to_vec()),
    ]
}

/// Reads the DLT headers back; `None` names the first header that is missing or malformed.
pub fn read_dead_letter(headers: &Headers) -> Result<(DltOrigin, Failure), String> {
    let get = |name: &str| -> Result<&[u8], String> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| format!("header {name} is missing"))
    };
    let text = |name: &str| -> Result<String, String> {
        String::from_utf8(get(name)?.to_vec()).map_err(|_| format!("header {name} is not UTF-8"))
    };
    let fixed = |name: &str, len: usize| -> Result<Vec<u8>, String> {
        let v = get(name)?;
        (v.len() == len).then(|| v.to_vec()).ok_or_else(|| format!("header {name} is not {len} bytes"))
    };
    let partition = i32::from_be_bytes(fixed(DLT_ORIGINAL_PARTITION, 4)?.try_into().expect("4 bytes"));
    let offset = i64::from_be_bytes(fixed(DLT_ORIGINAL_OFFSET, 8)?.try_into().expect("8 bytes"));
    let timestamp_ms = i64::from_be_bytes(fixed(DLT_ORIGINAL_TIMESTAMP, 8)?.try_into().expect("8 bytes"));
    let fqcn = text(DLT_EXCEPTION_FQCN)?;
    let class = quire_core::ErrorClass::from_fqcn(&fqcn).unwrap_or(quire_core::ErrorClass::Data);
    let origin = DltOrigin {
        topic: text(DLT_ORIGINAL_TOPIC)?,
        partition,
        offset,
        timestamp_ms,
        timestamp_type: if text(DLT_ORIGINAL_TIMESTAMP_TYPE)? == "LogAppendTime" { "LogAppendTime" } else { "CreateTime" },
        consumer_group: text(DLT_ORIGINAL_CONSUMER_GROUP)?,
    };
    let failure = Failure { class, cause: "dead-lettered", reason: text(DLT_EXCEPTION_MESSAGE)? };
    Ok((origin, failure))
}

/// The value of header `name`, as UTF-8.
pub fn text_header(headers: &Headers, name: &str) -> Option<String> {
    headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| String::from_utf8(v.clone()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlt_headers_use_spring_encodings_and_round_trip() {
        let origin = DltOrigin {
            topic: "quire.blocks.queued".into(),
            partition: 2,
            offset: 7,
            timestamp_ms: 1_700_000_000_000,
            timestamp_type: "CreateTime",
            consumer_group: "quire-inference".into(),
        };
        let failure = Failure::data("no-language-detected", "block b has no language");
        let headers = dead_letter_headers(&origin, &failure);
        let partition = &headers.iter().find(|(n, _)| n == DLT_ORIGINAL_PARTITION).unwrap().1;
        assert_eq!(partition, &vec![0, 0, 0, 2]);
        assert_eq!(text_header(&headers, DLT_EXCEPTION_FQCN).as_deref(), Some("quire.DataError"));
        let (read_origin, read_failure) = read_dead_letter(&headers).unwrap();
        assert_eq!(read_origin, origin);
        assert_eq!(read_failure.reason, failure.reason);
        assert_eq!(read_failure.class, failure.class);
    }

    #[test]
    fn missing_header_is_named() {
        assert_eq!(read_dead_letter(&vec![]).unwrap_err(), "header kafka_dlt-original-partition is missing");
    }
}
