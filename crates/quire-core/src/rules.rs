//! The validator's output rules: each returns the first rule a result breaks, as a data
//! failure naming what was wrong.

use crate::failure::Failure;
use crate::ids;
use crate::records::{output_checksum, InferenceResult};

/// Checks one inference result: the block text still matches its checksum, the output
/// matches its checksum, the label is present, the confidence is a probability, and a
/// task that produces text produced some.
pub fn validate(result: &InferenceResult) -> Result<(), Failure> {
    let block = &result.block;
    let text_checksum = ids::checksum(&block.text);
    if text_checksum != block.checksum {
        return Err(Failure::data(
            "checksum-mismatch",
            format!("block {} text checksum {} does not match recorded {}", block.block_id, text_checksum, block.checksum),
        ));
    }
    let expected = output_checksum(&block.checksum, &result.label, result.confidence, result.output_text.as_deref());
    if expected != result.output_checksum {
        return Err(Failure::data(
            "output-checksum-mismatch",
            format!("block {} output checksum {} does not match recomputed {}", block.block_id, result.output_checksum, expected),
        ));
    }
    if result.label.trim().is_empty() {
        return Err(Failure::data("empty-label", format!("block {} has an empty label", block.block_id)));
    }
    if !(0.0..=1.0).contains(&result.confidence) {
        return Err(Failure::data(
            "confidence-out-of-range",
            format!("block {} confidence {} is outside [0, 1]", block.block_id, result.confidence),
        ));
    }
    if block.task == "translate" && result.output_text.as_deref().is_none_or(|t| t.trim().is_empty()) {
        return Err(Failure::data("empty-output", format!("block {} asked for a translation and got no text", block.block_id)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Block;
    use crate::state::BlockState;

    fn result(text: &str, label: &str, confidence: f64) -> InferenceResult {
        InferenceResult {
            output_checksum: output_checksum(&ids::checksum(text), label, confidence, None),
            block: Block::fixture("b1", text, BlockState::Validating),
            engine: "e".into(),
            label: label.into(),
            confidence,
            output_text: None,
            latency_ms: 1,
            inferred_at_ms: 0,
            alternatives: Vec::new(),
        }
    }

    #[test]
    fn accepts_a_good_result() {
        assert_eq!(validate(&result("hello", "en", 0.9)), Ok(()));
    }

    #[test]
    fn names_each_broken_rule() {
        let mut r = result("hello", "en", 0.9);
        r.block.text = "tampered".into();
        assert_eq!(validate(&r).unwrap_err().cause, "checksum-mismatch");

        let mut r = result("hello", "en", 0.9);
        r.label = "fr".into();
        assert_eq!(validate(&r).unwrap_err().cause, "output-checksum-mismatch");

        assert_eq!(validate(&result("hello", " ", 0.9)).unwrap_err().cause, "empty-label");
        assert_eq!(validate(&result("hello", "en", 1.5)).unwrap_err().cause, "confidence-out-of-range");

        let mut r = result("hello", "fr", 1.0);
        r.block.task = "translate".into();
        assert_eq!(validate(&r).unwrap_err().cause, "empty-output");
        r.output_text = Some("bonjour".into());
        r.output_checksum = output_checksum(&r.block.checksum, "fr", 1.0, Some("bonjour"));
        assert_eq!(validate(&r), Ok(()));
    }
}
