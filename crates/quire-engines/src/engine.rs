//! The engine trait and the built-in engines.
//!
//! An engine turns a block into an [`Inference`]. The built-in engine is a real offline
//! model (language identification, lingua's models compiled in); the noop engine exists
//! only to measure the pipeline itself in benchmarks. Engines classify their own
//! failures ([`Failure`]): the chain decides from the class what to do next.

use quire_core::records::Block;
use quire_core::Failure;
use std::future::Future;
use std::pin::Pin;

/// What an engine concluded about one block.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// A label: the language code for `language-id`, the target language for `translate`.
    pub label: String,
    pub confidence: f64,
    /// Produced text, for tasks that produce text (`translate`).
    pub text: Option<String>,
}

/// The future an engine returns.
pub type InferFuture<'a> = Pin<Box<dyn Future<Output = Result<Inference, Failure>> + Send + 'a>>;

/// A model that processes blocks. Implementations should be deterministic for a given
/// block so that a replayed block yields the same output.
pub trait Engine: Send + Sync {
    /// Name written into results and used in configuration, e.g. `lingua`.
    fn name(&self) -> &str;
    fn infer<'a>(&'a self, block: &'a Block) -> InferFuture<'a>;
}

/// Labels every block `noop` with confidence 1: for benchmarks only.
#[derive(Debug)]
pub struct NoopEngine {
    name: String,
}

impl NoopEngine {
    pub fn new(name: &str) -> Self {
        NoopEngine { name: name.to_owned() }
    }
}

impl Engine for NoopEngine {
    fn name(&self) -> &str {
        &self.name
    }
    fn infer<'a>(&'a self, _block: &'a Block) -> InferFuture<'a> {
        Box::pin(async { Ok(Inference { label: "noop".into(), confidence: 1.0, text: None }) })
    }
}

#[cfg(feature = "language-id")]
pub use language_id::LanguageIdEngine;

#[cfg(feature = "language-id")]
mod language_id {
    use super::*;
    use lingua::{LanguageDetector, LanguageDetectorBuilder};
    use std::sync::Arc;

    /// Identifies a block's language with lingua (offline, models compiled in). The
    /// label is the ISO 639-1 code; a block in no known language is a data error.
    pub struct LanguageIdEngine {
        name: String,
        detector: Arc<LanguageDetector>,
    }

    impl LanguageIdEngine {
        /// Loads the models (a second or so: call it off the async runtime).
        pub fn new(name: &str) -> Self {
            let detector = LanguageDetectorBuilder::from_all_languages().with_preloaded_language_models().build();
            LanguageIdEngine { name: name.to_owned(), detector: Arc::new(detector) }
        }

        /// The inference, computed on the calling thread.
        pub fn detect(detector: &LanguageDetector, block: &Block) -> Result<Inference, Failure> {
            if block.task != "language-id" {
                return Err(Failure::data(
                    "unsupported-task",
                    format!("the language-id engine cannot do task {:?} (block {})", block.task, block.block_id),
                ));
            }
            let values = detector.compute_language_confidence_values(&block.text);
            match values.first() {
                Some((language, confidence)) if *confidence > 0.0 => Ok(Inference {
                    label: language.iso_code_639_1().to_string(),
                    confidence: (*confidence * 1e6).round() / 1e6,
                    text: None,
                }),
                _ => Err(Failure::data(
                    "no-language-detected",
                    format!("block {} has no text in a language the model knows", block.block_id),
                )),
            }
        }
    }

    impl Engine for LanguageIdEngine {
        fn name(&self) -> &str {
            &self.name
        }

        fn infer<'a>(&'a self, block: &'a Block) -> InferFuture<'a> {
            let detector = self.detector.clone();
            let owned = block.clone();
            Box::pin(async move {
                // CPU-bound: keep it off the runtime's workers.
                tokio::task::spawn_blocking(move || Self::detect(&detector, &owned))
                    .await
                    .map_err(|e| Failure::transient("engine-panicked", format!("language-id engine panicked: {e}")))?
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use quire_core::BlockState;

        fn block(text: &str) -> Block {
            Block::fixture("b", text, BlockState::Processing)
        }

        #[tokio::test]
        async fn identifies_languages() {
            let engine = LanguageIdEngine::new("lingua");
            let cases = [
                ("The quick brown fox jumps over the lazy dog near the river bank.", "en"),
                ("Le renard brun rapide saute par-dessus le chien paresseux près de la rivière.", "fr"),
                ("Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.", "de"),
                ("El rápido zorro marrón salta sobre el perro perezoso junto al río.", "es"),
            ];
            for (text, want) in cases {
                let got = engine.infer(&block(text)).await.unwrap();
                assert_eq!(got.label, want, "{text}");
                assert!(got.confidence > 0.0 && got.confidence <= 1.0);
            }
        }

        #[tokio::test]
        async fn text_without_language_is_a_data_error() {
            let err = LanguageIdEngine::new("lingua").infer(&block("12345 67890 !!!")).await.unwrap_err();
            assert_eq!(err.class, quire_core::ErrorClass::Data);
            assert_eq!(err.cause, "no-language-detected");
        }
    }
}
