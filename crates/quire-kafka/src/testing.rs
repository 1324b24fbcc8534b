//! Doubles for the stages' unit tests, so a stage's `process` runs as it does in the
//! loop without a broker: a schema registry on loopback that holds Quire's schemas as
//! the binaries register them (and can be made to fail), a model server that answers
//! as each block's text asks, and records handed over as the loop hands them.

use crate::config::KafkaArgs;
use crate::io::topics::register_all_schemas;
use crate::pipeline::{Effect, Reading, Stage, StageContext, StageError};
use crate::record::headers::Headers;
use crate::record::{Input, OutputRecord};
use crate::Codec;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use quire_core::StageName;
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The runtime the doubles serve on; tests drive their futures with [`block_on`].
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("test runtime"))
}

/// Runs `future` to its end on the doubles' runtime.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// Serves `app` on a loopback port; returns its URL.
fn serve(app: Router) -> String {
    block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("double serves") });
        url
    })
}

/// What a registry double holds: schema texts (id = position + 1) and each subject's
/// versions, as Confluent numbers them (one id per distinct schema).
#[derive(Default)]
struct Held {
    schemas: Vec<String>,
    subjects: BTreeMap<String, Vec<u32>>,
}

#[derive(Default)]
struct RegistryState {
    held: Mutex<Held>,
    /// While set, every call fails as a Confluent registry's do when its backing store
    /// is unavailable (500, error code 50001).
    down: AtomicBool,
}

/// A Confluent-compatible registry on loopback, in memory.
pub(crate) struct RegistryDouble {
    pub url: String,
    state: Arc<RegistryState>,
}

fn not_found(code: u32, message: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error_code": code, "message": message}))).into_response()
}

/// A store error while the registry is down, else what `answer` says.
fn unless_down(state: &RegistryState, answer: impl FnOnce(&mut Held) -> Response) -> Response {
    if state.down.load(Ordering::SeqCst) {
        let body = json!({"error_code": 50001, "message": "Error in the backend data store"});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
    }
    answer(&mut state.held.lock().expect("registry double"))
}

impl RegistryDouble {
    /// A new, empty registry of its own.
    pub fn start() -> Self {
        let state = Arc::new(RegistryState::default());
        let app = Router::new()
            .route("/subjects", get(|State(s): State<Arc<RegistryState>>| async move {
                unless_down(&s, |held| Json(held.subjects.keys().cloned().collect::<Vec<_>>()).into_response())
            }))
            .route("/config/{subject}", put(|State(s): State<Arc<RegistryState>>| async move {
                unless_down(&s, |_| Json(json!({"compatibility": "BACKWARD"})).into_response())
            }))
            .route("/subjects/{subject}/versions", post(|State(s): State<Arc<RegistryState>>, Path(subject): Path<String>, body: String| async move {
                unless_down(&s, |held| {
                    let Some(schema) = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|b| b["schema"].as_str().map(str::to_owned)) else {
                        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error_code": 42201, "message": "no schema"}))).into_response();
                    };
                    let id = match held.schemas.iter().position(|s| *s == schema) {
                        Some(at) => at as u32 + 1,
                        None => {
                            held.schemas.push(schema);
                            held.schemas.len() as u32
                        }
                    };
                    let versions = held.subjects.entry(subject).or_default();
                    if !versions.contains(&id) {
                        versions.push(id);
                    }
                    Json(json!({"id": id})).into_response()
                })
            }))
            .route("/subjects/{subject}/versions/latest", get(|State(s): State<Arc<RegistryState>>, Path(subject): Path<String>| async move {
                unless_down(&s, |held| match held.subjects.get(&subject).and_then(|v| v.last().map(|id| (v.len(), *id))) {
                    Some((version, id)) => Json(json!({
                        "subject": subject, "version": version, "id": id, "schema": held.schemas[id as usize - 1],
                    }))
                    .into_response(),
                    None => not_found(40401, "Subject not found"),
                })
            }))
            .route("/schemas/ids/{id}", get(|State(s): State<Arc<RegistryState>>, Path(id): Path<u32>| async move {
                unless_down(&s, |held| match id.checked_sub(1).and_then(|at| held.schemas.get(at as usize)) {
                    Some(schema) => Json(json!({"schema": schema})).into_response(),
                    None => not_found(40403, "Schema not found"),
                })
            }))
            .with_state(state.clone());
        RegistryDouble { url: serve(app), state }
    }

    /// A codec on this registry, every topic's schema registered as a binary registers
    /// them at start-up.
    pub fn codec(&self) -> Codec {
        let codec = Codec::new(&self.url).expect("codec");
        block_on(register_all_schemas(&codec, &self.args())).expect("schemas register");
        codec
    }

    /// Makes every call fail, or answer again.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Kafka arguments naming this registry (topic prefix `quire`).
    pub fn args(&self) -> KafkaArgs {
        KafkaArgs { schema_registry_url: self.url.clone(), topic_prefix: "quire".into(), ..KafkaArgs::default() }
    }

    /// The context of `stage` on this registry, following no control topic.
    pub fn context(&self, stage: StageName) -> StageContext {
        StageContext { codec: self.codec(), ..StageContext::ignoring_cancellations(stage, &self.args()).expect("stage context") }
    }
}

/// The registry every test shares (none of them takes it down).
pub(crate) fn registry() -> &'static RegistryDouble {
    static SHARED: OnceLock<RegistryDouble> = OnceLock::new();
    SHARED.get_or_init(RegistryDouble::start)
}

/// A codec on the shared registry, for the tests' own encoding and decoding.
pub(crate) fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| registry().codec())
}

/// `value` encoded for `topic` in the wire format, as a producer writes it.
pub(crate) fn encoded<T: serde::Serialize>(topic: &str, value: &T) -> Vec<u8> {
    block_on(codec().encode(topic, value)).expect("test value encodes")
}

/// `record`'s value, decoded.
pub(crate) fn decoded<T: serde::de::DeserializeOwned>(record: &OutputRecord) -> T {
    block_on(codec().decode(Some(&record.payload))).expect("output decodes")
}

/// An OpenAI-compatible model server on loopback. A user message `status <code>` is
/// answered with that HTTP status, `say <text>` with `<text>`; anything else with `en`.
pub(crate) fn model_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let app = Router::new().route("/v1/chat/completions", post(|Json(body): Json<serde_json::Value>| async move {
            let text = body["messages"][1]["content"].as_str().unwrap_or_default().to_owned();
            if let Some(code) = text.strip_prefix("status ").and_then(|c| c.trim().parse::<u16>().ok()) {
                let status = StatusCode::from_u16(code).expect("status code");
                return (status, format!("asked for {code}")).into_response();
            }
            let answer = text.strip_prefix("say ").unwrap_or("en");
            Json(json!({"choices": [{"message": {"role": "assistant", "content": answer}}]})).into_response()
        }));
        serve(app)
    })
}

/// A one-document submission of dataset `ds-1` under idempotency key `key`.
pub(crate) fn submission(key: &str, text: &str) -> quire_core::records::DatasetSubmission {
    quire_core::records::DatasetSubmission {
        dataset_id: "ds-1".into(),
        document_id: "doc-1".into(),
        idempotency_key: key.into(),
        document_index: 0,
        document_count: 1,
        text: text.into(),
        source_language: None,
        target_language: None,
        task: "language-id".into(),
        request_id: "req-1".into(),
        submitted_at_ms: 1,
    }
}

/// The first block the claimer queues for a document of `text`: a block as real as
/// the claimer makes them (its id is its idempotency key's).
pub(crate) fn queued_block(text: &str) -> quire_core::records::Block {
    crate::stages::claimer::blocks_of(&submission("sub-1", text), 600, 1).remove(0)
}

/// The records of `effect` as the loop writes them, each stamped with its dedup key.
pub(crate) fn as_written(effect: &Effect) -> Vec<OutputRecord> {
    let mut records = effect.writes.records.clone();
    for record in &mut records {
        crate::record::headers::set_header(&mut record.headers, crate::record::headers::DEDUP_KEY, effect.dedup_key.as_bytes().to_vec());
    }
    records
}

/// `value` on `topic` at `offset` of partition 0, as the loop hands a record to a stage.
pub(crate) fn input(topic: &str, offset: i64, key: Option<&str>, payload: Option<Vec<u8>>, headers: Headers) -> Input {
    Input {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        key: key.map(|k| k.as_bytes().to_vec()),
        payload,
        headers,
        timestamp_ms: 1_700_000_000_000,
        timestamp_type: "CreateTime",
    }
}

/// `record`, once produced, consumed by the next stage at `offset`.
pub(crate) fn consumed(record: &OutputRecord, offset: i64) -> Input {
    input(&record.topic, offset, Some(&record.key), Some(record.payload.clone()), record.headers.clone())
}

/// The records of `effects` written to `topic`, in order.
pub(crate) fn written<'a>(effects: &'a [Effect], topic: &str) -> Vec<&'a OutputRecord> {
    effects.iter().flat_map(|e| &e.writes.records).filter(|r| r.topic == topic).collect()
}

/// The audit records of `effects`, decoded: (block id, from, to) of each transition.
pub(crate) fn transitions(effects: &[Effect]) -> Vec<(String, quire_core::BlockState, quire_core::BlockState)> {
    written(effects, "quire.block-events")
        .into_iter()
        .map(|r| {
            let change: quire_core::records::StateChange = decoded(r);
            assert_eq!(r.key, change.block_id, "an audit record is keyed by its block");
            (change.block_id, change.from_state, change.to_state)
        })
        .collect()
}

/// What `stage` makes of `input` as the loop would with an empty ledger: read, then
/// processed (an unreadable input is its dead letter).
pub(crate) async fn processed<S: Stage>(stage: &mut S, input: &Input) -> Result<Vec<Effect>, StageError> {
    match stage.read(input).await? {
        Reading::Unreadable(failure) => Ok(vec![stage.context().unreadable(input, &failure)]),
        Reading::Read { work, .. } => stage.process(input, work).await,
    }
}
