//! An engine behind an OpenAI-compatible chat completions API (vLLM, Ollama,
//! llama.cpp server, TGI, OpenAI itself): `POST {base_url}/chat/completions`.
//!
//! Each task is a prompt: `translate` asks for the block's text in its target language,
//! `language-id` for the ISO 639-1 code of its language. How the server fails decides
//! the failure's class: 429/503/timeouts are RESOURCE, other 5xx and unreachable
//! servers TRANSIENT, 413 DATA (the block is too big for the model), an answer without
//! usable text MODEL.

use crate::engine::{Engine, InferFuture, Inference};
use quire_core::records::Block;
use quire_core::Failure;
use reqwest::StatusCode;
use serde_json::json;

pub struct OpenAiEngine {
    name: String,
    client: reqwest::Client,
    base_url: String,
    model: String,
    api_key: Option<String>,
}

impl OpenAiEngine {
    pub fn new(name: &str, base_url: &str, model: &str, api_key: Option<String>) -> Self {
        OpenAiEngine {
            name: name.to_owned(),
            client: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key,
        }
    }

    /// The system prompt of `block`'s task.
    fn prompt(&self, block: &Block) -> Result<String, Failure> {
        match block.task.as_str() {
            "translate" => {
                let target = block.target_language.as_deref().ok_or_else(|| {
                    Failure::data("missing-target-language", format!("block {} asks for translate without a target_language", block.block_id))
                })?;
                let source = block.source_language.as_deref().unwrap_or("its language");
                Ok(format!("Translate the user's text from {source} into {target}. Reply with the translation only."))
            }
            "language-id" => Ok("Identify the language of the user's text. Reply with its ISO 639-1 code only.".into()),
            other => Err(Failure::data(
                "unsupported-task",
                format!("engine {} cannot do task {other:?} (block {})", self.name, block.block_id),
            )),
        }
    }

    async fn call(&self, block: &Block) -> Result<Inference, Failure> {
        let prompt = self.prompt(block)?;
        let url = format!("{}/chat/completions", self.base_url);
        let body = json!({
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": prompt},
                {"role": "user", "content": block.text},
            ],
        });
        let mut request = self.client.post(&url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let engine = &self.name;
        let response = request.send().await.map_err(|e| {
            Failure::transient("engine-unreachable", format!("engine {engine} at {url} unreachable: {e}"))
        })?;
        let status = response.status();
        if !status.is_success() {
            let detail: String = response.text().await.unwrap_or_default().chars().take(200).collect();
            let reason = format!("engine {engine} answered HTTP {status}: {detail}");
            return Err(match status {
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Failure::resource("engine-overloaded", reason),
                StatusCode::PAYLOAD_TOO_LARGE => Failure::data("block-too-large", reason),
                _ => Failure::transient("engine-error", reason),
            });
        }
        let answer: serde_json::Value = response
            .json()
            .await
            .map_err(|e| Failure::model("engine-garbage", format!("engine {engine} answered with no JSON: {e}")))?;
        let content = answer["choices"][0]["message"]["content"].as_str().map(str::trim).unwrap_or_default();
        read_answer(engine, block, content)
    }
}

/// Chat-template tokens that only appear in output when a model server is misconfigured
/// or the model degenerated.
const SPECIAL_TOKENS: [&str; 6] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "</s>", "[INST]"];

/// Turns the model's text into an inference, refusing output the task cannot use.
fn read_answer(engine: &str, block: &Block, content: &str) -> Result<Inference, Failure> {
    if content.is_empty() {
        return Err(Failure::model("empty-output", format!("engine {engine} returned no text for block {}", block.block_id)));
    }
    if let Some(token) = SPECIAL_TOKENS.iter().find(|t| content.contains(*t)) {
        return Err(Failure::model(
            "engine-garbage",
            format!("engine {engine} leaked the chat template token {token:?} into its answer for block {}", block.block_id),
        ));
    }
    if block.task == "language-id" {
        let code = content.to_ascii_lowercase();
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_lowercase()) {
            let shown: String = content.chars().take(40).collect();
            return Err(Failure::model(
                "engine-garbage",
                format!("engine {engine} answered {shown:?}, not a language code, for block {}", block.block_id),
            ));
        }
        return Ok(Inference { label: code, confidence: 1.0, text: None });
    }
    let target = block.target_language.clone().unwrap_or_default();
    Ok(Inference { label: target, confidence: 1.0, text: Some(content.to_owned()) })
}

impl Engine for OpenAiEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn infer<'a>(&'a self, block: &'a Block) -> InferFuture<'a> {
        Box::pin(self.call(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_core::{BlockState, ErrorClass};

    #[test]
    fn answers_are_checked_for_the_task() {
        let mut block = Block::fixture("b", "hello", BlockState::Processing);
        assert_eq!(read_answer("e", &block, " EN").unwrap_err().class, ErrorClass::Model, "untrimmed input is the caller's job");
        assert_eq!(read_answer("e", &block, "EN").unwrap().label, "en");
        assert_eq!(read_answer("e", &block, "This is English.").unwrap_err().cause, "engine-garbage");
        assert_eq!(read_answer("e", &block, "").unwrap_err().cause, "empty-output");
        block.task = "translate".into();
        block.target_language = Some("fr".into());
        assert_eq!(read_answer("e", &block, "bonjour<|im_end|>").unwrap_err().cause, "engine-garbage");
        let out = read_answer("e", &block, "bonjour").unwrap();
        assert_eq!((out.label.as_str(), out.text.as_deref()), ("fr", Some("bonjour")));
    }

    #[test]
    fn translate_without_target_is_bad_data() {
        let engine = OpenAiEngine::new("e", "http://127.0.0.1:1/v1", "m", None);
        let mut block = Block::fixture("b", "hello", BlockState::Processing);
        block.task = "translate".into();
        assert_eq!(engine.prompt(&block).unwrap_err().cause, "missing-target-language");
        block.task = "summarize".into();
        assert_eq!(engine.prompt(&block).unwrap_err().class, ErrorClass::Data);
    }
}
