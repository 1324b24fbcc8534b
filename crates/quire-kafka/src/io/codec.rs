//! Avro records in the Confluent wire format (magic 0, schema id, Avro body), so Kafka
//! UI, kcat and any Confluent deserializer read Quire's topics as they are.
//!
//! Schemas live in `schemas/*.avsc` and are compiled in. Each binary registers them at
//! start-up under TopicNameStrategy subjects (`<topic>-value`) with BACKWARD
//! compatibility, and again if it finds the registry has lost them (the local registry
//! keeps schemas in memory): until then, records are retried, never quarantined. The
//! converter caches failed lookups (all but network failures and 502/503); a cached
//! failure is looked up again once, so a registry that failed for a moment (a 500 from
//! its store) neither stops a stage nor makes good records look bad.

use crate::{Error, Result};
use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The schema files, by record name, in the order `topics.yaml` first names them: every
/// registrant registers them in this order, so a registry that numbers schemas in the
/// order it first sees them (the local one) gives each the same id whoever comes first.
pub const SCHEMAS: [(&str, &str); 9] = [
    ("DatasetSubmission", include_str!("../../../../schemas/DatasetSubmission.avsc")),
    ("Block", include_str!("../../../../schemas/Block.avsc")),
    ("InferenceResult", include_str!("../../../../schemas/InferenceResult.avsc")),
    ("ValidatedResult", include_str!("../../../../schemas/ValidatedResult.avsc")),
    ("StateChange", include_str!("../../../../schemas/StateChange.avsc")),
    ("DatasetControl", include_str!("../../../../schemas/DatasetControl.avsc")),
    ("InstanceHeartbeat", include_str!("../../../../schemas/InstanceHeartbeat.avsc")),
    ("QuarantineRecord", include_str!("../../../../schemas/QuarantineRecord.avsc")),
    ("LedgerEntry", include_str!("../../../../schemas/LedgerEntry.avsc")),
];

/// The text of the schema named `name`.
pub fn schema_text(name: &str) -> Result<&'static str> {
    SCHEMAS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .ok_or_else(|| Error::Other(format!("no schema named {name} in schemas/")))
}

/// The TopicNameStrategy subject of a topic's values.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Encodes and decodes records through one schema registry.
#[derive(Clone)]
pub struct Codec {
    url: String,
    http: reqwest::Client,
    encoder: Arc<AvroEncoder>,
    decoder: Arc<AvroDecoder>,
    /// What this process registered (topic, schema, id): asking for one of the ids
    /// tells whether the registry still holds what Quire put there, and it is
    /// registered again if the registry lost it.
    registered: Arc<Mutex<Vec<(String, String, u32)>>>,
}

impl Codec {
    pub fn new(url: &str) -> Result<Self> {
        apache_avro::util::max_allocation_bytes(crate::record::MAX_VALUE_BYTES);
        let url = url.trim_end_matches('/').to_owned();
        let settings = SrSettings::new_builder(url.clone())
            .set_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Registry { url: url.clone(), message: e.to_string() })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Registry { url: url.clone(), message: e.to_string() })?;
        Ok(Codec {
            url,
            http,
            encoder: Arc::new(AvroEncoder::new(settings.clone())),
            decoder: Arc::new(AvroDecoder::new(settings)),
            registered: Arc::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn registry_error(&self, message: impl ToString) -> Error {
        Error::Registry { url: self.url.clone(), message: message.to_string() }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value> {
        let response = request
            .header("Content-Type", CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| self.registry_error(e))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(self.registry_error(format!("HTTP {status}: {body}")))
        }
    }

    /// Sets BACKWARD compatibility on the topic's value subject and registers `schema`
    /// there; returns its id. Registering an unchanged schema again returns the same id;
    /// a schema that breaks compatibility is refused with the registry's reason.
    pub async fn register(&self, topic: &str, schema: &str) -> Result<u32> {
        Schema::parse_str(schema).map_err(|e| self.registry_error(format!("schema for {topic} does not parse: {e}")))?;
        let subject = value_subject(topic);
        self.call(self.http.put(format!("{}/config/{subject}", self.url)).json(&serde_json::json!({"compatibility": "BACKWARD"})))
            .await?;
        let body = self
            .call(self.http.post(format!("{}/subjects/{subject}/versions", self.url)).json(&serde_json::json!({"schema": schema})))
            .await?;
        let id = body["id"].as_u64().map(|id| id as u32).ok_or_else(|| self.registry_error(format!("no id in {body}")))?;
        let mut registered = self.registered.lock().expect("registered schemas");
        if !registered.iter().any(|(t, text, _)| t == topic && text == schema) {
            registered.push((topic.to_owned(), schema.to_owned(), id));
        }
        Ok(id)
    }

    /// Whether the registry lost the schemas this process registered (it restarted
    /// empty); if so, registers them again, in the order they were first registered
    /// (so a registry that numbers schemas in order gives them their old ids), and
    /// forgets the lookups that failed meanwhile. Ok(false): nothing was lost.
    ///
    /// `topic` is the topic an encoding found no subject for, if any: it is asked
    /// about, because a registry whose ids were given back after a restart (`quire
    /// stack restart registry` pins them) lacks the subjects, some of which others may
    /// have registered again already.
    async fn recover_lost_schemas(&self, topic: Option<&str>) -> Result<bool> {
        let registered = self.registered.lock().expect("registered schemas").clone();
        let Some((_, _, first_id)) = registered.first() else { return Ok(false) };
        let lost = match topic {
            Some(topic) if registered.iter().any(|(t, _, _)| t == topic) => !self.has_subject(topic).await?,
            _ => !self.knows(*first_id).await?,
        };
        if !lost {
            return Ok(false);
        }
        tracing::warn!(registry = %self.url, schemas = registered.len(), "the registry lost the schemas this process registered: registering them again");
        for (topic, schema, _) in &registered {
            self.register(topic, schema).await?;
        }
        self.decoder.remove_errors_from_cache();
        self.encoder.remove_errors_from_cache();
        Ok(true)
    }

    /// Whether the registry holds schema `id`; an error if it cannot say.
    async fn knows(&self, id: u32) -> Result<bool> {
        self.exists(format!("schemas/ids/{id}")).await
    }

    /// Whether the registry has a version of `topic`'s value subject.
    async fn has_subject(&self, topic: &str) -> Result<bool> {
        self.exists(format!("subjects/{}/versions/latest", value_subject(topic))).await
    }

    /// Whether `GET <registry>/<path>` finds something (200) or not (404); an error if
    /// the registry cannot say.
    async fn exists(&self, path: String) -> Result<bool> {
        let response = self.http.get(format!("{}/{path}", self.url)).send().await.map_err(|e| self.registry_error(e))?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(self.registry_error(format!("HTTP {status} for {path}"))),
        }
    }

    /// Why a value written with schema `id` could not be decoded (`message`): bad bytes
    /// or an id nobody registered are bad data; a registry that cannot answer, or that
    /// lost the schemas this process registered (restarted empty, then given them
    /// again here), is a registry failure, retried, never a reason to quarantine good
    /// records.
    async fn refusal(&self, id: u32, message: String) -> Error {
        match self.knows(id).await {
            Err(unreachable) => return unreachable,
            Ok(true) => return Error::Decode(message),
            Ok(false) => {}
        }
        match self.recover_lost_schemas(None).await {
            Ok(false) => Error::Decode(format!("unknown schema id {id}: the registry at {} has no such schema", self.url)),
            Ok(true) => self.registry_error(format!("it had lost its schemas (restarted?) and has them again; schema id {id} is looked up anew")),
            Err(unreachable) => unreachable,
        }
    }

    /// Whether `schema` is compatible with the latest version registered for `topic`.
    pub async fn is_compatible(&self, topic: &str, schema: &str) -> Result<bool> {
        let subject = value_subject(topic);
        let request = self
            .http
            .post(format!("{}/compatibility/subjects/{subject}/versions/latest", self.url))
            .json(&serde_json::json!({"schema": schema}))
            .header("Content-Type", CONTENT_TYPE);
        let response = request.send().await.map_err(|e| self.registry_error(e))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        match body.get("is_compatible").and_then(|v| v.as_bool()) {
            Some(ok) => Ok(ok),
            // Some registries answer an incompatible schema with 409 and no body field.
            None if status.as_u16() == 409 => Ok(false),
            None => Err(self.registry_error(format!("HTTP {status}: {body}"))),
        }
    }

    /// Whether the registry answers.
    pub async fn ping(&self) -> Result<()> {
        self.call(self.http.get(format!("{}/subjects", self.url))).await.map(|_| ())
    }

    /// Encodes `record` for `topic` with the latest schema of `<topic>-value`.
    pub async fn encode<T: Serialize>(&self, topic: &str, record: &T) -> Result<Vec<u8>> {
        let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_owned(), false);
        let encoded = match self.encoder.encode_struct(record, &strategy).await {
            // The converter keeps failed lookups, a registry's 500 for a moment
            // included: one is asked anew before it counts.
            Err(e) if e.cached => {
                self.encoder.remove_errors_from_cache();
                self.encoder.encode_struct(record, &strategy).await
            }
            other => other,
        };
        match encoded {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.retriable => Err(self.registry_error(e)),
            // A registry that restarted empty knows no subject: the schemas come back
            // and the record is retried, it is not unencodable.
            Err(e) => match self.recover_lost_schemas(Some(topic)).await? {
                true => Err(self.registry_error(format!("it had lost its schemas (restarted?) and has them again: {e}"))),
                false => Err(Error::Encode { topic: topic.to_owned(), message: e.to_string() }),
            },
        }
    }

    /// Decodes a Confluent wire-format value into `T`.
    pub async fn decode<T: DeserializeOwned>(&self, bytes: Option<&[u8]>) -> Result<T> {
        let bytes = bytes.ok_or_else(|| Error::Decode("record has no value".into()))?;
        if !is_wire_format(bytes) {
            return Err(Error::Decode("value is not in the Confluent wire format (magic byte 0, schema id)".into()));
        }
        let id = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
        let decoded = match self.decoder.decode(Some(bytes)).await {
            // The converter keeps failed lookups, a registry's 500 for a moment
            // included: one is asked anew before it counts.
            Err(e) if e.cached => {
                self.decoder.remove_errors_from_cache();
                self.decoder.decode(Some(bytes)).await
            }
            other => other,
        };
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(e) if e.retriable => return Err(self.registry_error(e)),
            Err(e) => return Err(self.refusal(id, e.to_string()).await),
        };
        apache_avro::from_value::<T>(&decoded.value).map_err(|e| {
            let written = decoded.name.as_ref().map(|n| n.fullname(None)).unwrap_or_else(|| "an unnamed schema".into());
            let wanted = std::any::type_name::<T>().rsplit("::").next().unwrap_or("?");
            Error::Decode(format!("wrong schema: value written with schema id {id} ({written}), which does not read as quire.{wanted}: {e}"))
        })
    }
}

/// The Confluent wire format: magic byte 0, a four-byte schema id, then the value.
pub fn is_wire_format(bytes: &[u8]) -> bool {
    bytes.len() >= 5 && bytes[0] == 0
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("url", &self.url).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_parses() {
        for (name, text) in SCHEMAS {
            let schema = Schema::parse_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(schema.canonical_form().contains(&format!("quire.{name}")), "{name}");
        }
    }

    #[test]
    fn inference_result_embeds_the_block_schema_unchanged() {
        let block = Schema::parse_str(schema_text("Block").unwrap()).unwrap();
        let result: serde_json::Value = serde_json::from_str(schema_text("InferenceResult").unwrap()).unwrap();
        let embedded = Schema::parse_str(&result["fields"][0]["type"].to_string()).unwrap();
        assert_eq!(block.canonical_form(), embedded.canonical_form());
    }

    /// Encodes `value` with the schema `name` and reads it back.
    #[allow(deprecated)] // the datum helpers are the shortest way to a round trip
    fn round_trip<T: Serialize + DeserializeOwned>(name: &str, value: &T) -> T {
        let schema = Schema::parse_str(schema_text(name).unwrap()).unwrap();
        let resolved = apache_avro::to_value(value).unwrap().resolve(&schema).unwrap();
        let bytes = apache_avro::to_avro_datum(&schema, resolved).unwrap();
        let back = apache_avro::from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap();
        apache_avro::from_value::<T>(&back).unwrap()
    }

    #[test]
    fn domain_records_encode_with_their_schema() {
        use quire_core::records::*;
        use quire_core::BlockState;
        let block = Block { source_language: Some("en".into()), ..Block::fixture("b", "hello", BlockState::Queued) };
        assert_eq!(round_trip("Block", &block), block);
    }

    /// A registry double on loopback serving `DatasetSubmission` as id 1 and `Block` as
    /// id 2; every other id is unknown (404), as a registry answers a forged one.
    fn registry_double() -> &'static (tokio::runtime::Runtime, Codec) {
        static DOUBLE: std::sync::OnceLock<(tokio::runtime::Runtime, Codec)> = std::sync::OnceLock::new();
        DOUBLE.get_or_init(|| {
            use axum::{extract::Path, http::StatusCode, routing::get, Json, Router};
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let url = runtime.block_on(async {
                let app = Router::new().route(
                    "/schemas/ids/{id}",
                    get(|Path(id): Path<u32>| async move {
                        let name = match id {
                            1 => "DatasetSubmission",
                            2 => "Block",
                            _ => return Err(StatusCode::NOT_FOUND),
                        };
                        Ok(Json(serde_json::json!({ "schema": schema_text(name).unwrap() })))
                    }),
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let url = format!("http://{}", listener.local_addr().unwrap());
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
                url
            });
            let codec = Codec::new(&url).unwrap();
            (runtime, codec)
        })
    }

    /// `value` in the Confluent wire format under schema id `id`.
    #[allow(deprecated)]
    fn wire<T: Serialize>(id: u32, name: &str, value: &T) -> Vec<u8> {
        let schema = Schema::parse_str(schema_text(name).unwrap()).unwrap();
        let body = apache_avro::to_avro_datum(&schema, apache_avro::to_value(value).unwrap().resolve(&schema).unwrap()).unwrap();
        [vec![0], id.to_be_bytes().to_vec(), body].concat()
    }

    fn submission(text: String, document_id: String) -> quire_core::records::DatasetSubmission {
        quire_core::records::DatasetSubmission {
            dataset_id: "d".into(),
            document_id,
            idempotency_key: "k".into(),
            document_index: 0,
            document_count: 1,
            text,
            source_language: None,
            target_language: Some("fr".into()),
            task: "translate".into(),
            request_id: "r".into(),
            submitted_at_ms: 1,
        }
    }

    use proptest::prelude::*;

    /// Values as a hostile writer sends them: any bytes, the right magic byte and a
    /// known or unknown id before random or almost-right Avro, another record's schema.
    fn hostile_values() -> impl Strategy<Value = Vec<u8>> {
        let valid = ("\\PC{0,60}", "\\PC{0,10}").prop_map(|(t, d)| wire(1, "DatasetSubmission", &submission(t, d)));
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            (0u32..4, proptest::collection::vec(any::<u8>(), 0..120)).prop_map(|(id, body)| [vec![0], id.to_be_bytes().to_vec(), body].concat()),
            (valid.clone(), any::<proptest::sample::Index>(), any::<u8>()).prop_map(|(mut v, i, b)| {
                let at = 5 + i.index(v.len() - 5);
                v[at] = b;
                v
            }),
            (valid, any::<proptest::sample::Index>()).prop_map(|(v, i)| v[..i.index(v.len())].to_vec()),
            "\\PC{0,40}".prop_map(|t| wire(2, "Block", &quire_core::records::Block::fixture("blk-1", &t, quire_core::BlockState::Queued))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The ingest decoder takes any value: it never panics, and whatever it refuses
        /// it refuses as bad data (quarantined), never as a registry failure (retried
        /// for ever), an unknown schema id included.
        #[test]
        fn the_ingest_decoder_refuses_hostile_values_as_data(value in hostile_values()) {
            let (runtime, codec) = registry_double();
            match runtime.block_on(codec.decode::<quire_core::records::DatasetSubmission>(Some(&value))) {
                Ok(decoded) => {
                    // Accepted: then it is a real submission, which reads back as itself.
                    let again = runtime.block_on(codec.decode::<quire_core::records::DatasetSubmission>(Some(&wire(1, "DatasetSubmission", &decoded))));
                    prop_assert_eq!(again.unwrap(), decoded);
                }
                Err(e) => prop_assert!(matches!(e, Error::Decode(_)), "refused as {e:?}"),
            }
        }

        /// Every submission reads back as written, and none of its truncations reads.
        #[test]
        fn submissions_round_trip_and_truncations_do_not(text in "\\PC{0,200}", document_id in "\\PC{0,20}", cut: proptest::sample::Index) {
            let (runtime, codec) = registry_double();
            let record = submission(text, document_id);
            let value = wire(1, "DatasetSubmission", &record);
            prop_assert_eq!(runtime.block_on(codec.decode::<quire_core::records::DatasetSubmission>(Some(&value))).unwrap(), record);
            let truncated = &value[..cut.index(value.len())];
            prop_assert!(runtime.block_on(codec.decode::<quire_core::records::DatasetSubmission>(Some(truncated))).is_err());
        }
    }

    #[test]
    fn ledger_entries_encode_with_their_schema() {
        let entry = quire_core::ledger::LedgerEntry {
            stage: "inference".into(),
            key: "blk-1#g0@a0".into(),
            generation: 0,
            fingerprint: "sha256:00".into(),
            state: Some(quire_core::BlockState::Validating),
            output_keys: vec!["blk-1".into()],
            input_topic: "quire.blocks.queued".into(),
            input_partition: 3,
            input_offset: 42,
            recorded_at_ms: 7,
        };
        assert_eq!(round_trip("LedgerEntry", &entry), entry);
    }

    #[test]
    fn quarantine_payloads_are_avro_bytes() {
        use quire_core::records::*;
        let record = QuarantineRecord {
            key: "blk-1".into(),
            dataset_id: Some("d".into()),
            block_id: Some("blk-1".into()),
            original_topic: "t".into(),
            original_partition: 1,
            original_offset: 2,
            error_class: "DATA".into(),
            exception_fqcn: "quire.DataError".into(),
            reason: "r".into(),
            failed_stage: "inference".into(),
            instance_id: "0".into(),
            quarantined_at_ms: 3,
            cause: "c".into(),
            attempts: 2,
            first_failed_at_ms: 1,
            last_failed_at_ms: 2,
            trace_id: None,
            payload: Some(vec![0, 1, 255]),
            status: QUARANTINED.into(),
            replayed_at_ms: None,
            replayed_by: None,
        };
        assert_eq!(round_trip("QuarantineRecord", &record), record);
    }
}
