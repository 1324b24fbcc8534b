//! A model server for fault tests: speaks the OpenAI chat completions API like vLLM or
//! Ollama, and fails the way a test tells it to.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Translates (prefixes the text with `[<target>] `), or names the language `en`.
    Healthy,
    /// HTTP 500 to everything.
    Failing,
    /// HTTP 503 to everything.
    Overloaded,
    /// Answers after this long.
    Slow(Duration),
    /// Answers 200 with text no task can use.
    Garbage,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Option<Behaviour>>,
    /// Calls answered with failures before `behaviour` applies.
    fail_first: AtomicUsize,
    calls: AtomicUsize,
}

/// A running model server; it stops when dropped.
pub struct ModelServer {
    pub url: String,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ModelServer {
    pub fn start(behaviour: Behaviour) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let shared = Arc::new(Shared { behaviour: Mutex::new(Some(behaviour)), ..Shared::default() });
        let app = Router::new().route("/v1/chat/completions", post(answer)).with_state(shared.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind model server");
        let url = format!("http://{}/v1", listener.local_addr().expect("address"));
        runtime.spawn(async move { axum::serve(listener, app).await });
        ModelServer { url, shared, runtime: Some(runtime) }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = Some(behaviour);
    }

    /// Fails (HTTP 500) the next `calls` calls, then behaves as set.
    pub fn fail_first(&self, calls: usize) {
        self.shared.fail_first.store(calls, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn answer(State(shared): State<Arc<Shared>>, Json(request): Json<Value>) -> (StatusCode, Json<Value>) {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let failing_first = shared.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let behaviour = if failing_first { Behaviour::Failing } else { shared.behaviour.lock().unwrap().clone().expect("behaviour") };
    let system = request["messages"][0]["content"].as_str().unwrap_or_default().to_owned();
    let text = request["messages"][1]["content"].as_str().unwrap_or_default().to_owned();
    let content = match behaviour {
        Behaviour::Failing => return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "model crashed"}))),
        Behaviour::Overloaded => return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "overloaded"}))),
        Behaviour::Garbage => "<|endoftext|><|endoftext|> as an AI model I".to_owned(),
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            healthy(&system, &text)
        }
        Behaviour::Healthy => healthy(&system, &text),
    };
    let body = json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]});
    (StatusCode::OK, Json(body))
}

fn healthy(system: &str, text: &str) -> String {
    match system.split(" into ").nth(1) {
        Some(rest) => format!("[{}] {text}", rest.split('.').next().unwrap_or_default()),
        None => "en".into(),
    }
}
