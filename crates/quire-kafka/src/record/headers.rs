//! The headers Quire writes on records.
//!
//! Every output carries `quire-idempotency-key` (so downstream systems can dedup) and
//! `quire-request-id`. Dead-lettered records carry Spring Kafka's DLT headers with their
//! exact encodings, so Spring-era DLQ tools read them as their own.

use quire_core::Failure;

pub const IDEMPOTENCY_KEY: &str = "quire-idempotency-key";
pub const REQUEST_ID: &str = "quire-request-id";
pub const DATASET_ID: &str = "quire-dataset-id";
/// The dedup key of the effect a record belongs to, when it is not the record's key.
pub const DEDUP_KEY: &str = "quire-dedup-key";
/// When the block first failed (8-byte big-endian epoch ms), carried through retries.
pub const FIRST_FAILED_AT: &str = "quire-first-failed-at";
/// On a dead letter whose record was too large to carry: the size of the value left out.
pub const PAYLOAD_OMITTED_BYTES: &str = "quire-payload-omitted-bytes";
/// On the audit records of an effect that has no other record (a block canceled where
/// it stood): the consumer group that wrote them, so its dedup index finds the effect.
pub const EFFECT_OWNER: &str = "quire-effect-owner";
/// W3C trace context (OpenTelemetry messaging conventions).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Spring Kafka's retry-topic headers (RetryTopicHeaders): attempts so far as a 4-byte
/// big-endian int; due time and first record's time as Java `BigInteger` bytes.
pub const RETRY_ATTEMPTS: &str = "retry_topic-attempts";
pub const RETRY_BACKOFF_TIMESTAMP: &str = "retry_topic-backoff-timestamp";
pub const RETRY_ORIGINAL_TIMESTAMP: &str = "retry_topic-original-timestamp";

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
        (DLT_EXCEPTION_MESSAGE.into(), quire_core::screen::bounded_reason(failure.reason.clone()).into_bytes()),
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
    header(headers, name).and_then(|v| String::from_utf8(v.to_vec()).ok())
}

/// The raw value of the last header called `name`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

/// Sets header `name`, replacing any earlier value.
pub fn set_header(headers: &mut Headers, name: &str, value: Vec<u8>) {
    headers.retain(|(n, _)| n != name);
    headers.push((name.to_owned(), value));
}

/// A 4-byte big-endian int header.
pub fn int_header(headers: &Headers, name: &str) -> Option<i32> {
    header(headers, name).and_then(|v| v.try_into().ok()).map(i32::from_be_bytes)
}

/// An 8-byte big-endian long header.
pub fn long_header(headers: &Headers, name: &str) -> Option<i64> {
    header(headers, name).and_then(|v| v.try_into().ok()).map(i64::from_be_bytes)
}

/// `value` as Java's `BigInteger.toByteArray()`: minimal two's complement, big-endian.
pub fn big_integer_bytes(value: i64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        let redundant = (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    bytes[start..].to_vec()
}

/// Reads [`big_integer_bytes`] back (up to 8 bytes).
pub fn big_integer_header(headers: &Headers, name: &str) -> Option<i64> {
    let v = header(headers, name)?;
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    let fill = if v[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut bytes = [fill; 8];
    bytes[8 - v.len()..].copy_from_slice(v);
    Some(i64::from_be_bytes(bytes))
}

/// A new W3C trace context: a fresh trace with one sampled span.
pub fn new_traceparent() -> String {
    format!("00-{:032x}-{:016x}-01", rand::random::<u128>() | 1, rand::random::<u64>() | 1)
}

/// A child of `parent`: the same trace and flags, a new span id. `None` if `parent` is
/// not a version-00 `traceparent`.
pub fn child_traceparent(parent: &str) -> Option<String> {
    let parts: Vec<&str> = parent.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        ["00", trace, span, flags] if hex(trace, 32) && hex(span, 16) && hex(flags, 2) => {
            Some(format!("00-{trace}-{:016x}-{flags}", rand::random::<u64>() | 1))
        }
        _ => None,
    }
}

/// A new span continuing `trace`: a child of a full `traceparent`, or a new span in the
/// trace when only its id (32 hex digits) was kept.
pub fn continue_trace(trace: &str) -> Option<String> {
    child_traceparent(trace).or_else(|| child_traceparent(&format!("00-{trace}-0000000000000001-01")))
}

/// Longest `tracestate` carried on (W3C: vendors may drop one longer than 512 characters).
const MAX_TRACESTATE_BYTES: usize = 512;

/// The W3C trace context of `headers` worth carrying to a record's outputs: a valid
/// `traceparent`, and a `tracestate` of bounded size. Anything else a writer put there
/// is left behind.
pub fn trace_context(headers: &Headers) -> Headers {
    let mut carried = Vec::new();
    if let Some(parent) = text_header(headers, TRACEPARENT).filter(|p| child_traceparent(p).is_some()) {
        carried.push((TRACEPARENT.to_owned(), parent.into_bytes()));
    }
    if let Some(state) = header(headers, TRACESTATE).filter(|s| s.len() <= MAX_TRACESTATE_BYTES) {
        carried.push((TRACESTATE.to_owned(), state.to_vec()));
    }
    carried
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(headers: &Headers) -> Option<String> {
    let value = text_header(headers, TRACEPARENT)?;
    let trace = value.split('-').nth(1)?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace.to_owned())
}

/// The headers every block output carries.
pub fn block_headers(idempotency_key: &str, request_id: &str, dataset_id: &str) -> Headers {
    vec![
        (IDEMPOTENCY_KEY.into(), idempotency_key.as_bytes().to_vec()),
        (REQUEST_ID.into(), request_id.as_bytes().to_vec()),
        (DATASET_ID.into(), dataset_id.as_bytes().to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quire_core::ErrorClass;

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
    fn big_integers_match_java() {
        // BigInteger.valueOf(v).toByteArray() for these values.
        assert_eq!(big_integer_bytes(0), vec![0]);
        assert_eq!(big_integer_bytes(127), vec![0x7f]);
        assert_eq!(big_integer_bytes(128), vec![0x00, 0x80]);
        assert_eq!(big_integer_bytes(-1), vec![0xff]);
        assert_eq!(big_integer_bytes(1_700_000_000_000), vec![0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00]);
        for v in [0, 1, -1, 255, 256, -129, 1_700_000_000_000, i64::MAX, i64::MIN] {
            let headers = vec![(RETRY_BACKOFF_TIMESTAMP.to_owned(), big_integer_bytes(v))];
            assert_eq!(big_integer_header(&headers, RETRY_BACKOFF_TIMESTAMP), Some(v), "{v}");
        }
    }

    #[test]
    fn children_keep_the_trace_and_get_a_new_span() {
        let parent = new_traceparent();
        let child = child_traceparent(&parent).unwrap();
        assert_eq!(child.len(), 55);
        assert_eq!(child[..35], parent[..35], "same version and trace id");
        assert_ne!(child[36..52], parent[36..52], "new span id");
        assert_eq!(child_traceparent("01-abc"), None);
        let continued = continue_trace("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert!(continued.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && continued.ends_with("-01"), "{continued}");
        assert_eq!(continue_trace(&parent).unwrap()[..35], parent[..35]);
        assert_eq!(continue_trace("not-a-trace"), None);
    }

    #[test]
    fn trace_ids_are_read_from_traceparent() {
        let headers = vec![(TRACEPARENT.to_owned(), b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec())];
        assert_eq!(trace_id(&headers).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id(&vec![(TRACEPARENT.to_owned(), b"garbage".to_vec())]), None);
    }

    fn origins() -> impl Strategy<Value = DltOrigin> {
        (".{0,40}", any::<i32>(), any::<i64>(), any::<i64>(), any::<bool>(), ".{0,40}").prop_map(|(topic, partition, offset, timestamp_ms, log_append, consumer_group)| DltOrigin {
            topic,
            partition,
            offset,
            timestamp_ms,
            timestamp_type: if log_append { "LogAppendTime" } else { "CreateTime" },
            consumer_group,
        })
    }

    /// Headers as a hostile writer may send them: any names (Quire's among them), any bytes.
    fn any_headers() -> impl Strategy<Value = Headers> {
        let names = prop_oneof![
            Just(DLT_ORIGINAL_TOPIC.to_owned()),
            Just(DLT_ORIGINAL_PARTITION.to_owned()),
            Just(DLT_ORIGINAL_OFFSET.to_owned()),
            Just(DLT_ORIGINAL_TIMESTAMP.to_owned()),
            Just(DLT_ORIGINAL_TIMESTAMP_TYPE.to_owned()),
            Just(DLT_ORIGINAL_CONSUMER_GROUP.to_owned()),
            Just(DLT_EXCEPTION_FQCN.to_owned()),
            Just(DLT_EXCEPTION_MESSAGE.to_owned()),
            Just(TRACEPARENT.to_owned()),
            Just(RETRY_BACKOFF_TIMESTAMP.to_owned()),
            Just(RETRY_ATTEMPTS.to_owned()),
            Just(FIRST_FAILED_AT.to_owned()),
            Just(DEDUP_KEY.to_owned()),
            ".{0,20}",
        ];
        proptest::collection::vec((names, proptest::collection::vec(any::<u8>(), 0..64)), 0..16)
    }

    proptest! {
        /// Whatever the headers, reading them never panics; a dead letter's headers
        /// only parse when every Spring header is there with its encoding.
        #[test]
        fn any_headers_read_without_panic(headers in any_headers()) {
            let _ = int_header(&headers, RETRY_ATTEMPTS);
            let _ = long_header(&headers, FIRST_FAILED_AT);
            let _ = big_integer_header(&headers, RETRY_BACKOFF_TIMESTAMP);
            let _ = text_header(&headers, DEDUP_KEY);
            if let Some(trace) = trace_id(&headers) {
                prop_assert!(trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()));
            }
            if let Ok((origin, _)) = read_dead_letter(&headers) {
                prop_assert_eq!(header(&headers, DLT_ORIGINAL_PARTITION).map(<[u8]>::len), Some(4));
                prop_assert_eq!(text_header(&headers, DLT_ORIGINAL_TOPIC), Some(origin.topic));
            }
        }

        #[test]
        fn dead_letter_headers_round_trip(origin in origins(), reason in ".{0,200}", class in 0..ErrorClass::ALL.len()) {
            let failure = Failure { class: ErrorClass::ALL[class], cause: "fuzzed", reason };
            let (read, read_failure) = read_dead_letter(&dead_letter_headers(&origin, &failure)).unwrap();
            prop_assert_eq!(read, origin);
            prop_assert_eq!(read_failure.class, failure.class);
            prop_assert_eq!(read_failure.reason, failure.reason);
        }

        #[test]
        fn big_integers_round_trip(value in any::<i64>()) {
            let headers = vec![(RETRY_BACKOFF_TIMESTAMP.to_owned(), big_integer_bytes(value))];
            prop_assert_eq!(big_integer_header(&headers, RETRY_BACKOFF_TIMESTAMP), Some(value));
        }

        /// A `traceparent` from outside never panics the parser; what comes out is
        /// always a valid version-00 context in the same trace.
        #[test]
        fn any_traceparent_continues_validly(parent in prop_oneof![".{0,80}", "00-[0-9a-fA-F]{32}-[0-9a-f]{16}-[0-9a-f]{2}", "[0-9a-f]{32}"]) {
            for child in [child_traceparent(&parent), continue_trace(&parent)].into_iter().flatten() {
                let headers = vec![(TRACEPARENT.to_owned(), child.clone().into_bytes())];
                let trace = trace_id(&headers);
                prop_assert!(trace.is_some(), "{child}");
                prop_assert!(child.starts_with("00-") && child.len() == 55, "{child}");
                prop_assert!(parent.contains(trace.unwrap().as_str()), "{child} left the trace of {parent}");
            }
        }
    }

    #[test]
    fn missing_header_is_named() {
        assert_eq!(read_dead_letter(&vec![]).unwrap_err(), "header kafka_dlt-original-partition is missing");
    }
}
