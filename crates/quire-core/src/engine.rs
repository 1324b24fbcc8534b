//! Inference engines.
//!
//! An engine turns a block into a label with a confidence. The default engine is a real
//! offline model (language identification, lingua's models compiled in); the noop
//! engine exists only to measure the pipeline itself in benchmarks.

use crate::failure::Failure;
use crate::records::Block;

/// What an engine concluded about one block.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    pub label: String,
    pub confidence: f64,
}

/// A model that processes blocks. Implementations must be deterministic for a given
/// block so that a replayed block yields the same output.
pub trait Engine: Send + Sync {
    /// Name written into results, e.g. `lingua-language-id`.
    fn name(&self) -> &str;
    fn infer(&self, block: &Block) -> Result<Inference, Failure>;
}

/// Labels every block `noop` with confidence 1: for benchmarks only.
#[derive(Debug, Default)]
pub struct NoopEngine;

impl Engine for NoopEngine {
    fn name(&self) -> &str {
        "noop"
    }
    fn infer(&self, _block: &Block) -> Result<Inference, Failure> {
        Ok(Inference { label: "noop".into(), confidence: 1.0 })
    }
}

#[cfg(feature = "language-id")]
pub use language_id::LanguageIdEngine;

#[cfg(feature = "language-id")]
mod language_id {
    use super::*;
    use lingua::{LanguageDetector, LanguageDetectorBuilder};

    /// Identifies a block's language with lingua (offline, models compiled in). The
    /// label is the ISO 639-1 code; a block in no known language is a data error.
    pub struct LanguageIdEngine {
        detector: LanguageDetector,
    }

    impl LanguageIdEngine {
        pub fn new() -> Self {
            let detector = LanguageDetectorBuilder::from_all_languages().with_preloaded_language_models().build();
            LanguageIdEngine { detector }
        }
    }

    impl Default for LanguageIdEngine {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Engine for LanguageIdEngine {
        fn name(&self) -> &str {
            "lingua-language-id"
        }

        fn infer(&self, block: &Block) -> Result<Inference, Failure> {
            let values = self.detector.compute_language_confidence_values(&block.text);
            match values.first() {
                Some((language, confidence)) if *confidence > 0.0 => Ok(Inference {
                    label: language.iso_code_639_1().to_string(),
                    confidence: (*confidence * 1e6).round() / 1e6,
                }),
                _ => Err(Failure::data(
                    "no-language-detected",
                    format!("block {} has no text in a language the model knows", block.block_id),
                )),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::state::BlockState;

        fn block(text: &str) -> Block {
            Block::fixture("b", text, BlockState::Processing)
        }

        #[test]
        fn identifies_languages() {
            let engine = LanguageIdEngine::new();
            let cases = [
                ("The quick brown fox jumps over the lazy dog near the river bank.", "en"),
                ("Le renard brun rapide saute par-dessus le chien paresseux près de la rivière.", "fr"),
                ("Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.", "de"),
                ("El rápido zorro marrón salta sobre el perro perezoso junto al río.", "es"),
            ];
            for (text, want) in cases {
                let got = engine.infer(&block(text)).unwrap();
                assert_eq!(got.label, want, "{text}");
                assert!(got.confidence > 0.0 && got.confidence <= 1.0);
            }
        }

        #[test]
        fn text_without_language_is_a_data_error() {
            let err = LanguageIdEngine::new().infer(&block("12345 67890 !!!")).unwrap_err();
            assert_eq!(err.class, crate::ErrorClass::Data);
            assert_eq!(err.cause, "no-language-detected");
        }
    }
}
